#include "server/data_plane.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <signal.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <ctime>
#include <expected>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "sandbox/files.h"
#include "sandbox/process.h"
#include "server/multipart.h"
#include "server/query.h"

namespace vessel::server {
namespace {

using nlohmann::json;

constexpr std::string_view kConnectJson = "application/connect+json";
constexpr std::string_view kJson = "application/json";
constexpr uint8_t kEndStreamFlag = 0x02;
constexpr uint8_t kCompressedFlag = 0x01;
constexpr size_t kEnvelopeHeader = 5;

// A Connect error: its code (as the protocol names them) and message.
struct ConnectError {
  std::string code;
  std::string message;
};

http::status HttpStatusOf(std::string_view code) {
  if (code == "invalid_argument") return http::status::bad_request;
  if (code == "unauthenticated") return http::status::unauthorized;
  if (code == "not_found") return http::status::not_found;
  if (code == "resource_exhausted") return http::status::too_many_requests;
  if (code == "unimplemented") return http::status::not_found;
  if (code == "failed_precondition") return http::status::bad_request;
  if (code == "unavailable") return http::status::service_unavailable;
  return http::status::internal_server_error;
}

json ErrorJson(const ConnectError& e) { return {{"code", e.code}, {"message", e.message}}; }

std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

void ReplyUnaryError(ResponseWriter& writer, const ConnectError& e) {
  (void)writer.Send(HttpStatusOf(e.code), kJson, Dump(ErrorJson(e)));
}

std::string Envelope(uint8_t flags, const std::string& payload) {
  std::string out(kEnvelopeHeader, '\0');
  out[0] = static_cast<char>(flags);
  auto size = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i)
    out[static_cast<size_t>(1 + i)] = static_cast<char>(size >> (24 - 8 * i));
  return out + payload;
}

// Ends a stream that has begun: its end message, with the error if there is one.
void ReplyStreamEnd(ResponseWriter& writer, const std::optional<ConnectError>& error) {
  json end = json::object();
  if (error) end["error"] = ErrorJson(*error);
  (void)writer.Write(Envelope(kEndStreamFlag, Dump(end)));
  (void)writer.Finish();
}

// The one message of a client-unary, server-streaming request's body.
std::expected<json, ConnectError> ParseEnvelope(std::string_view body) {
  if (body.size() < kEnvelopeHeader) {
    return std::unexpected(
        ConnectError{"invalid_argument", "the request is not a Connect envelope"});
  }
  auto flags = static_cast<uint8_t>(body[0]);
  uint32_t size = 0;
  for (size_t i = 1; i < kEnvelopeHeader; ++i) size = size << 8 | static_cast<uint8_t>(body[i]);
  if (flags & kCompressedFlag) {
    return std::unexpected(ConnectError{"invalid_argument", "compressed messages are not served"});
  }
  if (size != body.size() - kEnvelopeHeader) {
    return std::unexpected(
        ConnectError{"invalid_argument", fmt::format("the envelope says {} bytes but {} follow",
                                                     size, body.size() - kEnvelopeHeader)});
  }
  auto message = json::parse(body.substr(kEnvelopeHeader), nullptr, /*allow_exceptions=*/false);
  if (!message.is_object()) {
    return std::unexpected(ConnectError{"invalid_argument", "the message is not a JSON object"});
  }
  return message;
}

std::expected<json, ConnectError> ParseUnary(std::string_view body) {
  auto message = json::parse(body.empty() ? std::string_view("{}") : body, nullptr, false);
  if (!message.is_object()) {
    return std::unexpected(ConnectError{"invalid_argument", "the message is not a JSON object"});
  }
  return message;
}

std::optional<int> PidOf(const json& message) {
  auto process = message.find("process");
  if (process == message.end() || !process->is_object()) return std::nullopt;
  auto pid = process->find("pid");
  if (pid == process->end() || !pid->is_number_unsigned()) return std::nullopt;
  uint64_t value = pid->get<uint64_t>();
  if (value == 0 || value > 1u << 30) return std::nullopt;
  return static_cast<int>(value);
}

// A map<string, string> field of a message; nullopt when it is something else.
std::optional<std::map<std::string, std::string>> StringMapField(const json& object,
                                                                 const char* field) {
  std::map<std::string, std::string> out;
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return out;
  if (!it->is_object()) return std::nullopt;
  for (const auto& [key, value] : it->items()) {
    if (!value.is_string()) return std::nullopt;
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

// A PTY message's size ({"size": {"cols": C, "rows": R}}); an error names what is wrong.
// The library checks the range a terminal may have (ExecOptions::terminal).
std::expected<TerminalSize, ConnectError> PtySize(const json& pty) {
  auto bad = [](const char* text) {
    return std::unexpected(ConnectError{"invalid_argument", text});
  };
  if (!pty.is_object()) return bad("'pty' must be an object");
  auto size = pty.find("size");
  if (size == pty.end() || !size->is_object())
    return bad("'pty.size' with cols and rows is required");
  TerminalSize out;
  for (auto [name, side] : {std::pair{"cols", &out.cols}, std::pair{"rows", &out.rows}}) {
    auto it = size->find(name);
    if (it == size->end() || !it->is_number_unsigned() || it->get<uint64_t>() == 0 ||
        it->get<uint64_t>() > UINT16_MAX) {
      return std::unexpected(ConnectError{
          "invalid_argument", fmt::format("'pty.size.{}' must be a positive number", name)});
    }
    *side = static_cast<uint16_t>(it->get<uint64_t>());
  }
  return out;
}

ConnectError FromError(const Error& error) {
  if (error.kind() == ErrorKind::kGuestFile) {
    return {
        error.guest_file_kind() == GuestFileErrorKind::kNotFound ? "not_found" : "invalid_argument",
        error.ToString()};
  }
  if (error.kind() == ErrorKind::kInvalidConfig) return {"invalid_argument", error.ToString()};
  return {"unavailable", error.ToString()};
}

json EventMessage(json event) { return {{"event", std::move(event)}}; }

// The data event's field: a terminal's output is "pty", whatever stream carried it.
std::string_view StreamName(ProcessEvent::Kind kind, bool terminal) {
  if (terminal) return "pty";
  return kind == ProcessEvent::Kind::kStderr ? "stderr" : "stdout";
}

// The end event of a command that exited or was signaled (one that timed out ends its
// stream with deadline_exceeded instead).
json EndEvent(const ProcessEvent& event) {
  if (event.kind == ProcessEvent::Kind::kExited) {
    return {{"exitCode", event.code},
            {"exited", true},
            {"status", fmt::format("exit status {}", event.code)}};
  }
  return {{"exitCode", -1}, {"exited", false}, {"status", fmt::format("signal: {}", event.code)}};
}

// Relative paths are taken from the guest's root, where commands start.
std::string GuestPath(std::string_view path) {
  return path.starts_with('/') ? std::string(path) : "/" + std::string(path);
}

std::string Permissions(const FileInfo& info) {
  std::string out = info.type == FileType::kDirectory ? "d"
                    : info.type == FileType::kSymlink ? "l"
                                                      : "-";
  const char* letters = "rwxrwxrwx";
  for (int bit = 8; bit >= 0; --bit) {
    out.push_back((info.mode >> bit) & 1 ? letters[8 - bit] : '-');
  }
  return out;
}

// An EntryInfo of filesystem.proto, as JSON.
json EntryJson(const FileInfo& info, const std::string& path) {
  int type = info.type == FileType::kRegular     ? 1
             : info.type == FileType::kDirectory ? 2
             : info.type == FileType::kSymlink   ? 3
                                                 : 0;
  std::string name = path == "/" ? "/" : path.substr(path.find_last_of('/') + 1);
  std::time_t seconds = static_cast<std::time_t>(info.mtime);
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  return {{"name", name},
          {"type", type},
          {"path", path},
          {"size", info.size},
          {"mode", info.mode},
          {"permissions", Permissions(info)},
          {"owner", "root"},
          {"group", "root"},
          {"modifiedTime", fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", utc)}};
}

std::optional<std::string> PathField(const json& message, const char* field) {
  auto it = message.find(field);
  if (it == message.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
    return std::nullopt;
  }
  return GuestPath(it->get<std::string>());
}

}  // namespace

std::string Base64Encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> Base64Decode(std::string_view text) {
  std::string normal(text);
  for (char& c : normal) {
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  while (normal.size() % 4 != 0) normal.push_back('=');
  size_t padding = 0;
  if (!normal.empty() && normal.back() == '=') ++padding;
  if (normal.size() > 1 && normal[normal.size() - 2] == '=') ++padding;
  std::string out(3 * (normal.size() / 4), '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(normal.data()),
                          static_cast<int>(normal.size()));
  if (n < 0 || static_cast<size_t>(n) < padding) return std::nullopt;
  out.resize(static_cast<size_t>(n) - padding);
  return out;
}

void DataPlane::Handle(const Request& request, std::string_view sandbox_id,
                       ResponseWriter& writer) {
  std::string_view target = Sv(request.target());
  std::string_view path = target.substr(0, target.find('?'));
  std::string id(sandbox_id);
  // A streaming call (Start) hears of an error in its end message, as a client of a
  // stream expects; any other call in its body.
  auto refuse = [&](const ConnectError& error) {
    if (!Sv(request[http::field::content_type]).starts_with("application/connect+")) {
      return ReplyUnaryError(writer, error);
    }
    if (writer.BeginStream(http::status::ok, kConnectJson)) ReplyStreamEnd(writer, error);
  };
  auto sandbox = registry_.Get(id);
  if (!sandbox) return refuse({"unavailable", sandbox.error().ToString()});
  if (!*sandbox) return refuse({"not_found", fmt::format("sandbox \"{}\" not found", id)});
  if ((*sandbox)->state == "paused") {
    return refuse({"failed_precondition",
                   fmt::format("sandbox \"{}\" is paused: connect to it to resume it", id)});
  }
  const std::string& token = (*sandbox)->attributes.access_token;
  std::string_view given = Sv(request["X-Access-Token"]);
  if (!token.empty() &&
      (given.size() != token.size() || CRYPTO_memcmp(given.data(), token.data(), token.size()))) {
    return refuse({"unauthenticated", "missing or wrong X-Access-Token"});
  }
  if (path == "/health" && request.method() == http::verb::get) {
    (void)writer.Send(http::status::no_content, {}, {});
    return;
  }
  if (path == "/files") return Files(request, **sandbox, writer);
  constexpr std::string_view kFilesystem = "/filesystem.Filesystem/";
  if (request.method() == http::verb::post && path.starts_with(kFilesystem)) {
    return Filesystem(path.substr(kFilesystem.size()), request, **sandbox, writer);
  }
  constexpr std::string_view kService = "/process.Process/";
  if (request.method() != http::verb::post || !path.starts_with(kService)) {
    return ReplyUnaryError(writer, {"unimplemented", fmt::format("{} is not served", path)});
  }
  std::string_view method = path.substr(kService.size());
  if (method == "Start") return Start(request, **sandbox, writer);
  if (method == "Connect") return Connect(request, **sandbox, writer);
  Unary(method, request, **sandbox, writer);
}

std::shared_ptr<DataPlane::Running> DataPlane::Find(const std::string& sandbox_id, int pid) {
  std::lock_guard lock(mutex_);
  auto it = running_.find({sandbox_id, pid});
  return it == running_.end() ? nullptr : it->second;
}

void DataPlane::Unary(std::string_view method, const Request& request, const ApiSandbox& sandbox,
                      ResponseWriter& writer) {
  auto message = ParseUnary(request.body());
  if (!message) return ReplyUnaryError(writer, message.error());
  auto ok = [&](json body = json::object()) {
    (void)writer.Send(http::status::ok, kJson, Dump(body));
  };
  if (method == "List") {
    json processes = json::array();
    std::lock_guard lock(mutex_);
    for (const auto& [key, running] : running_) {
      if (key.first != sandbox.id) continue;
      processes.push_back({{"pid", key.second},
                           {"config",
                            {{"cmd", running->cmd},
                             {"args", running->args},
                             {"envs", running->envs},
                             {"cwd", running->cwd}}}});
    }
    return ok({{"processes", processes}});
  }
  if (method != "SendSignal" && method != "SendInput" && method != "CloseStdin" &&
      method != "Update") {
    return ReplyUnaryError(
        writer, {"unimplemented", fmt::format("process.Process/{} is not served", method)});
  }
  auto pid = PidOf(*message);
  if (!pid) {
    return ReplyUnaryError(writer, {"invalid_argument", "'process' must select a process by pid"});
  }
  auto running = Find(sandbox.id, *pid);
  if (!running) {
    return ReplyUnaryError(writer,
                           {"not_found", fmt::format("process with pid {} not found", *pid)});
  }
  Result<void> done;
  if (method == "SendSignal") {
    const json& signal = message->value("signal", json());
    int number = 0;
    if (signal == "SIGNAL_SIGKILL" || signal == 9) number = SIGKILL;
    if (signal == "SIGNAL_SIGTERM" || signal == 15) number = SIGTERM;
    if (number == 0) {
      return ReplyUnaryError(writer,
                             {"invalid_argument", "'signal' is SIGNAL_SIGKILL or SIGNAL_SIGTERM"});
    }
    done = running->process->Signal(number);
  } else if (method == "SendInput") {
    // Keystrokes for a terminal come as input.pty, a pipe's bytes as input.stdin.
    auto input = message->find("input");
    const char* field = running->terminal ? "pty" : "stdin";
    if (input == message->end() || !input->is_object() || !input->contains(field) ||
        !(*input)[field].is_string()) {
      return ReplyUnaryError(
          writer, {"invalid_argument",
                   fmt::format("'input.{}' must be base64 bytes{}", field,
                               running->terminal ? " (the process has a terminal)" : "")});
    }
    auto bytes = Base64Decode((*input)[field].get_ref<const std::string&>());
    if (!bytes) {
      return ReplyUnaryError(writer,
                             {"invalid_argument", fmt::format("'input.{}' is not base64", field)});
    }
    done = running->process->WriteStdin(*bytes);
  } else if (method == "Update") {
    // Update changes what a running process can change: its terminal's size.
    auto pty = message->find("pty");
    if (pty == message->end() || pty->is_null()) return ok();
    if (!running->terminal) {
      return ReplyUnaryError(writer, {"failed_precondition",
                                      fmt::format("process with pid {} has no terminal", *pid)});
    }
    auto size = PtySize(*pty);
    if (!size) return ReplyUnaryError(writer, size.error());
    done = running->process->Resize(*size);
  } else {
    done = running->process->CloseStdin();
  }
  if (!done) return ReplyUnaryError(writer, FromError(done.error()));
  ok();
}

void DataPlane::Start(const Request& request, const ApiSandbox& sandbox, ResponseWriter& writer) {
  // Every answer from here on is a stream, errors in its end message.
  auto finish = [&](std::optional<ConnectError> error) { ReplyStreamEnd(writer, error); };
  if (!writer.BeginStream(http::status::ok, kConnectJson)) return;
  auto message = ParseEnvelope(request.body());
  if (!message) return finish(message.error());
  const json* process = message->contains("process") ? &(*message)["process"] : nullptr;
  if (!process || !process->is_object() || !process->contains("cmd") ||
      !(*process)["cmd"].is_string()) {
    return finish(ConnectError{"invalid_argument", "'process.cmd' is required"});
  }
  auto running = std::make_shared<Running>();
  ExecOptions options;
  if (message->contains("pty") && !(*message)["pty"].is_null()) {
    auto size = PtySize((*message)["pty"]);
    if (!size) return finish(size.error());
    options.terminal = *size;
    running->terminal = true;
  }
  running->cmd = (*process)["cmd"].get<std::string>();
  if (process->contains("args")) {
    const json& args = (*process)["args"];
    if (!args.is_array())
      return finish(ConnectError{"invalid_argument", "'process.args' must be a list"});
    for (const auto& arg : args) {
      if (!arg.is_string())
        return finish(ConnectError{"invalid_argument", "'process.args' are strings"});
      running->args.push_back(arg.get<std::string>());
    }
  }
  auto envs = StringMapField(*process, "envs");
  if (!envs) return finish(ConnectError{"invalid_argument", "'process.envs' must map strings"});
  running->envs = std::move(*envs);
  if (process->contains("cwd") && (*process)["cwd"].is_string()) {
    running->cwd = (*process)["cwd"].get<std::string>();
  }
  // A terminal always takes keystrokes; a pipe only when asked for.
  bool open_stdin = running->terminal || message->value("stdin", false);

  // The sandbox's own environment, then the command's.
  std::map<std::string, std::string> environment = sandbox.attributes.env_vars;
  for (const auto& [key, value] : running->envs) environment[key] = value;
  for (const auto& [key, value] : environment) options.env.push_back(key + "=" + value);
  options.cwd = running->cwd;
  // The client's deadline (the SDK's timeoutMs) is the command's: it is killed then, and
  // its stream ends with deadline_exceeded.
  if (auto deadline = Sv(request["Connect-Timeout-Ms"]); !deadline.empty()) {
    uint64_t ms = 0;
    auto [end, ec] = std::from_chars(deadline.data(), deadline.data() + deadline.size(), ms);
    if (ec != std::errc() || end != deadline.data() + deadline.size() || ms > UINT32_MAX) {
      return finish(ConnectError{"invalid_argument",
                                 "Connect-Timeout-Ms must be milliseconds, at most 2^32 - 1"});
    }
    if (ms > 0) options.timeout = std::chrono::milliseconds(ms);
  }
  if (open_stdin) options.stdin_data = std::string();
  std::vector<std::string> argv = {running->cmd};
  argv.insert(argv.end(), running->args.begin(), running->args.end());

  auto connection = registry_.Connect(sandbox.id);
  if (!connection) return finish(FromError(connection.error()));
  running->connection = *connection;
  auto started = sandbox::StartProcess(running->connection, Command::Argv(argv), options,
                                       /*close_stdin=*/false);
  // The SDK runs commands with /bin/bash; a guest without bash runs them with sh.
  if (!started && started.error().kind() == ErrorKind::kGuestFile && running->cmd == "/bin/bash") {
    argv[0] = "/bin/sh";
    started = sandbox::StartProcess(running->connection, Command::Argv(argv), options, false);
  }
  if (!started) {
    running->connection->Shutdown(Error::Backend("the command did not start"));
    return finish(FromError(started.error()));
  }
  running->process = std::move(*started);
  const int pid = running->process->pid();
  const Key key{sandbox.id, pid};
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || running_.size() >= kMaxRunningCommands) {
      (void)running->process->Kill();
      running->connection->Shutdown(Error::Backend("the command was refused"));
      return finish(ConnectError{
          "resource_exhausted",
          fmt::format("{} commands run already: wait for one to end", kMaxRunningCommands)});
    }
    running_[key] = running;
    ++pumps_;
  }
  auto listener = std::make_shared<Listener>();
  running->listeners.push_back(listener);  // before the pump publishes anything
  std::thread([this, running, key] { Pump(running, key); }).detach();
  Listen(*running, listener, pid, writer);
}

void DataPlane::Connect(const Request& request, const ApiSandbox& sandbox, ResponseWriter& writer) {
  if (!writer.BeginStream(http::status::ok, kConnectJson)) return;
  auto message = ParseEnvelope(request.body());
  if (!message) return ReplyStreamEnd(writer, message.error());
  auto pid = PidOf(*message);
  if (!pid) {
    return ReplyStreamEnd(
        writer, ConnectError{"invalid_argument", "'process' must select a process by pid"});
  }
  auto running = Find(sandbox.id, *pid);
  auto listener = std::make_shared<Listener>();
  bool over = true;
  if (running) {
    std::lock_guard lock(running->mutex);
    over = running->over;
    if (!over) running->listeners.push_back(listener);
  }
  if (over) {
    return ReplyStreamEnd(
        writer, ConnectError{"not_found", fmt::format("process with pid {} not found", *pid)});
  }
  Listen(*running, listener, *pid, writer);
}

void DataPlane::Publish(Running& running, std::string envelope, bool last) {
  std::lock_guard lock(running.mutex);
  for (const auto& listener : running.listeners) {
    if (listener->dropped || listener->closed) continue;
    if (!last && listener->bytes + envelope.size() > kMaxListenerBacklog) {
      listener->dropped = true;
      continue;
    }
    listener->bytes += envelope.size();
    listener->envelopes.push_back(envelope);
    listener->closed = last;
  }
  if (last) running.over = true;
  running.changed.notify_all();
}

void DataPlane::Pump(std::shared_ptr<Running> running, Key key) {
  auto event_envelope = [](json event) {
    return Envelope(0, Dump(EventMessage(std::move(event))));
  };
  std::optional<ConnectError> failure;
  for (;;) {
    if (stopping_) {
      failure = ConnectError{"unavailable", "the server is stopping"};
      (void)running->process->Kill();
      break;
    }
    // A short wait, to see the server stop.
    auto event = running->process->NextEvent(std::chrono::seconds(1));
    if (!event) {
      if (event.error().timed_out()) continue;
      failure = FromError(event.error());
      break;
    }
    if (!*event) break;
    const ProcessEvent& e = **event;
    if (e.kind == ProcessEvent::Kind::kTimedOut) {
      failure =
          ConnectError{"deadline_exceeded",
                       "the command ran past its timeout (Connect-Timeout-Ms) and was killed"};
      break;
    }
    if (e.final()) {
      Publish(*running, event_envelope({{"end", EndEvent(e)}}));
      break;
    }
    Publish(*running,
            event_envelope(
                {{"data", {{StreamName(e.kind, running->terminal), Base64Encode(e.data)}}}}));
  }
  {
    std::lock_guard lock(mutex_);
    running_.erase(key);
  }
  json end = json::object();
  if (failure) end["error"] = ErrorJson(*failure);
  Publish(*running, Envelope(kEndStreamFlag, Dump(end)), /*last=*/true);
  running->connection->Shutdown(Error::Backend("the command ended"));
  std::lock_guard lock(mutex_);
  if (--pumps_ == 0) pumps_done_.notify_all();
}

void DataPlane::Listen(Running& running, const std::shared_ptr<Listener>& listener, int pid,
                       ResponseWriter& writer) {
  auto leave = [&] {
    std::lock_guard lock(running.mutex);
    std::erase(running.listeners, listener);
  };
  if (!writer.Write(Envelope(0, Dump(EventMessage({{"start", {{"pid", pid}}}}))))) return leave();
  for (;;) {
    std::deque<std::string> envelopes;
    bool closed = false, dropped = false;
    {
      std::unique_lock lock(running.mutex);
      running.changed.wait_for(lock, kKeepAliveInterval, [&] {
        return !listener->envelopes.empty() || listener->dropped || listener->closed;
      });
      envelopes.swap(listener->envelopes);
      listener->bytes = 0;
      closed = listener->closed;
      dropped = listener->dropped;
    }
    if (envelopes.empty() && !closed && !dropped) {
      // Quiet for a while: a keepalive, which also finds a client that went away.
      if (writer.ClientGone() ||
          !writer.Write(Envelope(0, Dump(EventMessage({{"keepalive", json::object()}}))))) {
        return leave();
      }
      continue;
    }
    for (const auto& envelope : envelopes) {
      if (!writer.Write(envelope)) return leave();
    }
    if (closed) {
      (void)writer.Finish();
      return leave();
    }
    if (dropped) {
      leave();
      return ReplyStreamEnd(
          writer, ConnectError{"resource_exhausted",
                               fmt::format("this client fell more than {} MiB behind the "
                                           "command's output; it runs on: connect to it again",
                                           kMaxListenerBacklog >> 20)});
    }
  }
}

void DataPlane::Stop() {
  std::lock_guard lock(mutex_);  // so that no Start registers a command after it
  stopping_ = true;
}

DataPlane::~DataPlane() {
  Stop();
  std::unique_lock lock(mutex_);
  pumps_done_.wait(lock, [&] { return pumps_ == 0; });
}

void DataPlane::Filesystem(std::string_view method, const Request& request,
                           const ApiSandbox& sandbox, ResponseWriter& writer) {
  auto message = ParseUnary(request.body());
  if (!message) return ReplyUnaryError(writer, message.error());
  auto ok = [&](json body) { (void)writer.Send(http::status::ok, kJson, Dump(body)); };
  auto bad = [&](std::string text) {
    ReplyUnaryError(writer, {"invalid_argument", std::move(text)});
  };
  if (method != "Stat" && method != "ListDir" && method != "MakeDir" && method != "Move" &&
      method != "Remove") {
    return ReplyUnaryError(
        writer, {"unimplemented", fmt::format("filesystem.Filesystem/{} is not served", method)});
  }
  auto connection = registry_.Connect(sandbox.id);
  if (!connection) return ReplyUnaryError(writer, FromError(connection.error()));
  sandbox::Connection& agent = **connection;
  auto done = [&] { agent.Shutdown(Error::Backend("the request is answered")); };
  auto fail = [&](const Error& error) {
    done();
    ReplyUnaryError(writer, FromError(error));
  };

  if (method == "Move") {
    auto source = PathField(*message, "source");
    auto destination = PathField(*message, "destination");
    if (!source || !destination) return done(), bad("'source' and 'destination' are required");
    if (auto moved = sandbox::RenamePath(agent, *source, *destination); !moved) {
      return fail(moved.error());
    }
    auto info = sandbox::StatFile(agent, *destination);
    if (!info) return fail(info.error());
    done();
    return ok({{"entry", EntryJson(*info, *destination)}});
  }
  auto path = PathField(*message, "path");
  if (!path) return done(), bad("'path' is required");
  if (method == "Stat") {
    auto info = sandbox::StatFile(agent, *path);
    if (!info) return fail(info.error());
    done();
    return ok({{"entry", EntryJson(*info, *path)}});
  }
  if (method == "MakeDir") {
    if (auto existing = sandbox::StatFile(agent, *path); existing) {
      done();
      return ReplyUnaryError(writer, {"already_exists", *path + " exists"});
    }
    if (auto made = sandbox::MakeDirectory(agent, *path, /*parents=*/true, 0755); !made) {
      return fail(made.error());
    }
    auto info = sandbox::StatFile(agent, *path);
    if (!info) return fail(info.error());
    done();
    return ok({{"entry", EntryJson(*info, *path)}});
  }
  if (method == "Remove") {
    if (auto removed = sandbox::RemovePath(agent, *path, /*recursive=*/true); !removed) {
      return fail(removed.error());
    }
    done();
    return ok(json::object());
  }
  // ListDir, to `depth` levels (1: the directory's own entries).
  int64_t depth = 1;
  if (message->contains("depth")) {
    if (!(*message)["depth"].is_number_integer()) return done(), bad("'depth' must be a number");
    depth = (*message)["depth"].get<int64_t>();
  }
  if (depth < 1 || depth > 64) return done(), bad("'depth' must be 1 to 64");
  json entries = json::array();
  std::vector<std::pair<std::string, int64_t>> pending = {{*path, 1}};
  while (!pending.empty()) {
    auto [dir, level] = pending.back();
    pending.pop_back();
    auto listed = sandbox::ListDirectory(agent, dir);
    if (!listed) return fail(listed.error());
    for (const auto& entry : *listed) {
      if (entries.size() == kMaxListedEntries) {
        done();
        return ReplyUnaryError(
            writer, {"resource_exhausted", fmt::format("{} holds more than {} entries to depth {}",
                                                       *path, kMaxListedEntries, depth)});
      }
      std::string child = (dir == "/" ? "" : dir) + "/" + entry.name;
      entries.push_back(EntryJson(entry, child));
      if (entry.type == FileType::kDirectory && level < depth)
        pending.emplace_back(child, level + 1);
    }
  }
  done();
  ok({{"entries", entries}});
}

void DataPlane::Files(const Request& request, const ApiSandbox& sandbox, ResponseWriter& writer) {
  auto error = [&](http::status status, std::string message) {
    (void)writer.Send(status, kJson, ErrorBody(status, message));
  };
  std::string_view target = Sv(request.target());
  size_t question = target.find('?');
  auto query = ParseQuery(question == std::string_view::npos ? std::string_view()
                                                             : target.substr(question + 1));
  if (!query) return error(http::status::bad_request, "malformed query string");
  auto path_param = QueryValue(*query, "path");
  const bool download = request.method() == http::verb::get;
  if (!download && request.method() != http::verb::post) {
    return error(http::status::method_not_allowed, "/files takes GET and POST");
  }
  if (download && (!path_param || path_param->empty())) {
    return error(http::status::bad_request, "'path' is required");
  }
  auto connection = registry_.Connect(sandbox.id);
  if (!connection) return error(http::status::bad_gateway, connection.error().ToString());
  sandbox::Connection& agent = **connection;
  struct Close {
    sandbox::Connection& agent;
    ~Close() { agent.Shutdown(Error::Backend("the request is answered")); }
  } close{agent};
  auto file_error = [&](const Error& e) {
    bool missing =
        e.kind() == ErrorKind::kGuestFile && e.guest_file_kind() == GuestFileErrorKind::kNotFound;
    bool refused = e.kind() == ErrorKind::kGuestFile || e.kind() == ErrorKind::kInvalidConfig;
    error(missing   ? http::status::not_found
          : refused ? http::status::bad_request
                    : http::status::bad_gateway,
          e.ToString());
  };

  if (download) {
    std::string path = GuestPath(*path_param);
    auto info = sandbox::StatFile(agent, path);
    if (!info) return file_error(info.error());
    if (info->type == FileType::kDirectory) {
      return error(http::status::bad_request, path + " is a directory");
    }
    bool begun = false;
    auto sink = [&](std::span<const uint8_t> chunk) -> Result<void> {
      if (!begun) {
        if (auto b = writer.BeginStream(http::status::ok, "application/octet-stream", info->size);
            !b) {
          return b;
        }
        begun = true;
      }
      return writer.Write({reinterpret_cast<const char*>(chunk.data()), chunk.size()});
    };
    auto read = sandbox::ReadFileChunks(agent, path, sink);
    if (!begun) {
      if (!read) return file_error(read.error());
      if (!writer.BeginStream(http::status::ok, "application/octet-stream", info->size)) return;
    }
    (void)writer.Finish();  // a file that changed size fails here, and the connection closes
    return;
  }

  // An upload: the body itself, or the files of a multipart form.
  struct Upload {
    std::string path;
    std::string_view data;
  };
  std::vector<Upload> uploads;
  std::string_view content_type = Sv(request[http::field::content_type]);
  if (auto boundary = MultipartBoundary(content_type)) {
    auto parts = ParseMultipart(request.body(), *boundary);
    if (!parts) return error(http::status::bad_request, parts.error().ToString());
    for (const auto& part : *parts) {
      if (part.name != "file") continue;
      std::string path = path_param && !path_param->empty() ? *path_param : part.filename;
      if (path.empty()) return error(http::status::bad_request, "a file part names no path");
      uploads.push_back({GuestPath(path), part.data});
    }
    if (uploads.empty()) return error(http::status::bad_request, "the form has no 'file' part");
  } else {
    if (!path_param || path_param->empty()) {
      return error(http::status::bad_request, "'path' is required");
    }
    uploads.push_back({GuestPath(*path_param), request.body()});
  }
  json written = json::array();
  for (const auto& upload : uploads) {
    size_t slash = upload.path.find_last_of('/');
    if (slash > 0) {
      std::string parent = upload.path.substr(0, slash);
      if (auto made = sandbox::MakeDirectory(agent, parent, /*parents=*/true, 0755); !made) {
        return file_error(made.error());
      }
    }
    size_t offset = 0;
    auto source = [&](std::span<uint8_t> buffer) -> Result<size_t> {
      size_t n = std::min(buffer.size(), upload.data.size() - offset);
      std::memcpy(buffer.data(), upload.data.data() + offset, n);
      offset += n;
      return n;
    };
    if (auto w = sandbox::WriteFileChunks(agent, upload.path, source, 0644); !w) {
      return file_error(w.error());
    }
    std::string name = upload.path.substr(upload.path.find_last_of('/') + 1);
    written.push_back({{"name", name}, {"type", "file"}, {"path", upload.path}});
  }
  (void)writer.Send(http::status::ok, kJson, Dump(written));
}

}  // namespace vessel::server
