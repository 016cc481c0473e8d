// `vessel snapshot`, `snapshot verify`, `restore` and `fork`.
//
// A snapshot is taken by the sandbox's supervisor, which owns the VM, at the request of
// the command (a control request on its socket). A restore is a `create` whose supervisor
// restores the snapshot instead of booting. A fork is both: the parent's supervisor saves
// into a private directory, then that many restores start from it at once.
#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include "cli/cli.h"
#include "cli/state.h"
#include "cli/supervisor_protocol.h"
#include "snapshot/snapshot.h"

namespace vessel::cli {
namespace {

// As many children as Sandbox::Fork makes at once.
constexpr uint32_t kMaxForkCount = 64;

// The supervisor runs in /: a directory must not depend on our working directory.
Result<std::string> AbsolutePath(const std::string& path) {
  std::error_code ec;
  auto absolute = std::filesystem::absolute(path, ec);
  if (ec) return Fail(Error::HostIo("resolve " + path, ec.value()));
  return absolute.string();
}

std::string Mib(uint64_t bytes) {
  return bytes % (1024 * 1024) == 0 ? fmt::format("{} MiB", bytes / (1024 * 1024))
                                    : fmt::format("{} bytes", bytes);
}

int Verify(const std::string& dir_arg) {
  auto dir = AbsolutePath(dir_arg);
  if (!dir) return Failure(dir.error());
  auto manifest = snapshot::Open(*dir, snapshot::Depth::kFull);
  if (!manifest) {
    bool damaged = manifest.error().kind() == ErrorKind::kSnapshotFormat;
    PrintError(std::move(manifest).error().Context(*dir).ToString());
    return damaged ? kExitSnapshotDamaged : kExitVesselError;
  }
  auto taken = std::chrono::floor<std::chrono::seconds>(
      std::chrono::system_clock::time_point(std::chrono::milliseconds(manifest->created_unix_ms)));
  fmt::print("ok: manifest, state and memory match their checksums\n");
  fmt::print("snapshot   {}\n", *dir);
  fmt::print("taken      {:%Y-%m-%dT%H:%M:%S}Z by vessel {}\n", taken, manifest->vessel_version);
  fmt::print("engine     {} ({})\n", manifest->engine, manifest->engine_version);
  fmt::print("machine    {} vCPU{}, {} MiB\n", manifest->vcpus, manifest->vcpus == 1 ? "" : "s",
             manifest->memory_mib);
  fmt::print("name       {}\n", manifest->name.empty() ? "-" : manifest->name);
  fmt::print("kernel     {}\n", manifest->kernel_path);
  fmt::print("initramfs  {}\n", manifest->initramfs_path);
  fmt::print("files      state {}, memory {}\n", Mib(manifest->state.size),
             Mib(manifest->memory.size));
  return 0;
}

int SnapshotSandbox(const std::string& target, const std::string& dir_arg) {
  auto record = Resolve(target);
  if (!record) return Failure(record.error());
  auto dir = AbsolutePath(dir_arg);
  if (!dir) return Failure(dir.error());
  auto saved = SendControlRequest(*record, {.op = ControlRequest::Op::kSnapshot, .dir = *dir});
  if (!saved) return Failure(saved.error());
  fmt::print("{}\n", *dir);
  return 0;
}

}  // namespace

int Snapshot(const Args& args) {
  // A sandbox named "verify" is snapshotted by its id.
  if (args.size() == 2 && args[0] == "verify") return Verify(args[1]);
  if (!args.empty() && args[0] == "verify") return UsageError("snapshot verify wants one DIR");
  if (args.size() != 2) return UsageError("snapshot wants a sandbox id or name and a DIR");
  for (const auto& a : args) {
    if (a.starts_with("-")) return UsageError("unknown option " + a);
  }
  return SnapshotSandbox(args[0], args[1]);
}

int Restore(const Args& args) {
  std::string dir_arg;
  std::string name;
  std::string engine;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--name") {
      if (i + 1 >= args.size()) return UsageError(a + " needs a value");
      name = args[++i];
      if (auto valid = ValidateName(name); !valid) return Failure(valid.error());
    } else if (a == "--engine") {
      if (i + 1 >= args.size()) return UsageError(a + " needs a value");
      engine = args[++i];
      if (!ParseEngine(engine))
        return UsageError("--engine wants qemu, kvm or auto, not " + engine);
    } else if (a.starts_with("-")) {
      return UsageError("unknown option " + a);
    } else if (dir_arg.empty()) {
      dir_arg = a;
    } else {
      return UsageError("restore takes one DIR, not also " + a);
    }
  }
  if (dir_arg.empty()) return UsageError("restore needs a snapshot DIR");
  auto dir = AbsolutePath(dir_arg);
  if (!dir) return Failure(dir.error());
  Args supervise_args = {"--restore", *dir};
  if (!name.empty()) {
    if (auto free = CheckNameIsFree(name); !free) return Failure(free.error());
    supervise_args.insert(supervise_args.end(), {"--name", name});
  }
  if (!engine.empty()) supervise_args.insert(supervise_args.end(), {"--engine", engine});
  if (auto prepared = PrepareToSupervise(); !prepared) return Failure(prepared.error());
  auto id = StartSandbox(supervise_args);
  if (!id) return Failure(id.error());
  fmt::print("{}\n", *id);
  return 0;
}

int Fork(const Args& args) {
  std::string target;
  uint32_t count = 1;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-n") {
      if (i + 1 >= args.size()) return UsageError("-n needs a value");
      const std::string& v = args[++i];
      auto n = ParseNumber<uint32_t>(v);
      if (!n || *n < 1 || *n > kMaxForkCount) {
        return Failure(fmt::format("fork -n wants a number of sandboxes from 1 to {}, not {}",
                                   kMaxForkCount, v));
      }
      count = *n;
    } else if (a.starts_with("-")) {
      return UsageError("unknown option " + a);
    } else if (target.empty()) {
      target = a;
    } else {
      return UsageError("fork takes one sandbox, not also " + a);
    }
  }
  if (target.empty()) return UsageError("fork needs a sandbox id or name");
  auto parent = Resolve(target);
  if (!parent) return Failure(parent.error());
  // A parent that does not run is refused before anything is made for the fork.
  if (auto running = ConnectToRunning(*parent); !running) return Failure(running.error());
  const std::string context = "forking sandbox " + parent->id;
  if (auto prepared = PrepareToSupervise(); !prepared) return Failure(prepared.error());

  // The template lives only until the children run: they map its memory, which outlives
  // the files.
  auto fork_dir = ForkDir::Create();
  if (!fork_dir) return Failure(std::move(fork_dir).error().Context(context));
  auto saved =
      SendControlRequest(*parent, {.op = ControlRequest::Op::kSnapshot, .dir = fork_dir->path()});
  if (!saved) return Failure(std::move(saved).error().Context(context));

  std::vector<Result<std::string>> children(count, Fail(Error::Backend("not started")));
  {
    std::vector<std::jthread> starters;
    for (uint32_t i = 0; i < count; ++i) {
      starters.emplace_back([&, i] {
        children[i] = StartSandbox({"--restore", fork_dir->path(), "--forked-from", parent->id});
      });
    }
  }
  auto failed = std::find_if(children.begin(), children.end(),
                             [](const Result<std::string>& child) { return !child; });
  if (failed != children.end()) {
    for (const auto& child : children) {
      if (!child) continue;
      auto record = ReadRecord(*child);
      (void)StopAndRemove(record ? *record : SandboxRecord{.id = *child});
    }
    return Failure(Error(failed->error()).Context(context));
  }
  for (const auto& child : children) fmt::print("{}\n", *child);
  return 0;
}

}  // namespace vessel::cli
