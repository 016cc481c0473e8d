#include "vmm/devices/virtio/mmio_transport.h"

#include <fmt/format.h>

#include <cstring>
#include <optional>
#include <string>

#include "vmm/core/guest_log.h"
#include "vmm/core/state_codec.h"

namespace vessel::vmm::virtio {
namespace {

uint32_t Low(uint64_t v) { return static_cast<uint32_t>(v); }
uint32_t High(uint64_t v) { return static_cast<uint32_t>(v >> 32); }
uint64_t WithLow(uint64_t v, uint32_t low) { return (v & ~uint64_t{0xffff'ffff}) | low; }
uint64_t WithHigh(uint64_t v, uint32_t high) {
  return (v & uint64_t{0xffff'ffff}) | (uint64_t{high} << 32);
}

// What FEATURES_OK accepts: a subset of what the device offers, with VERSION_1.
bool FeaturesAcceptable(uint64_t driver_features, uint64_t offered) {
  return (driver_features & ~offered) == 0 && (driver_features & kFeatureVersion1);
}

// A queue's registers as saved, and its progress when it was active.
struct SavedQueue {
  uint16_t size;
  bool ready;
  uint64_t desc_addr;
  uint64_t avail_addr;
  uint64_t used_addr;
  std::optional<Queue::Progress> progress;
};

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
    if (!FeaturesAcceptable(driver_features_, device_->features())) {
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

// version u32; status, DeviceFeaturesSel, DriverFeaturesSel u32, driver features u64,
// QueueSel u32, active u8, InterruptStatus u32, needs reset u8; queue count u16, then per
// queue: size u16, ready u8, descriptor, driver and device ring addresses u64, and when the
// transport is active and the queue ready its progress: next available, next used u16,
// used since the last interrupt u8, broken u8, invalid chains u64; last the device's own
// state: length u32 (0 unless active, at most kMaxVirtioDeviceStateBytes), bytes.
std::vector<uint8_t> MmioTransport::SaveState() {
  std::lock_guard lock(mutex_);
  StateWriter out;
  out.Put(kMmioStateVersion);
  out.Put(status_);
  out.Put(device_features_sel_);
  out.Put(driver_features_sel_);
  out.Put(driver_features_);
  out.Put(queue_sel_);
  out.Put(static_cast<uint8_t>(active_));
  out.Put(interrupt_status_.load());
  out.Put(static_cast<uint8_t>(needs_reset_.load()));
  out.Put(static_cast<uint16_t>(queues_.size()));
  for (const Queue& q : queues_) {
    out.Put(q.size());
    out.Put(static_cast<uint8_t>(q.ready()));
    out.Put(q.desc_addr());
    out.Put(q.avail_addr());
    out.Put(q.used_addr());
    if (active_ && q.ready()) {
      Queue::Progress progress = q.progress();
      out.Put(progress.next_avail);
      out.Put(progress.next_used);
      out.Put(static_cast<uint8_t>(progress.used_since_signal));
      out.Put(static_cast<uint8_t>(progress.broken));
      out.Put(progress.invalid_chains);
    }
  }
  std::vector<uint8_t> device_state;
  if (active_) device_state = device_->SaveState();
  out.Put(static_cast<uint32_t>(device_state.size()));
  out.Bytes(device_state);
  return out.Take();
}

Result<void> MmioTransport::LoadState(std::span<const uint8_t> bytes) {
  std::lock_guard lock(mutex_);
  ResetLocked();
  auto loaded = LoadStateLocked(bytes);
  if (!loaded) ResetLocked();
  return loaded;
}

Result<void> MmioTransport::LoadStateLocked(std::span<const uint8_t> bytes) {
  StateReader in(bytes, fmt::format("virtio-mmio state (device type {})", device_->device_type()));
  if (auto version = in.Version(kMmioStateVersion); !version) return version;
  auto status = in.Read<uint32_t>("the status");
  auto device_features_sel = in.Read<uint32_t>("DeviceFeaturesSel");
  auto driver_features_sel = in.Read<uint32_t>("DriverFeaturesSel");
  auto driver_features = in.Read<uint64_t>("the driver features");
  auto queue_sel = in.Read<uint32_t>("QueueSel");
  bool active = in.ReadBool("active");
  auto interrupt_status = in.Read<uint32_t>("InterruptStatus");
  bool needs_reset = in.ReadBool("needs reset");
  auto queue_count = in.Read<uint16_t>("the queue count");
  if (in.ok() && queue_count != queues_.size()) {
    return Fail(
        in.Malformed(fmt::format("{} queues, the device has {}", queue_count, queues_.size())));
  }
  std::vector<SavedQueue> saved(queues_.size());
  for (size_t i = 0; i < saved.size(); ++i) {
    std::string what = fmt::format("queue {}", i);
    SavedQueue& q = saved[i];
    q.size = in.Read<uint16_t>(what);
    q.ready = in.ReadBool(what + "'s ready");
    q.desc_addr = in.Read<uint64_t>(what);
    q.avail_addr = in.Read<uint64_t>(what);
    q.used_addr = in.Read<uint64_t>(what);
    if (active && q.ready) {
      Queue::Progress& progress = q.progress.emplace();
      progress.next_avail = in.Read<uint16_t>(what);
      progress.next_used = in.Read<uint16_t>(what);
      progress.used_since_signal = in.ReadBool(what + "'s used since signal");
      progress.broken = in.ReadBool(what + "'s broken");
      progress.invalid_chains = in.Read<uint64_t>(what);
    }
  }
  auto device_bytes = in.Read<uint32_t>("the device state's length");
  if (device_bytes > (active ? kMaxVirtioDeviceStateBytes : 0)) {
    return Fail(in.Malformed(fmt::format("{} bytes of device state ({} at most{})", device_bytes,
                                         active ? kMaxVirtioDeviceStateBytes : 0,
                                         active ? "" : " while not active")));
  }
  auto device_state = in.ReadBytes(device_bytes, "the device state");
  if (auto finished = in.Finish(); !finished) return finished;

  // The invariants the register path keeps.
  if (active != ((status & kStatusDriverOk) != 0)) {
    return Fail(in.Malformed(
        fmt::format("status {:#x} while {}", status, active ? "active" : "not active")));
  }
  if ((status & kStatusFeaturesOk) && !FeaturesAcceptable(driver_features, device_->features())) {
    return Fail(in.Malformed(fmt::format("FEATURES_OK with driver features {:#x} (offered {:#x})",
                                         driver_features, device_->features())));
  }
  if (active && !(status & kStatusFeaturesOk)) {
    return Fail(in.Malformed("active without FEATURES_OK"));
  }
  if (interrupt_status & ~(mmio::kInterruptUsedBuffer | mmio::kInterruptConfigChange)) {
    return Fail(in.Malformed(fmt::format("InterruptStatus {:#x}", interrupt_status)));
  }

  status_ = status;
  device_features_sel_ = device_features_sel;
  driver_features_sel_ = driver_features_sel;
  driver_features_ = driver_features;
  queue_sel_ = queue_sel;
  interrupt_status_ = interrupt_status;
  needs_reset_ = needs_reset;
  std::vector<Queue*> queues;
  for (size_t i = 0; i < queues_.size(); ++i) {
    Queue& q = queues_[i];
    const SavedQueue& s = saved[i];
    q.set_size(s.size);
    q.set_desc_addr(s.desc_addr);
    q.set_avail_addr(s.avail_addr);
    q.set_used_addr(s.used_addr);
    q.set_ready(s.ready);
    if (s.progress) {
      if (auto resumed = q.Resume(memory_, *s.progress); !resumed) {
        return Fail(in.Malformed(fmt::format("queue {}: {}", i, resumed.error().message())));
      }
    }
    queues.push_back(&q);
  }
  if (!active) return {};
  if (auto activated = device_->Activate(memory_, queues, driver_features_, signal_); !activated) {
    return Fail(in.Malformed("activating the device: " + activated.error().message()));
  }
  active_ = true;
  return device_->LoadState(device_state);
}

}  // namespace vessel::vmm::virtio
