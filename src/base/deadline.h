// A point in time after which a blocking operation gives up.
#pragma once

#include <algorithm>
#include <chrono>
#include <optional>

namespace vessel {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  static Deadline Never() { return Deadline(std::nullopt); }
  static Deadline After(std::chrono::milliseconds d) { return Deadline(Clock::now() + d); }

  [[nodiscard]] bool never() const { return !at_; }
  [[nodiscard]] bool Expired() const { return at_ && Clock::now() >= *at_; }
  // Milliseconds left for poll(2): -1 for never, 0 when expired, rounded up otherwise.
  [[nodiscard]] int PollTimeoutMs() const {
    if (!at_) return -1;
    auto left = std::chrono::ceil<std::chrono::milliseconds>(*at_ - Clock::now()).count();
    return static_cast<int>(std::clamp<long long>(left, 0, 24 * 3600 * 1000));
  }
  [[nodiscard]] Deadline Min(Deadline other) const {
    if (!at_) return other;
    if (!other.at_) return *this;
    return Deadline(std::min(*at_, *other.at_));
  }

 private:
  explicit Deadline(std::optional<Clock::time_point> at) : at_(at) {}
  std::optional<Clock::time_point> at_;
};

}  // namespace vessel
