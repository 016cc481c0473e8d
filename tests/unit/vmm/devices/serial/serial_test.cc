#include "vmm/devices/serial/serial.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstring>
#include <string>

#include "vmm/devices/state_test_util.h"

namespace vessel::vmm {
namespace {

class CountingInterrupt : public Interrupt {
 public:
  void Trigger() override { ++count; }
  std::atomic<int> count = 0;
};

constexpr uint8_t kIerRdiThri = 0x03;
constexpr uint16_t kThr = 0, kIer = 1, kIir = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7;

class SerialTest : public ::testing::Test {
 protected:
  SerialTest() {
    log_ = UniqueFd(memfd_create("serial-log", MFD_CLOEXEC));
    irq_ = std::make_shared<CountingInterrupt>();
    serial_ = std::make_unique<Serial>(UniqueFd(dup(log_.get())), irq_);
  }

  uint8_t In(uint16_t port) {
    std::array<uint8_t, 1> b{0xee};
    serial_->PioRead(port, b);
    return b[0];
  }
  void Out(uint16_t port, uint8_t value) {
    std::array<uint8_t, 1> b{value};
    serial_->PioWrite(port, b);
  }
  void Print(std::string_view text) {
    for (char c : text) Out(kThr, static_cast<uint8_t>(c));
  }
  std::string Log() {
    serial_->Flush();
    std::string out(static_cast<size_t>(lseek(log_.get(), 0, SEEK_END)), '\0');
    EXPECT_EQ(pread(log_.get(), out.data(), out.size(), 0), static_cast<ssize_t>(out.size()));
    return out;
  }

  UniqueFd log_;
  std::shared_ptr<CountingInterrupt> irq_;
  std::unique_ptr<Serial> serial_;
};

TEST_F(SerialTest, TransmittedBytesReachTheLog) {
  Print("Linux version 6.1\n");
  Print("partial");
  EXPECT_EQ(Log(), "Linux version 6.1\npartial");
}

TEST_F(SerialTest, TransmitterIsAlwaysEmpty) {
  EXPECT_EQ(In(kLsr) & 0x60, 0x60);
  Print("x");
  EXPECT_EQ(In(kLsr) & 0x60, 0x60);
  EXPECT_EQ(In(kLsr) & 0x01, 0);  // no data ready: nothing was received
  EXPECT_EQ(In(kThr), 0);
}

TEST_F(SerialTest, ReceivedBytesAreReadInOrderWithDataReadyAndTheirInterrupt) {
  serial_->Receive("ab");
  EXPECT_EQ(irq_->count, 0);  // receive interrupts not enabled yet
  EXPECT_EQ(In(kIir), 0x01);
  Out(kIer, 0x01);
  EXPECT_EQ(irq_->count, 1);  // enabling them with data waiting raises one
  EXPECT_EQ(In(kIir), 0x04);
  EXPECT_EQ(In(kLsr) & 0x01, 0x01);
  EXPECT_EQ(In(kThr), 'a');
  EXPECT_EQ(In(kThr), 'b');
  EXPECT_EQ(In(kLsr) & 0x01, 0);
  EXPECT_EQ(In(kIir), 0x01);  // reading the data cleared it
  serial_->Receive("c");
  EXPECT_EQ(irq_->count, 2);
  EXPECT_EQ(In(kThr), 'c');
  EXPECT_EQ(Log(), "");  // input is not echoed into the log
}

TEST_F(SerialTest, ReceiveLineIsBounded) {
  serial_->Receive(std::string(kMaxSerialReceiveBytes + 100, 'x'));
  serial_->Receive("more");
  size_t n = 0;
  while (In(kLsr) & 0x01) {
    EXPECT_EQ(In(kThr), 'x');
    ++n;
  }
  EXPECT_EQ(n, kMaxSerialReceiveBytes);
}

TEST_F(SerialTest, DivisorLatchAndScratch) {
  Out(kLcr, 0x83);  // DLAB, 8 bits
  Out(kThr, 0x01);
  Out(kIer, 0x00);
  EXPECT_EQ(In(kThr), 0x01);
  EXPECT_EQ(In(kIer), 0x00);
  Out(kLcr, 0x03);
  EXPECT_EQ(In(kLcr), 0x03);
  EXPECT_EQ(Log(), "");  // the divisor write was not data
  Out(kScr, 0x5a);
  EXPECT_EQ(In(kScr), 0x5a);
  Out(kIer, 0x0f);
  EXPECT_EQ(In(kIer), 0x0f);
  Out(kIer, 0xff);
  EXPECT_EQ(In(kIer), 0x0f);  // the upper bits do not exist on an 8250
}

TEST_F(SerialTest, ThreInterruptFollowsIerAndIsAcknowledgedByIir) {
  EXPECT_EQ(In(kIir), 0x01);  // nothing pending
  Out(kIer, 0x02);
  EXPECT_EQ(irq_->count, 1);
  EXPECT_EQ(In(kIir), 0x02);  // THR empty
  EXPECT_EQ(In(kIir), 0x01);  // reading IIR acknowledged it
  Print("a");
  EXPECT_EQ(irq_->count, 2);
  EXPECT_EQ(In(kIir), 0x02);
  Out(kIer, 0x00);
  Print("b");
  EXPECT_EQ(irq_->count, 2);
  EXPECT_EQ(In(kIir), 0x01);  // pending but not enabled
}

TEST_F(SerialTest, LoopbackModeReflectsModemLinesAndTransmitsNothing) {
  Out(kMcr, 0x10 | 0x02);            // loop, RTS
  EXPECT_EQ(In(kMsr) & 0xf0, 0x10);  // CTS follows RTS
  Print("hidden");
  Out(kMcr, 0x00);
  EXPECT_EQ(In(kMsr) & 0xb0, 0xb0);  // carrier, DSR, CTS
  EXPECT_EQ(Log(), "");
}

TEST_F(SerialTest, LogIsCapped) {
  std::string line(1023, 'x');
  line += '\n';
  for (uint64_t written = 0; written < kMaxConsoleLogBytes + 64 * 1024; written += line.size()) {
    Print(line);
  }
  std::string log = Log();
  EXPECT_LE(log.size(), kMaxConsoleLogBytes + 128);
  EXPECT_GE(log.size(), kMaxConsoleLogBytes - 1024);
  EXPECT_NE(log.find("console log limit reached"), std::string::npos);
}

TEST_F(SerialTest, SpotsAKernelPanic) {
  Print("[    1.0] Run /init as init process\n");
  EXPECT_FALSE(serial_->saw_panic());
  Print("[    1.1] Kernel panic - not syncing: Attempted to kill init!\n");
  EXPECT_TRUE(serial_->saw_panic());
}

TEST_F(SerialTest, WideAccessesAndUnknownOffsetsAreHarmless) {
  std::array<uint8_t, 4> wide{1, 2, 3, 4};
  serial_->PioWrite(kScr, wide);
  serial_->PioRead(kLsr, wide);
  EXPECT_EQ(wide[0] & 0x60, 0x60);
  EXPECT_EQ(wide[1], 0);
  std::array<uint8_t, 1> b{};
  serial_->PioRead(99, b);
  serial_->PioWrite(99, b);
  serial_->PioRead(0, std::span<uint8_t>());
}

TEST(Serial, WorksWithoutALog) {
  Serial serial(UniqueFd(), nullptr);
  std::array<uint8_t, 1> b{'x'};
  serial.PioWrite(0, b);
  serial.Flush();
  EXPECT_EQ(serial.bytes_logged(), 1u);
}

TEST_F(SerialTest, StateRoundTripCarriesOnWhereTheGuestLeftOff) {
  Out(kLcr, 0x80);  // DLAB: a divisor of 0x0301
  Out(kThr, 0x01);
  Out(kIer, 0x03);
  Out(kLcr, 0x03);
  Out(kMcr, 0x0b);
  Out(kScr, 0x5a);
  Out(kIer, kIerRdiThri);  // raises THRE, not yet acknowledged
  serial_->Receive("dump\n");
  EXPECT_EQ(In(kThr), 'd');

  auto saved = serial_->SaveState();
  auto copy_irq = std::make_shared<CountingInterrupt>();
  Serial copy(UniqueFd(), copy_irq);
  ASSERT_TRUE(copy.LoadState(saved));
  EXPECT_EQ(copy.SaveState(), saved);
  auto in = [&](uint16_t port) {
    std::array<uint8_t, 1> b{};
    copy.PioRead(port, b);
    return b[0];
  };
  EXPECT_EQ(in(kLcr), 0x03);
  EXPECT_EQ(in(kMcr), 0x0b);
  EXPECT_EQ(in(kScr), 0x5a);
  EXPECT_EQ(in(kIer), kIerRdiThri);
  EXPECT_EQ(in(kIir), 0x04);  // input waits
  EXPECT_EQ(std::string({static_cast<char>(in(kThr)), static_cast<char>(in(kThr)),
                         static_cast<char>(in(kThr)), static_cast<char>(in(kThr))}),
            "ump\n");
  EXPECT_EQ(in(kIir), 0x02);  // then the THRE interrupt the original had pending
  EXPECT_EQ(in(kIir), 0x01);
  std::array<uint8_t, 1> dlab{0x83};
  copy.PioWrite(kLcr, dlab);
  EXPECT_EQ(in(kThr), 0x01);
  EXPECT_EQ(in(kIer), 0x03);
}

TEST_F(SerialTest, LoadStateRefusesDamagedState) {
  serial_->Receive("ab");
  auto saved = serial_->SaveState();
  testing::ExpectRefusesDamaged(saved, [](std::span<const uint8_t> bytes) {
    return Serial(UniqueFd(), nullptr).LoadState(bytes);
  });
  auto load = [&](std::vector<uint8_t> bytes) {
    return Serial(UniqueFd(), nullptr).LoadState(bytes);
  };
  auto bad = saved;
  bad[4] = 0xf0;  // IER bits the device never keeps
  testing::ExpectSnapshotFormat(load(bad), "IER");
  bad = saved;
  bad[10] = 2;  // THRE pending is a bool
  testing::ExpectSnapshotFormat(load(bad), "THRE");
  bad = saved;
  uint16_t absurd = 60000;
  std::memcpy(bad.data() + 11, &absurd, 2);
  testing::ExpectSnapshotFormat(load(bad), "input length");
  // A loaded device that refused keeps its state.
  Serial fresh(UniqueFd(), nullptr);
  auto before = fresh.SaveState();
  EXPECT_FALSE(fresh.LoadState(bad));
  EXPECT_EQ(fresh.SaveState(), before);
}

}  // namespace
}  // namespace vessel::vmm
