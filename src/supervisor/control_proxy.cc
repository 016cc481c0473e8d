#include "supervisor/control_proxy.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "base/io.h"
#include "protocol/frame.h"
#include "supervisor/log.h"
#include "supervisor/state.h"

namespace vessel::supervisor {

namespace proto = vessel::protocol;

namespace {

constexpr size_t kReadChunk = 64 * 1024;

Error ClientViolation(std::string message) {
  return Error::Backend("the client broke the protocol: " + std::move(message));
}

std::span<const uint8_t> AsBytes(const std::string& text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

}  // namespace

ClientSession::ClientSession(sandbox::RawAgent& agent, const ControlHandler& on_control,
                             UniqueFd client)
    : agent_(agent), on_control_(on_control), fd_(std::move(client)) {
  thread_ = std::thread([this] { Run(); });
}

ClientSession::~ClientSession() {
  Disconnect();
  if (thread_.joinable()) thread_.join();
}

void ClientSession::Disconnect() {
  closing_ = true;
  // Wakes the session's read and the writer blocked writing to the client.
  ::shutdown(fd_.get(), SHUT_RDWR);
}

void ClientSession::Run() {
  // Written before the writer starts, which it does only once the client speaks frames.
  proto::Hello hello{.version = proto::kVersion, .agent_version = agent_.version()};
  if (auto greeted = ToClient(proto::EncodeHello(hello)); greeted) {
    if (auto served = Serve(); !served && !closing_) {
      Log("closing a client connection: " + served.error().ToString());
    }
  }
  closing_ = true;
  ::shutdown(fd_.get(), SHUT_RDWR);
  StopWriter();
  ReapRelays(/*all=*/true);
  finished_ = true;
}

Result<void> ClientSession::Serve() {
  proto::FrameReader reader;
  std::vector<uint8_t> buf(kReadChunk);
  // The client's first bytes, until there are enough to tell agent frames from a control
  // request.
  std::vector<uint8_t> first;
  bool speaks_frames = false;
  for (;;) {
    auto n = ReadSome(fd_.get(), buf, Deadline::Never(), "reading from a client");
    if (!n) return Fail(std::move(n).error());
    if (*n == 0) {
      if (reader.buffered() || !first.empty()) {
        return Fail(ClientViolation("the connection closed mid-frame"));
      }
      return {};
    }
    std::span<const uint8_t> received(buf.data(), *n);
    if (!speaks_frames) {
      first.insert(first.end(), received.begin(), received.end());
      if (first.size() < kControlRequestSniffSize) continue;
      if (StartsControlRequest(std::span(first).first<kControlRequestSniffSize>())) {
        return ServeControlRequest(std::string(first.begin(), first.end()));
      }
      speaks_frames = true;
      StartWriter();
      reader.Feed(first);
      first.clear();
    } else {
      reader.Feed(received);
    }
    for (;;) {
      auto frame = reader.Next();
      if (!frame) return Fail(ClientViolation(frame.error().message()));
      if (!*frame) break;
      if (auto handled = OnFrame(**frame); !handled) return handled;
    }
  }
}

Result<void> ClientSession::ServeControlRequest(std::string received) {
  std::vector<uint8_t> buf(kReadChunk);
  // Where the search for '\n' goes on: a long request is scanned once.
  size_t searched = 0;
  while (received.find('\n', searched) == std::string::npos &&
         received.size() <= kMaxControlRequestSize) {
    searched = received.size();
    auto n = ReadSome(fd_.get(), buf, Deadline::Never(), "reading from a client");
    if (!n) return Fail(std::move(n).error());
    if (*n == 0) return Fail(ClientViolation("the connection closed inside a control request"));
    received.append(reinterpret_cast<const char*>(buf.data()), *n);
  }
  auto request = ParseControlRequest(received);
  if (!request) {
    (void)ToClient(AsBytes(EncodeControlReply(Fail(request.error()))));
    return Fail(ClientViolation(request.error().message()));
  }
  Result<ControlReply> outcome = on_control_(*request);
  // The client may have given up meanwhile; what was done stands either way.
  (void)ToClient(AsBytes(EncodeControlReply(outcome)));
  return {};
}

Result<void> ClientSession::OnFrame(const proto::Frame& frame) {
  ReapRelays(/*all=*/false);
  uint32_t id = frame.header.request_id;
  std::span<const uint8_t> payload = frame.payload;
  // Follow-ups are checked before they are relayed, so the agent only ever sees frames a
  // well-behaved host would send.
  Result<void> valid;
  std::optional<proto::Credit> granted;
  switch (frame.header.type) {
    case proto::MessageType::kPing:
      if (auto empty = proto::DecodeEmpty(payload, "ping"); !empty)
        return Fail(ClientViolation(empty.error().message()));
      Answer(proto::EncodePong(id));
      return {};
    case proto::MessageType::kExec:
    case proto::MessageType::kFileOp: return BeginRequest(frame);
    case proto::MessageType::kStdin:
    case proto::MessageType::kFileData: break;
    case proto::MessageType::kSignal:
      if (auto signal = proto::DecodeSignal(payload); !signal)
        valid = Fail(std::move(signal).error());
      break;
    case proto::MessageType::kResize:
      if (auto size = proto::DecodeResize(payload); !size) valid = Fail(std::move(size).error());
      break;
    case proto::MessageType::kCredit:
      if (auto credit = proto::DecodeCredit(payload); !credit) {
        valid = Fail(std::move(credit).error());
      } else {
        granted = *credit;
      }
      break;
    case proto::MessageType::kQuiesce:
    case proto::MessageType::kResume:
      // The channel is the sandbox's: a client must not stall every other client's
      // requests, nor make the agent forget them.
      return Fail(ClientViolation(fmt::format("frame type {} is only the supervisor's to send",
                                              static_cast<int>(frame.header.type))));
    default:
      return Fail(ClientViolation(fmt::format("frame type {} is not one a client sends",
                                              static_cast<int>(frame.header.type))));
  }
  if (!valid) return Fail(ClientViolation(valid.error().message()));
  auto it = relays_.find(id);
  // Follow-ups may trail a request that has just ended; like the agent, drop them.
  if (it == relays_.end()) return {};
  Relay& relay = *it->second;
  // Before the credit goes out, so the agent's answer to it cannot arrive first.
  if (granted && granted->stream != proto::Stream::kStdin) {
    relay.mailbox->Granted(granted->stream, granted->bytes);
  }
  // A broken agent connection reaches the client through the request's mailbox.
  (void)relay.agent->Send(proto::EncodeFrame(frame, relay.mailbox->id()));
  return {};
}

Result<void> ClientSession::BeginRequest(const proto::Frame& frame) {
  uint32_t id = frame.header.request_id;
  sandbox::Operation op;
  sandbox::RequestKind kind;
  uint32_t window;  // what the agent may send ahead of the client's credits
  if (frame.header.type == proto::MessageType::kExec) {
    op = sandbox::Operation::kExecute;
    kind = sandbox::RequestKind::kProcess;
    auto exec = proto::DecodeExec(frame.payload);
    if (!exec) return Fail(ClientViolation(exec.error().message()));
    window = exec->window;
  } else {
    op = sandbox::Operation::kFiles;
    kind = sandbox::RequestKind::kFile;
    auto file_op = proto::DecodeFileOp(frame.payload);
    if (!file_op) return Fail(ClientViolation(file_op.error().message()));
    window = file_op->window;
  }
  if (id == 0) return Fail(ClientViolation("request id 0 is reserved"));
  if (relays_.contains(id))
    return Fail(ClientViolation(fmt::format("request id {} is already in use", id)));
  if (relays_.size() >= kMaxRequestsPerClient) {
    AnswerError(id,
                fmt::format("more than {} requests open on one connection", kMaxRequestsPerClient));
    return {};
  }
  // The lifecycle check of the sandbox itself: a failed VM answers every request with
  // the reason, until `vessel rm`.
  auto agent = agent_.Begin(op);
  if (!agent) {
    AnswerError(id, agent.error().ToString());
    return {};
  }
  auto relay = std::make_shared<Relay>();
  relay->client_id = id;
  relay->agent = *agent;
  relay->mailbox = relay->agent->NewRequest(kind, /*raw=*/true);
  // What waits here for a slow client is bounded by the window: a guest that ignores
  // flow control fails its request instead of growing the queue.
  relay->mailbox->LimitInbound(window);
  relay->mailbox->Observe([outbox = outbox_, weak = std::weak_ptr<Relay>(relay)] {
    {
      std::lock_guard lock(outbox->mutex);
      outbox->ready.push_back(weak);
    }
    outbox->wake.notify_one();
  });
  if (auto sent = relay->agent->Send(proto::EncodeFrame(frame, relay->mailbox->id())); !sent) {
    relay->agent->EndRequest(relay->mailbox->id());
    AnswerError(id, sent.error().ToString());
    return {};
  }
  relays_.emplace(id, std::move(relay));
  return {};
}

void ClientSession::Answer(std::vector<uint8_t> frame) {
  {
    std::lock_guard lock(outbox_->mutex);
    outbox_->frames.push_back(std::move(frame));
  }
  outbox_->wake.notify_one();
}

void ClientSession::AnswerError(uint32_t client_id, const std::string& message) {
  proto::ErrorReply reply{
      .errno_value = 0, .path = {}, .message = message.substr(0, proto::kMaxMessageSize)};
  Answer(proto::EncodeError(client_id, reply));
}

void ClientSession::StartWriter() {
  writer_ = std::thread([this] { WriteLoop(); });
}

void ClientSession::StopWriter() {
  {
    std::lock_guard lock(outbox_->mutex);
    outbox_->stopping = true;
  }
  outbox_->wake.notify_one();
  if (writer_.joinable()) writer_.join();
}

void ClientSession::WriteLoop() {
  for (;;) {
    std::vector<uint8_t> frame;
    std::shared_ptr<Relay> relay;
    {
      std::unique_lock lock(outbox_->mutex);
      outbox_->wake.wait(lock, [&] {
        return outbox_->stopping || !outbox_->frames.empty() || !outbox_->ready.empty();
      });
      if (outbox_->stopping) return;
      if (!outbox_->frames.empty()) {
        frame = std::move(outbox_->frames.front());
        outbox_->frames.pop_front();
      } else {
        relay = outbox_->ready.front().lock();
        outbox_->ready.pop_front();
      }
    }
    if (relay) {
      Forward(*relay);
    } else if (!frame.empty()) {
      // A client that cannot take the frame is gone: the session thread notices.
      (void)ToClient(frame);
    }
  }
}

void ClientSession::Forward(Relay& relay) {
  while (!relay.done) {
    auto next = relay.mailbox->TryNext();
    if (!next) return;
    if (!*next) {
      if (!closing_) {
        proto::ErrorReply reply{
            .errno_value = 0,
            .path = {},
            .message = next->error().ToString().substr(0, proto::kMaxMessageSize)};
        (void)ToClient(proto::EncodeError(relay.client_id, reply));
      }
      relay.done = true;
      return;
    }
    // A client that cannot take the frame is gone: the session thread notices and kills
    // the request.
    if (!ToClient(proto::EncodeFrame(**next, relay.client_id)) ||
        proto::IsLastFrame((*next)->header.type)) {
      relay.done = true;
    }
  }
}

Result<void> ClientSession::ToClient(std::span<const uint8_t> frame) {
  // No deadline: a client may be stopped (^Z) for as long as its user likes; one that
  // dies closes the socket and the write fails.
  return WriteAll(fd_.get(), frame, Deadline::Never(), "writing to a client");
}

void ClientSession::ReapRelays(bool all) {
  for (auto it = relays_.begin(); it != relays_.end();) {
    Relay& relay = *it->second;
    if (!all && !relay.done) {
      ++it;
      continue;
    }
    // The request still runs in the guest when its client left or could not be written
    // to: a signal kills a command and aborts a file write.
    if (!relay.mailbox->ended()) {
      (void)relay.agent->Send(proto::EncodeSignal(relay.mailbox->id(), SIGKILL));
    }
    relay.mailbox->Cancel(Error::Backend("the client went away"));
    relay.agent->EndRequest(relay.mailbox->id());
    it = relays_.erase(it);
  }
}

void ControlServer::AcceptPending() {
  sessions_.remove_if([](const auto& session) { return session->finished(); });
  for (;;) {
    UniqueFd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN) Log(fmt::format("accepting a client failed: {}", std::strerror(errno)));
      return;
    }
    // The socket's directory is private already; a peer of another user is refused anyway.
    if (auto peer = PeerOfThisUser(client.get()); !peer) {
      Log(fmt::format("refusing a client: {}", peer.error().message()));
      continue;
    }
    if (sessions_.size() >= kMaxClients) {
      Log(fmt::format("refusing a client: {} are connected already", kMaxClients));
      continue;
    }
    sessions_.push_back(std::make_unique<ClientSession>(agent_, on_control_, std::move(client)));
  }
}

void ControlServer::DisconnectAll() {
  for (auto& session : sessions_) session->Disconnect();
  sessions_.clear();
}

}  // namespace vessel::supervisor
