#include "engine/host.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/mount.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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

namespace {

constexpr const char* kShmemPolicy = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

// A tmpfs that gives huge pages to files within their size, `bytes` at most, mounted
// nowhere: `mount` is its root, and it goes when nothing on it is open.
Result<UniqueFd> HugeTmpfs(uint64_t bytes) {
  UniqueFd context(static_cast<int>(::syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC)));
  if (!context) return Fail(Error::HostIo("fsopen tmpfs", errno));
  std::string size = std::to_string(bytes);
  for (auto [key, value] : {std::pair{"huge", "within_size"}, std::pair{"size", size.c_str()}}) {
    if (::syscall(SYS_fsconfig, context.get(), FSCONFIG_SET_STRING, key, value, 0) != 0) {
      return Fail(Error::HostIo(fmt::format("tmpfs option {}={}", key, value), errno));
    }
  }
  if (::syscall(SYS_fsconfig, context.get(), FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) != 0) {
    return Fail(Error::HostIo("create a tmpfs", errno));
  }
  UniqueFd mount(static_cast<int>(::syscall(SYS_fsmount, context.get(), FSMOUNT_CLOEXEC, 0)));
  if (!mount) return Fail(Error::HostIo("fsmount", errno));
  return mount;
}

bool HugeTmpfsAllowed() {
  return ::geteuid() == 0 &&
         SelectedPolicy(ReadFileToString(kShmemPolicy, 4096).value_or("")) != "deny";
}

}  // namespace

Result<UniqueFd> CreateGuestRam(uint64_t bytes) {
  UniqueFd ram;
  if (HugeTmpfsAllowed()) {
    if (auto mount = HugeTmpfs(bytes)) {
      ram.Reset(::openat(mount->get(), ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
      if (ram && ::fchmod(ram.get(), 0666) != 0) ram.Reset();
    }
  }
  if (!ram) ram.Reset(static_cast<int>(::memfd_create("vessel-ram", MFD_CLOEXEC)));
  if (!ram) return Fail(Error::HostIo("memfd_create", errno));
  if (::ftruncate(ram.get(), static_cast<off_t>(bytes)) != 0) {
    return Fail(Error::HostIo("size the VM's memory", errno));
  }
  return ram;
}

Confinement RamPageSize() {
  std::string policy = SelectedPolicy(ReadFileToString(kShmemPolicy, 4096).value_or(""));
  if (HugeTmpfsAllowed() && HugeTmpfs(2 << 20)) {
    return {true, "2 MiB pages: each VM's RAM is on a tmpfs of its own with huge=within_size"};
  }
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
