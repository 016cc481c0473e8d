// The vsock packet parser and the virtio-vsock device's handling of what a hostile guest
// transmits: the parser gets the whole input cut into buffers; the device gets a guest
// RAM image with its transmit and receive queues (descriptors, rings, packets) and is
// notified on both, then reset.
//
// Invariants, any break of which aborts:
//   - a parsed packet's payload is exactly `len` bytes, at most kMaxPayload;
//   - the device takes every transmit chain the guest made available (it answers through
//     the receive queue, never by stalling on garbage) unless the ring is corrupt;
//   - whatever it writes to the receive queue is a whole header within the buffer.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "invariant.h"
#include "virtio_fuzz_layout.h"
#include "vmm/core/event_loop.h"
#include "vmm/core/guest_memory.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/devices/vsock/virtio_vsock.h"
#include "vmm/devices/vsock/vsock_packet.h"

namespace vessel::vmm::fuzz {
namespace {

using vessel::fuzz::Check;

class NullSignal : public virtio::DriverSignal {
 public:
  void UsedBuffers() override {}
  void NeedsReset() override { needs_reset = true; }
  bool needs_reset = false;
};

// The device and what it needs, made once: a socket per input would be slow.
struct World {
  GuestMemory memory;
  std::unique_ptr<EventLoop> loop;
  std::string uds;
  UniqueFd listener;  // the host service guest connections reach
  std::unique_ptr<virtio::VirtioDevice> device;

  static World& Get() {
    static World* world = Make();
    return *world;
  }

  static World* Make() {
    auto memory = GuestMemory::Create(kGuestRamBytes);
    auto loop = EventLoop::Create();
    if (!memory || !loop) std::abort();
    static char dir[] = "/tmp/vessel-fuzz-vsock-XXXXXX";
    if (!mkdtemp(dir)) std::abort();
    // libFuzzer ends with exit(): take the sockets and their directory along.
    std::atexit([] { std::filesystem::remove_all(dir); });
    auto* w = new World{std::move(*memory), std::move(*loop), std::string(dir) + "/v.sock", {}, {}};
    std::string service = w->uds + "_" + std::to_string(kVsockListeningPort);
    w->listener = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, service.data(), service.size());
    if (bind(w->listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        listen(w->listener.get(), 256) != 0) {
      std::abort();
    }
    auto device = MakeVirtioVsock(*w->loop, kVsockGuestCid, w->uds);
    if (!device) std::abort();
    w->device = std::move(*device);
    return w;
  }

  // Closes whatever guest connections reached the host service.
  void DrainService() {
    for (;;) {
      int fd = accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      close(fd);
    }
  }
};

void FuzzParser(const uint8_t* data, size_t size) {
  if (size == 0) return;
  size_t pieces = 1 + data[0] % 8;
  virtio::DescriptorChain chain;
  std::vector<std::vector<uint8_t>> storage;
  storage.reserve(pieces);
  size_t at = 1;
  for (size_t i = 0; i < pieces; ++i) {
    size_t n = i + 1 == pieces ? size - at : std::min(size - at, size_t{data[i % size]} % 64);
    storage.emplace_back(data + at, data + at + n);
    chain.readable.emplace_back(storage.back());
    chain.readable_bytes += n;
    at += n;
  }
  auto packet = vsock::ParseTxPacket(chain);
  if (!packet) return;
  Check(packet->header.len <= vsock::kMaxPayload, "payload within the cap");
  Check(chain.readable_bytes == vsock::kHeaderSize + packet->header.len, "len matches payload");
  auto raw = vsock::EncodeHeader(packet->header);
  Check(vsock::DecodeHeader(raw) == packet->header, "header round-trips");
}

uint16_t Load16(const GuestMemory& memory, uint64_t addr) {
  uint16_t v = 0;
  if (!memory.Read(addr, {reinterpret_cast<uint8_t*>(&v), 2})) std::abort();
  return v;
}

void FuzzDevice(const uint8_t* data, size_t size) {
  if (size < kVsockConfigBytes) return;
  World& w = World::Get();
  std::memset(w.memory.host_base(), 0, w.memory.size());
  size_t image = std::min<size_t>(size - kVsockConfigBytes, w.memory.size() - kImageAddr);
  std::memcpy(w.memory.host_base() + kImageAddr, data + kVsockConfigBytes, image);
  // The driver zeroes its used rings before handing them over; what is there later is the
  // device's.
  for (uint64_t used : {kVsockRxUsed, kVsockTxUsed}) {
    std::memset(w.memory.host_base() + used, 0, 4 + 8 * kVsockQueueSize + 2);
  }

  virtio::Queue rx(vsock::kQueueSize);
  virtio::Queue tx(vsock::kQueueSize);
  virtio::Queue event(vsock::kQueueSize);
  for (auto [q, desc, avail, used] : {std::tuple{&rx, kVsockRxDesc, kVsockRxAvail, kVsockRxUsed},
                                      std::tuple{&tx, kVsockTxDesc, kVsockTxAvail, kVsockTxUsed}}) {
    q->set_size(kVsockQueueSize);
    q->set_desc_addr(desc);
    q->set_avail_addr(avail);
    q->set_used_addr(used);
    q->set_ready(true);
    if (!q->Activate(w.memory)) std::abort();
  }
  NullSignal signal;
  virtio::Queue* queues[] = {&rx, &tx, &event};
  if (!w.device->Activate(w.memory, queues, virtio::kFeatureVersion1, signal)) std::abort();
  uint16_t tx_avail = Load16(w.memory, kVsockTxAvail + 2);
  w.device->QueueNotify(vsock::kRxQueue);
  w.device->QueueNotify(vsock::kTxQueue);
  w.device->QueueNotify(vsock::kRxQueue);
  if (!tx.broken() && !rx.broken() && tx_avail <= kVsockQueueSize) {
    // Counted by the device: a receive buffer the guest aims at the transmit ring's used
    // index may overwrite what the device wrote there, which only harms the guest.
    Check(tx.next_used() == tx_avail, "every transmit chain is taken");
  }
  // Every used receive element is a whole packet header plus at most its buffer.
  uint16_t rx_used = Load16(w.memory, kVsockRxUsed + 2);
  for (uint16_t i = 0; i < rx_used && i < kVsockQueueSize; ++i) {
    uint32_t len = 0;
    if (!w.memory.Read(kVsockRxUsed + 4 + 8 * uint64_t{i} + 4,
                       {reinterpret_cast<uint8_t*>(&len), 4})) {
      std::abort();
    }
    Check(len == 0 || len >= vsock::kHeaderSize, "receive packets carry a whole header");
  }
  w.device->Reset();
  w.DrainService();
}

}  // namespace
}  // namespace vessel::vmm::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vessel::vmm::fuzz::FuzzParser(data, size);
  vessel::vmm::fuzz::FuzzDevice(data, size);
  return 0;
}
