// Creating and destroying sandboxes: configs, boot failures, lifecycle after destroy.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <thread>

#include "vm_test_env.h"

namespace vessel {
namespace {

using testing::LiveVmmProcesses;
using testing::MustCreate;
using testing::RuntimeLeftovers;
using testing::ExpectNothingLeft;

void ExpectInvalidConfig(const SandboxConfig& config, const std::string& field) {
  auto sandbox = Sandbox::Create(config);
  ASSERT_FALSE(sandbox.has_value()) << "created a sandbox from a bad " << field;
  EXPECT_EQ(sandbox.error().kind(), ErrorKind::kInvalidConfig) << sandbox.error().ToString();
  EXPECT_EQ(sandbox.error().subject(), field) << sandbox.error().ToString();
  ExpectNothingLeft();
}

TEST(BootTest, InvalidConfigsNameTheField) {
  SandboxConfig c = testing::TestConfig();
  c.vcpus = 0;
  ExpectInvalidConfig(c, "vcpus");
  c = testing::TestConfig();
  c.vcpus = 1000;
  ExpectInvalidConfig(c, "vcpus");
  c = testing::TestConfig();
  c.memory_mib = 32;
  ExpectInvalidConfig(c, "memory_mib");
  c = testing::TestConfig();
  c.memory_mib = 1u << 30;
  ExpectInvalidConfig(c, "memory_mib");
  c = testing::TestConfig();
  c.boot_timeout = std::chrono::milliseconds(0);
  ExpectInvalidConfig(c, "boot_timeout");
}

TEST(BootTest, MissingKernelIsInvalidConfig) {
  SandboxConfig c = testing::TestConfig();
  c.kernel = "/nonexistent/vmlinux";
  ExpectInvalidConfig(c, "kernel");
  c = testing::TestConfig();
  c.initramfs = "/nonexistent/initramfs.cpio";
  ExpectInvalidConfig(c, "initramfs");
}

TEST(BootTest, KernelThatIsNotAKernelFailsWithTheVmmsMessage) {
  std::string bogus = testing::TestRuntimeRoot() + "-bogus-kernel";
  std::ofstream(bogus) << "this is not an ELF file\n";
  SandboxConfig c = testing::TestConfig();
  c.kernel = bogus;
  auto start = std::chrono::steady_clock::now();
  auto sandbox = Sandbox::Create(c);
  unlink(bogus.c_str());
  ASSERT_FALSE(sandbox.has_value());
  EXPECT_EQ(sandbox.error().kind(), ErrorKind::kBackend);
  const char* vmm = testing::TestEngine() == EngineKind::kKvm ? "vessel-vmm" : "QEMU said";
  EXPECT_NE(sandbox.error().message().find(vmm), std::string::npos) << sandbox.error().message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  ExpectNothingLeft();
}

TEST(BootTest, GuestThatNeverSaysHelloHitsTheBootDeadline) {
  SandboxConfig c = testing::TestConfig();
  c.initramfs = DefaultAssetDir() + "/test-hang-initramfs.cpio";
  c.boot_timeout = std::chrono::seconds(4);
  auto start = std::chrono::steady_clock::now();
  auto sandbox = Sandbox::Create(c);
  auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(sandbox.has_value());
  if (testing::TestEngine() == EngineKind::kKvm) {
    // The kvm engine's channel is vsock: nothing ever accepts on the agent's port.
    ASSERT_EQ(sandbox.error().kind(), ErrorKind::kLifecycle) << sandbox.error().ToString();
    EXPECT_TRUE(sandbox.error().lifecycle()->Is<LifecycleError::VsockNotConnected>());
    EXPECT_TRUE(sandbox.error().lifecycle()->Retryable());
    EXPECT_NE(sandbox.error().message().find("vsock port 1024"), std::string::npos)
        << sandbox.error().message();
  } else {
    EXPECT_EQ(sandbox.error().kind(), ErrorKind::kBackend);
    EXPECT_TRUE(sandbox.error().timed_out()) << sandbox.error().message();
    EXPECT_TRUE(sandbox.error().retryable());
  }
  EXPECT_GE(took, std::chrono::seconds(4));
  EXPECT_LT(took, std::chrono::seconds(8));
  ExpectNothingLeft();
}

TEST(BootTest, OperationsAfterDestroyReturnDestroyed) {
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  EXPECT_EQ(sandbox->state(), SandboxState::kReady);
  EXPECT_FALSE(sandbox->id().empty());
  EXPECT_EQ(sandbox->agent_version().rfind("vessel-agent", 0), 0u);
  ASSERT_TRUE(sandbox->Destroy().has_value());
  EXPECT_EQ(sandbox->state(), SandboxState::kDestroyed);
  ExpectNothingLeft();

  auto r = sandbox->Execute(Command::Argv({"true"}));
  ASSERT_FALSE(r.has_value());
  ASSERT_EQ(r.error().kind(), ErrorKind::kLifecycle);
  EXPECT_TRUE(r.error().lifecycle()->Is<LifecycleError::Destroyed>());
  auto again = sandbox->Destroy();
  ASSERT_FALSE(again.has_value());
  EXPECT_TRUE(again.error().lifecycle()->Is<LifecycleError::Destroyed>());
}

TEST(BootTest, GuestThatCrashesLeavesAFailedSandbox) {
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  auto crash = sandbox->Execute(Command::Shell("echo c > /proc/sysrq-trigger; sleep 100"));
  ASSERT_FALSE(crash.has_value());
  EXPECT_EQ(crash.error().kind(), ErrorKind::kBackend) << crash.error().ToString();
  EXPECT_EQ(sandbox->state(), SandboxState::kFailed);

  auto next = sandbox->Execute(Command::Argv({"true"}));
  ASSERT_FALSE(next.has_value());
  ASSERT_EQ(next.error().kind(), ErrorKind::kLifecycle);
  const auto* invalid = next.error().lifecycle()->As<LifecycleError::InvalidState>();
  ASSERT_NE(invalid, nullptr);
  EXPECT_EQ(invalid->expected, SandboxState::kReady);
  EXPECT_EQ(invalid->current, SandboxState::kFailed);
  EXPECT_TRUE(sandbox->Destroy().has_value());
  ExpectNothingLeft();
}

TEST(BootTest, DestroyFromAnotherThreadEndsARunningCommand) {
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  std::thread destroyer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_TRUE(sandbox->Destroy().has_value());
  });
  auto r = sandbox->Execute(Command::Argv({"sleep", "100"}));
  destroyer.join();
  ASSERT_FALSE(r.has_value());
  ASSERT_EQ(r.error().kind(), ErrorKind::kLifecycle) << r.error().ToString();
  EXPECT_TRUE(r.error().lifecycle()->Is<LifecycleError::Destroyed>());
  ExpectNothingLeft();
}

TEST(BootTest, DestructorCleansUp) {
  {
    auto sandbox = MustCreate();
    ASSERT_NE(sandbox, nullptr);
  }
  ExpectNothingLeft();
}

// The VMM process, on either engine, runs under a seccomp filter, dumps no core (which
// would write guest memory to disk) and has a bounded number of open files.
TEST(BootTest, TheVmmRunsFilteredWithoutCoreDumpsAndWithBoundedFiles) {
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  auto pids = LiveVmmProcesses();
  ASSERT_EQ(pids.size(), 1u);
  auto read = [&](const char* file) {
    std::ifstream in("/proc/" + std::to_string(pids[0]) + "/" + file);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  std::string status = read("status");
  EXPECT_NE(status.find("\nSeccomp:\t2\n"), std::string::npos) << status;
  std::string limits = read("limits");
  std::regex core(R"(Max core file size\s+0\s+0\s)");
  std::regex files(R"(Max open files\s+4096\s+4096\s)");
  EXPECT_TRUE(std::regex_search(limits, core)) << limits;
  EXPECT_TRUE(std::regex_search(limits, files)) << limits;
}

// The jail (base/jail.h): namespaces of its own, no capability, a root with nothing of
// the host's but /usr and the VM's own files, no network; a VMM started by root runs as
// nobody.
TEST(BootTest, TheVmmRunsJailed) {
  // The nested suite runs its other tests with VESSEL_JAIL=off (docs/nested.md); this one
  // is about the jail, so it turns it on for its own process.
  ::setenv("VESSEL_JAIL", "on", 1);
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  auto pids = LiveVmmProcesses();
  ASSERT_EQ(pids.size(), 1u);
  std::string proc = "/proc/" + std::to_string(pids[0]);
  std::ifstream in(proc + "/status");
  std::string status(std::istreambuf_iterator<char>(in), {});
  EXPECT_NE(status.find("\nCapEff:\t0000000000000000\n"), std::string::npos) << status;
  EXPECT_NE(status.find("\nCapBnd:\t0000000000000000\n"), std::string::npos) << status;
  EXPECT_NE(status.find("\nNoNewPrivs:\t1\n"), std::string::npos) << status;
  std::string uid = geteuid() == 0 ? "65534" : std::to_string(geteuid());
  EXPECT_NE(status.find("\nUid:\t" + uid + "\t" + uid), std::string::npos) << status;
  for (const char* ns : {"mnt", "pid", "net", "ipc", "uts"}) {
    SCOPED_TRACE(ns);
    EXPECT_NE(std::filesystem::read_symlink(proc + "/ns/" + ns),
              std::filesystem::read_symlink(std::string("/proc/self/ns/") + ns));
  }
  // Its root, as it sees it.
  EXPECT_TRUE(std::filesystem::exists(proc + "/root/usr/bin"));
  for (const char* hidden : {"/etc/passwd", "/etc/shadow", "/home", "/root", "/var"}) {
    EXPECT_FALSE(std::filesystem::exists(proc + "/root" + hidden)) << hidden;
  }
  // Its network: a loopback device, and nothing else.
  std::ifstream dev(proc + "/net/dev");
  std::string devices(std::istreambuf_iterator<char>(dev), {});
  EXPECT_NE(devices.find("lo:"), std::string::npos) << devices;
  EXPECT_EQ(std::count(devices.begin(), devices.end(), ':'), 1) << devices;
  auto echo = sandbox->Execute(Command::Argv({"echo", "still fine"}));
  ASSERT_TRUE(echo.has_value()) << echo.error().ToString();
  EXPECT_EQ(echo->stdout_data, "still fine\n");
}

}  // namespace
}  // namespace vessel
