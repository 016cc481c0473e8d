#include "sandbox/connection.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cerrno>

#include "base/io.h"
#include "protocol/frame.h"

namespace vessel::sandbox {

namespace proto = vessel::protocol;

namespace {
// How long a write may wait for the agent to read before the channel counts as broken.
constexpr auto kSendTimeout = std::chrono::seconds(60);
constexpr size_t kReadChunk = 64 * 1024;
// Entropy sent with a Resume: twice what a clone needs at least.
constexpr size_t kResumeEntropy = 64;

Result<proto::Hello> CheckHello(std::span<const uint8_t> payload) {
  auto hello = proto::DecodeHello(payload);
  if (!hello) return hello;
  if (hello->version != proto::kVersion) {
    return Fail(
        Error::Backend(fmt::format("the guest agent speaks protocol version {}, the host {}",
                                   hello->version, proto::kVersion)));
  }
  return hello;
}

Result<void> CheckResumeRequest(const proto::ResumeRequest& request) {
  if (request.entropy.size() > proto::kMaxEntropy) {
    return Fail(Error::InvalidConfig(
        "entropy",
        fmt::format("{} bytes exceed the cap of {}", request.entropy.size(), proto::kMaxEntropy)));
  }
  if (request.clone && request.entropy.size() < proto::kMinCloneEntropy) {
    return Fail(Error::InvalidConfig(
        "entropy", fmt::format("a clone needs at least {} bytes, got {}", proto::kMinCloneEntropy,
                               request.entropy.size())));
  }
  return {};
}

// A Quiesce or Resume answered with something else than Done or Hello.
Error FailedAnswer(const proto::Frame& frame) {
  if (frame.header.type == proto::MessageType::kError) {
    auto error = proto::DecodeError(frame.payload);
    if (!error) return std::move(error).error();
    return Error::Backend("the guest agent failed: " + error->message);
  }
  return Error::Backend(fmt::format("unexpected frame type {} from the guest agent",
                                    static_cast<int>(frame.header.type)));
}

// The answer to a Resume: Hello, or Error when the agent could not set the clock or
// reseed its RNG.
Result<proto::Hello> ResumeAnswer(const proto::Frame& frame) {
  if (frame.header.type != proto::MessageType::kHello) return Fail(FailedAnswer(frame));
  return CheckHello(frame.payload);
}

Error NotStarted() {
  return Error::Lifecycle({LifecycleError::Other{"the agent connection was not started"}});
}

struct InboundData {
  proto::Stream stream;
  size_t bytes;
};

// The flow-controlled bytes a frame carries. An Output frame with a bad stream byte is
// left to its decoder to reject.
std::optional<InboundData> FlowControlled(const proto::Frame& frame) {
  const auto& payload = frame.payload;
  switch (frame.header.type) {
    case proto::MessageType::kOutput:
      if (payload.empty()) return std::nullopt;
      if (payload[0] != static_cast<uint8_t>(proto::Stream::kStdout) &&
          payload[0] != static_cast<uint8_t>(proto::Stream::kStderr)) {
        return std::nullopt;
      }
      return InboundData{static_cast<proto::Stream>(payload[0]), payload.size() - 1};
    case proto::MessageType::kFileData: return InboundData{proto::Stream::kFile, payload.size()};
    case proto::MessageType::kNetData: return InboundData{proto::Stream::kNet, payload.size()};
    default: return std::nullopt;
  }
}

const char* KindName(RequestKind kind) {
  switch (kind) {
    case RequestKind::kProcess: return "process";
    case RequestKind::kFile: return "file";
    case RequestKind::kControl: return "control";
    case RequestKind::kNet: return "proxied connection";
  }
  return "unknown";
}

bool IsOutputStream(uint8_t stream) {
  return stream == static_cast<uint8_t>(proto::Stream::kStdout) ||
         stream == static_cast<uint8_t>(proto::Stream::kStderr);
}

// Whether the agent may send `frame` on a request of `kind`. Only the stream byte of
// Output and Credit is looked at; the frame's reader decodes the rest.
bool Expected(RequestKind kind, const proto::Frame& frame) {
  using proto::MessageType;
  const auto& payload = frame.payload;
  auto credit_for = [&payload](proto::Stream stream) {
    return !payload.empty() && payload[0] == static_cast<uint8_t>(stream);
  };
  switch (frame.header.type) {
    case MessageType::kError: return true;
    case MessageType::kStarted:
    case MessageType::kExited: return kind == RequestKind::kProcess;
    case MessageType::kOutput:
      return kind == RequestKind::kProcess && !payload.empty() && IsOutputStream(payload[0]);
    case MessageType::kCredit:
      return (kind == RequestKind::kProcess && credit_for(proto::Stream::kStdin)) ||
             (kind == RequestKind::kFile && credit_for(proto::Stream::kFile)) ||
             (kind == RequestKind::kNet && credit_for(proto::Stream::kNet));
    case MessageType::kFileInfo:
    case MessageType::kFileData: return kind == RequestKind::kFile;
    case MessageType::kDone: return kind == RequestKind::kFile || kind == RequestKind::kControl;
    case MessageType::kHello: return kind == RequestKind::kControl;
    case MessageType::kNetData:
    case MessageType::kNetClose: return kind == RequestKind::kNet;
    default: return false;  // the host's own types, and Pong: the host sends no Ping
  }
}
}  // namespace

Mailbox::~Mailbox() {
  std::lock_guard lock(budget_->mutex);
  budget_->queued -= std::min(budget_->queued, queued_bytes_);
}

Result<proto::Frame> Mailbox::Next(Deadline deadline) {
  std::unique_lock lock(mutex_);
  auto ready = [&] { return !frames_.empty() || failure_.has_value(); };
  if (deadline.never()) {
    cv_.wait(lock, ready);
  } else if (!cv_.wait_for(lock, std::chrono::milliseconds(deadline.PollTimeoutMs()), ready)) {
    return Fail(Error::Timeout("waiting for the guest agent: timed out"));
  }
  if (frames_.empty()) return Fail(*failure_);
  return PopLocked();
}

std::optional<Result<proto::Frame>> Mailbox::TryNext() {
  std::lock_guard lock(mutex_);
  if (frames_.empty()) {
    if (!failure_) return std::nullopt;
    return Fail(*failure_);
  }
  return PopLocked();
}

proto::Frame Mailbox::PopLocked() {
  proto::Frame frame = std::move(frames_.front());
  frames_.pop_front();
  uint64_t cost = frame.payload.size() + kQueuedFrameOverhead;
  queued_bytes_ -= cost;
  if (!FlowControlled(frame)) unwindowed_bytes_ -= cost;
  std::lock_guard lock(budget_->mutex);
  budget_->queued -= cost;
  return frame;
}

void Mailbox::Observe(std::function<void()> on_change) {
  std::lock_guard lock(mutex_);
  on_change_ = std::move(on_change);
}

Result<void> Mailbox::AcquireStdinCredit(uint32_t bytes, uint32_t window, Deadline deadline) {
  std::unique_lock lock(mutex_);
  auto ready = [&] { return stdin_in_flight_ + bytes <= window || ended_ || failure_; };
  if (deadline.never()) {
    cv_.wait(lock, ready);
  } else if (!cv_.wait_for(lock, std::chrono::milliseconds(deadline.PollTimeoutMs()), ready)) {
    return Fail(Error::Backend("writing stdin: the guest agent did not take it in time"));
  }
  if (failure_) return Fail(*failure_);
  if (ended_) return Fail(Error::Lifecycle({LifecycleError::Other{"the process has ended"}}));
  stdin_in_flight_ += bytes;
  return {};
}

void Mailbox::LimitInbound(uint32_t window) {
  std::lock_guard lock(mutex_);
  inbound_window_ = window;
}

void Mailbox::Granted(proto::Stream stream, uint32_t bytes) {
  std::lock_guard lock(mutex_);
  uint64_t& in_flight = inbound_in_flight_.at(static_cast<size_t>(stream));
  in_flight -= std::min<uint64_t>(in_flight, bytes);
}

bool Mailbox::ended() const {
  std::lock_guard lock(mutex_);
  return ended_;
}

void Mailbox::Push(proto::Frame frame) {
  std::function<void()> on_change;
  {
    std::lock_guard lock(mutex_);
    if (!Queue(std::move(frame))) return;
    on_change = on_change_;
  }
  if (on_change) on_change();
}

std::optional<Error> Mailbox::Refusal(const proto::Frame& frame) {
  if (!Expected(kind_, frame)) {
    return Error::Backend(fmt::format(
        "unexpected frame type {} from the guest agent on a {} request, which never gets one",
        static_cast<int>(frame.header.type), KindName(kind_)));
  }
  auto data = FlowControlled(frame);
  if (inbound_window_ && data) {
    uint64_t& in_flight = inbound_in_flight_.at(static_cast<size_t>(data->stream));
    in_flight += data->bytes;
    if (in_flight > *inbound_window_) {
      const char* what = data->stream == proto::Stream::kFile ? "file data" : "output";
      return Error::Backend(
          fmt::format("the guest agent sent more {} than its window allows", what));
    }
  }
  uint64_t cost = frame.payload.size() + kQueuedFrameOverhead;
  if (!data && unwindowed_bytes_ + cost > kMaxUnwindowedBytesPerRequest) {
    return Error::Backend(fmt::format(
        "the guest agent sent more than {} MiB of frames outside flow control on one request "
        "before the host read them",
        kMaxUnwindowedBytesPerRequest >> 20));
  }
  return std::nullopt;
}

bool Mailbox::Queue(proto::Frame frame) {
  // Nobody reads a failed request's frames; keeping them would only grow the queue.
  if (failure_) return false;
  if (auto refused = Refusal(frame)) {
    failure_ = std::move(*refused);
    cv_.notify_all();
    return true;
  }
  if (!raw_ && frame.header.type == proto::MessageType::kCredit) {
    auto credit = proto::DecodeCredit(frame.payload);
    // Stdin credit is consumed here, so a writer waiting for it never depends on someone
    // reading the process's events. Other credits are not the host's to receive.
    if (credit && credit->stream == proto::Stream::kStdin) {
      stdin_in_flight_ -= std::min<uint64_t>(stdin_in_flight_, credit->bytes);
      cv_.notify_all();
      return false;
    }
  }
  uint64_t cost = frame.payload.size() + kQueuedFrameOverhead;
  {
    std::lock_guard lock(budget_->mutex);
    if (budget_->queued + cost > kMaxQueuedBytesPerConnection) {
      failure_ = Error::Backend(fmt::format(
          "the host holds {} MiB of the guest agent's frames that nobody read yet, its limit; "
          "this request, the one the next frame was for, fails",
          kMaxQueuedBytesPerConnection >> 20));
      cv_.notify_all();
      return true;
    }
    budget_->queued += cost;
  }
  queued_bytes_ += cost;
  if (!FlowControlled(frame)) unwindowed_bytes_ += cost;
  if (proto::IsLastFrame(frame.header.type)) ended_ = true;
  frames_.push_back(std::move(frame));
  cv_.notify_all();
  return true;
}

void Mailbox::Break(const Error& error) {
  std::function<void()> on_change;
  {
    std::lock_guard lock(mutex_);
    if (!failure_) failure_ = error;
    cv_.notify_all();
    on_change = on_change_;
  }
  if (on_change) on_change();
}

Result<std::shared_ptr<Connection>> Connection::Open(int fd) {
  UniqueFd dup(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
  if (!dup) return Fail(Error::HostIo("dup the agent channel", errno));
  return std::shared_ptr<Connection>(new Connection(std::move(dup)));
}

Connection::~Connection() {
  Shutdown(Error::Backend("the connection to the guest agent was closed"));
  if (reader_thread_.joinable()) reader_thread_.join();
}

Result<proto::Frame> Connection::ReadFrameUnrouted(Deadline deadline) {
  for (;;) {
    auto frame = reader_.Next();
    if (!frame) return Fail(std::move(frame).error().Context("from the guest agent"));
    if (*frame) return std::move(**frame);
    uint8_t buf[kReadChunk];
    auto n = ReadSome(fd_.get(), buf, deadline, "waiting for the guest agent");
    if (!n) return Fail(std::move(n).error());
    if (*n == 0) {
      return Fail(Error::Backend(reader_.buffered() ? "the guest agent's channel closed mid-frame"
                                                    : "the guest agent's channel closed"));
    }
    reader_.Feed({buf, *n});
  }
}

Result<proto::Hello> Connection::Start(Deadline deadline) {
  auto frame = ReadFrameUnrouted(deadline);
  if (!frame) return Fail(std::move(frame).error());
  if (frame->header.type != proto::MessageType::kHello) {
    return Fail(Error::Backend("the guest agent sent something other than hello first"));
  }
  auto hello = CheckHello(frame->payload);
  if (!hello) return hello;
  reader_thread_ = std::thread([this] { ReadLoop(); });
  return hello;
}

Result<proto::Hello> Connection::StartResumed(const proto::ResumeRequest& request,
                                              Deadline deadline) {
  if (!request.clone) {
    return Fail(Error::InvalidConfig("clone", "only a clone is resumed on a new connection"));
  }
  if (auto valid = CheckResumeRequest(request); !valid) return Fail(std::move(valid).error());
  uint32_t id;
  {
    std::lock_guard lock(mutex_);
    id = next_id_++;
    if (next_id_ == proto::kAgentIdBit) next_id_ = 1;
  }
  {
    std::lock_guard send_lock(send_mutex_);
    if (auto sent = WriteLocked(proto::EncodeResume(id, request)); !sent) {
      return Fail(std::move(sent).error());
    }
  }
  for (;;) {
    auto frame = ReadFrameUnrouted(deadline);
    if (!frame) return Fail(std::move(frame).error().Context("resuming the guest agent"));
    // What the agent queued for the host it was snapshotted with is not for this one,
    // even when its id is the same: that host numbered its requests from 1 too.
    auto type = frame->header.type;
    if (frame->header.request_id != id ||
        (type != proto::MessageType::kHello && type != proto::MessageType::kError)) {
      continue;
    }
    auto hello = ResumeAnswer(*frame);
    if (!hello) return Fail(std::move(hello).error().Context("resuming the guest agent"));
    reader_thread_ = std::thread([this] { ReadLoop(); });
    return hello;
  }
}

Result<void> Connection::Quiesce(Deadline deadline) {
  if (!reader_thread_.joinable()) return Fail(NotStarted());
  auto mailbox = NewRequest(RequestKind::kControl);
  {
    std::lock_guard send_lock(send_mutex_);
    {
      std::lock_guard lock(mutex_);
      if (failure_) return Fail(*failure_);
      if (paused_) {
        mailboxes_.erase(mailbox->id());
        return Fail(
            Error::Lifecycle({LifecycleError::Other{"the agent connection is quiesced already"}}));
      }
      paused_ = true;
    }
    if (auto sent = WriteLocked(proto::EncodeQuiesce(mailbox->id())); !sent) {
      EndRequest(mailbox->id());
      Unpause();
      return Fail(std::move(sent).error().Context("quiescing the guest agent"));
    }
  }
  auto frame = mailbox->Next(deadline);
  EndRequest(mailbox->id());
  // Once Done has come, the agent writes nothing more until it is resumed.
  Result<void> done;
  if (!frame) {
    done = Fail(std::move(frame).error());
  } else if (frame->header.type != proto::MessageType::kDone) {
    done = Fail(FailedAnswer(*frame));
  } else {
    done = proto::DecodeEmpty(frame->payload, "done");
  }
  if (!done) {
    Unpause();
    return Fail(std::move(done).error().Context("quiescing the guest agent"));
  }
  return {};
}

Result<proto::Hello> Connection::Resume(const proto::ResumeRequest& request, Deadline deadline) {
  if (auto valid = CheckResumeRequest(request); !valid) return Fail(std::move(valid).error());
  if (!reader_thread_.joinable()) return Fail(NotStarted());
  auto mailbox = NewRequest(RequestKind::kControl);
  auto hello = [&]() -> Result<proto::Hello> {
    {
      // Not Send(): the senders Quiesce() holds back wait for this very frame's answer.
      std::lock_guard send_lock(send_mutex_);
      if (auto failed = failure()) return Fail(std::move(*failed));
      if (auto sent = WriteLocked(proto::EncodeResume(mailbox->id(), request)); !sent) {
        return Fail(std::move(sent).error());
      }
    }
    auto frame = mailbox->Next(deadline);
    if (!frame) return Fail(std::move(frame).error());
    return ResumeAnswer(*frame);
  }();
  EndRequest(mailbox->id());
  Unpause();
  if (!hello) return Fail(std::move(hello).error().Context("resuming the guest agent"));
  return hello;
}

void Connection::Unpause() {
  {
    std::lock_guard lock(mutex_);
    paused_ = false;
  }
  unpaused_.notify_all();
}

void Connection::ReadLoop() {
  std::vector<uint8_t> buf(kReadChunk);
  for (;;) {
    // Drains before reading: bytes that came in the same read as the hello are buffered.
    for (;;) {
      auto frame = reader_.Next();
      if (!frame) return Shutdown(std::move(frame).error().Context("from the guest agent"));
      if (!*frame) break;
      Route(std::move(**frame));
    }
    auto n = ReadSome(fd_.get(), buf, Deadline::Never(), "reading from the guest agent");
    if (!n) return Shutdown(n.error());
    if (*n == 0) {
      return Shutdown(Error::Backend(reader_.buffered()
                                         ? "the guest agent's channel closed mid-frame"
                                         : "the guest agent's channel closed"));
    }
    reader_.Feed({buf.data(), *n});
  }
}

void Connection::Route(proto::Frame frame) {
  // An unsolicited hello after the first: the agent saw the channel reconnect. Nothing to
  // route. (A hello with a request id answers a Resume.)
  if (frame.header.type == proto::MessageType::kHello && frame.header.request_id == 0) return;
  if (frame.header.type == proto::MessageType::kNetOpen) return OpenNet(frame.header.request_id);
  std::shared_ptr<Mailbox> mailbox;
  {
    std::lock_guard lock(mutex_);
    auto it = mailboxes_.find(frame.header.request_id);
    if (it == mailboxes_.end()) return;
    mailbox = it->second;
    if (proto::IsLastFrame(frame.header.type)) mailboxes_.erase(it);
  }
  mailbox->Push(std::move(frame));
}

void Connection::OpenNet(uint32_t id) {
  // Ids below the bit are the host's; a NetOpen for an id in use, or with a payload, is
  // one the agent never sends: dropped like any frame nobody waits for.
  if (!net_handler_ || (id & proto::kAgentIdBit) == 0) return;
  auto mailbox = std::make_shared<Mailbox>(id, RequestKind::kNet, /*raw=*/false, budget_);
  mailbox->LimitInbound(proto::kNetWindow);
  {
    std::lock_guard lock(mutex_);
    if (failure_ || !mailboxes_.try_emplace(id, mailbox).second) return;
  }
  net_handler_(std::move(mailbox));
}

std::shared_ptr<Mailbox> Connection::NewRequest(RequestKind kind, bool raw) {
  std::lock_guard lock(mutex_);
  uint32_t id = next_id_++;
  if (next_id_ == proto::kAgentIdBit) next_id_ = 1;
  auto mailbox = std::make_shared<Mailbox>(id, kind, raw, budget_);
  if (failure_) {
    mailbox->Break(*failure_);
  } else {
    mailboxes_[id] = mailbox;
  }
  return mailbox;
}

void Connection::EndRequest(uint32_t id) {
  std::lock_guard lock(mutex_);
  mailboxes_.erase(id);
}

Result<void> Connection::Send(std::span<const uint8_t> frame) {
  if (auto failed = failure()) return Fail(std::move(*failed));
  std::unique_lock send_lock(send_mutex_);
  for (;;) {
    std::unique_lock lock(mutex_);
    if (failure_) return Fail(*failure_);
    if (!paused_) break;
    // Waits without send_mutex_, which Resume() needs; checks again with it.
    send_lock.unlock();
    unpaused_.wait(lock, [&] { return !paused_ || failure_; });
    lock.unlock();
    send_lock.lock();
  }
  return WriteLocked(frame);
}

Result<void> Connection::WriteLocked(std::span<const uint8_t> frame) {
  auto sent =
      WriteAll(fd_.get(), frame, Deadline::After(kSendTimeout), "sending to the guest agent");
  if (!sent) {
    Shutdown(sent.error());
    if (auto failed = failure()) return Fail(std::move(*failed));
  }
  return sent;
}

void Connection::Shutdown(const Error& reason) {
  std::map<uint32_t, std::shared_ptr<Mailbox>> mailboxes;
  {
    std::lock_guard lock(mutex_);
    if (failure_) return;
    failure_ = reason;
    mailboxes.swap(mailboxes_);
  }
  // Wakes the reader thread: its read returns 0.
  ::shutdown(fd_.get(), SHUT_RDWR);
  unpaused_.notify_all();
  for (auto& [id, mailbox] : mailboxes) mailbox->Break(reason);
}

std::optional<Error> Connection::failure() const {
  std::lock_guard lock(mutex_);
  return failure_;
}

proto::ResumeRequest MakeResumeRequest(bool clone) {
  proto::ResumeRequest request;
  request.clone = clone;
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  request.wall_clock_ns =
      static_cast<uint64_t>(now.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(now.tv_nsec);
  std::vector<uint8_t> entropy(kResumeEntropy);
  size_t filled = 0;
  while (filled < entropy.size()) {
    ssize_t n = ::getrandom(entropy.data() + filled, entropy.size() - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return request;
    }
    filled += static_cast<size_t>(n);
  }
  request.entropy = std::move(entropy);
  return request;
}

}  // namespace vessel::sandbox
