// The host memory of VMs, for the benchmarks that compare forks with cold VMs.
#pragma once

#include <dirent.h>

#include <fstream>
#include <string>
#include <vector>

namespace vessel::bench {

// Proportional set size, in KiB, of every QEMU process whose command line names one of
// `ids` (its -name is vessel-<id>): memory shared between them is counted once in total.
inline long PssKib(const std::vector<std::string>& ids) {
  long total = 0;
  DIR* proc = ::opendir("/proc");
  if (!proc) return 0;
  while (dirent* entry = ::readdir(proc)) {
    std::string pid = entry->d_name;
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline;
    std::getline(std::ifstream("/proc/" + pid + "/cmdline"), cmdline, '\1');
    bool ours = false;
    for (const auto& id : ids) {
      if (cmdline.find("vessel-" + id + '\0') != std::string::npos) ours = true;
    }
    if (!ours) continue;
    std::ifstream rollup("/proc/" + pid + "/smaps_rollup");
    std::string key;
    while (rollup >> key) {
      long kib = 0;
      if (key == "Pss:") {
        rollup >> kib;
        total += kib;
        break;
      }
      rollup.ignore(256, '\n');
    }
  }
  ::closedir(proc);
  return total;
}

}  // namespace vessel::bench
