// Child processes that cannot outlive their owner.
//
// Every child is forked by one long-lived spawner thread, because PR_SET_PDEATHSIG fires
// when the forking *thread* exits, not the process: a VM created from a short-lived
// thread must not die with that thread, and must die with the process.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/jail.h"
#include "vessel/error.h"

namespace vessel {

struct SpawnOptions {
  std::vector<std::string> argv;  // argv[0] is a path or looked up in PATH
  // Descriptors the child inherits at the same numbers; every other one is closed.
  std::vector<int> inherit_fds;
  // stdout and stderr of the child are appended here; empty: /dev/null.
  std::string output_path;
  // Resource limits set in the child before exec, soft and hard alike: {RLIMIT_*, value}.
  std::vector<std::pair<int, uint64_t>> rlimits;
  // When set, the child starts in this jail (base/jail.h): its paths are the jail's, and
  // its pid, as the caller sees it, is the pid namespace's init.
  std::optional<JailSpec> jail;
  // When set, the child joins this cgroup (the path of its cgroup.procs) before anything
  // else, so all it starts is accounted there.
  std::string cgroup_procs;
};

// The limits every VMM process (QEMU, vessel-vmm) runs under: no core dumps, which would
// write guest memory to disk, and a bounded number of open files.
inline constexpr uint64_t kVmmOpenFiles = 4096;
std::vector<std::pair<int, uint64_t>> VmmLimits();

class Subprocess {
 public:
  Subprocess() = default;
  Subprocess(Subprocess&& other) noexcept
      : pid_(std::exchange(other.pid_, -1)), status_(other.status_) {}
  Subprocess& operator=(Subprocess&& other) noexcept;
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  // Kills and reaps the child if it still runs.
  ~Subprocess() { Kill(); }

  // The child is killed with SIGKILL when this process dies.
  [[nodiscard]] static Result<Subprocess> Spawn(const SpawnOptions& options);

  [[nodiscard]] pid_t pid() const { return pid_; }
  // True while the child has not been reaped. Reaps it when it has exited.
  [[nodiscard]] bool Running();
  // Wait status once reaped.
  [[nodiscard]] std::optional<int> status() const { return status_; }
  // Waits up to `timeout` for the child to exit on its own.
  bool WaitFor(std::chrono::milliseconds timeout);
  // SIGKILL and reap. Idempotent.
  void Kill();

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// Runs `argv` to completion and returns what it wrote to stdout and stderr, at most
// `max_bytes` of it. kBackend when it exits with a non-zero status or is still running
// after `timeout` (then it is killed); kHostIo when it cannot be started.
[[nodiscard]] Result<std::string> RunForOutput(const std::vector<std::string>& argv,
                                               std::chrono::milliseconds timeout,
                                               size_t max_bytes = 64 * 1024);

}  // namespace vessel
