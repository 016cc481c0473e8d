#include "agent.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/random.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "log.h"

namespace vessel::agent {
namespace {

namespace proto = vessel::protocol;

constexpr const char* kAgentVersion = "vessel-agent 0.1.0";
// Commands running or finishing at once. Each holds up to three pipes: together with the
// file transfers and proxied connections more than the default limit of 1024 descriptors,
// which main() raises (RaiseDescriptorLimit).
constexpr size_t kMaxProcesses = 256;
// File reads and writes open at once.
constexpr size_t kMaxFileTransfers = 64;
// How often a disconnected port is checked for the host's return.
constexpr int kReconnectPollMs = 50;
// Longest sleep while a deadline is pending.
constexpr int kMaxSleepMs = 60'000;
// How long accepting proxied connections pauses after it failed for want of resources.
constexpr auto kAcceptRetry = std::chrono::milliseconds(100);

std::vector<uint8_t> HelloFrame(uint32_t request_id = 0) {
  return proto::EncodeHello(request_id, {proto::kVersion, kAgentVersion});
}

// A failed step of a Resume: its errno and what was being done.
struct ResumeFailure {
  int error;
  const char* what;
};

std::optional<ResumeFailure> SetWallClock(uint64_t ns_since_epoch) {
  timespec now{};
  now.tv_sec = static_cast<time_t>(ns_since_epoch / 1'000'000'000);
  now.tv_nsec = static_cast<long>(ns_since_epoch % 1'000'000'000);
  if (clock_settime(CLOCK_REALTIME, &now) != 0) return ResumeFailure{errno, "set the clock"};
  return std::nullopt;
}

// Mixes the host's entropy into the kernel's pool, credited in full, and reseeds the CRNG
// from it at once: a clone must not produce the random numbers its siblings produce.
std::optional<ResumeFailure> Reseed(std::span<const uint8_t> entropy) {
  UniqueFd random(open("/dev/urandom", O_WRONLY | O_CLOEXEC));
  if (!random) return ResumeFailure{errno, "open /dev/urandom"};
  // struct rand_pool_info: entropy_count in bits, buf_size in bytes, then the bytes.
  std::vector<int> pool(2 + (entropy.size() + sizeof(int) - 1) / sizeof(int));
  pool[0] = static_cast<int>(entropy.size() * 8);
  pool[1] = static_cast<int>(entropy.size());
  std::memcpy(pool.data() + 2, entropy.data(), entropy.size());
  if (ioctl(random.get(), RNDADDENTROPY, pool.data()) != 0) {
    return ResumeFailure{errno, "add entropy"};
  }
  if (ioctl(random.get(), RNDRESEEDCRNG) != 0) return ResumeFailure{errno, "reseed the RNG"};
  return std::nullopt;
}

}  // namespace

void Agent::Run() {
  // A command that closed its stdin must cost the agent an EPIPE, not its life.
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  sigchld_ = UniqueFd(signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  proxy_ = ListenProxy();
  if (proxy_) SetProxyEnvironment(kProxyPort);
  port_.SendHello(HelloFrame());
  for (;;) Turn();
}

void Agent::Turn() {
  // Polled descriptors are named by request id, not pointer: handling one event may end
  // another request.
  enum class Source { kStdout, kStderr, kStdin, kFile, kProxy, kConnection };
  struct Slot {
    Source source;
    uint32_t id;
  };
  std::vector<pollfd> fds{
      {sigchld_.get(), POLLIN, 0}, port_.PollEvents(), {dump_requests_.get(), POLLIN, 0}};
  std::vector<Slot> slots;
  auto add = [&](pollfd pfd, Source source, uint32_t id) {
    if (pfd.fd < 0) return;
    fds.push_back(pfd);
    slots.push_back({source, id});
  };
  for (const auto& [id, process] : processes_) {
    add(process.PollOutput(proto::Stream::kStdout, port_), Source::kStdout, id);
    add(process.PollOutput(proto::Stream::kStderr, port_), Source::kStderr, id);
    add(process.PollStdin(), Source::kStdin, id);
  }
  for (const auto& [id, transfer] : reads_) add(transfer.PollEvents(port_), Source::kFile, id);
  if (MayAccept(Clock::now())) add({proxy_.get(), POLLIN, 0}, Source::kProxy, 0);
  for (const auto& [id, connection] : connections_) {
    add(connection.PollEvents(port_), Source::kConnection, id);
  }

  if (poll(fds.data(), fds.size(), NextTimeoutMs()) < 0 && errno != EINTR) {
    Log("poll: {}", std::strerror(errno));
  }

  if (fds[0].revents & POLLIN) Reap();
  if (fds[2].revents & POLLIN) OnDumpRequest();
  for (size_t i = 0; i < slots.size(); ++i) {
    if (fds[i + 3].revents == 0) continue;
    auto [source, id] = slots[i];
    if (source == Source::kFile) {
      auto it = reads_.find(id);
      if (it != reads_.end() && it->second.SendChunk(port_)) reads_.erase(it);
      continue;
    }
    if (source == Source::kProxy) {
      AcceptConnection();
      continue;
    }
    if (source == Source::kConnection) {
      auto it = connections_.find(id);
      if (it != connections_.end() && it->second.OnPoll(fds[i + 3].revents, port_)) {
        connections_.erase(it);
      }
      continue;
    }
    auto it = processes_.find(id);
    if (it == processes_.end()) continue;
    switch (source) {
      case Source::kStdout: it->second.ReadOutput(proto::Stream::kStdout, port_); break;
      case Source::kStderr: it->second.ReadOutput(proto::Stream::kStderr, port_); break;
      case Source::kStdin: it->second.WriteStdin(port_); break;
      case Source::kFile:
      case Source::kProxy:
      case Source::kConnection: break;
    }
  }
  FinishExited();
  CheckDeadlines();
  if (port_.connected()) {
    port_.OnPoll(fds[1].revents, [this](const proto::FrameView& frame) { Handle(frame); });
  } else if (port_.Reconnected()) {
    OnReconnect();
  }
  port_.Flush();
}

// Reads what the console has; logs the state for each complete request line. Anything else
// typed there is dropped, a bounded line at a time.
void Agent::OnDumpRequest() {
  char buf[256];
  ssize_t n = read(dump_requests_.get(), buf, sizeof(buf));
  if (n <= 0) {
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) dump_requests_.Reset();
    return;
  }
  for (char c : std::string_view(buf, static_cast<size_t>(n))) {
    if (c != '\n') {
      if (dump_line_.size() < kDumpRequest.size()) dump_line_.push_back(c);
      continue;
    }
    if (dump_line_ == kDumpRequest) {
      Log("state dump: {} command(s), {} file read(s), {} file write(s), {} proxied "
          "connection(s); {}",
          processes_.size(), reads_.size(), writes_.size(), connections_.size(), port_.Describe());
      for (const auto& [id, process] : processes_) {
        for (const std::string& line : process.Describe()) Log("request {} {}", id, line);
      }
      for (const auto& [id, connection] : connections_) {
        Log("connection {:#x} {}", id, connection.Describe());
      }
    }
    dump_line_.clear();
  }
}

int Agent::NextTimeoutMs() const {
  std::optional<Clock::time_point> next;
  for (const auto& [id, process] : processes_) {
    if (process.CanFinishNow(port_)) return 0;
    auto deadline = process.PendingDeadline();
    if (deadline && (!next || *deadline < *next)) next = deadline;
  }
  // Once it has passed, the listener is polled again: no need to wake for it.
  if (accept_retry_ && *accept_retry_ > Clock::now() && (!next || *accept_retry_ < *next)) {
    next = accept_retry_;
  }
  int timeout = -1;
  if (next) {
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(*next - Clock::now()).count();
    timeout = static_cast<int>(std::clamp<decltype(ms)>(ms, 0, kMaxSleepMs));
  }
  // While the host is away the port is not polled; check it on a slow tick.
  if (!port_.connected() && (timeout < 0 || timeout > kReconnectPollMs)) timeout = kReconnectPollMs;
  return timeout;
}

void Agent::Reap() {
  signalfd_siginfo info;
  while (read(sigchld_.get(), &info, sizeof(info)) > 0) {
  }
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    // Any other pid is an orphan, or a command already forgotten.
    for (auto& [id, process] : processes_) {
      if (process.pid() == pid && !process.exited()) {
        process.OnExit(status, port_);
        break;
      }
    }
  }
}

void Agent::FinishExited() {
  for (auto it = processes_.begin(); it != processes_.end();) {
    if (it->second.exited() && it->second.FinishAfterExit(port_)) {
      it = processes_.erase(it);
    } else {
      ++it;
    }
  }
}

void Agent::CheckDeadlines() {
  auto now = Clock::now();
  for (auto& [id, process] : processes_) process.CheckDeadline(now);
}

void Agent::OnReconnect() {
  // While quiesced the VM is being saved or restored: the host that resumes the agent
  // gets its own Hello, and nothing may be written before that.
  if (port_.quiesced()) return;
  port_.SendHello(HelloFrame());
  // Commands go on, but file transfers cannot: bytes of both directions were lost with the
  // connection, and the host may be a new one that knows nothing of them.
  for (auto& [id, transfer] : reads_) transfer.Abort(port_, ECONNRESET, "the host reconnected");
  reads_.clear();
  for (auto& [id, transfer] : writes_) transfer.Abort(port_, ECONNRESET, "the host reconnected");
  writes_.clear();
  // Nor can proxied connections. Their NetClose reaches a host that heard of them (a
  // NetOpen may still have been queued); one that did not drops it.
  for (auto& [id, connection] : connections_) connection.Abort(port_);
  connections_.clear();
}

bool Agent::MayAccept(Clock::time_point now) const {
  return proxy_ && port_.connected() && !port_.quiesced() &&
         connections_.size() < kMaxNetConnections && (!accept_retry_ || now >= *accept_retry_);
}

void Agent::AcceptConnection() {
  UniqueFd socket(accept4(proxy_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!socket) {
    // Anything else concerned the connection being accepted, which is gone.
    if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS && errno != ENOMEM) return;
    if (!accept_retry_) Log("cannot accept a proxied connection: {}", std::strerror(errno));
    accept_retry_ = Clock::now() + kAcceptRetry;
    return;
  }
  accept_retry_.reset();
  uint32_t id;
  do id = proto::kAgentIdBit | (next_connection_++ & ~proto::kAgentIdBit);
  while (InUse(id));
  connections_.try_emplace(id, id, std::move(socket));
  port_.Send(proto::EncodeNetOpen(id));
}

void Agent::Handle(const proto::FrameView& frame) {
  uint32_t id = frame.header.request_id;
  std::span<const uint8_t> payload = frame.payload;
  switch (frame.header.type) {
    case proto::MessageType::kPing: port_.Send(proto::EncodePong(id)); return;
    case proto::MessageType::kExec: return OnExec(id, payload);
    case proto::MessageType::kStdin: return OnStdin(id, payload);
    case proto::MessageType::kSignal: return OnSignal(id, payload);
    case proto::MessageType::kCredit: return OnCredit(id, payload);
    case proto::MessageType::kResize: return OnResize(id, payload);
    case proto::MessageType::kFileOp: return OnFileOp(id, payload);
    case proto::MessageType::kFileData: return OnFileData(id, payload);
    case proto::MessageType::kQuiesce: return OnQuiesce(id, payload);
    case proto::MessageType::kResume: return OnResume(id, payload);
    case proto::MessageType::kNetData: return OnNetData(id, payload);
    case proto::MessageType::kNetClose: return OnNetClose(id, payload);
    default: port_.Send(proto::EncodeError(id, {EPROTO, "", "unexpected frame type from host"}));
  }
}

void Agent::OnExec(uint32_t id, std::span<const uint8_t> payload) {
  auto request = proto::DecodeExec(payload);
  if (!request) {
    port_.Send(proto::EncodeError(id, {EPROTO, "", request.error().message()}));
    return;
  }
  if (InUse(id)) {
    port_.Send(proto::EncodeError(id, {EEXIST, "", "request id already in use"}));
    return;
  }
  if (processes_.size() >= kMaxProcesses) {
    port_.Send(proto::EncodeError(id, {EAGAIN, "", "too many commands running"}));
    return;
  }
  if (auto process = Process::Start(id, *request, port_)) {
    processes_.emplace(id, std::move(*process));
  }
}

// Stdin, Signal, Credit, FileData, NetData and NetClose frames may trail a request that has
// just ended: the host sends them without waiting for replies. Those for unknown ids are
// dropped. Signal also cancels a file transfer (the host abandons a write that way).
void Agent::OnStdin(uint32_t id, std::span<const uint8_t> payload) {
  auto it = processes_.find(id);
  if (it == processes_.end()) return;
  if (!it->second.OnStdin(payload, port_)) FailRequest(id, "stdin window exceeded");
}

void Agent::OnSignal(uint32_t id, std::span<const uint8_t> payload) {
  auto process = processes_.find(id);
  auto read = reads_.find(id);
  auto write = writes_.find(id);
  if (process == processes_.end() && read == reads_.end() && write == writes_.end()) return;
  auto number = proto::DecodeSignal(payload);
  if (!number) return FailRequest(id, number.error().message());
  if (process != processes_.end()) return process->second.Signal(*number);
  // Any signal cancels a file transfer; a write leaves the target as it was.
  if (read != reads_.end()) {
    read->second.Abort(port_, ECANCELED, "cancelled by the host");
    reads_.erase(read);
  } else {
    write->second.Abort(port_, ECANCELED, "cancelled by the host");
    writes_.erase(write);
  }
}

void Agent::OnCredit(uint32_t id, std::span<const uint8_t> payload) {
  if (auto connection = connections_.find(id); connection != connections_.end()) {
    auto credit = proto::DecodeCredit(payload);
    if (!credit) {
      connection->second.Abort(port_);
      connections_.erase(connection);
    } else if (credit->stream == proto::Stream::kNet &&
               connection->second.OnCredit(credit->bytes, port_)) {
      connections_.erase(connection);
    }
    return;
  }
  auto process = processes_.find(id);
  auto read = reads_.find(id);
  if (process == processes_.end() && read == reads_.end()) return;
  auto credit = proto::DecodeCredit(payload);
  if (!credit) return FailRequest(id, credit.error().message());
  if (process != processes_.end()) {
    process->second.OnCredit(*credit);
  } else if (credit->stream == proto::Stream::kFile) {
    read->second.OnCredit(credit->bytes);
  }
}

void Agent::OnResize(uint32_t id, std::span<const uint8_t> payload) {
  auto process = processes_.find(id);
  if (process == processes_.end()) return;
  auto size = proto::DecodeResize(payload);
  if (!size) return FailRequest(id, size.error().message());
  if (!process->second.Resize(*size)) FailRequest(id, "resize: the command has no terminal");
}

void Agent::OnFileOp(uint32_t id, std::span<const uint8_t> payload) {
  auto op = proto::DecodeFileOp(payload);
  if (!op) {
    port_.Send(proto::EncodeError(id, {EPROTO, "", op.error().message()}));
    return;
  }
  if (InUse(id)) {
    port_.Send(proto::EncodeError(id, {EEXIST, "", "request id already in use"}));
    return;
  }
  bool read = op->kind == proto::FileOpKind::kReadFile;
  if (!read && op->kind != proto::FileOpKind::kWriteFile) return RunFileOp(id, *op, port_);
  if (OpenTransfers() >= kMaxFileTransfers) {
    port_.Send(proto::EncodeError(id, {EMFILE, op->path, "too many file transfers open"}));
    return;
  }
  if (read) {
    auto [it, inserted] = reads_.try_emplace(id, id, *op);
    if (!it->second.Open(port_)) reads_.erase(it);
  } else {
    auto [it, inserted] = writes_.try_emplace(id, id, *op);
    if (!it->second.Open(port_)) writes_.erase(it);
  }
}

void Agent::OnFileData(uint32_t id, std::span<const uint8_t> payload) {
  auto it = writes_.find(id);
  if (it != writes_.end() && it->second.OnData(payload, port_)) writes_.erase(it);
}

void Agent::OnQuiesce(uint32_t id, std::span<const uint8_t> payload) {
  if (auto empty = proto::DecodeEmpty(payload, "quiesce"); !empty) {
    port_.Send(proto::EncodeError(id, {EPROTO, "", empty.error().message()}));
    return;
  }
  port_.Quiesce(proto::EncodeDone(id));
}

// A malformed Resume is an ordinary malformed frame: its Error is held like any other
// reply while the port is quiesced.
void Agent::OnResume(uint32_t id, std::span<const uint8_t> payload) {
  auto request = proto::DecodeResume(payload);
  if (!request) {
    port_.Send(proto::EncodeError(id, {EPROTO, "", request.error().message()}));
    return;
  }
  // Every step is tried; the first failure is reported.
  std::optional<ResumeFailure> failure = SetWallClock(request->wall_clock_ns);
  if (request->clone) {
    auto reseeded = Reseed(request->entropy);
    if (!failure) failure = reseeded;
    ForgetRequests();
  }
  std::vector<uint8_t> reply =
      failure ? proto::EncodeError(
                    id, {failure->error, "",
                         fmt::format("{}: {}", failure->what, std::strerror(failure->error))})
              : HelloFrame(id);
  port_.Resume(std::move(reply), request->clone);
}

void Agent::OnNetData(uint32_t id, std::span<const uint8_t> payload) {
  auto it = connections_.find(id);
  if (it != connections_.end() && it->second.OnData(payload, port_)) connections_.erase(it);
}

void Agent::OnNetClose(uint32_t id, std::span<const uint8_t> payload) {
  auto it = connections_.find(id);
  if (it == connections_.end()) return;
  // A malformed NetClose still ends the connection, but nothing pending is written.
  if (!proto::DecodeEmpty(payload, "net close") || it->second.OnClose()) connections_.erase(it);
}

void Agent::ForgetRequests() {
  // Reap() takes them as orphans: nothing is reported.
  for (auto& [id, process] : processes_) process.Signal(SIGKILL);
  processes_.clear();
  reads_.clear();
  writes_.clear();       // removes their temporary files
  connections_.clear();  // closes their sockets
}

void Agent::FailRequest(uint32_t id, const std::string& message) {
  if (auto process = processes_.find(id); process != processes_.end()) {
    process->second.Signal(SIGKILL);
    processes_.erase(process);
  } else if (auto read = reads_.find(id); read != reads_.end()) {
    reads_.erase(read);
  } else if (auto write = writes_.find(id); write != writes_.end()) {
    writes_.erase(write);  // removes the temporary file
  } else {
    return;
  }
  port_.Send(proto::EncodeError(id, {EPROTO, "", message}));
}

bool Agent::InUse(uint32_t id) const {
  return processes_.contains(id) || reads_.contains(id) || writes_.contains(id) ||
         connections_.contains(id);
}

size_t Agent::OpenTransfers() const { return reads_.size() + writes_.size(); }

}  // namespace vessel::agent
