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
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "engine/kvm/devices/serial/serial.h"
#include "engine/kvm/vmm/control.h"
#include "engine/kvm/vmm/device.h"
#include "engine/kvm/vmm/event_loop.h"
#include "engine/kvm/vmm/guest_memory.h"

namespace vessel::vmm {

namespace virtio {
class MmioTransport;
class VirtioDevice;
}

// virtio-mmio device i sits at kVirtioMmioBase + i * kVirtioMmioSize on GSI kVirtioFirstGsi + i.
inline constexpr uint64_t kVirtioMmioBase = 0xd000'0000;
inline constexpr uint64_t kVirtioMmioSize = 0x1000;
inline constexpr uint32_t kVirtioFirstGsi = 5;
inline constexpr uint32_t kVsockSlot = 0;
inline constexpr uint32_t kConsoleSlot = 1;
inline constexpr std::string_view kAgentPortName = "org.vessel.agent";
// The line the guest agent answers with its state dump (guest/agent/main.cc).
inline constexpr std::string_view kGuestDumpRequest = "vessel-agent-dump\n";

// The kernel command line the guest gets: the configured one plus a virtio_mmio.device=
// entry for each virtio slot in `slots`, placed before any "--" that starts init's
// arguments.
[[nodiscard]] std::string GuestCmdline(std::string_view configured,
                                       std::span<const uint32_t> slots);

// A range of port or MMIO space routed to a device. `first_offset` is the device offset of
// `base`, so one device can own several ranges (the i8042 has 0x60 and 0x64).
template <typename Device>
class Bus {
 public:
  void Insert(uint64_t base, uint64_t size, Device* device, uint64_t first_offset = 0) {
    entries_.push_back({base, size, device, first_offset});
  }
  // The device covering [addr, addr + len) and the offset of addr in it.
  [[nodiscard]] std::pair<Device*, uint64_t> Find(uint64_t addr, uint64_t len) const {
    for (const Entry& e : entries_) {
      if (addr >= e.base && addr - e.base < e.size && len <= e.size - (addr - e.base)) {
        return {e.device, e.first_offset + addr - e.base};
      }
    }
    return {nullptr, 0};
  }

 private:
  struct Entry {
    uint64_t base;
    uint64_t size;
    Device* device;
    uint64_t first_offset;
  };
  std::vector<Entry> entries_;
};

class Vm {
 public:
  // Sets up everything short of running: KVM, memory, kernel, boot data, devices, vCPUs.
  [[nodiscard]] static Result<std::unique_ptr<Vm>> Create(const VmConfig& config);
  // Stops and joins every thread.
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  // Starts the I/O thread and the vCPU threads. Once.
  [[nodiscard]] Result<void> Start();
  // Returns once every vCPU is parked outside KVM_RUN.
  [[nodiscard]] Result<void> Pause();
  [[nodiscard]] Result<void> Resume();
  [[nodiscard]] VmState state() const;

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
  struct Vcpu {
    uint32_t index = 0;
    UniqueFd fd;
    kvm_run* run = nullptr;
    size_t run_size = 0;
    std::thread thread;
  };

  Vm() = default;
  [[nodiscard]] Result<void> SetUpKvm(const VmConfig& config);
  [[nodiscard]] Result<void> LoadGuest(const VmConfig& config);
  [[nodiscard]] Result<void> SetUpDevices(const VmConfig& config);
  [[nodiscard]] Result<void> SetUpVcpus(const VmConfig& config);
  [[nodiscard]] Result<std::shared_ptr<Interrupt>> MakeIrqLine(uint32_t gsi);
  [[nodiscard]] Result<void> AddVirtioDevice(uint32_t slot,
                                             std::unique_ptr<virtio::VirtioDevice> device);

  void RunVcpu(Vcpu& vcpu);
  // Handles one exit; false when the vCPU must stop.
  bool HandleExit(Vcpu& vcpu);
  void HandleIo(Vcpu& vcpu);
  void HandleMmio(Vcpu& vcpu);
  // The guest ended the VM (or a vCPU failed): record why, stop every vCPU, tell the owner.
  void GuestStopped(VmState state, std::string reason);
  void LogVcpuFailure(Vcpu& vcpu, std::string_view what);
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
  uint64_t entry_ = 0;
  std::thread io_thread_;
  UniqueFd stopped_;  // eventfd

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  VmState state_ = VmState::kConfigured;
  std::string stop_reason_;
  bool started_ = false;
  bool pause_requested_ = false;
  bool stop_requested_ = false;
  uint32_t parked_ = 0;
  uint32_t exited_ = 0;
  size_t threads_ready_ = 0;
  std::atomic<uint64_t> unknown_pio_ = 0;
  std::atomic<uint64_t> unknown_mmio_ = 0;
};

}  // namespace vessel::vmm
