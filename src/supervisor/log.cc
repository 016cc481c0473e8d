#include "supervisor/log.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <span>
#include <string>

#include "base/io.h"

namespace vessel::supervisor {

void Log(std::string_view message) {
  auto now = std::chrono::floor<std::chrono::milliseconds>(std::chrono::system_clock::now());
  std::string line = fmt::format("{:%Y-%m-%dT%H:%M:%S}Z {}\n", now, message);
  // Nowhere to report a log that cannot be written.
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(line.data()), line.size());
  (void)WriteAll(STDERR_FILENO, bytes, Deadline::Never(), "writing the log");
}

}  // namespace vessel::supervisor
