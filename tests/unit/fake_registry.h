// A Registry in memory, for the unit tests of what sits above it: sandboxes are records,
// templates "base" and "python" exist, and there are no agents to connect to.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "server/registry.h"

namespace vessel::server {

class FakeRegistry final : public Registry {
 public:
  Result<ApiSandbox> Create(const NewSandbox& request) override {
    last_create = request;
    if (request.template_id != "base" && request.template_id != "python") {
      return Fail(Error::InvalidConfig("templateID", "template not found"));
    }
    ApiSandbox s{.id = fmt::format("{:012x}", next_id++),
                 .state = "running",
                 .engine = "fake",
                 .cpu_count = request.cpu_count.value_or(1),
                 .memory_mb = request.memory_mb.value_or(256),
                 .started_at_ms = NowMs(),
                 .attributes = {.template_id = request.template_id,
                                .metadata = request.metadata,
                                .env_vars = request.env_vars,
                                .end_at_ms = NowMs() + request.timeout.count() * 1000,
                                .access_token = "token-" + std::to_string(next_id)}};
    sandboxes[s.id] = s;
    return s;
  }
  Result<std::vector<ApiSandbox>> List() override {
    std::vector<ApiSandbox> out;
    for (const auto& [id, s] : sandboxes) out.push_back(s);
    return out;
  }
  Result<std::optional<ApiSandbox>> Get(const std::string& id) override {
    auto it = sandboxes.find(id);
    if (it == sandboxes.end()) return std::optional<ApiSandbox>();
    return std::optional<ApiSandbox>(it->second);
  }
  Result<bool> Kill(const std::string& id) override { return sandboxes.erase(id) == 1; }
  Result<std::optional<std::vector<ApiSandbox>>> Fork(const std::string& id, uint32_t count,
                                                      std::chrono::seconds timeout) override {
    auto it = sandboxes.find(id);
    if (it == sandboxes.end()) return std::optional<std::vector<ApiSandbox>>();
    std::vector<ApiSandbox> children;
    for (uint32_t i = 0; i < count; ++i) {
      ApiSandbox child = it->second;
      child.id = fmt::format("{:012x}", next_id++);
      child.attributes.end_at_ms = NowMs() + timeout.count() * 1000;
      sandboxes[child.id] = child;
      children.push_back(child);
    }
    return std::optional(std::move(children));
  }
  Result<std::optional<SnapshotInfo>> Snapshot(const std::string& id,
                                               const std::string& name) override {
    if (!sandboxes.contains(id)) return std::optional<SnapshotInfo>();
    if (name == "taken")
      return Fail(Error::InvalidConfig("name", "a template named 'taken' exists"));
    SnapshotInfo info{.id = fmt::format("snapshot-{:012x}", next_id++), .sandbox_id = id};
    if (!name.empty()) info.names.push_back(name);
    snapshots.push_back(info);
    return std::optional(info);
  }
  Result<std::vector<SnapshotInfo>> Snapshots() override { return snapshots; }
  Result<DeleteOutcome> DeleteTemplate(const std::string& id) override {
    if (id == "base") return DeleteOutcome::kNotASnapshot;
    auto it = std::find_if(snapshots.begin(), snapshots.end(),
                           [&](const SnapshotInfo& s) { return s.id == id; });
    if (it == snapshots.end()) return DeleteOutcome::kNotFound;
    snapshots.erase(it);
    return DeleteOutcome::kDeleted;
  }
  Result<PauseOutcome> Pause(const std::string& id) override {
    auto it = sandboxes.find(id);
    if (it == sandboxes.end()) return PauseOutcome::kNotFound;
    if (it->second.state == "paused") return PauseOutcome::kAlreadyPaused;
    it->second.state = "paused";
    return PauseOutcome::kPaused;
  }
  Result<std::optional<ApiSandbox>> Resume(const std::string& id,
                                           std::chrono::seconds timeout) override {
    auto it = sandboxes.find(id);
    if (it == sandboxes.end() || it->second.state != "paused") return std::optional<ApiSandbox>();
    it->second.state = "running";
    it->second.attributes.end_at_ms = NowMs() + timeout.count() * 1000;
    return std::optional(it->second);
  }
  Result<bool> SetEndAt(const std::string& id, int64_t end_at_ms) override {
    auto it = sandboxes.find(id);
    if (it == sandboxes.end()) return false;
    it->second.attributes.end_at_ms = end_at_ms;
    return true;
  }
  Result<bool> SetNetwork(const std::string& id, const std::vector<std::string>& allow) override {
    if (!sandboxes.contains(id)) return false;
    for (const auto& rule : allow) {
      if (rule.find('/') != std::string::npos) {
        return Fail(Error::InvalidConfig("network", rule + " is not a rule"));
      }
    }
    networks[id] = allow;
    return true;
  }
  Result<std::vector<TemplateInfo>> Templates() override {
    return std::vector<TemplateInfo>{{.id = "base", .aliases = {"base"}, .memory_mb = 512}};
  }

  Result<std::shared_ptr<sandbox::Connection>> Connect(const std::string&) override {
    return Fail(Error::Backend("the fake registry has no agents"));
  }

  std::map<std::string, ApiSandbox> sandboxes;
  std::vector<SnapshotInfo> snapshots;
  std::optional<NewSandbox> last_create;
  std::map<std::string, std::vector<std::string>> networks;  // by SetNetwork
  uint64_t next_id = 0xabc000;
};

}  // namespace vessel::server
