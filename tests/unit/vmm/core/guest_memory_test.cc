#include "vmm/core/guest_memory.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>

namespace vessel::vmm {
namespace {

TEST(GuestMemory, SmallGuestIsOneRegionFromZero) {
  auto mem = GuestMemory::Create(16 << 20);
  ASSERT_TRUE(mem) << mem.error().ToString();
  ASSERT_EQ(mem->regions().size(), 1u);
  EXPECT_EQ(mem->regions()[0].guest_addr, 0u);
  EXPECT_EQ(mem->regions()[0].size, 16u << 20);
}

TEST(GuestMemory, RefusesEmptyAndUnalignedSizes) {
  EXPECT_FALSE(GuestMemory::Create(0));
  EXPECT_FALSE(GuestMemory::Create(4097));
}

TEST(GuestMemory, SliceAcceptsOnlyRangesInsideRam) {
  auto mem = GuestMemory::Create(1 << 20);
  ASSERT_TRUE(mem);
  EXPECT_TRUE(mem->Slice(0, 1 << 20));
  EXPECT_TRUE(mem->Slice((1 << 20) - 1, 1));
  EXPECT_TRUE(mem->Slice(1 << 20, 0));  // empty slice at the very end
  EXPECT_FALSE(mem->Slice(1 << 20, 1));
  EXPECT_FALSE(mem->Slice((1 << 20) - 1, 2));
  EXPECT_FALSE(mem->Slice(UINT64_MAX, 2));  // wraps
  EXPECT_FALSE(mem->Slice(8, UINT64_MAX));  // wraps
  EXPECT_FALSE(mem->Slice(kMmioHoleStart, 4));
}

TEST(GuestMemory, ReadWriteRoundTripAndOutOfBounds) {
  auto mem = GuestMemory::Create(1 << 20);
  ASSERT_TRUE(mem);
  ASSERT_TRUE(mem->WriteObj<uint32_t>(0x1000, 0xdeadbeef));
  EXPECT_EQ(mem->ReadObj<uint32_t>(0x1000), 0xdeadbeefu);
  EXPECT_FALSE(mem->ReadObj<uint64_t>((1 << 20) - 4));
  EXPECT_FALSE(mem->WriteObj<uint64_t>((1 << 20) - 4, 1));
}

TEST(GuestMemory, LargeGuestSkipsTheMmioHole) {
  // 4 GiB of RAM: 3 GiB below the hole, 1 GiB above 4 GiB. The memfd is sparse, so this
  // costs no memory.
  auto mem = GuestMemory::Create(4ull << 30);
  ASSERT_TRUE(mem) << mem.error().ToString();
  ASSERT_EQ(mem->regions().size(), 2u);
  EXPECT_EQ(mem->regions()[0].size, kMmioHoleStart);
  EXPECT_EQ(mem->regions()[1].guest_addr, kMmioHoleEnd);
  EXPECT_EQ(mem->regions()[1].size, (4ull << 30) - kMmioHoleStart);
  EXPECT_TRUE(mem->Slice(kMmioHoleStart - 4, 4));
  EXPECT_FALSE(mem->Slice(kMmioHoleStart - 4, 8));  // runs into the hole
  EXPECT_FALSE(mem->Slice(kMmioHoleStart + 0x1000, 4));
  EXPECT_TRUE(mem->Slice(kMmioHoleEnd, 4));
  EXPECT_FALSE(mem->Slice(kMmioHoleEnd + (1ull << 30) - 2, 4));
  ASSERT_TRUE(mem->WriteObj<uint32_t>(kMmioHoleEnd, 7));
  EXPECT_EQ(mem->host_base()[kMmioHoleStart], 7);  // above 4 GiB follows the low region
}

}  // namespace
}  // namespace vessel::vmm
