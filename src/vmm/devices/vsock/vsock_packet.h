// The virtio-vsock packet (virtio 1.x, 5.10.6): a 44-byte little-endian header, then for
// OP_RW the payload. On the transmit queue a packet is one descriptor chain the guest
// wrote; the header may be split across buffers, and `len` must be exactly what the chain
// carries after it, at most kMaxPayload.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "vessel/error.h"
#include "vmm/devices/virtio/queue.h"

namespace vessel::vmm::vsock {

inline constexpr size_t kHeaderSize = 44;
// Largest payload of one packet, either way. Linux sends at most 64 KiB per packet.
inline constexpr uint32_t kMaxPayload = 64 * 1024;

inline constexpr uint64_t kHostCid = 2;
inline constexpr uint16_t kTypeStream = 1;

enum class Op : uint16_t {
  kInvalid = 0,
  kRequest = 1,
  kResponse = 2,
  kRst = 3,
  kShutdown = 4,
  kRw = 5,
  kCreditUpdate = 6,
  kCreditRequest = 7,
};

// OP_SHUTDOWN flags: the sender will receive / send no more.
inline constexpr uint32_t kShutdownRecv = 1;
inline constexpr uint32_t kShutdownSend = 2;

struct PacketHeader {
  uint64_t src_cid = 0;
  uint64_t dst_cid = 0;
  uint32_t src_port = 0;
  uint32_t dst_port = 0;
  uint32_t len = 0;
  uint16_t type = kTypeStream;
  uint16_t op = 0;
  uint32_t flags = 0;
  uint32_t buf_alloc = 0;
  uint32_t fwd_cnt = 0;

  bool operator==(const PacketHeader&) const = default;
};

[[nodiscard]] std::array<uint8_t, kHeaderSize> EncodeHeader(const PacketHeader& header);
[[nodiscard]] PacketHeader DecodeHeader(std::span<const uint8_t, kHeaderSize> bytes);

// True for the ops of a stream socket; anything else is answered with OP_RST.
[[nodiscard]] bool IsKnownOp(uint16_t op);

// A packet the guest transmitted: its header and where its payload sits in the chain's
// readable buffers (from byte kHeaderSize on, header.len bytes).
struct TxPacket {
  PacketHeader header;
};

// Parses the readable part of a transmit chain. Fails (and the packet must be dropped:
// nothing in it can be trusted) when the chain has no room for a header, `len` exceeds
// kMaxPayload or differs from the bytes after the header, or the chain has writable
// buffers. Type and op are left to the device: a well-formed packet of a wrong type or
// unknown op is answered with OP_RST.
[[nodiscard]] Result<TxPacket> ParseTxPacket(const virtio::DescriptorChain& chain);

// Writes `header` and `payload` into a receive chain's writable buffers; returns the bytes
// written, or nothing when they do not fit.
[[nodiscard]] std::optional<uint32_t> WriteRxPacket(const virtio::DescriptorChain& chain,
                                                    const PacketHeader& header,
                                                    std::span<const uint8_t> payload);

}  // namespace vessel::vmm::vsock
