// The QEMU engine and its QMP client against a real QEMU.
#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "base/console_log.h"
#include "base/subprocess.h"
#include "engine/qemu/qemu_engine.h"
#include "engine/qemu/qmp_client.h"
#include "sandbox/connection.h"
#include "vm_test_env.h"

namespace vessel {
namespace {

using engine::qemu::QemuEngine;
using engine::qemu::QmpClient;

TEST(QmpTest, TalksToARealQemu) {
  VESSEL_REQUIRE_QEMU();
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  UniqueFd ours(fds[0]), theirs(fds[1]);
  SpawnOptions spawn;
  spawn.argv = {"qemu-system-x86_64",
                "-M",
                "microvm,acpi=off",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-S",
                "-chardev",
                "socket,id=qmp,fd=" + std::to_string(theirs.get()),
                "-mon",
                "chardev=qmp,mode=control"};
  spawn.inherit_fds = {theirs.get()};
  auto qemu = Subprocess::Spawn(spawn);
  ASSERT_TRUE(qemu.has_value()) << qemu.error().ToString();
  theirs.Reset();

  QmpClient qmp(std::move(ours));
  auto deadline = Deadline::After(std::chrono::seconds(10));
  auto greeting = qmp.Handshake(deadline);
  ASSERT_TRUE(greeting.has_value()) << greeting.error().ToString();
  EXPECT_GE((*greeting)["version"]["qemu"]["major"].get<int>(), 5);

  auto status = qmp.Execute("query-status", {}, deadline);
  ASSERT_TRUE(status.has_value()) << status.error().ToString();
  EXPECT_EQ((*status)["status"], "prelaunch");

  auto bad = qmp.Execute("no-such-command", {}, deadline);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().kind(), ErrorKind::kBackend);
  EXPECT_NE(bad.error().message().find("no-such-command"), std::string::npos)
      << bad.error().message();

  auto quit = qmp.Execute("quit", {}, deadline);
  EXPECT_TRUE(quit.has_value()) << quit.error().ToString();
  EXPECT_TRUE(qemu->WaitFor(std::chrono::seconds(5)));
  // QEMU is gone: the client reports the closed connection instead of hanging.
  auto after = qmp.Execute("query-status", {}, Deadline::After(std::chrono::seconds(2)));
  ASSERT_FALSE(after.has_value());
  EXPECT_EQ(after.error().kind(), ErrorKind::kBackend);
}

TEST(QemuEngineTest, StartsAVmThatRunsAndDestroysIt) {
  VESSEL_REQUIRE_QEMU();
  QemuEngine engine;
  EXPECT_EQ(engine.name(), engine::qemu::KvmUsable() ? "qemu-kvm" : "qemu-tcg");
  engine::VmSpec spec;
  spec.kernel = DefaultAssetDir() + "/vmlinux";
  spec.initramfs = DefaultAssetDir() + "/initramfs.cpio";
  auto vm = engine.Start(spec);
  ASSERT_TRUE(vm.has_value()) << vm.error().ToString();
  std::string dir = testing::TestRuntimeRoot() + "/vm-" + (*vm)->id();
  EXPECT_TRUE(std::filesystem::is_directory(dir));

  auto agent = sandbox::Connection::Open((*vm)->agent_fd());
  ASSERT_TRUE(agent.has_value());
  auto hello = (*agent)->Start(Deadline::After(std::chrono::seconds(30)));
  ASSERT_TRUE(hello.has_value()) << hello.error().ToString() << "\n" << (*vm)->Diagnostics();
  EXPECT_TRUE((*vm)->Running());
  auto state = (*vm)->RunState();
  ASSERT_TRUE(state.has_value()) << state.error().ToString();
  EXPECT_EQ(*state, "running");

  // QEMU runs under its seccomp sandbox (mode 2: a filter), with no new privileges.
  auto pids = testing::LiveVmmProcesses();
  ASSERT_EQ(pids.size(), 1u);
  std::ifstream status_file(fmt::format("/proc/{}/status", pids[0]));
  std::string status((std::istreambuf_iterator<char>(status_file)), {});
  EXPECT_NE(status.find("\nSeccomp:\t2\n"), std::string::npos) << status;
  EXPECT_NE(status.find("\nNoNewPrivs:\t1\n"), std::string::npos) << status;

  (*vm)->Destroy();
  EXPECT_FALSE((*vm)->Running());
  EXPECT_FALSE(std::filesystem::exists(dir));
  (*vm)->Destroy();  // idempotent
}

// A guest that floods its serial console (about 26 s of /dev/zero under TCG) leaves a
// console.log no larger than the cap and a limit note, and goes on working: the bytes past
// the cap are read and dropped, never left to block the guest.
TEST(QemuEngineTest, AConsoleFloodStopsAtTheCap) {
  VESSEL_REQUIRE_QEMU();
  SandboxConfig config = testing::TestConfig();
  config.engine = EngineKind::kQemu;
  auto sandbox = testing::MustCreate(config);
  ASSERT_TRUE(sandbox);
  std::string log = testing::TestRuntimeRoot() + "/vm-" + sandbox->id() + "/console.log";
  ASSERT_TRUE(std::filesystem::exists(log));
  ExecOptions options;
  options.timeout = std::chrono::seconds(120);
  auto flood = sandbox->Execute(Command::Shell(fmt::format("head -c {} /dev/zero > /dev/ttyS0",
                                                           kMaxConsoleLogBytes + (1 << 20))),
                                options);
  ASSERT_TRUE(flood.has_value()) << flood.error().ToString();
  EXPECT_TRUE(flood->ok()) << flood->stderr_data;
  auto echo = sandbox->Execute(Command::Shell("echo alive"));
  ASSERT_TRUE(echo.has_value()) << echo.error().ToString();
  EXPECT_EQ(echo->stdout_data, "alive\n");
  auto size = std::filesystem::file_size(log);
  EXPECT_LE(size, kMaxConsoleLogBytes + 64);
  EXPECT_GE(size, kMaxConsoleLogBytes);
  std::ifstream in(log, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(size) - 40);
  std::string tail((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(tail.find("console log limit reached"), std::string::npos) << tail;
}

}  // namespace
}  // namespace vessel
