// What the host offers the engines: hardware virtualisation through /dev/kvm, and the CPU
// facts they read from /proc/cpuinfo.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace vessel::engine {

// The value of the first /proc/cpuinfo line whose key is `key` (with a trailing space,
// so flags can be matched as " name "), or empty.
std::string CpuinfoValue(std::string_view key);
// The host's RAM in MiB (MemTotal), or 0 when /proc/meminfo cannot be read.
uint64_t HostMemoryMib();

// Why KVM guests cannot run here, or nullopt when they can: /dev/kvm opens for reading
// and writing and the CPU has VMX or SVM.
std::optional<std::string> KvmUnusableReason();
inline bool KvmUsable() { return !KvmUnusableReason().has_value(); }

}  // namespace vessel::engine
