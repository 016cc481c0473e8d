#include "server/registry.h"

#include <fmt/format.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <tuple>

#include "base/io.h"
#include "base/private_dir.h"
#include "base/secret_file.h"
#include "image/image.h"
#include "supervisor/client.h"
#include "supervisor/fork.h"
#include "supervisor/launch.h"
#include "supervisor/state.h"
#include "supervisor/supervisor_protocol.h"

namespace vessel::server {
namespace {

constexpr std::string_view kAttributesFile = "api.json";
constexpr size_t kMaxAttributesFile = 1024 * 1024;
// The SDK's default template; served by the Debian image with Python when there is one.
constexpr std::string_view kBaseTemplate = "base";
constexpr std::string_view kBaseImage = "python";
constexpr uint32_t kMinimalMemoryMb = 256;
// Names the pools' sandboxes; a name `vessel create` refuses (it starts with '.'), so
// that a pool's sandbox is known before its api.json is written.
constexpr std::string_view kPoolNamePrefix = ".pool-";
// After a failed boot, a pool waits this long before it tries again.
constexpr std::chrono::seconds kPoolRetryDelay{5};
// The template a sandbox that the CLI made is listed with.
constexpr std::string_view kCliTemplate = "cli";
constexpr uint32_t kImageMemoryMb = 512;
constexpr std::string_view kPausedFile = "paused.json";
constexpr std::string_view kPausedSnapshot = "snapshot";

std::string PausedRoot() { return ServerStateDir() + "/paused"; }
std::string PausedDir(const std::string& id) { return PausedRoot() + "/" + id; }
std::string SnapshotsRoot() { return ServerStateDir() + "/snapshots"; }
std::string SnapshotTemplateDir(const std::string& id) { return SnapshotsRoot() + "/" + id; }

// Makes the state directory and its `sub`directory, private to this user.
Result<void> MakeStateSubdir(const std::string& sub) {
  const char* chosen = std::getenv("VESSEL_STATE_DIR");
  const PrivateDirRole role{"the state directory", "paused sandboxes and snapshot templates",
                            "VESSEL_STATE_DIR"};
  if (auto made = MakePrivateDir(ServerStateDir(), !(chosen && *chosen), role); !made) {
    return made;
  }
  return MakePrivateDir(sub, /*narrow=*/true, role);
}

constexpr std::string_view kTemplateFile = "template.json";
constexpr std::string_view kSnapshotIdPrefix = "snapshot-";

std::string EncodeSnapshotInfo(const SnapshotInfo& info, uint32_t cpu_count, uint32_t memory_mb) {
  nlohmann::json json = {{"names", info.names},
                         {"sandbox_id", info.sandbox_id},
                         {"created_ms", info.created_ms},
                         {"cpu_count", cpu_count},
                         {"memory_mb", memory_mb}};
  return json.dump(2) + "\n";
}

// The snapshot templates, each with its machine; those that cannot be read are left out.
std::vector<std::pair<SnapshotInfo, TemplateInfo>> ReadSnapshotTemplates() {
  std::vector<std::pair<SnapshotInfo, TemplateInfo>> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(SnapshotsRoot(), ec)) {
    std::string id = entry.path().filename();
    if (!id.starts_with(kSnapshotIdPrefix) ||
        !supervisor::IsSandboxId(id.substr(kSnapshotIdPrefix.size()))) {
      continue;
    }
    auto text = ReadFileToString(SnapshotTemplateDir(id) + "/" + std::string(kTemplateFile),
                                 kMaxAttributesFile);
    if (!text) continue;
    auto json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
    SnapshotInfo info{.id = id};
    TemplateInfo machine{.id = id, .snapshot_dir = SnapshotTemplateDir(id) + "/snapshot"};
    try {
      info.names = json.at("names").get<std::vector<std::string>>();
      info.sandbox_id = json.at("sandbox_id").get<std::string>();
      info.created_ms = json.at("created_ms").get<int64_t>();
      machine.cpu_count = json.at("cpu_count").get<uint32_t>();
      machine.memory_mb = json.at("memory_mb").get<uint32_t>();
    } catch (const nlohmann::json::exception&) {
      continue;
    }
    machine.aliases = info.names;
    machine.created_ms = info.created_ms;
    out.emplace_back(std::move(info), std::move(machine));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::tie(a.first.created_ms, a.first.id) < std::tie(b.first.created_ms, b.first.id);
  });
  return out;
}

// paused.json: the sandbox as it was listed when it was paused.
std::string EncodePaused(const ApiSandbox& s) {
  nlohmann::json json = {{"engine", s.engine},
                         {"cpu_count", s.cpu_count},
                         {"memory_mb", s.memory_mb},
                         {"started_at_ms", s.started_at_ms},
                         {"attributes", nlohmann::json::parse(EncodeAttributes(s.attributes))}};
  return json.dump(2) + "\n";
}

// The paused sandbox `id`; nullopt when there is none.
Result<std::optional<ApiSandbox>> ReadPaused(const std::string& id) {
  using Paused = std::optional<ApiSandbox>;
  if (!supervisor::IsSandboxId(id)) return Paused();
  auto text = ReadFileToString(PausedDir(id) + "/" + std::string(kPausedFile), kMaxAttributesFile);
  if (!text) {
    int e = text.error().errno_value();
    if (e == ENOENT || e == ENOTDIR) return Paused();
    return Fail(std::move(text).error());
  }
  auto json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](std::string_view what) {
    return Fail(
        Error::HostIo(fmt::format("read {}/{}: {}", PausedDir(id), kPausedFile, what), EINVAL));
  };
  if (!json.is_object() || !json.contains("attributes")) return bad("not a paused sandbox");
  ApiSandbox s{.id = id, .state = "paused"};
  try {
    s.engine = json.at("engine").get<std::string>();
    s.cpu_count = json.at("cpu_count").get<uint32_t>();
    s.memory_mb = json.at("memory_mb").get<uint32_t>();
    s.started_at_ms = json.at("started_at_ms").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  auto attributes = ParseAttributes(json["attributes"].dump());
  if (!attributes) return Fail(std::move(attributes).error());
  s.attributes = std::move(*attributes);
  return Paused(std::move(s));
}

Result<void> WritePaused(const ApiSandbox& s) {
  std::string path = PausedDir(s.id) + "/" + std::string(kPausedFile);
  if (auto written = WriteStringToFile(path + ".new", EncodePaused(s)); !written) return written;
  if (std::rename((path + ".new").c_str(), path.c_str()) != 0) {
    return Fail(Error::HostIo("rename " + path, errno));
  }
  return {};
}

std::vector<std::string> PausedIds() {
  std::vector<std::string> ids;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(PausedRoot(), ec)) {
    std::string name = entry.path().filename();
    if (supervisor::IsSandboxId(name)) ids.push_back(std::move(name));
  }
  return ids;
}

Result<std::optional<ApiSandbox>> Describe(const std::string& id) {
  auto listing = supervisor::Inspect(id);
  if (!listing || listing->state == "dead") return std::optional<ApiSandbox>();
  ApiSandbox sandbox{.id = id,
                     .state = listing->state,
                     .engine = listing->record.engine,
                     .cpu_count = listing->record.vcpus,
                     .memory_mb = listing->record.memory_mib,
                     .started_at_ms = listing->record.created * 1000};
  auto text = supervisor::ReadSandboxFile(id, kAttributesFile, kMaxAttributesFile);
  if (text) {
    auto attributes = ParseAttributes(*text);
    if (!attributes) return Fail(std::move(attributes).error());
    if (attributes->pooled) return std::optional<ApiSandbox>();
    sandbox.attributes = std::move(*attributes);
  } else if (text.error().errno_value() != ENOENT) {
    return Fail(std::move(text).error());
  } else if (listing->record.name.starts_with(kPoolNamePrefix)) {
    return std::optional<ApiSandbox>();  // a pool's, still booting
  } else {
    // Made by `vessel create`, `restore` or `fork`: no template, no timeout, no token.
    sandbox.attributes.template_id = std::string(kCliTemplate);
  }
  return std::optional<ApiSandbox>(std::move(sandbox));
}

// A snapshot template's sandboxes are restored with the snapshot's machine; the others
// boot the template's, or the one the request asks for.
supervisor::SupervisorConfig MachineFor(const TemplateInfo& chosen, const NewSandbox& request) {
  supervisor::SupervisorConfig config;
  if (request.allow_out) {
    config.sandbox.network.allow = *request.allow_out;
    config.replace_network = true;
  }
  if (!chosen.snapshot_dir.empty()) {
    config.restore_dir = chosen.snapshot_dir;
    return config;
  }
  config.sandbox.image = chosen.image;
  config.sandbox.vcpus = request.cpu_count.value_or(chosen.cpu_count);
  config.sandbox.memory_mib = request.memory_mb.value_or(chosen.memory_mb);
  return config;
}

// Gives the running sandbox `id` its API attributes; a sandbox that is gone (or the
// attributes that could not be written) is stopped and removed, and the error returned.
Result<ApiSandbox> Claim(const std::string& id, const ApiAttributes& attributes) {
  auto written = supervisor::WriteSandboxFile(id, kAttributesFile, EncodeAttributes(attributes));
  auto sandbox = written ? Describe(id) : Result<std::optional<ApiSandbox>>(Fail(written.error()));
  if (sandbox && *sandbox && (*sandbox)->state == "running") return std::move(**sandbox);
  if (auto record = supervisor::ReadRecord(id)) (void)supervisor::StopAndRemove(*record);
  if (!sandbox) return Fail(std::move(sandbox).error());
  return Fail(Error::Backend(fmt::format("sandbox {} stopped as soon as it started", id)));
}

}  // namespace

Result<std::string> NewAccessToken() {
  uint8_t bytes[24];
  if (::getrandom(bytes, sizeof(bytes), 0) != static_cast<ssize_t>(sizeof(bytes))) {
    return Fail(Error::HostIo("getrandom", errno));
  }
  return LowerHex(bytes);
}

std::string ServerStateDir() {
  if (const char* dir = std::getenv("VESSEL_STATE_DIR"); dir && *dir) return dir;
  if (const char* dir = std::getenv("XDG_STATE_HOME"); dir && *dir) {
    return std::string(dir) + "/vessel";
  }
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/root") + "/.local/state/vessel";
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string EncodeAttributes(const ApiAttributes& a) {
  nlohmann::json json = {{"template_id", a.template_id},
                         {"metadata", a.metadata},
                         {"env_vars", a.env_vars},
                         {"end_at_ms", a.end_at_ms},
                         {"access_token", a.access_token},
                         {"auto_pause", a.auto_pause},
                         {"pooled", a.pooled}};
  return json.dump(2) + "\n";
}

Result<ApiAttributes> ParseAttributes(std::string_view text) {
  auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [](std::string_view what) {
    return Fail(Error::HostIo(fmt::format("read {}: {}", kAttributesFile, what), EINVAL));
  };
  if (!json.is_object()) return bad("not a JSON object");
  ApiAttributes a;
  try {
    a.template_id = json.at("template_id").get<std::string>();
    a.metadata = json.at("metadata").get<std::map<std::string, std::string>>();
    a.env_vars = json.at("env_vars").get<std::map<std::string, std::string>>();
    a.end_at_ms = json.at("end_at_ms").get<int64_t>();
    a.access_token = json.at("access_token").get<std::string>();
    a.auto_pause = json.at("auto_pause").get<bool>();
    a.pooled = json.value("pooled", false);
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  return a;
}

Result<TemplateInfo> SupervisorRegistry::FindTemplate(const std::string& id) {
  auto templates = Templates();
  if (!templates) return Fail(std::move(templates).error());
  for (auto& t : *templates) {
    if (t.id == id || std::find(t.aliases.begin(), t.aliases.end(), id) != t.aliases.end()) {
      return std::move(t);
    }
  }
  return Fail(Error::InvalidConfig("templateID", fmt::format("template '{}' not found", id)));
}

Result<std::vector<TemplateInfo>> SupervisorRegistry::Templates() {
  auto images = image::Store::Default().List();
  if (!images) return Fail(std::move(images).error());
  std::vector<TemplateInfo> templates;
  bool has_base_image = false;
  for (const auto& record : *images) has_base_image |= record.name == kBaseImage;
  templates.push_back(TemplateInfo{
      .id = std::string(kBaseTemplate),
      .aliases = {std::string(kBaseTemplate)},
      .image = has_base_image ? std::string(kBaseImage) : std::string(),
      .memory_mb = has_base_image ? kImageMemoryMb : kMinimalMemoryMb,
  });
  templates.push_back(TemplateInfo{
      .id = "minimal", .aliases = {"minimal"}, .image = {}, .memory_mb = kMinimalMemoryMb});
  for (const auto& record : *images) {
    templates.push_back(TemplateInfo{.id = record.name,
                                     .aliases = {record.name},
                                     .image = record.name,
                                     .memory_mb = kImageMemoryMb,
                                     .created_ms = record.created_unix_ms});
  }
  for (auto& [info, machine] : ReadSnapshotTemplates()) templates.push_back(std::move(machine));
  return templates;
}

Result<ApiSandbox> SupervisorRegistry::Create(const NewSandbox& request) {
  auto chosen = FindTemplate(request.template_id);
  if (!chosen) return Fail(std::move(chosen).error());
  if (!chosen->snapshot_dir.empty() && (request.cpu_count || request.memory_mb)) {
    return Fail(Error::InvalidConfig(
        "cpuCount", fmt::format("'{}' is a snapshot: its sandboxes have its CPUs and memory",
                                request.template_id)));
  }
  auto token = NewAccessToken();
  if (!token) return Fail(std::move(token).error());
  ApiAttributes attributes{.template_id = chosen->id,
                           .metadata = request.metadata,
                           .env_vars = request.env_vars,
                           .end_at_ms = 0,
                           .access_token = std::move(*token),
                           .auto_pause = request.auto_pause};
  // A warm one when the request wants the template's own machine; else, or when the one
  // taken turns out dead, a boot.
  if (!request.cpu_count && !request.memory_mb) {
    while (auto id = TakePooled(chosen->id)) {
      attributes.end_at_ms = NowMs() + request.timeout.count() * 1000;
      auto claimed = Claim(*id, attributes);
      if (!claimed) continue;
      if (!request.allow_out) return std::move(*claimed);
      // A warm sandbox booted with its template's allowlist: this request's replaces it.
      auto set = SetNetwork(*id, *request.allow_out);
      if (set && *set) return std::move(*claimed);
      (void)Kill(*id);
      if (!set) return Fail(std::move(set).error());
    }
  }
  auto id = supervisor::StartSandbox(MachineFor(*chosen, request));
  if (!id) return Fail(std::move(id).error());
  attributes.end_at_ms = NowMs() + request.timeout.count() * 1000;
  return Claim(*id, attributes);
}

Result<std::vector<ApiSandbox>> SupervisorRegistry::List() {
  auto ids = supervisor::ListSandboxIds();
  if (!ids) return Fail(std::move(ids).error());
  std::vector<ApiSandbox> sandboxes;
  for (const auto& id : *ids) {
    auto sandbox = Describe(id);
    if (sandbox && *sandbox) sandboxes.push_back(std::move(**sandbox));
  }
  for (const auto& id : PausedIds()) {
    // One being resumed is running already.
    if (std::find(ids->begin(), ids->end(), id) != ids->end()) continue;
    auto sandbox = ReadPaused(id);
    if (sandbox && *sandbox) sandboxes.push_back(std::move(**sandbox));
  }
  return sandboxes;
}

Result<std::optional<ApiSandbox>> SupervisorRegistry::Get(const std::string& id) {
  auto ids = supervisor::ListSandboxIds();
  if (!ids) return Fail(std::move(ids).error());
  if (std::find(ids->begin(), ids->end(), id) == ids->end()) return ReadPaused(id);
  return Describe(id);
}

Result<bool> SupervisorRegistry::Kill(const std::string& id) {
  auto sandbox = Get(id);
  if (!sandbox) return Fail(std::move(sandbox).error());
  if (!*sandbox) return false;
  if ((*sandbox)->state == "paused") {
    std::lock_guard lock(mutex_);
    if (auto removed = RemoveTree(PausedDir(id)); !removed) return Fail(std::move(removed).error());
    return true;
  }
  auto record = supervisor::ReadRecord(id);
  if (!record) return Fail(std::move(record).error());
  if (auto stopped = supervisor::StopAndRemove(*record); !stopped) {
    return Fail(std::move(stopped).error());
  }
  return true;
}

Result<std::optional<std::vector<ApiSandbox>>> SupervisorRegistry::Fork(
    const std::string& id, uint32_t count, std::chrono::seconds timeout) {
  using Children = std::optional<std::vector<ApiSandbox>>;
  auto parent = Get(id);
  if (!parent) return Fail(std::move(parent).error());
  if (!*parent) return Children();
  auto record = supervisor::ReadRecord(id);
  if (!record) return Fail(std::move(record).error());
  auto ids = supervisor::ForkSandbox(*record, count);
  if (!ids) return Fail(std::move(ids).error());
  std::vector<ApiSandbox> children;
  for (size_t i = 0; i < ids->size(); ++i) {
    auto token = NewAccessToken();
    Result<ApiSandbox> child = Fail(Error::Backend("not claimed"));
    if (token) {
      ApiAttributes attributes = (*parent)->attributes;
      attributes.access_token = std::move(*token);
      attributes.end_at_ms = NowMs() + timeout.count() * 1000;
      attributes.pooled = false;
      child = Claim((*ids)[i], attributes);
    } else {
      child = Fail(std::move(token).error());
    }
    if (!child) {
      // All or none: the children not yet claimed go too (Claim removed its own).
      for (size_t j = i + 1; j < ids->size(); ++j) {
        if (auto rest = supervisor::ReadRecord((*ids)[j])) (void)supervisor::StopAndRemove(*rest);
      }
      for (const auto& made : children) (void)Kill(made.id);
      return Fail(std::move(child).error());
    }
    children.push_back(std::move(*child));
  }
  return Children(std::move(children));
}

Result<bool> SupervisorRegistry::SetEndAt(const std::string& id, int64_t end_at_ms) {
  std::lock_guard lock(mutex_);
  auto sandbox = Get(id);
  if (!sandbox) return Fail(std::move(sandbox).error());
  if (!*sandbox) return false;
  if ((*sandbox)->state == "paused") {
    (*sandbox)->attributes.end_at_ms = end_at_ms;
    if (auto written = WritePaused(**sandbox); !written) return Fail(std::move(written).error());
    return true;
  }
  ApiAttributes attributes = (*sandbox)->attributes;
  attributes.end_at_ms = end_at_ms;
  if (auto written =
          supervisor::WriteSandboxFile(id, kAttributesFile, EncodeAttributes(attributes));
      !written) {
    return Fail(std::move(written).error());
  }
  return true;
}

Result<bool> SupervisorRegistry::SetNetwork(const std::string& id,
                                            const std::vector<std::string>& allow) {
  auto sandbox = Get(id);
  if (!sandbox) return Fail(std::move(sandbox).error());
  if (!*sandbox) return false;
  if ((*sandbox)->state == "paused") {
    return Fail(Error::InvalidConfig(
        "network", fmt::format("sandbox {} is paused: resume it to change its network", id)));
  }
  auto record = supervisor::ReadRecord(id);
  if (!record) return Fail(std::move(record).error());
  auto set = supervisor::SendControlRequest(
      *record, {.op = supervisor::ControlRequest::Op::kNetwork, .allow = allow, .replace = true});
  if (!set) return Fail(std::move(set).error());
  return true;
}

Result<PauseOutcome> SupervisorRegistry::Pause(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto sandbox = Get(id);
  if (!sandbox) return Fail(std::move(sandbox).error());
  if (!*sandbox) return PauseOutcome::kNotFound;
  if ((*sandbox)->state == "paused") return PauseOutcome::kAlreadyPaused;
  if ((*sandbox)->state != "running") return PauseOutcome::kNotRunning;
  auto record = supervisor::ReadRecord(id);
  if (!record) return Fail(std::move(record).error());
  if (auto made = MakeStateSubdir(PausedRoot()); !made) return Fail(std::move(made).error());
  const std::string dir = PausedDir(id);
  (void)RemoveTree(dir);  // what a pause that died half way left
  if (::mkdir(dir.c_str(), 0700) != 0) return Fail(Error::HostIo("create " + dir, errno));
  auto undo = [&](Error error) {
    (void)RemoveTree(dir);
    return Fail(std::move(error).Context("pausing sandbox " + id));
  };
  auto saved =
      supervisor::SendControlRequest(*record, {.op = supervisor::ControlRequest::Op::kSnapshot,
                                               .dir = dir + "/" + std::string(kPausedSnapshot)});
  if (!saved) return undo(std::move(saved).error());
  if (auto written = WritePaused(**sandbox); !written) return undo(std::move(written).error());
  if (auto stopped = supervisor::StopAndRemove(*record); !stopped) {
    return undo(std::move(stopped).error());
  }
  return PauseOutcome::kPaused;
}

Result<std::optional<ApiSandbox>> SupervisorRegistry::Resume(const std::string& id,
                                                             std::chrono::seconds timeout) {
  std::lock_guard lock(mutex_);
  auto paused = ReadPaused(id);
  if (!paused || !*paused) return paused;
  supervisor::SupervisorConfig config{
      .restore_dir = PausedDir(id) + "/" + std::string(kPausedSnapshot), .id = id};
  auto started = supervisor::StartSandbox(std::move(config));
  if (!started) return Fail(std::move(started).error().Context("resuming sandbox " + id));
  ApiAttributes attributes = (*paused)->attributes;
  attributes.end_at_ms = NowMs() + timeout.count() * 1000;
  auto claimed = Claim(*started, attributes);
  if (!claimed) return Fail(std::move(claimed).error().Context("resuming sandbox " + id));
  // The restored VM maps the snapshot's memory copy-on-write: removing it is safe.
  (void)RemoveTree(PausedDir(id));
  return std::optional<ApiSandbox>(std::move(*claimed));
}

Result<std::optional<SnapshotInfo>> SupervisorRegistry::Snapshot(const std::string& id,
                                                                 const std::string& name) {
  std::lock_guard lock(mutex_);
  auto sandbox = Get(id);
  if (!sandbox) return Fail(std::move(sandbox).error());
  if (!*sandbox) return std::optional<SnapshotInfo>();
  if ((*sandbox)->state != "running") {
    return Fail(Error::InvalidConfig(
        "sandbox", fmt::format("sandbox {} is {}: only a running one can be snapshotted", id,
                               (*sandbox)->state)));
  }
  SnapshotInfo info{.sandbox_id = id, .created_ms = NowMs()};
  if (!name.empty()) {
    if (auto valid = image::CheckName(name); !valid) {
      return Fail(Error::InvalidConfig("name", valid.error().message()));
    }
    if (FindTemplate(name)) {
      return Fail(Error::InvalidConfig("name", fmt::format("a template named '{}' exists", name)));
    }
    info.names.push_back(name);
  }
  auto record = supervisor::ReadRecord(id);
  if (!record) return Fail(std::move(record).error());
  if (auto made = MakeStateSubdir(SnapshotsRoot()); !made) return Fail(std::move(made).error());
  auto suffix = NewAccessToken();
  if (!suffix) return Fail(std::move(suffix).error());
  info.id = std::string(kSnapshotIdPrefix) + suffix->substr(0, 12);
  const std::string dir = SnapshotTemplateDir(info.id);
  if (::mkdir(dir.c_str(), 0700) != 0) return Fail(Error::HostIo("create " + dir, errno));
  auto undo = [&](Error error) {
    (void)RemoveTree(dir);
    return Fail(std::move(error).Context("snapshotting sandbox " + id));
  };
  auto saved = supervisor::SendControlRequest(
      *record, {.op = supervisor::ControlRequest::Op::kSnapshot, .dir = dir + "/snapshot"});
  if (!saved) return undo(std::move(saved).error());
  if (auto written =
          WriteStringToFile(dir + "/" + std::string(kTemplateFile),
                            EncodeSnapshotInfo(info, (*sandbox)->cpu_count, (*sandbox)->memory_mb));
      !written) {
    return undo(std::move(written).error());
  }
  return std::optional<SnapshotInfo>(std::move(info));
}

Result<std::vector<SnapshotInfo>> SupervisorRegistry::Snapshots() {
  std::vector<SnapshotInfo> out;
  for (auto& [info, machine] : ReadSnapshotTemplates()) out.push_back(std::move(info));
  return out;
}

Result<DeleteOutcome> SupervisorRegistry::DeleteTemplate(const std::string& id) {
  std::lock_guard lock(mutex_);
  for (const auto& [info, machine] : ReadSnapshotTemplates()) {
    if (info.id != id && std::find(info.names.begin(), info.names.end(), id) == info.names.end()) {
      continue;
    }
    if (auto removed = RemoveTree(SnapshotTemplateDir(info.id)); !removed) {
      return Fail(std::move(removed).error());
    }
    return DeleteOutcome::kDeleted;
  }
  return FindTemplate(id) ? DeleteOutcome::kNotASnapshot : DeleteOutcome::kNotFound;
}

Result<std::shared_ptr<sandbox::Connection>> SupervisorRegistry::Connect(const std::string& id) {
  auto record = supervisor::ReadRecord(id);
  if (!record) return Fail(std::move(record).error());
  return supervisor::ConnectAgent(*record);
}

SupervisorRegistry::~SupervisorRegistry() {
  {
    std::lock_guard lock(pool_mutex_);
    stopping_ = true;
  }
  pool_wake_.notify_all();
  if (filler_.joinable()) filler_.join();
}

Result<void> SupervisorRegistry::StartPools(const std::map<std::string, size_t>& sizes) {
  for (const auto& [template_id, size] : sizes) {
    if (size > kMaxPoolSize) {
      return Fail(Error::InvalidConfig("pool", fmt::format("{} warm sandboxes of '{}': at most {}",
                                                           size, template_id, kMaxPoolSize)));
    }
    if (auto found = FindTemplate(template_id); !found) {
      return Fail(Error::InvalidConfig("pool", found.error().message()));
    }
  }
  auto ids = supervisor::ListSandboxIds();
  if (!ids) return Fail(std::move(ids).error());
  std::lock_guard lock(pool_mutex_);
  pool_sizes_ = sizes;
  // The warm sandboxes an earlier server left: adopted while a pool wants them.
  for (const auto& id : *ids) {
    auto text = supervisor::ReadSandboxFile(id, kAttributesFile, kMaxAttributesFile);
    if (!text) continue;
    auto attributes = ParseAttributes(*text);
    if (!attributes || !attributes->pooled) continue;
    auto listing = supervisor::Inspect(id);
    auto want = pool_sizes_.find(attributes->template_id);
    auto& pool = pooled_[attributes->template_id];
    if (listing && listing->state == "running" && want != pool_sizes_.end() &&
        pool.size() < want->second) {
      pool.push_back(id);
    } else if (auto record = supervisor::ReadRecord(id)) {
      (void)supervisor::StopAndRemove(*record);
    }
  }
  filler_ = std::thread([this] { FillPools(); });
  return {};
}

std::optional<std::string> SupervisorRegistry::TakePooled(const std::string& template_id) {
  std::lock_guard lock(pool_mutex_);
  auto it = pooled_.find(template_id);
  if (it == pooled_.end() || it->second.empty()) return std::nullopt;
  std::string id = it->second.front();
  it->second.erase(it->second.begin());
  pool_wake_.notify_all();
  return id;
}

std::optional<std::string> SupervisorRegistry::UnderfilledPool() {
  for (const auto& [template_id, size] : pool_sizes_) {
    if (pooled_[template_id].size() < size) return template_id;
  }
  return std::nullopt;
}

void SupervisorRegistry::FillPools() {
  std::unique_lock lock(pool_mutex_);
  while (!stopping_) {
    std::optional<std::string> wanted = UnderfilledPool();
    if (!wanted) {
      pool_wake_.wait(lock, [&] { return stopping_ || UnderfilledPool(); });
      continue;
    }
    lock.unlock();
    Result<std::string> id = Fail(Error::Backend("no template"));
    if (auto chosen = FindTemplate(*wanted)) {
      auto machine = MachineFor(*chosen, NewSandbox{});
      auto suffix = NewAccessToken();
      machine.sandbox.name = fmt::format("{}{}-{}", kPoolNamePrefix, *wanted,
                                         suffix ? suffix->substr(0, 8) : std::string("0"));
      id = supervisor::StartSandbox(std::move(machine));
      if (id) {
        ApiAttributes attributes{.template_id = *wanted, .pooled = true};
        if (auto written =
                supervisor::WriteSandboxFile(*id, kAttributesFile, EncodeAttributes(attributes));
            !written) {
          if (auto record = supervisor::ReadRecord(*id)) (void)supervisor::StopAndRemove(*record);
          id = Fail(std::move(written).error());
        }
      }
    } else {
      id = Fail(std::move(chosen).error());
    }
    lock.lock();
    if (id) {
      pooled_[*wanted].push_back(*id);
    } else {
      std::fprintf(stderr, "vessel serve: warming a '%s' sandbox failed: %s\n", wanted->c_str(),
                   id.error().ToString().c_str());
      pool_wake_.wait_for(lock, kPoolRetryDelay, [&] { return stopping_; });
    }
  }
}

}  // namespace vessel::server
