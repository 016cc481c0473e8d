// The host memory of VMs, for the benchmarks that compare forks with cold VMs.
#pragma once

#include <charconv>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

namespace vessel::bench {

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Every process in /proc, with its command line (arguments NUL-separated).
template <typename Visit>
void ForEachProcess(Visit visit) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = entry.path().filename();
    int pid = 0;
    auto [end, parse_ec] = std::from_chars(name.data(), name.data() + name.size(), pid);
    if (parse_ec != std::errc() || end != name.data() + name.size()) continue;
    visit(pid, ReadWholeFile(entry.path() / "cmdline"));
  }
}

// The QEMU processes of the sandboxes `ids` (QEMU's -name is vessel-<id>).
inline std::vector<int> QemuPids(const std::vector<std::string>& ids) {
  std::vector<int> pids;
  ForEachProcess([&](int pid, const std::string& cmdline) {
    for (const auto& id : ids) {
      if (cmdline.find("vessel-" + id + '\0') != std::string::npos) {
        pids.push_back(pid);
        return;
      }
    }
  });
  return pids;
}

// The VMM processes (QEMU or vessel-vmm) of every sandbox under `runtime_root`, which
// they name on their command line (a booted QEMU's memory file) or inherit as
// VESSEL_RUNTIME_DIR. vessel-vmm's command line names no sandbox, so this is how its
// processes are found: give the benchmark a runtime root of its own.
inline std::vector<int> VmmPids(const std::string& runtime_root) {
  std::vector<int> pids;
  ForEachProcess([&](int pid, const std::string& cmdline) {
    if (cmdline.find("qemu-system") == std::string::npos &&
        cmdline.find("vessel-vmm") == std::string::npos) {
      return;
    }
    std::string environ = ReadWholeFile("/proc/" + std::to_string(pid) + "/environ");
    if (cmdline.find(runtime_root) != std::string::npos ||
        environ.find("VESSEL_RUNTIME_DIR=" + runtime_root + '\0') != std::string::npos) {
      pids.push_back(pid);
    }
  });
  return pids;
}

// Proportional set size, in KiB, of the processes `pids` together: memory shared between
// them is counted once in total.
inline long PssKib(const std::vector<int>& pids) {
  long total = 0;
  for (int pid : pids) {
    std::ifstream rollup("/proc/" + std::to_string(pid) + "/smaps_rollup");
    std::string key;
    while (rollup >> key) {
      if (key == "Pss:") {
        long kib = 0;
        rollup >> kib;
        total += kib;
        break;
      }
      rollup.ignore(256, '\n');
    }
  }
  return total;
}

inline long PssKib(const std::vector<std::string>& ids) { return PssKib(QemuPids(ids)); }

}  // namespace vessel::bench
