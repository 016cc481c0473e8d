// The sandboxes the server serves: the same ones `vessel ls` shows (supervisor/state.h),
// each run by its own supervisor, so they outlive a restart of the server. What the API
// adds to a sandbox (its template, metadata, environment, timeout and access token) is
// kept beside its state, in api.json; a sandbox that `vessel create` made has none and is
// served with defaults.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
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
  // A warm sandbox waiting in its template's pool: not yet any client's, hidden from the
  // API, without an end.
  bool pooled = false;
};

// One sandbox as the API shows it.
struct ApiSandbox {
  std::string id;
  std::string state;  // "running", "paused", "failed"
  std::string engine;
  uint32_t cpu_count = 0;
  uint32_t memory_mb = 0;
  int64_t started_at_ms = 0;
  ApiAttributes attributes;
};

// How long a sandbox lives when its create does not say (E2B's SDK's default too).
inline constexpr std::chrono::seconds kDefaultSandboxTimeout{300};

struct NewSandbox {
  std::string template_id;
  std::chrono::seconds timeout = kDefaultSandboxTimeout;
  std::map<std::string, std::string> metadata;
  std::map<std::string, std::string> env_vars;
  std::optional<uint32_t> cpu_count;
  std::optional<uint32_t> memory_mb;
  bool auto_pause = false;
  // Set: the sandbox's egress allowlist (docs/egress.md); empty: no egress. Unset: none,
  // or a snapshot template's own.
  std::optional<std::vector<std::string>> allow_out;
};

struct TemplateInfo {
  std::string id;
  std::vector<std::string> aliases;
  std::string image;  // the Vessel image; empty: the minimal guest
  // Set: a snapshot template: its sandboxes are restored from the snapshot in this
  // directory, with its machine (image, CPUs, memory).
  std::string snapshot_dir;
  uint32_t cpu_count = 1;
  uint32_t memory_mb = 0;
  int64_t created_ms = 0;
};

enum class PauseOutcome { kPaused, kNotFound, kAlreadyPaused, kNotRunning };

// A snapshot of a sandbox kept as a template: a create that names it (by id or by one of
// its names) restores it.
struct SnapshotInfo {
  std::string id;
  std::vector<std::string> names;
  std::string sandbox_id;  // the sandbox it was taken from
  int64_t created_ms = 0;
};

enum class DeleteOutcome { kDeleted, kNotFound, kNotASnapshot };

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
  // `count` copies of the running sandbox `id` as it is now (1..kMaxForks), each with the
  // parent's template, metadata and environment, a new access token and an expiry
  // `timeout` from now; all or none. nullopt: no such sandbox.
  [[nodiscard]] virtual Result<std::optional<std::vector<ApiSandbox>>> Fork(
      const std::string& id, uint32_t count, std::chrono::seconds timeout) = 0;
  // Saves the running sandbox `id` (memory, files, daemons) to disk and stops its VM; it is
  // listed as paused until Resume or Kill.
  [[nodiscard]] virtual Result<PauseOutcome> Pause(const std::string& id) = 0;
  // Restores the paused sandbox `id` under the same id and access token, to expire
  // `timeout` from now. nullopt: no paused sandbox of that id.
  [[nodiscard]] virtual Result<std::optional<ApiSandbox>> Resume(const std::string& id,
                                                                 std::chrono::seconds timeout) = 0;
  // Saves the running sandbox `id` as a new snapshot template, named `name` when not empty
  // (kInvalidConfig subject "name" for a name that is not one or is taken); the sandbox
  // runs on. nullopt: no such sandbox.
  [[nodiscard]] virtual Result<std::optional<SnapshotInfo>> Snapshot(const std::string& id,
                                                                     const std::string& name) = 0;
  [[nodiscard]] virtual Result<std::vector<SnapshotInfo>> Snapshots() = 0;
  // Deletes the snapshot template `id` (its id or a name); sandboxes restored from it run on.
  [[nodiscard]] virtual Result<DeleteOutcome> DeleteTemplate(const std::string& id) = 0;
  // Sets its expiry; false when there is no such sandbox.
  [[nodiscard]] virtual Result<bool> SetEndAt(const std::string& id, int64_t end_at_ms) = 0;
  // Replaces the egress allowlist of the running sandbox `id` (empty: no egress); false
  // when there is no such sandbox. kInvalidConfig (subject "network") for a bad rule, with
  // the allowlist unchanged, or for a paused sandbox.
  [[nodiscard]] virtual Result<bool> SetNetwork(const std::string& id,
                                                const std::vector<std::string>& allow) = 0;
  [[nodiscard]] virtual Result<std::vector<TemplateInfo>> Templates() = 0;
  // A connection to the sandbox's agent (through its supervisor), for its processes and
  // files.
  [[nodiscard]] virtual Result<std::shared_ptr<sandbox::Connection>> Connect(
      const std::string& id) = 0;
};

// The most warm sandboxes one template's pool may keep.
inline constexpr size_t kMaxPoolSize = 64;

// Where the server keeps what outlives its sandboxes' VMs: $VESSEL_STATE_DIR, else
// $XDG_STATE_HOME/vessel, else ~/.local/state/vessel. A paused sandbox is paused/<id>/ in
// it: its snapshot and paused.json (what the API shows of it); a snapshot template is
// snapshots/<id>/: its snapshot and template.json.
std::string ServerStateDir();

// 48 random hex digits, from getrandom: access tokens, id suffixes, MCP session ids.
[[nodiscard]] Result<std::string> NewAccessToken();

// The registry of this host's sandboxes, with warm pools: a create that asks for a
// template's own machine takes a booted sandbox of its pool when one waits, and a thread
// boots its replacement. Pooled sandboxes are supervised like any other (`vessel ls`
// shows them) and outlive the server; the next server adopts those its pools want and
// stops the rest.
class SupervisorRegistry final : public Registry {
 public:
  SupervisorRegistry() = default;
  // Stops filling the pools; the pooled sandboxes keep running.
  ~SupervisorRegistry() override;
  SupervisorRegistry(const SupervisorRegistry&) = delete;
  SupervisorRegistry& operator=(const SupervisorRegistry&) = delete;

  // Keeps `sizes[template]` warm sandboxes of each template, from now on. Once.
  // kInvalidConfig (subject "pool") for an unknown template or a size past kMaxPoolSize.
  [[nodiscard]] Result<void> StartPools(const std::map<std::string, size_t>& sizes);

  Result<ApiSandbox> Create(const NewSandbox& request) override;
  Result<std::vector<ApiSandbox>> List() override;
  Result<std::optional<ApiSandbox>> Get(const std::string& id) override;
  Result<bool> Kill(const std::string& id) override;
  Result<std::optional<std::vector<ApiSandbox>>> Fork(const std::string& id, uint32_t count,
                                                      std::chrono::seconds timeout) override;
  Result<PauseOutcome> Pause(const std::string& id) override;
  Result<std::optional<ApiSandbox>> Resume(const std::string& id,
                                           std::chrono::seconds timeout) override;
  Result<std::optional<SnapshotInfo>> Snapshot(const std::string& id,
                                               const std::string& name) override;
  Result<std::vector<SnapshotInfo>> Snapshots() override;
  Result<DeleteOutcome> DeleteTemplate(const std::string& id) override;
  Result<bool> SetEndAt(const std::string& id, int64_t end_at_ms) override;
  Result<bool> SetNetwork(const std::string& id, const std::vector<std::string>& allow) override;
  Result<std::vector<TemplateInfo>> Templates() override;
  Result<std::shared_ptr<sandbox::Connection>> Connect(const std::string& id) override;

 private:
  [[nodiscard]] Result<TemplateInfo> FindTemplate(const std::string& id);
  // A warm sandbox of `template_id`'s pool, now the caller's; nullopt when none waits.
  std::optional<std::string> TakePooled(const std::string& template_id);
  // A template whose pool is short of its size (pool_mutex_ held).
  std::optional<std::string> UnderfilledPool();
  void FillPools();

  std::mutex mutex_;  // api.json's read-modify-write
  std::mutex pool_mutex_;
  std::condition_variable pool_wake_;
  std::map<std::string, size_t> pool_sizes_;
  std::map<std::string, std::vector<std::string>> pooled_;  // template -> sandbox ids
  bool stopping_ = false;
  std::thread filler_;
};

// Milliseconds since the epoch.
int64_t NowMs();

// api.json, both ways. Parse fails (kHostIo) on anything but a file Encode wrote.
std::string EncodeAttributes(const ApiAttributes& attributes);
[[nodiscard]] Result<ApiAttributes> ParseAttributes(std::string_view text);

}  // namespace vessel::server
