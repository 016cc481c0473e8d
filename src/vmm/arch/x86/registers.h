// The state a vCPU starts in. Application processors wait for INIT/SIPI in the in-kernel
// APIC; the bootstrap processor enters the kernel at its PVH entry: 32-bit protected mode,
// flat segments from the boot GDT, paging off, EBX pointing at hvm_start_info. Pure
// functions on KVM's structs, so they are tested without KVM.
#pragma once

#include <linux/kvm.h>

#include <cstdint>

namespace vessel::vmm {

// LINT0 delivers ExtINT (the PIC) and LINT1 NMI: the virtual-wire mode the MP table
// describes.
void SetUpLapicLint(kvm_lapic_state& lapic);

// The PVH entry's segments, descriptor tables and control registers, set in `sregs` as
// KVM_GET_SREGS returned them.
void SetPvhEntrySregs(kvm_sregs& sregs);

// The PVH entry's general registers for a kernel entered at `entry`.
[[nodiscard]] kvm_regs PvhEntryRegs(uint64_t entry);

// The x87 and SSE power-on state.
[[nodiscard]] kvm_fpu PowerOnFpu();

}  // namespace vessel::vmm
