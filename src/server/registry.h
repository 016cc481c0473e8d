// The sandboxes the server serves: the same ones `vessel ls` shows (supervisor/state.h),
// each run by its own supervisor, so they outlive a restart of the server. What the API
// adds to a sandbox (its template, metadata, environment, timeout and access token) is
// kept beside its state, in api.json; a sandbox that `vessel create` made has none and is
// served with defaults.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/connection.h"
#include "vessel/error.h"

namespace vessel::server {

// What the API keeps about a sandbox.
struct ApiAttributes {
  std::string template_id;
  std::map<std::string, std::string> metadata;
  std::map<std::string, std::string> env_vars;  // the default environment of its commands
  int64_t end_at_ms = 0;                        // when it expires; 0: never
  std::string access_token;                     // required on its data plane; empty: none
  bool auto_pause = false;                      // expire by pausing, not killing
};

// One sandbox as the API shows it.
struct ApiSandbox {
  std::string id;
  std::string state;  // "running", "failed"
  std::string engine;
  uint32_t cpu_count = 0;
  uint32_t memory_mb = 0;
  int64_t started_at_ms = 0;
  ApiAttributes attributes;
};

struct NewSandbox {
  std::string template_id;
  std::chrono::seconds timeout{300};
  std::map<std::string, std::string> metadata;
  std::map<std::string, std::string> env_vars;
  std::optional<uint32_t> cpu_count;
  std::optional<uint32_t> memory_mb;
  bool auto_pause = false;
};

struct TemplateInfo {
  std::string id;
  std::vector<std::string> aliases;
  std::string image;  // the Vessel image; empty: the minimal guest
  uint32_t cpu_count = 1;
  uint32_t memory_mb = 0;
  int64_t created_ms = 0;
};

// Kinds of error: kInvalidConfig (subject "templateID") for an unknown template, other
// kInvalidConfig for a request the sandbox's config refuses; the rest are the server's.
class Registry {
 public:
  virtual ~Registry() = default;
  [[nodiscard]] virtual Result<ApiSandbox> Create(const NewSandbox& request) = 0;
  // Every sandbox that runs (or failed and is not removed yet).
  [[nodiscard]] virtual Result<std::vector<ApiSandbox>> List() = 0;
  // nullopt: no such sandbox.
  [[nodiscard]] virtual Result<std::optional<ApiSandbox>> Get(const std::string& id) = 0;
  // Stops and removes it; false when there is no such sandbox.
  [[nodiscard]] virtual Result<bool> Kill(const std::string& id) = 0;
  // Sets its expiry; false when there is no such sandbox.
  [[nodiscard]] virtual Result<bool> SetEndAt(const std::string& id, int64_t end_at_ms) = 0;
  [[nodiscard]] virtual Result<std::vector<TemplateInfo>> Templates() = 0;
  // A connection to the sandbox's agent (through its supervisor), for its processes and
  // files.
  [[nodiscard]] virtual Result<std::shared_ptr<sandbox::Connection>> Connect(
      const std::string& id) = 0;
};

// The registry of this host's sandboxes.
class SupervisorRegistry final : public Registry {
 public:
  Result<ApiSandbox> Create(const NewSandbox& request) override;
  Result<std::vector<ApiSandbox>> List() override;
  Result<std::optional<ApiSandbox>> Get(const std::string& id) override;
  Result<bool> Kill(const std::string& id) override;
  Result<bool> SetEndAt(const std::string& id, int64_t end_at_ms) override;
  Result<std::vector<TemplateInfo>> Templates() override;
  Result<std::shared_ptr<sandbox::Connection>> Connect(const std::string& id) override;

 private:
  std::mutex mutex_;  // api.json's read-modify-write
};

// Milliseconds since the epoch.
int64_t NowMs();

// api.json, both ways. Parse fails (kHostIo) on anything but a file Encode wrote.
std::string EncodeAttributes(const ApiAttributes& attributes);
[[nodiscard]] Result<ApiAttributes> ParseAttributes(std::string_view text);

}  // namespace vessel::server
