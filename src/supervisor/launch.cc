#include "supervisor/launch.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <vector>

#include "supervisor/supervisor_protocol.h"

namespace vessel::supervisor {
namespace {

// How long `rm` lets a supervisor shut down cleanly before it kills it.
constexpr auto kStopTimeout = std::chrono::seconds(10);
constexpr auto kKillTimeout = std::chrono::seconds(5);
// A stand-in for an engine-made id (12 hex digits), to check path lengths before boot.
constexpr const char* kIdForLengthCheck = "000000000000";

// Reads what the supervisor reports until it closes the pipe.
std::string ReadReport(int fd) {
  std::string report;
  char buf[4096];
  while (report.size() < kMaxReportSize) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    report.append(buf, static_cast<size_t>(n));
  }
  return report;
}

// Starts `vessel __supervise CONFIG` detached: its own session, no terminal, stdio on
// /dev/null until it opens its log, and no descriptor of ours but the report pipe.
Result<pid_t> StartSupervisor(const SupervisorConfig& config) {
  std::vector<std::string> argv = {"vessel", kSuperviseCommand, EncodeSupervisorConfig(config)};
  int report_fd = config.ready_fd;
  std::vector<char*> c_argv;
  for (auto& a : argv) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Fail(Error::HostIo("fork the supervisor", errno));
  if (pid == 0) {
    ::setsid();
    int null = ::open("/dev/null", O_RDWR);
    if (null < 0 || ::dup2(null, 0) < 0 || ::dup2(null, 1) < 0 || ::dup2(null, 2) < 0) _exit(127);
    if (::chdir("/") != 0) _exit(127);
    ::syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
    ::fcntl(report_fd, F_SETFD, 0);
    ::execv("/proc/self/exe", c_argv.data());
    _exit(127);
  }
  return pid;
}

bool WaitUntilStopped(const std::string& id, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (SupervisorAlive(id)) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

}  // namespace

Result<void> PrepareToSupervise() {
  if (auto fits = CheckSocketPath(ControlSocketPath(kIdForLengthCheck)); !fits) return fits;
  // The supervisor runs in /, where a relative runtime directory would be another one.
  if (const char* dir = std::getenv("VESSEL_RUNTIME_DIR"); dir && *dir && *dir != '/') {
    std::error_code ec;
    ::setenv("VESSEL_RUNTIME_DIR", std::filesystem::absolute(dir, ec).c_str(), 1);
  }
  return {};
}

Result<void> CheckNameIsFree(const std::string& name) {
  auto ids = ListSandboxIds();
  if (!ids) return Fail(std::move(ids).error());
  for (const auto& id : *ids) {
    auto record = ReadRecord(id);
    if (record && record->name == name) {
      return Fail(Error::InvalidConfig(
          "name", fmt::format("a sandbox named {} exists already ({}); remove it first with "
                              "vessel rm {}",
                              name, id, name)));
    }
  }
  return {};
}

Result<std::string> StartSandbox(SupervisorConfig config) {
  int report_pipe[2];
  if (::pipe2(report_pipe, O_CLOEXEC) != 0) return Fail(Error::HostIo("pipe", errno));
  UniqueFd report_read(report_pipe[0]);
  UniqueFd report_write(report_pipe[1]);
  config.ready_fd = report_write.get();
  auto pid = StartSupervisor(config);
  if (!pid) return Fail(std::move(pid).error());
  report_write.Reset();
  std::string report = ReadReport(report_read.get());
  if (!report.empty()) {
    auto id = ParseReport(report);
    if (id) return id;
    // One that reported an error exits by itself; one that made no sense is stopped.
    if (!report.starts_with("error ")) ::kill(*pid, SIGTERM);
    ::waitpid(*pid, nullptr, 0);
    return id;
  }
  int status = 0;
  ::waitpid(*pid, &status, 0);
  return Fail(Error::Backend(fmt::format(
      "the sandbox's supervisor exited before the VM was ready (wait status {})", status)));
}

Result<void> StopAndRemove(const SandboxRecord& record) {
  const std::string& id = record.id;
  if (SupervisorAlive(id)) {
    // The lock is held, so the pid in state.json is the live supervisor's, not a reused one.
    if (record.pid <= 1) {
      return Fail(Error::Backend(
          fmt::format("sandbox {} is running but its state names no supervisor pid", id)));
    }
    // The pid signalled is the one the kernel names as the control socket's listener
    // when the socket answers; it must be the one state.json names.
    if (auto control = ConnectControl(ControlSocketPath(id))) {
      auto peer = PeerOfThisUser(control->get());
      if (!peer) return Fail(std::move(peer).error());
      if (*peer != record.pid) {
        return Fail(Error::Backend(fmt::format(
            "sandbox {}: its state names pid {} but its control socket is served by pid {}; "
            "refusing to signal either",
            id, record.pid, *peer)));
      }
    }
    ::kill(record.pid, SIGTERM);
    if (!WaitUntilStopped(id, kStopTimeout)) {
      ::kill(record.pid, SIGKILL);
      if (!WaitUntilStopped(id, kKillTimeout)) {
        return Fail(Error::Backend(
            fmt::format("sandbox {}: its supervisor (pid {}) does not stop", id, record.pid)));
      }
    }
  }
  RemoveSandboxState(id);
  return {};
}

}  // namespace vessel::supervisor
