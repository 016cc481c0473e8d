#include "vmm/devices/virtio/mmio_transport.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "vmm/devices/virtio/fake_virtio_driver.h"

namespace vessel::vmm::virtio {
namespace {

using testing::CountingInterrupt;
using testing::FakeDriverQueue;

constexpr uint64_t kFeatureX = 1ULL << 3;

// A device that records what the transport tells it and echoes notifications as used
// buffers.
class FakeDevice : public VirtioDevice {
 public:
  struct Log {
    int activations = 0;
    int resets = 0;
    uint64_t acked = 0;
    std::vector<size_t> notified;
    std::vector<uint8_t> config = {1, 2, 3, 4, 5, 6, 7, 8};
    bool fail_activate = false;
    std::vector<Queue*> queues;
    DriverSignal* signal = nullptr;
  };
  explicit FakeDevice(Log& log) : log_(log) {}

  uint32_t device_type() const override { return 42; }
  uint64_t features() const override { return kFeatureVersion1 | kFeatureX; }
  size_t num_queues() const override { return 2; }
  uint16_t max_queue_size() const override { return 16; }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override {
    for (size_t i = 0; i < data.size() && offset + i < log_.config.size(); ++i) {
      data[i] = log_.config[offset + i];
    }
  }
  void WriteConfig(uint64_t offset, std::span<const uint8_t> data) override {
    for (size_t i = 0; i < data.size() && offset + i < log_.config.size(); ++i) {
      log_.config[offset + i] = data[i];
    }
  }
  Result<void> Activate(const GuestMemory&, std::span<Queue* const> queues, uint64_t acked,
                        DriverSignal& signal) override {
    if (log_.fail_activate) return Fail(Error::Backend("refused"));
    ++log_.activations;
    log_.acked = acked;
    log_.queues.assign(queues.begin(), queues.end());
    log_.signal = &signal;
    return {};
  }
  void QueueNotify(size_t index) override {
    log_.notified.push_back(index);
    log_.signal->UsedBuffers();
  }
  std::string DescribeState() override { return "  fake\n"; }
  void Reset() override {
    ++log_.resets;
    log_.queues.clear();
    log_.signal = nullptr;
  }

 private:
  Log& log_;
};

class MmioTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto mem = GuestMemory::Create(1 << 20);
    ASSERT_TRUE(mem);
    memory_.emplace(std::move(*mem));
    interrupt_ = std::make_shared<CountingInterrupt>();
    transport_ =
        std::make_unique<MmioTransport>(*memory_, std::make_unique<FakeDevice>(log_), interrupt_);
  }
  uint32_t Read(uint64_t offset) { return FakeDriverQueue::Read32(*transport_, offset); }
  void Write(uint64_t offset, uint32_t value) {
    FakeDriverQueue::Write32(*transport_, offset, value);
  }
  void SetUpQueues() {
    for (uint32_t i = 0; i < 2; ++i) {
      FakeDriverQueue(*memory_, 0x10000 + i * testing::kRingBytes, 16)
          .ConfigureMmio(*transport_, i);
    }
  }

  FakeDevice::Log log_;
  std::optional<GuestMemory> memory_;
  std::shared_ptr<CountingInterrupt> interrupt_;
  std::unique_ptr<MmioTransport> transport_;
};

TEST_F(MmioTransportTest, IdentifiesAsVersion2) {
  EXPECT_EQ(Read(mmio::kMagicValue), 0x74726976u);
  EXPECT_EQ(Read(mmio::kVersion), 2u);
  EXPECT_EQ(Read(mmio::kDeviceId), 42u);
  EXPECT_NE(Read(mmio::kVendorId), 0u);
}

TEST_F(MmioTransportTest, OffersFeaturesInTwoWords) {
  Write(mmio::kDeviceFeaturesSel, 0);
  EXPECT_EQ(Read(mmio::kDeviceFeatures), static_cast<uint32_t>(kFeatureX));
  Write(mmio::kDeviceFeaturesSel, 1);
  EXPECT_EQ(Read(mmio::kDeviceFeatures), 1u);  // VERSION_1 is bit 32
  Write(mmio::kDeviceFeaturesSel, 2);
  EXPECT_EQ(Read(mmio::kDeviceFeatures), 0u);
}

TEST_F(MmioTransportTest, NonWordRegisterAccessReadsZeroAndIsIgnored) {
  uint8_t two[2] = {0xff, 0xff};
  transport_->MmioRead(mmio::kMagicValue, two);
  EXPECT_EQ(two[0], 0);
  uint8_t four[4];
  transport_->MmioRead(mmio::kMagicValue + 1, four);  // misaligned
  EXPECT_EQ(four[0], 0);
  uint8_t one[1] = {1};
  transport_->MmioWrite(mmio::kStatus, one);
  EXPECT_EQ(Read(mmio::kStatus), 0u);
}

TEST_F(MmioTransportTest, AcceptsASubsetWithVersion1) {
  EXPECT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1 | kFeatureX) &
              kStatusFeaturesOk);
  SetUpQueues();
  testing::DriverOk(*transport_);
  EXPECT_EQ(log_.activations, 1);
  EXPECT_EQ(log_.acked, kFeatureVersion1 | kFeatureX);
  EXPECT_TRUE(Read(mmio::kStatus) & kStatusDriverOk);
}

TEST_F(MmioTransportTest, RefusesDriverWithoutVersion1) {
  EXPECT_FALSE(testing::NegotiateFeatures(*transport_, kFeatureX) & kStatusFeaturesOk);
  SetUpQueues();
  testing::DriverOk(*transport_);  // the driver ignored the refusal
  EXPECT_EQ(log_.activations, 0);
  EXPECT_FALSE(Read(mmio::kStatus) & kStatusDriverOk);
}

TEST_F(MmioTransportTest, RefusesFeaturesNotOffered) {
  EXPECT_FALSE(testing::NegotiateFeatures(*transport_, kFeatureVersion1 | (1ULL << 28)) &
               kStatusFeaturesOk);
}

TEST_F(MmioTransportTest, FeaturesAreFixedAfterFeaturesOk) {
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  Write(mmio::kDriverFeaturesSel, 0);
  Write(mmio::kDriverFeatures, static_cast<uint32_t>(kFeatureX));
  SetUpQueues();
  testing::DriverOk(*transport_);
  EXPECT_EQ(log_.acked, kFeatureVersion1);
}

TEST_F(MmioTransportTest, QueueRegisters) {
  Write(mmio::kQueueSel, 1);
  EXPECT_EQ(Read(mmio::kQueueNumMax), 16u);
  EXPECT_EQ(Read(mmio::kQueueReady), 0u);
  Write(mmio::kQueueReady, 1);
  EXPECT_EQ(Read(mmio::kQueueReady), 1u);
  Write(mmio::kQueueSel, 7);  // no such queue
  EXPECT_EQ(Read(mmio::kQueueNumMax), 0u);
  Write(mmio::kQueueReady, 1);  // ignored
  EXPECT_EQ(Read(mmio::kQueueReady), 0u);
}

TEST_F(MmioTransportTest, BadQueueSizeFailsActivationAndAsksForReset) {
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  SetUpQueues();
  Write(mmio::kQueueSel, 0);
  Write(mmio::kQueueReady, 0);
  Write(mmio::kQueueNum, 12);  // not a power of two
  Write(mmio::kQueueReady, 1);
  testing::DriverOk(*transport_);
  EXPECT_EQ(log_.activations, 0);
  uint32_t status = Read(mmio::kStatus);
  EXPECT_FALSE(status & kStatusDriverOk);
  EXPECT_TRUE(status & kStatusDeviceNeedsReset);

  Write(mmio::kStatus, 0);
  EXPECT_EQ(Read(mmio::kStatus), 0u);
}

TEST_F(MmioTransportTest, QueueTooLargeOrRingOutsideRamFailsActivation) {
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  SetUpQueues();
  Write(mmio::kQueueSel, 1);
  Write(mmio::kQueueReady, 0);
  Write(mmio::kQueueNum, 32);  // above QueueNumMax
  Write(mmio::kQueueReady, 1);
  testing::DriverOk(*transport_);
  EXPECT_EQ(log_.activations, 0);

  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  SetUpQueues();
  Write(mmio::kQueueSel, 1);
  Write(mmio::kQueueReady, 0);
  Write(mmio::kQueueDescLow, 0);
  Write(mmio::kQueueDescHigh, 0x10);  // 64 GiB: not RAM
  Write(mmio::kQueueReady, 1);
  testing::DriverOk(*transport_);
  EXPECT_EQ(log_.activations, 0);
}

TEST_F(MmioTransportTest, DeviceRefusingActivationAsksForReset) {
  log_.fail_activate = true;
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  SetUpQueues();
  testing::DriverOk(*transport_);
  EXPECT_TRUE(Read(mmio::kStatus) & kStatusDeviceNeedsReset);
}

TEST_F(MmioTransportTest, UnusedQueueIsPassedNotReady) {
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  FakeDriverQueue(*memory_, 0x10000, 16).ConfigureMmio(*transport_, 0);
  testing::DriverOk(*transport_);
  ASSERT_EQ(log_.queues.size(), 2u);
  EXPECT_TRUE(log_.queues[0]->active());
  EXPECT_FALSE(log_.queues[1]->active());
}

TEST_F(MmioTransportTest, NotifyReachesDeviceAndInterruptIsAcked) {
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  SetUpQueues();
  Write(mmio::kQueueNotify, 1);  // before DRIVER_OK: ignored
  testing::DriverOk(*transport_);
  Write(mmio::kQueueNotify, 1);
  Write(mmio::kQueueNotify, 9);  // no such queue: ignored
  EXPECT_EQ(log_.notified, std::vector<size_t>{1});
  EXPECT_EQ(interrupt_->count.load(), 1);
  EXPECT_EQ(Read(mmio::kInterruptStatus), mmio::kInterruptUsedBuffer);
  Write(mmio::kInterruptAck, mmio::kInterruptUsedBuffer);
  EXPECT_EQ(Read(mmio::kInterruptStatus), 0u);
}

TEST_F(MmioTransportTest, NeedsResetRaisesConfigInterruptAndStopsNotifies) {
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  SetUpQueues();
  testing::DriverOk(*transport_);
  log_.signal->NeedsReset();
  EXPECT_TRUE(Read(mmio::kStatus) & kStatusDeviceNeedsReset);
  EXPECT_TRUE(Read(mmio::kInterruptStatus) & mmio::kInterruptConfigChange);
  Write(mmio::kQueueNotify, 0);
  EXPECT_TRUE(log_.notified.empty());
}

TEST_F(MmioTransportTest, ResetReturnsToInitialStateAndResetsDevice) {
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  SetUpQueues();
  testing::DriverOk(*transport_);
  int resets = log_.resets;
  Write(mmio::kStatus, 0);
  EXPECT_EQ(log_.resets, resets + 1);
  EXPECT_EQ(Read(mmio::kStatus), 0u);
  Write(mmio::kQueueSel, 0);
  EXPECT_EQ(Read(mmio::kQueueReady), 0u);
  // Reinitialises cleanly.
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  SetUpQueues();
  testing::DriverOk(*transport_);
  EXPECT_EQ(log_.activations, 2);
}

TEST_F(MmioTransportTest, QueueConfigIsFrozenAfterDriverOk) {
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  SetUpQueues();
  testing::DriverOk(*transport_);
  Write(mmio::kQueueSel, 0);
  Write(mmio::kQueueReady, 0);
  EXPECT_EQ(Read(mmio::kQueueReady), 1u);
  Write(mmio::kQueueDescLow, 0x5000);
  EXPECT_EQ(log_.queues[0]->desc_addr(), 0x10000u);
}

TEST_F(MmioTransportTest, StatusBitsCannotBeCleared) {
  Write(mmio::kStatus, kStatusAcknowledge | kStatusDriver);
  Write(mmio::kStatus, kStatusAcknowledge);
  EXPECT_EQ(Read(mmio::kStatus), kStatusAcknowledge | kStatusDriver);
}

TEST_F(MmioTransportTest, DriverOkWithoutFeaturesOkFails) {
  Write(mmio::kStatus, kStatusAcknowledge | kStatusDriver);
  Write(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusDriverOk);
  EXPECT_EQ(log_.activations, 0);
  EXPECT_TRUE(Read(mmio::kStatus) & kStatusFailed);
}

TEST_F(MmioTransportTest, ConfigSpaceAnyWidth) {
  uint8_t two[2];
  transport_->MmioRead(mmio::kConfig + 2, two);
  EXPECT_EQ(two[0], 3);
  EXPECT_EQ(two[1], 4);
  uint8_t one[1] = {9};
  transport_->MmioWrite(mmio::kConfig + 7, one);
  EXPECT_EQ(log_.config[7], 9);
  uint8_t eight[8];
  transport_->MmioRead(mmio::kConfig + 0xf00, eight);  // beyond the device's config
  EXPECT_EQ(eight[0], 0);
}

}  // namespace
}  // namespace vessel::vmm::virtio
