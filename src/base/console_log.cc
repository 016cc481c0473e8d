#include "base/console_log.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string_view>

namespace vessel {
namespace {

constexpr std::string_view kLimitNote = "\n[vessel: console log limit reached]\n";

}  // namespace

void CappedLog::Append(std::span<const uint8_t> bytes) {
  if (truncated_) return;
  uint64_t room = cap_ > written_ ? cap_ - written_ : 0;
  Write(bytes.first(static_cast<size_t>(std::min<uint64_t>(room, bytes.size()))));
  if (bytes.size() > room) {
    Write({reinterpret_cast<const uint8_t*>(kLimitNote.data()), kLimitNote.size()});
    truncated_ = true;
  }
}

void CappedLog::Write(std::span<const uint8_t> bytes) {
  written_ += bytes.size();
  size_t done = 0;
  while (fd_ && done < bytes.size()) {
    ssize_t n = ::write(fd_.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace vessel
