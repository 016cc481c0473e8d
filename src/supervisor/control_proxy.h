// The supervisor's control socket: the agent protocol, proxied to one sandbox.
//
// A client speaks to the supervisor exactly as the host library speaks to the guest
// agent (so sandbox::Connection, StartProcess and the file functions work unchanged on
// either end): the supervisor greets it with a Hello, then relays each of its requests
// to the agent on a raw mailbox of its own, rewriting request ids both ways. Flow control
// is end to end: credits pass through untouched.
//
// Clients are untrusted input like the guest is: every frame is decoded before it is
// relayed, and only requests and their follow-ups are accepted. A client that breaks the
// protocol is disconnected. A client that goes away, however, has every request it left
// running killed (SIGKILL), so nothing it started outlives it.
//
// A client may instead send one control request (supervisor_protocol.h), which the
// supervisor carries out itself, such as a snapshot or a change of the egress policy;
// agent requests of other clients wait meanwhile where they must.
//
// The process must ignore SIGPIPE: a client that goes away is a failed write.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "base/unique_fd.h"
#include "protocol/wire.h"
#include "sandbox/raw_agent.h"
#include "supervisor/supervisor_protocol.h"

namespace vessel::supervisor {

// Caps on what one supervisor serves: clients at once, and requests open per client.
inline constexpr size_t kMaxClients = 64;
inline constexpr size_t kMaxRequestsPerClient = 256;

// Carries out a control request for a client, as long as it takes, and says what the
// reply carries. Called on the client's session thread; several clients may call it at
// once.
using ControlHandler = std::function<Result<ControlReply>(const ControlRequest&)>;

// One client connection: a thread reads the client's frames and relays them to the
// agent; one writer thread sends the client everything it is owed, the agent's frames
// for each of its requests and the session's own answers.
class ClientSession {
 public:
  // `agent` and `on_control` must outlive the session.
  ClientSession(sandbox::RawAgent& agent, const ControlHandler& on_control, UniqueFd client);
  // Disconnects the client (killing its requests) and joins every thread.
  ~ClientSession();
  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;

  // True once the client is gone and its requests were cleaned up; then the destructor
  // does not block.
  [[nodiscard]] bool finished() const { return finished_; }
  // Makes the session end soon, from any thread.
  void Disconnect();

 private:
  // One relayed request: the client's id <-> the mailbox id on the agent's connection.
  struct Relay {
    uint32_t client_id = 0;
    std::shared_ptr<sandbox::Connection> agent;
    std::shared_ptr<sandbox::Mailbox> mailbox;
    // The writer forwarded the request's last frame, or gave up on it.
    std::atomic<bool> done{false};
  };
  // What the writer has to send, shared with the mailboxes' observers, which may outlive
  // the session by a moment.
  struct Outbox {
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<std::vector<uint8_t>> frames;  // the session's own answers
    std::deque<std::weak_ptr<Relay>> ready;   // relays whose mailbox changed
    bool stopping = false;
  };

  void Run();
  [[nodiscard]] Result<void> Serve();
  // Reads the rest of a control request that began with `received`, carries it out and
  // answers it; the session then ends.
  [[nodiscard]] Result<void> ServeControlRequest(std::string received);
  [[nodiscard]] Result<void> OnFrame(const protocol::Frame& frame);
  [[nodiscard]] Result<void> BeginRequest(const protocol::Frame& frame);
  // Queues a frame of the session's own for the writer.
  void Answer(std::vector<uint8_t> frame);
  void AnswerError(uint32_t client_id, const std::string& message);
  void StartWriter();
  void StopWriter();
  void WriteLoop();
  // Sends the client the frames that wait in `relay`'s mailbox.
  void Forward(Relay& relay);
  // Called by the session thread until the writer starts, then by the writer only.
  [[nodiscard]] Result<void> ToClient(std::span<const uint8_t> frame);
  // Drops relays the writer is done with (or all); kills a request that did not end in
  // the guest.
  void ReapRelays(bool all);

  sandbox::RawAgent& agent_;
  const ControlHandler& on_control_;
  UniqueFd fd_;
  std::shared_ptr<Outbox> outbox_ = std::make_shared<Outbox>();
  // Touched only by the session thread.
  std::map<uint32_t, std::shared_ptr<Relay>> relays_;
  std::atomic<bool> closing_{false};
  std::atomic<bool> finished_{false};
  std::thread writer_;
  std::thread thread_;
};

// Accepts clients on the control socket and keeps their sessions.
class ControlServer {
 public:
  // `agent` must outlive the server.
  ControlServer(sandbox::RawAgent& agent, ControlHandler on_control, UniqueFd listener)
      : agent_(agent), on_control_(std::move(on_control)), listener_(std::move(listener)) {}
  ~ControlServer() { DisconnectAll(); }
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  [[nodiscard]] int fd() const { return listener_.get(); }
  // Accepts the clients waiting on the (non-blocking) listener; drops finished sessions.
  void AcceptPending();
  // Ends every session and waits for them.
  void DisconnectAll();

 private:
  sandbox::RawAgent& agent_;
  ControlHandler on_control_;
  UniqueFd listener_;
  std::list<std::unique_ptr<ClientSession>> sessions_;
};

}  // namespace vessel::supervisor
