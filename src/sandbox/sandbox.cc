#include "vessel/sandbox.h"

#include <fmt/format.h>
#include <sys/socket.h>

#include "engine/qemu/qemu_engine.h"
#include "sandbox/config.h"
#include "sandbox/sandbox_impl.h"

namespace vessel {
namespace {

// How long the host waits past a command's own timeout before declaring the agent lost.
constexpr auto kAgentGrace = std::chrono::seconds(10);

Result<std::unique_ptr<engine::Engine>> MakeEngine(EngineKind kind) {
  switch (kind) {
    case EngineKind::kAuto:
    case EngineKind::kQemu: return std::make_unique<engine::qemu::QemuEngine>();
  }
  return Fail(Error::InvalidConfig("engine", "unknown engine"));
}

}  // namespace

Result<std::unique_ptr<Sandbox>> Sandbox::Impl::Create(const SandboxConfig& config,
                                                       std::unique_ptr<engine::Engine> engine) {
  auto spec = sandbox::ValidateConfig(config, *engine);
  if (!spec) return Fail(std::move(spec).error());
  auto vm = engine->Start(*spec);
  if (!vm) return Fail(std::move(vm).error());
  sandbox::AgentClient client((*vm)->agent_fd());
  auto hello = client.AwaitHello(Deadline::After(config.boot_timeout));
  if (!hello) {
    std::string diagnostics = (*vm)->Diagnostics();
    (*vm)->Destroy();
    return Fail(Error::Backend(
        fmt::format("the VM did not come up ({})\n{}", hello.error().message(), diagnostics)));
  }
  auto impl = std::make_unique<Impl>(std::move(engine), std::move(*vm), hello->agent_version);
  return std::unique_ptr<Sandbox>(new Sandbox(std::move(impl)));
}

Sandbox::Impl::Impl(std::unique_ptr<engine::Engine> engine, std::unique_ptr<engine::Vm> vm,
                    std::string agent_version)
    : id_(vm->id()),
      engine_name_(engine->name()),
      agent_version_(std::move(agent_version)),
      engine_(std::move(engine)),
      vm_(std::move(vm)),
      client_(vm_->agent_fd()) {}

Sandbox::Impl::~Impl() { (void)Destroy(); }

SandboxState Sandbox::Impl::state() const {
  std::lock_guard lock(state_mutex_);
  return state_;
}

Result<void> Sandbox::Impl::Permit(sandbox::Operation op) const {
  std::lock_guard lock(state_mutex_);
  if (auto error = sandbox::Check(state_, op)) return Fail(Error::Lifecycle(std::move(*error)));
  return {};
}

Result<ExecResult> Sandbox::Impl::Execute(const Command& command, const ExecOptions& options) {
  auto request = sandbox::MakeExecRequest(command, options);
  if (!request) return Fail(std::move(request).error());
  std::lock_guard command_lock(command_mutex_);
  if (auto permitted = Permit(sandbox::Operation::kExecute); !permitted) {
    return Fail(std::move(permitted).error());
  }
  Deadline deadline = options.timeout.count() > 0 ? Deadline::After(options.timeout + kAgentGrace)
                                                  : Deadline::Never();
  auto result = client_.Execute(*request, deadline);
  if (result || result.error().kind() != ErrorKind::kBackend) return result;

  std::lock_guard lock(state_mutex_);
  // Destroy() from another thread cut the channel under this command.
  if (state_ == SandboxState::kDestroyed) {
    return Fail(Error::Lifecycle(
        {LifecycleError::Destroyed{"the sandbox was destroyed during the command"}}));
  }
  state_ = SandboxState::kFailed;
  std::string why = result.error().message();
  if (!vm_->Running()) why += "; the VM exited\n" + vm_->Diagnostics();
  return Fail(Error::Backend(why));
}

Result<void> Sandbox::Impl::Destroy() {
  {
    std::lock_guard lock(state_mutex_);
    if (auto error = sandbox::Check(state_, sandbox::Operation::kDestroy)) {
      return Fail(Error::Lifecycle(std::move(*error)));
    }
    state_ = SandboxState::kDestroyed;
    // Wakes a command blocked on the channel; it returns once it sees the state.
    ::shutdown(vm_->agent_fd(), SHUT_RDWR);
  }
  std::lock_guard command_lock(command_mutex_);
  vm_->Destroy();
  return {};
}

Result<std::unique_ptr<Sandbox>> Sandbox::Create(const SandboxConfig& config) {
  auto engine = MakeEngine(config.engine);
  if (!engine) return Fail(std::move(engine).error());
  return Impl::Create(config, std::move(*engine));
}

Sandbox::Sandbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Sandbox::~Sandbox() = default;

Result<ExecResult> Sandbox::Execute(const Command& command, const ExecOptions& options) {
  return impl_->Execute(command, options);
}
Result<void> Sandbox::Destroy() { return impl_->Destroy(); }
SandboxState Sandbox::state() const { return impl_->state(); }
const std::string& Sandbox::id() const { return impl_->id_; }
const std::string& Sandbox::engine_name() const { return impl_->engine_name_; }
const std::string& Sandbox::agent_version() const { return impl_->agent_version_; }

}  // namespace vessel
