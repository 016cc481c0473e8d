#include "vmm/arch/x86/mptable.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <numeric>

namespace vessel::vmm {
namespace {

uint8_t Sum(const uint8_t* begin, size_t size) {
  return std::accumulate(begin, begin + size, uint8_t{0},
                         [](uint8_t a, uint8_t b) { return static_cast<uint8_t>(a + b); });
}

template <typename T>
T Get(const std::vector<uint8_t>& table, size_t at) {
  T value;
  std::memcpy(&value, table.data() + at, sizeof(T));
  return value;
}

struct Parsed {
  std::vector<uint8_t> cpu_apic_ids;
  std::vector<uint8_t> cpu_flags;
  int buses = 0;
  std::vector<uint8_t> ioapic_ids;
  std::vector<std::pair<uint8_t, uint8_t>> irq_to_pin;
  int local_interrupts = 0;
};

// Walks the configuration table the way the kernel's MP parser does.
Parsed Parse(const std::vector<uint8_t>& table) {
  Parsed out;
  constexpr size_t kHeader = 16;  // the configuration table follows the floating pointer
  uint16_t length = Get<uint16_t>(table, kHeader + 4);
  uint16_t count = Get<uint16_t>(table, kHeader + 34);
  size_t at = kHeader + 44;
  for (uint16_t i = 0; i < count; ++i) {
    EXPECT_LT(at, kHeader + length);
    switch (table[at]) {
      case 0:
        out.cpu_apic_ids.push_back(table[at + 1]);
        out.cpu_flags.push_back(table[at + 3]);
        at += 20;
        break;
      case 1:
        EXPECT_EQ(std::memcmp(&table[at + 2], "ISA   ", 6), 0);
        ++out.buses;
        at += 8;
        break;
      case 2:
        out.ioapic_ids.push_back(table[at + 1]);
        EXPECT_EQ(Get<uint32_t>(table, at + 4), kIoApicAddr);
        at += 8;
        break;
      case 3:
        out.irq_to_pin.emplace_back(table[at + 5], table[at + 7]);
        at += 8;
        break;
      case 4:
        ++out.local_interrupts;
        at += 8;
        break;
      default: ADD_FAILURE() << "unknown entry type " << int{table[at]}; return out;
    }
  }
  EXPECT_EQ(at, kHeader + length);
  return out;
}

TEST(MpTable, FloatingPointerAndHeaderAreValid) {
  auto table = BuildMpTable(2);
  ASSERT_TRUE(table) << table.error().ToString();
  ASSERT_GE(table->size(), 16u + 44u);
  EXPECT_EQ(std::memcmp(table->data(), "_MP_", 4), 0);
  EXPECT_EQ(Get<uint32_t>(*table, 4), kMpTableAddr + 16);
  EXPECT_EQ((*table)[8], 1);  // one 16-byte paragraph
  EXPECT_EQ((*table)[9], 4);  // spec 1.4
  EXPECT_EQ(Sum(table->data(), 16), 0);

  EXPECT_EQ(std::memcmp(table->data() + 16, "PCMP", 4), 0);
  uint16_t length = Get<uint16_t>(*table, 16 + 4);
  EXPECT_EQ(length + 16u, table->size());
  EXPECT_EQ(Sum(table->data() + 16, length), 0);
  EXPECT_EQ(Get<uint32_t>(*table, 16 + 36), kLocalApicAddr);
  EXPECT_LE(table->size(), kMpTableMaxSize);
}

TEST(MpTable, DescribesEveryVcpuTheIoApicAndTheIsaInterrupts) {
  for (uint32_t vcpus : {1u, 2u, 8u, 32u}) {
    SCOPED_TRACE(vcpus);
    auto table = BuildMpTable(vcpus);
    ASSERT_TRUE(table);
    Parsed p = Parse(*table);
    ASSERT_EQ(p.cpu_apic_ids.size(), vcpus);
    for (uint32_t i = 0; i < vcpus; ++i) {
      EXPECT_EQ(p.cpu_apic_ids[i], i);
      EXPECT_EQ(p.cpu_flags[i], i == 0 ? 3 : 1);  // enabled; only vCPU 0 is the BSP
    }
    EXPECT_EQ(p.buses, 1);
    ASSERT_EQ(p.ioapic_ids.size(), 1u);
    EXPECT_EQ(p.ioapic_ids[0], vcpus);  // distinct from every CPU's APIC id
    ASSERT_EQ(p.irq_to_pin.size(), 16u);
    for (uint8_t irq = 0; irq < 16; ++irq) {
      EXPECT_EQ(p.irq_to_pin[irq], std::make_pair(irq, irq));
    }
    EXPECT_EQ(p.local_interrupts, 2);
  }
}

TEST(MpTable, RefusesVcpuCountsItCannotDescribe) {
  EXPECT_FALSE(BuildMpTable(0));
  EXPECT_TRUE(BuildMpTable(kMaxMpVcpus));
  EXPECT_FALSE(BuildMpTable(kMaxMpVcpus + 1));
}

}  // namespace
}  // namespace vessel::vmm
