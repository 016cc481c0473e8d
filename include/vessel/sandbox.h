// Sandbox: a lifecycle-checked handle on one microVM.
//
// A Sandbox owns its VM: the VMM process, its runtime directory and the command channel.
// Destroying the Sandbox (or the last reference to it) kills and reaps the VMM and
// removes every file it made.
//
// Thread safety: all methods may be called from any thread. Commands and file operations
// on one sandbox run concurrently, multiplexed over its one command channel: a second
// Execute() does not wait for the first. Snapshot() and Fork() run one at a time, and
// other calls wait while the guest is quiesced for them.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vessel/engine_kind.h"
#include "vessel/error.h"

namespace vessel {

// The transport of the command channel between the host and the guest agent.
enum class Channel {
  kAuto,          // vsock on the kvm engine, virtio-serial on QEMU
  kVirtioSerial,  // a named virtio-console port; every engine has it
  kVsock,         // virtio-vsock, port 1024; the kvm engine only
};

// The most children one Sandbox::Fork() makes.
inline constexpr uint32_t kMaxForks = 64;

// Where a sandbox's guest may connect (docs/egress.md). The guest has no network
// interface: every command gets HTTP_PROXY and HTTPS_PROXY pointing at the agent's proxy
// on the guest's 127.0.0.1:3128, and the host decides each connection: the host name
// against `allow`, then every address the host resolved it to. Nothing else reaches the
// network; the guest does no DNS of its own.
inline constexpr size_t kMaxNetworkRules = 1024;
struct NetworkPolicy {
  // Allowlist rules: `api.example.com`, `*.example.com` (names below it, not the name
  // itself), an IPv4 or [IPv6] address; each with an optional `:PORT` (else 80 and 443).
  // Empty: no egress at all. At most kMaxNetworkRules.
  std::vector<std::string> allow;
  // Proxied connections open at once; more are answered 503. 1 .. 256.
  uint32_t max_connections = 64;
  // A connection that moves no byte either way for this long is closed (504 when its
  // plain-HTTP request got no answer yet). At least 1 s.
  std::chrono::seconds idle_timeout{300};
  // Bytes both ways, over all connections, after which new and open connections are cut;
  // 0: no limit.
  uint64_t max_bytes = 0;
};

// What a sandbox's egress did so far.
struct NetworkStats {
  uint64_t allowed = 0;         // connections made to an upstream
  uint64_t refused = 0;         // requests answered with an error status, and cut connections
  uint64_t bytes_sent = 0;      // guest -> upstream, after the request head
  uint64_t bytes_received = 0;  // upstream -> guest
  uint32_t open = 0;            // proxied connections open now
  // The most recent refusals, oldest first, one line each: "403 example.org: not in
  // this sandbox's allowlist". At most 32.
  std::vector<std::string> recent_refusals;
};

struct SandboxConfig {
  uint32_t vcpus = 1;         // 1 .. the host's CPU count (at most 8)
  uint32_t memory_mib = 256;  // 64 .. the engine's ceiling
  // Guest assets. Empty: $VESSEL_ASSET_DIR/{vmlinux,initramfs.cpio}, else the directory
  // the build wrote them to.
  std::string kernel;
  std::string initramfs;
  // A root image by name or digest (`vessel image ls`; docs/images.md): the guest runs
  // every command in it, over an overlay whose writes live in guest RAM. Empty: none, the
  // initramfs's minimal busybox userland. Unknown: kInvalidConfig "image" listing those
  // that exist.
  std::string image;
  // Room in MiB for what the guest writes over its image (a tmpfs in guest RAM); 0: half
  // of memory_mib. Only with an image.
  uint32_t overlay_mib = 0;
  // From process start until the guest agent says hello.
  std::chrono::milliseconds boot_timeout{30'000};
  // kKvm where /dev/kvm is not usable: kUnsupportedPlatform saying why.
  EngineKind engine = EngineKind::kAuto;
  // kVsock on an engine without it: LifecycleError::VsockUnavailable.
  Channel channel = Channel::kAuto;
  std::string name;  // free text for logs and listings
  // Egress; the default allows none.
  NetworkPolicy network;
  // Children of the first Fork() to start ahead (0..kMaxForks): their VMMs start once the
  // sandbox is ready and wait, mapping its memory, so that Fork(n) does not wait for n VMMs
  // to start up when n is at most this. Each holds a VMM process (no guest memory of its
  // own) until that fork, a Snapshot() or Destroy(), which let the unused ones go. None
  // where the engine cannot save the VM in place.
  uint32_t forks_ahead = 0;
};

// What a restored sandbox may change from the saved one. The machine itself (vCPUs,
// memory, guest kernel) is fixed by the snapshot.
struct RestoreOptions {
  std::string name;  // empty: the saved sandbox's name
  // From process start until the restored agent answers.
  std::chrono::milliseconds timeout{30'000};
  // kAuto: the engine recorded in the snapshot. Anything else must be that engine.
  EngineKind engine = EngineKind::kAuto;
  // The guest kernel and initramfs the restored VM runs with; empty: the default assets,
  // as for SandboxConfig. Their digests must be the ones the snapshot recorded. The paths
  // in a snapshot's manifest are only a record: nothing is loaded from them.
  std::string kernel;
  std::string initramfs;
  // The restored sandbox's egress policy, replacing the one the snapshot carries (the
  // policy in force when it was taken); unset: that one.
  std::optional<NetworkPolicy> network;
};

// What to run. Argv runs a program (looked up in the guest's PATH when it has no '/');
// Shell runs a string with /bin/sh -c.
struct Command {
  std::vector<std::string> argv;

  static Command Argv(std::vector<std::string> argv) { return Command{std::move(argv)}; }
  static Command Shell(std::string script) { return Command{{"/bin/sh", "-c", std::move(script)}}; }
};

// The size of a terminal in character cells.
struct TerminalSize {
  uint16_t rows = 24;
  uint16_t cols = 80;
  bool operator==(const TerminalSize&) const = default;
};

struct ExecOptions {
  // "KEY=VALUE" entries: the command's whole environment. PATH defaults to the usual
  // directories when absent.
  std::vector<std::string> env;
  std::string cwd;  // empty: "/". A directory that does not exist is a kGuestFile error.
  // 0: no timeout. At the deadline the agent kills the command's whole process group.
  std::chrono::milliseconds timeout{0};
  // Bytes kept per stream; the rest is dropped and the result says it was truncated.
  uint64_t output_cap = 16 * 1024 * 1024;
  // nullopt: stdin is /dev/null. Otherwise stdin is a pipe that first carries these bytes;
  // Execute() then closes it, Start() leaves it open for WriteStdin() until CloseStdin().
  std::optional<std::string> stdin_data;
  // Set: the command runs on a new pseudo-terminal of this size (1..4096 each way), as a
  // session leader with it as its controlling terminal, like a login shell. The terminal is
  // its stdin, stdout and stderr: everything it writes arrives as stdout (with a terminal's
  // \r\n), and stdin bytes are keystrokes (0x03 interrupts the foreground job, 0x04 ends
  // a line discipline's input). TERM defaults to xterm-256color. Process::Resize changes
  // the size.
  std::optional<TerminalSize> terminal;
};

struct ExecResult {
  enum class Outcome { kExited, kSignaled, kTimedOut };
  Outcome outcome = Outcome::kExited;
  int exit_code = 0;  // valid for kExited
  int signal = 0;     // valid for kSignaled and kTimedOut (the signal that ended it)
  std::string stdout_data;
  std::string stderr_data;
  bool stdout_truncated = false;
  bool stderr_truncated = false;
  std::chrono::microseconds duration{0};  // from request sent to status received

  [[nodiscard]] bool ok() const { return outcome == Outcome::kExited && exit_code == 0; }
};

// One event of a running process, in the order the guest produced it per stream.
struct ProcessEvent {
  enum class Kind { kStdout, kStderr, kExited, kSignaled, kTimedOut };
  Kind kind = Kind::kStdout;
  std::string data;  // kStdout, kStderr: the bytes
  int code = 0;      // kExited: exit code; kSignaled, kTimedOut: the signal
  // kExited, kSignaled, kTimedOut: whether output beyond the cap was dropped.
  bool stdout_truncated = false;
  bool stderr_truncated = false;

  [[nodiscard]] bool final() const { return kind != Kind::kStdout && kind != Kind::kStderr; }
};

// A command started with Sandbox::Start(). Owned by the caller; it may outlive its
// Sandbox, after which every call fails with Destroyed instead of hanging.
//
// Thread safety: NextEvent()/Wait() from one thread at a time; WriteStdin(), CloseStdin(),
// Signal() and Kill() from any thread, also while another waits for events.
//
// Output is flow-controlled per stream: the guest sends no more than a window ahead of
// what NextEvent() has handed out, so a caller that reads slowly holds back this process
// only, never the others.
class Process {
 public:
  virtual ~Process() = default;
  // The process id inside the guest.
  [[nodiscard]] virtual int pid() const = 0;
  // The next event; nullopt once the final event (exit, signal or timeout) was returned.
  // With a timeout, an error with timed_out() (and retryable()) true when nothing
  // arrived in time; the process goes on. Errors: Destroyed when the sandbox was destroyed,
  // kBackend when the VM broke.
  [[nodiscard]] virtual Result<std::optional<ProcessEvent>> NextEvent(
      std::optional<std::chrono::milliseconds> timeout = std::nullopt) = 0;
  // Blocks while the guest has a window's worth of stdin not yet written. Fails with
  // kInvalidConfig when stdin was not opened (ExecOptions::stdin_data) or already closed.
  [[nodiscard]] virtual Result<void> WriteStdin(std::string_view data) = 0;
  [[nodiscard]] virtual Result<void> CloseStdin() = 0;
  // Sends a signal to the command's process group. No effect once it has ended.
  [[nodiscard]] virtual Result<void> Signal(int signal) = 0;
  [[nodiscard]] virtual Result<void> Kill() = 0;
  // Sets the size of the command's terminal; the foreground job gets SIGWINCH. Fails with
  // kInvalidConfig when it has none (ExecOptions::terminal) or the size is out of range;
  // no effect once the command has ended.
  [[nodiscard]] virtual Result<void> Resize(TerminalSize size) = 0;
  // Collects the remaining events into a result, like Execute().
  [[nodiscard]] virtual Result<ExecResult> Wait() = 0;
};

enum class FileType { kRegular, kDirectory, kSymlink, kOther };

struct FileInfo {
  std::string name;  // the entry's name for ListDir(), else empty
  FileType type = FileType::kRegular;
  uint32_t mode = 0;  // permission bits
  uint64_t size = 0;
  int64_t mtime = 0;  // seconds since the epoch
};

// Receives file content in chunks; an error stops the transfer and is returned.
using ChunkSink = std::function<Result<void>(std::span<const uint8_t>)>;
// Fills the buffer with up to its size in bytes; returns how many, 0 at the end.
using ChunkSource = std::function<Result<size_t>(std::span<uint8_t>)>;

class Sandbox {
 public:
  // Boots a VM, waits for its agent and returns the sandbox in kReady. Errors:
  // kInvalidConfig naming the field; kUnsupportedPlatform when the engine cannot run
  // here; VsockUnavailable for a vsock channel on an engine without one; kBackend when
  // the VM does not come up, with timed_out() when boot_timeout passed (the message
  // carries the VMM's output and the console tail), except that a vsock channel the guest never
  // accepted while its VMM still runs is VsockNotConnected, with the same diagnostics in the
  // message. Nothing is left behind on failure.
  //
  // A vsock channel can drop while the VM goes on (the guest reset its vsock device).
  // The call that notices returns VsockNotConnected and the sandbox stays kReady; every
  // later call first tries, for up to a second, to connect again, and returns
  // VsockNotConnected while it cannot. Commands that ran over the dropped channel go on
  // in the guest, but their Process handles fail (kBackend: the channel closed).
  [[nodiscard]] static Result<std::unique_ptr<Sandbox>> Create(const SandboxConfig& config);

  // Destroys the VM.
  ~Sandbox();
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  // Runs a command to completion. Valid in kReady. Otherwise: Destroyed after Destroy(),
  // InvalidState{kReady, current} in any other state. A command that ran, whatever its
  // exit status, is a success; a working directory or program that does not exist is a
  // kGuestFile error naming the path. A broken VM or channel is kBackend and moves the
  // sandbox to kFailed.
  [[nodiscard]] Result<ExecResult> Execute(const Command& command, const ExecOptions& options = {});

  // Starts a command and returns at once with a handle on its events. Valid and failing
  // like Execute(). Any number of processes may run at once, each with its own
  // timeout and output.
  [[nodiscard]] Result<std::unique_ptr<Process>> Start(const Command& command,
                                                       const ExecOptions& options = {});

  // Files inside the guest. Paths are absolute. Valid in kReady, failing otherwise like
  // Execute(). A failure in the guest is kGuestFile with the path and a
  // GuestFileErrorKind (not found, permission denied, out of space, is / is not a
  // directory, ...). Content is binary-safe.
  // At most 256 MiB (kInvalidConfig beyond, naming ReadFileStream).
  [[nodiscard]] Result<std::string> ReadFile(const std::string& path);
  // Atomic: written to a temporary file beside `path`, then renamed over it.
  [[nodiscard]] Result<void> WriteFile(const std::string& path, std::string_view data,
                                       uint32_t mode = 0644);
  // Streaming variants, for files larger than memory: a window of data is in flight.
  [[nodiscard]] Result<FileInfo> ReadFileStream(const std::string& path, const ChunkSink& sink);
  [[nodiscard]] Result<void> WriteFileStream(const std::string& path, const ChunkSource& source,
                                             uint32_t mode = 0644);
  // At most 100,000 entries and 16 MiB of names (kBackend beyond: the guest sent more).
  [[nodiscard]] Result<std::vector<FileInfo>> ListDir(const std::string& path);
  // Does not follow a final symlink.
  [[nodiscard]] Result<FileInfo> Stat(const std::string& path);
  [[nodiscard]] Result<bool> Exists(const std::string& path);
  [[nodiscard]] Result<void> MakeDir(const std::string& path, bool parents = false,
                                     uint32_t mode = 0755);
  [[nodiscard]] Result<void> Remove(const std::string& path, bool recursive = false);
  [[nodiscard]] Result<void> Rename(const std::string& from, const std::string& to);

  // Saves the whole guest (memory, devices, processes, files) to `dir`, which is created
  // 0700 or must be an empty directory; the format is in docs/snapshot-format.md. The
  // sandbox stays ready and goes on where it was; calls made meanwhile wait. Guest RAM
  // is not copied where it can be avoided: the snapshot's memory image is mapped
  // copy-on-write by this sandbox and every sandbox restored from it, so it must not be
  // modified while they run. Valid in kReady. Otherwise: NotReady (Destroyed after
  // Destroy()). kInvalidConfig for an unusable `dir`; kBackend when the engine fails,
  // and the sandbox then fails too unless it could be resumed.
  [[nodiscard]] Result<void> Snapshot(const std::string& dir);

  // A new ready sandbox with exactly the saved guest: files, memory, idle processes.
  // Commands that a host was running through a Process handle at the time are killed in
  // the restored guest, since no host is waiting for them. The guest's RNG is reseeded
  // with fresh host entropy and its clock set to the host's. The snapshot is read, never
  // modified. Errors: kSnapshotFormat for a missing, truncated, corrupt or foreign
  // snapshot, or one whose kernel or initramfs changed since (the message names the
  // problem); kBackend when the VM does not come back (timed_out() when options.timeout
  // passed).
  [[nodiscard]] static Result<std::unique_ptr<Sandbox>> Restore(const std::string& dir,
                                                                const RestoreOptions& options = {});

  // `n` (1..kMaxForks) new ready sandboxes, each a copy of this one at this moment, which then
  // diverge from it and from each other. Memory is shared copy-on-write between them.
  // Each child is reseeded and clock-set like a restored sandbox; commands running
  // through Process handles keep running here and are killed in the children. Valid in
  // kReady. Otherwise: NotReadyForFork (Destroyed after Destroy()). Children do not
  // depend on this sandbox: destroying it leaves them running.
  [[nodiscard]] Result<std::vector<std::unique_ptr<Sandbox>>> Fork(uint32_t n);

  // Replaces the egress policy. Connections open now keep going; every later one is
  // decided by `policy`. Valid in kReady (failing like Execute()); kInvalidConfig
  // (subject "network") for a bad rule or limit, with the old policy kept.
  [[nodiscard]] Result<void> SetNetwork(const NetworkPolicy& policy);
  // The egress policy in force, its rules in canonical spelling.
  [[nodiscard]] NetworkPolicy network() const;
  [[nodiscard]] NetworkStats network_stats() const;

  // Kills the VM and removes its files. Valid in every state but kDestroyed (then:
  // Destroyed).
  [[nodiscard]] Result<void> Destroy();

  [[nodiscard]] SandboxState state() const;
  [[nodiscard]] const std::string& id() const;
  // The engine that runs this sandbox: "qemu-kvm", "qemu-tcg" or "kvm".
  [[nodiscard]] const std::string& engine_name() const;
  // The agent's self-description from its hello, e.g. "vessel-agent 0.1.0".
  [[nodiscard]] const std::string& agent_version() const;

  class Impl;

 private:
  friend class Impl;
  explicit Sandbox(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Where the guest kernel and initramfs are looked for when a config leaves them empty.
std::string DefaultAssetDir();

}  // namespace vessel
