#include "vmm/devices/virtio/device_queues.h"

#include <fmt/format.h>


#include "vmm/core/guest_log.h"

namespace vessel::vmm::virtio {

void DeviceQueues::Attach(std::span<Queue* const> queues, DriverSignal& signal) {
  queues_.assign(queues.begin(), queues.end());
  signal_ = &signal;
}

void DeviceQueues::Detach() {
  queues_.clear();
  signal_ = nullptr;
}

Queue* DeviceQueues::at(size_t index) const {
  return index < queues_.size() ? queues_[index] : nullptr;
}

bool DeviceQueues::Usable(size_t index) const {
  Queue* q = at(index);
  return signal_ && q && q->active() && !q->broken();
}

std::optional<DescriptorChain> DeviceQueues::Pop(size_t index) {
  if (!Usable(index)) return std::nullopt;
  auto chain = queues_[index]->Pop();
  if (!chain) {
    GuestLog(fmt::format("{} queue {}: {}", device_name_, index, chain.error().message()));
    signal_->NeedsReset();
    return std::nullopt;
  }
  return *chain;
}

void DeviceQueues::Push(size_t index, uint16_t head, uint32_t written) {
  if (auto pushed = queues_[index]->PushUsed(head, written); !pushed) signal_->NeedsReset();
}

std::string DeviceQueues::Describe() const {
  if (!signal_) return "  not active\n";
  std::string out;
  for (size_t i = 0; i < queues_.size(); ++i) {
    out += fmt::format("  queue {}: {}\n", i, queues_[i] ? queues_[i]->Describe() : "none");
  }
  return out;
}

void DeviceQueues::SignalUsed() {
  if (!signal_) return;
  bool used = false;
  for (Queue* q : queues_) {
    if (q && q->active() && q->TakeUsedSinceSignal()) used = true;
  }
  if (used) signal_->UsedBuffers();
}

}  // namespace vessel::vmm::virtio
