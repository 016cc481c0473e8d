#include "vmm/arch/x86/cpuid.h"

#include <bit>

namespace vessel::vmm {
namespace {

constexpr uint32_t kLeafFeatures = 0x1;
constexpr uint32_t kLeafCacheParams = 0x4;
constexpr uint32_t kLeafTopology = 0xb;
constexpr uint32_t kLeafTopologyV2 = 0x1f;
constexpr uint32_t kLeafExtFeatures = 0x80000001;
constexpr uint32_t kLeafAddressSizes = 0x80000008;
constexpr uint32_t kLeafAmdTopology = 0x8000001e;

constexpr uint32_t kEcxTscDeadline = 1u << 24;
constexpr uint32_t kEcxHypervisor = 1u << 31;
constexpr uint32_t kEdxHtt = 1u << 28;
constexpr uint32_t kExtEcxCmpLegacy = 1u << 1;
constexpr uint32_t kTopologyLevelSmt = 1;
constexpr uint32_t kTopologyLevelCore = 2;

// Bits of an APIC id that number the cores of a package.
uint32_t CoreIdBits(uint32_t count) { return count <= 1 ? 0 : std::bit_width(count - 1); }

void SetBits(uint32_t& reg, int shift, int width, uint32_t value) {
  uint32_t mask = ((width == 32 ? 0u : (1u << width)) - 1u) << shift;
  reg = (reg & ~mask) | ((value << shift) & mask);
}

}  // namespace

std::vector<kvm_cpuid_entry2> CpuidForVcpu(std::span<const kvm_cpuid_entry2> supported,
                                           uint32_t index, uint32_t count,
                                           bool tsc_deadline_timer) {
  const uint32_t apic_id = index;
  const uint32_t core_bits = CoreIdBits(count);
  std::vector<kvm_cpuid_entry2> out(supported.begin(), supported.end());
  for (kvm_cpuid_entry2& e : out) {
    switch (e.function) {
      case kLeafFeatures:
        SetBits(e.ebx, 24, 8, apic_id);
        SetBits(e.ebx, 16, 8, count);  // logical processors per package
        e.ecx |= kEcxHypervisor;
        if (tsc_deadline_timer) e.ecx |= kEcxTscDeadline;
        if (count > 1) {
          e.edx |= kEdxHtt;
        } else {
          e.edx &= ~kEdxHtt;
        }
        break;
      case kLeafCacheParams:
        if ((e.eax & 0x1f) == 0) break;    // no more cache levels
        SetBits(e.eax, 26, 6, count - 1);  // cores per package - 1
        // Caches of level 3 and up are shared by the package; lower ones are per core.
        SetBits(e.eax, 14, 12, ((e.eax >> 5) & 0x7) >= 3 ? count - 1 : 0);
        break;
      case kLeafTopology:
      case kLeafTopologyV2:
        e.edx = apic_id;
        if (e.index == 0) {
          e.eax = 0;  // one thread per core: no SMT bits
          e.ebx = 1;
          e.ecx = (kTopologyLevelSmt << 8) | e.index;
        } else if (e.index == 1) {
          e.eax = core_bits;
          e.ebx = count;
          e.ecx = (kTopologyLevelCore << 8) | e.index;
        } else {
          e.eax = 0;
          e.ebx = 0;
          e.ecx = e.index;  // level type 0: no further levels
        }
        break;
      case kLeafExtFeatures:
        if (count > 1) {
          e.ecx |= kExtEcxCmpLegacy;
        } else {
          e.ecx &= ~kExtEcxCmpLegacy;
        }
        break;
      case kLeafAddressSizes:
        SetBits(e.ecx, 0, 8, count - 1);   // cores per package - 1
        SetBits(e.ecx, 12, 4, core_bits);  // APIC id bits that number them
        break;
      case kLeafAmdTopology:
        e.eax = apic_id;
        e.ebx = apic_id & 0xff;  // compute unit id; one thread per unit
        e.ecx = 0;               // one node
        break;
      default: break;
    }
  }
  return out;
}

}  // namespace vessel::vmm
