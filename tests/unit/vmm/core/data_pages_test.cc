#include "vmm/core/data_pages.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

namespace vessel::vmm {
namespace {

constexpr uint64_t kPage = kDataPageSize;
constexpr uint64_t kPages = 256;  // 1 MiB
constexpr uint64_t kSize = kPages * kPage;

UniqueFd SizedMemfd(uint64_t size) {
  UniqueFd fd(memfd_create("data-pages-test", MFD_CLOEXEC));
  EXPECT_TRUE(fd);
  EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

uint64_t AllocatedPages(int fd) {
  struct stat st {};
  EXPECT_EQ(fstat(fd, &st), 0);
  return static_cast<uint64_t>(st.st_blocks) * 512 / kPage;
}

std::vector<uint8_t> Contents(int fd, uint64_t size) {
  std::vector<uint8_t> bytes(size);
  EXPECT_EQ(pread(fd, bytes.data(), size, 0), static_cast<ssize_t>(size));
  return bytes;
}

// Writes the page's index into its first byte and `fill` into the rest.
void FillPage(uint8_t* base, uint64_t page, uint8_t fill) {
  std::memset(base + page * kPage, fill, kPage);
  base[page * kPage] = static_cast<uint8_t>(page);
}

TEST(DataPages, AFreshVmsMemoryIsWrittenWithoutGrowing) {
  auto memory = GuestMemory::Create(kSize);
  ASSERT_TRUE(memory) << memory.error().ToString();
  uint8_t* base = memory->host_base();
  for (uint64_t page : {uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{100}, kPages - 1})
    FillPage(base, page, 0xa5);
  std::memset(base + 50 * kPage, 0, kPage);  // allocated, but zeros
  uint64_t allocated = AllocatedPages(memory->fd());
  ASSERT_EQ(allocated, 6u);

  UniqueFd out = SizedMemfd(kSize);
  ASSERT_TRUE(WriteDataPages(*memory, out.get()));
  EXPECT_EQ(AllocatedPages(memory->fd()), allocated) << "saving allocated the VM's holes";
  EXPECT_EQ(AllocatedPages(out.get()), 5u) << "pages of zeros were written";
  EXPECT_EQ(Contents(out.get(), kSize), std::vector<uint8_t>(base, base + kSize));
}

// A regular file of `size` bytes, all hole, unlinked: a snapshot's memory file on disk.
UniqueFd SizedTempFile(uint64_t size) {
  UniqueFd fd(::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  EXPECT_TRUE(fd);
  EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

// A restored VM maps a snapshot's file private, a fork's child the parent's memfd. Touching
// a hole of a memfd allocates it in the file; in a file on disk it does not, and only this
// process's pagemap knows the page.
class PrivateMapping : public testing::TestWithParam<bool> {};

TEST_P(PrivateMapping, AddsTheGuestsWritesToTheFilesData) {
  UniqueFd file = GetParam() ? SizedMemfd(kSize) : SizedTempFile(kSize);
  std::vector<uint8_t> page(kPage, 0x11);
  ASSERT_EQ(pwrite(file.get(), page.data(), kPage, 4 * kPage), static_cast<ssize_t>(kPage));
  ASSERT_EQ(pwrite(file.get(), page.data(), kPage, 9 * kPage), static_cast<ssize_t>(kPage));
  UniqueFd keep(dup(file.get()));
  std::vector<uint8_t> saved = Contents(keep.get(), kSize);
  auto memory = GuestMemory::Map(std::move(file), kSize, /*shared=*/false);
  ASSERT_TRUE(memory) << memory.error().ToString();
  uint8_t* base = memory->host_base();
  FillPage(base, 4, 0x22);                   // over the file's data
  FillPage(base, 40, 0x33);                  // over a hole of the file
  std::memset(base + 9 * kPage, 0, kPage);   // the file's data, zeroed by the guest
  volatile uint8_t read = base[70 * kPage];  // a hole, read: mapped, but zeros
  (void)read;

  auto candidates = CandidateDataPages(*memory);
  ASSERT_TRUE(candidates) << candidates.error().ToString();
  // A read maps the pages around it too (the kernel's fault-around): those are candidates,
  // read as zeros and skipped, but pages far from any touched one are not read at all.
  uint64_t marked = 0;
  for (uint64_t i = 0; i < candidates->size(); ++i) marked += (*candidates)[i] ? 1u : 0u;
  for (size_t i : {size_t{4}, size_t{9}, size_t{40}, size_t{70}})
    EXPECT_TRUE((*candidates)[i]) << "page " << i;
  EXPECT_LT(marked, kPages / 4) << "the whole memory is read, not this pagemap";
  for (uint64_t i = 128; i < kPages; ++i) ASSERT_FALSE((*candidates)[i]) << "page " << i;

  UniqueFd out = SizedMemfd(kSize);
  ASSERT_TRUE(WriteDataPages(*memory, out.get()));
  EXPECT_EQ(AllocatedPages(out.get()), 2u);
  EXPECT_EQ(Contents(out.get(), kSize), std::vector<uint8_t>(base, base + kSize));
  EXPECT_EQ(Contents(keep.get(), kSize), saved) << "the private mapping wrote its file";
}

INSTANTIATE_TEST_SUITE_P(DataPages, PrivateMapping, testing::Values(true, false),
                         [](const testing::TestParamInfo<bool>& param) {
                           return param.param ? "OfAMemfd" : "OfAFileOnDisk";
                         });

TEST(DataPages, AFrozenMemoryIsAPrivateOneOverItsFile) {
  auto memory = GuestMemory::Create(kSize);
  ASSERT_TRUE(memory) << memory.error().ToString();
  uint8_t* base = memory->host_base();
  FillPage(base, 0, 0x44);
  ASSERT_TRUE(memory->Freeze());
  std::vector<uint8_t> frozen = Contents(memory->fd(), kSize);
  FillPage(base, 200, 0x55);  // after the freeze: in this process only
  UniqueFd out = SizedMemfd(kSize);
  ASSERT_TRUE(WriteDataPages(*memory, out.get()));
  EXPECT_EQ(AllocatedPages(out.get()), 2u);
  EXPECT_EQ(Contents(out.get(), kSize), std::vector<uint8_t>(base, base + kSize));
  EXPECT_EQ(Contents(memory->fd(), kSize), frozen);
}

TEST(DataPages, AnEmptyMemoryWritesNothing) {
  auto memory = GuestMemory::Create(kSize);
  ASSERT_TRUE(memory) << memory.error().ToString();
  UniqueFd out = SizedMemfd(kSize);
  ASSERT_TRUE(WriteDataPages(*memory, out.get()));
  EXPECT_EQ(AllocatedPages(out.get()), 0u);
  EXPECT_EQ(AllocatedPages(memory->fd()), 0u);
}

}  // namespace
}  // namespace vessel::vmm
