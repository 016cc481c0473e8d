#include "vmm/devices/virtio_blk/blk_request.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <string_view>

namespace vessel::vmm::blk {
namespace {

Error Malformed(std::string_view what) {
  return Error::Backend(fmt::format("virtio-blk request: {}", what));
}

std::string_view TypeName(uint32_t type) {
  switch (type) {
    case kTypeIn: return "read";
    case kTypeOut: return "write";
    case kTypeGetId: return "GET_ID";
    default: return "request";
  }
}

}  // namespace

std::array<uint8_t, kHeaderSize> EncodeHeader(uint32_t type, uint64_t sector) {
  std::array<uint8_t, kHeaderSize> out{};
  std::memcpy(out.data(), &type, sizeof(type));
  std::memcpy(out.data() + 8, &sector, sizeof(sector));
  return out;
}

Result<Request> ParseRequest(const virtio::DescriptorChain& chain, uint64_t capacity) {
  if (chain.writable_bytes == 0) return Fail(Malformed("no writable byte for the status"));
  if (chain.readable_bytes < kHeaderSize) {
    return Fail(Malformed(fmt::format("{} readable bytes, fewer than the {}-byte header",
                                      chain.readable_bytes, kHeaderSize)));
  }
  size_t descriptors = chain.readable.size() + chain.writable.size();
  if (descriptors > kMaxSegments + 2) {
    return Fail(
        Malformed(fmt::format("{} descriptors, more than {} data segments and header and status",
                              descriptors, kMaxSegments)));
  }
  // Copied out first: the guest may change its buffers while the device looks at them.
  std::array<uint8_t, kHeaderSize> raw{};
  virtio::CopyFromBuffers(chain.readable, 0, raw);
  Request request;
  std::memcpy(&request.type, raw.data(), sizeof(request.type));
  std::memcpy(&request.sector, raw.data() + 8, sizeof(request.sector));

  const uint64_t readable_data = chain.readable_bytes - kHeaderSize;
  const uint64_t writable_data = chain.writable_bytes - 1;
  switch (request.type) {
    case kTypeIn:
    case kTypeGetId:
      if (readable_data != 0) {
        return Fail(Malformed(fmt::format("a {} with {} data bytes the device would read",
                                          TypeName(request.type), readable_data)));
      }
      request.data_bytes = writable_data;
      break;
    case kTypeOut:
      if (writable_data != 0) {
        return Fail(Malformed(
            fmt::format("a write with {} data bytes the device would write", writable_data)));
      }
      request.data_bytes = readable_data;
      break;
    default: return request;
  }
  if (request.type == kTypeGetId) return request;

  if (request.data_bytes % kSectorSize != 0) {
    return Fail(Malformed(fmt::format("a {} of {} bytes, not a whole number of {}-byte sectors",
                                      TypeName(request.type), request.data_bytes, kSectorSize)));
  }
  if (request.data_bytes > kMaxRequestBytes) {
    return Fail(Malformed(fmt::format("a {} of {} bytes, more than {}", TypeName(request.type),
                                      request.data_bytes, kMaxRequestBytes)));
  }
  const uint64_t sectors = request.data_bytes / kSectorSize;
  // Written so that no sum can overflow: sector may be anything the guest chose.
  if (request.sector > capacity || sectors > capacity - request.sector) {
    return Fail(
        Malformed(fmt::format("a {} of {} sectors at sector {} reaches past the {} sectors "
                              "of the disk",
                              TypeName(request.type), sectors, request.sector, capacity)));
  }
  return request;
}

std::vector<std::span<uint8_t>> InData(const virtio::DescriptorChain& chain,
                                       const Request& request) {
  std::vector<std::span<uint8_t>> out;
  uint64_t left = request.data_bytes;
  for (const auto& buf : chain.writable) {
    if (left == 0) break;
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), left));
    if (n > 0) out.push_back(buf.first(n));
    left -= n;
  }
  return out;
}

bool WriteStatus(const virtio::DescriptorChain& chain, uint8_t status) {
  if (chain.writable_bytes == 0) return false;
  return virtio::CopyToBuffers(chain.writable, chain.writable_bytes - 1, {&status, 1}) == 1;
}

}  // namespace vessel::vmm::blk
