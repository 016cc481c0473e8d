#include "snapshot/snapshot.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <concepts>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/io.h"
#include "base/secret_file.h"
#include "base/unique_fd.h"

namespace vessel::snapshot {
namespace {

using nlohmann::json;

constexpr uint64_t kMiB = 1024 * 1024;
// Files are hashed this much at a time; holes are fed from a zero buffer of this size.
constexpr size_t kHashChunk = 1024 * 1024;
// The most threads that digest a memory file's pages at once.
constexpr size_t kDigestThreads = 8;
// Ours nests two levels. Serializing (to check the checksum) recurses, so deeper input
// is refused before that.
constexpr int kMaxManifestDepth = 8;
// Assets are the kernel and initramfs of a few configurations; forget them all past this.
constexpr size_t kMaxCachedAssets = 64;
constexpr const char* kChecksumField = "manifest_sha256";
constexpr const char* kSignatureField = "manifest_hmac";
constexpr const char* kSnapshotDirectory = "snapshot directory";

// What holes hash as. Made on first use, not kept in the binary.
std::span<const uint8_t, kHashChunk> ZeroChunk() {
  static const auto* zeros = new std::array<uint8_t, kHashChunk>{};
  return *zeros;
}

std::unexpected<Error> FormatError(std::string message) {
  return Fail(Error::SnapshotFormat(std::move(message)));
}

bool IsSha256Hex(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

class Sha256 {
 public:
  static Result<Sha256> Start() {
    Sha256 sha(EVP_MD_CTX_new());
    if (!sha.context_) return Fail(Error::HostIo("SHA-256: allocating an OpenSSL context", ENOMEM));
    if (EVP_DigestInit_ex(sha.context_.get(), EVP_sha256(), nullptr) != 1) {
      return Fail(Error::HostIo("SHA-256: OpenSSL init failed", EIO));
    }
    return sha;
  }

  Result<void> Update(std::span<const uint8_t> data) {
    if (EVP_DigestUpdate(context_.get(), data.data(), data.size()) != 1) {
      return Fail(Error::HostIo("SHA-256: OpenSSL update failed", EIO));
    }
    return {};
  }

  Result<std::string> FinishHex() {
    std::array<uint8_t, EVP_MAX_MD_SIZE> digest{};
    unsigned int size = 0;
    if (EVP_DigestFinal_ex(context_.get(), digest.data(), &size) != 1) {
      return Fail(Error::HostIo("SHA-256: OpenSSL final failed", EIO));
    }
    return LowerHex(std::span(digest).first(size));
  }

 private:
  struct ContextFree {
    void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
  };
  explicit Sha256(EVP_MD_CTX* context) : context_(context) {}

  std::unique_ptr<EVP_MD_CTX, ContextFree> context_;
};

Result<std::string> Sha256Hex(std::string_view text) {
  auto sha = Sha256::Start();
  if (!sha) return Fail(std::move(sha).error());
  if (auto r = sha->Update({reinterpret_cast<const uint8_t*>(text.data()), text.size()}); !r) {
    return Fail(std::move(r).error());
  }
  return sha->FinishHex();
}

// What makes a cached digest, or one computed while reading, still valid.
struct FileIdentity {
  dev_t device = 0;
  ino_t inode = 0;
  off_t size = 0;
  timespec mtime{};
  timespec ctime{};

  static FileIdentity Of(const struct stat& st) {
    return {st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
  }
  bool operator==(const FileIdentity& other) const {
    auto same = [](const timespec& a, const timespec& b) {
      return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
    };
    return device == other.device && inode == other.inode && size == other.size &&
           same(mtime, other.mtime) && same(ctime, other.ctime);
  }
};

// An open regular file and what fstat said about it when opened.
struct OpenFile {
  UniqueFd fd;
  struct stat st {};
  [[nodiscard]] uint64_t size() const { return static_cast<uint64_t>(st.st_size); }
};

// O_NONBLOCK: opening a FIFO planted where a file should be must not hang.
Result<OpenFile> OpenRegularFile(const std::string& path) {
  OpenFile file;
  file.fd.Reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!file.fd) return Fail(Error::HostIo("open " + path, errno));
  if (::fstat(file.fd.get(), &file.st) != 0) return Fail(Error::HostIo("stat " + path, errno));
  if (!S_ISREG(file.st.st_mode)) {
    return Fail(Error::HostIo("open " + path + " (not a regular file)",
                              S_ISDIR(file.st.st_mode) ? EISDIR : EINVAL));
  }
  return file;
}

// A file of the snapshot: missing or not a regular file is a format problem.
Result<OpenFile> OpenSnapshotFile(const std::string& dir, const char* name) {
  std::string path = dir + "/" + name;
  auto file = OpenRegularFile(path);
  if (file) return file;
  int error = file.error().errno_value();
  if (error == ENOENT || error == ENOTDIR) return FormatError(fmt::format("{}: missing", name));
  if (error == EISDIR || error == EINVAL) {
    return FormatError(fmt::format("{}: not a regular file", name));
  }
  return Fail(std::move(file).error());
}

// The part of a file at or after some offset that may hold data, as [data, hole); the
// bytes before `data` are a hole and read as zeros.
struct Extent {
  uint64_t data;
  uint64_t hole;
};

Result<Extent> NextExtent(int fd, uint64_t offset, uint64_t size, const std::string& path) {
  off_t data = ::lseek(fd, static_cast<off_t>(offset), SEEK_DATA);
  if (data < 0) {
    if (errno == ENXIO) return Extent{size, size};  // only a hole is left
    // A file system that cannot tell: everything is data.
    if (errno == EINVAL || errno == EOPNOTSUPP) return Extent{offset, size};
    return Fail(Error::HostIo("seek in " + path, errno));
  }
  uint64_t begin = std::min(static_cast<uint64_t>(data), size);
  off_t hole = ::lseek(fd, data, SEEK_HOLE);
  if (hole < 0) return Fail(Error::HostIo("seek in " + path, errno));
  uint64_t end = std::min(static_cast<uint64_t>(hole), size);
  // A hole punched between the two seeks: read on, so the loop always advances.
  if (end <= begin && begin < size) end = size;
  return Extent{begin, std::max(end, begin)};
}

// Hashes the first `size` bytes of `fd`, skipping the reads of holes: a RAM image is
// mostly holes, and its digest is the same as for the same bytes written densely.
Result<std::string> HashFile(int fd, uint64_t size, const std::string& path) {
  auto sha = Sha256::Start();
  if (!sha) return Fail(std::move(sha).error());
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  auto buffer = std::make_unique_for_overwrite<uint8_t[]>(kHashChunk);
  uint64_t offset = 0;
  while (offset < size) {
    auto extent = NextExtent(fd, offset, size, path);
    if (!extent) return Fail(std::move(extent).error());
    for (uint64_t zeros = extent->data - offset; zeros > 0;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(zeros, kHashChunk));
      auto hashed = sha->Update(ZeroChunk().first(n));
      if (!hashed) return Fail(std::move(hashed).error());
      zeros -= n;
    }
    for (offset = extent->data; offset < extent->hole;) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(extent->hole - offset, kHashChunk));
      if (auto r =
              ReadExactlyAt(fd, {buffer.get(), want}, static_cast<off_t>(offset), path.c_str());
          !r)
        return Fail(r.error());
      if (auto r = sha->Update({buffer.get(), want}); !r) return Fail(std::move(r).error());
      offset += want;
    }
  }
  return sha->FinishHex();
}

// The raw SHA-256 of `data`.
Result<std::array<uint8_t, 32>> PageDigest(std::span<const uint8_t> data) {
  std::array<uint8_t, 32> digest{};
  unsigned int size = 0;
  if (EVP_Digest(data.data(), data.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1 ||
      size != digest.size()) {
    return Fail(Error::HostIo("SHA-256: OpenSSL digest failed", EIO));
  }
  return digest;
}

using PageDigests = std::vector<std::array<uint8_t, 32>>;

// The digests of the pages of `fd` in [begin, end), both at page starts (or `end` the file's
// `size`), appended to `out`: pages in holes or of zeros take `zero_page`'s digest unread
// or unhashed.
Result<void> DigestPages(int fd, uint64_t begin, uint64_t end, uint64_t size,
                         const std::array<uint8_t, 32>& zero_page, const std::string& path,
                         PageDigests& out) {
  constexpr uint64_t kPage = kMemoryDigestPage;
  auto buffer = std::make_unique_for_overwrite<uint8_t[]>(kHashChunk);
  const uint64_t whole_pages_end = size / kPage * kPage;
  uint64_t offset = begin;  // always at a page's start
  while (offset < end) {
    auto extent = NextExtent(fd, offset, end, path);
    if (!extent) return Fail(std::move(extent).error());
    // The whole pages before the extent's first data byte are in a hole.
    for (uint64_t hole_end = std::min(extent->data / kPage * kPage, whole_pages_end);
         offset < hole_end; offset += kPage) {
      out.push_back(zero_page);
    }
    // The pages holding the extent's data, read in chunks.
    uint64_t data_end = std::min((extent->hole + kPage - 1) / kPage * kPage, end);
    while (offset < data_end) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(data_end - offset, kHashChunk));
      if (auto r =
              ReadExactlyAt(fd, {buffer.get(), want}, static_cast<off_t>(offset), path.c_str());
          !r)
        return Fail(r.error());
      for (size_t at = 0; at < want; at += kPage) {
        auto page = std::span<const uint8_t>(buffer.get() + at, std::min<size_t>(kPage, want - at));
        if (page.size() == kPage && IsZeros(page)) {
          out.push_back(zero_page);
          continue;
        }
        auto digest = PageDigest(page);
        if (!digest) return Fail(std::move(digest).error());
        out.push_back(*digest);
      }
      offset += want;
    }
  }
  return {};
}

// MemorySha256 of the first `size` bytes of `fd`: holes are skipped by whole pages, and
// pages read as zeros are not hashed either. The pages are digested on up to
// kDigestThreads threads, a segment each, and the segments' digests hashed in order: at
// most kDigestThreads segments' digests are held at once.
Result<std::string> HashPages(int fd, uint64_t size, const std::string& path) {
  constexpr uint64_t kSegment = uint64_t{32} << 20;  // 8192 pages, 256 KiB of digests
  static const auto zero_page = PageDigest(ZeroChunk().first(kMemoryDigestPage));
  if (!zero_page) return Fail(zero_page.error());
  auto sha = Sha256::Start();
  if (!sha) return Fail(std::move(sha).error());
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  const size_t threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, kDigestThreads);
  std::vector<PageDigests> digests(threads);
  std::vector<Result<void>> results(threads);
  for (uint64_t window = 0; window < size; window += kSegment * threads) {
    size_t segments = std::min<uint64_t>(threads, (size - window + kSegment - 1) / kSegment);
    auto digest_segment = [&](size_t i) {
      uint64_t begin = window + i * kSegment;
      digests[i].clear();
      results[i] = DigestPages(fd, begin, std::min(begin + kSegment, size), size, *zero_page, path,
                               digests[i]);
    };
    {
      std::vector<std::jthread> helpers;
      for (size_t i = 1; i < segments; ++i) helpers.emplace_back(digest_segment, i);
      digest_segment(0);
    }
    for (size_t i = 0; i < segments; ++i) {
      if (!results[i]) return Fail(results[i].error());
      std::span<const uint8_t> bytes(digests[i].data()->data(), digests[i].size() * 32);
      if (auto r = sha->Update(bytes); !r) return Fail(r.error());
    }
  }
  return sha->FinishHex();
}

// How a file is digested: as a whole (FileSha256), or page by page (MemorySha256).
enum class Digest { kWhole, kPages };

// How the memory file of a snapshot of `m`'s format is digested.
Digest MemoryDigestOf(const Manifest& m) {
  return m.format_version >= kFormatVersion ? Digest::kPages : Digest::kWhole;
}

// HashFile or HashPages, failing when the file changed meanwhile: the digest might then
// describe no version of it.
Result<std::string> HashUnchangedFile(const OpenFile& file, const std::string& path,
                                      Digest how = Digest::kWhole) {
  auto digest = how == Digest::kPages ? HashPages(file.fd.get(), file.size(), path)
                                      : HashFile(file.fd.get(), file.size(), path);
  if (!digest) return digest;
  struct stat after {};
  if (::fstat(file.fd.get(), &after) != 0) return Fail(Error::HostIo("stat " + path, errno));
  if (!(FileIdentity::Of(after) == FileIdentity::Of(file.st))) {
    return Fail(Error::HostIo("hash " + path + " (changed while being hashed)", EAGAIN));
  }
  return digest;
}

class AssetDigests {
 public:
  std::optional<std::string> Find(const std::string& path, const FileIdentity& identity) {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(path);
    if (it == entries_.end() || !(it->second.identity == identity)) return std::nullopt;
    return it->second.sha256;
  }
  void Remember(const std::string& path, const FileIdentity& identity, std::string sha256) {
    std::lock_guard lock(mutex_);
    if (entries_.size() >= kMaxCachedAssets && !entries_.contains(path)) entries_.clear();
    entries_[path] = {identity, std::move(sha256)};
  }

 private:
  struct Entry {
    FileIdentity identity;
    std::string sha256;
  };
  std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
};

AssetDigests& TheAssetDigests() {
  // Never destroyed: threads may still hash while the process exits.
  static auto* digests = new AssetDigests;
  return *digests;
}

// Manifest <-> JSON.

json ToJson(const FileDigest& digest) {
  return json{{"size", digest.size}, {"sha256", digest.sha256}};
}

json ToJson(const Manifest& m) {
  json object{
      {"format_version", m.format_version},
      {"engine", m.engine},
      {"engine_version", m.engine_version},
      {"vessel_version", m.vessel_version},
      {"vcpus", m.vcpus},
      {"memory_mib", m.memory_mib},
      {"name", m.name},
      {"kernel_path", m.kernel_path},
      {"kernel_sha256", m.kernel_sha256},
      {"initramfs_path", m.initramfs_path},
      {"initramfs_sha256", m.initramfs_sha256},
      {"created_unix_ms", m.created_unix_ms},
      {"state", ToJson(m.state)},
      {"memory", ToJson(m.memory)},
  };
  if (!m.image_digest.empty()) {
    object["image"] = json{{"digest", m.image_digest}, {"name", m.image_name}};
  }
  object["network"] = json{{"allow", m.network.allow},
                           {"max_connections", m.network.max_connections},
                           {"idle_timeout_s", m.network.idle_timeout.count()},
                           {"max_bytes", m.network.max_bytes}};
  if (m.memory_seal) {
    object["memory_seal"] = json{{"device", m.memory_seal->device},
                                 {"inode", m.memory_seal->inode},
                                 {"mtime_ns", m.memory_seal->mtime_ns}};
  }
  return object;
}

FileSeal SealOf(const struct stat& st) {
  return {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
          int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec};
}

std::unexpected<Error> FieldError(std::string_view field, std::string_view problem) {
  return FormatError(fmt::format("{}: field {} {}", kManifestFile, field, problem));
}

// Reads typed fields of one JSON object of the manifest. The first problem sticks: later
// reads do nothing, and error() reports it. `prefix` ("state.") names the object in
// messages.
class FieldReader {
 public:
  FieldReader(const json& object, std::string prefix)
      : object_(object), prefix_(std::move(prefix)) {}

  void Read(const char* key, std::string& out) {
    if (const json* value = Find(key, &json::is_string, "missing or not a string")) {
      out = value->get<std::string>();
    }
  }

  template <std::integral T>
  void Read(const char* key, T& out) {
    const json* value = Find(key, &json::is_number, "missing or not a number");
    if (!value) return;
    if (!value->is_number_integer()) return Problem(key, "is not an integer");
    bool in_range = value->is_number_unsigned() ? std::in_range<T>(value->get<uint64_t>())
                                                : std::in_range<T>(value->get<int64_t>());
    if (!in_range) return Problem(key, fmt::format("is {}, out of range", value->dump()));
    out = value->get<T>();
  }

  void Read(const char* key, FileDigest& out) {
    const json* value = Find(key, &json::is_object, "missing or not an object");
    if (!value) return;
    FieldReader inner(*value, prefix_ + key + ".");
    inner.Read("size", out.size);
    inner.Read("sha256", out.sha256);
    error_ = std::move(inner.error_);
  }

  // Optional: {"device": n, "inode": n, "mtime_ns": n}.
  void Read(const char* key, std::optional<FileSeal>& out) {
    if (error_ || !object_.contains(key)) return;
    const json* value = Find(key, &json::is_object, "is not an object");
    if (!value) return;
    FieldReader inner(*value, prefix_ + key + ".");
    FileSeal seal;
    inner.Read("device", seal.device);
    inner.Read("inode", seal.inode);
    inner.Read("mtime_ns", seal.mtime_ns);
    error_ = std::move(inner.error_);
    if (!error_) out = seal;
  }

  // Optional: {"allow": [string], "max_connections": n, "idle_timeout_s": n, "max_bytes": n}.
  void Read(const char* key, NetworkPolicy& out) {
    if (error_ || !object_.contains(key)) return;
    const json* value = Find(key, &json::is_object, "is not an object");
    if (!value) return;
    FieldReader inner(*value, prefix_ + key + ".");
    inner.Read("allow", out.allow, kMaxNetworkRules);
    inner.Read("max_connections", out.max_connections);
    int64_t idle_timeout_s = 0;
    inner.Read("idle_timeout_s", idle_timeout_s);
    out.idle_timeout = std::chrono::seconds(idle_timeout_s);
    inner.Read("max_bytes", out.max_bytes);
    error_ = std::move(inner.error_);
  }

  // An array of at most `max` strings.
  void Read(const char* key, std::vector<std::string>& out, size_t max) {
    const json* value = Find(key, &json::is_array, "missing or not an array");
    if (!value) return;
    if (value->size() > max) {
      return Problem(key, fmt::format("has {} entries, more than {}", value->size(), max));
    }
    for (const json& entry : *value) {
      if (!entry.is_string()) return Problem(key, "has an entry that is not a string");
      out.push_back(entry.get<std::string>());
    }
  }

  // The root image: {"digest": "sha256:<hex>", "name": string}.
  void Read(const char* key, std::string& digest, std::string& name) {
    const json* value = Find(key, &json::is_object, "missing or not an object");
    if (!value) return;
    FieldReader inner(*value, prefix_ + key + ".");
    inner.Read("digest", digest);
    inner.Read("name", name);
    error_ = std::move(inner.error_);
  }

  [[nodiscard]] const std::optional<Error>& error() const { return error_; }

 private:
  // The value when no earlier field failed and this one exists with the right type.
  const json* Find(const char* key, bool (json::*has_type)() const noexcept,
                   std::string_view problem) {
    if (error_) return nullptr;
    auto it = object_.find(key);
    if (it == object_.end() || !((*it).*has_type)()) {
      Problem(key, problem);
      return nullptr;
    }
    return &*it;
  }

  void Problem(const char* key, std::string_view problem) {
    error_ = FieldError(prefix_ + key, problem).error();
  }

  const json& object_;
  std::string prefix_;
  std::optional<Error> error_;
};

Result<Manifest> FromJson(const json& object) {
  FieldReader reader(object, "");
  Manifest m;
  reader.Read("format_version", m.format_version);
  reader.Read("engine", m.engine);
  reader.Read("engine_version", m.engine_version);
  reader.Read("vessel_version", m.vessel_version);
  reader.Read("vcpus", m.vcpus);
  reader.Read("memory_mib", m.memory_mib);
  reader.Read("name", m.name);
  reader.Read("kernel_path", m.kernel_path);
  reader.Read("kernel_sha256", m.kernel_sha256);
  reader.Read("initramfs_path", m.initramfs_path);
  reader.Read("initramfs_sha256", m.initramfs_sha256);
  reader.Read("created_unix_ms", m.created_unix_ms);
  reader.Read("state", m.state);
  reader.Read("memory", m.memory);
  // Format 2 has an image; format 3 has one where the VM ran on one.
  if (m.format_version == kFormatVersionWithImage ||
      (m.format_version >= kFormatVersion && object.contains("image"))) {
    reader.Read("image", m.image_digest, m.image_name);
  }
  reader.Read("memory_seal", m.memory_seal);
  reader.Read("network", m.network);
  if (reader.error()) return Fail(*reader.error());
  return m;
}

// The checks on values, shared by the reader and the writer. format_version is checked
// by the reader alone.
Result<void> CheckValues(const Manifest& m) {
  if (m.engine.empty()) return FieldError("engine", "is empty");
  if (m.vcpus < 1 || m.vcpus > kMaxVcpus) {
    return FieldError("vcpus", fmt::format("is {}, outside 1..{}", m.vcpus, kMaxVcpus));
  }
  if (m.memory_mib == 0) return FieldError("memory_mib", "is 0");
  for (auto [field, value] :
       {std::pair{"kernel_sha256", &m.kernel_sha256},
        std::pair{"initramfs_sha256", &m.initramfs_sha256},
        std::pair{"state.sha256", &m.state.sha256}, std::pair{"memory.sha256", &m.memory.sha256}}) {
    if (!IsSha256Hex(*value)) return FieldError(field, "is not 64 lowercase hex digits");
  }
  if (!m.image_digest.empty() &&
      (!m.image_digest.starts_with("sha256:") || !IsSha256Hex(m.image_digest.substr(7)))) {
    return FieldError("image.digest", "is not sha256: and 64 lowercase hex digits");
  }
  if (m.memory.size != m.memory_mib * kMiB) {
    return FieldError("memory.size", fmt::format("is {}, but memory_mib {} means {} bytes",
                                                 m.memory.size, m.memory_mib, m.memory_mib * kMiB));
  }
  return {};
}

// Reading.

Result<std::string> ReadManifestText(const std::string& dir) {
  auto file = OpenSnapshotFile(dir, kManifestFile);
  if (!file) return Fail(std::move(file).error());
  auto too_large = [](uint64_t size) {
    return FormatError(fmt::format("{}: {} bytes, larger than the {}-byte cap", kManifestFile, size,
                                   kMaxManifestSize));
  };
  if (file->size() > kMaxManifestSize) return too_large(file->size());
  std::string path = dir + "/" + kManifestFile;
  // One byte more than the cap, to notice a file that grew since fstat.
  std::string text(kMaxManifestSize + 1, '\0');
  size_t filled = 0;
  while (filled < text.size()) {
    ssize_t n = ::pread(file->fd.get(), text.data() + filled, text.size() - filled,
                        static_cast<off_t>(filled));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(Error::HostIo("read " + path, errno));
    }
    if (n == 0) break;
    filled += static_cast<size_t>(n);
  }
  if (filled > kMaxManifestSize) return too_large(filled);
  if (filled == 0) return FormatError(fmt::format("{}: empty", kManifestFile));
  text.resize(filled);
  return text;
}

Result<json> ParseManifest(const std::string& text) {
  bool too_deep = false;
  auto limit_depth = [&too_deep](int depth, json::parse_event_t event, json&) {
    if (event != json::parse_event_t::object_start && event != json::parse_event_t::array_start) {
      return true;
    }
    if (depth < kMaxManifestDepth) return true;
    too_deep = true;
    return false;  // not built: keeps a hostile file from costing memory
  };
  json object;
  try {
    object = json::parse(text, limit_depth);
  } catch (const json::parse_error& e) {
    if (e.byte > text.size()) {  // e.byte counts from 1
      return FormatError(fmt::format("{}: truncated (the JSON ends early, after {} bytes)",
                                     kManifestFile, text.size()));
    }
    return FormatError(fmt::format("{}: not valid JSON (error at byte {} of {})", kManifestFile,
                                   e.byte, text.size()));
  } catch (const json::exception& e) {
    // Valid syntax the parser still refuses, such as a number too large for a double.
    return FormatError(fmt::format("{}: not valid JSON ({})", kManifestFile, e.what()));
  }
  if (too_deep) {
    return FormatError(
        fmt::format("{}: nested deeper than {} levels", kManifestFile, kMaxManifestDepth));
  }
  if (!object.is_object()) return FormatError(fmt::format("{}: not a JSON object", kManifestFile));
  return object;
}

// The format version comes before the checksum: a later format may compute the checksum
// differently, and "unknown format version" is what a user needs to read then.
Result<void> CheckFormatVersion(const json& object) {
  FieldReader reader(object, "");
  uint64_t version = 0;
  reader.Read("format_version", version);
  if (reader.error()) return Fail(*reader.error());
  if (version < kFormatVersionWithoutImage || version > kFormatVersion) {
    return FormatError(fmt::format("{}: unknown format version {} (this Vessel reads {} to {})",
                                   kManifestFile, version, kFormatVersionWithoutImage,
                                   kFormatVersion));
  }
  return {};
}

// The checksum and the signature cover the canonical serialization of everything else:
// dump() of the object without either, whose keys are sorted.
Result<std::string> CanonicalBody(const json& object) {
  json body = object;
  body.erase(kChecksumField);
  body.erase(kSignatureField);
  try {
    return body.dump();
  } catch (const json::type_error&) {
    return Fail(Error::InvalidConfig(
        "manifest", "a text field (engine, versions, name, asset paths) is not valid UTF-8"));
  }
}

Result<void> CheckManifestChecksum(const json& object, const std::string& body) {
  auto it = object.find(kChecksumField);
  if (it == object.end() || !it->is_string() || !IsSha256Hex(it->get<std::string>())) {
    return FieldError(kChecksumField, "missing or not 64 lowercase hex digits");
  }
  auto actual = Sha256Hex(body);
  if (!actual) return Fail(std::move(actual).error());
  const auto& recorded = it->get_ref<const std::string&>();
  if (*actual != recorded) {
    return FormatError(fmt::format("{}: checksum mismatch (the content hashes to {}, {} is {})",
                                   kManifestFile, *actual, kChecksumField, recorded));
  }
  return {};
}

// After the checksum: a manifest that is intact but not signed here was made elsewhere
// or rewritten by someone who could compute a checksum but not the HMAC.
Result<void> CheckManifestSignature(const json& object, const std::string& body,
                                    const HostKey& key) {
  auto it = object.find(kSignatureField);
  if (it == object.end()) {
    return FormatError(fmt::format(
        "{}: not signed (made by an older Vessel, or stripped); if you trust it, `vessel "
        "snapshot import` it",
        kManifestFile));
  }
  auto expected = HmacSha256Hex(key, body);
  if (!expected) return Fail(std::move(expected).error());
  const std::string* recorded = it->get_ptr<const std::string*>();
  if (recorded == nullptr || recorded->size() != expected->size() ||
      CRYPTO_memcmp(recorded->data(), expected->data(), expected->size()) != 0) {
    return FormatError(fmt::format(
        "{}: not signed by this host's key (made on another host, or altered); if you trust "
        "it, `vessel snapshot import` it",
        kManifestFile));
  }
  return {};
}

// Opens a data file of the snapshot and checks its size and SHA-256; returns the
// descriptor it checked. The digest is taken as checked, unread, when the opened file
// has the seal `skip_if` (the file this host wrote, not written since).
Result<OpenFile> CheckDataFile(const std::string& dir, const char* name, const FileDigest& expected,
                               Digest how, const std::optional<FileSeal>& skip_if = std::nullopt) {
  auto file = OpenSnapshotFile(dir, name);
  if (!file) return Fail(std::move(file).error());
  if (file->size() != expected.size) {
    return FormatError(
        fmt::format("{}: size {}, manifest says {}", name, file->size(), expected.size));
  }
  if (skip_if && SealOf(file->st) == *skip_if) return file;
  auto digest = HashUnchangedFile(*file, dir + "/" + name, how);
  if (!digest) return Fail(std::move(digest).error());
  if (*digest != expected.sha256) {
    return FormatError(fmt::format("{}: checksum mismatch (SHA-256 {}, manifest says {})", name,
                                   *digest, expected.sha256));
  }
  return file;
}

// Writing.

struct Sealed {
  FileDigest digest;
  struct stat st {};
};

// Makes one data file of a snapshot private and durable, and returns its digest.
Result<Sealed> SealDataFile(const std::string& dir, const char* name, Digest how) {
  std::string path = dir + "/" + name;
  auto file = OpenSnapshotFile(dir, name);
  if (!file) return Fail(std::move(file).error());
  if (::fchmod(file->fd.get(), 0600) != 0) return Fail(Error::HostIo("chmod " + path, errno));
  // The chmod changed ctime, which HashUnchangedFile compares.
  if (::fstat(file->fd.get(), &file->st) != 0) return Fail(Error::HostIo("stat " + path, errno));
  auto digest = HashUnchangedFile(*file, path, how);
  if (!digest) return Fail(std::move(digest).error());
  if (::fsync(file->fd.get()) != 0) return Fail(Error::HostIo("fsync " + path, errno));
  return Sealed{FileDigest{file->size(), std::move(*digest)}, file->st};
}

Result<void> SyncDirectory(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return Fail(Error::HostIo("open " + dir, errno));
  if (::fsync(fd.get()) != 0) return Fail(Error::HostIo("fsync " + dir, errno));
  return {};
}

Result<void> WriteAndSync(const std::string& path, std::string_view text) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return Fail(Error::HostIo("create " + path, errno));
  // The umask may have taken more than it should; 0600 is part of the format.
  if (::fchmod(fd.get(), 0600) != 0) return Fail(Error::HostIo("chmod " + path, errno));
  if (auto r = WriteAll(fd.get(), {reinterpret_cast<const uint8_t*>(text.data()), text.size()},
                        Deadline::Never(), path.c_str());
      !r) {
    return r;
  }
  if (::fsync(fd.get()) != 0) return Fail(Error::HostIo("fsync " + path, errno));
  return {};
}

// Replaces `path` with `text` all at once: readers see the old file or the new one.
Result<void> WriteFileAtomically(const std::string& path, std::string_view text) {
  std::string temporary = path + ".tmp";
  auto written = WriteAndSync(temporary, text);
  if (written && ::rename(temporary.c_str(), path.c_str()) != 0) {
    written = Fail(Error::HostIo("rename " + temporary, errno));
  }
  if (!written) ::unlink(temporary.c_str());
  return written;
}

struct DirClose {
  void operator()(DIR* dir) const { ::closedir(dir); }
};

Result<bool> IsEmptyDirectory(int dir_fd, const std::string& dir) {
  // fdopendir takes over the descriptor it is given.
  int listing_fd = ::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
  if (listing_fd < 0) return Fail(Error::HostIo("dup " + dir, errno));
  std::unique_ptr<DIR, DirClose> listing(::fdopendir(listing_fd));
  if (!listing) {
    int error = errno;
    ::close(listing_fd);
    return Fail(Error::HostIo("list " + dir, error));
  }
  errno = 0;
  while (dirent* entry = ::readdir(listing.get())) {
    std::string_view name = entry->d_name;
    if (name != "." && name != "..") return false;
  }
  if (errno != 0) return Fail(Error::HostIo("list " + dir, errno));
  return true;
}

Result<void> CheckAsset(const char* what, const std::string& path, const std::string& recorded,
                        const std::string& recorded_path) {
  auto digest = AssetSha256(path);
  if (!digest) return Fail(std::move(digest).error().Context(fmt::format("checking the {}", what)));
  if (*digest != recorded) {
    return FormatError(fmt::format(
        "{} {} is not the one the snapshot was taken with (digest {}; the snapshot's was {} of "
        "digest {})",
        what, path, *digest, recorded_path, recorded));
  }
  return {};
}

}  // namespace

Result<std::string> FileSha256(const std::string& path) {
  auto file = OpenRegularFile(path);
  if (!file) return Fail(std::move(file).error());
  return HashUnchangedFile(*file, path);
}

Result<std::string> MemorySha256(const std::string& path) {
  auto file = OpenRegularFile(path);
  if (!file) return Fail(std::move(file).error());
  return HashUnchangedFile(*file, path, Digest::kPages);
}

Result<std::string> AssetSha256(const std::string& path) {
  auto file = OpenRegularFile(path);
  if (!file) return Fail(std::move(file).error());
  auto identity = FileIdentity::Of(file->st);
  if (auto cached = TheAssetDigests().Find(path, identity)) return *cached;
  auto digest = HashUnchangedFile(*file, path);
  if (digest) TheAssetDigests().Remember(path, identity, *digest);
  return digest;
}

Result<void> PrepareDirectory(const std::string& dir) {
  auto invalid = [&dir](std::string_view problem) {
    return Fail(Error::InvalidConfig(kSnapshotDirectory, fmt::format("{} {}", dir, problem)));
  };
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    if (errno == ENOENT) return invalid("cannot be created: its parent does not exist");
    return Fail(Error::HostIo("create snapshot directory " + dir, errno));
  }
  // Everything below works on this descriptor, so the checks and the chmod apply to the
  // same directory even if the path is swapped meanwhile.
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOTDIR || errno == ELOOP) {
      struct stat st {};
      bool link = ::lstat(dir.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
      return invalid(link ? "is a symbolic link" : "is not a directory");
    }
    return Fail(Error::HostIo("open snapshot directory " + dir, errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Fail(Error::HostIo("stat " + dir, errno));
  if (st.st_uid != ::geteuid()) return invalid("belongs to another user");

  auto empty = IsEmptyDirectory(fd.get(), dir);
  if (!empty) return Fail(std::move(empty).error());
  if (!*empty) return invalid("is not empty");

  if (::fchmod(fd.get(), 0700) != 0) return Fail(Error::HostIo("chmod " + dir, errno));
  return {};
}

Result<void> WriteManifest(const std::string& dir, Manifest manifest, const HostKey& key) {
  for (auto [name, digest] :
       {std::pair{kStateFile, &manifest.state}, std::pair{kMemoryFile, &manifest.memory}}) {
    auto sealed = SealDataFile(
        dir, name, digest == &manifest.memory ? MemoryDigestOf(manifest) : Digest::kWhole);
    if (!sealed) return Fail(std::move(sealed).error().Context("writing a snapshot manifest"));
    *digest = std::move(sealed->digest);
    if (digest == &manifest.memory) manifest.memory_seal = SealOf(sealed->st);
  }
  if (auto valid = CheckValues(manifest); !valid) {
    return Fail(std::move(valid).error().Context("refusing to write a snapshot manifest"));
  }
  json object = ToJson(manifest);
  auto body = CanonicalBody(object);
  if (!body) return Fail(std::move(body).error());
  auto checksum = Sha256Hex(*body);
  if (!checksum) return Fail(std::move(checksum).error());
  auto signature = HmacSha256Hex(key, *body);
  if (!signature) return Fail(std::move(signature).error());
  object[kChecksumField] = *checksum;
  object[kSignatureField] = *signature;
  if (auto r = WriteFileAtomically(dir + "/" + kManifestFile, object.dump(2) + "\n"); !r) return r;
  return SyncDirectory(dir);
}

namespace {

// Open, with the signature checked only when `key` is given.
Result<Opened> OpenChecked(const std::string& dir, Depth depth, const HostKey* key) {
  auto text = ReadManifestText(dir);
  if (!text) return Fail(std::move(text).error());
  auto object = ParseManifest(*text);
  if (!object) return Fail(std::move(object).error());
  if (auto r = CheckFormatVersion(*object); !r) return Fail(std::move(r).error());
  auto body = CanonicalBody(*object);
  if (!body) return Fail(std::move(body).error());
  if (auto r = CheckManifestChecksum(*object, *body); !r) return Fail(std::move(r).error());
  if (key) {
    if (auto r = CheckManifestSignature(*object, *body, *key); !r) return Fail(std::move(r).error());
  }
  auto manifest = FromJson(*object);
  if (!manifest) return Fail(std::move(manifest).error());
  if (auto r = CheckValues(*manifest); !r) return Fail(std::move(r).error());
  auto state = CheckDataFile(dir, kStateFile, manifest->state, Digest::kWhole);
  if (!state) return Fail(std::move(state).error());
  auto memory = CheckDataFile(dir, kMemoryFile, manifest->memory, MemoryDigestOf(*manifest),
                              depth == Depth::kRestore ? manifest->memory_seal : std::nullopt);
  if (!memory) return Fail(std::move(memory).error());
  return Opened{std::move(*manifest), std::move(state->fd), std::move(memory->fd)};
}

}  // namespace

Result<Opened> Open(const std::string& dir, Depth depth, const HostKey& key) {
  return OpenChecked(dir, depth, &key);
}

Result<Manifest> Import(const std::string& dir, const HostKey& key) {
  auto opened = OpenChecked(dir, Depth::kFull, nullptr);
  if (!opened) return Fail(std::move(opened).error());
  if (auto r = WriteManifest(dir, opened->manifest, key); !r) return Fail(std::move(r).error());
  return std::move(opened->manifest);
}

Result<void> CheckCompatible(const Manifest& manifest, const std::string& engine_name,
                             const std::string& kernel_path, const std::string& initramfs_path) {
  if (manifest.engine != engine_name) {
    return FormatError(
        fmt::format("snapshot was taken by engine {}, this is {}", manifest.engine, engine_name));
  }
  if (auto r = CheckAsset("kernel", kernel_path, manifest.kernel_sha256, manifest.kernel_path);
      !r) {
    return r;
  }
  return CheckAsset("initramfs", initramfs_path, manifest.initramfs_sha256,
                    manifest.initramfs_path);
}

}  // namespace vessel::snapshot
