// The machine-state format (docs/snapshot-format.md section 9): what is encoded decodes to
// the same, and every way a state file can be wrong is a kSnapshotFormat error.
#include "vmm/arch/x86/machine_state.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace vessel::vmm {
namespace {

// Fills a struct with a pattern that differs per field, so that a field lost or moved in
// the round trip shows.
template <typename T>
void Fill(T& value, uint8_t seed) {
  auto* bytes = reinterpret_cast<uint8_t*>(&value);
  for (size_t i = 0; i < sizeof(T); ++i) bytes[i] = static_cast<uint8_t>(seed + i * 7);
}

MachineState Sample(size_t vcpus = 2) {
  MachineState state;
  Fill(state.pic_master, 1);
  Fill(state.pic_slave, 2);
  Fill(state.ioapic, 3);
  Fill(state.pit, 4);
  Fill(state.clock, 5);
  for (size_t i = 0; i < vcpus; ++i) {
    VcpuState vcpu;
    auto seed = static_cast<uint8_t>(16 * (i + 1));
    Fill(vcpu.regs, seed);
    Fill(vcpu.sregs, seed + 1);
    vcpu.xsave.assign(kMinXsaveBytes + 4 * 64, static_cast<uint8_t>(seed + 2));
    Fill(vcpu.xcrs, seed + 3);
    Fill(vcpu.lapic, seed + 4);
    vcpu.msrs = {{.index = 0x10, .reserved = 0, .data = 12345},          // the TSC
                 {.index = 0x4b564d01, .reserved = 0, .data = 0x1001}};  // kvmclock
    Fill(vcpu.events, seed + 5);
    Fill(vcpu.mp_state, seed + 6);
    Fill(vcpu.debugregs, seed + 7);
    state.vcpus.push_back(std::move(vcpu));
  }
  state.devices = {
      {"serial", {1, 2, 3}}, {"virtio-vsock", std::vector<uint8_t>(300, 9)}, {"i8042", {}}};
  return state;
}

std::vector<uint8_t> Encoded(const MachineState& state) {
  auto bytes = EncodeMachineState(state);
  EXPECT_TRUE(bytes.has_value()) << bytes.error().ToString();
  return bytes ? *bytes : std::vector<uint8_t>{};
}

void ExpectRefused(const std::vector<uint8_t>& bytes, const std::string& why) {
  auto state = DecodeMachineState(bytes);
  ASSERT_FALSE(state.has_value()) << "decoded: " << why;
  EXPECT_EQ(state.error().kind(), ErrorKind::kSnapshotFormat) << state.error().ToString();
  EXPECT_NE(state.error().message().find(why), std::string::npos) << state.error().ToString();
}

// The offset of the first record after the header (magic and version).
constexpr size_t kHeader = 12;

// `bytes` with the u32 at `at` made `value` are refused for `why`.
void ExpectRefusedPatched(std::vector<uint8_t> bytes, size_t at, uint32_t value,
                          const std::string& why) {
  std::memcpy(bytes.data() + at, &value, sizeof(value));
  ExpectRefused(bytes, why);
}

TEST(MachineStateTest, WhatIsEncodedDecodesToTheSame) {
  for (size_t vcpus : {size_t{1}, size_t{2}, kMaxStateVcpus}) {
    MachineState state = Sample(vcpus);
    auto decoded = DecodeMachineState(Encoded(state));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_TRUE(SameMachineState(*decoded, state));
    EXPECT_EQ(Encoded(*decoded), Encoded(state));
  }
  MachineState changed = Sample();
  changed.vcpus[1].lapic.regs[100] ^= 1;
  EXPECT_FALSE(SameMachineState(changed, Sample()));
  // KVM_GET_XSAVE's own area, exactly 4 KiB, is the smallest there is.
  MachineState legacy = Sample(1);
  legacy.vcpus[0].xsave.resize(kMinXsaveBytes);
  auto decoded = DecodeMachineState(Encoded(legacy));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->vcpus[0].xsave.size(), 4096u);
}

TEST(MachineStateTest, EveryTruncationIsRefused) {
  auto bytes = Encoded(Sample(1));
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(n));
    auto state = DecodeMachineState(cut);
    ASSERT_FALSE(state.has_value()) << "decoded the first " << n << " bytes";
    EXPECT_EQ(state.error().kind(), ErrorKind::kSnapshotFormat);
  }
}

TEST(MachineStateTest, AForeignOrNewerFileIsRefused) {
  auto bytes = Encoded(Sample());
  auto bad_magic = bytes;
  bad_magic[0] = 'X';
  ExpectRefused(bad_magic, "bad magic");
  ExpectRefusedPatched(bytes, 8, kMachineStateVersion + 1, "version 2");
  ExpectRefused({}, "the magic is truncated");
}

TEST(MachineStateTest, RecordsOutOfPlaceOrOfUnknownTypeAreRefused) {
  auto bytes = Encoded(Sample(1));
  ExpectRefusedPatched(bytes, kHeader, 7, "unknown record type 7");
  // The vCPU record first: its tag where the machine's is.
  ExpectRefusedPatched(bytes, kHeader, 2, "a vCPU before the machine record");
  ExpectRefusedPatched(bytes, kHeader + 4, 10, "a machine record of 10 bytes");
  auto trailing = bytes;
  trailing.push_back(0);
  ExpectRefused(trailing, "1 bytes after the end");
  // No end record: the last 8 bytes are it.
  std::vector<uint8_t> endless(bytes.begin(), bytes.end() - 8);
  ExpectRefused(endless, "a record's tag is truncated");
}

TEST(MachineStateTest, CountsAndSizesBeyondTheBoundsAreRefused) {
  // A vCPU record's MSR count is the 4 bytes before its MSRs, which end the record.
  MachineState one = Sample(1);
  auto bytes = Encoded(one);
  size_t vcpu_end = bytes.size() - 8;  // the end record
  for (const auto& device : one.devices)
    vcpu_end -= 8 + 1 + device.name.size() + device.bytes.size();
  size_t msr_count_at = vcpu_end - one.vcpus[0].msrs.size() * sizeof(kvm_msr_entry) - 4;
  ExpectRefusedPatched(bytes, msr_count_at, kMaxStateMsrs + 1, "vCPU 0: 513 MSRs");
  ExpectRefusedPatched(bytes, msr_count_at, 1, "32 bytes for 1 MSRs");
  size_t xsave_size_at = msr_count_at - one.vcpus[0].xsave.size() - 4;
  ExpectRefusedPatched(bytes, xsave_size_at, 16, "an xsave area of 16 bytes");
  ExpectRefusedPatched(bytes, xsave_size_at, 0xfffffff0, "an xsave area of 4294967280 bytes");
  ExpectRefused(std::vector<uint8_t>(kMaxMachineStateBytes + 1), "bytes (at most");
}

TEST(MachineStateTest, DevicesMustBeNamedOnceAndWell) {
  MachineState state = Sample(1);
  state.devices = {{"serial", {1}}};
  auto bytes = Encoded(state);
  // The device record: tag, length, name length, then the name.
  size_t name_at = bytes.size() - 8 - 1 - 6;
  auto upper = bytes;
  upper[name_at] = 'S';
  ExpectRefused(upper, "a device name \"Serial\"");
  // Two devices whose names differ in their last letter, which is then made the same.
  state.devices = {{"serial", {1}}, {"seriam", {2}}};
  auto same_names = Encoded(state);
  same_names[same_names.size() - 8 - 1 - 1] = 'l';
  ExpectRefused(same_names, "two devices named serial");
  state.devices = {{"serial", {1}}, {"serial", {2}}};
  auto twice = EncodeMachineState(state);
  ASSERT_FALSE(twice.has_value());
  EXPECT_EQ(twice.error().kind(), ErrorKind::kInvalidConfig);
}

TEST(MachineStateTest, TheEncoderRefusesWhatTheDecoderWould) {
  for (auto change : std::vector<void (*)(MachineState&)>{
           [](MachineState& s) { s.vcpus.clear(); },
           [](MachineState& s) { s.vcpus.resize(kMaxStateVcpus + 1, s.vcpus[0]); },
           [](MachineState& s) { s.vcpus[0].xsave.resize(100); },
           [](MachineState& s) { s.vcpus[0].msrs.resize(kMaxStateMsrs + 1); },
           [](MachineState& s) {
             s.devices.push_back({"", {}});
           },
           [](MachineState& s) {
             s.devices.push_back({"a/b", {}});
           },
           [](MachineState& s) {
             s.devices.push_back({std::string(33, 'a'), {}});
           },
           [](MachineState& s) {
             s.devices.push_back({"big", std::vector<uint8_t>(kMaxDeviceStateBytes + 1)});
           },
       }) {
    MachineState state = Sample(1);
    change(state);
    auto bytes = EncodeMachineState(state);
    ASSERT_FALSE(bytes.has_value());
    EXPECT_EQ(bytes.error().kind(), ErrorKind::kInvalidConfig) << bytes.error().ToString();
  }
}

}  // namespace
}  // namespace vessel::vmm
