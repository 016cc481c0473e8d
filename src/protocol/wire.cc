#include "protocol/wire.h"

#include <fmt/format.h>

#include <cstring>

namespace vessel::protocol {
namespace {

class Writer {
 public:
  Writer(MessageType type, uint32_t request_id) {
    bytes_.resize(kHeaderSize);
    bytes_[4] = static_cast<uint8_t>(type);
    Put(4 + 4, request_id);
  }
  void U8(uint8_t v) { bytes_.push_back(v); }
  void U32(uint32_t v) { Append(v); }
  void I32(int32_t v) { Append(static_cast<uint32_t>(v)); }
  void U64(uint64_t v) { Append(v); }
  void String(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    bytes_.insert(bytes_.end(), s.begin(), s.end());
  }
  void Raw(std::span<const uint8_t> data) { bytes_.insert(bytes_.end(), data.begin(), data.end()); }
  std::vector<uint8_t> Finish() && {
    Put(0, static_cast<uint32_t>(bytes_.size() - kHeaderSize));
    return std::move(bytes_);
  }

 private:
  template <typename T>
  void Append(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void Put(size_t offset, uint32_t v) {
    for (size_t i = 0; i < 4; ++i) bytes_[offset + i] = static_cast<uint8_t>(v >> (8 * i));
  }
  std::vector<uint8_t> bytes_;
};

// Bounds-checked little-endian reader over a hostile payload. The first failure sticks,
// so a decoder reads every field and checks once at the end.
class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, const char* what) : bytes_(bytes), what_(what) {}

  uint8_t U8() { return static_cast<uint8_t>(Take<uint8_t>()); }
  uint32_t U32() { return static_cast<uint32_t>(Take<uint32_t>()); }
  int32_t I32() { return static_cast<int32_t>(U32()); }
  uint64_t U64() { return Take<uint64_t>(); }
  std::string String(uint32_t cap, const char* field) {
    uint32_t size = U32();
    if (failed()) return {};
    if (size > cap)
      return Fail(fmt::format("{} of {} bytes exceeds the cap of {}", field, size, cap));
    if (size > remaining()) return Fail(fmt::format("{} of {} bytes is truncated", field, size));
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), size);
    pos_ += size;
    return s;
  }
  uint32_t Count(uint32_t cap, const char* field) {
    uint32_t n = U32();
    if (!failed() && n > cap) Fail(fmt::format("{} count {} exceeds the cap of {}", field, n, cap));
    return failed() ? 0 : n;
  }
  std::span<const uint8_t> Rest() {
    auto rest = bytes_.subspan(pos_);
    pos_ = bytes_.size();
    return rest;
  }
  [[nodiscard]] bool failed() const { return !error_.empty(); }
  [[nodiscard]] size_t remaining() const { return bytes_.size() - pos_; }

  // Success only when nothing failed and every byte was consumed.
  template <typename T>
  Result<T> Done(T value) {
    if (!failed() && remaining() != 0) Fail(fmt::format("{} trailing bytes", remaining()));
    if (failed())
      return vessel::Fail(Error::Backend(fmt::format("malformed {}: {}", what_, error_)));
    return value;
  }

 private:
  std::string Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    pos_ = bytes_.size();
    return {};
  }
  template <typename T>
  uint64_t Take() {
    if (failed()) return 0;
    if (remaining() < sizeof(T)) {
      Fail("truncated");
      return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t{bytes_[pos_ + i]} << (8 * i);
    pos_ += sizeof(T);
    return v;
  }

  std::span<const uint8_t> bytes_;
  const char* what_;
  size_t pos_ = 0;
  std::string error_;
};

}  // namespace

std::vector<uint8_t> EncodeHello(const Hello& hello) {
  Writer w(MessageType::kHello, 0);
  w.U32(hello.version);
  w.String(hello.agent_version);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeExec(uint32_t request_id, const ExecRequest& request) {
  Writer w(MessageType::kExec, request_id);
  w.U32(static_cast<uint32_t>(request.argv.size()));
  for (const auto& arg : request.argv) w.String(arg);
  w.U32(static_cast<uint32_t>(request.env.size()));
  for (const auto& entry : request.env) w.String(entry);
  w.String(request.cwd);
  w.U32(request.timeout_ms);
  w.U64(request.output_cap);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeOutput(uint32_t request_id, Stream stream,
                                  std::span<const uint8_t> data) {
  Writer w(MessageType::kOutput, request_id);
  w.U8(static_cast<uint8_t>(stream));
  w.Raw(data);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeExited(uint32_t request_id, const Exited& exited) {
  Writer w(MessageType::kExited, request_id);
  w.U8(static_cast<uint8_t>(exited.how));
  w.I32(exited.code);
  w.U8(static_cast<uint8_t>((exited.stdout_truncated ? 1 : 0) | (exited.stderr_truncated ? 2 : 0)));
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeError(uint32_t request_id, const ErrorReply& error) {
  Writer w(MessageType::kError, request_id);
  w.I32(error.errno_value);
  w.String(error.path.substr(0, kMaxPathSize));
  w.String(error.message.substr(0, kMaxMessageSize));
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodePing(uint32_t request_id) {
  return Writer(MessageType::kPing, request_id).Finish();
}

std::vector<uint8_t> EncodePong(uint32_t request_id) {
  return Writer(MessageType::kPong, request_id).Finish();
}

Result<FrameHeader> DecodeHeader(std::span<const uint8_t, kHeaderSize> b) {
  auto u32 = [&](size_t at) {
    return uint32_t{b[at]} | uint32_t{b[at + 1]} << 8 | uint32_t{b[at + 2]} << 16 |
           uint32_t{b[at + 3]} << 24;
  };
  FrameHeader h;
  h.payload_size = u32(0);
  uint8_t type = b[4];
  h.request_id = u32(8);
  if (h.payload_size > kMaxPayload) {
    return Fail(Error::Backend(
        fmt::format("frame of {} bytes exceeds the cap of {}", h.payload_size, kMaxPayload)));
  }
  if (type < static_cast<uint8_t>(MessageType::kHello) ||
      type > static_cast<uint8_t>(MessageType::kPong)) {
    return Fail(Error::Backend(fmt::format("unknown frame type {}", type)));
  }
  if (b[5] != 0 || b[6] != 0 || b[7] != 0) {
    return Fail(Error::Backend("reserved frame header bytes are not zero"));
  }
  h.type = static_cast<MessageType>(type);
  return h;
}

Result<Hello> DecodeHello(std::span<const uint8_t> payload) {
  Reader r(payload, "hello");
  Hello hello;
  hello.version = r.U32();
  hello.agent_version = r.String(kMaxMessageSize, "agent version");
  return r.Done(std::move(hello));
}

Result<ExecRequest> DecodeExec(std::span<const uint8_t> payload) {
  Reader r(payload, "exec request");
  ExecRequest req;
  uint32_t argc = r.Count(kMaxArgs, "argv");
  for (uint32_t i = 0; i < argc && !r.failed(); ++i)
    req.argv.push_back(r.String(kMaxStringSize, "argument"));
  uint32_t envc = r.Count(kMaxEnv, "env");
  for (uint32_t i = 0; i < envc && !r.failed(); ++i)
    req.env.push_back(r.String(kMaxStringSize, "env entry"));
  req.cwd = r.String(kMaxPathSize, "cwd");
  req.timeout_ms = r.U32();
  req.output_cap = r.U64();
  auto result = r.Done(std::move(req));
  if (result && result->argv.empty())
    return Fail(Error::Backend("malformed exec request: empty argv"));
  return result;
}

Result<Output> DecodeOutput(std::span<const uint8_t> payload) {
  Reader r(payload, "output");
  Output out;
  uint8_t stream = r.U8();
  auto data = r.Rest();
  if (!r.failed() && stream != static_cast<uint8_t>(Stream::kStdout) &&
      stream != static_cast<uint8_t>(Stream::kStderr)) {
    return Fail(Error::Backend(fmt::format("malformed output: unknown stream {}", stream)));
  }
  out.stream = static_cast<Stream>(stream);
  out.data.assign(data.begin(), data.end());
  return r.Done(std::move(out));
}

Result<Exited> DecodeExited(std::span<const uint8_t> payload) {
  Reader r(payload, "exit status");
  Exited e;
  uint8_t how = r.U8();
  e.code = r.I32();
  uint8_t flags = r.U8();
  auto result = r.Done(e);
  if (!result) return result;
  if (how > static_cast<uint8_t>(ExitHow::kTimedOut)) {
    return Fail(Error::Backend(fmt::format("malformed exit status: unknown kind {}", how)));
  }
  if (flags & ~3u) return Fail(Error::Backend("malformed exit status: unknown flags"));
  result->how = static_cast<ExitHow>(how);
  result->stdout_truncated = flags & 1;
  result->stderr_truncated = flags & 2;
  return result;
}

Result<ErrorReply> DecodeError(std::span<const uint8_t> payload) {
  Reader r(payload, "error reply");
  ErrorReply e;
  e.errno_value = r.I32();
  e.path = r.String(kMaxPathSize, "path");
  e.message = r.String(kMaxMessageSize, "message");
  return r.Done(std::move(e));
}

void FrameReader::Feed(std::span<const uint8_t> bytes) {
  // Drop what was already returned, so the buffer holds at most one partial frame plus
  // this read.
  buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(consumed_));
  consumed_ = 0;
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

Result<std::optional<Frame>> FrameReader::Next() {
  if (buffered() < kHeaderSize) return std::nullopt;
  auto header =
      DecodeHeader(std::span<const uint8_t, kHeaderSize>(buffer_.data() + consumed_, kHeaderSize));
  if (!header) return Fail(std::move(header).error());
  if (buffered() < kHeaderSize + header->payload_size) return std::nullopt;
  Frame frame;
  frame.header = *header;
  auto begin = buffer_.begin() + static_cast<std::ptrdiff_t>(consumed_ + kHeaderSize);
  frame.payload.assign(begin, begin + header->payload_size);
  consumed_ += kHeaderSize + header->payload_size;
  return frame;
}

}  // namespace vessel::protocol
