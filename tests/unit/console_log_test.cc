// The capped console log: everything up to the cap, one note, then nothing.
#include "base/console_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace vessel {
namespace {

class CappedLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/vessel-console-log-XXXXXX";
    fd_ = ::mkstemp(pattern);
    ASSERT_GE(fd_, 0);
    path_ = pattern;
  }
  void TearDown() override { ::unlink(path_.c_str()); }
  std::string Contents() const {
    std::string out(1 << 16, '\0');
    ssize_t n = ::pread(fd_, out.data(), out.size(), 0);
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
  }
  static std::span<const uint8_t> Bytes(const std::string& s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
  }
  int fd_ = -1;
  std::string path_;
};

TEST_F(CappedLogTest, KeepsEverythingUnderTheCap) {
  CappedLog log(UniqueFd(::dup(fd_)), 100);
  log.Append(Bytes("hello "));
  log.Append(Bytes("world"));
  EXPECT_EQ(Contents(), "hello world");
  EXPECT_FALSE(log.truncated());
}

TEST_F(CappedLogTest, StopsAtTheCapWithOneNote) {
  CappedLog log(UniqueFd(::dup(fd_)), 10);
  log.Append(Bytes("0123456"));
  log.Append(Bytes("789abcdef"));
  for (int i = 0; i < 1000; ++i) log.Append(Bytes("more"));
  std::string got = Contents();
  EXPECT_EQ(got.substr(0, 10), "0123456789");
  EXPECT_EQ(got.substr(10), "\n[vessel: console log limit reached]\n");
  EXPECT_TRUE(log.truncated());
  EXPECT_EQ(log.written(), got.size());
}

TEST_F(CappedLogTest, AnInvalidDescriptorDropsEverything) {
  CappedLog log(UniqueFd(), 10);
  log.Append(Bytes("0123456789abc"));
  EXPECT_TRUE(log.truncated());
  EXPECT_EQ(Contents(), "");
}

}  // namespace
}  // namespace vessel
