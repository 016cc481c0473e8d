// The Model Context Protocol (revision 2025-11-25; 2025-06-18 and 2025-03-26 too): JSON-RPC
// 2.0 messages, whatever carries them (stdio for `vessel mcp`, streamable HTTP at /mcp on
// `vessel serve`). The server offers tools, and only tools: make, list and kill sandboxes,
// run commands and code in them (blocking, or started and polled), read and write their
// files, snapshot and fork them. docs/mcp.md lists each tool with its schemas.
//
// A session is one client's: the sandboxes its tools make are killed when it closes,
// unless a call asked for them to be kept. A tools/call may run long: the session takes
// other messages meanwhile (from other threads), and notifications/cancelled stops it
// (its command is killed and no answer is sent).
#pragma once

#include <atomic>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "server/registry.h"
#include "vessel/sandbox.h"

namespace vessel::server {

inline constexpr std::string_view kMcpLatestVersion = "2025-11-25";
// The largest JSON-RPC message taken, on either transport.
inline constexpr size_t kMaxMcpMessage = 16 * 1024 * 1024;
// What a command's output may fill in a tool's answer, per stream, by default and at most.
inline constexpr uint64_t kMcpDefaultOutputCap = 1024 * 1024;
inline constexpr uint64_t kMcpMaxOutputCap = 8 * 1024 * 1024;
// Commands started with sandbox_exec_start that one session may keep at once.
inline constexpr size_t kMcpMaxStartedCommands = 64;

// Whether the version is one this server speaks.
bool McpSupportsVersion(std::string_view version);

class McpSession {
 public:
  // Sends a message to the client (a progress notification) while a call runs.
  using Notify = std::function<void(const nlohmann::json&)>;

  explicit McpSession(Registry& registry) : registry_(registry) {}
  // Close().
  ~McpSession();
  McpSession(const McpSession&) = delete;
  McpSession& operator=(const McpSession&) = delete;

  // One message from the client. A request gets its response (a result or a JSON-RPC
  // error); a notification, or a request cancelled while it ran, gets nullopt. Thread
  // safe.
  std::optional<nlohmann::json> Handle(const nlohmann::json& message, const Notify& notify);

  // Stops the calls that run, and kills the sandboxes the session made (but those kept).
  void Close();

  // The JSON-RPC error response for a message that could not be parsed.
  static nlohmann::json ParseError(std::string_view why);

 private:
  struct Call;  // a tools/call that runs
  struct Started;  // a command of sandbox_exec_start
  using Json = nlohmann::json;
  // A tool's structured answer, or why it failed (told to the model as a tool error).
  using Outcome = std::expected<Json, std::string>;

  std::optional<nlohmann::json> Dispatch(const nlohmann::json& message, const Notify& notify);
  Outcome CallTool(const std::string& name, const Json& arguments, Call& call,
                   const Notify& notify);
  Outcome Exec(const Json& arguments, Call& call, const Notify& notify);
  Outcome RunCode(const Json& arguments, Call& call, const Notify& notify);
  Outcome ExecStart(const Json& arguments);
  Outcome ExecPoll(const Json& arguments, Call& call);
  Outcome ExecWriteStdin(const Json& arguments);
  Outcome ExecSignal(const Json& arguments);
  Outcome Create(const Json& arguments);
  Outcome List(const Json& arguments);
  Outcome Kill(const Json& arguments);
  Outcome Fork(const Json& arguments);
  Outcome Snapshot(const Json& arguments);
  Outcome FilesRead(const Json& arguments);
  Outcome FilesWrite(const Json& arguments);
  Outcome FilesList(const Json& arguments);
  Outcome FilesRemove(const Json& arguments);
  // A connection to the agent of the running sandbox `sandbox_id`.
  std::expected<std::shared_ptr<sandbox::Connection>, std::string> Agent(
      const std::string& sandbox_id);
  // Runs `command` to its end (or its cancellation) and answers with its output.
  Outcome RunToEnd(const std::string& sandbox_id, const Command& command, ExecOptions options,
                   Call& call, const Notify& notify);
  std::shared_ptr<Started> FindStarted(const std::string& exec_id);
  // Drops a started command that has ended (or broke).
  void Forget(const Started& started);
  void Own(const std::string& sandbox_id, bool keep);

  Registry& registry_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Call>> calls_;  // by the request id's JSON
  std::map<std::string, std::shared_ptr<Started>> started_;
  std::set<std::string> owned_;  // sandboxes to kill at Close
  uint64_t next_started_ = 1;
  bool closed_ = false;
};

}  // namespace vessel::server
