// A virtio device as its transport sees it: identity, features, queues, config space and
// the three moments of its life (activation, queue notification, reset). The transport
// (virtio-mmio here) owns the register protocol and the Queue objects; the device owns
// what the queues carry.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vessel/error.h"
#include "vmm/core/guest_memory.h"
#include "vmm/devices/virtio/queue.h"

namespace vessel::vmm::virtio {

// Device-independent feature bits (virtio 1.x, section 6).
inline constexpr uint64_t kFeatureVersion1 = 1ULL << 32;

// Device status bits (virtio 1.x, 2.1).
inline constexpr uint32_t kStatusAcknowledge = 1;
inline constexpr uint32_t kStatusDriver = 2;
inline constexpr uint32_t kStatusDriverOk = 4;
inline constexpr uint32_t kStatusFeaturesOk = 8;
inline constexpr uint32_t kStatusDeviceNeedsReset = 64;
inline constexpr uint32_t kStatusFailed = 128;

// How an active device reaches its driver. Both calls are safe from any thread and never
// take a lock of the transport, so a device may call them while holding its own.
class DriverSignal {
 public:
  virtual ~DriverSignal() = default;
  // Used buffers were added to a queue.
  virtual void UsedBuffers() = 0;
  // The device met a driver error it cannot recover from (a corrupt ring): it stops using
  // its queues until the driver resets it.
  virtual void NeedsReset() = 0;
};

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  [[nodiscard]] virtual uint32_t device_type() const = 0;
  // Offered features; must include kFeatureVersion1.
  [[nodiscard]] virtual uint64_t features() const = 0;
  [[nodiscard]] virtual size_t num_queues() const = 0;
  // A power of two; every queue of the device offers it as QueueNumMax.
  [[nodiscard]] virtual uint16_t max_queue_size() const = 0;

  // Device-specific configuration space, `offset` from its start. Reads outside it fill
  // zeros, writes outside it are ignored.
  virtual void ReadConfig(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void WriteConfig(uint64_t offset, std::span<const uint8_t> data) = 0;

  // The driver set DRIVER_OK. `queues` (num_queues() entries, all validated and ready, or
  // not ready when the driver left a queue unused) and `signal` stay valid until Reset()
  // returns. Called with no other call to the device in progress.
  [[nodiscard]] virtual Result<void> Activate(const GuestMemory& memory,
                                              std::span<Queue* const> queues,
                                              uint64_t acked_features, DriverSignal& signal) = 0;
  // The driver notified queue `index` (< num_queues()); only called while active. May run
  // on any vCPU thread, concurrently with the device's own I/O work.
  virtual void QueueNotify(size_t index) = 0;
  // The device's own state beyond its queues, which the transport keeps; empty when the
  // device has none. Only called while active.
  [[nodiscard]] virtual std::vector<uint8_t> SaveState() { return {}; }
  // Called by the transport after Activate() when loading a saved state, with what
  // SaveState() gave; kSnapshotFormat for anything else.
  [[nodiscard]] virtual Result<void> LoadState(std::span<const uint8_t> bytes) {
    if (bytes.empty()) return {};
    return Fail(Error::SnapshotFormat("virtio device type " + std::to_string(device_type()) + ": " +
                                      std::to_string(bytes.size()) +
                                      " bytes of state for a device that keeps none"));
  }

  // The driver wrote 0 to Status: drop every reference to the queues and the signal and
  // return to the pre-activation state. Also called when the device was never activated.
  virtual void Reset() = 0;

  // The device's state for a dump when the VMM is asked why it is stuck: its queues and
  // whatever else it holds, a line each. Safe from any thread.
  [[nodiscard]] virtual std::string DescribeState() = 0;
};

}  // namespace vessel::vmm::virtio
