#include "vmm/arch/x86/kvm_state.h"

#include <fmt/format.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string_view>
#include <utility>

#include "vmm/core/ioctl.h"

namespace vessel::vmm {
namespace {

// struct kvm_msrs, kvm_msr_list and kvm_xsave end in a flexible array that the uapi header
// declares with __DECLARE_FLEX_ARRAY, which adds a byte in C++ and changes the size encoded
// in the ioctl numbers: the requests are made from headers of the C size instead.
struct MsrsHeader {
  uint32_t nmsrs;
  uint32_t pad;
};
struct MsrListHeader {
  uint32_t nmsrs;
};
struct XsaveArea {
  uint32_t region[1024];
};
static_assert(sizeof(MsrsHeader) == 8 && sizeof(MsrListHeader) == 4 &&
              sizeof(XsaveArea) == kMinXsaveBytes);
constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, XsaveArea);
constexpr unsigned long kGetXsave2 = _IOR(KVMIO, 0xcf, XsaveArea);
constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, XsaveArea);
// KVM lists a few hundred MSRs at most; room for them all, whatever is kept of them.
constexpr uint32_t kMaxListedMsrs = 4096;

// A kvm_msrs with `count` entries, in 8-byte units so that the entries are aligned.
std::vector<uint64_t> MsrBuffer(size_t count) {
  return std::vector<uint64_t>(1 + count * sizeof(kvm_msr_entry) / sizeof(uint64_t), 0);
}
MsrsHeader* Header(std::vector<uint64_t>& buffer) {
  return reinterpret_cast<MsrsHeader*>(buffer.data());
}
kvm_msr_entry* Entries(std::vector<uint64_t>& buffer) {
  return reinterpret_cast<kvm_msr_entry*>(buffer.data() + 1);
}

// Reads (or writes) `entries` in one ioctl; returns how many KVM processed, which stops at the
// first MSR it refuses.
Result<size_t> AccessMsrs(int vcpu_fd, unsigned long request, std::span<kvm_msr_entry> entries) {
  auto buffer = MsrBuffer(entries.size());
  Header(buffer)->nmsrs = static_cast<uint32_t>(entries.size());
  std::copy(entries.begin(), entries.end(), Entries(buffer));
  int n = Ioctl(vcpu_fd, request, buffer.data());
  if (n < 0) return Fail(KvmError(request == kGetMsrs ? "KVM_GET_MSRS" : "KVM_SET_MSRS"));
  std::copy_n(Entries(buffer), entries.size(), entries.begin());
  return static_cast<size_t>(n);
}

}  // namespace

Result<VcpuStateLayout> ProbeVcpuStateLayout(int kvm_fd, int vm_fd, int vcpu_fd) {
  std::vector<uint32_t> list(1 + kMaxListedMsrs);
  list[0] = kMaxListedMsrs;
  if (Ioctl(kvm_fd, kGetMsrIndexList, list.data()) < 0) {
    return Fail(KvmError("KVM_GET_MSR_INDEX_LIST"));
  }
  std::vector<kvm_msr_entry> entries;
  for (uint32_t i = 0; i < std::min(list[0], kMaxListedMsrs); ++i) {
    entries.push_back(kvm_msr_entry{.index = list[1 + i], .reserved = 0, .data = 0});
  }
  // KVM lists MSRs this CPU may lack; one read each tells which it has.
  VcpuStateLayout layout;
  for (kvm_msr_entry& entry : entries) {
    auto read = AccessMsrs(vcpu_fd, kGetMsrs, {&entry, 1});
    if (!read) return Fail(std::move(read).error());
    if (*read == 1 && layout.msrs.size() < kMaxStateMsrs) layout.msrs.push_back(entry.index);
  }
  int xsave2 = Ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
  layout.xsave_bytes = xsave2 > 0 ? static_cast<size_t>(xsave2) : sizeof(XsaveArea);
  if (layout.xsave_bytes < sizeof(XsaveArea) || layout.xsave_bytes > kMaxXsaveBytes) {
    return Fail(Error::Backend(fmt::format("KVM's XSAVE area of {} bytes", layout.xsave_bytes)));
  }
  return layout;
}

std::vector<uint64_t> SaveStateIoctls() {
  return {KVM_GET_MP_STATE, KVM_GET_REGS,      KVM_GET_SREGS, kGetXsave, kGetXsave2,
          KVM_GET_XCRS,     KVM_GET_DEBUGREGS, KVM_GET_LAPIC, kGetMsrs,  KVM_GET_VCPU_EVENTS,
          KVM_GET_IRQCHIP,  KVM_GET_PIT2,      KVM_GET_CLOCK};
}

Result<VcpuState> SaveVcpuState(int vcpu_fd, const VcpuStateLayout& layout) {
  VcpuState state;
  if (Ioctl(vcpu_fd, KVM_GET_MP_STATE, &state.mp_state) < 0) {
    return Fail(KvmError("KVM_GET_MP_STATE"));
  }
  if (Ioctl(vcpu_fd, KVM_GET_REGS, &state.regs) < 0) return Fail(KvmError("KVM_GET_REGS"));
  if (Ioctl(vcpu_fd, KVM_GET_SREGS, &state.sregs) < 0) return Fail(KvmError("KVM_GET_SREGS"));
  // In 4-byte units, as KVM fills it.
  std::vector<uint32_t> xsave(layout.xsave_bytes / sizeof(uint32_t));
  bool two = layout.xsave_bytes > sizeof(XsaveArea);
  if (Ioctl(vcpu_fd, two ? kGetXsave2 : kGetXsave, xsave.data()) < 0) {
    return Fail(KvmError(two ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE"));
  }
  state.xsave.resize(layout.xsave_bytes);
  std::memcpy(state.xsave.data(), xsave.data(), layout.xsave_bytes);
  if (Ioctl(vcpu_fd, KVM_GET_XCRS, &state.xcrs) < 0) return Fail(KvmError("KVM_GET_XCRS"));
  if (Ioctl(vcpu_fd, KVM_GET_DEBUGREGS, &state.debugregs) < 0) {
    return Fail(KvmError("KVM_GET_DEBUGREGS"));
  }
  if (Ioctl(vcpu_fd, KVM_GET_LAPIC, &state.lapic) < 0) return Fail(KvmError("KVM_GET_LAPIC"));
  for (uint32_t index : layout.msrs) {
    state.msrs.push_back(kvm_msr_entry{.index = index, .reserved = 0, .data = 0});
  }
  auto read = AccessMsrs(vcpu_fd, kGetMsrs, state.msrs);
  if (!read) return Fail(std::move(read).error());
  if (*read != state.msrs.size()) {
    return Fail(
        Error::Backend(fmt::format("KVM_GET_MSRS stopped at MSR {:#x}", state.msrs[*read].index)));
  }
  if (Ioctl(vcpu_fd, KVM_GET_VCPU_EVENTS, &state.events) < 0) {
    return Fail(KvmError("KVM_GET_VCPU_EVENTS"));
  }
  return state;
}

Result<void> LoadVcpuState(int vcpu_fd, const VcpuState& state) {
  if (Ioctl(vcpu_fd, KVM_SET_MP_STATE, &state.mp_state) < 0) {
    return Fail(KvmError("KVM_SET_MP_STATE"));
  }
  if (Ioctl(vcpu_fd, KVM_SET_REGS, &state.regs) < 0) return Fail(KvmError("KVM_SET_REGS"));
  if (Ioctl(vcpu_fd, KVM_SET_SREGS, &state.sregs) < 0) return Fail(KvmError("KVM_SET_SREGS"));
  // KVM reads as many bytes as its own XSAVE area holds: no fewer may be given.
  std::vector<uint32_t> xsave((std::max(state.xsave.size(), sizeof(XsaveArea)) + 3) / 4);
  std::memcpy(xsave.data(), state.xsave.data(), state.xsave.size());
  if (Ioctl(vcpu_fd, kSetXsave, xsave.data()) < 0) return Fail(KvmError("KVM_SET_XSAVE"));
  if (Ioctl(vcpu_fd, KVM_SET_XCRS, &state.xcrs) < 0) return Fail(KvmError("KVM_SET_XCRS"));
  if (Ioctl(vcpu_fd, KVM_SET_DEBUGREGS, &state.debugregs) < 0) {
    return Fail(KvmError("KVM_SET_DEBUGREGS"));
  }
  if (Ioctl(vcpu_fd, KVM_SET_LAPIC, &state.lapic) < 0) return Fail(KvmError("KVM_SET_LAPIC"));
  std::vector<kvm_msr_entry> msrs = state.msrs;
  auto written = AccessMsrs(vcpu_fd, kSetMsrs, msrs);
  if (!written) return Fail(std::move(written).error());
  if (*written != msrs.size()) {
    return Fail(Error::SnapshotFormat(
        fmt::format("KVM refused the saved value of MSR {:#x}", msrs[*written].index)));
  }
  if (Ioctl(vcpu_fd, KVM_SET_VCPU_EVENTS, &state.events) < 0) {
    return Fail(KvmError("KVM_SET_VCPU_EVENTS"));
  }
  return {};
}

Result<void> SaveVmState(int vm_fd, MachineState& state) {
  state.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
  state.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
  state.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
  for (kvm_irqchip* chip : {&state.pic_master, &state.pic_slave, &state.ioapic}) {
    if (Ioctl(vm_fd, KVM_GET_IRQCHIP, chip) < 0) return Fail(KvmError("KVM_GET_IRQCHIP"));
  }
  if (Ioctl(vm_fd, KVM_GET_PIT2, &state.pit) < 0) return Fail(KvmError("KVM_GET_PIT2"));
  if (Ioctl(vm_fd, KVM_GET_CLOCK, &state.clock) < 0) return Fail(KvmError("KVM_GET_CLOCK"));
  return {};
}

Result<void> LoadVmState(int vm_fd, const MachineState& state) {
  if (Ioctl(vm_fd, KVM_SET_PIT2, &state.pit) < 0) return Fail(KvmError("KVM_SET_PIT2"));
  kvm_clock_data clock = state.clock;
  clock.flags &= KVM_CLOCK_REALTIME;
  if (Ioctl(vm_fd, KVM_SET_CLOCK, &clock) < 0) {
    // Without a realtime reference here, the clock goes on from where it was saved, and
    // the guest agent steps the wall clock when it wakes.
    clock.flags = 0;
    if (Ioctl(vm_fd, KVM_SET_CLOCK, &clock) < 0) return Fail(KvmError("KVM_SET_CLOCK"));
  }
  // Each chip where its record says, whatever id the file gives it.
  for (auto [saved, id] : {std::pair{&state.pic_master, KVM_IRQCHIP_PIC_MASTER},
                           {&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE},
                           {&state.ioapic, KVM_IRQCHIP_IOAPIC}}) {
    kvm_irqchip chip = *saved;
    chip.chip_id = static_cast<uint32_t>(id);
    if (Ioctl(vm_fd, KVM_SET_IRQCHIP, &chip) < 0) return Fail(KvmError("KVM_SET_IRQCHIP"));
  }
  return {};
}

}  // namespace vessel::vmm
