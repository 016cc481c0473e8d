// vessel_engine_bench: the QEMU engine (qemu-system-x86_64 -accel kvm) and the kvm engine
// (vessel-vmm) side by side in one run: create -> ready, the exec round trip of `true`,
// and the VMM process's own memory. Needs a usable /dev/kvm; on a host without one,
// `bench/run nested` runs it inside a nested-KVM L1 guest.
//
// Each boot round creates a sandbox on each engine, in an order that alternates from round
// to round, and the exec rounds alternate between one warm sandbox of each, so drift on a
// shared machine hits both engines alike.
#include <fmt/format.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bench/pss.h"
#include "bench/stats.h"
#include "vessel/sandbox.h"

namespace vessel::bench {
namespace {

constexpr const char* kUsage = R"(usage: vessel_engine_bench [--iterations N] [--exec-iterations N]
  --iterations N       creates per engine (default 5)
  --exec-iterations N  timed `true` round trips per engine in a warm sandbox (default 100)
Needs a usable /dev/kvm. Guest assets: $VESSEL_ASSET_DIR, else the build's guest/ directory.
)";

constexpr uint32_t kVcpus = 1;
constexpr uint32_t kMemoryMib = 256;
constexpr auto kBootTimeout = std::chrono::seconds(60);
constexpr int kExecWarmup = 10;
// The name vessel-vmm gives the memfd that holds guest RAM (src/vmm/core/guest_memory.cc).
constexpr std::string_view kGuestRamMemfd = "memfd:vessel-guest-ram";

struct Options {
  int iterations = 5;
  int exec_iterations = 100;
};

std::optional<Options> ParseArgs(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    int* target = arg == "--iterations"        ? &options.iterations
                  : arg == "--exec-iterations" ? &options.exec_iterations
                                               : nullptr;
    if (!target || i + 1 >= argc || !ParseInt(argv[++i], *target)) return std::nullopt;
  }
  return options;
}

void Progress(std::string_view what) { fmt::print(stderr, "vessel_engine_bench: {}\n", what); }

// ---------------------------------------------------------------------------------------
// The VMM process and its memory

struct Mapping {
  uint64_t start = 0;
  uint64_t end = 0;
  std::string path;  // empty for anonymous memory
  uint64_t rss_kib = 0;
};

std::vector<Mapping> ReadSmaps(int pid) {
  std::ifstream in(fmt::format("/proc/{}/smaps", pid));
  std::vector<Mapping> mappings;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string first;
    fields >> first;
    if (first.empty()) continue;
    if (first.back() == ':') {
      if (first == "Rss:" && !mappings.empty()) fields >> mappings.back().rss_kib;
      continue;
    }
    // A mapping's header: "start-end perms offset dev inode [path]".
    size_t dash = first.find('-');
    if (dash == std::string::npos) continue;
    Mapping mapping;
    auto start = std::from_chars(first.data(), first.data() + dash, mapping.start, 16);
    auto end =
        std::from_chars(first.data() + dash + 1, first.data() + first.size(), mapping.end, 16);
    if (start.ec != std::errc() || end.ec != std::errc()) continue;
    std::string perms, offset, device, inode;
    fields >> perms >> offset >> device >> inode;
    std::getline(fields >> std::ws, mapping.path);
    mappings.push_back(std::move(mapping));
  }
  return mappings;
}

struct VmmMemory {
  double own_mib = 0;        // resident, guest RAM excluded
  double guest_ram_mib = 0;  // resident guest RAM
};

// The VMM's resident memory without guest RAM, from /proc/PID/smaps: the Rss of every
// mapping, minus the Rss of the mapping that holds guest RAM. vessel-vmm keeps guest RAM in
// one memfd mapped whole, found by its name; QEMU maps its RAM block (anonymous memory, or
// the memory backend's file) as one mapping exactly the guest's size. What remains is the
// VMM's own code and data, heap, thread stacks and device buffers (shared libraries
// counted in full, as RSS does).
Result<VmmMemory> MeasureVmm(int pid) {
  constexpr uint64_t kGuestBytes = uint64_t{kMemoryMib} << 20;
  constexpr uint64_t kLargeBytes = uint64_t{64} << 20;
  uint64_t total_kib = 0;
  uint64_t guest_kib = 0;
  bool found_guest = false;
  std::string large;  // the large mappings, to explain a miss
  std::vector<Mapping> mappings = ReadSmaps(pid);
  for (const Mapping& m : mappings) {
    total_kib += m.rss_kib;
    uint64_t size = m.end - m.start;
    if (m.path.find(kGuestRamMemfd) != std::string::npos || size == kGuestBytes) {
      guest_kib += m.rss_kib;
      found_guest = true;
    }
    if (size >= kLargeBytes) large += fmt::format(" [{} MiB \"{}\"]", size >> 20, m.path);
  }
  if (mappings.empty()) return Fail(Error::Backend(fmt::format("cannot read /proc/{}/smaps", pid)));
  if (!found_guest) {
    return Fail(Error::Backend(
        fmt::format("no guest RAM mapping in /proc/{}/smaps; large mappings:{}", pid, large)));
  }
  return VmmMemory{static_cast<double>(total_kib - guest_kib) / 1024.0,
                   static_cast<double>(guest_kib) / 1024.0};
}

// ---------------------------------------------------------------------------------------
// The benchmark

struct EngineRows {
  EngineKind kind;
  std::string label;
  Series create;
  Series first_exec;
  Series exec;
  Series own_memory;  // MiB, not ms
  Series guest_memory;
  std::string engine_name;
  std::string memory_error;
};

SandboxConfig BenchConfig(EngineKind kind) {
  SandboxConfig config;
  config.vcpus = kVcpus;
  config.memory_mib = kMemoryMib;
  config.boot_timeout = kBootTimeout;
  config.engine = kind;
  config.name = "vessel-engine-bench";
  return config;
}

Result<void> RunTrue(Sandbox& sandbox) {
  auto result = sandbox.Execute(Command::Argv({"true"}));
  if (!result) return Fail(std::move(result).error());
  if (!result->ok()) return Fail(Error::Backend("`true` did not exit 0 in the guest"));
  return {};
}

// One create -> ready, a first exec, the VMM's memory while the sandbox idles, destroy.
Result<void> BootOnce(EngineRows& rows, const std::string& runtime_root) {
  auto t0 = Clock::now();
  auto sandbox = Sandbox::Create(BenchConfig(rows.kind));
  if (!sandbox) return Fail(std::move(sandbox).error().Context(rows.label));
  rows.create.ms.push_back(MsSince(t0));
  rows.engine_name = (*sandbox)->engine_name();
  auto t1 = Clock::now();
  if (auto r = RunTrue(**sandbox); !r) return r;
  rows.first_exec.ms.push_back(MsSince(t1));

  std::vector<int> pids = VmmPids(runtime_root);
  if (pids.size() != 1) {
    rows.memory_error = fmt::format("found {} VMM processes, not 1", pids.size());
  } else if (auto memory = MeasureVmm(pids[0])) {
    rows.own_memory.ms.push_back(memory->own_mib);
    rows.guest_memory.ms.push_back(memory->guest_ram_mib);
  } else {
    rows.memory_error = memory.error().ToString();
  }
  return (*sandbox)->Destroy();
}

// One warm sandbox per engine; the timed execs alternate between them.
Result<void> ExecRounds(int iterations, std::vector<EngineRows>& engines) {
  std::vector<std::unique_ptr<Sandbox>> sandboxes;
  for (EngineRows& rows : engines) {
    auto sandbox = Sandbox::Create(BenchConfig(rows.kind));
    if (!sandbox) return Fail(std::move(sandbox).error().Context(rows.label));
    sandboxes.push_back(std::move(*sandbox));
  }
  for (int i = 0; i < kExecWarmup + iterations; ++i) {
    for (size_t e = 0; e < engines.size(); ++e) {
      auto t0 = Clock::now();
      if (auto r = RunTrue(*sandboxes[e]); !r) return r;
      if (i >= kExecWarmup) engines[e].exec.ms.push_back(MsSince(t0));
    }
  }
  for (auto& sandbox : sandboxes) {
    if (auto r = sandbox->Destroy(); !r) return r;
  }
  return {};
}

void PrintMemoryTable(const std::vector<const Series*>& rows) {
  size_t name_width = 6;
  for (const Series* s : rows) name_width = std::max(name_width, s->name.size());
  fmt::print("{:<{}}  {:>5}  {:>9}  {:>9}  {:>9}\n", "memory (MiB)", name_width, "n", "min",
             "median", "max");
  fmt::print("{}\n", std::string(name_width + 2 + 5 + 3 * 11, '-'));
  for (const Series* s : rows) {
    auto sorted = s->ms;
    std::sort(sorted.begin(), sorted.end());
    std::optional<double> min, max;
    if (!sorted.empty()) {
      min = sorted.front();
      max = sorted.back();
    }
    fmt::print("{:<{}}  {:>5}  {:>9}  {:>9}  {:>9}\n", s->name, name_width, sorted.size(),
               Cell(min), Cell(Median(*s)), Cell(max));
  }
}

void Report(const std::vector<EngineRows>& engines, double total_s) {
  const EngineRows& qemu = engines[0];
  const EngineRows& kvm = engines[1];
  fmt::print("vessel_engine_bench: engines {} and {}; {} host CPUs; guest {} vCPU, {} MiB\n",
             qemu.engine_name, kvm.engine_name, std::thread::hardware_concurrency(), kVcpus,
             kMemoryMib);
  fmt::print("  kernel    {}/vmlinux\n  initramfs {}/initramfs.cpio\n\n", DefaultAssetDir(),
             DefaultAssetDir());
  PrintTable({&qemu.create, &kvm.create, &qemu.first_exec, &kvm.first_exec, &qemu.exec, &kvm.exec});
  fmt::print("\n");
  PrintMemoryTable({&qemu.own_memory, &kvm.own_memory, &qemu.guest_memory, &kvm.guest_memory});
  for (const EngineRows* rows : {&qemu, &kvm}) {
    if (!rows->memory_error.empty()) {
      fmt::print("  {}: memory not measured: {}\n", rows->label, rows->memory_error);
    }
  }
  fmt::print("\nratios of medians, QEMU engine / kvm engine:\n");
  PrintRatio("create -> ready", qemu.create, kvm.create);
  PrintRatio("first exec `true`", qemu.first_exec, kvm.first_exec);
  PrintRatio("exec `true` round trip (warm)", qemu.exec, kvm.exec);
  auto qemu_memory = Median(qemu.own_memory);
  auto kvm_memory = Median(kvm.own_memory);
  if (qemu_memory && kvm_memory && *kvm_memory > 0) {
    fmt::print("  VMM RSS without guest RAM: {:.2f}x  ({:.1f} / {:.1f} MiB)\n",
               *qemu_memory / *kvm_memory, *qemu_memory, *kvm_memory);
  }
  fmt::print(
      "\nmemory is sampled once per boot, after the first exec, from /proc/PID/smaps: all Rss "
      "minus\nthe guest RAM mapping (vessel-vmm's memfd; QEMU's RAM block).\n");
  fmt::print(
      "exec rows are host wall time around Sandbox::Execute; the warm rows skip {} "
      "warm-up execs.\n",
      kExecWarmup);
  fmt::print("total bench time {:.1f} s\n", total_s);
}

int Run(const Options& options) {
  auto started = Clock::now();
  // A runtime root of its own, so the VMM processes found are this run's.
  char root_template[] = "/tmp/vessel-engine-bench-XXXXXX";
  if (!::mkdtemp(root_template)) {
    fmt::print(stderr, "vessel_engine_bench: mkdtemp failed\n");
    return 1;
  }
  std::string runtime_root = root_template;
  ::setenv("VESSEL_RUNTIME_DIR", runtime_root.c_str(), 1);

  std::vector<EngineRows> engines;
  engines.push_back({.kind = EngineKind::kQemu, .label = "QEMU engine"});
  engines.push_back({.kind = EngineKind::kKvm, .label = "kvm engine"});
  for (EngineRows& rows : engines) {
    rows.create.name = rows.label + ": create -> ready";
    rows.first_exec.name = rows.label + ": first exec `true`";
    rows.exec.name = rows.label + ": exec `true` round trip (warm)";
    rows.own_memory.name = rows.label + ": VMM RSS without guest RAM";
    rows.guest_memory.name = rows.label + ": guest RAM resident";
  }

  int status = 0;
  for (int round = 0; round < options.iterations && status == 0; ++round) {
    Progress(fmt::format("boot round {}/{}", round + 1, options.iterations));
    for (size_t k = 0; k < engines.size(); ++k) {
      EngineRows& rows = engines[(static_cast<size_t>(round) + k) % engines.size()];
      if (auto r = BootOnce(rows, runtime_root); !r) {
        fmt::print(stderr, "vessel_engine_bench: boot round {}: {}\n", round + 1,
                   r.error().ToString());
        status = 1;
        break;
      }
    }
  }
  if (status == 0) {
    Progress(fmt::format("exec: {} warm-up, {} timed, per engine", kExecWarmup,
                         options.exec_iterations));
    if (auto r = ExecRounds(options.exec_iterations, engines); !r) {
      fmt::print(stderr, "vessel_engine_bench: exec: {}\n", r.error().ToString());
      status = 1;
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(runtime_root, ec);
  if (status == 0) Report(engines, MsSince(started) / 1000.0);
  return status;
}

}  // namespace
}  // namespace vessel::bench

int main(int argc, char** argv) {
  if (argc == 2 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h")) {
    std::fputs(vessel::bench::kUsage, stdout);
    return 0;
  }
  auto options = vessel::bench::ParseArgs(argc, argv);
  if (!options) {
    std::fputs(vessel::bench::kUsage, stderr);
    return 2;
  }
  return vessel::bench::Run(*options);
}
