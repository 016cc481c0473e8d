// VmPool and RestorePool over a fake engine: configuration, hits and misses, max_total and
// timeouts, released handles, TTL eviction, broken VMs, destruction with handles out, and
// many threads at once. The product's pools restore real snapshots; here every VM is a
// fake agent on a thread, restored the same way (Sandbox::Impl::StartSaved).
#include "vessel/pool.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/stats.h"
#include "fake_engine.h"
#include "pool/pool_internal.h"
#include "sandbox/sandbox_impl.h"

namespace vessel {
namespace {

using namespace std::chrono_literals;
using sandbox::test::FakeEngine;
using sandbox::test::FakeVms;

// Quick background passes, so the tests take milliseconds, not seconds.
constexpr pool::Tuning kFast{.check_interval = 10ms, .retry_delay = 50ms, .workers = 2};
constexpr auto kPatience = 10s;

// Polls `condition` until it holds or kPatience passes; returns whether it held.
bool Eventually(const std::function<bool()>& condition) {
  auto deadline = std::chrono::steady_clock::now() + kPatience;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return condition();
}

void ExpectLifecycle(const Error& error, bool (*is)(const LifecycleError&)) {
  ASSERT_NE(error.lifecycle(), nullptr) << error.ToString();
  EXPECT_TRUE(is(*error.lifecycle())) << error.ToString();
}
bool IsReleased(const LifecycleError& e) { return e.Is<LifecycleError::Released>(); }
bool IsDestroyed(const LifecycleError& e) { return e.Is<LifecycleError::Destroyed>(); }

template <typename T>
void ExpectReleased(const Result<T>& result, const char* what) {
  SCOPED_TRACE(what);
  ASSERT_FALSE(result.has_value());
  ExpectLifecycle(result.error(), IsReleased);
}

class PoolTest : public ::testing::Test {
 protected:
  // Every VM is a clone of a saved one, as in the product.
  pool::MakeSandbox FakeTemplate() {
    auto engine = std::make_shared<FakeEngine>(vms_);
    engine::VmSpec spec;
    spec.restore = engine::VmSpec::Saved{};
    return [engine, spec] {
      return Sandbox::Impl::StartSaved(engine, spec, Deadline::After(kPatience));
    };
  }

  std::unique_ptr<VmPool> MakePool(PoolConfig config, pool::Tuning tuning = kFast) {
    auto made = pool::MakeVmPool(config, FakeTemplate(), tuning);
    EXPECT_TRUE(made.has_value()) << made.error().ToString();
    return made ? std::move(*made) : nullptr;
  }

  std::unique_ptr<PooledVm> MustAcquire(VmPool& pool,
                                        std::chrono::milliseconds timeout = kPatience) {
    auto vm = pool.Acquire(timeout);
    EXPECT_TRUE(vm.has_value()) << vm.error().ToString();
    return vm ? std::move(*vm) : nullptr;
  }

  static std::string Echo(PooledVm& vm, const std::string& text) {
    auto result = vm.Execute(Command::Argv({"echo", text}));
    EXPECT_TRUE(result.has_value()) << result.error().ToString();
    return result ? result->stdout_data : "";
  }

  // Once nothing is being made or destroyed: every VM alive is an idle or lent one.
  bool Settled(const VmPool& pool) {
    auto stats = pool.Stats();
    return stats.making == 0 && vms_->live() == size_t{stats.idle} + stats.in_use;
  }

  std::shared_ptr<FakeVms> vms_ = std::make_shared<FakeVms>();
};

// Configuration.

TEST(BackgroundWhileWaitingTest, TheThreadIsBatchWhileItLivesAndOrdinaryAfter) {
  std::thread([] {
    ASSERT_EQ(::sched_getscheduler(0), SCHED_OTHER);
    {
      pool::BackgroundWhileWaiting background;
      EXPECT_EQ(::sched_getscheduler(0), SCHED_BATCH);
      // A thread started meanwhile inherits the policy, which is why the pool holds one
      // only around its wait, never while it makes a sandbox.
      int inherited = -1;
      std::thread([&] { inherited = ::sched_getscheduler(0); }).join();
      EXPECT_EQ(inherited, SCHED_BATCH);
    }
    EXPECT_EQ(::sched_getscheduler(0), SCHED_OTHER);
  }).join();
}

TEST(BackgroundWhileWaitingTest, AThreadWithAnotherPolicyIsLeftAlone) {
  std::thread([] {
    sched_param param{};
    ASSERT_EQ(::sched_setscheduler(0, SCHED_IDLE, &param), 0);
    {
      pool::BackgroundWhileWaiting background;
      EXPECT_EQ(::sched_getscheduler(0), SCHED_IDLE);
    }
    EXPECT_EQ(::sched_getscheduler(0), SCHED_IDLE);
  }).join();
}

TEST_F(PoolTest, InvalidConfigNamesTheField) {
  struct Case {
    std::function<void(PoolConfig&)> edit;
    const char* field;
  };
  const Case cases[] = {
      {[](PoolConfig& c) { c.max_total = 0; }, "max_total"},
      {[](PoolConfig& c) { c.max_total = kMaxPoolVms + 1; }, "max_total"},
      {[](PoolConfig& c) { c.max_idle = c.max_total + 1; }, "max_idle"},
      {[](PoolConfig& c) {
         c.max_idle = 2;
         c.min_idle = 3;
       },
       "min_idle"},
      {[](PoolConfig& c) { c.idle_ttl = 0ms; }, "idle_ttl"},
      {[](PoolConfig& c) { c.idle_ttl = -5ms; }, "idle_ttl"},
      {[](PoolConfig& c) { c.acquire_timeout = -1ms; }, "acquire_timeout"},
      {[](PoolConfig& c) { c.warm_up = Command::Argv({}); }, "warm_up"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    PoolConfig config;
    c.edit(config);
    auto made = pool::MakeVmPool(config, FakeTemplate(), kFast);
    ASSERT_FALSE(made.has_value());
    EXPECT_EQ(made.error().kind(), ErrorKind::kInvalidConfig);
    EXPECT_EQ(made.error().subject(), c.field) << made.error().ToString();
  }
  // The public entry point checks the limits before it touches the template.
  PoolConfig config;
  config.min_idle = 5;
  config.max_idle = 4;
  auto created = VmPool::Create(config);
  ASSERT_FALSE(created.has_value());
  EXPECT_EQ(created.error().subject(), "min_idle");
  EXPECT_EQ(vms_->started().size(), 0u);

  // Limits at their edges are fine.
  auto edges = MakePool(
      {.min_idle = 0, .max_idle = 0, .max_total = 1, .idle_ttl = 1ms, .acquire_timeout = 0ms});
  ASSERT_NE(edges, nullptr);
  auto negative = edges->Acquire(-1ms);
  ASSERT_FALSE(negative.has_value());
  EXPECT_EQ(negative.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(negative.error().subject(), "timeout");
}

// Acquire.

TEST_F(PoolTest, AnIdleVmIsAHitAndAnEmptyPoolAMiss) {
  vms_->SetStartDelay(100ms);
  auto pool = MakePool({.min_idle = 1, .max_idle = 1, .max_total = 3});
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 1; }));

  auto start = std::chrono::steady_clock::now();
  auto first = MustAcquire(*pool);
  auto hit_time = std::chrono::steady_clock::now() - start;
  ASSERT_NE(first, nullptr);
  EXPECT_LT(hit_time, 50ms) << "a hit waited for a VM to be made";
  EXPECT_EQ(first->state(), SandboxState::kReady);
  EXPECT_EQ(Echo(*first, "one"), "one\n");

  // The filler is still making the replacement: this one waits for it.
  auto second = MustAcquire(*pool);
  ASSERT_NE(second, nullptr);
  EXPECT_NE(second->id(), first->id());
  EXPECT_EQ(Echo(*second, "two"), "two\n");

  auto stats = pool->Stats();
  EXPECT_EQ(stats.hits, 1u);
  EXPECT_EQ(stats.misses, 1u);
  EXPECT_EQ(stats.failed, 0u);
  EXPECT_EQ(stats.in_use, 2u);
  EXPECT_EQ(stats.acquire_latency.count, 2u);
  EXPECT_GE(stats.acquire_latency.p99, 20ms) << "the miss waited for a 100 ms start";
  // min_idle is restored while both are out.
  EXPECT_TRUE(Eventually([&] { return pool->Stats().idle == 1; }));
}

TEST_F(PoolTest, MaxTotalBoundsThePoolAndAcquireTimesOut) {
  auto pool = MakePool({.min_idle = 0, .max_idle = 1, .max_total = 2});
  ASSERT_NE(pool, nullptr);
  auto a = MustAcquire(*pool);
  auto b = MustAcquire(*pool);
  ASSERT_TRUE(a && b);

  auto start = std::chrono::steady_clock::now();
  auto third = pool->Acquire(150ms);
  auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(third.has_value());
  EXPECT_EQ(third.error().kind(), ErrorKind::kBackend);
  EXPECT_TRUE(third.error().timed_out()) << third.error().message();
  EXPECT_TRUE(third.error().retryable());
  EXPECT_NE(third.error().message().find("max_total"), std::string::npos)
      << third.error().message();
  EXPECT_GE(waited, 150ms);
  EXPECT_LT(waited, 2s);
  EXPECT_EQ(vms_->started().size(), 2u) << "the pool made a VM beyond max_total";

  // Zero patience: only an idle VM would have done.
  auto none = pool->Acquire(0ms);
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().kind(), ErrorKind::kBackend);

  // A release frees a slot: the waiter gets the VM made in its place.
  std::thread releaser([&] {
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(a->Release());
  });
  auto after = pool->Acquire(kPatience);
  releaser.join();
  ASSERT_TRUE(after.has_value()) << after.error().ToString();
  EXPECT_NE((*after)->id(), a->id());

  auto stats = pool->Stats();
  EXPECT_EQ(stats.failed, 2u);
  EXPECT_EQ(stats.misses, 5u);
  EXPECT_EQ(stats.hits, 0u);
  EXPECT_EQ(stats.acquire_latency.count, 3u);
  EXPECT_EQ(stats.in_use, 2u);
}

TEST_F(PoolTest, AFailureToMakeAVmReachesTheWaiter) {
  vms_->FailStarts(1000);
  auto pool = MakePool({.min_idle = 0, .max_idle = 1, .max_total = 1});
  ASSERT_NE(pool, nullptr);
  auto start = std::chrono::steady_clock::now();
  auto vm = pool->Acquire(kPatience);
  ASSERT_FALSE(vm.has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s) << "the waiter sat out its timeout";
  EXPECT_EQ(vm.error().kind(), ErrorKind::kBackend);
  EXPECT_NE(vm.error().message().find("told to fail"), std::string::npos) << vm.error().message();
  EXPECT_GE(pool->Stats().create_failures, 1u);

  // The pool recovers once the engine does.
  vms_->FailStarts(0);
  auto later = MustAcquire(*pool);
  ASSERT_NE(later, nullptr);
  EXPECT_EQ(Echo(*later, "back"), "back\n");
}

TEST_F(PoolTest, OneFailureToMakeAVmIsMadeGoodWithoutTheWaiterSeeingIt) {
  vms_->FailStarts(1);
  auto pool = MakePool({.min_idle = 0, .max_idle = 1, .max_total = 1});
  ASSERT_NE(pool, nullptr);
  auto start = std::chrono::steady_clock::now();
  auto vm = MustAcquire(*pool);
  ASSERT_NE(vm, nullptr);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s) << "the second attempt waited";
  EXPECT_EQ(Echo(*vm, "second"), "second\n");
  auto stats = pool->Stats();
  EXPECT_EQ(stats.create_failures, 1u);
  EXPECT_EQ(stats.failed, 0u);
  EXPECT_EQ(stats.created, 1u);

  // The count starts again after a VM that worked: one more failure is again made good.
  vms_->FailStarts(1);
  ASSERT_TRUE(vm->Release());
  auto next = MustAcquire(*pool);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(pool->Stats().create_failures, 2u);
  EXPECT_EQ(pool->Stats().failed, 0u);
}

TEST_F(PoolTest, AVmWhoseWarmUpFailsIsNotHandedOut) {
  PoolConfig config{.min_idle = 0, .max_idle = 1, .max_total = 1};
  config.warm_up = Command::Argv({"false"});
  auto pool = MakePool(config);
  ASSERT_NE(pool, nullptr);
  auto vm = pool->Acquire(kPatience);
  ASSERT_FALSE(vm.has_value());
  EXPECT_NE(vm.error().message().find("warming up"), std::string::npos) << vm.error().message();
  EXPECT_GE(pool->Stats().create_failures, 1u);
  EXPECT_EQ(pool->Stats().created, 0u);
  ASSERT_TRUE(pool->Destroy());
  EXPECT_EQ(vms_->live(), 0u);
  EXPECT_GE(vms_->started().size(), 1u);
}

// Release.

TEST_F(PoolTest, EveryOperationOnAReleasedHandleIsReleased) {
  auto pool = MakePool({.min_idle = 0, .max_idle = 1, .max_total = 1});
  ASSERT_NE(pool, nullptr);
  auto vm = MustAcquire(*pool);
  ASSERT_NE(vm, nullptr);
  std::string id = vm->id();
  ASSERT_TRUE(vm->Release());

  ExpectReleased(vm->Execute(Command::Argv({"true"})), "Execute");
  ExpectReleased(vm->Start(Command::Argv({"true"})), "Start");
  ExpectReleased(vm->ReadFile("/etc/hostname"), "ReadFile");
  ExpectReleased(vm->WriteFile("/tmp/x", "x"), "WriteFile");
  ExpectReleased(
      vm->ReadFileStream("/tmp/x", [](std::span<const uint8_t>) -> Result<void> { return {}; }),
      "ReadFileStream");
  ExpectReleased(
      vm->WriteFileStream("/tmp/x", [](std::span<uint8_t>) -> Result<size_t> { return 0; }),
      "WriteFileStream");
  ExpectReleased(vm->ListDir("/"), "ListDir");
  ExpectReleased(vm->Stat("/"), "Stat");
  ExpectReleased(vm->Exists("/"), "Exists");
  ExpectReleased(vm->MakeDir("/tmp/d"), "MakeDir");
  ExpectReleased(vm->Remove("/tmp/x"), "Remove");
  ExpectReleased(vm->Rename("/tmp/x", "/tmp/y"), "Rename");
  ExpectReleased(vm->Snapshot("/tmp/nowhere"), "Snapshot");
  ExpectReleased(vm->Fork(1), "Fork");
  ExpectReleased(vm->Release(), "a second Release");
  EXPECT_EQ(vm->state(), SandboxState::kDestroyed);
  EXPECT_EQ(vm->id(), id);

  // The VM itself was destroyed, not kept.
  EXPECT_TRUE(Eventually([&] { return vms_->live() <= 1 && Settled(*pool); }));
  auto destroyed = vms_->destroyed();
  EXPECT_NE(std::find(destroyed.begin(), destroyed.end(), id), destroyed.end());
  auto stats = pool->Stats();
  EXPECT_EQ(stats.recycled, 1u);
  EXPECT_EQ(stats.broken, 0u);
  EXPECT_EQ(stats.in_use, 0u);
}

TEST_F(PoolTest, AReleasedVmIsNeverHandedOutAgain) {
  auto pool = MakePool({.min_idle = 1, .max_idle = 1, .max_total = 1});
  ASSERT_NE(pool, nullptr);
  std::set<std::string> ids;
  for (int i = 0; i < 10; ++i) {
    auto vm = MustAcquire(*pool);
    ASSERT_NE(vm, nullptr);
    EXPECT_TRUE(ids.insert(vm->id()).second) << vm->id() << " was handed out twice";
    // The handle's destructor releases it.
  }
  EXPECT_EQ(pool->Stats().recycled, 10u);
}

TEST_F(PoolTest, AReleaseFromAnotherThreadEndsARunningCallWithReleased) {
  auto pool = MakePool({.min_idle = 0, .max_idle = 1, .max_total = 1});
  ASSERT_NE(pool, nullptr);
  auto vm = MustAcquire(*pool);
  ASSERT_NE(vm, nullptr);
  std::optional<Result<ExecResult>> hung;
  std::thread caller([&] { hung = vm->Execute(Command::Argv({"hang"})); });
  std::this_thread::sleep_for(50ms);
  ASSERT_TRUE(vm->Release());
  caller.join();
  ASSERT_TRUE(hung.has_value());
  ExpectReleased(*hung, "the hung Execute");
}

TEST_F(PoolTest, AReleaseReplacesTheVmOnlyUpToMaxIdle) {
  auto pool = MakePool({.min_idle = 0, .max_idle = 2, .max_total = 4});
  ASSERT_NE(pool, nullptr);
  std::vector<std::unique_ptr<PooledVm>> held;
  for (int i = 0; i < 4; ++i) held.push_back(MustAcquire(*pool));
  held.clear();
  ASSERT_TRUE(Eventually([&] { return Settled(*pool) && pool->Stats().idle == 2; }));
  std::this_thread::sleep_for(50ms);
  auto stats = pool->Stats();
  EXPECT_EQ(stats.idle, 2u);
  EXPECT_EQ(stats.recycled, 4u);
  EXPECT_EQ(stats.created, 6u);
  EXPECT_EQ(vms_->live(), 2u);
}

// Eviction and broken VMs.

TEST_F(PoolTest, IdleVmsPastTheirTtlAreEvictedOldestFirst) {
  vms_->SetStartDelay(60ms);
  pool::Tuning one_worker = kFast;
  one_worker.workers = 1;
  auto pool =
      MakePool({.min_idle = 2, .max_idle = 2, .max_total = 4, .idle_ttl = 300ms}, one_worker);
  ASSERT_NE(pool, nullptr);
  // Evicted VMs are destroyed by a worker soon after.
  ASSERT_TRUE(Eventually([&] { return vms_->destroyed().size() >= 2; }));
  EXPECT_GE(pool->Stats().evicted, 2u);
  auto started = vms_->started();
  auto destroyed = vms_->destroyed();
  ASSERT_GE(started.size(), 2u);
  ASSERT_GE(destroyed.size(), 2u);
  EXPECT_EQ(destroyed[0], started[0]);
  EXPECT_EQ(destroyed[1], started[1]);
  // min_idle holds through the evictions.
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 2; }));
  EXPECT_GE(pool->Stats().created, 4u);
}

TEST_F(PoolTest, WithoutMinIdleThePoolDrainsAfterTheTtl) {
  auto pool = MakePool({.min_idle = 0, .max_idle = 3, .max_total = 3, .idle_ttl = 200ms});
  ASSERT_NE(pool, nullptr);
  {
    std::vector<std::unique_ptr<PooledVm>> held;
    for (int i = 0; i < 3; ++i) held.push_back(MustAcquire(*pool));
  }
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 3; }));
  ASSERT_TRUE(Eventually([&] { return pool->Stats().evicted == 3 && Settled(*pool); }));
  EXPECT_EQ(pool->Stats().idle, 0u);
  EXPECT_EQ(vms_->live(), 0u);
}

TEST_F(PoolTest, AVmBrokenWhenReleasedIsDestroyedAndCounted) {
  auto pool = MakePool({.min_idle = 0, .max_idle = 1, .max_total = 1});
  ASSERT_NE(pool, nullptr);
  auto vm = MustAcquire(*pool);
  ASSERT_NE(vm, nullptr);
  vms_->KillAll();
  ASSERT_TRUE(Eventually([&] { return vm->state() == SandboxState::kFailed; }));
  auto result = vm->Execute(Command::Argv({"true"}));
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().kind(), ErrorKind::kLifecycle) << result.error().ToString();
  ASSERT_TRUE(vm->Release());
  ASSERT_TRUE(Eventually([&] { return Settled(*pool); }));
  auto stats = pool->Stats();
  EXPECT_EQ(stats.broken, 1u);
  EXPECT_EQ(stats.recycled, 0u);
  // Its replacement works.
  auto next = MustAcquire(*pool);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(Echo(*next, "fresh"), "fresh\n");
}

TEST_F(PoolTest, AVmThatDiesWhileIdleIsReplaced) {
  auto pool = MakePool({.min_idle = 2, .max_idle = 2, .max_total = 2});
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 2 && Settled(*pool); }));
  auto before = vms_->started();
  vms_->KillAll();
  ASSERT_TRUE(Eventually([&] {
    auto stats = pool->Stats();
    return stats.broken == 2 && stats.idle == 2 && Settled(*pool);
  }));
  EXPECT_EQ(pool->Stats().created, 4u);
  for (int i = 0; i < 2; ++i) {
    auto vm = MustAcquire(*pool, 0ms);
    ASSERT_NE(vm, nullptr);
    EXPECT_EQ(std::find(before.begin(), before.end(), vm->id()), before.end());
    EXPECT_EQ(Echo(*vm, "alive"), "alive\n");
  }
}

// Destruction.

TEST_F(PoolTest, DestroyingThePoolReleasesTheHandlesStillOut) {
  auto pool = MakePool({.min_idle = 2, .max_idle = 2, .max_total = 4});
  ASSERT_NE(pool, nullptr);
  auto a = MustAcquire(*pool);
  auto b = MustAcquire(*pool);
  ASSERT_TRUE(a && b);
  std::optional<Result<ExecResult>> hung;
  std::thread caller([&] { hung = a->Execute(Command::Argv({"hang"})); });
  std::this_thread::sleep_for(50ms);

  ASSERT_TRUE(pool->Destroy());
  caller.join();
  EXPECT_EQ(vms_->live(), 0u) << "a VM outlived its pool";
  ASSERT_TRUE(hung.has_value());
  ExpectReleased(*hung, "the hung Execute");
  for (PooledVm* vm : {a.get(), b.get()}) {
    auto result = vm->Execute(Command::Argv({"true"}));
    ExpectReleased(result, "Execute after the pool's destruction");
    if (!result) {
      EXPECT_NE(result.error().message().find("pool was destroyed"), std::string::npos)
          << result.error().message();
    }
    ExpectReleased(vm->Release(), "Release after the pool's destruction");
    EXPECT_EQ(vm->state(), SandboxState::kDestroyed);
  }
  auto acquired = pool->Acquire(0ms);
  ASSERT_FALSE(acquired.has_value());
  ExpectLifecycle(acquired.error(), IsDestroyed);
  auto again = pool->Destroy();
  ASSERT_FALSE(again.has_value());
  ExpectLifecycle(again.error(), IsDestroyed);
  // The handles outlive the pool object itself.
  pool.reset();
  ExpectReleased(b->ListDir("/"), "ListDir after the pool object is gone");
}

TEST_F(PoolTest, DestroyWakesWaitersWithDestroyed) {
  vms_->SetStartDelay(200ms);
  auto pool = MakePool({.min_idle = 0, .max_idle = 1, .max_total = 1});
  ASSERT_NE(pool, nullptr);
  std::optional<Result<std::unique_ptr<PooledVm>>> waited;
  std::thread waiter([&] { waited = pool->Acquire(kPatience); });
  std::this_thread::sleep_for(50ms);
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(pool->Destroy());
  waiter.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  ASSERT_TRUE(waited.has_value());
  ASSERT_FALSE(waited->has_value());
  ExpectLifecycle(waited->error(), IsDestroyed);
  // The VM being made when the pool went was destroyed too.
  EXPECT_EQ(vms_->live(), 0u);
}

// Many threads.

TEST_F(PoolTest, EightThreadsOfFiftyCyclesAddUp) {
  constexpr int kThreads = 8;
  constexpr int kCycles = 50;
  auto pool = MakePool({.min_idle = 2, .max_idle = 4, .max_total = 6});
  ASSERT_NE(pool, nullptr);
  std::atomic<int> ok = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCycles; ++i) {
        auto vm = pool->Acquire(kPatience);
        if (!vm) {
          ADD_FAILURE() << vm.error().ToString();
          continue;
        }
        std::string text = std::to_string(t) + "/" + std::to_string(i);
        auto result = (*vm)->Execute(Command::Argv({"echo", text}));
        if (result && result->stdout_data == text + "\n") ++ok;
        // Half the handles are released explicitly, half by their destructor.
        if (i % 2 == 0) {
          EXPECT_TRUE((*vm)->Release());
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok.load(), kThreads * kCycles);
  ASSERT_TRUE(Eventually([&] { return Settled(*pool); }));
  auto stats = pool->Stats();
  EXPECT_EQ(stats.hits + stats.misses, uint64_t{kThreads * kCycles});
  EXPECT_EQ(stats.failed, 0u);
  EXPECT_EQ(stats.acquire_latency.count, uint64_t{kThreads * kCycles});
  EXPECT_EQ(stats.in_use, 0u);
  EXPECT_EQ(stats.recycled, uint64_t{kThreads * kCycles});
  EXPECT_EQ(stats.created, stats.idle + stats.recycled + stats.evicted + stats.broken);
  ASSERT_TRUE(pool->Destroy());
  EXPECT_EQ(vms_->live(), 0u);
  // Once the workers are joined, every VM started was made and counted.
  EXPECT_EQ(vms_->started().size(), pool->Stats().created);
}

// RestorePool.

class RestorePoolTest : public PoolTest {
 protected:
  std::unique_ptr<RestorePool> MakeRestorePool(uint32_t size) {
    engine::VmSpec spec;
    spec.restore = engine::VmSpec::Saved{};
    RestorePoolConfig config;
    config.size = size;
    config.options.timeout = kPatience;
    auto made = pool::MakeRestorePool(std::make_shared<FakeEngine>(vms_), spec, config, kFast);
    EXPECT_TRUE(made.has_value()) << made.error().ToString();
    return made ? std::move(*made) : nullptr;
  }
};

TEST_F(RestorePoolTest, RestoresFromWaitingVmsAndRefills) {
  vms_->SetStartDelay(300ms);
  auto pool = MakeRestorePool(2);
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 2; }));

  auto start = std::chrono::steady_clock::now();
  auto restored = pool->Restore();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 150ms) << "the restore started a VM";
  ASSERT_TRUE(restored.has_value()) << restored.error().ToString();
  EXPECT_EQ((*restored)->state(), SandboxState::kReady);
  auto echo = (*restored)->Execute(Command::Argv({"echo", "restored"}));
  ASSERT_TRUE(echo.has_value()) << echo.error().ToString();
  EXPECT_EQ(echo->stdout_data, "restored\n");

  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 2; }));
  auto stats = pool->Stats();
  EXPECT_EQ(stats.hits, 1u);
  EXPECT_EQ(stats.misses, 0u);
  EXPECT_EQ(stats.created, 3u);
  EXPECT_EQ(stats.acquire_latency.count, 1u);

  // Empty the pool faster than it refills: the next restore starts its own VM.
  auto second = pool->Restore();
  auto third = pool->Restore();
  auto fourth = pool->Restore();
  ASSERT_TRUE(second && third && fourth);
  stats = pool->Stats();
  EXPECT_EQ(stats.hits, 3u);
  EXPECT_EQ(stats.misses, 1u);

  // Restored sandboxes are the caller's: they outlive the pool.
  ASSERT_TRUE(pool->Destroy());
  EXPECT_EQ(vms_->live(), 4u);
  auto after = (*fourth)->Execute(Command::Argv({"echo", "mine"}));
  ASSERT_TRUE(after.has_value()) << after.error().ToString();
  auto refused = pool->Restore();
  ASSERT_FALSE(refused.has_value());
  ExpectLifecycle(refused.error(), IsDestroyed);
  auto again = pool->Destroy();
  ASSERT_FALSE(again.has_value());
  ExpectLifecycle(again.error(), IsDestroyed);
}

TEST_F(RestorePoolTest, AWaitingVmThatDiedIsReplaced) {
  auto pool = MakeRestorePool(2);
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 2; }));
  vms_->KillAll();
  ASSERT_TRUE(Eventually([&] {
    auto stats = pool->Stats();
    return stats.broken == 2 && stats.idle == 2 && vms_->live() == 2;
  }));
  auto restored = pool->Restore();
  ASSERT_TRUE(restored.has_value()) << restored.error().ToString();
  EXPECT_EQ(pool->Stats().hits, 1u);
}

TEST_F(RestorePoolTest, SizeIsChecked) {
  engine::VmSpec spec;
  spec.restore = engine::VmSpec::Saved{};
  for (uint32_t size : {0u, kMaxPoolVms + 1}) {
    auto made = pool::MakeRestorePool(std::make_shared<FakeEngine>(vms_), spec, {.size = size});
    ASSERT_FALSE(made.has_value());
    EXPECT_EQ(made.error().subject(), "size");
  }
}

// The pools and the benchmarks share one percentile: nearest rank.
TEST(PercentileTest, NearestRankOfSortedSamples) {
  std::vector<int> one{7};
  EXPECT_EQ(Percentile(one, 50), 7);
  EXPECT_EQ(Percentile(one, 99), 7);
  std::vector<double> ten{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(Percentile(ten, 50), 5);
  EXPECT_EQ(Percentile(ten, 90), 9);
  EXPECT_EQ(Percentile(ten, 99), 10);
  EXPECT_EQ(Percentile(ten, 100), 10);
  std::vector<std::chrono::microseconds> latencies{std::chrono::microseconds(1),
                                                   std::chrono::microseconds(3)};
  EXPECT_EQ(Percentile(latencies, 50), std::chrono::microseconds(1));
}

}  // namespace
}  // namespace vessel
