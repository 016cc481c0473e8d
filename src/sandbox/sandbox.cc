#include "vessel/sandbox.h"

#include <fmt/format.h>

#include "engine/select.h"
#include "sandbox/config.h"
#include "sandbox/files.h"
#include "sandbox/process.h"
#include "sandbox/sandbox_impl.h"

namespace vessel {

namespace {

// How long an operation waits for a lost vsock channel to come back before it returns
// VsockNotConnected.
constexpr auto kReconnectTimeout = std::chrono::seconds(1);

Error DestroyedError() {
  return Error::Lifecycle({LifecycleError::Destroyed{"the sandbox was destroyed"}});
}

Error ChannelLostError(std::string_view why) {
  return Error::Lifecycle({LifecycleError::VsockNotConnected{}}).Context(why);
}

}  // namespace

Result<std::unique_ptr<Sandbox>> Sandbox::Impl::Create(const SandboxConfig& config,
                                                       std::unique_ptr<engine::Engine> engine) {
  auto spec = sandbox::ValidateConfig(config, *engine);
  if (!spec) return Fail(std::move(spec).error());
  auto deadline = Deadline::After(config.boot_timeout);
  auto vm = engine->Start(*spec);
  if (!vm) return Fail(std::move(vm).error());
  auto fail = [&](const Error& error) -> Result<std::unique_ptr<Sandbox>> {
    std::string diagnostics = (*vm)->Diagnostics();
    (*vm)->Destroy();
    if (error.kind() == ErrorKind::kLifecycle) {
      // Kept as it is (VsockNotConnected: the guest never accepted), with the output.
      return Fail(Error(error).Context(fmt::format("the VM did not come up\n{}\n", diagnostics)));
    }
    std::string why = fmt::format("the VM did not come up ({})\n{}", error.message(), diagnostics);
    return Fail(error.timed_out() ? Error::Timeout(std::move(why))
                                  : Error::Backend(std::move(why)));
  };
  if (auto r = (*vm)->ConnectAgent(deadline); !r) return fail(r.error());
  auto connection = sandbox::Connection::Open((*vm)->agent_fd());
  if (!connection) return fail(connection.error());
  auto egress = ServeEgress(*spec, *connection);
  auto hello = (*connection)->Start(deadline);
  if (!hello) return fail(hello.error());
  auto impl = std::make_unique<Impl>(std::move(engine), std::move(*vm), std::move(*connection),
                                     std::move(egress), hello->agent_version, std::move(*spec));
  if (config.forks_ahead > 0) {
    if (auto r = impl->StartForksAhead(config.forks_ahead); !r) {
      return Fail(std::move(r).error().Context("starting the children of a fork ahead"));
    }
  }
  return std::unique_ptr<Sandbox>(new Sandbox(std::move(impl)));
}

std::shared_ptr<sandbox::Egress> Sandbox::Impl::ServeEgress(
    const engine::VmSpec& spec, const std::shared_ptr<sandbox::Connection>& connection) {
  // The spec's policy was checked when it was made; should it not pass again, nothing is
  // allowed.
  auto policy = sandbox::CheckNetworkPolicy(spec.network);
  auto egress = std::make_shared<sandbox::Egress>(
      policy ? std::move(*policy) : *sandbox::CheckNetworkPolicy(NetworkPolicy{}));
  egress->Attach(connection);
  return egress;
}

Sandbox::Impl::Impl(std::shared_ptr<engine::Engine> engine, std::unique_ptr<engine::Vm> vm,
                    std::shared_ptr<sandbox::Connection> connection,
                    std::shared_ptr<sandbox::Egress> egress, std::string agent_version,
                    engine::VmSpec spec)
    : id_(vm->id()),
      engine_name_(engine->name()),
      agent_version_(std::move(agent_version)),
      spec_(std::move(spec)),
      engine_(std::move(engine)),
      vm_(std::move(vm)),
      connection_(std::move(connection)),
      egress_(std::move(egress)) {}

Sandbox::Impl::~Impl() {
  (void)Destroy();
  egress_->Stop();
}

void Sandbox::Impl::NoteChannelFailure() const {
  if (state_ != SandboxState::kReady) return;
  if (channel_lost_) {
    // A guest that reboots resets its devices first: the VMM may exit after the channel
    // was taken for merely lost.
    if (!vm_->Running()) state_ = SandboxState::kFailed;
    return;
  }
  if (!connection_->failure()) return;
  // A channel that broke while nobody was using it still means a failed VM, unless the
  // VM goes on without it.
  if (vm_->AgentChannelLost()) {
    channel_lost_ = true;
  } else {
    state_ = SandboxState::kFailed;
  }
}

SandboxState Sandbox::Impl::state() const {
  std::lock_guard lock(mutex_);
  NoteChannelFailure();
  return state_;
}

std::shared_ptr<sandbox::Connection> Sandbox::Impl::CurrentConnection() const {
  std::lock_guard lock(mutex_);
  return connection_;
}

Result<std::shared_ptr<sandbox::Connection>> Sandbox::Impl::Begin(sandbox::Operation op) {
  {
    std::lock_guard lock(mutex_);
    NoteChannelFailure();
    if (auto error = sandbox::Check(state_, op)) return Fail(Error::Lifecycle(std::move(*error)));
    if (!channel_lost_ || op == sandbox::Operation::kDestroy) return connection_;
  }
  if (auto r = Reconnect(); !r) return Fail(std::move(r).error());
  std::lock_guard lock(mutex_);
  if (auto error = sandbox::Check(state_, op)) return Fail(Error::Lifecycle(std::move(*error)));
  return connection_;
}

Result<void> Sandbox::Impl::Reconnect() {
  std::lock_guard reconnect_lock(reconnect_mutex_);
  {
    std::lock_guard lock(mutex_);
    if (!channel_lost_ || state_ != SandboxState::kReady) return {};
  }
  auto deadline = Deadline::After(kReconnectTimeout);
  if (auto r = vm_->ConnectAgent(deadline); !r) {
    if (r.error().kind() == ErrorKind::kLifecycle) return r;
    MarkFailed();
    return Fail(
        Error::Backend("the agent's channel was lost and the VM exited: " + r.error().message()));
  }
  auto connection = sandbox::Connection::Open(vm_->agent_fd());
  if (!connection) return Fail(std::move(connection).error());
  egress_->Attach(*connection);
  auto hello = (*connection)->Start(deadline);
  if (!hello) {
    (*connection)->Shutdown(hello.error());
    return Fail(ChannelLostError("reconnecting to the guest agent: " + hello.error().message()));
  }
  std::lock_guard lock(mutex_);
  if (state_ != SandboxState::kReady) {
    (*connection)->Shutdown(DestroyedError());
    return {};
  }
  connection_ = std::move(*connection);
  channel_lost_ = false;
  return {};
}

template <typename T>
Result<T> Sandbox::Impl::End(const std::shared_ptr<sandbox::Connection>& used, Result<T> result) {
  if (result || result.error().kind() != ErrorKind::kBackend || !used->failure()) return result;
  std::lock_guard lock(mutex_);
  if (state_ == SandboxState::kDestroyed) return Fail(DestroyedError());
  if (used == connection_) NoteChannelFailure();
  if (state_ == SandboxState::kReady && (channel_lost_ || used != connection_)) {
    return Fail(ChannelLostError(result.error().message()));
  }
  state_ = SandboxState::kFailed;
  std::string why = result.error().message();
  if (!vm_->Running()) why += "; the VM exited\n" + vm_->Diagnostics();
  return Fail(Error::Backend(why));
}

Result<void> Sandbox::Impl::Destroy() {
  std::shared_ptr<sandbox::Connection> connection;
  {
    std::lock_guard lock(mutex_);
    if (auto error = sandbox::Check(state_, sandbox::Operation::kDestroy)) {
      return Fail(Error::Lifecycle(std::move(*error)));
    }
    state_ = SandboxState::kDestroyed;
    connection = connection_;
  }
  // Every waiter, here or in a Process handle, wakes up with Destroyed.
  connection->Shutdown(DestroyedError());
  egress_->Stop();
  (void)TakeForksAhead();
  std::lock_guard reconnect_lock(reconnect_mutex_);
  vm_->Destroy();
  return {};
}

void Sandbox::Impl::MarkFailed() {
  std::lock_guard lock(mutex_);
  if (state_ != SandboxState::kDestroyed) state_ = SandboxState::kFailed;
}

Result<std::unique_ptr<Sandbox>> Sandbox::Create(const SandboxConfig& config) {
  auto engine = engine::Make(config.engine);
  if (!engine) return Fail(std::move(engine).error());
  return Impl::Create(config, std::move(*engine));
}

Sandbox::Sandbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Sandbox::~Sandbox() = default;

Result<std::unique_ptr<Process>> Sandbox::Start(const Command& command,
                                                const ExecOptions& options) {
  auto connection = impl_->Begin(sandbox::Operation::kExecute);
  if (!connection) return Fail(std::move(connection).error());
  return impl_->End(*connection,
                    sandbox::StartProcess(*connection, command, options, /*close_stdin=*/false));
}

Result<ExecResult> Sandbox::Execute(const Command& command, const ExecOptions& options) {
  auto connection = impl_->Begin(sandbox::Operation::kExecute);
  if (!connection) return Fail(std::move(connection).error());
  auto process = sandbox::StartProcess(*connection, command, options, /*close_stdin=*/true);
  if (!process) return impl_->End<ExecResult>(*connection, Fail(std::move(process).error()));
  return impl_->End(*connection, (*process)->Wait());
}

Result<std::string> Sandbox::ReadFile(const std::string& path) {
  std::string data;
  auto info = ReadFileStream(path, [&](std::span<const uint8_t> chunk) -> Result<void> {
    if (data.size() + chunk.size() > sandbox::kMaxWholeFileBytes) {
      return Fail(Error::InvalidConfig(
          "path", fmt::format("{} is larger than {} MiB, the most ReadFile holds in memory; "
                              "read it with ReadFileStream",
                              path, sandbox::kMaxWholeFileBytes >> 20)));
    }
    data.append(reinterpret_cast<const char*>(chunk.data()), chunk.size());
    return {};
  });
  if (!info) return Fail(std::move(info).error());
  return data;
}

Result<void> Sandbox::WriteFile(const std::string& path, std::string_view data, uint32_t mode) {
  size_t offset = 0;
  return WriteFileStream(
      path,
      [&](std::span<uint8_t> buf) -> Result<size_t> {
        size_t n = std::min(buf.size(), data.size() - offset);
        std::copy_n(data.data() + offset, n, buf.data());
        offset += n;
        return n;
      },
      mode);
}

Result<FileInfo> Sandbox::ReadFileStream(const std::string& path, const ChunkSink& sink) {
  auto connection = impl_->Begin(sandbox::Operation::kFiles);
  if (!connection) return Fail(std::move(connection).error());
  return impl_->End(*connection, sandbox::ReadFileChunks(**connection, path, sink));
}

Result<void> Sandbox::WriteFileStream(const std::string& path, const ChunkSource& source,
                                      uint32_t mode) {
  auto connection = impl_->Begin(sandbox::Operation::kFiles);
  if (!connection) return Fail(std::move(connection).error());
  return impl_->End(*connection, sandbox::WriteFileChunks(**connection, path, source, mode));
}

Result<std::vector<FileInfo>> Sandbox::ListDir(const std::string& path) {
  auto connection = impl_->Begin(sandbox::Operation::kFiles);
  if (!connection) return Fail(std::move(connection).error());
  return impl_->End(*connection, sandbox::ListDirectory(**connection, path));
}

Result<FileInfo> Sandbox::Stat(const std::string& path) {
  auto connection = impl_->Begin(sandbox::Operation::kFiles);
  if (!connection) return Fail(std::move(connection).error());
  return impl_->End(*connection, sandbox::StatFile(**connection, path));
}

Result<bool> Sandbox::Exists(const std::string& path) {
  auto info = Stat(path);
  if (info) return true;
  if (info.error().guest_file_kind() == GuestFileErrorKind::kNotFound) return false;
  return Fail(std::move(info).error());
}

Result<void> Sandbox::MakeDir(const std::string& path, bool parents, uint32_t mode) {
  auto connection = impl_->Begin(sandbox::Operation::kFiles);
  if (!connection) return Fail(std::move(connection).error());
  return impl_->End(*connection, sandbox::MakeDirectory(**connection, path, parents, mode));
}

Result<void> Sandbox::Remove(const std::string& path, bool recursive) {
  auto connection = impl_->Begin(sandbox::Operation::kFiles);
  if (!connection) return Fail(std::move(connection).error());
  return impl_->End(*connection, sandbox::RemovePath(**connection, path, recursive));
}

Result<void> Sandbox::Rename(const std::string& from, const std::string& to) {
  auto connection = impl_->Begin(sandbox::Operation::kFiles);
  if (!connection) return Fail(std::move(connection).error());
  return impl_->End(*connection, sandbox::RenamePath(**connection, from, to));
}

Result<void> Sandbox::Snapshot(const std::string& dir) { return impl_->Snapshot(dir); }
Result<std::vector<std::unique_ptr<Sandbox>>> Sandbox::Fork(uint32_t n) { return impl_->Fork(n); }
Result<void> Sandbox::Destroy() { return impl_->Destroy(); }
SandboxState Sandbox::state() const { return impl_->state(); }
const std::string& Sandbox::id() const { return impl_->id_; }
const std::string& Sandbox::engine_name() const { return impl_->engine_name_; }
const std::string& Sandbox::agent_version() const { return impl_->agent_version_; }

Result<void> Sandbox::SetNetwork(const NetworkPolicy& policy) {
  auto connection = impl_->Begin(sandbox::Operation::kExecute);
  if (!connection) return Fail(std::move(connection).error());
  auto checked = sandbox::CheckNetworkPolicy(policy);
  if (!checked) return Fail(std::move(checked).error());
  impl_->egress_->SetPolicy(std::move(*checked));
  return {};
}

NetworkPolicy Sandbox::network() const { return impl_->egress_->policy(); }

NetworkStats Sandbox::network_stats() const { return impl_->egress_->stats(); }

}  // namespace vessel
