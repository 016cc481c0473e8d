#include "protocol/wire.h"

#include <fmt/format.h>

#include <algorithm>
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
  void U16(uint16_t v) { Append(v); }
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
  uint16_t U16() { return static_cast<uint16_t>(Take<uint16_t>()); }
  uint32_t U32() { return static_cast<uint32_t>(Take<uint32_t>()); }
  int32_t I32() { return static_cast<int32_t>(U32()); }
  uint64_t U64() { return Take<uint64_t>(); }
  std::string String(uint32_t cap, const char* field) {
    auto bytes = Sized(cap, field);
    return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  std::vector<uint8_t> Bytes(uint32_t cap, const char* field) {
    auto bytes = Sized(cap, field);
    return std::vector<uint8_t>(bytes.begin(), bytes.end());
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
  // A u32 length and that many bytes, the length checked against `cap` first.
  std::span<const uint8_t> Sized(uint32_t cap, const char* field) {
    uint32_t size = U32();
    if (failed()) return {};
    if (size > cap) {
      Fail(fmt::format("{} of {} bytes exceeds the cap of {}", field, size, cap));
      return {};
    }
    if (size > remaining()) {
      Fail(fmt::format("{} of {} bytes is truncated", field, size));
      return {};
    }
    auto bytes = bytes_.subspan(pos_, size);
    pos_ += size;
    return bytes;
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

// Exec flags.
constexpr uint8_t kExecStdinPipe = 1;
constexpr uint8_t kExecTerminal = 2;

void PutTerminalSize(Writer& w, const TerminalSize& size) {
  w.U16(size.rows);
  w.U16(size.cols);
}

TerminalSize TakeTerminalSize(Reader& r) {
  TerminalSize size;
  size.rows = r.U16();
  size.cols = r.U16();
  return size;
}

bool ValidTerminalSize(const TerminalSize& size) {
  return size.rows >= 1 && size.rows <= kMaxTerminalSide && size.cols >= 1 &&
         size.cols <= kMaxTerminalSide;
}

}  // namespace

std::vector<uint8_t> EncodeHello(const Hello& hello) { return EncodeHello(0, hello); }

std::vector<uint8_t> EncodeHello(uint32_t request_id, const Hello& hello) {
  Writer w(MessageType::kHello, request_id);
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
  w.U8(static_cast<uint8_t>((request.stdin_pipe ? kExecStdinPipe : 0) |
                            (request.terminal ? kExecTerminal : 0)));
  w.U32(request.window);
  if (request.terminal) PutTerminalSize(w, *request.terminal);
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

std::vector<uint8_t> EncodeStarted(uint32_t request_id, const Started& started) {
  Writer w(MessageType::kStarted, request_id);
  w.I32(started.pid);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeStdin(uint32_t request_id, std::span<const uint8_t> data) {
  Writer w(MessageType::kStdin, request_id);
  w.Raw(data);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeSignal(uint32_t request_id, int32_t signal) {
  Writer w(MessageType::kSignal, request_id);
  w.I32(signal);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeCredit(uint32_t request_id, const Credit& credit) {
  Writer w(MessageType::kCredit, request_id);
  w.U8(static_cast<uint8_t>(credit.stream));
  w.U32(credit.bytes);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeFileOp(uint32_t request_id, const FileOp& op) {
  Writer w(MessageType::kFileOp, request_id);
  w.U8(static_cast<uint8_t>(op.kind));
  w.String(op.path);
  w.String(op.target);
  w.U32(op.mode);
  w.U8(op.flags);
  w.U32(op.window);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeFileData(uint32_t request_id, std::span<const uint8_t> data) {
  Writer w(MessageType::kFileData, request_id);
  w.Raw(data);
  return std::move(w).Finish();
}

std::vector<uint8_t> FileDataFrame(uint32_t request_id, size_t capacity) {
  std::vector<uint8_t> frame = EncodeFileData(request_id, {});
  frame.resize(kHeaderSize + std::min<size_t>(capacity, kMaxFileChunk));
  return frame;
}

void TrimFileData(std::vector<uint8_t>& frame, size_t n) {
  frame.resize(kHeaderSize + std::min(n, frame.size() - kHeaderSize));
  uint32_t size = static_cast<uint32_t>(frame.size() - kHeaderSize);
  for (size_t i = 0; i < 4; ++i) frame[i] = static_cast<uint8_t>(size >> (8 * i));
}

std::vector<uint8_t> EncodeFileInfo(uint32_t request_id, const FileInfo& info) {
  Writer w(MessageType::kFileInfo, request_id);
  w.U8(static_cast<uint8_t>(info.type));
  w.U32(info.mode);
  w.U64(info.size);
  w.U64(static_cast<uint64_t>(info.mtime));
  w.String(info.name);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeDone(uint32_t request_id) {
  return Writer(MessageType::kDone, request_id).Finish();
}

std::vector<uint8_t> EncodeQuiesce(uint32_t request_id) {
  return Writer(MessageType::kQuiesce, request_id).Finish();
}

std::vector<uint8_t> EncodeResume(uint32_t request_id, const ResumeRequest& request) {
  Writer w(MessageType::kResume, request_id);
  w.U8(request.clone ? kResumeClone : 0);
  w.U64(request.wall_clock_ns);
  w.U32(static_cast<uint32_t>(request.entropy.size()));
  w.Raw(request.entropy);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeResize(uint32_t request_id, const TerminalSize& size) {
  Writer w(MessageType::kResize, request_id);
  PutTerminalSize(w, size);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeNetOpen(uint32_t request_id) {
  return Writer(MessageType::kNetOpen, request_id).Finish();
}

std::vector<uint8_t> EncodeNetData(uint32_t request_id, std::span<const uint8_t> data) {
  Writer w(MessageType::kNetData, request_id);
  w.Raw(data);
  return std::move(w).Finish();
}

std::vector<uint8_t> EncodeNetClose(uint32_t request_id) {
  return Writer(MessageType::kNetClose, request_id).Finish();
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
      type > kLastMessageType) {
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
  uint8_t flags = r.U8();
  req.window = r.U32();
  if (flags & kExecTerminal) req.terminal = TakeTerminalSize(r);
  auto result = r.Done(std::move(req));
  if (!result) return result;
  if (result->argv.empty()) return Fail(Error::Backend("malformed exec request: empty argv"));
  if ((flags & ~(kExecStdinPipe | kExecTerminal)) != 0) {
    return Fail(Error::Backend("malformed exec request: unknown flags"));
  }
  if (result->window == 0 || result->window > kMaxWindow) {
    return Fail(Error::Backend("malformed exec request: window out of range"));
  }
  if (result->terminal && !ValidTerminalSize(*result->terminal)) {
    return Fail(Error::Backend("malformed exec request: terminal size out of range"));
  }
  result->stdin_pipe = (flags & kExecStdinPipe) != 0;
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

Result<Started> DecodeStarted(std::span<const uint8_t> payload) {
  Reader r(payload, "started");
  Started started;
  started.pid = r.I32();
  auto result = r.Done(started);
  if (result && result->pid <= 0) return Fail(Error::Backend("malformed started: pid out of range"));
  return result;
}

Result<int32_t> DecodeSignal(std::span<const uint8_t> payload) {
  Reader r(payload, "signal");
  int32_t signal = r.I32();
  auto result = r.Done(signal);
  if (result && (*result < 1 || *result > 64)) {
    return Fail(Error::Backend(fmt::format("malformed signal: {} is not a signal", *result)));
  }
  return result;
}

Result<Credit> DecodeCredit(std::span<const uint8_t> payload) {
  Reader r(payload, "credit");
  uint8_t stream = r.U8();
  Credit credit;
  credit.bytes = r.U32();
  auto result = r.Done(credit);
  if (!result) return result;
  if (stream < static_cast<uint8_t>(Stream::kStdout) ||
      stream > static_cast<uint8_t>(Stream::kNet)) {
    return Fail(Error::Backend(fmt::format("malformed credit: unknown stream {}", stream)));
  }
  if (result->bytes > kMaxWindow) return Fail(Error::Backend("malformed credit: more than a window"));
  result->stream = static_cast<Stream>(stream);
  return result;
}

Result<FileOp> DecodeFileOp(std::span<const uint8_t> payload) {
  Reader r(payload, "file operation");
  FileOp op;
  uint8_t kind = r.U8();
  op.path = r.String(kMaxPathSize, "path");
  op.target = r.String(kMaxPathSize, "target");
  op.mode = r.U32();
  op.flags = r.U8();
  op.window = r.U32();
  auto result = r.Done(std::move(op));
  if (!result) return result;
  if (kind < static_cast<uint8_t>(FileOpKind::kStat) || kind > static_cast<uint8_t>(FileOpKind::kWriteFile)) {
    return Fail(Error::Backend(fmt::format("malformed file operation: unknown kind {}", kind)));
  }
  result->kind = static_cast<FileOpKind>(kind);
  if (result->path.empty() || result->path[0] != '/' || result->path.find('\0') != std::string::npos) {
    return Fail(Error::Backend("malformed file operation: path is not absolute"));
  }
  if (result->kind == FileOpKind::kRename &&
      (result->target.empty() || result->target[0] != '/' || result->target.find('\0') != std::string::npos)) {
    return Fail(Error::Backend("malformed file operation: target is not absolute"));
  }
  if (result->mode > 07777) return Fail(Error::Backend("malformed file operation: mode out of range"));
  if (result->flags & ~(kFlagParents | kFlagRecursive)) {
    return Fail(Error::Backend("malformed file operation: unknown flags"));
  }
  if (result->window == 0 || result->window > kMaxWindow) {
    return Fail(Error::Backend("malformed file operation: window out of range"));
  }
  return result;
}

Result<FileInfo> DecodeFileInfo(std::span<const uint8_t> payload) {
  Reader r(payload, "file info");
  FileInfo info;
  uint8_t type = r.U8();
  info.mode = r.U32();
  info.size = r.U64();
  info.mtime = static_cast<int64_t>(r.U64());
  info.name = r.String(kMaxPathSize, "name");
  auto result = r.Done(std::move(info));
  if (!result) return result;
  if (type < static_cast<uint8_t>(FileType::kRegular) || type > static_cast<uint8_t>(FileType::kOther)) {
    return Fail(Error::Backend(fmt::format("malformed file info: unknown type {}", type)));
  }
  if (result->mode > 07777) return Fail(Error::Backend("malformed file info: mode out of range"));
  if (result->name.find('/') != std::string::npos || result->name.find('\0') != std::string::npos) {
    return Fail(Error::Backend("malformed file info: name contains '/' or NUL"));
  }
  result->type = static_cast<FileType>(type);
  return result;
}

Result<ResumeRequest> DecodeResume(std::span<const uint8_t> payload) {
  Reader r(payload, "resume");
  ResumeRequest request;
  uint8_t flags = r.U8();
  request.wall_clock_ns = r.U64();
  request.entropy = r.Bytes(kMaxEntropy, "entropy");
  auto result = r.Done(std::move(request));
  if (!result) return result;
  if (flags & ~kResumeClone) return Fail(Error::Backend("malformed resume: unknown flags"));
  result->clone = flags & kResumeClone;
  if (result->clone && result->entropy.size() < kMinCloneEntropy) {
    return Fail(Error::Backend(
        fmt::format("malformed resume: a clone needs at least {} bytes of entropy, got {}",
                    kMinCloneEntropy, result->entropy.size())));
  }
  return result;
}

Result<TerminalSize> DecodeResize(std::span<const uint8_t> payload) {
  Reader r(payload, "resize");
  auto result = r.Done(TakeTerminalSize(r));
  if (result && !ValidTerminalSize(*result)) {
    return Fail(Error::Backend("malformed resize: terminal size out of range"));
  }
  return result;
}

Result<void> DecodeEmpty(std::span<const uint8_t> payload, const char* what) {
  if (!payload.empty()) {
    return Fail(Error::Backend(fmt::format("malformed {}: {} unexpected bytes", what, payload.size())));
  }
  return {};
}

void FrameReader::Compact(size_t n) {
  if (consumed_ > 0) {
    std::memmove(buffer_.data(), buffer_.data() + consumed_, filled_ - consumed_);
    filled_ -= consumed_;
    consumed_ = 0;
  }
  // Grows only: the buffer keeps its size, so reading into it costs no zeroing after the
  // first frames.
  if (buffer_.size() < filled_ + n) buffer_.resize(filled_ + n);
}

void FrameReader::Feed(std::span<const uint8_t> bytes) {
  auto room = Prepare(bytes.size());
  std::copy(bytes.begin(), bytes.end(), room.begin());
  Commit(bytes.size());
}

std::span<uint8_t> FrameReader::Prepare(size_t n) {
  Compact(n);
  return {buffer_.data() + filled_, n};
}

void FrameReader::Commit(size_t n) { filled_ = std::min(filled_ + n, buffer_.size()); }

Result<std::optional<FrameView>> FrameReader::NextView() {
  if (buffered() < kHeaderSize) return std::nullopt;
  auto header =
      DecodeHeader(std::span<const uint8_t, kHeaderSize>(buffer_.data() + consumed_, kHeaderSize));
  if (!header) return Fail(std::move(header).error());
  if (buffered() < kHeaderSize + header->payload_size) return std::nullopt;
  FrameView frame{*header, {buffer_.data() + consumed_ + kHeaderSize, header->payload_size}};
  consumed_ += kHeaderSize + header->payload_size;
  return frame;
}

Result<std::optional<Frame>> FrameReader::Next() {
  auto view = NextView();
  if (!view) return Fail(std::move(view).error());
  if (!*view) return std::nullopt;
  return Frame{(*view)->header, {(*view)->payload.begin(), (*view)->payload.end()}};
}

}  // namespace vessel::protocol
