#include "vmm/devices/vsock/vsock_packet.h"

#include <fmt/format.h>

#include <cstring>

namespace vessel::vmm::vsock {
namespace {

template <typename T>
void Put(std::array<uint8_t, kHeaderSize>& out, size_t at, T value) {
  std::memcpy(out.data() + at, &value, sizeof(T));
}

template <typename T>
T Get(std::span<const uint8_t, kHeaderSize> in, size_t at) {
  T value;
  std::memcpy(&value, in.data() + at, sizeof(T));
  return value;
}

}  // namespace

std::array<uint8_t, kHeaderSize> EncodeHeader(const PacketHeader& h) {
  std::array<uint8_t, kHeaderSize> out{};
  Put(out, 0, h.src_cid);
  Put(out, 8, h.dst_cid);
  Put(out, 16, h.src_port);
  Put(out, 20, h.dst_port);
  Put(out, 24, h.len);
  Put(out, 28, h.type);
  Put(out, 30, h.op);
  Put(out, 32, h.flags);
  Put(out, 36, h.buf_alloc);
  Put(out, 40, h.fwd_cnt);
  return out;
}

PacketHeader DecodeHeader(std::span<const uint8_t, kHeaderSize> in) {
  return {.src_cid = Get<uint64_t>(in, 0),
          .dst_cid = Get<uint64_t>(in, 8),
          .src_port = Get<uint32_t>(in, 16),
          .dst_port = Get<uint32_t>(in, 20),
          .len = Get<uint32_t>(in, 24),
          .type = Get<uint16_t>(in, 28),
          .op = Get<uint16_t>(in, 30),
          .flags = Get<uint32_t>(in, 32),
          .buf_alloc = Get<uint32_t>(in, 36),
          .fwd_cnt = Get<uint32_t>(in, 40)};
}

bool IsKnownOp(uint16_t op) {
  return op >= static_cast<uint16_t>(Op::kRequest) &&
         op <= static_cast<uint16_t>(Op::kCreditRequest);
}

Result<TxPacket> ParseTxPacket(const virtio::DescriptorChain& chain) {
  if (!chain.writable.empty()) {
    return Fail(Error::Backend("vsock tx packet has device-writable buffers"));
  }
  if (chain.readable_bytes < kHeaderSize) {
    return Fail(Error::Backend(fmt::format("vsock tx packet of {} bytes is shorter than its header",
                                           chain.readable_bytes)));
  }
  std::array<uint8_t, kHeaderSize> raw{};
  virtio::CopyFromBuffers(chain.readable, 0, raw);
  TxPacket packet{.header = DecodeHeader(raw)};
  if (packet.header.len > kMaxPayload) {
    return Fail(Error::Backend(fmt::format("vsock tx packet payload of {} bytes exceeds {}",
                                           packet.header.len, kMaxPayload)));
  }
  if (packet.header.len != chain.readable_bytes - kHeaderSize) {
    return Fail(Error::Backend(fmt::format("vsock tx packet says {} payload bytes but carries {}",
                                           packet.header.len, chain.readable_bytes - kHeaderSize)));
  }
  return packet;
}

std::optional<uint32_t> WriteRxPacket(const virtio::DescriptorChain& chain,
                                      const PacketHeader& header,
                                      std::span<const uint8_t> payload) {
  if (header.len != payload.size() || chain.writable_bytes < kHeaderSize + payload.size()) {
    return std::nullopt;
  }
  auto raw = EncodeHeader(header);
  virtio::CopyToBuffers(chain.writable, 0, raw);
  virtio::CopyToBuffers(chain.writable, kHeaderSize, payload);
  return static_cast<uint32_t>(kHeaderSize + payload.size());
}

}  // namespace vessel::vmm::vsock
