#include "vmm/vcpu.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <span>

namespace vessel::vmm {

Result<std::unique_ptr<Vcpu>> Vcpu::Create(int vm_fd, uint32_t index, size_t run_size) {
  int rc;
  do {
    rc = ::ioctl(vm_fd, KVM_CREATE_VCPU, static_cast<unsigned long>(index));
  } while (rc < 0 && errno == EINTR);
  UniqueFd fd(rc);
  if (!fd) return Fail(Error::HostIo(fmt::format("KVM_CREATE_VCPU {}", index), errno));
  void* run = mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (run == MAP_FAILED) return Fail(Error::HostIo("mapping kvm_run", errno));
  return std::unique_ptr<Vcpu>(
      new Vcpu(index, std::move(fd), static_cast<kvm_run*>(run), run_size));
}

Vcpu::~Vcpu() { munmap(run_, run_size_); }

void Vcpu::Kick() {
  std::atomic_ref<uint8_t>(run_->immediate_exit).store(1);
  if (thread_.joinable()) pthread_kill(thread_.native_handle(), kKickSignal);
}

void Vcpu::HandleIo(const Bus<PioDevice>& bus, std::atomic<uint64_t>& unclaimed) {
  kvm_run& run = *run_;
  const uint64_t size = run.io.size;
  const uint64_t bytes = size * run.io.count;
  if (size == 0 || size > 4 || run.io.data_offset > run_size_ ||
      bytes > run_size_ - run.io.data_offset) {
    return;
  }
  uint8_t* data = reinterpret_cast<uint8_t*>(&run) + run.io.data_offset;
  auto [device, offset] = bus.Find(run.io.port, size);
  for (uint64_t i = 0; i < run.io.count; ++i) {
    std::span<uint8_t> chunk(data + i * size, size);
    if (!device) {
      if (run.io.direction == KVM_EXIT_IO_IN) std::fill(chunk.begin(), chunk.end(), 0xff);
      unclaimed.fetch_add(1, std::memory_order_relaxed);
    } else if (run.io.direction == KVM_EXIT_IO_IN) {
      device->PioRead(static_cast<uint16_t>(offset), chunk);
    } else {
      device->PioWrite(static_cast<uint16_t>(offset), chunk);
    }
  }
}

void Vcpu::HandleMmio(const Bus<MmioDevice>& bus, std::atomic<uint64_t>& unclaimed) {
  auto& mmio = run_->mmio;
  uint32_t len = std::min<uint32_t>(mmio.len, sizeof(mmio.data));
  std::span<uint8_t> data(mmio.data, len);
  auto [device, offset] = bus.Find(mmio.phys_addr, len);
  if (!device) {
    if (!mmio.is_write) std::fill(data.begin(), data.end(), 0);
    unclaimed.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (mmio.is_write) {
    device->MmioWrite(offset, data);
  } else {
    device->MmioRead(offset, data);
  }
}

std::string Vcpu::DescribeRegisters() const {
  kvm_regs regs{};
  kvm_sregs sregs{};
  if (::ioctl(fd_.get(), KVM_GET_REGS, &regs) != 0 ||
      ::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) != 0) {
    return {};
  }
  return fmt::format(
      "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} "
      "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
      regs.rip, regs.rsp, regs.rflags, regs.rax, regs.rbx, regs.rcx, regs.rdx, sregs.cr0, sregs.cr2,
      sregs.cr3, sregs.cr4, sregs.efer, sregs.cs.selector);
}

}  // namespace vessel::vmm
