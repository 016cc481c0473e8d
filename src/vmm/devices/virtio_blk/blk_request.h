// A virtio-blk request (virtio 1.x, 5.2.6): a 16-byte little-endian header the driver
// writes (le32 type, le32 reserved, le64 sector), the data, and one status byte the device
// writes last. How these lie in descriptors is the driver's choice (VERSION_1 implies
// ANY_LAYOUT), so the parser reads the chain as bytes: the header is the first 16
// readable bytes, the status the last writable byte, and the data what lies between, the
// readable bytes after the header for a write, the writable bytes before the status for a
// read or GET_ID.
//
// The parser is pure and trusts nothing in the chain: every rule a request of the guest
// could break is checked here, so the device only serves requests that fit the disk and
// the limits below.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vessel/error.h"
#include "vmm/devices/virtio/queue.h"

namespace vessel::vmm::blk {

inline constexpr size_t kHeaderSize = 16;
inline constexpr uint64_t kSectorSize = 512;
// The device ID string GET_ID answers with, zero padded when shorter (5.2.6).
inline constexpr size_t kIdBytes = 20;

// Data segments (descriptors) of one request, offered as seg_max; a chain carries at most
// these plus one for the header and one for the status. 128 + 2 descriptors fit a queue
// of 256, so the driver never waits for a request that could not fit the ring.
inline constexpr uint32_t kMaxSegments = 128;
// Largest data segment, offered as size_max.
inline constexpr uint32_t kMaxSegmentBytes = 64 * 1024;
// Largest data of one request: the most a driver honouring seg_max and size_max can ask.
// The device reads it on the vCPU that notified, so this also bounds how long one
// request holds that vCPU.
inline constexpr uint64_t kMaxRequestBytes = uint64_t{kMaxSegments} * kMaxSegmentBytes;

// Request types (virtio_blk_req.type).
inline constexpr uint32_t kTypeIn = 0;
inline constexpr uint32_t kTypeOut = 1;
inline constexpr uint32_t kTypeFlush = 4;
inline constexpr uint32_t kTypeGetId = 8;
inline constexpr uint32_t kTypeDiscard = 11;
inline constexpr uint32_t kTypeWriteZeroes = 13;

// Status byte values.
inline constexpr uint8_t kStatusOk = 0;
inline constexpr uint8_t kStatusIoErr = 1;
inline constexpr uint8_t kStatusUnsupported = 2;

struct Request {
  uint32_t type = 0;
  uint64_t sector = 0;
  // kTypeIn and kTypeGetId: the writable bytes before the status; kTypeOut: the readable
  // bytes after the header; any other type: 0 (its data, if any, is not looked at).
  uint64_t data_bytes = 0;

  bool operator==(const Request&) const = default;
};

// The header a driver writes for a request of `type` at `sector`.
[[nodiscard]] std::array<uint8_t, kHeaderSize> EncodeHeader(uint32_t type, uint64_t sector);

// Parses one request's chain for a disk of `capacity` sectors. Fails (and the request
// must be answered with kStatusIoErr where the chain has a status byte) when:
// - the chain has no writable byte for the status;
// - the readable bytes are fewer than a header;
// - the chain has more than kMaxSegments + 2 descriptors;
// - a read's or GET_ID's data is readable, or a write's writable;
// - a read's or write's data is not a whole number of sectors, exceeds kMaxRequestBytes,
//   or reaches past `capacity` (an overflowing sector included).
// Any other type parses with the header and status checks only: the device answers it.
[[nodiscard]] Result<Request> ParseRequest(const virtio::DescriptorChain& chain, uint64_t capacity);

// The buffers `request`'s data is read into: the first data_bytes writable bytes of
// `chain`, as spans into them (empty spans left out).
[[nodiscard]] std::vector<std::span<uint8_t>> InData(const virtio::DescriptorChain& chain,
                                                     const Request& request);

// Writes `status` into the chain's last writable byte; false when it has none.
bool WriteStatus(const virtio::DescriptorChain& chain, uint8_t status);

}  // namespace vessel::vmm::blk
