#include "protocol/frame.h"

#include <algorithm>

namespace vessel::protocol {

bool IsLastFrame(MessageType type) {
  return type == MessageType::kExited || type == MessageType::kError ||
         type == MessageType::kDone || type == MessageType::kHello ||
         type == MessageType::kNetClose;
}

std::vector<uint8_t> EncodeFrame(const Frame& frame, uint32_t request_id) {
  std::vector<uint8_t> bytes(kHeaderSize + frame.payload.size());
  auto put = [&](size_t at, uint32_t value) {
    for (size_t i = 0; i < 4; ++i) bytes[at + i] = static_cast<uint8_t>(value >> (8 * i));
  };
  put(0, static_cast<uint32_t>(frame.payload.size()));
  bytes[4] = static_cast<uint8_t>(frame.header.type);
  put(8, request_id);
  std::copy(frame.payload.begin(), frame.payload.end(),
            bytes.begin() + static_cast<std::ptrdiff_t>(kHeaderSize));
  return bytes;
}

}  // namespace vessel::protocol
