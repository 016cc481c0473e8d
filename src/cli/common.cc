#include <fmt/chrono.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>

#include "cli/cli.h"

namespace vessel::cli {

std::optional<EngineKind> ParseEngine(const std::string& text) {
  if (text == "auto") return EngineKind::kAuto;
  if (text == "qemu") return EngineKind::kQemu;
  if (text == "kvm") return EngineKind::kKvm;
  return std::nullopt;
}

void PrintError(std::string_view message) { fmt::print(stderr, "vessel: {}\n", message); }

int Failure(std::string_view message) {
  PrintError(message);
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

std::optional<int> ParseExecOption(const std::string& flag, const std::string& value,
                                   ExecOptions& options) {
  if (flag == "--timeout") {
    auto n = ParseNumber<double>(value);
    if (!n || *n <= 0 || *n > 4e6)
      return UsageError("--timeout wants a positive number of seconds");
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(*n * 1000));
  } else if (flag == "--env") {
    options.env.push_back(value);
  } else if (flag == "--cwd") {
    options.cwd = value;
  } else if (flag == "--output-cap") {
    auto n = ParseNumber<uint64_t>(value);
    if (!n) return UsageError("--output-cap wants a number of bytes");
    options.output_cap = *n;
  } else {
    return std::nullopt;
  }
  return 0;
}

}  // namespace vessel::cli
