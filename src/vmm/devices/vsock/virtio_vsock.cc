#include "vmm/devices/vsock/virtio_vsock.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "vmm/devices/virtio/device_queues.h"
#include "vmm/devices/virtio/host_socket.h"
#include "vmm/devices/vsock/vsock_packet.h"

namespace vessel::vmm {
namespace {

using virtio::DescriptorChain;
using virtio::Queue;
using vsock::Op;
using vsock::PacketHeader;

// Packets without payload (responses, resets, credit updates) waiting for guest receive
// buffers. While this many wait, the device stops taking the guest's transmit queue, so a
// guest that does not read cannot make it queue more.
constexpr size_t kMaxPendingRx = 256;
// Beyond this even events from the host side (connects, hang-ups) drop their packets.
constexpr size_t kHardMaxPendingRx = 2 * kMaxPendingRx;
// Chains handled per call, so a guest refilling a queue cannot hold a thread forever.
constexpr size_t kChainsPerTurn = 512;
constexpr size_t kMaxIov = 64;
// A credit update goes to the guest once this many bytes were forwarded since the last.
constexpr uint32_t kCreditUpdateThreshold = vsock::kConnectionBuffer / 4;
// The host end is gone, or will send nothing more. epoll reports EPOLLHUP and EPOLLERR
// unasked; EPOLLRDHUP must be watched for.
constexpr uint32_t kHostHangUp = EPOLLHUP | EPOLLRDHUP | EPOLLERR;

uint64_t PortKey(uint32_t local, uint32_t peer) { return (uint64_t{local} << 32) | peer; }

struct Connection {
  enum class State {
    kAwaitingConnect,  // host connected, its CONNECT line not read yet
    kConnecting,       // OP_REQUEST sent to the guest, waiting for its answer
    kConnected,
  };
  State state = State::kAwaitingConnect;
  UniqueFd fd;
  uint32_t local_port = 0;  // the host side's vsock port
  uint32_t peer_port = 0;   // the guest's
  std::string connect_line;

  // The guest's receive buffer, as it last advertised it, and what was sent into it.
  uint32_t peer_buf_alloc = 0;
  uint32_t peer_fwd_cnt = 0;
  uint32_t tx_cnt = 0;
  bool credit_requested = false;

  // Bytes from the guest (and the "OK" reply) not yet written to the host socket.
  std::vector<uint8_t> to_host;
  size_t to_host_offset = 0;
  size_t reply_bytes = 0;  // leading bytes of to_host that are the reply, not guest data
  uint32_t rx_cnt = 0;     // guest bytes received
  uint32_t fwd_cnt = 0;    // guest bytes written to the host
  uint32_t fwd_cnt_sent = 0;

  bool guest_sends_no_more = false;
  bool guest_receives_no_more = false;
  bool host_write_shut = false;
  uint32_t watched = 0;

  [[nodiscard]] size_t pending_to_host() const { return to_host.size() - to_host_offset; }
  [[nodiscard]] uint32_t PeerCredit() const {
    uint32_t in_flight = tx_cnt - peer_fwd_cnt;
    return in_flight >= peer_buf_alloc ? 0 : peer_buf_alloc - in_flight;
  }
};

std::vector<iovec> Iovecs(const std::vector<std::span<uint8_t>>& buffers, uint64_t offset,
                          size_t limit) {
  std::vector<iovec> iov;
  for (const auto& buf : buffers) {
    if (iov.size() == kMaxIov || limit == 0) break;
    if (offset >= buf.size()) {
      offset -= buf.size();
      continue;
    }
    size_t n = std::min<size_t>(buf.size() - offset, limit);
    iov.push_back({buf.data() + offset, n});
    limit -= n;
    offset = 0;
  }
  return iov;
}

// "CONNECT <port>\n" with a decimal port; anything else is refused.
std::optional<uint32_t> ParseConnectLine(std::string_view line) {
  constexpr std::string_view kPrefix = "CONNECT ";
  if (!line.starts_with(kPrefix) || !line.ends_with('\n')) return std::nullopt;
  std::string_view digits = line.substr(kPrefix.size(), line.size() - kPrefix.size() - 1);
  if (digits.empty() || digits.size() > 10) return std::nullopt;
  uint32_t port = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return port;
}

class VirtioVsock final : public virtio::VirtioDevice {
 public:
  VirtioVsock(EventLoop& loop, uint64_t guest_cid, std::string path, UniqueFd listener)
      : loop_(loop),
        guest_cid_(guest_cid),
        path_(std::move(path)),
        listener_(std::move(listener)) {}

  ~VirtioVsock() override {
    std::lock_guard lock(mutex_);
    CloseAll();
    loop_.Remove(listener_.get());
    unlink(path_.c_str());
  }

  Result<void> Start() {
    return loop_.Add(listener_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
  }

  uint32_t device_type() const override { return vsock::kDeviceType; }
  uint64_t features() const override { return virtio::kFeatureVersion1; }
  size_t num_queues() const override { return vsock::kNumQueues; }
  uint16_t max_queue_size() const override { return vsock::kQueueSize; }

  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override {
    if (offset >= sizeof(guest_cid_)) return;
    size_t n = std::min<size_t>(data.size(), sizeof(guest_cid_) - offset);
    std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&guest_cid_) + offset, n);
  }
  void WriteConfig(uint64_t, std::span<const uint8_t>) override {}

  Result<void> Activate(const GuestMemory&, std::span<Queue* const> queues, uint64_t,
                        virtio::DriverSignal& signal) override {
    std::lock_guard lock(mutex_);
    if (queues.size() != vsock::kNumQueues) {
      return Fail(Error::Backend("virtio-vsock activated with the wrong number of queues"));
    }
    queues_.Attach(queues, signal);
    active_ = true;
    return {};
  }

  void QueueNotify(size_t index) override {
    std::lock_guard lock(mutex_);
    if (!active_) return;
    if (index == vsock::kRxQueue) {
      rx_starved_ = false;
      FlushRx();
      if (tx_stalled_) ProcessTx();
      UpdateAllWatches();
    } else if (index == vsock::kTxQueue) {
      ProcessTx();
    }
    queues_.SignalUsed();
  }

  std::string DescribeState() override {
    std::lock_guard lock(mutex_);
    std::string out = queues_.Describe();
    out += fmt::format("  pending_rx={} rx_starved={} tx_stalled={} connections={}\n",
                       pending_rx_.size(), rx_starved_, tx_stalled_, conns_.size());
    for (const auto& [fd, c] : conns_) out += "  " + Describe(*c) + "\n";
    return out;
  }

  void Reset() override {
    std::lock_guard lock(mutex_);
    // The driver's reset before it first sets the device up ends no host session: host
    // connections made before the guest booted wait for it.
    if (!active_) return;
    active_ = false;
    queues_.Detach();
    pending_rx_.clear();
    rx_starved_ = false;
    tx_stalled_ = false;
    CloseAll();
  }

 private:
  bool Usable(size_t index) const { return active_ && queues_.Usable(index); }

  std::optional<DescriptorChain> PopFrom(size_t index) {
    if (!Usable(index)) return std::nullopt;
    return queues_.Pop(index);
  }

  // ---- Guest to device ----

  void ProcessTx() {
    tx_stalled_ = false;
    for (size_t i = 0; i < kChainsPerTurn; ++i) {
      if (pending_rx_.size() >= kMaxPendingRx) {
        tx_stalled_ = true;
        break;
      }
      auto chain = PopFrom(vsock::kTxQueue);
      if (!chain) break;
      if (auto packet = vsock::ParseTxPacket(*chain); packet) {
        HandleGuestPacket(packet->header, *chain);
      }
      queues_.Push(vsock::kTxQueue, chain->head, 0);
    }
    FlushRx();
  }

  void HandleGuestPacket(const PacketHeader& h, const DescriptorChain& chain) {
    // A guest may speak only for itself, and only to the host.
    if (h.src_cid != guest_cid_ || h.dst_cid != vsock::kHostCid) return;
    Op op = static_cast<Op>(h.op);
    if (h.type != vsock::kTypeStream || !vsock::IsKnownOp(h.op)) {
      if (op != Op::kRst) QueueReset(h.dst_port, h.src_port);
      return;
    }
    Connection* c = Find(h.dst_port, h.src_port);
    if (op == Op::kRequest) {
      if (c) {
        QueueReset(h.dst_port, h.src_port);
      } else {
        ConnectForGuest(h);
      }
      return;
    }
    if (!c) {
      if (op != Op::kRst) QueueReset(h.dst_port, h.src_port);
      return;
    }
    // Every packet carries the guest's current credit.
    c->peer_buf_alloc = h.buf_alloc;
    c->peer_fwd_cnt = h.fwd_cnt;
    if (c->PeerCredit() > 0) c->credit_requested = false;
    switch (op) {
      case Op::kResponse:
        if (c->state != Connection::State::kConnecting) return Abort(c);
        c->state = Connection::State::kConnected;
        QueueToHost(c, fmt::format("OK {}\n", c->local_port), /*is_reply=*/true);
        FlushToHost(c);
        return;
      case Op::kRw: {
        if (c->state != Connection::State::kConnected || c->guest_sends_no_more) return Abort(c);
        // More than the buffer the device advertised: the guest ignored its credit.
        if (c->rx_cnt - c->fwd_cnt + uint64_t{h.len} > vsock::kConnectionBuffer) return Abort(c);
        size_t at = c->to_host.size();
        c->to_host.resize(at + h.len);
        virtio::CopyFromBuffers(chain.readable, vsock::kHeaderSize,
                                std::span(c->to_host).subspan(at));
        c->rx_cnt += h.len;
        FlushToHost(c);
        return;
      }
      case Op::kCreditUpdate: UpdateWatch(c); return;
      case Op::kCreditRequest:
        QueueControl(c, Op::kCreditUpdate);
        UpdateWatch(c);
        return;
      case Op::kShutdown:
        if (h.flags & vsock::kShutdownSend) c->guest_sends_no_more = true;
        if (h.flags & vsock::kShutdownRecv) c->guest_receives_no_more = true;
        FlushToHost(c);
        return;
      case Op::kRst: Close(c); return;
      default: return;
    }
  }

  void ConnectForGuest(const PacketHeader& h) {
    if (conns_.size() >= vsock::kMaxConnections) return QueueReset(h.dst_port, h.src_port);
    auto fd = virtio::ConnectUnix(fmt::format("{}_{}", path_, h.dst_port));
    if (!fd) return QueueReset(h.dst_port, h.src_port);
    int raw = fd->get();
    auto c = std::make_unique<Connection>();
    c->state = Connection::State::kConnected;
    c->fd = std::move(*fd);
    c->local_port = h.dst_port;
    c->peer_port = h.src_port;
    c->peer_buf_alloc = h.buf_alloc;
    c->peer_fwd_cnt = h.fwd_cnt;
    if (!loop_.Add(raw, 0, [this, raw](uint32_t events) { OnConnectionEvent(raw, events); })) {
      return QueueReset(h.dst_port, h.src_port);
    }
    Connection* conn = c.get();
    conns_[raw] = std::move(c);
    by_ports_[PortKey(conn->local_port, conn->peer_port)] = conn;
    QueueControl(conn, Op::kResponse);
    UpdateWatch(conn);
  }

  // ---- Device to guest ----

  PacketHeader HeaderFor(const Connection* c, Op op) const {
    return {.src_cid = vsock::kHostCid,
            .dst_cid = guest_cid_,
            .src_port = c->local_port,
            .dst_port = c->peer_port,
            .len = 0,
            .type = vsock::kTypeStream,
            .op = static_cast<uint16_t>(op),
            .flags = 0,
            .buf_alloc = vsock::kConnectionBuffer,
            .fwd_cnt = c->fwd_cnt};
  }

  void QueueControl(Connection* c, Op op, uint32_t flags = 0) {
    PacketHeader h = HeaderFor(c, op);
    h.flags = flags;
    c->fwd_cnt_sent = c->fwd_cnt;
    QueuePacket(h);
  }

  void QueueReset(uint32_t local_port, uint32_t peer_port) {
    QueuePacket({.src_cid = vsock::kHostCid,
                 .dst_cid = guest_cid_,
                 .src_port = local_port,
                 .dst_port = peer_port,
                 .type = vsock::kTypeStream,
                 .op = static_cast<uint16_t>(Op::kRst)});
  }

  void QueuePacket(const PacketHeader& h) {
    if (pending_rx_.size() >= kHardMaxPendingRx) return;
    pending_rx_.push_back(h);
  }

  void FlushRx() {
    while (!pending_rx_.empty()) {
      auto chain = PopFrom(vsock::kRxQueue);
      if (!chain) {
        rx_starved_ = true;
        return;
      }
      auto written = vsock::WriteRxPacket(*chain, pending_rx_.front(), {});
      queues_.Push(vsock::kRxQueue, chain->head, written.value_or(0));
      if (written) pending_rx_.pop_front();
    }
  }

  // Reads the host socket into the guest's receive buffers, within the guest's credit.
  void PumpToGuest(Connection* c) {
    for (size_t i = 0; i < kChainsPerTurn; ++i) {
      if (c->state != Connection::State::kConnected || c->guest_receives_no_more) break;
      FlushRx();
      if (!pending_rx_.empty()) break;
      uint32_t credit = c->PeerCredit();
      if (credit == 0) {
        if (!c->credit_requested) {
          c->credit_requested = true;
          QueueControl(c, Op::kCreditRequest);
          FlushRx();
        }
        break;
      }
      auto chain = PopFrom(vsock::kRxQueue);
      if (!chain) {
        rx_starved_ = true;
        break;
      }
      if (chain->writable_bytes <= vsock::kHeaderSize) {
        queues_.Push(vsock::kRxQueue, chain->head, 0);
        continue;
      }
      size_t room =
          std::min<uint64_t>(chain->writable_bytes - vsock::kHeaderSize, vsock::kMaxPayload);
      auto iov = Iovecs(chain->writable, vsock::kHeaderSize, std::min<size_t>(room, credit));
      ssize_t n = readv(c->fd.get(), iov.data(), static_cast<int>(iov.size()));
      if (n <= 0) {
        queues_.at(vsock::kRxQueue)->Unpop();
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        return HostClosed(c);
      }
      PacketHeader h = HeaderFor(c, Op::kRw);
      h.len = static_cast<uint32_t>(n);
      virtio::CopyToBuffers(chain->writable, 0, vsock::EncodeHeader(h));
      queues_.Push(vsock::kRxQueue, chain->head, static_cast<uint32_t>(vsock::kHeaderSize) + h.len);
      c->tx_cnt += h.len;
      c->fwd_cnt_sent = c->fwd_cnt;
    }
    UpdateWatch(c);
  }

  // The host closed its end (or it broke): the guest hears a shutdown and a reset. A host
  // that gave up waiting for the guest's answer has its request withdrawn if the guest has
  // not seen it yet, so the guest never accepts a connection nobody is on; a request the
  // guest has seen is reset, and its late OP_RESPONSE finds no connection and is reset too.
  void HostClosed(Connection* c) {
    switch (c->state) {
      case Connection::State::kAwaitingConnect: break;
      case Connection::State::kConnecting:
        if (!WithdrawRequest(c)) QueueControl(c, Op::kRst);
        break;
      case Connection::State::kConnected:
        QueueControl(c, Op::kShutdown, vsock::kShutdownRecv | vsock::kShutdownSend);
        QueueControl(c, Op::kRst);
        break;
    }
    Close(c);
    FlushRx();
  }

  // Drops `c`'s OP_REQUEST if it still waits for a receive buffer; false if it went out.
  bool WithdrawRequest(const Connection* c) {
    auto it = std::ranges::find_if(pending_rx_, [c](const PacketHeader& h) {
      return h.op == static_cast<uint16_t>(Op::kRequest) && h.src_port == c->local_port &&
             h.dst_port == c->peer_port;
    });
    if (it == pending_rx_.end()) return false;
    pending_rx_.erase(it);
    return true;
  }

  // ---- Device to host ----

  void QueueToHost(Connection* c, std::string_view bytes, bool is_reply) {
    c->to_host.insert(c->to_host.end(), bytes.begin(), bytes.end());
    if (is_reply) c->reply_bytes += bytes.size();
  }

  void FlushToHost(Connection* c) {
    while (c->pending_to_host() > 0) {
      ssize_t n = send(c->fd.get(), c->to_host.data() + c->to_host_offset, c->pending_to_host(),
                       MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n < 0) return HostClosed(c);
      size_t sent = static_cast<size_t>(n);
      c->to_host_offset += sent;
      size_t reply = std::min(sent, c->reply_bytes);
      c->reply_bytes -= reply;
      c->fwd_cnt += static_cast<uint32_t>(sent - reply);
    }
    if (c->pending_to_host() == 0) {
      c->to_host.clear();
      c->to_host_offset = 0;
      if (c->guest_sends_no_more && c->guest_receives_no_more) {
        // The guest closed its socket; its close completes on our reset.
        QueueControl(c, Op::kRst);
        Close(c);
        FlushRx();
        return;
      }
      if (c->guest_sends_no_more && !c->host_write_shut) {
        shutdown(c->fd.get(), SHUT_WR);
        c->host_write_shut = true;
      }
    } else if (c->to_host_offset > vsock::kConnectionBuffer) {
      c->to_host.erase(c->to_host.begin(),
                       c->to_host.begin() + static_cast<std::ptrdiff_t>(c->to_host_offset));
      c->to_host_offset = 0;
    }
    if (c->fwd_cnt - c->fwd_cnt_sent >= kCreditUpdateThreshold) {
      QueueControl(c, Op::kCreditUpdate);
      FlushRx();
    }
    UpdateWatch(c);
  }

  // ---- Host side events ----

  void OnAccept() {
    std::lock_guard lock(mutex_);
    UniqueFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd || conns_.size() >= vsock::kMaxConnections) return;  // refused: closed at once
    int raw = fd.get();
    constexpr uint32_t kWatch = EPOLLIN | EPOLLRDHUP;
    if (!loop_.Add(raw, kWatch, [this, raw](uint32_t events) { OnConnectionEvent(raw, events); })) {
      return;
    }
    auto c = std::make_unique<Connection>();
    c->fd = std::move(fd);
    c->watched = kWatch;
    conns_[raw] = std::move(c);
  }

  void OnConnectionEvent(int fd, uint32_t events) {
    std::lock_guard lock(mutex_);
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    Connection* c = it->second.get();
    switch (c->state) {
      case Connection::State::kAwaitingConnect:
        if (events & EPOLLIN) return ReadConnectLine(c, events);
        return Close(c);
      case Connection::State::kConnecting:
        // Nothing is read before the guest answers; only a hang-up wakes us here.
        if (events & kHostHangUp) HostClosed(c);
        break;
      case Connection::State::kConnected:
        if (events & EPOLLOUT) {
          FlushToHost(c);
          if (!Find(fd)) break;
        }
        if (events & EPOLLIN) {
          PumpToGuest(c);
          if (!Find(fd)) break;
        }
        // Hung up with nothing more the guest has room for now: the session is over.
        if (events & (EPOLLHUP | EPOLLERR)) HostClosed(c);
        break;
    }
    queues_.SignalUsed();
  }

  // Reads the CONNECT line a byte at a time, so no byte meant for the guest is taken. A
  // host that hung up (`events`) right after its line is not asked for.
  void ReadConnectLine(Connection* c, uint32_t events) {
    while (c->connect_line.size() < vsock::kMaxConnectLine) {
      char ch;
      ssize_t n = recv(c->fd.get(), &ch, 1, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return;
      if (n <= 0) return Close(c);
      c->connect_line.push_back(ch);
      if (ch == '\n') break;
    }
    auto port = ParseConnectLine(c->connect_line);
    if (!port || (events & kHostHangUp)) return Close(c);
    c->connect_line.clear();
    c->state = Connection::State::kConnecting;
    c->local_port = AllocateLocalPort();
    c->peer_port = *port;
    by_ports_[PortKey(c->local_port, c->peer_port)] = c;
    QueuePacket(HeaderFor(c, Op::kRequest));
    FlushRx();
    UpdateWatch(c);
    queues_.SignalUsed();
  }

  uint32_t AllocateLocalPort() {
    for (;;) {
      uint32_t port = next_local_port_++;
      if (next_local_port_ == UINT32_MAX) next_local_port_ = vsock::kFirstLocalPort;
      auto it = by_ports_.lower_bound(PortKey(port, 0));
      if (it == by_ports_.end() || (it->first >> 32) != port) return port;
    }
  }

  // ---- Bookkeeping ----

  static std::string Describe(const Connection& c) {
    constexpr const char* kStates[] = {"awaiting-connect", "connecting", "connected"};
    return fmt::format(
        "conn {}<->{} {} watched={:#x} | to guest: peer_buf_alloc={} peer_fwd_cnt={} tx_cnt={} "
        "credit={}{} | to host: pending={} rx_cnt={} fwd_cnt={} fwd_cnt_sent={}{}{}{}",
        c.local_port, c.peer_port, kStates[static_cast<int>(c.state)], c.watched, c.peer_buf_alloc,
        c.peer_fwd_cnt, c.tx_cnt, c.PeerCredit(), c.credit_requested ? " credit-requested" : "",
        c.pending_to_host(), c.rx_cnt, c.fwd_cnt, c.fwd_cnt_sent,
        c.guest_sends_no_more ? " guest-shut-send" : "",
        c.guest_receives_no_more ? " guest-shut-recv" : "", c.host_write_shut ? " host-shut" : "");
  }

  Connection* Find(uint32_t local_port, uint32_t peer_port) {
    auto it = by_ports_.find(PortKey(local_port, peer_port));
    return it == by_ports_.end() ? nullptr : it->second;
  }
  Connection* Find(int fd) {
    auto it = conns_.find(fd);
    return it == conns_.end() ? nullptr : it->second.get();
  }

  void UpdateWatch(Connection* c) {
    uint32_t events = 0;
    switch (c->state) {
      case Connection::State::kAwaitingConnect: events = EPOLLIN | EPOLLRDHUP; break;
      // Not EPOLLIN: the host's bytes stay unread until the guest accepts. Hang-ups are
      // still seen, so a host that gives up does not leave a request for the guest.
      case Connection::State::kConnecting: events = EPOLLRDHUP; break;
      case Connection::State::kConnected:
        if (c->pending_to_host() > 0) events |= EPOLLOUT;
        if (!c->guest_receives_no_more && c->PeerCredit() > 0 && !rx_starved_ &&
            Usable(vsock::kRxQueue)) {
          events |= EPOLLIN;
        }
        break;
    }
    if (events == c->watched) return;
    if (loop_.Modify(c->fd.get(), events)) c->watched = events;
  }

  void UpdateAllWatches() {
    for (auto& [fd, c] : conns_) UpdateWatch(c.get());
  }

  // A protocol violation by the guest on an open connection.
  void Abort(Connection* c) {
    QueueControl(c, Op::kRst);
    Close(c);
  }

  // Forgets `c`; the pointer is dangling afterwards.
  void Close(Connection* c) {
    int fd = c->fd.get();
    loop_.Remove(fd);
    if (c->state != Connection::State::kAwaitingConnect) {
      by_ports_.erase(PortKey(c->local_port, c->peer_port));
    }
    conns_.erase(fd);
  }

  void CloseAll() {
    for (auto& [fd, c] : conns_) loop_.Remove(fd);
    conns_.clear();
    by_ports_.clear();
  }

  EventLoop& loop_;
  const uint64_t guest_cid_;
  const std::string path_;
  UniqueFd listener_;

  std::mutex mutex_;
  bool active_ = false;
  virtio::DeviceQueues queues_{"virtio-vsock"};
  std::deque<PacketHeader> pending_rx_;
  bool rx_starved_ = false;
  bool tx_stalled_ = false;

  std::map<int, std::unique_ptr<Connection>> conns_;
  std::map<uint64_t, Connection*> by_ports_;
  uint32_t next_local_port_ = vsock::kFirstLocalPort;
};

}  // namespace

Result<std::unique_ptr<virtio::VirtioDevice>> MakeVirtioVsock(EventLoop& loop, uint64_t guest_cid,
                                                              const std::string& uds_path) {
  if (guest_cid < 3 || guest_cid >= UINT32_MAX) {
    return Fail(Error::InvalidConfig("vsock.cid", "must be at least 3 and below 2^32 - 1"));
  }
  auto listener = virtio::ListenUnix(uds_path);
  if (!listener) return Fail(std::move(listener.error()).Context("virtio-vsock"));
  auto device = std::make_unique<VirtioVsock>(loop, guest_cid, uds_path, std::move(*listener));
  if (auto started = device->Start(); !started) return Fail(started.error());
  return device;
}

}  // namespace vessel::vmm
