// vessel_snapshot_bench: cold create, snapshot, restore and fork, side by side in one run,
// each as a median and as a ratio to a cold create; a snapshot of a fork that dirtied
// 16 MiB next to one of a freshly booted VM, with the disk each memory file takes; and the
// host memory (PSS) of a VM before and after its snapshot, and of one parent with 8 forks
// next to 9 cold VMs, before and after 8 of them wrote 16 MiB each. Fork 1 and fork 8 are
// timed as they are, and with the children's VMMs started when the parent was ready
// (forks_ahead).
//
//   vessel_snapshot_bench [--rounds N] [--memory-mib N] [--engine auto|qemu|kvm]
#include <fmt/format.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string_view>
#include <vector>

#include "bench/pss.h"
#include "bench/stats.h"
#include "vessel/sandbox.h"

namespace vessel::bench {
namespace {

constexpr const char* kUsage =
    "usage: vessel_snapshot_bench [--rounds N] [--memory-mib N] [--engine auto|qemu|kvm]\n";

struct Options {
  int rounds = 5;
  uint32_t memory_mib = 256;
  EngineKind engine = EngineKind::kAuto;  // the Sandbox default
};

void Progress(std::string_view what) { fmt::print(stderr, "vessel_snapshot_bench: {}\n", what); }

// Touches the guest the way a prepared environment would: files and a warm page cache.
Result<void> Prepare(Sandbox& sandbox) {
  auto r = sandbox.Execute(Command::Shell(
      "dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null && md5sum /tmp/data >/dev/null"));
  if (!r) return Fail(std::move(r).error());
  return {};
}

// What a running guest writes between a fork and its snapshot: 16 MiB of fresh pages.
Result<void> Dirty(Sandbox& sandbox) {
  auto r = sandbox.Execute(
      Command::Shell("dd if=/dev/urandom of=/tmp/dirty bs=1M count=16 2>&1 >/dev/null"));
  if (!r) return Fail(std::move(r).error());
  if (!r->ok()) {
    return Fail(Error::Backend(fmt::format("writing /tmp/dirty failed in the guest (exit {}): {}",
                                           r->exit_code, r->stdout_data + r->stderr_data)));
  }
  return {};
}

// The disk a snapshot's memory file takes (du), in MiB: its holes take none.
Result<double> AllocatedMib(const std::string& dir) {
  struct stat st {};
  std::string path = dir + "/memory";
  if (::stat(path.c_str(), &st) != 0) return Fail(Error::HostIo("stat " + path, errno));
  return static_cast<double>(st.st_blocks) * 512 / (1024 * 1024);
}

// Snapshot() timed into `times`, its memory file's du into `du_mib`.
Result<void> TimedSnapshot(Sandbox& sandbox, const std::string& dir, Series& times,
                           Series& du_mib) {
  auto start = Clock::now();
  if (auto r = sandbox.Snapshot(dir); !r) return r;
  times.ms.push_back(MsSince(start));
  auto du = AllocatedMib(dir);
  if (!du) return Fail(std::move(du).error());
  du_mib.ms.push_back(*du);
  return {};
}

// A parent and the children of its fork.
struct Family {
  std::unique_ptr<Sandbox> parent;
  std::vector<std::unique_ptr<Sandbox>> children;
};

// Creates and prepares a parent from `config`, notes its VMMs' PSS (all the VMMs under
// `runtime_root`, in MiB) into `pss` when given, and times its Fork(n) into `times`.
Result<Family> TimedFork(const SandboxConfig& config, uint32_t n, Series& times, Series* pss,
                         const std::string& runtime_root) {
  auto parent = Sandbox::Create(config);
  if (!parent) return Fail(std::move(parent).error());
  if (auto r = Prepare(**parent); !r) return Fail(std::move(r).error());
  if (pss) pss->ms.push_back(static_cast<double>(PssKib(VmmPids(runtime_root))) / 1024);
  auto start = Clock::now();
  auto children = (*parent)->Fork(n);
  if (!children) return Fail(std::move(children).error());
  times.ms.push_back(MsSince(start));
  return Family{std::move(*parent), std::move(*children)};
}

struct TempDir {
  std::string path;
  explicit TempDir(std::string pattern) {
    if (::mkdtemp(pattern.data())) path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

void RemoveTree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

Result<void> RunAll(const Options& options) {
  SandboxConfig config;
  config.memory_mib = options.memory_mib;
  config.engine = options.engine;
  TempDir root("/tmp/vessel-snapshot-bench-XXXXXX");
  // A runtime root of its own, so that the VMM processes found for PSS are this run's:
  // vessel-vmm's command line does not name its sandbox, as QEMU's does.
  TempDir runtime_root("/tmp/vessel-snapshot-bench-run-XXXXXX");
  if (root.path.empty() || runtime_root.path.empty()) {
    return Fail(Error::HostIo("mkdtemp", errno));
  }
  ::setenv("VESSEL_RUNTIME_DIR", runtime_root.path.c_str(), 1);
  std::string engine_name;

  Series cold{"cold create -> ready", {}};
  Series snapshot{"snapshot (ready -> saved, parent ready again)", {}};
  Series snapshot_fresh{"snapshot of a freshly booted VM", {}};
  Series snapshot_dirty{"snapshot of a fork that dirtied 16 MiB", {}};
  Series restore{"restore -> ready", {}};
  Series fork1{"fork 1 -> child ready", {}};
  Series fork1_ahead{"fork 1 -> child ready, started ahead (forks_ahead 1)", {}};
  Series pss_plain{"PSS of a parent's VMMs (MiB)", {}};
  Series pss_ahead{"PSS of a parent's VMMs, forks_ahead 1 (MiB)", {}};
  Series fork8{"fork 8 -> all 8 children ready", {}};
  Series fork8_ahead{"fork 8 -> all ready, started ahead (forks_ahead 8)", {}};
  Series refork{"fork 1 of a fork (its memory is copied once)", {}};
  Series du_fresh{"du of its memory file (MiB): freshly booted", {}};
  Series du_dirty{"du of its memory file (MiB): fork, 16 MiB dirtied", {}};
  Series pss_booted{"PSS of a freshly booted VM's VMM (MiB)", {}};
  Series pss_saved{"PSS of a freshly booted VM's VMM after its snapshot (MiB)", {}};
  // The VMM processes of the sandboxes `ids`; on the kvm engine all under the runtime root.
  auto pids = [&](const std::vector<std::string>& ids) {
    return engine_name == "kvm" ? VmmPids(runtime_root.path) : QemuPids(ids);
  };
  auto pss_mib = [&](const Sandbox& sandbox) {
    return static_cast<double>(PssKib(pids({sandbox.id()}))) / 1024;
  };
  for (int round = 0; round < options.rounds; ++round) {
    Progress(fmt::format("round {}/{}", round + 1, options.rounds));
    std::string dir = fmt::format("{}/snap-{}", root.path, round);
    {
      auto start = Clock::now();
      auto parent = Sandbox::Create(config);
      if (!parent) return Fail(std::move(parent).error());
      cold.ms.push_back(MsSince(start));
      engine_name = (*parent)->engine_name();
      if (auto r = Prepare(**parent); !r) return r;

      start = Clock::now();
      if (auto r = (*parent)->Snapshot(dir); !r) return r;
      snapshot.ms.push_back(MsSince(start));

      start = Clock::now();
      auto restored = Sandbox::Restore(dir);
      if (!restored) return Fail(std::move(restored).error());
      restore.ms.push_back(MsSince(start));
    }
    RemoveTree(dir);

    {
      auto start = Clock::now();
      auto booted = Sandbox::Create(config);
      if (!booted) return Fail(std::move(booted).error());
      cold.ms.push_back(MsSince(start));
      pss_booted.ms.push_back(pss_mib(**booted));
      if (auto r = TimedSnapshot(**booted, dir, snapshot_fresh, du_fresh); !r) return r;
      pss_saved.ms.push_back(pss_mib(**booted));
    }
    RemoveTree(dir);

    // Fresh parents for the forks: a VM that was never saved owns its memory file, and
    // forking it copies nothing. A VM that is itself a fork runs on a private mapping;
    // forking it copies what it has touched once.
    {
      auto family = TimedFork(config, 1, fork1, &pss_plain, runtime_root.path);
      if (!family) return Fail(std::move(family).error());
      auto start = Clock::now();
      auto again = family->children[0]->Fork(1);
      if (!again) return Fail(std::move(again).error());
      refork.ms.push_back(MsSince(start));
    }
    // The same with the children's VMMs started when the parent was ready.
    {
      SandboxConfig ahead_config = config;
      ahead_config.forks_ahead = 1;
      auto family = TimedFork(ahead_config, 1, fork1_ahead, &pss_ahead, runtime_root.path);
      if (!family) return Fail(std::move(family).error());
    }
    {
      SandboxConfig ahead_config = config;
      ahead_config.forks_ahead = 8;
      auto family = TimedFork(ahead_config, 8, fork8_ahead, nullptr, runtime_root.path);
      if (!family) return Fail(std::move(family).error());
    }
    {
      auto family = TimedFork(config, 8, fork8, nullptr, runtime_root.path);
      if (!family) return Fail(std::move(family).error());
      Sandbox& child = *family->children[0];
      if (auto r = Dirty(child); !r) return r;
      if (auto r = TimedSnapshot(child, dir, snapshot_dirty, du_dirty); !r) return r;
    }
    RemoveTree(dir);
  }

  // Memory: 1 parent + 8 forks against 9 cold VMs, each prepared the same way. Only
  // these VMs run under the runtime root while they are measured.
  Progress("memory: 1 parent + 8 forks, then 9 cold VMs");
  long forked_kib = 0;
  long cold_kib = 0;
  // The same after 8 of the VMs (the forks; 8 of the cold ones) wrote 16 MiB each.
  long forked_dirty_kib = 0;
  long cold_dirty_kib = 0;
  // The guest RAM files they hold, each once, before and after.
  const uint64_t ram_size = uint64_t{options.memory_mib} << 20;
  long forked_files_kib = 0;
  long forked_dirty_files_kib = 0;
  long cold_files_kib = 0;
  long cold_dirty_files_kib = 0;
  {
    auto parent = Sandbox::Create(config);
    if (!parent) return Fail(std::move(parent).error());
    if (auto r = Prepare(**parent); !r) return r;
    auto children = (*parent)->Fork(8);
    if (!children) return Fail(std::move(children).error());
    std::vector<std::string> ids{(*parent)->id()};
    for (auto& child : *children) ids.push_back(child->id());
    forked_kib = PssKib(pids(ids));
    forked_files_kib = RamFilesKib(pids(ids), ram_size);
    for (auto& child : *children) {
      if (auto r = Dirty(*child); !r) return r;
    }
    forked_dirty_kib = PssKib(pids(ids));
    forked_dirty_files_kib = RamFilesKib(pids(ids), ram_size);
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
    cold_kib = PssKib(pids(ids));
    cold_files_kib = RamFilesKib(pids(ids), ram_size);
    for (size_t i = 1; i < vms.size(); ++i) {
      if (auto r = Dirty(*vms[i]); !r) return r;
    }
    cold_dirty_kib = PssKib(pids(ids));
    cold_dirty_files_kib = RamFilesKib(pids(ids), ram_size);
  }

  fmt::print("vessel_snapshot_bench: engine {}, {} MiB guests, 1 vCPU, {} rounds\n\n", engine_name,
             options.memory_mib, options.rounds);
  PrintTable({&cold, &snapshot, &snapshot_fresh, &snapshot_dirty, &restore, &fork1, &fork1_ahead,
              &fork8, &fork8_ahead, &refork});
  fmt::print("ratios of medians to a cold create:\n");
  PrintRatio("snapshot / cold create", snapshot, cold);
  PrintRatio("restore -> ready / cold create", restore, cold);
  PrintRatio("fork 1 -> ready / cold create", fork1, cold);
  PrintRatio("fork 1 started ahead -> ready / cold create", fork1_ahead, cold);
  PrintRatio("fork 1 started ahead / fork 1", fork1_ahead, fork1);
  PrintRatio("fork 8 -> all ready / cold create", fork8, cold);
  PrintRatio("fork 8 started ahead -> all ready / cold create", fork8_ahead, cold);
  PrintRatio("fork 1 of a fork / cold create", refork, cold);
  fmt::print("snapshot of a fork that dirtied 16 MiB, against one of a freshly booted VM:\n");
  PrintRatio("time, dirtied fork / fresh boot", snapshot_dirty, snapshot_fresh);
  for (const Series* du : {&du_fresh, &du_dirty}) {
    fmt::print("  {}: {} (median of {})\n", du->name, Cell(Median(*du)), du->ms.size());
  }
  fmt::print("host memory (PSS of the VMM processes):\n");
  fmt::print("  a freshly booted VM: {} MiB; after its snapshot: {} MiB (medians of {})\n",
             Cell(Median(pss_booted)), Cell(Median(pss_saved)), pss_saved.ms.size());
  fmt::print("  a prepared parent: {} MiB; with forks_ahead 1: {} MiB (medians of {})\n",
             Cell(Median(pss_plain)), Cell(Median(pss_ahead)), pss_ahead.ms.size());
  fmt::print("  1 parent + 8 forks: {:.1f} MiB\n", static_cast<double>(forked_kib) / 1024);
  fmt::print("  9 cold VMs:         {:.1f} MiB\n", static_cast<double>(cold_kib) / 1024);
  if (cold_kib > 0) {
    fmt::print("  forks / cold: {:.2f}x\n",
               static_cast<double>(forked_kib) / static_cast<double>(cold_kib));
  }
  fmt::print("  after 8 of them (the forks) wrote 16 MiB each:\n");
  fmt::print("  1 parent + 8 forks: {:.1f} MiB (+{:.1f})\n",
             static_cast<double>(forked_dirty_kib) / 1024,
             static_cast<double>(forked_dirty_kib - forked_kib) / 1024);
  fmt::print("  9 cold VMs:         {:.1f} MiB (+{:.1f})\n",
             static_cast<double>(cold_dirty_kib) / 1024,
             static_cast<double>(cold_dirty_kib - cold_kib) / 1024);
  if (cold_dirty_kib > 0) {
    fmt::print("  forks / cold: {:.2f}x\n",
               static_cast<double>(forked_dirty_kib) / static_cast<double>(cold_dirty_kib));
  }
  fmt::print(
      "guest RAM files held (each once; a page no process maps is in no PSS), before -> after "
      "the writes:\n");
  fmt::print("  1 parent + 8 forks: {:.1f} -> {:.1f} MiB\n",
             static_cast<double>(forked_files_kib) / 1024,
             static_cast<double>(forked_dirty_files_kib) / 1024);
  fmt::print("  9 cold VMs:         {:.1f} -> {:.1f} MiB\n",
             static_cast<double>(cold_files_kib) / 1024,
             static_cast<double>(cold_dirty_files_kib) / 1024);
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
    } else if (auto engine = i + 1 < argc && arg == "--engine"
                                 ? vessel::bench::ParseEngine(argv[i + 1])
                                 : std::nullopt) {
      options.engine = *engine;
      ++i;
    } else {
      std::fputs(vessel::bench::kUsage, stderr);
      return 2;
    }
  }
  if (auto r = vessel::bench::RunAll(options); !r) {
    fmt::print(stderr, "vessel_snapshot_bench: {}\n", r.error().ToString());
    return 1;
  }
  return 0;
}
