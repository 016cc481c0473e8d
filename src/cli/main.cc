// vessel: the command-line front end.
//
//   vessel run [options] -- CMD [ARG...]   boot a microVM, run CMD in it, destroy it
//   vessel create / exec / cp / ls / rm     sandboxes that outlive the command
//   vessel snapshot / restore / fork        save, restore and copy those sandboxes
//   vessel doctor                          what this host can run, and what is missing
//
// Exit status of `run` and `exec`: the command's own exit code; 128+N when a signal N
// ended it; 124 when its timeout expired; 125 when Vessel itself failed (bad usage, the
// VM did not boot, the channel broke).
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "engine/host.h"
#include "engine/kvm/kvm_engine.h"
#include "engine/qemu/qemu_engine.h"
#include "engine/runtime_dir.h"
#include "vessel/sandbox.h"

namespace vessel::cli {
namespace {

constexpr const char* kUsage = R"(usage:
  vessel run [options] -- COMMAND [ARG...]
      --memory MIB       guest memory (default 256)
      --vcpus N          guest CPUs (default 1)
      --timeout SECONDS  kill the command after this long (default: none)
      --env KEY=VALUE    set an environment variable (repeatable)
      --cwd DIR          working directory in the guest (default /)
      --output-cap BYTES keep at most this much of each output stream (default 16 MiB)
      --kernel PATH      guest kernel (default: the built one)
      --initramfs PATH   guest initramfs (default: the built one)
      --engine ENGINE    qemu, kvm (vessel-vmm, needs /dev/kvm) or auto (default:
                         kvm where /dev/kvm is usable, else qemu)
  vessel create [options]             boot a sandbox that keeps running; prints its id
      --memory MIB, --vcpus N, --kernel PATH, --initramfs PATH, --engine ENGINE
                         as for run
      --name NAME        a name to use instead of the id
  vessel exec [options] ID -- COMMAND [ARG...]
                         run COMMAND in sandbox ID (an id or a name), streaming its
                         output; our stdin goes to its stdin, ^C to it as SIGINT
      --timeout SECONDS, --env KEY=VALUE, --cwd DIR, --output-cap BYTES   as for run
      --no-stdin         give the command /dev/null as stdin
  vessel cp SRC DST      copy one file into or out of a sandbox: exactly one of SRC and
                         DST is ID:/absolute/path
  vessel ls [--json]     list sandboxes: id, name, state (running, failed, dead),
                         engine, memory, age
  vessel rm ID...        stop sandboxes and remove what is left of them
  vessel snapshot ID DIR save sandbox ID (memory, processes, files) to the new or empty
                         directory DIR; ID goes on running. Prints DIR
  vessel snapshot verify DIR
                         check every checksum of the snapshot in DIR, memory included;
                         prints "ok" and what it holds. Exit status 0 when it is intact,
                         1 when it is damaged or no snapshot, 125 when it cannot check
  vessel restore DIR     start a sandbox that keeps running from the snapshot in DIR,
                         as create does; prints its id
      --name NAME        a name to use instead of the id
      --engine ENGINE    must be the engine that saved it (default auto: that one)
  vessel fork ID         copy sandbox ID as it is now into new sandboxes, independent of
                         it and of each other; prints their ids, one per line
      -n N               how many (1 to 64, default 1)
  vessel doctor          check what this host can run

exit status of run and exec: the command's; 128+N if signal N ended it; 124 on
timeout; 125 when vessel itself failed.
)";

}  // namespace

int UsageError(const std::string& message) {
  std::cerr << "vessel: " << message << "\n\n" << kUsage;
  return kExitVesselError;
}

int Run(const std::vector<std::string>& args) {
  SandboxConfig config;
  ExecOptions options;
  size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (!a.starts_with("--")) break;
    if (i + 1 >= args.size()) return UsageError(a + " needs a value");
    const std::string& v = args[++i];
    if (a == "--memory") {
      auto n = ParseNumber<uint32_t>(v);
      if (!n) return UsageError("--memory wants a number of MiB, not " + v);
      config.memory_mib = *n;
    } else if (a == "--vcpus") {
      auto n = ParseNumber<uint32_t>(v);
      if (!n) return UsageError("--vcpus wants a number, not " + v);
      config.vcpus = *n;
    } else if (auto status = ParseExecOption(a, v, options)) {
      if (*status != 0) return *status;
    } else if (a == "--kernel") {
      config.kernel = v;
    } else if (a == "--initramfs") {
      config.initramfs = v;
    } else if (a == "--engine") {
      auto engine = ParseEngine(v);
      if (!engine) return UsageError("--engine wants qemu, kvm or auto, not " + v);
      config.engine = *engine;
    } else {
      return UsageError("unknown option " + a);
    }
  }
  std::vector<std::string> argv(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
  if (argv.empty()) return UsageError("run needs a command");

  auto sandbox = Sandbox::Create(config);
  if (!sandbox) {
    std::cerr << "vessel: " << sandbox.error().ToString() << "\n";
    return kExitVesselError;
  }
  auto result = (*sandbox)->Execute(Command::Argv(argv), options);
  (void)(*sandbox)->Destroy();
  if (!result) {
    std::cerr << "vessel: " << result.error().ToString() << "\n";
    return kExitVesselError;
  }
  WriteAllTo(STDOUT_FILENO, result->stdout_data);
  WriteAllTo(STDERR_FILENO, result->stderr_data);
  if (result->stdout_truncated)
    std::cerr << "vessel: stdout truncated at " << options.output_cap << " bytes\n";
  if (result->stderr_truncated)
    std::cerr << "vessel: stderr truncated at " << options.output_cap << " bytes\n";
  switch (result->outcome) {
    case ExecResult::Outcome::kExited: return result->exit_code;
    case ExecResult::Outcome::kSignaled: return 128 + result->signal;
    case ExecResult::Outcome::kTimedOut:
      std::cerr << "vessel: the command timed out and was killed\n";
      return kExitTimedOut;
  }
  return kExitVesselError;
}

namespace {

std::string CommandOutput(const std::string& command) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (!p) return out;
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  pclose(p);
  return out;
}

}  // namespace

int Doctor() {
  namespace qemu = engine::qemu;
  bool ok = true;
  auto line = [](bool good, const std::string& what, const std::string& detail) {
    std::cout << (good ? "ok      " : "MISSING ") << what << ": " << detail << "\n";
  };
  auto kvm_unusable = engine::KvmUnusableReason();
  std::string vmm = engine::kvm::FindVmm();
  bool kvm_engine = !kvm_unusable && !vmm.empty();
  std::cout << "engine  " << (kvm_engine ? "kvm" : "qemu") << " by default (--engine auto)\n";
  line(kvm_engine, "engine kvm",
       kvm_unusable  ? "cannot run: " + *kvm_unusable
       : vmm.empty() ? "cannot run: vessel-vmm not found (set $VESSEL_VMM)"
                     : "vessel-vmm at " + vmm);
  std::cout << "engine  qemu with "
            << (!kvm_unusable ? "KVM (/dev/kvm is usable)"
                              : "TCG (no usable /dev/kvm: software emulation, slower)")
            << "\n";

  std::string version = CommandOutput("qemu-system-x86_64 --version 2>/dev/null");
  int major = 0, minor = 0;
  if (auto at = version.find("version "); at != std::string::npos) {
    std::sscanf(version.c_str() + at, "version %d.%d", &major, &minor);
  }
  if (major == 0) {
    line(kvm_engine, "QEMU", "qemu-system-x86_64 not found (scripts/bootstrap installs it)");
    ok &= kvm_engine;
  } else {
    // The microvm machine with virtio-mmio devices on the command line needs 5.0 or later.
    bool supported = major >= 5;
    line(supported, "QEMU",
         std::to_string(major) + "." + std::to_string(minor) +
             (supported ? " (microvm supported)" : " (too old: 5.0 or later needed)"));
    ok &= supported || kvm_engine;
    // Snapshots rely on QEMU's experimental x-ignore-shared migration capability
    // (present since 4.0) and on memory-backend-file; Vessel is tested with 7.2.
    bool tested = (major == 7 && minor == 2);
    bool present = major >= 5;
    line(present, "snapshots",
         !present ? "QEMU too old for x-ignore-shared snapshots"
         : tested ? "x-ignore-shared with QEMU 7.2 (the tested version)"
                  : "x-ignore-shared is experimental and only tested with QEMU 7.2: "
                    "check `vessel snapshot` before relying on it");
  }
  std::string dir = DefaultAssetDir();
  for (const char* asset : {"vmlinux", "initramfs.cpio"}) {
    std::string path = dir + "/" + asset;
    bool found = access(path.c_str(), R_OK) == 0;
    line(found, std::string("guest ") + asset, found ? path : path + " not found (run make)");
    ok &= found;
  }
  std::string root = engine::RuntimeRoot();
  line(true, "runtime directory", root);
  uint64_t tsc = qemu::HostTscKhz();
  line(tsc > 0, "host TSC rate",
       tsc ? std::to_string(tsc) + " kHz" : "unknown: the guest calibrates it itself");
  return ok ? 0 : 1;
}

}  // namespace vessel::cli

int main(int argc, char** argv) {
  namespace cli = vessel::cli;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << cli::kUsage;
    return args.empty() ? cli::kExitVesselError : 0;
  }
  std::string command = args[0];
  args.erase(args.begin());
  if (command == "run") return cli::Run(args);
  if (command == "create") return cli::Create(args);
  if (command == "exec") return cli::Exec(args);
  if (command == "cp") return cli::Copy(args);
  if (command == "ls") return cli::List(args);
  if (command == "rm") return cli::Remove(args);
  if (command == "snapshot") return cli::Snapshot(args);
  if (command == "restore") return cli::Restore(args);
  if (command == "fork") return cli::Fork(args);
  if (command == "doctor") return cli::Doctor();
  if (command == "__supervise") return cli::Supervise(args);
  return cli::UsageError("unknown command " + command);
}
