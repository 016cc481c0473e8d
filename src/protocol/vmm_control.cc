#include "protocol/vmm_control.h"

#include <fmt/format.h>

#include <initializer_list>
#include <nlohmann/json.hpp>

namespace vessel::protocol::vmm_control {
namespace {

using nlohmann::json;

Error Bad(std::string_view what) {
  return Error::InvalidConfig("control request", std::string(what));
}

Error BadReply(std::string_view what) {
  return Error::Backend(fmt::format("malformed control reply: {}", what));
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

Result<VmConfig> DecodeConfigure(const json& j) {
  if (auto r = CheckKeys(j,
                         {"vcpus", "memory_mib", "kernel", "initramfs", "cmdline", "console_log",
                          "vsock", "agent_port", "disk", "memory"},
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
  auto disk = GetPath(j, "disk", kMaxPath, false);
  if (!disk) return Fail(std::move(disk.error()));
  config.disk = std::move(*disk);

  if (auto it = j.find("memory"); it != j.end()) {
    if (*it == "shared") {
      config.memory = MemorySource::kShared;
    } else if (*it == "private") {
      config.memory = MemorySource::kPrivate;
    } else {
      return Fail(Bad("\"memory\" must be \"shared\" or \"private\""));
    }
  }

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

json EncodeConfigure(const VmConfig& config) {
  json j{{"op", "configure"},
         {"vcpus", config.vcpus},
         {"memory_mib", config.memory_mib},
         {"kernel", config.kernel}};
  if (!config.initramfs.empty()) j["initramfs"] = config.initramfs;
  if (!config.cmdline.empty()) j["cmdline"] = config.cmdline;
  j["console_log"] = config.console_log;
  if (config.vsock) j["vsock"] = {{"cid", config.vsock->cid}, {"uds", config.vsock->uds}};
  if (!config.agent_port.empty()) j["agent_port"] = config.agent_port;
  if (!config.disk.empty()) j["disk"] = config.disk;
  if (config.memory != MemorySource::kOwn) {
    j["memory"] = config.memory == MemorySource::kShared ? "shared" : "private";
  }
  return j;
}

}  // namespace

std::string_view OpName(const Request& request) {
  struct Visitor {
    std::string_view operator()(const request::Hello&) const { return "hello"; }
    std::string_view operator()(const request::Configure&) const { return "configure"; }
    std::string_view operator()(const request::Start&) const { return "start"; }
    std::string_view operator()(const request::Pause&) const { return "pause"; }
    std::string_view operator()(const request::Resume&) const { return "resume"; }
    std::string_view operator()(const request::Status&) const { return "status"; }
    std::string_view operator()(const request::Shutdown&) const { return "shutdown"; }
    std::string_view operator()(const request::Save&) const { return "save"; }
    std::string_view operator()(const request::Restore&) const { return "restore"; }
  };
  return std::visit(Visitor{}, request);
}

size_t DescriptorCount(const Request& request) {
  if (const auto* configure = std::get_if<request::Configure>(&request)) {
    return configure->config.memory == MemorySource::kOwn ? 0 : 1;
  }
  if (const auto* save = std::get_if<request::Save>(&request)) {
    return save->memory == SaveMemory::kWrite ? 2 : 1;
  }
  return std::holds_alternative<request::Restore>(request) ? 1 : 0;
}

Result<std::string> EncodeRequest(const Request& request) {
  json j;
  if (const auto* hello = std::get_if<request::Hello>(&request)) {
    j = {{"op", "hello"}, {"version", hello->version}};
  } else if (const auto* configure = std::get_if<request::Configure>(&request)) {
    j = EncodeConfigure(configure->config);
  } else if (const auto* save = std::get_if<request::Save>(&request)) {
    j = {{"op", "save"}, {"memory", save->memory == SaveMemory::kFreeze ? "freeze" : "write"}};
  } else {
    j = {{"op", OpName(request)}};
  }
  std::string message;
  try {
    message = j.dump();
  } catch (const json::type_error&) {
    return Fail(Bad(fmt::format("\"{}\" carries a string that is not UTF-8", OpName(request))));
  }
  if (message.size() > kMaxMessage) {
    return Fail(Bad(fmt::format("exceeds {} KiB", kMaxMessage / 1024)));
  }
  return message;
}

Result<Request> DecodeRequest(std::string_view message) {
  if (message.empty()) return Fail(Bad("empty message"));
  if (message.size() > kMaxMessage) {
    return Fail(Bad(fmt::format("message exceeds {} bytes", kMaxMessage)));
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
    auto config = DecodeConfigure(j);
    if (!config) return Fail(std::move(config.error()));
    return request::Configure{.config = std::move(*config)};
  }
  if (op == "save") {
    if (auto r = CheckKeys(j, {"memory"}, ""); !r) return Fail(std::move(r.error()));
    auto it = j.find("memory");
    if (it != j.end() && *it == "freeze") return request::Save{.memory = SaveMemory::kFreeze};
    if (it != j.end() && *it == "write") return request::Save{.memory = SaveMemory::kWrite};
    return Fail(Bad("\"memory\" must be \"freeze\" or \"write\""));
  }
  // The ops that take no fields.
  if (op != "start" && op != "pause" && op != "resume" && op != "status" && op != "shutdown" &&
      op != "restore") {
    return Fail(Bad(fmt::format("unknown op \"{}\"", op.substr(0, 64))));
  }
  if (j.size() != 1) return Fail(Bad(fmt::format("\"{}\" takes no fields", op)));
  if (op == "start") return request::Start{};
  if (op == "pause") return request::Pause{};
  if (op == "resume") return request::Resume{};
  if (op == "status") return request::Status{};
  if (op == "shutdown") return request::Shutdown{};
  return request::Restore{};
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

std::string EncodeReply(const Reply& reply) {
  json j{{"ok", reply.ok}};
  if (!reply.ok) j["error"] = reply.error;
  if (!reply.ok && !reply.kind.empty()) j["kind"] = reply.kind;
  if (reply.version) j["version"] = *reply.version;
  if (!reply.vmm.empty()) j["vmm"] = reply.vmm;
  if (!reply.state.empty()) j["state"] = reply.state;
  // Invalid UTF-8 from a request echoed into an error must not make dump() throw.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<Reply> DecodeReply(std::string_view message) {
  if (message.size() > kMaxMessage) return Fail(BadReply("oversized"));
  json j = json::parse(message, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Fail(BadReply("not a JSON object"));
  auto ok = j.find("ok");
  if (ok == j.end() || !ok->is_boolean()) return Fail(BadReply("\"ok\" must be a boolean"));
  Reply reply{.ok = ok->get<bool>()};
  if (!reply.ok) {
    auto error = j.find("error");
    reply.error = error != j.end() && error->is_string() ? error->get<std::string>() : "failed";
    // Only the kinds this host knows; any other is a plain failure.
    if (auto kind = j.find("kind"); kind != j.end() && *kind == kSnapshotFormatKind) {
      reply.kind = std::string(kSnapshotFormatKind);
    }
    return reply;
  }
  if (auto it = j.find("version"); it != j.end()) {
    if (!it->is_number_integer()) return Fail(BadReply("\"version\" must be an integer"));
    reply.version = it->get<int64_t>();
  }
  for (auto [key, field] : {std::pair{"vmm", &reply.vmm}, std::pair{"state", &reply.state}}) {
    auto it = j.find(key);
    if (it == j.end()) continue;
    if (!it->is_string()) return Fail(BadReply(fmt::format("\"{}\" must be a string", key)));
    *field = it->get<std::string>();
  }
  return reply;
}

}  // namespace vessel::protocol::vmm_control
