// The saved state of a vessel-vmm VM: what KVM holds for the VM and for each vCPU, and
// each device's own state, opaque here. Encoded as docs/snapshot-format.md section 9 says;
// decoding takes only an exact encoding of this version, within fixed bounds, and refuses
// anything else as kSnapshotFormat: a state file is input from disk, and may be corrupt.
// Pure data and functions, so they are tested and fuzzed without KVM.
#pragma once

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vessel/error.h"

namespace vessel::vmm {

inline constexpr uint32_t kMachineStateVersion = 1;
// Bounds a decoder holds an input to (and an encoder's caller keeps to).
inline constexpr size_t kMaxStateVcpus = 32;
inline constexpr size_t kMaxStateMsrs = 512;        // per vCPU
// KVM_GET_XSAVE's area is 4 KiB (struct kvm_xsave's region: sizeof(kvm_xsave) says more in
// C++, where its empty flexible array takes a word); KVM_GET_XSAVE2's, a few KiB more.
inline constexpr size_t kMinXsaveBytes = 4096;
inline constexpr size_t kMaxXsaveBytes = 64 << 10;
inline constexpr size_t kMaxStateDevices = 32;
inline constexpr size_t kMaxDeviceNameBytes = 32;  // [a-z0-9-], not empty
inline constexpr size_t kMaxDeviceStateBytes = 1 << 20;
inline constexpr size_t kMaxMachineStateBytes = 16 << 20;

// What KVM keeps for one vCPU.
struct VcpuState {
  kvm_regs regs{};
  kvm_sregs sregs{};
  std::vector<uint8_t> xsave;  // the KVM_GET_XSAVE(2) area: at least kMinXsaveBytes
  kvm_xcrs xcrs{};
  kvm_lapic_state lapic{};
  std::vector<kvm_msr_entry> msrs;  // the TSC and kvmclock ones among them
  kvm_vcpu_events events{};
  kvm_mp_state mp_state{};
  kvm_debugregs debugregs{};
};

// A device's state, in the device's own encoding, by the device's name.
struct DeviceState {
  std::string name;
  std::vector<uint8_t> bytes;
};

struct MachineState {
  // The in-kernel interrupt controllers (PIC master, PIC slave, IOAPIC), the PIT and the
  // kvmclock.
  kvm_irqchip pic_master{};
  kvm_irqchip pic_slave{};
  kvm_irqchip ioapic{};
  kvm_pit_state2 pit{};
  kvm_clock_data clock{};
  std::vector<VcpuState> vcpus;  // 1..kMaxStateVcpus, by vCPU index
  std::vector<DeviceState> devices;
};

// The encoding of `state`; kInvalidConfig when it is outside the bounds above, so that
// what is written can always be read back.
[[nodiscard]] Result<std::vector<uint8_t>> EncodeMachineState(const MachineState& state);

// The state `bytes` encode. kSnapshotFormat, naming what is wrong, for anything but an
// exact encoding of this version within the bounds above.
[[nodiscard]] Result<MachineState> DecodeMachineState(std::span<const uint8_t> bytes);

// Field-by-field equality of the bytes an encoding carries (KVM's structs have no
// operator==), for tests and the fuzzer's round trip.
bool SameMachineState(const MachineState& a, const MachineState& b);

}  // namespace vessel::vmm
