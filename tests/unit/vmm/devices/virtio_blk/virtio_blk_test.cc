#include "vmm/devices/virtio_blk/virtio_blk.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "vmm/devices/virtio/fake_virtio_driver.h"
#include "vmm/devices/virtio/mmio_transport.h"

namespace vessel::vmm {
namespace {

using ::testing::HasSubstr;
using virtio::MmioTransport;
using virtio::testing::Buf;
using virtio::testing::FakeDriverQueue;
using virtio::testing::UsedElem;
namespace mmio = virtio::mmio;

constexpr uint16_t kQueueSize = 64;
// A disk of 1 MiB and a partial sector of 100 bytes: 2049 sectors.
constexpr uint64_t kFileBytes = (1 << 20) + 100;
constexpr uint64_t kSectors = 2049;
constexpr uint64_t kAllFeatures =
    virtio::kFeatureVersion1 | blk::kFeatureRo | blk::kFeatureSegMax | blk::kFeatureSizeMax;

uint8_t PatternAt(uint64_t offset) {
  return static_cast<uint8_t>((offset * 7 + offset / 512) % 251);
}

std::vector<uint8_t> Pattern(uint64_t offset, uint64_t n) {
  std::vector<uint8_t> out(n);
  for (uint64_t i = 0; i < n; ++i) out[i] = PatternAt(offset + i);
  return out;
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A request as the guest left it: where its data and status lie in guest memory.
struct Submitted {
  uint16_t head = 0;
  std::vector<Buf> data;
  uint64_t status = 0;
};

class VirtioBlkTest : public virtio::testing::VirtioDeviceTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(SetUpHost("blk", 16 << 20));
    disk_ = dir_ / "root.img";
    auto pattern = Pattern(0, kFileBytes);
    std::ofstream(disk_, std::ios::binary)
        .write(reinterpret_cast<const char*>(pattern.data()),
               static_cast<std::streamsize>(pattern.size()));
    original_ = ReadFile(disk_);
    ASSERT_EQ(original_.size(), kFileBytes);
    Attach(MakeVirtioBlk(disk_.string()), blk::kNumQueues, kQueueSize);
  }

  void Boot() { ASSERT_NO_FATAL_FAILURE(StartDriver(kAllFeatures)); }

  // Puts the header in a buffer of its own, then the data buffers of `sizes` (device
  // writable for a read or GET_ID, readable otherwise), then a status byte unless the
  // request has none, and notifies.
  Submitted Submit(uint32_t type, uint64_t sector, std::vector<uint32_t> sizes,
                   bool status = true) {
    auto header = blk::EncodeHeader(type, sector);
    uint64_t header_addr = alloc_.Alloc(header.size());
    EXPECT_TRUE(memory_->Write(header_addr, header));
    Submitted s;
    std::vector<Buf> bufs = {{header_addr, static_cast<uint32_t>(header.size())}};
    bool device_writes = type == blk::kTypeIn || type == blk::kTypeGetId;
    for (uint32_t size : sizes) {
      uint64_t addr = alloc_.Alloc(size);
      std::vector<uint8_t> poison(size, 0xcc);
      EXPECT_TRUE(memory_->Write(addr, poison));
      s.data.push_back({addr, size, device_writes});
      bufs.push_back(s.data.back());
    }
    if (status) {
      s.status = alloc_.Alloc(1);
      EXPECT_TRUE(memory_->WriteObj<uint8_t>(s.status, 0xcc));
      bufs.push_back({s.status, 1, true});
    }
    s.head = queues_[blk::kRequestQueue].Add(bufs);
    Notify(blk::kRequestQueue);
    return s;
  }

  // The one used element the device returned for the last submission.
  UsedElem Used() {
    auto used = queues_[blk::kRequestQueue].TakeUsed();
    EXPECT_EQ(used.size(), 1u);
    return used.empty() ? UsedElem{} : used[0];
  }

  uint8_t Status(const Submitted& s) {
    auto status = memory_->ReadObj<uint8_t>(s.status);
    EXPECT_TRUE(status);
    return status.value_or(0xcc);
  }

  std::vector<uint8_t> Data(const Submitted& s) {
    std::vector<uint8_t> out;
    for (const Buf& b : s.data) {
      std::vector<uint8_t> part(b.len);
      EXPECT_TRUE(memory_->Read(b.addr, part));
      out.insert(out.end(), part.begin(), part.end());
    }
    return out;
  }

  uint32_t Config32(uint64_t offset) {
    return FakeDriverQueue::Read32(*transport_, mmio::kConfig + offset);
  }

  std::filesystem::path disk_;
  std::string original_;
};

TEST_F(VirtioBlkTest, IsAReadOnlyDiskOfTheFilesSizeRoundedUpToSectors) {
  EXPECT_EQ(FakeDriverQueue::Read32(*transport_, mmio::kDeviceId), blk::kDeviceType);
  FakeDriverQueue::Write32(*transport_, mmio::kDeviceFeaturesSel, 0);
  uint64_t features = FakeDriverQueue::Read32(*transport_, mmio::kDeviceFeatures);
  FakeDriverQueue::Write32(*transport_, mmio::kDeviceFeaturesSel, 1);
  features |= uint64_t{FakeDriverQueue::Read32(*transport_, mmio::kDeviceFeatures)} << 32;
  EXPECT_EQ(features, kAllFeatures);
  EXPECT_EQ(FakeDriverQueue::Read32(*transport_, mmio::kQueueNumMax), blk::kQueueSize);

  uint64_t capacity = Config32(0) | uint64_t{Config32(4)} << 32;
  EXPECT_EQ(capacity, kSectors);
  EXPECT_EQ(Config32(8), blk::kMaxSegmentBytes);
  EXPECT_EQ(Config32(12), blk::kMaxSegments);
  EXPECT_EQ(Config32(16), 0u);  // geometry, blk_size and the rest: not offered
  EXPECT_EQ(Config32(20), 0u);
  // The driver cannot change anything.
  FakeDriverQueue::Write32(*transport_, mmio::kConfig, 1);
  EXPECT_EQ(Config32(0), kSectors);
}

TEST_F(VirtioBlkTest, ReadsSectorsIntoTheGuestsBuffers) {
  Boot();
  // Three sectors from sector 5, scattered over buffers that split a sector.
  auto s = Submit(blk::kTypeIn, 5, {1000, 24, 512});
  UsedElem used = Used();
  EXPECT_EQ(used.id, s.head);
  EXPECT_EQ(used.len, 1536u + 1);
  EXPECT_EQ(Status(s), blk::kStatusOk);
  EXPECT_EQ(Data(s), Pattern(5 * 512, 1536));
  EXPECT_GT(interrupt_->count.load(), 0);
}

TEST_F(VirtioBlkTest, AWholeDiskReadEndsInZerosAfterTheFile) {
  Boot();
  std::vector<uint8_t> disk;
  for (uint64_t sector = 0; sector < kSectors; sector += 256) {
    uint64_t sectors = std::min<uint64_t>(256, kSectors - sector);
    auto s = Submit(blk::kTypeIn, sector, {static_cast<uint32_t>(sectors * 512)});
    ASSERT_EQ(Used().len, sectors * 512 + 1);
    ASSERT_EQ(Status(s), blk::kStatusOk);
    auto data = Data(s);
    disk.insert(disk.end(), data.begin(), data.end());
  }
  ASSERT_EQ(disk.size(), kSectors * 512);
  EXPECT_EQ(std::string(disk.begin(), disk.begin() + kFileBytes), original_);
  EXPECT_EQ(std::vector<uint8_t>(disk.begin() + kFileBytes, disk.end()),
            std::vector<uint8_t>(kSectors * 512 - kFileBytes, 0));
}

TEST_F(VirtioBlkTest, GetIdAnswersTheSerial) {
  Boot();
  auto s = Submit(blk::kTypeGetId, 0, {20});
  EXPECT_EQ(Used().len, 21u);
  EXPECT_EQ(Status(s), blk::kStatusOk);
  std::vector<uint8_t> want(20, 0);
  std::copy(blk::kSerial.begin(), blk::kSerial.end(), want.begin());
  EXPECT_EQ(Data(s), want);
  // A shorter buffer gets what fits.
  auto short_id = Submit(blk::kTypeGetId, 0, {4});
  EXPECT_EQ(Used().len, 5u);
  EXPECT_EQ(Data(short_id), (std::vector<uint8_t>{'v', 'e', 's', 's'}));
}

TEST_F(VirtioBlkTest, WritesAreIoErrorsAndTheFileIsNeverWritten) {
  Boot();
  auto s = Submit(blk::kTypeOut, 0, {512});
  EXPECT_EQ(Used().len, 1u);
  EXPECT_EQ(Status(s), blk::kStatusIoErr);
  auto beyond = Submit(blk::kTypeOut, kSectors, {512});
  EXPECT_EQ(Used().len, 1u);
  EXPECT_EQ(Status(beyond), blk::kStatusIoErr);
  EXPECT_EQ(ReadFile(disk_), original_);
  EXPECT_THAT(transport_->DescribeState(), HasSubstr("writes_refused=1"));
}

TEST_F(VirtioBlkTest, WhatWasNotOfferedIsUnsupported) {
  Boot();
  for (uint32_t type : {blk::kTypeFlush, blk::kTypeDiscard, blk::kTypeWriteZeroes, 3u, 0xffffu}) {
    auto s = Submit(type, 0, {16});
    EXPECT_EQ(Used().len, 1u) << type;
    EXPECT_EQ(Status(s), blk::kStatusUnsupported) << type;
  }
  EXPECT_EQ(ReadFile(disk_), original_);
}

TEST_F(VirtioBlkTest, MalformedRequestsFailAloneAndTheDeviceGoesOn) {
  Boot();
  auto past_end = Submit(blk::kTypeIn, kSectors - 1, {1024});
  EXPECT_EQ(Used().len, 1u);
  EXPECT_EQ(Status(past_end), blk::kStatusIoErr);
  EXPECT_EQ(Data(past_end), std::vector<uint8_t>(1024, 0xcc)) << "nothing read";
  auto partial = Submit(blk::kTypeIn, 0, {100});
  EXPECT_EQ(Used().len, 1u);
  EXPECT_EQ(Status(partial), blk::kStatusIoErr);
  // Without a status byte the request is returned with nothing written.
  Submit(blk::kTypeIn, 0, {}, /*status=*/false);
  EXPECT_EQ(Used().len, 0u);
  // A header shorter than 16 bytes, its status still answered.
  uint64_t short_header = alloc_.Alloc(8);
  uint64_t status = alloc_.Alloc(1);
  queues_[blk::kRequestQueue].Add({{short_header, 8}, {status, 1, true}});
  Notify(blk::kRequestQueue);
  EXPECT_EQ(Used().len, 1u);
  EXPECT_EQ(memory_->ReadObj<uint8_t>(status), blk::kStatusIoErr);

  auto good = Submit(blk::kTypeIn, kSectors - 1, {512});
  EXPECT_EQ(Used().len, 513u);
  EXPECT_EQ(Status(good), blk::kStatusOk);
  EXPECT_EQ(transport_->status() & virtio::kStatusDeviceNeedsReset, 0u);
  EXPECT_THAT(transport_->DescribeState(), HasSubstr("malformed=4"));
}

TEST_F(VirtioBlkTest, AfterAResetTheDriverStartsOver) {
  Boot();
  auto before = Submit(blk::kTypeIn, 1, {512});
  EXPECT_EQ(Used().len, 513u);
  FakeDriverQueue::Write32(*transport_, mmio::kStatus, 0);
  EXPECT_THAT(transport_->DescribeState(), HasSubstr("not active"));
  queues_.clear();
  queues_.emplace_back(*memory_, 0x40000, kQueueSize);
  Boot();
  auto after = Submit(blk::kTypeIn, 2, {512});
  EXPECT_EQ(Used().len, 513u);
  EXPECT_EQ(Data(after), Pattern(2 * 512, 512));
}

TEST(MakeVirtioBlk, FailsNamingThePath) {
  auto missing = MakeVirtioBlk("/nonexistent/vessel/root.erofs");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind(), ErrorKind::kHostIo);
  EXPECT_EQ(missing.error().errno_value(), ENOENT);
  EXPECT_THAT(missing.error().message(), HasSubstr("/nonexistent/vessel/root.erofs"));

  auto directory = MakeVirtioBlk("/");
  ASSERT_FALSE(directory);
  EXPECT_EQ(directory.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(directory.error().subject(), "disk");
  EXPECT_THAT(directory.error().message(), HasSubstr("/ is not a regular file"));
}

}  // namespace
}  // namespace vessel::vmm
