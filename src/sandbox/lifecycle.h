// The one table of which operations each sandbox state permits.
#pragma once

#include <optional>
#include <span>
#include <string_view>

#include "vessel/error.h"

namespace vessel::sandbox {

// kExecute covers Execute() and Start(); kFiles every file operation.
enum class Operation { kExecute, kFiles, kSnapshot, kFork, kDestroy };

inline constexpr SandboxState kAllStates[] = {SandboxState::kReady, SandboxState::kFailed,
                                              SandboxState::kDestroyed};
inline constexpr Operation kAllOperations[] = {Operation::kExecute, Operation::kFiles,
                                               Operation::kSnapshot, Operation::kFork,
                                               Operation::kDestroy};

std::string_view ToString(Operation op);

// nullopt when `op` is permitted in `state`, else the lifecycle error to return.
std::optional<LifecycleError> Check(SandboxState state, Operation op);

}  // namespace vessel::sandbox
