// The VMM's side of the control protocol (docs/vmm-protocol.md). Requests are decoded and
// validated by protocol/vmm_control into typed values, so the VM never sees JSON, and
// ControlSession enforces their order (hello, configure, start, then pause/resume/status,
// shutdown at any time) against a VmController, which tests replace with a fake.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "protocol/vmm_control.h"
#include "vessel/error.h"

namespace vessel::vmm {

inline constexpr std::string_view kVmmVersion = "vessel-vmm 0.1.0";

using protocol::vmm_control::Request;
using protocol::vmm_control::ToString;
using protocol::vmm_control::VmConfig;
using protocol::vmm_control::VmState;

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

  protocol::vmm_control::Reply Dispatch(const Request& request);

  VmController& vm_;
  Phase phase_ = Phase::kAwaitingHello;
  bool shutdown_requested_ = false;
};

}  // namespace vessel::vmm
