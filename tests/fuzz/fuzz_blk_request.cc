// The virtio-blk request parser and the device's handling of what a hostile guest puts in
// its request queue: the parser gets a chain of buffers described by the input; the
// device gets a guest RAM image with its request queue (descriptors, ring, headers) over
// a small disk file, is notified, then reset.
//
// Invariants, any break of which aborts:
//   - a parsed request has its header and status byte, at most kMaxSegments data
//     segments, data in the direction of its type, and a read or write is whole sectors,
//     at most kMaxRequestBytes, inside the disk (no sum overflows);
//   - the data spans of a read are exactly its data bytes, inside the chain's buffers;
//   - the device takes every chain the guest made available unless the ring is corrupt,
//     and says it wrote no more than a request can carry (both checked only when no
//     device-writable buffer covers the rings: a guest may aim a read at its own used
//     ring, and then what the ring holds afterwards is whatever the disk had);
//   - the disk file is never written.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "invariant.h"
#include "virtio_fuzz_layout.h"
#include "vmm/core/guest_memory.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/devices/virtio_blk/blk_request.h"
#include "vmm/devices/virtio_blk/virtio_blk.h"

namespace vessel::vmm::fuzz {
namespace {

using vessel::fuzz::Check;

// More than a chain may carry, so the parser meets every descriptor-count rule.
constexpr size_t kMaxParserBuffers = 300;

class NullSignal : public virtio::DriverSignal {
 public:
  void UsedBuffers() override {}
  void NeedsReset() override {}
};

uint8_t DiskByte(uint64_t offset) { return static_cast<uint8_t>(offset * 31 + 7); }

// The device, its disk and guest RAM, made once.
struct World {
  GuestMemory memory;
  std::string disk;
  UniqueFd check_fd;  // a second descriptor of the disk, to see that it never changes
  std::unique_ptr<virtio::VirtioDevice> device;

  static World& Get() {
    static World* world = Make();
    return *world;
  }

  static World* Make() {
    auto memory = GuestMemory::Create(kGuestRamBytes);
    if (!memory) std::abort();
    char dir[] = "/tmp/vessel-fuzz-blk-XXXXXX";
    if (!mkdtemp(dir)) std::abort();
    std::string disk = std::string(dir) + "/disk.img";
    std::vector<uint8_t> bytes(kBlkDiskBytes);
    for (uint64_t i = 0; i < bytes.size(); ++i) bytes[i] = DiskByte(i);
    FILE* f = std::fopen(disk.c_str(), "wb");
    if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
    std::fclose(f);
    auto device = MakeVirtioBlk(disk);
    if (!device) std::abort();
    UniqueFd check(open(disk.c_str(), O_RDONLY | O_CLOEXEC));
    if (!check) std::abort();
    // Both descriptors are open: the names can go now, so no run (libFuzzer ends with
    // _exit) leaves them behind.
    if (unlink(disk.c_str()) != 0 || rmdir(dir) != 0) std::abort();
    return new World{std::move(*memory), disk, std::move(check), std::move(*device)};
  }

  void CheckDiskUnchanged() const {
    std::vector<uint8_t> now(kBlkDiskBytes + 1);
    ssize_t n = pread(check_fd.get(), now.data(), now.size(), 0);
    Check(n == static_cast<ssize_t>(kBlkDiskBytes), "the disk keeps its size");
    for (uint64_t i = 0; i < kBlkDiskBytes; ++i) {
      if (now[i] != DiskByte(i)) Check(false, "the disk is never written");
    }
  }
};

bool InsideAny(std::span<uint8_t> part, const std::vector<std::span<uint8_t>>& buffers) {
  for (const auto& buf : buffers) {
    if (part.data() >= buf.data() && part.data() + part.size() <= buf.data() + buf.size()) {
      return true;
    }
  }
  return false;
}

void FuzzParser(const uint8_t* data, size_t size) {
  if (size < kBlkConfigBytes) return;
  uint64_t capacity;
  std::memcpy(&capacity, data, sizeof(capacity));
  // Buffers longer than the input that is left alias areas as big as a chain may be:
  // zeros to read, scratch to write. The parser only reads headers and writes the status.
  static std::vector<uint8_t> zeros(virtio::kMaxChainBytes);
  static std::vector<uint8_t> scratch(virtio::kMaxChainBytes);
  std::vector<uint8_t> input(data, data + size);
  virtio::DescriptorChain chain;
  uint64_t total = 0;
  size_t at = kBlkConfigBytes;
  while (at + 4 <= size && chain.readable.size() + chain.writable.size() < kMaxParserBuffers) {
    bool writable = input[at] & kBlkBufferWritable;
    uint32_t len =
        uint32_t{input[at + 1]} | uint32_t{input[at + 2]} << 8 | uint32_t{input[at + 3]} << 16;
    at += 4;
    // What the queue guarantees: readable before writable, at most kMaxChainBytes.
    if (total + len > virtio::kMaxChainBytes) break;
    if (!writable && !chain.writable.empty()) break;
    total += len;
    if (writable) {
      chain.writable.emplace_back(scratch.data(), len);
      chain.writable_bytes += len;
    } else {
      if (len <= size - at) {
        chain.readable.emplace_back(input.data() + at, len);
        at += len;
      } else {
        chain.readable.emplace_back(zeros.data(), len);
      }
      chain.readable_bytes += len;
    }
  }

  auto request = blk::ParseRequest(chain, capacity);
  Check(blk::WriteStatus(chain, blk::kStatusIoErr) == (chain.writable_bytes > 0),
        "a status byte exactly when something is writable");
  if (!request) return;
  Check(chain.writable_bytes >= 1, "a parsed request has a status byte");
  Check(chain.readable_bytes >= blk::kHeaderSize, "a parsed request has its header");
  Check(chain.readable.size() + chain.writable.size() <= blk::kMaxSegments + 2,
        "a parsed request has at most kMaxSegments data segments");
  switch (request->type) {
    case blk::kTypeIn:
    case blk::kTypeGetId: {
      Check(chain.readable_bytes == blk::kHeaderSize, "a read's data is writable");
      Check(request->data_bytes == chain.writable_bytes - 1, "a read's data precedes its status");
      uint64_t spans = 0;
      for (std::span<uint8_t> part : blk::InData(chain, *request)) {
        Check(InsideAny(part, chain.writable), "a read's data lies in its buffers");
        spans += part.size();
      }
      Check(spans == request->data_bytes, "a read's spans add up to its data");
      break;
    }
    case blk::kTypeOut:
      Check(chain.writable_bytes == 1, "a write's data is readable");
      Check(request->data_bytes == chain.readable_bytes - blk::kHeaderSize,
            "a write's data follows its header");
      break;
    default: Check(request->data_bytes == 0, "other types carry no data the device uses"); return;
  }
  if (request->type == blk::kTypeGetId) return;
  Check(request->data_bytes % blk::kSectorSize == 0, "whole sectors");
  Check(request->data_bytes <= blk::kMaxRequestBytes, "within the request cap");
  uint64_t end = 0;
  Check(!__builtin_add_overflow(request->sector, request->data_bytes / blk::kSectorSize, &end) &&
            end <= capacity,
        "inside the disk");
}

uint16_t Load16(const GuestMemory& memory, uint64_t addr) {
  uint16_t v = 0;
  if (!memory.Read(addr, {reinterpret_cast<uint8_t*>(&v), 2})) std::abort();
  return v;
}

// Whether a device-writable descriptor of the table lies over a ring. Indirect
// descriptors are refused by the queue, and the table cannot change during the notify
// unless a writable buffer covers it, so this pre-notify look sees every buffer the
// device may write.
bool WritableBufferCoversRings(const GuestMemory& memory) {
  constexpr uint16_t kDescWrite = 2;
  constexpr uint64_t kRingsEnd = kBlkUsed + 4 + 8 * uint64_t{kBlkQueueSize} + 2;
  for (uint16_t i = 0; i < kBlkQueueSize; ++i) {
    uint8_t desc[16] = {};
    if (!memory.Read(kBlkDesc + 16 * uint64_t{i}, desc)) std::abort();
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    std::memcpy(&addr, desc, 8);
    std::memcpy(&len, desc + 8, 4);
    std::memcpy(&flags, desc + 12, 2);
    if (!(flags & kDescWrite) || len == 0) continue;
    if (addr < kRingsEnd && addr + len > kBlkDesc) return true;  // addr is small here: no overflow
  }
  return false;
}

void FuzzDevice(const uint8_t* data, size_t size) {
  if (size < kBlkConfigBytes) return;
  World& w = World::Get();
  std::memset(w.memory.host_base(), 0, w.memory.size());
  size_t image = std::min<size_t>(size - kBlkConfigBytes, w.memory.size() - kImageAddr);
  std::memcpy(w.memory.host_base() + kImageAddr, data + kBlkConfigBytes, image);
  // The driver zeroes its used ring before handing it over.
  std::memset(w.memory.host_base() + kBlkUsed, 0, 4 + 8 * kBlkQueueSize + 2);

  virtio::Queue queue(blk::kQueueSize);
  queue.set_size(kBlkQueueSize);
  queue.set_desc_addr(kBlkDesc);
  queue.set_avail_addr(kBlkAvail);
  queue.set_used_addr(kBlkUsed);
  queue.set_ready(true);
  if (!queue.Activate(w.memory)) std::abort();
  NullSignal signal;
  virtio::Queue* queues[] = {&queue};
  uint64_t features = virtio::kFeatureVersion1 | blk::kFeatureRo;
  if (!w.device->Activate(w.memory, queues, features, signal)) std::abort();
  uint16_t avail = Load16(w.memory, kBlkAvail + 2);
  const bool rings_exposed = WritableBufferCoversRings(w.memory);
  w.device->QueueNotify(blk::kRequestQueue);
  if (rings_exposed) {
    w.device->Reset();
    w.CheckDiskUnchanged();
    return;
  }
  if (!queue.broken() && avail <= kBlkQueueSize) {
    Check(Load16(w.memory, kBlkUsed + 2) == avail, "every request is taken");
  }
  uint16_t used = Load16(w.memory, kBlkUsed + 2);
  for (uint16_t i = 0; i < used && i < kBlkQueueSize; ++i) {
    uint32_t elem[2] = {};
    if (!w.memory.Read(kBlkUsed + 4 + 8 * uint64_t{i}, {reinterpret_cast<uint8_t*>(elem), 8})) {
      std::abort();
    }
    Check(elem[0] < kBlkQueueSize, "used heads inside the queue");
    Check(elem[1] <= blk::kMaxRequestBytes + 1, "written bytes within a request");
  }
  w.device->Reset();
  w.CheckDiskUnchanged();
}

}  // namespace
}  // namespace vessel::vmm::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vessel::vmm::fuzz::FuzzParser(data, size);
  vessel::vmm::fuzz::FuzzDevice(data, size);
  return 0;
}
