// The control protocol between the host library and vessel-vmm (docs/vmm-protocol.md):
// one JSON object per SOCK_SEQPACKET message, one reply per request, in order.
//
// Requests are parsed and validated here into typed values, so the VM never sees JSON, and
// ControlSession enforces their order (hello, configure, start, then pause/resume/status,
// shutdown at any time) against a VmController, which tests replace with a fake.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "vessel/error.h"

namespace vessel::vmm {

inline constexpr int kControlProtocolVersion = 1;
inline constexpr std::string_view kVmmVersion = "vessel-vmm 0.1.0";
inline constexpr size_t kMaxControlMessage = 64 * 1024;
inline constexpr uint32_t kMaxVcpus = 32;
inline constexpr uint64_t kMinMemoryMib = 64;
inline constexpr uint64_t kMaxMemoryMib = 64 * 1024;
// Guest CIDs 0-2 are reserved (hypervisor, local, host); the top value is VMADDR_CID_ANY.
inline constexpr uint64_t kMinGuestCid = 3;
inline constexpr uint64_t kMaxGuestCid = 0xffff'fffe;
// A unix socket path must fit sockaddr_un::sun_path with its NUL; vsock appends "_<port>".
inline constexpr size_t kMaxSocketPath = 100;
inline constexpr size_t kMaxPath = 4096;
inline constexpr size_t kMaxCmdline = 2047;

struct VsockConfig {
  uint64_t cid;
  std::string uds;
};

struct VmConfig {
  uint32_t vcpus = 1;
  uint64_t memory_mib = 0;
  std::string kernel;
  std::string initramfs;  // empty: none
  std::string cmdline;
  std::string console_log;
  std::optional<VsockConfig> vsock;
  std::string agent_port;  // empty: no virtio-console agent port
};

namespace request {
struct Hello {
  int64_t version;
};
struct Configure {
  VmConfig config;
};
struct Start {};
struct Pause {};
struct Resume {};
struct Status {};
struct Shutdown {};
}  // namespace request

using Request = std::variant<request::Hello, request::Configure, request::Start, request::Pause,
                             request::Resume, request::Status, request::Shutdown>;

// Parses one message. The error message says what is wrong, for the error reply.
[[nodiscard]] Result<Request> ParseRequest(std::string_view message);

enum class VmState { kConfigured, kRunning, kPaused, kShutdown, kGuestPanicked, kFailed };
std::string_view ToString(VmState state);

// What the control protocol drives. Called from the control thread only.
class VmController {
 public:
  virtual ~VmController() = default;
  [[nodiscard]] virtual Result<void> Configure(const VmConfig& config) = 0;
  [[nodiscard]] virtual Result<void> Start() = 0;
  [[nodiscard]] virtual Result<void> Pause() = 0;
  [[nodiscard]] virtual Result<void> Resume() = 0;
  [[nodiscard]] virtual VmState state() const = 0;
};

std::string OkReply();
std::string ErrorReply(std::string_view error);

class ControlSession {
 public:
  explicit ControlSession(VmController& vm) : vm_(vm) {}

  // The reply to one request message. Never fails: a bad request gets an error reply.
  [[nodiscard]] std::string Handle(std::string_view message);

  // The host asked for shutdown and was answered: the process should now stop the VM
  // and exit.
  [[nodiscard]] bool shutdown_requested() const { return shutdown_requested_; }

 private:
  enum class Phase { kAwaitingHello, kAwaitingConfigure, kConfigured, kStarted };

  std::string Dispatch(const Request& request);

  VmController& vm_;
  Phase phase_ = Phase::kAwaitingHello;
  bool shutdown_requested_ = false;
};

}  // namespace vessel::vmm
