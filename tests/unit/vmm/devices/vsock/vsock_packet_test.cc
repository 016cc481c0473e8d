#include "vmm/devices/vsock/vsock_packet.h"

#include <gtest/gtest.h>

#include <optional>

#include "vmm/devices/virtio/fake_virtio_driver.h"
#include "vmm/devices/virtio/queue.h"

namespace vessel::vmm::vsock {
namespace {

using virtio::DescriptorChain;

PacketHeader Sample(uint32_t len = 0) {
  return {.src_cid = 3,
          .dst_cid = 2,
          .src_port = 0x11223344,
          .dst_port = 1024,
          .len = len,
          .type = kTypeStream,
          .op = static_cast<uint16_t>(Op::kRw),
          .flags = 0x5566,
          .buf_alloc = 65536,
          .fwd_cnt = 77};
}

// Chains over plain host buffers: the parser only looks at spans.
struct Chain {
  std::vector<std::vector<uint8_t>> storage;
  DescriptorChain chain;
  void AddReadable(std::vector<uint8_t> bytes) {
    storage.push_back(std::move(bytes));
    chain.readable.emplace_back(storage.back());
    chain.readable_bytes += storage.back().size();
  }
  void AddWritable(size_t n) {
    storage.emplace_back(n);
    chain.writable.emplace_back(storage.back());
    chain.writable_bytes += n;
  }
  Chain() { storage.reserve(16); }
};

std::vector<uint8_t> Bytes(const PacketHeader& h) {
  auto raw = EncodeHeader(h);
  return {raw.begin(), raw.end()};
}

TEST(VsockPacket, HeaderLayoutIsLittleEndianAt44Bytes) {
  auto raw = EncodeHeader(Sample(5));
  EXPECT_EQ(raw.size(), 44u);
  EXPECT_EQ(raw[0], 3);      // src_cid
  EXPECT_EQ(raw[8], 2);      // dst_cid
  EXPECT_EQ(raw[16], 0x44);  // src_port low byte
  EXPECT_EQ(raw[24], 5);     // len
  EXPECT_EQ(raw[28], 1);     // type
  EXPECT_EQ(raw[30], 5);     // op
  EXPECT_EQ(raw[40], 77);    // fwd_cnt
  EXPECT_EQ(DecodeHeader(raw), Sample(5));
}

TEST(VsockPacket, ParsesHeaderAndPayload) {
  Chain c;
  c.AddReadable(Bytes(Sample(3)));
  c.AddReadable({'a', 'b', 'c'});
  auto p = ParseTxPacket(c.chain);
  ASSERT_TRUE(p) << p.error().ToString();
  EXPECT_EQ(p->header, Sample(3));
}

TEST(VsockPacket, HeaderSplitAcrossBuffersIsAccepted) {
  auto raw = Bytes(Sample(2));
  raw.push_back('x');
  raw.push_back('y');
  Chain c;
  c.AddReadable({raw.begin(), raw.begin() + 10});
  c.AddReadable({});
  c.AddReadable({raw.begin() + 10, raw.begin() + 43});
  c.AddReadable({raw.begin() + 43, raw.end()});
  auto p = ParseTxPacket(c.chain);
  ASSERT_TRUE(p) << p.error().ToString();
  EXPECT_EQ(p->header, Sample(2));
}

TEST(VsockPacket, RefusesShortHeader) {
  Chain c;
  auto raw = Bytes(Sample());
  c.AddReadable({raw.begin(), raw.begin() + 43});
  EXPECT_FALSE(ParseTxPacket(c.chain));
  Chain empty;
  EXPECT_FALSE(ParseTxPacket(empty.chain));
}

TEST(VsockPacket, RefusesLengthNotMatchingPayload) {
  Chain more;
  more.AddReadable(Bytes(Sample(10)));
  more.AddReadable({1, 2, 3});
  EXPECT_FALSE(ParseTxPacket(more.chain));
  Chain less;
  less.AddReadable(Bytes(Sample(1)));
  less.AddReadable({1, 2, 3});
  EXPECT_FALSE(ParseTxPacket(less.chain));
}

TEST(VsockPacket, RefusesPayloadOverCap) {
  Chain c;
  c.AddReadable(Bytes(Sample(kMaxPayload + 1)));
  c.AddReadable(std::vector<uint8_t>(kMaxPayload + 1));
  EXPECT_FALSE(ParseTxPacket(c.chain));
  Chain huge;
  huge.AddReadable(Bytes(Sample(UINT32_MAX)));
  EXPECT_FALSE(ParseTxPacket(huge.chain));
  Chain max;
  max.AddReadable(Bytes(Sample(kMaxPayload)));
  max.AddReadable(std::vector<uint8_t>(kMaxPayload));
  EXPECT_TRUE(ParseTxPacket(max.chain));
}

TEST(VsockPacket, RefusesWritableBuffersInTxChain) {
  Chain c;
  c.AddReadable(Bytes(Sample()));
  c.AddWritable(8);
  EXPECT_FALSE(ParseTxPacket(c.chain));
}

TEST(VsockPacket, KnownOps) {
  EXPECT_FALSE(IsKnownOp(0));
  for (uint16_t op = 1; op <= 7; ++op) EXPECT_TRUE(IsKnownOp(op));
  EXPECT_FALSE(IsKnownOp(8));
  EXPECT_FALSE(IsKnownOp(0xffff));
}

TEST(VsockPacket, WritesRxPacketAcrossBuffers) {
  Chain c;
  c.AddWritable(20);
  c.AddWritable(30);
  const uint8_t payload[] = {9, 8, 7, 6};
  auto written = WriteRxPacket(c.chain, Sample(4), payload);
  ASSERT_TRUE(written);
  EXPECT_EQ(*written, 48u);
  std::array<uint8_t, 48> back{};
  virtio::CopyFromBuffers(c.chain.writable, 0, back);
  EXPECT_EQ(DecodeHeader(std::span<const uint8_t, 44>(back.data(), 44)), Sample(4));
  EXPECT_EQ(back[44], 9);
  EXPECT_EQ(back[47], 6);
}

TEST(VsockPacket, RxPacketThatDoesNotFitIsRefused) {
  Chain c;
  c.AddWritable(40);
  EXPECT_FALSE(WriteRxPacket(c.chain, Sample(), {}));
  Chain d;
  d.AddWritable(45);
  const uint8_t payload[] = {1, 2};
  EXPECT_FALSE(WriteRxPacket(d.chain, Sample(2), payload));
  EXPECT_FALSE(WriteRxPacket(d.chain, Sample(5), payload));  // len disagrees with payload
}

}  // namespace
}  // namespace vessel::vmm::vsock
