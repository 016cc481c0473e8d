// Choosing the engine for a config, and validating the config against it.
#pragma once

#include <optional>
#include <string>

#include "engine/engine.h"
#include "vessel/sandbox.h"

namespace vessel::sandbox {

inline constexpr uint32_t kMinMemoryMib = 64;

// What the host offers for choosing an engine.
struct EngineHost {
  std::optional<std::string> kvm_unusable;  // why /dev/kvm cannot run guests, if it cannot
  bool vmm_installed = false;               // a vessel-vmm binary was found
  // The facts of this host.
  [[nodiscard]] static EngineHost Probe();
};

// The engine `requested` resolves to on `host`, never kAuto: kAuto is kKvm where KVM is
// usable and vessel-vmm installed, else kQemu. kKvm where it cannot run is
// kUnsupportedPlatform saying why.
[[nodiscard]] Result<EngineKind> ChooseEngine(EngineKind requested, const EngineHost& host);

// The engine kind that writes snapshots under `engine_name` ("kvm", "qemu-tcg", ...),
// so that restoring with kAuto picks the engine that saved the VM. kAuto when unknown.
[[nodiscard]] EngineKind EngineOfSnapshot(const std::string& engine_name);

// The agent channel `requested` resolves to on `engine`: kAuto is vsock where the engine
// has it, else virtio-serial. kVsock on an engine without vsock is VsockUnavailable.
[[nodiscard]] Result<engine::AgentChannel> ChooseChannel(Channel requested,
                                                         const engine::Engine& engine);

// The engine's VM spec for a valid config (asset paths resolved, channel chosen), or
// kInvalidConfig naming the first field that is wrong (VsockUnavailable for a channel
// the engine lacks).
[[nodiscard]] Result<engine::VmSpec> ValidateConfig(const SandboxConfig& config,
                                                    const engine::Engine& engine);

}  // namespace vessel::sandbox
