// Validation of a SandboxConfig against the engine that will run it.
#pragma once

#include "engine/engine.h"
#include "vessel/sandbox.h"

namespace vessel::sandbox {

inline constexpr uint32_t kMinMemoryMib = 64;

// The engine's VM spec for a valid config (asset paths resolved), or kInvalidConfig
// naming the first field that is wrong.
[[nodiscard]] Result<engine::VmSpec> ValidateConfig(const SandboxConfig& config,
                                                    const engine::Engine& engine);

}  // namespace vessel::sandbox
