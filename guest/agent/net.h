// Egress for guest programs: an HTTP proxy port on 127.0.0.1 whose connections the agent
// pipes to the host byte for byte. The host does the proxying (reads the request, applies
// the egress policy, connects, answers); the agent only moves bytes, flow controlled in
// both directions by kNetWindow, so a slow reader on either side stalls only its own
// connection and neither side buffers more than a window.
//
// The agent opens a connection with NetOpen under an id of its own (kAgentIdBit set). The
// host ends every connection with NetClose; the agent sends NetClose only when the
// connection failed: the guest socket broke, the host broke the protocol for it, or the
// host reconnected.
#pragma once

#include <poll.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include "base/unique_fd.h"
#include "port.h"
#include "process.h"
#include "protocol/wire.h"

namespace vessel::agent {

// The proxy port commands are pointed at (HTTP_PROXY and kin, on 127.0.0.1).
inline constexpr uint16_t kProxyPort = 3128;
// Proxied connections open at once; further guest connections wait in the listen backlog.
inline constexpr size_t kMaxNetConnections = 256;

// A non-blocking TCP socket listening on 127.0.0.1:kProxyPort; invalid, with the reason
// logged, when it cannot be made.
UniqueFd ListenProxy();

// One guest connection to the proxy port, from accept to the host's NetClose.
class NetConnection {
 public:
  NetConnection(uint32_t request_id, UniqueFd socket)
      : request_id_(request_id), socket_(std::move(socket)) {}
  NetConnection(const NetConnection&) = delete;
  NetConnection& operator=(const NetConnection&) = delete;

  // POLLIN while the guest's bytes may be forwarded (credit, room in the port, the guest
  // has not ended its side), POLLOUT while the host's bytes wait; fd -1 when neither.
  [[nodiscard]] pollfd PollEvents(const Port& port) const;
  // Acts on what poll() reported: one read, one write. True when the connection is over
  // and can be dropped.
  [[nodiscard]] bool OnPoll(short revents, Port& port);

  // Frames from the host; each returns true when the connection is over. NetData beyond
  // the window, after the host's empty NetData, or Credit beyond the window break the
  // protocol: the agent answers NetClose.
  [[nodiscard]] bool OnData(std::span<const uint8_t> data, Port& port);
  [[nodiscard]] bool OnCredit(uint32_t bytes, Port& port);
  // The host's NetClose: what the host sent before it is still written to the guest, then
  // the socket is closed. True when nothing is left to write.
  [[nodiscard]] bool OnClose();
  // Ends the connection from the agent's side: NetClose, unless one was already received.
  // The connection must then be dropped.
  void Abort(Port& port);

  // One line for a state dump.
  [[nodiscard]] std::string Describe() const;

 private:
  [[nodiscard]] bool MayRead(const Port& port) const;
  // One read of the guest's bytes, one write of the host's. True when the connection is
  // over.
  [[nodiscard]] bool ReadOnce(Port& port);
  [[nodiscard]] bool WritePending(Port& port);

  uint32_t request_id_;
  UniqueFd socket_;
  uint64_t credit_ = protocol::kNetWindow;  // NetData bytes the host will accept now
  ByteQueue pending_;                       // the host's bytes not yet written to the guest
  bool guest_ended_ = false;                // read end of file; the empty NetData was sent
  bool host_ended_ = false;                 // the host sent its empty NetData
  bool closed_ = false;  // NetClose was received or sent: no frame for this id follows
};

}  // namespace vessel::agent
