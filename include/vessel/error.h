// Errors are values: every fallible call returns Result<T> = std::expected<T, Error>.
//
// Error separates "you used the handle wrong" (Lifecycle, InvalidConfig) from "the VM or
// the host broke" (Backend, HostIo, ...), so a caller can decide whether to retry, change
// state first, or give up. Context is added on the way up with Error::Context().
#pragma once

#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace vessel {

// Lifecycle states of a sandbox. Stable names: they appear in errors and in `vessel ls`.
enum class SandboxState {
  kBooting,    // the VM is starting; the agent has not said hello yet
  kReady,      // the agent is connected and accepts commands
  kFailed,     // the VM or its agent broke; only Destroy() is allowed
  kDestroyed,  // the VM is gone; nothing is allowed
};

std::string_view ToString(SandboxState state);

// The lifecycle error: what a caller did with a handle that its state does not permit.
// The variant names and meanings are part of the contract.
struct LifecycleError {
  // The current state does not permit the operation. Retrying will not help until the
  // state changes.
  struct InvalidState {
    SandboxState expected;
    SandboxState current;
    std::string message;
  };
  // The sandbox was destroyed and cannot be reused.
  struct Destroyed {
    std::string message;
  };
  // The handle was released back to its pool and cannot be used again.
  struct Released {
    std::string message;
  };
  // A snapshot was requested while the VM was not ready.
  struct NotReady {};
  // A fork was requested while the VM was not ready.
  struct NotReadyForFork {};
  // The vsock command channel is required but not connected (yet): retrying may help.
  struct VsockNotConnected {};
  // The vsock command channel is not available for the operation on this engine or host.
  struct VsockUnavailable {};
  // Any lifecycle error that fits no other variant.
  struct Other {
    std::string message;
  };

  using Variant = std::variant<InvalidState, Destroyed, Released, NotReady, NotReadyForFork,
                               VsockNotConnected, VsockUnavailable, Other>;
  Variant variant;

  template <typename T>
  [[nodiscard]] bool Is() const {
    return std::holds_alternative<T>(variant);
  }
  template <typename T>
  [[nodiscard]] const T* As() const {
    return std::get_if<T>(&variant);
  }
  // True when the same call may succeed later without the caller changing anything.
  [[nodiscard]] bool Retryable() const { return Is<VsockNotConnected>(); }
  [[nodiscard]] std::string ToString() const;
};

enum class ErrorKind {
  kInvalidConfig,        // a configuration or argument is invalid; the message names the field
  kLifecycle,            // the handle's state does not permit the operation; see lifecycle()
  kBackend,              // the engine or the guest agent failed or broke the protocol
  kGuestFile,            // a file operation inside the guest failed
  kSnapshotFormat,       // a snapshot on disk is truncated, corrupt or foreign
  kHostIo,               // a host system call failed; errno is kept
  kUnsupportedPlatform,  // the host lacks something the request needs (KVM, QEMU, ...)
};

std::string_view ToString(ErrorKind kind);

// What went wrong with a file inside the guest (kGuestFile errors).
enum class GuestFileErrorKind {
  kNotFound,          // ENOENT
  kPermissionDenied,  // EACCES, EPERM
  kNoSpace,           // ENOSPC, EDQUOT
  kIsDirectory,       // EISDIR
  kNotDirectory,      // ENOTDIR
  kExists,            // EEXIST
  kNotEmpty,          // ENOTEMPTY
  kIo,                // EIO and anything else
};

std::string_view ToString(GuestFileErrorKind kind);

class Error {
 public:
  static Error InvalidConfig(std::string field, std::string message);
  static Error Lifecycle(LifecycleError error);
  static Error Backend(std::string message);
  // The kind is derived from the guest's errno.
  static Error GuestFile(std::string path, int guest_errno, std::string message);
  static Error SnapshotFormat(std::string message);
  // From errno: `what` says which call on which object failed.
  static Error HostIo(std::string what, int errno_value);
  static Error UnsupportedPlatform(std::string message);

  [[nodiscard]] ErrorKind kind() const { return kind_; }
  // Set for kLifecycle only.
  [[nodiscard]] const LifecycleError* lifecycle() const {
    return lifecycle_ ? &*lifecycle_ : nullptr;
  }
  // The field for kInvalidConfig, the guest path for kGuestFile, else empty.
  [[nodiscard]] const std::string& subject() const { return subject_; }
  // errno for kHostIo, the guest's errno for kGuestFile, else 0.
  [[nodiscard]] int errno_value() const { return errno_; }
  // Set for kGuestFile only.
  [[nodiscard]] std::optional<GuestFileErrorKind> guest_file_kind() const { return file_kind_; }
  [[nodiscard]] const std::string& message() const { return message_; }

  // Prefixes the message with what was being done: "booting VM: <message>".
  [[nodiscard]] Error Context(std::string_view what) &&;

  // "<kind>: <message>", for logs and the CLI.
  [[nodiscard]] std::string ToString() const;

 private:
  Error(ErrorKind kind, std::string message) : kind_(kind), message_(std::move(message)) {}

  ErrorKind kind_;
  std::string message_;
  std::string subject_;
  int errno_ = 0;
  std::optional<LifecycleError> lifecycle_;
  std::optional<GuestFileErrorKind> file_kind_;
};

template <typename T>
using Result = std::expected<T, Error>;

// Shorthand for returning an error from a function that returns Result<T>.
inline std::unexpected<Error> Fail(Error error) { return std::unexpected(std::move(error)); }

}  // namespace vessel
