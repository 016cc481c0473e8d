#include "vmm/arch/x86/registers.h"

#include <cstddef>
#include <cstring>

#include "vmm/arch/x86/boot.h"

namespace vessel::vmm {
namespace {

// Local APIC register offsets and delivery modes, for LINT0/LINT1.
constexpr size_t kApicLvt0 = 0x350;
constexpr size_t kApicLvt1 = 0x360;
constexpr uint32_t kDeliveryModeExtInt = 0x7;
constexpr uint32_t kDeliveryModeNmi = 0x4;

constexpr uint64_t kCr0Pe = 1u << 0;
constexpr uint64_t kCr0Et = 1u << 4;

void SetLvtDeliveryMode(kvm_lapic_state& lapic, size_t reg, uint32_t mode) {
  uint32_t value;
  std::memcpy(&value, &lapic.regs[reg], sizeof(value));
  value = (value & ~0x700u) | (mode << 8);
  std::memcpy(&lapic.regs[reg], &value, sizeof(value));
}

}  // namespace

void SetUpLapicLint(kvm_lapic_state& lapic) {
  SetLvtDeliveryMode(lapic, kApicLvt0, kDeliveryModeExtInt);
  SetLvtDeliveryMode(lapic, kApicLvt1, kDeliveryModeNmi);
}

void SetPvhEntrySregs(kvm_sregs& sregs) {
  sregs.cs = BootSegment(kBootCodeSelector);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = BootSegment(kBootDataSelector);
  sregs.tr = BootSegment(kBootTssSelector);
  sregs.gdt.base = kBootGdtAddr;
  sregs.gdt.limit = 4 * sizeof(uint64_t) - 1;
  sregs.idt.base = 0;
  sregs.idt.limit = 0;
  sregs.cr0 = kCr0Pe | kCr0Et;
  sregs.cr3 = 0;
  sregs.cr4 = 0;
  sregs.efer = 0;
}

kvm_regs PvhEntryRegs(uint64_t entry) {
  kvm_regs regs{};
  regs.rflags = 0x2;  // bit 1 is reserved and always set
  regs.rip = entry;
  regs.rbx = kStartInfoAddr;
  return regs;
}

kvm_fpu PowerOnFpu() {
  kvm_fpu fpu{};
  fpu.fcw = 0x37f;     // x87 power-on control word
  fpu.mxcsr = 0x1f80;  // SSE power-on state: all exceptions masked
  return fpu;
}

}  // namespace vessel::vmm
