// Warm pools of real VMs: what one holder leaves is invisible to the next, released
// handles are dead, the pool's limits hold, idle VMs age out or are replaced when they
// die, many threads share a pool without deadlock or leak, and a RestorePool restores.
#include "vessel/pool.h"

#include <fmt/format.h>
#include <signal.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "vm_test_env.h"

namespace vessel {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr auto kPatience = 60s;

bool Eventually(const std::function<bool()>& condition,
                std::chrono::milliseconds patience = kPatience) {
  auto deadline = std::chrono::steady_clock::now() + patience;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return condition();
}

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string Sh(PooledVm& vm, const std::string& script, const ExecOptions& options = {}) {
  auto result = vm.Execute(Command::Shell(script), options);
  EXPECT_TRUE(result.has_value()) << result.error().ToString();
  if (!result) return {};
  EXPECT_TRUE(result->ok()) << script << "\nstderr: " << result->stderr_data;
  return Trimmed(result->stdout_data);
}

bool IsReleased(const Error& error) {
  return error.lifecycle() && error.lifecycle()->Is<LifecycleError::Released>();
}

// One clean snapshot for the suite; most pools restore their VMs from it.
class PoolTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/vessel-pool-test-XXXXXX";
    root_ = new std::string(::mkdtemp(pattern));
    auto sandbox = testing::MustCreate();
    ASSERT_TRUE(sandbox);
    ASSERT_TRUE(sandbox->WriteFile("/etc/template-marker", "clean\n"));
    ASSERT_TRUE(sandbox->Snapshot(Snapshot()));
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*root_, ec);
    delete root_;
    root_ = nullptr;
  }
  void TearDown() override {
    EXPECT_TRUE(testing::LiveVmmProcesses().empty()) << "a QEMU process outlived its pool";
    EXPECT_TRUE(testing::RuntimeLeftovers().empty()) << "a pool left files behind";
  }

  static std::string Snapshot() { return *root_ + "/snap"; }

  static PoolConfig FromSnapshot(uint32_t min_idle, uint32_t max_idle, uint32_t max_total) {
    PoolConfig config;
    config.vm_template = SnapshotTemplate{Snapshot(), {}};
    config.min_idle = min_idle;
    config.max_idle = max_idle;
    config.max_total = max_total;
    return config;
  }

  static std::unique_ptr<VmPool> MustCreatePool(const PoolConfig& config) {
    auto pool = VmPool::Create(config);
    EXPECT_TRUE(pool.has_value()) << pool.error().ToString();
    return pool ? std::move(*pool) : nullptr;
  }

  static std::unique_ptr<PooledVm> MustAcquire(VmPool& pool,
                                               std::chrono::milliseconds timeout = kPatience) {
    auto vm = pool.Acquire(timeout);
    EXPECT_TRUE(vm.has_value()) << vm.error().ToString();
    return vm ? std::move(*vm) : nullptr;
  }

  // Nothing being made, and the QEMU processes are exactly the idle and lent VMs.
  static bool Settled(const VmPool& pool) {
    auto stats = pool.Stats();
    return stats.making == 0 &&
           testing::LiveVmmProcesses().size() == size_t{stats.idle} + stats.in_use;
  }

  static std::string* root_;
};
std::string* PoolTest::root_ = nullptr;

// Tenant isolation: a file, a background process, an environment variable and an RNG
// sample of holder 1 are all absent for holder 2.
TEST_F(PoolTest, TheNextHolderSeesNothingThePreviousOneLeft) {
  // A SandboxConfig template: the pool boots one VM and keeps a private snapshot of it.
  PoolConfig config;
  config.min_idle = 1;
  config.max_idle = 1;
  config.max_total = 1;
  auto pool = MustCreatePool(config);
  ASSERT_TRUE(pool);
  // The template's directory, beside those of the pool's VMs.
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 1 && Settled(*pool); }));
  EXPECT_EQ(testing::RuntimeLeftovers().size(), 2u);

  auto first = MustAcquire(*pool);
  ASSERT_TRUE(first);
  std::string first_id = first->id();
  ASSERT_TRUE(first->WriteFile("/tmp/tenant-file", "holder one's data\n"));
  ExecOptions secret_env;
  secret_env.env = {"POOL_SECRET=holder-one"};
  Sh(*first, "setsid sleep 4242 > /dev/null 2>&1 < /dev/null &", secret_env);
  std::string first_sample = Sh(*first, "head -c 16 /dev/urandom | od -An -tx1 | tee /tmp/rng");
  // Each trace is there for its holder.
  EXPECT_EQ(Sh(*first, "grep -l '424[2]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l"), "1");
  EXPECT_EQ(Sh(*first, "grep -l POOL_SECRET /proc/[0-9]*/environ 2>/dev/null | wc -l"), "1");
  EXPECT_EQ(Sh(*first, "cat /tmp/rng"), first_sample);
  ASSERT_TRUE(first->Release());

  auto second = MustAcquire(*pool);
  ASSERT_TRUE(second);
  EXPECT_NE(second->id(), first_id);
  auto file = second->Exists("/tmp/tenant-file");
  ASSERT_TRUE(file) << file.error().ToString();
  EXPECT_FALSE(*file) << "holder one's file reached holder two";
  EXPECT_EQ(Sh(*second, "grep -l '424[2]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l"), "0")
      << "holder one's background process runs for holder two";
  EXPECT_EQ(Sh(*second, "grep -l POOL_SECRET /proc/[0-9]*/environ 2>/dev/null | wc -l"), "0")
      << "holder one's environment reached holder two";
  auto rng = second->Exists("/tmp/rng");
  ASSERT_TRUE(rng);
  EXPECT_FALSE(*rng);
  EXPECT_NE(Sh(*second, "head -c 16 /dev/urandom | od -An -tx1"), first_sample);
  second.reset();

  auto stats = pool->Stats();
  EXPECT_EQ(stats.recycled, 2u);
  EXPECT_EQ(stats.broken, 0u);
  ASSERT_TRUE(pool->Destroy());
}

TEST_F(PoolTest, EveryOperationOnAReleasedHandleIsReleased) {
  auto pool = MustCreatePool(FromSnapshot(0, 1, 1));
  ASSERT_TRUE(pool);
  auto vm = MustAcquire(*pool);
  ASSERT_TRUE(vm);
  EXPECT_EQ(Sh(*vm, "cat /etc/template-marker"), "clean");
  auto process = vm->Start(Command::Shell("sleep 30"));
  ASSERT_TRUE(process) << process.error().ToString();
  ASSERT_TRUE(vm->Release());

  auto check = [&](const std::string& what, auto result) {
    SCOPED_TRACE(what);
    ASSERT_FALSE(result.has_value());
    EXPECT_TRUE(IsReleased(result.error())) << result.error().ToString();
  };
  check("Execute", vm->Execute(Command::Argv({"true"})));
  check("Start", vm->Start(Command::Argv({"true"})));
  check("ReadFile", vm->ReadFile("/etc/template-marker"));
  check("WriteFile", vm->WriteFile("/tmp/x", "x"));
  check("ReadFileStream",
        vm->ReadFileStream("/etc/template-marker",
                           [](std::span<const uint8_t>) -> Result<void> { return {}; }));
  check("WriteFileStream",
        vm->WriteFileStream("/tmp/x", [](std::span<uint8_t>) -> Result<size_t> { return 0; }));
  check("ListDir", vm->ListDir("/"));
  check("Stat", vm->Stat("/"));
  check("Exists", vm->Exists("/"));
  check("MakeDir", vm->MakeDir("/tmp/d"));
  check("Remove", vm->Remove("/tmp/x"));
  check("Rename", vm->Rename("/tmp/x", "/tmp/y"));
  check("Snapshot", vm->Snapshot(*root_ + "/never"));
  check("Fork", vm->Fork(1));
  check("Release", vm->Release());
  EXPECT_EQ(vm->state(), SandboxState::kDestroyed);
  EXPECT_FALSE(fs::exists(*root_ + "/never"));

  // The process started through the handle dies with the VM.
  auto event = (*process)->NextEvent(10s);
  ASSERT_FALSE(event.has_value());
  ASSERT_NE(event.error().lifecycle(), nullptr) << event.error().ToString();
  EXPECT_TRUE(event.error().lifecycle()->Is<LifecycleError::Destroyed>());
  ASSERT_TRUE(pool->Destroy());
}

TEST_F(PoolTest, MaxTotalHoldsAndAcquireTimesOut) {
  auto pool = MustCreatePool(FromSnapshot(0, 1, 1));
  ASSERT_TRUE(pool);
  auto held = MustAcquire(*pool);
  ASSERT_TRUE(held);

  auto start = std::chrono::steady_clock::now();
  auto refused = pool->Acquire(500ms);
  auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind(), ErrorKind::kBackend);
  EXPECT_TRUE(refused.error().timed_out()) << refused.error().ToString();
  EXPECT_NE(refused.error().message().find("max_total"), std::string::npos)
      << refused.error().message();
  EXPECT_GE(waited, 500ms);
  EXPECT_LT(waited, 3s);
  EXPECT_EQ(testing::LiveVmmProcesses().size(), 1u) << "the pool went beyond max_total";

  // Released, the slot serves a waiter with a fresh VM.
  std::string old_id = held->id();
  std::thread releaser([&] {
    std::this_thread::sleep_for(200ms);
    EXPECT_TRUE(held->Release());
  });
  auto next = MustAcquire(*pool);
  releaser.join();
  ASSERT_TRUE(next);
  EXPECT_NE(next->id(), old_id);
  EXPECT_EQ(Sh(*next, "echo ok"), "ok");
  ASSERT_TRUE(pool->Destroy());
}

TEST_F(PoolTest, IdleVmsAreEvictedAfterTheirTtl) {
  PoolConfig config = FromSnapshot(0, 1, 1);
  config.idle_ttl = 1s;
  auto pool = MustCreatePool(config);
  ASSERT_TRUE(pool);
  MustAcquire(*pool).reset();
  // The release is replaced by a fresh idle VM, which then ages out.
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 1; }));
  ASSERT_TRUE(Eventually([&] { return pool->Stats().evicted == 1 && Settled(*pool); }));
  EXPECT_EQ(pool->Stats().idle, 0u);
  EXPECT_TRUE(testing::LiveVmmProcesses().empty());
  ASSERT_TRUE(pool->Destroy());
}

TEST_F(PoolTest, AVmKilledWhileIdleIsDetectedAndReplaced) {
  auto pool = MustCreatePool(FromSnapshot(1, 1, 2));
  ASSERT_TRUE(pool);
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 1 && Settled(*pool); }));
  auto pids = testing::LiveVmmProcesses();
  ASSERT_EQ(pids.size(), 1u);
  ASSERT_EQ(::kill(pids[0], SIGKILL), 0);

  ASSERT_TRUE(Eventually([&] {
    auto stats = pool->Stats();
    return stats.broken == 1 && stats.idle == 1 && Settled(*pool);
  }));
  auto now = testing::LiveVmmProcesses();
  ASSERT_EQ(now.size(), 1u);
  EXPECT_NE(now[0], pids[0]);
  auto vm = MustAcquire(*pool, 0ms);
  ASSERT_TRUE(vm);
  EXPECT_EQ(Sh(*vm, "cat /etc/template-marker"), "clean");
  EXPECT_EQ(pool->Stats().hits, 1u);
  vm.reset();
  ASSERT_TRUE(pool->Destroy());
}

TEST_F(PoolTest, TheFillerRefillsAfterABurst) {
  auto pool = MustCreatePool(FromSnapshot(2, 2, 4));
  ASSERT_TRUE(pool);
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 2 && Settled(*pool); }));
  std::vector<std::unique_ptr<PooledVm>> burst;
  for (int i = 0; i < 4; ++i) {
    burst.push_back(MustAcquire(*pool));
    ASSERT_TRUE(burst.back());
  }
  // The two idle VMs are hits; the filler starts refilling at once, so a later acquire is
  // a hit too when a refill wins the race against it.
  auto stats = pool->Stats();
  EXPECT_GE(stats.hits, 2u);
  EXPECT_EQ(stats.hits + stats.misses, 4u);
  // At max_total nothing more is made.
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(pool->Stats().idle, 0u);
  EXPECT_EQ(testing::LiveVmmProcesses().size(), 4u);

  burst.clear();
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 2 && Settled(*pool); }));
  EXPECT_EQ(testing::LiveVmmProcesses().size(), 2u);
  for (int i = 0; i < 2; ++i) {
    auto vm = MustAcquire(*pool, 0ms);
    ASSERT_TRUE(vm) << "a refilled VM was not ready at once";
  }
  ASSERT_TRUE(pool->Destroy());
}

TEST_F(PoolTest, EightThreadsOfManyCyclesNeitherDeadlockNorLeak) {
  constexpr int kThreads = 8;
  // 20 each where every restore boots nested (the kvm engine's suite runs in an L1 guest).
  const int kCycles = testing::TestEngine() == EngineKind::kKvm ? 20 : 50;
  auto pool = MustCreatePool(FromSnapshot(2, 4, 4));
  ASSERT_TRUE(pool);
  std::atomic<int> ran = 0;
  std::vector<std::thread> threads;
  auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kCycles; ++i) {
        auto vm = pool->Acquire(kPatience);
        if (!vm) {
          ADD_FAILURE() << vm.error().ToString();
          continue;
        }
        auto result = (*vm)->Execute(Command::Argv({"true"}));
        if (result && result->ok()) ++ran;
        EXPECT_TRUE((*vm)->Release());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(ran.load(), kThreads * kCycles);
  ASSERT_TRUE(Eventually([&] { return Settled(*pool); }));
  auto stats = pool->Stats();
  EXPECT_EQ(stats.hits + stats.misses, static_cast<uint64_t>(kThreads * kCycles));
  EXPECT_EQ(stats.failed, 0u);
  EXPECT_EQ(stats.acquire_latency.count, static_cast<uint64_t>(kThreads * kCycles));
  EXPECT_EQ(stats.in_use, 0u);
  EXPECT_EQ(stats.recycled + stats.broken, static_cast<uint64_t>(kThreads * kCycles));
  EXPECT_EQ(stats.created, stats.idle + stats.recycled + stats.evicted + stats.broken);
  EXPECT_LE(testing::LiveVmmProcesses().size(), 4u);
  fmt::print(
      "{} cycles in {} ms: {} hits, {} misses, {} VMs made again, acquire median {} us, p99 {} "
      "us\n",
      kThreads * kCycles, std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count(),
      stats.hits, stats.misses, stats.create_failures, stats.acquire_latency.median.count(),
      stats.acquire_latency.p99.count());
  ASSERT_TRUE(pool->Destroy());
  EXPECT_TRUE(testing::LiveVmmProcesses().empty());
}

TEST_F(PoolTest, DestroyingThePoolWithHandlesOutReleasesThem) {
  auto pool = MustCreatePool(FromSnapshot(1, 1, 3));
  ASSERT_TRUE(pool);
  auto a = MustAcquire(*pool);
  auto b = MustAcquire(*pool);
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(Eventually([&] { return pool->Stats().idle == 1 && Settled(*pool); }));
  EXPECT_EQ(testing::LiveVmmProcesses().size(), 3u);

  ASSERT_TRUE(pool->Destroy());
  EXPECT_TRUE(testing::LiveVmmProcesses().empty());
  for (PooledVm* vm : {a.get(), b.get()}) {
    auto result = vm->Execute(Command::Argv({"true"}));
    ASSERT_FALSE(result);
    EXPECT_TRUE(IsReleased(result.error())) << result.error().ToString();
    auto release = vm->Release();
    ASSERT_FALSE(release);
    EXPECT_TRUE(IsReleased(release.error()));
  }
  auto acquired = pool->Acquire(0ms);
  ASSERT_FALSE(acquired);
  ASSERT_NE(acquired.error().lifecycle(), nullptr);
  EXPECT_TRUE(acquired.error().lifecycle()->Is<LifecycleError::Destroyed>());
}

TEST_F(PoolTest, ABadTemplateIsRefusedAndLeavesNothing) {
  PoolConfig config = FromSnapshot(1, 1, 1);
  config.vm_template = SnapshotTemplate{*root_ + "/missing", {}};
  auto pool = VmPool::Create(config);
  ASSERT_FALSE(pool);
  EXPECT_EQ(pool.error().kind(), ErrorKind::kSnapshotFormat) << pool.error().ToString();

  PoolConfig bad_config;
  bad_config.vm_template = SandboxConfig{.memory_mib = 1};
  pool = VmPool::Create(bad_config);
  ASSERT_FALSE(pool);
  EXPECT_EQ(pool.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(pool.error().subject(), "memory_mib");
}

TEST_F(PoolTest, ARestorePoolRestoresFromWaitingProcesses) {
  RestorePoolConfig config;
  config.size = 2;
  auto pool = RestorePool::Create(Snapshot(), config);
  ASSERT_TRUE(pool) << pool.error().ToString();
  ASSERT_TRUE(Eventually([&] { return (*pool)->Stats().idle == 2; }));
  auto waiting = testing::LiveVmmProcesses();
  ASSERT_EQ(waiting.size(), 2u);
  // A waiting process that dies is replaced.
  ASSERT_EQ(::kill(waiting[0], SIGKILL), 0);
  ASSERT_TRUE(Eventually([&] {
    auto stats = (*pool)->Stats();
    return stats.broken == 1 && stats.idle == 2 && testing::LiveVmmProcesses().size() == 2;
  }));

  std::vector<std::unique_ptr<Sandbox>> restored;
  std::set<std::string> samples;
  for (int i = 0; i < 3; ++i) {
    auto sandbox = (*pool)->Restore();
    ASSERT_TRUE(sandbox) << sandbox.error().ToString();
    EXPECT_EQ((*sandbox)->state(), SandboxState::kReady);
    auto marker = (*sandbox)->ReadFile("/etc/template-marker");
    ASSERT_TRUE(marker) << marker.error().ToString();
    EXPECT_EQ(*marker, "clean\n");
    auto sample = (*sandbox)->Execute(Command::Shell("head -c 16 /dev/urandom | od -An -tx1"));
    ASSERT_TRUE(sample);
    samples.insert(sample->stdout_data);
    restored.push_back(std::move(*sandbox));
  }
  EXPECT_EQ(samples.size(), 3u) << "two restores share their RNG state";
  ASSERT_TRUE(Eventually([&] { return (*pool)->Stats().idle == 2; }));
  auto stats = (*pool)->Stats();
  EXPECT_GE(stats.hits, 2u);
  EXPECT_EQ(stats.hits + stats.misses, 3u);
  EXPECT_EQ(stats.acquire_latency.count, 3u);

  EXPECT_EQ(testing::LiveVmmProcesses().size(), 5u);
  // The restored sandboxes are the callers': they outlive the pool.
  ASSERT_TRUE((*pool)->Destroy());
  EXPECT_EQ(testing::LiveVmmProcesses().size(), 3u);
  for (auto& sandbox : restored) {
    auto ok = sandbox->Execute(Command::Argv({"true"}));
    EXPECT_TRUE(ok && ok->ok());
  }
  restored.clear();
}

}  // namespace
}  // namespace vessel
