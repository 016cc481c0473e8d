// Reading KVM's state of a paused VM into a MachineState, and loading one into a VM that has
// not run yet: the VM's interrupt controllers, PIT and clock, and each vCPU's registers,
// FPU and extended state, local APIC, MSRs, pending events, run state and debug registers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vessel/error.h"
#include "vmm/arch/x86/machine_state.h"

namespace vessel::vmm {

// What a vCPU's state takes on this host: the MSRs to keep (those of KVM's index list that
// `vcpu_fd` reads back, at most kMaxStateMsrs) and the size of its XSAVE area. Found once,
// on the first vCPU, before the VM runs.
struct VcpuStateLayout {
  std::vector<uint32_t> msrs;
  size_t xsave_bytes = 0;
};
[[nodiscard]] Result<VcpuStateLayout> ProbeVcpuStateLayout(int kvm_fd, int vm_fd, int vcpu_fd);

// The ioctl requests SaveVcpuState() and SaveVmState() make, which a running VMM's
// seccomp filter allows.
[[nodiscard]] std::vector<uint64_t> SaveStateIoctls();

// The state of a vCPU that is outside KVM_RUN, and whose last exit KVM has completed.
[[nodiscard]] Result<VcpuState> SaveVcpuState(int vcpu_fd, const VcpuStateLayout& layout);
// Loads `state` into a vCPU created with the same CPUID, before it first runs.
[[nodiscard]] Result<void> LoadVcpuState(int vcpu_fd, const VcpuState& state);

// The VM's own part of `state`: the PICs, the IOAPIC, the PIT and the kvmclock.
[[nodiscard]] Result<void> SaveVmState(int vm_fd, MachineState& state);
// Loads the VM's own part of `state`. The kvmclock is set to the saved value plus the time
// that passed since the save where KVM can tell (KVM_CLOCK_REALTIME), so that the guest's
// clocks are right at once.
[[nodiscard]] Result<void> LoadVmState(int vm_fd, const MachineState& state);

}  // namespace vessel::vmm
