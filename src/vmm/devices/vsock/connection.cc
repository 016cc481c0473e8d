#include "vmm/devices/vsock/connection.h"

#include <fmt/format.h>
#include <sys/epoll.h>

#include <algorithm>

namespace vessel::vmm::vsock {

void Connection::UpdatePeerCredit(const PacketHeader& h) {
  peer_buf_alloc = h.buf_alloc;
  peer_fwd_cnt = h.fwd_cnt;
  if (PeerCredit() > 0) credit_requested = false;
}

bool Connection::FitsBuffer(uint32_t len) const {
  return rx_cnt - fwd_cnt + uint64_t{len} <= kConnectionBuffer;
}

void Connection::QueueToHost(std::string_view bytes, bool is_reply) {
  to_host.insert(to_host.end(), bytes.begin(), bytes.end());
  if (is_reply) reply_bytes += bytes.size();
}

void Connection::Forwarded(size_t sent) {
  to_host_offset += sent;
  size_t reply = std::min(sent, reply_bytes);
  reply_bytes -= reply;
  fwd_cnt += static_cast<uint32_t>(sent - reply);
}

void Connection::CompactToHost() {
  if (pending_to_host() == 0) {
    to_host.clear();
    to_host_offset = 0;
  } else if (to_host_offset > kConnectionBuffer) {
    to_host.erase(to_host.begin(), to_host.begin() + static_cast<std::ptrdiff_t>(to_host_offset));
    to_host_offset = 0;
  }
}

PacketHeader Connection::HeaderFor(uint64_t guest_cid, Op op) const {
  return {.src_cid = kHostCid,
          .dst_cid = guest_cid,
          .src_port = local_port,
          .dst_port = peer_port,
          .len = 0,
          .type = kTypeStream,
          .op = static_cast<uint16_t>(op),
          .flags = 0,
          .buf_alloc = kConnectionBuffer,
          .fwd_cnt = fwd_cnt};
}

uint32_t Connection::WantedEvents(bool rx_ready) const {
  uint32_t events = 0;
  switch (state) {
    case State::kAwaitingConnect: events = EPOLLIN | EPOLLRDHUP; break;
    // Not EPOLLIN: the host's bytes stay unread until the guest accepts. Hang-ups are
    // still seen, so a host that gives up does not leave a request for the guest.
    case State::kConnecting: events = EPOLLRDHUP; break;
    case State::kConnected:
      if (pending_to_host() > 0) events |= EPOLLOUT;
      if (!guest_receives_no_more && PeerCredit() > 0 && rx_ready) events |= EPOLLIN;
      break;
  }
  return events;
}

std::string Connection::Describe() const {
  constexpr const char* kStates[] = {"awaiting-connect", "connecting", "connected"};
  return fmt::format(
      "conn {}<->{} {} watched={:#x} | to guest: peer_buf_alloc={} peer_fwd_cnt={} tx_cnt={} "
      "credit={}{} | to host: pending={} rx_cnt={} fwd_cnt={} fwd_cnt_sent={}{}{}{}",
      local_port, peer_port, kStates[static_cast<int>(state)], watched, peer_buf_alloc,
      peer_fwd_cnt, tx_cnt, PeerCredit(), credit_requested ? " credit-requested" : "",
      pending_to_host(), rx_cnt, fwd_cnt, fwd_cnt_sent,
      guest_sends_no_more ? " guest-shut-send" : "",
      guest_receives_no_more ? " guest-shut-recv" : "", host_write_shut ? " host-shut" : "");
}

}  // namespace vessel::vmm::vsock
