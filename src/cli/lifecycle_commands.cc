// `vessel create`, `ls` and `rm`: sandboxes that outlive the command that made them; and
// what `restore` and `fork` share with `create`.
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/cli.h"
#include "cli/state.h"
#include "cli/supervisor_protocol.h"

namespace vessel::cli {
namespace {

// How long `rm` lets a supervisor shut down cleanly before it kills it.
constexpr auto kStopTimeout = std::chrono::seconds(10);
constexpr auto kKillTimeout = std::chrono::seconds(5);
// A stand-in for an engine-made id (12 hex digits), to check path lengths before boot.
constexpr const char* kIdForLengthCheck = "000000000000";

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

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

// Starts `vessel __supervise ...` detached: its own session, no terminal, stdio on
// /dev/null until it opens its log, and no descriptor of ours but the report pipe.
Result<pid_t> StartSupervisor(std::vector<std::string> supervise_args, int report_fd) {
  std::vector<std::string> argv = {"vessel", "__supervise", "--ready-fd",
                                   std::to_string(report_fd)};
  argv.insert(argv.end(), supervise_args.begin(), supervise_args.end());
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

std::string Age(int64_t seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return fmt::format("{}s", seconds);
  if (seconds < 3600) return fmt::format("{}m", seconds / 60);
  if (seconds < 86400) return fmt::format("{}h", seconds / 3600);
  return fmt::format("{}d", seconds / 86400);
}

// What `ls` shows of one sandbox.
struct Listing {
  SandboxRecord record;
  std::string state;  // running, failed, dead
  int64_t age_seconds = 0;
};

std::optional<Listing> Inspect(const std::string& id) {
  bool alive = SupervisorAlive(id);
  auto record = ReadRecord(id);
  Listing listing;
  if (!record) {
    // Being set up right now: not there yet.
    if (alive) return std::nullopt;
    listing.record.id = id;
    listing.state = "dead";
    struct stat st {};
    if (::stat(StateDir(id).c_str(), &st) == 0) listing.age_seconds = NowSeconds() - st.st_mtime;
    return listing;
  }
  listing.record = *record;
  listing.age_seconds = NowSeconds() - record->created;
  if (record->failed) {
    listing.state = "failed";
  } else if (alive && ConnectControl(ControlSocketPath(id))) {
    listing.state = "running";
  } else {
    listing.state = "dead";
  }
  return listing;
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
  for (const auto& id : ListSandboxIds()) {
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

Result<std::string> StartSandbox(const Args& supervise_args) {
  int report_pipe[2];
  if (::pipe2(report_pipe, O_CLOEXEC) != 0) return Fail(Error::HostIo("pipe", errno));
  UniqueFd report_read(report_pipe[0]);
  UniqueFd report_write(report_pipe[1]);
  auto pid = StartSupervisor(supervise_args, report_write.get());
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

int Create(const Args& args) {
  std::vector<std::string> supervise_args;
  std::string name;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (!a.starts_with("--")) return UsageError("create takes options only, not " + a);
    if (i + 1 >= args.size()) return UsageError(a + " needs a value");
    const std::string& v = args[++i];
    if (a == "--memory") {
      if (!ParseNumber<uint32_t>(v)) return UsageError("--memory wants a number of MiB, not " + v);
    } else if (a == "--vcpus") {
      if (!ParseNumber<uint32_t>(v)) return UsageError("--vcpus wants a number, not " + v);
    } else if (a == "--name") {
      if (auto valid = ValidateName(v); !valid) return Failure(valid.error());
      name = v;
    } else if (a == "--engine") {
      if (!ParseEngine(v)) return UsageError("--engine wants qemu, kvm or auto, not " + v);
    } else if (a != "--kernel" && a != "--initramfs") {
      return UsageError("unknown option " + a);
    }
    // The supervisor runs in /: paths must not depend on our working directory.
    std::error_code ec;
    bool is_path = a == "--kernel" || a == "--initramfs";
    supervise_args.push_back(a);
    supervise_args.push_back(is_path ? std::filesystem::absolute(v, ec).string() : v);
  }
  if (!name.empty()) {
    if (auto free = CheckNameIsFree(name); !free) return Failure(free.error());
  }
  if (auto prepared = PrepareToSupervise(); !prepared) return Failure(prepared.error());
  auto id = StartSandbox(supervise_args);
  if (!id) return Failure(id.error());
  fmt::print("{}\n", *id);
  return 0;
}

int List(const Args& args) {
  bool json = false;
  for (const auto& a : args) {
    if (a != "--json") return UsageError("unknown option " + a);
    json = true;
  }
  std::vector<Listing> listings;
  for (const auto& id : ListSandboxIds()) {
    if (auto listing = Inspect(id)) listings.push_back(std::move(*listing));
  }
  if (json) {
    auto out = nlohmann::json::array();
    for (const auto& l : listings) {
      out.push_back({{"id", l.record.id},
                     {"name", l.record.name},
                     {"state", l.state},
                     {"engine", l.record.engine},
                     {"memory_mib", l.record.memory_mib},
                     {"vcpus", l.record.vcpus},
                     {"age_seconds", l.age_seconds},
                     {"pid", l.record.pid},
                     {"restored_from", l.record.restored_from},
                     {"forked_from", l.record.forked_from}});
    }
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  std::vector<std::array<std::string, 6>> rows = {
      {"ID", "NAME", "STATE", "ENGINE", "MEMORY", "AGE"}};
  for (const auto& l : listings) {
    auto or_dash = [](const std::string& s) { return s.empty() ? std::string("-") : s; };
    rows.push_back({l.record.id, or_dash(l.record.name), l.state, or_dash(l.record.engine),
                    l.record.memory_mib ? fmt::format("{}MiB", l.record.memory_mib) : "-",
                    Age(l.age_seconds)});
  }
  std::array<size_t, 6> widths{};
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += c + 1 < row.size() ? fmt::format("{:<{}}  ", row[c], widths[c]) : row[c];
    }
    fmt::print("{}\n", line);
  }
  return 0;
}

int Remove(const Args& args) {
  if (args.empty()) return UsageError("rm needs a sandbox id or name");
  int status = 0;
  for (const auto& target : args) {
    auto record = Resolve(target);
    if (!record) {
      status = Failure(record.error());
      continue;
    }
    if (auto removed = StopAndRemove(*record); !removed) {
      status = Failure(removed.error());
      continue;
    }
    fmt::print("{}\n", record->id);
  }
  return status;
}

}  // namespace vessel::cli
