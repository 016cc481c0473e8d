// vessel_bench: how long a Vessel sandbox takes to come up and to run a command, side by
// side with plain QEMU booting the same guest, measured in one run on this host.
//
// Plain QEMU gets the machine, devices and accelerator that the QEMU engine
// (src/engine/qemu/qemu_engine.cc) uses; only the serial console differs: it is a socket
// to the bench instead of a file, so the bench sees the first byte the moment QEMU
// writes it. Each round boots every kind once, in a rotating order, so drift on a shared
// machine hits every row alike.
#include <fmt/format.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/io.h"
#include "base/subprocess.h"
#include "base/unique_fd.h"
#include "bench/stats.h"
#include "engine/qemu/qemu_engine.h"
#include "protocol/wire.h"
#include "vessel/sandbox.h"

namespace vessel::bench {
namespace {


constexpr const char* kUsage = R"(usage: vessel_bench [--iterations N] [--exec-iterations N]
  --iterations N       boots of each kind (default 5)
  --exec-iterations N  timed `true` round trips in one ready VM (default 200)
Guest assets: $VESSEL_ASSET_DIR, else the build's guest/ directory.
)";

// printk's line when the kernel execs PID 1: the guest has reached userspace.
constexpr std::string_view kInitLine = "Run /init as init process";
constexpr uint32_t kVcpus = 1;
constexpr uint32_t kMemoryMib = 256;
constexpr auto kBootTimeout = std::chrono::seconds(30);
constexpr int kExecWarmup = 10;
// Enough of the console to hold the log up to PID 1 and to explain a failure.
constexpr size_t kConsoleKeep = 256 * 1024;

// ---------------------------------------------------------------------------------------
// Plain QEMU

struct Guest {
  std::string kernel;
  std::string initramfs;
  engine::qemu::Accel accel = engine::qemu::Accel::kTcg;
  // Vessel's kernel command line, and the same without "quiet" so the kernel prints to
  // the console from early on.
  std::string cmdline = engine::qemu::GuestKernelCmdline(/*quiet=*/true);
  std::string verbose_cmdline = engine::qemu::GuestKernelCmdline(/*quiet=*/false);
};

// Files and sockets of one plain QEMU; the process is declared last so it dies first.
struct PlainQemu {
  UniqueFd ram;  // with a RAM file: a memfd, as the engine maps a booted VM's RAM
  UniqueFd console;
  UniqueFd agent;
  UniqueFd qmp;
  std::string log_path;
  Subprocess process;

  ~PlainQemu() {
    process.Kill();
    if (!log_path.empty()) ::unlink(log_path.c_str());
  }
};

Result<std::pair<UniqueFd, UniqueFd>> SocketPair() {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return Fail(Error::HostIo("socketpair", errno));
  }
  return std::pair{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// Starts QEMU the way QemuEngine::Start does, with the console on a socket. `spawned` is
// taken just before the fork, as Sandbox::Create's clock starts before its own.
Result<std::unique_ptr<PlainQemu>> SpawnPlainQemu(const Guest& guest, const std::string& cmdline,
                                                  Clock::time_point& spawned,
                                                  bool ram_file = false) {
  auto console = SocketPair();
  auto agent = SocketPair();
  auto qmp = SocketPair();
  if (!console) return Fail(std::move(console).error());
  if (!agent) return Fail(std::move(agent).error());
  if (!qmp) return Fail(std::move(qmp).error());
  auto vm = std::make_unique<PlainQemu>();
  vm->log_path = fmt::format("/tmp/vessel-bench-{}-qemu.log", ::getpid());

  engine::VmSpec spec;
  spec.kernel = guest.kernel;
  spec.initramfs = guest.initramfs;
  spec.vcpus = kVcpus;
  spec.memory_mib = kMemoryMib;
  engine::qemu::QemuWiring wiring;
  wiring.name = "vessel-bench";
  wiring.console_chardev = fmt::format("socket,fd={}", console->second.get());
  wiring.agent_fd = agent->second.get();
  wiring.qmp_fd = qmp->second.get();
  wiring.kernel_cmdline = cmdline;
  SpawnOptions spawn;
  spawn.inherit_fds = {console->second.get(), agent->second.get(), qmp->second.get()};
  if (ram_file) {
    vm->ram = UniqueFd(static_cast<int>(::memfd_create("vessel-bench-ram", MFD_CLOEXEC)));
    if (!vm->ram || ::ftruncate(vm->ram.get(), off_t{kMemoryMib} << 20) != 0) {
      return Fail(Error::HostIo("memfd", errno));
    }
    wiring.memory_path = fmt::format("/proc/self/fd/{}", vm->ram.get());
    wiring.memory_shared = true;
    spawn.inherit_fds.push_back(vm->ram.get());
  }
  spawn.argv = engine::qemu::QemuArgv("qemu-system-x86_64", guest.accel, spec, wiring);
  spawn.output_path = vm->log_path;
  ::unlink(vm->log_path.c_str());
  spawned = Clock::now();
  auto process = Subprocess::Spawn(spawn);
  if (!process) return Fail(std::move(process).error().Context("starting QEMU"));
  vm->process = std::move(*process);
  vm->console = std::move(console->first);
  vm->agent = std::move(agent->first);
  vm->qmp = std::move(qmp->first);
  return vm;
}

struct PlainBoot {
  std::optional<double> first_byte_ms;
  std::optional<double> first_line_ms;
  std::optional<double> init_ms;   // the kernel printed kInitLine
  std::optional<double> hello_ms;  // the agent's hello frame arrived on its port
  std::string console;
};

enum class Until { kInit, kHello };

// Reads the console and the agent port until `until` is seen, recording when each
// milestone first appeared.
Result<PlainBoot> Watch(PlainQemu& vm, Clock::time_point spawned, Until until) {
  PlainBoot boot;
  protocol::FrameReader agent_reader;
  auto deadline = spawned + kBootTimeout;
  uint8_t buf[64 * 1024];
  auto failure = [&](std::string_view why) {
    std::string qemu_said = ReadFileTail(vm.log_path, 2048);
    std::string tail =
        boot.console.substr(boot.console.size() - std::min<size_t>(boot.console.size(), 2048));
    return Fail(
        Error::Backend(fmt::format("{}\nQEMU said: {}\nconsole tail:\n{}", why, qemu_said, tail)));
  };
  for (;;) {
    if (until == Until::kInit && boot.init_ms) return boot;
    if (until == Until::kHello && boot.hello_ms) return boot;
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return failure("timed out");
    pollfd fds[2] = {{vm.console.get(), POLLIN, 0}, {vm.agent.get(), POLLIN, 0}};
    int n = ::poll(fds, 2, static_cast<int>(left));
    if (n < 0 && errno != EINTR) return Fail(Error::HostIo("poll", errno));
    if (fds[0].revents) {
      ssize_t got = ::read(vm.console.get(), buf, sizeof(buf));
      double now = MsSince(spawned);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return failure("the console closed (QEMU exited)");
      if (!boot.first_byte_ms) boot.first_byte_ms = now;
      size_t scan_from =
          boot.console.size() > kInitLine.size() ? boot.console.size() - kInitLine.size() : 0;
      if (boot.console.size() < kConsoleKeep)
        boot.console.append(reinterpret_cast<char*>(buf), static_cast<size_t>(got));
      if (!boot.first_line_ms && boot.console.find('\n') != std::string::npos)
        boot.first_line_ms = now;
      if (!boot.init_ms && boot.console.find(kInitLine, scan_from) != std::string::npos)
        boot.init_ms = now;
    }
    if (fds[1].revents) {
      ssize_t got = ::read(vm.agent.get(), buf, sizeof(buf));
      double now = MsSince(spawned);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return failure("the agent port closed (QEMU exited)");
      agent_reader.Feed({buf, static_cast<size_t>(got)});
      for (;;) {
        auto frame = agent_reader.Next();
        if (!frame) return failure(frame.error().message());
        if (!*frame) break;
        if ((*frame)->header.type == protocol::MessageType::kHello && !boot.hello_ms) {
          boot.hello_ms = now;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// The benchmark

struct Options {
  int iterations = 5;
  int exec_iterations = 200;
};

std::optional<Options> ParseArgs(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    int* target = arg == "--iterations"        ? &options.iterations
                  : arg == "--exec-iterations" ? &options.exec_iterations
                                               : nullptr;
    if (!target || i + 1 >= argc) return std::nullopt;
    std::string_view value = argv[++i];
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), *target);
    if (ec != std::errc() || end != value.data() + value.size() || *target < 1) return std::nullopt;
  }
  return options;
}

std::string QemuVersion() {
  FILE* p = ::popen("qemu-system-x86_64 --version 2>/dev/null", "r");
  if (!p) return "unknown";
  char line[256] = {};
  bool ok = std::fgets(line, sizeof(line), p) != nullptr;
  ::pclose(p);
  if (!ok) return "unknown";
  std::string s(line);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

void Progress(std::string_view what) { fmt::print(stderr, "vessel_bench: {}\n", what); }

struct Measurements {
  Series first_byte{"plain QEMU, verbose: spawn -> first console byte", {}};
  Series first_line{"plain QEMU, verbose: spawn -> first console line", {}};
  Series to_init{"plain QEMU, verbose: spawn -> \"Run /init\" (userspace)", {}};
  Series to_hello{"plain QEMU, Vessel cmdline: spawn -> agent hello", {}};
  Series to_hello_ram_file{"plain QEMU, Vessel cmdline, RAM a shared memfd: -> hello", {}};
  Series create{"vessel: Sandbox::Create -> ready (hello)", {}};
  Series first_exec{"vessel: first exec `true` after ready", {}};
  Series destroy{"vessel: Destroy", {}};
  Series exec{"vessel: exec `true` round trip (warm VM)", {}};
  std::string sample_first_line;
  std::string engine_name;
};

SandboxConfig BenchConfig() {
  SandboxConfig config;
  config.vcpus = kVcpus;
  config.memory_mib = kMemoryMib;
  config.boot_timeout = kBootTimeout;
  config.name = "vessel-bench";
  return config;
}

Result<void> RunTrue(Sandbox& sandbox) {
  auto result = sandbox.Execute(Command::Argv({"true"}));
  if (!result) return Fail(std::move(result).error());
  if (!result->ok()) return Fail(Error::Backend("`true` did not exit 0 in the guest"));
  return {};
}

Result<void> PlainVerboseBoot(const Guest& guest, Measurements& m) {
  Clock::time_point spawned;
  auto vm = SpawnPlainQemu(guest, guest.verbose_cmdline, spawned);
  if (!vm) return Fail(std::move(vm).error());
  auto boot = Watch(**vm, spawned, Until::kInit);
  if (!boot) return Fail(std::move(boot).error().Context("plain QEMU, verbose"));
  m.first_byte.ms.push_back(*boot->first_byte_ms);
  m.first_line.ms.push_back(*boot->first_line_ms);
  m.to_init.ms.push_back(*boot->init_ms);
  if (m.sample_first_line.empty()) {
    m.sample_first_line = boot->console.substr(0, boot->console.find('\n'));
  }
  return {};
}

Result<void> PlainHelloBoot(const Guest& guest, Measurements& m, bool ram_file) {
  Clock::time_point spawned;
  auto vm = SpawnPlainQemu(guest, guest.cmdline, spawned, ram_file);
  if (!vm) return Fail(std::move(vm).error());
  auto boot = Watch(**vm, spawned, Until::kHello);
  if (!boot) return Fail(std::move(boot).error().Context("plain QEMU, Vessel cmdline"));
  (ram_file ? m.to_hello_ram_file : m.to_hello).ms.push_back(*boot->hello_ms);
  return {};
}

Result<void> PlainHelloBootAnonymousRam(const Guest& guest, Measurements& m) {
  return PlainHelloBoot(guest, m, /*ram_file=*/false);
}

// Vessel maps a booted VM's RAM shared from a memfd, so that a save needs no copy of it.
Result<void> PlainHelloBootRamFile(const Guest& guest, Measurements& m) {
  return PlainHelloBoot(guest, m, /*ram_file=*/true);
}

Result<void> VesselBoot(const Guest&, Measurements& m) {
  auto t0 = Clock::now();
  auto sandbox = Sandbox::Create(BenchConfig());
  if (!sandbox) return Fail(std::move(sandbox).error());
  m.create.ms.push_back(MsSince(t0));
  m.engine_name = (*sandbox)->engine_name();
  auto t1 = Clock::now();
  if (auto r = RunTrue(**sandbox); !r) return r;
  m.first_exec.ms.push_back(MsSince(t1));
  auto t2 = Clock::now();
  if (auto r = (*sandbox)->Destroy(); !r) return r;
  m.destroy.ms.push_back(MsSince(t2));
  return {};
}

// One boot of each kind, in an order that rotates from round to round, so that no kind
// always runs first or always right after the same other kind.
Result<void> BootRound(int round, const Guest& guest, Measurements& m) {
  using Boot = Result<void> (*)(const Guest&, Measurements&);
  constexpr Boot kBoots[] = {PlainVerboseBoot, PlainHelloBootAnonymousRam, PlainHelloBootRamFile,
                             VesselBoot};
  constexpr size_t kKinds = std::size(kBoots);
  for (size_t k = 0; k < kKinds; ++k) {
    if (auto r = kBoots[(static_cast<size_t>(round) + k) % kKinds](guest, m); !r) return r;
  }
  return {};
}

Result<void> ExecRounds(int iterations, Measurements& m) {
  auto sandbox = Sandbox::Create(BenchConfig());
  if (!sandbox) return Fail(std::move(sandbox).error());
  for (int i = 0; i < kExecWarmup + iterations; ++i) {
    auto t0 = Clock::now();
    if (auto r = RunTrue(**sandbox); !r) return r;
    if (i >= kExecWarmup) m.exec.ms.push_back(MsSince(t0));
  }
  return (*sandbox)->Destroy();
}

void Report(const Guest& guest, const Measurements& m, double total_s) {
  fmt::print("vessel_bench: {}; engine {}; {} host CPUs; guest {} vCPU, {} MiB\n", QemuVersion(),
             m.engine_name, std::thread::hardware_concurrency(), kVcpus, kMemoryMib);
  fmt::print("  kernel    {}\n  initramfs {}\n", guest.kernel, guest.initramfs);
  fmt::print(
      "plain QEMU: the QEMU engine's machine, devices and accel; console on a socket to "
      "the bench.\n");
  fmt::print("  verbose cmdline (Vessel's without \"quiet\"): {}\n", guest.verbose_cmdline);
  fmt::print("  Vessel cmdline:                            {}\n", guest.cmdline);
  fmt::print("  first console line: \"{}\"\n", m.sample_first_line.substr(0, 72));
  fmt::print(
      "  (it appears when the guest's serial console registers and replays the log so far;\n"
      "   printing the log on the emulated UART also slows the verbose boot down)\n\n");
  PrintTable({&m.first_byte, &m.first_line, &m.to_init, &m.to_hello, &m.to_hello_ram_file,
              &m.create, &m.first_exec, &m.destroy, &m.exec});
  fmt::print("\nratios of medians:\n");
  PrintRatio("vessel create->ready / plain QEMU first console line", m.create, m.first_line);
  PrintRatio("vessel create->ready / plain QEMU to agent hello, same cmdline (Vessel's overhead)",
             m.create, m.to_hello);
  PrintRatio("vessel create->ready / plain QEMU to \"Run /init\" (verbose boot)", m.create,
             m.to_init);
  PrintRatio("plain QEMU, RAM a shared memfd / anonymous RAM, to agent hello", m.to_hello_ram_file,
             m.to_hello);
  PrintRatio("vessel create->ready / plain QEMU, RAM a shared memfd, to agent hello", m.create,
             m.to_hello_ram_file);
  fmt::print(
      "\nexec rows are host wall time around Sandbox::Execute; the warm-VM row skips {} "
      "warm-up execs.\n",
      kExecWarmup);
  fmt::print("percentiles are nearest-rank; p90 shown from 10 samples, p99 from 100.\n");
  fmt::print("total bench time {:.1f} s\n", total_s);
}

int Run(const Options& options) {
  auto started = Clock::now();
  Guest guest;
  guest.kernel = DefaultAssetDir() + "/vmlinux";
  guest.initramfs = DefaultAssetDir() + "/initramfs.cpio";
  guest.accel = engine::qemu::KvmUsable() ? engine::qemu::Accel::kKvm : engine::qemu::Accel::kTcg;
  for (const auto& path : {guest.kernel, guest.initramfs}) {
    if (!IsReadableFile(path)) {
      fmt::print(stderr, "vessel_bench: {} is not readable; build the guest-assets target\n", path);
      return 1;
    }
  }
  Measurements m;
  for (int i = 1; i <= options.iterations; ++i) {
    Progress(fmt::format("boot round {}/{}", i, options.iterations));
    if (auto r = BootRound(i - 1, guest, m); !r) {
      fmt::print(stderr, "vessel_bench: boot round {}: {}\n", i, r.error().ToString());
      return 1;
    }
  }
  Progress(fmt::format("exec: {} warm-up, {} timed", kExecWarmup, options.exec_iterations));
  if (auto r = ExecRounds(options.exec_iterations, m); !r) {
    fmt::print(stderr, "vessel_bench: exec: {}\n", r.error().ToString());
    return 1;
  }
  Report(guest, m, MsSince(started) / 1000.0);
  return 0;
}

}  // namespace
}  // namespace vessel::bench

int main(int argc, char** argv) {
  if (argc == 2 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h")) {
    std::fputs(vessel::bench::kUsage, stdout);
    return 0;
  }
  auto options = vessel::bench::ParseArgs(argc, argv);
  if (!options) {
    std::fputs(vessel::bench::kUsage, stderr);
    return 2;
  }
  return vessel::bench::Run(*options);
}
