// vessel_snapshot_bench: cold create, snapshot, restore and fork, side by side in one run,
// each as a median and as a ratio to a cold create; and the host memory (PSS) of one
// parent with 8 forks next to 9 cold VMs.
//
//   vessel_snapshot_bench [--rounds N] [--memory-mib N]
#include <dirent.h>
#include <fmt/format.h>
#include <stdlib.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <vector>

#include "bench/pss.h"
#include "bench/stats.h"
#include "vessel/sandbox.h"

namespace vessel::bench {
namespace {


struct Options {
  int rounds = 5;
  uint32_t memory_mib = 256;
};

// Touches the guest the way a prepared environment would: files and a warm page cache.
Result<void> Prepare(Sandbox& sandbox) {
  auto r = sandbox.Execute(Command::Shell(
      "dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null && md5sum /tmp/data >/dev/null"));
  if (!r) return Fail(std::move(r).error());
  return {};
}

Result<void> RunAll(const Options& options) {
  SandboxConfig config;
  config.memory_mib = options.memory_mib;
  char pattern[] = "/tmp/vessel-snapshot-bench-XXXXXX";
  std::string root = ::mkdtemp(pattern);
  struct Cleanup {
    std::string root;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(root, ec);
    }
  } cleanup{root};

  Series cold{"cold create -> ready", {}};
  Series snapshot{"snapshot (ready -> saved, parent ready again)", {}};
  Series restore{"restore -> ready", {}};
  Series fork1{"fork 1 -> child ready", {}};
  Series fork8{"fork 8 -> all 8 children ready", {}};
  Series refork{"fork 1 of a fork (its memory is copied once)", {}};
  for (int round = 0; round < options.rounds; ++round) {
    auto start = Clock::now();
    auto parent = Sandbox::Create(config);
    if (!parent) return Fail(std::move(parent).error());
    cold.ms.push_back(MsSince(start));
    if (auto r = Prepare(**parent); !r) return r;

    std::string dir = fmt::format("{}/snap-{}", root, round);
    start = Clock::now();
    if (auto r = (*parent)->Snapshot(dir); !r) return r;
    snapshot.ms.push_back(MsSince(start));

    start = Clock::now();
    auto restored = Sandbox::Restore(dir);
    if (!restored) return Fail(std::move(restored).error());
    restore.ms.push_back(MsSince(start));
    (void)(*restored)->Destroy();

    // Fresh parents for the forks: a VM that was never saved owns its memory file, and
    // forking it copies nothing. A VM that is itself a fork runs on a private mapping;
    // forking it copies what it has touched once.
    auto fresh = Sandbox::Create(config);
    if (!fresh) return Fail(std::move(fresh).error());
    if (auto r = Prepare(**fresh); !r) return r;
    start = Clock::now();
    auto one = (*fresh)->Fork(1);
    if (!one) return Fail(std::move(one).error());
    fork1.ms.push_back(MsSince(start));
    start = Clock::now();
    auto again = (*one)[0]->Fork(1);
    if (!again) return Fail(std::move(again).error());
    refork.ms.push_back(MsSince(start));
    again->clear();
    one->clear();
    (void)(*fresh)->Destroy();

    auto fresh8 = Sandbox::Create(config);
    if (!fresh8) return Fail(std::move(fresh8).error());
    if (auto r = Prepare(**fresh8); !r) return r;
    start = Clock::now();
    auto eight = (*fresh8)->Fork(8);
    if (!eight) return Fail(std::move(eight).error());
    fork8.ms.push_back(MsSince(start));
  }

  // Memory: 1 parent + 8 forks against 9 cold VMs, each prepared the same way.
  long forked_kib = 0;
  long cold_kib = 0;
  {
    auto parent = Sandbox::Create(config);
    if (!parent) return Fail(std::move(parent).error());
    if (auto r = Prepare(**parent); !r) return r;
    auto children = (*parent)->Fork(8);
    if (!children) return Fail(std::move(children).error());
    std::vector<std::string> ids{(*parent)->id()};
    for (auto& child : *children) ids.push_back(child->id());
    forked_kib = PssKib(ids);
  }
  {
    std::vector<std::unique_ptr<Sandbox>> vms;
    std::vector<std::string> ids;
    for (int i = 0; i < 9; ++i) {
      auto vm = Sandbox::Create(config);
      if (!vm) return Fail(std::move(vm).error());
      if (auto r = Prepare(**vm); !r) return r;
      ids.push_back((*vm)->id());
      vms.push_back(std::move(*vm));
    }
    cold_kib = PssKib(ids);
  }

  fmt::print("engine {}, {} MiB guests, 1 vCPU, {} rounds\n\n", "qemu (Sandbox default)",
             options.memory_mib, options.rounds);
  PrintTable({&cold, &snapshot, &restore, &fork1, &fork8, &refork});
  fmt::print("ratios of medians to a cold create:\n");
  PrintRatio("snapshot / cold create", snapshot, cold);
  PrintRatio("restore -> ready / cold create", restore, cold);
  PrintRatio("fork 1 -> ready / cold create", fork1, cold);
  PrintRatio("fork 8 -> all ready / cold create", fork8, cold);
  PrintRatio("fork 1 of a fork / cold create", refork, cold);
  fmt::print("host memory (PSS of the QEMU processes):\n");
  fmt::print("  1 parent + 8 forks: {:.1f} MiB\n", static_cast<double>(forked_kib) / 1024);
  fmt::print("  9 cold VMs:         {:.1f} MiB\n", static_cast<double>(cold_kib) / 1024);
  if (cold_kib > 0) {
    fmt::print("  forks / cold: {:.2f}x\n",
               static_cast<double>(forked_kib) / static_cast<double>(cold_kib));
  }
  return {};
}

}  // namespace
}  // namespace vessel::bench

int main(int argc, char** argv) {
  vessel::bench::Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    int value = 0;
    if (i + 1 < argc && arg == "--rounds" && vessel::bench::ParseInt(argv[i + 1], value)) {
      options.rounds = value;
      ++i;
    } else if (i + 1 < argc && arg == "--memory-mib" &&
               vessel::bench::ParseInt(argv[i + 1], value)) {
      options.memory_mib = static_cast<uint32_t>(value);
      ++i;
    } else {
      fmt::print(stderr, "usage: vessel_snapshot_bench [--rounds N] [--memory-mib N]\n");
      return 2;
    }
  }
  if (auto r = vessel::bench::RunAll(options); !r) {
    fmt::print(stderr, "vessel_snapshot_bench: {}\n", r.error().ToString());
    return 1;
  }
  return 0;
}
