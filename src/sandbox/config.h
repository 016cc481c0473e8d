// Validating a config against the engine chosen for it (see engine/select.h).
#pragma once

#include <optional>
#include <string>

#include "engine/engine.h"
#include "image/image.h"
#include "vessel/sandbox.h"

namespace vessel::sandbox {

// The agent channel `requested` resolves to on `engine`: kAuto is vsock where the engine
// has it, else virtio-serial. kVsock on an engine without vsock is VsockUnavailable.
[[nodiscard]] Result<engine::AgentChannel> ChooseChannel(Channel requested,
                                                         const engine::Engine& engine);

// Gives `spec` the root image `use` (and the agent the words that make it mount it), with
// `overlay_mib` of room for writes (0: the guest's default, half of its RAM).
void AttachImage(engine::VmSpec& spec, std::shared_ptr<const image::ImageUse> use,
                 uint32_t overlay_mib);

// The engine's VM spec for a valid config (asset paths resolved, channel chosen), or
// kInvalidConfig naming the first field that is wrong (VsockUnavailable for a channel
// the engine lacks).
[[nodiscard]] Result<engine::VmSpec> ValidateConfig(const SandboxConfig& config,
                                                    const engine::Engine& engine);

}  // namespace vessel::sandbox
