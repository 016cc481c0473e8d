// Raw requests on a sandbox's agent channel, for a relay that speaks the agent protocol
// on a client's behalf (the supervisor's control socket). The relay opens raw mailboxes
// on the connection and does its own flow-control accounting; the sandbox only checks
// its lifecycle, exactly as for its own operations.
#pragma once

#include <memory>
#include <string>

#include "sandbox/connection.h"
#include "sandbox/lifecycle.h"
#include "vessel/sandbox.h"

namespace vessel::sandbox {

// An interface, so that a relay is tested against a fake agent without a VM.
class RawAgent {
 public:
  virtual ~RawAgent() = default;

  // The agent's version, for the Hello a relay greets its client with.
  [[nodiscard]] virtual std::string version() const = 0;
  // Checks `op` (kExecute or kFiles) against the sandbox's lifecycle table, connecting a
  // lost channel again as the sandbox's own operations do, and returns the connection
  // to open the request on. Fails as Sandbox::Execute() or Sandbox::ReadFile() would.
  // Thread safe.
  [[nodiscard]] virtual Result<std::shared_ptr<Connection>> Begin(Operation op) = 0;
};

// The raw agent of `sandbox`, which must outlive it.
[[nodiscard]] std::unique_ptr<RawAgent> RawAgentOf(Sandbox& sandbox);

}  // namespace vessel::sandbox
