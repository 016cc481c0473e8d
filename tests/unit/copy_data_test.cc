// CopyDataSkippingZeros: a snapshot's memory is written from the VM's memfd this way.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "base/io.h"

namespace vessel {
namespace {

constexpr off_t kPage = 4096;
constexpr off_t kSize = 64 * kPage;

class CopyDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    in_ = UniqueFd(static_cast<int>(::memfd_create("copy-data-test", MFD_CLOEXEC)));
    ASSERT_TRUE(in_);
    ASSERT_EQ(::ftruncate(in_.get(), kSize), 0);
    char pattern[] = "/tmp/vessel-copy-data-XXXXXX";
    out_ = UniqueFd(::mkstemp(pattern));
    ASSERT_TRUE(out_);
    path_ = pattern;
    ASSERT_EQ(::ftruncate(out_.get(), kSize), 0);
  }
  void TearDown() override { ::unlink(path_.c_str()); }

  void Put(int fd, off_t at, const std::string& data) {
    ASSERT_EQ(::pwrite(fd, data.data(), data.size(), at), static_cast<ssize_t>(data.size()));
  }
  static std::string All(int fd) {
    std::string data(kSize, '\0');
    EXPECT_EQ(::pread(fd, data.data(), data.size(), 0), kSize);
    return data;
  }
  // Bytes of `out` the file system holds (holes take none).
  blkcnt_t Allocated() {
    struct stat st {};
    EXPECT_EQ(::fstat(out_.get(), &st), 0);
    return st.st_blocks * 512;
  }

  UniqueFd in_;
  UniqueFd out_;
  std::string path_;
};

TEST_F(CopyDataTest, DataIsCopiedToItsOffsetsAndHolesStayHoles) {
  Put(in_.get(), 0, "first page");
  Put(in_.get(), 10 * kPage + 100, std::string(3 * kPage, 'x'));  // spans four pages
  Put(in_.get(), kSize - 1, "z");                                 // the last byte
  ASSERT_TRUE(CopyDataSkippingZeros(in_.get(), out_.get(), kSize));
  EXPECT_EQ(All(out_.get()), All(in_.get()));
  ::fsync(out_.get());
  EXPECT_LE(Allocated(), 6 * kPage);  // the six pages written, not the 64
}

TEST_F(CopyDataTest, PagesOfZerosBecomeHoles) {
  Put(in_.get(), 0, std::string(8 * kPage, '\0'));  // written, but zeros
  Put(in_.get(), 3 * kPage + 5, "data");
  Put(in_.get(), 20 * kPage, std::string(2 * kPage, '\0') + "after" + std::string(kPage, '\0'));
  ASSERT_TRUE(CopyDataSkippingZeros(in_.get(), out_.get(), kSize));
  EXPECT_EQ(All(out_.get()), All(in_.get()));
  ::fsync(out_.get());
  EXPECT_LE(Allocated(), 2 * kPage);  // the two pages with data
}

TEST_F(CopyDataTest, AnEmptyFileCopiesNothing) {
  ASSERT_TRUE(CopyDataSkippingZeros(in_.get(), out_.get(), kSize));
  EXPECT_EQ(All(out_.get()), std::string(kSize, '\0'));
  EXPECT_EQ(Allocated(), 0);
}

TEST_F(CopyDataTest, OnlyTheFirstSizeBytesAreCopied) {
  Put(in_.get(), 0, "kept");
  Put(in_.get(), 8 * kPage, "beyond");
  ASSERT_TRUE(CopyDataSkippingZeros(in_.get(), out_.get(), 8 * kPage));
  std::string out = All(out_.get());
  EXPECT_EQ(out.substr(0, 4), "kept");
  EXPECT_EQ(out.substr(8 * kPage, 6), std::string(6, '\0'));
}

TEST_F(CopyDataTest, AnUnreadableSourceIsAnError) {
  UniqueFd directory(::open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(directory);
  auto r = CopyDataSkippingZeros(directory.get(), out_.get(), kSize);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), ErrorKind::kHostIo);
}

}  // namespace
}  // namespace vessel
