// vessel_vmm_fork_bench: vessel-vmm's own share of a fork, driven over its control socket
// with no sandbox layer above it. Each round boots a parent to its agent's vsock port,
// starts a child VMM ahead on the parent's RAM (as Sandbox::Fork does), then times the
// parent's pause and in-place save, the child's restore and the parent's resume, and the
// child's way from its restore to the agent's port. The sum of the first three is what a
// fork costs vessel-vmm; the rest is the guest's. Needs /dev/kvm (`bench/run nested`).
#include <fcntl.h>
#include <fmt/format.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/subprocess.h"
#include "base/unique_fd.h"
#include "bench/stats.h"
#include "engine/host.h"
#include "engine/kvm/kvm_engine.h"
#include "vessel/sandbox.h"

namespace vessel::bench {
namespace {

namespace control = protocol::vmm_control;
using engine::kvm::ControlClient;

constexpr const char* kUsage = R"(usage: vessel_vmm_fork_bench [--rounds N]
  --rounds N  forks, each of a freshly booted parent (default 5)
Needs a usable /dev/kvm. Guest assets: $VESSEL_ASSET_DIR, else the build's guest/ directory.
)";

constexpr uint32_t kMemoryMib = 256;
constexpr auto kBootTimeout = std::chrono::seconds(60);
constexpr auto kCallTimeout = std::chrono::seconds(30);

// One vessel-vmm process and its control channel, in a directory of its own.
struct Vmm {
  std::string dir;
  Subprocess process;
  std::unique_ptr<ControlClient> control;
  engine::kvm::KvmPaths paths;

  Result<control::Reply> Call(const control::Request& request, std::span<const int> fds = {}) {
    return control->Call(request, Deadline::After(kCallTimeout), fds);
  }
};

Result<Vmm> Launch(const std::string& binary, const std::string& dir) {
  std::filesystem::create_directories(dir);
  auto launch = engine::kvm::PrepareVmmLaunch(binary, dir + "/vmm.log");
  if (!launch) return Fail(std::move(launch).error());
  auto process = Subprocess::Spawn(launch->spawn);
  if (!process) return Fail(std::move(process).error());
  launch->theirs.Reset();
  Vmm vmm{dir,
          std::move(*process),
          std::make_unique<ControlClient>(std::move(launch->ours)),
          {dir + "/console.log", dir + "/vsock.sock", dir + "/agent.sock"}};
  if (auto r = vmm.Call(control::request::Hello{control::kVersion}); !r) {
    return Fail(std::move(r).error());
  }
  return vmm;
}

Result<void> Configure(Vmm& vmm, const engine::VmSpec& spec, int memory,
                       control::MemorySource source) {
  auto r = vmm.Call(
      engine::kvm::ConfigureRequest(spec, engine::kvm::KvmGuestCmdline(spec), vmm.paths, source),
      std::span<const int>(&memory, 1));
  if (!r) return Fail(std::move(r).error());
  return {};
}

Result<void> AwaitAgent(Vmm& vmm) {
  auto stream = engine::kvm::ConnectVsock(vmm.paths.vsock_uds, engine::kAgentVsockPort,
                                          Deadline::After(kBootTimeout),
                                          [&vmm] { return vmm.process.Running(); });
  if (!stream) return Fail(std::move(stream).error());
  return {};
}

struct Rows {
  Series boot{"cold: start -> agent's port", {}};
  Series ahead{"child: launch + configure (ahead)", {}};
  Series pause{"parent: pause", {}};
  Series save{"parent: save in place (freeze)", {}};
  Series restore{"child: restore", {}};
  Series resume{"parent: resume", {}};
  Series own{"vessel-vmm's fork: pause+save+restore", {}};
  Series agent{"child: restore -> agent's port", {}};
};

// One round: a parent booted to its agent, forked once. Every process and file of the
// round is gone when it returns.
Result<void> Round(const std::string& binary, const engine::VmSpec& spec, const std::string& dir,
                   Rows& rows) {
  auto ram = engine::CreateGuestRam(uint64_t{kMemoryMib} << 20);
  if (!ram) return Fail(std::move(ram).error());
  auto start = Clock::now();
  auto parent = Launch(binary, dir + "/parent");
  if (!parent) return Fail(std::move(parent).error().Context("the parent"));
  if (auto r = Configure(*parent, spec, ram->get(), control::MemorySource::kShared); !r) return r;
  if (auto r = parent->Call(control::request::Start{}); !r) return Fail(std::move(r).error());
  if (auto r = AwaitAgent(*parent); !r) return Fail(std::move(r).error().Context("the parent"));
  rows.boot.ms.push_back(MsSince(start));

  start = Clock::now();
  auto child = Launch(binary, dir + "/child");
  if (!child) return Fail(std::move(child).error().Context("the child"));
  if (auto r = Configure(*child, spec, ram->get(), control::MemorySource::kPrivate); !r) return r;
  rows.ahead.ms.push_back(MsSince(start));

  UniqueFd state(::open((dir + "/state").c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!state) return Fail(Error::HostIo("create the state file", errno));
  int state_fd = state.get();
  auto fork_start = Clock::now();
  if (auto r = parent->Call(control::request::Pause{}); !r) return Fail(std::move(r).error());
  rows.pause.ms.push_back(MsSince(fork_start));
  start = Clock::now();
  if (auto r = parent->Call(control::request::Save{.memory = control::SaveMemory::kFreeze},
                            std::span<const int>(&state_fd, 1));
      !r) {
    return Fail(std::move(r).error());
  }
  rows.save.ms.push_back(MsSince(start));
  start = Clock::now();
  if (auto r = child->Call(control::request::Restore{}, std::span<const int>(&state_fd, 1)); !r) {
    return Fail(std::move(r).error().Context("the child"));
  }
  auto restored = Clock::now();
  rows.restore.ms.push_back(MsSince(start));
  rows.own.ms.push_back(MsSince(fork_start));
  start = Clock::now();
  if (auto r = parent->Call(control::request::Resume{}); !r) return Fail(std::move(r).error());
  rows.resume.ms.push_back(MsSince(start));
  if (auto r = AwaitAgent(*child); !r) return Fail(std::move(r).error().Context("the child"));
  rows.agent.ms.push_back(MsSince(restored));
  return {};
}

int Main(int argc, char** argv) {
  int rounds = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) != "--rounds" || i + 1 >= argc || !ParseInt(argv[++i], rounds)) {
      std::fputs(kUsage, stderr);
      return 2;
    }
  }
  std::string binary = engine::kvm::FindVmm();
  if (binary.empty()) {
    fmt::print(stderr, "vessel_vmm_fork_bench: no vessel-vmm binary\n");
    return 1;
  }
  engine::VmSpec spec;
  spec.kernel = DefaultAssetDir() + "/vmlinux";
  spec.initramfs = DefaultAssetDir() + "/initramfs.cpio";
  spec.memory_mib = kMemoryMib;
  spec.channel = engine::AgentChannel::kVsock;

  char pattern[] = "/tmp/vessel-vmm-fork-bench-XXXXXX";
  if (!::mkdtemp(pattern)) {
    fmt::print(stderr, "vessel_vmm_fork_bench: mkdtemp: {}\n", std::strerror(errno));
    return 1;
  }
  std::string root = pattern;
  fmt::print("vessel_vmm_fork_bench: vessel-vmm alone, {} MiB guests, 1 vCPU, {} rounds\n",
             kMemoryMib, rounds);
  Rows rows;
  int status = 0;
  for (int i = 0; i < rounds && status == 0; ++i) {
    std::string dir = fmt::format("{}/{}", root, i);
    if (auto r = Round(binary, spec, dir, rows); !r) {
      fmt::print(stderr, "vessel_vmm_fork_bench: round {}: {}\n", i, r.error().ToString());
      status = 1;
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
  PrintTable({&rows.boot, &rows.ahead, &rows.pause, &rows.save, &rows.restore, &rows.resume,
              &rows.own, &rows.agent});
  PrintRatio("vessel-vmm's fork / cold start -> agent's port", rows.own, rows.boot);
  PrintRatio("child: restore -> agent's port / cold start -> agent's port", rows.agent, rows.boot);
  return status;
}

}  // namespace
}  // namespace vessel::bench

int main(int argc, char** argv) { return vessel::bench::Main(argc, argv); }
