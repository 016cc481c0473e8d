#include "vessel/error.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace vessel {

std::string_view ToString(SandboxState state) {
  switch (state) {
    case SandboxState::kReady: return "ready";
    case SandboxState::kFailed: return "failed";
    case SandboxState::kDestroyed: return "destroyed";
  }
  return "unknown";
}

std::string_view ToString(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidConfig: return "invalid config";
    case ErrorKind::kLifecycle: return "lifecycle";
    case ErrorKind::kBackend: return "backend";
    case ErrorKind::kGuestFile: return "guest file";
    case ErrorKind::kSnapshotFormat: return "snapshot format";
    case ErrorKind::kHostIo: return "host I/O";
    case ErrorKind::kUnsupportedPlatform: return "unsupported platform";
  }
  return "unknown";
}

std::string LifecycleError::ToString() const {
  struct Visitor {
    std::string operator()(const InvalidState& e) const {
      return fmt::format("invalid state: expected {}, current {}: {}", vessel::ToString(e.expected),
                         vessel::ToString(e.current), e.message);
    }
    std::string operator()(const Destroyed& e) const { return "destroyed: " + e.message; }
    std::string operator()(const Released& e) const { return "released: " + e.message; }
    std::string operator()(const NotReady&) const { return "not ready for a snapshot"; }
    std::string operator()(const NotReadyForFork&) const { return "not ready for a fork"; }
    std::string operator()(const VsockNotConnected&) const {
      return "vsock command channel not connected";
    }
    std::string operator()(const VsockUnavailable&) const {
      return "vsock command channel not available";
    }
    std::string operator()(const Other& e) const { return e.message; }
  };
  return std::visit(Visitor{}, variant);
}

Error Error::InvalidConfig(std::string field, std::string message) {
  Error e(ErrorKind::kInvalidConfig, field + ": " + message);
  e.subject_ = std::move(field);
  return e;
}

Error Error::Lifecycle(LifecycleError error) {
  Error e(ErrorKind::kLifecycle, error.ToString());
  e.lifecycle_ = std::move(error);
  return e;
}

Error Error::Backend(std::string message) { return Error(ErrorKind::kBackend, std::move(message)); }

Error Error::Timeout(std::string message) {
  Error e(ErrorKind::kBackend, std::move(message));
  e.timed_out_ = true;
  return e;
}

std::string_view ToString(GuestFileErrorKind kind) {
  switch (kind) {
    case GuestFileErrorKind::kNotFound: return "not found";
    case GuestFileErrorKind::kPermissionDenied: return "permission denied";
    case GuestFileErrorKind::kNoSpace: return "out of space";
    case GuestFileErrorKind::kIsDirectory: return "is a directory";
    case GuestFileErrorKind::kNotDirectory: return "not a directory";
    case GuestFileErrorKind::kExists: return "already exists";
    case GuestFileErrorKind::kNotEmpty: return "directory not empty";
    case GuestFileErrorKind::kIo: return "I/O error";
  }
  return "unknown";
}

namespace {
GuestFileErrorKind FileKindFromErrno(int guest_errno) {
  switch (guest_errno) {
    case ENOENT: return GuestFileErrorKind::kNotFound;
    case EACCES:
    case EPERM: return GuestFileErrorKind::kPermissionDenied;
    case ENOSPC:
    case EDQUOT: return GuestFileErrorKind::kNoSpace;
    case EISDIR: return GuestFileErrorKind::kIsDirectory;
    case ENOTDIR: return GuestFileErrorKind::kNotDirectory;
    case EEXIST: return GuestFileErrorKind::kExists;
    case ENOTEMPTY: return GuestFileErrorKind::kNotEmpty;
    default: return GuestFileErrorKind::kIo;
  }
}
}  // namespace

Error Error::GuestFile(std::string path, int guest_errno, std::string message) {
  Error e(ErrorKind::kGuestFile, path + ": " + message);
  e.subject_ = std::move(path);
  e.errno_ = guest_errno;
  e.file_kind_ = FileKindFromErrno(guest_errno);
  return e;
}

Error Error::SnapshotFormat(std::string message) {
  return Error(ErrorKind::kSnapshotFormat, std::move(message));
}

Error Error::HostIo(std::string what, int errno_value) {
  Error e(ErrorKind::kHostIo, what + ": " + std::strerror(errno_value));
  e.errno_ = errno_value;
  return e;
}

Error Error::UnsupportedPlatform(std::string message) {
  return Error(ErrorKind::kUnsupportedPlatform, std::move(message));
}

Error Error::Context(std::string_view what) && {
  message_ = std::string(what) + ": " + message_;
  return std::move(*this);
}

Error Error::Detail(std::string_view detail) && {
  message_ += "\n";
  message_ += detail;
  return std::move(*this);
}

std::string Error::ToString() const {
  return std::string(vessel::ToString(kind_)) + ": " + message_;
}

}  // namespace vessel
