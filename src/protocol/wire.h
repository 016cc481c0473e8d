// The host <-> guest agent wire format, version 5. Shared byte for byte by the host
// library and the guest agent; specified in docs/protocol.md.
//
// Everything here is pure: no I/O. Decoders treat their input as hostile. Every length
// and count is checked against a named cap before anything is allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vessel/error.h"

namespace vessel::protocol {

inline constexpr uint32_t kVersion = 5;

// Frame header: payload size (u32), type (u8), three zero bytes, request id (u32).
inline constexpr size_t kHeaderSize = 12;
// Largest payload of one frame; output and file data travel in chunks of at most this.
inline constexpr uint32_t kMaxPayload = 256 * 1024;
// Largest chunk of command output in one Output frame (payload minus its stream byte).
inline constexpr uint32_t kMaxOutputChunk = kMaxPayload - 1;
// Caps on an Exec request. A single argument or environment entry is capped like Linux's
// MAX_ARG_STRLEN; the sum is capped by kMaxPayload.
inline constexpr uint32_t kMaxArgs = 4096;
inline constexpr uint32_t kMaxEnv = 4096;
inline constexpr uint32_t kMaxStringSize = 128 * 1024;
inline constexpr uint32_t kMaxPathSize = 4096;
// Cap on the agent version string and on error messages.
inline constexpr uint32_t kMaxMessageSize = 4096;
// Largest flow-control window (bytes in flight per stream) a request may ask for.
inline constexpr uint32_t kMaxWindow = 16 * 1024 * 1024;
// Largest chunk of file content in one FileData frame.
inline constexpr uint32_t kMaxFileChunk = kMaxPayload;
// Host entropy in one Resume frame: at most kMaxEntropy bytes, and at least
// kMinCloneEntropy (256 bits) when the agent wakes in a clone and must reseed its RNG.
inline constexpr uint32_t kMaxEntropy = 512;
inline constexpr uint32_t kMinCloneEntropy = 32;
// Largest terminal a command may be given, in rows and in columns.
inline constexpr uint16_t kMaxTerminalSide = 4096;
// Request ids with this bit set are chosen by the agent (NetOpen); the host's own ids
// stay below it.
inline constexpr uint32_t kAgentIdBit = 0x8000'0000;
// Bytes of NetData each side may send on a proxied connection before the other grants
// more with Credit (Stream::kNet); both windows start full.
inline constexpr uint32_t kNetWindow = 256 * 1024;

enum class MessageType : uint8_t {
  kHello = 1,      // agent -> host, request id 0: the agent is up; or a kResume's answer
  kExec = 2,       // host -> agent: start a command
  kOutput = 3,     // agent -> host: a chunk of a command's stdout or stderr
  kExited = 4,     // agent -> host: the command ended; last frame of its request
  kError = 5,      // agent -> host: the request failed; last frame of its request
  kPing = 6,       // host -> agent: liveness probe
  kPong = 7,       // agent -> host: answer to kPing with the same request id
  kStarted = 8,    // agent -> host: the command of an Exec runs (its pid)
  kStdin = 9,      // host -> agent: bytes for the command's stdin; empty: close stdin
  kSignal = 10,    // host -> agent: send a signal to the command's process group
  kCredit = 11,    // either way: the receiver may send this many more bytes on a stream
  kFileOp = 12,    // host -> agent: a file operation
  kFileData = 13,  // either way: a chunk of file content; empty from the host: end of file
  kFileInfo = 14,  // agent -> host: metadata of a file or of one directory entry
  kDone = 15,      // agent -> host: a file operation succeeded; last frame of its request
                   // (or the quiesce is complete: the agent's last frame until a Resume)
  kQuiesce = 16,   // host -> agent: stop writing at a frame boundary, answered by kDone
  kResume = 17,    // host -> agent: write again (in a clone: forget the old host), answered
                   // by kHello with the Resume's request id
  kResize = 18,    // host -> agent: the new size of a command's terminal
  kNetOpen = 19,   // agent -> host, a new agent id: a guest program connected to the proxy
  kNetData = 20,   // either way: bytes of a proxied connection; empty: that direction ended
  kNetClose = 21,  // either way: the proxied connection is over; last frame of its request
};
inline constexpr uint8_t kLastMessageType = 21;

struct FrameHeader {
  uint32_t payload_size = 0;
  MessageType type = MessageType::kHello;
  uint32_t request_id = 0;
};

struct Frame {
  FrameHeader header;
  std::vector<uint8_t> payload;
};

struct Hello {
  uint32_t version = kVersion;
  std::string agent_version;
};

// The size of a terminal, in character cells: 1 .. kMaxTerminalSide each.
struct TerminalSize {
  uint16_t rows = 24;
  uint16_t cols = 80;
  bool operator==(const TerminalSize&) const = default;
};

struct ExecRequest {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH when it has no '/'
  std::vector<std::string> env;   // "KEY=VALUE" entries, the whole environment
  std::string cwd;                // empty: "/"
  uint32_t timeout_ms = 0;        // 0: no timeout
  uint64_t output_cap = 0;        // per stream; bytes beyond it are dropped and flagged
  bool stdin_pipe = false;        // false: stdin is /dev/null
  // Output bytes the agent may send per stream before the host grants more with Credit
  // frames; also the stdin bytes the host may send before the agent grants more.
  // 1 .. kMaxWindow.
  uint32_t window = 1024 * 1024;
  // Set: the command runs as a session leader on a new pseudo-terminal of this size, which
  // is its stdin, stdout and stderr; everything it writes arrives as stdout, and stdin
  // bytes are what a person types (^C interrupts, ^D ends input).
  std::optional<TerminalSize> terminal;
};

// Streams that Credit frames account for.
enum class Stream : uint8_t { kStdout = 1, kStderr = 2, kStdin = 3, kFile = 4, kNet = 5 };

struct Started {
  int32_t pid = 0;
};

struct Credit {
  Stream stream = Stream::kStdout;
  uint32_t bytes = 0;
};

enum class FileOpKind : uint8_t {
  kStat = 1,       // -> FileInfo, Done
  kListDir = 2,    // -> FileInfo per entry (name set), Done
  kMakeDir = 3,    // flags: kFlagParents
  kRemove = 4,     // flags: kFlagRecursive
  kRename = 5,     // path -> target
  kReadFile = 6,   // -> FileInfo, FileData chunks within the window, Done
  kWriteFile = 7,  // host streams FileData, then an empty one; the agent writes a temporary
                   // file beside `path` and renames it into place -> Done
};
inline constexpr uint8_t kFlagParents = 1;
inline constexpr uint8_t kFlagRecursive = 2;

struct FileOp {
  FileOpKind kind = FileOpKind::kStat;
  std::string path;    // absolute
  std::string target;  // kRename only
  uint32_t mode = 0644;
  uint8_t flags = 0;
  uint32_t window = 1024 * 1024;  // kReadFile: bytes in flight before a Credit
};

enum class FileType : uint8_t { kRegular = 1, kDirectory = 2, kSymlink = 3, kOther = 4 };

struct FileInfo {
  FileType type = FileType::kRegular;
  uint32_t mode = 0;  // permission bits
  uint64_t size = 0;
  int64_t mtime = 0;  // seconds since the epoch
  std::string name;   // the entry's name for kListDir, else empty
};

struct Output {
  Stream stream = Stream::kStdout;
  std::vector<uint8_t> data;
};

enum class ExitHow : uint8_t {
  kExited = 0,    // code is the exit status
  kSignaled = 1,  // code is the signal number
  kTimedOut = 2,  // the deadline passed and the agent killed the process group
};

struct Exited {
  ExitHow how = ExitHow::kExited;
  int32_t code = 0;
  bool stdout_truncated = false;
  bool stderr_truncated = false;
};

// Resume flags.
inline constexpr uint8_t kResumeClone = 1;

// Wakes a quiesced agent. In a clone (a VM restored from a snapshot) the agent reseeds
// its RNG with `entropy` and forgets every request of the host it was snapshotted with.
struct ResumeRequest {
  bool clone = false;
  uint64_t wall_clock_ns = 0;  // CLOCK_REALTIME of the host, ns since the Unix epoch
  // 0 .. kMaxEntropy bytes; a clone needs at least kMinCloneEntropy. Ignored unless clone.
  std::vector<uint8_t> entropy;
};

struct ErrorReply {
  int32_t errno_value = 0;  // the guest errno behind the failure, 0 when none
  std::string path;         // the guest path the failure concerns, empty when none
  std::string message;
};

// Encoding. Each returns a whole frame (header + payload), ready to write.
// The agent's unsolicited hello, request id 0.
std::vector<uint8_t> EncodeHello(const Hello& hello);
// The hello that answers a Resume, carrying its request id.
std::vector<uint8_t> EncodeHello(uint32_t request_id, const Hello& hello);
std::vector<uint8_t> EncodeExec(uint32_t request_id, const ExecRequest& request);
std::vector<uint8_t> EncodeOutput(uint32_t request_id, Stream stream,
                                  std::span<const uint8_t> data);
std::vector<uint8_t> EncodeExited(uint32_t request_id, const Exited& exited);
std::vector<uint8_t> EncodeError(uint32_t request_id, const ErrorReply& error);
std::vector<uint8_t> EncodePing(uint32_t request_id);
std::vector<uint8_t> EncodePong(uint32_t request_id);
std::vector<uint8_t> EncodeStarted(uint32_t request_id, const Started& started);
std::vector<uint8_t> EncodeStdin(uint32_t request_id, std::span<const uint8_t> data);
std::vector<uint8_t> EncodeSignal(uint32_t request_id, int32_t signal);
std::vector<uint8_t> EncodeCredit(uint32_t request_id, const Credit& credit);
std::vector<uint8_t> EncodeFileOp(uint32_t request_id, const FileOp& op);
std::vector<uint8_t> EncodeFileData(uint32_t request_id, std::span<const uint8_t> data);
// A FileData frame with room for `capacity` payload bytes (at most kMaxFileChunk), to be
// read into place at kHeaderSize; TrimFileData(frame, n) then makes the payload its first
// n bytes. Saves the copy EncodeFileData makes.
std::vector<uint8_t> FileDataFrame(uint32_t request_id, size_t capacity);
void TrimFileData(std::vector<uint8_t>& frame, size_t n);
std::vector<uint8_t> EncodeFileInfo(uint32_t request_id, const FileInfo& info);
std::vector<uint8_t> EncodeDone(uint32_t request_id);
std::vector<uint8_t> EncodeQuiesce(uint32_t request_id);
std::vector<uint8_t> EncodeResume(uint32_t request_id, const ResumeRequest& request);
std::vector<uint8_t> EncodeResize(uint32_t request_id, const TerminalSize& size);
std::vector<uint8_t> EncodeNetOpen(uint32_t request_id);
std::vector<uint8_t> EncodeNetData(uint32_t request_id, std::span<const uint8_t> data);
std::vector<uint8_t> EncodeNetClose(uint32_t request_id);

// Decoding. Errors are kBackend with a message that says what was wrong.
Result<FrameHeader> DecodeHeader(std::span<const uint8_t, kHeaderSize> bytes);
Result<Hello> DecodeHello(std::span<const uint8_t> payload);
Result<ExecRequest> DecodeExec(std::span<const uint8_t> payload);
Result<Output> DecodeOutput(std::span<const uint8_t> payload);
Result<Exited> DecodeExited(std::span<const uint8_t> payload);
Result<ErrorReply> DecodeError(std::span<const uint8_t> payload);
Result<Started> DecodeStarted(std::span<const uint8_t> payload);
Result<int32_t> DecodeSignal(std::span<const uint8_t> payload);
Result<Credit> DecodeCredit(std::span<const uint8_t> payload);
Result<FileOp> DecodeFileOp(std::span<const uint8_t> payload);
Result<FileInfo> DecodeFileInfo(std::span<const uint8_t> payload);
Result<ResumeRequest> DecodeResume(std::span<const uint8_t> payload);
Result<TerminalSize> DecodeResize(std::span<const uint8_t> payload);
// Stdin, FileData and NetData payloads are raw bytes and Done/Ping/Pong/Quiesce/NetOpen/
// NetClose payloads are empty:
// the header says everything, and DecodeEmpty checks the latter.
Result<void> DecodeEmpty(std::span<const uint8_t> payload, const char* what);

// A frame still in a FrameReader's buffer: valid until the reader is next used.
struct FrameView {
  FrameHeader header;
  std::span<const uint8_t> payload;
};

// Reassembles frames from a byte stream. Feed it what read() returned, or read into
// Prepare() and Commit() what arrived; take frames out.
// Memory is bounded by kHeaderSize + kMaxPayload plus one read's worth of bytes.
class FrameReader {
 public:
  void Feed(std::span<const uint8_t> bytes);
  // Room for `n` more bytes at the end of the buffer, to read() into without a copy;
  // Commit(k) then takes the first k of them (k <= n).
  [[nodiscard]] std::span<uint8_t> Prepare(size_t n);
  void Commit(size_t n);
  // The next complete frame, nullopt when more bytes are needed, or an error when the
  // stream is malformed (after which the stream is unusable).
  Result<std::optional<Frame>> Next();
  // The same, without copying the payload out of the buffer.
  Result<std::optional<FrameView>> NextView();
  // Bytes received but not yet returned as a frame: nonzero at EOF means a truncated frame.
  [[nodiscard]] size_t buffered() const { return filled_ - consumed_; }

 private:
  // Drops what was already returned and makes room for `n` more bytes after the rest.
  void Compact(size_t n);

  std::vector<uint8_t> buffer_;  // [consumed_, filled_) holds what is not returned yet
  size_t consumed_ = 0;
  size_t filled_ = 0;
};

}  // namespace vessel::protocol
