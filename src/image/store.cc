#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "base/io.h"
#include "image/image.h"
#include "snapshot/snapshot.h"

namespace vessel::image {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A record or stamp is a few KiB; anything larger is not one.
constexpr size_t kMaxRecordSize = 1024 * 1024;
constexpr std::string_view kDigestPrefix = "sha256:";

Error ImageError(std::string message) { return Error::InvalidConfig("image", std::move(message)); }

std::string Hex(std::string_view digest) { return std::string(digest.substr(kDigestPrefix.size())); }

bool IsDigest(std::string_view s) {
  if (!s.starts_with(kDigestPrefix) || s.size() != kDigestPrefix.size() + 64) return false;
  return std::all_of(s.begin() + kDigestPrefix.size(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

json ToJson(const ImageRecord& r) {
  return {{"name", r.name},
          {"digest", r.digest},
          {"size", r.size},
          {"tree_size", r.tree_size},
          {"source", r.source},
          {"suite", r.suite},
          {"mirror", r.mirror},
          {"packages", r.packages},
          {"installed_packages", r.installed_packages},
          {"recipe", r.recipe},
          {"architecture", r.architecture},
          {"created_unix_ms", r.created_unix_ms}};
}

Result<ImageRecord> RecordFromFile(const std::string& path) {
  auto text = ReadFileToString(path, kMaxRecordSize);
  if (!text) return Fail(std::move(text).error());
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  ImageRecord r;
  try {
    r.name = j.at("name").get<std::string>();
    r.digest = j.at("digest").get<std::string>();
    r.size = j.at("size").get<uint64_t>();
    r.tree_size = j.value("tree_size", uint64_t{0});
    r.source = j.value("source", std::string());
    r.suite = j.value("suite", std::string());
    r.mirror = j.value("mirror", std::string());
    r.packages = j.value("packages", std::vector<std::string>{});
    r.installed_packages = j.value("installed_packages", uint64_t{0});
    r.recipe = j.value("recipe", std::string());
    r.architecture = j.value("architecture", std::string());
    r.created_unix_ms = j.value("created_unix_ms", int64_t{0});
  } catch (const json::exception&) {
    return Fail(Error::HostIo(path + " is not an image record", EINVAL));
  }
  if (!IsDigest(r.digest) || CheckName(r.name).has_value() == false) {
    return Fail(Error::HostIo(path + " is not an image record", EINVAL));
  }
  return r;
}

// Writes `data` to `path` through a temporary file and a rename, so readers see the old
// or the new file, never a part.
Result<void> WriteAtomically(const std::string& path, std::string_view data) {
  std::string temporary = fmt::format("{}.tmp-{}", path, ::getpid());
  if (auto r = WriteStringToFile(temporary, data); !r) return r;
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(temporary.c_str());
    return Fail(Error::HostIo("rename " + temporary, e));
  }
  return {};
}

// What was last checked about a blob: when these still hold, its digest does too.
struct Stamp {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t inode = 0;
  bool operator==(const Stamp&) const = default;
};

Stamp StampOf(const struct stat& st) {
  return {static_cast<uint64_t>(st.st_size),
          int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec,
          static_cast<uint64_t>(st.st_ino)};
}

Result<void> MakeDirs(const std::string& root) {
  for (const char* sub : {"", "/blobs", "/names", "/recipes", "/refs", "/locks", "/tmp"}) {
    std::string dir = root + sub;
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      if (errno == ENOENT) {
        std::error_code ec;
        fs::create_directories(dir, ec);
        if (!ec) continue;
      }
      return Fail(Error::HostIo("mkdir " + dir, errno));
    }
  }
  return {};
}

// SHA-256 of the file at `path`, as a digest string.
Result<std::string> DigestOf(const std::string& path) {
  auto hex = snapshot::FileSha256(path);
  if (!hex) return Fail(std::move(hex).error());
  return std::string(kDigestPrefix) + *hex;
}

}  // namespace

Result<void> CheckName(std::string_view name) {
  auto valid = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (name.empty() || name.size() > kMaxNameLength || !valid(name.front()) ||
      !std::all_of(name.begin(), name.end(),
                   [&](char c) { return valid(c) || c == '.' || c == '_' || c == '-'; })) {
    return Fail(ImageError(fmt::format(
        "'{}' is not an image name: use 1 to {} of a-z, 0-9, '.', '_' and '-', starting with a "
        "letter or digit",
        name, kMaxNameLength)));
  }
  return {};
}

Store Store::Default() {
  if (const char* dir = std::getenv("VESSEL_CACHE_DIR"); dir && *dir) {
    return Store(std::string(dir) + "/images");
  }
  if (const char* dir = std::getenv("XDG_CACHE_HOME"); dir && *dir) {
    return Store(std::string(dir) + "/vessel/images");
  }
  const char* home = std::getenv("HOME");
  return Store(std::string(home && *home ? home : "/root") + "/.cache/vessel/images");
}

std::string Store::BlobPath(std::string_view digest) const {
  return fmt::format("{}/blobs/{}.erofs", root_, Hex(digest));
}

Result<std::vector<ImageRecord>> Store::List() const {
  std::vector<ImageRecord> records;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root_ + "/names", ec)) {
    if (entry.path().extension() != ".json") continue;
    if (auto r = RecordFromFile(entry.path().string())) records.push_back(std::move(*r));
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return Fail(Error::HostIo("list " + root_ + "/names", ec.value()));
  }
  std::sort(records.begin(), records.end(),
            [](const ImageRecord& a, const ImageRecord& b) { return a.name < b.name; });
  return records;
}

Result<ImageRecord> Store::Find(std::string_view name_or_digest) const {
  auto records = List();
  if (!records) return Fail(std::move(records).error());
  for (const auto& r : *records) {
    if (r.name == name_or_digest || r.digest == name_or_digest) return r;
  }
  if (IsDigest(name_or_digest) && IsReadableFile(BlobPath(name_or_digest))) {
    ImageRecord r;
    r.name = std::string(name_or_digest);
    r.digest = std::string(name_or_digest);
    return r;
  }
  std::string names;
  for (const auto& r : *records) names += (names.empty() ? "" : ", ") + r.name;
  if (auto bad = CheckName(name_or_digest); !bad && !IsDigest(name_or_digest)) {
    return Fail(std::move(bad).error());
  }
  return Fail(ImageError(fmt::format(
      "no image named '{}' in {}; {}", name_or_digest, root_,
      names.empty() ? "there are none yet (vessel image build python)"
                    : "there are: " + names)));
}

Result<ImageUse> Store::Open(const ImageRecord& record) const {
  std::string path = BlobPath(record.digest);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return Fail(Error::HostIo("open " + path, errno));
  if (::flock(fd.get(), LOCK_SH) != 0) return Fail(Error::HostIo("lock " + path, errno));
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0) return Fail(Error::HostIo("stat " + path, errno));
  if (!S_ISREG(st.st_mode)) return Fail(Error::HostIo(path + " is not a regular file", EINVAL));
  // The digest is recomputed only when the file moved since it was last checked.
  Stamp now = StampOf(st);
  std::string stamp_path = fmt::format("{}/blobs/{}.json", root_, Hex(record.digest));
  if (auto text = ReadFileToString(stamp_path, kMaxRecordSize)) {
    json j = json::parse(*text, nullptr, false);
    if (j.is_object() && Stamp{j.value("size", uint64_t{0}), j.value("mtime_ns", int64_t{0}),
                               j.value("inode", uint64_t{0})} == now) {
      return ImageUse{record, path, std::move(fd)};
    }
  }
  auto digest = DigestOf(path);
  if (!digest) return Fail(std::move(digest).error());
  if (*digest != record.digest) {
    return Fail(ImageError(fmt::format("image '{}' changed on disk: {} should have digest {} "
                                       "but has {}; remove it and build or import it again",
                                       record.name, path, record.digest, *digest)));
  }
  json stamp = {{"size", now.size}, {"mtime_ns", now.mtime_ns}, {"inode", now.inode}};
  (void)WriteAtomically(stamp_path, stamp.dump());
  return ImageUse{record, path, std::move(fd)};
}

Result<ImageUse> Store::Use(std::string_view name_or_digest) const {
  auto record = Find(name_or_digest);
  if (!record) return Fail(std::move(record).error());
  if (!record->architecture.empty() && record->architecture != kArchitecture) {
    return Fail(ImageError(fmt::format("image '{}' is for {}; guests here are {}", record->name,
                                       record->architecture, kArchitecture)));
  }
  return Open(*record);
}

Result<ImageUse> Store::UseForSnapshot(std::string_view digest, std::string_view name) const {
  std::string which = fmt::format("the snapshot's root image {} ('{}')", digest, name);
  if (!IsDigest(digest)) return Fail(Error::SnapshotFormat(which + " is not a digest"));
  if (!IsReadableFile(BlobPath(digest))) {
    return Fail(Error::SnapshotFormat(
        fmt::format("{} is not in the image store {} (vessel image ls)", which, root_)));
  }
  ImageRecord record;
  record.name = std::string(name);
  record.digest = std::string(digest);
  auto use = Open(record);
  if (!use && use.error().kind() == ErrorKind::kInvalidConfig) {
    return Fail(Error::SnapshotFormat(which + ": " + use.error().message()));
  }
  return use;
}

Result<UniqueFd> Store::LockStore() const {
  if (auto r = MakeDirs(root_); !r) return Fail(std::move(r).error());
  std::string path = root_ + "/locks/store";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return Fail(Error::HostIo("open " + path, errno));
  while (::flock(fd.get(), LOCK_EX) != 0) {
    if (errno != EINTR) return Fail(Error::HostIo("lock " + path, errno));
  }
  return fd;
}

Result<UniqueFd> Store::LockRecipe(std::string_view recipe) const {
  if (auto r = MakeDirs(root_); !r) return Fail(std::move(r).error());
  std::string path = fmt::format("{}/locks/recipe-{}", root_, recipe);
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return Fail(Error::HostIo("open " + path, errno));
  while (::flock(fd.get(), LOCK_EX) != 0) {
    if (errno != EINTR) return Fail(Error::HostIo("lock " + path, errno));
  }
  return fd;
}

Result<std::string> Store::ScratchDir() const {
  if (auto r = MakeDirs(root_); !r) return Fail(std::move(r).error());
  std::string templ = root_ + "/tmp/work-XXXXXX";
  if (!::mkdtemp(templ.data())) return Fail(Error::HostIo("mkdtemp " + templ, errno));
  return templ;
}

Result<ImageRecord> Store::Add(const std::string& erofs, ImageRecord record) const {
  if (auto r = CheckName(record.name); !r) return Fail(std::move(r).error());
  auto lock = LockStore();
  if (!lock) return Fail(std::move(lock).error());
  auto digest = DigestOf(erofs);
  if (!digest) return Fail(std::move(digest).error());
  struct stat st{};
  if (::stat(erofs.c_str(), &st) != 0) return Fail(Error::HostIo("stat " + erofs, errno));
  record.digest = *digest;
  record.size = static_cast<uint64_t>(st.st_size);
  if (record.created_unix_ms == 0) {
    record.created_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
  }
  std::string blob = BlobPath(record.digest);
  if (::access(blob.c_str(), F_OK) != 0) {
    ::chmod(erofs.c_str(), 0444);
    if (::rename(erofs.c_str(), blob.c_str()) != 0) return Fail(Error::HostIo("rename " + erofs, errno));
  } else {
    ::unlink(erofs.c_str());
  }
  if (!record.recipe.empty()) {
    if (auto r = WriteAtomically(fmt::format("{}/recipes/{}", root_, record.recipe), record.digest);
        !r) {
      return Fail(std::move(r).error());
    }
  }
  if (auto r = WriteAtomically(fmt::format("{}/names/{}.json", root_, record.name),
                               ToJson(record).dump(2) + "\n");
      !r) {
    return Fail(std::move(r).error());
  }
  return record;
}

Result<std::optional<ImageRecord>> Store::FromRecipe(std::string_view recipe,
                                                     std::string_view name) const {
  auto digest = ReadFileToString(fmt::format("{}/recipes/{}", root_, recipe), 128);
  if (!digest || !IsDigest(*digest) || !IsReadableFile(BlobPath(*digest))) {
    return std::optional<ImageRecord>();
  }
  // The record of any name that points at it carries the build's details.
  auto records = List();
  if (!records) return Fail(std::move(records).error());
  for (const auto& r : *records) {
    if (r.digest != *digest) continue;
    ImageRecord copy = r;
    copy.name = std::string(name);
    if (r.name == name) return std::optional<ImageRecord>(copy);
    auto lock = LockStore();
    if (!lock) return Fail(std::move(lock).error());
    if (auto w = WriteAtomically(fmt::format("{}/names/{}.json", root_, name),
                                 ToJson(copy).dump(2) + "\n");
        !w) {
      return Fail(std::move(w).error());
    }
    return std::optional<ImageRecord>(copy);
  }
  return std::optional<ImageRecord>();
}

Result<void> Store::AddSnapshotRef(std::string_view digest, const std::string& snapshot_dir) const {
  if (!IsDigest(digest)) return Fail(ImageError(fmt::format("'{}' is not an image digest", digest)));
  if (auto r = MakeDirs(root_); !r) return r;
  std::string dir = fmt::format("{}/refs/{}", root_, Hex(digest));
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Fail(Error::HostIo("mkdir " + dir, errno));
  }
  std::string absolute = fs::absolute(snapshot_dir).lexically_normal().string();
  std::string key = fmt::format("{:016x}", std::hash<std::string>{}(absolute));
  return WriteAtomically(dir + "/" + key, absolute);
}

Result<void> Store::Remove(std::string_view name) const {
  if (auto r = CheckName(name); !r) return r;
  auto record = Find(name);
  if (!record) return Fail(std::move(record).error());
  auto lock = LockStore();
  if (!lock) return Fail(std::move(lock).error());
  auto records = List();
  if (!records) return Fail(std::move(records).error());
  bool last_name = std::none_of(records->begin(), records->end(), [&](const ImageRecord& r) {
    return r.digest == record->digest && r.name != record->name;
  });
  std::string blob = BlobPath(record->digest);
  UniqueFd blob_fd;
  if (last_name) {
    blob_fd = UniqueFd(::open(blob.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (blob_fd && ::flock(blob_fd.get(), LOCK_EX | LOCK_NB) != 0) {
      return Fail(ImageError(fmt::format(
          "image '{}' is in use by a running sandbox; remove the sandboxes that use it "
          "(vessel ls) and try again",
          name)));
    }
    // Snapshots that still exist and still name this image keep it.
    std::string refs = fmt::format("{}/refs/{}", root_, Hex(record->digest));
    std::vector<std::string> needed_by;
    std::error_code ec;
    for (const auto& ref : fs::directory_iterator(refs, ec)) {
      auto dir = ReadFileToString(ref.path().string(), 8192);
      auto manifest = dir ? ReadFileToString(*dir + "/" + snapshot::kManifestFile,
                                             snapshot::kMaxManifestSize)
                          : Result<std::string>(std::string());
      if (manifest && manifest->find(record->digest) != std::string::npos) {
        needed_by.push_back(*dir);
      } else {
        fs::remove(ref.path(), ec);
      }
    }
    if (!needed_by.empty()) {
      std::string list;
      for (const auto& d : needed_by) list += "\n  " + d;
      return Fail(ImageError(fmt::format(
          "image '{}' is needed by {} snapshot(s); remove them first:{}", name,
          needed_by.size(), list)));
    }
  }
  std::string name_file = fmt::format("{}/names/{}.json", root_, name);
  if (::unlink(name_file.c_str()) != 0) return Fail(Error::HostIo("unlink " + name_file, errno));
  if (last_name) {
    ::unlink(blob.c_str());
    ::unlink(fmt::format("{}/blobs/{}.json", root_, Hex(record->digest)).c_str());
    std::error_code ec;
    fs::remove_all(fmt::format("{}/refs/{}", root_, Hex(record->digest)), ec);
    for (const auto& recipe : fs::directory_iterator(root_ + "/recipes", ec)) {
      auto digest = ReadFileToString(recipe.path().string(), 128);
      if (digest && *digest == record->digest) fs::remove(recipe.path(), ec);
    }
  }
  return {};
}

}  // namespace vessel::image
