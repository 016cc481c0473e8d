#include "vmm/core/guest_log.h"

#include <fmt/format.h>

#include <cstdio>

namespace vessel::vmm {

std::string GuestLogLimiter::Admit(std::string_view line) {
  std::lock_guard lock(mutex_);
  auto now = clock_();
  if (now > refilled_) {
    auto earned = (now - refilled_) / kGuestLogInterval;
    if (earned > 0) {
      tokens_ = static_cast<uint32_t>(
          std::min<int64_t>(kGuestLogBurst, int64_t{tokens_} + static_cast<int64_t>(earned)));
      refilled_ += earned * kGuestLogInterval;
    }
  }
  if (tokens_ == 0) {
    ++suppressed_;
    return {};
  }
  --tokens_;
  std::string out;
  if (suppressed_ > 0) {
    out = fmt::format("vessel-vmm: {} guest-triggered log lines suppressed\n", suppressed_);
    suppressed_ = 0;
  }
  out += fmt::format("vessel-vmm: {}\n", line);
  return out;
}

void GuestLog(std::string_view line) {
  static GuestLogLimiter limiter;
  std::string text = limiter.Admit(line);
  if (!text.empty()) std::fwrite(text.data(), 1, text.size(), stderr);
}

}  // namespace vessel::vmm
