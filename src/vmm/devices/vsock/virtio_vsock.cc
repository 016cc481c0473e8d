#include "vmm/devices/vsock/virtio_vsock.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "vmm/core/state_codec.h"
#include "vmm/devices/virtio/device_queues.h"
#include "vmm/devices/virtio/host_socket.h"
#include "vmm/devices/vsock/connection.h"
#include "vmm/devices/vsock/muxer.h"
#include "vmm/devices/vsock/vsock_packet.h"

namespace vessel::vmm {
namespace {

using virtio::DescriptorChain;
using virtio::Queue;
using vsock::Connection;
using vsock::Muxer;
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
// struct virtio_vsock_event (virtio 1.x, 5.10.6.6): le32 id.
constexpr uint32_t kEventTransportReset = 0;

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

class VirtioVsock final : public virtio::VirtioDevice {
 public:
  VirtioVsock(EventLoop& loop, uint64_t guest_cid, std::string path, UniqueFd listener)
      : guest_cid_(guest_cid), muxer_(loop, std::move(path), std::move(listener)) {}

  ~VirtioVsock() override {
    std::lock_guard lock(mutex_);
    muxer_.CloseAll();
  }

  Result<void> Start() {
    return muxer_.Listen([this] {
      std::lock_guard lock(mutex_);
      muxer_.Accept(on_event_);
    });
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
      muxer_.UpdateAllWatches(RxReady());
    } else if (index == vsock::kTxQueue) {
      ProcessTx();
    } else if (index == vsock::kEventQueue) {
      if (reset_event_ == ResetEvent::kDelivered) {
        // The guest gives an event buffer back once it has handled the events before it:
        // its old sockets are reset, and what waited for that goes out.
        reset_event_ = ResetEvent::kNone;
        rx_starved_ = false;
        FlushRx();
        ProcessTx();
        muxer_.UpdateAllWatches(RxReady());
      } else {
        DeliverTransportReset();
      }
    }
    queues_.SignalUsed();
  }

  // version u32: nothing else survives a snapshot (see LoadState).
  std::vector<uint8_t> SaveState() override {
    StateWriter out;
    out.Put(vsock::kStateVersion);
    return out.Take();
  }

  // A loaded device has none of the saved connections' host sockets: the guest is told
  // with TRANSPORT_RESET, which resets its connected sockets and leaves listening ones be,
  // and hears nothing on the receive queue until it has handled it (it says so by giving
  // the event buffer back), so that no connection made after the load is reset with the
  // old ones: Linux handles the event and receive queues in separate work items. Nothing from the
  // saved connections is kept: no chain is held between calls (every Pop is pushed or put back
  // before the device lock is released) and the packets waiting for the guest all concern
  // connections the reset ends.
  Result<void> LoadState(std::span<const uint8_t> bytes) override {
    std::lock_guard lock(mutex_);
    StateReader in(bytes, "virtio-vsock state");
    if (!active_) return Fail(in.Malformed("loaded into a device that is not active"));
    if (auto version = in.Version(vsock::kStateVersion); !version) return version;
    if (auto finished = in.Finish(); !finished) return finished;
    reset_event_ = ResetEvent::kPending;
    DeliverTransportReset();
    queues_.SignalUsed();
    return {};
  }

  std::string DescribeState() override {
    std::lock_guard lock(mutex_);
    std::string out = queues_.Describe();
    out += fmt::format("  pending_rx={} rx_starved={} tx_stalled={} reset={} connections={}\n",
                       pending_rx_.size(), rx_starved_, tx_stalled_, ResetName(), muxer_.size());
    for (const auto& [fd, c] : muxer_.connections()) out += "  " + c->Describe() + "\n";
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
    reset_event_ = ResetEvent::kNone;
    muxer_.CloseAll();
  }

 private:
  bool Usable(size_t index) const { return active_ && queues_.Usable(index); }
  // The guest's receive queue can take data now.
  bool RxReady() const {
    return !rx_starved_ && reset_event_ == ResetEvent::kNone && Usable(vsock::kRxQueue);
  }
  const char* ResetName() const {
    switch (reset_event_) {
      case ResetEvent::kNone: return "none";
      case ResetEvent::kPending: return "pending";
      case ResetEvent::kDelivered: return "delivered";
    }
    return "?";
  }

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
    Connection* c = muxer_.Find(h.dst_port, h.src_port);
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
    c->UpdatePeerCredit(h);
    switch (op) {
      case Op::kResponse:
        if (c->state != Connection::State::kConnecting) return Abort(c);
        c->state = Connection::State::kConnected;
        c->QueueToHost(fmt::format("OK {}\n", c->local_port), /*is_reply=*/true);
        FlushToHost(c);
        return;
      case Op::kRw: {
        if (c->state != Connection::State::kConnected || c->guest_sends_no_more) return Abort(c);
        if (!c->FitsBuffer(h.len)) return Abort(c);
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
    Connection* c = muxer_.ConnectForGuest(h.dst_port, h.src_port, on_event_);
    if (!c) return QueueReset(h.dst_port, h.src_port);
    c->UpdatePeerCredit(h);
    QueueControl(c, Op::kResponse);
    UpdateWatch(c);
  }

  // ---- Device to guest ----

  PacketHeader HeaderFor(const Connection* c, Op op) const { return c->HeaderFor(guest_cid_, op); }

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
    if (reset_event_ != ResetEvent::kNone) return;
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
      if (reset_event_ != ResetEvent::kNone) break;
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

  // Puts TRANSPORT_RESET in the guest's next event buffer, if it has posted one.
  void DeliverTransportReset() {
    if (reset_event_ != ResetEvent::kPending) return;
    for (size_t i = 0; i < kChainsPerTurn && reset_event_ == ResetEvent::kPending; ++i) {
      auto chain = PopFrom(vsock::kEventQueue);
      if (!chain) return;
      uint32_t event = kEventTransportReset;
      uint32_t written = 0;
      if (chain->writable_bytes >= sizeof(event)) {
        written = static_cast<uint32_t>(virtio::CopyToBuffers(
            chain->writable, 0, {reinterpret_cast<const uint8_t*>(&event), sizeof(event)}));
        reset_event_ = ResetEvent::kDelivered;
      }
      queues_.Push(vsock::kEventQueue, chain->head, written);
    }
  }

  // ---- Device to host ----

  void FlushToHost(Connection* c) {
    while (c->pending_to_host() > 0) {
      ssize_t n = send(c->fd.get(), c->to_host.data() + c->to_host_offset, c->pending_to_host(),
                       MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n < 0) return HostClosed(c);
      c->Forwarded(static_cast<size_t>(n));
    }
    c->CompactToHost();
    if (c->pending_to_host() == 0) {
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
    }
    if (c->CreditUpdateDue()) {
      QueueControl(c, Op::kCreditUpdate);
      FlushRx();
    }
    UpdateWatch(c);
  }

  // ---- Host side events ----

  void OnConnectionEvent(int fd, uint32_t events) {
    std::lock_guard lock(mutex_);
    Connection* c = muxer_.Find(fd);
    if (!c) return;
    switch (c->state) {
      case Connection::State::kAwaitingConnect:
        if (events & EPOLLIN) return ReadConnectLine(c, events);
        return Close(c);
      case Connection::State::kConnecting:
        // Nothing is read before the guest answers; only a hang-up wakes us here.
        if (events & vsock::kHostHangUp) HostClosed(c);
        break;
      case Connection::State::kConnected:
        if (events & EPOLLOUT) {
          FlushToHost(c);
          if (!muxer_.Find(fd)) break;
        }
        if (events & EPOLLIN) {
          PumpToGuest(c);
          if (!muxer_.Find(fd)) break;
        }
        // Hung up with nothing more the guest has room for now: the session is over.
        if (events & (EPOLLHUP | EPOLLERR)) HostClosed(c);
        break;
    }
    queues_.SignalUsed();
  }

  void ReadConnectLine(Connection* c, uint32_t events) {
    uint32_t port = 0;
    switch (muxer_.ReadConnectLine(*c, events, port)) {
      case Muxer::LineStatus::kIncomplete: return;
      case Muxer::LineStatus::kRefused: return Close(c);
      case Muxer::LineStatus::kComplete: break;
    }
    muxer_.StartConnecting(*c, port);
    QueuePacket(HeaderFor(c, Op::kRequest));
    FlushRx();
    UpdateWatch(c);
    queues_.SignalUsed();
  }

  // ---- Bookkeeping ----

  void UpdateWatch(Connection* c) { muxer_.UpdateWatch(*c, RxReady()); }

  // A protocol violation by the guest on an open connection.
  void Abort(Connection* c) {
    QueueControl(c, Op::kRst);
    Close(c);
  }

  // Forgets `c`; the pointer is dangling afterwards.
  void Close(Connection* c) { muxer_.Close(c); }

  const uint64_t guest_cid_;
  const Muxer::EventHandler on_event_ = [this](int fd, uint32_t events) {
    OnConnectionEvent(fd, events);
  };

  std::mutex mutex_;
  bool active_ = false;
  virtio::DeviceQueues queues_{"virtio-vsock"};
  std::deque<PacketHeader> pending_rx_;
  bool rx_starved_ = false;
  bool tx_stalled_ = false;
  // A loaded device owes the guest TRANSPORT_RESET; the receive queue waits for it.
  // A loaded device's TRANSPORT_RESET: waiting for an event buffer, then for the guest to
  // give one back.
  enum class ResetEvent { kNone, kPending, kDelivered };
  ResetEvent reset_event_ = ResetEvent::kNone;
  Muxer muxer_;
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
