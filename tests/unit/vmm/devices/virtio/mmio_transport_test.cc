#include "vmm/devices/virtio/mmio_transport.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "vmm/devices/state_test_util.h"
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
    std::vector<uint8_t> state;   // what SaveState gives
    std::vector<uint8_t> loaded;  // what LoadState got
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
  std::vector<uint8_t> SaveState() override { return log_.state; }
  Result<void> LoadState(std::span<const uint8_t> bytes) override {
    if (bytes.size() == 1 && bytes[0] == kRefusedState) return Fail(Error::SnapshotFormat("no"));
    log_.loaded.assign(bytes.begin(), bytes.end());
    return {};
  }
  static constexpr uint8_t kRefusedState = 0xbd;
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

// Offsets in the transport's saved state (mmio_transport.cc), for damaging it.
constexpr size_t kSavedStatus = 4;
constexpr size_t kSavedActive = 28;
constexpr size_t kSavedInterruptStatus = 29;
constexpr size_t kSavedQueueCount = 34;
constexpr size_t kSavedQueue0 = 36;  // size u16, ready u8, then the three addresses u64
constexpr size_t kSavedQueue0Desc = kSavedQueue0 + 3;
constexpr size_t kSavedQueue0Used = kSavedQueue0 + 19;

class MmioTransportStateTest : public MmioTransportTest {
 protected:
  void SetUp() override {
    MmioTransportTest::SetUp();
    driver_.emplace_back(*memory_, 0x10000, 16);
    driver_.emplace_back(*memory_, 0x10000 + testing::kRingBytes, 8);
  }

  // Brings the driver up with queue 0 carrying three chains, of which the device took two
  // and returned one, and the device holding some state of its own.
  void DriveToActive() {
    ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1 | kFeatureX) &
                kStatusFeaturesOk);
    for (uint32_t i = 0; i < 2; ++i) driver_[i].ConfigureMmio(*transport_, i);
    testing::DriverOk(*transport_);
    ASSERT_EQ(log_.activations, 1);
    for (uint64_t i = 0; i < 3; ++i) heads_.push_back(driver_[0].Add({{0x80000 + 0x100 * i, 64}}));
    auto first = log_.queues[0]->Pop();
    ASSERT_TRUE(first && *first);
    ASSERT_TRUE(log_.queues[0]->PushUsed((*first)->head, 7));
    auto second = log_.queues[0]->Pop();
    ASSERT_TRUE(second && *second);
    held_ = (*second)->head;
    log_.signal->UsedBuffers();
    Write(mmio::kQueueSel, 1);
    log_.state = {1, 2, 3};
  }

  // A fresh transport with a fresh device, as a restored VM makes it.
  std::unique_ptr<MmioTransport> Fresh(FakeDevice::Log& log) {
    return std::make_unique<MmioTransport>(*memory_, std::make_unique<FakeDevice>(log), interrupt_);
  }

  std::vector<FakeDriverQueue> driver_;
  std::vector<uint16_t> heads_;
  uint16_t held_ = 0;
};

TEST_F(MmioTransportStateTest, ActiveTransportCarriesOnAfterLoad) {
  ASSERT_NO_FATAL_FAILURE(DriveToActive());
  auto saved = transport_->SaveState();

  FakeDevice::Log copy_log;
  auto copy = Fresh(copy_log);
  ASSERT_TRUE(copy->LoadState(saved));
  EXPECT_EQ(copy_log.activations, 1);
  EXPECT_EQ(copy_log.acked, kFeatureVersion1 | kFeatureX);
  EXPECT_EQ(copy_log.loaded, (std::vector<uint8_t>{1, 2, 3}));
  copy_log.state = log_.state;
  EXPECT_EQ(copy->SaveState(), saved);

  auto read = [&](uint64_t offset) { return FakeDriverQueue::Read32(*copy, offset); };
  EXPECT_TRUE(read(mmio::kStatus) & kStatusDriverOk);
  EXPECT_EQ(read(mmio::kInterruptStatus), mmio::kInterruptUsedBuffer);
  EXPECT_EQ(read(mmio::kQueueReady), 1u);  // QueueSel 1 kept
  EXPECT_EQ(read(mmio::kQueueNumMax), 16u);

  // The queue carries on: the chain the device held can be taken back and returned, the
  // third is next, and the driver sees both in its used ring after the first.
  ASSERT_EQ(copy_log.queues.size(), 2u);
  Queue& q = *copy_log.queues[0];
  EXPECT_EQ(q.next_used(), 1);
  auto held = q.Retake(held_);
  ASSERT_TRUE(held);
  EXPECT_EQ(held->readable_bytes, 64u);
  ASSERT_TRUE(q.PushUsed(held_, 1));
  auto third = q.Pop();
  ASSERT_TRUE(third && *third);
  EXPECT_EQ((*third)->head, heads_[2]);
  ASSERT_TRUE(q.PushUsed((*third)->head, 2));
  auto empty = q.Pop();
  ASSERT_TRUE(empty);
  EXPECT_FALSE(*empty);
  auto used = driver_[0].TakeUsed();
  ASSERT_EQ(used.size(), 3u);
  EXPECT_EQ(used[0].len, 7u);
  EXPECT_EQ(used[1].id, held_);
  EXPECT_EQ(used[2].id, heads_[2]);

  // Notifications reach the loaded device.
  FakeDriverQueue::Write32(*copy, mmio::kQueueNotify, 0);
  EXPECT_EQ(copy_log.notified, (std::vector<size_t>{0}));
}

TEST_F(MmioTransportStateTest, TransportBeforeDriverOkLoadsInactive) {
  ASSERT_TRUE(testing::NegotiateFeatures(*transport_, kFeatureVersion1) & kStatusFeaturesOk);
  driver_[0].ConfigureMmio(*transport_, 0);
  auto saved = transport_->SaveState();

  FakeDevice::Log copy_log;
  auto copy = Fresh(copy_log);
  ASSERT_TRUE(copy->LoadState(saved));
  EXPECT_EQ(copy_log.activations, 0);
  EXPECT_EQ(copy->SaveState(), saved);
  driver_[1].ConfigureMmio(*copy, 1);
  testing::DriverOk(*copy);
  EXPECT_EQ(copy_log.activations, 1);
  EXPECT_EQ(copy_log.acked, kFeatureVersion1);
  ASSERT_EQ(copy_log.queues.size(), 2u);
  EXPECT_TRUE(copy_log.queues[0]->active());
  EXPECT_TRUE(copy_log.queues[1]->active());
}

TEST_F(MmioTransportStateTest, LoadStateRefusesDamagedState) {
  ASSERT_NO_FATAL_FAILURE(DriveToActive());
  auto saved = transport_->SaveState();
  FakeDevice::Log copy_log;
  vmm::testing::ExpectRefusesDamaged(
      saved, [&](std::span<const uint8_t> bytes) { return Fresh(copy_log)->LoadState(bytes); });
  EXPECT_EQ(copy_log.loaded, std::vector<uint8_t>{});

  auto copy = Fresh(copy_log);
  auto expect_refused = [&](const std::vector<uint8_t>& bad, const char* what) {
    vmm::testing::ExpectSnapshotFormat(copy->LoadState(bad), what);
    // Refused: the transport is reset, and works as one.
    EXPECT_EQ(FakeDriverQueue::Read32(*copy, mmio::kStatus), 0u) << what;
    EXPECT_TRUE(copy_log.queues.empty()) << what;
  };
  auto with = [&](size_t at, auto value) {
    auto bad = saved;
    std::memcpy(bad.data() + at, &value, sizeof(value));
    return bad;
  };
  expect_refused(with(kSavedQueue0, uint16_t{3}), "a queue size not a power of two");
  expect_refused(with(kSavedQueue0, uint16_t{32}), "a queue size above the maximum");
  expect_refused(with(kSavedQueue0, uint16_t{0}), "a queue size of 0");
  expect_refused(with(kSavedQueue0Desc, uint64_t{1} << 40), "a ring outside guest memory");
  expect_refused(with(kSavedQueue0Used, memory_->size() - 8), "a ring across the end of memory");
  expect_refused(with(kSavedQueue0Desc, uint64_t{0x10008}), "a misaligned ring");
  expect_refused(with(kSavedInterruptStatus, uint32_t{4}), "an unknown interrupt bit");
  expect_refused(with(kSavedQueueCount, uint16_t{0xffff}), "an absurd queue count");
  expect_refused(with(kSavedQueueCount, uint16_t{1}), "too few queues");
  expect_refused(with(kSavedActive, uint8_t{2}), "active not a bool");
  expect_refused(
      with(kSavedStatus, uint32_t{kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk}),
      "active without DRIVER_OK");
  auto absurd_device = saved;
  uint32_t huge = 0xfffffff0;
  std::memcpy(absurd_device.data() + saved.size() - 7, &huge, 4);
  expect_refused(absurd_device, "an absurd device state length");

  // The device refusing its own state leaves the transport reset too, with the device
  // reset after its activation.
  auto refused = saved;
  refused.resize(saved.size() - 3);
  refused[refused.size() - 4] = 1;
  refused.push_back(FakeDevice::kRefusedState);
  int resets_before = copy_log.resets;
  expect_refused(refused, "state the device refuses");
  EXPECT_GT(copy_log.resets, resets_before);

  // And the same transport still loads good state afterwards.
  ASSERT_TRUE(copy->LoadState(saved));
  EXPECT_TRUE(FakeDriverQueue::Read32(*copy, mmio::kStatus) & kStatusDriverOk);
}

TEST_F(MmioTransportStateTest, InactiveTransportKeepsNoDeviceState) {
  auto saved = transport_->SaveState();
  ASSERT_EQ(saved.size() >= 4, true);
  uint32_t one = 1;
  saved.resize(saved.size() - 4);
  saved.insert(saved.end(), reinterpret_cast<uint8_t*>(&one), reinterpret_cast<uint8_t*>(&one) + 4);
  saved.push_back(0);
  FakeDevice::Log copy_log;
  vmm::testing::ExpectSnapshotFormat(Fresh(copy_log)->LoadState(saved),
                                     "device state while inactive");
}

}  // namespace
}  // namespace vessel::vmm::virtio
