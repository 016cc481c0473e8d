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
// `snapshot verify`: the snapshot is damaged, or no snapshot (125: it could not check).
inline constexpr int kExitSnapshotDamaged = 1;

struct SandboxRecord;

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

// The engine named by --engine: qemu, kvm or auto.
std::optional<EngineKind> ParseEngine(const std::string& text);

// Applies one of the options `run` and `exec` share (--timeout, --env, --cwd,
// --output-cap). nullopt when `flag` is none of them; else 0, or the exit status of the
// usage error it printed.
std::optional<int> ParseExecOption(const std::string& flag, const std::string& value,
                                   ExecOptions& options);

// Writes everything to `fd`, retrying short writes. False when the fd refused (EPIPE...).
bool WriteAllTo(int fd, std::string_view data);
// A timestamped line on stderr, for the supervisor's log.
void Log(std::string_view message);

// For the commands that start sandboxes (create, restore, fork). Checks that the control
// socket paths fit and makes the runtime directory absolute for the supervisors.
[[nodiscard]] Result<void> PrepareToSupervise();
// kInvalidConfig when a sandbox has that name already.
[[nodiscard]] Result<void> CheckNameIsFree(const std::string& name);
// Starts `vessel __supervise supervise_args...` in the background and waits until its
// sandbox is ready; returns the new sandbox's id, or the error the supervisor reported.
// Call PrepareToSupervise() first. Thread safe.
[[nodiscard]] Result<std::string> StartSandbox(const Args& supervise_args);
// Stops the sandbox's supervisor if it runs (SIGTERM, then SIGKILL) and removes what is
// left of the sandbox.
[[nodiscard]] Result<void> StopAndRemove(const SandboxRecord& record);

int Run(const Args& args);
int Doctor();
int Create(const Args& args);
int Exec(const Args& args);
int Copy(const Args& args);
int List(const Args& args);
int Remove(const Args& args);
// `snapshot ID DIR` and `snapshot verify DIR`.
int Snapshot(const Args& args);
int Restore(const Args& args);
int Fork(const Args& args);
// The hidden command `create`, `restore` and `fork` start in the background: owns one
// sandbox until SIGTERM.
int Supervise(const Args& args);

}  // namespace vessel::cli
