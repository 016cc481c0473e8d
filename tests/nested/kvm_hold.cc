// vessel-kvm-hold: keeps one KVM VM, with an in-kernel irqchip and one vCPU that never runs,
// open until it is killed.
//
// In the nested L1 guest, KVM flips kernel static keys as VMs come and go: the scheduler's
// preempt notifiers when the first VM is created and after the last is destroyed, and the
// local APIC's "software disabled" key when the first vCPU is created and a second after
// the last guest enables its APIC. Each flip patches L1's kernel text, which QEMU's
// multi-threaded TCG, running L1, does not always pick up on every vCPU (docs/nested.md).
// This VM holds both keys on, so the tests' VMs coming and going patch nothing.
//
//   vessel-kvm-hold [--vm-only]     --vm-only: no irqchip and no vCPU (for comparison runs)
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  bool vm_only = argc > 1 && std::strcmp(argv[1], "--vm-only") == 0;
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  int vm = kvm < 0 ? -1 : ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) {
    std::perror("vessel-kvm-hold: KVM_CREATE_VM");
    return 1;
  }
  // A vCPU's local APIC starts software-disabled and, never run, stays so.
  if (!vm_only && (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0 || ioctl(vm, KVM_CREATE_VCPU, 0) < 0)) {
    std::perror("vessel-kvm-hold: a vCPU with an in-kernel local APIC");
    return 1;
  }
  std::puts(vm_only ? "vessel-kvm-hold: holding one KVM VM" : "vessel-kvm-hold: holding one KVM VM and vCPU");
  std::fflush(stdout);
  for (;;) pause();
}
