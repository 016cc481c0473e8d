// The rate limit on log lines a guest can cause, on a fake clock.
#include "vmm/core/guest_log.h"

#include <gtest/gtest.h>

#include <string>

namespace vessel::vmm {
namespace {

using namespace std::chrono_literals;

class GuestLogLimiterTest : public ::testing::Test {
 protected:
  std::chrono::steady_clock::time_point now_{};
  GuestLogLimiter limiter_{[this] { return now_; }};
};

TEST_F(GuestLogLimiterTest, ABurstPassesThenLinesAreDropped) {
  for (uint32_t i = 0; i < kGuestLogBurst; ++i) {
    EXPECT_EQ(limiter_.Admit("bad ring"), "vessel-vmm: bad ring\n") << i;
  }
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(limiter_.Admit("bad ring"), "");
}

TEST_F(GuestLogLimiterTest, OneLinePerIntervalAfterwardsSayingHowManyWereDropped) {
  for (uint32_t i = 0; i < kGuestLogBurst + 5; ++i) (void)limiter_.Admit("x");
  now_ += kGuestLogInterval - 1ms;
  EXPECT_EQ(limiter_.Admit("x"), "");
  now_ += 1ms;
  EXPECT_EQ(limiter_.Admit("y"),
            "vessel-vmm: 6 guest-triggered log lines suppressed\nvessel-vmm: y\n");
  EXPECT_EQ(limiter_.Admit("z"), "");
}

TEST_F(GuestLogLimiterTest, AQuietGuestEarnsBackNoMoreThanABurst) {
  for (uint32_t i = 0; i < kGuestLogBurst; ++i) (void)limiter_.Admit("x");
  now_ += 1h;
  uint32_t passed = 0;
  for (int i = 0; i < 1000; ++i) passed += !limiter_.Admit("x").empty();
  EXPECT_EQ(passed, kGuestLogBurst);
}

// A flood of a million lines over ten simulated seconds writes a bounded amount.
TEST_F(GuestLogLimiterTest, AFloodWritesABoundedLog) {
  size_t bytes = 0;
  for (int i = 0; i < 1'000'000; ++i) {
    if (i % 100'000 == 0) now_ += 1s;
    bytes += limiter_.Admit(std::string(200, 'q')).size();
  }
  EXPECT_LE(bytes, (kGuestLogBurst + 10) * 300u);
}

}  // namespace
}  // namespace vessel::vmm
