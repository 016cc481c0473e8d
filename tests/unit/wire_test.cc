#include "protocol/wire.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace vessel::protocol {
namespace {

using Bytes = std::vector<uint8_t>;

std::span<const uint8_t, kHeaderSize> HeaderOf(const Bytes& frame) {
  return std::span<const uint8_t, kHeaderSize>(frame.data(), kHeaderSize);
}

std::span<const uint8_t> PayloadOf(const Bytes& frame) {
  return std::span<const uint8_t>(frame).subspan(kHeaderSize);
}

// Decodes and checks the header of an encoded frame.
FrameHeader CheckedHeader(const Bytes& frame, MessageType type, uint32_t request_id) {
  EXPECT_GE(frame.size(), kHeaderSize);
  auto header = DecodeHeader(HeaderOf(frame));
  EXPECT_TRUE(header.has_value()) << header.error().ToString();
  if (!header) return {};
  EXPECT_EQ(header->type, type);
  EXPECT_EQ(header->request_id, request_id);
  EXPECT_EQ(header->payload_size, frame.size() - kHeaderSize);
  return *header;
}

// Little-endian payload builder for hand-made hostile input.
class PayloadBuilder {
 public:
  PayloadBuilder& U8(uint8_t v) {
    bytes_.push_back(v);
    return *this;
  }
  PayloadBuilder& U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  PayloadBuilder& U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  PayloadBuilder& String(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    bytes_.insert(bytes_.end(), s.begin(), s.end());
    return *this;
  }
  // A length prefix followed by `size` filler bytes.
  PayloadBuilder& Filler(uint32_t size) {
    U32(size);
    bytes_.insert(bytes_.end(), size, 'a');
    return *this;
  }
  [[nodiscard]] const Bytes& bytes() const { return bytes_; }

 private:
  Bytes bytes_;
};

Bytes Header(uint32_t payload_size, uint8_t type, uint32_t request_id = 0, uint8_t r0 = 0,
             uint8_t r1 = 0, uint8_t r2 = 0) {
  Bytes b;
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(payload_size >> (8 * i)));
  b.push_back(type);
  b.push_back(r0);
  b.push_back(r1);
  b.push_back(r2);
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(request_id >> (8 * i)));
  return b;
}

template <typename T>
void ExpectMalformed(const Result<T>& result, std::string_view needle) {
  ASSERT_FALSE(result.has_value()) << "expected a decode error mentioning \"" << needle << "\"";
  EXPECT_EQ(result.error().kind(), ErrorKind::kBackend);
  EXPECT_NE(result.error().message().find(needle), std::string::npos) << result.error().message();
}

ExecRequest SampleExec() {
  ExecRequest req;
  req.argv = {"/bin/prog",
              "line one\nline two\n",
              "\xff\xfe\xc0\x80 not utf-8 \x80",
              std::string("nul\0inside", 10),
              "",
              "\t tabs and spaces \r\n"};
  req.env = {"PATH=/usr/bin:/bin", "MULTI=a\nb", std::string("BIN=\xff\x01", 6), "EMPTY="};
  req.cwd = "/tmp/work dir";
  req.timeout_ms = 0xfffffffe;
  req.output_cap = 0x0123456789abcdefULL;
  req.stdin_pipe = true;
  req.window = 0x00012345;
  return req;
}

FileOp SampleFileOp(FileOpKind kind) {
  FileOp op;
  op.kind = kind;
  op.path = "/tmp/some dir/\xff\x80 file\n";
  if (kind == FileOpKind::kRename) op.target = "/tmp/other\tname";
  op.mode = 0750;
  op.flags = kFlagParents | kFlagRecursive;
  op.window = 4096;
  return op;
}

// Round trips.

TEST(WireRoundTrip, Hello) {
  Hello hello{kVersion, "vessel-agent 0.1.0"};
  Bytes frame = EncodeHello(hello);
  CheckedHeader(frame, MessageType::kHello, 0);
  auto decoded = DecodeHello(PayloadOf(frame));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->version, kVersion);
  EXPECT_EQ(decoded->agent_version, "vessel-agent 0.1.0");
}

TEST(WireRoundTrip, HelloAnsweringAResumeCarriesItsRequestId) {
  Bytes frame = EncodeHello(0x0a0b0c0d, {kVersion, "agent"});
  CheckedHeader(frame, MessageType::kHello, 0x0a0b0c0d);
  auto decoded = DecodeHello(PayloadOf(frame));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->agent_version, "agent");
  EXPECT_EQ(EncodeHello({kVersion, "agent"}), EncodeHello(0, {kVersion, "agent"}));
}

TEST(WireRoundTrip, HelloKeepsAForeignVersion) {
  auto decoded = DecodeHello(PayloadOf(EncodeHello({0xdeadbeef, ""})));
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(decoded->version, 0xdeadbeefu);
  EXPECT_EQ(decoded->agent_version, "");
}

TEST(WireRoundTrip, ExecIsBinarySafe) {
  ExecRequest req = SampleExec();
  Bytes frame = EncodeExec(0x01020304, req);
  CheckedHeader(frame, MessageType::kExec, 0x01020304);
  auto decoded = DecodeExec(PayloadOf(frame));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->argv, req.argv);
  EXPECT_EQ(decoded->env, req.env);
  EXPECT_EQ(decoded->cwd, req.cwd);
  EXPECT_EQ(decoded->timeout_ms, req.timeout_ms);
  EXPECT_EQ(decoded->output_cap, req.output_cap);
  EXPECT_TRUE(decoded->stdin_pipe);
  EXPECT_EQ(decoded->window, req.window);
}

TEST(WireRoundTrip, ExecMinimal) {
  ExecRequest req;
  req.argv = {"true"};
  auto decoded = DecodeExec(PayloadOf(EncodeExec(1, req)));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->argv, std::vector<std::string>{"true"});
  EXPECT_TRUE(decoded->env.empty());
  EXPECT_EQ(decoded->cwd, "");
  EXPECT_EQ(decoded->timeout_ms, 0u);
  EXPECT_EQ(decoded->output_cap, 0u);
  EXPECT_FALSE(decoded->stdin_pipe);
  EXPECT_EQ(decoded->window, ExecRequest{}.window);
}

TEST(WireRoundTrip, ExecWindowAtBothEnds) {
  for (uint32_t window : {1u, kMaxWindow}) {
    ExecRequest req;
    req.argv = {"true"};
    req.window = window;
    auto decoded = DecodeExec(PayloadOf(EncodeExec(1, req)));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->window, window);
  }
}

TEST(WireRoundTrip, ExecWithATerminal) {
  ExecRequest req = SampleExec();
  req.terminal = TerminalSize{.rows = 51, .cols = 213};
  auto decoded = DecodeExec(PayloadOf(EncodeExec(1, req)));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->terminal, req.terminal);
  EXPECT_TRUE(decoded->stdin_pipe);
  req.stdin_pipe = false;
  decoded = DecodeExec(PayloadOf(EncodeExec(1, req)));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_FALSE(decoded->stdin_pipe);
  EXPECT_EQ(decoded->terminal, req.terminal);
}

TEST(WireDecode, ATerminalFlagWithoutItsSizeIsTruncatedAndOddSizesAreRefused) {
  ExecRequest req;
  req.argv = {"sh"};
  req.terminal = TerminalSize{.rows = 24, .cols = 80};
  Bytes frame = EncodeExec(1, req);
  auto payload = PayloadOf(frame);
  ExpectMalformed(DecodeExec(payload.first(payload.size() - 4)), "truncated");
  ExpectMalformed(DecodeExec(payload.first(payload.size() - 1)), "truncated");
  for (TerminalSize bad : {TerminalSize{0, 80}, TerminalSize{24, 0},
                           TerminalSize{kMaxTerminalSide + 1, 80}, TerminalSize{24, 0xffff}}) {
    req.terminal = bad;
    ExpectMalformed(DecodeExec(PayloadOf(EncodeExec(1, req))), "terminal size out of range");
    ExpectMalformed(DecodeResize(PayloadOf(EncodeResize(1, bad))), "terminal size out of range");
  }
}

TEST(WireRoundTrip, Resize) {
  for (TerminalSize size : {TerminalSize{1, 1}, TerminalSize{kMaxTerminalSide, kMaxTerminalSide}}) {
    Bytes frame = EncodeResize(9, size);
    CheckedHeader(frame, MessageType::kResize, 9);
    EXPECT_EQ(frame.size(), kHeaderSize + 4);
    auto decoded = DecodeResize(PayloadOf(frame));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(*decoded, size);
  }
  ExpectMalformed(DecodeResize({}), "truncated");
}

TEST(WireRoundTrip, OutputBothStreams) {
  Bytes data = {'o', 'k', '\n', 0x00, 0xff, 0x80, '\r'};
  for (Stream stream : {Stream::kStdout, Stream::kStderr}) {
    Bytes frame = EncodeOutput(7, stream, data);
    CheckedHeader(frame, MessageType::kOutput, 7);
    auto decoded = DecodeOutput(PayloadOf(frame));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->stream, stream);
    EXPECT_EQ(decoded->data, data);
  }
}

TEST(WireRoundTrip, OutputEmptyAndLargestChunk) {
  auto empty = DecodeOutput(PayloadOf(EncodeOutput(1, Stream::kStderr, {})));
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->stream, Stream::kStderr);
  EXPECT_TRUE(empty->data.empty());

  Bytes big(kMaxOutputChunk, 0x5a);
  Bytes frame = EncodeOutput(2, Stream::kStdout, big);
  FrameHeader header = CheckedHeader(frame, MessageType::kOutput, 2);
  EXPECT_EQ(header.payload_size, kMaxPayload);
  auto decoded = DecodeOutput(PayloadOf(frame));
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(decoded->data, big);
}

TEST(WireRoundTrip, ExitedEveryKindAndFlag) {
  for (ExitHow how : {ExitHow::kExited, ExitHow::kSignaled, ExitHow::kTimedOut}) {
    for (int flags = 0; flags < 4; ++flags) {
      for (int32_t code : std::initializer_list<int32_t>{0, 1, 9, 255, -1, INT32_MIN, INT32_MAX}) {
        Exited exited{how, code, (flags & 1) != 0, (flags & 2) != 0};
        Bytes frame = EncodeExited(42, exited);
        CheckedHeader(frame, MessageType::kExited, 42);
        auto decoded = DecodeExited(PayloadOf(frame));
        ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
        EXPECT_EQ(decoded->how, how);
        EXPECT_EQ(decoded->code, code);
        EXPECT_EQ(decoded->stdout_truncated, exited.stdout_truncated);
        EXPECT_EQ(decoded->stderr_truncated, exited.stderr_truncated);
      }
    }
  }
}

TEST(WireRoundTrip, ErrorWithPath) {
  ErrorReply error{2, "/no/such\ndir", "No such file or directory"};
  Bytes frame = EncodeError(9, error);
  CheckedHeader(frame, MessageType::kError, 9);
  auto decoded = DecodeError(PayloadOf(frame));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->errno_value, 2);
  EXPECT_EQ(decoded->path, "/no/such\ndir");
  EXPECT_EQ(decoded->message, "No such file or directory");
}

TEST(WireRoundTrip, ErrorWithoutPathAndNegativeErrno) {
  auto decoded = DecodeError(PayloadOf(EncodeError(3, {-5, "", "odd"})));
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(decoded->errno_value, -5);
  EXPECT_EQ(decoded->path, "");
  EXPECT_EQ(decoded->message, "odd");
}

TEST(WireRoundTrip, ErrorEncoderClipsToTheCaps) {
  ErrorReply error{1, std::string(kMaxPathSize + 10, 'p'), std::string(kMaxMessageSize + 10, 'm')};
  auto decoded = DecodeError(PayloadOf(EncodeError(1, error)));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->path, std::string(kMaxPathSize, 'p'));
  EXPECT_EQ(decoded->message, std::string(kMaxMessageSize, 'm'));
}

TEST(WireRoundTrip, PingPong) {
  Bytes ping = EncodePing(0xabcdef01);
  EXPECT_EQ(ping.size(), kHeaderSize);
  EXPECT_EQ(CheckedHeader(ping, MessageType::kPing, 0xabcdef01).payload_size, 0u);
  Bytes pong = EncodePong(0xabcdef01);
  EXPECT_EQ(pong.size(), kHeaderSize);
  EXPECT_EQ(CheckedHeader(pong, MessageType::kPong, 0xabcdef01).payload_size, 0u);
}

TEST(WireRoundTrip, Started) {
  for (int32_t pid : std::initializer_list<int32_t>{1, 12345, INT32_MAX}) {
    Bytes frame = EncodeStarted(11, {pid});
    CheckedHeader(frame, MessageType::kStarted, 11);
    auto decoded = DecodeStarted(PayloadOf(frame));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->pid, pid);
  }
}

TEST(WireRoundTrip, StdinIsRawBytesAndEmptyClosesIt) {
  Bytes data = {'i', 'n', 0x00, 0xff, '\n'};
  Bytes frame = EncodeStdin(12, data);
  FrameHeader header = CheckedHeader(frame, MessageType::kStdin, 12);
  EXPECT_EQ(header.payload_size, data.size());
  EXPECT_EQ(Bytes(PayloadOf(frame).begin(), PayloadOf(frame).end()), data);

  Bytes close = EncodeStdin(12, {});
  EXPECT_EQ(CheckedHeader(close, MessageType::kStdin, 12).payload_size, 0u);
}

TEST(WireRoundTrip, SignalEveryNumber) {
  for (int32_t signal = 1; signal <= 64; ++signal) {
    Bytes frame = EncodeSignal(13, signal);
    CheckedHeader(frame, MessageType::kSignal, 13);
    auto decoded = DecodeSignal(PayloadOf(frame));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(*decoded, signal);
  }
}

TEST(WireRoundTrip, CreditEveryStream) {
  for (Stream stream :
       {Stream::kStdout, Stream::kStderr, Stream::kStdin, Stream::kFile, Stream::kNet}) {
    for (uint32_t bytes : {0u, 1u, 65536u, kMaxWindow}) {
      Bytes frame = EncodeCredit(14, {stream, bytes});
      CheckedHeader(frame, MessageType::kCredit, 14);
      auto decoded = DecodeCredit(PayloadOf(frame));
      ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
      EXPECT_EQ(decoded->stream, stream);
      EXPECT_EQ(decoded->bytes, bytes);
    }
  }
}

TEST(WireRoundTrip, FileOpEveryKind) {
  for (uint8_t kind = 1; kind <= 7; ++kind) {
    FileOp op = SampleFileOp(static_cast<FileOpKind>(kind));
    Bytes frame = EncodeFileOp(15, op);
    CheckedHeader(frame, MessageType::kFileOp, 15);
    auto decoded = DecodeFileOp(PayloadOf(frame));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->kind, op.kind);
    EXPECT_EQ(decoded->path, op.path);
    EXPECT_EQ(decoded->target, op.target);
    EXPECT_EQ(decoded->mode, op.mode);
    EXPECT_EQ(decoded->flags, op.flags);
    EXPECT_EQ(decoded->window, op.window);
  }
}

TEST(WireRoundTrip, FileOpAtItsLimits) {
  FileOp op;
  op.kind = FileOpKind::kRename;
  op.path = "/" + std::string(kMaxPathSize - 1, 'p');
  op.target = "/" + std::string(kMaxPathSize - 1, 't');
  op.mode = 07777;
  op.flags = 0;
  op.window = kMaxWindow;
  auto decoded = DecodeFileOp(PayloadOf(EncodeFileOp(1, op)));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->path, op.path);
  EXPECT_EQ(decoded->target, op.target);
  EXPECT_EQ(decoded->mode, 07777u);
  EXPECT_EQ(decoded->window, kMaxWindow);

  FileOp smallest;
  smallest.path = "/";
  smallest.mode = 0;
  smallest.window = 1;
  decoded = DecodeFileOp(PayloadOf(EncodeFileOp(1, smallest)));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->kind, FileOpKind::kStat);
  EXPECT_EQ(decoded->path, "/");
  EXPECT_EQ(decoded->mode, 0u);
  EXPECT_EQ(decoded->window, 1u);
}

TEST(WireRoundTrip, FileDataIsRawBytesUpToTheChunkCap) {
  Bytes data = {0x00, 0x01, 0xfe, 0xff};
  Bytes frame = EncodeFileData(16, data);
  CheckedHeader(frame, MessageType::kFileData, 16);
  EXPECT_EQ(Bytes(PayloadOf(frame).begin(), PayloadOf(frame).end()), data);

  EXPECT_EQ(CheckedHeader(EncodeFileData(16, {}), MessageType::kFileData, 16).payload_size, 0u);

  Bytes big(kMaxFileChunk, 0xa5);
  EXPECT_EQ(CheckedHeader(EncodeFileData(16, big), MessageType::kFileData, 16).payload_size,
            kMaxPayload);
}

TEST(WireRoundTrip, FileInfoEveryType) {
  for (FileType type :
       {FileType::kRegular, FileType::kDirectory, FileType::kSymlink, FileType::kOther}) {
    for (const char* name : {"", "entry", ".hidden", "\xff\x80 odd\n"}) {
      FileInfo info{type, 07755, 0xfedcba9876543210ULL, -1234567890123LL, name};
      Bytes frame = EncodeFileInfo(17, info);
      CheckedHeader(frame, MessageType::kFileInfo, 17);
      auto decoded = DecodeFileInfo(PayloadOf(frame));
      ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
      EXPECT_EQ(decoded->type, type);
      EXPECT_EQ(decoded->mode, 07755u);
      EXPECT_EQ(decoded->size, 0xfedcba9876543210ULL);
      EXPECT_EQ(decoded->mtime, -1234567890123LL);
      EXPECT_EQ(decoded->name, name);
    }
  }
}

TEST(WireRoundTrip, FileInfoExtremeTimes) {
  for (int64_t mtime : {INT64_MIN, int64_t{0}, INT64_MAX}) {
    auto decoded =
        DecodeFileInfo(PayloadOf(EncodeFileInfo(1, {FileType::kOther, 0, 0, mtime, ""})));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->mtime, mtime);
  }
}

TEST(WireRoundTrip, DoneIsEmpty) {
  Bytes done = EncodeDone(0x10203040);
  EXPECT_EQ(done.size(), kHeaderSize);
  CheckedHeader(done, MessageType::kDone, 0x10203040);
  EXPECT_TRUE(DecodeEmpty(PayloadOf(done), "done").has_value());
}

TEST(WireRoundTrip, QuiesceIsEmpty) {
  Bytes quiesce = EncodeQuiesce(0x11223344);
  EXPECT_EQ(quiesce.size(), kHeaderSize);
  CheckedHeader(quiesce, MessageType::kQuiesce, 0x11223344);
  EXPECT_TRUE(DecodeEmpty(PayloadOf(quiesce), "quiesce").has_value());
}

TEST(WireRoundTrip, NetOpenAndNetCloseAreEmpty) {
  const uint32_t id = kAgentIdBit | 0x1234;
  Bytes open = EncodeNetOpen(id);
  EXPECT_EQ(open.size(), kHeaderSize);
  CheckedHeader(open, MessageType::kNetOpen, id);
  EXPECT_TRUE(DecodeEmpty(PayloadOf(open), "net open").has_value());
  Bytes close = EncodeNetClose(id);
  EXPECT_EQ(close.size(), kHeaderSize);
  CheckedHeader(close, MessageType::kNetClose, id);
  EXPECT_TRUE(DecodeEmpty(PayloadOf(close), "net close").has_value());
}

TEST(WireRoundTrip, NetDataIsRawBytesUpToThePayloadCapAndEmptyEndsADirection) {
  const uint32_t id = kAgentIdBit | 1;
  Bytes request = {'C', 'O', 'N', 'N', 'E', 'C', 'T', ' ', 0x00, 0xff, '\r', '\n'};
  Bytes frame = EncodeNetData(id, request);
  EXPECT_EQ(CheckedHeader(frame, MessageType::kNetData, id).payload_size, request.size());
  EXPECT_EQ(Bytes(PayloadOf(frame).begin(), PayloadOf(frame).end()), request);

  Bytes largest(kMaxPayload, 0x5a);
  Bytes big = EncodeNetData(id, largest);
  EXPECT_EQ(CheckedHeader(big, MessageType::kNetData, id).payload_size, kMaxPayload);
  EXPECT_EQ(Bytes(PayloadOf(big).begin(), PayloadOf(big).end()), largest);

  Bytes end = EncodeNetData(id, {});
  EXPECT_EQ(CheckedHeader(end, MessageType::kNetData, id).payload_size, 0u);
}

TEST(WireRoundTrip, NetCreditUpToTheNetWindow) {
  for (uint32_t bytes : {0u, 1u, 65536u, kNetWindow}) {
    Bytes frame = EncodeCredit(kAgentIdBit | 2, {Stream::kNet, bytes});
    CheckedHeader(frame, MessageType::kCredit, kAgentIdBit | 2);
    auto decoded = DecodeCredit(PayloadOf(frame));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->stream, Stream::kNet);
    EXPECT_EQ(decoded->bytes, bytes);
  }
}

TEST(WireRoundTrip, ResumeCloneAndParent) {
  Bytes entropy;
  for (size_t i = 0; i < kMaxEntropy; ++i) entropy.push_back(static_cast<uint8_t>(i * 7));
  struct Case {
    bool clone;
    uint64_t wall_clock_ns;
    size_t entropy_size;
  };
  for (const Case& c : {Case{false, 0, 0}, Case{false, UINT64_MAX, 1}, Case{false, 5, kMaxEntropy},
                        Case{true, 1'700'000'000'000'000'000, kMinCloneEntropy}, Case{true, 1, 64},
                        Case{true, UINT64_MAX, kMaxEntropy}}) {
    ResumeRequest request{
        c.clone, c.wall_clock_ns,
        Bytes(entropy.begin(), entropy.begin() + static_cast<std::ptrdiff_t>(c.entropy_size))};
    Bytes frame = EncodeResume(18, request);
    CheckedHeader(frame, MessageType::kResume, 18);
    auto decoded = DecodeResume(PayloadOf(frame));
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->clone, c.clone);
    EXPECT_EQ(decoded->wall_clock_ns, c.wall_clock_ns);
    EXPECT_EQ(decoded->entropy, request.entropy);
  }
}

TEST(WireFormat, HeaderLayoutIsLittleEndian) {
  Bytes frame = EncodePing(0x04030201);
  EXPECT_EQ(frame, (Bytes{0, 0, 0, 0, 6, 0, 0, 0, 1, 2, 3, 4}));
  Bytes hello = EncodeHello({1, "ab"});
  EXPECT_EQ(hello, (Bytes{10, 0, 0, 0, 1, 0, 0, 0, 0,   0,  0, 0,  // header
                          1,  0, 0, 0, 2, 0, 0, 0, 'a', 'b'}));
}

TEST(WireFormat, ExecLayout) {
  ExecRequest req;
  req.argv = {"a"};
  req.timeout_ms = 1;
  req.output_cap = 2;
  req.stdin_pipe = true;
  req.window = 3;
  EXPECT_EQ(EncodeExec(9, req), (Bytes{34, 0, 0, 0, 2,   0, 0, 0, 9, 0, 0, 0,  // header
                                       1,  0, 0, 0,                            // argc
                                       1,  0, 0, 0, 'a',                       // argv[0]
                                       0,  0, 0, 0,                            // envc
                                       0,  0, 0, 0,                            // cwd
                                       1,  0, 0, 0,                            // timeout_ms
                                       2,  0, 0, 0, 0,   0, 0, 0,              // output_cap
                                       1,                                      // flags
                                       3,  0, 0, 0}));                         // window
}

TEST(WireFormat, StreamingLayouts) {
  EXPECT_EQ(EncodeStarted(1, {0x01020304}),
            (Bytes{4, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 4, 3, 2, 1}));
  EXPECT_EQ(EncodeStdin(3, Bytes{'a', 'b'}), (Bytes{2, 0, 0, 0, 9, 0, 0, 0, 3, 0, 0, 0, 'a', 'b'}));
  EXPECT_EQ(EncodeSignal(2, 15), (Bytes{4, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0, 0, 15, 0, 0, 0}));
  EXPECT_EQ(EncodeCredit(5, {Stream::kStderr, 0x01020304}),
            (Bytes{5, 0, 0, 0, 11, 0, 0, 0, 5, 0, 0, 0, 2, 4, 3, 2, 1}));
  EXPECT_EQ(EncodeFileData(3, Bytes{'a', 'b'}),
            (Bytes{2, 0, 0, 0, 13, 0, 0, 0, 3, 0, 0, 0, 'a', 'b'}));
  EXPECT_EQ(EncodeDone(4), (Bytes{0, 0, 0, 0, 15, 0, 0, 0, 4, 0, 0, 0}));
}

TEST(WireFormat, FileOpLayout) {
  FileOp op{FileOpKind::kRename, "/a", "/b", 0644, kFlagParents, 0x10000};
  EXPECT_EQ(EncodeFileOp(6, op), (Bytes{22,   0,    0, 0, 12,  0,   0, 0, 6, 0, 0, 0,  // header
                                        5,                                             // kind
                                        2,    0,    0, 0, '/', 'a',                    // path
                                        2,    0,    0, 0, '/', 'b',                    // target
                                        0xa4, 0x01, 0, 0,                              // mode 0644
                                        1,                                             // flags
                                        0,    0,    1, 0}));                           // window
}

TEST(WireFormat, QuiesceAndResumeLayouts) {
  EXPECT_EQ(EncodeQuiesce(3), (Bytes{0, 0, 0, 0, 16, 0, 0, 0, 3, 0, 0, 0}));
  EXPECT_EQ(EncodeResume(4, {true, 0x0102030405060708ULL, Bytes{0xaa, 0xbb}}),
            (Bytes{15, 0, 0, 0, 17,   0,   0, 0, 4, 0, 0, 0,  // header
                   1,                                         // flags: clone
                   8,  7, 6, 5, 4,    3,   2, 1,              // wall clock, ns
                   2,  0, 0, 0, 0xaa, 0xbb}));                // entropy
  EXPECT_EQ(EncodeHello(5, {3, ""}),
            (Bytes{8, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(WireFormat, NetLayouts) {
  EXPECT_EQ(EncodeNetOpen(kAgentIdBit | 1), (Bytes{0, 0, 0, 0, 19, 0, 0, 0, 1, 0, 0, 0x80}));
  EXPECT_EQ(EncodeNetData(kAgentIdBit | 1, Bytes{'a', 'b'}),
            (Bytes{2, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0x80, 'a', 'b'}));
  EXPECT_EQ(EncodeNetData(kAgentIdBit | 1, {}), (Bytes{0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0x80}));
  EXPECT_EQ(EncodeCredit(kAgentIdBit | 1, {Stream::kNet, 0x00040000}),
            (Bytes{5, 0, 0, 0, 11, 0, 0, 0, 1, 0, 0, 0x80, 5, 0, 0, 4, 0}));
  EXPECT_EQ(EncodeNetClose(kAgentIdBit | 1), (Bytes{0, 0, 0, 0, 21, 0, 0, 0, 1, 0, 0, 0x80}));
}

TEST(WireFormat, FileInfoLayout) {
  FileInfo info{FileType::kDirectory, 0755, 0x0102030405060708ULL, -1, "x"};
  EXPECT_EQ(EncodeFileInfo(7, info),
            (Bytes{26,   0,    0,    0,    14,   0,    0,    0,    7, 0, 0, 0,  // header
                   2,                                                           // type
                   0xed, 0x01, 0,    0,                                         // mode 0755
                   8,    7,    6,    5,    4,    3,    2,    1,                 // size
                   0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,              // mtime -1
                   1,    0,    0,    0,    'x'}));                              // name
}

// Headers.

TEST(WireHeader, AcceptsEveryKnownTypeAndTheLargestPayload) {
  for (uint8_t type = 1; type <= kLastMessageType; ++type) {
    auto h = DecodeHeader(HeaderOf(Header(kMaxPayload, type, 77)));
    ASSERT_TRUE(h.has_value()) << h.error().ToString();
    EXPECT_EQ(static_cast<uint8_t>(h->type), type);
    EXPECT_EQ(h->payload_size, kMaxPayload);
    EXPECT_EQ(h->request_id, 77u);
  }
}

TEST(WireHeader, RejectsOversizePayload) {
  ExpectMalformed(DecodeHeader(HeaderOf(Header(0xffffffff, 1))), "exceeds the cap");
  ExpectMalformed(DecodeHeader(HeaderOf(Header(kMaxPayload + 1, 3))), "exceeds the cap");
}

TEST(WireHeader, TheNetMessagesAreTheLastKnownTypes) {
  static_assert(kLastMessageType == static_cast<uint8_t>(MessageType::kNetClose));
  for (MessageType type : {MessageType::kNetOpen, MessageType::kNetData, MessageType::kNetClose}) {
    auto h = DecodeHeader(HeaderOf(Header(0, static_cast<uint8_t>(type), kAgentIdBit | 3)));
    ASSERT_TRUE(h.has_value()) << h.error().ToString();
    EXPECT_EQ(h->type, type);
    EXPECT_EQ(h->request_id, kAgentIdBit | 3);
  }
  ExpectMalformed(DecodeHeader(HeaderOf(Header(0, 22))), "unknown frame type 22");
}

TEST(WireHeader, RejectsUnknownTypes) {
  for (uint8_t type : std::initializer_list<uint8_t>{0, kLastMessageType + 1, 22, 23, 128, 255}) {
    ExpectMalformed(DecodeHeader(HeaderOf(Header(0, type))), "unknown frame type");
  }
}

TEST(WireHeader, RejectsNonZeroReservedBytes) {
  ExpectMalformed(DecodeHeader(HeaderOf(Header(0, 6, 0, 1, 0, 0))), "reserved");
  ExpectMalformed(DecodeHeader(HeaderOf(Header(0, 6, 0, 0, 1, 0))), "reserved");
  ExpectMalformed(DecodeHeader(HeaderOf(Header(0, 6, 0, 0, 0, 0x80))), "reserved");
}

// Hostile payloads, decoder by decoder.

TEST(WireDecode, EveryDecoderRejectsAnEmptyPayload) {
  std::span<const uint8_t> empty;
  ExpectMalformed(DecodeHello(empty), "malformed hello");
  ExpectMalformed(DecodeExec(empty), "malformed exec request");
  ExpectMalformed(DecodeOutput(empty), "malformed output");
  ExpectMalformed(DecodeExited(empty), "malformed exit status");
  ExpectMalformed(DecodeError(empty), "malformed error reply");
  ExpectMalformed(DecodeStarted(empty), "malformed started");
  ExpectMalformed(DecodeSignal(empty), "malformed signal");
  ExpectMalformed(DecodeCredit(empty), "malformed credit");
  ExpectMalformed(DecodeFileOp(empty), "malformed file operation");
  ExpectMalformed(DecodeFileInfo(empty), "malformed file info");
  ExpectMalformed(DecodeResume(empty), "malformed resume");
  EXPECT_TRUE(DecodeEmpty(empty, "ping").has_value());
}

template <typename Decode>
void ExpectEveryPrefixRejected(const Bytes& frame, Decode decode) {
  auto original = PayloadOf(frame);
  Bytes payload(original.begin(), original.end());
  ASSERT_TRUE(decode(std::span<const uint8_t>(payload)).has_value());
  for (size_t len = 0; len < payload.size(); ++len) {
    auto result = decode(std::span<const uint8_t>(payload.data(), len));
    EXPECT_FALSE(result.has_value())
        << "a prefix of " << len << " of " << payload.size() << " bytes was accepted";
    if (!result) {
      EXPECT_EQ(result.error().kind(), ErrorKind::kBackend);
    }
  }
}

template <typename Decode>
void ExpectTrailingByteRejected(const Bytes& frame, Decode decode) {
  auto original = PayloadOf(frame);
  Bytes payload(original.begin(), original.end());
  payload.push_back(0);
  ExpectMalformed(decode(std::span<const uint8_t>(payload)), "trailing bytes");
}

TEST(WireDecode, TruncatedPayloadsAreRejected) {
  ExpectEveryPrefixRejected(EncodeHello({kVersion, "agent"}),
                            [](auto p) { return DecodeHello(p); });
  ExpectEveryPrefixRejected(EncodeExec(1, SampleExec()), [](auto p) { return DecodeExec(p); });
  ExpectEveryPrefixRejected(EncodeExited(1, {ExitHow::kSignaled, 9, true, false}),
                            [](auto p) { return DecodeExited(p); });
  ExpectEveryPrefixRejected(EncodeError(1, {2, "/x", "gone"}),
                            [](auto p) { return DecodeError(p); });
  ExpectEveryPrefixRejected(EncodeStarted(1, {77}), [](auto p) { return DecodeStarted(p); });
  ExpectEveryPrefixRejected(EncodeSignal(1, 9), [](auto p) { return DecodeSignal(p); });
  ExpectEveryPrefixRejected(EncodeCredit(1, {Stream::kStdin, 4096}),
                            [](auto p) { return DecodeCredit(p); });
  for (uint8_t kind = 1; kind <= 7; ++kind) {
    ExpectEveryPrefixRejected(EncodeFileOp(1, SampleFileOp(static_cast<FileOpKind>(kind))),
                              [](auto p) { return DecodeFileOp(p); });
  }
  ExpectEveryPrefixRejected(EncodeFileInfo(1, {FileType::kRegular, 0644, 10, 20, "name"}),
                            [](auto p) { return DecodeFileInfo(p); });
  ExpectEveryPrefixRejected(EncodeFileInfo(1, {FileType::kDirectory, 0755, 0, 0, ""}),
                            [](auto p) { return DecodeFileInfo(p); });
  ExpectEveryPrefixRejected(EncodeResume(1, {true, 99, Bytes(kMinCloneEntropy, 1)}),
                            [](auto p) { return DecodeResume(p); });
  ExpectEveryPrefixRejected(EncodeResume(1, {false, 99, {}}),
                            [](auto p) { return DecodeResume(p); });
  // Output data runs to the end of the frame, so only a missing stream byte is detectable.
  ExpectMalformed(DecodeOutput({}), "truncated");
}

TEST(WireDecode, ExecWithoutItsFlagsOrWindowIsTruncated) {
  // The layout before flags and window were added must not decode as a default request.
  ExecRequest req;
  req.argv = {"true"};
  Bytes frame = EncodeExec(1, req);
  auto payload = PayloadOf(frame);
  ExpectMalformed(DecodeExec(payload.first(payload.size() - 5)), "truncated");
  ExpectMalformed(DecodeExec(payload.first(payload.size() - 4)), "truncated");
}

TEST(WireDecode, TrailingBytesAreRejected) {
  ExpectTrailingByteRejected(EncodeHello({kVersion, "agent"}),
                             [](auto p) { return DecodeHello(p); });
  ExpectTrailingByteRejected(EncodeExec(1, SampleExec()), [](auto p) { return DecodeExec(p); });
  ExpectTrailingByteRejected(EncodeExited(1, {ExitHow::kExited, 0, false, false}),
                             [](auto p) { return DecodeExited(p); });
  ExpectTrailingByteRejected(EncodeError(1, {0, "", "m"}), [](auto p) { return DecodeError(p); });
  ExpectTrailingByteRejected(EncodeStarted(1, {1}), [](auto p) { return DecodeStarted(p); });
  ExpectTrailingByteRejected(EncodeSignal(1, 15), [](auto p) { return DecodeSignal(p); });
  ExpectTrailingByteRejected(EncodeCredit(1, {Stream::kFile, 1}),
                             [](auto p) { return DecodeCredit(p); });
  ExpectTrailingByteRejected(EncodeFileOp(1, SampleFileOp(FileOpKind::kRename)),
                             [](auto p) { return DecodeFileOp(p); });
  ExpectTrailingByteRejected(EncodeFileInfo(1, {FileType::kSymlink, 0777, 3, 4, "l"}),
                             [](auto p) { return DecodeFileInfo(p); });
  ExpectTrailingByteRejected(EncodeResume(1, {true, 1, Bytes(kMaxEntropy, 2)}),
                             [](auto p) { return DecodeResume(p); });
  ExecRequest terminal = SampleExec();
  terminal.terminal = TerminalSize{};
  ExpectTrailingByteRejected(EncodeExec(1, terminal), [](auto p) { return DecodeExec(p); });
  ExpectTrailingByteRejected(EncodeResize(1, {24, 80}), [](auto p) { return DecodeResize(p); });
}

TEST(WireDecode, EmptyPayloadsRejectAnyByte) {
  Bytes one = {0};
  ExpectMalformed(DecodeEmpty(one, "done"), "malformed done: 1 unexpected bytes");
  Bytes many(kHeaderSize, 0);
  ExpectMalformed(DecodeEmpty(many, "pong"), "malformed pong: 12 unexpected bytes");
  EXPECT_TRUE(DecodeEmpty(PayloadOf(EncodePing(1)), "ping").has_value());
  EXPECT_TRUE(DecodeEmpty(PayloadOf(EncodePong(1)), "pong").has_value());
  // A NetOpen or NetClose carrying bytes, as a hostile peer would frame it.
  for (uint8_t type : {static_cast<uint8_t>(MessageType::kNetOpen),
                       static_cast<uint8_t>(MessageType::kNetClose)}) {
    Bytes frame = Header(1, type, kAgentIdBit | 4);
    frame.push_back('x');
    ASSERT_TRUE(DecodeHeader(HeaderOf(frame)).has_value());
    ExpectMalformed(DecodeEmpty(PayloadOf(frame), "net close"),
                    "malformed net close: 1 unexpected bytes");
  }
}

TEST(WireDecode, ExecRejectsTooManyArgs) {
  PayloadBuilder b;
  b.U32(kMaxArgs + 1);
  for (uint32_t i = 0; i < kMaxArgs + 1; ++i) b.String("a");
  b.U32(0).String("").U32(0).U64(0).U8(0).U32(1);
  ExpectMalformed(DecodeExec(b.bytes()), "argv count 4097 exceeds the cap");

  PayloadBuilder huge;
  huge.U32(0xffffffff);
  ExpectMalformed(DecodeExec(huge.bytes()), "argv count");
}

TEST(WireDecode, ExecRejectsTooManyEnvEntries) {
  PayloadBuilder b;
  b.U32(1).String("prog").U32(kMaxEnv + 1);
  for (uint32_t i = 0; i < kMaxEnv + 1; ++i) b.String("A=b");
  b.String("").U32(0).U64(0).U8(0).U32(1);
  ExpectMalformed(DecodeExec(b.bytes()), "env count 4097 exceeds the cap");
}

TEST(WireDecode, ExecAcceptsCountsAtTheCaps) {
  PayloadBuilder b;
  b.U32(kMaxArgs);
  for (uint32_t i = 0; i < kMaxArgs; ++i) b.String("a");
  b.U32(kMaxEnv);
  for (uint32_t i = 0; i < kMaxEnv; ++i) b.String("A=b");
  b.String("/").U32(0).U64(0).U8(0).U32(1);
  ASSERT_LE(b.bytes().size(), kMaxPayload);
  auto decoded = DecodeExec(b.bytes());
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->argv.size(), kMaxArgs);
  EXPECT_EQ(decoded->env.size(), kMaxEnv);
}

TEST(WireDecode, ExecRejectsStringsOverTheirCaps) {
  {
    PayloadBuilder b;
    b.U32(1).Filler(kMaxStringSize + 1).U32(0).String("").U32(0).U64(0).U8(0).U32(1);
    ExpectMalformed(DecodeExec(b.bytes()), "argument of 131073 bytes exceeds the cap");
  }
  {
    PayloadBuilder b;
    b.U32(1).String("prog").U32(1).Filler(kMaxStringSize + 1).String("").U32(0).U64(0).U8(0).U32(1);
    ExpectMalformed(DecodeExec(b.bytes()), "env entry of 131073 bytes exceeds the cap");
  }
  {
    PayloadBuilder b;
    b.U32(1).String("prog").U32(0).Filler(kMaxPathSize + 1).U32(0).U64(0).U8(0).U32(1);
    ExpectMalformed(DecodeExec(b.bytes()), "cwd of 4097 bytes exceeds the cap");
  }
  {
    // A length that claims far more than the payload holds is rejected, not allocated.
    PayloadBuilder b;
    b.U32(1).U32(kMaxStringSize).U8('a');
    ExpectMalformed(DecodeExec(b.bytes()), "truncated");
  }
}

TEST(WireDecode, ExecRejectsEmptyArgv) {
  ExecRequest req;
  req.env = {"A=b"};
  ExpectMalformed(DecodeExec(PayloadOf(EncodeExec(1, req))), "empty argv");
}

TEST(WireDecode, HelloRejectsOversizeAgentVersion) {
  PayloadBuilder b;
  b.U32(kVersion).Filler(kMaxMessageSize + 1);
  ExpectMalformed(DecodeHello(b.bytes()), "agent version of 4097 bytes exceeds the cap");
  PayloadBuilder at_cap;
  at_cap.U32(kVersion).Filler(kMaxMessageSize);
  EXPECT_TRUE(DecodeHello(at_cap.bytes()).has_value());
}

TEST(WireDecode, ErrorRejectsOversizePathAndMessage) {
  PayloadBuilder path;
  path.U32(0).Filler(kMaxPathSize + 1).String("m");
  ExpectMalformed(DecodeError(path.bytes()), "path of 4097 bytes exceeds the cap");
  PayloadBuilder message;
  message.U32(0).String("/p").Filler(kMaxMessageSize + 1);
  ExpectMalformed(DecodeError(message.bytes()), "message of 4097 bytes exceeds the cap");
}

TEST(WireDecode, OutputRejectsUnknownStreams) {
  for (uint8_t stream : std::initializer_list<uint8_t>{0, 3, 255}) {
    PayloadBuilder b;
    b.U8(stream).U8('x');
    ExpectMalformed(DecodeOutput(b.bytes()), "unknown stream");
  }
}

TEST(WireDecode, ExitedRejectsUnknownKinds) {
  for (uint8_t how : std::initializer_list<uint8_t>{3, 4, 255}) {
    PayloadBuilder b;
    b.U8(how).U32(0).U8(0);
    ExpectMalformed(DecodeExited(b.bytes()), "unknown kind");
  }
}

TEST(WireDecode, ExitedRejectsUnknownFlags) {
  for (uint8_t flags : std::initializer_list<uint8_t>{4, 8, 0x80, 0xff}) {
    PayloadBuilder b;
    b.U8(0).U32(0).U8(flags);
    ExpectMalformed(DecodeExited(b.bytes()), "unknown flags");
  }
}

TEST(WireDecode, ExecRejectsUnknownFlags) {
  for (uint8_t flags : std::initializer_list<uint8_t>{4, 5, 0x80, 0xfc}) {
    PayloadBuilder b;
    b.U32(1).String("true").U32(0).String("").U32(0).U64(0).U8(flags).U32(1);
    ExpectMalformed(DecodeExec(b.bytes()), "unknown flags");
  }
}

TEST(WireDecode, ExecRejectsWindowOutOfRange) {
  for (uint32_t window : {0u, kMaxWindow + 1, 0xffffffffu}) {
    ExecRequest req;
    req.argv = {"true"};
    req.window = window;
    ExpectMalformed(DecodeExec(PayloadOf(EncodeExec(1, req))), "window out of range");
  }
}

TEST(WireDecode, OutputRejectsStdinFileAndNetStreams) {
  for (Stream stream : {Stream::kStdin, Stream::kFile, Stream::kNet}) {
    ExpectMalformed(DecodeOutput(PayloadOf(EncodeOutput(1, stream, Bytes{'x'}))), "unknown stream");
  }
}

TEST(WireDecode, StartedRejectsPidsThatAreNotPositive) {
  for (int32_t pid : std::initializer_list<int32_t>{0, -1, INT32_MIN}) {
    ExpectMalformed(DecodeStarted(PayloadOf(EncodeStarted(1, {pid}))), "pid out of range");
  }
}

TEST(WireDecode, SignalRejectsNumbersOutsideOneTo64) {
  for (int32_t signal : std::initializer_list<int32_t>{0, 65, -1, -9, INT32_MIN, INT32_MAX}) {
    ExpectMalformed(DecodeSignal(PayloadOf(EncodeSignal(1, signal))), "is not a signal");
  }
}

TEST(WireDecode, CreditRejectsUnknownStreams) {
  for (uint8_t stream : std::initializer_list<uint8_t>{0, 6, 255}) {
    PayloadBuilder b;
    b.U8(stream).U32(1);
    ExpectMalformed(DecodeCredit(b.bytes()), "unknown stream");
  }
}

TEST(WireDecode, CreditRejectsMoreThanAWindow) {
  for (uint32_t bytes : {kMaxWindow + 1, 0xffffffffu}) {
    ExpectMalformed(DecodeCredit(PayloadOf(EncodeCredit(1, {Stream::kStdout, bytes}))),
                    "more than a window");
  }
}

TEST(WireDecode, FileOpRejectsUnknownKinds) {
  for (uint8_t kind : std::initializer_list<uint8_t>{0, 8, 255}) {
    FileOp op = SampleFileOp(FileOpKind::kStat);
    op.kind = static_cast<FileOpKind>(kind);
    ExpectMalformed(DecodeFileOp(PayloadOf(EncodeFileOp(1, op))), "unknown kind");
  }
}

TEST(WireDecode, FileOpRejectsPathsThatAreNotAbsolute) {
  const std::string bad_paths[] = {
      "", "relative", "./x", "~/x", std::string("/a\0b", 4), std::string("/\0", 2)};
  for (uint8_t kind = 1; kind <= 7; ++kind) {
    for (const auto& path : bad_paths) {
      FileOp op = SampleFileOp(static_cast<FileOpKind>(kind));
      op.path = path;
      ExpectMalformed(DecodeFileOp(PayloadOf(EncodeFileOp(1, op))), "path is not absolute");
    }
  }
}

TEST(WireDecode, FileOpRejectsARenameTargetThatIsNotAbsolute) {
  for (const std::string& target :
       {std::string(), std::string("b"), std::string("b/"), std::string("/b\0", 3)}) {
    FileOp op = SampleFileOp(FileOpKind::kRename);
    op.target = target;
    ExpectMalformed(DecodeFileOp(PayloadOf(EncodeFileOp(1, op))), "target is not absolute");
  }
}

TEST(WireDecode, FileOpRejectsOversizePathAndTarget) {
  FileOp op = SampleFileOp(FileOpKind::kRename);
  op.path = "/" + std::string(kMaxPathSize, 'p');
  ExpectMalformed(DecodeFileOp(PayloadOf(EncodeFileOp(1, op))),
                  "path of 4097 bytes exceeds the cap");
  op = SampleFileOp(FileOpKind::kRename);
  op.target = "/" + std::string(kMaxPathSize, 't');
  ExpectMalformed(DecodeFileOp(PayloadOf(EncodeFileOp(1, op))),
                  "target of 4097 bytes exceeds the cap");
}

TEST(WireDecode, FileOpRejectsModesBeyondThePermissionBits) {
  for (uint32_t mode : {010000u, 0100644u, 0xffffffffu}) {
    FileOp op = SampleFileOp(FileOpKind::kWriteFile);
    op.mode = mode;
    ExpectMalformed(DecodeFileOp(PayloadOf(EncodeFileOp(1, op))), "mode out of range");
  }
}

TEST(WireDecode, FileOpRejectsUnknownFlags) {
  for (uint8_t flags : std::initializer_list<uint8_t>{4, 7, 0x80, 0xff}) {
    FileOp op = SampleFileOp(FileOpKind::kMakeDir);
    op.flags = flags;
    ExpectMalformed(DecodeFileOp(PayloadOf(EncodeFileOp(1, op))), "unknown flags");
  }
}

TEST(WireDecode, FileOpRejectsWindowOutOfRange) {
  for (uint32_t window : {0u, kMaxWindow + 1, 0xffffffffu}) {
    FileOp op = SampleFileOp(FileOpKind::kReadFile);
    op.window = window;
    ExpectMalformed(DecodeFileOp(PayloadOf(EncodeFileOp(1, op))), "window out of range");
  }
}

TEST(WireDecode, FileInfoRejectsUnknownTypes) {
  for (uint8_t type : std::initializer_list<uint8_t>{0, 5, 255}) {
    FileInfo info{static_cast<FileType>(type), 0644, 0, 0, ""};
    ExpectMalformed(DecodeFileInfo(PayloadOf(EncodeFileInfo(1, info))), "unknown type");
  }
}

TEST(WireDecode, FileInfoRejectsModesBeyondThePermissionBits) {
  for (uint32_t mode : {010000u, 0040755u, 0xffffffffu}) {
    FileInfo info{FileType::kDirectory, mode, 0, 0, ""};
    ExpectMalformed(DecodeFileInfo(PayloadOf(EncodeFileInfo(1, info))), "mode out of range");
  }
}

TEST(WireDecode, FileInfoRejectsNamesWithASlashOrNul) {
  for (const std::string& name : {std::string("/"), std::string("a/b"), std::string("../x"),
                                  std::string("a\0b", 3), std::string(1, '\0')}) {
    FileInfo info{FileType::kRegular, 0644, 0, 0, name};
    ExpectMalformed(DecodeFileInfo(PayloadOf(EncodeFileInfo(1, info))), "name contains");
  }
}

TEST(WireDecode, ResumeRejectsUnknownFlags) {
  for (uint8_t flags : std::initializer_list<uint8_t>{2, 3, 0x80, 0xff}) {
    PayloadBuilder b;
    b.U8(flags).U64(1).Filler(kMinCloneEntropy);
    ExpectMalformed(DecodeResume(b.bytes()), "malformed resume: unknown flags");
  }
}

TEST(WireDecode, ResumeRejectsEntropyOverTheCap) {
  for (uint8_t flags : std::initializer_list<uint8_t>{0, kResumeClone}) {
    PayloadBuilder b;
    b.U8(flags).U64(1).Filler(kMaxEntropy + 1);
    ExpectMalformed(DecodeResume(b.bytes()), "entropy of 513 bytes exceeds the cap of 512");
  }
  // A length that claims 4 GiB is rejected before anything is allocated.
  PayloadBuilder huge;
  huge.U8(kResumeClone).U64(1).U32(0xffffffff);
  ExpectMalformed(DecodeResume(huge.bytes()), "exceeds the cap");
  // A length within the cap that the payload does not hold.
  PayloadBuilder short_entropy;
  short_entropy.U8(kResumeClone).U64(1).U32(64).U8(1);
  ExpectMalformed(DecodeResume(short_entropy.bytes()), "entropy of 64 bytes is truncated");
}

TEST(WireDecode, ResumeRejectsACloneWithTooLittleEntropy) {
  for (uint32_t size : {0u, 1u, kMinCloneEntropy - 1}) {
    ExpectMalformed(DecodeResume(PayloadOf(EncodeResume(1, {true, 1, Bytes(size, 3)}))),
                    "a clone needs at least 32 bytes of entropy");
    // The parent's own VM needs none.
    EXPECT_TRUE(DecodeResume(PayloadOf(EncodeResume(1, {false, 1, Bytes(size, 3)}))));
  }
}

TEST(WireDecode, FileInfoRejectsOversizeName) {
  FileInfo info{FileType::kRegular, 0644, 0, 0, std::string(kMaxPathSize + 1, 'n')};
  ExpectMalformed(DecodeFileInfo(PayloadOf(EncodeFileInfo(1, info))),
                  "name of 4097 bytes exceeds the cap");
}

// FrameReader.

Bytes Concat(const std::vector<Bytes>& frames) {
  Bytes all;
  for (const auto& f : frames) all.insert(all.end(), f.begin(), f.end());
  return all;
}

std::vector<Bytes> SampleFrames() {
  Bytes data = {'h', 'i', 0, 0xff};
  return {EncodeHello({kVersion, "agent"}),
          EncodeExec(1, SampleExec()),
          EncodeOutput(1, Stream::kStdout, data),
          EncodePing(2),
          EncodeOutput(1, Stream::kStderr, {}),
          EncodeExited(1, {ExitHow::kExited, 3, false, true}),
          EncodeError(4, {2, "/p", "m"}),
          EncodePong(2),
          EncodeStarted(5, {42}),
          EncodeStdin(5, data),
          EncodeStdin(5, {}),
          EncodeSignal(5, 2),
          EncodeCredit(5, {Stream::kStdout, 1}),
          EncodeFileOp(6, SampleFileOp(FileOpKind::kRename)),
          EncodeFileInfo(6, {FileType::kRegular, 0644, 4, 5, "f"}),
          EncodeFileData(6, data),
          EncodeFileData(6, {}),
          EncodeDone(6),
          EncodeQuiesce(7),
          EncodeDone(7),
          EncodeResume(8, {true, 12345, Bytes(kMinCloneEntropy, 0x5a)}),
          EncodeHello(8, {kVersion, "agent"})};
}

// Takes every complete frame out of `reader`, re-encoding each as header + payload.
std::vector<Bytes> Drain(FrameReader& reader) {
  std::vector<Bytes> out;
  for (;;) {
    auto next = reader.Next();
    EXPECT_TRUE(next.has_value()) << next.error().ToString();
    if (!next || !*next) return out;
    const Frame& f = **next;
    EXPECT_EQ(f.header.payload_size, f.payload.size());
    Bytes bytes =
        Header(f.header.payload_size, static_cast<uint8_t>(f.header.type), f.header.request_id);
    bytes.insert(bytes.end(), f.payload.begin(), f.payload.end());
    out.push_back(std::move(bytes));
  }
}

TEST(FrameReaderTest, EmptyReaderHasNothing) {
  FrameReader reader;
  auto next = reader.Next();
  ASSERT_TRUE(next.has_value());
  EXPECT_FALSE(next->has_value());
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(FrameReaderTest, SeveralFramesInOneFeed) {
  std::vector<Bytes> frames = SampleFrames();
  FrameReader reader;
  reader.Feed(Concat(frames));
  EXPECT_EQ(Drain(reader), frames);
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(FrameReaderTest, ReadingIntoPreparedRoomIsFeeding) {
  std::vector<Bytes> frames = SampleFrames();
  Bytes all = Concat(frames);
  for (size_t chunk : {size_t{1}, size_t{5}, size_t{64}, all.size()}) {
    FrameReader reader;
    std::vector<Bytes> out;
    for (size_t at = 0; at < all.size(); at += chunk) {
      size_t n = std::min(chunk, all.size() - at);
      auto room = reader.Prepare(chunk + 100);  // more room than a read() fills
      ASSERT_EQ(room.size(), chunk + 100);
      std::copy_n(all.begin() + static_cast<std::ptrdiff_t>(at), n, room.begin());
      reader.Commit(n);
      auto drained = Drain(reader);
      out.insert(out.end(), drained.begin(), drained.end());
    }
    EXPECT_EQ(out, frames) << "chunk " << chunk;
    EXPECT_EQ(reader.buffered(), 0u);
  }
}

TEST(FrameReaderTest, AViewIsTheFrameInPlace) {
  Bytes data = {1, 2, 3};
  Bytes stream = EncodeFileData(9, data);
  Bytes second = EncodePing(10);
  stream.insert(stream.end(), second.begin(), second.end());
  FrameReader reader;
  reader.Feed(stream);
  auto view = reader.NextView();
  ASSERT_TRUE(view && *view);
  EXPECT_EQ((*view)->header.type, MessageType::kFileData);
  EXPECT_EQ((*view)->header.request_id, 9u);
  EXPECT_EQ(Bytes((*view)->payload.begin(), (*view)->payload.end()), data);
  auto ping = reader.NextView();
  ASSERT_TRUE(ping && *ping);
  EXPECT_EQ((*ping)->header.type, MessageType::kPing);
  EXPECT_TRUE((*ping)->payload.empty());
  auto none = reader.NextView();
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);
}

TEST(FrameReaderTest, AFileDataFrameFilledInPlaceIsTheEncodedOne) {
  Bytes data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  for (size_t n : {size_t{0}, size_t{1}, size_t{999}, size_t{1000}}) {
    Bytes frame = FileDataFrame(3, 1000);
    ASSERT_EQ(frame.size(), kHeaderSize + 1000);
    std::copy_n(data.begin(), n, frame.begin() + kHeaderSize);
    TrimFileData(frame, n);
    EXPECT_EQ(frame, EncodeFileData(3, std::span<const uint8_t>(data).first(n))) << n;
  }
  // Room is capped at the largest chunk a frame may carry.
  EXPECT_EQ(FileDataFrame(3, kMaxFileChunk + 1).size(), kHeaderSize + kMaxFileChunk);
}

TEST(FrameReaderTest, SplitAtEveryByteBoundaryReassembles) {
  std::vector<Bytes> frames = SampleFrames();
  Bytes stream = Concat(frames);
  for (size_t split = 0; split <= stream.size(); ++split) {
    FrameReader reader;
    std::vector<Bytes> got;
    reader.Feed(std::span<const uint8_t>(stream).first(split));
    for (auto& f : Drain(reader)) got.push_back(std::move(f));
    reader.Feed(std::span<const uint8_t>(stream).subspan(split));
    for (auto& f : Drain(reader)) got.push_back(std::move(f));
    ASSERT_EQ(got, frames) << "split at " << split;
    ASSERT_EQ(reader.buffered(), 0u);
  }
}

TEST(FrameReaderTest, OneByteAtATime) {
  std::vector<Bytes> frames = SampleFrames();
  Bytes stream = Concat(frames);
  FrameReader reader;
  std::vector<Bytes> got;
  for (uint8_t byte : stream) {
    reader.Feed(std::span<const uint8_t>(&byte, 1));
    for (auto& f : Drain(reader)) got.push_back(std::move(f));
  }
  EXPECT_EQ(got, frames);
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(FrameReaderTest, PartialFrameIsBuffered) {
  Bytes frame = EncodeHello({kVersion, "agent"});
  FrameReader reader;
  reader.Feed(std::span<const uint8_t>(frame).first(5));
  auto next = reader.Next();
  ASSERT_TRUE(next.has_value());
  EXPECT_FALSE(next->has_value());
  EXPECT_EQ(reader.buffered(), 5u);

  reader.Feed(std::span<const uint8_t>(frame).subspan(5, frame.size() - 6));
  next = reader.Next();
  ASSERT_TRUE(next.has_value());
  EXPECT_FALSE(next->has_value());
  EXPECT_EQ(reader.buffered(), frame.size() - 1);

  reader.Feed(std::span<const uint8_t>(frame).last(1));
  next = reader.Next();
  ASSERT_TRUE(next.has_value());
  ASSERT_TRUE(next->has_value());
  EXPECT_EQ((*next)->header.type, MessageType::kHello);
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(FrameReaderTest, MalformedHeaderIsReportedAndSticks) {
  FrameReader reader;
  reader.Feed(EncodePing(1));
  reader.Feed(Header(0, 99));
  auto first = reader.Next();
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(first->has_value());
  EXPECT_EQ((*first)->header.type, MessageType::kPing);
  ExpectMalformed(reader.Next(), "unknown frame type 99");
  // The stream is unusable afterwards: later bytes do not resynchronise it.
  reader.Feed(EncodePong(1));
  ExpectMalformed(reader.Next(), "unknown frame type 99");
}

TEST(FrameReaderTest, OversizeHeaderIsReportedWithoutWaitingForThePayload) {
  FrameReader reader;
  reader.Feed(Header(0xffffffff, 3));
  ExpectMalformed(reader.Next(), "exceeds the cap");
}

TEST(FrameReaderTest, ReservedBytesAreReported) {
  FrameReader reader;
  reader.Feed(Header(0, 6, 1, 0, 0, 7));
  ExpectMalformed(reader.Next(), "reserved");
}

TEST(FrameReaderTest, MemoryStaysBoundedOverALongStream) {
  // Frames fed in chunks that never line up with frame boundaries, so the reader always
  // holds a partial frame and must compact as it goes.
  Bytes data(1000, 0x42);
  Bytes frame = EncodeOutput(1, Stream::kStdout, data);
  constexpr size_t kFrames = 20'000;  // ~20 MB through the reader
  constexpr size_t kChunk = 777;
  Bytes pending;
  FrameReader reader;
  size_t frames_out = 0;
  size_t max_buffered = 0;
  for (size_t i = 0; i < kFrames; ++i) {
    pending.insert(pending.end(), frame.begin(), frame.end());
    while (pending.size() >= kChunk) {
      reader.Feed(std::span<const uint8_t>(pending).first(kChunk));
      pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(kChunk));
      for (;;) {
        auto next = reader.Next();
        ASSERT_TRUE(next.has_value()) << next.error().ToString();
        if (!*next) break;
        ASSERT_EQ((*next)->payload.size(), frame.size() - kHeaderSize);
        ++frames_out;
      }
      max_buffered = std::max(max_buffered, reader.buffered());
    }
  }
  reader.Feed(pending);
  frames_out += Drain(reader).size();
  EXPECT_EQ(frames_out, kFrames);
  EXPECT_EQ(reader.buffered(), 0u);
  // Never more than one partial frame plus one chunk is held.
  EXPECT_LT(max_buffered, frame.size() + kChunk);
}

}  // namespace
}  // namespace vessel::protocol
