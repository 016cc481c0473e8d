// Log lines a guest can cause (a corrupt ring, a failed device activation), rate-limited
// so that a guest repeating its mistake cannot grow vessel-vmm's log: a burst of
// kGuestLogBurst lines, then one per kGuestLogInterval, and when lines were dropped, the
// next line that passes says how many.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

namespace vessel::vmm {

inline constexpr uint32_t kGuestLogBurst = 20;
inline constexpr std::chrono::milliseconds kGuestLogInterval{1000};

class GuestLogLimiter {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  explicit GuestLogLimiter(Clock clock = std::chrono::steady_clock::now)
      : clock_(std::move(clock)), refilled_(clock_()) {}

  // The text to write for `line` (a "N guest-triggered lines suppressed" line before it
  // when some were), or empty when it is dropped.
  std::string Admit(std::string_view line);

 private:
  std::mutex mutex_;
  Clock clock_;
  std::chrono::steady_clock::time_point refilled_;
  uint32_t tokens_ = kGuestLogBurst;
  uint64_t suppressed_ = 0;
};

// Writes "vessel-vmm: <line>\n" to stderr (vmm.log) through the process's limiter.
void GuestLog(std::string_view line);

}  // namespace vessel::vmm
