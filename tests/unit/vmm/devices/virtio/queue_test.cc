#include "vmm/devices/virtio/queue.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "vmm/devices/virtio/fake_virtio_driver.h"

namespace vessel::vmm::virtio {
namespace {

using testing::Buf;
using testing::FakeDriverQueue;

constexpr uint64_t kMemSize = 1 << 20;
constexpr uint64_t kRings = 0x1000;
constexpr uint64_t kData = 0x10000;

class QueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto mem = GuestMemory::Create(kMemSize);
    ASSERT_TRUE(mem);
    memory_.emplace(std::move(*mem));
    driver_.emplace(*memory_, kRings, 8);
    queue_.emplace(256);
    driver_->Configure(*queue_);
    ASSERT_TRUE(queue_->Activate(*memory_));
  }

  // Pops expecting a valid chain.
  DescriptorChain PopOk() {
    auto chain = queue_->Pop();
    EXPECT_TRUE(chain) << chain.error().ToString();
    EXPECT_TRUE(chain && *chain);
    return chain && *chain ? **chain : DescriptorChain{};
  }
  // Pops expecting the driver made nothing (valid) available.
  void PopNone() {
    auto chain = queue_->Pop();
    ASSERT_TRUE(chain) << chain.error().ToString();
    EXPECT_FALSE(*chain);
  }

  std::optional<GuestMemory> memory_;
  std::optional<FakeDriverQueue> driver_;
  std::optional<Queue> queue_;
};

TEST_F(QueueTest, EmptyQueuePopsNothing) { PopNone(); }

TEST_F(QueueTest, PopsReadableThenWritableBuffers) {
  ASSERT_TRUE(memory_->Write(
      kData, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("hello"), 5)));
  uint16_t head = driver_->Add({{kData, 5}, {kData + 0x100, 3}, {kData + 0x200, 64, true}});
  DescriptorChain chain = PopOk();
  EXPECT_EQ(chain.head, head);
  ASSERT_EQ(chain.readable.size(), 2u);
  ASSERT_EQ(chain.writable.size(), 1u);
  EXPECT_EQ(chain.readable_bytes, 8u);
  EXPECT_EQ(chain.writable_bytes, 64u);
  uint8_t out[5];
  EXPECT_EQ(CopyFromBuffers(chain.readable, 0, out), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(out), 5), "hello");
  PopNone();

  ASSERT_TRUE(queue_->PushUsed(chain.head, 17));
  EXPECT_TRUE(queue_->TakeUsedSinceSignal());
  EXPECT_FALSE(queue_->TakeUsedSinceSignal());
  auto used = driver_->TakeUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, head);
  EXPECT_EQ(used[0].len, 17u);
}

TEST_F(QueueTest, CopyHelpersSpanBufferBoundaries) {
  driver_->Add({{kData, 3, true}, {kData + 0x100, 0, true}, {kData + 0x200, 5, true}});
  DescriptorChain chain = PopOk();
  const uint8_t in[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_EQ(CopyToBuffers(chain.writable, 1, in), 7u);  // 2 + 0 + 5 bytes of room
  uint8_t out[8] = {};
  EXPECT_EQ(CopyFromBuffers(chain.writable, 0, out), 8u);
  const uint8_t want[] = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(std::memcmp(out, want, 8), 0);
  EXPECT_EQ(CopyFromBuffers(chain.writable, 100, out), 0u);
}

TEST_F(QueueTest, WrapsAroundTheRingManyTimes) {
  for (int i = 0; i < 1000; ++i) {
    uint16_t head = driver_->Add({{kData, 16, true}});
    DescriptorChain chain = PopOk();
    ASSERT_EQ(chain.head, head);
    ASSERT_TRUE(queue_->PushUsed(chain.head, 1));
    ASSERT_EQ(driver_->TakeUsed().size(), 1u);
  }
  EXPECT_EQ(queue_->invalid_chains(), 0u);
}

TEST_F(QueueTest, UnpopReturnsTheSameChain) {
  uint16_t head = driver_->Add({{kData, 16, true}});
  EXPECT_EQ(PopOk().head, head);
  queue_->Unpop();
  EXPECT_EQ(PopOk().head, head);
  PopNone();
}

// Each invalid chain is handed back used with length 0, and the queue goes on.
void ExpectSkipped(FakeDriverQueue& driver, Queue& queue, uint16_t head) {
  auto chain = queue.Pop();
  ASSERT_TRUE(chain) << chain.error().ToString();
  EXPECT_FALSE(*chain);
  auto used = driver.TakeUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, head);
  EXPECT_EQ(used[0].len, 0u);
  EXPECT_FALSE(queue.broken());
}

TEST_F(QueueTest, BufferPastEndOfRamIsSkipped) {
  driver_->WriteDesc(0, kMemSize - 8, 16, 0, 0);
  driver_->Publish(0);
  ExpectSkipped(*driver_, *queue_, 0);
  EXPECT_EQ(queue_->invalid_chains(), 1u);
}

TEST_F(QueueTest, BufferInMmioHoleIsSkipped) {
  driver_->WriteDesc(0, kMmioHoleStart + 0x1000, 16, kDescWrite, 0);
  driver_->Publish(0);
  ExpectSkipped(*driver_, *queue_, 0);
}

TEST_F(QueueTest, WrappingAddressIsSkipped) {
  driver_->WriteDesc(0, UINT64_MAX - 4, 16, 0, 0);
  driver_->Publish(0);
  ExpectSkipped(*driver_, *queue_, 0);
}

TEST_F(QueueTest, HugeLengthIsSkipped) {
  driver_->WriteDesc(0, 0, UINT32_MAX, kDescWrite, 0);
  driver_->Publish(0);
  ExpectSkipped(*driver_, *queue_, 0);
}

TEST_F(QueueTest, TotalLengthOverCapIsSkippedEvenWhenEachBufferFits) {
  // 8 descriptors of 4 MiB each, all pointing at the same RAM: each fits, the sum does not.
  auto mem = GuestMemory::Create(8 << 20);
  ASSERT_TRUE(mem);
  FakeDriverQueue driver(*mem, kRings, 8);
  Queue queue(8);
  driver.Configure(queue);
  ASSERT_TRUE(queue.Activate(*mem));
  for (uint16_t i = 0; i < 8; ++i) {
    driver.WriteDesc(i, 0, 4 << 20, kDescWrite | (i < 7 ? kDescNext : 0),
                     static_cast<uint16_t>(i + 1));
  }
  driver.Publish(0);
  ExpectSkipped(driver, queue, 0);
}

TEST_F(QueueTest, ZeroLengthBuffersAreValid) {
  driver_->Add({{kData, 0}, {kData, 0, true}});
  DescriptorChain chain = PopOk();
  EXPECT_EQ(chain.readable_bytes, 0u);
  EXPECT_EQ(chain.writable_bytes, 0u);
  EXPECT_EQ(chain.readable.size(), 1u);
  EXPECT_EQ(chain.writable.size(), 1u);
}

TEST_F(QueueTest, LoopIsSkipped) {
  driver_->WriteDesc(0, kData, 16, kDescNext, 1);
  driver_->WriteDesc(1, kData, 16, kDescNext, 0);  // a -> b -> a
  driver_->Publish(0);
  ExpectSkipped(*driver_, *queue_, 0);
}

TEST_F(QueueTest, SelfLoopIsSkipped) {
  driver_->WriteDesc(3, kData, 16, kDescNext, 3);
  driver_->Publish(3);
  ExpectSkipped(*driver_, *queue_, 3);
}

TEST_F(QueueTest, ChainUsingEveryDescriptorOnceIsValid) {
  for (uint16_t i = 0; i < 8; ++i) {
    driver_->WriteDesc(i, kData, 1, static_cast<uint16_t>(i < 7 ? kDescNext : 0),
                       static_cast<uint16_t>(i + 1));
  }
  driver_->Publish(0);
  EXPECT_EQ(PopOk().readable.size(), 8u);
}

TEST_F(QueueTest, NextIndexOutOfRangeIsSkipped) {
  driver_->WriteDesc(0, kData, 16, kDescNext, 8);
  driver_->Publish(0);
  ExpectSkipped(*driver_, *queue_, 0);
}

TEST_F(QueueTest, IndirectDescriptorIsSkipped) {
  driver_->WriteDesc(0, kData, 64, kDescIndirect, 0);
  driver_->Publish(0);
  ExpectSkipped(*driver_, *queue_, 0);
}

TEST_F(QueueTest, ReadableAfterWritableIsSkipped) {
  driver_->WriteDesc(0, kData, 16, kDescWrite | kDescNext, 1);
  driver_->WriteDesc(1, kData, 16, 0, 0);
  driver_->Publish(0);
  ExpectSkipped(*driver_, *queue_, 0);
}

TEST_F(QueueTest, ValidChainAfterInvalidOneIsReturned) {
  driver_->WriteDesc(0, kMemSize, 16, 0, 0);
  driver_->Publish(0);
  driver_->WriteDesc(1, kData, 16, 0, 0);
  driver_->Publish(1);
  EXPECT_EQ(PopOk().head, 1);
  auto used = driver_->TakeUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, 0u);
  EXPECT_TRUE(queue_->TakeUsedSinceSignal());
}

TEST_F(QueueTest, HeadOutOfRangeBreaksTheQueue) {
  driver_->Publish(8);
  EXPECT_FALSE(queue_->Pop());
  EXPECT_TRUE(queue_->broken());
  EXPECT_FALSE(queue_->Pop());  // stays broken
  queue_->Reset();
  EXPECT_FALSE(queue_->active());
}

TEST_F(QueueTest, AvailIndexRunningAheadBreaksTheQueue) {
  driver_->SetAvailIdx(9);  // 9 > queue size 8
  EXPECT_FALSE(queue_->Pop());
  EXPECT_TRUE(queue_->broken());
}

TEST_F(QueueTest, AvailIndexRunningBackwardsBreaksTheQueue) {
  driver_->Add({{kData, 1}});
  PopOk();
  driver_->SetAvailIdx(0);  // 0 - 1 = 65535 entries ahead
  EXPECT_FALSE(queue_->Pop());
}

TEST_F(QueueTest, FullRingOfPendingChainsIsFine) {
  for (int i = 0; i < 8; ++i) driver_->Add({{kData, 1}});
  for (int i = 0; i < 8; ++i) PopOk();
  PopNone();
}

TEST(QueueActivate, RefusesBadSizesAndRings) {
  auto mem = GuestMemory::Create(64 << 10);
  ASSERT_TRUE(mem);
  FakeDriverQueue driver(*mem, 0x1000, 16);
  auto activate = [&](auto adjust) {
    Queue q(256);
    driver.Configure(q);
    adjust(q);
    return q.Activate(*mem).has_value();
  };
  EXPECT_TRUE(activate([](Queue&) {}));
  EXPECT_FALSE(activate([](Queue& q) { q.set_size(0); }));
  EXPECT_FALSE(activate([](Queue& q) { q.set_size(3); }));
  EXPECT_FALSE(activate([](Queue& q) { q.set_size(512); }));  // above max
  EXPECT_FALSE(activate([](Queue& q) { q.set_ready(false); }));
  EXPECT_FALSE(activate([](Queue& q) { q.set_desc_addr(0x1008); }));           // misaligned
  EXPECT_FALSE(activate([](Queue& q) { q.set_avail_addr(0x3001); }));          // misaligned
  EXPECT_FALSE(activate([](Queue& q) { q.set_used_addr(0x3002); }));           // misaligned
  EXPECT_FALSE(activate([](Queue& q) { q.set_desc_addr((64 << 10) - 16); }));  // past RAM
  EXPECT_FALSE(activate([](Queue& q) { q.set_used_addr(kMmioHoleStart); }));
  EXPECT_FALSE(activate([](Queue& q) { q.set_avail_addr(UINT64_MAX - 1); }));
}

TEST(QueueActivate, UseBeforeActivationFails) {
  Queue q(16);
  EXPECT_FALSE(q.Pop());
  EXPECT_FALSE(q.PushUsed(0, 0));
}

TEST_F(QueueTest, PushUsedRefusesOutOfRangeHead) { EXPECT_FALSE(queue_->PushUsed(8, 0)); }

}  // namespace
}  // namespace vessel::vmm::virtio
