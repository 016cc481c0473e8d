#include "engine/qemu/qemu_engine.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "base/io.h"
#include "base/subprocess.h"
#include "engine/qemu/qmp_client.h"
#include "engine/runtime_dir.h"

namespace vessel::engine::qemu {
namespace {

constexpr const char* kAgentPortName = "org.vessel.agent";
// The guest kernel supports at most this many CPUs (CONFIG_NR_CPUS).
constexpr uint32_t kGuestMaxVcpus = 8;
constexpr uint32_t kMaxMemoryMib = 16 * 1024;
// TCG's translation cache reserves 1 GiB by default; a microVM needs far less.
constexpr uint32_t kTcgCacheMib = 64;
constexpr size_t kDiagnosticBytes = 2048;
constexpr auto kQmpTimeout = std::chrono::seconds(5);

// A value inside a QEMU option list, where a comma is written twice.
std::string QemuOptionValue(const std::string& value) {
  std::string escaped;
  for (char c : value) {
    escaped += c;
    if (c == ',') escaped += ',';
  }
  return escaped;
}

uint64_t HostMemoryMib() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemTotal:") return kib / 1024;
    meminfo.ignore(64, '\n');
  }
  return 0;
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

class QemuVm final : public Vm {
 public:
  QemuVm(RuntimeDir dir, Subprocess process, UniqueFd agent, UniqueFd qmp)
      : id_(dir.id()),
        dir_(std::move(dir)),
        process_(std::move(process)),
        agent_(std::move(agent)),
        qmp_(std::move(qmp)) {}
  ~QemuVm() override { Destroy(); }

  const std::string& id() const override { return id_; }
  int agent_fd() const override { return agent_.get(); }
  bool Running() override { return process_.Running(); }

  Result<std::string> RunState() override {
    auto deadline = Deadline::After(kQmpTimeout);
    if (!qmp_negotiated_) {
      if (auto r = qmp_.Handshake(deadline); !r) return Fail(std::move(r).error());
      qmp_negotiated_ = true;
    }
    auto status = qmp_.Execute("query-status", {}, deadline);
    if (!status) return Fail(std::move(status).error());
    if (!status->is_object() || !(*status)["status"].is_string()) {
      return Fail(Error::Backend("QMP query-status: unexpected reply"));
    }
    return (*status)["status"].get<std::string>();
  }

  std::string Diagnostics() const override {
    std::string out;
    std::string vmm = ReadFileTail(dir_.File("vmm.log"), kDiagnosticBytes);
    if (!vmm.empty()) out += "QEMU said: " + vmm;
    std::string console = ReadFileTail(dir_.File("console.log"), kDiagnosticBytes);
    if (!console.empty())
      out += (out.empty() ? "" : "\n") + std::string("guest console tail:\n") + console;
    return out.empty() ? "no output from QEMU or the guest console" : out;
  }

  void Destroy() override {
    process_.Kill();
    agent_.Reset();
    dir_.Remove();
  }

 private:
  std::string id_;
  RuntimeDir dir_;
  Subprocess process_;
  UniqueFd agent_;
  QmpClient qmp_;
  bool qmp_negotiated_ = false;
};

}  // namespace

namespace {
// The value of the first /proc/cpuinfo line whose key is `key`, or empty.
std::string CpuinfoValue(std::string_view key) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string_view name(line.data(), colon);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
    if (name == key) return line.substr(colon + 1) + " ";
  }
  return {};
}
}  // namespace

bool KvmUsable() {
  UniqueFd fd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!fd) return false;
  // Some hosts expose a /dev/kvm without hardware virtualisation (paravirtual KVM such
  // as PVM) on which QEMU's KVM guests do not boot: require VMX or SVM as well.
  std::string flags = CpuinfoValue("flags");
  return flags.find(" vmx ") != std::string::npos || flags.find(" svm ") != std::string::npos;
}

uint64_t HostTscKhz() {
  // Read once: the rate does not change, and every VM start needs it.
  static const uint64_t khz = [] {
    double mhz = std::strtod(CpuinfoValue("cpu MHz").c_str(), nullptr);
    return mhz > 0 ? static_cast<uint64_t>(mhz * 1000) : uint64_t{0};
  }();
  return khz;
}

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
      "-M", "microvm,acpi=off",
      "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
      "-smp", std::to_string(spec.vcpus),
      "-m", fmt::format("{}M", spec.memory_mib),
      "-kernel", spec.kernel,
      "-initrd", spec.initramfs,
      "-append", wiring.kernel_cmdline,
      "-chardev", wiring.console_chardev + ",id=console",
      "-serial", "chardev:console",
      "-device", "virtio-serial-device,id=vser0",
      "-chardev", fmt::format("socket,id=agent,fd={}", wiring.agent_fd),
      "-device", fmt::format("virtserialport,bus=vser0.0,chardev=agent,name={}", kAgentPortName),
      "-chardev", fmt::format("socket,id=qmp,fd={}", wiring.qmp_fd),
      "-mon", "chardev=qmp,mode=control",
  };
  // clang-format on
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

uint32_t QemuEngine::max_vcpus() const {
  return std::clamp<uint32_t>(std::thread::hardware_concurrency(), 1, kGuestMaxVcpus);
}

uint32_t QemuEngine::max_memory_mib() const {
  uint64_t host = HostMemoryMib();
  return static_cast<uint32_t>(std::min<uint64_t>(host ? host : kMaxMemoryMib, kMaxMemoryMib));
}

Result<std::unique_ptr<Vm>> QemuEngine::Start(const VmSpec& spec) {
  SweepStaleRuntimeDirs();
  auto dir = RuntimeDir::Create();
  if (!dir) return Fail(std::move(dir).error());
  auto agent = MakeSocketPair();
  if (!agent) return Fail(std::move(agent).error());
  auto qmp = MakeSocketPair();
  if (!qmp) return Fail(std::move(qmp).error());

  QemuWiring wiring;
  wiring.name = "vessel-" + dir->id();
  wiring.console_chardev = "file,path=" + QemuOptionValue(dir->File("console.log"));
  wiring.agent_fd = agent->vmm.get();
  wiring.qmp_fd = qmp->vmm.get();
  wiring.kernel_cmdline = GuestKernelCmdline();

  SpawnOptions spawn;
  spawn.argv = QemuArgv(options_.binary, accel_, spec, wiring);
  spawn.inherit_fds = {agent->vmm.get(), qmp->vmm.get()};
  spawn.output_path = dir->File("vmm.log");
  auto process = Subprocess::Spawn(spawn);
  if (!process) return Fail(std::move(process).error().Context("starting QEMU"));
  return std::make_unique<QemuVm>(std::move(*dir), std::move(*process), std::move(agent->host),
                                  std::move(qmp->host));
}

}  // namespace vessel::engine::qemu
