// Snapshot, restore and fork of a sandbox.
//
// Saving: the agent's channel is quiesced at a frame boundary in both directions, the VM
// paused and saved by the engine, then both resumed. Restoring: the engine starts a VM
// from the saved files, and the agent is woken as a clone on a fresh channel: it reseeds
// its RNG, sets its clock and forgets the requests of the host it had before.
#include "snapshot/snapshot.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <thread>

#include "base/io.h"
#include "engine/select.h"
#include "image/image.h"
#include "sandbox/config.h"
#include "sandbox/sandbox_impl.h"

namespace vessel {
namespace {

// Quiescing and resuming the agent: it answers at once unless the VM is stuck.
constexpr auto kChannelTimeout = std::chrono::seconds(10);

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Removes what a failed snapshot left in `dir`, but not `dir` itself.
void RemoveSnapshotFiles(const std::string& dir) {
  for (const char* name : {snapshot::kManifestFile, snapshot::kStateFile, snapshot::kMemoryFile}) {
    ::unlink((dir + "/" + name).c_str());
  }
}

// The fork template the parent just saved into its own private directory.
Result<engine::VmSpec::Saved> OpenTemplate(const std::string& dir) {
  auto open = [&dir](const char* name) -> Result<std::shared_ptr<const UniqueFd>> {
    std::string path = dir + "/" + name;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return Fail(Error::HostIo("open " + path, errno));
    return std::make_shared<const UniqueFd>(std::move(fd));
  };
  auto memory = open(snapshot::kMemoryFile);
  if (!memory) return Fail(std::move(memory).error());
  auto state = open(snapshot::kStateFile);
  if (!state) return Fail(std::move(state).error());
  return engine::VmSpec::Saved{std::move(*memory), std::move(*state)};
}

}  // namespace

Result<void> Sandbox::Impl::SaveTo(const std::string& dir, const std::function<void()>& saved) {
  auto connection = CurrentConnection();
  if (auto r = connection->Quiesce(Deadline::After(kChannelTimeout)); !r) {
    // The agent may still quiesce late: wake it either way.
    (void)connection->Resume(sandbox::MakeResumeRequest(false), Deadline::After(kChannelTimeout));
    return End<void>(connection, Fail(std::move(r).error().Context("quiescing the agent")));
  }
  Result<void> written = vm_->Pause();
  if (written) written = vm_->Save(dir);
  // Whatever happened, the VM and its agent must run again.
  Result<protocol::Hello> woken = Fail(Error::Backend("not resumed"));
  auto resume = [&] {
    auto resumed = vm_->Resume();
    woken = resumed ? connection->Resume(sandbox::MakeResumeRequest(false),
                                         Deadline::After(kChannelTimeout))
                    : Result<protocol::Hello>(Fail(resumed.error()));
  };
  if (written && saved) {
    std::thread resumer(resume);
    saved();
    resumer.join();
  } else {
    resume();
  }
  if (!woken) {
    MarkFailed();
    return Fail(Error::Backend("the sandbox could not be resumed after saving it: " +
                               woken.error().message()));
  }
  return written;
}

Result<void> Sandbox::Impl::Snapshot(const std::string& dir) {
  std::lock_guard snapshot_lock(snapshot_mutex_);
  auto connection = Begin(sandbox::Operation::kSnapshot);
  if (!connection) return Fail(std::move(connection).error());
  if (auto r = snapshot::PrepareDirectory(dir); !r) return r;
  // This save is not the one the children started ahead wait for.
  (void)TakeForksAhead();
  if (auto r = SaveTo(dir); !r) {
    RemoveSnapshotFiles(dir);
    return r;
  }
  snapshot::Manifest manifest;
  manifest.engine = engine_name_;
  manifest.engine_version = engine_->version();
  manifest.vessel_version = VESSEL_VERSION;
  manifest.vcpus = spec_.vcpus;
  manifest.memory_mib = spec_.memory_mib;
  manifest.name = spec_.name;
  manifest.kernel_path = spec_.kernel;
  manifest.initramfs_path = spec_.initramfs;
  manifest.created_unix_ms = NowUnixMs();
  manifest.network = egress_->policy();
  if (spec_.image_ref) {
    manifest.image_digest = spec_.image_ref->digest;
    manifest.image_name = spec_.image_ref->name;
  }
  auto kernel = snapshot::AssetSha256(spec_.kernel);
  auto initramfs = snapshot::AssetSha256(spec_.initramfs);
  Result<void> written = !kernel      ? Fail(kernel.error())
                         : !initramfs ? Fail(initramfs.error())
                                      : Result<void>{};
  if (written) {
    manifest.kernel_sha256 = *kernel;
    manifest.initramfs_sha256 = *initramfs;
    auto key = snapshot::ThisHostKey();
    written = key ? snapshot::WriteManifest(dir, std::move(manifest), *key) : Fail(key.error());
  }
  // So that `vessel image rm` knows this snapshot needs the image.
  if (written && spec_.image_ref) {
    written = image::Store::Default().AddSnapshotRef(spec_.image_ref->digest, dir);
  }
  if (!written) RemoveSnapshotFiles(dir);
  return written;
}

Result<std::unique_ptr<Sandbox>> Sandbox::Impl::StartSaved(std::shared_ptr<engine::Engine> engine,
                                                           const engine::VmSpec& spec,
                                                           Deadline deadline) {
  auto vm = engine->Start(spec);
  if (!vm) return Fail(std::move(vm).error());
  return FinishSaved(std::move(engine), std::move(*vm), spec, deadline);
}

Result<std::unique_ptr<Sandbox>> Sandbox::Impl::FinishSaved(std::shared_ptr<engine::Engine> engine,
                                                            std::unique_ptr<engine::Vm> vm,
                                                            const engine::VmSpec& spec,
                                                            Deadline deadline) {
  auto fail = [&](const Error& error) -> Result<std::unique_ptr<Sandbox>> {
    std::string diagnostics = vm->Diagnostics();
    vm->Destroy();
    std::string why =
        fmt::format("the restored VM did not come up ({})\n{}", error.message(), diagnostics);
    if (error.timed_out()) return Fail(Error::Timeout(std::move(why)));
    // A saved state the engine refused is the snapshot's fault, not the engine's.
    if (error.kind() == ErrorKind::kSnapshotFormat)
      return Fail(Error::SnapshotFormat(std::move(why)));
    return Fail(Error::Backend(std::move(why)));
  };
  if (auto r = vm->Resume(); !r) return fail(r.error());
  if (auto r = vm->ConnectAgent(deadline); !r) return fail(r.error());
  auto connection = sandbox::Connection::Open(vm->agent_fd());
  if (!connection) return fail(connection.error());
  auto egress = ServeEgress(spec, *connection);
  auto hello = (*connection)->StartResumed(sandbox::MakeResumeRequest(true), deadline);
  if (!hello) return fail(hello.error());
  engine::VmSpec running = spec;
  running.restore.reset();
  auto impl = std::make_unique<Impl>(std::move(engine), std::move(vm), std::move(*connection),
                                     std::move(egress), hello->agent_version, std::move(running));
  return std::unique_ptr<Sandbox>(new Sandbox(std::move(impl)));
}

Result<sandbox::SavedVm> Sandbox::Impl::OpenSaved(const std::string& dir,
                                                  const RestoreOptions& options) {
  if (options.timeout.count() <= 0) {
    return Fail(Error::InvalidConfig("timeout", "must be positive"));
  }
  auto key = snapshot::ThisHostKey();
  if (!key) return Fail(std::move(key).error());
  auto opened = snapshot::Open(dir, snapshot::Depth::kRestore, *key);
  if (!opened) return Fail(std::move(opened).error());
  const snapshot::Manifest* manifest = &opened->manifest;
  auto engine =
      engine::Make(options.engine == EngineKind::kAuto ? engine::KindOfEngineName(manifest->engine)
                                                       : options.engine);
  if (!engine) return Fail(std::move(engine).error());
  SandboxConfig config;
  config.vcpus = manifest->vcpus;
  config.memory_mib = manifest->memory_mib;
  // This host's assets, never the paths the manifest names: a manifest is data from
  // wherever the snapshot came from, and must not choose what this host loads.
  config.kernel = options.kernel;
  config.initramfs = options.initramfs;
  config.name = options.name.empty() ? manifest->name : options.name;
  config.network = options.network.value_or(manifest->network);
  auto spec = sandbox::ValidateConfig(config, **engine);
  if (!spec) return Fail(std::move(spec).error().Context("restoring " + dir));
  if (auto r =
          snapshot::CheckCompatible(*manifest, (*engine)->name(), spec->kernel, spec->initramfs);
      !r) {
    return Fail(std::move(r).error());
  }
  if (!manifest->image_digest.empty()) {
    auto use = image::Store::Default().UseForSnapshot(manifest->image_digest, manifest->image_name);
    if (!use) return Fail(std::move(use).error().Context("restoring " + dir));
    sandbox::AttachImage(*spec, std::make_shared<image::ImageUse>(std::move(*use)), 0);
  }
  spec->restore = engine::VmSpec::Saved{std::make_shared<const UniqueFd>(std::move(opened->memory)),
                                        std::make_shared<const UniqueFd>(std::move(opened->state))};
  return sandbox::SavedVm{std::move(*engine), std::move(*spec)};
}

Result<std::unique_ptr<Sandbox>> Sandbox::Restore(const std::string& dir,
                                                  const RestoreOptions& options) {
  auto saved = Impl::OpenSaved(dir, options);
  if (!saved) return Fail(std::move(saved).error());
  return Impl::StartSaved(std::move(saved->engine), saved->spec, Deadline::After(options.timeout));
}

Sandbox::Impl::ForkAhead::~ForkAhead() {
  children.clear();
  (void)RemoveTree(dir);
}

Result<std::unique_ptr<Sandbox::Impl::ForkAhead>> Sandbox::Impl::PrepareFork(uint32_t n) {
  auto ahead = std::make_unique<ForkAhead>();
  std::string dir = vm_->private_dir() + fmt::format("/fork-{}", NowUnixMs());
  if (::mkdir(dir.c_str(), 0700) != 0) return Fail(Error::HostIo("create " + dir, errno));
  ahead->dir = dir;
  // Where the engine opens the template ahead, children can start before the save: their
  // VMMs map the memory and load the state once the save has written it.
  auto saved = vm_->SaveAhead(dir);
  if (!saved) return Fail(std::move(saved).error());
  ahead->saved = std::move(*saved);
  if (!ahead->saved || n == 0) return ahead;
  engine::VmSpec spec = spec_;
  spec.restore = *ahead->saved;
  std::vector<Result<std::unique_ptr<engine::Vm>>> started;
  for (uint32_t i = 0; i < n; ++i) started.emplace_back(Fail(Error::Backend("not started")));
  std::vector<std::thread> starters;
  for (uint32_t i = 0; i < n; ++i) {
    starters.emplace_back([&, i] { started[i] = engine_->Start(spec); });
  }
  for (auto& starter : starters) starter.join();
  for (auto& vm : started) {
    if (!vm) return Fail(std::move(vm).error());
    ahead->children.push_back(std::move(*vm));
  }
  return ahead;
}

Result<void> Sandbox::Impl::StartForksAhead(uint32_t n) {
  std::lock_guard snapshot_lock(snapshot_mutex_);
  auto ahead = PrepareFork(n);
  if (!ahead) return Fail(std::move(ahead).error());
  std::lock_guard lock(ahead_mutex_);
  fork_ahead_ = std::move(*ahead);
  return {};
}

std::unique_ptr<Sandbox::Impl::ForkAhead> Sandbox::Impl::TakeForksAhead() {
  std::lock_guard lock(ahead_mutex_);
  return std::move(fork_ahead_);
}

Result<std::vector<std::unique_ptr<Sandbox>>> Sandbox::Impl::Fork(uint32_t n) {
  if (n < 1 || n > kMaxForks) {
    return Fail(Error::InvalidConfig("n", fmt::format("{} is outside 1..{}", n, kMaxForks)));
  }
  std::lock_guard snapshot_lock(snapshot_mutex_);
  auto connection = Begin(sandbox::Operation::kFork);
  if (!connection) return Fail(std::move(connection).error());
  // The template lives in the parent's private directory just long enough for the
  // children to map its memory and load its state; their mappings outlive the files.
  // Children started ahead (SandboxConfig::forks_ahead) are used first.
  auto ahead = TakeForksAhead();
  if (!ahead) {
    auto prepared = PrepareFork(0);
    if (!prepared) return Fail(std::move(prepared).error());
    ahead = std::move(*prepared);
  }
  engine::VmSpec spec = spec_;
  spec.network = egress_->policy();  // the children start with the policy in force now
  std::vector<Result<std::unique_ptr<Sandbox>>> children;
  for (uint32_t i = 0; i < n; ++i) children.emplace_back(Fail(Error::Backend("not started")));
  auto deadline = Deadline::After(std::chrono::milliseconds(30'000));
  // Where the engine opens the template ahead, each child's VMM not started yet starts
  // now, in a thread of its own, mapping the memory while the parent is saved, and loads
  // the state once the save says it is written (or is destroyed should the save fail).
  std::promise<bool> written;
  std::shared_future<bool> go = written.get_future().share();
  struct Early {
    std::promise<bool>& written;
    std::vector<std::thread> threads;
    void Release(bool ok) {
      if (threads.empty()) return;
      written.set_value(ok);
      for (auto& thread : threads) thread.join();
      threads.clear();
    }
    ~Early() { Release(false); }
  } early{written, {}};
  if (ahead->saved) {
    spec.restore = *ahead->saved;
    for (uint32_t i = 0; i < n; ++i) {
      std::unique_ptr<engine::Vm> ready;
      if (i < ahead->children.size() && ahead->children[i]->Running()) {
        ready = std::move(ahead->children[i]);
      }
      early.threads.emplace_back([&, i, ready = std::move(ready)]() mutable {
        auto vm =
            ready ? Result<std::unique_ptr<engine::Vm>>(std::move(ready)) : engine_->Start(spec);
        bool ok = go.get();
        if (!vm) {
          children[i] = Fail(std::move(vm).error());
        } else if (ok) {
          children[i] = FinishSaved(engine_, std::move(*vm), spec, deadline);
        }
      });
    }
  }
  // The children start from the template while the parent resumes.
  auto start_children = [&] {
    if (!early.threads.empty()) return early.Release(true);
    auto saved = OpenTemplate(ahead->dir);
    if (!saved) {
      for (auto& child : children) child = Fail(saved.error());
      return;
    }
    spec.restore = std::move(*saved);
    std::vector<std::thread> starters;
    for (uint32_t i = 0; i < n; ++i) {
      starters.emplace_back([&, i] { children[i] = StartSaved(engine_, spec, deadline); });
    }
    for (auto& starter : starters) starter.join();
  };
  if (auto r = SaveTo(ahead->dir, start_children); !r) return Fail(std::move(r).error());
  std::vector<std::unique_ptr<Sandbox>> forked;
  for (auto& child : children) {
    if (!child) return Fail(std::move(child).error().Context("forking"));  // the others die here
    forked.push_back(std::move(*child));
  }
  return forked;
}

namespace sandbox {

Result<SavedVm> OpenSaved(const std::string& dir, const RestoreOptions& options) {
  return Sandbox::Impl::OpenSaved(dir, options);
}

Result<std::unique_ptr<Sandbox>> StartSaved(std::shared_ptr<engine::Engine> engine,
                                            const engine::VmSpec& spec, Deadline deadline) {
  return Sandbox::Impl::StartSaved(std::move(engine), spec, deadline);
}

Result<std::unique_ptr<Sandbox>> FinishSaved(std::shared_ptr<engine::Engine> engine,
                                             std::unique_ptr<engine::Vm> vm,
                                             const engine::VmSpec& spec, Deadline deadline) {
  return Sandbox::Impl::FinishSaved(std::move(engine), std::move(vm), spec, deadline);
}

}  // namespace sandbox
}  // namespace vessel
