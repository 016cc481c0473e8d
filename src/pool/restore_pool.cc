// RestorePool: VMM processes started ahead of time, waiting for one snapshot.
//
// A restore is two halves (Sandbox::Impl): engine->Start(spec) starts the VMM with the
// snapshot's memory mapped and waits, and FinishSaved() loads the state, runs the VM and
// wakes its agent as a clone. The pool does the first half in the background, so a
// Restore() pays only for the second.
#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "base/deadline.h"
#include "pool/pool_internal.h"
#include "sandbox/saved_vm.h"
#include "vessel/pool.h"

namespace vessel {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

class RestorePool::Impl {
 public:
  Impl(std::shared_ptr<engine::Engine> engine, engine::VmSpec spec, RestorePoolConfig config,
       pool::Tuning tuning)
      : engine_(std::move(engine)),
        spec_(std::move(spec)),
        config_(std::move(config)),
        tuning_(tuning) {}
  ~Impl() { (void)Destroy(); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  static std::unique_ptr<RestorePool> Wrap(std::unique_ptr<Impl> impl) {
    return std::unique_ptr<RestorePool>(new RestorePool(std::move(impl)));
  }

  void StartFiller() {
    filler_ = std::thread([this] { Fill(); });
  }

  Result<std::unique_ptr<Sandbox>> Restore();
  PoolStats Stats() const;
  Result<void> Destroy();

 private:
  // The filler thread: keeps config_.size VMs started and waiting, replaces those that
  // died, and destroys what was retired, all with mutex_ released.
  void Fill();
  // Retires waiting VMs whose process is gone. Callers hold mutex_; Running() is a
  // waitpid(WNOHANG).
  void CheckWaiting();

  const std::shared_ptr<engine::Engine> engine_;
  const engine::VmSpec spec_;
  const RestorePoolConfig config_;
  const pool::Tuning tuning_;
  std::thread filler_;

  mutable std::mutex mutex_;
  std::condition_variable work_;  // the filler: there may be something to do
  bool stopping_ = false;
  std::deque<std::unique_ptr<engine::Vm>> waiting_;  // oldest first
  std::vector<std::unique_ptr<engine::Vm>> doomed_;  // to be destroyed by the filler
  uint32_t making_ = 0;
  uint32_t restoring_ = 0;  // Restore() calls loading a waiting VM
  Clock::time_point retry_at_{};
  Clock::time_point next_check_{};
  PoolStats counters_;
  pool::LatencyRecorder latency_;
};

void RestorePool::Impl::CheckWaiting() {
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->Running()) {
      ++it;
      continue;
    }
    ++counters_.broken;
    doomed_.push_back(std::move(*it));
    it = waiting_.erase(it);
  }
}

void RestorePool::Impl::Fill() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    auto now = Clock::now();
    if (now >= next_check_) {
      next_check_ = now + tuning_.check_interval;
      CheckWaiting();
    }
    if (!doomed_.empty()) {
      std::unique_ptr<engine::Vm> vm = std::move(doomed_.back());
      doomed_.pop_back();
      lock.unlock();
      vm->Destroy();
      vm.reset();
      lock.lock();
      continue;
    }
    bool short_of_vms = waiting_.size() + making_ < config_.size;
    // A VMM starting up takes the CPU a restore in progress needs: the replacement waits
    // until the restore is done.
    if (short_of_vms && now >= retry_at_ && restoring_ == 0) {
      ++making_;
      lock.unlock();
      auto vm = engine_->Start(spec_);
      // Start() returns once the process runs; the first answer from the VMM comes once
      // it has initialised, which is the start-up a Restore() must not wait for.
      if (vm) {
        if (auto state = (*vm)->RunState(); !state) vm = Fail(std::move(state).error());
      }
      lock.lock();
      --making_;
      if (!vm) {
        ++counters_.create_failures;
        retry_at_ = Clock::now() + tuning_.retry_delay;
        continue;
      }
      ++counters_.created;
      if (stopping_) {
        doomed_.push_back(std::move(*vm));
        break;
      }
      waiting_.push_back(std::move(*vm));
      continue;
    }
    // A restore in progress wakes the filler when it ends.
    bool can_start = short_of_vms && restoring_ == 0;
    work_.wait_until(lock, can_start ? std::min(next_check_, retry_at_) : next_check_);
  }
}

Result<std::unique_ptr<Sandbox>> RestorePool::Impl::Restore() {
  auto start = Clock::now();
  auto deadline = Deadline::After(config_.options.timeout);
  std::unique_ptr<engine::Vm> vm;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      ++counters_.misses;
      ++counters_.failed;
      return Fail(Error::Lifecycle({LifecycleError::Destroyed{"the pool was destroyed"}}));
    }
    while (!waiting_.empty() && !vm) {
      std::unique_ptr<engine::Vm> next = std::move(waiting_.front());
      waiting_.pop_front();
      if (next->Running()) {
        vm = std::move(next);
      } else {
        ++counters_.broken;
        doomed_.push_back(std::move(next));
      }
    }
    if (vm) ++restoring_;
  }
  bool hit = false;
  Result<std::unique_ptr<Sandbox>> restored = Fail(Error::Backend("not restored"));
  if (vm) {
    // FinishSaved() destroys the VM when it fails.
    restored = sandbox::FinishSaved(engine_, std::move(vm), spec_, deadline);
    hit = restored.has_value();
    std::lock_guard lock(mutex_);
    --restoring_;
    if (!hit) ++counters_.broken;
    work_.notify_one();
  }
  if (!hit) restored = sandbox::StartSaved(engine_, spec_, deadline);
  std::lock_guard lock(mutex_);
  work_.notify_one();
  ++(hit ? counters_.hits : counters_.misses);
  if (restored) {
    latency_.Add(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start));
  } else {
    ++counters_.failed;
  }
  return restored;
}

PoolStats RestorePool::Impl::Stats() const {
  PoolStats stats;
  pool::LatencyRecorder latency;
  {
    std::lock_guard lock(mutex_);
    stats = counters_;
    stats.idle = static_cast<uint32_t>(waiting_.size());
    stats.making = making_;
    latency = latency_;
  }
  stats.acquire_latency = latency.Summary();
  return stats;
}

Result<void> RestorePool::Impl::Destroy() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      return Fail(Error::Lifecycle({LifecycleError::Destroyed{"the pool was destroyed"}}));
    }
    stopping_ = true;
  }
  work_.notify_all();
  if (filler_.joinable()) filler_.join();
  std::vector<std::unique_ptr<engine::Vm>> doomed;
  {
    std::lock_guard lock(mutex_);
    for (auto& vm : waiting_) doomed.push_back(std::move(vm));
    waiting_.clear();
    for (auto& vm : doomed_) doomed.push_back(std::move(vm));
    doomed_.clear();
  }
  for (auto& vm : doomed) vm->Destroy();
  return {};
}

namespace pool {

Result<std::unique_ptr<RestorePool>> MakeRestorePool(std::shared_ptr<engine::Engine> engine,
                                                     engine::VmSpec spec,
                                                     const RestorePoolConfig& config,
                                                     Tuning tuning) {
  if (config.size < 1 || config.size > kMaxPoolVms) {
    return Fail(
        Error::InvalidConfig("size", fmt::format("{} is outside 1..{}", config.size, kMaxPoolVms)));
  }
  if (!spec.restore) return Fail(Error::InvalidConfig("spec", "has no saved VM to restore"));
  auto impl =
      std::make_unique<RestorePool::Impl>(std::move(engine), std::move(spec), config, tuning);
  impl->StartFiller();
  return RestorePool::Impl::Wrap(std::move(impl));
}

}  // namespace pool

Result<std::unique_ptr<RestorePool>> RestorePool::Create(const std::string& dir,
                                                         const RestorePoolConfig& config) {
  auto saved = sandbox::OpenSaved(dir, config.options);
  if (!saved) return Fail(std::move(saved).error());
  return pool::MakeRestorePool(std::move(saved->engine), std::move(saved->spec), config);
}

RestorePool::RestorePool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RestorePool::~RestorePool() { (void)impl_->Destroy(); }

Result<std::unique_ptr<Sandbox>> RestorePool::Restore() { return impl_->Restore(); }
PoolStats RestorePool::Stats() const { return impl_->Stats(); }
Result<void> RestorePool::Destroy() { return impl_->Destroy(); }

}  // namespace vessel
