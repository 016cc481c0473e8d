// The host's end of a sandbox's egress proxy: each connection a guest program makes to
// the agent's 127.0.0.1:3128 arrives as a NetOpen (Connection::ServeNet) and is relayed
// here, on a thread of its own, in three steps: read the proxy request head; decide
// (egress::Allow, then egress::ConnectUpstream, which resolves and checks addresses);
// then carry bytes both ways with the same flow control as process output. Every
// refusal is answered with an HTTP status and a one-line reason, counted and kept among
// the recent refusals.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/unique_fd.h"
#include "egress/policy.h"
#include "egress/upstream.h"
#include "sandbox/connection.h"
#include "vessel/sandbox.h"

namespace vessel::sandbox {

// The most proxied connections a policy may allow at once (the agent's own cap).
inline constexpr uint32_t kMaxNetConnections = 256;
// How long a guest program has to send its request head, and an upstream to accept.
inline constexpr auto kProxyHeadTimeout = std::chrono::seconds(10);
inline constexpr auto kUpstreamConnectTimeout = std::chrono::seconds(10);
// Refusals kept for NetworkStats::recent_refusals.
inline constexpr size_t kRecentRefusals = 32;

// `policy` checked and parsed; kInvalidConfig (subject "network") naming what is wrong.
struct CheckedPolicy {
  NetworkPolicy policy;  // rules in canonical spelling
  egress::Policy rules;
};
[[nodiscard]] Result<CheckedPolicy> CheckNetworkPolicy(const NetworkPolicy& policy);

class Egress : public std::enable_shared_from_this<Egress> {
 public:
  Egress(CheckedPolicy policy, egress::Resolver resolve = egress::SystemResolve);
  // Stop()s.
  ~Egress();
  Egress(const Egress&) = delete;
  Egress& operator=(const Egress&) = delete;

  // Serves the NetOpens of `connection`; call before it starts.
  void Attach(const std::shared_ptr<Connection>& connection);
  void SetPolicy(CheckedPolicy policy);
  [[nodiscard]] NetworkPolicy policy() const;
  [[nodiscard]] NetworkStats stats() const;
  // Ends every relay and waits for their threads; later NetOpens are closed at once.
  void Stop();

 private:
  class Relay;
  // On the connection's reader thread: starts a relay for `mailbox`.
  void Open(const std::weak_ptr<Connection>& connection, std::shared_ptr<Mailbox> mailbox);
  // Joins the threads of relays that ended.
  void Reap();

  const egress::Resolver resolve_;
  UniqueFd stop_;             // an eventfd, readable once Stop() was called
  mutable std::mutex mutex_;  // guards the fields below
  CheckedPolicy policy_;
  NetworkStats stats_;
  bool stopped_ = false;
  struct Running {
    std::thread thread;
    bool done = false;
  };
  std::list<Running> relays_;

  friend class Relay;
};

}  // namespace vessel::sandbox
