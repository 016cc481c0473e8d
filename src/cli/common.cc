#include <fmt/chrono.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>

#include "cli/cli.h"

namespace vessel::cli {

int Failure(std::string_view message) {
  fmt::print(stderr, "vessel: {}\n", message);
  return kExitVesselError;
}

int Failure(const Error& error) { return Failure(error.ToString()); }

bool WriteAllTo(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

void Log(std::string_view message) {
  auto now = std::chrono::floor<std::chrono::milliseconds>(std::chrono::system_clock::now());
  std::string line = fmt::format("{:%Y-%m-%dT%H:%M:%S}Z {}\n", now, message);
  (void)WriteAllTo(STDERR_FILENO, line);
}

}  // namespace vessel::cli
