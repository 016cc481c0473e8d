// The QEMU engine: qemu-system-x86_64 -M microvm, with KVM where /dev/kvm is usable and
// TCG software emulation where it is not.
#pragma once

#include <memory>
#include <string>

#include "engine/engine.h"

namespace vessel::engine::qemu {

enum class Accel { kKvm, kTcg };

struct QemuOptions {
  std::string binary = "qemu-system-x86_64";
  std::optional<Accel> accel;  // unset: KVM when usable, else TCG
};

// True when /dev/kvm can be opened for reading and writing and the CPU has VMX or SVM.
bool KvmUsable();
// The host TSC rate in kHz, for the guest's tsc_early_khz: TSC calibration under TCG is
// unreliable and a guest that fails it can hang at boot. 0 when unknown.
uint64_t HostTscKhz();

class QemuEngine final : public Engine {
 public:
  explicit QemuEngine(QemuOptions options = {});

  [[nodiscard]] std::string name() const override;
  [[nodiscard]] uint32_t max_vcpus() const override;
  [[nodiscard]] uint32_t max_memory_mib() const override;
  [[nodiscard]] Result<std::unique_ptr<Vm>> Start(const VmSpec& spec) override;
  [[nodiscard]] Accel accel() const { return accel_; }

 private:
  QemuOptions options_;
  Accel accel_;
};

}  // namespace vessel::engine::qemu
