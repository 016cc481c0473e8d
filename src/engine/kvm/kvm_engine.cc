#include "engine/kvm/kvm_engine.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "base/io.h"
#include "base/subprocess.h"
#include "engine/host.h"
#include "engine/runtime_dir.h"
#include "engine/saved_files.h"
#include "engine/vm_cgroup.h"
#include "engine/vmm_jail.h"

namespace vessel::engine::kvm {
namespace {

namespace control = protocol::vmm_control;

// Control requests are answered at once unless the VMM is stuck; configure loads the
// kernel and initramfs, which takes seconds on a loaded host running nested.
constexpr auto kControlTimeout = std::chrono::seconds(30);
// A save writes the VM's RAM: seconds for a large guest on a loaded host.
constexpr auto kSaveTimeout = std::chrono::seconds(120);
// Destroy asks the VMM to shut down, and kills it when it takes longer than this.
constexpr auto kShutdownTimeout = std::chrono::milliseconds(500);
// A channel that ends because the VMM exits ends moments before the process does.
constexpr auto kExitGrace = std::chrono::milliseconds(500);
constexpr auto kRetryInterval = std::chrono::milliseconds(10);
// A guest answers a vsock connection request at once, with an accept or a reset; but one
// that arrives while the guest's driver is still starting can be dropped unanswered, so
// an attempt that hears nothing for this long is given up and made again.
constexpr auto kConnectAnswerTimeout = std::chrono::seconds(1);
// "OK <port>\n" is short; anything longer is not an answer.
constexpr size_t kMaxVsockAnswer = 64;

bool IsExecutable(const std::string& path) {
  return !path.empty() && std::filesystem::is_regular_file(path) &&
         ::access(path.c_str(), X_OK) == 0;
}

Error VsockNotConnected(std::string_view why) {
  return Error::Lifecycle({LifecycleError::VsockNotConnected{}}).Context(why);
}

// A connected unix stream socket to `path`, or nullopt when nobody listens there (yet).
Result<std::optional<UniqueFd>> ConnectUnix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Fail(Error::InvalidConfig("runtime directory", path + " is too long for a socket"));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Fail(Error::HostIo("socket", errno));
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) return std::optional<UniqueFd>();
    return Fail(Error::HostIo("connect " + path, errno));
  }
  return std::optional<UniqueFd>(std::move(fd));
}

// One CONNECT through the hybrid vsock socket: the stream, or nullopt when the VMM
// refused (nobody listens on the port) or the deadline passed first.
Result<std::optional<UniqueFd>> TryConnectVsock(const std::string& uds, uint32_t port,
                                                Deadline deadline) {
  auto fd = ConnectUnix(uds);
  if (!fd || !*fd) return fd;
  std::string request = fmt::format("CONNECT {}\n", port);
  auto sent =
      WriteAll((*fd)->get(), {reinterpret_cast<const uint8_t*>(request.data()), request.size()},
               deadline, "vsock CONNECT");
  if (!sent) return std::optional<UniqueFd>();
  // Byte by byte: what follows the newline is the agent's, and must stay in the socket.
  std::string answer;
  for (;;) {
    uint8_t byte = 0;
    auto n = ReadSome((*fd)->get(), {&byte, 1}, deadline, "vsock CONNECT");
    if (!n || *n == 0) return std::optional<UniqueFd>();
    if (byte == '\n') break;
    answer += static_cast<char>(byte);
    if (answer.size() > kMaxVsockAnswer) {
      return Fail(Error::Backend("vessel-vmm answered vsock CONNECT with an overlong line"));
    }
  }
  if (answer.rfind("OK ", 0) != 0) {
    return Fail(
        Error::Backend(fmt::format("vessel-vmm answered vsock CONNECT with \"{}\"", answer)));
  }
  return fd;
}

class KvmVm final : public Vm {
 public:
  KvmVm(std::string vmm, VmSpec spec, RuntimeDir dir)
      : id_(dir.id()), vmm_(std::move(vmm)), spec_(std::move(spec)), dir_(std::move(dir)) {}
  ~KvmVm() override { Destroy(); }

  // Starts the VMM, configures it and runs the vCPUs.
  Result<void> Start() {
    auto launch = PrepareVmmLaunch(vmm_, dir_.File("vmm.log"));
    if (!launch) return Fail(std::move(launch).error());
    SpawnOptions& spawn = launch->spawn;
    if (JailEnabled()) {
      auto jail = VmmJail(spec_, {.vm_dir = dir_.path(), .binary = vmm_, .kvm = true,
                                  .unprivileged = true});
      if (!jail) return Fail(std::move(jail).error().Context("starting vessel-vmm"));
      spawn.jail = std::move(*jail);
    }
    if (const auto& parent = CgroupParent()) {
      auto cgroup = VmCgroup::Create(*parent, id_, LimitsFor(spec_));
      if (!cgroup) return Fail(std::move(cgroup).error().Context("starting vessel-vmm"));
      cgroup_ = std::move(*cgroup);
      spawn.cgroup_procs = cgroup_->procs();
    }
    auto process = Subprocess::Spawn(spawn);
    if (!process) return Fail(std::move(process).error().Context("starting vessel-vmm"));
    // Opened before anyone could reap the child, so it cannot name a recycled pid.
    exited_ = UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, process->pid(), 0)));
    if (!exited_) return Fail(Error::HostIo("pidfd_open", errno));
    process_ = std::move(*process);
    control_ = std::make_unique<ControlClient>(std::move(launch->ours));
    launch->theirs.Reset();

    auto deadline = Deadline::After(kControlTimeout);
    int memory;
    control::MemorySource source;
    if (spec_.restore) {
      if (!spec_.restore->memory || !*spec_.restore->memory || !spec_.restore->state ||
          !*spec_.restore->state) {
        return Fail(Error::InvalidConfig("spec", "the saved VM has no open memory or state file"));
      }
      memory = spec_.restore->memory->get();
      source = control::MemorySource::kPrivate;
    } else {
      auto ram = CreateGuestRam(uint64_t{spec_.memory_mib} << 20);
      if (!ram) return Fail(std::move(ram).error());
      ram_ = std::move(*ram);
      memory = ram_.get();
      source = control::MemorySource::kShared;
      memory_shared_ = true;
    }
    auto hello = Call(control::request::Hello{control::kVersion}, deadline);
    if (!hello) return Fail(std::move(hello).error());
    if (hello->version.value_or(0) != control::kVersion) {
      return Fail(WithDiagnostics(
          Error::Backend(fmt::format("vessel-vmm speaks control protocol {}, the host {}",
                                     hello->version.value_or(0), control::kVersion))));
    }
    KvmPaths paths{dir_.File("console.log"), dir_.File("vsock.sock"), dir_.File("agent.sock")};
    if (auto r = Call(ConfigureRequest(spec_, KvmGuestCmdline(spec_), paths, source), deadline,
                      std::span<const int>(&memory, 1));
        !r) {
      return Fail(std::move(r).error());
    }
    if (spec_.channel == AgentChannel::kVirtioSerial) {
      // The VMM listens once configured; connected before the guest runs, the port is
      // open from the agent's first look at it.
      auto agent = ConnectUnix(paths.agent_port);
      if (!agent) return Fail(std::move(agent).error());
      if (!*agent) {
        return Fail(
            WithDiagnostics(Error::Backend("vessel-vmm does not listen on the agent port")));
      }
      agent_ = std::move(**agent);
    }
    // A restored VM waits, its memory mapped, until Resume() loads its state.
    restore_pending_ = spec_.restore.has_value();
    if (restore_pending_) return {};
    if (auto r = Call(control::request::Start{}, deadline); !r) return Fail(std::move(r).error());
    return {};
  }

  const std::string& id() const override { return id_; }
  int agent_fd() const override { return agent_.get(); }
  const std::string& private_dir() const override { return dir_.path(); }
  bool Running() override { return !Exited(std::chrono::milliseconds(0)); }

  Result<void> ConnectAgent(Deadline deadline) override {
    if (spec_.channel == AgentChannel::kVirtioSerial) return {};
    auto stream = ConnectVsock(dir_.File("vsock.sock"), kAgentVsockPort, deadline,
                               [this] { return Running(); });
    if (!stream) {
      if (stream.error().kind() == ErrorKind::kLifecycle) return Fail(std::move(stream).error());
      return Fail(WithDiagnostics(stream.error()));
    }
    agent_ = std::move(*stream);
    return {};
  }

  bool AgentChannelLost() override {
    if (spec_.channel != AgentChannel::kVsock || Exited(kExitGrace)) return false;
    auto state = RunState();
    return state && (*state == "running" || *state == "paused");
  }

  Result<std::string> RunState() override {
    auto reply = Call(control::request::Status{}, Deadline::After(kControlTimeout));
    if (!reply) return Fail(std::move(reply).error());
    if (reply->state.empty()) {
      return Fail(Error::Backend("vessel-vmm status: the reply has no state"));
    }
    return std::move(reply->state);
  }

  std::string Diagnostics() const override { return dir_.Diagnostics("vessel-vmm"); }

  void Destroy() override {
    std::lock_guard lock(destroy_mutex_);
    if (control_ && Running()) {
      // An orderly exit first, so the VMM can say why it went in its log.
      if (Call(control::request::Shutdown{}, Deadline::After(kShutdownTimeout))) {
        (void)Exited(kShutdownTimeout);
      }
    }
    process_.Kill();
    ram_.Reset();
    cgroup_.reset();
    if (control_) control_->Close();
    agent_.Reset();
    exited_.Reset();
    dir_.Remove();
  }

  Result<void> Pause() override {
    if (auto r = Call(control::request::Pause{}, Deadline::After(kControlTimeout)); !r) {
      return Fail(std::move(r).error().Context("pausing the VM"));
    }
    return {};
  }

  Result<void> Resume() override {
    auto deadline = Deadline::After(kControlTimeout);
    if (restore_pending_) {
      int state = spec_.restore->state->get();
      if (auto r = Call(control::request::Restore{}, deadline, std::span<const int>(&state, 1));
          !r) {
        return Fail(std::move(r).error().Context("restoring the VM"));
      }
      restore_pending_ = false;
      return {};
    }
    if (auto r = Call(control::request::Resume{}, deadline); !r) {
      return Fail(std::move(r).error().Context("resuming the VM"));
    }
    return {};
  }

  Result<std::optional<VmSpec::Saved>> SaveAhead(const std::string& dir) override {
    return state_ahead_.SaveAhead(ram_.get(), memory_shared_, dir);
  }

  // In place after SaveAhead(dir): the VMM writes the state, and its RAM, frozen, is the
  // saved memory. Otherwise it writes RAM's data pages to a new `memory`, sized first so
  // that pages of zeros stay holes.
  Result<void> Save(const std::string& dir) override {
    auto deadline = Deadline::After(kSaveTimeout);
    std::string memory_path = dir + "/" + kSavedMemoryFile;
    std::string state_path = dir + "/" + kSavedStateFile;
    bool in_place = memory_shared_ && state_ahead_.Is(state_path);
    auto r = [&]() -> Result<void> {
      auto state = state_ahead_.Take(state_path);
      if (!state) return Fail(std::move(state).error());
      if (in_place) {
        int fd = state->get();
        if (auto sent = Call(control::request::Save{.memory = control::SaveMemory::kFreeze},
                             deadline, std::span<const int>(&fd, 1));
            !sent) {
          return Fail(std::move(sent).error());
        }
        memory_shared_ = false;
        return {};
      }
      auto memory = CreateNewFile(memory_path, O_WRONLY);
      if (!memory) return Fail(std::move(memory).error());
      if (::ftruncate(memory->get(), off_t{spec_.memory_mib} << 20) != 0) {
        return Fail(Error::HostIo("size " + memory_path, errno));
      }
      int fds[] = {state->get(), memory->get()};
      if (auto sent =
              Call(control::request::Save{.memory = control::SaveMemory::kWrite}, deadline, fds);
          !sent) {
        return Fail(std::move(sent).error());
      }
      return {};
    }();
    if (!r) {
      if (!in_place) ::unlink(memory_path.c_str());
      ::unlink(state_path.c_str());
      return Fail(std::move(r).error().Context("saving the VM"));
    }
    return {};
  }

 private:
  Result<control::Reply> Call(const control::Request& request, Deadline deadline,
                              std::span<const int> fds = {}) {
    if (!control_) return Fail(Error::Backend("vessel-vmm is not running"));
    auto reply = control_->Call(request, deadline, fds);
    if (!reply) {
      return Fail(
          WithDiagnostics(std::move(reply).error().Context(std::string(control::OpName(request)))));
    }
    return reply;
  }

  // Waits up to `timeout` for the VMM to exit; true once it has (or never started).
  bool Exited(std::chrono::milliseconds timeout) const {
    if (!exited_) return true;
    pollfd p{exited_.get(), POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
    return n > 0 && (p.revents & POLLIN);
  }

  // Keeps the error's kind: a host failure stays kHostIo, a timeout stays one.
  Error WithDiagnostics(const Error& error) const { return Error(error).Detail(Diagnostics()); }

  std::string id_;
  std::string vmm_;
  VmSpec spec_;
  RuntimeDir dir_;
  Subprocess process_;
  std::optional<VmCgroup> cgroup_;  // the VMM's, where the host offers one
  // A pidfd, readable once the VMM exited. The VMM holds the other end of every channel,
  // so its death ends them by itself: no watcher thread is needed.
  UniqueFd exited_;
  std::unique_ptr<ControlClient> control_;
  UniqueFd agent_;
  std::mutex destroy_mutex_;
  UniqueFd ram_;  // a booted VM's RAM: shared while memory_shared_, then frozen
  bool memory_shared_ = false;
  bool restore_pending_ = false;  // started on saved memory: Resume() loads the state
  StateAhead state_ahead_;        // the state file SaveAhead() created
};

}  // namespace

std::string FindVmm() {
  if (const char* env = std::getenv("VESSEL_VMM"); env && *env) {
    return IsExecutable(env) ? std::string(env) : std::string();
  }
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    std::string beside = (self.parent_path() / "vessel-vmm").string();
    if (IsExecutable(beside)) return beside;
  }
  std::string built = VESSEL_BUILD_VMM;
  return IsExecutable(built) ? built : std::string();
}

Result<VmmLaunch> PrepareVmmLaunch(const std::string& binary, const std::string& log) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) {
    return Fail(Error::HostIo("socketpair", errno));
  }
  VmmLaunch launch{UniqueFd(fds[0]), UniqueFd(fds[1]), {}};
  launch.spawn.argv = {binary, "--control-fd", std::to_string(launch.theirs.get())};
  launch.spawn.inherit_fds = {launch.theirs.get()};
  launch.spawn.output_path = log;
  launch.spawn.rlimits = VmmLimits();
  return launch;
}

std::string KvmGuestCmdline(const VmSpec& spec, bool quiet) {
  // Under KVM the guest has kvm-clock: no TSC calibration workarounds are needed.
  std::string cmdline =
      fmt::format("console=ttyS0{} mitigations=off reboot=t panic=-1", quiet ? " quiet" : "");
  if (spec.channel == AgentChannel::kVsock) {
    cmdline += fmt::format(" vessel.channel=vsock:{}", kAgentVsockPort);
  }
  if (!spec.guest_args.empty()) cmdline += " " + spec.guest_args;
  return cmdline;
}

control::request::Configure ConfigureRequest(const VmSpec& spec, const std::string& cmdline,
                                             const KvmPaths& paths, control::MemorySource memory) {
  return {.config = {
              .vcpus = spec.vcpus,
              .memory_mib = spec.memory_mib,
              .kernel = std::filesystem::absolute(spec.kernel).string(),
              .initramfs = std::filesystem::absolute(spec.initramfs).string(),
              .cmdline = cmdline,
              .console_log = paths.console_log,
              .vsock = control::VsockConfig{.cid = kGuestCid, .uds = paths.vsock_uds},
              .agent_port = paths.agent_port,
              .disk = spec.image.empty() ? std::string()
                                         : std::filesystem::absolute(spec.image).string(),
              .memory = memory,
          }};
}

Result<control::Reply> ControlClient::Call(const control::Request& request, Deadline deadline,
                                           std::span<const int> fds) {
  std::lock_guard lock(mutex_);
  if (!fd_) return Fail(Error::Backend("the control socket is closed"));
  auto message = control::EncodeRequest(request);
  if (!message) return Fail(std::move(message).error());
  if (fds.size() > control::kMaxDescriptors) {
    return Fail(Error::InvalidConfig("control request", "too many descriptors"));
  }
  iovec iov{.iov_base = message->data(), .iov_len = message->size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char rights[CMSG_SPACE(sizeof(int) * control::kMaxDescriptors)] = {};
  if (!fds.empty()) {
    msg.msg_control = rights;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  if (::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL) < 0) {
    return Fail(Error::Backend(fmt::format("vessel-vmm control socket: {}", std::strerror(errno))));
  }
  std::string buffer(control::kMaxMessage + 1, '\0');
  ssize_t n;
  for (;;) {
    pollfd p{fd_.get(), POLLIN, 0};
    int ready = ::poll(&p, 1, deadline.PollTimeoutMs());
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) return Fail(Error::Timeout("vessel-vmm did not answer: timed out"));
    n = ::recv(fd_.get(), buffer.data(), buffer.size(), MSG_TRUNC);
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  if (n < 0) {
    return Fail(Error::Backend(fmt::format("vessel-vmm control socket: {}", std::strerror(errno))));
  }
  if (n == 0) return Fail(Error::Backend("vessel-vmm closed its control socket"));
  if (static_cast<size_t>(n) > control::kMaxMessage) {
    return Fail(Error::Backend("vessel-vmm sent an oversized control reply"));
  }
  buffer.resize(static_cast<size_t>(n));
  auto reply = control::DecodeReply(buffer);
  if (!reply) return Fail(Error::Backend("vessel-vmm sent a " + reply.error().message()));
  if (!reply->ok) {
    std::string error = "vessel-vmm: " + reply->error;
    return Fail(reply->kind == control::kSnapshotFormatKind ? Error::SnapshotFormat(error)
                                                            : Error::Backend(error));
  }
  return reply;
}

void ControlClient::Close() {
  std::lock_guard lock(mutex_);
  fd_.Reset();
}

Result<UniqueFd> ConnectVsock(const std::string& uds, uint32_t port, Deadline deadline,
                              const std::function<bool()>& vmm_running) {
  for (;;) {
    if (!vmm_running()) {
      return Fail(Error::Backend("vessel-vmm exited before the guest agent accepted on vsock"));
    }
    auto stream = TryConnectVsock(uds, port, deadline.Min(Deadline::After(kConnectAnswerTimeout)));
    if (!stream) return Fail(std::move(stream).error());
    if (*stream) return std::move(**stream);
    if (deadline.Expired()) {
      return Fail(
          VsockNotConnected(fmt::format("nothing accepted on guest vsock port {} in time", port)));
    }
    std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(
        kRetryInterval, std::chrono::milliseconds(deadline.PollTimeoutMs())));
  }
}

KvmEngine::KvmEngine(KvmOptions options) : options_(std::move(options)) {}

std::string KvmEngine::version() const { return "vessel-vmm " VESSEL_VERSION; }

Result<std::unique_ptr<Vm>> KvmEngine::Start(const VmSpec& spec) {
  if (auto why = KvmUnusableReason()) {
    return Fail(Error::UnsupportedPlatform("the kvm engine cannot run here: " + *why));
  }
  std::string vmm = options_.vmm.empty() ? FindVmm() : options_.vmm;
  if (!IsExecutable(vmm)) {
    return Fail(Error::UnsupportedPlatform(
        "vessel-vmm not found: set $VESSEL_VMM or install it beside the vessel binary"));
  }
  SweepStaleRuntimeDirs();
  auto dir = RuntimeDir::Create();
  if (!dir) return Fail(std::move(dir).error());
  auto vm = std::make_unique<KvmVm>(std::move(vmm), spec, std::move(*dir));
  if (auto r = vm->Start(); !r) return Fail(std::move(r).error());
  return vm;
}

}  // namespace vessel::engine::kvm
