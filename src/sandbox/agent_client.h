// The host end of the agent protocol: turns requests into frames and the agent's frames,
// which are hostile input, back into results.
#pragma once

#include <cstdint>

#include "base/deadline.h"
#include "protocol/wire.h"
#include "vessel/sandbox.h"

namespace vessel::sandbox {

class AgentClient {
 public:
  // `fd` is the connected channel; the engine's VM owns it.
  explicit AgentClient(int fd) : fd_(fd) {}

  // Waits for the agent's hello and checks its protocol version.
  [[nodiscard]] Result<protocol::Hello> AwaitHello(Deadline deadline);
  // Runs one command to completion. `deadline` is the host's own limit on waiting,
  // beyond the agent-enforced timeout in the request.
  [[nodiscard]] Result<ExecResult> Execute(const protocol::ExecRequest& request, Deadline deadline);

 private:
  Result<protocol::Frame> ReadFrame(Deadline deadline);

  int fd_;
  uint32_t next_request_id_ = 1;
  protocol::FrameReader reader_;
};

// The wire request for a command, or kInvalidConfig when a caller's input cannot be
// carried (empty argv, NUL bytes, sizes beyond the protocol's caps).
[[nodiscard]] Result<protocol::ExecRequest> MakeExecRequest(const Command& command,
                                                            const ExecOptions& options);

}  // namespace vessel::sandbox
