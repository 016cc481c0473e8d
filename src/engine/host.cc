#include "engine/host.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "base/io.h"
#include "base/unique_fd.h"
#include "engine/vm_cgroup.h"
#include "engine/vmm_jail.h"

namespace vessel::engine {

std::string CpuinfoValue(std::string_view key) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string_view name(line.data(), colon);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
    if (name == key) return line.substr(colon + 1) + " ";
  }
  return {};
}

std::optional<std::string> KvmUnusableReason() {
  UniqueFd fd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!fd) return fmt::format("/dev/kvm cannot be opened: {}", std::strerror(errno));
  // Some hosts expose a /dev/kvm without hardware virtualisation (paravirtual KVM such
  // as PVM) on which full-system guests do not boot: require VMX or SVM as well.
  std::string flags = CpuinfoValue("flags");
  if (flags.find(" vmx ") == std::string::npos && flags.find(" svm ") == std::string::npos) {
    return std::string(
        "the CPU has no VMX or SVM flag (a /dev/kvm without hardware "
        "virtualisation cannot run full-system guests)");
  }
  return std::nullopt;
}

uint64_t HostMemoryMib() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemTotal:") return kib / 1024;
    meminfo.ignore(64, '\n');
  }
  return 0;
}

uint32_t GuestVcpuLimit() {
  return std::clamp<uint32_t>(std::thread::hardware_concurrency(), 1, kMaxGuestVcpus);
}

uint32_t GuestMemoryLimitMib() {
  uint64_t host = HostMemoryMib();
  return static_cast<uint32_t>(
      std::min<uint64_t>(host ? host : kMaxGuestMemoryMib, kMaxGuestMemoryMib));
}

uint64_t HostTscKhz() {
  // Read once: the rate does not change, and every VM start needs it.
  static const uint64_t khz = [] {
    double mhz = std::strtod(CpuinfoValue("cpu MHz").c_str(), nullptr);
    return mhz > 0 ? static_cast<uint64_t>(mhz * 1000) : uint64_t{0};
  }();
  return khz;
}

Confinement JailConfinement() {
  if (!JailEnabled()) {
    return {false, "off (VESSEL_JAIL=off): VMMs see the host's files and network"};
  }
  return {true, ::geteuid() == 0 ? "own namespaces and root, no capabilities; vessel-vmm as nobody"
                                 : "own namespaces (a user namespace) and root, no capabilities"};
}

Confinement CgroupConfinement() {
  if (const auto& parent = CgroupParent()) {
    return {true, "one per VM under " + *parent + " (memory.max, pids.max, cpu.max)"};
  }
  return {false,
          "none: no writable cgroup v2 with memory, pids and cpu here; VMMs run "
          "without those limits"};
}

std::string SelectedPolicy(std::string_view setting) {
  size_t open = setting.find('[');
  size_t close = setting.find(']', open);
  if (open == std::string_view::npos || close == std::string_view::npos) return {};
  return std::string(setting.substr(open + 1, close - open - 1));
}

Confinement RamPageSize() {
  constexpr const char* kShmemPolicy = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
  std::string policy = SelectedPolicy(ReadFileToString(kShmemPolicy, 4096).value_or(""));
  if (policy.empty())
    return {false, std::string("4 KiB pages: ") + kShmemPolicy + " is unreadable"};
  if (policy == "never" || policy == "deny") {
    return {false, fmt::format("4 KiB pages: shmem huge pages are {} here; "
                               "`echo advise > {}` gives booted VMs 2 MiB pages (faster boots "
                               "under TCG)",
                               policy, kShmemPolicy)};
  }
  return {true, "2 MiB pages where QEMU asks (shmem_enabled is " + policy + ")"};
}

}  // namespace vessel::engine
