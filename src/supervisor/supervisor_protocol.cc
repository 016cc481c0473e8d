#include "supervisor/supervisor_protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "base/io.h"
#include "protocol/wire.h"

namespace vessel::supervisor {
namespace {

using json = nlohmann::json;

// Requests and replies are flat (a reply nests its error one level): a hostile line cannot
// make the parser build a deep tree.
constexpr int kMaxJsonDepth = 2;
// Error messages are clipped so that even escaped ("\u001b" for each byte) they fit the
// report and the reply.
constexpr size_t kMaxMessageInReport = kMaxReportSize / 8;
constexpr size_t kMaxMessageInReply = kMaxControlReplySize / 8;
// How long a supervisor may take to greet a client.
constexpr auto kGreetingTimeout = std::chrono::seconds(10);
// What of a line that makes no sense is quoted in the error.
constexpr size_t kMaxQuoted = 64;
// Linux's largest errno (MAX_ERRNO); a reported errno beyond it is dropped.
constexpr int64_t kMaxErrno = 4095;

constexpr std::array kAllErrorKinds = {
    ErrorKind::kInvalidConfig,       ErrorKind::kLifecycle,      ErrorKind::kBackend,
    ErrorKind::kGuestFile,           ErrorKind::kSnapshotFormat, ErrorKind::kHostIo,
    ErrorKind::kUnsupportedPlatform,
};

std::optional<json> ParseFlatJson(std::string_view text) {
  bool too_deep = false;
  auto limit_depth = [&too_deep](int depth, json::parse_event_t event, json&) {
    if (event != json::parse_event_t::object_start && event != json::parse_event_t::array_start) {
      return true;
    }
    if (depth < kMaxJsonDepth) return true;
    too_deep = true;
    return false;
  };
  json value = json::parse(text, limit_depth, /*allow_exceptions=*/false);
  if (too_deep || value.is_discarded()) return std::nullopt;
  return value;
}

// Bytes that are not UTF-8 (a message quoting a guest's output) become U+FFFD.
std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string Quoted(std::string_view text) {
  std::string quoted(text.substr(0, kMaxQuoted));
  std::replace_if(
      quoted.begin(), quoted.end(), [](char c) { return c < ' ' && c >= 0; }, '?');
  return "\"" + quoted + (text.size() > kMaxQuoted ? "...\"" : "\"");
}

json ErrorToJson(const Error& error, size_t max_message) {
  return {{"kind", ToString(error.kind())},
          {"subject", error.subject()},
          {"errno", error.errno_value()},
          {"message", error.message().substr(0, max_message)}};
}

// An error of `kind` whose message() is `message`, as the supervisor had it: each kind's
// factory adds its own prefix or suffix, which is taken off first.
Error RebuildError(ErrorKind kind, const std::string& subject, int errno_value,
                   std::string message) {
  auto after_subject = [&] {
    std::string lead = subject + ": ";
    return message.starts_with(lead) ? message.substr(lead.size()) : message;
  };
  switch (kind) {
    case ErrorKind::kInvalidConfig: return Error::InvalidConfig(subject, after_subject());
    case ErrorKind::kGuestFile: return Error::GuestFile(subject, errno_value, after_subject());
    case ErrorKind::kHostIo: {
      std::string cause = std::string(": ") + std::strerror(errno_value);
      if (errno_value <= 0 || !message.ends_with(cause)) break;
      message.resize(message.size() - cause.size());
      return Error::HostIo(std::move(message), errno_value);
    }
    case ErrorKind::kLifecycle:
      return Error::Lifecycle({LifecycleError::Other{std::move(message)}});
    case ErrorKind::kSnapshotFormat: return Error::SnapshotFormat(std::move(message));
    case ErrorKind::kUnsupportedPlatform: return Error::UnsupportedPlatform(std::move(message));
    case ErrorKind::kBackend: break;
  }
  return Error::Backend(std::move(message));
}

Error ErrorFromJson(const json& value) {
  auto unreadable = [&] {
    return Error::Backend("the supervisor reported an error this vessel cannot read: " +
                          Quoted(Dump(value)));
  };
  if (!value.is_object()) return unreadable();
  auto text = [&](const char* key) -> const std::string* {
    auto it = value.find(key);
    return it != value.end() && it->is_string() ? it->get_ptr<const std::string*>() : nullptr;
  };
  const std::string* kind_name = text("kind");
  const std::string* subject = text("subject");
  const std::string* message = text("message");
  auto errno_field = value.find("errno");
  if (!kind_name || !subject || !message || errno_field == value.end() ||
      !errno_field->is_number_integer()) {
    return unreadable();
  }
  auto kind = std::find_if(kAllErrorKinds.begin(), kAllErrorKinds.end(),
                           [&](ErrorKind k) { return ToString(k) == *kind_name; });
  if (kind == kAllErrorKinds.end()) return unreadable();
  auto errno_value = errno_field->get<int64_t>();
  return RebuildError(
      *kind, *subject,
      errno_value > 0 && errno_value <= kMaxErrno ? static_cast<int>(errno_value) : 0, *message);
}

Error InvalidRequest(std::string message) {
  return Error::InvalidConfig("control request", std::move(message));
}

// Reads exactly `buffer.size()` bytes.
Result<void> ReadExactly(int fd, std::span<uint8_t> buffer, Deadline deadline, const char* what) {
  while (!buffer.empty()) {
    auto n = ReadSome(fd, buffer, deadline, what);
    if (!n) return Fail(std::move(n).error());
    if (*n == 0) return Fail(Error::Backend(std::string(what) + ": the connection closed"));
    buffer = buffer.subspan(*n);
  }
  return {};
}

// The supervisor greets every client with the agent's Hello before it knows what the
// client speaks.
Result<void> ReadGreeting(int fd) {
  auto deadline = Deadline::After(kGreetingTimeout);
  const char* what = "reading the supervisor's greeting";
  std::array<uint8_t, protocol::kHeaderSize> header_bytes;
  if (auto read = ReadExactly(fd, header_bytes, deadline, what); !read) return read;
  auto header = protocol::DecodeHeader(header_bytes);
  if (!header) return Fail(std::move(header).error());
  if (header->type != protocol::MessageType::kHello) {
    return Fail(Error::Backend(fmt::format("the supervisor greeted with frame type {}, not hello",
                                           static_cast<int>(header->type))));
  }
  std::vector<uint8_t> payload(header->payload_size);
  if (auto read = ReadExactly(fd, payload, deadline, what); !read) return read;
  if (auto hello = protocol::DecodeHello(payload); !hello) return Fail(std::move(hello).error());
  return {};
}

// One line, '\n' included; empty when the connection closed first.
Result<std::string> ReadLine(int fd, size_t max_size, const char* what) {
  std::string line;
  std::array<uint8_t, 4096> buf;
  while (line.find('\n') == std::string::npos) {
    if (line.size() > max_size) {
      return Fail(Error::Backend(fmt::format("{}: longer than {} bytes", what, max_size)));
    }
    auto n = ReadSome(fd, buf, Deadline::Never(), what);
    if (!n) return Fail(std::move(n).error());
    if (*n == 0) {
      if (line.empty()) return line;
      return Fail(Error::Backend(std::string(what) + ": cut short"));
    }
    line.append(reinterpret_cast<const char*>(buf.data()), *n);
  }
  return line;
}

}  // namespace

std::string ReadyReport(const std::string& id) { return "ready " + id + "\n"; }

std::string ErrorReport(const Error& error) {
  return "error " + Dump(ErrorToJson(error, kMaxMessageInReport)) + "\n";
}

Result<std::string> ParseReport(std::string_view report) {
  auto unexpected = [&] {
    return Fail(Error::Backend("the supervisor reported something unexpected: " + Quoted(report)));
  };
  if (!report.ends_with('\n')) return unexpected();
  report.remove_suffix(1);
  if (report.starts_with("ready ")) {
    std::string id(report.substr(6));
    if (!ValidateName(id)) return unexpected();
    return id;
  }
  if (report.starts_with("error ")) {
    auto error = ParseFlatJson(report.substr(6));
    if (!error) return unexpected();
    return Fail(ErrorFromJson(*error));
  }
  return unexpected();
}

bool StartsControlRequest(std::span<const uint8_t, kControlRequestSniffSize> first) {
  return first[0] == '{' && first[3] != 0;
}

Result<std::string> EncodeControlRequest(const ControlRequest& request) {
  json line;
  switch (request.op) {
    case ControlRequest::Op::kSnapshot: line = {{"op", "snapshot"}, {"dir", request.dir}}; break;
  }
  try {
    return line.dump() + "\n";
  } catch (const json::type_error&) {
    return Fail(Error::InvalidConfig(
        "DIR", Quoted(request.dir) + " is not valid UTF-8, which control requests carry"));
  }
}

Result<ControlRequest> ParseControlRequest(std::string_view line) {
  if (line.size() > kMaxControlRequestSize) {
    return Fail(InvalidRequest(fmt::format("longer than {} bytes", kMaxControlRequestSize)));
  }
  auto end = line.find('\n');
  if (end == std::string_view::npos) return Fail(InvalidRequest("not ended by a newline"));
  if (end + 1 != line.size()) {
    return Fail(InvalidRequest("bytes after the request's newline (one request per connection)"));
  }
  auto value = ParseFlatJson(line.substr(0, end));
  if (!value || !value->is_object()) {
    return Fail(InvalidRequest("not a JSON object in UTF-8"));
  }
  auto op = value->find("op");
  if (op == value->end() || !op->is_string()) return Fail(InvalidRequest("no \"op\" string"));
  if (op->get<std::string>() != "snapshot") {
    return Fail(InvalidRequest("unknown op " + Quoted(op->get<std::string>())));
  }
  ControlRequest request{.op = ControlRequest::Op::kSnapshot};
  for (const auto& field : value->items()) {
    if (field.key() != "op" && field.key() != "dir") {
      return Fail(
          InvalidRequest("unknown field " + Quoted(field.key()) + " in a snapshot request"));
    }
  }
  auto dir = value->find("dir");
  if (dir == value->end() || !dir->is_string()) return Fail(InvalidRequest("no \"dir\" string"));
  request.dir = dir->get<std::string>();
  if (!request.dir.starts_with('/')) {
    return Fail(InvalidRequest("dir " + Quoted(request.dir) + " is not an absolute path"));
  }
  if (request.dir.size() > kMaxControlPathSize) {
    return Fail(InvalidRequest(fmt::format("dir is longer than {} bytes", kMaxControlPathSize)));
  }
  if (request.dir.find('\0') != std::string::npos) {
    return Fail(InvalidRequest("dir contains a NUL byte"));
  }
  return request;
}

std::string EncodeControlReply(const Result<void>& outcome) {
  json reply = {{"ok", outcome.has_value()}};
  if (!outcome) reply["error"] = ErrorToJson(outcome.error(), kMaxMessageInReply);
  return Dump(reply) + "\n";
}

Result<void> ParseControlReply(std::string_view line) {
  auto unreadable = [&] {
    return Fail(Error::Backend("the supervisor answered something unexpected: " + Quoted(line)));
  };
  if (line.size() > kMaxControlReplySize || !line.ends_with('\n')) return unreadable();
  line.remove_suffix(1);
  if (line.find('\n') != std::string_view::npos) return unreadable();
  auto reply = ParseFlatJson(line);
  if (!reply || !reply->is_object()) return unreadable();
  auto ok = reply->find("ok");
  if (ok == reply->end() || !ok->is_boolean()) return unreadable();
  if (ok->get<bool>()) return {};
  auto error = reply->find("error");
  if (error == reply->end()) return unreadable();
  return Fail(ErrorFromJson(*error));
}

Result<void> SendControlRequest(const SandboxRecord& sandbox, const ControlRequest& request) {
  auto line = EncodeControlRequest(request);
  if (!line) return Fail(std::move(line).error());
  auto fd = ConnectToRunning(sandbox);
  if (!fd) return Fail(std::move(fd).error());
  std::string context = "asking the supervisor of sandbox " + sandbox.id;
  if (auto greeted = ReadGreeting(fd->get()); !greeted) {
    return Fail(std::move(greeted).error().Context(context));
  }
  auto bytes = std::span(reinterpret_cast<const uint8_t*>(line->data()), line->size());
  if (auto sent = WriteAll(fd->get(), bytes, Deadline::After(kGreetingTimeout),
                           "sending a control request");
      !sent) {
    return Fail(std::move(sent).error().Context(context));
  }
  // No deadline: a snapshot takes as long as writing and hashing the guest's memory.
  auto reply = ReadLine(fd->get(), kMaxControlReplySize, "reading the supervisor's answer");
  if (!reply) return Fail(std::move(reply).error().Context(context));
  if (reply->empty()) {
    return Fail(Error::Backend(fmt::format(
        "the supervisor of sandbox {} closed the connection without answering (a supervisor "
        "started by an older vessel does not take control requests: recreate the sandbox)",
        sandbox.id)));
  }
  return ParseControlReply(*reply);
}

}  // namespace vessel::supervisor
