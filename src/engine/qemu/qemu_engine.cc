#include "engine/qemu/qemu_engine.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "base/io.h"
#include "base/subprocess.h"
#include "engine/host.h"
#include "engine/qemu/qmp_client.h"
#include "engine/runtime_dir.h"
#include "engine/saved_files.h"
#include "engine/vm_cgroup.h"
#include "engine/vmm_jail.h"

namespace vessel::engine::qemu {
namespace {

constexpr const char* kAgentPortName = "org.vessel.agent";
// TCG's translation cache reserves 1 GiB by default; a microVM needs far less.
constexpr uint32_t kTcgCacheMib = 64;
constexpr auto kQmpTimeout = std::chrono::seconds(5);
// Saving or loading a VM: device state is small, but a copy of RAM may be large.
constexpr auto kSaveTimeout = std::chrono::seconds(120);
constexpr auto kPollInterval = std::chrono::milliseconds(2);
// `qemu-system-x86_64 --version` prints one line at once.
constexpr auto kVersionTimeout = std::chrono::seconds(10);

// A value inside a QEMU option list, where a comma is written twice.
std::string QemuOptionValue(const std::string& value) {
  std::string escaped;
  for (char c : value) {
    escaped += c;
    if (c == ',') escaped += ',';
  }
  return escaped;
}

struct SocketPair {
  UniqueFd host;
  UniqueFd vmm;
};

Result<SocketPair> MakeSocketPair() {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return Fail(Error::HostIo("socketpair", errno));
  }
  return SocketPair{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// One running qemu-system-x86_64 and its QMP channel.
struct QemuProcess {
  Subprocess process;
  UniqueFd exited;  // a pidfd: readable once the process has exited
  QmpClient qmp{UniqueFd()};
  bool negotiated = false;

  // The QMP channel, negotiated on first use.
  Result<QmpClient*> Qmp(Deadline deadline) {
    if (!negotiated) {
      if (auto r = qmp.Handshake(deadline); !r) return Fail(std::move(r).error());
      negotiated = true;
    }
    return &qmp;
  }
  Result<nlohmann::json> Execute(const std::string& command, const nlohmann::json& arguments,
                                 Deadline deadline) {
    auto client = Qmp(deadline);
    if (!client) return Fail(std::move(client).error());
    return (*client)->Execute(command, arguments, deadline);
  }
};

struct Launch {
  std::string binary;
  Accel accel = Accel::kTcg;
  const VmSpec* spec = nullptr;
  QemuWiring wiring;  // qmp_fd is filled in by StartQemu
  std::vector<int> inherit_fds;
  std::string output_path;
  std::optional<JailSpec> jail;
  std::string cgroup_procs;
};

Result<QemuProcess> StartQemu(Launch launch) {
  auto qmp = MakeSocketPair();
  if (!qmp) return Fail(std::move(qmp).error());
  launch.wiring.qmp_fd = qmp->vmm.get();
  SpawnOptions spawn;
  spawn.argv = QemuArgv(launch.binary, launch.accel, *launch.spec, launch.wiring);
  spawn.inherit_fds = std::move(launch.inherit_fds);
  spawn.inherit_fds.push_back(qmp->vmm.get());
  spawn.output_path = launch.output_path;
  spawn.rlimits = VmmLimits();
  spawn.jail = std::move(launch.jail);
  spawn.cgroup_procs = std::move(launch.cgroup_procs);
  auto process = Subprocess::Spawn(spawn);
  if (!process) return Fail(std::move(process).error().Context("starting QEMU"));
  QemuProcess started;
  // Opened before anyone could reap the child, so it cannot name a recycled pid.
  started.exited = UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, process->pid(), 0)));
  if (!started.exited) return Fail(Error::HostIo("pidfd_open", errno));
  started.process = std::move(*process);
  started.qmp = QmpClient(std::move(qmp->host));
  return started;
}

Result<void> SetIgnoreShared(QemuProcess& qemu, bool on, Deadline deadline) {
  nlohmann::json caps = {{"capabilities", {{{"capability", "x-ignore-shared"}, {"state", on}}}}};
  if (auto r = qemu.Execute("migrate-set-capabilities", caps, deadline); !r) {
    return Fail(std::move(r).error());
  }
  return {};
}

// Waits until the outgoing migration of `qemu` has completed.
Result<void> WaitMigrationDone(QemuProcess& qemu, Deadline deadline) {
  for (;;) {
    auto info = qemu.Execute("query-migrate", {}, deadline);
    if (!info) return Fail(std::move(info).error());
    std::string status = info->value("status", "");
    if (status == "completed") return {};
    if (status == "failed" || status == "cancelled") {
      return Fail(Error::Backend("saving the VM failed: " +
                                 info->value("error-desc", std::string("no reason given"))));
    }
    if (deadline.Expired()) return Fail(Error::Timeout("saving the VM: timed out"));
    std::this_thread::sleep_for(kPollInterval);
  }
}

// Waits until `qemu` has loaded its incoming migration; it is then paused.
Result<void> WaitIncomingDone(QemuProcess& qemu, Deadline deadline) {
  for (;;) {
    auto status = qemu.Execute("query-status", {}, deadline);
    if (!status) return Fail(std::move(status).error().Context("loading the saved VM"));
    std::string state = status->value("status", "");
    if (state != "inmigrate") {
      if (state == "paused" || state == "postmigrate" || state == "running") return {};
      return Fail(Error::Backend("loading the saved VM: QEMU is " + state));
    }
    if (deadline.Expired()) return Fail(Error::Timeout("loading the saved VM: timed out"));
    std::this_thread::sleep_for(kPollInterval);
  }
}

// Starts an incoming migration from `fd`, a descriptor the process inherited.
Result<void> StartIncoming(QemuProcess& qemu, int fd, bool ignore_shared, Deadline deadline) {
  if (ignore_shared) {
    if (auto r = SetIgnoreShared(qemu, true, deadline); !r) return r;
  }
  if (auto r = qemu.Execute("migrate-incoming", {{"uri", fmt::format("fd:{}", fd)}}, deadline);
      !r) {
    return Fail(std::move(r).error());
  }
  return {};
}

// Migrates the paused `qemu` out through `fd`: with `ignore_shared`, RAM mapped shared
// from a file is skipped and only device state is written.
Result<void> MigrateOut(QemuProcess& qemu, int fd, bool ignore_shared, Deadline deadline) {
  if (auto r = SetIgnoreShared(qemu, ignore_shared, deadline); !r) return r;
  // The default bandwidth cap (32 MiB/s) is for live migration over a network.
  if (auto r = qemu.Execute("migrate-set-parameters", {{"max-bandwidth", int64_t{1} << 40}},
                            deadline);
      !r) {
    return Fail(std::move(r).error());
  }
  auto client = qemu.Qmp(deadline);
  if (!client) return Fail(std::move(client).error());
  if (auto r = (*client)->SendFd("vessel-migration", fd, deadline); !r) return r;
  if (auto r = qemu.Execute("migrate", {{"uri", "fd:vessel-migration"}}, deadline); !r) {
    return Fail(std::move(r).error());
  }
  return WaitMigrationDone(qemu, deadline);
}

// A path by which a child names a descriptor it inherited.
std::string FdPath(int fd) { return fmt::format("/proc/self/fd/{}", fd); }

class QemuVm final : public Vm {
 public:
  QemuVm(const QemuEngine& engine, QemuOptions options, VmSpec spec, RuntimeDir dir,
         SocketPair agent, SocketPair console)
      : id_(dir.id()),
        options_(std::move(options)),
        accel_(engine.accel()),
        spec_(std::move(spec)),
        dir_(std::move(dir)),
        agent_(std::move(agent)),
        console_(std::move(console)),
        console_log_(UniqueFd(::open(dir_.File("console.log").c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC,
                                     0600)),
                     options_.console_log_bytes),
        wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  ~QemuVm() override { Destroy(); }

  // Starts the VM's QEMU: a boot, or a restore from spec_.restore.
  Result<void> Start() {
    if (JailEnabled()) {
      // Started by root, QEMU runs as the jail's uid. The RAM it maps is a memfd, open to
      // it through the descriptor it inherits, or a snapshot's memory file, the caller's
      // and mode 0600, which QEMU 7.2 opens by name read-write: that one it opens through
      // an idmapped mount that shows it as the jail user's. Where the file system takes no
      // idmapped mount, QEMU keeps the caller's uid (still without a capability).
      auto ids = JailUser();
      bool unprivileged = ids.has_value();
      if (ids && spec_.restore) {
        auto mount = SavedMemoryMount(*spec_.restore, *ids);
        if (mount) {
          saved_memory_mount_ = std::move(*mount);
        } else {
          unprivileged = false;
        }
      }
      auto jail = VmmJail(spec_, {.vm_dir = dir_.path(),
                                  .binary = options_.binary,
                                  .kvm = accel_ == Accel::kKvm,
                                  .unprivileged = unprivileged});
      if (!jail) return Fail(std::move(jail).error());
      jail_ = std::move(*jail);
    }
    if (const auto& parent = CgroupParent()) {
      auto cgroup = VmCgroup::Create(*parent, id_, LimitsFor(spec_));
      if (!cgroup) return Fail(std::move(cgroup).error());
      cgroup_ = std::move(*cgroup);
    }
    if (!spec_.restore) {
      // RAM is a file in memory only (CreateGuestRam): it stays in memory whatever file
      // system the runtime directory is on (a shared mapping of a disk file pays the file
      // system for every page the guest first writes), and it goes with the VM.
      auto ram = CreateGuestRam(uint64_t{spec_.memory_mib} << 20);
      if (!ram) return Fail(std::move(ram).error());
      ram_ = std::move(*ram);
      Launch launch = MakeLaunch(FdPath(ram_.get()), /*shared=*/true);
      launch.inherit_fds.push_back(ram_.get());
      auto qemu = StartQemu(std::move(launch));
      if (!qemu) return Fail(std::move(qemu).error());
      qemu_ = std::move(*qemu);
      memory_shared_ = true;
    } else if (auto r = StartSaved(*spec_.restore); !r) {
      return r;
    }
    if (!wake_) return Fail(Error::HostIo("eventfd", errno));
    watcher_ = std::thread([this] { WatchForExit(); });
    return {};
  }

  const std::string& id() const override { return id_; }
  int agent_fd() const override { return agent_.host.get(); }
  const std::string& private_dir() const override { return dir_.path(); }
  bool Running() override { return qemu_.process.Running(); }

  Result<std::string> RunState() override {
    auto status = qemu_.Execute("query-status", {}, Deadline::After(kQmpTimeout));
    if (!status) return Fail(std::move(status).error());
    if (!status->is_object() || !(*status)["status"].is_string()) {
      return Fail(Error::Backend("QMP query-status: unexpected reply"));
    }
    return (*status)["status"].get<std::string>();
  }

  std::string Diagnostics() const override { return dir_.Diagnostics("QEMU"); }

  void Destroy() override {
    {
      std::lock_guard lock(watch_mutex_);
      stopping_ = true;
    }
    Wake();
    if (watcher_.joinable()) watcher_.join();
    qemu_.process.Kill();
    DropNext();
    ram_.Reset();
    cgroup_.reset();
    agent_.host.Reset();
    agent_.vmm.Reset();
    console_.host.Reset();
    console_.vmm.Reset();
    dir_.Remove();
  }

  Result<void> Pause() override {
    if (auto r = qemu_.Execute("stop", {}, Deadline::After(kQmpTimeout)); !r) {
      return Fail(std::move(r).error().Context("pausing the VM"));
    }
    return {};
  }

  Result<void> Resume() override {
    auto deadline = Deadline::After(kSaveTimeout);
    if (relaunch_state_) {
      if (auto r = Relaunch(deadline); !r) return r;
    }
    if (incoming_) {
      if (auto r = LoadIncoming(deadline); !r) return r;
      if (auto r = WaitIncomingDone(qemu_, deadline); !r) return Fail(WithDiagnostics(r.error()));
      incoming_ = false;
    }
    if (auto r = qemu_.Execute("cont", {}, deadline); !r) {
      return Fail(std::move(r).error().Context("resuming the VM"));
    }
    return {};
  }

  // Where the save will be in place, the QEMU this VM goes on in after it starts now too,
  // mapping the RAM privately and waiting for the state, so that Resume() does not wait
  // for a QEMU to start. Should it fail to start, Resume() starts another.
  Result<std::optional<VmSpec::Saved>> SaveAhead(const std::string& dir) override {
    DropNext();
    auto saved = state_ahead_.SaveAhead(ram_.get(), memory_shared_, dir);
    if (!saved || !*saved) return saved;
    UniqueFd state(::open(FdPath((*saved)->state->get()).c_str(), O_RDONLY | O_CLOEXEC));
    if (!state) return saved;
    auto next = LaunchRestored(FdPath(ram_.get()), ram_.get(), state.get());
    if (!next) return saved;
    next_ = std::move(*next);
    next_state_ = std::move(state);
    return saved;
  }

  Result<void> Save(const std::string& dir) override {
    auto deadline = Deadline::After(kSaveTimeout);
    std::string memory = dir + "/" + kSavedMemoryFile;
    std::string state = dir + "/" + kSavedStateFile;
    Result<void> r;
    if (!memory_shared_ || !state_ahead_.Is(state)) DropNext();
    if (memory_shared_ && state_ahead_.Is(state)) {
      // SaveAhead() handed out this VM's RAM as the saved memory: only the device state
      // is written, and Resume() goes on as a private mapping of the RAM, now frozen.
      r = SaveInPlace(state, deadline);
    } else if (memory_shared_) {
      r = SaveCopyingRam(memory, state, deadline);
    } else {
      r = SaveByCopy(memory, state, deadline);
    }
    if (!r) {
      ::unlink(memory.c_str());
      ::unlink(state.c_str());
    }
    return r;
  }

 private:
  // Where a restored VM's QEMU finds the saved memory when it is attached to its jail.
  static constexpr const char* kSavedMemoryPath = "/saved/memory";

  Launch MakeLaunch(const std::string& memory, bool shared) const {
    Launch launch;
    launch.binary = options_.binary;
    launch.accel = accel_;
    launch.spec = &spec_;
    launch.wiring.name = "vessel-" + id_;
    // The console goes through a socket this VM keeps across its QEMUs, drained into a
    // capped log by the watcher thread: a file chardev would grow without limit.
    launch.wiring.console_chardev = fmt::format("socket,fd={}", console_.vmm.get());
    launch.wiring.agent_fd = agent_.vmm.get();
    launch.wiring.kernel_cmdline = GuestKernelCmdline();
    if (!spec_.guest_args.empty()) launch.wiring.kernel_cmdline += " " + spec_.guest_args;
    launch.wiring.memory_path = memory;
    launch.wiring.memory_shared = shared;
    launch.inherit_fds = {agent_.vmm.get(), console_.vmm.get()};
    launch.output_path = dir_.File("vmm.log");
    launch.jail = jail_;
    if (cgroup_) launch.cgroup_procs = cgroup_->procs();
    return launch;
  }

  // Makes `next` this VM's QEMU and returns the previous one.
  QemuProcess Replace(QemuProcess next) {
    std::lock_guard lock(watch_mutex_);
    std::swap(qemu_, next);
    Wake();
    return next;
  }

  void Wake() {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof(one));
  }

  // The host keeps the VMM end of the agent channel (for the next QEMU of this VM), so
  // the channel does not end by itself when QEMU dies: this thread ends it, and readers
  // see the end of the stream as they would without the kept end.
  void WatchForExit() {
    for (;;) {
      int exited;
      {
        std::lock_guard lock(watch_mutex_);
        if (stopping_) return;
        exited = qemu_.exited.get();
      }
      pollfd fds[3] = {{wake_.get(), POLLIN, 0},
                       {console_.host.get(), POLLIN, 0},
                       {exited, POLLIN, 0}};
      if (::poll(fds, exited >= 0 ? 3 : 2, -1) < 0 && errno != EINTR) return;
      if (fds[1].revents & POLLIN) DrainConsole();
      if (fds[0].revents & POLLIN) {
        uint64_t count;
        (void)!::read(wake_.get(), &count, sizeof(count));
        continue;
      }
      if (fds[2].revents & POLLIN) {
        std::lock_guard lock(watch_mutex_);
        // A QEMU replaced in the meantime was retired on purpose.
        if (stopping_ || qemu_.exited.get() != exited) continue;
        ::shutdown(agent_.vmm.get(), SHUT_RDWR);
        DrainConsole();  // the last words of a guest that died
        return;
      }
    }
  }

  // Moves what the guest wrote to its console into console.log, up to the cap; beyond it
  // the bytes are read and dropped, so the guest never waits on a full socket.
  void DrainConsole() {
    uint8_t buf[64 * 1024];
    for (;;) {
      ssize_t n = ::recv(console_.host.get(), buf, sizeof(buf), MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      console_log_.Append({buf, static_cast<size_t>(n)});
    }
  }

  Error WithDiagnostics(const Error& error) const {
    return Error::Backend(error.message() + "\n" + Diagnostics());
  }

  // Starts QEMU on a private mapping of `memory`, waiting for the machine's state from
  // `state`. With `load`, loading starts at once; else Resume() starts it, so that a VM
  // can be started ahead of time and wait, with its memory mapped, until it is needed.
  // Starts from the spec's saved VM. QEMU maps the memory through the descriptor it
  // inherits, and reads the state through a description of its own, so that VMs started
  // from one spec at once do not share a file offset.
  Result<void> StartSaved(const VmSpec::Saved& saved) {
    if (!saved.memory || !*saved.memory || !saved.state || !*saved.state) {
      return Fail(Error::InvalidConfig("spec", "the saved VM has no open memory or state file"));
    }
    std::string state_path = FdPath(saved.state->get());
    UniqueFd state_fd(::open(state_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!state_fd) return Fail(Error::HostIo("reopen the saved state", errno));
    auto deadline = Deadline::After(kSaveTimeout);
    if (saved_memory_mount_) {
      return StartRestored(kSavedMemoryPath, -1, std::move(state_fd), /*load=*/false, deadline,
                           std::exchange(saved_memory_mount_, {}));
    }
    int memory_fd = saved.memory->get();
    return StartRestored(FdPath(memory_fd), memory_fd, std::move(state_fd), /*load=*/false,
                         deadline);
  }

  // The mount by which a QEMU running as `ids` opens the saved memory, or none when the
  // file is open to it as it is (a memfd, mode 0777). Fails where the file system takes no
  // idmapped mount.
  static Result<UniqueFd> SavedMemoryMount(const VmSpec::Saved& saved, const JailIds& ids) {
    if (!saved.memory || !*saved.memory) return UniqueFd();
    struct stat st {};
    if (::fstat(saved.memory->get(), &st) != 0) {
      return Fail(Error::HostIo("stat the saved memory", errno));
    }
    if ((st.st_mode & 0006) == 0006) return UniqueFd();
    return IdmappedFile(saved.memory->get(), ids.uid, ids.gid);
  }

  // `memory` is QEMU's path to the RAM image; `memory_fd`, when not -1, is inherited so
  // that a /proc/self/fd path names it; `mount`, when set, is attached at `memory` in the
  // jail.
  Result<void> StartRestored(const std::string& memory, int memory_fd, UniqueFd state_fd, bool load,
                             Deadline deadline, UniqueFd mount = {}) {
    auto qemu = LaunchRestored(memory, memory_fd, state_fd.get(), std::move(mount));
    if (!qemu) return Fail(std::move(qemu).error());
    GoOnIn(std::move(*qemu), std::move(state_fd));
    if (load) return LoadIncoming(deadline);
    return {};
  }

  // A QEMU of this VM on a private mapping of `memory`, waiting for the state it inherits
  // as `state_fd`; `memory_fd` and `mount` as for StartRestored().
  Result<QemuProcess> LaunchRestored(const std::string& memory, int memory_fd, int state_fd,
                                     UniqueFd mount = {}) const {
    Launch launch = MakeLaunch(memory, /*shared=*/false);
    launch.wiring.incoming = true;
    launch.inherit_fds.push_back(state_fd);
    if (memory_fd >= 0) launch.inherit_fds.push_back(memory_fd);
    if (mount && launch.jail) launch.jail->attached.push_back({mount.get(), memory});
    return StartQemu(std::move(launch));
  }

  // Makes `qemu`, waiting for the state it inherited as `state_fd`, this VM's QEMU.
  void GoOnIn(QemuProcess qemu, UniqueFd state_fd) {
    Replace(std::move(qemu));
    memory_shared_ = false;
    incoming_ = true;
    state_fd_ = std::move(state_fd);
  }

  // Stops the QEMU that SaveAhead() started, unused.
  void DropNext() {
    next_.process.Kill();
    next_ = QemuProcess{};
    next_state_.Reset();
  }

  // Starts loading the state QEMU waits for; the descriptor is QEMU's by inheritance.
  Result<void> LoadIncoming(Deadline deadline) {
    if (!state_fd_) return {};
    auto r = StartIncoming(qemu_, state_fd_.get(), /*ignore_shared=*/true, deadline);
    state_fd_.Reset();
    if (!r) return Fail(WithDiagnostics(r.error()));
    return {};
  }

  // Writes the device state to `state`; RAM, mapped shared from this VM's memfd, is
  // skipped, and the memfd becomes the saved image. Resume() then goes on as a private
  // mapping of it, in a new QEMU, so that nothing is copied and the image is never
  // written again: the VMs restored from it can be started meanwhile.
  Result<void> SaveInPlace(const std::string& state, Deadline deadline) {
    auto fd = state_ahead_.Take(state);
    if (!fd) return Fail(std::move(fd).error());
    if (auto r = MigrateOut(qemu_, fd->get(), /*ignore_shared=*/true, deadline); !r) return r;
    UniqueFd state_fd(::open(state.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!state_fd) return Fail(Error::HostIo("open " + state, errno));
    relaunch_state_ = std::move(state_fd);
    return {};
  }

  // Replaces the QEMU whose RAM was saved in place with one that maps that RAM privately
  // and loads the saved state. The agent channel's VMM end is inherited again, so bytes in
  // flight stay in the socket for the new process; the old one is stopped and reads
  // nothing more. Should the new QEMU fail, the VM fails: the old one cannot run on, since
  // it would write into the saved image.
  Result<void> Relaunch(Deadline deadline) {
    QemuProcess old = Replace(QemuProcess{});
    Result<void> started;
    if (next_.process.Running()) {
      relaunch_state_.Reset();
      GoOnIn(std::exchange(next_, QemuProcess{}), std::move(next_state_));
      started = LoadIncoming(deadline);
    } else {
      DropNext();
      started = StartRestored(FdPath(ram_.get()), ram_.get(), std::move(relaunch_state_),
                              /*load=*/true, deadline);
    }
    if (started) started = WaitIncomingDone(qemu_, deadline);
    incoming_ = false;
    old.process.Kill();
    if (!started) {
      qemu_.process.Kill();
      return Fail(
          WithDiagnostics(started.error()).Context("restarting the VM on its saved memory"));
    }
    return {};
  }

  // Writes the device state to `state`, skipping RAM, and the pages of the RAM memfd
  // that hold data to `memory` (holes stay holes). The VM goes on from its memfd as it
  // was: `cont` after a completed migration runs the source again.
  Result<void> SaveCopyingRam(const std::string& memory, const std::string& state,
                              Deadline deadline) {
    auto fd = state_ahead_.Take(state);
    if (!fd) return Fail(std::move(fd).error());
    if (auto r = MigrateOut(qemu_, fd->get(), /*ignore_shared=*/true, deadline); !r) return r;
    return WriteDataPages(ram_.get(), memory);
  }

  // Writes RAM to a new file through a second QEMU that takes this VM's whole state by
  // migration into a memfd it maps shared, then saves that QEMU's device state and copies
  // the memfd's data pages to `memory`. For VMs whose RAM is a private mapping. QEMU never
  // opens the snapshot directory's files: they are the caller's, and QEMU may run as
  // another uid.
  Result<void> SaveByCopy(const std::string& memory, const std::string& state,
                          Deadline deadline) {
    off_t size = off_t{spec_.memory_mib} << 20;
    UniqueFd copy(static_cast<int>(::memfd_create("vessel-save", MFD_CLOEXEC)));
    if (!copy) return Fail(Error::HostIo("memfd_create", errno));
    if (::ftruncate(copy.get(), size) != 0) return Fail(Error::HostIo("size a memfd", errno));
    auto channel = MakeSocketPair();
    if (!channel) return Fail(std::move(channel).error());
    Launch launch = MakeLaunch(FdPath(copy.get()), /*shared=*/true);
    launch.wiring.name += "-save";
    launch.wiring.console_chardev = "null";
    launch.wiring.agent_fd = -1;
    launch.wiring.incoming = true;
    launch.inherit_fds = {channel->vmm.get(), copy.get()};
    launch.output_path = dir_.File("vmm.log");
    auto writer = StartQemu(std::move(launch));
    if (!writer) return Fail(std::move(writer).error());
    if (auto r = StartIncoming(*writer, channel->vmm.get(), /*ignore_shared=*/false, deadline);
        !r) {
      return Fail(WithDiagnostics(r.error()));
    }
    channel->vmm.Reset();
    if (auto r = MigrateOut(qemu_, channel->host.get(), /*ignore_shared=*/false, deadline); !r) {
      return Fail(WithDiagnostics(r.error()));
    }
    if (auto r = WaitIncomingDone(*writer, deadline); !r) return Fail(WithDiagnostics(r.error()));
    auto fd = state_ahead_.Take(state);
    if (!fd) return Fail(std::move(fd).error());
    if (auto r = MigrateOut(*writer, fd->get(), /*ignore_shared=*/true, deadline); !r) {
      return Fail(WithDiagnostics(r.error()));
    }
    writer->process.Kill();
    return WriteDataPages(copy.get(), memory);
  }

  // A new file `memory` of the VM's RAM size, with the data pages of the memfd `ram` (holes
  // stay holes).
  Result<void> WriteDataPages(int ram, const std::string& memory) {
    auto out = CreateNewFile(memory, O_WRONLY);
    if (!out) return Fail(std::move(out).error());
    off_t size = off_t{spec_.memory_mib} << 20;
    if (::ftruncate(out->get(), size) != 0) return Fail(Error::HostIo("size " + memory, errno));
    if (auto r = CopyDataSkippingZeros(ram, out->get(), size); !r) {
      return Fail(std::move(r).error().Context("writing " + memory));
    }
    return {};
  }

  std::string id_;
  QemuOptions options_;
  Accel accel_;
  VmSpec spec_;
  RuntimeDir dir_;
  std::optional<JailSpec> jail_;  // every QEMU of this VM starts in it, and in cgroup_
  std::optional<VmCgroup> cgroup_;
  SocketPair agent_;  // the VMM end is kept, to hand to the next QEMU of this VM
  SocketPair console_;     // the guest console; the VMM end is every QEMU's serial port
  CappedLog console_log_;  // console.log, written by the watcher thread only
  QemuProcess qemu_;       // replaced under watch_mutex_
  UniqueFd wake_;     // an eventfd: qemu_ changed or the VM is being destroyed
  std::mutex watch_mutex_;
  bool stopping_ = false;
  std::thread watcher_;
  bool memory_shared_ = false;  // RAM is ram_, mapped shared
  bool incoming_ = false;       // a migration is loading; Resume() waits for it
  UniqueFd state_fd_;           // the saved state QEMU waits for, until Resume() loads it
  UniqueFd relaunch_state_;     // saved in place: Resume() restarts QEMU from this state
  QemuProcess next_;            // started by SaveAhead(): the QEMU Resume() goes on in
  UniqueFd next_state_;         // the state next_ waits for, as it inherited it
  UniqueFd ram_;  // a booted VM's RAM (a memfd): shared while memory_shared_, then frozen
  UniqueFd saved_memory_mount_;  // the saved memory, idmapped for the jail, until started
  StateAhead state_ahead_;       // the state file SaveAhead() created
};

}  // namespace

std::string GuestKernelCmdline(bool quiet) {
  std::string cmdline =
      fmt::format("console=ttyS0{} mitigations=off no_timer_check tsc=reliable reboot=t panic=-1",
                  quiet ? " quiet" : "");
  if (uint64_t khz = HostTscKhz()) cmdline += fmt::format(" tsc_early_khz={}", khz);
  return cmdline;
}

std::vector<std::string> QemuArgv(const std::string& binary, Accel accel, const VmSpec& spec,
                                  const QemuWiring& wiring) {
  // clang-format off
  std::vector<std::string> argv = {
      binary,
      "-name", wiring.name,
      "-M", wiring.memory_path.empty() ? "microvm,acpi=off" : "microvm,acpi=off,memory-backend=mem0",
      "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
      "-smp", std::to_string(spec.vcpus),
      "-m", fmt::format("{}M", spec.memory_mib),
      "-kernel", spec.kernel,
      "-initrd", spec.initramfs,
      "-append", wiring.kernel_cmdline,
      "-chardev", wiring.console_chardev + ",id=console",
      "-serial", "chardev:console",
      "-device", "virtio-serial-device,id=vser0",
      "-chardev", wiring.agent_fd >= 0 ? fmt::format("socket,id=agent,fd={}", wiring.agent_fd)
                                       : std::string("null,id=agent"),
      "-device", fmt::format("virtserialport,bus=vser0.0,chardev=agent,name={}", kAgentPortName),
      "-chardev", fmt::format("socket,id=qmp,fd={}", wiring.qmp_fd),
      "-mon", "chardev=qmp,mode=control",
      // QEMU's own seccomp filter, installed before the guest runs: no obsolete system
      // calls, no setuid and friends, no fork or exec, no changing its scheduling or
      // memory policy. Snapshots go through descriptors handed over QMP, so nothing
      // Vessel asks of QEMU needs a process.
      "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
  };
  // clang-format on
  if (!wiring.memory_path.empty()) {
    argv.insert(argv.end(),
                {"-object",
                 fmt::format("memory-backend-file,id=mem0,size={}M,mem-path={},share={},align=2M",
                             spec.memory_mib, QemuOptionValue(wiring.memory_path),
                             wiring.memory_shared ? "on" : "off")});
  }
  if (!spec.image.empty()) {
    // Read-only for QEMU too: the guest's writes fail on the device, never reach the file.
    argv.insert(argv.end(),
                {"-drive", fmt::format("file={},if=none,id=root,format=raw,readonly=on",
                                       QemuOptionValue(spec.image)),
                 "-device", "virtio-blk-device,drive=root"});
  }
  if (wiring.incoming) argv.insert(argv.end(), {"-incoming", "defer"});
  if (accel == Accel::kKvm) {
    argv.insert(argv.end(), {"-accel", "kvm", "-cpu", "host"});
  } else {
    argv.insert(argv.end(), {"-accel", fmt::format("tcg,thread=multi,tb-size={}", kTcgCacheMib),
                             "-cpu", "max"});
  }
  return argv;
}

QemuEngine::QemuEngine(QemuOptions options)
    : options_(std::move(options)),
      accel_(options_.accel.value_or(KvmUsable() ? Accel::kKvm : Accel::kTcg)) {}

std::string QemuEngine::name() const { return accel_ == Accel::kKvm ? "qemu-kvm" : "qemu-tcg"; }

std::string QemuEngine::version() const {
  // Asked once per binary: an engine may run another QEMU than the one before it.
  static std::mutex mutex;
  static std::map<std::string, std::string> versions;
  std::lock_guard lock(mutex);
  auto [it, inserted] = versions.try_emplace(options_.binary);
  if (!inserted) return it->second;
  auto out = RunForOutput({options_.binary, "--version"}, kVersionTimeout);
  std::string line = out ? out->substr(0, out->find('\n')) : std::string();
  while (!line.empty() && line.back() == ' ') line.pop_back();
  it->second = line.empty() ? std::string("unknown") : line;
  return it->second;
}

Result<std::unique_ptr<Vm>> QemuEngine::Start(const VmSpec& spec) {
  // Vessel does not drive vhost-vsock: QEMU's agent channel is the virtio-serial port.
  if (spec.channel != AgentChannel::kVirtioSerial) {
    return Fail(Error::Lifecycle({LifecycleError::VsockUnavailable{}}));
  }
  SweepStaleRuntimeDirs();
  auto dir = RuntimeDir::Create();
  if (!dir) return Fail(std::move(dir).error());
  auto agent = MakeSocketPair();
  if (!agent) return Fail(std::move(agent).error());
  auto console = MakeSocketPair();
  if (!console) return Fail(std::move(console).error());
  auto vm = std::make_unique<QemuVm>(*this, options_, spec, std::move(*dir), std::move(*agent),
                                     std::move(*console));
  if (auto r = vm->Start(); !r) return Fail(std::move(r).error());
  return vm;
}

}  // namespace vessel::engine::qemu
