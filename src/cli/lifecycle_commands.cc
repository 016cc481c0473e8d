// `vessel create`, `ls` and `rm`: sandboxes that outlive the command that made them.
#include <fmt/format.h>

#include <array>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "supervisor/launch.h"
#include "supervisor/state.h"
#include "supervisor/supervisor_protocol.h"

namespace vessel::cli {
namespace {

std::string Age(int64_t seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return fmt::format("{}s", seconds);
  if (seconds < 3600) return fmt::format("{}m", seconds / 60);
  if (seconds < 86400) return fmt::format("{}h", seconds / 3600);
  return fmt::format("{}d", seconds / 86400);
}

// A running sandbox's egress policy and counters, asked of its supervisor; null when it
// does not answer (it may have just stopped, or predate `vessel net`).
nlohmann::json NetworkOf(const supervisor::Listing& listing) {
  if (listing.state != "running") return nullptr;
  auto reply = supervisor::SendControlRequest(listing.record,
                                              {.op = supervisor::ControlRequest::Op::kNetwork});
  if (!reply || !reply->network) return nullptr;
  return nlohmann::json::parse(supervisor::EncodeNetworkReport(*reply->network));
}

}  // namespace

int Create(const CreateArgs& args) {
  supervisor::SupervisorConfig config{.sandbox = args.config};
  SandboxConfig& machine = config.sandbox;
  if (!machine.name.empty()) {
    if (auto valid = supervisor::ValidateName(machine.name); !valid) return Failure(valid.error());
  }
  // The supervisor runs in /: paths must not depend on our working directory.
  for (std::string* path : {&machine.kernel, &machine.initramfs}) {
    std::error_code ec;
    if (!path->empty()) *path = std::filesystem::absolute(*path, ec).string();
  }
  if (!machine.name.empty()) {
    if (auto free = supervisor::CheckNameIsFree(machine.name); !free) return Failure(free.error());
  }
  if (auto prepared = supervisor::PrepareToSupervise(); !prepared) {
    return Failure(prepared.error());
  }
  auto id = supervisor::StartSandbox(std::move(config));
  if (!id) return Failure(id.error());
  fmt::print("{}\n", *id);
  return 0;
}

int List(const ListArgs& args) {
  std::vector<supervisor::Listing> listings;
  auto ids = supervisor::ListSandboxIds();
  if (!ids) return Failure(ids.error());
  for (const auto& id : *ids) {
    if (auto listing = supervisor::Inspect(id)) listings.push_back(std::move(*listing));
  }
  if (args.json) {
    auto out = nlohmann::json::array();
    for (const auto& l : listings) {
      out.push_back({{"id", l.record.id},
                     {"name", l.record.name},
                     {"state", l.state},
                     {"engine", l.record.engine},
                     {"memory_mib", l.record.memory_mib},
                     {"vcpus", l.record.vcpus},
                     {"age_seconds", l.age_seconds},
                     {"pid", l.record.pid},
                     {"restored_from", l.record.restored_from},
                     {"forked_from", l.record.forked_from},
                     {"network", NetworkOf(l)}});
    }
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  std::vector<std::array<std::string, 6>> rows = {
      {"ID", "NAME", "STATE", "ENGINE", "MEMORY", "AGE"}};
  for (const auto& l : listings) {
    auto or_dash = [](const std::string& s) { return s.empty() ? std::string("-") : s; };
    rows.push_back({l.record.id, or_dash(l.record.name), l.state, or_dash(l.record.engine),
                    l.record.memory_mib ? fmt::format("{}MiB", l.record.memory_mib) : "-",
                    Age(l.age_seconds)});
  }
  std::array<size_t, 6> widths{};
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += c + 1 < row.size() ? fmt::format("{:<{}}  ", row[c], widths[c]) : row[c];
    }
    fmt::print("{}\n", line);
  }
  return 0;
}

int Remove(const RemoveArgs& args) {
  int status = 0;
  for (const auto& target : args.targets) {
    auto record = supervisor::Resolve(target);
    if (!record) {
      status = Failure(record.error());
      continue;
    }
    if (auto removed = supervisor::StopAndRemove(*record); !removed) {
      status = Failure(removed.error());
      continue;
    }
    fmt::print("{}\n", record->id);
  }
  return status;
}

}  // namespace vessel::cli
