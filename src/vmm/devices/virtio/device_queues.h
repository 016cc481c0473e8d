// The queues and driver signal a virtio device holds while active, and what every device
// does with them: take chains, return them, and interrupt the driver.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "vmm/devices/virtio/queue.h"
#include "vmm/devices/virtio/virtio_device.h"

namespace vessel::vmm::virtio {

// Not thread safe: the owning device calls it under its own lock.
class DeviceQueues {
 public:
  // `device_name` (such as "virtio-console") prefixes log lines.
  explicit DeviceQueues(std::string device_name) : device_name_(std::move(device_name)) {}

  // Holds `queues` and `signal` until Detach(); both must stay valid until then, as
  // VirtioDevice::Activate promises.
  void Attach(std::span<Queue* const> queues, DriverSignal& signal);
  void Detach();

  // Queue `index`, or nullptr when detached or out of range.
  [[nodiscard]] Queue* at(size_t index) const;
  // Attached, activated by the driver and not broken.
  [[nodiscard]] bool Usable(size_t index) const;

  // The next chain of queue `index`, nothing when there is none or the queue is not
  // usable. A corrupt ring is logged and asks the driver for a reset.
  [[nodiscard]] std::optional<DescriptorChain> Pop(size_t index);
  // Returns chain `head` of the usable queue `index`; a failure asks the driver for a reset.
  void Push(size_t index, uint16_t head, uint32_t written);
  // Interrupts the driver when any active queue returned chains since the last signal.
  void SignalUsed();
  // A line per queue for a state dump ("queue 0: ...").
  [[nodiscard]] std::string Describe() const;

 private:
  const std::string device_name_;
  std::vector<Queue*> queues_;
  DriverSignal* signal_ = nullptr;
};

}  // namespace vessel::vmm::virtio
