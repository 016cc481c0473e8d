#include "supervisor/fork.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "supervisor/launch.h"
#include "supervisor/supervisor_protocol.h"
#include "vessel/sandbox.h"

namespace vessel::supervisor {

Result<std::vector<std::string>> ForkSandbox(const SandboxRecord& parent, uint32_t count) {
  if (count < 1 || count > kMaxForks) {
    return Fail(Error::InvalidConfig(
        "-n", fmt::format("wants a number of sandboxes from 1 to {}, not {}", kMaxForks, count)));
  }
  const std::string context = "forking sandbox " + parent.id;
  // The template lives only until the children run: they map its memory, which outlives
  // the files.
  auto fork_dir = ForkDir::Create();
  if (!fork_dir) return Fail(std::move(fork_dir).error().Context(context));
  auto saved =
      SendControlRequest(parent, {.op = ControlRequest::Op::kSnapshot, .dir = fork_dir->path()});
  if (!saved) return Fail(std::move(saved).error().Context(context));

  std::vector<Result<std::string>> children(count, Fail(Error::Backend("not started")));
  {
    std::vector<std::jthread> starters;
    for (uint32_t i = 0; i < count; ++i) {
      starters.emplace_back([&, i] {
        children[i] = StartSandbox({.restore_dir = fork_dir->path(), .forked_from = parent.id});
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
    return Fail(Error(failed->error()).Context(context));
  }
  std::vector<std::string> ids;
  for (auto& child : children) ids.push_back(std::move(*child));
  return ids;
}

}  // namespace vessel::supervisor
