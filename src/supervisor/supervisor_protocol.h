// What the CLI's commands and a supervisor say to each other besides the agent protocol
// (docs/protocol.md, section 15):
//
// - the start-up report, on the pipe a starting command waits on: "ready <id>\n", or
//   "error <error as JSON>\n";
// - control requests, on the control socket: operations only the supervisor can carry
//   out because it owns the VM (a snapshot). A client that sends one instead of agent
//   frames gets one JSON line back and is disconnected. The agent never sees them.
//
// Errors cross the process boundary as JSON objects {"kind", "subject", "errno",
// "message"}, decoded into an Error of the same kind that prints the same.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "supervisor/state.h"
#include "vessel/error.h"

namespace vessel::supervisor {

// The longest start-up report: an error with the VM's diagnostics.
inline constexpr size_t kMaxReportSize = 1024 * 1024;
// A control request is one line of at most this many bytes, its '\n' included.
inline constexpr size_t kMaxControlRequestSize = 16 * 1024;
// A reply (an error's message is clipped to fit).
inline constexpr size_t kMaxControlReplySize = 64 * 1024;
// The longest snapshot directory a request may name, like PATH_MAX.
inline constexpr size_t kMaxControlPathSize = 4096;
// How many of a client's first bytes tell a control request from agent frames.
inline constexpr size_t kControlRequestSniffSize = 4;

// The start-up report.
std::string ReadyReport(const std::string& id);
std::string ErrorReport(const Error& error);
// The new sandbox's id from a "ready" report, or the error an "error" report carries.
// Anything else is kBackend.
[[nodiscard]] Result<std::string> ParseReport(std::string_view report);

// True when a client's first kControlRequestSniffSize bytes begin a control request: a
// line of JSON, which starts with '{' and holds no NUL byte, whereas agent frames start
// with a payload size of at most 256 KiB, whose fourth (little-endian) byte is 0.
bool StartsControlRequest(std::span<const uint8_t, kControlRequestSniffSize> first);

struct ControlRequest {
  enum class Op { kSnapshot };
  Op op = Op::kSnapshot;
  std::string dir;  // kSnapshot: where to save the sandbox; absolute
};

// The request as a line to send. kInvalidConfig when `dir` is not UTF-8 (JSON is text).
[[nodiscard]] Result<std::string> EncodeControlRequest(const ControlRequest& request);
// Checks one received line (its '\n' included, nothing after it) as untrusted input:
// kInvalidConfig with subject "control request" naming what is wrong.
[[nodiscard]] Result<ControlRequest> ParseControlRequest(std::string_view line);

// The supervisor's answer to a request, as a line to send.
std::string EncodeControlReply(const Result<void>& outcome);
// Success, or the error the supervisor reported. A reply that is not one is kBackend.
[[nodiscard]] Result<void> ParseControlReply(std::string_view line);

// Sends `request` to the supervisor of `sandbox` (which must be running) and waits for
// its answer, as long as the operation takes.
[[nodiscard]] Result<void> SendControlRequest(const SandboxRecord& sandbox,
                                              const ControlRequest& request);

}  // namespace vessel::supervisor
