#include "vmm/control.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <set>

namespace vessel::vmm {
namespace {

using nlohmann::json;

Error Bad(std::string_view what) {
  return Error::InvalidConfig("control request", std::string(what));
}

// Only the listed keys (and "op") may appear: a misspelt option is an error, not a default.
Result<void> CheckKeys(const json& object, std::initializer_list<std::string_view> allowed,
                       std::string_view where) {
  for (const auto& [key, value] : object.items()) {
    if (key == "op" && where.empty()) continue;
    bool known = false;
    for (std::string_view a : allowed) known = known || key == a;
    if (!known) {
      return Fail(
          Bad(fmt::format("unknown field \"{}\"{}{}", key, where.empty() ? "" : " in ", where)));
    }
  }
  return {};
}

Result<uint64_t> GetUnsigned(const json& object, const char* key, uint64_t min, uint64_t max) {
  auto it = object.find(key);
  if (it == object.end()) return Fail(Bad(fmt::format("\"{}\" is missing", key)));
  if (!it->is_number_integer()) return Fail(Bad(fmt::format("\"{}\" must be an integer", key)));
  if (!it->is_number_unsigned() || it->get<uint64_t>() < min || it->get<uint64_t>() > max) {
    return Fail(Bad(fmt::format("\"{}\" must be between {} and {}", key, min, max)));
  }
  return it->get<uint64_t>();
}

Result<std::string> GetString(const json& object, const char* key, size_t max_size, bool required) {
  auto it = object.find(key);
  if (it == object.end()) {
    if (required) return Fail(Bad(fmt::format("\"{}\" is missing", key)));
    return std::string();
  }
  if (!it->is_string()) return Fail(Bad(fmt::format("\"{}\" must be a string", key)));
  std::string value = it->get<std::string>();
  if (value.size() > max_size) {
    return Fail(Bad(fmt::format("\"{}\" is longer than {} bytes", key, max_size)));
  }
  if (value.find('\0') != std::string::npos) {
    return Fail(Bad(fmt::format("\"{}\" contains a NUL byte", key)));
  }
  return value;
}

Result<std::string> GetPath(const json& object, const char* key, size_t max_size, bool required) {
  auto value = GetString(object, key, max_size, required);
  if (!value) return value;
  if (!value->empty() && value->front() != '/') {
    return Fail(Bad(fmt::format("\"{}\" must be an absolute path", key)));
  }
  if (required && value->empty()) return Fail(Bad(fmt::format("\"{}\" is empty", key)));
  return value;
}

Result<VmConfig> ParseConfigure(const json& j) {
  if (auto r = CheckKeys(j,
                         {"vcpus", "memory_mib", "kernel", "initramfs", "cmdline", "console_log",
                          "vsock", "agent_port"},
                         "");
      !r) {
    return Fail(std::move(r.error()));
  }
  VmConfig config;
  auto vcpus = GetUnsigned(j, "vcpus", 1, kMaxVcpus);
  if (!vcpus) return Fail(std::move(vcpus.error()));
  config.vcpus = static_cast<uint32_t>(*vcpus);
  auto memory = GetUnsigned(j, "memory_mib", kMinMemoryMib, kMaxMemoryMib);
  if (!memory) return Fail(std::move(memory.error()));
  config.memory_mib = *memory;

  auto kernel = GetPath(j, "kernel", kMaxPath, true);
  if (!kernel) return Fail(std::move(kernel.error()));
  config.kernel = std::move(*kernel);
  auto initramfs = GetPath(j, "initramfs", kMaxPath, false);
  if (!initramfs) return Fail(std::move(initramfs.error()));
  config.initramfs = std::move(*initramfs);
  auto cmdline = GetString(j, "cmdline", kMaxCmdline, false);
  if (!cmdline) return Fail(std::move(cmdline.error()));
  config.cmdline = std::move(*cmdline);
  auto console_log = GetPath(j, "console_log", kMaxPath, true);
  if (!console_log) return Fail(std::move(console_log.error()));
  config.console_log = std::move(*console_log);
  auto agent_port = GetPath(j, "agent_port", kMaxSocketPath, false);
  if (!agent_port) return Fail(std::move(agent_port.error()));
  config.agent_port = std::move(*agent_port);

  if (auto it = j.find("vsock"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Fail(Bad("\"vsock\" must be an object"));
    if (auto r = CheckKeys(*it, {"cid", "uds"}, "vsock"); !r) return Fail(std::move(r.error()));
    auto cid = GetUnsigned(*it, "cid", kMinGuestCid, kMaxGuestCid);
    if (!cid) return Fail(std::move(cid.error()));
    auto uds = GetPath(*it, "uds", kMaxSocketPath, true);
    if (!uds) return Fail(std::move(uds.error()));
    config.vsock = VsockConfig{.cid = *cid, .uds = std::move(*uds)};
  }
  return config;
}

}  // namespace

Result<Request> ParseRequest(std::string_view message) {
  if (message.empty()) return Fail(Bad("empty message"));
  if (message.size() > kMaxControlMessage) {
    return Fail(Bad(fmt::format("message exceeds {} bytes", kMaxControlMessage)));
  }
  json j = json::parse(message, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Fail(Bad("not valid JSON"));
  if (!j.is_object()) return Fail(Bad("not a JSON object"));
  auto op_it = j.find("op");
  if (op_it == j.end() || !op_it->is_string()) return Fail(Bad("\"op\" must be a string"));
  std::string op = op_it->get<std::string>();

  if (op == "hello") {
    if (auto r = CheckKeys(j, {"version"}, ""); !r) return Fail(std::move(r.error()));
    auto it = j.find("version");
    if (it == j.end() || !it->is_number_integer()) {
      return Fail(Bad("\"version\" must be an integer"));
    }
    return request::Hello{.version = it->get<int64_t>()};
  }
  if (op == "configure") {
    auto config = ParseConfigure(j);
    if (!config) return Fail(std::move(config.error()));
    return request::Configure{.config = std::move(*config)};
  }
  auto no_fields = [&j, &op]() -> Result<void> {
    if (j.size() != 1) return Fail(Bad(fmt::format("\"{}\" takes no fields", op)));
    return {};
  };
  Request request;
  if (op == "start") {
    request = request::Start{};
  } else if (op == "pause") {
    request = request::Pause{};
  } else if (op == "resume") {
    request = request::Resume{};
  } else if (op == "status") {
    request = request::Status{};
  } else if (op == "shutdown") {
    request = request::Shutdown{};
  } else {
    return Fail(Bad(fmt::format("unknown op \"{}\"", op.substr(0, 64))));
  }
  if (auto r = no_fields(); !r) return Fail(std::move(r.error()));
  return request;
}

std::string_view ToString(VmState state) {
  switch (state) {
    case VmState::kConfigured: return "configured";
    case VmState::kRunning: return "running";
    case VmState::kPaused: return "paused";
    case VmState::kShutdown: return "shutdown";
    case VmState::kGuestPanicked: return "guest-panicked";
    case VmState::kFailed: return "failed";
  }
  return "failed";
}

std::string OkReply() { return json{{"ok", true}}.dump(); }

std::string ErrorReply(std::string_view error) {
  // Invalid UTF-8 from a request echoed into an error must not make dump() throw.
  return json{{"ok", false}, {"error", std::string(error)}}.dump(-1, ' ', false,
                                                                 json::error_handler_t::replace);
}

std::string ControlSession::Handle(std::string_view message) {
  auto request = ParseRequest(message);
  if (!request) return ErrorReply(request.error().message());
  return Dispatch(*request);
}

std::string ControlSession::Dispatch(const Request& request) {
  auto out_of_order = [](std::string_view op, std::string_view expected) {
    return ErrorReply(fmt::format("\"{}\" is not allowed now: {}", op, expected));
  };
  auto reply = [](const Result<void>& r) {
    return r ? OkReply() : ErrorReply(r.error().message());
  };

  if (const auto* hello = std::get_if<request::Hello>(&request)) {
    if (phase_ != Phase::kAwaitingHello) return out_of_order("hello", "hello was already sent");
    if (hello->version != kControlProtocolVersion) {
      return ErrorReply(fmt::format("protocol version {} is not supported; this VMM speaks {}",
                                    hello->version, kControlProtocolVersion));
    }
    phase_ = Phase::kAwaitingConfigure;
    return json{{"ok", true}, {"version", kControlProtocolVersion}, {"vmm", kVmmVersion}}.dump();
  }
  if (std::holds_alternative<request::Shutdown>(request)) {
    shutdown_requested_ = true;
    return OkReply();
  }
  if (phase_ == Phase::kAwaitingHello) return out_of_order("request", "send hello first");

  if (const auto* configure = std::get_if<request::Configure>(&request)) {
    if (phase_ != Phase::kAwaitingConfigure) {
      return out_of_order("configure", "the VM is already configured");
    }
    auto r = vm_.Configure(configure->config);
    if (r) phase_ = Phase::kConfigured;
    return reply(r);
  }
  if (std::holds_alternative<request::Status>(request)) {
    json j{{"ok", true},
           {"state", phase_ == Phase::kAwaitingConfigure ? std::string_view("unconfigured")
                                                         : ToString(vm_.state())}};
    return j.dump();
  }
  if (std::holds_alternative<request::Start>(request)) {
    if (phase_ == Phase::kAwaitingConfigure) return out_of_order("start", "configure first");
    if (phase_ == Phase::kStarted) return out_of_order("start", "the VM was already started");
    auto r = vm_.Start();
    if (r) phase_ = Phase::kStarted;
    return reply(r);
  }
  if (phase_ != Phase::kStarted) {
    return out_of_order(std::holds_alternative<request::Pause>(request) ? "pause" : "resume",
                        "the VM has not been started");
  }
  if (std::holds_alternative<request::Pause>(request)) return reply(vm_.Pause());
  return reply(vm_.Resume());
}

}  // namespace vessel::vmm
