#include "vmm/devices/i8042/i8042.h"

#include <gtest/gtest.h>

#include <array>
#include <vector>

#include "vmm/devices/state_test_util.h"

namespace vessel::vmm {
namespace {

class I8042Test : public ::testing::Test {
 protected:
  uint8_t Status() { return In(kI8042CommandOffset); }
  uint8_t Data() { return In(0); }
  uint8_t In(uint16_t offset) {
    std::array<uint8_t, 1> b{};
    device_.PioRead(offset, b);
    return b[0];
  }
  void Command(uint8_t value) { Out(kI8042CommandOffset, value); }
  void Write(uint8_t value) { Out(0, value); }
  void Out(uint16_t offset, uint8_t value) {
    std::array<uint8_t, 1> b{value};
    device_.PioWrite(offset, b);
  }

  int resets_ = 0;
  I8042 device_{[this] { ++resets_; }};
};

TEST_F(I8042Test, IdleControllerHasNothingToRead) {
  EXPECT_EQ(Status() & 0x01, 0);
  EXPECT_NE(Status() & 0x04, 0);  // system flag: self test passed
  EXPECT_NE(Status() & 0x10, 0);  // not inhibited by the key lock
  EXPECT_NE(Status(), 0xff);      // 0xff would mean "no controller"
}

TEST_F(I8042Test, SelfTestAndInterfaceTests) {
  Command(0xaa);
  EXPECT_EQ(Status() & 0x01, 0x01);
  EXPECT_EQ(Data(), 0x55);
  EXPECT_EQ(Status() & 0x01, 0);
  Command(0xab);
  EXPECT_EQ(Data(), 0x00);  // keyboard interface fine
  Command(0xa9);
  EXPECT_NE(Data(), 0x00);  // no mouse port
}

TEST_F(I8042Test, CommandByteRoundTrip) {
  Command(0x20);
  uint8_t initial = Data();
  Command(0x60);
  Write(0x47);
  Command(0x20);
  EXPECT_EQ(Data(), 0x47);
  EXPECT_NE(initial, 0x47);
  Command(0xa7);  // disable aux sets bit 5
  Command(0x20);
  EXPECT_EQ(Data() & 0x20, 0x20);
}

TEST_F(I8042Test, AuxLoopbackIsEchoedWithoutTheMouseBit) {
  Command(0xd3);
  Write(0x5a);
  EXPECT_EQ(Status() & 0x21, 0x01);
  EXPECT_EQ(Data(), 0x5a);
}

TEST_F(I8042Test, ResetCommandAsksTheVmmToStop) {
  Command(0xfe);
  EXPECT_EQ(resets_, 1);
  Command(0xd1);  // write output port with the reset line low
  Write(0xfe);
  EXPECT_EQ(resets_, 2);
  Command(0xd1);
  Write(0x01);
  EXPECT_EQ(resets_, 2);
}

TEST_F(I8042Test, KeyboardBytesAndUnknownCommandsAreIgnored) {
  Write(0xff);  // reset the (absent) keyboard
  Command(0x12);
  EXPECT_EQ(Status() & 0x01, 0);
  EXPECT_EQ(resets_, 0);
}

TEST_F(I8042Test, OutputQueueIsBounded) {
  for (int i = 0; i < 1000; ++i) Command(0xaa);
  int n = 0;
  while (Status() & 0x01) {
    EXPECT_EQ(Data(), 0x55);
    ++n;
  }
  EXPECT_LE(n, 16);
}

TEST_F(I8042Test, StateRoundTripKeepsRepliesAndAPendingCommand) {
  Command(0xa7);  // disable the aux port: command byte 0x30 | 0x20
  Command(0xaa);
  Command(0xab);
  Command(0x60);  // write command byte: awaits its data byte
  auto saved = device_.SaveState();

  int copy_resets = 0;
  I8042 copy([&] { ++copy_resets; });
  ASSERT_TRUE(copy.LoadState(saved));
  EXPECT_EQ(copy.SaveState(), saved);
  auto in = [&](uint16_t offset) {
    std::array<uint8_t, 1> b{};
    copy.PioRead(offset, b);
    return b[0];
  };
  auto out = [&](uint16_t offset, uint8_t value) {
    std::array<uint8_t, 1> b{value};
    copy.PioWrite(offset, b);
  };
  EXPECT_EQ(in(kI8042CommandOffset)&0x09, 0x09);  // output full, last was a command
  EXPECT_EQ(in(0), 0x55);
  EXPECT_EQ(in(0), 0x00);
  out(0, 0x47);  // the data byte of the saved command
  out(kI8042CommandOffset, 0x20);
  EXPECT_EQ(in(0), 0x47);
  out(kI8042CommandOffset, 0xfe);
  EXPECT_EQ(copy_resets, 1);
  EXPECT_EQ(resets_, 0);
}

TEST_F(I8042Test, LoadStateRefusesDamagedState) {
  Command(0xaa);
  auto saved = device_.SaveState();
  testing::ExpectRefusesDamaged(
      saved, [](std::span<const uint8_t> bytes) { return I8042([] {}).LoadState(bytes); });
  auto load = [](std::vector<uint8_t> bytes) { return I8042([] {}).LoadState(bytes); };
  auto bad = saved;
  bad[6] = 0xaa;  // a pending command that takes no data byte
  testing::ExpectSnapshotFormat(load(bad), "pending command");
  bad = saved;
  bad[7] = 200;  // more output than the controller holds
  bad.resize(8 + 200);
  testing::ExpectSnapshotFormat(load(bad), "output count");
}

}  // namespace
}  // namespace vessel::vmm
