// A split virtqueue (virtio 1.x, 2.7): the descriptor table, available ring and used ring
// live in guest memory at addresses the driver chose. The guest is hostile, so every
// index, length and address read from these rings is checked before use:
// - a ring that does not lie wholly in RAM, or is misaligned, cannot be activated;
// - the available index may not run ahead of the device by more than the queue size, and
//   a head index must be below the queue size: either breaks the queue (Pop fails and the
//   device should ask for a reset);
// - a chain whose next index is out of range, that loops, that is longer than the queue,
//   that uses an indirect table (never offered), that puts a readable buffer after a
//   writable one, whose buffers are not RAM, or whose total length exceeds kMaxChainBytes
//   is returned to the driver as used with length 0 and skipped.
//
// A Queue is not thread safe: the transport configures it before activation, the device
// uses it afterwards under its own lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vessel/error.h"
#include "vmm/core/guest_memory.h"

namespace vessel::vmm::virtio {

// Descriptor flags.
inline constexpr uint16_t kDescNext = 1;
inline constexpr uint16_t kDescWrite = 2;
inline constexpr uint16_t kDescIndirect = 4;

// Largest queue any device offers.
inline constexpr uint16_t kMaxQueueSize = 1024;
// Largest total of buffer lengths in one chain.
inline constexpr uint64_t kMaxChainBytes = 16ULL << 20;

// One request: the buffers the device reads (driver to device), then the buffers it
// writes. The spans point into guest memory, whose contents the guest may change at any
// time: copy before validating what you read.
struct DescriptorChain {
  uint16_t head = 0;
  std::vector<std::span<uint8_t>> readable;
  std::vector<std::span<uint8_t>> writable;
  uint64_t readable_bytes = 0;
  uint64_t writable_bytes = 0;
};

// Gathers up to out.size() bytes of `buffers` starting `offset` bytes in; returns how
// many were copied.
size_t CopyFromBuffers(std::span<const std::span<uint8_t>> buffers, uint64_t offset,
                       std::span<uint8_t> out);
// Scatters `in` into `buffers` starting `offset` bytes in; returns how many were copied.
size_t CopyToBuffers(std::span<const std::span<uint8_t>> buffers, uint64_t offset,
                     std::span<const uint8_t> in);

class Queue {
 public:
  explicit Queue(uint16_t max_size) : max_size_(max_size), size_(max_size) {}

  // Driver-side configuration (transport registers).
  [[nodiscard]] uint16_t max_size() const { return max_size_; }
  [[nodiscard]] uint16_t size() const { return size_; }
  // How many chains the device has handed back (modulo 2^16): its own count, whatever the
  // guest has since written over its used ring.
  [[nodiscard]] uint16_t next_used() const { return next_used_; }
  void set_size(uint16_t size) { size_ = size; }
  [[nodiscard]] bool ready() const { return ready_; }
  void set_ready(bool ready) { ready_ = ready; }
  [[nodiscard]] uint64_t desc_addr() const { return desc_addr_; }
  [[nodiscard]] uint64_t avail_addr() const { return avail_addr_; }
  [[nodiscard]] uint64_t used_addr() const { return used_addr_; }
  void set_desc_addr(uint64_t addr) { desc_addr_ = addr; }
  void set_avail_addr(uint64_t addr) { avail_addr_ = addr; }
  void set_used_addr(uint64_t addr) { used_addr_ = addr; }

  // Checks the configuration against `memory` and maps the rings: the size a power of two
  // in [1, max_size], each ring aligned and wholly in RAM. Only a ready queue may be
  // activated; the device may use it only after this succeeded.
  [[nodiscard]] Result<void> Activate(const GuestMemory& memory);
  [[nodiscard]] bool active() const { return memory_ != nullptr; }
  // Back to the state after construction (size max_size, not ready, addresses 0).
  void Reset();

  // What a snapshot keeps of an active queue beyond its configuration.
  struct Progress {
    uint16_t next_avail = 0;
    uint16_t next_used = 0;
    bool used_since_signal = false;
    bool broken = false;
    uint64_t invalid_chains = 0;
  };
  [[nodiscard]] Progress progress() const;
  // Activate(), with its checks, then carries on from `progress`. Any indices are safe:
  // Pop checks them against the driver's as it does anyway.
  [[nodiscard]] Result<void> Resume(const GuestMemory& memory, const Progress& progress);
  // The chain at `head` as the descriptor table holds it now, checked as Pop checks a
  // chain: for a device taking back a chain it held when its state was saved.
  [[nodiscard]] std::optional<DescriptorChain> Retake(uint16_t head) const;

  // The next valid chain, nothing when the driver has made none available, or an error
  // when the rings are corrupt (the queue stays broken until Reset). Invalid chains are
  // consumed and returned as used with length 0.
  [[nodiscard]] Result<std::optional<DescriptorChain>> Pop();
  // Puts back the chain the last Pop returned, which must not have been pushed yet.
  void Unpop();
  // Returns chain `head` to the driver with `written` bytes written into it.
  [[nodiscard]] Result<void> PushUsed(uint16_t head, uint32_t written);

  // True when chains were returned since the last call: the driver should be interrupted.
  [[nodiscard]] bool TakeUsedSinceSignal();
  [[nodiscard]] bool broken() const { return broken_; }
  // How many invalid chains were skipped; for diagnostics and tests.
  [[nodiscard]] uint64_t invalid_chains() const { return invalid_chains_; }
  // One line of the queue's indices for a state dump: the driver's available index as the
  // ring holds it now, and the device's next available and used indices.
  [[nodiscard]] std::string Describe() const;

 private:
  // Builds the chain starting at `head`; nothing when it breaks a rule.
  [[nodiscard]] std::optional<DescriptorChain> Walk(uint16_t head) const;
  uint16_t AvailIdx() const;

  uint16_t max_size_;
  uint16_t size_ = 0;
  bool ready_ = false;
  uint64_t desc_addr_ = 0;
  uint64_t avail_addr_ = 0;
  uint64_t used_addr_ = 0;

  const GuestMemory* memory_ = nullptr;
  uint8_t* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;
  uint16_t next_avail_ = 0;
  uint16_t next_used_ = 0;
  bool used_since_signal_ = false;
  bool broken_ = false;
  uint64_t invalid_chains_ = 0;
};

}  // namespace vessel::vmm::virtio
