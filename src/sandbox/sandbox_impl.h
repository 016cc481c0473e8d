// Sandbox internals, visible to tests that drive a sandbox over a fake engine.
#pragma once

#include <memory>
#include <mutex>

#include "engine/engine.h"
#include "sandbox/agent_client.h"
#include "sandbox/lifecycle.h"
#include "vessel/sandbox.h"

namespace vessel {

class Sandbox::Impl {
 public:
  // Boots a VM on `engine` and waits for its agent.
  [[nodiscard]] static Result<std::unique_ptr<Sandbox>> Create(
      const SandboxConfig& config, std::unique_ptr<engine::Engine> engine);

  Impl(std::unique_ptr<engine::Engine> engine, std::unique_ptr<engine::Vm> vm,
       std::string agent_version);
  ~Impl();

  Result<ExecResult> Execute(const Command& command, const ExecOptions& options);
  Result<void> Destroy();
  SandboxState state() const;

  std::string id_;
  std::string engine_name_;
  std::string agent_version_;

 private:
  // Checks `op` against the lifecycle table under state_mutex_.
  Result<void> Permit(sandbox::Operation op) const;

  mutable std::mutex state_mutex_;  // guards state_
  SandboxState state_ = SandboxState::kReady;
  std::mutex command_mutex_;  // serialises use of the channel; guards client_
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<engine::Vm> vm_;
  sandbox::AgentClient client_;
};

}  // namespace vessel
