#include "files.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

namespace vessel::agent {
namespace {

namespace proto = vessel::protocol;

struct CloseDir {
  void operator()(DIR* dir) const { closedir(dir); }
};
using DirPtr = std::unique_ptr<DIR, CloseDir>;

void SendError(Port& port, uint32_t request_id, int error, const std::string& path,
               const char* what) {
  port.Send(proto::EncodeError(request_id,
                               {error, path, fmt::format("{}: {}", what, std::strerror(error))}));
}

proto::FileInfo InfoOf(const struct stat& st, std::string name) {
  proto::FileInfo info;
  if (S_ISREG(st.st_mode)) {
    info.type = proto::FileType::kRegular;
  } else if (S_ISDIR(st.st_mode)) {
    info.type = proto::FileType::kDirectory;
  } else if (S_ISLNK(st.st_mode)) {
    info.type = proto::FileType::kSymlink;
  } else {
    info.type = proto::FileType::kOther;
  }
  info.mode = st.st_mode & 07777;
  info.size = static_cast<uint64_t>(st.st_size);
  info.mtime = st.st_mtim.tv_sec;
  info.name = std::move(name);
  return info;
}

std::string Join(const std::string& dir, const char* name) {
  return dir.ends_with('/') ? dir + name : dir + "/" + name;
}

bool IsDotOrDotDot(const char* name) {
  return std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0;
}

void Stat(uint32_t id, const proto::FileOp& op, Port& port) {
  struct stat st;
  if (lstat(op.path.c_str(), &st) != 0) return SendError(port, id, errno, op.path, "stat");
  port.Send(proto::EncodeFileInfo(id, InfoOf(st, "")));
  port.Send(proto::EncodeDone(id));
}

void ListDir(uint32_t id, const proto::FileOp& op, Port& port) {
  DirPtr dir(opendir(op.path.c_str()));
  if (!dir) return SendError(port, id, errno, op.path, "list directory");
  for (;;) {
    errno = 0;
    dirent* entry = readdir(dir.get());
    if (!entry) {
      if (errno != 0) return SendError(port, id, errno, op.path, "list directory");
      break;
    }
    if (IsDotOrDotDot(entry->d_name)) continue;
    struct stat st;
    if (fstatat(dirfd(dir.get()), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;  // removed since readdir
      return SendError(port, id, errno, Join(op.path, entry->d_name), "stat");
    }
    port.Send(proto::EncodeFileInfo(id, InfoOf(st, entry->d_name)));
  }
  port.Send(proto::EncodeDone(id));
}

void MakeDir(uint32_t id, const proto::FileOp& op, Port& port) {
  const std::string& path = op.path;
  bool parents = op.flags & proto::kFlagParents;
  if (parents) {
    // Like mkdir -p: missing parents get the default mode, existing ones are fine. A
    // parent that is not a directory makes the next mkdir fail with ENOTDIR.
    for (size_t slash = path.find('/', 1); slash != std::string::npos;
         slash = path.find('/', slash + 1)) {
      std::string parent = path.substr(0, slash);
      if (mkdir(parent.c_str(), 0777) != 0 && errno != EEXIST) {
        return SendError(port, id, errno, parent, "make directory");
      }
    }
  }
  if (mkdir(path.c_str(), op.mode) == 0) {
    // The exact mode asked for, not masked by the umask.
    if (chmod(path.c_str(), op.mode) != 0) return SendError(port, id, errno, path, "chmod");
  } else {
    int error = errno;
    struct stat st;
    if (!(parents && error == EEXIST && stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) {
      return SendError(port, id, error, path, "make directory");
    }
  }
  port.Send(proto::EncodeDone(id));
}

// Removes the directory `name` in `parent_fd` and everything in it, depth first, never
// following a symbolic link. Returns 0, or the errno with `failed_path` set.
int RemoveTree(int parent_fd, const char* name, const std::string& path, std::string& failed_path) {
  int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    failed_path = path;
    return errno;
  }
  DirPtr dir(fdopendir(fd));
  if (!dir) {
    int error = errno;
    close(fd);
    failed_path = path;
    return error;
  }
  for (;;) {
    errno = 0;
    dirent* entry = readdir(dir.get());
    if (!entry) {
      if (errno == 0) break;
      failed_path = path;
      return errno;
    }
    if (IsDotOrDotDot(entry->d_name)) continue;
    std::string child = Join(path, entry->d_name);
    bool is_dir = entry->d_type == DT_DIR;
    if (entry->d_type == DT_UNKNOWN) {
      struct stat st;
      if (fstatat(dirfd(dir.get()), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;
        failed_path = child;
        return errno;
      }
      is_dir = S_ISDIR(st.st_mode);
    }
    if (is_dir) {
      if (int error = RemoveTree(dirfd(dir.get()), entry->d_name, child, failed_path)) {
        return error;
      }
    } else if (unlinkat(dirfd(dir.get()), entry->d_name, 0) != 0 && errno != ENOENT) {
      failed_path = child;
      return errno;
    }
  }
  dir.reset();
  if (unlinkat(parent_fd, name, AT_REMOVEDIR) != 0 && errno != ENOENT) {
    failed_path = path;
    return errno;
  }
  return 0;
}

void Remove(uint32_t id, const proto::FileOp& op, Port& port) {
  struct stat st;
  if (lstat(op.path.c_str(), &st) != 0) return SendError(port, id, errno, op.path, "remove");
  if (!S_ISDIR(st.st_mode)) {
    if (unlink(op.path.c_str()) != 0) return SendError(port, id, errno, op.path, "remove");
  } else if (op.flags & proto::kFlagRecursive) {
    std::string failed_path;
    if (int error = RemoveTree(AT_FDCWD, op.path.c_str(), op.path, failed_path)) {
      return SendError(port, id, error, failed_path, "remove");
    }
  } else if (rmdir(op.path.c_str()) != 0) {
    return SendError(port, id, errno, op.path, "remove");
  }
  port.Send(proto::EncodeDone(id));
}

void Rename(uint32_t id, const proto::FileOp& op, Port& port) {
  if (rename(op.path.c_str(), op.target.c_str()) != 0) {
    return SendError(port, id, errno, op.path, fmt::format("rename to {}", op.target).c_str());
  }
  port.Send(proto::EncodeDone(id));
}

}  // namespace

void RunFileOp(uint32_t request_id, const proto::FileOp& op, Port& port) {
  switch (op.kind) {
    case proto::FileOpKind::kStat: return Stat(request_id, op, port);
    case proto::FileOpKind::kListDir: return ListDir(request_id, op, port);
    case proto::FileOpKind::kMakeDir: return MakeDir(request_id, op, port);
    case proto::FileOpKind::kRemove: return Remove(request_id, op, port);
    case proto::FileOpKind::kRename: return Rename(request_id, op, port);
    case proto::FileOpKind::kReadFile:
    case proto::FileOpKind::kWriteFile: break;  // transfers, not run here
  }
}

bool ReadFileTransfer::Open(Port& port) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer.
  fd_ = UniqueFd(open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd_) {
    SendError(port, request_id_, errno, path_, "open");
    return false;
  }
  struct stat st;
  if (fstat(fd_.get(), &st) != 0) {
    SendError(port, request_id_, errno, path_, "stat");
    return false;
  }
  if (S_ISDIR(st.st_mode)) {
    SendError(port, request_id_, EISDIR, path_, "read");
    return false;
  }
  port.Send(proto::EncodeFileInfo(request_id_, InfoOf(st, "")));
  return true;
}

pollfd ReadFileTransfer::PollEvents(const Port& port) const {
  // A regular file always polls readable, so this is one chunk per turn of the loop.
  if (!fd_ || credit_ == 0 || !port.HasRoom()) return {-1, 0, 0};
  return {fd_.get(), POLLIN, 0};
}

bool ReadFileTransfer::SendChunk(Port& port) {
  if (!fd_) return true;
  size_t want = std::min<uint64_t>(credit_, proto::kMaxFileChunk);
  if (want == 0) return false;
  // Read into the frame itself: a download's bytes are copied once, out of the file.
  std::vector<uint8_t> frame = proto::FileDataFrame(request_id_, want);
  ssize_t n = read(fd_.get(), frame.data() + proto::kHeaderSize, want);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return false;
    Abort(port, errno, "read");
    return true;
  }
  if (n == 0) {
    fd_.Reset();
    port.Send(proto::EncodeDone(request_id_));
    return true;
  }
  proto::TrimFileData(frame, static_cast<size_t>(n));
  port.Send(std::move(frame));
  credit_ -= static_cast<uint64_t>(n);
  return false;
}

void ReadFileTransfer::OnCredit(uint32_t bytes) { credit_ = std::min(window_, credit_ + bytes); }

void ReadFileTransfer::Abort(Port& port, int error, const char* what) {
  fd_.Reset();
  SendError(port, request_id_, error, path_, what);
}

WriteFileTransfer::~WriteFileTransfer() {
  if (!temp_path_.empty()) unlink(temp_path_.c_str());
}

bool WriteFileTransfer::Open(Port& port) {
  size_t slash = path_.rfind('/');  // the path is absolute
  std::string name = path_.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") {
    SendError(port, request_id_, EISDIR, path_, "write");
    return false;
  }
  // Cut so the temporary name fits NAME_MAX (255) whatever the target's name.
  std::string temp =
      fmt::format("{}.{}.vessel-{}", path_.substr(0, slash + 1), name.substr(0, 200), request_id_);
  fd_ = UniqueFd(open(temp.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600));
  if (!fd_) {
    SendError(port, request_id_, errno, path_, "create temporary file");
    return false;
  }
  temp_path_ = std::move(temp);
  return true;
}

bool WriteFileTransfer::OnData(std::span<const uint8_t> data, Port& port) {
  if (data.empty()) {
    Commit(port);
    return true;
  }
  while (!data.empty()) {
    ssize_t n = write(fd_.get(), data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      Abort(port, errno, "write");
      return true;
    }
    data = data.subspan(static_cast<size_t>(n));
  }
  return false;
}

void WriteFileTransfer::Commit(Port& port) {
  if (fchmod(fd_.get(), mode_) != 0) return Abort(port, errno, "chmod");
  // close() is where some filesystems report a failed write.
  if (close(fd_.Release()) != 0) return Abort(port, errno, "write");
  if (rename(temp_path_.c_str(), path_.c_str()) != 0)
    return Abort(port, errno, "rename into place");
  temp_path_.clear();
  port.Send(proto::EncodeDone(request_id_));
}

void WriteFileTransfer::Abort(Port& port, int error, const char* what) {
  fd_.Reset();
  if (!temp_path_.empty()) unlink(temp_path_.c_str());
  temp_path_.clear();
  SendError(port, request_id_, error, path_, what);
}

}  // namespace vessel::agent
