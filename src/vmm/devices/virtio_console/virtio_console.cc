#include "vmm/devices/virtio_console/virtio_console.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <vector>

#include "vmm/core/state_codec.h"
#include "vmm/devices/virtio/device_queues.h"
#include "vmm/devices/virtio/host_socket.h"

namespace vessel::vmm {
namespace {

using virtio::DescriptorChain;
using virtio::Queue;

// Control messages waiting for a guest buffer. The device queues a handful per port and
// one per host connect or disconnect; beyond this the guest is not reading its control
// queue and the oldest are dropped.
constexpr size_t kMaxPendingControl = 64;
// Chains handled per call, so a guest refilling a queue as fast as the device empties it
// cannot hold a thread forever.
constexpr size_t kChainsPerTurn = 512;
// Buffers gathered into one readv/sendmsg.
constexpr size_t kMaxIov = 64;

struct ConsoleConfig {
  uint16_t cols;
  uint16_t rows;
  uint32_t max_nr_ports;
  uint32_t emerg_wr;
};
static_assert(sizeof(ConsoleConfig) == 12);

std::vector<uint8_t> ControlMessage(uint32_t id, uint16_t event, uint16_t value,
                                    std::string_view extra = {}) {
  std::vector<uint8_t> msg(console::kControlSize + extra.size());
  std::memcpy(msg.data(), &id, 4);
  std::memcpy(msg.data() + 4, &event, 2);
  std::memcpy(msg.data() + 6, &value, 2);
  if (!extra.empty()) std::memcpy(msg.data() + console::kControlSize, extra.data(), extra.size());
  return msg;
}

// iovecs for `buffers` from byte `offset` on, at most kMaxIov of them.
std::vector<iovec> Iovecs(const std::vector<std::span<uint8_t>>& buffers, uint64_t offset) {
  std::vector<iovec> iov;
  for (const auto& buf : buffers) {
    if (iov.size() == kMaxIov) break;
    if (offset >= buf.size()) {
      offset -= buf.size();
      continue;
    }
    iov.push_back({buf.data() + offset, buf.size() - offset});
    offset = 0;
  }
  return iov;
}

class VirtioConsole final : public virtio::VirtioDevice {
 public:
  VirtioConsole(EventLoop& loop, std::string port_name, UniqueFd listener)
      : loop_(loop), port_name_(std::move(port_name)), listener_(std::move(listener)) {}

  ~VirtioConsole() override {
    std::lock_guard lock(mutex_);
    if (conn_) loop_.Remove(conn_.get());
    loop_.Remove(listener_.get());
    // The socket file stays for the host to remove with the runtime directory.
  }

  Result<void> Start() {
    return loop_.Add(listener_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
  }

  uint32_t device_type() const override { return console::kDeviceType; }
  uint64_t features() const override {
    return virtio::kFeatureVersion1 | console::kFeatureMultiport;
  }
  size_t num_queues() const override { return console::kNumQueues; }
  uint16_t max_queue_size() const override { return console::kQueueSize; }

  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override {
    ConsoleConfig config{.cols = 0, .rows = 0, .max_nr_ports = console::kMaxPorts, .emerg_wr = 0};
    if (offset >= sizeof(config)) return;
    size_t n = std::min<size_t>(data.size(), sizeof(config) - offset);
    std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&config) + offset, n);
  }
  void WriteConfig(uint64_t, std::span<const uint8_t>) override {}  // emerg_wr: not offered

  Result<void> Activate(const GuestMemory&, std::span<Queue* const> queues, uint64_t acked,
                        virtio::DriverSignal& signal) override {
    std::lock_guard lock(mutex_);
    if (queues.size() != console::kNumQueues) {
      return Fail(Error::Backend("virtio-console activated with the wrong number of queues"));
    }
    queues_.Attach(queues, signal);
    multiport_ = (acked & console::kFeatureMultiport) != 0;
    active_ = true;
    return {};
  }

  void QueueNotify(size_t index) override {
    std::lock_guard lock(mutex_);
    if (!active_) return;
    switch (index) {
      case console::kPort0Tx: DiscardPort0Output(); break;
      case console::kControlRx: FlushControl(); break;
      case console::kControlTx: HandleControl(); break;
      case console::kPort1Rx:
        rx_starved_ = false;
        PumpHostToGuest();
        break;
      case console::kPort1Tx: PumpGuestToHost(); break;
      default: break;
    }
    queues_.SignalUsed();
  }

  std::string DescribeState() override {
    std::lock_guard lock(mutex_);
    return queues_.Describe() +
           fmt::format("  port: host {}, guest {}, control_out={} rx_starved={} tx_inflight={}\n",
                       conn_ ? "connected" : "away", guest_open_ ? "open" : "closed",
                       control_out_.size(), rx_starved_, tx_inflight_.has_value());
  }

  // version u32, guest has port 1 open u8, a host was connected u8, control messages
  // waiting for a guest buffer: count u16 (at most kMaxPendingControl), each length u16
  // (kControlSize to kControlSize + kMaxPortNameBytes) and bytes; a port 1 transmit chain
  // in flight u8, and if so its head u16 and the bytes of it sent u64.
  std::vector<uint8_t> SaveState() override {
    std::lock_guard lock(mutex_);
    StateWriter out;
    out.Put(console::kStateVersion);
    out.Put(static_cast<uint8_t>(guest_open_));
    out.Put(static_cast<uint8_t>(conn_.valid()));
    out.Put(static_cast<uint16_t>(control_out_.size()));
    for (const auto& msg : control_out_) {
      out.Put(static_cast<uint16_t>(msg.size()));
      out.Bytes(msg);
    }
    out.Put(static_cast<uint8_t>(tx_inflight_.has_value()));
    if (tx_inflight_) {
      out.Put(tx_inflight_->head);
      out.Put(tx_offset_);
    }
    return out.Take();
  }

  // The host end of the saved session is gone: as if it hung up right after the save, the
  // chain it was being sent completes and the guest sees the port close, then open again
  // when a host connects to this device's listener.
  Result<void> LoadState(std::span<const uint8_t> bytes) override {
    std::lock_guard lock(mutex_);
    StateReader in(bytes, "virtio-console state");
    if (!active_) return Fail(in.Malformed("loaded into a device that is not active"));
    if (auto version = in.Version(console::kStateVersion); !version) return version;
    bool guest_open = in.ReadBool("the guest's port state");
    bool host_was_connected = in.ReadBool("the host's port state");
    auto control_count = in.Read<uint16_t>("the control message count");
    if (control_count > kMaxPendingControl) {
      return Fail(in.Malformed(
          fmt::format("{} control messages (at most {})", control_count, kMaxPendingControl)));
    }
    std::deque<std::vector<uint8_t>> control_out;
    for (size_t i = 0; i < control_count && in.ok(); ++i) {
      auto length = in.Read<uint16_t>("a control message");
      if (length < console::kControlSize ||
          length > console::kControlSize + console::kMaxPortNameBytes) {
        if (!in.ok()) break;
        return Fail(in.Malformed(fmt::format("a control message of {} bytes", length)));
      }
      auto msg = in.ReadBytes(length, "a control message");
      control_out.emplace_back(msg.begin(), msg.end());
    }
    bool tx_held = in.ReadBool("the transmit chain in flight");
    uint16_t tx_head = 0;
    uint64_t tx_sent = 0;
    if (tx_held) {
      tx_head = in.Read<uint16_t>("the transmit chain in flight");
      tx_sent = in.Read<uint64_t>("the transmit chain in flight");
    }
    if (auto finished = in.Finish(); !finished) return finished;
    if (tx_held && !host_was_connected) {
      return Fail(in.Malformed("a transmit chain in flight with no host connected"));
    }
    if (tx_held) {
      std::optional<DescriptorChain> chain;
      if (Usable(console::kPort1Tx)) chain = queues_.at(console::kPort1Tx)->Retake(tx_head);
      if (!chain || tx_sent >= chain->readable_bytes) {
        return Fail(in.Malformed(
            fmt::format("no transmit chain at head {} with more than {} bytes", tx_head, tx_sent)));
      }
      queues_.Push(console::kPort1Tx, tx_head, 0);
    }
    guest_open_ = guest_open;
    control_out_ = std::move(control_out);
    // What the guest queued for the saved session, the host of this one must not get.
    for (size_t i = 0; i < kChainsPerTurn; ++i) {
      auto chain = PopFrom(console::kPort1Tx);
      if (!chain) break;
      queues_.Push(console::kPort1Tx, chain->head, 0);
    }
    if (host_was_connected && multiport_) {
      SendControl(console::kAgentPortId, console::kPortOpen, 0);
    }
    // A host that connected before the load (the listener is new) opens a new session.
    if (conn_ && multiport_) SendControl(console::kAgentPortId, console::kPortOpen, 1);
    FlushControl();
    if (conn_) PumpHostToGuest();
    queues_.SignalUsed();
    return {};
  }

  void Reset() override {
    std::lock_guard lock(mutex_);
    // The driver's reset before it first sets the device up ends no host session.
    if (!active_) return;
    active_ = false;
    queues_.Detach();
    tx_inflight_.reset();
    control_out_.clear();
    guest_open_ = false;
    rx_starved_ = false;
    // A new driver starts from a clean port: the host reconnects.
    if (conn_) CloseConnection();
  }

 private:
  bool Usable(size_t index) const {
    return active_ && queues_.Usable(index) && (multiport_ || index < console::kControlRx);
  }

  // Pops the next chain of `index`; a corrupt ring asks the driver for a reset.
  std::optional<DescriptorChain> PopFrom(size_t index) {
    if (!Usable(index)) return std::nullopt;
    return queues_.Pop(index);
  }

  void DiscardPort0Output() {
    for (size_t i = 0; i < kChainsPerTurn; ++i) {
      auto chain = PopFrom(console::kPort0Tx);
      if (!chain) return;
      queues_.Push(console::kPort0Tx, chain->head, 0);
    }
  }

  void SendControl(uint32_t id, uint16_t event, uint16_t value, std::string_view extra = {}) {
    if (control_out_.size() == kMaxPendingControl) control_out_.pop_front();
    control_out_.push_back(ControlMessage(id, event, value, extra));
    FlushControl();
  }

  void FlushControl() {
    while (!control_out_.empty()) {
      auto chain = PopFrom(console::kControlRx);
      if (!chain) return;
      const auto& msg = control_out_.front();
      // The driver posts page-sized buffers; a smaller one cannot take the message.
      uint32_t written = 0;
      if (chain->writable_bytes >= msg.size()) {
        written = static_cast<uint32_t>(virtio::CopyToBuffers(chain->writable, 0, msg));
      }
      queues_.Push(console::kControlRx, chain->head, written);
      control_out_.pop_front();
    }
  }

  void HandleControl() {
    for (size_t i = 0; i < kChainsPerTurn; ++i) {
      auto chain = PopFrom(console::kControlTx);
      if (!chain) return;
      std::array<uint8_t, console::kControlSize> raw{};
      size_t n = virtio::CopyFromBuffers(chain->readable, 0, raw);
      queues_.Push(console::kControlTx, chain->head, 0);
      if (n < raw.size()) continue;
      uint32_t id;
      uint16_t event;
      uint16_t value;
      std::memcpy(&id, raw.data(), 4);
      std::memcpy(&event, raw.data() + 4, 2);
      std::memcpy(&value, raw.data() + 6, 2);
      OnGuestControl(id, event, value);
    }
  }

  void OnGuestControl(uint32_t id, uint16_t event, uint16_t value) {
    switch (event) {
      case console::kDeviceReady:
        if (value != 1) return;
        for (uint32_t port = 0; port < console::kMaxPorts; ++port) {
          SendControl(port, console::kPortAdd, 0);
        }
        return;
      case console::kPortReady:
        if (value != 1) return;
        if (id == 0) {
          SendControl(0, console::kConsolePort, 1);
          SendControl(0, console::kPortOpen, 1);
        } else if (id == console::kAgentPortId) {
          SendControl(id, console::kPortName, 0, port_name_);
          SendControl(id, console::kPortOpen, conn_ ? 1 : 0);
        }
        return;
      case console::kPortOpen:
        if (id != console::kAgentPortId) return;
        guest_open_ = value == 1;
        if (guest_open_) PumpHostToGuest();
        UpdateWatch();
        return;
      default: return;
    }
  }

  // Host to guest: reads the socket straight into the guest's posted receive buffers.
  void PumpHostToGuest() {
    for (size_t i = 0; i < kChainsPerTurn && conn_ && guest_open_; ++i) {
      auto chain = PopFrom(console::kPort1Rx);
      if (!chain) {
        rx_starved_ = true;
        break;
      }
      if (chain->writable_bytes == 0) {
        queues_.Push(console::kPort1Rx, chain->head, 0);
        continue;
      }
      auto iov = Iovecs(chain->writable, 0);
      ssize_t n = readv(conn_.get(), iov.data(), static_cast<int>(iov.size()));
      if (n > 0) {
        queues_.Push(console::kPort1Rx, chain->head, static_cast<uint32_t>(n));
        continue;
      }
      queues_.at(console::kPort1Rx)->Unpop();
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      CloseConnection();
      break;
    }
    UpdateWatch();
  }

  // Guest to host: one chain at a time; a chain the socket did not take wholly stays in
  // flight until the socket drains.
  void PumpGuestToHost() {
    for (size_t i = 0; i < kChainsPerTurn; ++i) {
      if (!tx_inflight_) {
        auto chain = PopFrom(console::kPort1Tx);
        if (!chain) break;
        if (!conn_) {
          queues_.Push(console::kPort1Tx, chain->head, 0);
          continue;
        }
        tx_inflight_ = std::move(*chain);
        tx_offset_ = 0;
      }
      while (tx_offset_ < tx_inflight_->readable_bytes) {
        auto iov = Iovecs(tx_inflight_->readable, tx_offset_);
        msghdr msg{};
        msg.msg_iov = iov.data();
        msg.msg_iovlen = iov.size();
        ssize_t n = sendmsg(conn_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
          UpdateWatch();
          return;
        }
        if (n < 0) {
          CloseConnection();  // completes the chain in flight
          break;
        }
        tx_offset_ += static_cast<uint64_t>(n);
      }
      if (tx_inflight_) {
        queues_.Push(console::kPort1Tx, tx_inflight_->head, 0);
        tx_inflight_.reset();
      }
    }
    UpdateWatch();
  }

  void UpdateWatch() {
    if (!conn_) return;
    uint32_t events = 0;
    if (guest_open_ && !rx_starved_ && Usable(console::kPort1Rx)) events |= EPOLLIN;
    if (tx_inflight_) events |= EPOLLOUT;
    if (events == watched_) return;
    if (auto modified = loop_.Modify(conn_.get(), events); modified) watched_ = events;
  }

  void OnAccept() {
    std::lock_guard lock(mutex_);
    UniqueFd conn(accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!conn) return;
    if (conn_) return;  // the listener is unwatched while connected; a late event
    int fd = conn.get();
    watched_ = 0;
    if (auto added = loop_.Add(fd, 0, [this, fd](uint32_t events) { OnConnection(fd, events); });
        !added) {
      return;
    }
    conn_ = std::move(conn);
    loop_.Remove(listener_.get());
    if (active_ && multiport_) SendControl(console::kAgentPortId, console::kPortOpen, 1);
    UpdateWatch();
    queues_.SignalUsed();
  }

  void OnConnection(int fd, uint32_t events) {
    std::lock_guard lock(mutex_);
    if (!conn_ || conn_.get() != fd) return;
    if (events & EPOLLOUT) PumpGuestToHost();
    if (conn_ && (events & EPOLLIN)) PumpHostToGuest();
    // Hung up with nothing more we can read now: what the host sent last and the guest
    // has no room for belongs to a session that is over.
    if (conn_ && (events & (EPOLLHUP | EPOLLERR))) CloseConnection();
    queues_.SignalUsed();
  }

  void CloseConnection() {
    loop_.Remove(conn_.get());
    conn_.Reset();
    watched_ = 0;
    if (tx_inflight_) {
      queues_.Push(console::kPort1Tx, tx_inflight_->head, 0);
      tx_inflight_.reset();
    }
    if (active_ && multiport_) SendControl(console::kAgentPortId, console::kPortOpen, 0);
    if (auto added = loop_.Add(listener_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
        !added) {
      std::fprintf(stderr, "vessel-vmm: virtio-console: %s\n", added.error().message().c_str());
    }
  }

  EventLoop& loop_;
  const std::string port_name_;
  UniqueFd listener_;

  std::mutex mutex_;
  bool active_ = false;
  bool multiport_ = false;
  virtio::DeviceQueues queues_{"virtio-console"};
  std::deque<std::vector<uint8_t>> control_out_;
  bool guest_open_ = false;
  bool rx_starved_ = false;

  UniqueFd conn_;
  uint32_t watched_ = 0;
  std::optional<DescriptorChain> tx_inflight_;
  uint64_t tx_offset_ = 0;
};

}  // namespace

Result<std::unique_ptr<virtio::VirtioDevice>> MakeVirtioConsole(
    EventLoop& loop, const std::string& agent_socket_path, const std::string& port_name) {
  if (port_name.empty() || port_name.size() > console::kMaxPortNameBytes) {
    return Fail(Error::InvalidConfig("port_name", "must be 1 to 64 bytes"));
  }
  auto listener = virtio::ListenUnix(agent_socket_path);
  if (!listener) return Fail(std::move(listener.error()).Context("virtio-console agent port"));
  auto device = std::make_unique<VirtioConsole>(loop, port_name, std::move(*listener));
  if (auto started = device->Start(); !started) return Fail(started.error());
  return device;
}

}  // namespace vessel::vmm
