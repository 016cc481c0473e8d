#include "vmm/devices/virtio_blk/blk_request.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "vmm/devices/virtio/queue.h"

namespace vessel::vmm::blk {
namespace {

using ::testing::HasSubstr;
using virtio::DescriptorChain;

constexpr uint64_t kCapacity = 2048;  // a 1 MiB disk

// Chains over plain host buffers: the parser only looks at spans.
struct Chain {
  std::vector<std::vector<uint8_t>> storage;
  DescriptorChain chain;

  Chain() { storage.reserve(512); }
  Chain& Readable(std::vector<uint8_t> bytes) {
    storage.push_back(std::move(bytes));
    chain.readable.emplace_back(storage.back());
    chain.readable_bytes += storage.back().size();
    return *this;
  }
  Chain& Header(uint32_t type, uint64_t sector) {
    auto raw = EncodeHeader(type, sector);
    return Readable({raw.begin(), raw.end()});
  }
  Chain& Writable(size_t n, uint8_t fill = 0xee) {
    storage.emplace_back(n, fill);
    chain.writable.emplace_back(storage.back());
    chain.writable_bytes += n;
    return *this;
  }
};

// What Linux's driver sends: header, data, status, each in a descriptor of its own.
Chain Read(uint64_t sector, size_t bytes) {
  Chain c;
  c.Header(kTypeIn, sector).Writable(bytes).Writable(1);
  return c;
}

std::string ParseError(const Chain& c, uint64_t capacity = kCapacity) {
  auto r = ParseRequest(c.chain, capacity);
  EXPECT_FALSE(r) << "type " << r->type << " sector " << r->sector;
  if (r) return {};
  EXPECT_EQ(r.error().kind(), ErrorKind::kBackend);
  return r.error().message();
}

TEST(BlkRequest, HeaderIsLittleEndianTypeReservedSector) {
  auto raw = EncodeHeader(kTypeGetId, 0x0102030405060708);
  EXPECT_EQ(raw.size(), 16u);
  EXPECT_EQ(raw[0], 8);
  EXPECT_EQ(raw[4], 0);  // reserved (ioprio)
  EXPECT_EQ(raw[8], 0x08);
  EXPECT_EQ(raw[15], 0x01);
}

TEST(BlkRequest, ParsesTheLinuxLayoutOfARead) {
  auto r = ParseRequest(Read(8, 4096).chain, kCapacity);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (Request{.type = kTypeIn, .sector = 8, .data_bytes = 4096}));
}

TEST(BlkRequest, AnyLayoutIsAccepted) {
  // Header split in two, data in three pieces, the last one holding the status too.
  Chain c;
  auto raw = EncodeHeader(kTypeIn, 3);
  c.Readable({raw.begin(), raw.begin() + 5}).Readable({raw.begin() + 5, raw.end()});
  c.Writable(512).Writable(0).Writable(1024 + 1);
  auto r = ParseRequest(c.chain, kCapacity);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (Request{.type = kTypeIn, .sector = 3, .data_bytes = 1536}));
  // The data is every writable byte but the last; the status goes there.
  auto data = InData(c.chain, *r);
  ASSERT_EQ(data.size(), 2u);
  EXPECT_EQ(data[0].size(), 512u);
  EXPECT_EQ(data[1].size(), 1024u);
  EXPECT_EQ(data[1].data(), c.chain.writable[2].data());
  ASSERT_TRUE(WriteStatus(c.chain, kStatusUnsupported));
  EXPECT_EQ(c.storage.back().back(), kStatusUnsupported);
  EXPECT_EQ(c.storage.back()[1023], 0xee);
}

TEST(BlkRequest, ReadsReachingTheLastSectorAreInRange) {
  EXPECT_TRUE(ParseRequest(Read(kCapacity - 1, 512).chain, kCapacity));
  EXPECT_TRUE(ParseRequest(Read(0, kCapacity * 512).chain, kCapacity));
  EXPECT_TRUE(ParseRequest(Read(kCapacity, 0).chain, kCapacity));  // nothing to read
}

TEST(BlkRequest, ReadsPastTheEndAreRefused) {
  EXPECT_THAT(ParseError(Read(kCapacity, 512)), HasSubstr("reaches past the 2048 sectors"));
  EXPECT_THAT(ParseError(Read(kCapacity - 1, 1024)), HasSubstr("past"));
  EXPECT_THAT(ParseError(Read(kCapacity + 1, 0)), HasSubstr("past"));
  EXPECT_THAT(ParseError(Read(1, 512), /*capacity=*/0), HasSubstr("past"));
}

TEST(BlkRequest, SectorsThatOverflowAreRefused) {
  uint64_t max = std::numeric_limits<uint64_t>::max();
  EXPECT_THAT(ParseError(Read(max, 512)), HasSubstr("past"));
  EXPECT_THAT(ParseError(Read(max - 1, 1024), max), HasSubstr("past"));
  // sector * 512 wraps to a small offset: still refused against a small disk.
  EXPECT_THAT(ParseError(Read(uint64_t{1} << 55, 512)), HasSubstr("past"));
  EXPECT_TRUE(ParseRequest(Read(max - 2, 1024).chain, max));
}

TEST(BlkRequest, DataMustBeWholeSectors) {
  EXPECT_THAT(ParseError(Read(0, 511)), HasSubstr("not a whole number of 512-byte sectors"));
  EXPECT_THAT(ParseError(Read(0, 513)), HasSubstr("513 bytes"));
  Chain write;
  write.Header(kTypeOut, 0).Readable(std::vector<uint8_t>(100)).Writable(1);
  EXPECT_THAT(ParseError(write), HasSubstr("a write of 100 bytes"));
}

TEST(BlkRequest, TooLargeIsRefused) {
  Chain c;
  c.Header(kTypeIn, 0);
  for (int i = 0; i < 2; ++i) c.Writable(kMaxRequestBytes / 2);
  c.Writable(512 + 1);
  EXPECT_THAT(ParseError(c, uint64_t{1} << 30), HasSubstr("more than 8388608"));
  EXPECT_TRUE(ParseRequest(Read(0, kMaxRequestBytes).chain, uint64_t{1} << 30));
}

TEST(BlkRequest, TooManyDescriptorsAreRefused) {
  Chain ok;
  ok.Header(kTypeIn, 0);
  for (uint32_t i = 0; i < kMaxSegments; ++i) ok.Writable(512);
  ok.Writable(1);
  ASSERT_TRUE(ParseRequest(ok.chain, kCapacity));
  Chain many;
  many.Header(kTypeIn, 0);
  for (uint32_t i = 0; i < kMaxSegments + 1; ++i) many.Writable(512);
  many.Writable(1);
  EXPECT_THAT(ParseError(many), HasSubstr("131 descriptors"));
  // Empty descriptors count too: each is work for the device.
  Chain empties;
  empties.Header(kTypeGetId, 0);
  for (uint32_t i = 0; i < 200; ++i) empties.Writable(0);
  empties.Writable(21);
  EXPECT_THAT(ParseError(empties), HasSubstr("descriptors"));
}

TEST(BlkRequest, TheHeaderMustBeWhole) {
  Chain none;
  none.Writable(513);
  EXPECT_THAT(ParseError(none), HasSubstr("0 readable bytes, fewer than the 16-byte header"));
  Chain short_header;
  short_header.Readable(std::vector<uint8_t>(15)).Writable(1);
  EXPECT_THAT(ParseError(short_header), HasSubstr("15 readable bytes"));
}

TEST(BlkRequest, TheStatusByteMustBeWritable) {
  Chain missing;
  missing.Header(kTypeIn, 0);
  EXPECT_THAT(ParseError(missing), HasSubstr("no writable byte for the status"));
  // Everything readable, the status included: the device has nowhere to answer.
  Chain readable_status;
  readable_status.Header(kTypeIn, 0).Readable(std::vector<uint8_t>(513));
  EXPECT_THAT(ParseError(readable_status), HasSubstr("status"));
  Chain empty_writable;
  empty_writable.Header(kTypeIn, 0).Writable(0);
  EXPECT_THAT(ParseError(empty_writable), HasSubstr("status"));
  EXPECT_FALSE(WriteStatus(empty_writable.chain, kStatusIoErr));
}

TEST(BlkRequest, DataInTheWrongDirectionIsRefused) {
  Chain read_with_readable_data;
  read_with_readable_data.Header(kTypeIn, 0).Readable(std::vector<uint8_t>(512)).Writable(1);
  EXPECT_THAT(ParseError(read_with_readable_data),
              HasSubstr("a read with 512 data bytes the device would read"));
  Chain write_with_writable_data;
  write_with_writable_data.Header(kTypeOut, 0).Writable(512).Writable(1);
  EXPECT_THAT(ParseError(write_with_writable_data),
              HasSubstr("a write with 512 data bytes the device would write"));
  Chain get_id_readable;
  get_id_readable.Header(kTypeGetId, 0).Readable(std::vector<uint8_t>(20)).Writable(1);
  EXPECT_THAT(ParseError(get_id_readable), HasSubstr("GET_ID"));
}

TEST(BlkRequest, AWellFormedWriteParsesForTheDeviceToRefuse) {
  Chain c;
  c.Header(kTypeOut, 4).Readable(std::vector<uint8_t>(1024)).Writable(1);
  auto r = ParseRequest(c.chain, kCapacity);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (Request{.type = kTypeOut, .sector = 4, .data_bytes = 1024}));
}

TEST(BlkRequest, GetIdTakesAnyWritableLength) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{20}, size_t{4096}}) {
    Chain c;
    c.Header(kTypeGetId, 12345).Writable(n).Writable(1);
    auto r = ParseRequest(c.chain, kCapacity);
    ASSERT_TRUE(r) << n << ": " << r.error().ToString();
    EXPECT_EQ(r->data_bytes, n);
  }
}

TEST(BlkRequest, OtherTypesParseWithoutLookingAtTheirData) {
  for (uint32_t type : {kTypeFlush, kTypeDiscard, kTypeWriteZeroes, 2u, 99u, 0xffffffffu}) {
    Chain c;
    c.Header(type, std::numeric_limits<uint64_t>::max()).Readable(std::vector<uint8_t>(3));
    c.Writable(7).Writable(1);
    auto r = ParseRequest(c.chain, kCapacity);
    ASSERT_TRUE(r) << type << ": " << r.error().ToString();
    EXPECT_EQ(r->type, type);
    EXPECT_EQ(r->data_bytes, 0u);
  }
}

}  // namespace
}  // namespace vessel::vmm::blk
