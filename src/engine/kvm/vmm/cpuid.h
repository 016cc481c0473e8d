// The CPUID a vCPU sees: what KVM supports (KVM_GET_SUPPORTED_CPUID), with the topology
// rewritten so that N vCPUs are N single-threaded cores of one socket, each vCPU carrying
// its own APIC id, and with the hypervisor bit set. Pure functions: tested without KVM.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <vector>

namespace vessel::vmm {

// The entries for vCPU `index` (APIC id == index) of `count`.
[[nodiscard]] std::vector<kvm_cpuid_entry2> CpuidForVcpu(
    std::span<const kvm_cpuid_entry2> supported, uint32_t index, uint32_t count);

}  // namespace vessel::vmm
