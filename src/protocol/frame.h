// Whole frames, for those that pass agent frames on without decoding their payload (the
// supervisor's relay) and for the host's routing of frames to requests.
#pragma once

#include <cstdint>
#include <vector>

#include "protocol/wire.h"

namespace vessel::protocol {

// True for the frame types that end their request: Exited, Error, Done and NetClose; and
// Hello, which with a request id answers a Resume (the only request a Hello can belong to).
bool IsLastFrame(MessageType type);

// `frame` as bytes again, ready to write, with `request_id` in place of its own.
std::vector<uint8_t> EncodeFrame(const Frame& frame, uint32_t request_id);

}  // namespace vessel::protocol
