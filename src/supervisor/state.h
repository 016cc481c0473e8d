// The on-disk state of sandboxes that outlive the command that made them.
//
// Each one has a directory <RuntimeRoot()>/sandboxes/<id>/ (outside the vm-* directories,
// which the engine sweeps on its own) holding:
//   state.json       what `ls` shows; written by the supervisor
//   supervisor.lock  locked by the supervisor for as long as it lives, so a lock that can
//                    be taken means the supervisor is gone, however it died (no pid reuse,
//                    no zombie to fool us)
//   control.sock     the supervisor's control socket (the agent protocol, proxied)
//   supervisor.log   the supervisor's stderr
//
// Beside them, <RuntimeRoot()>/sandboxes/.fork-XXXXXX/ are the snapshots `fork` starts
// its children from: hidden from `ls`, and gone once the children run.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel::supervisor {

// The longest sandbox name `create --name` accepts.
inline constexpr size_t kMaxNameSize = 64;

std::string SandboxesDir();
// SandboxesDir() and the runtime root above it, checked to be private to this user
// (MakePrivateDir); sandboxes/ is created when missing only with `create` (a
// reader leaves no empty directory behind). Every command that reads or makes sandbox
// state goes through it first: state in a directory another user controls is never
// trusted.
[[nodiscard]] Result<std::string> PrivateSandboxesDir(bool create);
// Whether `id` can be a sandbox's id: 1 to 64 lowercase hex digits, as the engines make
// them. Anything else names no sandbox, and never reaches a path.
bool IsSandboxId(std::string_view id);
std::string StateDir(const std::string& id);
std::string ControlSocketPath(const std::string& id);
std::string SupervisorLogPath(const std::string& id);

struct SandboxRecord {
  std::string id;
  std::string name;
  int pid = 0;  // the supervisor's
  std::string engine;
  uint32_t memory_mib = 0;
  uint32_t vcpus = 0;
  int64_t created = 0;  // seconds since the epoch
  bool failed = false;  // the supervisor saw the VM die
  // Where a sandbox that was not booted came from; empty for one that `create` made.
  std::string restored_from;  // `restore`: the snapshot directory
  std::string forked_from;    // `fork`: the parent's id
};

// Writes state.json atomically (a temporary file renamed over it).
[[nodiscard]] Result<void> WriteRecord(const SandboxRecord& record);
[[nodiscard]] Result<SandboxRecord> ReadRecord(const std::string& id);
// A file beside state.json for what another part keeps about the sandbox (the server's
// API attributes), `name` being a plain file name. Written atomically (a temporary file
// renamed over it), read with a size cap; they go with the sandbox's directory.
[[nodiscard]] Result<void> WriteSandboxFile(const std::string& id, std::string_view name,
                                            std::string_view content);
[[nodiscard]] Result<std::string> ReadSandboxFile(const std::string& id, std::string_view name,
                                                  size_t max_bytes);
// The ids of every sandbox directory, sorted; fails when the directories are not private.
[[nodiscard]] Result<std::vector<std::string>> ListSandboxIds();
// The sandbox whose id, else whose name, is `id_or_name`. kInvalidConfig when none is.
[[nodiscard]] Result<SandboxRecord> Resolve(const std::string& id_or_name);

// Checks a name for `create --name`: 1..kMaxNameSize of [A-Za-z0-9_.-], not starting with
// '.' or '-'.
[[nodiscard]] Result<void> ValidateName(const std::string& name);

// Creates supervisor.lock in the sandbox's directory and locks it for this process.
[[nodiscard]] Result<UniqueFd> LockAsSupervisor(const std::string& id);
// True while some process holds the sandbox's supervisor lock.
bool SupervisorAlive(const std::string& id);

// A unix socket address for `path`, or kInvalidConfig when the path does not fit.
[[nodiscard]] Result<void> CheckSocketPath(const std::string& path);
[[nodiscard]] Result<UniqueFd> ListenControl(const std::string& path);
// Connects to a control socket whose listener runs as this user (SO_PEERCRED), else fails.
[[nodiscard]] Result<UniqueFd> ConnectControl(const std::string& path);
// The pid of the process at the other end of the unix socket `fd`, which must run as this
// user: kHostIo naming the peer's uid otherwise. Both ends of a control socket check it.
[[nodiscard]] Result<pid_t> PeerOfThisUser(int fd);
// Connects to the control socket of a sandbox that runs. kBackend saying how to clean up
// when it failed or its supervisor is gone.
[[nodiscard]] Result<UniqueFd> ConnectToRunning(const SandboxRecord& record);

// A private directory (mode 0700) for the snapshot a fork starts its children from,
// locked by this process while it lives. Removed by the destructor; one whose owner died
// is removed by the next RemoveSandboxState().
class ForkDir {
 public:
  [[nodiscard]] static Result<ForkDir> Create();
  ForkDir(ForkDir&& other) noexcept
      : path_(std::exchange(other.path_, {})), lock_(std::move(other.lock_)) {}
  ForkDir& operator=(ForkDir&&) = delete;
  ~ForkDir();

  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  ForkDir(std::string path, UniqueFd lock) : path_(std::move(path)), lock_(std::move(lock)) {}
  std::string path_;
  UniqueFd lock_;  // the directory itself, flock()ed
};

// What `ls` shows of one sandbox.
struct Listing {
  SandboxRecord record;
  std::string state;  // running, failed, dead
  int64_t age_seconds = 0;
};
// The sandbox with that id as it is now; nullopt while its supervisor is still setting
// it up.
std::optional<Listing> Inspect(const std::string& id);

// Removes the sandbox's directory, the runtime directories of VMs and the fork
// directories whose owner died, and the sandboxes/ directory itself once it is empty.
void RemoveSandboxState(const std::string& id);

}  // namespace vessel::supervisor
