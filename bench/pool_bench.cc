// vessel_pool_bench: what warm pools buy, measured in one run on this host.
//   - a warm VmPool: acquire -> first command done, next to a cold create -> first
//     command done; and the acquire alone (host side);
//   - a RestorePool: restore -> ready, next to a plain Sandbox::Restore() -> ready.
// Every pool acquisition is timed on a pool that has a VM ready (a hit): the figures are
// what a caller sees when the pool keeps up, not the cost of refilling it.
//
//   vessel_pool_bench [--cycles N] [--cold N] [--restores N] [--engine auto|qemu|kvm]
#include <fmt/format.h>
#include <stdlib.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string_view>
#include <thread>
#include <vector>

#include "bench/stats.h"
#include "vessel/pool.h"
#include "vessel/sandbox.h"

namespace vessel::bench {
namespace {

constexpr auto kRefillPatience = std::chrono::seconds(60);

constexpr const char* kUsage =
    "usage: vessel_pool_bench [--cycles N] [--cold N] [--restores N] [--engine auto|qemu|kvm]\n";

struct Options {
  int cycles = 100;                       // warm acquisitions (p99 needs 100)
  int cold = 5;                           // cold creates
  int restores = 20;                      // restores of each kind
  EngineKind engine = EngineKind::kAuto;  // the Sandbox default
};

void Progress(std::string_view what) { fmt::print(stderr, "vessel_pool_bench: {}\n", what); }

// Waits until the pool has `idle` VMs ready and is making none.
template <typename Pool>
Result<void> WaitReady(const Pool& pool, uint32_t idle) {
  auto deadline = Clock::now() + kRefillPatience;
  while (Clock::now() < deadline) {
    auto stats = pool.Stats();
    if (stats.idle >= idle && stats.making == 0) return {};
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return Fail(Error::Backend("the pool did not refill in time"));
}

Result<void> ExecTrue(auto& sandbox) {
  auto result = sandbox.Execute(Command::Argv({"true"}));
  if (!result) return Fail(std::move(result).error());
  if (!result->ok()) return Fail(Error::Backend("`true` failed in the guest"));
  return {};
}

std::string Micros(std::vector<double> ms) {
  if (ms.empty()) return "-";
  std::sort(ms.begin(), ms.end());
  return fmt::format("median {:.1f} us, p99 {:.1f} us (n={})", Percentile(ms, 50) * 1000,
                     Percentile(ms, 99) * 1000, ms.size());
}

Result<void> RunAll(const Options& options) {
  Series cold{"cold create -> first exec done", {}};
  Series warm{"warm pool: acquire -> first exec done", {}};
  Series acquire{"warm pool: acquire alone", {}};
  Series refill{"warm pool: release -> replacement idle", {}};
  Series plain_restore{"Sandbox::Restore -> ready", {}};
  Series pool_restore{"RestorePool::Restore -> ready", {}};

  SandboxConfig vm_config;
  vm_config.engine = options.engine;
  std::string engine_name;
  Progress(fmt::format("{} cold creates", options.cold));
  for (int i = 0; i < options.cold; ++i) {
    auto start = Clock::now();
    auto sandbox = Sandbox::Create(vm_config);
    if (!sandbox) return Fail(std::move(sandbox).error());
    if (auto r = ExecTrue(**sandbox); !r) return r;
    cold.ms.push_back(MsSince(start));
    engine_name = (*sandbox)->engine_name();
  }

  PoolStats warm_stats;
  {
    // The product's path: the pool boots one VM, keeps a private snapshot of it and
    // restores every VM it hands out from that.
    Progress(fmt::format("VmPool: {} acquisitions", options.cycles));
    PoolConfig config;
    config.vm_template = vm_config;
    config.min_idle = 1;
    config.max_idle = 1;
    config.max_total = 2;
    auto pool = VmPool::Create(config);
    if (!pool) return Fail(std::move(pool).error());
    if (auto r = WaitReady(**pool, 1); !r) return r;
    for (int i = 0; i < options.cycles; ++i) {
      auto start = Clock::now();
      auto vm = (*pool)->Acquire();
      if (!vm) return Fail(std::move(vm).error());
      acquire.ms.push_back(MsSince(start));
      if (auto r = ExecTrue(**vm); !r) return r;
      warm.ms.push_back(MsSince(start));
      if (auto r = (*vm)->Release(); !r) return r;
      // The refill that the next acquire waits for (polled every 5 ms).
      auto released = Clock::now();
      if (auto r = WaitReady(**pool, 1); !r) return r;
      refill.ms.push_back(MsSince(released));
    }
    warm_stats = (*pool)->Stats();
  }

  char pattern[] = "/tmp/vessel-pool-bench-XXXXXX";
  std::string root = ::mkdtemp(pattern);
  struct Cleanup {
    std::string root;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(root, ec);
    }
  } cleanup{root};
  std::string dir = root + "/snap";
  {
    auto sandbox = Sandbox::Create(vm_config);
    if (!sandbox) return Fail(std::move(sandbox).error());
    if (auto r = (*sandbox)->Snapshot(dir); !r) return r;
  }
  PoolStats restore_stats;
  {
    Progress(fmt::format("RestorePool: {} restores of each kind", options.restores));
    auto pool = RestorePool::Create(dir, {.size = 1});
    if (!pool) return Fail(std::move(pool).error());
    // Alternating, so drift on a shared machine hits both kinds alike.
    for (int i = 0; i < options.restores; ++i) {
      // Neither kind is timed while the pool refills.
      if (auto r = WaitReady(**pool, 1); !r) return r;
      auto start = Clock::now();
      auto plain = Sandbox::Restore(dir);
      if (!plain) return Fail(std::move(plain).error());
      plain_restore.ms.push_back(MsSince(start));
      plain->reset();

      start = Clock::now();
      auto pooled = (*pool)->Restore();
      if (!pooled) return Fail(std::move(pooled).error());
      pool_restore.ms.push_back(MsSince(start));
      pooled->reset();
    }
    restore_stats = (*pool)->Stats();
  }

  fmt::print("vessel_pool_bench: engine {}, 256 MiB guests, 1 vCPU\n\n", engine_name);
  PrintTable({&cold, &warm, &acquire, &refill, &plain_restore, &pool_restore});
  fmt::print("ratios of medians:\n");
  PrintRatio("cold create -> first exec / warm acquire -> first exec", cold, warm);
  PrintRatio("Sandbox::Restore -> ready / RestorePool::Restore -> ready", plain_restore,
             pool_restore);
  fmt::print("acquire alone, host side: {}\n", Micros(acquire.ms));
  fmt::print(
      "VmPool stats: {} hits, {} misses, {} created, {} recycled; its own acquire "
      "latency median {} us, p99 {} us\n",
      warm_stats.hits, warm_stats.misses, warm_stats.created, warm_stats.recycled,
      warm_stats.acquire_latency.median.count(), warm_stats.acquire_latency.p99.count());
  fmt::print("RestorePool stats: {} hits, {} misses, {} processes started\n", restore_stats.hits,
             restore_stats.misses, restore_stats.created);
  return {};
}

}  // namespace
}  // namespace vessel::bench

int main(int argc, char** argv) {
  vessel::bench::Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    int value = 0;
    bool has_value = i + 1 < argc && vessel::bench::ParseInt(argv[i + 1], value);
    auto engine =
        i + 1 < argc && arg == "--engine" ? vessel::bench::ParseEngine(argv[i + 1]) : std::nullopt;
    if (has_value && arg == "--cycles") {
      options.cycles = value;
    } else if (has_value && arg == "--cold") {
      options.cold = value;
    } else if (has_value && arg == "--restores") {
      options.restores = value;
    } else if (engine) {
      options.engine = *engine;
    } else {
      std::fputs(vessel::bench::kUsage, stderr);
      return 2;
    }
    ++i;
  }
  if (auto r = vessel::bench::RunAll(options); !r) {
    fmt::print(stderr, "vessel_pool_bench: {}\n", r.error().ToString());
    return 1;
  }
  return 0;
}
