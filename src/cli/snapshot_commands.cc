// `vessel snapshot`, `snapshot verify`, `restore`, `fork` and `net`.
//
// A snapshot is taken by the sandbox's supervisor, which owns the VM, at the request of
// the command (a control request on its socket). A restore is a `create` whose supervisor
// restores the snapshot instead of booting. A fork is both: the parent's supervisor saves
// into a private directory, then that many restores start from it at once. `net` asks
// the supervisor the same way for the sandbox's egress policy, or changes it.
#include <fmt/chrono.h>
#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string_view>

#include "cli/cli.h"
#include "snapshot/snapshot.h"
#include "supervisor/fork.h"
#include "supervisor/launch.h"
#include "supervisor/state.h"
#include "supervisor/supervisor_protocol.h"
#include "vessel/sandbox.h"

namespace vessel::cli {
namespace {

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

void PrintManifest(const std::string& dir, const snapshot::Manifest& manifest) {
  auto taken = std::chrono::floor<std::chrono::seconds>(
      std::chrono::system_clock::time_point(std::chrono::milliseconds(manifest.created_unix_ms)));
  fmt::print("snapshot   {}\n", dir);
  fmt::print("taken      {:%Y-%m-%dT%H:%M:%S}Z by vessel {}\n", taken, manifest.vessel_version);
  fmt::print("engine     {} ({})\n", manifest.engine, manifest.engine_version);
  fmt::print("machine    {} vCPU{}, {} MiB\n", manifest.vcpus, manifest.vcpus == 1 ? "" : "s",
             manifest.memory_mib);
  fmt::print("name       {}\n", manifest.name.empty() ? "-" : manifest.name);
  fmt::print("kernel     {}\n", manifest.kernel_path);
  fmt::print("initramfs  {}\n", manifest.initramfs_path);
  fmt::print("files      state {}, memory {}\n", Mib(manifest.state.size),
             Mib(manifest.memory.size));
}

void PrintNetwork(const supervisor::NetworkReport& report) {
  const NetworkPolicy& policy = report.policy;
  const NetworkStats& stats = report.stats;
  // Each label's column, then lines of its own for each further item.
  auto print_list = [](std::string_view label, const std::vector<std::string>& items) {
    for (size_t i = 0; i < items.size(); ++i) {
      fmt::print("{:<12} {}\n", i == 0 ? label : "", items[i]);
    }
  };
  if (policy.allow.empty()) {
    fmt::print("{:<12} {}\n", "allow", "nothing: the guest has no egress");
  } else {
    print_list("allow", policy.allow);
  }
  fmt::print("{:<12} {} connections at once; idle ones closed after {} s; {}\n", "limits",
             policy.max_connections, policy.idle_timeout.count(),
             policy.max_bytes == 0 ? std::string("no byte limit")
                                   : fmt::format("at most {} bytes in all", policy.max_bytes));
  fmt::print("{:<12} {} made, {} refused, {} open now\n", "connections", stats.allowed,
             stats.refused, stats.open);
  fmt::print("{:<12} {} sent, {} received\n", "bytes", stats.bytes_sent, stats.bytes_received);
  print_list("refused", stats.recent_refusals);
}

// A damaged snapshot, or none, is kExitSnapshotDamaged; failing to check is the usual.
int DamagedOrFailed(const Error& error) {
  PrintError(error.ToString());
  return error.kind() == ErrorKind::kSnapshotFormat ? kExitSnapshotDamaged : kExitVesselError;
}

}  // namespace

int Verify(const VerifyArgs& args) {
  auto dir = AbsolutePath(args.dir);
  if (!dir) return Failure(dir.error());
  auto key = snapshot::ThisHostKey();
  if (!key) return Failure(key.error());
  auto opened = snapshot::Open(*dir, snapshot::Depth::kFull, *key);
  if (!opened) return DamagedOrFailed(std::move(opened).error().Context(*dir));
  fmt::print("ok: manifest, state and memory match their checksums; signed by this host\n");
  PrintManifest(*dir, opened->manifest);
  return 0;
}

int SnapshotImport(const SnapshotImportArgs& args) {
  auto dir = AbsolutePath(args.dir);
  if (!dir) return Failure(dir.error());
  auto key = snapshot::ThisHostKey();
  if (!key) return Failure(key.error());
  auto manifest = snapshot::Import(*dir, *key);
  if (!manifest) return DamagedOrFailed(std::move(manifest).error().Context(*dir));
  fmt::print("ok: every checksum matches; signed with this host's key\n");
  PrintManifest(*dir, *manifest);
  return 0;
}

int Snapshot(const SnapshotArgs& args) {
  auto record = supervisor::Resolve(args.target);
  if (!record) return Failure(record.error());
  auto dir = AbsolutePath(args.dir);
  if (!dir) return Failure(dir.error());
  auto saved = supervisor::SendControlRequest(
      *record, {.op = supervisor::ControlRequest::Op::kSnapshot, .dir = *dir});
  if (!saved) return Failure(saved.error());
  fmt::print("{}\n", *dir);
  return 0;
}

int Restore(const RestoreArgs& args) {
  if (!args.name.empty()) {
    if (auto valid = supervisor::ValidateName(args.name); !valid) return Failure(valid.error());
  }
  auto dir = AbsolutePath(args.dir);
  if (!dir) return Failure(dir.error());
  supervisor::SupervisorConfig config{.restore_dir = *dir};
  config.sandbox.name = args.name;
  config.sandbox.engine = args.engine;
  if (args.allow_net) {
    config.replace_network = true;
    config.sandbox.network.allow = *args.allow_net;
  }
  if (!args.name.empty()) {
    if (auto free = supervisor::CheckNameIsFree(args.name); !free) return Failure(free.error());
  }
  if (auto prepared = supervisor::PrepareToSupervise(); !prepared) {
    return Failure(prepared.error());
  }
  auto id = supervisor::StartSandbox(std::move(config));
  if (!id) return Failure(id.error());
  fmt::print("{}\n", *id);
  return 0;
}

int Fork(const ForkArgs& args) {
  std::optional<uint32_t> count;
  uint32_t n = 0;
  auto [end, ec] = std::from_chars(args.count.data(), args.count.data() + args.count.size(), n);
  if (ec == std::errc() && end == args.count.data() + args.count.size() && n >= 1 &&
      n <= kMaxForks) {
    count = n;
  }
  if (!count) {
    return Failure(fmt::format("fork -n wants a number of sandboxes from 1 to {}, not {}",
                               kMaxForks, args.count));
  }
  auto parent = supervisor::Resolve(args.target);
  if (!parent) return Failure(parent.error());
  // A parent that does not run is refused before anything is made for the fork.
  if (auto running = supervisor::ConnectToRunning(*parent); !running) {
    return Failure(running.error());
  }
  if (auto prepared = supervisor::PrepareToSupervise(); !prepared) {
    return Failure(prepared.error());
  }
  auto children = supervisor::ForkSandbox(*parent, *count);
  if (!children) return Failure(children.error());
  for (const auto& child : *children) fmt::print("{}\n", child);
  return 0;
}

int Net(const NetArgs& args) {
  auto record = supervisor::Resolve(args.target);
  if (!record) return Failure(record.error());
  auto reply = supervisor::SendControlRequest(
      *record,
      {.op = supervisor::ControlRequest::Op::kNetwork, .allow = args.allow, .deny = args.deny});
  if (!reply) {
    const Error& error = reply.error();
    if (error.kind() == ErrorKind::kInvalidConfig && error.subject() == "control request" &&
        error.message().find("unknown op") != std::string::npos) {
      return Failure(fmt::format(
          "the supervisor of sandbox {} was started by a vessel without `vessel net`: recreate "
          "the sandbox to see or change its egress ({})",
          record->id, error.ToString()));
    }
    return Failure(error);
  }
  if (!reply->network) {
    return Failure(
        fmt::format("the supervisor of sandbox {} answered without its egress policy", record->id));
  }
  if (args.json) {
    fmt::print("{}\n", supervisor::EncodeNetworkReport(*reply->network, 2));
  } else {
    PrintNetwork(*reply->network);
  }
  return 0;
}

}  // namespace vessel::cli
