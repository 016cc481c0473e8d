#include "net.h"

#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "log.h"

namespace vessel::agent {
namespace {

namespace proto = vessel::protocol;

// Largest read from a guest socket, hence the largest NetData the agent sends.
constexpr size_t kReadChunk = 64 * 1024;

}  // namespace

UniqueFd ListenProxy() {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(kProxyPort);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int on = 1;
  if (!fd || setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
      bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(fd.get(), SOMAXCONN) != 0) {
    Log("no egress proxy: cannot listen on 127.0.0.1:{}: {}", kProxyPort, std::strerror(errno));
    return UniqueFd();
  }
  return fd;
}

pollfd NetConnection::PollEvents(const Port& port) const {
  bool read = MayRead(port);
  bool write = !pending_.empty();
  if (!read && !write) return {-1, 0, 0};
  return {socket_.get(), static_cast<short>((read ? POLLIN : 0) | (write ? POLLOUT : 0)), 0};
}

bool NetConnection::MayRead(const Port& port) const {
  return !closed_ && !guest_ended_ && credit_ > 0 && port.HasRoom();
}

bool NetConnection::OnPoll(short revents, Port& port) {
  // A reset by the guest program: what it sent last is lost with the connection anyway.
  if (revents & POLLERR) {
    Abort(port);
    return true;
  }
  // A hang-up shows as a failed write, or as the end of file once the bytes before it
  // have been read.
  if (!pending_.empty() && (revents & (POLLOUT | POLLHUP)) && WritePending(port)) return true;
  if (MayRead(port) && (revents & (POLLIN | POLLHUP)) && ReadOnce(port)) return true;
  return closed_ && pending_.empty();
}

bool NetConnection::ReadOnce(Port& port) {
  static uint8_t buf[kReadChunk];
  size_t want = std::min<uint64_t>(credit_, kReadChunk);
  ssize_t n;
  do n = read(socket_.get(), buf, want);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return false;
    Abort(port);
    return true;
  }
  if (n == 0) {
    guest_ended_ = true;
    port.Send(proto::EncodeNetData(request_id_, {}));
    return false;
  }
  port.Send(proto::EncodeNetData(request_id_, {buf, static_cast<size_t>(n)}));
  credit_ -= static_cast<uint64_t>(n);
  return false;
}

bool NetConnection::WritePending(Port& port) {
  auto bytes = pending_.front();
  ssize_t n;
  do n = send(socket_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return false;
    // EPIPE, ECONNRESET: the guest program is gone.
    Abort(port);
    return true;
  }
  pending_.Consume(static_cast<size_t>(n));
  if (closed_) return false;
  // At most kNetWindow, so it fits.
  port.Send(proto::EncodeCredit(request_id_, {proto::Stream::kNet, static_cast<uint32_t>(n)}));
  if (pending_.empty() && host_ended_) shutdown(socket_.get(), SHUT_WR);
  return false;
}

bool NetConnection::OnData(std::span<const uint8_t> data, Port& port) {
  if (closed_) return false;
  if (data.empty()) {
    host_ended_ = true;
    if (pending_.empty()) shutdown(socket_.get(), SHUT_WR);
    return false;
  }
  if (host_ended_ || pending_.size() + data.size() > proto::kNetWindow) {
    Abort(port);
    return true;
  }
  pending_.Append(data);
  return false;
}

bool NetConnection::OnCredit(uint32_t bytes, Port& port) {
  if (closed_) return false;
  credit_ += bytes;
  if (credit_ <= proto::kNetWindow) return false;
  Abort(port);
  return true;
}

bool NetConnection::OnClose() {
  closed_ = true;
  return pending_.empty();
}

void NetConnection::Abort(Port& port) {
  if (!closed_) port.Send(proto::EncodeNetClose(request_id_));
  closed_ = true;
  pending_.Clear();
  socket_.Reset();
}

std::string NetConnection::Describe() const {
  return fmt::format("credit={} pending={}{}{}{}", credit_, pending_.size(),
                     guest_ended_ ? " guest-ended" : "", host_ended_ ? " host-ended" : "",
                     closed_ ? " closed" : "");
}

}  // namespace vessel::agent
