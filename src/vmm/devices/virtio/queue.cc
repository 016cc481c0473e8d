#include "vmm/devices/virtio/queue.h"

#include <fmt/format.h>

#include <atomic>
#include <bit>
#include <cstring>

namespace vessel::vmm::virtio {
namespace {

static_assert(std::endian::native == std::endian::little,
              "virtio 1.x rings are little-endian; this reads them natively");

constexpr uint64_t kDescSize = 16;
// flags, idx, then the ring, then used_event / avail_event.
constexpr uint64_t kRingHeader = 4;
constexpr uint64_t kUsedElemSize = 8;

struct RawDescriptor {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(RawDescriptor) == kDescSize);

// The ring indices are shared with vCPUs running the driver: acquire on the available
// index orders the descriptor reads after it, release on the used index publishes the used
// element before it.
uint16_t LoadAcquire(uint8_t* p) {
  return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(p)).load(std::memory_order_acquire);
}
void StoreRelease(uint8_t* p, uint16_t value) {
  std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(p))
      .store(value, std::memory_order_release);
}

Result<uint8_t*> MapRing(const GuestMemory& memory, uint64_t addr, uint64_t len, uint64_t align,
                         const char* what) {
  if (addr % align != 0) {
    return Fail(Error::Backend(
        fmt::format("virtqueue {} at {:#x} is not {}-byte aligned", what, addr, align)));
  }
  auto slice = memory.Slice(addr, len);
  if (!slice) {
    return Fail(Error::Backend(
        fmt::format("virtqueue {} at {:#x} (+{:#x}) is not guest RAM", what, addr, len)));
  }
  return slice->data();
}

}  // namespace

size_t CopyFromBuffers(std::span<const std::span<uint8_t>> buffers, uint64_t offset,
                       std::span<uint8_t> out) {
  size_t copied = 0;
  for (const auto& buf : buffers) {
    if (copied == out.size()) break;
    if (offset >= buf.size()) {
      offset -= buf.size();
      continue;
    }
    size_t n = std::min<size_t>(buf.size() - offset, out.size() - copied);
    std::memcpy(out.data() + copied, buf.data() + offset, n);
    copied += n;
    offset = 0;
  }
  return copied;
}

size_t CopyToBuffers(std::span<const std::span<uint8_t>> buffers, uint64_t offset,
                     std::span<const uint8_t> in) {
  size_t copied = 0;
  for (const auto& buf : buffers) {
    if (copied == in.size()) break;
    if (offset >= buf.size()) {
      offset -= buf.size();
      continue;
    }
    size_t n = std::min<size_t>(buf.size() - offset, in.size() - copied);
    std::memcpy(buf.data() + offset, in.data() + copied, n);
    copied += n;
    offset = 0;
  }
  return copied;
}

Result<void> Queue::Activate(const GuestMemory& memory) {
  if (!ready_) return Fail(Error::Backend("virtqueue activated before the driver set it ready"));
  if (size_ == 0 || size_ > max_size_ || !std::has_single_bit(size_)) {
    return Fail(Error::Backend(
        fmt::format("virtqueue size {} is not a power of two between 1 and {}", size_, max_size_)));
  }
  uint64_t n = size_;
  auto desc = MapRing(memory, desc_addr_, n * kDescSize, 16, "descriptor table");
  if (!desc) return Fail(desc.error());
  auto avail = MapRing(memory, avail_addr_, kRingHeader + 2 * n + 2, 2, "available ring");
  if (!avail) return Fail(avail.error());
  auto used = MapRing(memory, used_addr_, kRingHeader + kUsedElemSize * n + 2, 4, "used ring");
  if (!used) return Fail(used.error());
  memory_ = &memory;
  desc_ = *desc;
  avail_ = *avail;
  used_ = *used;
  next_avail_ = 0;
  next_used_ = 0;
  used_since_signal_ = false;
  broken_ = false;
  return {};
}

void Queue::Reset() { *this = Queue(max_size_); }

Queue::Progress Queue::progress() const {
  return {.next_avail = next_avail_,
          .next_used = next_used_,
          .used_since_signal = used_since_signal_,
          .broken = broken_,
          .invalid_chains = invalid_chains_};
}

Result<void> Queue::Resume(const GuestMemory& memory, const Progress& progress) {
  if (auto activated = Activate(memory); !activated) return activated;
  next_avail_ = progress.next_avail;
  next_used_ = progress.next_used;
  used_since_signal_ = progress.used_since_signal;
  broken_ = progress.broken;
  invalid_chains_ = progress.invalid_chains;
  return {};
}

std::optional<DescriptorChain> Queue::Retake(uint16_t head) const {
  if (!active() || broken_) return std::nullopt;
  return Walk(head);
}

uint16_t Queue::AvailIdx() const { return LoadAcquire(avail_ + 2); }

std::string Queue::Describe() const {
  if (!active())
    return fmt::format("size={} {}", size_, ready_ ? "ready, not active" : "not ready");
  return fmt::format("size={} avail_idx={} next_avail={} next_used={} waiting={}{}{}", size_,
                     AvailIdx(), next_avail_, next_used_,
                     static_cast<uint16_t>(AvailIdx() - next_avail_), broken_ ? " BROKEN" : "",
                     invalid_chains_ ? fmt::format(" invalid_chains={}", invalid_chains_) : "");
}

std::optional<DescriptorChain> Queue::Walk(uint16_t head) const {
  DescriptorChain chain;
  chain.head = head;
  uint16_t index = head;
  uint64_t total = 0;
  for (uint32_t count = 0;; ++count) {
    // A chain visits each descriptor at most once, so more than size_ links is a loop.
    if (index >= size_ || count >= size_) return std::nullopt;
    RawDescriptor desc;
    std::memcpy(&desc, desc_ + uint64_t{index} * kDescSize, sizeof(desc));
    if (desc.flags & kDescIndirect) return std::nullopt;
    total += desc.len;
    if (total > kMaxChainBytes) return std::nullopt;
    auto buf = memory_->Slice(desc.addr, desc.len);
    if (!buf) return std::nullopt;
    if (desc.flags & kDescWrite) {
      chain.writable.push_back(*buf);
      chain.writable_bytes += desc.len;
    } else {
      if (!chain.writable.empty()) return std::nullopt;
      chain.readable.push_back(*buf);
      chain.readable_bytes += desc.len;
    }
    if (!(desc.flags & kDescNext)) return chain;
    index = desc.next;
  }
}

Result<std::optional<DescriptorChain>> Queue::Pop() {
  if (!active()) return Fail(Error::Backend("virtqueue used before activation"));
  if (broken_) return Fail(Error::Backend("virtqueue is broken until the driver resets it"));
  // Each invalid chain consumes one available entry; at most a ring's worth per call, so a
  // guest rewriting the ring cannot keep the device here.
  for (uint32_t skipped = 0; skipped <= size_; ++skipped) {
    uint16_t avail_idx = AvailIdx();
    uint16_t pending = static_cast<uint16_t>(avail_idx - next_avail_);
    if (pending == 0) return std::optional<DescriptorChain>();
    if (pending > size_) {
      broken_ = true;
      return Fail(Error::Backend(fmt::format(
          "virtqueue available index {} is {} ahead of the device, more than the queue size {}",
          avail_idx, pending, size_)));
    }
    uint16_t head;
    std::memcpy(&head, avail_ + kRingHeader + 2 * (uint64_t{next_avail_} % size_), sizeof(head));
    if (head >= size_) {
      broken_ = true;
      return Fail(Error::Backend(
          fmt::format("virtqueue head index {} is out of range (queue size {})", head, size_)));
    }
    ++next_avail_;
    if (auto chain = Walk(head)) return chain;
    ++invalid_chains_;
    if (auto pushed = PushUsed(head, 0); !pushed) return Fail(pushed.error());
  }
  return std::optional<DescriptorChain>();
}

void Queue::Unpop() { --next_avail_; }

Result<void> Queue::PushUsed(uint16_t head, uint32_t written) {
  if (!active()) return Fail(Error::Backend("virtqueue used before activation"));
  if (head >= size_) {
    return Fail(Error::Backend(fmt::format("used head {} out of range", head)));
  }
  uint32_t elem[2] = {head, written};
  std::memcpy(used_ + kRingHeader + kUsedElemSize * (uint64_t{next_used_} % size_), elem,
              sizeof(elem));
  ++next_used_;
  StoreRelease(used_ + 2, next_used_);
  used_since_signal_ = true;
  return {};
}

bool Queue::TakeUsedSinceSignal() { return std::exchange(used_since_signal_, false); }

}  // namespace vessel::vmm::virtio
