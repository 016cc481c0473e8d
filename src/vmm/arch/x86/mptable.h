// An Intel MultiProcessor Specification 1.4 table, which is how a kernel booted without
// ACPI finds its CPUs, the IOAPIC and the routing of the ISA interrupts.
#pragma once

#include <cstdint>
#include <vector>

#include "vessel/error.h"

namespace vessel::vmm {

// Inside the BIOS area (0xf0000..0xfffff) that Linux scans for the floating pointer and
// that the memory map reserves.
inline constexpr uint64_t kMpTableAddr = 0xf0000;
inline constexpr uint64_t kMpTableMaxSize = 0x10000;
inline constexpr uint32_t kLocalApicAddr = 0xfee00000;
inline constexpr uint32_t kIoApicAddr = 0xfec00000;
// The in-kernel IOAPIC's pins; GSI n is pin n.
inline constexpr uint8_t kIoApicPins = 24;
// APIC ids 0..vcpus-1 belong to the vCPUs; the IOAPIC takes the next one.
inline constexpr uint32_t kMaxMpVcpus = 254;

// The floating pointer followed by the configuration table, ready to copy to
// kMpTableAddr. vCPU i has APIC id i; vCPU 0 is the bootstrap processor.
[[nodiscard]] Result<std::vector<uint8_t>> BuildMpTable(uint32_t vcpu_count);

}  // namespace vessel::vmm
