// Pool internals, visible to the unit tests that drive pools over a fake engine.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "engine/engine.h"
#include "vessel/pool.h"

namespace vessel::pool {

// Makes one fresh, ready sandbox. Called from several threads at once. The product
// restores the pool's template snapshot; unit tests start sandboxes on a fake engine.
using MakeSandbox = std::function<Result<std::unique_ptr<Sandbox>>()>;

// The pace of a pool's background work. The defaults are the product's; tests shorten
// them.
struct Tuning {
  // How often idle VMs are checked for failure and for their age.
  std::chrono::milliseconds check_interval{200};
  // After a failed attempt to make a VM, the pause before the next one, so that a
  // template that cannot start does not keep a CPU busy.
  std::chrono::milliseconds retry_delay{1'000};
  // VmPool threads that make and destroy VMs, so that a burst is refilled by several
  // restores at once; never more than max_total. RestorePool uses one.
  uint32_t workers = 2;
};

// kInvalidConfig naming the first field of `config` that is wrong; the template itself
// is checked when it is used.
[[nodiscard]] Result<void> ValidatePoolConfig(const PoolConfig& config);

// A VmPool whose VMs come from `make`, with its background threads started. `make` is
// destroyed only after the pool has destroyed every VM, so it may own what they depend
// on (the template snapshot).
[[nodiscard]] Result<std::unique_ptr<VmPool>> MakeVmPool(const PoolConfig& config, MakeSandbox make,
                                                         Tuning tuning = {});

// A RestorePool that keeps `spec` (with spec.restore set) started on `engine`.
[[nodiscard]] Result<std::unique_ptr<RestorePool>> MakeRestorePool(
    std::shared_ptr<engine::Engine> engine, engine::VmSpec spec, const RestorePoolConfig& config,
    Tuning tuning = {});

// Acquisition latencies: how many, and the most recent PoolStats::Latency::kLatencySamples.
// Not thread safe: the pool's mutex guards it.
class LatencyRecorder {
 public:
  void Add(std::chrono::microseconds sample);
  // Sorts a copy of the window: call it on a copy taken under the lock, not under it.
  [[nodiscard]] PoolStats::Latency Summary() const;

 private:
  uint64_t count_ = 0;
  std::vector<std::chrono::microseconds> window_;  // a ring once full
  size_t next_ = 0;                                // the oldest sample once full
};

// While it lives, the calling thread is SCHED_BATCH: when woken it waits for its turn
// rather than preempting the thread that woke it, so that a pool's worker, woken by an
// Acquire() to refill, does not delay that Acquire()'s return on a busy host. Its
// throughput is unchanged (same weight). Where the policy cannot be set, nothing changes.
class BackgroundWhileWaiting {
 public:
  BackgroundWhileWaiting();
  ~BackgroundWhileWaiting();
  BackgroundWhileWaiting(const BackgroundWhileWaiting&) = delete;
  BackgroundWhileWaiting& operator=(const BackgroundWhileWaiting&) = delete;

 private:
  int policy_;  // the thread's policy before, restored on destruction; -1 when unchanged
};

}  // namespace vessel::pool
