#include "supervisor/supervisor_protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "base/io.h"
#include "protocol/wire.h"

namespace vessel::supervisor {
namespace {

using json = nlohmann::json;

// A report nests its error, a request its lists of rules, two levels; a reply nests the
// lists of its network object, three. A hostile line cannot make the parser build a deep
// tree.
constexpr int kMaxFlatDepth = 2;
constexpr int kMaxReplyDepth = 3;
// Error messages are clipped so that even escaped ("\u001b" for each byte) they fit the
// report and the reply; so does a reply's network object.
constexpr size_t kMaxMessageInReport = kMaxReportSize / 8;
static_assert(kMaxMessageInReply * 6 + 4096 < kMaxControlReplySize);
static_assert(kMaxNetworkRules * (kMaxNetworkRuleSize + 3) +
                  kMaxReportedRefusals * (kMaxRefusalSize * 6 + 3) + 4096 <
              kMaxControlReplySize);
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

std::optional<json> ParseFlatJson(std::string_view text, int max_depth) {
  bool too_deep = false;
  auto limit_depth = [&too_deep, max_depth](int depth, json::parse_event_t event, json&) {
    if (event != json::parse_event_t::object_start && event != json::parse_event_t::array_start) {
      return true;
    }
    if (depth < max_depth) return true;
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

json NetworkToJson(const NetworkReport& report) {
  const NetworkPolicy& policy = report.policy;
  const NetworkStats& stats = report.stats;
  auto refusals = json::array();
  size_t first = stats.recent_refusals.size() > kMaxReportedRefusals
                     ? stats.recent_refusals.size() - kMaxReportedRefusals
                     : 0;
  for (size_t i = first; i < stats.recent_refusals.size(); ++i) {
    refusals.push_back(stats.recent_refusals[i].substr(0, kMaxRefusalSize));
  }
  return {{"allow", policy.allow},
          {"max_connections", policy.max_connections},
          {"idle_timeout_s", policy.idle_timeout.count()},
          {"max_bytes", policy.max_bytes},
          {"allowed", stats.allowed},
          {"refused", stats.refused},
          {"bytes_sent", stats.bytes_sent},
          {"bytes_received", stats.bytes_received},
          {"open", stats.open},
          {"recent_refusals", std::move(refusals)}};
}

// A list of at most `max_items` strings of at most `max_size` bytes each; nullopt for
// anything else.
std::optional<std::vector<std::string>> StringList(const json& value, size_t max_items,
                                                   size_t max_size) {
  if (!value.is_array() || value.size() > max_items) return std::nullopt;
  std::vector<std::string> items;
  items.reserve(value.size());
  for (const auto& item : value) {
    if (!item.is_string() || item.get_ref<const std::string&>().size() > max_size) {
      return std::nullopt;
    }
    items.push_back(item.get<std::string>());
  }
  return items;
}

// The network object of a reply, checked as untrusted input: nullopt when a field is
// missing, of the wrong type, out of range or over a cap. Fields it does not know are
// ignored.
std::optional<NetworkReport> NetworkFromJson(const json& value) {
  if (!value.is_object()) return std::nullopt;
  auto number = [&](const char* key, uint64_t max) -> std::optional<uint64_t> {
    auto it = value.find(key);
    if (it == value.end() || !it->is_number_unsigned()) return std::nullopt;
    auto n = it->get<uint64_t>();
    if (n > max) return std::nullopt;
    return n;
  };
  auto list = [&](const char* key, size_t max_items, size_t max_size) {
    auto it = value.find(key);
    return it == value.end() ? std::nullopt : StringList(*it, max_items, max_size);
  };
  constexpr uint64_t kAny = std::numeric_limits<uint64_t>::max();
  constexpr uint64_t kAnyUint32 = std::numeric_limits<uint32_t>::max();
  auto allow = list("allow", kMaxNetworkRules, kMaxNetworkRuleSize);
  auto refusals = list("recent_refusals", kMaxReportedRefusals, kMaxRefusalSize);
  auto max_connections = number("max_connections", kAnyUint32);
  auto idle_timeout = number("idle_timeout_s", std::numeric_limits<int64_t>::max());
  auto max_bytes = number("max_bytes", kAny);
  auto allowed = number("allowed", kAny);
  auto refused = number("refused", kAny);
  auto bytes_sent = number("bytes_sent", kAny);
  auto bytes_received = number("bytes_received", kAny);
  auto open = number("open", kAnyUint32);
  if (!allow || !refusals || !max_connections || !idle_timeout || !max_bytes || !allowed ||
      !refused || !bytes_sent || !bytes_received || !open) {
    return std::nullopt;
  }
  NetworkReport report;
  report.policy.allow = std::move(*allow);
  report.policy.max_connections = static_cast<uint32_t>(*max_connections);
  report.policy.idle_timeout = std::chrono::seconds(static_cast<int64_t>(*idle_timeout));
  report.policy.max_bytes = *max_bytes;
  report.stats.allowed = *allowed;
  report.stats.refused = *refused;
  report.stats.bytes_sent = *bytes_sent;
  report.stats.bytes_received = *bytes_received;
  report.stats.open = static_cast<uint32_t>(*open);
  report.stats.recent_refusals = std::move(*refusals);
  return report;
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
  // Where the search for '\n' goes on: a long reply is scanned once.
  size_t searched = 0;
  while (line.find('\n', searched) == std::string::npos) {
    searched = line.size();
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
    auto error = ParseFlatJson(report.substr(6), kMaxFlatDepth);
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
    case ControlRequest::Op::kNetwork: {
      for (const auto* rules : {&request.allow, &request.deny}) {
        if (rules->size() > kMaxNetworkRules) {
          return Fail(Error::InvalidConfig(
              "network", fmt::format("{} rules; a change takes at most {} to allow and {} to deny",
                                     rules->size(), kMaxNetworkRules, kMaxNetworkRules)));
        }
        for (const std::string& rule : *rules) {
          if (rule.size() > kMaxNetworkRuleSize) {
            return Fail(Error::InvalidConfig(
                "network",
                fmt::format("rule {} is longer than {} bytes", Quoted(rule), kMaxNetworkRuleSize)));
          }
          try {
            (void)json(rule).dump();
          } catch (const json::type_error&) {
            return Fail(Error::InvalidConfig(
                "network",
                "rule " + Quoted(rule) + " is not valid UTF-8, which control requests carry"));
          }
        }
      }
      if (request.replace && !request.deny.empty()) {
        return Fail(Error::InvalidConfig("network", "a replacement allowlist takes no deny rules"));
      }
      line = {{"op", "network"}};
      if (!request.allow.empty()) line["allow"] = request.allow;
      if (!request.deny.empty()) line["deny"] = request.deny;
      if (request.replace) line["replace"] = true;
      break;
    }
  }
  std::string text;
  try {
    text = line.dump() + "\n";
  } catch (const json::type_error&) {
    return Fail(Error::InvalidConfig(
        "DIR", Quoted(request.dir) + " is not valid UTF-8, which control requests carry"));
  }
  // Only rules full of bytes that JSON escapes get here.
  if (text.size() > kMaxControlRequestSize) {
    return Fail(Error::InvalidConfig(
        "network", fmt::format("the rules take more than {} bytes", kMaxControlRequestSize)));
  }
  return text;
}

namespace {

Result<ControlRequest> ParseSnapshotRequest(const json& value) {
  ControlRequest request{.op = ControlRequest::Op::kSnapshot};
  for (const auto& field : value.items()) {
    if (field.key() != "op" && field.key() != "dir") {
      return Fail(
          InvalidRequest("unknown field " + Quoted(field.key()) + " in a snapshot request"));
    }
  }
  auto dir = value.find("dir");
  if (dir == value.end() || !dir->is_string()) return Fail(InvalidRequest("no \"dir\" string"));
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

Result<ControlRequest> ParseNetworkRequest(const json& value) {
  ControlRequest request{.op = ControlRequest::Op::kNetwork};
  for (const auto& field : value.items()) {
    const std::string& key = field.key();
    if (key == "op") continue;
    if (key == "replace") {
      if (!field.value().is_boolean()) return Fail(InvalidRequest("replace wants true or false"));
      request.replace = field.value().get<bool>();
      continue;
    }
    if (key != "allow" && key != "deny") {
      return Fail(InvalidRequest("unknown field " + Quoted(key) + " in a network request"));
    }
    auto rules = StringList(field.value(), kMaxNetworkRules, kMaxNetworkRuleSize);
    if (!rules) {
      return Fail(InvalidRequest(
          fmt::format("{} wants a list of at most {} strings of at most {} bytes each", key,
                      kMaxNetworkRules, kMaxNetworkRuleSize)));
    }
    (key == "allow" ? request.allow : request.deny) = std::move(*rules);
  }
  if (request.replace && !request.deny.empty()) {
    return Fail(InvalidRequest("a network request that replaces the allowlist takes no deny"));
  }
  return request;
}

}  // namespace

Result<ControlRequest> ParseControlRequest(std::string_view line) {
  if (line.size() > kMaxControlRequestSize) {
    return Fail(InvalidRequest(fmt::format("longer than {} bytes", kMaxControlRequestSize)));
  }
  auto end = line.find('\n');
  if (end == std::string_view::npos) return Fail(InvalidRequest("not ended by a newline"));
  if (end + 1 != line.size()) {
    return Fail(InvalidRequest("bytes after the request's newline (one request per connection)"));
  }
  auto value = ParseFlatJson(line.substr(0, end), kMaxFlatDepth);
  if (!value || !value->is_object()) {
    return Fail(InvalidRequest("not a JSON object in UTF-8"));
  }
  auto op = value->find("op");
  if (op == value->end() || !op->is_string()) return Fail(InvalidRequest("no \"op\" string"));
  const auto& name = op->get_ref<const std::string&>();
  if (name == "snapshot") return ParseSnapshotRequest(*value);
  if (name == "network") return ParseNetworkRequest(*value);
  return Fail(InvalidRequest("unknown op " + Quoted(name)));
}

std::string EncodeNetworkReport(const NetworkReport& report, int indent) {
  return NetworkToJson(report).dump(indent, ' ', false, json::error_handler_t::replace);
}

std::string EncodeControlReply(const Result<ControlReply>& outcome) {
  json reply = {{"ok", outcome.has_value()}};
  if (!outcome) {
    reply["error"] = ErrorToJson(outcome.error(), kMaxMessageInReply);
  } else if (outcome->network) {
    reply["network"] = NetworkToJson(*outcome->network);
  }
  std::string line = Dump(reply) + "\n";
  if (line.size() > kMaxControlReplySize) {
    return EncodeControlReply(Fail(Error::Backend(
        fmt::format("the supervisor's answer exceeds {} bytes", kMaxControlReplySize))));
  }
  return line;
}

Result<ControlReply> ParseControlReply(std::string_view line) {
  auto unreadable = [&] {
    return Fail(Error::Backend("the supervisor answered something unexpected: " + Quoted(line)));
  };
  if (line.size() > kMaxControlReplySize || !line.ends_with('\n')) return unreadable();
  line.remove_suffix(1);
  if (line.find('\n') != std::string_view::npos) return unreadable();
  auto reply = ParseFlatJson(line, kMaxReplyDepth);
  if (!reply || !reply->is_object()) return unreadable();
  auto ok = reply->find("ok");
  if (ok == reply->end() || !ok->is_boolean()) return unreadable();
  if (!ok->get<bool>()) {
    auto error = reply->find("error");
    if (error == reply->end()) return unreadable();
    return Fail(ErrorFromJson(*error));
  }
  ControlReply result;
  if (auto network = reply->find("network"); network != reply->end()) {
    result.network = NetworkFromJson(*network);
    if (!result.network) {
      return Fail(
          Error::Backend("the supervisor answered with a network object this vessel "
                         "cannot read: " +
                         Quoted(Dump(*network))));
    }
  }
  return result;
}

Result<ControlReply> SendControlRequest(const SandboxRecord& sandbox,
                                        const ControlRequest& request) {
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
