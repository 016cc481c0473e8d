// `vessel image import`: a root file system from a tar archive, made safe entry by entry
// (libarchive reads it and writes it to disk with its secure-extraction checks on).
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>

#include "base/io.h"
#include "image/image.h"
#include "image/tree.h"

namespace vessel::image {
namespace {

namespace fs = std::filesystem;

constexpr auto kPackTimeout = std::chrono::minutes(10);
// More entries than any root file system has: an archive beyond it is refused.
constexpr uint64_t kMaxEntries = 4'000'000;

struct ReaderDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};
struct WriterDeleter {
  void operator()(archive* a) const { archive_write_free(a); }
};

Error Refused(std::string_view entry, std::string_view why) {
  return Error::InvalidConfig("image", fmt::format("the archive's entry '{}' {}; nothing was imported",
                                                   entry, why));
}

// `path` made relative and normal, or empty when it leaves the tree (a ".." component).
// Leading slashes are dropped, and counted in `absolute`.
std::string Contained(std::string_view path, uint64_t& absolute) {
  if (path.starts_with('/')) {
    ++absolute;
    while (path.starts_with('/')) path.remove_prefix(1);
  }
  fs::path p(path);
  for (const auto& part : p) {
    if (part == "..") return {};
  }
  std::string normal = p.lexically_normal().string();
  return normal.empty() ? std::string(".") : normal;
}

}  // namespace

Result<ImportReport> Import(const Store& store, std::string_view name, const std::string& tarball,
                            const Progress& progress) {
  if (auto r = CheckName(name); !r) return Fail(std::move(r).error());
  if (!IsReadableFile(tarball)) {
    return Fail(Error::InvalidConfig("tarball", tarball + " is not a readable file"));
  }
  auto scratch = store.ScratchDir();
  if (!scratch) return Fail(std::move(scratch).error());
  struct Cleanup {
    std::string dir;
    ~Cleanup() { (void)RemoveTree(dir); }
  } cleanup{*scratch};
  // Entries are written by absolute path under a tree whose own path holds no links, so
  // that libarchive's link check covers every component.
  std::error_code ec;
  std::string tree = fs::canonical(*scratch, ec).string() + "/tree";
  if (ec) return Fail(Error::HostIo("resolve " + *scratch, ec.value()));
  if (::mkdir(tree.c_str(), 0755) != 0) return Fail(Error::HostIo("mkdir " + tree, errno));

  std::unique_ptr<archive, ReaderDeleter> reader(archive_read_new());
  archive_read_support_format_tar(reader.get());
  archive_read_support_format_gnutar(reader.get());
  archive_read_support_filter_all(reader.get());
  if (archive_read_open_filename(reader.get(), tarball.c_str(), 64 * 1024) != ARCHIVE_OK) {
    return Fail(Error::InvalidConfig(
        "tarball", fmt::format("{}: {}", tarball, archive_error_string(reader.get()))));
  }
  std::unique_ptr<archive, WriterDeleter> writer(archive_write_disk_new());
  // No ARCHIVE_EXTRACT_OWNER: files belong to whoever imports, and to root in the image.
  archive_write_disk_set_options(writer.get(), ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME |
                                                   ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                                   ARCHIVE_EXTRACT_SECURE_NODOTDOT);

  ImportReport report;
  if (progress) progress(fmt::format("importing {} as '{}'", tarball, name));
  archive_entry* entry = nullptr;
  for (;;) {
    int r = archive_read_next_header(reader.get(), &entry);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN) {
      return Fail(Error::InvalidConfig(
          "tarball", fmt::format("{} is damaged: {}", tarball, archive_error_string(reader.get()))));
    }
    if (++report.entries > kMaxEntries) {
      return Fail(Error::InvalidConfig("tarball", fmt::format("{} has more than {} entries",
                                                              tarball, kMaxEntries)));
    }
    std::string original = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    std::string relative = Contained(original, report.made_relative);
    if (relative.empty()) return Fail(Refused(original, "has a '..' component"));
    mode_t type = archive_entry_filetype(entry);
    // A tar hard link carries no file type of its own (libarchive reports 0): it is
    // whatever its target, an entry already checked, is.
    if (const char* hard = archive_entry_hardlink(entry)) {
      std::string target = Contained(hard, report.made_relative);
      if (target.empty()) return Fail(Refused(original, "is a hard link leading outside the tree"));
      archive_entry_set_hardlink(entry, (tree + "/" + target).c_str());
    } else if (type == AE_IFCHR || type == AE_IFBLK || type == AE_IFIFO || type == AE_IFSOCK) {
      ++report.dropped_devices;
      continue;
    } else if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK) {
      return Fail(Refused(original, "is not a file, a directory or a link"));
    }
    mode_t perm = archive_entry_perm(entry);
    if (perm & (S_ISUID | S_ISGID)) {
      ++report.cleared_setid;
      archive_entry_set_perm(entry, perm & ~static_cast<mode_t>(S_ISUID | S_ISGID));
    }
    archive_entry_set_pathname(entry, (tree + "/" + relative).c_str());
    if (archive_write_header(writer.get(), entry) < ARCHIVE_WARN) {
      return Fail(Refused(original, fmt::format("cannot be written: {}", archive_error_string(writer.get()))));
    }
    if (type == AE_IFREG && archive_entry_size(entry) > 0) {
      const void* block;
      size_t size;
      la_int64_t offset;
      while ((r = archive_read_data_block(reader.get(), &block, &size, &offset)) == ARCHIVE_OK) {
        if (archive_write_data_block(writer.get(), block, size, offset) < ARCHIVE_WARN) {
          return Fail(Error::HostIo(fmt::format("write {}: {}", relative,
                                                archive_error_string(writer.get())),
                                    archive_errno(writer.get())));
        }
      }
      if (r != ARCHIVE_EOF) {
        return Fail(Error::InvalidConfig(
            "tarball", fmt::format("{} is truncated or damaged at '{}': {}", tarball, original,
                                   archive_error_string(reader.get()))));
      }
    }
    if (archive_write_finish_entry(writer.get()) < ARCHIVE_WARN) {
      return Fail(Refused(original, fmt::format("cannot be written: {}", archive_error_string(writer.get()))));
    }
  }
  if (archive_write_close(writer.get()) != ARCHIVE_OK) {
    return Fail(Error::HostIo(fmt::format("finish {}: {}", tree, archive_error_string(writer.get())),
                              archive_errno(writer.get())));
  }
  if (auto r = CheckArchitecture(tree); !r) return Fail(std::move(r).error());
  auto tree_size = TreeSize(tree);
  if (!tree_size) return Fail(std::move(tree_size).error());
  if (progress) {
    progress(fmt::format("packing {} entries ({} MiB) into erofs", report.entries, *tree_size >> 20));
  }
  std::string erofs = *scratch + "/image.erofs";
  if (auto r = PackTree(tree, erofs, std::string(32, '0'), *scratch + "/pack.log", kPackTimeout,
                        /*all_root=*/true);
      !r) {
    return Fail(std::move(r).error());
  }
  ImageRecord record{.name = std::string(name), .tree_size = *tree_size, .source = "import"};
  auto stored = store.Add(erofs, std::move(record));
  if (!stored) return Fail(std::move(stored).error());
  report.record = std::move(*stored);
  return report;
}

}  // namespace vessel::image
