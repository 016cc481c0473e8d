#include "vmm/devices/vsock/muxer.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

#include "vmm/devices/virtio/host_socket.h"

namespace vessel::vmm::vsock {
namespace {

uint64_t PortKey(uint32_t local, uint32_t peer) { return (uint64_t{local} << 32) | peer; }

}  // namespace

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

Muxer::~Muxer() {
  CloseAll();
  loop_.Remove(listener_.get());
  // The socket file stays: a confined VMM cannot unlink, and its host removes the runtime
  // directory the file is in.
}

Result<void> Muxer::Listen(std::function<void()> on_accept) {
  return loop_.Add(listener_.get(), EPOLLIN,
                   [on_accept = std::move(on_accept)](uint32_t) { on_accept(); });
}

void Muxer::Accept(const EventHandler& on_event) {
  UniqueFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!fd || conns_.size() >= kMaxConnections) return;  // refused: closed at once
  int raw = fd.get();
  constexpr uint32_t kWatch = EPOLLIN | EPOLLRDHUP;
  if (!loop_.Add(raw, kWatch, [on_event, raw](uint32_t events) { on_event(raw, events); })) {
    return;
  }
  auto c = std::make_unique<Connection>();
  c->fd = std::move(fd);
  c->watched = kWatch;
  conns_[raw] = std::move(c);
}

Connection* Muxer::ConnectForGuest(uint32_t local_port, uint32_t peer_port,
                                   const EventHandler& on_event) {
  if (conns_.size() >= kMaxConnections) return nullptr;
  auto fd = virtio::ConnectUnix(fmt::format("{}_{}", path_, local_port));
  if (!fd) return nullptr;
  int raw = fd->get();
  auto c = std::make_unique<Connection>();
  c->state = Connection::State::kConnected;
  c->fd = std::move(*fd);
  c->local_port = local_port;
  c->peer_port = peer_port;
  if (!loop_.Add(raw, 0, [on_event, raw](uint32_t events) { on_event(raw, events); })) {
    return nullptr;
  }
  Connection* conn = c.get();
  conns_[raw] = std::move(c);
  by_ports_[PortKey(local_port, peer_port)] = conn;
  return conn;
}

Muxer::LineStatus Muxer::ReadConnectLine(Connection& c, uint32_t events, uint32_t& port) {
  while (c.connect_line.size() < kMaxConnectLine) {
    char ch;
    ssize_t n = recv(c.fd.get(), &ch, 1, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return LineStatus::kIncomplete;
    if (n <= 0) return LineStatus::kRefused;
    c.connect_line.push_back(ch);
    if (ch == '\n') break;
  }
  auto parsed = ParseConnectLine(c.connect_line);
  if (!parsed || (events & kHostHangUp)) return LineStatus::kRefused;
  c.connect_line.clear();
  port = *parsed;
  return LineStatus::kComplete;
}

void Muxer::StartConnecting(Connection& c, uint32_t peer_port) {
  c.state = Connection::State::kConnecting;
  c.local_port = AllocateLocalPort();
  c.peer_port = peer_port;
  by_ports_[PortKey(c.local_port, c.peer_port)] = &c;
}

uint32_t Muxer::AllocateLocalPort() {
  for (;;) {
    uint32_t port = next_local_port_++;
    if (next_local_port_ == UINT32_MAX) next_local_port_ = kFirstLocalPort;
    auto it = by_ports_.lower_bound(PortKey(port, 0));
    if (it == by_ports_.end() || (it->first >> 32) != port) return port;
  }
}

Connection* Muxer::Find(uint32_t local_port, uint32_t peer_port) {
  auto it = by_ports_.find(PortKey(local_port, peer_port));
  return it == by_ports_.end() ? nullptr : it->second;
}

Connection* Muxer::Find(int fd) {
  auto it = conns_.find(fd);
  return it == conns_.end() ? nullptr : it->second.get();
}

void Muxer::UpdateWatch(Connection& c, bool rx_ready) {
  uint32_t events = c.WantedEvents(rx_ready);
  if (events == c.watched) return;
  if (loop_.Modify(c.fd.get(), events)) c.watched = events;
}

void Muxer::UpdateAllWatches(bool rx_ready) {
  for (auto& [fd, c] : conns_) UpdateWatch(*c, rx_ready);
}

void Muxer::Close(Connection* c) {
  int fd = c->fd.get();
  loop_.Remove(fd);
  if (c->state != Connection::State::kAwaitingConnect) {
    by_ports_.erase(PortKey(c->local_port, c->peer_port));
  }
  conns_.erase(fd);
}

void Muxer::CloseAll() {
  for (auto& [fd, c] : conns_) loop_.Remove(fd);
  conns_.clear();
  by_ports_.clear();
}

}  // namespace vessel::vmm::vsock
