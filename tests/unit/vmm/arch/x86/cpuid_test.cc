#include "vmm/arch/x86/cpuid.h"

#include <gtest/gtest.h>

#include <optional>
#include <vector>

namespace vessel::vmm {
namespace {

kvm_cpuid_entry2 Entry(uint32_t function, uint32_t index, uint32_t eax, uint32_t ebx, uint32_t ecx,
                       uint32_t edx) {
  kvm_cpuid_entry2 e{};
  e.function = function;
  e.index = index;
  e.eax = eax;
  e.ebx = ebx;
  e.ecx = ecx;
  e.edx = edx;
  return e;
}

// Roughly what KVM reports on a 16-thread host.
std::vector<kvm_cpuid_entry2> Supported() {
  return {
      Entry(0x0, 0, 0x1f, 0x756e6547, 0x6c65746e, 0x49656e69),
      Entry(0x1, 0, 0x000906ea, 0x0f100800, 0x7ffafbff, 0xbfebfbff),
      // Cache levels 1d, 1i, 2 and 3 (type in bits 0-4, level in bits 5-7), then the end.
      Entry(0x4, 0, 0x1c004121, 0, 0, 0),
      Entry(0x4, 1, 0x1c004122, 0, 0, 0),
      Entry(0x4, 2, 0x1c004143, 0, 0, 0),
      Entry(0x4, 3, 0x1c03c163, 0, 0, 0),
      Entry(0x4, 4, 0, 0, 0, 0),
      Entry(0xb, 0, 1, 2, 0x100, 7),
      Entry(0xb, 1, 4, 16, 0x201, 7),
      Entry(0xb, 2, 0, 0, 2, 7),
      Entry(0x80000001, 0, 0, 0, 0x121, 0x2c100800),
      Entry(0x80000008, 0, 0x3027, 0, 0x700f, 0),
      Entry(0x8000001e, 0, 9, 0x107, 0, 0),
  };
}

std::optional<kvm_cpuid_entry2> Find(const std::vector<kvm_cpuid_entry2>& entries,
                                     uint32_t function, uint32_t index = 0) {
  for (const auto& e : entries) {
    if (e.function == function && e.index == index) return e;
  }
  return std::nullopt;
}

TEST(Cpuid, EachVcpuCarriesItsApicId) {
  auto supported = Supported();
  for (uint32_t i = 0; i < 4; ++i) {
    auto entries = CpuidForVcpu(supported, i, 4, false);
    EXPECT_EQ(entries.size(), supported.size());
    EXPECT_EQ(Find(entries, 0x1)->ebx >> 24, i);
    EXPECT_EQ(Find(entries, 0xb, 0)->edx, i);
    EXPECT_EQ(Find(entries, 0xb, 1)->edx, i);
    EXPECT_EQ(Find(entries, 0xb, 2)->edx, i);
    EXPECT_EQ(Find(entries, 0x8000001e)->eax, i);
  }
}

TEST(Cpuid, FourVcpusAreFourCoresOfOneSocket) {
  auto entries = CpuidForVcpu(Supported(), 0, 4, false);
  auto leaf1 = *Find(entries, 0x1);
  EXPECT_EQ((leaf1.ebx >> 16) & 0xff, 4u);  // logical processors per package
  EXPECT_EQ(leaf1.ebx & 0xffff, 0x0800u);   // CLFLUSH size and brand kept
  EXPECT_NE(leaf1.ecx & (1u << 31), 0u);    // hypervisor
  EXPECT_NE(leaf1.edx & (1u << 28), 0u);    // HTT: more than one logical CPU

  auto smt = *Find(entries, 0xb, 0);
  EXPECT_EQ(smt.eax, 0u);  // one thread per core
  EXPECT_EQ(smt.ebx, 1u);
  EXPECT_EQ(smt.ecx, 0x100u);
  auto core = *Find(entries, 0xb, 1);
  EXPECT_EQ(core.eax, 2u);  // 2 bits of APIC id number 4 cores
  EXPECT_EQ(core.ebx, 4u);
  EXPECT_EQ(core.ecx, 0x201u);
  auto end = *Find(entries, 0xb, 2);
  EXPECT_EQ(end.ebx, 0u);
  EXPECT_EQ(end.ecx & 0xff00, 0u);  // no further level

  for (uint32_t sub = 0; sub < 4; ++sub) {
    auto cache = *Find(entries, 0x4, sub);
    EXPECT_EQ(cache.eax >> 26, 3u);  // cores per package - 1
    uint32_t sharing = (cache.eax >> 14) & 0xfff;
    EXPECT_EQ(sharing, sub == 3 ? 3u : 0u);  // L3 shared by the package, L1/L2 per core
    EXPECT_EQ(cache.eax & 0x3fff, Find(Supported(), 0x4, sub)->eax & 0x3fff);
  }
  EXPECT_EQ(Find(entries, 0x4, 4)->eax, 0u);

  auto sizes = *Find(entries, 0x80000008);
  EXPECT_EQ(sizes.ecx & 0xff, 3u);
  EXPECT_EQ((sizes.ecx >> 12) & 0xf, 2u);
  EXPECT_EQ(sizes.eax, 0x3027u);                       // address sizes kept
  EXPECT_NE(Find(entries, 0x80000001)->ecx & 2u, 0u);  // CmpLegacy
}

TEST(Cpuid, OneVcpuIsOneCoreWithoutHtt) {
  auto entries = CpuidForVcpu(Supported(), 0, 1, false);
  auto leaf1 = *Find(entries, 0x1);
  EXPECT_EQ((leaf1.ebx >> 16) & 0xff, 1u);
  EXPECT_EQ(leaf1.edx & (1u << 28), 0u);
  EXPECT_EQ(Find(entries, 0xb, 1)->eax, 0u);
  EXPECT_EQ(Find(entries, 0xb, 1)->ebx, 1u);
  EXPECT_EQ(Find(entries, 0x80000008)->ecx & 0xf0ff, 0u);
  EXPECT_EQ(Find(entries, 0x80000001)->ecx & 2u, 0u);
  EXPECT_EQ(Find(entries, 0x4, 3)->eax >> 26, 0u);
}

TEST(Cpuid, ThreeVcpusNeedTwoApicIdBits) {
  auto entries = CpuidForVcpu(Supported(), 2, 3, false);
  EXPECT_EQ(Find(entries, 0xb, 1)->eax, 2u);
  EXPECT_EQ(Find(entries, 0xb, 1)->ebx, 3u);
}

TEST(Cpuid, LeavesOtherEntriesAlone) {
  auto entries = CpuidForVcpu(Supported(), 1, 2, false);
  auto leaf0 = *Find(entries, 0x0);
  EXPECT_EQ(leaf0.ebx, 0x756e6547u);
  EXPECT_EQ(leaf0.eax, 0x1fu);
}

TEST(Cpuid, TscDeadlineTimerIsAnnouncedOnlyWhenKvmEmulatesIt) {
  constexpr uint32_t kTscDeadline = 1u << 24;
  // As older kernels' KVM_GET_SUPPORTED_CPUID reports leaf 1: without the bit.
  auto supported = Supported();
  for (auto& e : supported) {
    if (e.function == 0x1) e.ecx &= ~kTscDeadline;
  }
  auto without = CpuidForVcpu(supported, 0, 1, false);
  EXPECT_EQ(Find(without, 0x1)->ecx & kTscDeadline, 0u);
  auto with = CpuidForVcpu(supported, 0, 1, true);
  auto leaf1 = *Find(with, 0x1);
  EXPECT_NE(leaf1.ecx & kTscDeadline, 0u);
  // Only that bit is added.
  EXPECT_EQ(leaf1.ecx & ~kTscDeadline, Find(without, 0x1)->ecx);
}

}  // namespace
}  // namespace vessel::vmm
