// Test helpers that play a virtio driver: they write descriptor tables and available rings
// into guest memory by hand and read the used rings back, with the memory ordering a real
// driver uses, so the device code sees exactly what a guest would give it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "vmm/core/device.h"
#include "vmm/core/event_loop.h"
#include "vmm/core/guest_memory.h"
#include "vmm/devices/virtio/mmio_transport.h"
#include "vmm/devices/virtio/queue.h"

namespace vessel::vmm::virtio::testing {

class CountingInterrupt : public Interrupt {
 public:
  void Trigger() override { count.fetch_add(1); }
  std::atomic<int> count{0};
};

struct Buf {
  uint64_t addr;
  uint32_t len;
  bool writable = false;
};

struct UsedElem {
  uint32_t id;
  uint32_t len;
};

// Bytes a queue's rings take, rounded so rings of several queues can sit side by side.
inline constexpr uint64_t kRingBytes = 0x4000;

class FakeDriverQueue {
 public:
  FakeDriverQueue(const GuestMemory& memory, uint64_t base, uint16_t size)
      : memory_(memory), base_(base), size_(size) {}

  uint64_t desc_addr() const { return base_; }
  uint64_t avail_addr() const { return base_ + 16 * uint64_t{size_}; }
  uint64_t used_addr() const { return base_ + 16 * uint64_t{size_} + 0x1000; }
  uint16_t size() const { return size_; }

  void Configure(Queue& q) const {
    q.set_size(size_);
    q.set_desc_addr(desc_addr());
    q.set_avail_addr(avail_addr());
    q.set_used_addr(used_addr());
    q.set_ready(true);
  }

  void ConfigureMmio(MmioTransport& t, uint32_t index) const {
    Write32(t, mmio::kQueueSel, index);
    Write32(t, mmio::kQueueNum, size_);
    Write32(t, mmio::kQueueDescLow, static_cast<uint32_t>(desc_addr()));
    Write32(t, mmio::kQueueDescHigh, static_cast<uint32_t>(desc_addr() >> 32));
    Write32(t, mmio::kQueueDriverLow, static_cast<uint32_t>(avail_addr()));
    Write32(t, mmio::kQueueDriverHigh, static_cast<uint32_t>(avail_addr() >> 32));
    Write32(t, mmio::kQueueDeviceLow, static_cast<uint32_t>(used_addr()));
    Write32(t, mmio::kQueueDeviceHigh, static_cast<uint32_t>(used_addr() >> 32));
    Write32(t, mmio::kQueueReady, 1);
  }

  static void Write32(MmioTransport& t, uint64_t offset, uint32_t value) {
    uint8_t bytes[4];
    std::memcpy(bytes, &value, 4);
    t.MmioWrite(offset, bytes);
  }
  static uint32_t Read32(MmioTransport& t, uint64_t offset) {
    uint8_t bytes[4];
    t.MmioRead(offset, bytes);
    uint32_t value;
    std::memcpy(&value, bytes, 4);
    return value;
  }

  void WriteDesc(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) const {
    uint8_t raw[16];
    std::memcpy(raw, &addr, 8);
    std::memcpy(raw + 8, &len, 4);
    std::memcpy(raw + 12, &flags, 2);
    std::memcpy(raw + 14, &next, 2);
    ASSERT_TRUE(memory_.Write(desc_addr() + 16 * uint64_t{index}, raw));
  }

  // Writes `bufs` as a chain in fresh descriptors and makes it available; returns its head.
  uint16_t Add(const std::vector<Buf>& bufs) {
    uint16_t head = next_desc_;
    for (size_t i = 0; i < bufs.size(); ++i) {
      uint16_t index = static_cast<uint16_t>((head + i) % size_);
      uint16_t next = static_cast<uint16_t>((index + 1) % size_);
      uint16_t flags = static_cast<uint16_t>((bufs[i].writable ? kDescWrite : 0) |
                                             (i + 1 < bufs.size() ? kDescNext : 0));
      WriteDesc(index, bufs[i].addr, bufs[i].len, flags, next);
    }
    next_desc_ = static_cast<uint16_t>((head + bufs.size()) % size_);
    Publish(head);
    return head;
  }

  // Puts `head` in the available ring and bumps the index, as a driver does.
  void Publish(uint16_t head) {
    uint64_t slot = avail_addr() + 4 + 2 * uint64_t{static_cast<uint16_t>(avail_idx_ % size_)};
    ASSERT_TRUE(memory_.WriteObj<uint16_t>(slot, head));
    SetAvailIdx(static_cast<uint16_t>(avail_idx_ + 1));
  }

  void SetAvailIdx(uint16_t idx) {
    avail_idx_ = idx;
    auto ring = memory_.Slice(avail_addr() + 2, 2);
    ASSERT_TRUE(ring);
    std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(ring->data()))
        .store(idx, std::memory_order_release);
  }

  uint16_t UsedIdx() const {
    auto ring = memory_.Slice(used_addr() + 2, 2);
    return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(ring->data()))
        .load(std::memory_order_acquire);
  }

  // Used elements added since the last call.
  std::vector<UsedElem> TakeUsed() {
    std::vector<UsedElem> out;
    uint16_t idx = UsedIdx();
    while (seen_used_ != idx) {
      UsedElem e{};
      uint64_t at = used_addr() + 4 + 8 * uint64_t{static_cast<uint16_t>(seen_used_ % size_)};
      EXPECT_TRUE(memory_.Read(at, {reinterpret_cast<uint8_t*>(&e), sizeof(e)}));
      out.push_back(e);
      ++seen_used_;
    }
    return out;
  }

  // Waits up to `timeout` for at least one used element.
  std::vector<UsedElem> WaitUsed(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto used = TakeUsed();
      if (!used.empty() || std::chrono::steady_clock::now() > deadline) return used;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

 private:
  const GuestMemory& memory_;
  uint64_t base_;
  uint16_t size_;
  uint16_t next_desc_ = 0;
  uint16_t avail_idx_ = 0;
  uint16_t seen_used_ = 0;
};

// Hands out guest buffers from a region no ring uses.
class GuestAllocator {
 public:
  explicit GuestAllocator(uint64_t start) : next_(start) {}
  uint64_t Alloc(uint64_t len) {
    uint64_t addr = next_;
    next_ += (len + 15) & ~uint64_t{15};
    return addr;
  }

 private:
  uint64_t next_;
};

// Takes the transport through the driver's initialisation (virtio 1.x, 3.1.1) up to
// FEATURES_OK with `features` acked; returns the status the device reports after it.
inline uint32_t NegotiateFeatures(MmioTransport& t, uint64_t features) {
  using Q = FakeDriverQueue;
  Q::Write32(t, mmio::kStatus, 0);
  Q::Write32(t, mmio::kStatus, kStatusAcknowledge);
  Q::Write32(t, mmio::kStatus, kStatusAcknowledge | kStatusDriver);
  Q::Write32(t, mmio::kDriverFeaturesSel, 0);
  Q::Write32(t, mmio::kDriverFeatures, static_cast<uint32_t>(features));
  Q::Write32(t, mmio::kDriverFeaturesSel, 1);
  Q::Write32(t, mmio::kDriverFeatures, static_cast<uint32_t>(features >> 32));
  Q::Write32(t, mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  return Q::Read32(t, mmio::kStatus);
}

inline void DriverOk(MmioTransport& t) {
  FakeDriverQueue::Write32(
      t, mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
}

// A device behind an MMIO transport, its event loop running on a thread, and a driver's
// queues for it, in a fresh directory for the device's sockets. A test fixture calls
// SetUpHost, makes its device on loop_ and hands it to Attach.
class VirtioDeviceTest : public ::testing::Test {
 protected:
  // Creates dir_ (named after `name` and the test), `memory_size` bytes of guest memory
  // and the event loop.
  void SetUpHost(const std::string& name, uint64_t memory_size) {
    dir_ = std::filesystem::temp_directory_path() /
           ("vessel-" + name + "-test-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    auto mem = GuestMemory::Create(memory_size);
    ASSERT_TRUE(mem);
    memory_.emplace(std::move(*mem));
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop);
    loop_ = std::move(*loop);
  }

  // Puts `device` behind the transport, lays out `num_queues` driver queues of
  // `queue_size` entries and starts the loop.
  void Attach(Result<std::unique_ptr<VirtioDevice>> device, size_t num_queues,
              uint16_t queue_size) {
    ASSERT_TRUE(device) << device.error().ToString();
    interrupt_ = std::make_shared<CountingInterrupt>();
    transport_ = std::make_unique<MmioTransport>(*memory_, std::move(*device), interrupt_);
    for (size_t i = 0; i < num_queues; ++i) {
      queues_.emplace_back(*memory_, 0x10000 + i * kRingBytes, queue_size);
    }
    loop_thread_ = std::thread([this] { loop_->Run(); });
  }

  void TearDown() override {
    if (loop_thread_.joinable()) {
      loop_->Stop();
      loop_thread_.join();
    }
    transport_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Initialises the device with `features` acked and every queue configured, up to
  // DRIVER_OK.
  void StartDriver(uint64_t features) {
    ASSERT_TRUE(NegotiateFeatures(*transport_, features) & kStatusFeaturesOk);
    for (uint32_t i = 0; i < queues_.size(); ++i) queues_[i].ConfigureMmio(*transport_, i);
    DriverOk(*transport_);
    ASSERT_TRUE(transport_->status() & kStatusDriverOk);
  }

  void Notify(size_t queue) {
    FakeDriverQueue::Write32(*transport_, mmio::kQueueNotify, static_cast<uint32_t>(queue));
  }

  using MakeDevice = std::function<Result<std::unique_ptr<VirtioDevice>>(EventLoop&)>;

  // What a restore into a new vessel-vmm process does: the old process is gone (its loop
  // stopped, its device dropped, and with it every host connection), a new loop and a
  // device made by `make` with the same configuration take the transport's saved state,
  // over the same guest memory, where the driver's queues carry on.
  [[nodiscard]] Result<void> SaveAndRestore(const MakeDevice& make) {
    std::vector<uint8_t> saved = transport_->SaveState();
    loop_->Stop();
    loop_thread_.join();
    transport_.reset();
    loop_.reset();
    auto loop = EventLoop::Create();
    if (!loop) return Fail(loop.error());
    loop_ = std::move(*loop);
    auto device = make(*loop_);
    if (!device) return Fail(device.error());
    transport_ = std::make_unique<MmioTransport>(*memory_, std::move(*device), interrupt_);
    auto loaded = transport_->LoadState(saved);
    loop_thread_ = std::thread([this] { loop_->Run(); });
    return loaded;
  }

  std::filesystem::path dir_;
  std::optional<GuestMemory> memory_;
  std::unique_ptr<EventLoop> loop_;
  std::thread loop_thread_;
  std::shared_ptr<CountingInterrupt> interrupt_;
  std::unique_ptr<MmioTransport> transport_;
  std::vector<FakeDriverQueue> queues_;
  GuestAllocator alloc_{0x100000};
};

}  // namespace vessel::vmm::virtio::testing
