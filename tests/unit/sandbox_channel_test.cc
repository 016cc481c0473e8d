// A sandbox whose agent channel drops while its VM goes on (a guest that resets its
// vsock device), over a fake VM: VsockNotConnected, the sandbox stays ready, and the next
// call connects again once the guest accepts.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "fake_agent.h"
#include "sandbox/sandbox_impl.h"

namespace vessel::sandbox::test {
namespace {

bool IsVsockNotConnected(const Error& error) {
  return error.lifecycle() && error.lifecycle()->Is<LifecycleError::VsockNotConnected>();
}

// A VM whose channel is connected by ConnectAgent(), each time to a new fake agent that
// says hello and runs every Exec at once ("echo ARGS" prints ARGS).
class ReconnectingVm final : public engine::Vm {
 public:
  ~ReconnectingVm() override { Destroy(); }

  const std::string& id() const override { return id_; }
  int agent_fd() const override { return host_.get(); }
  const std::string& private_dir() const override { return dir_; }
  bool Running() override { return running_; }
  Result<std::string> RunState() override { return std::string(running_ ? "running" : "shutdown"); }
  std::string Diagnostics() const override { return "a reconnecting fake VM"; }
  Result<void> Pause() override { return {}; }
  Result<void> Resume() override { return {}; }
  Result<void> Save(const std::string&) override {
    return Fail(Error::UnsupportedPlatform("a fake VM"));
  }
  bool AgentChannelLost() override { return running_; }

  Result<void> ConnectAgent(Deadline deadline) override {
    if (!running_) return Fail(Error::Backend("the fake VMM exited"));
    if (!accepting_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(deadline.PollTimeoutMs()));
      return Fail(Error::Lifecycle({LifecycleError::VsockNotConnected{}}));
    }
    StopAgent();
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      return Fail(Error::HostIo("socketpair", errno));
    }
    host_ = UniqueFd(fds[0]);
    agent_fd_ = fds[1];
    ++connections_;
    agent_thread_ = std::thread([this, agent = FakeAgent(UniqueFd(fds[1]))]() mutable {
      agent.SendHello();
      int32_t pid = 1;
      while (auto frame = agent.Receive(std::chrono::hours(1))) {
        if (frame->header.type != protocol::MessageType::kExec) continue;
        uint32_t id = frame->header.request_id;
        auto request = protocol::DecodeExec(frame->payload);
        agent.Send(protocol::EncodeStarted(id, {++pid}));
        if (request && request->argv.size() == 2 && request->argv[0] == "echo") {
          agent.Send(Stdout(id, request->argv[1] + "\n"));
        }
        agent.Send(ExitedWith(id, 0));
      }
    });
    return {};
  }

  void Destroy() override {
    running_ = false;
    StopAgent();
  }

  // The guest drops its end, and accepts no new connection until Accept().
  void DropChannel() {
    accepting_ = false;
    ::shutdown(agent_fd_, SHUT_RDWR);
  }
  void Accept() { accepting_ = true; }
  // The VMM dies: the channel ends with it.
  void Die() {
    running_ = false;
    ::shutdown(agent_fd_, SHUT_RDWR);
  }
  int connections() const { return connections_; }

 private:
  void StopAgent() {
    if (agent_fd_ >= 0) ::shutdown(agent_fd_, SHUT_RDWR);
    if (agent_thread_.joinable()) agent_thread_.join();
    agent_fd_ = -1;
  }

  std::string id_ = "reconnecting";
  std::string dir_;
  UniqueFd host_;
  int agent_fd_ = -1;  // owned by the agent thread's FakeAgent
  std::thread agent_thread_;
  std::atomic<bool> running_ = true;
  std::atomic<bool> accepting_ = true;
  std::atomic<int> connections_ = 0;
};

class ReconnectingEngine final : public engine::Engine {
 public:
  std::string name() const override { return "fake-vsock"; }
  bool SupportsVsock() const override { return true; }
  uint32_t max_vcpus() const override { return 1; }
  uint32_t max_memory_mib() const override { return 1024; }
  std::string version() const override { return "fake 1"; }
  Result<std::unique_ptr<engine::Vm>> Start(const engine::VmSpec& spec) override {
    EXPECT_EQ(spec.channel, engine::AgentChannel::kVsock);
    auto vm = std::make_unique<ReconnectingVm>();
    last_ = vm.get();
    return vm;
  }
  ReconnectingVm* last_ = nullptr;
};

class SandboxChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/vessel-sandbox-channel-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    SandboxConfig config;
    config.kernel = dir_ + "/vmlinux";
    config.initramfs = dir_ + "/initramfs.cpio";
    std::ofstream(config.kernel) << "kernel";
    std::ofstream(config.initramfs) << "initramfs";
    config.boot_timeout = std::chrono::seconds(5);
    auto engine = std::make_unique<ReconnectingEngine>();
    auto* raw = engine.get();
    auto sandbox = Sandbox::Impl::Create(config, std::move(engine));
    ASSERT_TRUE(sandbox.has_value()) << sandbox.error().ToString();
    sandbox_ = std::move(*sandbox);
    vm_ = raw->last_;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  Result<std::string> Echo(const std::string& text) {
    auto result = sandbox_->Execute(Command::Argv({"echo", text}));
    if (!result) return Fail(std::move(result).error());
    return result->stdout_data;
  }

  std::string dir_;
  std::unique_ptr<Sandbox> sandbox_;
  ReconnectingVm* vm_ = nullptr;
};

TEST_F(SandboxChannelTest, ADroppedChannelIsVsockNotConnectedAndTheNextCallReconnects) {
  EXPECT_EQ(Echo("one"), "one\n");
  EXPECT_EQ(vm_->connections(), 1);

  vm_->DropChannel();
  auto down = Echo("two");
  ASSERT_FALSE(down.has_value());
  EXPECT_TRUE(IsVsockNotConnected(down.error())) << down.error().ToString();
  EXPECT_TRUE(down.error().lifecycle()->Retryable());
  EXPECT_EQ(sandbox_->state(), SandboxState::kReady);

  // Still nothing accepts: each call tries once more, briefly, and says so again.
  auto still_down = sandbox_->Exists("/tmp");
  ASSERT_FALSE(still_down.has_value());
  EXPECT_TRUE(IsVsockNotConnected(still_down.error())) << still_down.error().ToString();
  EXPECT_EQ(sandbox_->state(), SandboxState::kReady);

  vm_->Accept();
  EXPECT_EQ(Echo("three"), "three\n");
  EXPECT_EQ(vm_->connections(), 2);
  EXPECT_EQ(sandbox_->state(), SandboxState::kReady);
}

TEST_F(SandboxChannelTest, AChannelThatDropsWhileNobodyUsesItLeavesTheSandboxReady) {
  vm_->DropChannel();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(sandbox_->state(), SandboxState::kReady);
  vm_->Accept();
  EXPECT_EQ(Echo("back"), "back\n");
}

TEST_F(SandboxChannelTest, AVmmThatDiesStillFailsTheSandbox) {
  vm_->Die();
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (sandbox_->state() != SandboxState::kFailed && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(sandbox_->state(), SandboxState::kFailed);
  auto gone = Echo("anyone");
  ASSERT_FALSE(gone.has_value());
  const auto* invalid = gone.error().lifecycle()
                            ? gone.error().lifecycle()->As<LifecycleError::InvalidState>()
                            : nullptr;
  ASSERT_NE(invalid, nullptr) << gone.error().ToString();
  EXPECT_EQ(invalid->current, SandboxState::kFailed);
}

TEST_F(SandboxChannelTest, AVmmThatExitsAfterTheChannelWasLostFailsTheSandbox) {
  // A guest that reboots resets its vsock device first, then the VMM exits.
  vm_->DropChannel();
  auto down = Echo("two");
  ASSERT_FALSE(down.has_value());
  EXPECT_TRUE(IsVsockNotConnected(down.error())) << down.error().ToString();
  vm_->Die();
  EXPECT_EQ(sandbox_->state(), SandboxState::kFailed);
}

TEST_F(SandboxChannelTest, DestroyWhileTheChannelIsDownIsClean) {
  vm_->DropChannel();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(sandbox_->Destroy().has_value());
  auto after = Echo("late");
  ASSERT_FALSE(after.has_value());
  EXPECT_TRUE(after.error().lifecycle() &&
              after.error().lifecycle()->Is<LifecycleError::Destroyed>());
}

}  // namespace
}  // namespace vessel::sandbox::test
