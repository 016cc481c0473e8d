// The host memory of VMs, for the benchmarks that compare forks with cold VMs.
#pragma once

#include <sys/stat.h>

#include <charconv>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <system_error>
#include <utility>
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

// What the guest RAM files that the processes `pids` hold open take, in KiB, each file once
// however many hold it: the regular files of exactly `size` bytes among their descriptors.
// A page of such a file that no process maps (one a copy on write replaced, in a private
// mapping) takes memory but is in no process's PSS.
inline long RamFilesKib(const std::vector<int>& pids, uint64_t size) {
  std::set<std::pair<dev_t, ino_t>> seen;
  long total = 0;
  for (int pid : pids) {
    std::error_code ec;
    for (const auto& fd :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
      struct stat st {};
      if (::stat(fd.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
          static_cast<uint64_t>(st.st_size) != size ||
          !seen.insert({st.st_dev, st.st_ino}).second) {
        continue;
      }
      total += st.st_blocks / 2;
    }
  }
  return total;
}

}  // namespace vessel::bench
