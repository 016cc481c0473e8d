// Errors are values: every fallible call returns Result<T> = std::expected<T, Error>.
//
// Error separates "you used the handle wrong" (Lifecycle, InvalidConfig) from "the VM or
// the host broke" (Backend, HostIo, ...), and says with retryable() whether the same call
// may succeed later, so a caller can decide whether to retry, change state first, or give
// up. Context is added on the way up with Error::Context().
#pragma once

#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace vessel {

// Lifecycle states of a sandbox. Stable names: they appear in errors and in `vessel ls`.
// A handle exists only once its agent said hello (Create, Restore and Fork return ready
// sandboxes), so a sandbox starts in kReady.
enum class SandboxState {
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
  // A snapshot was requested while the VM was not ready (it failed): retrying will not
  // help.
  struct NotReady {};
  // A fork was requested while the VM was not ready (it failed): retrying will not help.
  struct NotReadyForFork {};
  // The vsock command channel is required but not connected (yet): a retryable channel
  // condition; the next call tries to connect again.
  struct VsockNotConnected {};
  // The vsock command channel is not available for the operation on this engine or host:
  // a matter of configuration or platform, so retrying will not help; choose another
  // channel or engine.
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
  // True when the same call may succeed later without the caller changing anything:
  // VsockNotConnected only.
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
  // A kBackend error for a deadline that passed: timed_out() and retryable() are true.
  static Error Timeout(std::string message);
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
  // True when a deadline passed (Error::Timeout): a kBackend error, whatever the message.
  [[nodiscard]] bool timed_out() const { return timed_out_; }
  // True when the same call may succeed later without the caller changing anything: a
  // timeout, or a retryable lifecycle error (VsockNotConnected). False for everything
  // that needs a change first: destroyed, released, a wrong state, a bad config, a
  // missing platform feature, a broken VM, a damaged snapshot.
  [[nodiscard]] bool retryable() const {
    return timed_out_ || (lifecycle_ && lifecycle_->Retryable());
  }

  // Prefixes the message with what was being done: "booting VM: <message>".
  [[nodiscard]] Error Context(std::string_view what) &&;
  // Appends `detail` on lines of its own after the message, e.g. a VMM's output.
  [[nodiscard]] Error Detail(std::string_view detail) &&;

  // "<kind>: <message>", for logs and the CLI.
  [[nodiscard]] std::string ToString() const;

 private:
  Error(ErrorKind kind, std::string message) : kind_(kind), message_(std::move(message)) {}

  ErrorKind kind_;
  std::string message_;
  std::string subject_;
  int errno_ = 0;
  bool timed_out_ = false;
  std::optional<LifecycleError> lifecycle_;
  std::optional<GuestFileErrorKind> file_kind_;
};

template <typename T>
using Result = std::expected<T, Error>;

// Shorthand for returning an error from a function that returns Result<T>.
inline std::unexpected<Error> Fail(Error error) { return std::unexpected(std::move(error)); }

}  // namespace vessel
