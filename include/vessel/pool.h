// Warm pools: sandboxes that are ready before anyone asks for them.
//
// A VmPool keeps ready sandboxes and hands them out as PooledVm handles. A handle released
// to its pool is dead to its holder, and the VM behind it is never handed out again: the
// pool destroys it and makes a fresh one from its clean snapshot, so no file, process,
// environment or RNG state of one holder reaches the next.
//
// A RestorePool keeps VMM processes started and waiting for one snapshot, with its memory
// mapped, so that a restore skips process start-up.
//
// Thread safety: every method of every class here may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "vessel/error.h"
#include "vessel/sandbox.h"

namespace vessel {

// The most VMs one pool may hold (idle, in use and being made together).
inline constexpr uint32_t kMaxPoolVms = 256;

// A pool template that is a snapshot on disk (see Sandbox::Snapshot()).
struct SnapshotTemplate {
  std::string dir;
  // options.timeout bounds the making of each VM.
  RestoreOptions options;
};

struct PoolConfig {
  // What every VM of the pool starts as.
  // - A SandboxConfig: VmPool::Create() boots one VM from it, saves it into a directory
  //   private to the pool and destroys it; every VM of the pool is then restored from
  //   that clean snapshot. The directory is a runtime directory like a VM's (vm-<id>,
  //   0700, in the runtime root: $VESSEL_RUNTIME_DIR, else $XDG_RUNTIME_DIR/vessel, else
  //   /run/vessel for root, else /tmp/vessel-<uid>), removed when the pool is destroyed,
  //   or by the next Vessel process should this one die first. config.boot_timeout
  //   bounds the boot and each restore.
  // - A SnapshotTemplate: every VM is restored from that snapshot, which must stay
  //   where it is, unmodified, for as long as the pool lives.
  std::variant<SandboxConfig, SnapshotTemplate> vm_template;
  // VMs the pool keeps ready; it makes more as soon as fewer are idle. <= max_idle.
  uint32_t min_idle = 1;
  // VMs kept idle at most: a release is replaced by a fresh VM only while fewer are
  // idle, and VMs above it are evicted. <= max_total.
  uint32_t max_idle = 4;
  // VMs in existence at most: idle, in use and being made. 1..kMaxPoolVms.
  uint32_t max_total = 8;
  // An idle VM older than this is evicted (oldest first), and replaced while the pool
  // has fewer than min_idle. Positive.
  std::chrono::milliseconds idle_ttl{300'000};
  // How long Acquire() waits by default. >= 0; 0: only an idle VM will do.
  std::chrono::milliseconds acquire_timeout{30'000};
  // Run once in every new VM before it becomes idle, so that a holder's first command
  // does not pay for what a VM does only once (under TCG, translating the guest's exec
  // path takes ~100 ms). The same for every VM, so it carries nothing of any holder. A
  // VM in which it fails (an error or a non-zero exit) counts as a failure to make one.
  // nullopt: none.
  std::optional<Command> warm_up = Command::Argv({"true"});
};

// A pool's counters since it was created, and its current size.
struct PoolStats {
  // Acquisitions (VmPool::Acquire, RestorePool::Restore) served at once by a ready VM.
  uint64_t hits = 0;
  // Acquisitions that found none and had to wait for one (VmPool) or start one
  // themselves (RestorePool), whether or not they then succeeded.
  uint64_t misses = 0;
  // Acquisitions that failed (timed out, the pool could not make a VM, the pool was
  // destroyed). Each is also a miss.
  uint64_t failed = 0;
  // VMs the pool made (VmPool: sandboxes; RestorePool: waiting VMM processes). A
  // SandboxConfig pool's template VM is not counted.
  uint64_t created = 0;
  // Attempts to make a VM that failed.
  uint64_t create_failures = 0;
  // VmPool: healthy VMs destroyed after their holder released them.
  uint64_t recycled = 0;
  // Idle VMs destroyed because they outlived idle_ttl or exceeded max_idle.
  uint64_t evicted = 0;
  // VMs found failed (on release, while idle or when about to be handed out) and
  // destroyed.
  uint64_t broken = 0;
  // Right now: ready and waiting; held by callers (VmPool; a RestorePool's sandboxes
  // belong to their callers and are not counted); being made.
  uint32_t idle = 0;
  uint32_t in_use = 0;
  uint32_t making = 0;
  // How long successful acquisitions took, from the call to the handle or sandbox being
  // returned. `count` counts them all; median and p99 (nearest rank) are over the most
  // recent kLatencySamples.
  struct Latency {
    static constexpr size_t kLatencySamples = 4096;
    uint64_t count = 0;
    std::chrono::microseconds median{0};
    std::chrono::microseconds p99{0};
  };
  Latency acquire_latency;
};

class PooledVm;

class VmPool {
 public:
  // Checks the config (kInvalidConfig naming the field: min_idle, max_idle, max_total,
  // idle_ttl, acquire_timeout, warm_up, or a field of the template's SandboxConfig),
  // prepares the template and starts the pool's background threads, which begin making
  // min_idle VMs. With a SandboxConfig template this boots a VM and snapshots it first,
  // so it takes as long as a Sandbox::Create(); its errors are Create()'s and
  // Snapshot()'s. A SnapshotTemplate is checked like Sandbox::Restore() checks it
  // (kSnapshotFormat). Nothing is left behind on failure.
  [[nodiscard]] static Result<std::unique_ptr<VmPool>> Create(const PoolConfig& config);

  // Destroy().
  ~VmPool();
  VmPool(const VmPool&) = delete;
  VmPool& operator=(const VmPool&) = delete;

  // A ready VM. Returns at once when one is idle (a hit); otherwise waits up to `timeout`
  // (default: the config's acquire_timeout) while the pool makes one. Errors:
  // kInvalidConfig for a negative timeout; kBackend with timed_out() when none came in time
  // (the message says whether max_total VMs were in use); kBackend with the cause when
  // the pool failed to make a VM twice in a row while the caller waited (one that fails
  // is made again at once, and only a second failure reaches the waiters); Destroyed once
  // the pool is destroyed. The handle may outlive the pool (see Destroy()).
  [[nodiscard]] Result<std::unique_ptr<PooledVm>> Acquire(
      std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  [[nodiscard]] PoolStats Stats() const;

  // Stops the background threads and destroys every VM the pool owns, idle or in use,
  // and the template snapshot it made. Waiting Acquire() calls return Destroyed. Handles
  // still out are released by it: each of their operations, Release() included, then
  // fails with Released ("the pool was destroyed"); an operation that was running on
  // one at that moment fails with Released too. A second Destroy() returns Destroyed.
  [[nodiscard]] Result<void> Destroy();

  class Impl;

 private:
  friend class Impl;
  explicit VmPool(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// A sandbox lent by a VmPool. Offers the operations of a Sandbox, each valid and failing
// as Sandbox's does while the handle is held; after Release() (or the pool's
// destruction) every one of them fails with LifecycleError::Released. Destroying the
// handle releases it.
//
// Thread safety: as Sandbox. A Release() from another thread while an operation runs
// ends that operation with Released.
class PooledVm {
 public:
  ~PooledVm();
  PooledVm(const PooledVm&) = delete;
  PooledVm& operator=(const PooledVm&) = delete;

  [[nodiscard]] Result<ExecResult> Execute(const Command& command, const ExecOptions& options = {});
  // The Process handle belongs to the caller. Once the handle is released the pool
  // destroys the VM, in the background, and the Process then fails with Destroyed.
  [[nodiscard]] Result<std::unique_ptr<Process>> Start(const Command& command,
                                                       const ExecOptions& options = {});
  [[nodiscard]] Result<std::string> ReadFile(const std::string& path);
  [[nodiscard]] Result<void> WriteFile(const std::string& path, std::string_view data,
                                       uint32_t mode = 0644);
  [[nodiscard]] Result<FileInfo> ReadFileStream(const std::string& path, const ChunkSink& sink);
  [[nodiscard]] Result<void> WriteFileStream(const std::string& path, const ChunkSource& source,
                                             uint32_t mode = 0644);
  [[nodiscard]] Result<std::vector<FileInfo>> ListDir(const std::string& path);
  [[nodiscard]] Result<FileInfo> Stat(const std::string& path);
  [[nodiscard]] Result<bool> Exists(const std::string& path);
  [[nodiscard]] Result<void> MakeDir(const std::string& path, bool parents = false,
                                     uint32_t mode = 0755);
  [[nodiscard]] Result<void> Remove(const std::string& path, bool recursive = false);
  [[nodiscard]] Result<void> Rename(const std::string& from, const std::string& to);
  // The snapshot is the caller's and does not depend on the pool.
  [[nodiscard]] Result<void> Snapshot(const std::string& dir);
  // The children belong to the caller: the pool neither counts nor takes them back, and
  // they outlive the release of this handle and the pool itself.
  [[nodiscard]] Result<std::vector<std::unique_ptr<Sandbox>>> Fork(uint32_t n);

  // Gives the VM back to the pool, which destroys it (counted `broken` when it had
  // failed, else `recycled`) and makes a fresh one in its place while fewer than
  // max_idle are idle. Returns at once. Released when already released, by Release() or
  // by the pool's destruction.
  [[nodiscard]] Result<void> Release();

  // The sandbox's state while held; kDestroyed once released.
  [[nodiscard]] SandboxState state() const;
  // The sandbox's id; stays valid after the release.
  [[nodiscard]] const std::string& id() const;

  class Impl;

 private:
  friend class VmPool;
  explicit PooledVm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct RestorePoolConfig {
  // VMM processes kept started and waiting for the snapshot. 1..kMaxPoolVms.
  uint32_t size = 2;
  // For every restored sandbox; options.timeout bounds each Restore().
  RestoreOptions options;
};

// Restores of one snapshot without the VMM's start-up: `size` engine processes are kept
// started, each waiting with the snapshot's memory mapped copy-on-write and no state
// loaded; Restore() loads the state into one of them, runs it and wakes its agent as a
// clone (RNG reseeded, clock set), exactly like Sandbox::Restore(). A background thread
// starts a replacement for each one used, and replaces waiting processes that died.
class RestorePool {
 public:
  // Checks the snapshot like Sandbox::Restore() (kSnapshotFormat), and `size`
  // (kInvalidConfig "size"); starts filling in the background. The snapshot must stay
  // where it is, unmodified, for as long as the pool lives.
  [[nodiscard]] static Result<std::unique_ptr<RestorePool>> Create(
      const std::string& dir, const RestorePoolConfig& config = {});

  // Destroy().
  ~RestorePool();
  RestorePool(const RestorePool&) = delete;
  RestorePool& operator=(const RestorePool&) = delete;

  // A new ready sandbox restored from the snapshot; it belongs to the caller and does
  // not depend on the pool. When no process is waiting (or the one taken turns out
  // broken), starts one on the calling thread: as slow as a plain restore, not slower.
  // Errors: Sandbox::Restore()'s kBackend; Destroyed once the pool is destroyed.
  [[nodiscard]] Result<std::unique_ptr<Sandbox>> Restore();

  // hits, misses, failed, created, create_failures, broken, idle (waiting processes),
  // making and the latency of Restore(); recycled, evicted and in_use stay 0.
  [[nodiscard]] PoolStats Stats() const;

  // Stops the background thread and kills every waiting process. Sandboxes already
  // restored are the callers' and go on. A second Destroy() returns Destroyed.
  [[nodiscard]] Result<void> Destroy();

  class Impl;

 private:
  friend class Impl;
  explicit RestorePool(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vessel
