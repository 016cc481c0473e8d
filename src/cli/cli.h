// What the CLI's commands share: exit statuses, argument parsing, error reporting, and
// the entry point of each command.
#pragma once

#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vessel/error.h"
#include "vessel/sandbox.h"

namespace vessel::cli {

// Exit statuses of `run` and `exec` besides the command's own.
inline constexpr int kExitTimedOut = 124;
inline constexpr int kExitVesselError = 125;

using Args = std::vector<std::string>;

// Prints "vessel: <message>" and the usage; returns kExitVesselError.
int UsageError(const std::string& message);
// Prints "vessel: <message>" on stderr.
void PrintError(std::string_view message);
// PrintError(message); returns kExitVesselError.
int Failure(std::string_view message);
int Failure(const Error& error);

template <typename T>
std::optional<T> ParseNumber(const std::string& text) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Applies one of the options `run` and `exec` share (--timeout, --env, --cwd,
// --output-cap). nullopt when `flag` is none of them; else 0, or the exit status of the
// usage error it printed.
std::optional<int> ParseExecOption(const std::string& flag, const std::string& value,
                                   ExecOptions& options);

// Writes everything to `fd`, retrying short writes. False when the fd refused (EPIPE...).
bool WriteAllTo(int fd, std::string_view data);
// A timestamped line on stderr, for the supervisor's log.
void Log(std::string_view message);

int Run(const Args& args);
int Doctor();
int Create(const Args& args);
int Exec(const Args& args);
int Copy(const Args& args);
int List(const Args& args);
int Remove(const Args& args);
// The hidden command `create` starts in the background: owns one sandbox until SIGTERM.
int Supervise(const Args& args);

}  // namespace vessel::cli
