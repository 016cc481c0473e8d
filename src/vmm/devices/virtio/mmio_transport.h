// The virtio-mmio transport, version 2 (virtio 1.x, 4.2): the register window through
// which the guest driver discovers a device, negotiates features, places its queues and
// notifies them. One transport per device, each in its own 4 KiB window.
//
// Thread safe: registers may be accessed from several vCPU threads at once, while the
// device signals used buffers from its I/O thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "vmm/core/device.h"
#include "vmm/core/guest_memory.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/devices/virtio/virtio_device.h"

namespace vessel::vmm::virtio {

// Register offsets of virtio-mmio version 2.
namespace mmio {
inline constexpr uint64_t kMagicValue = 0x000;
inline constexpr uint64_t kVersion = 0x004;
inline constexpr uint64_t kDeviceId = 0x008;
inline constexpr uint64_t kVendorId = 0x00c;
inline constexpr uint64_t kDeviceFeatures = 0x010;
inline constexpr uint64_t kDeviceFeaturesSel = 0x014;
inline constexpr uint64_t kDriverFeatures = 0x020;
inline constexpr uint64_t kDriverFeaturesSel = 0x024;
inline constexpr uint64_t kQueueSel = 0x030;
inline constexpr uint64_t kQueueNumMax = 0x034;
inline constexpr uint64_t kQueueNum = 0x038;
inline constexpr uint64_t kQueueReady = 0x044;
inline constexpr uint64_t kQueueNotify = 0x050;
inline constexpr uint64_t kInterruptStatus = 0x060;
inline constexpr uint64_t kInterruptAck = 0x064;
inline constexpr uint64_t kStatus = 0x070;
inline constexpr uint64_t kQueueDescLow = 0x080;
inline constexpr uint64_t kQueueDescHigh = 0x084;
inline constexpr uint64_t kQueueDriverLow = 0x090;
inline constexpr uint64_t kQueueDriverHigh = 0x094;
inline constexpr uint64_t kQueueDeviceLow = 0x0a0;
inline constexpr uint64_t kQueueDeviceHigh = 0x0a4;
inline constexpr uint64_t kConfigGeneration = 0x0fc;
inline constexpr uint64_t kConfig = 0x100;

inline constexpr uint32_t kMagic = 0x74726976;   // "virt"
inline constexpr uint32_t kVendor = 0x4c535356;  // "VSSL"
inline constexpr uint32_t kInterruptUsedBuffer = 1;
inline constexpr uint32_t kInterruptConfigChange = 2;
}  // namespace mmio

// Its saved state (version kMmioStateVersion) is the transport's registers, each queue's
// configuration and, while active, its progress and the device's own state. Loading it
// checks what the register path checks (a ready queue of an active transport is activated
// as at DRIVER_OK) and activates the device with the loaded queues before handing it its
// own state; a failure leaves the transport reset.
inline constexpr uint32_t kMmioStateVersion = 1;
// The most state a virtio device may save.
inline constexpr size_t kMaxVirtioDeviceStateBytes = 64 << 10;

class MmioTransport : public MmioDevice, public StatefulDevice {
 public:
  // `memory` must outlive the transport. `interrupt` is the device's line.
  MmioTransport(const GuestMemory& memory, std::unique_ptr<VirtioDevice> device,
                std::shared_ptr<Interrupt> interrupt);
  ~MmioTransport() override;
  MmioTransport(const MmioTransport&) = delete;
  MmioTransport& operator=(const MmioTransport&) = delete;

  void MmioRead(uint64_t offset, std::span<uint8_t> data) override;
  void MmioWrite(uint64_t offset, std::span<const uint8_t> data) override;
  [[nodiscard]] std::vector<uint8_t> SaveState() override;
  [[nodiscard]] Result<void> LoadState(std::span<const uint8_t> bytes) override;

  // Device status as the driver last set it (plus DEVICE_NEEDS_RESET); for diagnostics.
  [[nodiscard]] uint32_t status() const;
  [[nodiscard]] VirtioDevice& device() { return *device_; }
  // The transport's registers of note and the device's own dump.
  [[nodiscard]] std::string DescribeState();

 private:
  class Signal : public DriverSignal {
   public:
    explicit Signal(MmioTransport& transport) : transport_(transport) {}
    void UsedBuffers() override;
    void NeedsReset() override;

   private:
    MmioTransport& transport_;
  };

  uint32_t ReadRegister(uint64_t offset);
  void WriteRegister(uint64_t offset, uint32_t value);
  void WriteStatus(uint32_t value);
  void ResetLocked();
  [[nodiscard]] Result<void> LoadStateLocked(std::span<const uint8_t> bytes);
  Queue* SelectedQueue();

  const GuestMemory& memory_;
  std::unique_ptr<VirtioDevice> device_;
  std::shared_ptr<Interrupt> interrupt_;
  Signal signal_{*this};

  mutable std::mutex mutex_;
  std::vector<Queue> queues_;
  uint32_t status_ = 0;
  uint32_t device_features_sel_ = 0;
  uint32_t driver_features_sel_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t queue_sel_ = 0;
  bool active_ = false;
  // Set by the device from any thread, so outside mutex_.
  std::atomic<uint32_t> interrupt_status_{0};
  std::atomic<bool> needs_reset_{false};
};

}  // namespace vessel::vmm::virtio
