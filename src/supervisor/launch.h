// Starting and stopping supervisors (supervisor.h) from another process: what `vessel
// create`, `restore`, `fork` and `rm` do, and what a server will do.
//
// A supervisor is this very program started again as `<program> __supervise CONFIG`,
// CONFIG being EncodeSupervisorConfig()'s JSON: a program that starts sandboxes must hand
// that command to RunSupervisor().
#pragma once

#include <string>

#include "supervisor/state.h"
#include "supervisor/supervisor.h"
#include "vessel/error.h"

namespace vessel::supervisor {

inline constexpr const char* kSuperviseCommand = "__supervise";

// For the commands that start sandboxes. Checks that the control socket paths fit and
// makes the runtime directory absolute for the supervisors, which run in /.
[[nodiscard]] Result<void> PrepareToSupervise();
// kInvalidConfig when a sandbox has that name already.
[[nodiscard]] Result<void> CheckNameIsFree(const std::string& name);
// Starts a supervisor with `config` (its ready_fd is set here) in the background, in a
// session of its own, and waits until its sandbox is ready; returns the new sandbox's id,
// or the error the supervisor reported. Paths in `config` must be absolute. Call
// PrepareToSupervise() first. Thread safe.
[[nodiscard]] Result<std::string> StartSandbox(SupervisorConfig config);
// Stops the sandbox's supervisor if it runs (SIGTERM, then SIGKILL) and removes what is
// left of the sandbox.
[[nodiscard]] Result<void> StopAndRemove(const SandboxRecord& record);

}  // namespace vessel::supervisor
