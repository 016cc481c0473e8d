#include "vmm/devices/virtio/mmio_transport.h"

#include <fmt/format.h>

#include <cstring>

#include "vmm/core/guest_log.h"

namespace vessel::vmm::virtio {
namespace {

uint32_t Low(uint64_t v) { return static_cast<uint32_t>(v); }
uint32_t High(uint64_t v) { return static_cast<uint32_t>(v >> 32); }
uint64_t WithLow(uint64_t v, uint32_t low) { return (v & ~uint64_t{0xffff'ffff}) | low; }
uint64_t WithHigh(uint64_t v, uint32_t high) {
  return (v & uint64_t{0xffff'ffff}) | (uint64_t{high} << 32);
}

}  // namespace

MmioTransport::MmioTransport(const GuestMemory& memory, std::unique_ptr<VirtioDevice> device,
                             std::shared_ptr<Interrupt> interrupt)
    : memory_(memory), device_(std::move(device)), interrupt_(std::move(interrupt)) {
  queues_.reserve(device_->num_queues());
  for (size_t i = 0; i < device_->num_queues(); ++i)
    queues_.emplace_back(device_->max_queue_size());
}

MmioTransport::~MmioTransport() {
  std::lock_guard lock(mutex_);
  if (active_) device_->Reset();
}

uint32_t MmioTransport::status() const {
  std::lock_guard lock(mutex_);
  return status_ | (needs_reset_.load() ? kStatusDeviceNeedsReset : 0);
}

std::string MmioTransport::DescribeState() {
  std::string head;
  {
    std::lock_guard lock(mutex_);
    head = fmt::format("virtio device type {}: status={:#x}{} interrupt_status={:#x} {}\n",
                       device_->device_type(), status_, needs_reset_.load() ? " NEEDS_RESET" : "",
                       interrupt_status_.load(), active_ ? "active" : "not active");
  }
  // Outside mutex_, as for QueueNotify: the device takes its own lock.
  return head + device_->DescribeState();
}

void MmioTransport::Signal::UsedBuffers() {
  transport_.interrupt_status_.fetch_or(mmio::kInterruptUsedBuffer);
  transport_.interrupt_->Trigger();
}

void MmioTransport::Signal::NeedsReset() {
  if (transport_.needs_reset_.exchange(true)) return;
  transport_.interrupt_status_.fetch_or(mmio::kInterruptConfigChange);
  transport_.interrupt_->Trigger();
}

void MmioTransport::MmioRead(uint64_t offset, std::span<uint8_t> data) {
  std::memset(data.data(), 0, data.size());
  if (offset >= mmio::kConfig) {
    std::lock_guard lock(mutex_);
    device_->ReadConfig(offset - mmio::kConfig, data);
    return;
  }
  // Registers below the config space are 32 bits wide and aligned; anything else reads 0.
  if (data.size() != 4 || offset % 4 != 0) return;
  uint32_t value = ReadRegister(offset);
  std::memcpy(data.data(), &value, sizeof(value));
}

void MmioTransport::MmioWrite(uint64_t offset, std::span<const uint8_t> data) {
  if (offset >= mmio::kConfig) {
    std::lock_guard lock(mutex_);
    device_->WriteConfig(offset - mmio::kConfig, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) return;
  uint32_t value;
  std::memcpy(&value, data.data(), sizeof(value));
  if (offset == mmio::kQueueNotify) {
    // Outside mutex_: the device may take its own lock and do I/O, and the transport
    // lock is always taken before the device's, never after.
    bool active;
    {
      std::lock_guard lock(mutex_);
      active = active_ && !needs_reset_.load();
    }
    if (active && value < queues_.size()) device_->QueueNotify(value);
    return;
  }
  WriteRegister(offset, value);
}

Queue* MmioTransport::SelectedQueue() {
  return queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr;
}

uint32_t MmioTransport::ReadRegister(uint64_t offset) {
  std::lock_guard lock(mutex_);
  switch (offset) {
    case mmio::kMagicValue: return mmio::kMagic;
    case mmio::kVersion: return 2;
    case mmio::kDeviceId: return device_->device_type();
    case mmio::kVendorId: return mmio::kVendor;
    case mmio::kDeviceFeatures:
      if (device_features_sel_ == 0) return Low(device_->features());
      if (device_features_sel_ == 1) return High(device_->features());
      return 0;
    case mmio::kQueueNumMax: {
      Queue* q = SelectedQueue();
      return q ? q->max_size() : 0;
    }
    case mmio::kQueueReady: {
      Queue* q = SelectedQueue();
      return q && q->ready() ? 1 : 0;
    }
    case mmio::kInterruptStatus: return interrupt_status_.load();
    case mmio::kStatus: return status_ | (needs_reset_.load() ? kStatusDeviceNeedsReset : 0);
    case mmio::kConfigGeneration: return 0;
    default: return 0;
  }
}

void MmioTransport::WriteRegister(uint64_t offset, uint32_t value) {
  std::lock_guard lock(mutex_);
  switch (offset) {
    case mmio::kDeviceFeaturesSel: device_features_sel_ = value; return;
    case mmio::kDriverFeaturesSel: driver_features_sel_ = value; return;
    case mmio::kDriverFeatures:
      // Features are fixed once the driver said FEATURES_OK.
      if ((status_ & kStatusFeaturesOk) || !(status_ & kStatusDriver)) return;
      if (driver_features_sel_ == 0) driver_features_ = WithLow(driver_features_, value);
      if (driver_features_sel_ == 1) driver_features_ = WithHigh(driver_features_, value);
      return;
    case mmio::kQueueSel: queue_sel_ = value; return;
    case mmio::kInterruptAck: interrupt_status_.fetch_and(~value); return;
    case mmio::kStatus: WriteStatus(value); return;
    default: break;
  }
  // Queue configuration: only before DRIVER_OK, and only for a queue not yet ready.
  Queue* q = SelectedQueue();
  if (!q || active_ || (status_ & kStatusDriverOk)) return;
  if (offset == mmio::kQueueReady) {
    q->set_ready(value == 1);
    return;
  }
  if (q->ready()) return;
  switch (offset) {
    case mmio::kQueueNum: q->set_size(static_cast<uint16_t>(value > 0xffff ? 0 : value)); return;
    case mmio::kQueueDescLow: q->set_desc_addr(WithLow(q->desc_addr(), value)); return;
    case mmio::kQueueDescHigh: q->set_desc_addr(WithHigh(q->desc_addr(), value)); return;
    case mmio::kQueueDriverLow: q->set_avail_addr(WithLow(q->avail_addr(), value)); return;
    case mmio::kQueueDriverHigh: q->set_avail_addr(WithHigh(q->avail_addr(), value)); return;
    case mmio::kQueueDeviceLow: q->set_used_addr(WithLow(q->used_addr(), value)); return;
    case mmio::kQueueDeviceHigh: q->set_used_addr(WithHigh(q->used_addr(), value)); return;
    default: return;
  }
}

void MmioTransport::WriteStatus(uint32_t value) {
  if (value == 0) {
    ResetLocked();
    return;
  }
  // The driver only ever adds bits, in order; anything else is ignored.
  if ((value & status_) != status_) return;
  uint32_t added = value & ~status_;
  if (added & kStatusFeaturesOk) {
    uint64_t offered = device_->features();
    if ((driver_features_ & ~offered) != 0 || !(driver_features_ & kFeatureVersion1)) {
      // Leaving FEATURES_OK clear tells the driver its subset was refused.
      value &= ~kStatusFeaturesOk;
    }
  }
  if ((added & kStatusDriverOk) && !active_) {
    if (!(value & kStatusFeaturesOk)) {
      status_ = (value & ~kStatusDriverOk) | kStatusFailed;
      return;
    }
    std::vector<Queue*> queues;
    for (Queue& q : queues_) {
      if (q.ready()) {
        if (auto activated = q.Activate(memory_); !activated) {
          GuestLog(fmt::format("virtio device {}: {}", device_->device_type(),
                               activated.error().message()));
          status_ = value & ~kStatusDriverOk;
          needs_reset_ = true;
          return;
        }
      }
      queues.push_back(&q);
    }
    if (auto activated = device_->Activate(memory_, queues, driver_features_, signal_);
        !activated) {
      GuestLog(fmt::format("virtio device {}: {}", device_->device_type(),
                           activated.error().message()));
      status_ = value & ~kStatusDriverOk;
      needs_reset_ = true;
      return;
    }
    active_ = true;
  }
  status_ = value;
}

void MmioTransport::ResetLocked() {
  device_->Reset();
  active_ = false;
  for (Queue& q : queues_) q.Reset();
  status_ = 0;
  device_features_sel_ = 0;
  driver_features_sel_ = 0;
  driver_features_ = 0;
  queue_sel_ = 0;
  interrupt_status_ = 0;
  needs_reset_ = false;
}

}  // namespace vessel::vmm::virtio
