// Sandbox internals, visible to tests that drive a sandbox over a fake engine.
#pragma once

#include <memory>
#include <mutex>

#include "engine/engine.h"
#include "sandbox/connection.h"
#include "sandbox/lifecycle.h"
#include "vessel/sandbox.h"

namespace vessel {

class Sandbox::Impl {
 public:
  // Boots a VM on `engine` and waits for its agent.
  [[nodiscard]] static Result<std::unique_ptr<Sandbox>> Create(
      const SandboxConfig& config, std::unique_ptr<engine::Engine> engine);

  // The internals of a sandbox, for Vessel's own tools (the CLI's supervisor).
  static Impl& Of(Sandbox& sandbox) { return *sandbox.impl_; }

  Impl(std::unique_ptr<engine::Engine> engine, std::unique_ptr<engine::Vm> vm,
       std::shared_ptr<sandbox::Connection> connection, std::string agent_version);
  ~Impl();

  // Checks `op` against the lifecycle table; on success returns the connection to use.
  [[nodiscard]] Result<std::shared_ptr<sandbox::Connection>> Begin(sandbox::Operation op);
  // Passes a result through; a kBackend failure with a broken connection moves the
  // sandbox to kFailed (or reports Destroyed when Destroy() broke it).
  template <typename T>
  Result<T> End(Result<T> result);

  Result<void> Destroy();
  SandboxState state() const;

  std::string id_;
  std::string engine_name_;
  std::string agent_version_;

 private:
  mutable std::mutex mutex_;  // guards state_
  mutable SandboxState state_ = SandboxState::kReady;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<engine::Vm> vm_;
  std::shared_ptr<sandbox::Connection> connection_;
};

}  // namespace vessel
