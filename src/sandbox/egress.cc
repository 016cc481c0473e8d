#include "sandbox/egress.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "egress/tls.h"

namespace vessel::sandbox {

namespace proto = vessel::protocol;

namespace {

// Upstream bytes read at a time, and so the largest NetData frame the host sends.
constexpr size_t kUpstreamChunk = 64 * 1024;

const char* StatusText(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Error";
  }
}

// The whole answer to a refused request: a status line, a plain-text body of one line.
std::string ErrorResponse(int status, std::string_view reason) {
  std::string body = fmt::format("vessel egress: {}\n", reason);
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n"
      "Connection: close\r\nX-Vessel-Egress: refused\r\n\r\n{}",
      status, StatusText(status), body.size(), body);
}

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

void Wake(int fd) {
  uint64_t one = 1;
  (void)!::write(fd, &one, sizeof(one));
}

void Drain(int fd) {
  uint64_t count;
  (void)!::read(fd, &count, sizeof(count));
}

}  // namespace

Result<CheckedPolicy> CheckNetworkPolicy(const NetworkPolicy& policy) {
  auto rules = egress::ParsePolicy(policy.allow);
  if (!rules) return Fail(std::move(rules).error());
  if (policy.max_connections < 1 || policy.max_connections > kMaxNetConnections) {
    return Fail(
        Error::InvalidConfig("network", fmt::format("max_connections {} is outside 1 .. {}",
                                                    policy.max_connections, kMaxNetConnections)));
  }
  if (policy.idle_timeout < std::chrono::seconds(1)) {
    return Fail(Error::InvalidConfig("network", "idle_timeout must be at least 1 s"));
  }
  CheckedPolicy checked{policy, std::move(*rules)};
  checked.policy.allow.clear();
  for (const egress::Rule& rule : checked.rules.rules()) {
    checked.policy.allow.push_back(rule.ToString());
  }
  return checked;
}

// One proxied connection, on its own thread.
class Egress::Relay {
 public:
  Relay(Egress& egress, std::weak_ptr<Connection> connection, std::shared_ptr<Mailbox> mailbox,
        std::shared_ptr<UniqueFd> wake)
      : egress_(egress),
        connection_(std::move(connection)),
        mailbox_(std::move(mailbox)),
        wake_(std::move(wake)) {}

  // `over_limit`: answer 503 at once, this connection is one too many.
  void Run(bool over_limit);

 private:
  enum class Step { kGoOn, kEnd };

  // Sends a frame; false once the channel is gone.
  bool Send(const std::vector<uint8_t>& frame);
  // Counts a refusal and keeps it among the recent ones.
  void Count(std::string refusal);
  // Answers the guest with `status` and closes the connection; counted as a refusal.
  void Refuse(int status, const std::string& reason);
  // Counts `reason` as a refusal and closes the connection without an answer: for a
  // connection past its request head, whose bytes are no longer the proxy's to answer.
  void Cut(std::string reason);
  void Close() { (void)Send(proto::EncodeNetClose(mailbox_->id())); }
  // Takes every frame queued for this connection. kEnd: the guest closed it, or it broke.
  Step TakeFrames();
  // Polls the wake-up, the stop signal and (when set) the upstream for `events`, until
  // `deadline`. False once Stop() was called.
  bool Wait(Deadline deadline, short events);
  // Reads the request head into guest_bytes_, then decides and connects; kEnd when the
  // connection was answered or closed instead.
  Step Open();
  // Carries bytes both ways until both ends are done or the connection goes idle.
  void Pump();
  // While tunnel_host_ is set, holds the guest's first bytes until they show whether they
  // are a TLS ClientHello and for which server (egress/tls.h); clears it when they may go
  // on, cuts the connection (kEnd) when they may not.
  Step CheckClientHello();
  // Writes guest_bytes_ upstream and grants the agent the credit; false on failure.
  bool WriteUpstream();
  // Reads what the upstream has and credit allows, as NetData; kEnd on failure.
  Step ReadUpstream();
  bool OverByteLimit() const;

  Egress& egress_;
  std::weak_ptr<Connection> connection_;
  std::shared_ptr<Mailbox> mailbox_;
  std::shared_ptr<UniqueFd> wake_;
  UniqueFd upstream_;
  std::string guest_bytes_;              // from the guest, not yet written upstream
  uint32_t credit_ = proto::kNetWindow;  // NetData bytes the agent takes before more credit
  bool guest_ended_ = false;
  bool guest_closed_ = false;  // NetClose or a broken mailbox: nothing more to send
  bool upstream_ended_ = false;
  bool upstream_shut_ = false;
  bool plain_http_ = false;
  // A CONNECT to this host name whose first bytes are still held by CheckClientHello.
  std::string tunnel_host_;
  std::optional<Deadline> hello_deadline_;  // from the tunnel's first byte
  // Leading bytes of guest_bytes_ that are the proxy's rewritten head, not the guest's:
  // written upstream without a credit.
  size_t head_bytes_ = 0;
  uint64_t received_ = 0;  // upstream bytes passed to the guest
  std::chrono::seconds idle_timeout_{300};
};

bool Egress::Relay::Send(const std::vector<uint8_t>& frame) {
  if (guest_closed_) return false;
  auto connection = connection_.lock();
  return connection && connection->Send(frame).has_value();
}

void Egress::Relay::Count(std::string refusal) {
  std::lock_guard lock(egress_.mutex_);
  egress_.stats_.refused++;
  auto& recent = egress_.stats_.recent_refusals;
  recent.push_back(std::move(refusal));
  if (recent.size() > kRecentRefusals) recent.erase(recent.begin());
}

void Egress::Relay::Refuse(int status, const std::string& reason) {
  Count(fmt::format("{} {}", status, reason));
  std::string answer = ErrorResponse(status, reason);
  // Within the window the agent grants before any credit: the answer is small.
  if (answer.size() <= credit_ && Send(proto::EncodeNetData(mailbox_->id(), Bytes(answer)))) {
    (void)Send(proto::EncodeNetData(mailbox_->id(), {}));
  }
  Close();
}

void Egress::Relay::Cut(std::string reason) {
  Count(std::move(reason));
  Close();
}

Egress::Relay::Step Egress::Relay::TakeFrames() {
  Drain(wake_->get());
  while (auto next = mailbox_->TryNext()) {
    if (!*next) {
      // The channel broke, or the agent overran its window.
      Close();
      guest_closed_ = true;
      return Step::kEnd;
    }
    const proto::Frame& frame = **next;
    switch (frame.header.type) {
      case proto::MessageType::kNetData:
        if (frame.payload.empty()) {
          guest_ended_ = true;
        } else {
          guest_bytes_.append(reinterpret_cast<const char*>(frame.payload.data()),
                              frame.payload.size());
        }
        break;
      case proto::MessageType::kNetClose: guest_closed_ = true; return Step::kEnd;
      case proto::MessageType::kCredit: {
        auto credit = proto::DecodeCredit(frame.payload);
        if (!credit || uint64_t{credit_} + credit->bytes > proto::kNetWindow) {
          Close();
          guest_closed_ = true;
          return Step::kEnd;
        }
        credit_ += credit->bytes;
        break;
      }
      default: break;  // Connection lets no other type through
    }
  }
  return Step::kGoOn;
}

bool Egress::Relay::Wait(Deadline deadline, short events) {
  // Without events the upstream is left out: a closed socket reports POLLHUP whatever is
  // asked, and would spin this loop while it waits for the guest.
  pollfd fds[3] = {{wake_->get(), POLLIN, 0},
                   {egress_.stop_.get(), POLLIN, 0},
                   {upstream_ && events != 0 ? upstream_.get() : -1, events, 0}};
  if (::poll(fds, 3, deadline.PollTimeoutMs()) < 0 && errno != EINTR) return false;
  return (fds[1].revents & POLLIN) == 0;
}

Egress::Relay::Step Egress::Relay::Open() {
  auto head_deadline = Deadline::After(kProxyHeadTimeout);
  std::optional<size_t> head_size;
  for (;;) {
    if (TakeFrames() == Step::kEnd) return Step::kEnd;
    head_size = egress::ProxyHeadSize(guest_bytes_);
    if (head_size) break;
    if (guest_bytes_.size() > egress::kMaxProxyHead) {
      Refuse(431, fmt::format("the request head exceeds {} bytes", egress::kMaxProxyHead));
      return Step::kEnd;
    }
    if (guest_ended_) {
      if (guest_bytes_.empty()) {
        Close();
      } else {
        Refuse(400, "the connection ended inside the request head");
      }
      return Step::kEnd;
    }
    if (head_deadline.Expired()) {
      Refuse(408, fmt::format("no complete request head within {} s",
                              std::chrono::seconds(kProxyHeadTimeout).count()));
      return Step::kEnd;
    }
    if (!Wait(head_deadline, 0)) return Step::kEnd;
  }
  auto request = egress::ParseProxyRequest(guest_bytes_);
  if (!request) {
    Refuse(400, request.error().message());
    return Step::kEnd;
  }
  CheckedPolicy policy;
  {
    std::lock_guard lock(egress_.mutex_);
    policy = egress_.policy_;
  }
  idle_timeout_ = policy.policy.idle_timeout;
  auto decision = egress::Allow(policy.rules, request->host, request->port);
  if (!decision.allowed) {
    Refuse(403, decision.reason);
    return Step::kEnd;
  }
  auto host_addresses = egress::HostAddresses();
  if (!host_addresses) {
    Refuse(502, "the host's own addresses are unknown: " + host_addresses.error().message());
    return Step::kEnd;
  }
  auto upstream =
      egress::ConnectUpstream(policy.rules, decision, request->port, egress_.resolve_,
                              *host_addresses, Deadline::After(kUpstreamConnectTimeout));
  if (upstream.status != 0) {
    Refuse(upstream.status, upstream.reason);
    return Step::kEnd;
  }
  upstream_ = std::move(upstream.fd);
  {
    std::lock_guard lock(egress_.mutex_);
    egress_.stats_.allowed++;
  }
  // The head was the proxy's to read: its bytes go back to the agent's window.
  size_t consumed = request->head_size;
  mailbox_->Granted(proto::Stream::kNet, static_cast<uint32_t>(consumed));
  if (!Send(proto::EncodeCredit(mailbox_->id(),
                                {proto::Stream::kNet, static_cast<uint32_t>(consumed)}))) {
    return Step::kEnd;
  }
  guest_bytes_.erase(0, consumed);
  if (request->connect) {
    if (!decision.address) tunnel_host_ = decision.host;
    constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection established\r\n\r\n";
    credit_ -= static_cast<uint32_t>(kEstablished.size());
    if (!Send(proto::EncodeNetData(mailbox_->id(), Bytes(kEstablished)))) return Step::kEnd;
  } else {
    // The rewritten head goes first; its size is the proxy's, not the guest's window's.
    plain_http_ = true;
    guest_bytes_.insert(0, request->head);
    head_bytes_ = request->head.size();
  }
  return Step::kGoOn;
}

Egress::Relay::Step Egress::Relay::CheckClientHello() {
  if (guest_bytes_.empty()) return Step::kGoOn;
  if (!hello_deadline_) hello_deadline_ = Deadline::After(kProxyHeadTimeout);
  auto scan = egress::ScanClientHello(guest_bytes_);
  switch (scan.kind) {
    case egress::HelloScan::Kind::kNeedMore:
      if (guest_ended_) {
        Cut(fmt::format("cut {}: the tunnel ended inside its TLS ClientHello", tunnel_host_));
        return Step::kEnd;
      }
      if (hello_deadline_->Expired()) {
        Cut(fmt::format("cut {}: no complete TLS ClientHello within {} s", tunnel_host_,
                        std::chrono::seconds(kProxyHeadTimeout).count()));
        return Step::kEnd;
      }
      return Step::kGoOn;
    case egress::HelloScan::Kind::kServerName:
      if (!egress::SameServerName(scan.server_name, tunnel_host_)) {
        Cut(fmt::format("cut {}: its TLS ClientHello asks for another server, {}", tunnel_host_,
                        scan.server_name));
        return Step::kEnd;
      }
      break;
    case egress::HelloScan::Kind::kMalformed:
      Cut(fmt::format("cut {}: a malformed TLS ClientHello: {}", tunnel_host_, scan.problem));
      return Step::kEnd;
    case egress::HelloScan::Kind::kNotTls:
    case egress::HelloScan::Kind::kNoServerName: break;
  }
  tunnel_host_.clear();
  return Step::kGoOn;
}

bool Egress::Relay::OverByteLimit() const {
  std::lock_guard lock(egress_.mutex_);
  uint64_t limit = egress_.policy_.policy.max_bytes;
  return limit != 0 && egress_.stats_.bytes_sent + egress_.stats_.bytes_received > limit;
}

bool Egress::Relay::WriteUpstream() {
  while (!guest_bytes_.empty()) {
    ssize_t n = ::send(upstream_.get(), guest_bytes_.data(), guest_bytes_.size(), MSG_NOSIGNAL);
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    auto written = static_cast<size_t>(n);
    guest_bytes_.erase(0, written);
    size_t ours = std::min(written, head_bytes_);
    head_bytes_ -= ours;
    auto theirs = static_cast<uint32_t>(written - ours);
    if (theirs == 0) continue;
    {
      std::lock_guard lock(egress_.mutex_);
      egress_.stats_.bytes_sent += theirs;
    }
    mailbox_->Granted(proto::Stream::kNet, theirs);
    if (!Send(proto::EncodeCredit(mailbox_->id(), {proto::Stream::kNet, theirs}))) return false;
  }
  return true;
}

Egress::Relay::Step Egress::Relay::ReadUpstream() {
  std::vector<uint8_t> buf(std::min<size_t>(credit_, kUpstreamChunk));
  ssize_t n = ::recv(upstream_.get(), buf.data(), buf.size(), 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return Step::kGoOn;
    return Step::kEnd;
  }
  if (n == 0) {
    upstream_ended_ = true;
    return Send(proto::EncodeNetData(mailbox_->id(), {})) ? Step::kGoOn : Step::kEnd;
  }
  buf.resize(static_cast<size_t>(n));
  credit_ -= static_cast<uint32_t>(n);
  received_ += static_cast<uint64_t>(n);
  {
    std::lock_guard lock(egress_.mutex_);
    egress_.stats_.bytes_received += static_cast<uint64_t>(n);
  }
  return Send(proto::EncodeNetData(mailbox_->id(), buf)) ? Step::kGoOn : Step::kEnd;
}

void Egress::Relay::Pump() {
  auto idle = Deadline::After(idle_timeout_);
  for (;;) {
    size_t pending = guest_bytes_.size();
    uint64_t received = received_;
    bool guest_ended = guest_ended_;
    if (TakeFrames() == Step::kEnd) return;
    if (!tunnel_host_.empty() && CheckClientHello() == Step::kEnd) return;
    bool held = !tunnel_host_.empty();
    if (!held && !WriteUpstream()) return Close();
    if (guest_ended_ && guest_bytes_.empty() && !upstream_shut_) {
      ::shutdown(upstream_.get(), SHUT_WR);
      upstream_shut_ = true;
    }
    bool readable = !upstream_ended_ && credit_ > 0;
    if (readable && ReadUpstream() == Step::kEnd) return Close();
    if (upstream_ended_ && guest_ended_ && guest_bytes_.empty()) return Close();
    if (OverByteLimit()) return Cut("cut: the sandbox's egress byte limit was reached");
    if (guest_bytes_.size() != pending || received_ != received || guest_ended_ != guest_ended) {
      idle = Deadline::After(idle_timeout_);
    }
    if (idle.Expired()) {
      if (plain_http_ && received_ == 0) {
        return Refuse(
            504, fmt::format("the upstream sent no answer within {} s", idle_timeout_.count()));
      }
      return Close();
    }
    short events = 0;
    if (readable) events |= POLLIN;
    if (!guest_bytes_.empty() && !held) events |= POLLOUT;
    Deadline wake = held && hello_deadline_ ? idle.Min(*hello_deadline_) : idle;
    if (!Wait(wake, events)) return Close();
  }
}

void Egress::Relay::Run(bool over_limit) {
  if (over_limit) {
    Refuse(503, fmt::format("more than {} proxied connections open at once",
                            egress_.policy().max_connections));
  } else if (Open() == Step::kGoOn) {
    Pump();
  }
  if (auto connection = connection_.lock()) connection->EndRequest(mailbox_->id());
}

Egress::Egress(CheckedPolicy policy, egress::Resolver resolve)
    : resolve_(std::move(resolve)),
      stop_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      policy_(std::move(policy)) {}

Egress::~Egress() { Stop(); }

void Egress::Attach(const std::shared_ptr<Connection>& connection) {
  connection->ServeNet(
      [weak_self = weak_from_this(),
       weak_connection = std::weak_ptr<Connection>(connection)](std::shared_ptr<Mailbox> mailbox) {
        if (auto self = weak_self.lock()) self->Open(weak_connection, std::move(mailbox));
      });
}

void Egress::Open(const std::weak_ptr<Connection>& connection, std::shared_ptr<Mailbox> mailbox) {
  Reap();
  auto wake = std::make_shared<UniqueFd>(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!*wake) return;  // the mailbox stays unread: the guest's connection waits, then idles
  mailbox->Observe([wake] { Wake(wake->get()); });
  std::lock_guard lock(mutex_);
  if (stopped_) return;
  bool over_limit = stats_.open >= policy_.policy.max_connections;
  stats_.open++;
  auto& running = relays_.emplace_back();
  running.thread = std::thread([this, &running, connection, mailbox, wake, over_limit] {
    Relay(*this, connection, mailbox, wake).Run(over_limit);
    std::lock_guard done_lock(mutex_);
    stats_.open--;
    running.done = true;
  });
}

void Egress::Reap() {
  std::list<Running> ended;
  {
    std::lock_guard lock(mutex_);
    for (auto it = relays_.begin(); it != relays_.end();) {
      auto next = std::next(it);
      if (it->done) ended.splice(ended.end(), relays_, it);
      it = next;
    }
  }
  for (auto& relay : ended) relay.thread.join();
}

void Egress::SetPolicy(CheckedPolicy policy) {
  std::lock_guard lock(mutex_);
  policy_ = std::move(policy);
}

NetworkPolicy Egress::policy() const {
  std::lock_guard lock(mutex_);
  return policy_.policy;
}

NetworkStats Egress::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void Egress::Stop() {
  std::list<Running> all;
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    stopped_ = true;
    all.swap(relays_);
  }
  Wake(stop_.get());
  for (auto& relay : all) relay.thread.join();
}

}  // namespace vessel::sandbox
