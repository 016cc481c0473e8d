// Sandbox internals, visible to tests that drive a sandbox over a fake engine.
#pragma once

#include <functional>
#include <memory>
#include <mutex>

#include "base/deadline.h"
#include "engine/engine.h"
#include "sandbox/connection.h"
#include "sandbox/egress.h"
#include "sandbox/lifecycle.h"
#include "sandbox/saved_vm.h"
#include "vessel/sandbox.h"

namespace vessel {

class Sandbox::Impl {
 public:
  // Boots a VM on `engine` and waits for its agent.
  [[nodiscard]] static Result<std::unique_ptr<Sandbox>> Create(
      const SandboxConfig& config, std::unique_ptr<engine::Engine> engine);

  // The internals of a sandbox, for the adapters in src/sandbox (raw_agent.cc) only.
  static Impl& Of(Sandbox& sandbox) { return *sandbox.impl_; }

  // Behind sandbox/saved_vm.h, which the pools use.
  [[nodiscard]] static Result<sandbox::SavedVm> OpenSaved(const std::string& dir,
                                                          const RestoreOptions& options);
  [[nodiscard]] static Result<std::unique_ptr<Sandbox>> StartSaved(
      std::shared_ptr<engine::Engine> engine, const engine::VmSpec& spec, Deadline deadline);
  [[nodiscard]] static Result<std::unique_ptr<Sandbox>> FinishSaved(
      std::shared_ptr<engine::Engine> engine, std::unique_ptr<engine::Vm> vm,
      const engine::VmSpec& spec, Deadline deadline);

  Impl(std::shared_ptr<engine::Engine> engine, std::unique_ptr<engine::Vm> vm,
       std::shared_ptr<sandbox::Connection> connection, std::shared_ptr<sandbox::Egress> egress,
       std::string agent_version, engine::VmSpec spec);
  // The egress relay for `spec`'s policy, serving `connection`, which is not started yet.
  static std::shared_ptr<sandbox::Egress> ServeEgress(
      const engine::VmSpec& spec, const std::shared_ptr<sandbox::Connection>& connection);
  ~Impl();

  // Checks `op` against the lifecycle table; on success returns the connection to use.
  // When the agent's channel was lost while the VM goes on (see AgentChannelLost() in
  // engine.h), first connects it again, for up to kReconnectTimeout: VsockNotConnected
  // when that fails while the VM runs.
  [[nodiscard]] Result<std::shared_ptr<sandbox::Connection>> Begin(sandbox::Operation op);
  // Passes through a result of an operation on `used`; a kBackend failure with a broken
  // connection moves the sandbox to kFailed (or reports Destroyed when Destroy() broke
  // it), except that a channel lost while the VM goes on is VsockNotConnected and leaves
  // the sandbox ready.
  template <typename T>
  Result<T> End(const std::shared_ptr<sandbox::Connection>& used, Result<T> result);

  Result<void> Destroy();
  SandboxState state() const;

  // Saves the VM to `dir` (which exists and is empty): the agent is quiesced, the VM
  // paused and saved, and both resumed. Once `dir` is complete, `saved` runs while the VM
  // resumes (forks start their children from it meanwhile). Callers hold snapshot_mutex_.
  [[nodiscard]] Result<void> SaveTo(const std::string& dir,
                                    const std::function<void()>& saved = {});
  [[nodiscard]] Result<void> Snapshot(const std::string& dir);
  [[nodiscard]] Result<std::vector<std::unique_ptr<Sandbox>>> Fork(uint32_t n);
  // Prepares the next fork now, with `n` children started (SandboxConfig::forks_ahead).
  [[nodiscard]] Result<void> StartForksAhead(uint32_t n);

  std::string id_;
  std::string engine_name_;
  std::string agent_version_;
  engine::VmSpec spec_;

 private:
  // Marks the sandbox failed after an error it cannot recover from.
  void MarkFailed();
  // The connection in use now.
  std::shared_ptr<sandbox::Connection> CurrentConnection() const;
  // With mutex_ held: when the connection broke while the sandbox was ready, decides
  // whether the VM failed or only its channel was lost.
  void NoteChannelFailure() const;
  // Connects the lost channel again and starts a new connection on it.
  [[nodiscard]] Result<void> Reconnect();

  // A fork's template directory in the VM's private directory and, where the engine saves
  // in place (Vm::SaveAhead), the saved VM it will hold and children started from it,
  // waiting. Going, it stops the children left and removes the directory.
  struct ForkAhead {
    std::string dir;
    std::optional<engine::VmSpec::Saved> saved;
    std::vector<std::unique_ptr<engine::Vm>> children;
    ~ForkAhead();
  };
  // A new ForkAhead, with `n` children started when the engine saves in place.
  [[nodiscard]] Result<std::unique_ptr<ForkAhead>> PrepareFork(uint32_t n);
  // The ForkAhead that StartForksAhead() made, if it is still there.
  std::unique_ptr<ForkAhead> TakeForksAhead();

  std::mutex snapshot_mutex_;   // one snapshot or fork at a time
  std::mutex reconnect_mutex_;  // one reconnection at a time; Destroy() waits for it
  mutable std::mutex mutex_;    // guards state_, channel_lost_ and connection_
  mutable SandboxState state_ = SandboxState::kReady;
  // The channel ended while the VM goes on; the next operation reconnects first.
  mutable bool channel_lost_ = false;
  std::shared_ptr<engine::Engine> engine_;
  std::unique_ptr<engine::Vm> vm_;
  std::shared_ptr<sandbox::Connection> connection_;
  std::mutex ahead_mutex_;                 // guards fork_ahead_
  std::unique_ptr<ForkAhead> fork_ahead_;  // from StartForksAhead(), until used or let go

 public:
  // Serves every connection the sandbox has, the first and those after a reconnect.
  const std::shared_ptr<sandbox::Egress> egress_;
};

}  // namespace vessel
