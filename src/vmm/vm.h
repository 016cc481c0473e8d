// The VM: the KVM handles, guest memory, the vCPU threads, the I/O thread and the device
// buses. One Vm per vessel-vmm process.
//
// Threads: one per vCPU runs KVM_RUN and dispatches port and MMIO exits to the devices;
// the I/O thread runs the EventLoop of the devices' host sockets; the caller's thread
// (the control thread) creates, starts, pauses, resumes and stops the VM.
#pragma once

#include <linux/kvm.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "vmm/arch/x86/kvm_state.h"
#include "vmm/arch/x86/machine_state.h"
#include "vmm/control.h"
#include "vmm/core/bus.h"
#include "vmm/core/device.h"
#include "vmm/core/event_loop.h"
#include "vmm/core/guest_memory.h"
#include "vmm/devices/serial/serial.h"
#include "vmm/vcpu.h"

namespace vessel::vmm {

namespace virtio {
class MmioTransport;
class VirtioDevice;
}  // namespace virtio

inline constexpr uint32_t kVsockSlot = 0;
inline constexpr uint32_t kConsoleSlot = 1;
inline constexpr uint32_t kDiskSlot = 2;
inline constexpr std::string_view kAgentPortName = "org.vessel.agent";
// The line the guest agent answers with its state dump (guest/agent/main.cc).
inline constexpr std::string_view kGuestDumpRequest = "vessel-agent-dump\n";

class Vm {
 public:
  // Sets up everything short of running: KVM, memory, kernel, boot data, devices, vCPUs.
  // `memory_file` is the guest RAM when config.memory is not kOwn; with kPrivate it is a
  // saved VM's, no kernel is loaded, and Restore() must come before Start().
  [[nodiscard]] static Result<std::unique_ptr<Vm>> Create(const VmConfig& config,
                                                          UniqueFd memory_file = {});
  // Stops and joins every thread.
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  // Starts the I/O thread and the vCPU threads, runs `confine` once every thread exists
  // and only then lets the vCPUs enter the guest: the guest's first instruction runs
  // confined. A failed `confine` stops the VM before it ran. Once.
  [[nodiscard]] Result<void> Start(const std::function<Result<void>()>& confine = {});
  // Returns once every vCPU is parked outside KVM_RUN.
  [[nodiscard]] Result<void> Pause();
  [[nodiscard]] Result<void> Resume();
  [[nodiscard]] VmState state() const;

  // Writes the paused VM's state (docs/snapshot-format.md section 9) to `state_file`, and
  // its RAM as `memory` says: kFreeze keeps the RAM file as the saved memory and goes on
  // from a private mapping of it (the RAM must be shared); kWrite writes the pages that
  // hold data to `memory_file`, of the RAM's size, at their offsets. The VM stays paused.
  [[nodiscard]] Result<void> Save(int state_file, protocol::vmm_control::SaveMemory memory,
                                  int memory_file);
  // Loads the state `state_file` holds into a VM created on a saved VM's memory, before
  // Start(): kSnapshotFormat when it is not a state of a VM configured like this one.
  [[nodiscard]] Result<void> Restore(int state_file);

  // Readable once the VM stopped by itself (guest reset or power off, a guest panic, a
  // vCPU failure); stop_reason() then says why.
  [[nodiscard]] int stopped_fd() const { return stopped_.get(); }
  [[nodiscard]] std::string stop_reason() const;
  // Guest accesses that no device answered, for diagnostics.
  [[nodiscard]] uint64_t unclaimed_pio() const { return unknown_pio_.load(); }
  [[nodiscard]] uint64_t unclaimed_mmio() const { return unknown_mmio_.load(); }

  // Why is it stuck? The VM's state and each virtio device's queues and connections, a line
  // each; and a request on the guest's serial line (kGuestDumpRequest) that the guest
  // agent answers on the console with a line per command stream. Safe from any thread.
  [[nodiscard]] std::string DumpState();

  // Stops the vCPUs and the I/O thread; idempotent.
  void Stop();

 private:
  Vm() = default;
  [[nodiscard]] Result<void> SetUpKvm(const VmConfig& config, UniqueFd memory_file);
  [[nodiscard]] Result<void> LoadGuest(const VmConfig& config);
  [[nodiscard]] Result<void> SetUpDevices(const VmConfig& config);
  [[nodiscard]] Result<void> SetUpVcpus(const VmConfig& config);
  [[nodiscard]] Result<std::shared_ptr<Interrupt>> MakeIrqLine(uint32_t gsi);
  [[nodiscard]] Result<void> AddVirtioDevice(uint32_t slot, std::string name,
                                             std::unique_ptr<virtio::VirtioDevice> device);

  void RunVcpu(Vcpu& vcpu);
  // Handles one exit; false when the vCPU must stop.
  bool HandleExit(Vcpu& vcpu);
  // The guest ended the VM (or a vCPU failed): record why, stop every vCPU, tell the owner.
  void GuestStopped(VmState state, std::string reason);
  void LogVcpuFailure(Vcpu& vcpu, std::string_view what);
  // Parks a vCPU thread while a pause is asked for; false when the VM stops instead.
  bool ParkWhilePaused(Vcpu& vcpu);
  [[nodiscard]] Result<MachineState> ReadMachineState();
  void KickVcpus();
  void ThreadReady();

  UniqueFd kvm_;
  UniqueFd vm_fd_;
  std::unique_ptr<GuestMemory> memory_;
  std::unique_ptr<EventLoop> loop_;
  std::vector<std::unique_ptr<PioDevice>> pio_devices_;
  std::vector<std::unique_ptr<MmioDevice>> mmio_devices_;
  Serial* serial_ = nullptr;
  Bus<PioDevice> pio_bus_;
  Bus<MmioDevice> mmio_bus_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::vector<uint32_t> virtio_slots_;
  std::vector<virtio::MmioTransport*> transports_;
  // Every device a snapshot keeps, by its name in the state file.
  std::vector<std::pair<std::string, StatefulDevice*>> stateful_;
  VcpuStateLayout vcpu_layout_;
  uint64_t entry_ = 0;
  std::thread io_thread_;
  UniqueFd stopped_;  // eventfd

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  VmState state_ = VmState::kConfigured;
  std::string stop_reason_;
  bool started_ = false;
  bool restore_pending_ = false;  // created on a saved VM's memory, not restored yet
  bool pause_requested_ = false;
  bool stop_requested_ = false;
  uint32_t parked_ = 0;
  uint32_t exited_ = 0;
  size_t threads_ready_ = 0;
  bool guest_released_ = false;  // the vCPUs may enter KVM_RUN
  std::atomic<uint64_t> unknown_pio_ = 0;
  std::atomic<uint64_t> unknown_mmio_ = 0;
};

}  // namespace vessel::vmm
