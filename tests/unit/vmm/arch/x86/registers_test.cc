#include "vmm/arch/x86/registers.h"

#include <gtest/gtest.h>

#include <cstring>

#include "vmm/arch/x86/boot.h"

namespace vessel::vmm {
namespace {

uint32_t Lvt(const kvm_lapic_state& lapic, size_t reg) {
  uint32_t value;
  std::memcpy(&value, &lapic.regs[reg], sizeof(value));
  return value;
}

TEST(VcpuRegisters, LintPinsAreVirtualWire) {
  kvm_lapic_state lapic{};
  uint32_t masked_fixed = 1u << 16 | 0x700 | 0x31;  // mask, some mode, vector 0x31
  std::memcpy(&lapic.regs[0x350], &masked_fixed, sizeof(masked_fixed));
  SetUpLapicLint(lapic);
  EXPECT_EQ(Lvt(lapic, 0x350), 1u << 16 | 0x7u << 8 | 0x31);  // ExtINT, the rest kept
  EXPECT_EQ(Lvt(lapic, 0x360), 0x4u << 8);                    // NMI
}

TEST(VcpuRegisters, TheBootstrapProcessorStartsAtThePvhEntry) {
  kvm_sregs sregs{};
  sregs.cr3 = 0x1000;
  sregs.efer = 0x500;
  SetPvhEntrySregs(sregs);
  EXPECT_EQ(sregs.cs.selector, kBootCodeSelector);
  EXPECT_EQ(sregs.cs.db, 1);
  EXPECT_EQ(sregs.ss.selector, kBootDataSelector);
  EXPECT_EQ(sregs.tr.selector, kBootTssSelector);
  EXPECT_EQ(sregs.gdt.base, kBootGdtAddr);
  EXPECT_EQ(sregs.gdt.limit, 31);
  EXPECT_EQ(sregs.cr0, 0x11u);  // protected mode, paging off
  EXPECT_EQ(sregs.cr3, 0u);
  EXPECT_EQ(sregs.efer, 0u);

  kvm_regs regs = PvhEntryRegs(0x1000000);
  EXPECT_EQ(regs.rip, 0x1000000u);
  EXPECT_EQ(regs.rbx, kStartInfoAddr);
  EXPECT_EQ(regs.rflags, 0x2u);

  kvm_fpu fpu = PowerOnFpu();
  EXPECT_EQ(fpu.fcw, 0x37f);
  EXPECT_EQ(fpu.mxcsr, 0x1f80u);
}

}  // namespace
}  // namespace vessel::vmm
