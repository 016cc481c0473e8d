// The engine interface: what the sandbox layer needs from a VMM, and nothing more.
//
// An engine starts a VM process with the guest kernel and initramfs, hands back a
// connected byte stream to the guest agent (a virtio-serial port or a vsock
// connection), and tears everything down on destroy. What flows over that stream (the
// protocol) is not the engine's business.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "base/deadline.h"
#include "base/unique_fd.h"
#include "engine/host.h"
#include "vessel/error.h"
#include "vessel/sandbox.h"

namespace vessel::engine {

// How the guest agent reaches the host. The agent reads which one from the kernel
// command line (vessel.channel=vsock:<port>); without it, the virtio-serial port.
enum class AgentChannel { kVirtioSerial, kVsock };

// The vsock port the guest agent listens on.
inline constexpr uint32_t kAgentVsockPort = 1024;

struct VmSpec {
  std::string kernel;     // uncompressed ELF vmlinux with a PVH entry
  std::string initramfs;  // newc cpio archive
  uint32_t vcpus = 1;
  uint32_t memory_mib = 256;
  std::string name;  // for logs and process listings; may be empty
  AgentChannel channel = AgentChannel::kVirtioSerial;
  // A read-only root image (an erofs file), attached as the guest's first and only
  // virtio-blk disk, /dev/vda, which the guest can never write; empty: none. The VMM
  // opens it read-only and never writes it, so many VMs share one file.
  std::string image;
  // Words the engine appends to the guest kernel command line, for the agent (`vessel.*`
  // parameters, see guest/agent/main.cc); may be empty.
  std::string guest_args;
  // What `image` is, for the layers above the engine (snapshots record it); engines
  // ignore it. `hold` keeps the image in use (a lock, see src/image) for as long as any
  // copy of this spec exists.
  struct ImageRef {
    std::string digest;  // "sha256:<hex>"
    std::string name;
    std::shared_ptr<const void> hold;
  };
  std::optional<ImageRef> image_ref;
  // The sandbox's egress policy, checked, for the layers above the engine (a fork's
  // children and a restored sandbox start with it); engines ignore it.
  NetworkPolicy network;

  // A saved VM to start from instead of booting (see Vm::Save): guest RAM becomes a
  // private copy-on-write mapping of `memory`, which is never written, and the machine's
  // state is loaded from `state`. Such a VM starts and waits with its memory mapped;
  // Resume() loads the state and runs it. Both are open descriptors, shared by every VM
  // started from this spec, so what was checked is what is loaded, whatever happens to
  // the paths meanwhile.
  struct Saved {
    std::shared_ptr<const UniqueFd> memory;
    std::shared_ptr<const UniqueFd> state;
  };
  std::optional<Saved> restore;
};

class Vm {
 public:
  virtual ~Vm() = default;  // destroys the VM if still running

  [[nodiscard]] virtual const std::string& id() const = 0;
  // Connects the host end of the agent's channel. A virtio-serial port exists from the
  // start; a vsock stream only once the guest agent listens, so this waits for it until
  // `deadline`. Errors: VsockNotConnected when the guest did not accept before the
  // deadline while the VMM runs; kBackend when the VMM exited. Call again after
  // AgentChannelLost() to connect anew.
  [[nodiscard]] virtual Result<void> ConnectAgent(Deadline /*deadline*/) { return {}; }
  // The host end of the agent's channel, valid after ConnectAgent() succeeded (and
  // replaced by the next one). Reads return 0 once the VM process is gone.
  [[nodiscard]] virtual int agent_fd() const = 0;
  // After the agent's channel ended: true when the VM goes on without it, so that the
  // channel may be connected again (the guest reset its vsock device); false when the
  // VM is gone or failing. May wait briefly for a VMM on its way out.
  [[nodiscard]] virtual bool AgentChannelLost() { return false; }
  // A directory private to this VM, removed with it (also when its owner dies).
  [[nodiscard]] virtual const std::string& private_dir() const = 0;
  // True while the VMM process runs.
  [[nodiscard]] virtual bool Running() = 0;
  // The VMM's view of the machine: "running", "paused", "shutdown", "guest-panicked", ...
  [[nodiscard]] virtual Result<std::string> RunState() = 0;
  // A few lines about why the VM might have failed: the VMM's own messages and the tail
  // of the guest console.
  [[nodiscard]] virtual std::string Diagnostics() const = 0;
  // Kills and reaps the VMM process and removes the VM's runtime directory. Idempotent.
  virtual void Destroy() = 0;

  // Stops the guest's vCPUs. The agent channel keeps every byte in flight.
  [[nodiscard]] virtual Result<void> Pause() = 0;
  // Runs a paused VM; a restored one after loading its state.
  [[nodiscard]] virtual Result<void> Resume() = 0;
  // Writes the paused VM to `dir` (an existing, empty directory) as `state` (device
  // state) and `memory` (guest RAM, as sparse as the guest left it); after SaveAhead(dir),
  // `state` only, the memory being the one SaveAhead() handed out.
  // The VM stays paused, keeps its agent channel, and can be resumed (Resume() may then
  // restart the VMM on a private mapping of what was saved; should that fail, the VM
  // fails); the saved memory must never be written again, since every VM restored from
  // it maps it.
  [[nodiscard]] virtual Result<void> Save(const std::string& dir) = 0;
  // The saved VM that Save(dir) will write, opened ahead, so that VMs restored from it
  // can be started, and wait, before it is written: its memory as it will be saved, and
  // `dir/state` created empty for Save(dir) to fill. Call while the VM runs, before
  // Save(dir). Empty where the engine cannot tell in advance (RAM that is not the VM's
  // own file is copied by Save).
  [[nodiscard]] virtual Result<std::optional<VmSpec::Saved>> SaveAhead(const std::string& /*dir*/) {
    return std::optional<VmSpec::Saved>{};
  }
};

class Engine {
 public:
  virtual ~Engine() = default;
  // "qemu-tcg", "qemu-kvm", "kvm"
  [[nodiscard]] virtual std::string name() const = 0;
  // Whether VMs of this engine can carry the agent's channel over vsock.
  [[nodiscard]] virtual bool SupportsVsock() const { return false; }
  // The largest guest this engine runs here; every engine shares the host's limits.
  [[nodiscard]] virtual uint32_t max_vcpus() const { return GuestVcpuLimit(); }
  [[nodiscard]] virtual uint32_t max_memory_mib() const { return GuestMemoryLimitMib(); }
  // The VMM's own version, recorded in snapshots: "QEMU emulator version 7.2.22 ...".
  [[nodiscard]] virtual std::string version() const = 0;
  // Starts the VM process. Returns once it runs; the guest is still booting.
  [[nodiscard]] virtual Result<std::unique_ptr<Vm>> Start(const VmSpec& spec) = 0;
};

}  // namespace vessel::engine
