// One vCPU: its KVM fd, the kvm_run page it shares with KVM, and the thread that runs it
// (Vm runs the loop: pausing, stopping and the exits that end the VM). Port and MMIO
// exits are answered here, on the vCPU's thread, by the device on the bus.
#pragma once

#include <linux/kvm.h>

#include <atomic>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "base/unique_fd.h"
#include "vessel/error.h"
#include "vmm/core/bus.h"
#include "vmm/core/device.h"

namespace vessel::vmm {

// A kick is a signal with an empty handler: it only makes KVM_RUN return EINTR.
inline constexpr int kKickSignal = SIGUSR1;

class Vcpu {
 public:
  // KVM_CREATE_VCPU `index` on `vm_fd`, with its kvm_run mapped (`run_size` bytes, from
  // KVM_GET_VCPU_MMAP_SIZE).
  [[nodiscard]] static Result<std::unique_ptr<Vcpu>> Create(int vm_fd, uint32_t index,
                                                            size_t run_size);
  // Unmaps kvm_run; the thread must have been joined.
  ~Vcpu();
  Vcpu(const Vcpu&) = delete;
  Vcpu& operator=(const Vcpu&) = delete;

  [[nodiscard]] uint32_t index() const { return index_; }
  [[nodiscard]] int fd() const { return fd_.get(); }
  [[nodiscard]] kvm_run& run() { return *run_; }
  [[nodiscard]] std::thread& thread() { return thread_; }

  // Makes KVM_RUN return now or as soon as it is entered. Safe from any thread.
  void Kick();
  // Answers a KVM_EXIT_IO (KVM_EXIT_MMIO) with the device on `bus`; an access that no
  // device claims is counted in `unclaimed` and reads as all ones (zeros).
  void HandleIo(const Bus<PioDevice>& bus, std::atomic<uint64_t>& unclaimed);
  void HandleMmio(const Bus<MmioDevice>& bus, std::atomic<uint64_t>& unclaimed);
  // The main registers, for the log of a failed vCPU; empty when KVM does not tell.
  [[nodiscard]] std::string DescribeRegisters() const;

 private:
  Vcpu(uint32_t index, UniqueFd fd, kvm_run* run, size_t run_size)
      : index_(index), fd_(std::move(fd)), run_(run), run_size_(run_size) {}

  const uint32_t index_;
  const UniqueFd fd_;
  kvm_run* const run_;
  const size_t run_size_;
  std::thread thread_;
};

}  // namespace vessel::vmm
