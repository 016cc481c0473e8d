#include "base/private_dir.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "base/unique_fd.h"

namespace vessel {
namespace {

Error NotPrivate(const std::string& path, const PrivateDirRole& role, const std::string& why) {
  return Error::HostIo(fmt::format("{} {} {}: another user could read or replace {} there; "
                                   "remove it, or set {} to a directory of your own",
                                   role.name, path, why, role.holds, role.variable),
                       EPERM);
}

}  // namespace

Result<void> MakePrivateDir(const std::string& path, bool narrow, const PrivateDirRole& role) {
  std::filesystem::path fs_path(path);
  if (fs_path.has_parent_path() && fs_path.parent_path() != fs_path.root_path()) {
    std::error_code ec;
    std::filesystem::create_directories(fs_path.parent_path(), ec);
    if (ec) return Fail(Error::HostIo("create " + fs_path.parent_path().string(), ec.value()));
  }
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return Fail(Error::HostIo("create " + path, errno));
  }
  UniqueFd dir(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir) {
    if (errno == ELOOP || errno == ENOTDIR) {
      return Fail(NotPrivate(path, role, "is a symlink or not a directory"));
    }
    return Fail(Error::HostIo("open " + path, errno));
  }
  struct stat st {};
  if (::fstat(dir.get(), &st) != 0) return Fail(Error::HostIo("stat " + path, errno));
  if (st.st_uid != ::geteuid()) {
    return Fail(NotPrivate(
        path, role, fmt::format("belongs to uid {}, not to you (uid {})", st.st_uid, ::geteuid())));
  }
  if ((st.st_mode & 077) == 0) return {};
  if (!narrow) {
    return Fail(NotPrivate(
        path, role,
        fmt::format("has mode {:o}, open to group or others (chmod 700 it)", st.st_mode & 07777)));
  }
  if (::fchmod(dir.get(), 0700) != 0) {
    return Fail(Error::HostIo(
        fmt::format("narrow {} (mode {:o}) to 0700", path, st.st_mode & 07777), errno));
  }
  return {};
}

}  // namespace vessel
