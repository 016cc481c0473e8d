// What the host offers the engines: hardware virtualisation through /dev/kvm, the CPU
// facts they read from /proc/cpuinfo, and the guest limits that follow from them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel::engine {

// The value of the first /proc/cpuinfo line whose key is `key` (with a trailing space,
// so flags can be matched as " name "), or empty.
std::string CpuinfoValue(std::string_view key);
// The host's RAM in MiB (MemTotal), or 0 when /proc/meminfo cannot be read.
uint64_t HostMemoryMib();
// The host TSC rate in kHz, for the guest's tsc_early_khz: TSC calibration under TCG is
// unreliable and a guest that fails it can hang at boot. 0 when unknown.
uint64_t HostTscKhz();

// Guest limits, the same on every engine.
inline constexpr uint32_t kMinGuestMemoryMib = 64;
inline constexpr uint32_t kMaxGuestMemoryMib = 16 * 1024;
// The guest kernel supports at most this many CPUs (CONFIG_NR_CPUS).
inline constexpr uint32_t kMaxGuestVcpus = 8;
// The most vCPUs a guest may have here: the host's CPU count, at most kMaxGuestVcpus.
uint32_t GuestVcpuLimit();
// The most memory a guest may have here: the host's RAM, at most kMaxGuestMemoryMib.
uint32_t GuestMemoryLimitMib();

// Why KVM guests cannot run here, or nullopt when they can: /dev/kvm opens for reading
// and writing and the CPU has VMX or SVM.
std::optional<std::string> KvmUnusableReason();
inline bool KvmUsable() { return !KvmUnusableReason().has_value(); }

// What confines the VMMs here, for `vessel doctor`: whether they start jailed (and as
// whom), and where their cgroups go, if anywhere. `ok` is false when a confinement is
// missing.
struct Confinement {
  bool ok = false;
  std::string text;
};
Confinement JailConfinement();
Confinement CgroupConfinement();

// The policy chosen in a sysfs transparent-huge-page setting such as
// "always within_size advise [never] deny force" ("never"), or empty.
std::string SelectedPolicy(std::string_view setting);
// A booted VM's RAM, `bytes` long: a file that lives in memory only, reached through the
// descriptor (mode 0666, like a memfd's: no path leads to it) and gone with it. Where
// Vessel may mount (as root), it is a file on a tmpfs of its own, mounted nowhere, with
// huge=within_size: 2 MiB pages whatever the host's shmem policy, as QEMU's anonymous RAM
// gets them. Elsewhere it is a memfd, whose pages follow shmem_enabled.
[[nodiscard]] Result<UniqueFd> CreateGuestRam(uint64_t bytes);
// Whether CreateGuestRam's files get 2 MiB pages here, and why. `ok` is false when not.
Confinement RamPageSize();

}  // namespace vessel::engine
