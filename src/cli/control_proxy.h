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
// running killed (Signal 9), so nothing it started outlives it.
//
// A client may instead send one control request (supervisor_protocol.h), which the
// supervisor carries out itself, such as a snapshot; agent requests of other clients wait
// meanwhile where they must.
#pragma once

#include <atomic>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "base/unique_fd.h"
#include "protocol/wire.h"
#include "sandbox/connection.h"
#include "vessel/sandbox.h"

namespace vessel::cli {

// Caps on what one supervisor serves: clients at once, and requests open per client.
inline constexpr size_t kMaxClients = 64;
inline constexpr size_t kMaxRequestsPerClient = 256;

// One client connection, served on a thread of its own.
class ClientSession {
 public:
  // `sandbox` must outlive the session.
  ClientSession(Sandbox& sandbox, UniqueFd client);
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
  // One relayed request: client id <-> the mailbox id on the agent's connection.
  struct Relay {
    std::shared_ptr<sandbox::Connection> agent;
    std::shared_ptr<sandbox::Mailbox> mailbox;
    std::thread pump;
    std::atomic<bool> pump_done{false};
  };

  void Run();
  [[nodiscard]] Result<void> Serve();
  // Reads the rest of a control request that began with `received`, carries it out and
  // answers it; the session then ends.
  [[nodiscard]] Result<void> ServeControlRequest(std::string received);
  [[nodiscard]] Result<void> OnFrame(const protocol::Frame& frame);
  [[nodiscard]] Result<void> BeginRequest(const protocol::Frame& frame);
  // Forwards the agent's frames for `relay` to the client until the request ends.
  void Pump(Relay& relay, uint32_t client_id);
  [[nodiscard]] Result<void> ToClient(std::span<const uint8_t> frame);
  [[nodiscard]] Result<void> ErrorToClient(uint32_t client_id, const std::string& message);
  // Joins relays whose pump ended; kills the request if it did not end in the guest.
  void ReapRelays(bool all);

  Sandbox& sandbox_;
  UniqueFd fd_;
  std::mutex write_mutex_;  // one frame to the client at a time
  // Touched only by the session thread.
  std::map<uint32_t, std::unique_ptr<Relay>> relays_;
  std::atomic<bool> closing_{false};
  std::atomic<bool> finished_{false};
  std::thread thread_;
};

// Accepts clients on the control socket and keeps their sessions.
class ControlServer {
 public:
  // `sandbox` must outlive the server.
  ControlServer(Sandbox& sandbox, UniqueFd listener)
      : sandbox_(sandbox), listener_(std::move(listener)) {}
  ~ControlServer() { DisconnectAll(); }
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  [[nodiscard]] int fd() const { return listener_.get(); }
  // Accepts the clients waiting on the (non-blocking) listener; drops finished sessions.
  void AcceptPending();
  // Ends every session and waits for them.
  void DisconnectAll();

 private:
  Sandbox& sandbox_;
  UniqueFd listener_;
  std::list<std::unique_ptr<ClientSession>> sessions_;
};

}  // namespace vessel::cli
