#include "cli/control_proxy.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>

#include "base/io.h"
#include "cli/cli.h"
#include "cli/supervisor_protocol.h"
#include "sandbox/sandbox_impl.h"

namespace vessel::cli {

namespace proto = vessel::protocol;

namespace {

constexpr size_t kReadChunk = 64 * 1024;
constexpr int kSigKill = 9;

// As for sandbox::Connection: a Hello with a request id would answer a Resume, which
// clients cannot send, so for a relayed request it can only end it.
bool IsLastFrame(proto::MessageType type) {
  return type == proto::MessageType::kExited || type == proto::MessageType::kError ||
         type == proto::MessageType::kDone || type == proto::MessageType::kHello;
}

// The frame as bytes again, with another request id.
std::vector<uint8_t> WithRequestId(const proto::Frame& frame, uint32_t request_id) {
  std::vector<uint8_t> bytes(proto::kHeaderSize + frame.payload.size());
  auto put = [&](size_t at, uint32_t value) {
    for (size_t i = 0; i < 4; ++i) bytes[at + i] = static_cast<uint8_t>(value >> (8 * i));
  };
  put(0, static_cast<uint32_t>(frame.payload.size()));
  bytes[4] = static_cast<uint8_t>(frame.header.type);
  put(8, request_id);
  std::copy(frame.payload.begin(), frame.payload.end(),
            bytes.begin() + static_cast<std::ptrdiff_t>(proto::kHeaderSize));
  return bytes;
}

Error ClientViolation(std::string message) {
  return Error::Backend("the client broke the protocol: " + std::move(message));
}

std::span<const uint8_t> AsBytes(const std::string& text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// Saves the sandbox to `dir` for a client. A directory the snapshot created goes again
// when it fails, so nothing is left behind.
Result<void> SnapshotFor(Sandbox& sandbox, const std::string& dir) {
  struct stat st {};
  bool existed = ::lstat(dir.c_str(), &st) == 0;
  Log("saving a snapshot to " + dir);
  auto saved = sandbox.Snapshot(dir);
  if (saved) {
    Log("saved a snapshot to " + dir);
  } else {
    Log(fmt::format("saving a snapshot to {} failed: {}", dir, saved.error().ToString()));
    if (!existed) ::rmdir(dir.c_str());
  }
  return saved;
}

}  // namespace

ClientSession::ClientSession(Sandbox& sandbox, UniqueFd client)
    : sandbox_(sandbox), fd_(std::move(client)) {
  thread_ = std::thread([this] { Run(); });
}

ClientSession::~ClientSession() {
  Disconnect();
  if (thread_.joinable()) thread_.join();
}

void ClientSession::Disconnect() {
  closing_ = true;
  // Wakes the session's read and any pump blocked writing to the client.
  ::shutdown(fd_.get(), SHUT_RDWR);
}

void ClientSession::Run() {
  proto::Hello hello{.version = proto::kVersion, .agent_version = sandbox_.agent_version()};
  if (auto greeted = ToClient(proto::EncodeHello(hello)); greeted) {
    if (auto served = Serve(); !served && !closing_) {
      Log("closing a client connection: " + served.error().ToString());
    }
  }
  closing_ = true;
  ::shutdown(fd_.get(), SHUT_RDWR);
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
  while (received.find('\n') == std::string::npos && received.size() <= kMaxControlRequestSize) {
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
  Result<void> outcome;
  switch (request->op) {
    case ControlRequest::Op::kSnapshot: outcome = SnapshotFor(sandbox_, request->dir); break;
  }
  // The client may have given up meanwhile; the snapshot stands either way.
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
      return ToClient(proto::EncodePong(id));
    case proto::MessageType::kExec:
    case proto::MessageType::kFileOp: return BeginRequest(frame);
    case proto::MessageType::kStdin:
    case proto::MessageType::kFileData: break;
    case proto::MessageType::kSignal:
      if (auto signal = proto::DecodeSignal(payload); !signal)
        valid = Fail(std::move(signal).error());
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
  // A broken agent connection reaches the client through the request's pump.
  (void)relay.agent->Send(WithRequestId(frame, relay.mailbox->id()));
  return {};
}

Result<void> ClientSession::BeginRequest(const proto::Frame& frame) {
  uint32_t id = frame.header.request_id;
  sandbox::Operation op;
  uint32_t window;  // what the agent may send ahead of the client's credits
  if (frame.header.type == proto::MessageType::kExec) {
    op = sandbox::Operation::kExecute;
    auto exec = proto::DecodeExec(frame.payload);
    if (!exec) return Fail(ClientViolation(exec.error().message()));
    window = exec->window;
  } else {
    op = sandbox::Operation::kFiles;
    auto file_op = proto::DecodeFileOp(frame.payload);
    if (!file_op) return Fail(ClientViolation(file_op.error().message()));
    window = file_op->window;
  }
  if (id == 0) return Fail(ClientViolation("request id 0 is reserved"));
  if (relays_.contains(id))
    return Fail(ClientViolation(fmt::format("request id {} is already in use", id)));
  if (relays_.size() >= kMaxRequestsPerClient) {
    return ErrorToClient(
        id, fmt::format("more than {} requests open on one connection", kMaxRequestsPerClient));
  }
  // The lifecycle check of the sandbox itself: a failed VM answers every request with
  // the reason, until `vessel rm`.
  auto agent = Sandbox::Impl::Of(sandbox_).Begin(op);
  if (!agent) return ErrorToClient(id, agent.error().ToString());
  auto relay = std::make_unique<Relay>();
  relay->agent = *agent;
  relay->mailbox = relay->agent->NewRequest(/*raw=*/true);
  // What waits here for a slow client is bounded by the window: a guest that ignores
  // flow control fails its request instead of growing the queue.
  relay->mailbox->LimitInbound(window);
  if (auto sent = relay->agent->Send(WithRequestId(frame, relay->mailbox->id())); !sent) {
    relay->agent->EndRequest(relay->mailbox->id());
    return ErrorToClient(id, sent.error().ToString());
  }
  Relay& r = *relay;
  relays_.emplace(id, std::move(relay));
  r.pump = std::thread([this, &r, id] { Pump(r, id); });
  return {};
}

void ClientSession::Pump(Relay& relay, uint32_t client_id) {
  for (;;) {
    auto frame = relay.mailbox->Next(Deadline::Never());
    if (!frame) {
      if (!closing_) (void)ErrorToClient(client_id, frame.error().ToString());
      break;
    }
    // A client that cannot take the frame is gone: the session thread notices and kills
    // the request.
    if (!ToClient(WithRequestId(*frame, client_id))) break;
    if (IsLastFrame(frame->header.type)) break;
  }
  relay.pump_done = true;
}

Result<void> ClientSession::ToClient(std::span<const uint8_t> frame) {
  std::lock_guard lock(write_mutex_);
  // No deadline: a client may be stopped (^Z) for as long as its user likes; one that
  // dies closes the socket and the write fails.
  return WriteAll(fd_.get(), frame, Deadline::Never(), "writing to a client");
}

Result<void> ClientSession::ErrorToClient(uint32_t client_id, const std::string& message) {
  proto::ErrorReply reply{
      .errno_value = 0, .path = {}, .message = message.substr(0, proto::kMaxMessageSize)};
  return ToClient(proto::EncodeError(client_id, reply));
}

void ClientSession::ReapRelays(bool all) {
  for (auto it = relays_.begin(); it != relays_.end();) {
    Relay& relay = *it->second;
    if (!all && !relay.pump_done) {
      ++it;
      continue;
    }
    // The request still runs in the guest when its client left or could not be written
    // to: a signal kills a command and aborts a file write.
    if (!relay.mailbox->ended()) {
      (void)relay.agent->Send(proto::EncodeSignal(relay.mailbox->id(), kSigKill));
    }
    relay.mailbox->Cancel(Error::Backend("the client went away"));
    if (relay.pump.joinable()) relay.pump.join();
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
    if (sessions_.size() >= kMaxClients) {
      Log(fmt::format("refusing a client: {} are connected already", kMaxClients));
      continue;
    }
    sessions_.push_back(std::make_unique<ClientSession>(sandbox_, std::move(client)));
  }
}

void ControlServer::DisconnectAll() {
  for (auto& session : sessions_) session->Disconnect();
  sessions_.clear();
}

}  // namespace vessel::cli
