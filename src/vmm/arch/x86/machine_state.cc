#include "vmm/arch/x86/machine_state.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>
#include <set>
#include <type_traits>

#include "vmm/core/state_codec.h"

namespace vessel::vmm {
namespace {

constexpr char kMagic[8] = {'V', 'S', 'L', 'K', 'V', 'M', 'S', 'T'};

enum class Tag : uint32_t {
  kMachine = 1,
  kVcpu = 2,
  kDevice = 3,
  kEnd = 0xffffffff,
};

constexpr size_t kMachineBytes =
    3 * sizeof(kvm_irqchip) + sizeof(kvm_pit_state2) + sizeof(kvm_clock_data);
// A vCPU record's fixed part, before its xsave area and its MSRs.
constexpr size_t kVcpuFixedBytes = sizeof(kvm_regs) + sizeof(kvm_sregs) + sizeof(kvm_xcrs) +
                                   sizeof(kvm_lapic_state) + sizeof(kvm_vcpu_events) +
                                   sizeof(kvm_mp_state) + sizeof(kvm_debugregs);

Error Malformed(const std::string& what) { return Error::SnapshotFormat("machine state: " + what); }

bool ValidDeviceName(const std::string& name) {
  return !name.empty() && name.size() <= kMaxDeviceNameBytes &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
         });
}

// What EncodeMachineState refuses and DecodeMachineState must too: the one list of bounds.
std::optional<std::string> OutOfBounds(const MachineState& state) {
  if (state.vcpus.empty() || state.vcpus.size() > kMaxStateVcpus) {
    return fmt::format("{} vCPUs (1 to {})", state.vcpus.size(), kMaxStateVcpus);
  }
  for (size_t i = 0; i < state.vcpus.size(); ++i) {
    const auto& vcpu = state.vcpus[i];
    if (vcpu.xsave.size() < kMinXsaveBytes || vcpu.xsave.size() > kMaxXsaveBytes ||
        vcpu.xsave.size() % 4 != 0) {
      return fmt::format("vCPU {}: an xsave area of {} bytes ({} to {}, whole words)", i,
                         vcpu.xsave.size(), kMinXsaveBytes, kMaxXsaveBytes);
    }
    if (vcpu.msrs.size() > kMaxStateMsrs) {
      return fmt::format("vCPU {}: {} MSRs (at most {})", i, vcpu.msrs.size(), kMaxStateMsrs);
    }
  }
  if (state.devices.size() > kMaxStateDevices) {
    return fmt::format("{} devices (at most {})", state.devices.size(), kMaxStateDevices);
  }
  std::set<std::string> names;
  for (const auto& device : state.devices) {
    if (!ValidDeviceName(device.name)) {
      return fmt::format("a device name \"{}\" (1 to {} of a-z, 0-9, -)", device.name,
                         kMaxDeviceNameBytes);
    }
    if (!names.insert(device.name).second) return "two devices named " + device.name;
    if (device.bytes.size() > kMaxDeviceStateBytes) {
      return fmt::format("device {}: {} bytes of state (at most {})", device.name,
                         device.bytes.size(), kMaxDeviceStateBytes);
    }
  }
  return std::nullopt;
}

Result<VcpuState> DecodeVcpu(std::span<const uint8_t> body, size_t index) {
  StateReader in(body, "machine state");
  VcpuState vcpu;
  std::string what = fmt::format("vCPU {}", index);
  if (auto r = in.Get(vcpu.regs, what.c_str()); !r) return Fail(std::move(r).error());
  if (auto r = in.Get(vcpu.sregs, what.c_str()); !r) return Fail(std::move(r).error());
  if (auto r = in.Get(vcpu.xcrs, what.c_str()); !r) return Fail(std::move(r).error());
  if (auto r = in.Get(vcpu.lapic, what.c_str()); !r) return Fail(std::move(r).error());
  if (auto r = in.Get(vcpu.events, what.c_str()); !r) return Fail(std::move(r).error());
  if (auto r = in.Get(vcpu.mp_state, what.c_str()); !r) return Fail(std::move(r).error());
  if (auto r = in.Get(vcpu.debugregs, what.c_str()); !r) return Fail(std::move(r).error());
  uint32_t xsave_bytes = 0;
  if (auto r = in.Get(xsave_bytes, what.c_str()); !r) return Fail(std::move(r).error());
  if (xsave_bytes < kMinXsaveBytes || xsave_bytes > kMaxXsaveBytes || xsave_bytes % 4 != 0) {
    return Fail(Malformed(fmt::format("{}: an xsave area of {} bytes", what, xsave_bytes)));
  }
  auto xsave = in.Take(xsave_bytes, what.c_str());
  if (!xsave) return Fail(std::move(xsave).error());
  vcpu.xsave.assign(xsave->begin(), xsave->end());
  uint32_t msrs = 0;
  if (auto r = in.Get(msrs, what.c_str()); !r) return Fail(std::move(r).error());
  if (msrs > kMaxStateMsrs) return Fail(Malformed(fmt::format("{}: {} MSRs", what, msrs)));
  if (in.size() != size_t{msrs} * sizeof(kvm_msr_entry)) {
    return Fail(Malformed(fmt::format("{}: {} bytes for {} MSRs", what, in.size(), msrs)));
  }
  vcpu.msrs.resize(msrs);
  for (auto& msr : vcpu.msrs) {
    if (auto r = in.Get(msr, what.c_str()); !r) return Fail(std::move(r).error());
  }
  return vcpu;
}

}  // namespace

Result<std::vector<uint8_t>> EncodeMachineState(const MachineState& state) {
  if (auto why = OutOfBounds(state)) return Fail(Error::InvalidConfig("machine state", *why));
  StateWriter out;
  out.Bytes({reinterpret_cast<const uint8_t*>(kMagic), sizeof(kMagic)});
  out.Put(kMachineStateVersion);
  out.Record(Tag::kMachine, [&] {
    out.Put(state.pic_master);
    out.Put(state.pic_slave);
    out.Put(state.ioapic);
    out.Put(state.pit);
    out.Put(state.clock);
  });
  for (const auto& vcpu : state.vcpus) {
    out.Record(Tag::kVcpu, [&] {
      out.Put(vcpu.regs);
      out.Put(vcpu.sregs);
      out.Put(vcpu.xcrs);
      out.Put(vcpu.lapic);
      out.Put(vcpu.events);
      out.Put(vcpu.mp_state);
      out.Put(vcpu.debugregs);
      out.Put(static_cast<uint32_t>(vcpu.xsave.size()));
      out.Bytes(vcpu.xsave);
      out.Put(static_cast<uint32_t>(vcpu.msrs.size()));
      for (const auto& msr : vcpu.msrs) out.Put(msr);
    });
  }
  for (const auto& device : state.devices) {
    out.Record(Tag::kDevice, [&] {
      out.Put(static_cast<uint8_t>(device.name.size()));
      out.Bytes({reinterpret_cast<const uint8_t*>(device.name.data()), device.name.size()});
      out.Bytes(device.bytes);
    });
  }
  out.Record(Tag::kEnd, [] {});
  return out.Take();
}

Result<MachineState> DecodeMachineState(std::span<const uint8_t> bytes) {
  if (bytes.size() > kMaxMachineStateBytes) {
    return Fail(
        Malformed(fmt::format("{} bytes (at most {})", bytes.size(), kMaxMachineStateBytes)));
  }
  StateReader in(bytes, "machine state");
  auto magic = in.Take(sizeof(kMagic), "the magic");
  if (!magic) return Fail(std::move(magic).error());
  if (std::memcmp(magic->data(), kMagic, sizeof(kMagic)) != 0) {
    return Fail(Malformed("not a vessel-vmm machine state (bad magic)"));
  }
  uint32_t version = 0;
  if (auto r = in.Get(version, "the version"); !r) return Fail(std::move(r).error());
  if (version != kMachineStateVersion) {
    return Fail(Malformed(
        fmt::format("version {}, this vessel-vmm reads {}", version, kMachineStateVersion)));
  }
  MachineState state;
  bool machine = false;
  for (;;) {
    uint32_t raw_tag = 0, length = 0;
    if (auto r = in.Get(raw_tag, "a record's tag"); !r) return Fail(std::move(r).error());
    if (auto r = in.Get(length, "a record's length"); !r) return Fail(std::move(r).error());
    auto body = in.Take(length, "a record");
    if (!body) return Fail(std::move(body).error());
    switch (static_cast<Tag>(raw_tag)) {
      case Tag::kMachine: {
        if (machine) return Fail(Malformed("a second machine record"));
        if (length != kMachineBytes) {
          return Fail(Malformed(
              fmt::format("a machine record of {} bytes, not {}", length, kMachineBytes)));
        }
        StateReader record(*body, "machine state");
        (void)record.Get(state.pic_master, "the machine");
        (void)record.Get(state.pic_slave, "the machine");
        (void)record.Get(state.ioapic, "the machine");
        (void)record.Get(state.pit, "the machine");
        (void)record.Get(state.clock, "the machine");
        machine = true;
        break;
      }
      case Tag::kVcpu: {
        if (!machine) return Fail(Malformed("a vCPU before the machine record"));
        if (!state.devices.empty()) return Fail(Malformed("a vCPU after a device"));
        if (state.vcpus.size() == kMaxStateVcpus) {
          return Fail(Malformed(fmt::format("more than {} vCPUs", kMaxStateVcpus)));
        }
        if (length < kVcpuFixedBytes) return Fail(Malformed("a vCPU record is truncated"));
        auto vcpu = DecodeVcpu(*body, state.vcpus.size());
        if (!vcpu) return Fail(std::move(vcpu).error());
        state.vcpus.push_back(std::move(*vcpu));
        break;
      }
      case Tag::kDevice: {
        if (state.vcpus.empty()) return Fail(Malformed("a device before any vCPU"));
        if (state.devices.size() == kMaxStateDevices) {
          return Fail(Malformed(fmt::format("more than {} devices", kMaxStateDevices)));
        }
        StateReader record(*body, "machine state");
        uint8_t name_bytes = 0;
        if (auto r = record.Get(name_bytes, "a device"); !r) return Fail(std::move(r).error());
        auto name = record.Take(name_bytes, "a device's name");
        if (!name) return Fail(std::move(name).error());
        // Its name and size are checked with the other bounds, at the end.
        auto rest = record.Take(record.size(), "a device's state");
        state.devices.push_back({std::string(name->begin(), name->end()),
                                 std::vector<uint8_t>(rest->begin(), rest->end())});
        break;
      }
      case Tag::kEnd:
        if (length != 0) return Fail(Malformed("an end record with a body"));
        if (!in.empty()) return Fail(Malformed(fmt::format("{} bytes after the end", in.size())));
        if (auto why = OutOfBounds(state)) return Fail(Malformed(*why));
        return state;
      default: return Fail(Malformed(fmt::format("an unknown record type {}", raw_tag)));
    }
  }
}

bool SameMachineState(const MachineState& a, const MachineState& b) {
  auto same = [](const auto& x, const auto& y) { return std::memcmp(&x, &y, sizeof(x)) == 0; };
  if (!same(a.pic_master, b.pic_master) || !same(a.pic_slave, b.pic_slave) ||
      !same(a.ioapic, b.ioapic) || !same(a.pit, b.pit) || !same(a.clock, b.clock) ||
      a.vcpus.size() != b.vcpus.size() || a.devices.size() != b.devices.size()) {
    return false;
  }
  for (size_t i = 0; i < a.vcpus.size(); ++i) {
    const auto& x = a.vcpus[i];
    const auto& y = b.vcpus[i];
    if (!same(x.regs, y.regs) || !same(x.sregs, y.sregs) || x.xsave != y.xsave ||
        !same(x.xcrs, y.xcrs) || !same(x.lapic, y.lapic) || !same(x.events, y.events) ||
        !same(x.mp_state, y.mp_state) || !same(x.debugregs, y.debugregs) ||
        x.msrs.size() != y.msrs.size() ||
        (!x.msrs.empty() &&
         std::memcmp(x.msrs.data(), y.msrs.data(), x.msrs.size() * sizeof(kvm_msr_entry)) != 0)) {
      return false;
    }
  }
  for (size_t i = 0; i < a.devices.size(); ++i) {
    if (a.devices[i].name != b.devices[i].name || a.devices[i].bytes != b.devices[i].bytes) {
      return false;
    }
  }
  return true;
}

}  // namespace vessel::vmm
