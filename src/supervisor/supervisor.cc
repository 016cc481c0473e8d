#include "supervisor/supervisor.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>

#include "base/io.h"
#include "sandbox/egress.h"
#include "sandbox/raw_agent.h"
#include "snapshot/snapshot.h"
#include "supervisor/control_proxy.h"
#include "supervisor/log.h"
#include "supervisor/state.h"
#include "supervisor/supervisor_protocol.h"

namespace vessel::supervisor {
namespace {

// How often the supervisor looks whether the VM is still alive.
constexpr int kHealthCheckMs = 500;

using json = nlohmann::json;

constexpr const char* kConfigSubject = "supervisor config";

const char* EngineKindName(EngineKind kind) {
  switch (kind) {
    case EngineKind::kAuto: return "auto";
    case EngineKind::kQemu: return "qemu";
    case EngineKind::kKvm: return "kvm";
  }
  return "auto";
}

Error BadConfig(const std::string& what) { return Error::InvalidConfig(kConfigSubject, what); }

// The sandbox's state directory, owned by this process: removed with it.
class OwnedStateDir {
 public:
  static Result<OwnedStateDir> Create(const std::string& id) {
    std::string dir = StateDir(id);
    // `rm` of the last sandbox removes sandboxes/ itself: retry if it just did.
    int made = -1;
    for (int attempt = 0; attempt < 3 && made != 0; ++attempt) {
      if (auto sandboxes = PrivateSandboxesDir(/*create=*/true); !sandboxes) {
        return Fail(std::move(sandboxes).error());
      }
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
  UniqueFd log(
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!log) return Fail(Error::HostIo("create " + path, errno));
  if (::dup2(log.get(), STDOUT_FILENO) < 0 || ::dup2(log.get(), STDERR_FILENO) < 0) {
    return Fail(Error::HostIo("redirect output to " + path, errno));
  }
  return {};
}

// Tells the command that started us how the boot went. False when it is no longer there
// to hear it.
bool Report(UniqueFd& ready, std::string_view message) {
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(message.data()), message.size());
  bool heard =
      WriteAll(ready.get(), bytes, Deadline::Never(), "reporting to the starter").has_value();
  ready.Reset();
  return heard;
}

int ReportFailure(UniqueFd& ready, const Error& error) {
  Report(ready, ErrorReport(error));
  return 1;
}

// Boots the sandbox, or restores it; a restored machine's size is the snapshot's, and goes
// into `options` for the record.
Result<std::unique_ptr<Sandbox>> BootOrRestore(SupervisorConfig& options) {
  if (options.restore_dir.empty()) return Sandbox::Create(options.sandbox);
  const std::string& dir = options.restore_dir;
  auto key = snapshot::ThisHostKey();
  if (!key) return Fail(std::move(key).error().Context("restoring " + dir));
  auto opened = snapshot::Open(dir, snapshot::Depth::kRestore, *key);
  if (!opened) return Fail(std::move(opened).error().Context("restoring " + dir));
  options.sandbox.vcpus = opened->manifest.vcpus;
  options.sandbox.memory_mib = opened->manifest.memory_mib;
  // The CLI's names are unique: without one of its own, a restored sandbox has none,
  // not the saved one's.
  std::optional<NetworkPolicy> network;
  if (options.replace_network) network = options.sandbox.network;
  auto restored = Sandbox::Restore(
      dir, {.name = options.sandbox.name, .engine = options.sandbox.engine, .network = network});
  if (!restored) return Fail(std::move(restored).error().Context("restoring " + dir));
  return restored;
}

// Saves the sandbox to `dir` for a client. A directory the snapshot created goes again
// when it fails, so nothing is left behind.
Result<void> SnapshotFor(Sandbox& sandbox, const std::string& dir) {
  struct stat st {};
  bool existed = ::lstat(dir.c_str(), &st) == 0;
  Log("saving a snapshot to " + dir);
  auto saved = sandbox.Snapshot(dir);
  if (saved) {
    Log("saved a snapshot to " + dir);
  } else {
    Log(fmt::format("saving a snapshot to {} failed: {}", dir, saved.error().ToString()));
    if (!existed) ::rmdir(dir.c_str());
  }
  return saved;
}

// Changes the sandbox's egress for a client: its allowlist gains the rules of `allow` it
// lacks and loses every rule equal to one of `deny`, both compared in canonical spelling;
// its limits stay. Nothing changes when a rule is invalid or a rule to deny is not in the
// list. `mutex` serialises changes, so that two clients' do not undo each other.
Result<ControlReply> ChangeNetwork(Sandbox& sandbox, std::mutex& mutex,
                                   const ControlRequest& request) {
  std::lock_guard lock(mutex);
  if (request.replace) {
    auto replacement = sandbox::CheckNetworkPolicy({.allow = request.allow});
    if (!replacement) return Fail(std::move(replacement).error());
    NetworkPolicy policy = sandbox.network();
    policy.allow = std::move(replacement->policy.allow);
    if (auto set = sandbox.SetNetwork(policy); !set) return Fail(std::move(set).error());
    Log(fmt::format("egress allowlist replaced: [{}]", fmt::join(policy.allow, ", ")));
  } else if (!request.allow.empty() || !request.deny.empty()) {
    auto added = sandbox::CheckNetworkPolicy({.allow = request.allow});
    if (!added) return Fail(std::move(added).error());
    auto denied = sandbox::CheckNetworkPolicy({.allow = request.deny});
    if (!denied) return Fail(std::move(denied).error());
    NetworkPolicy policy = sandbox.network();
    auto listed = [&policy](const std::string& rule) {
      return std::find(policy.allow.begin(), policy.allow.end(), rule) != policy.allow.end();
    };
    std::vector<std::string> newly_allowed;
    for (const std::string& rule : added->policy.allow) {
      if (listed(rule)) continue;
      policy.allow.push_back(rule);
      newly_allowed.push_back(rule);
    }
    const std::vector<std::string>& to_deny = denied->policy.allow;
    for (size_t i = 0; i < to_deny.size(); ++i) {
      if (listed(to_deny[i])) continue;
      std::string spelled = request.deny[i] == to_deny[i] ? "" : " (" + to_deny[i] + ")";
      return Fail(Error::InvalidConfig(
          "network", fmt::format("{}{} is not in the sandbox's allowlist; nothing was changed",
                                 request.deny[i], spelled)));
    }
    std::erase_if(policy.allow, [&to_deny](const std::string& rule) {
      return std::find(to_deny.begin(), to_deny.end(), rule) != to_deny.end();
    });
    if (auto set = sandbox.SetNetwork(policy); !set) return Fail(std::move(set).error());
    Log(fmt::format("egress allowlist changed: allowed [{}], denied [{}]",
                    fmt::join(newly_allowed, ", "), fmt::join(to_deny, ", ")));
  }
  return ControlReply{.network = NetworkReport{sandbox.network(), sandbox.network_stats()}};
}

// Logs the refusals of the sandbox's egress since the first `seen`, so that none is
// silent: those still among the recent ones line by line, the others counted.
void LogNewRefusals(const Sandbox& sandbox, uint64_t& seen) {
  NetworkStats stats = sandbox.network_stats();
  if (stats.refused <= seen) return;
  uint64_t fresh = stats.refused - seen;
  seen = stats.refused;
  size_t kept = stats.recent_refusals.size();
  size_t shown = static_cast<size_t>(std::min<uint64_t>(fresh, kept));
  if (fresh > shown) {
    Log(fmt::format("egress refused {} more connections, no longer kept to show", fresh - shown));
  }
  for (size_t i = kept - shown; i < kept; ++i) {
    Log("egress refused: " + stats.recent_refusals[i]);
  }
}

}  // namespace

std::string EncodeSupervisorConfig(const SupervisorConfig& config) {
  const SandboxConfig& sandbox = config.sandbox;
  json object = {{"ready_fd", config.ready_fd},
                 {"memory_mib", sandbox.memory_mib},
                 {"vcpus", sandbox.vcpus},
                 {"name", sandbox.name},
                 {"kernel", sandbox.kernel},
                 {"initramfs", sandbox.initramfs},
                 {"image", sandbox.image},
                 {"overlay_mib", sandbox.overlay_mib},
                 {"allow_net", sandbox.network.allow},
                 {"engine", EngineKindName(sandbox.engine)},
                 {"restore_dir", config.restore_dir},
                 {"replace_net", config.replace_network},
                 {"forked_from", config.forked_from},
                 {"id", config.id}};
  return object.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<SupervisorConfig> ParseSupervisorConfig(std::string_view text) {
  json object = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded() || !object.is_object()) return Fail(BadConfig("not a JSON object"));
  SupervisorConfig config;
  auto number = [](const json& value, uint64_t max) -> std::optional<uint64_t> {
    if (!value.is_number_unsigned()) return std::nullopt;
    auto n = value.get<uint64_t>();
    if (n > max) return std::nullopt;
    return n;
  };
  for (const auto& [key, value] : object.items()) {
    if (key == "ready_fd" || key == "memory_mib" || key == "vcpus" || key == "overlay_mib") {
      uint64_t max = key == "ready_fd" ? std::numeric_limits<int>::max()
                                       : std::numeric_limits<uint32_t>::max();
      auto n = number(value, max);
      if (!n) return Fail(BadConfig(key + " wants a number from 0 to " + std::to_string(max)));
      if (key == "ready_fd") config.ready_fd = static_cast<int>(*n);
      if (key == "memory_mib") config.sandbox.memory_mib = static_cast<uint32_t>(*n);
      if (key == "vcpus") config.sandbox.vcpus = static_cast<uint32_t>(*n);
      if (key == "overlay_mib") config.sandbox.overlay_mib = static_cast<uint32_t>(*n);
      continue;
    }
    if (key == "allow_net") {
      if (!value.is_array() || value.size() > kMaxNetworkRules) {
        return Fail(
            BadConfig(fmt::format("allow_net wants a list of at most {} rules", kMaxNetworkRules)));
      }
      for (const auto& rule : value) {
        if (!rule.is_string()) return Fail(BadConfig("allow_net wants strings"));
        config.sandbox.network.allow.push_back(rule.get<std::string>());
      }
      continue;
    }
    if (key == "replace_net") {
      if (!value.is_boolean()) return Fail(BadConfig("replace_net wants true or false"));
      config.replace_network = value.get<bool>();
      continue;
    }
    if (!value.is_string()) return Fail(BadConfig(key + " wants a string"));
    const auto& text_value = value.get_ref<const std::string&>();
    if (key == "name") {
      config.sandbox.name = text_value;
    } else if (key == "kernel") {
      config.sandbox.kernel = text_value;
    } else if (key == "initramfs") {
      config.sandbox.initramfs = text_value;
    } else if (key == "image") {
      config.sandbox.image = text_value;
    } else if (key == "restore_dir") {
      config.restore_dir = text_value;
    } else if (key == "forked_from") {
      config.forked_from = text_value;
    } else if (key == "id") {
      if (!text_value.empty() && !IsSandboxId(text_value)) {
        return Fail(BadConfig("id wants up to 64 hex digits, or none"));
      }
      config.id = text_value;
    } else if (key == "engine") {
      if (text_value == "auto") {
        config.sandbox.engine = EngineKind::kAuto;
      } else if (text_value == "qemu") {
        config.sandbox.engine = EngineKind::kQemu;
      } else if (text_value == "kvm") {
        config.sandbox.engine = EngineKind::kKvm;
      } else {
        return Fail(BadConfig("engine wants qemu, kvm or auto, not " + text_value));
      }
    } else {
      return Fail(BadConfig("unknown field " + key));
    }
  }
  if (!object.contains("ready_fd")) return Fail(BadConfig("ready_fd is missing"));
  return config;
}

int RunSupervisor(SupervisorConfig config) {
  UniqueFd ready(config.ready_fd);

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

  auto started = BootOrRestore(config);
  if (!started) return ReportFailure(ready, started.error());
  std::unique_ptr<Sandbox> sandbox = std::move(*started);
  const std::string id = config.id.empty() ? sandbox->id() : config.id;

  auto state_dir = OwnedStateDir::Create(id);
  if (!state_dir) return ReportFailure(ready, state_dir.error());
  if (auto redirected = RedirectOutputTo(SupervisorLogPath(id)); !redirected) {
    return ReportFailure(ready, redirected.error());
  }
  auto listener = ListenControl(ControlSocketPath(id));
  if (!listener) return ReportFailure(ready, listener.error());
  SandboxRecord record{
      .id = id,
      .name = config.sandbox.name,
      .pid = static_cast<int>(::getpid()),
      .engine = sandbox->engine_name(),
      .memory_mib = config.sandbox.memory_mib,
      .vcpus = config.sandbox.vcpus,
      .created = std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count(),
      .restored_from = config.forked_from.empty() ? config.restore_dir : "",
      .forked_from = config.forked_from,
  };
  if (auto written = WriteRecord(record); !written) return ReportFailure(ready, written.error());
  Log(fmt::format("sandbox {} is up ({}, {}){}", id, sandbox->engine_name(),
                  sandbox->agent_version(),
                  config.restore_dir.empty() ? "" : ", restored from " + config.restore_dir));
  // Nobody waits for this sandbox any more (the command was interrupted): nobody would
  // know its id either, so it is not kept.
  if (!Report(ready, ReadyReport(id))) {
    Log("the command went away before the sandbox was ready; shutting down");
    return 0;
  }

  auto agent = sandbox::RawAgentOf(*sandbox);
  std::mutex network_mutex;
  ControlServer server(
      *agent,
      [&sandbox, &network_mutex](const ControlRequest& request) -> Result<ControlReply> {
        switch (request.op) {
          case ControlRequest::Op::kSnapshot: {
            auto saved = SnapshotFor(*sandbox, request.dir);
            if (!saved) return Fail(std::move(saved).error());
            return ControlReply{};
          }
          case ControlRequest::Op::kNetwork: return ChangeNetwork(*sandbox, network_mutex, request);
        }
        return Fail(Error::InvalidConfig("control request", "unknown operation"));
      },
      std::move(*listener));
  uint64_t refusals_logged = 0;
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
    LogNewRefusals(*sandbox, refusals_logged);
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

}  // namespace vessel::supervisor
