#include "vmm/core/guest_memory.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <fstream>
#include <string>

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

// A memfd of `size` bytes whose first byte is `first`.
UniqueFd MemoryFile(uint64_t size, uint8_t first) {
  UniqueFd fd(memfd_create("guest-memory-test", MFD_CLOEXEC));
  EXPECT_TRUE(fd);
  EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  EXPECT_EQ(pwrite(fd.get(), &first, 1, 0), 1);
  return fd;
}

uint8_t FirstByte(int fd) {
  uint8_t byte = 0;
  EXPECT_EQ(pread(fd, &byte, 1, 0), 1);
  return byte;
}

TEST(GuestMemory, AFileMappedSharedIsWrittenAndOnePrivateIsNot) {
  constexpr uint64_t kSize = 1 << 20;
  UniqueFd shared_file = MemoryFile(kSize, 1);
  int shared_fd = shared_file.get();
  auto shared = GuestMemory::Map(std::move(shared_file), kSize, /*shared=*/true);
  ASSERT_TRUE(shared) << shared.error().ToString();
  EXPECT_EQ(shared->host_base()[0], 1);
  shared->host_base()[0] = 2;
  EXPECT_EQ(FirstByte(shared_fd), 2);

  UniqueFd saved = MemoryFile(kSize, 3);
  UniqueFd keep(dup(saved.get()));
  auto copy = GuestMemory::Map(std::move(saved), kSize, /*shared=*/false);
  ASSERT_TRUE(copy) << copy.error().ToString();
  EXPECT_FALSE(copy->shared());
  EXPECT_EQ(copy->host_base()[0], 3);
  copy->host_base()[0] = 4;
  EXPECT_EQ(FirstByte(keep.get()), 3) << "a private mapping wrote its file";
}

TEST(GuestMemory, FreezingKeepsTheFileAsItIsAndTheGuestsViewTheSame) {
  constexpr uint64_t kSize = 1 << 20;
  UniqueFd file = MemoryFile(kSize, 0);
  UniqueFd keep(dup(file.get()));
  auto memory = GuestMemory::Map(std::move(file), kSize, /*shared=*/true);
  ASSERT_TRUE(memory) << memory.error().ToString();
  uint8_t* base = memory->host_base();
  base[0] = 5;
  base[kSize - 1] = 6;
  ASSERT_TRUE(memory->Freeze());
  EXPECT_FALSE(memory->shared());
  EXPECT_EQ(memory->host_base(), base) << "the host address of guest RAM moved";
  EXPECT_EQ(base[0], 5);
  EXPECT_EQ(base[kSize - 1], 6);
  base[0] = 7;
  EXPECT_EQ(FirstByte(keep.get()), 5) << "the frozen file changed";
  EXPECT_TRUE(memory->Freeze()) << "freezing twice is harmless";
}

uint64_t AllocatedPages(int fd) {
  struct stat st {};
  EXPECT_EQ(fstat(fd, &st), 0);
  return static_cast<uint64_t>(st.st_blocks) * 512 / 4096;
}

// The mappings (lines of /proc/self/maps) that lie within [begin, end).
size_t MappingsWithin(const uint8_t* begin, const uint8_t* end) {
  std::ifstream maps("/proc/self/maps");
  size_t count = 0;
  for (std::string line; std::getline(maps, line);) {
    uintptr_t from = std::stoull(line.substr(0, line.find('-')), nullptr, 16);
    if (from >= reinterpret_cast<uintptr_t>(begin) && from < reinterpret_cast<uintptr_t>(end)) {
      ++count;
    }
  }
  return count;
}

TEST(GuestMemory, AfterAFreezeTheGuestsWritesInHolesDoNotGrowTheFile) {
  constexpr uint64_t kSize = 4 << 20;
  auto memory = GuestMemory::Create(kSize);
  ASSERT_TRUE(memory) << memory.error().ToString();
  uint8_t* base = memory->host_base();
  base[0] = 1;
  base[2 << 20] = 2;
  ASSERT_TRUE(memory->Freeze());
  base[100 * 4096] = 3;            // in the hole between the two
  base[(3 << 20) + 5] = 4;         // in the hole at the end
  EXPECT_EQ(base[200 * 4096], 0);  // a hole read
  EXPECT_EQ(AllocatedPages(memory->fd()), 2u) << "the guest's writes allocated the template";
  EXPECT_EQ(base[0], 1);
  EXPECT_EQ(base[2 << 20], 2);
  EXPECT_EQ(base[100 * 4096], 3);
  EXPECT_EQ(base[(3 << 20) + 5], 4);
  uint8_t byte = 9;
  ASSERT_EQ(pread(memory->fd(), &byte, 1, 100 * 4096), 1);
  EXPECT_EQ(byte, 0) << "a private mapping wrote its file";
}

TEST(GuestMemory, ARestoredMappingKeepsTheFilesDataAndTakesItsHolesAnonymously) {
  constexpr uint64_t kSize = 1 << 20;
  UniqueFd file = MemoryFile(kSize, 7);
  uint8_t last = 8;
  ASSERT_EQ(pwrite(file.get(), &last, 1, kSize - 1), 1);
  UniqueFd keep(dup(file.get()));
  auto memory = GuestMemory::Map(std::move(file), kSize, /*shared=*/false);
  ASSERT_TRUE(memory) << memory.error().ToString();
  ASSERT_TRUE(memory->MapHolesAnonymously());
  uint8_t* base = memory->host_base();
  EXPECT_EQ(base[0], 7);
  EXPECT_EQ(base[kSize - 1], 8);
  EXPECT_EQ(base[kSize / 2], 0);
  base[kSize / 2] = 9;
  EXPECT_EQ(base[kSize / 2], 9);
  EXPECT_EQ(AllocatedPages(keep.get()), 2u);
}

TEST(GuestMemory, OnlyTheLargestHolesAreMappedAnonymouslyAndBoundedInNumber) {
  // A page of data every 128 KiB: more holes of 124 KiB than are mapped anonymously.
  constexpr uint64_t kStride = 128 * 1024;
  constexpr uint64_t kHoles = kMaxAnonymousHoles + 100;
  constexpr uint64_t kSize = kHoles * kStride;
  UniqueFd file(memfd_create("guest-memory-test", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(file.get(), static_cast<off_t>(kSize)), 0);
  for (uint64_t at = 0; at < kSize; at += kStride) {
    uint8_t byte = static_cast<uint8_t>(at / kStride) | 1;
    ASSERT_EQ(pwrite(file.get(), &byte, 1, static_cast<off_t>(at)), 1);
  }
  auto memory = GuestMemory::Map(std::move(file), kSize, /*shared=*/false);
  ASSERT_TRUE(memory) << memory.error().ToString();
  ASSERT_TRUE(memory->MapHolesAnonymously());
  uint8_t* base = memory->host_base();
  EXPECT_LE(MappingsWithin(base, base + kSize), 2 * kMaxAnonymousHoles + 1);
  EXPECT_GT(MappingsWithin(base, base + kSize), kMaxAnonymousHoles);
  for (uint64_t at = 0; at < kSize; at += kStride) {
    ASSERT_EQ(base[at], static_cast<uint8_t>(at / kStride) | 1) << at;
    ASSERT_EQ(base[at + 4096], 0) << at;
  }
}

TEST(GuestMemory, AFileOfAnotherSizeIsRefused) {
  for (uint64_t file_size : {uint64_t{0}, uint64_t{1} << 19, uint64_t{3} << 20}) {
    auto memory = GuestMemory::Map(MemoryFile(file_size, 0), 1 << 20, /*shared=*/false);
    ASSERT_FALSE(memory) << file_size;
    EXPECT_EQ(memory.error().kind(), ErrorKind::kInvalidConfig);
  }
}

}  // namespace
}  // namespace vessel::vmm
