// The devices fuzz_device_state loads saved states into, and the scenes that drive each
// into a non-trivial state; shared with make_corpus, so that the seeds are the states these
// scenes save and the fuzz target's guest RAM holds what the scenes left there.
//
// Input of fuzz_device_state: byte 0 picks the device (modulo kStateDeviceCount, in the
// order of StateDevice), the rest is what its LoadState gets. The virtio devices sit behind
// an MMIO transport over a small guest RAM, which each input starts from the image the
// device's scene left: queues of kStateQueueSize entries at RingsAddr(i), buffers from
// kStateBuffersAddr on.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "vmm/core/device.h"
#include "vmm/core/event_loop.h"
#include "vmm/core/guest_memory.h"
#include "vmm/core/state_codec.h"
#include "vmm/devices/i8042/i8042.h"
#include "vmm/devices/serial/serial.h"
#include "vmm/devices/virtio/mmio_transport.h"
#include "vmm/devices/virtio_blk/virtio_blk.h"
#include "vmm/devices/virtio_console/virtio_console.h"
#include "vmm/devices/vsock/virtio_vsock.h"
#include "vmm/devices/vsock/vsock_packet.h"

namespace vessel::vmm::fuzz {

enum class StateDevice : uint8_t { kSerial, kI8042, kConsole, kVsock, kBlk };
inline constexpr uint8_t kStateDeviceCount = 5;
inline constexpr uint64_t kStateRamBytes = 128 * 1024;
inline constexpr uint16_t kStateQueueSize = 16;
inline constexpr uint64_t kStateBuffersAddr = 0x10000;
inline constexpr uint64_t kStateGuestCid = 3;
inline constexpr std::string_view kStatePortName = "org.vessel.agent";

// Queue i's descriptor table; its available ring is 0x400 and its used ring 0x800 further.
inline constexpr uint64_t RingsAddr(size_t queue) { return 0x1000 * (uint64_t{queue} + 1); }

[[noreturn]] inline void SetupFailed(std::string_view what) {
  std::fprintf(stderr, "device state setup: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

class NullInterrupt : public Interrupt {
 public:
  void Trigger() override {}
};

// What the devices need from the host, made once: guest RAM, an event loop (never run: no
// host ever connects), and a directory for the devices' sockets and the disk image.
class DeviceHost {
 public:
  DeviceHost() {
    auto memory = GuestMemory::Create(kStateRamBytes);
    if (!memory) SetupFailed(memory.error().message());
    memory_.emplace(std::move(*memory));
    auto loop = EventLoop::Create();
    if (!loop) SetupFailed(loop.error().message());
    loop_ = std::move(*loop);
    char dir[] = "/tmp/vessel-fuzz-state-XXXXXX";
    if (!mkdtemp(dir)) SetupFailed("mkdtemp");
    dir_ = dir;
    // Seventeen sectors with a pattern, the last one partial.
    std::vector<uint8_t> disk(16 * 512 + 100);
    for (size_t i = 0; i < disk.size(); ++i) disk[i] = static_cast<uint8_t>(i * 7 + i / 512);
    disk_ = (dir_ / "disk.img").string();
    int fd = ::open(disk_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, disk.data(), disk.size()) != static_cast<ssize_t>(disk.size())) {
      SetupFailed("writing the disk image");
    }
    ::close(fd);
  }
  ~DeviceHost() { std::filesystem::remove_all(dir_); }
  DeviceHost(const DeviceHost&) = delete;
  DeviceHost& operator=(const DeviceHost&) = delete;

  [[nodiscard]] const GuestMemory& memory() const { return *memory_; }
  [[nodiscard]] std::span<uint8_t> ram() const { return {memory_->host_base(), memory_->size()}; }

  // A fresh device of kind `device`, as vessel-vmm makes it; the virtio ones behind their
  // transport. Each kind has one socket path: a fresh device replaces the last one's.
  [[nodiscard]] std::unique_ptr<StatefulDevice> Make(StateDevice device) {
    switch (device) {
      case StateDevice::kSerial: return std::make_unique<Serial>(UniqueFd(), interrupt_);
      case StateDevice::kI8042: return std::make_unique<I8042>([] {});
      case StateDevice::kConsole:
      case StateDevice::kVsock:
      case StateDevice::kBlk: return MakeTransport(device);
    }
    SetupFailed("no such device");
  }

  [[nodiscard]] std::unique_ptr<virtio::MmioTransport> MakeTransport(StateDevice device) {
    Result<std::unique_ptr<virtio::VirtioDevice>> made =
        Fail(Error::InvalidConfig("device", "not a virtio device"));
    switch (device) {
      case StateDevice::kConsole:
        made = MakeVirtioConsole(*loop_, (dir_ / "console.sock").string(),
                                 std::string(kStatePortName));
        break;
      case StateDevice::kVsock:
        made = MakeVirtioVsock(*loop_, kStateGuestCid, (dir_ / "vsock.sock").string());
        break;
      case StateDevice::kBlk: made = MakeVirtioBlk(disk_); break;
      default: break;
    }
    if (!made) SetupFailed(made.error().message());
    return std::make_unique<virtio::MmioTransport>(*memory_, std::move(*made), interrupt_);
  }

 private:
  std::optional<GuestMemory> memory_;
  std::unique_ptr<EventLoop> loop_;
  std::filesystem::path dir_;
  std::string disk_;
  std::shared_ptr<NullInterrupt> interrupt_ = std::make_shared<NullInterrupt>();
};

struct GuestBuf {
  uint64_t addr;
  uint32_t len;
  bool writable = false;
};

// A virtio driver played by hand through the transport's registers and the rings in guest
// RAM, as fake_virtio_driver.h does for the unit tests; a setup failure aborts.
class ScriptedDriver {
 public:
  ScriptedDriver(const GuestMemory& memory, virtio::MmioTransport& transport)
      : memory_(memory),
        transport_(transport),
        next_desc_(transport.device().num_queues()),
        avail_idx_(transport.device().num_queues()) {}

  // Up to FEATURES_OK with `features`, every queue configured and ready.
  void Negotiate(uint64_t features) {
    using namespace virtio;
    Write32(mmio::kStatus, 0);
    Write32(mmio::kStatus, kStatusAcknowledge);
    Write32(mmio::kStatus, kStatusAcknowledge | kStatusDriver);
    Write32(mmio::kDriverFeaturesSel, 0);
    Write32(mmio::kDriverFeatures, static_cast<uint32_t>(features));
    Write32(mmio::kDriverFeaturesSel, 1);
    Write32(mmio::kDriverFeatures, static_cast<uint32_t>(features >> 32));
    Write32(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    if (!(transport_.status() & kStatusFeaturesOk)) SetupFailed("features refused");
    for (uint32_t i = 0; i < next_desc_.size(); ++i) {
      uint64_t desc = RingsAddr(i);
      Write32(mmio::kQueueSel, i);
      Write32(mmio::kQueueNum, kStateQueueSize);
      Write64(mmio::kQueueDescLow, desc);
      Write64(mmio::kQueueDriverLow, desc + 0x400);
      Write64(mmio::kQueueDeviceLow, desc + 0x800);
      Write32(mmio::kQueueReady, 1);
    }
  }

  void DriverOk() {
    using namespace virtio;
    Write32(mmio::kStatus,
            kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    if (!(transport_.status() & kStatusDriverOk)) SetupFailed("DRIVER_OK refused");
  }

  uint64_t Alloc(uint64_t len) {
    uint64_t addr = next_buffer_;
    next_buffer_ += (len + 15) & ~uint64_t{15};
    if (next_buffer_ > kStateRamBytes) SetupFailed("out of guest buffers");
    return addr;
  }
  uint64_t Put(std::span<const uint8_t> bytes) {
    uint64_t addr = Alloc(bytes.size());
    WriteRam(addr, bytes);
    return addr;
  }
  uint64_t Put(std::string_view text) {
    return Put({reinterpret_cast<const uint8_t*>(text.data()), text.size()});
  }

  // Makes `bufs` available on `queue` as one chain; returns its head.
  uint16_t Add(size_t queue, std::initializer_list<GuestBuf> bufs) {
    uint16_t head = next_desc_[queue];
    size_t i = 0;
    for (const GuestBuf& buf : bufs) {
      uint16_t index = static_cast<uint16_t>((head + i) % kStateQueueSize);
      auto flags = static_cast<uint16_t>((buf.writable ? virtio::kDescWrite : 0) |
                                         (i + 1 < bufs.size() ? virtio::kDescNext : 0));
      auto next = static_cast<uint16_t>((index + 1) % kStateQueueSize);
      uint8_t raw[16];
      std::memcpy(raw, &buf.addr, 8);
      std::memcpy(raw + 8, &buf.len, 4);
      std::memcpy(raw + 12, &flags, 2);
      std::memcpy(raw + 14, &next, 2);
      WriteRam(RingsAddr(queue) + 16 * uint64_t{index}, raw);
      ++i;
    }
    next_desc_[queue] = static_cast<uint16_t>((head + bufs.size()) % kStateQueueSize);
    uint64_t avail = RingsAddr(queue) + 0x400;
    uint16_t slot = avail_idx_[queue] % kStateQueueSize;
    WriteRam(avail + 4 + 2 * uint64_t{slot}, {reinterpret_cast<const uint8_t*>(&head), 2});
    ++avail_idx_[queue];
    WriteRam(avail + 2, {reinterpret_cast<const uint8_t*>(&avail_idx_[queue]), 2});
    return head;
  }

  void Notify(size_t queue) { Write32(virtio::mmio::kQueueNotify, static_cast<uint32_t>(queue)); }

 private:
  void Write32(uint64_t offset, uint32_t value) {
    uint8_t bytes[4];
    std::memcpy(bytes, &value, 4);
    transport_.MmioWrite(offset, bytes);
  }
  // A low register and the high one after it.
  void Write64(uint64_t low_offset, uint64_t value) {
    Write32(low_offset, static_cast<uint32_t>(value));
    Write32(low_offset + 4, static_cast<uint32_t>(value >> 32));
  }
  void WriteRam(uint64_t addr, std::span<const uint8_t> bytes) {
    if (!memory_.Write(addr, bytes)) SetupFailed("a write outside guest RAM");
  }

  const GuestMemory& memory_;
  virtio::MmioTransport& transport_;
  std::vector<uint16_t> next_desc_;
  std::vector<uint16_t> avail_idx_;
  uint64_t next_buffer_ = kStateBuffersAddr;
};

// What a scene leaves: named saved states of its device and, for a virtio device, the
// guest RAM they go with.
struct Scene {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> states;
  std::vector<uint8_t> ram;
};

// A transport's saved state with the device's own state (its last `device_state_bytes`)
// replaced by `replacement`.
inline std::vector<uint8_t> WithDeviceState(std::vector<uint8_t> transport_state,
                                            size_t device_state_bytes,
                                            std::span<const uint8_t> replacement) {
  transport_state.resize(transport_state.size() - device_state_bytes - sizeof(uint32_t));
  auto length = static_cast<uint32_t>(replacement.size());
  const auto* raw = reinterpret_cast<const uint8_t*>(&length);
  transport_state.insert(transport_state.end(), raw, raw + sizeof(length));
  transport_state.insert(transport_state.end(), replacement.begin(), replacement.end());
  return transport_state;
}

inline Scene SerialScene(DeviceHost& host) {
  auto serial = host.Make(StateDevice::kSerial);
  auto& pio = dynamic_cast<Serial&>(*serial);
  auto out = [&pio](uint16_t offset, uint8_t value) { pio.PioWrite(offset, {&value, 1}); };
  out(3, 0x83);  // DLAB, 8 bits
  out(0, 0x01);  // 115200 baud
  out(1, 0x00);
  out(3, 0x03);
  out(4, 0x0b);  // DTR, RTS, OUT2
  out(7, 0x5a);
  out(1, 0x03);  // receive and transmit interrupts: THRE pending
  pio.Receive("state\n");
  return {{{"serial", serial->SaveState()}}, {}};
}

inline Scene I8042Scene(DeviceHost& host) {
  auto i8042 = host.Make(StateDevice::kI8042);
  auto& pio = dynamic_cast<I8042&>(*i8042);
  auto command = [&pio](uint8_t value) { pio.PioWrite(kI8042CommandOffset, {&value, 1}); };
  command(0xaa);  // self test: 0x55 waits
  command(0xa8);  // enable the aux port
  command(0x20);  // read the command byte: it waits too
  Scene scene;
  scene.states.emplace_back("i8042_output", i8042->SaveState());
  command(0x60);  // write the command byte: awaits its data byte
  scene.states.emplace_back("i8042_pending_command", i8042->SaveState());
  return scene;
}

// The Linux driver's port bring-up with too few control buffers posted (three of the six
// replies wait in the device), output on both ports with no host, a receive buffer posted.
inline Scene ConsoleScene(DeviceHost& host) {
  std::ranges::fill(host.ram(), 0);
  auto transport = host.MakeTransport(StateDevice::kConsole);
  ScriptedDriver driver(host.memory(), *transport);
  Scene scene;
  driver.Negotiate(virtio::kFeatureVersion1 | console::kFeatureMultiport);
  scene.states.emplace_back("console_negotiated", transport->SaveState());
  driver.DriverOk();
  for (int i = 0; i < 3; ++i) {
    driver.Add(console::kControlRx, {{driver.Alloc(256), 256, true}});
  }
  driver.Notify(console::kControlRx);
  auto control = [&driver](uint32_t id, uint16_t event, uint16_t value) {
    uint8_t raw[console::kControlSize];
    std::memcpy(raw, &id, 4);
    std::memcpy(raw + 4, &event, 2);
    std::memcpy(raw + 6, &value, 2);
    driver.Add(console::kControlTx, {{driver.Put(raw), console::kControlSize}});
    driver.Notify(console::kControlTx);
  };
  control(0, console::kDeviceReady, 1);
  control(0, console::kPortReady, 1);
  control(console::kAgentPortId, console::kPortReady, 1);
  control(console::kAgentPortId, console::kPortOpen, 1);
  driver.Add(console::kPort0Tx, {{driver.Put("boot\n"), 5}});
  driver.Notify(console::kPort0Tx);
  uint16_t tx_head =
      driver.Add(console::kPort1Tx, {{driver.Put("hello "), 6}, {driver.Put("world"), 5}});
  driver.Notify(console::kPort1Tx);
  driver.Add(console::kPort1Rx, {{driver.Alloc(1024), 1024, true}});
  driver.Notify(console::kPort1Rx);
  std::vector<uint8_t> device_state = transport->device().SaveState();
  std::vector<uint8_t> saved = transport->SaveState();
  scene.states.emplace_back("console_ports_up", saved);
  // The same, saved while a host was connected and 3 bytes of the port 1 chain were sent
  // (what a device with a full host socket saves); driving that needs a running loop and a
  // host, so this one state is written by hand.
  StateWriter in_flight;
  in_flight.Put(console::kStateVersion);
  in_flight.Put(uint8_t{1});   // the guest has port 1 open
  in_flight.Put(uint8_t{1});   // a host was connected
  in_flight.Put(uint16_t{1});  // one control message waits
  in_flight.Put(static_cast<uint16_t>(console::kControlSize));
  in_flight.Put(console::kAgentPortId);
  in_flight.Put(console::kPortOpen);
  in_flight.Put(uint16_t{1});
  in_flight.Put(uint8_t{1});
  in_flight.Put(tx_head);
  in_flight.Put(uint64_t{3});
  scene.states.emplace_back("console_tx_in_flight",
                            WithDeviceState(saved, device_state.size(), in_flight.Take()));
  scene.ram.assign(host.ram().begin(), host.ram().end());
  return scene;
}

// Receive and event buffers posted; the guest asked for a connection to a host port nobody
// listens on, and was refused.
inline Scene VsockScene(DeviceHost& host) {
  std::ranges::fill(host.ram(), 0);
  auto transport = host.MakeTransport(StateDevice::kVsock);
  ScriptedDriver driver(host.memory(), *transport);
  Scene scene;
  driver.Negotiate(virtio::kFeatureVersion1);
  scene.states.emplace_back("vsock_negotiated", transport->SaveState());
  driver.DriverOk();
  for (int i = 0; i < 4; ++i) driver.Add(vsock::kRxQueue, {{driver.Alloc(512), 512, true}});
  driver.Notify(vsock::kRxQueue);
  driver.Add(vsock::kEventQueue, {{driver.Alloc(8), 8, true}});
  driver.Notify(vsock::kEventQueue);
  auto request = vsock::EncodeHeader({.src_cid = kStateGuestCid,
                                      .dst_cid = vsock::kHostCid,
                                      .src_port = 40000,
                                      .dst_port = 9999,
                                      .len = 0,
                                      .type = vsock::kTypeStream,
                                      .op = static_cast<uint16_t>(vsock::Op::kRequest),
                                      .flags = 0,
                                      .buf_alloc = 65536,
                                      .fwd_cnt = 0});
  driver.Add(vsock::kTxQueue, {{driver.Put(request), vsock::kHeaderSize}});
  driver.Notify(vsock::kTxQueue);
  scene.states.emplace_back("vsock_refused", transport->SaveState());
  scene.ram.assign(host.ram().begin(), host.ram().end());
  return scene;
}

// Two reads served, one of them of the partial last sector.
inline Scene BlkScene(DeviceHost& host) {
  std::ranges::fill(host.ram(), 0);
  auto transport = host.MakeTransport(StateDevice::kBlk);
  ScriptedDriver driver(host.memory(), *transport);
  Scene scene;
  driver.Negotiate(virtio::kFeatureVersion1 | blk::kFeatureRo);
  scene.states.emplace_back("blk_negotiated", transport->SaveState());
  driver.DriverOk();
  for (uint64_t sector : {uint64_t{1}, uint64_t{16}}) {
    driver.Add(blk::kRequestQueue, {{driver.Put(blk::EncodeHeader(blk::kTypeIn, sector)),
                                     static_cast<uint32_t>(blk::kHeaderSize)},
                                    {driver.Alloc(512), 512, true},
                                    {driver.Alloc(1), 1, true}});
  }
  driver.Notify(blk::kRequestQueue);
  scene.states.emplace_back("blk_reads", transport->SaveState());
  scene.ram.assign(host.ram().begin(), host.ram().end());
  return scene;
}

inline Scene RunScene(DeviceHost& host, StateDevice device) {
  switch (device) {
    case StateDevice::kSerial: return SerialScene(host);
    case StateDevice::kI8042: return I8042Scene(host);
    case StateDevice::kConsole: return ConsoleScene(host);
    case StateDevice::kVsock: return VsockScene(host);
    case StateDevice::kBlk: return BlkScene(host);
  }
  SetupFailed("no such device");
}

}  // namespace vessel::vmm::fuzz
