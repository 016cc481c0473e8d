// vessel-vmm confines itself once the VM runs: a seccomp allow-list of the system calls
// its threads make from then on, every one with the reason it is needed. Anything else
// kills the process. The policy is data, compiled to classic BPF here and checked by unit
// tests without installing it.
#pragma once

#include <linux/filter.h>

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "vessel/error.h"

namespace vessel::vmm {

// A system call argument that must have one of a few values (all 64 bits of it).
struct ArgOneOf {
  unsigned index;  // 0..5
  std::vector<uint64_t> values;
};

struct SyscallAllowance {
  long number;
  std::string_view name;
  std::string_view reason;
  std::optional<ArgOneOf> only_if;  // unset: any arguments
};

// The allow-list of a running VMM whose process (thread group) id is `self`: signals
// only to its own threads, sockets only of AF_UNIX, ioctl only the KVM requests a
// running VM makes.
[[nodiscard]] std::vector<SyscallAllowance> VmmSyscallPolicy(pid_t self);

// A filter that kills the process for a foreign architecture, an x32 call, a system call
// missing from `allowed` or one whose checked argument has none of its values, and allows
// the rest.
[[nodiscard]] std::vector<sock_filter> CompileSeccompFilter(
    std::span<const SyscallAllowance> allowed);

// Sets no-new-privileges and installs `filter` on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC), so call it after every thread exists.
[[nodiscard]] Result<void> InstallSeccompFilter(std::span<const sock_filter> filter);

}  // namespace vessel::vmm
