// A guest console's log file, which the guest fills: appended to up to a cap (the same on
// both engines), then one line saying the limit was reached; whatever comes after is
// dropped, so a chatty or hostile guest cannot fill the host's disk.
#pragma once

#include <cstdint>
#include <span>

#include "base/unique_fd.h"

namespace vessel {

inline constexpr uint64_t kMaxConsoleLogBytes = 8 << 20;

class CappedLog {
 public:
  // Writes to `fd` (owned; invalid: everything is dropped).
  explicit CappedLog(UniqueFd fd, uint64_t cap = kMaxConsoleLogBytes)
      : fd_(std::move(fd)), cap_(cap) {}

  // Appends what fits under the cap; best effort: a failed write drops the bytes.
  void Append(std::span<const uint8_t> bytes);
  // Bytes appended, the limit note included.
  [[nodiscard]] uint64_t written() const { return written_; }
  [[nodiscard]] bool truncated() const { return truncated_; }

 private:
  void Write(std::span<const uint8_t> bytes);

  UniqueFd fd_;
  uint64_t cap_;
  uint64_t written_ = 0;
  bool truncated_ = false;
};

}  // namespace vessel
