// vessel-vmm confines itself once the VM runs: a seccomp allow-list of the system calls
// its threads make from then on, every one with the reason it is needed. Anything else
// kills the process. The policy is data, compiled to classic BPF here and checked by unit
// tests without installing it.
#pragma once

#include <linux/filter.h>

#include <span>
#include <string_view>
#include <vector>

#include "vessel/error.h"

namespace vessel::vmm {

struct SyscallAllowance {
  long number;
  std::string_view name;
  std::string_view reason;
};

// The allow-list of a running VMM.
[[nodiscard]] std::span<const SyscallAllowance> VmmSyscallPolicy();

// A filter that kills the process for a foreign architecture, an x32 call or a system call
// missing from `allowed`, and allows the rest.
[[nodiscard]] std::vector<sock_filter> CompileSeccompFilter(
    std::span<const SyscallAllowance> allowed);

// Sets no-new-privileges and installs `filter` on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC), so call it after every thread exists.
[[nodiscard]] Result<void> InstallSeccompFilter(std::span<const sock_filter> filter);

}  // namespace vessel::vmm
