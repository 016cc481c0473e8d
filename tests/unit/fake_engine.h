// A fake engine whose VMs are fake agents on threads of this process, for tests of what
// sits above a sandbox (pools) without a VMM. A VM booted by it says hello at once; one
// started from a saved VM (spec.restore set) waits, however long, for the host's Resume.
// Either then runs every Exec at once: "echo ARGS" prints ARGS, "false" exits 1, "hang"
// starts and never ends, anything else exits 0.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "fake_agent.h"

namespace vessel::sandbox::test {

// Longer than any test: a fake agent waits for the host until its VM is destroyed.
inline constexpr std::chrono::hours kForever{24};

class FakeVm;

// Every VM of a FakeEngine, so a test can count, break and slow them. Thread safe.
class FakeVms {
 public:
  // Started and not yet destroyed.
  size_t live() const {
    std::lock_guard lock(mutex_);
    return live_.size();
  }
  std::vector<std::string> started() const {
    std::lock_guard lock(mutex_);
    return started_;
  }
  std::vector<std::string> destroyed() const {
    std::lock_guard lock(mutex_);
    return destroyed_;
  }
  // Makes every live VM fail as if its VMM had died: its agent's end of the channel
  // closes, so the host reads the end of the stream, and Running() turns false.
  inline void KillAll();
  // The next `n` starts fail with kBackend.
  void FailStarts(int n) {
    std::lock_guard lock(mutex_);
    failing_starts_ = n;
  }
  // Each start takes this long first.
  void SetStartDelay(std::chrono::milliseconds delay) {
    std::lock_guard lock(mutex_);
    start_delay_ = delay;
  }

 private:
  friend class FakeVm;
  friend class FakeEngine;

  mutable std::mutex mutex_;
  std::vector<FakeVm*> live_;
  std::vector<std::string> started_;
  std::vector<std::string> destroyed_;
  int failing_starts_ = 0;
  std::chrono::milliseconds start_delay_{0};
  uint64_t next_id_ = 1;
};

class FakeVm final : public engine::Vm {
 public:
  FakeVm(std::shared_ptr<FakeVms> vms, std::string id, bool restored)
      : vms_(std::move(vms)), id_(std::move(id)) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      ADD_FAILURE() << "socketpair failed";
      return;
    }
    host_ = UniqueFd(fds[0]);
    agent_fd_ = fds[1];
    agent_ = FakeAgent(UniqueFd(fds[1]));
    agent_thread_ = std::thread([this, restored] { Serve(restored); });
  }
  ~FakeVm() override { Destroy(); }

  const std::string& id() const override { return id_; }
  int agent_fd() const override { return host_.get(); }
  const std::string& private_dir() const override { return private_dir_; }
  bool Running() override { return !killed_ && !destroyed_; }
  Result<std::string> RunState() override {
    return std::string(Running() ? "running" : "shutdown");
  }
  std::string Diagnostics() const override { return "a fake VM"; }

  void Destroy() override {
    if (destroyed_.exchange(true)) return;
    // Out of the registry first: once this returns, KillAll() cannot reach this VM.
    {
      std::lock_guard lock(vms_->mutex_);
      std::erase(vms_->live_, this);
      vms_->destroyed_.push_back(id_);
    }
    ::shutdown(agent_fd_, SHUT_RDWR);
    if (agent_thread_.joinable()) agent_thread_.join();
    agent_.Close();
    host_.Reset();
  }

  // The agent hangs up; the VM counts as dead. Called under the registry's mutex.
  void Kill() {
    killed_ = true;
    ::shutdown(agent_fd_, SHUT_RDWR);
  }

  Result<void> Pause() override { return Fail(Error::UnsupportedPlatform("a fake VM")); }
  Result<void> Resume() override { return {}; }
  Result<void> Save(const std::string&) override {
    return Fail(Error::UnsupportedPlatform("a fake VM"));
  }

 private:
  void Serve(bool restored) {
    if (restored) {
      auto resume = agent_.ReceiveResume(kForever);
      if (!resume) return;
      agent_.SendHelloFor(resume->first);
    } else {
      agent_.SendHello();
    }
    int32_t pid = 1;
    while (auto frame = agent_.Receive(kForever)) {
      if (frame->header.type != protocol::MessageType::kExec) continue;
      uint32_t id = frame->header.request_id;
      auto request = protocol::DecodeExec(frame->payload);
      agent_.Send(protocol::EncodeStarted(id, {++pid}));
      std::vector<std::string> argv = request ? request->argv : std::vector<std::string>{};
      if (!argv.empty() && argv[0] == "hang") continue;
      if (!argv.empty() && argv[0] == "echo") {
        std::string line;
        for (size_t i = 1; i < argv.size(); ++i) line += (i > 1 ? " " : "") + argv[i];
        agent_.Send(Stdout(id, line + "\n"));
      }
      agent_.Send(ExitedWith(id, !argv.empty() && argv[0] == "false" ? 1 : 0));
    }
  }

  std::shared_ptr<FakeVms> vms_;
  std::string id_;
  std::string private_dir_;
  UniqueFd host_;
  int agent_fd_ = -1;  // owned by agent_; kept to shut it down from other threads
  FakeAgent agent_;    // the agent thread's, until it is joined
  std::thread agent_thread_;
  std::atomic<bool> killed_ = false;
  std::atomic<bool> destroyed_ = false;
};

inline void FakeVms::KillAll() {
  std::lock_guard lock(mutex_);
  for (FakeVm* vm : live_) vm->Kill();
}

class FakeEngine final : public engine::Engine {
 public:
  explicit FakeEngine(std::shared_ptr<FakeVms> vms) : vms_(std::move(vms)) {}

  std::string name() const override { return "fake"; }
  uint32_t max_vcpus() const override { return 2; }
  uint32_t max_memory_mib() const override { return 1024; }
  std::string version() const override { return "fake 1"; }

  Result<std::unique_ptr<engine::Vm>> Start(const engine::VmSpec& spec) override {
    std::chrono::milliseconds delay;
    std::string id;
    {
      std::lock_guard lock(vms_->mutex_);
      if (vms_->failing_starts_ > 0) {
        --vms_->failing_starts_;
        return Fail(Error::Backend("the fake engine was told to fail"));
      }
      delay = vms_->start_delay_;
      id = "fake-" + std::to_string(vms_->next_id_++);
    }
    std::this_thread::sleep_for(delay);
    auto vm = std::make_unique<FakeVm>(vms_, id, spec.restore.has_value());
    std::lock_guard lock(vms_->mutex_);
    vms_->live_.push_back(vm.get());
    vms_->started_.push_back(id);
    return vm;
  }

 private:
  std::shared_ptr<FakeVms> vms_;
};

}  // namespace vessel::sandbox::test
