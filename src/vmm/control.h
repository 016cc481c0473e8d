// The VMM's side of the control protocol (docs/vmm-protocol.md). Requests are decoded and
// validated by protocol/vmm_control into typed values, so the VM never sees JSON, and
// ControlSession enforces their order (hello, configure, start or restore, then
// pause/resume/save/status, shutdown at any time) and the descriptors each comes with
// against a VmController, which tests replace with a fake.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "base/unique_fd.h"
#include "protocol/vmm_control.h"
#include "vessel/error.h"

namespace vessel::vmm {

inline constexpr std::string_view kVmmVersion = "vessel-vmm 0.1.0";

using protocol::vmm_control::MemorySource;
using protocol::vmm_control::Request;
using protocol::vmm_control::SaveMemory;
using protocol::vmm_control::ToString;
using protocol::vmm_control::VmConfig;
using protocol::vmm_control::VmState;

// What the control protocol drives. Called from the control thread only.
class VmController {
 public:
  virtual ~VmController() = default;
  // `memory_file` is the guest RAM, open when config.memory is not kOwn.
  [[nodiscard]] virtual Result<void> Configure(const VmConfig& config, UniqueFd memory_file) = 0;
  [[nodiscard]] virtual Result<void> Start() = 0;
  [[nodiscard]] virtual Result<void> Pause() = 0;
  [[nodiscard]] virtual Result<void> Resume() = 0;
  // `memory_file` is -1 with kFreeze.
  [[nodiscard]] virtual Result<void> Save(SaveMemory memory, int state_file, int memory_file) = 0;
  // Loads the saved state and runs the VM, as Start() does a boot.
  [[nodiscard]] virtual Result<void> Restore(int state_file) = 0;
  [[nodiscard]] virtual VmState state() const = 0;
};

class ControlSession {
 public:
  explicit ControlSession(VmController& vm) : vm_(vm) {}

  // The reply to one request message and the descriptors that came with it. Never fails: a
  // bad request gets an error reply (also when it came with other descriptors than it
  // takes), and the descriptors are closed once it is handled.
  [[nodiscard]] std::string Handle(std::string_view message, std::vector<UniqueFd> fds = {});

  // The host asked for shutdown and was answered: the process should now stop the VM
  // and exit.
  [[nodiscard]] bool shutdown_requested() const { return shutdown_requested_; }

 private:
  // kAwaitingRestore: configured on a saved VM's memory, which only "restore" runs.
  enum class Phase { kAwaitingHello, kAwaitingConfigure, kConfigured, kAwaitingRestore, kStarted };

  protocol::vmm_control::Reply Dispatch(const Request& request, std::vector<UniqueFd>& fds);

  VmController& vm_;
  Phase phase_ = Phase::kAwaitingHello;
  bool shutdown_requested_ = false;
};

}  // namespace vessel::vmm
