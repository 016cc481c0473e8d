#include "vmm/arch/x86/mptable.h"

#include <fmt/format.h>

#include <cstring>
#include <numeric>

namespace vessel::vmm {
namespace {

#pragma pack(push, 1)
struct MpFloatingPointer {
  char signature[4];  // "_MP_"
  uint32_t config_table;
  uint8_t length;  // in 16-byte units
  uint8_t spec_rev;
  uint8_t checksum;
  uint8_t features[5];
};
static_assert(sizeof(MpFloatingPointer) == 16);

struct MpConfigHeader {
  char signature[4];  // "PCMP"
  uint16_t length;    // header and base entries
  uint8_t spec_rev;
  uint8_t checksum;
  char oem[8];
  char product[12];
  uint32_t oem_table;
  uint16_t oem_table_size;
  uint16_t entry_count;
  uint32_t local_apic;
  uint16_t extended_length;
  uint8_t extended_checksum;
  uint8_t reserved;
};
static_assert(sizeof(MpConfigHeader) == 44);

struct MpProcessor {
  uint8_t type;
  uint8_t apic_id;
  uint8_t apic_version;
  uint8_t cpu_flags;
  uint32_t cpu_signature;
  uint32_t feature_flags;
  uint32_t reserved[2];
};
static_assert(sizeof(MpProcessor) == 20);

struct MpBus {
  uint8_t type;
  uint8_t bus_id;
  char bus_type[6];
};
static_assert(sizeof(MpBus) == 8);

struct MpIoApic {
  uint8_t type;
  uint8_t apic_id;
  uint8_t apic_version;
  uint8_t flags;
  uint32_t address;
};
static_assert(sizeof(MpIoApic) == 8);

// An I/O or a local interrupt assignment; both entries share this shape.
struct MpInterrupt {
  uint8_t type;
  uint8_t irq_type;
  uint16_t irq_flags;
  uint8_t source_bus;
  uint8_t source_irq;
  uint8_t dest_apic;
  uint8_t dest_pin;
};
static_assert(sizeof(MpInterrupt) == 8);
#pragma pack(pop)

constexpr uint8_t kEntryProcessor = 0;
constexpr uint8_t kEntryBus = 1;
constexpr uint8_t kEntryIoApic = 2;
constexpr uint8_t kEntryIoInterrupt = 3;
constexpr uint8_t kEntryLocalInterrupt = 4;
constexpr uint8_t kIrqTypeInt = 0;
constexpr uint8_t kIrqTypeNmi = 1;
constexpr uint8_t kIrqTypeExtInt = 3;
constexpr uint8_t kCpuEnabled = 1;
constexpr uint8_t kCpuBootstrap = 2;
constexpr uint8_t kLocalApicVersion = 0x14;
constexpr uint8_t kIoApicVersion = 0x11;
constexpr uint8_t kIsaBusId = 0;
constexpr uint8_t kAllLocalApics = 0xff;
constexpr uint8_t kIsaIrqs = 16;
// Family 6; FPU and APIC present. Linux reads CPU identity from CPUID, not from here.
constexpr uint32_t kCpuSignature = 0x600;
constexpr uint32_t kCpuFeatures = 0x201;

template <typename T>
void Append(std::vector<uint8_t>& out, const T& value) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
  out.insert(out.end(), bytes, bytes + sizeof(T));
}

// The byte that makes the sum of [begin, end) zero.
uint8_t ChecksumFor(const uint8_t* begin, const uint8_t* end) {
  uint8_t sum = std::accumulate(begin, end, uint8_t{0},
                                [](uint8_t a, uint8_t b) { return static_cast<uint8_t>(a + b); });
  return static_cast<uint8_t>(-sum);
}

}  // namespace

Result<std::vector<uint8_t>> BuildMpTable(uint32_t vcpu_count) {
  if (vcpu_count == 0 || vcpu_count > kMaxMpVcpus) {
    return Fail(Error::InvalidConfig(
        "vcpus", fmt::format("{} vCPUs; the MP table describes 1 to {}", vcpu_count, kMaxMpVcpus)));
  }
  const auto io_apic_id = static_cast<uint8_t>(vcpu_count);

  std::vector<uint8_t> entries;
  uint16_t entry_count = 0;
  for (uint32_t i = 0; i < vcpu_count; ++i) {
    Append(entries,
           MpProcessor{
               .type = kEntryProcessor,
               .apic_id = static_cast<uint8_t>(i),
               .apic_version = kLocalApicVersion,
               .cpu_flags = static_cast<uint8_t>(kCpuEnabled | (i == 0 ? kCpuBootstrap : 0)),
               .cpu_signature = kCpuSignature,
               .feature_flags = kCpuFeatures,
               .reserved = {0, 0},
           });
    ++entry_count;
  }
  Append(entries,
         MpBus{.type = kEntryBus, .bus_id = kIsaBusId, .bus_type = {'I', 'S', 'A', ' ', ' ', ' '}});
  ++entry_count;
  Append(entries, MpIoApic{.type = kEntryIoApic,
                           .apic_id = io_apic_id,
                           .apic_version = kIoApicVersion,
                           .flags = 1,
                           .address = kIoApicAddr});
  ++entry_count;
  // ISA IRQ n arrives on IOAPIC pin n, as KVM's default GSI routing has it; flags 0 means
  // "conforms to the bus": edge triggered, active high.
  for (uint8_t irq = 0; irq < kIsaIrqs; ++irq) {
    Append(entries, MpInterrupt{.type = kEntryIoInterrupt,
                                .irq_type = kIrqTypeInt,
                                .irq_flags = 0,
                                .source_bus = kIsaBusId,
                                .source_irq = irq,
                                .dest_apic = io_apic_id,
                                .dest_pin = irq});
    ++entry_count;
  }
  // The 8259 PIC is wired to LINT0 of every local APIC, NMI to LINT1.
  Append(entries, MpInterrupt{.type = kEntryLocalInterrupt,
                              .irq_type = kIrqTypeExtInt,
                              .irq_flags = 0,
                              .source_bus = kIsaBusId,
                              .source_irq = 0,
                              .dest_apic = kAllLocalApics,
                              .dest_pin = 0});
  Append(entries, MpInterrupt{.type = kEntryLocalInterrupt,
                              .irq_type = kIrqTypeNmi,
                              .irq_flags = 0,
                              .source_bus = kIsaBusId,
                              .source_irq = 0,
                              .dest_apic = kAllLocalApics,
                              .dest_pin = 1});
  entry_count += 2;

  MpConfigHeader header{};
  std::memcpy(header.signature, "PCMP", 4);
  header.length = static_cast<uint16_t>(sizeof(MpConfigHeader) + entries.size());
  header.spec_rev = 4;
  std::memcpy(header.oem, "VESSEL  ", 8);
  std::memcpy(header.product, "vessel-vmm  ", 12);
  header.entry_count = entry_count;
  header.local_apic = kLocalApicAddr;

  MpFloatingPointer pointer{};
  std::memcpy(pointer.signature, "_MP_", 4);
  pointer.config_table = static_cast<uint32_t>(kMpTableAddr + sizeof(MpFloatingPointer));
  pointer.length = 1;
  pointer.spec_rev = 4;

  std::vector<uint8_t> table;
  Append(table, pointer);
  size_t header_at = table.size();
  Append(table, header);
  table.insert(table.end(), entries.begin(), entries.end());
  if (table.size() > kMpTableMaxSize) return Fail(Error::Backend("MP table too large"));

  table[header_at + offsetof(MpConfigHeader, checksum)] =
      ChecksumFor(table.data() + header_at, table.data() + table.size());
  table[offsetof(MpFloatingPointer, checksum)] =
      ChecksumFor(table.data(), table.data() + sizeof(MpFloatingPointer));
  return table;
}

}  // namespace vessel::vmm
