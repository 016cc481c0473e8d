// The CPUID a vCPU sees: what KVM supports (KVM_GET_SUPPORTED_CPUID), with the topology
// rewritten so that N vCPUs are N single-threaded cores of one socket, each vCPU carrying
// its own APIC id, and with the hypervisor bit set. Pure functions: tested without KVM.
//
// With `tsc_deadline_timer` (KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel APIC emulates it)
// leaf 1 announces the APIC's TSC-deadline mode, which older kernels' (6.1's among them)
// KVM_GET_SUPPORTED_CPUID leaves out. A guest that sees it programs its timer in TSC ticks
// and skips calibrating the APIC timer against the PIT: 100 ms of waiting at boot, more
// when the host is slow, and a calibration a loaded host can fail.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <vector>

namespace vessel::vmm {

// The entries for vCPU `index` (APIC id == index) of `count`.
[[nodiscard]] std::vector<kvm_cpuid_entry2> CpuidForVcpu(
    std::span<const kvm_cpuid_entry2> supported, uint32_t index, uint32_t count,
    bool tsc_deadline_timer);

}  // namespace vessel::vmm
