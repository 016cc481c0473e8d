// Forking a supervised sandbox: its supervisor saves it into a private directory, then as
// many supervisors restore it at once, each owning one child. The children are sandboxes
// like any other, independent of the parent and of each other.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "supervisor/state.h"
#include "vessel/error.h"

namespace vessel::supervisor {

// Starts `count` children of `parent` (1..kMaxForks, else kInvalidConfig with subject
// "-n"); returns their ids. All or nothing: when one fails, those started are stopped and
// removed, and the error is that one's. Call PrepareToSupervise() first.
[[nodiscard]] Result<std::vector<std::string>> ForkSandbox(const SandboxRecord& parent,
                                                           uint32_t count);

}  // namespace vessel::supervisor
