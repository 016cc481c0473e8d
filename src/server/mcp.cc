#include "server/mcp.h"

#include <fmt/format.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <expected>

#include "sandbox/egress.h"
#include "sandbox/files.h"
#include "sandbox/process.h"
#include "server/data_plane.h"

namespace vessel::server {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr std::string_view kSupportedVersions[] = {"2025-11-25", "2025-06-18", "2025-03-26"};
// JSON-RPC error codes.
constexpr int kParseError = -32700;
constexpr int kInvalidRequest = -32600;
constexpr int kMethodNotFound = -32601;
constexpr int kInvalidParams = -32602;
constexpr int kInternalError = -32603;
// A tool's answer, or why it failed: a failure is a result with isError (MCP reports tool
// errors to the model, not as protocol errors).
using ToolResult = std::expected<json, std::string>;
// How often a running command is looked at: for cancellation, and progress.
constexpr auto kTick = 250ms;

json ErrorResponse(const json& id, int code, std::string message) {
  return {
      {"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", std::move(message)}}}};
}

// Reads a tool's arguments; the first one that is wrong is remembered, the rest then read
// as their defaults.
class Args {
 public:
  explicit Args(const json& arguments) : args_(arguments) {
    if (!args_.is_object()) error_ = "the arguments must be an object";
  }
  [[nodiscard]] bool failed() const { return !error_.empty(); }
  [[nodiscard]] const std::string& error() const { return error_; }

  std::string String(const char* field) {
    auto value = Optional(field);
    if (!value) Fail(fmt::format("'{}' is required", field));
    return value.value_or("");
  }
  std::optional<std::string> Optional(const char* field) {
    const json* v = Find(field);
    if (!v) return std::nullopt;
    if (!v->is_string()) return Fail(fmt::format("'{}' must be a string", field)), std::nullopt;
    return v->get<std::string>();
  }
  int64_t Int(const char* field, int64_t min, int64_t max, int64_t fallback) {
    const json* v = Find(field);
    if (!v) return fallback;
    if (!v->is_number_integer() || v->get<int64_t>() < min ||
        (v->is_number_unsigned() ? v->get<uint64_t>() > static_cast<uint64_t>(max)
                                 : v->get<int64_t>() > max)) {
      Fail(fmt::format("'{}' must be an integer from {} to {}", field, min, max));
      return fallback;
    }
    return v->get<int64_t>();
  }
  bool Bool(const char* field, bool fallback) {
    const json* v = Find(field);
    if (!v) return fallback;
    if (!v->is_boolean()) return Fail(fmt::format("'{}' must be true or false", field)), fallback;
    return v->get<bool>();
  }
  // An egress allowlist (docs/egress.md), checked and in canonical spelling; unset when
  // the field is absent.
  std::optional<std::vector<std::string>> AllowList(const char* field) {
    const json* v = Find(field);
    if (!v) return std::nullopt;
    std::vector<std::string> rules;
    if (!v->is_array() || v->size() > kMaxNetworkRules) {
      return Fail(fmt::format("'{}' must be a list of at most {} host rules", field,
                              kMaxNetworkRules)),
             std::nullopt;
    }
    for (const json& rule : *v) {
      if (!rule.is_string()) return Fail(fmt::format("'{}' holds strings", field)), std::nullopt;
      rules.push_back(rule.get<std::string>());
    }
    auto checked = sandbox::CheckNetworkPolicy({.allow = std::move(rules)});
    if (!checked)
      return Fail(fmt::format("'{}': {}", field, checked.error().message())), std::nullopt;
    return std::move(checked->policy.allow);
  }
  std::map<std::string, std::string> Env(const char* field) {
    std::map<std::string, std::string> out;
    const json* v = Find(field);
    if (!v) return out;
    if (!v->is_object()) return Fail(fmt::format("'{}' must map names to strings", field)), out;
    for (const auto& [key, value] : v->items()) {
      if (!value.is_string() || key.empty() || key.find('=') != std::string::npos) {
        Fail(fmt::format("'{}' must map names (without '=') to strings", field));
        return {};
      }
      out.emplace(key, value.get<std::string>());
    }
    return out;
  }

 private:
  const json* Find(const char* field) {
    if (failed() || !args_.contains(field) || args_.at(field).is_null()) return nullptr;
    return &args_.at(field);
  }
  void Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
  }
  const json& args_;
  std::string error_;
};

bool IsUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// The JSON Schema pieces the tools are made of.
json Str(std::string description) { return {{"type", "string"}, {"description", description}}; }
json Int(std::string description, int64_t min, int64_t max) {
  return {{"type", "integer"}, {"minimum", min}, {"maximum", max}, {"description", description}};
}
json Bool(std::string description) { return {{"type", "boolean"}, {"description", description}}; }
json AllowNet() {
  return {{"type", "array"},
          {"items", {{"type", "string"}}},
          {"maxItems", kMaxNetworkRules},
          {"description",
           "hosts the sandbox may reach over HTTP(S): example.com, *.example.com (names below "
           "it) or an address, each with an optional :PORT (default 80 and 443). Default: none, "
           "the sandbox has no network"}};
}
json EnvMap() {
  return {{"type", "object"},
          {"additionalProperties", {{"type", "string"}}},
          {"description", "environment variables, NAME: value"}};
}
json Object(json properties, std::vector<std::string> required = {}) {
  json schema = {{"type", "object"}, {"properties", std::move(properties)}};
  if (!required.empty()) schema["required"] = required;
  return schema;
}
json Nullable(json schema) {
  schema["type"] = json::array({schema["type"], "null"});
  return schema;
}

json CommandOutputSchema() {
  return Object(
      {{"exit_code", Nullable(Int("its exit code; null when a signal ended it", 0, 255))},
       {"signal", Nullable(Int("the signal that ended it, if one did", 1, 64))},
       {"timed_out", Bool("true when its timeout passed and it was killed")},
       {"stdout", Str("what it wrote to stdout (UTF-8, invalid bytes replaced)")},
       {"stderr", Str("what it wrote to stderr")},
       {"stdout_truncated", Bool("true when stdout went past the output cap")},
       {"stderr_truncated", Bool("true when stderr went past the output cap")}},
      {"exit_code", "signal", "timed_out", "stdout", "stderr", "stdout_truncated",
       "stderr_truncated"});
}

json Annotations(bool read_only, bool destructive, bool idempotent) {
  return {{"readOnlyHint", read_only},
          {"destructiveHint", destructive},
          {"idempotentHint", idempotent},
          {"openWorldHint", false}};
}

json Tool(std::string name, std::string title, std::string description, json input, json output,
          json annotations) {
  annotations["title"] = title;
  return {{"name", std::move(name)},
          {"title", std::move(title)},
          {"description", std::move(description)},
          {"inputSchema", std::move(input)},
          {"outputSchema", std::move(output)},
          {"annotations", std::move(annotations)}};
}

const json& Tools() {
  static const json tools = [] {
    json id = Str("the sandbox's id (sandbox_create, sandbox_list)");
    json timeout = Int("seconds before the command is killed", 1, 3600);
    json cap = Int("bytes of each of stdout and stderr kept (default 1 MiB)", 1,
                   static_cast<int64_t>(kMcpMaxOutputCap));
    json exec_id = Str("the command's id, from sandbox_exec_start");
    json out = json::array();
    out.push_back(Tool(
        "run_code", "Run code",
        "Runs Python or shell code in a fresh sandbox (removed afterwards) or in the sandbox "
        "given, and returns its output and exit code. The code is read from stdin: a Python "
        "program runs as `python3 -`, shell as `sh -s`.",
        Object({{"code", Str("the program")},
                {"language",
                 {{"type", "string"}, {"enum", {"python", "shell"}}, {"default", "python"}}},
                {"sandbox_id", Str("run in this sandbox instead of a fresh one")},
                {"template", Str("the fresh sandbox's template (default base: Python)")},
                {"allow_net", AllowNet()},
                {"timeout_seconds", timeout},
                {"output_cap_bytes", cap}},
               {"code"}),
        [&] {
          json schema = CommandOutputSchema();
          schema["properties"]["sandbox_id"] = Str("where it ran");
          return schema;
        }(),
        Annotations(false, false, false)));
    out.push_back(
        Tool("sandbox_create", "Create a sandbox",
             "Boots a sandbox (a microVM) from a template: an image such as python, minimal, base, "
             "or a snapshot. It is removed when this session ends, unless keep is true, and at its "
             "timeout.",
             Object({{"template", Str("default base: Debian with Python where the image exists")},
                     {"timeout_seconds", Int("seconds it lives (default 300)", 1, 86400)},
                     {"env", EnvMap()},
                     {"allow_net", AllowNet()},
                     {"keep", Bool("outlive this session")}}),
             Object({{"sandbox_id", Str("its id")}, {"template", Str("its template")}},
                    {"sandbox_id", "template"}),
             Annotations(false, false, false)));
    out.push_back(Tool(
        "sandbox_list", "List sandboxes", "Lists the sandboxes: running, paused or failed.",
        Object(json::object()),
        Object({{"sandboxes",
                 {{"type", "array"},
                  {"items", Object({{"sandbox_id", Str("its id")},
                                    {"template", Str("its template")},
                                    {"state", Str("running, paused or failed")},
                                    {"owned", Bool("made by this session")}},
                                   {"sandbox_id", "template", "state", "owned"})}}}},
               {"sandboxes"}),
        Annotations(true, false, true)));
    out.push_back(Tool("sandbox_kill", "Remove a sandbox",
                       "Stops a sandbox and removes it with everything in it.",
                       Object({{"sandbox_id", id}}, {"sandbox_id"}),
                       Object({{"killed", Bool("false when there was no such sandbox")}}, {"killed"}),
                       Annotations(false, true, true)));
    out.push_back(Tool(
        "sandbox_exec", "Run a command",
        "Runs a shell command in a sandbox and waits for it: its exit code and output.",
        Object({{"sandbox_id", id},
                {"command", Str("run with sh -c")},
                {"cwd", Str("its working directory (default /)")},
                {"env", EnvMap()},
                {"stdin", Str("bytes for its stdin (UTF-8)")},
                {"timeout_seconds", timeout},
                {"output_cap_bytes", cap}},
               {"sandbox_id", "command"}),
        CommandOutputSchema(), Annotations(false, true, false)));
    out.push_back(Tool(
        "sandbox_exec_start", "Start a command",
        "Starts a long-running shell command and returns at once; read its output with "
        "sandbox_exec_poll, feed it with sandbox_exec_write_stdin, stop it with "
        "sandbox_exec_signal.",
        Object({{"sandbox_id", id},
                {"command", Str("run with sh -c")},
                {"cwd", Str("its working directory")},
                {"env", EnvMap()},
                {"timeout_seconds", Int("seconds before it is killed (default: none)", 1, 86400)}},
               {"sandbox_id", "command"}),
        Object({{"exec_id", exec_id}}, {"exec_id"}), Annotations(false, true, false)));
    out.push_back(Tool(
        "sandbox_exec_poll", "Read a started command",
        "Returns what a started command wrote since the last poll, waiting up to wait_seconds "
        "for something new, and its result once it has ended.",
        Object({{"exec_id", exec_id},
                {"wait_seconds", Int("how long to wait for output or the end", 0, 60)},
                {"output_cap_bytes", cap}},
               {"exec_id"}),
        [] {
          json schema = CommandOutputSchema();
          schema["properties"]["running"] = Bool("false once it has ended");
          schema["required"].push_back("running");
          return schema;
        }(),
        Annotations(false, false, false)));
    out.push_back(Tool("sandbox_exec_write_stdin", "Write to a started command",
                       "Writes to a started command's stdin; close ends its input.",
                       Object({{"exec_id", exec_id},
                               {"data", Str("the bytes (UTF-8)")},
                               {"close", Bool("close its stdin afterwards")}},
                              {"exec_id"}),
                       Object({{"written", Int("bytes written", 0, INT32_MAX)}}, {"written"}),
                       Annotations(false, false, false)));
    out.push_back(Tool(
        "sandbox_exec_signal", "Signal a started command",
        "Sends a signal to a started command's process group.",
        Object({{"exec_id", exec_id},
                {"signal",
                 {{"type", "string"}, {"enum", {"SIGINT", "SIGTERM", "SIGKILL", "SIGHUP"}}}}},
               {"exec_id", "signal"}),
        Object({{"sent", Bool("false when it had ended")}}, {"sent"}), Annotations(false, true, true)));
    out.push_back(Tool(
        "files_read", "Read a file",
        "Reads a file in a sandbox: as text when it is UTF-8, else base64.",
        Object({{"sandbox_id", id},
                {"path", Str("absolute, or from /")},
                {"max_bytes", Int("bytes read at most (default 1 MiB)", 1,
                                  static_cast<int64_t>(kMcpMaxOutputCap))}},
               {"sandbox_id", "path"}),
        Object({{"content", Str("the bytes read")},
                {"encoding", {{"type", "string"}, {"enum", {"utf-8", "base64"}}}},
                {"size", Int("the file's size", 0, INT64_MAX)},
                {"truncated", Bool("true when the file is longer than max_bytes")}},
               {"content", "encoding", "size", "truncated"}),
        Annotations(true, false, true)));
    out.push_back(Tool(
        "files_write", "Write a file",
        "Writes a whole file in a sandbox, making its parent directories.",
        Object({{"sandbox_id", id},
                {"path", Str("absolute, or from /")},
                {"content", Str("the file's bytes")},
                {"encoding", {{"type", "string"}, {"enum", {"utf-8", "base64"}}, {"default", "utf-8"}}}},
               {"sandbox_id", "path", "content"}),
        Object({{"path", Str("the file")}, {"size", Int("bytes written", 0, INT64_MAX)}},
               {"path", "size"}),
        Annotations(false, true, true)));
    out.push_back(Tool(
        "files_list", "List a directory", "Lists a directory in a sandbox.",
        Object({{"sandbox_id", id}, {"path", Str("absolute, or from /")}}, {"sandbox_id", "path"}),
        Object({{"entries",
                 {{"type", "array"},
                  {"items", Object({{"name", Str("its name")},
                                    {"type", {{"type", "string"}, {"enum", {"file", "dir", "symlink", "other"}}}},
                                    {"size", Int("bytes", 0, INT64_MAX)}},
                                   {"name", "type", "size"})}}}},
               {"entries"}),
        Annotations(true, false, true)));
    out.push_back(Tool("files_remove", "Remove a file",
                       "Removes a file, or a directory with everything in it, in a sandbox.",
                       Object({{"sandbox_id", id}, {"path", Str("absolute, or from /")}},
                              {"sandbox_id", "path"}),
                       Object({{"removed", Bool("true")}}, {"removed"}),
                       Annotations(false, true, true)));
    out.push_back(Tool(
        "snapshot_create", "Snapshot a sandbox",
        "Saves a running sandbox (memory, files) as a template; it runs on. sandbox_create "
        "with the snapshot's id or name starts new sandboxes from it.",
        Object({{"sandbox_id", id}, {"name", Str("a name for the template")}}, {"sandbox_id"}),
        Object({{"snapshot_id", Str("a template id")},
                {"names", {{"type", "array"}, {"items", {{"type", "string"}}}}}},
               {"snapshot_id", "names"}),
        Annotations(false, false, false)));
    out.push_back(Tool(
        "sandbox_fork", "Fork a sandbox",
        "Makes count copies of a running sandbox as it is now, each independent of it.",
        Object({{"sandbox_id", id},
                {"count", Int("how many copies", 1, kMaxForks)},
                {"keep", Bool("the copies outlive this session")}},
               {"sandbox_id"}),
        Object({{"sandbox_ids", {{"type", "array"}, {"items", {{"type", "string"}}}}}},
               {"sandbox_ids"}),
        Annotations(false, false, false)));
    return out;
  }();
  return tools;
}

std::string Text(std::string_view bytes) {
  if (IsUtf8(bytes)) return std::string(bytes);
  std::string out;
  for (char c : bytes) out += static_cast<unsigned char>(c) < 0x80 ? std::string(1, c) : "\xef\xbf\xbd";
  return out;
}

json CommandJson(const std::string& out, const std::string& err, bool out_truncated,
                 bool err_truncated, const std::optional<ProcessEvent>& end) {
  json result = {{"exit_code", nullptr},
                 {"signal", nullptr},
                 {"timed_out", false},
                 {"stdout", Text(out)},
                 {"stderr", Text(err)},
                 {"stdout_truncated", out_truncated},
                 {"stderr_truncated", err_truncated}};
  if (end) {
    if (end->kind == ProcessEvent::Kind::kExited) result["exit_code"] = end->code;
    if (end->kind != ProcessEvent::Kind::kExited) result["signal"] = end->code;
    result["timed_out"] = end->kind == ProcessEvent::Kind::kTimedOut;
  }
  return result;
}

std::string Message(const Error& error) { return error.ToString(); }

}  // namespace

// A tools/call that runs: cancellation reaches it here.
struct McpSession::Call {
  std::atomic<bool> cancelled{false};
};

// A command of sandbox_exec_start, between polls.
struct McpSession::Started {
  std::mutex mutex;  // one poll at a time
  std::unique_ptr<Process> process;
  std::shared_ptr<sandbox::Connection> connection;
  std::string id;
  // Output a poll read beyond its cap, for the next; the end, once that is told.
  std::string pending_out;
  std::string pending_err;
  std::optional<ProcessEvent> held_end;
};

bool McpSupportsVersion(std::string_view version) {
  return std::find(std::begin(kSupportedVersions), std::end(kSupportedVersions), version) !=
         std::end(kSupportedVersions);
}

json McpSession::ParseError(std::string_view why) {
  return ErrorResponse(nullptr, kParseError, fmt::format("parse error: {}", why));
}

McpSession::~McpSession() { Close(); }

void McpSession::Close() {
  std::set<std::string> owned;
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    for (auto& [id, call] : calls_) call->cancelled = true;
    for (auto& [id, started] : started_) {
      (void)started->process->Kill();
      started->connection->Shutdown(Error::Backend("the session closed"));
    }
    started_.clear();
    owned.swap(owned_);
  }
  for (const auto& id : owned) (void)registry_.Kill(id);
}

void McpSession::Own(const std::string& sandbox_id, bool keep) {
  if (keep) return;
  {
    std::lock_guard lock(mutex_);
    if (!closed_) {
      owned_.insert(sandbox_id);
      return;
    }
  }
  (void)registry_.Kill(sandbox_id);  // made by a call that outran the session's end
}

std::optional<json> McpSession::Handle(const json& message, const Notify& notify) {
  // Each field a message gives is checked before it is used; should one slip through, the
  // client gets an error, not the end of the server.
  try {
    return Dispatch(message, notify);
  } catch (const json::exception& e) {
    json id = message.is_object() && message.contains("id") ? message["id"] : json();
    return ErrorResponse(id.is_string() || id.is_number_integer() ? id : json(), kInternalError,
                         fmt::format("the message could not be handled: {}", e.what()));
  }
}

std::optional<json> McpSession::Dispatch(const json& message, const Notify& notify) {
  if (!message.is_object() || !message.contains("jsonrpc") || message["jsonrpc"] != "2.0") {
    return ErrorResponse(nullptr, kInvalidRequest, "not a JSON-RPC 2.0 message");
  }
  const bool request = message.contains("id");
  const json id = request ? message["id"] : json();
  if (request && !id.is_string() && !id.is_number_integer()) {
    return ErrorResponse(nullptr, kInvalidRequest, "the id must be a string or an integer");
  }
  if (!message.contains("method")) return std::nullopt;  // a response to us: none is asked for
  if (!message["method"].is_string()) {
    return request ? std::optional(ErrorResponse(id, kInvalidRequest, "the method must be a string"))
                   : std::nullopt;
  }
  const std::string method = message["method"];
  const json params = message.value("params", json::object());
  auto reply = [&](json result) -> std::optional<json> {
    return json{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}};
  };

  if (!request) {
    if (method == "notifications/cancelled" && params.is_object() && params.contains("requestId")) {
      std::lock_guard lock(mutex_);
      auto it = calls_.find(params["requestId"].dump());
      if (it != calls_.end()) it->second->cancelled = true;
    }
    return std::nullopt;  // notifications/initialized, and any other, need nothing
  }
  if (method == "initialize") {
    std::string asked;
    if (params.is_object() && params.contains("protocolVersion") &&
        params["protocolVersion"].is_string()) {
      asked = params["protocolVersion"];
    }
    return reply({{"protocolVersion",
                   McpSupportsVersion(asked) ? asked : std::string(kMcpLatestVersion)},
                  {"capabilities", {{"tools", {{"listChanged", false}}}}},
                  {"serverInfo",
                   {{"name", "vessel"}, {"title", "Vessel sandboxes"}, {"version", "0.1.0"}}},
                  {"instructions",
                   "Each sandbox is a microVM. run_code runs code in a fresh one; "
                   "sandbox_create makes one to keep using, removed when this session ends "
                   "unless keep is true."}});
  }
  if (method == "ping") return reply(json::object());
  if (method == "tools/list") return reply({{"tools", Tools()}});
  if (method != "tools/call") {
    return ErrorResponse(id, kMethodNotFound, fmt::format("method '{}' is not served", method));
  }
  if (!params.is_object() || !params.contains("name") || !params["name"].is_string()) {
    return ErrorResponse(id, kInvalidParams, "tools/call needs a tool name");
  }
  const std::string name = params["name"];
  const json& tools = Tools();
  if (std::none_of(tools.begin(), tools.end(), [&](const json& t) { return t["name"] == name; })) {
    return ErrorResponse(id, kInvalidParams, fmt::format("unknown tool '{}'", name));
  }
  json arguments = params.value("arguments", json::object());
  json progress_token;
  if (params.contains("_meta") && params["_meta"].is_object()) {
    progress_token = params["_meta"].value("progressToken", json());
  }
  auto call = std::make_shared<Call>();
  const std::string key = id.dump();
  {
    std::lock_guard lock(mutex_);
    if (closed_) return ErrorResponse(id, kInvalidRequest, "the session is closed");
    if (calls_.contains(key)) {
      return ErrorResponse(id, kInvalidRequest, "a request with this id is running");
    }
    calls_[key] = call;
  }
  Notify progress = [&](const json& update) {
    if (progress_token.is_null()) return;
    json params_out = update;
    params_out["progressToken"] = progress_token;
    notify({{"jsonrpc", "2.0"}, {"method", "notifications/progress"}, {"params", params_out}});
  };
  auto outcome = CallTool(name, arguments, *call, progress);
  {
    std::lock_guard lock(mutex_);
    calls_.erase(key);
  }
  if (call->cancelled) return std::nullopt;  // the client has given up on it
  if (!outcome) {
    return reply({{"content", {{{"type", "text"}, {"text", outcome.error()}}}}, {"isError", true}});
  }
  return reply({{"content", {{{"type", "text"}, {"text", outcome->dump()}}}},
                {"structuredContent", *outcome},
                {"isError", false}});
}

McpSession::Outcome McpSession::CallTool(const std::string& name, const json& arguments,
                                         Call& call, const Notify& notify) {
  if (name == "run_code") return RunCode(arguments, call, notify);
  if (name == "sandbox_exec") return Exec(arguments, call, notify);
  if (name == "sandbox_exec_start") return ExecStart(arguments);
  if (name == "sandbox_exec_poll") return ExecPoll(arguments, call);
  if (name == "sandbox_exec_write_stdin") return ExecWriteStdin(arguments);
  if (name == "sandbox_exec_signal") return ExecSignal(arguments);
  if (name == "sandbox_create") return Create(arguments);
  if (name == "sandbox_list") return List(arguments);
  if (name == "sandbox_kill") return Kill(arguments);
  if (name == "sandbox_fork") return Fork(arguments);
  if (name == "snapshot_create") return Snapshot(arguments);
  if (name == "files_read") return FilesRead(arguments);
  if (name == "files_write") return FilesWrite(arguments);
  if (name == "files_list") return FilesList(arguments);
  return FilesRemove(arguments);
}

std::expected<std::shared_ptr<sandbox::Connection>, std::string> McpSession::Agent(
    const std::string& sandbox_id) {
  auto sandbox = registry_.Get(sandbox_id);
  if (!sandbox) return std::unexpected(Message(sandbox.error()));
  if (!*sandbox) return std::unexpected(fmt::format("no sandbox '{}'", sandbox_id));
  if ((*sandbox)->state != "running") {
    return std::unexpected(fmt::format("sandbox '{}' is {}", sandbox_id, (*sandbox)->state));
  }
  auto connection = registry_.Connect(sandbox_id);
  if (!connection) return std::unexpected(Message(connection.error()));
  return *connection;
}

McpSession::Outcome McpSession::RunToEnd(const std::string& sandbox_id, const Command& command,
                                         ExecOptions options, Call& call, const Notify& notify) {
  auto agent = Agent(sandbox_id);
  if (!agent) return std::unexpected(agent.error());
  auto done = [&] { (*agent)->Shutdown(Error::Backend("the command ended")); };
  if (auto sandbox = registry_.Get(sandbox_id); sandbox && *sandbox) {
    // The sandbox's own environment under the call's.
    std::vector<std::string> env;
    for (const auto& [key, value] : (*sandbox)->attributes.env_vars) {
      bool overridden = std::any_of(options.env.begin(), options.env.end(), [&](const auto& e) {
        return e.starts_with(key + "=");
      });
      if (!overridden) env.push_back(key + "=" + value);
    }
    options.env.insert(options.env.end(), env.begin(), env.end());
  }
  const uint64_t cap = options.output_cap;
  auto started = sandbox::StartProcess(*agent, command, options, /*close_stdin=*/true);
  if (!started) return done(), std::unexpected(Message(started.error()));
  std::unique_ptr<Process> process = std::move(*started);
  std::string out, err;
  bool out_truncated = false, err_truncated = false;
  const auto begun = std::chrono::steady_clock::now();
  auto last_progress = begun;
  for (;;) {
    if (call.cancelled) {
      (void)process->Kill();
      return done(), std::unexpected("cancelled");
    }
    auto event = process->NextEvent(kTick);
    auto now = std::chrono::steady_clock::now();
    if (now - last_progress >= 1s) {
      last_progress = now;
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - begun).count();
      notify({{"progress", ms},
              {"message", fmt::format("running for {} ms; {} bytes of output", ms,
                                      out.size() + err.size())}});
    }
    if (!event) {
      if (event.error().timed_out()) continue;
      return done(), std::unexpected(Message(event.error()));
    }
    if (!*event) return done(), std::unexpected("the command's stream ended without its result");
    const ProcessEvent& e = **event;
    if (e.final()) {
      done();
      return CommandJson(out, err, out_truncated || e.stdout_truncated,
                         err_truncated || e.stderr_truncated, e);
    }
    std::string& sink = e.kind == ProcessEvent::Kind::kStdout ? out : err;
    bool& truncated = e.kind == ProcessEvent::Kind::kStdout ? out_truncated : err_truncated;
    size_t room = cap - std::min<uint64_t>(cap, sink.size());
    sink.append(e.data, 0, std::min(room, e.data.size()));
    if (e.data.size() > room) truncated = true;
  }
}

McpSession::Outcome McpSession::Exec(const json& arguments, Call& call, const Notify& notify) {
  Args args(arguments);
  std::string id = args.String("sandbox_id");
  std::string command = args.String("command");
  ExecOptions options;
  options.cwd = args.Optional("cwd").value_or("");
  for (const auto& [key, value] : args.Env("env")) options.env.push_back(key + "=" + value);
  options.stdin_data = args.Optional("stdin");
  options.timeout = std::chrono::seconds(args.Int("timeout_seconds", 1, 3600, 60));
  options.output_cap = static_cast<uint64_t>(args.Int(
      "output_cap_bytes", 1, static_cast<int64_t>(kMcpMaxOutputCap), kMcpDefaultOutputCap));
  if (args.failed()) return std::unexpected(args.error());
  return RunToEnd(id, Command::Shell(command), std::move(options), call, notify);
}

McpSession::Outcome McpSession::RunCode(const json& arguments, Call& call, const Notify& notify) {
  Args args(arguments);
  std::string code = args.String("code");
  std::string language = args.Optional("language").value_or("python");
  auto given = args.Optional("sandbox_id");
  std::string template_id = args.Optional("template").value_or("base");
  int64_t timeout = args.Int("timeout_seconds", 1, 3600, 60);
  auto allow_net = args.AllowList("allow_net");
  auto cap = static_cast<uint64_t>(args.Int(
      "output_cap_bytes", 1, static_cast<int64_t>(kMcpMaxOutputCap), kMcpDefaultOutputCap));
  if (args.failed()) return std::unexpected(args.error());
  if (language != "python" && language != "shell") {
    return std::unexpected("'language' is python or shell");
  }
  if (given && allow_net) {
    return std::unexpected("'allow_net' is for a fresh sandbox: a given one keeps its own");
  }
  std::string id;
  if (given) {
    id = *given;
  } else {
    auto made = registry_.Create(NewSandbox{.template_id = template_id,
                                            .timeout = std::chrono::seconds(timeout + 60),
                                            .allow_out = std::move(allow_net)});
    if (!made) return std::unexpected(Message(made.error()));
    id = made->id;
  }
  ExecOptions options;
  options.stdin_data = std::move(code);
  options.timeout = std::chrono::seconds(timeout);
  options.output_cap = cap;
  Command command = language == "python" ? Command::Argv({"python3", "-"})
                                         : Command::Argv({"/bin/sh", "-s"});
  auto result = RunToEnd(id, command, std::move(options), call, notify);
  if (!given) (void)registry_.Kill(id);
  if (result) (*result)["sandbox_id"] = id;
  return result;
}

McpSession::Outcome McpSession::ExecStart(const json& arguments) {
  Args args(arguments);
  std::string id = args.String("sandbox_id");
  std::string command = args.String("command");
  ExecOptions options;
  options.cwd = args.Optional("cwd").value_or("");
  for (const auto& [key, value] : args.Env("env")) options.env.push_back(key + "=" + value);
  int64_t timeout = args.Int("timeout_seconds", 1, 86400, 0);
  if (args.failed()) return std::unexpected(args.error());
  if (timeout > 0) options.timeout = std::chrono::seconds(timeout);
  options.stdin_data = std::string();  // open, for sandbox_exec_write_stdin
  {
    std::lock_guard lock(mutex_);
    if (started_.size() >= kMcpMaxStartedCommands) {
      return std::unexpected(fmt::format(
          "{} started commands are open in this session: poll them to their end or kill them",
          kMcpMaxStartedCommands));
    }
  }
  auto agent = Agent(id);
  if (!agent) return std::unexpected(agent.error());
  auto process = sandbox::StartProcess(*agent, Command::Shell(command), options, false);
  if (!process) {
    (*agent)->Shutdown(Error::Backend("the command did not start"));
    return std::unexpected(Message(process.error()));
  }
  auto started = std::make_shared<Started>();
  started->process = std::move(*process);
  started->connection = *agent;
  std::lock_guard lock(mutex_);
  started->id = fmt::format("exec-{}", next_started_++);
  started_[started->id] = started;
  return json{{"exec_id", started->id}};
}

std::shared_ptr<McpSession::Started> McpSession::FindStarted(const std::string& exec_id) {
  std::lock_guard lock(mutex_);
  auto it = started_.find(exec_id);
  return it == started_.end() ? nullptr : it->second;
}

void McpSession::Forget(const Started& started) {
  started.connection->Shutdown(Error::Backend("the command ended"));
  std::lock_guard lock(mutex_);
  started_.erase(started.id);
}

McpSession::Outcome McpSession::ExecPoll(const json& arguments, Call& call) {
  Args args(arguments);
  std::string exec_id = args.String("exec_id");
  int64_t wait = args.Int("wait_seconds", 0, 60, 0);
  auto cap = static_cast<uint64_t>(args.Int(
      "output_cap_bytes", 1, static_cast<int64_t>(kMcpMaxOutputCap), kMcpDefaultOutputCap));
  if (args.failed()) return std::unexpected(args.error());
  auto started = FindStarted(exec_id);
  if (!started) return std::unexpected(fmt::format("no started command '{}'", exec_id));
  std::lock_guard poll(started->mutex);
  // What an earlier poll could not fit comes first.
  std::string out = std::exchange(started->pending_out, {});
  std::string err = std::exchange(started->pending_err, {});
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait);
  std::optional<ProcessEvent> end;
  while (out.size() < cap && err.size() < cap && !call.cancelled) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    // Wait only while nothing has come; then take what is there already.
    bool waiting = out.empty() && err.empty() && left > 0ms;
    auto event = started->process->NextEvent(waiting ? std::min<std::chrono::milliseconds>(left, kTick)
                                                     : 0ms);
    if (!event) {
      if (event.error().timed_out() && waiting) continue;
      if (event.error().timed_out()) break;
      Forget(*started);
      return std::unexpected(Message(event.error()));
    }
    if (!*event) break;
    if ((*event)->final()) {
      end = **event;
      break;
    }
    ((*event)->kind == ProcessEvent::Kind::kStdout ? out : err) += (*event)->data;
  }
  bool out_more = out.size() > cap, err_more = err.size() > cap;
  if (out_more) started->pending_out = out.substr(cap), out.resize(cap);
  if (err_more) started->pending_err = err.substr(cap), err.resize(cap);
  // An end is told once everything before it has been.
  bool ended = end && !out_more && !err_more;
  if (end && !ended) started->held_end = end;
  if (!end && started->held_end && started->pending_out.empty() && started->pending_err.empty()) {
    end = std::exchange(started->held_end, std::nullopt);
    ended = true;
  }
  json result = CommandJson(out, err, out_more, err_more, ended ? end : std::nullopt);
  result["running"] = !ended;
  if (ended) Forget(*started);
  return result;
}

McpSession::Outcome McpSession::ExecWriteStdin(const json& arguments) {
  Args args(arguments);
  std::string exec_id = args.String("exec_id");
  std::string data = args.Optional("data").value_or("");
  bool close = args.Bool("close", false);
  if (args.failed()) return std::unexpected(args.error());
  auto started = FindStarted(exec_id);
  if (!started) return std::unexpected(fmt::format("no started command '{}'", exec_id));
  if (!data.empty()) {
    if (auto written = started->process->WriteStdin(data); !written) {
      return std::unexpected(Message(written.error()));
    }
  }
  if (close) {
    if (auto closed = started->process->CloseStdin(); !closed) {
      return std::unexpected(Message(closed.error()));
    }
  }
  return json{{"written", data.size()}};
}

McpSession::Outcome McpSession::ExecSignal(const json& arguments) {
  Args args(arguments);
  std::string exec_id = args.String("exec_id");
  std::string name = args.String("signal");
  if (args.failed()) return std::unexpected(args.error());
  const std::map<std::string, int> signals = {
      {"SIGINT", SIGINT}, {"SIGTERM", SIGTERM}, {"SIGKILL", SIGKILL}, {"SIGHUP", SIGHUP}};
  auto number = signals.find(name);
  if (number == signals.end()) return std::unexpected("'signal' is SIGINT, SIGTERM, SIGKILL or SIGHUP");
  auto started = FindStarted(exec_id);
  if (!started) return json{{"sent", false}};
  if (auto sent = started->process->Signal(number->second); !sent) {
    return std::unexpected(Message(sent.error()));
  }
  return json{{"sent", true}};
}

McpSession::Outcome McpSession::Create(const json& arguments) {
  Args args(arguments);
  NewSandbox wanted;
  wanted.template_id = args.Optional("template").value_or("base");
  wanted.timeout = std::chrono::seconds(args.Int("timeout_seconds", 1, 86400, 300));
  wanted.env_vars = args.Env("env");
  wanted.allow_out = args.AllowList("allow_net");
  bool keep = args.Bool("keep", false);
  if (args.failed()) return std::unexpected(args.error());
  auto made = registry_.Create(wanted);
  if (!made) return std::unexpected(Message(made.error()));
  Own(made->id, keep);
  return json{{"sandbox_id", made->id}, {"template", made->attributes.template_id}};
}

McpSession::Outcome McpSession::List(const json& arguments) {
  if (Args args(arguments); args.failed()) return std::unexpected(args.error());
  auto sandboxes = registry_.List();
  if (!sandboxes) return std::unexpected(Message(sandboxes.error()));
  json out = json::array();
  std::lock_guard lock(mutex_);
  for (const auto& s : *sandboxes) {
    out.push_back({{"sandbox_id", s.id},
                   {"template", s.attributes.template_id},
                   {"state", s.state},
                   {"owned", owned_.contains(s.id)}});
  }
  return json{{"sandboxes", out}};
}

McpSession::Outcome McpSession::Kill(const json& arguments) {
  Args args(arguments);
  std::string id = args.String("sandbox_id");
  if (args.failed()) return std::unexpected(args.error());
  auto killed = registry_.Kill(id);
  if (!killed) return std::unexpected(Message(killed.error()));
  std::lock_guard lock(mutex_);
  owned_.erase(id);
  return json{{"killed", *killed}};
}

McpSession::Outcome McpSession::Fork(const json& arguments) {
  Args args(arguments);
  std::string id = args.String("sandbox_id");
  auto count = static_cast<uint32_t>(args.Int("count", 1, kMaxForks, 1));
  bool keep = args.Bool("keep", false);
  if (args.failed()) return std::unexpected(args.error());
  auto children = registry_.Fork(id, count, kDefaultSandboxTimeout);
  if (!children) return std::unexpected(Message(children.error()));
  if (!*children) return std::unexpected(fmt::format("no sandbox '{}'", id));
  json ids = json::array();
  for (const auto& child : **children) {
    Own(child.id, keep);
    ids.push_back(child.id);
  }
  return json{{"sandbox_ids", ids}};
}

McpSession::Outcome McpSession::Snapshot(const json& arguments) {
  Args args(arguments);
  std::string id = args.String("sandbox_id");
  std::string name = args.Optional("name").value_or("");
  if (args.failed()) return std::unexpected(args.error());
  auto snapshot = registry_.Snapshot(id, name);
  if (!snapshot) return std::unexpected(Message(snapshot.error()));
  if (!*snapshot) return std::unexpected(fmt::format("no sandbox '{}'", id));
  return json{{"snapshot_id", (*snapshot)->id}, {"names", (*snapshot)->names}};
}

namespace {
std::string GuestPath(const std::string& path) {
  return path.starts_with('/') ? path : "/" + path;
}
}  // namespace

McpSession::Outcome McpSession::FilesRead(const json& arguments) {
  Args args(arguments);
  std::string id = args.String("sandbox_id");
  std::string path = GuestPath(args.String("path"));
  auto max = static_cast<size_t>(args.Int("max_bytes", 1, static_cast<int64_t>(kMcpMaxOutputCap),
                                          kMcpDefaultOutputCap));
  if (args.failed()) return std::unexpected(args.error());
  auto agent = Agent(id);
  if (!agent) return std::unexpected(agent.error());
  std::string content;
  bool truncated = false;
  auto sink = [&](std::span<const uint8_t> chunk) -> Result<void> {
    size_t room = max - content.size();
    content.append(reinterpret_cast<const char*>(chunk.data()), std::min(room, chunk.size()));
    if (chunk.size() > room) {
      truncated = true;
      return Fail(Error::Backend("enough"));  // stops the read
    }
    return {};
  };
  auto read = sandbox::ReadFileChunks(**agent, path, sink);
  (*agent)->Shutdown(Error::Backend("the file is read"));
  if (!read && !truncated) return std::unexpected(Message(read.error()));
  uint64_t size = read ? read->size : content.size();
  if (truncated) {
    auto agent_again = Agent(id);
    if (agent_again) {
      if (auto info = sandbox::StatFile(**agent_again, path)) size = info->size;
      (*agent_again)->Shutdown(Error::Backend("the file is read"));
    }
  }
  bool text = IsUtf8(content);
  return json{{"content", text ? content : Base64Encode(content)},
              {"encoding", text ? "utf-8" : "base64"},
              {"size", size},
              {"truncated", truncated}};
}

McpSession::Outcome McpSession::FilesWrite(const json& arguments) {
  Args args(arguments);
  std::string id = args.String("sandbox_id");
  std::string path = GuestPath(args.String("path"));
  std::string content = args.String("content");
  std::string encoding = args.Optional("encoding").value_or("utf-8");
  if (args.failed()) return std::unexpected(args.error());
  if (encoding == "base64") {
    auto decoded = Base64Decode(content);
    if (!decoded) return std::unexpected("'content' is not base64");
    content = std::move(*decoded);
  } else if (encoding != "utf-8") {
    return std::unexpected("'encoding' is utf-8 or base64");
  }
  auto agent = Agent(id);
  if (!agent) return std::unexpected(agent.error());
  auto done = [&] { (*agent)->Shutdown(Error::Backend("the file is written")); };
  if (size_t slash = path.find_last_of('/'); slash > 0) {
    if (auto made = sandbox::MakeDirectory(**agent, path.substr(0, slash), true, 0755); !made) {
      return done(), std::unexpected(Message(made.error()));
    }
  }
  size_t offset = 0;
  auto source = [&](std::span<uint8_t> buffer) -> Result<size_t> {
    size_t n = std::min(buffer.size(), content.size() - offset);
    std::memcpy(buffer.data(), content.data() + offset, n);
    offset += n;
    return n;
  };
  auto written = sandbox::WriteFileChunks(**agent, path, source, 0644);
  done();
  if (!written) return std::unexpected(Message(written.error()));
  return json{{"path", path}, {"size", content.size()}};
}

McpSession::Outcome McpSession::FilesList(const json& arguments) {
  Args args(arguments);
  std::string id = args.String("sandbox_id");
  std::string path = GuestPath(args.String("path"));
  if (args.failed()) return std::unexpected(args.error());
  auto agent = Agent(id);
  if (!agent) return std::unexpected(agent.error());
  auto listed = sandbox::ListDirectory(**agent, path);
  (*agent)->Shutdown(Error::Backend("the directory is listed"));
  if (!listed) return std::unexpected(Message(listed.error()));
  if (listed->size() > kMaxListedEntries) {
    return std::unexpected(fmt::format("{} holds more than {} entries", path, kMaxListedEntries));
  }
  json entries = json::array();
  for (const auto& e : *listed) {
    entries.push_back({{"name", e.name},
                       {"type", e.type == FileType::kRegular     ? "file"
                                : e.type == FileType::kDirectory ? "dir"
                                : e.type == FileType::kSymlink   ? "symlink"
                                                                 : "other"},
                       {"size", e.size}});
  }
  return json{{"entries", entries}};
}

McpSession::Outcome McpSession::FilesRemove(const json& arguments) {
  Args args(arguments);
  std::string id = args.String("sandbox_id");
  std::string path = GuestPath(args.String("path"));
  if (args.failed()) return std::unexpected(args.error());
  auto agent = Agent(id);
  if (!agent) return std::unexpected(agent.error());
  auto removed = sandbox::RemovePath(**agent, path, /*recursive=*/true);
  (*agent)->Shutdown(Error::Backend("the path is removed"));
  if (!removed) return std::unexpected(Message(removed.error()));
  return json{{"removed", true}};
}

}  // namespace vessel::server
