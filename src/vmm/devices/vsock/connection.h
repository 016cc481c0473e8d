// One vsock stream between a guest port and a host unix socket: its state machine and
// the credit accounting in both directions. No I/O of its own: the muxer owns the host
// sockets, the device the queues.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/unique_fd.h"
#include "vmm/devices/vsock/vsock_packet.h"

namespace vessel::vmm::vsock {

// Bytes from the guest the device holds per connection while the host socket is slow;
// advertised to the guest as buf_alloc.
inline constexpr uint32_t kConnectionBuffer = 256 * 1024;
// A credit update goes to the guest once this many bytes were forwarded since the last.
inline constexpr uint32_t kCreditUpdateThreshold = kConnectionBuffer / 4;

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

  // Every packet from the guest carries its current credit.
  void UpdatePeerCredit(const PacketHeader& h);
  // False when `len` more bytes would overflow the buffer the device advertised: the
  // guest ignored its credit.
  [[nodiscard]] bool FitsBuffer(uint32_t len) const;
  void QueueToHost(std::string_view bytes, bool is_reply);
  // `sent` bytes of to_host reached the host socket.
  void Forwarded(size_t sent);
  // Drops what was forwarded once it outgrows the buffer, so to_host stays bounded.
  void CompactToHost();
  [[nodiscard]] bool CreditUpdateDue() const {
    return fwd_cnt - fwd_cnt_sent >= kCreditUpdateThreshold;
  }
  // A header from the host end of this connection to the guest, carrying our credit.
  [[nodiscard]] PacketHeader HeaderFor(uint64_t guest_cid, Op op) const;
  // The host socket events this connection waits for; `rx_ready`: the guest's receive
  // queue can take data now.
  [[nodiscard]] uint32_t WantedEvents(bool rx_ready) const;
  // One line for the state dump.
  [[nodiscard]] std::string Describe() const;
};

}  // namespace vessel::vmm::vsock
