// Commands in the guest: building requests and the Process handle.
#pragma once

#include <memory>

#include "sandbox/connection.h"
#include "vessel/sandbox.h"

namespace vessel::sandbox {

// Output bytes the agent may send ahead of the host per stream, and stdin bytes the host
// may send ahead of the agent.
inline constexpr uint32_t kStreamWindow = 1024 * 1024;
// How long the host waits past a command's own timeout before declaring the agent lost.
inline constexpr auto kAgentGrace = std::chrono::seconds(10);

// The wire request for a command, or kInvalidConfig when a caller's input cannot be
// carried (empty argv, NUL bytes, sizes beyond the protocol's caps).
[[nodiscard]] Result<protocol::ExecRequest> MakeExecRequest(const Command& command,
                                                            const ExecOptions& options);

// A terminal size on the wire, or kInvalidConfig naming the field when out of range.
[[nodiscard]] Result<protocol::TerminalSize> WireTerminalSize(TerminalSize size);

// Sends the request and waits until the command runs in the guest (or failed to start:
// a missing program or working directory is kGuestFile). With `close_stdin`, stdin is
// closed after options.stdin_data has been written.
[[nodiscard]] Result<std::unique_ptr<Process>> StartProcess(std::shared_ptr<Connection> connection,
                                                            const Command& command,
                                                            const ExecOptions& options,
                                                            bool close_stdin);

// Maps an Error frame from the agent to an Error: kGuestFile when it names a path.
[[nodiscard]] Error ErrorFromAgent(std::span<const uint8_t> payload, std::string_view what);

}  // namespace vessel::sandbox
