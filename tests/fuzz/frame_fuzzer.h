// The harness shared by the libFuzzer targets: a hostile byte stream goes through
// protocol::FrameReader in arbitrary read() sizes, and every frame of a type the receiving
// side parses goes to its decoder.
//
// Input layout: byte 0 seeds how the rest is cut into Feed() calls (0: one call); the
// rest is the stream as the peer wrote it.
//
// Invariants, any break of which aborts (a crash for libFuzzer):
//   - the frames, the error and the bytes left over do not depend on how the stream was cut;
//   - a reader that reported an error keeps reporting it;
//   - a payload that decodes re-encodes to the very same frame. Decoding is deterministic,
//     so this also means encode-then-decode gives back the decoded value.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "invariant.h"
#include "protocol/wire.h"

namespace vessel::protocol::fuzz {

using vessel::fuzz::Check;

// The bytes a frame arrived as: DecodeHeader only accepts zero reserved bytes, so the
// header is fully determined by the decoded fields.
inline std::vector<uint8_t> WireBytes(const Frame& frame) {
  std::vector<uint8_t> bytes(kHeaderSize);
  for (size_t i = 0; i < 4; ++i) {
    bytes[i] = static_cast<uint8_t>(frame.header.payload_size >> (8 * i));
    bytes[8 + i] = static_cast<uint8_t>(frame.header.request_id >> (8 * i));
  }
  bytes[4] = static_cast<uint8_t>(frame.header.type);
  bytes.insert(bytes.end(), frame.payload.begin(), frame.payload.end());
  return bytes;
}

// Checks that a successful decode re-encodes to the frame it came from.
template <typename T, typename Encode>
void CheckReencodes(const Frame& frame, const Result<T>& decoded, Encode encode) {
  if (!decoded) return;
  Check(encode(*decoded) == WireBytes(frame), "a decoded frame re-encodes to the same bytes");
}

struct ReadOutcome {
  std::vector<Frame> frames;
  std::optional<std::string> error;
  size_t buffered = 0;
};

// Feeds `stream` to a fresh FrameReader in chunks chosen by `split_seed`, taking frames out
// after every chunk the way a read loop does.
inline ReadOutcome ReadFrames(std::span<const uint8_t> stream, uint8_t split_seed) {
  ReadOutcome out;
  FrameReader reader;
  uint32_t state = split_seed * 0x9e3779b1u;
  size_t offset = 0;
  bool first = true;
  while (offset < stream.size() || first) {
    first = false;
    size_t chunk = stream.size() - offset;
    if (split_seed != 0) {
      // xorshift32: mostly small reads that split headers, sometimes large ones, and now
      // and then an empty one.
      state ^= state << 13;
      state ^= state >> 17;
      state ^= state << 5;
      size_t limit = (state & 0x80000000u) ? 4096 : 16;
      chunk = std::min(chunk, static_cast<size_t>(state % limit));
    }
    if (split_seed & 1) {
      // The agent's way: read() into room the reader prepared, often more than arrives.
      auto room = reader.Prepare(chunk + (state & 0xff));
      std::copy_n(stream.begin() + static_cast<std::ptrdiff_t>(offset), chunk, room.begin());
      reader.Commit(chunk);
    } else {
      reader.Feed(stream.subspan(offset, chunk));
    }
    offset += chunk;
    for (;;) {
      auto next = reader.Next();
      if (!next) {
        out.error = next.error().ToString();
        auto again = reader.Next();
        Check(!again && again.error().ToString() == *out.error, "a reader error sticks");
        return out;
      }
      if (!*next) break;
      Check((*next)->payload.size() == (*next)->header.payload_size, "payload size matches");
      out.frames.push_back(std::move(**next));
    }
  }
  out.buffered = reader.buffered();
  return out;
}

inline bool SameFrames(const std::vector<Frame>& a, const std::vector<Frame>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].header.type != b[i].header.type || a[i].header.request_id != b[i].header.request_id ||
        a[i].header.payload_size != b[i].header.payload_size || a[i].payload != b[i].payload) {
      return false;
    }
  }
  return true;
}

// The body of LLVMFuzzerTestOneInput: `decode` gets every frame the reader produced.
template <typename DecodeFrame>
int FuzzFrames(const uint8_t* data, size_t size, DecodeFrame decode) {
  if (size == 0) return 0;
  std::span<const uint8_t> stream(data + 1, size - 1);
  ReadOutcome whole = ReadFrames(stream, 0);
  ReadOutcome pieces = ReadFrames(stream, data[0]);
  Check(SameFrames(whole.frames, pieces.frames), "frames do not depend on read sizes");
  Check(whole.error == pieces.error, "errors do not depend on read sizes");
  Check(whole.buffered == pieces.buffered, "leftover bytes do not depend on read sizes");
  for (const Frame& frame : pieces.frames) decode(frame);
  return 0;
}

}  // namespace vessel::protocol::fuzz
