#include "engine/select.h"

#include "engine/host.h"
#include "engine/kvm/kvm_engine.h"
#include "engine/qemu/qemu_engine.h"

namespace vessel::engine {

Host Host::Probe() { return Host{KvmUnusableReason(), kvm::FindVmm()}; }

Result<EngineKind> Select(EngineKind requested, const Host& host) {
  switch (requested) {
    case EngineKind::kAuto:
      return !host.kvm_unusable && !host.vmm.empty() ? EngineKind::kKvm : EngineKind::kQemu;
    case EngineKind::kQemu: return EngineKind::kQemu;
    case EngineKind::kKvm:
      if (host.kvm_unusable) {
        return Fail(Error::UnsupportedPlatform(
            "engine kvm needs a usable /dev/kvm: " + *host.kvm_unusable + "; use engine qemu"));
      }
      if (host.vmm.empty()) {
        return Fail(Error::UnsupportedPlatform(
            "engine kvm needs vessel-vmm: set $VESSEL_VMM or install it beside vessel"));
      }
      return EngineKind::kKvm;
  }
  return Fail(Error::InvalidConfig("engine", "unknown engine"));
}

Result<std::unique_ptr<Engine>> Make(EngineKind requested, const Host& host) {
  auto chosen = Select(requested, host);
  if (!chosen) return Fail(std::move(chosen).error());
  if (*chosen == EngineKind::kKvm) {
    return std::make_unique<kvm::KvmEngine>(kvm::KvmOptions{.vmm = host.vmm});
  }
  return std::make_unique<qemu::QemuEngine>(
      qemu::QemuOptions{.accel = host.kvm_unusable ? qemu::Accel::kTcg : qemu::Accel::kKvm});
}

EngineKind KindOfEngineName(const std::string& engine_name) {
  if (engine_name == "kvm") return EngineKind::kKvm;
  if (engine_name.starts_with("qemu")) return EngineKind::kQemu;
  return EngineKind::kAuto;
}

}  // namespace vessel::engine
