// Which VMM runs a sandbox: part of SandboxConfig, and what the engine layer resolves.
#pragma once

namespace vessel {

enum class EngineKind {
  kAuto,  // kKvm where /dev/kvm is usable and vessel-vmm is installed, else kQemu
  kQemu,  // qemu-system-x86_64 -M microvm: KVM where /dev/kvm is usable, else TCG
  kKvm,   // vessel-vmm, Vessel's own VMM on the KVM API; needs a usable /dev/kvm
};

}  // namespace vessel
