#include "sandbox/connection.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "base/io.h"

namespace vessel::sandbox {

namespace proto = vessel::protocol;

namespace {
// How long a write may wait for the agent to read before the channel counts as broken.
constexpr auto kSendTimeout = std::chrono::seconds(60);
constexpr size_t kReadChunk = 64 * 1024;

bool IsLastFrame(proto::MessageType type) {
  return type == proto::MessageType::kExited || type == proto::MessageType::kError ||
         type == proto::MessageType::kDone;
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
    default: return std::nullopt;
  }
}
}  // namespace

Result<proto::Frame> Mailbox::Next(Deadline deadline) {
  std::unique_lock lock(mutex_);
  auto ready = [&] { return !frames_.empty() || failure_.has_value(); };
  if (deadline.never()) {
    cv_.wait(lock, ready);
  } else if (!cv_.wait_for(lock, std::chrono::milliseconds(deadline.PollTimeoutMs()), ready)) {
    return Fail(Error::Backend("waiting for the guest agent: timed out"));
  }
  if (frames_.empty()) return Fail(*failure_);
  proto::Frame frame = std::move(frames_.front());
  frames_.pop_front();
  return frame;
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
  std::lock_guard lock(mutex_);
  // Nobody reads a failed request's frames; keeping them would only grow the queue.
  if (failure_) return;
  if (inbound_window_) {
    if (auto data = FlowControlled(frame)) {
      uint64_t& in_flight = inbound_in_flight_.at(static_cast<size_t>(data->stream));
      in_flight += data->bytes;
      if (in_flight > *inbound_window_) {
        const char* what = data->stream == proto::Stream::kFile ? "file data" : "output";
        failure_ = Error::Backend(
            fmt::format("the guest agent sent more {} than its window allows", what));
        cv_.notify_all();
        return;
      }
    }
  }
  if (!raw_ && frame.header.type == proto::MessageType::kCredit) {
    auto credit = proto::DecodeCredit(frame.payload);
    // Stdin credit is consumed here, so a writer waiting for it never depends on someone
    // reading the process's events. Other credits are not the host's to receive.
    if (credit && credit->stream == proto::Stream::kStdin) {
      stdin_in_flight_ -= std::min<uint64_t>(stdin_in_flight_, credit->bytes);
      cv_.notify_all();
      return;
    }
  }
  if (IsLastFrame(frame.header.type)) ended_ = true;
  frames_.push_back(std::move(frame));
  cv_.notify_all();
}

void Mailbox::Break(const Error& error) {
  std::lock_guard lock(mutex_);
  if (!failure_) failure_ = error;
  cv_.notify_all();
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

Result<proto::Hello> Connection::Start(Deadline deadline) {
  for (;;) {
    auto frame = reader_.Next();
    if (!frame) return Fail(std::move(frame).error().Context("from the guest agent"));
    if (*frame) {
      if ((*frame)->header.type != proto::MessageType::kHello) {
        return Fail(Error::Backend("the guest agent sent something other than hello first"));
      }
      auto hello = proto::DecodeHello((*frame)->payload);
      if (!hello) return hello;
      if (hello->version != proto::kVersion) {
        return Fail(
            Error::Backend(fmt::format("the guest agent speaks protocol version {}, the host {}",
                                       hello->version, proto::kVersion)));
      }
      reader_thread_ = std::thread([this] { ReadLoop(); });
      return hello;
    }
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
  // A hello after the first: the agent saw the channel reconnect. Nothing to route.
  if (frame.header.type == proto::MessageType::kHello) return;
  std::shared_ptr<Mailbox> mailbox;
  {
    std::lock_guard lock(mutex_);
    auto it = mailboxes_.find(frame.header.request_id);
    if (it == mailboxes_.end()) return;
    mailbox = it->second;
    if (IsLastFrame(frame.header.type)) mailboxes_.erase(it);
  }
  mailbox->Push(std::move(frame));
}

std::shared_ptr<Mailbox> Connection::NewRequest(bool raw) {
  std::lock_guard lock(mutex_);
  uint32_t id = next_id_++;
  if (next_id_ == 0) next_id_ = 1;
  auto mailbox = std::make_shared<Mailbox>(id, raw);
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
  std::lock_guard lock(send_mutex_);
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
  for (auto& [id, mailbox] : mailboxes) mailbox->Break(reason);
}

std::optional<Error> Connection::failure() const {
  std::lock_guard lock(mutex_);
  return failure_;
}

}  // namespace vessel::sandbox
