// The one place that probes the host, chooses an engine and makes it, as
// cloud-hypervisor's hypervisor::new() does: callers above engine/ see only the Engine
// interface and never name a concrete engine.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "engine/engine.h"
#include "vessel/engine_kind.h"
#include "vessel/error.h"

namespace vessel::engine {

// What the host offers for running engines.
struct Host {
  std::optional<std::string> kvm_unusable;  // why /dev/kvm cannot run guests, if it cannot
  std::string vmm;                          // the vessel-vmm binary; empty when none is found
  // The facts of this host: /dev/kvm and the CPU flags, $VESSEL_VMM and the install.
  [[nodiscard]] static Host Probe();
};

// The engine `requested` resolves to on `host`, never kAuto: kAuto is kKvm where KVM is
// usable and vessel-vmm installed, else kQemu (with KVM when usable, else TCG). kKvm
// where it cannot run is kUnsupportedPlatform saying why.
[[nodiscard]] Result<EngineKind> Select(EngineKind requested, const Host& host);

// The engine that `requested` resolves to on `host` (see Select()), constructed; the kvm
// engine runs host.vmm. Errors are Select()'s.
[[nodiscard]] Result<std::unique_ptr<Engine>> Make(EngineKind requested,
                                                   const Host& host = Host::Probe());

// The engine kind that writes snapshots under `engine_name` (Engine::name(): "kvm",
// "qemu-tcg", ...), so that restoring with kAuto picks the engine that saved the VM.
// kAuto when unknown.
[[nodiscard]] EngineKind KindOfEngineName(const std::string& engine_name);

}  // namespace vessel::engine
