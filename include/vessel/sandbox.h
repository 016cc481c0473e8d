// Sandbox: a lifecycle-checked handle on one microVM.
//
// A Sandbox owns its VM: the VMM process, its runtime directory and the command channel.
// Destroying the Sandbox (or the last reference to it) kills and reaps the VMM and
// removes every file it made.
//
// Thread safety: all methods may be called from any thread. Commands on one sandbox are
// serialised: a second Execute() waits for the first.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vessel/error.h"

namespace vessel {

enum class EngineKind {
  kAuto,  // the QEMU engine with KVM where /dev/kvm is usable, else with TCG
  kQemu,
};

struct SandboxConfig {
  uint32_t vcpus = 1;         // 1 .. the host's CPU count (at most 8)
  uint32_t memory_mib = 256;  // 64 .. the engine's ceiling
  // Guest assets. Empty: $VESSEL_ASSET_DIR/{vmlinux,initramfs.cpio}, else the directory
  // the build wrote them to.
  std::string kernel;
  std::string initramfs;
  // From process start until the guest agent says hello.
  std::chrono::milliseconds boot_timeout{30'000};
  EngineKind engine = EngineKind::kAuto;
  std::string name;  // free text for logs and listings
};

// What to run. Argv runs a program (looked up in the guest's PATH when it has no '/');
// Shell runs a string with /bin/sh -c.
struct Command {
  std::vector<std::string> argv;

  static Command Argv(std::vector<std::string> argv) { return Command{std::move(argv)}; }
  static Command Shell(std::string script) { return Command{{"/bin/sh", "-c", std::move(script)}}; }
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

class Sandbox {
 public:
  // Boots a VM and waits for its agent. Errors: kInvalidConfig naming the field;
  // kUnsupportedPlatform when the engine cannot run here; kBackend when the VM does not
  // come up before boot_timeout (the message carries the VMM's output and the console
  // tail). Nothing is left behind on failure.
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

  // Kills the VM and removes its files. Valid in every state but kDestroyed (then:
  // Destroyed).
  [[nodiscard]] Result<void> Destroy();

  [[nodiscard]] SandboxState state() const;
  [[nodiscard]] const std::string& id() const;
  // The engine that runs this sandbox: "qemu-kvm" or "qemu-tcg".
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
