// `vessel __supervise`: the background process that owns one sandbox made by `create`,
// `restore` or `fork`.
//
// It boots the VM (or restores it from a snapshot), publishes the sandbox's state
// directory, reports "ready <id>" (or the error) on the pipe the command waits on, then
// serves the control socket until SIGTERM. The VMM is its child and dies with it
// (PR_SET_PDEATHSIG), so a supervisor killed outright leaves no VM running: `ls` shows
// it dead, `rm` removes what is left.
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>

#include "base/io.h"
#include "cli/cli.h"
#include "cli/control_proxy.h"
#include "cli/state.h"
#include "cli/supervisor_protocol.h"
#include "snapshot/snapshot.h"
#include "vessel/sandbox.h"

namespace vessel::cli {
namespace {

// How often the supervisor looks whether the VM is still alive.
constexpr int kHealthCheckMs = 500;

struct SuperviseOptions {
  int ready_fd = -1;
  SandboxConfig config;
  std::string restore_dir;  // set: restore the snapshot in it instead of booting
  std::string forked_from;
};

Result<SuperviseOptions> ParseSuperviseArgs(const Args& args) {
  SuperviseOptions options;
  for (size_t i = 0; i + 1 < args.size(); i += 2) {
    const std::string& flag = args[i];
    const std::string& value = args[i + 1];
    if (flag == "--ready-fd") {
      options.ready_fd = ParseNumber<int>(value).value_or(-1);
    } else if (flag == "--memory") {
      options.config.memory_mib = ParseNumber<uint32_t>(value).value_or(0);
    } else if (flag == "--vcpus") {
      options.config.vcpus = ParseNumber<uint32_t>(value).value_or(0);
    } else if (flag == "--name") {
      options.config.name = value;
    } else if (flag == "--kernel") {
      options.config.kernel = value;
    } else if (flag == "--initramfs") {
      options.config.initramfs = value;
    } else if (flag == "--engine") {
      auto engine = ParseEngine(value);
      if (!engine) return Fail(Error::InvalidConfig(flag, "wants qemu, kvm or auto"));
      options.config.engine = *engine;
    } else if (flag == "--restore") {
      options.restore_dir = value;
    } else if (flag == "--forked-from") {
      options.forked_from = value;
    } else {
      return Fail(Error::InvalidConfig(flag, "unknown option"));
    }
  }
  if (args.size() % 2 != 0) return Fail(Error::InvalidConfig(args.back(), "needs a value"));
  if (options.ready_fd < 0) return Fail(Error::InvalidConfig("--ready-fd", "missing"));
  return options;
}

// The sandbox's state directory, owned by this process: removed with it.
class OwnedStateDir {
 public:
  static Result<OwnedStateDir> Create(const std::string& id) {
    std::string dir = StateDir(id);
    // `rm` of the last sandbox removes sandboxes/ itself: retry if it just did.
    int made = -1;
    for (int attempt = 0; attempt < 3 && made != 0; ++attempt) {
      std::error_code ec;
      std::filesystem::create_directories(SandboxesDir(), ec);
      made = ::mkdir(dir.c_str(), 0700);
      if (made != 0 && errno != ENOENT) break;
    }
    if (made != 0) return Fail(Error::HostIo("create " + dir, errno));
    OwnedStateDir owned(id);
    auto lock = LockAsSupervisor(id);
    if (!lock) return Fail(std::move(lock).error());
    owned.lock_ = std::move(*lock);
    return owned;
  }
  OwnedStateDir(OwnedStateDir&& other) noexcept
      : id_(std::exchange(other.id_, {})), lock_(std::move(other.lock_)) {}
  OwnedStateDir& operator=(OwnedStateDir&&) = delete;
  // The lock goes last, so no one sees a dead supervisor before the directory is gone.
  ~OwnedStateDir() {
    if (!id_.empty()) RemoveSandboxState(id_);
  }

 private:
  explicit OwnedStateDir(std::string id) : id_(std::move(id)) {}
  std::string id_;
  UniqueFd lock_;
};

// Points stdout and stderr at the supervisor's log from now on.
Result<void> RedirectOutputTo(const std::string& path) {
  UniqueFd log(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!log) return Fail(Error::HostIo("create " + path, errno));
  if (::dup2(log.get(), STDOUT_FILENO) < 0 || ::dup2(log.get(), STDERR_FILENO) < 0) {
    return Fail(Error::HostIo("redirect output to " + path, errno));
  }
  return {};
}

// Tells the command that started us how the boot went. False when it is no longer there
// to hear it.
bool Report(UniqueFd& ready, std::string_view message) {
  bool heard = WriteAllTo(ready.get(), message);
  ready.Reset();
  return heard;
}

int ReportFailure(UniqueFd& ready, const Error& error) {
  Report(ready, ErrorReport(error));
  return 1;
}

// Boots the sandbox, or restores it; a restored machine's size is the snapshot's, and goes
// into `options` for the record.
Result<std::unique_ptr<Sandbox>> BootOrRestore(SuperviseOptions& options) {
  if (options.restore_dir.empty()) return Sandbox::Create(options.config);
  const std::string& dir = options.restore_dir;
  auto manifest = snapshot::Open(dir, snapshot::Depth::kRestore);
  if (!manifest) return Fail(std::move(manifest).error().Context("restoring " + dir));
  options.config.vcpus = manifest->vcpus;
  options.config.memory_mib = manifest->memory_mib;
  // The CLI's names are unique: without one of its own, a restored sandbox has none,
  // not the saved one's.
  auto restored =
      Sandbox::Restore(dir, {.name = options.config.name, .engine = options.config.engine});
  if (!restored) return Fail(std::move(restored).error().Context("restoring " + dir));
  return restored;
}

}  // namespace

int Supervise(const Args& args) {
  auto options = ParseSuperviseArgs(args);
  if (!options) return Failure(options.error());
  UniqueFd ready(options->ready_fd);

  // Termination requests arrive on a signalfd, read by the main loop, so no thread is
  // ever interrupted by them. Blocked before any thread starts: every thread inherits it.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  UniqueFd signals(::signalfd(-1, &stop_signals, SFD_CLOEXEC));
  if (!signals) return ReportFailure(ready, Error::HostIo("signalfd", errno));

  auto started = BootOrRestore(*options);
  if (!started) return ReportFailure(ready, started.error());
  std::unique_ptr<Sandbox> sandbox = std::move(*started);
  const std::string id = sandbox->id();

  auto state_dir = OwnedStateDir::Create(id);
  if (!state_dir) return ReportFailure(ready, state_dir.error());
  if (auto redirected = RedirectOutputTo(SupervisorLogPath(id)); !redirected) {
    return ReportFailure(ready, redirected.error());
  }
  auto listener = ListenControl(ControlSocketPath(id));
  if (!listener) return ReportFailure(ready, listener.error());
  SandboxRecord record{
      .id = id,
      .name = options->config.name,
      .pid = static_cast<int>(::getpid()),
      .engine = sandbox->engine_name(),
      .memory_mib = options->config.memory_mib,
      .vcpus = options->config.vcpus,
      .created = std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count(),
      .restored_from = options->forked_from.empty() ? options->restore_dir : "",
      .forked_from = options->forked_from,
  };
  if (auto written = WriteRecord(record); !written) return ReportFailure(ready, written.error());
  Log(fmt::format("sandbox {} is up ({}, {}){}", id, sandbox->engine_name(),
                  sandbox->agent_version(),
                  options->restore_dir.empty() ? "" : ", restored from " + options->restore_dir));
  // Nobody waits for this sandbox any more (the command was interrupted): nobody would
  // know its id either, so it is not kept.
  if (!Report(ready, ReadyReport(id))) {
    Log("the command went away before the sandbox was ready; shutting down");
    return 0;
  }

  ControlServer server(*sandbox, std::move(*listener));
  for (;;) {
    pollfd fds[2] = {{server.fd(), POLLIN, 0}, {signals.get(), POLLIN, 0}};
    int n = ::poll(fds, 2, kHealthCheckMs);
    if (n < 0 && errno != EINTR) {
      Log(fmt::format("poll failed: {}; shutting down", std::strerror(errno)));
      break;
    }
    if (n > 0 && fds[1].revents) {
      signalfd_siginfo info{};
      (void)!::read(signals.get(), &info, sizeof(info));
      Log(fmt::format("signal {}: shutting down", info.ssi_signo));
      break;
    }
    if (n > 0 && fds[0].revents) server.AcceptPending();
    if (!record.failed && sandbox->state() == SandboxState::kFailed) {
      record.failed = true;
      Log("the VM failed; every request is answered with an error until `vessel rm`");
      if (auto written = WriteRecord(record); !written) Log(written.error().ToString());
    }
  }
  // The VM goes first, so every relayed request fails at once; then the clients.
  (void)sandbox->Destroy();
  server.DisconnectAll();
  sandbox.reset();
  return 0;
}

}  // namespace vessel::cli
