// The supervisor: the process that owns one sandbox which outlives the command that made
// it (`vessel create`, `restore`, `fork`).
//
// It boots the VM (or restores it from a snapshot), publishes the sandbox's state
// directory (state.h), reports "ready <id>" (or the error) on the pipe its starter waits
// on, then serves the control socket (control_proxy.h) until SIGTERM. The VMM is its
// child and dies with it (PR_SET_PDEATHSIG), so a supervisor killed outright leaves no VM
// running: `ls` shows it dead, `rm` removes what is left.
#pragma once

#include <string>
#include <string_view>

#include "vessel/error.h"
#include "vessel/sandbox.h"

namespace vessel::supervisor {

// What a supervisor is started with, as one JSON object on its command line.
struct SupervisorConfig {
  int ready_fd = -1;  // the pipe that gets the start-up report; inherited
  // The machine to boot; for a restore only name and engine count (the rest is the
  // snapshot's).
  SandboxConfig sandbox;
  std::string restore_dir;  // set: restore the snapshot in it instead of booting; absolute
  // For a restore: sandbox.network replaces the egress policy the snapshot carries.
  bool replace_network = false;
  std::string forked_from;  // the parent's id, for a child of `fork`
  // Set: the sandbox's id, which must be free (a paused sandbox resumes under its own);
  // else the VM's. 1 to 64 lowercase hex digits.
  std::string id;
};

[[nodiscard]] std::string EncodeSupervisorConfig(const SupervisorConfig& config);
// kInvalidConfig with subject "supervisor config" naming the field that is missing, of
// the wrong type or out of range, or unknown.
[[nodiscard]] Result<SupervisorConfig> ParseSupervisorConfig(std::string_view json);

// Runs the supervisor until SIGTERM, SIGINT or SIGHUP; returns the process's exit status.
// Takes over the process: its signal mask, SIGPIPE, stdout and stderr (to the log).
[[nodiscard]] int RunSupervisor(SupervisorConfig config);

}  // namespace vessel::supervisor
