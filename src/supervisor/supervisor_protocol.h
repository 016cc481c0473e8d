// What the CLI's commands and a supervisor say to each other besides the agent protocol
// (docs/protocol.md, section 15):
//
// - the start-up report, on the pipe a starting command waits on: "ready <id>\n", or
//   "error <error as JSON>\n";
// - control requests, on the control socket: operations only the supervisor can carry
//   out because it owns the VM (a snapshot, a change of its egress policy). A client that
//   sends one instead of agent frames gets one JSON line back and is disconnected. The
//   agent never sees them.
//
// Errors cross the process boundary as JSON objects {"kind", "subject", "errno",
// "message"}, decoded into an Error of the same kind that prints the same.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "supervisor/state.h"
#include "vessel/error.h"
#include "vessel/sandbox.h"

namespace vessel::supervisor {

// The longest start-up report: an error with the VM's diagnostics.
inline constexpr size_t kMaxReportSize = 1024 * 1024;
// A network request adds and removes at most this many rules each, of at most this many
// bytes each: a whole allowlist (NetworkPolicy).
using vessel::kMaxNetworkRules;
inline constexpr size_t kMaxNetworkRuleSize = 1024;
// A reply carries at most this many recent refusals (NetworkStats keeps 32), each clipped
// to this many bytes.
inline constexpr size_t kMaxReportedRefusals = 32;
inline constexpr size_t kMaxRefusalSize = 1024;
// A control request is one line of at most this many bytes, its '\n' included: room for
// two full lists of rules, each quoted and separated.
inline constexpr size_t kMaxControlRequestSize =
    2 * kMaxNetworkRules * (kMaxNetworkRuleSize + 3) + 4096;
// A reply: room for kMaxNetworkRules rules of kMaxNetworkRuleSize bytes and the recent
// refusals, even escaped ("\u001b" for each byte); an error's message is clipped to
// kMaxMessageInReply.
inline constexpr size_t kMaxControlReplySize = 2 * 1024 * 1024;
inline constexpr size_t kMaxMessageInReply = 8 * 1024;
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
  enum class Op { kSnapshot, kNetwork };
  Op op = Op::kSnapshot;
  std::string dir;  // kSnapshot: where to save the sandbox; absolute
  // kNetwork: rules to add to the sandbox's allowlist and rules to take out of it, as a
  // user wrote them (the supervisor compares them in canonical spelling). Both empty: no
  // change, only the answer.
  std::vector<std::string> allow;
  std::vector<std::string> deny;
  // kNetwork: `allow` is the whole new allowlist (empty: none); `deny` must be empty.
  bool replace = false;
};

// A sandbox's egress as its supervisor sees it.
struct NetworkReport {
  NetworkPolicy policy;  // its rules in canonical spelling
  NetworkStats stats;
};

// What a request's success carries besides "ok".
struct ControlReply {
  std::optional<NetworkReport> network;  // kNetwork: the policy now in force, and counters
};

// The request as a line to send. kInvalidConfig when `dir` or a rule is not UTF-8 (JSON
// is text), or when there are more or longer rules than a request carries.
[[nodiscard]] Result<std::string> EncodeControlRequest(const ControlRequest& request);
// Checks one received line (its '\n' included, nothing after it) as untrusted input:
// kInvalidConfig with subject "control request" naming what is wrong.
[[nodiscard]] Result<ControlRequest> ParseControlRequest(std::string_view line);

// The supervisor's answer to a request, as a line to send. A reply that would exceed
// kMaxControlReplySize is sent as an error instead.
std::string EncodeControlReply(const Result<ControlReply>& outcome);
// What the supervisor reported: its reply's result, or its error. A reply that is not one
// (malformed, oversized, or a network object of the wrong shape or over the caps above) is
// kBackend.
[[nodiscard]] Result<ControlReply> ParseControlReply(std::string_view line);

// `report` as the JSON object a reply carries under "network" (docs/protocol.md, section
// 15); `indent` as nlohmann::json::dump takes it (-1: one line).
std::string EncodeNetworkReport(const NetworkReport& report, int indent = -1);

// Sends `request` to the supervisor of `sandbox` (which must be running) and waits for
// its answer, as long as the operation takes.
[[nodiscard]] Result<ControlReply> SendControlRequest(const SandboxRecord& sandbox,
                                                      const ControlRequest& request);

}  // namespace vessel::supervisor
