// The host side of hybrid vsock: the unix socket host processes connect to, the
// connections (by host socket and by port pair), guest-initiated connects to
// "<uds_path>_<port>", the "CONNECT <port>\n" lines and the host-side port allocation.
//
// Not thread safe: the device calls it under its own lock, from the vCPU and I/O threads.
#pragma once

#include <sys/epoll.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "base/unique_fd.h"
#include "vessel/error.h"
#include "vmm/core/event_loop.h"
#include "vmm/devices/vsock/connection.h"

namespace vessel::vmm::vsock {

// Connections open at once, host- and guest-initiated together; more are refused.
inline constexpr size_t kMaxConnections = 64;
// Longest "CONNECT <port>\n" line a host may send.
inline constexpr size_t kMaxConnectLine = 32;
// Host-side ports of host-initiated connections are taken from here up.
inline constexpr uint32_t kFirstLocalPort = 1U << 30;
// The host end is gone, or will send nothing more. epoll reports EPOLLHUP and EPOLLERR
// unasked; EPOLLRDHUP must be watched for.
inline constexpr uint32_t kHostHangUp = EPOLLHUP | EPOLLRDHUP | EPOLLERR;

// "CONNECT <port>\n" with a decimal port; anything else is nullopt.
[[nodiscard]] std::optional<uint32_t> ParseConnectLine(std::string_view line);

class Muxer {
 public:
  // Called on the loop's thread with a connection's host socket and its epoll events.
  using EventHandler = std::function<void(int fd, uint32_t events)>;

  // `listener` listens on `path`; `loop` must outlive the muxer.
  Muxer(EventLoop& loop, std::string path, UniqueFd listener)
      : loop_(loop), path_(std::move(path)), listener_(std::move(listener)) {}
  // Closes every connection, stops listening and removes the socket file.
  ~Muxer();
  Muxer(const Muxer&) = delete;
  Muxer& operator=(const Muxer&) = delete;

  // Watches the listener; `on_accept` runs when a host connects.
  [[nodiscard]] Result<void> Listen(std::function<void()> on_accept);

  // Takes one host connection, awaiting its CONNECT line; refused (closed at once) at
  // kMaxConnections. `on_event` gets its socket's events.
  void Accept(const EventHandler& on_event);
  // The guest asks for host port `local_port`: a connected connection to
  // "<path>_<local_port>", or nullptr when nothing listens there or too many are open.
  [[nodiscard]] Connection* ConnectForGuest(uint32_t local_port, uint32_t peer_port,
                                            const EventHandler& on_event);

  enum class LineStatus { kIncomplete, kRefused, kComplete };
  // Reads `c`'s CONNECT line a byte at a time, so no byte meant for the guest is taken.
  // kComplete sets `port`; a host that hung up (`events`) right after its line is refused.
  [[nodiscard]] LineStatus ReadConnectLine(Connection& c, uint32_t events, uint32_t& port);
  // `c` asked for guest port `peer_port`: it gets a host-side port and is kConnecting.
  void StartConnecting(Connection& c, uint32_t peer_port);

  [[nodiscard]] Connection* Find(uint32_t local_port, uint32_t peer_port);
  [[nodiscard]] Connection* Find(int fd);
  // Watches what `c` waits for now (Connection::WantedEvents).
  void UpdateWatch(Connection& c, bool rx_ready);
  void UpdateAllWatches(bool rx_ready);
  // Forgets `c`; the pointer is dangling afterwards.
  void Close(Connection* c);
  void CloseAll();

  [[nodiscard]] size_t size() const { return conns_.size(); }
  [[nodiscard]] const std::map<int, std::unique_ptr<Connection>>& connections() const {
    return conns_;
  }

 private:
  uint32_t AllocateLocalPort();

  EventLoop& loop_;
  const std::string path_;
  UniqueFd listener_;
  std::map<int, std::unique_ptr<Connection>> conns_;
  std::map<uint64_t, Connection*> by_ports_;
  uint32_t next_local_port_ = kFirstLocalPort;
};

}  // namespace vessel::vmm::vsock
