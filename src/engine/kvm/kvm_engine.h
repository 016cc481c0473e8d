// The kvm engine: one vessel-vmm process per VM, Vessel's own VMM on the KVM API,
// driven over its control socket (docs/vmm-protocol.md).
//
// The agent's channel is vsock (hybrid, as Firecracker does it: the VMM listens on a
// unix socket and the host asks it for a guest port with "CONNECT <port>") or the
// virtio-console port org.vessel.agent, whose host end is a unix socket the VMM listens
// on.
//
// Guest RAM is a file the host creates (CreateGuestRam) and hands to the VMM, which maps it
// shared. A save writes the VMM's state file; its memory is either that file, frozen (the VM
// goes on from a private mapping of it, in the same VMM), or the pages that hold data,
// written by the VMM to the snapshot's memory file. A restored VM's VMM maps the saved
// memory private and waits, until Resume() hands it the state to load.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "base/subprocess.h"
#include "engine/engine.h"
#include "protocol/vmm_control.h"

namespace vessel::engine::kvm {

// The guest's vsock context id.
inline constexpr uint32_t kGuestCid = 3;

// The vessel-vmm binary: $VESSEL_VMM, else vessel-vmm beside the running executable,
// else the one this build made. Empty when none of them is an executable file.
std::string FindVmm();

// The guest kernel command line for `spec`: with a vsock channel it tells the agent to
// listen there, and it ends with spec.guest_args.
std::string KvmGuestCmdline(const VmSpec& spec, bool quiet = true);

// Where the VMM puts the ends of a VM's channels (all inside the VM's runtime directory).
struct KvmPaths {
  std::string console_log;
  std::string vsock_uds;   // hybrid vsock: the host connects here
  std::string agent_port;  // the virtio-console agent port's host end
};

// The "configure" request for `spec`; its image, if any, becomes the VMM's read-only disk.
// Guest RAM comes with it: `memory` says how the VMM maps it.
protocol::vmm_control::request::Configure ConfigureRequest(
    const VmSpec& spec, const std::string& cmdline, const KvmPaths& paths,
    protocol::vmm_control::MemorySource memory);

// What starts a vessel-vmm process: its control socket's two ends and the spawn options
// that hand it `theirs` as --control-fd, write its output to `log` and set VmmLimits().
// The caller adds a jail or a cgroup, spawns, keeps `ours` and closes `theirs`.
struct VmmLaunch {
  UniqueFd ours;
  UniqueFd theirs;
  SpawnOptions spawn;
};
[[nodiscard]] Result<VmmLaunch> PrepareVmmLaunch(const std::string& binary, const std::string& log);

// Requests and replies over the VMM's control socket (AF_UNIX, SOCK_SEQPACKET), encoded
// by protocol/vmm_control. Thread safe: calls are serialised.
class ControlClient {
 public:
  explicit ControlClient(UniqueFd fd) : fd_(std::move(fd)) {}

  // Sends `request`, with `fds` (the descriptors it takes, see DescriptorCount), and
  // returns the reply, which has "ok": true. An error reply, a malformed or oversized one,
  // a closed socket or the deadline passing is kBackend.
  [[nodiscard]] Result<protocol::vmm_control::Reply> Call(
      const protocol::vmm_control::Request& request, Deadline deadline,
      std::span<const int> fds = {});
  void Close();

 private:
  std::mutex mutex_;
  UniqueFd fd_;
};

// Connects to guest vsock port `port` through the VMM's hybrid vsock socket `uds`:
// writes "CONNECT <port>\n" and reads "OK <host port>\n"; the socket then carries the
// stream. The VMM closes the socket when nothing listens on the port yet (the guest is
// still booting), so this tries again every few milliseconds until `deadline`. Errors:
// VsockNotConnected at the deadline; kBackend when `vmm_running` says the VMM is gone,
// or the VMM's answer is malformed.
[[nodiscard]] Result<UniqueFd> ConnectVsock(const std::string& uds, uint32_t port,
                                            Deadline deadline,
                                            const std::function<bool()>& vmm_running);

struct KvmOptions {
  std::string vmm;  // empty: FindVmm()
};

class KvmEngine final : public Engine {
 public:
  explicit KvmEngine(KvmOptions options = {});

  [[nodiscard]] std::string name() const override { return "kvm"; }
  [[nodiscard]] bool SupportsVsock() const override { return true; }
  [[nodiscard]] std::string version() const override;
  // kUnsupportedPlatform when /dev/kvm is not usable or vessel-vmm is not found.
  [[nodiscard]] Result<std::unique_ptr<Vm>> Start(const VmSpec& spec) override;

 private:
  KvmOptions options_;
};

}  // namespace vessel::engine::kvm
