// VmPool and its PooledVm handles.
//
// One mutex guards the pool's books (idle VMs, handles out, counters), and nothing slow
// happens under it: worker threads make and destroy VMs with it released, and an
// Acquire() that finds no idle VM waits on a condition variable that the workers signal.
// A handle and the pool share a Lease; releasing the handle empties the lease, so every
// later operation on the handle sees Released, and the VM goes to the workers to be
// destroyed, never back to the idle list.
#include "vessel/pool.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sched.h>
#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "base/deadline.h"
#include "base/io.h"
#include "base/stats.h"
#include "engine/runtime_dir.h"
#include "pool/pool_internal.h"
#include "sandbox/saved_vm.h"

namespace vessel {
namespace pool {

// What a handle and its pool share: the sandbox, until the handle is released.
struct Lease {
  std::mutex mutex;
  std::shared_ptr<Sandbox> sandbox;  // null once released
  std::string released_why;          // set when `sandbox` is taken
};

}  // namespace pool

namespace {

using Clock = std::chrono::steady_clock;

// Acquire() waits at most this long, whatever it is asked: a deadline beyond it would
// overflow the clock's time_point and is no different to a caller.
constexpr auto kLongestWait = std::chrono::milliseconds(std::chrono::hours(24 * 365));

// A VM that fails to come up is made again at once, up to this many attempts in a row,
// before waiters hear of it: one VM lost to a passing cause (a guest that crashed as it
// resumed, a VMM killed by the host) does not fail every Acquire() waiting for it, while a
// template that cannot work still fails them within a second or two.
constexpr uint32_t kMakeAttempts = 2;

// Far beyond what a warm-up needs (~100 ms for `true` under TCG).
constexpr auto kWarmUpTimeout = std::chrono::seconds(10);

constexpr const char* kHandleReleased = "the handle was released to its pool";
constexpr const char* kPoolDestroyed = "the pool was destroyed, and its handles with it";

Error PoolDestroyedError() {
  return Error::Lifecycle({LifecycleError::Destroyed{"the pool was destroyed"}});
}

bool IsDestroyedError(const Error& error) {
  return error.lifecycle() && error.lifecycle()->Is<LifecycleError::Destroyed>();
}

std::chrono::microseconds MicrosSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
}

// Makes VMs by restoring the snapshot in `dir`, checked once here rather than per VM.
// `keep` is held for as long as VMs are made (the directory the snapshot lives in).
Result<pool::MakeSandbox> RestoreFrom(const std::string& dir, const RestoreOptions& options,
                                      std::shared_ptr<engine::RuntimeDir> keep) {
  auto saved = sandbox::OpenSaved(dir, options);
  if (!saved) return Fail(std::move(saved).error().Context("the pool's template"));
  return pool::MakeSandbox(
      [saved = std::move(*saved), timeout = options.timeout, keep = std::move(keep)]() {
        return sandbox::StartSaved(saved.engine, saved.spec, Deadline::After(timeout));
      });
}

// Runs the pool's warm-up command in a new VM, for at most kWarmUpTimeout: a VM stuck in
// it would otherwise hold up a worker, and Destroy() with it. The VM is destroyed when
// this fails.
Result<std::unique_ptr<Sandbox>> WarmUp(std::unique_ptr<Sandbox> sandbox, const Command& command) {
  auto failed = [&command](std::string why) {
    return Fail(Error::Backend(
        fmt::format("warming up a new VM: {}: {}", fmt::join(command.argv, " "), why)));
  };
  auto process = sandbox->Start(command);
  if (!process) return failed(process.error().message());
  auto deadline = Clock::now() + kWarmUpTimeout;
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    auto event = (*process)->NextEvent(std::max(left, std::chrono::milliseconds(1)));
    if (!event) return failed(event.error().message());
    if (!*event) return failed("ended without an exit status");
    if (!(*event)->final()) continue;
    if ((*event)->kind == ProcessEvent::Kind::kExited && (*event)->code == 0) return sandbox;
    return failed(fmt::format("ended with {} {}",
                              (*event)->kind == ProcessEvent::Kind::kExited ? "status" : "signal",
                              (*event)->code));
  }
}

}  // namespace

namespace pool {

Result<void> ValidatePoolConfig(const PoolConfig& config) {
  if (config.max_total < 1 || config.max_total > kMaxPoolVms) {
    return Fail(Error::InvalidConfig(
        "max_total", fmt::format("{} is outside 1..{}", config.max_total, kMaxPoolVms)));
  }
  if (config.max_idle > config.max_total) {
    return Fail(Error::InvalidConfig(
        "max_idle", fmt::format("{} exceeds max_total ({})", config.max_idle, config.max_total)));
  }
  if (config.min_idle > config.max_idle) {
    return Fail(Error::InvalidConfig(
        "min_idle", fmt::format("{} exceeds max_idle ({})", config.min_idle, config.max_idle)));
  }
  if (config.idle_ttl.count() <= 0) {
    return Fail(Error::InvalidConfig("idle_ttl", "must be positive"));
  }
  if (config.acquire_timeout.count() < 0) {
    return Fail(Error::InvalidConfig("acquire_timeout", "must not be negative"));
  }
  if (config.warm_up && config.warm_up->argv.empty()) {
    return Fail(Error::InvalidConfig("warm_up", "has no program to run"));
  }
  return {};
}

BackgroundWhileWaiting::BackgroundWhileWaiting() : policy_(::sched_getscheduler(0)) {
  sched_param param{};
  if (policy_ != SCHED_OTHER || ::sched_setscheduler(0, SCHED_BATCH, &param) != 0) policy_ = -1;
}

BackgroundWhileWaiting::~BackgroundWhileWaiting() {
  sched_param param{};
  if (policy_ >= 0) (void)::sched_setscheduler(0, policy_, &param);
}

void LatencyRecorder::Add(std::chrono::microseconds sample) {
  ++count_;
  if (window_.size() < PoolStats::Latency::kLatencySamples) {
    window_.push_back(sample);
    return;
  }
  window_[next_] = sample;
  next_ = (next_ + 1) % window_.size();
}

PoolStats::Latency LatencyRecorder::Summary() const {
  PoolStats::Latency summary;
  summary.count = count_;
  if (window_.empty()) return summary;
  auto sorted = window_;
  std::sort(sorted.begin(), sorted.end());
  summary.median = Percentile(sorted, 50);
  summary.p99 = Percentile(sorted, 99);
  return summary;
}

}  // namespace pool

class VmPool::Impl : public std::enable_shared_from_this<VmPool::Impl> {
 public:
  Impl(PoolConfig config, pool::MakeSandbox make, pool::Tuning tuning)
      : config_(std::move(config)), make_(std::move(make)), tuning_(tuning) {}
  ~Impl() { (void)Destroy(); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  static std::unique_ptr<VmPool> Wrap(std::shared_ptr<Impl> impl) {
    return std::unique_ptr<VmPool>(new VmPool(std::move(impl)));
  }

  void StartWorkers() {
    uint32_t count = std::clamp<uint32_t>(tuning_.workers, 1, config_.max_total);
    for (uint32_t i = 0; i < count; ++i) workers_.emplace_back([this] { Work(); });
  }

  Result<std::unique_ptr<PooledVm>> Acquire(std::optional<std::chrono::milliseconds> timeout);
  // Takes back the sandbox of a released handle.
  void Return(uint64_t lease_id, std::shared_ptr<Sandbox> sandbox);
  PoolStats Stats() const;
  Result<void> Destroy();

 private:
  struct IdleVm {
    std::unique_ptr<Sandbox> sandbox;
    Clock::time_point since;
  };

  // The body of every worker thread: destroys what was retired, checks the idle VMs now
  // and then, and makes VMs while NeedsVm().
  void Work();
  // Whether a VM should be made now. Callers hold mutex_, as for every function below.
  [[nodiscard]] bool NeedsVm() const;
  // Retires idle VMs that failed, outlived idle_ttl (oldest first) or exceed max_idle.
  // Sandbox::state() only reads memory, so this is cheap enough to run under the lock.
  void CheckIdle(Clock::time_point now);
  void Retire(std::shared_ptr<Sandbox> sandbox) {
    doomed_.push_back(std::move(sandbox));
    work_.notify_one();
  }
  std::unique_ptr<PooledVm> HandOut(std::unique_ptr<Sandbox> sandbox, bool hit,
                                    Clock::time_point start);
  Error TimedOut(std::chrono::milliseconds timeout) const;

  const PoolConfig config_;
  pool::MakeSandbox make_;  // workers only; reset by Destroy() once they are joined
  const pool::Tuning tuning_;
  std::vector<std::thread> workers_;

  mutable std::mutex mutex_;
  std::condition_variable work_;   // workers: there may be something to do
  std::condition_variable ready_;  // acquirers: a VM is idle, making one failed, or stopping
  bool stopping_ = false;
  std::deque<IdleVm> idle_;                                  // oldest first
  std::vector<std::shared_ptr<Sandbox>> doomed_;             // to be destroyed by a worker
  std::map<uint64_t, std::shared_ptr<pool::Lease>> leases_;  // the handles out
  uint64_t next_lease_ = 1;
  uint32_t making_ = 0;
  uint32_t waiting_ = 0;             // Acquire() calls waiting for a VM
  uint32_t refills_ = 0;             // released VMs that are owed a replacement
  std::optional<Error> make_error_;  // the last failure to make a VM
  uint32_t failures_in_a_row_ = 0;   // failed makes since the last one that worked
  uint64_t failures_reported_ = 0;   // runs of kMakeAttempts failures, told to waiters
  Clock::time_point retry_at_{};
  Clock::time_point next_check_{};
  PoolStats counters_;  // the counters; the sizes are read off the containers
  pool::LatencyRecorder latency_;
};

namespace {

Error ReleasedError(const std::string& why) {
  return Error::Lifecycle({LifecycleError::Released{why}});
}

}  // namespace

class PooledVm::Impl {
 public:
  Impl(std::shared_ptr<VmPool::Impl> pool, uint64_t lease_id, std::shared_ptr<pool::Lease> lease,
       std::string id)
      : id_(std::move(id)), pool_(std::move(pool)), lease_id_(lease_id), lease_(std::move(lease)) {}

  // The sandbox while the handle is held, else Released.
  [[nodiscard]] Result<std::shared_ptr<Sandbox>> Hold() const {
    std::lock_guard lock(lease_->mutex);
    if (!lease_->sandbox) return Fail(ReleasedError(lease_->released_why));
    return lease_->sandbox;
  }

  // Runs `op` on the sandbox while the handle is held. The sandbox is kept alive for the
  // call even if the handle is released meanwhile; the pool then destroys the VM under
  // the call, whose Destroyed is reported as the release that caused it.
  template <typename Op>
  auto Run(Op&& op) -> decltype(op(std::declval<Sandbox&>())) {
    auto sandbox = Hold();
    if (!sandbox) return Fail(std::move(sandbox).error());
    auto result = op(**sandbox);
    if (!result && IsDestroyedError(result.error())) {
      if (auto held = Hold(); !held) return Fail(std::move(held).error());
    }
    return result;
  }

  Result<void> Release() {
    std::shared_ptr<Sandbox> sandbox;
    {
      std::lock_guard lock(lease_->mutex);
      if (!lease_->sandbox) return Fail(ReleasedError(lease_->released_why));
      sandbox = std::move(lease_->sandbox);
      lease_->released_why = kHandleReleased;
    }
    pool_->Return(lease_id_, std::move(sandbox));
    return {};
  }

  const std::string id_;

 private:
  const std::shared_ptr<VmPool::Impl> pool_;
  const uint64_t lease_id_;
  const std::shared_ptr<pool::Lease> lease_;
};

bool VmPool::Impl::NeedsVm() const {
  size_t supply = idle_.size() + making_;
  if (supply + leases_.size() >= config_.max_total) return false;
  if (supply < size_t{config_.min_idle} + waiting_) return true;
  return refills_ > 0 && supply < config_.max_idle;
}

void VmPool::Impl::CheckIdle(Clock::time_point now) {
  for (auto it = idle_.begin(); it != idle_.end();) {
    bool broken = it->sandbox->state() != SandboxState::kReady;
    if (!broken && now - it->since < config_.idle_ttl) {
      ++it;
      continue;
    }
    ++(broken ? counters_.broken : counters_.evicted);
    Retire(std::move(it->sandbox));
    it = idle_.erase(it);
  }
  while (idle_.size() > config_.max_idle) {
    ++counters_.evicted;
    Retire(std::move(idle_.front().sandbox));
    idle_.pop_front();
  }
}

void VmPool::Impl::Work() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    auto now = Clock::now();
    if (now >= next_check_) {
      next_check_ = now + tuning_.check_interval;
      CheckIdle(now);
    }
    if (!doomed_.empty()) {
      std::shared_ptr<Sandbox> sandbox = std::move(doomed_.back());
      doomed_.pop_back();
      lock.unlock();
      (void)sandbox->Destroy();
      sandbox.reset();
      lock.lock();
      continue;
    }
    // With the idle list full, a replacement would only be evicted.
    if (idle_.size() + making_ >= config_.max_idle) refills_ = 0;
    if (NeedsVm() && now >= retry_at_) {
      ++making_;
      if (refills_ > 0) --refills_;
      lock.unlock();
      auto made = make_();
      if (made && config_.warm_up) made = WarmUp(std::move(*made), *config_.warm_up);
      lock.lock();
      --making_;
      if (!made) {
        ++counters_.create_failures;
        make_error_ = std::move(made).error();
        if (++failures_in_a_row_ < kMakeAttempts) continue;
        failures_in_a_row_ = 0;
        ++failures_reported_;
        retry_at_ = Clock::now() + tuning_.retry_delay;
        ready_.notify_all();
        continue;
      }
      failures_in_a_row_ = 0;
      ++counters_.created;
      if (stopping_) {
        // Destroy() destroys it with the rest once the workers are joined.
        doomed_.push_back(std::move(*made));
        break;
      }
      idle_.push_back({std::move(*made), Clock::now()});
      ready_.notify_one();
      continue;
    }
    auto wake = next_check_;
    if (NeedsVm()) wake = std::min(wake, retry_at_);
    {
      // Woken by an Acquire(), this thread does not preempt the caller (SCHED_BATCH
      // forgoes wakeup preemption); once running it is an ordinary thread again, so the
      // threads a new sandbox starts here are ordinary too.
      pool::BackgroundWhileWaiting background;
      work_.wait_until(lock, wake);
    }
  }
}

std::unique_ptr<PooledVm> VmPool::Impl::HandOut(std::unique_ptr<Sandbox> sandbox, bool hit,
                                                Clock::time_point start) {
  std::string id = sandbox->id();
  auto lease = std::make_shared<pool::Lease>();
  lease->sandbox = std::move(sandbox);
  uint64_t lease_id = next_lease_++;
  leases_.emplace(lease_id, lease);
  auto handle = std::unique_ptr<PooledVm>(new PooledVm(std::make_unique<PooledVm::Impl>(
      shared_from_this(), lease_id, std::move(lease), std::move(id))));
  ++(hit ? counters_.hits : counters_.misses);
  latency_.Add(MicrosSince(start));
  return handle;
}

Error VmPool::Impl::TimedOut(std::chrono::milliseconds timeout) const {
  std::string why = leases_.size() >= config_.max_total
                        ? fmt::format("all {} VMs (max_total) are in use", config_.max_total)
                        : fmt::format("{} in use, {} being made", leases_.size(), making_);
  if (make_error_) why += "; the last attempt to make one failed: " + make_error_->message();
  return Error::Timeout(fmt::format("timed out after {} ms waiting for a VM from the pool: {}",
                                    timeout.count(), why));
}

Result<std::unique_ptr<PooledVm>> VmPool::Impl::Acquire(
    std::optional<std::chrono::milliseconds> timeout) {
  auto start = Clock::now();
  auto patience = timeout.value_or(config_.acquire_timeout);
  if (patience.count() < 0) return Fail(Error::InvalidConfig("timeout", "must not be negative"));
  auto deadline = start + std::min(patience, kLongestWait);
  std::unique_lock lock(mutex_);
  uint64_t failures_before = failures_reported_;
  bool waited = false;
  auto fail = [this](Error error) -> Result<std::unique_ptr<PooledVm>> {
    ++counters_.misses;
    ++counters_.failed;
    return Fail(std::move(error));
  };
  for (;;) {
    if (stopping_) return fail(PoolDestroyedError());
    // The newest first: the oldest then age out when fewer are needed.
    while (!idle_.empty()) {
      IdleVm next = std::move(idle_.back());
      idle_.pop_back();
      if (next.sandbox->state() == SandboxState::kReady) {
        auto handle = HandOut(std::move(next.sandbox), !waited, start);
        lock.unlock();
        // Fewer may be idle than min_idle now.
        work_.notify_one();
        return handle;
      }
      ++counters_.broken;
      Retire(std::move(next.sandbox));
    }
    if (failures_reported_ != failures_before && make_error_) {
      return fail(Error::Backend("the pool could not make a VM: " + make_error_->message()));
    }
    if (Clock::now() >= deadline) return fail(TimedOut(patience));
    waited = true;
    ++waiting_;
    work_.notify_one();
    ready_.wait_until(lock, deadline);
    --waiting_;
  }
}

void VmPool::Impl::Return(uint64_t lease_id, std::shared_ptr<Sandbox> sandbox) {
  bool ready = sandbox->state() == SandboxState::kReady;
  std::unique_lock lock(mutex_);
  leases_.erase(lease_id);
  if (stopping_) {
    // Destroy() has taken the leases, or will find this one empty: the VM is ours to
    // destroy here.
    lock.unlock();
    (void)sandbox->Destroy();
    return;
  }
  ++(ready ? counters_.recycled : counters_.broken);
  doomed_.push_back(std::move(sandbox));
  if (idle_.size() + making_ + refills_ < config_.max_idle) ++refills_;
  lock.unlock();
  // One worker to destroy it, one to make its replacement.
  work_.notify_all();
}

PoolStats VmPool::Impl::Stats() const {
  PoolStats stats;
  pool::LatencyRecorder latency;
  {
    std::lock_guard lock(mutex_);
    stats = counters_;
    stats.idle = static_cast<uint32_t>(idle_.size());
    stats.in_use = static_cast<uint32_t>(leases_.size());
    stats.making = making_;
    latency = latency_;
  }
  stats.acquire_latency = latency.Summary();
  return stats;
}

Result<void> VmPool::Impl::Destroy() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return Fail(PoolDestroyedError());
    stopping_ = true;
  }
  work_.notify_all();
  ready_.notify_all();
  for (auto& worker : workers_) worker.join();
  workers_.clear();

  std::vector<std::shared_ptr<Sandbox>> doomed;
  std::map<uint64_t, std::shared_ptr<pool::Lease>> leases;
  {
    std::lock_guard lock(mutex_);
    for (auto& vm : idle_) doomed.push_back(std::move(vm.sandbox));
    idle_.clear();
    for (auto& sandbox : doomed_) doomed.push_back(std::move(sandbox));
    doomed_.clear();
    leases.swap(leases_);
  }
  for (auto& [id, lease] : leases) {
    std::lock_guard lock(lease->mutex);
    if (!lease->sandbox) continue;
    doomed.push_back(std::move(lease->sandbox));
    lease->released_why = kPoolDestroyed;
  }
  // A holder's call still running on one of these ends with Destroyed, which its handle
  // reports as Released.
  for (auto& sandbox : doomed) (void)sandbox->Destroy();
  doomed.clear();
  make_ = nullptr;
  return {};
}

namespace pool {

Result<std::unique_ptr<VmPool>> MakeVmPool(const PoolConfig& config, MakeSandbox make,
                                           Tuning tuning) {
  if (auto r = ValidatePoolConfig(config); !r) return Fail(std::move(r).error());
  auto impl = std::make_shared<VmPool::Impl>(config, std::move(make), tuning);
  impl->StartWorkers();
  return VmPool::Impl::Wrap(std::move(impl));
}

}  // namespace pool

Result<std::unique_ptr<VmPool>> VmPool::Create(const PoolConfig& config) {
  if (auto r = pool::ValidatePoolConfig(config); !r) return Fail(std::move(r).error());
  Result<pool::MakeSandbox> make = Fail(Error::Backend("no template"));
  if (const auto* saved = std::get_if<SnapshotTemplate>(&config.vm_template)) {
    make = RestoreFrom(saved->dir, saved->options, nullptr);
  } else {
    const auto& sandbox_config = std::get<SandboxConfig>(config.vm_template);
    // The template lives in a runtime directory of its own, like a VM's: removed with the
    // pool, swept by the next Vessel process should this one die first, and on the file
    // system of the VMs' memory files, so the snapshot links the template VM's memory
    // instead of copying it.
    auto dir = engine::RuntimeDir::Create();
    if (!dir) return Fail(std::move(dir).error().Context("the pool's template"));
    auto owned = std::make_shared<engine::RuntimeDir>(std::move(*dir));
    std::string snapshot = owned->File("template");
    auto sandbox = Sandbox::Create(sandbox_config);
    if (!sandbox) return Fail(std::move(sandbox).error());
    if (auto r = (*sandbox)->Snapshot(snapshot); !r) {
      return Fail(std::move(r).error().Context("saving the pool's template"));
    }
    // A clean VM, but it is not handed out: every VM of the pool is a restored clone, with
    // an RNG reseeded apart from its siblings'.
    (void)(*sandbox)->Destroy();
    RestoreOptions options;
    options.name = sandbox_config.name;
    options.timeout = sandbox_config.boot_timeout;
    options.engine = sandbox_config.engine;
    make = RestoreFrom(snapshot, options, std::move(owned));
  }
  if (!make) return Fail(std::move(make).error());
  return pool::MakeVmPool(config, std::move(*make));
}

VmPool::VmPool(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
VmPool::~VmPool() { (void)impl_->Destroy(); }

Result<std::unique_ptr<PooledVm>> VmPool::Acquire(
    std::optional<std::chrono::milliseconds> timeout) {
  return impl_->Acquire(timeout);
}
PoolStats VmPool::Stats() const { return impl_->Stats(); }
Result<void> VmPool::Destroy() { return impl_->Destroy(); }

PooledVm::PooledVm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PooledVm::~PooledVm() { (void)impl_->Release(); }

Result<ExecResult> PooledVm::Execute(const Command& command, const ExecOptions& options) {
  return impl_->Run([&](Sandbox& s) { return s.Execute(command, options); });
}
Result<std::unique_ptr<Process>> PooledVm::Start(const Command& command,
                                                 const ExecOptions& options) {
  return impl_->Run([&](Sandbox& s) { return s.Start(command, options); });
}
Result<std::string> PooledVm::ReadFile(const std::string& path) {
  return impl_->Run([&](Sandbox& s) { return s.ReadFile(path); });
}
Result<void> PooledVm::WriteFile(const std::string& path, std::string_view data, uint32_t mode) {
  return impl_->Run([&](Sandbox& s) { return s.WriteFile(path, data, mode); });
}
Result<FileInfo> PooledVm::ReadFileStream(const std::string& path, const ChunkSink& sink) {
  return impl_->Run([&](Sandbox& s) { return s.ReadFileStream(path, sink); });
}
Result<void> PooledVm::WriteFileStream(const std::string& path, const ChunkSource& source,
                                       uint32_t mode) {
  return impl_->Run([&](Sandbox& s) { return s.WriteFileStream(path, source, mode); });
}
Result<std::vector<FileInfo>> PooledVm::ListDir(const std::string& path) {
  return impl_->Run([&](Sandbox& s) { return s.ListDir(path); });
}
Result<FileInfo> PooledVm::Stat(const std::string& path) {
  return impl_->Run([&](Sandbox& s) { return s.Stat(path); });
}
Result<bool> PooledVm::Exists(const std::string& path) {
  return impl_->Run([&](Sandbox& s) { return s.Exists(path); });
}
Result<void> PooledVm::MakeDir(const std::string& path, bool parents, uint32_t mode) {
  return impl_->Run([&](Sandbox& s) { return s.MakeDir(path, parents, mode); });
}
Result<void> PooledVm::Remove(const std::string& path, bool recursive) {
  return impl_->Run([&](Sandbox& s) { return s.Remove(path, recursive); });
}
Result<void> PooledVm::Rename(const std::string& from, const std::string& to) {
  return impl_->Run([&](Sandbox& s) { return s.Rename(from, to); });
}
Result<void> PooledVm::Snapshot(const std::string& dir) {
  return impl_->Run([&](Sandbox& s) { return s.Snapshot(dir); });
}
Result<std::vector<std::unique_ptr<Sandbox>>> PooledVm::Fork(uint32_t n) {
  return impl_->Run([&](Sandbox& s) { return s.Fork(n); });
}
Result<void> PooledVm::Release() { return impl_->Release(); }

SandboxState PooledVm::state() const {
  auto sandbox = impl_->Hold();
  return sandbox ? (*sandbox)->state() : SandboxState::kDestroyed;
}
const std::string& PooledVm::id() const { return impl_->id_; }

}  // namespace vessel
