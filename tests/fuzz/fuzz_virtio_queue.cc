// The split virtqueue against hostile rings: the guest RAM image (descriptor table,
// available ring, buffers) and the queue configuration come from the input; the target
// pops and returns chains until the queue says nothing is left or it is broken.
//
// Invariants, any break of which aborts:
//   - every buffer of a chain lies inside guest RAM, and the byte counts add up;
//   - a chain has at most `size` buffers and at most kMaxChainBytes bytes;
//   - without the driver adding anything, at most `size` chains (valid or skipped) come
//     out: popping terminates;
//   - a broken queue stays broken.
#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "invariant.h"
#include "virtio_fuzz_layout.h"
#include "vmm/core/guest_memory.h"
#include "vmm/devices/virtio/queue.h"

namespace vessel::vmm::fuzz {
namespace {

using vessel::fuzz::Check;

uint32_t U32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

GuestMemory& Memory() {
  static GuestMemory memory = [] {
    auto m = GuestMemory::Create(kGuestRamBytes);
    if (!m) std::abort();
    return std::move(*m);
  }();
  return memory;
}

void CheckChain(const GuestMemory& memory, const virtio::DescriptorChain& chain, uint16_t size) {
  const uint8_t* lo = memory.host_base();
  const uint8_t* hi = lo + memory.size();
  uint64_t readable = 0;
  uint64_t writable = 0;
  for (const auto& buf : chain.readable) {
    Check(buf.data() >= lo && buf.data() + buf.size() <= hi, "readable buffer inside RAM");
    readable += buf.size();
  }
  for (const auto& buf : chain.writable) {
    Check(buf.data() >= lo && buf.data() + buf.size() <= hi, "writable buffer inside RAM");
    writable += buf.size();
  }
  Check(readable == chain.readable_bytes && writable == chain.writable_bytes, "byte counts add up");
  Check(chain.readable.size() + chain.writable.size() <= size, "chain no longer than the queue");
  Check(readable + writable <= virtio::kMaxChainBytes, "chain within the byte cap");
  Check(chain.head < size, "head inside the queue");
  // Touch every byte the device may touch, so ASan sees any stray span.
  uint8_t scratch[256];
  for (uint64_t off = 0; off < readable; off += sizeof(scratch)) {
    virtio::CopyFromBuffers(chain.readable, off, scratch);
  }
  std::memset(scratch, 0xa5, sizeof(scratch));
  for (uint64_t off = 0; off < writable; off += sizeof(scratch)) {
    virtio::CopyToBuffers(chain.writable, off, scratch);
  }
}

void Run(const uint8_t* data, size_t size) {
  if (size < kQueueConfigBytes) return;
  GuestMemory& memory = Memory();
  std::memset(memory.host_base(), 0, memory.size());
  size_t image = std::min<size_t>(size - kQueueConfigBytes, memory.size() - kImageAddr);
  std::memcpy(memory.host_base() + kImageAddr, data + kQueueConfigBytes, image);

  virtio::Queue queue(kQueueMaxSize);
  queue.set_size(static_cast<uint16_t>(1U << (data[0] % 10)));
  if (data[1] & 1) {
    queue.set_desc_addr(U32(data + 4));
    queue.set_avail_addr(U32(data + 8));
    queue.set_used_addr(U32(data + 12));
  } else {
    queue.set_desc_addr(kQueueDescAddr);
    queue.set_avail_addr(kQueueAvailAddr);
    queue.set_used_addr(kQueueUsedAddr);
  }
  queue.set_ready(true);
  if (!queue.Activate(memory)) return;
  const uint16_t qsize = queue.size();
  Check(std::has_single_bit(qsize) && qsize <= kQueueMaxSize, "activated size is valid");

  // Rounds: pop until empty, then the "driver" moves its available index on by what is in
  // the ring already (a replay of the same ring), as a racing guest could.
  int rounds = 1 + (data[3] % 4);
  for (int round = 0; round < rounds; ++round) {
    uint64_t popped = 0;
    uint64_t skipped_before = queue.invalid_chains();
    std::vector<uint16_t> held;
    for (;;) {
      auto chain = queue.Pop();
      if (!chain) {
        Check(queue.broken(), "a failed pop breaks the queue");
        Check(!queue.Pop(), "a broken queue stays broken");
        return;
      }
      if (!*chain) break;
      ++popped;
      CheckChain(memory, **chain, qsize);
      Check(popped + (queue.invalid_chains() - skipped_before) <= qsize,
            "no more chains than the driver made available");
      uint32_t written =
          static_cast<uint32_t>(std::min<uint64_t>((*chain)->writable_bytes, 1U << 20));
      if (data[2] != 0 && held.size() < data[2]) {
        held.push_back((*chain)->head);
      } else {
        Check(queue.PushUsed((*chain)->head, written).has_value(), "valid head is pushed");
      }
    }
    for (uint16_t head : held) Check(queue.PushUsed(head, 0).has_value(), "held head is pushed");
    // The driver republishes: avail.idx advances by the ring size minus one.
    auto idx = memory.Slice(queue.avail_addr() + 2, 2);
    if (!idx) return;
    uint16_t value;
    std::memcpy(&value, idx->data(), 2);
    value = static_cast<uint16_t>(value + qsize - 1);
    std::memcpy(idx->data(), &value, 2);
  }
}

}  // namespace
}  // namespace vessel::vmm::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vessel::vmm::fuzz::Run(data, size);
  return 0;
}
