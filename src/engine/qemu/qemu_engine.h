// The QEMU engine: qemu-system-x86_64 -M microvm, with KVM where /dev/kvm is usable and
// TCG software emulation where it is not.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/console_log.h"
#include "engine/engine.h"
#include "engine/host.h"

namespace vessel::engine::qemu {

enum class Accel { kKvm, kTcg };

struct QemuOptions {
  std::string binary = "qemu-system-x86_64";
  std::optional<Accel> accel;  // unset: KVM when usable, else TCG
  // The most of the guest console kept in console.log; the rest is dropped.
  uint64_t console_log_bytes = kMaxConsoleLogBytes;
};

// QEMU uses KVM where it is usable, like the kvm engine.
using engine::KvmUsable;

using engine::HostTscKhz;

// The guest kernel command line, with tsc_early_khz when the host rate is known.
// `quiet` false lets the kernel print its boot log (for diagnosis and benchmarks).
std::string GuestKernelCmdline(bool quiet = true);

// How one QEMU process is wired to its host: the parts of the command line that are not
// the VM's spec.
struct QemuWiring {
  std::string name;             // -name
  std::string console_chardev;  // -chardev backend for the serial console, e.g. "file,path=..."
  int agent_fd = -1;  // connected socket for the agent's port; -1: a null device
  int qmp_fd = -1;    // connected socket for QMP
  std::string kernel_cmdline;
  // Guest RAM in this file (shared: writes go to the file; else a private copy-on-write
  // mapping). Empty: anonymous memory.
  std::string memory_path;
  bool memory_shared = true;
  bool incoming = false;  // wait for a migration stream (-incoming defer)
};

// The whole qemu-system-x86_64 command line for a VM.
std::vector<std::string> QemuArgv(const std::string& binary, Accel accel, const VmSpec& spec,
                                  const QemuWiring& wiring);

class QemuEngine final : public Engine {
 public:
  explicit QemuEngine(QemuOptions options = {});

  [[nodiscard]] std::string name() const override;
  [[nodiscard]] std::string version() const override;
  [[nodiscard]] Result<std::unique_ptr<Vm>> Start(const VmSpec& spec) override;
  [[nodiscard]] Accel accel() const { return accel_; }

 private:
  QemuOptions options_;
  Accel accel_;
};

}  // namespace vessel::engine::qemu
