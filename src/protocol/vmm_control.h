// The control protocol between the host library's kvm engine and vessel-vmm, version 1
// (docs/vmm-protocol.md): one JSON object per SOCK_SEQPACKET message, one reply per
// request, in order. The engine encodes requests and decodes replies; the VMM decodes
// requests and encodes replies, so neither side sees JSON.
//
// Everything here is pure: no I/O. Decoders treat their input as hostile and bound every
// field by a named limit.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "vessel/error.h"

namespace vessel::protocol::vmm_control {

inline constexpr int kVersion = 1;
// Longest message either side sends.
inline constexpr size_t kMaxMessage = 64 * 1024;
inline constexpr uint32_t kMaxVcpus = 32;
inline constexpr uint64_t kMinMemoryMib = 64;
inline constexpr uint64_t kMaxMemoryMib = 64 * 1024;
// Guest CIDs 0-2 are reserved (hypervisor, local, host); the top value is VMADDR_CID_ANY.
inline constexpr uint64_t kMinGuestCid = 3;
inline constexpr uint64_t kMaxGuestCid = 0xffff'fffe;
// A unix socket path must fit sockaddr_un::sun_path with its NUL; vsock appends "_<port>".
inline constexpr size_t kMaxSocketPath = 100;
inline constexpr size_t kMaxPath = 4096;
inline constexpr size_t kMaxCmdline = 2047;

// Where guest RAM comes from ("memory" in configure): the VMM's own memory file, or the
// file that comes with the request, mapped shared (a boot into the host's file) or private
// (a saved VM's memory, which is never written: no kernel is loaded, and "restore" loads
// the machine's state).
enum class MemorySource { kOwn, kShared, kPrivate };

// What "save" does with guest RAM: kFreeze keeps the VM's own memory file as the saved
// memory (the VM then runs on a private mapping of it, so that the file never changes
// again); kWrite writes RAM's pages that hold data to the file that comes with the request.
enum class SaveMemory { kFreeze, kWrite };

// Descriptors that come with a request (SCM_RIGHTS), at most this many.
inline constexpr size_t kMaxDescriptors = 2;

struct VsockConfig {
  uint64_t cid;
  std::string uds;

  bool operator==(const VsockConfig&) const = default;
};

// What "configure" carries. Empty strings are left out of the message.
struct VmConfig {
  uint32_t vcpus = 1;
  uint64_t memory_mib = 0;
  std::string kernel;
  std::string initramfs;  // empty: none
  std::string cmdline;
  std::string console_log;
  std::optional<VsockConfig> vsock;
  std::string agent_port;  // empty: no virtio-console agent port
  std::string disk;        // a read-only virtio-blk disk image; empty: none
  MemorySource memory = MemorySource::kOwn;

  bool operator==(const VmConfig&) const = default;
};

namespace request {
struct Hello {
  int64_t version;
  bool operator==(const Hello&) const = default;
};
struct Configure {
  VmConfig config;
  bool operator==(const Configure&) const = default;
};
struct Start {
  bool operator==(const Start&) const = default;
};
struct Pause {
  bool operator==(const Pause&) const = default;
};
struct Resume {
  bool operator==(const Resume&) const = default;
};
struct Status {
  bool operator==(const Status&) const = default;
};
struct Shutdown {
  bool operator==(const Shutdown&) const = default;
};
struct Save {
  SaveMemory memory = SaveMemory::kWrite;
  bool operator==(const Save&) const = default;
};
struct Restore {
  bool operator==(const Restore&) const = default;
};
}  // namespace request

using Request = std::variant<request::Hello, request::Configure, request::Start, request::Pause,
                             request::Resume, request::Status, request::Shutdown, request::Save,
                             request::Restore>;

// How many descriptors `request` comes with, in this order: configure with memory other
// than kOwn, the RAM file; save, the state file to write, then (kWrite) the memory file;
// restore, the state file to load.
[[nodiscard]] size_t DescriptorCount(const Request& request);

// The request's "op", for messages and error context.
[[nodiscard]] std::string_view OpName(const Request& request);

// InvalidConfig when the message would exceed kMaxMessage or a string is not UTF-8.
[[nodiscard]] Result<std::string> EncodeRequest(const Request& request);
// InvalidConfig saying what is wrong, meant for the error reply.
[[nodiscard]] Result<Request> DecodeRequest(std::string_view message);

// The states "status" reports; a VM that was never configured is kUnconfiguredState.
enum class VmState { kConfigured, kRunning, kPaused, kShutdown, kGuestPanicked, kFailed };
inline constexpr std::string_view kUnconfiguredState = "unconfigured";
[[nodiscard]] std::string_view ToString(VmState state);

inline constexpr std::string_view kSnapshotFormatKind = "snapshot_format";

// {"ok":true, ...} or {"ok":false,"error":"...","kind":"..."}. Fields a reply does not
// carry are empty.
struct Reply {
  bool ok = true;
  std::string error;               // !ok: for people and logs
  // !ok: kSnapshotFormatKind when what the request came with is not a saved VM this VMM
  // loads (a corrupt or foreign state); else empty.
  std::string kind;
  std::optional<int64_t> version;  // hello
  std::string vmm;                 // hello
  std::string state;               // status

  [[nodiscard]] static Reply Failed(std::string_view error) {
    return {.ok = false, .error = std::string(error)};
  }
  // Failed, saying kSnapshotFormatKind when `error` is kSnapshotFormat.
  [[nodiscard]] static Reply Failed(const Error& error) {
    Reply reply = Failed(error.message());
    if (error.kind() == ErrorKind::kSnapshotFormat) reply.kind = std::string(kSnapshotFormatKind);
    return reply;
  }
  bool operator==(const Reply&) const = default;
};

// Never fails: invalid UTF-8 (a request echoed into an error) is replaced.
[[nodiscard]] std::string EncodeReply(const Reply& reply);
// Backend when the message is not a reply; an error reply decodes to ok == false. Unknown
// fields are ignored: a newer VMM may add optional ones.
[[nodiscard]] Result<Reply> DecodeReply(std::string_view message);

}  // namespace vessel::protocol::vmm_control
