// The vessel CLI end to end: what a user typing the README's commands sees.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "vm_test_env.h"

namespace vessel {
namespace {

struct CliResult {
  int status = -1;
  std::string out;
  std::string err;
};

CliResult RunCli(std::vector<std::string> args) {
  args.insert(args.begin(), VESSEL_CLI);
  int out[2], err[2];
  if (pipe(out) != 0 || pipe(err) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(err[1], 2);
    close(out[0]);
    close(err[0]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(126);
  }
  close(out[1]);
  close(err[1]);
  CliResult r;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !fds[i].revents) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

TEST(CliTest, RunPrintsBothStreamsAndExitsWithTheCommandsCode) {
  auto r = RunCli({"run", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"});
  EXPECT_EQ(r.status, 3);
  EXPECT_EQ(r.out, "hi\n");
  EXPECT_EQ(r.err, "oops\n");
}

TEST(CliTest, RunAppliesMemoryCpusEnvAndCwd) {
  auto r =
      RunCli({"run", "--memory", "256", "--vcpus", "2", "--timeout", "20", "--env", "A=1", "--cwd",
              "/tmp", "--", "sh", "-c", "echo $A; pwd; nproc; grep MemTotal /proc/meminfo"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, 11), "1\n/tmp\n2\nMe");
  // 256 MiB of RAM less what the kernel reserves for itself.
  auto kib = std::stoul(r.out.substr(r.out.find(':') + 1));
  EXPECT_GT(kib, 200u * 1024);
  EXPECT_LE(kib, 256u * 1024);
}

TEST(CliTest, SignalAndTimeoutHaveTheirOwnExitCodes) {
  EXPECT_EQ(RunCli({"run", "--", "sh", "-c", "kill -KILL $$"}).status, 128 + 9);
  auto r = RunCli({"run", "--timeout", "1", "--", "sleep", "30"});
  EXPECT_EQ(r.status, 124);
  EXPECT_NE(r.err.find("timed out"), std::string::npos) << r.err;
}

TEST(CliTest, VesselErrorsExit125WithAMessage) {
  auto r = RunCli({"run", "--cwd", "/nope", "--", "true"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("/nope"), std::string::npos) << r.err;
  r = RunCli({"run", "--vcpus", "0", "--", "true"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("vcpus"), std::string::npos) << r.err;
  r = RunCli({"run", "--memory", "lots", "--", "true"});
  EXPECT_EQ(r.status, 125);
  r = RunCli({"run"});
  EXPECT_EQ(r.status, 125);
  r = RunCli({"frobnicate"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("usage"), std::string::npos);
}

TEST(CliTest, KillingTheHostProcessLeavesNoVmBehind) {
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl(VESSEL_CLI, VESSEL_CLI, "run", "--", "sleep", "1000", static_cast<char*>(nullptr));
    _exit(126);
  }
  ASSERT_GT(pid, 0);
  // Wait until the VM runs and its runtime directory exists.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while ((testing::LiveVmmProcesses().empty() || testing::RuntimeLeftovers().empty()) &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_FALSE(testing::LiveVmmProcesses().empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);

  // QEMU dies with its owner.
  until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!testing::LiveVmmProcesses().empty() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(testing::LiveVmmProcesses().empty());
  // Its directory is orphaned; the next Vessel process to create a VM removes it.
  EXPECT_EQ(testing::RuntimeLeftovers().size(), 1u);
  auto r = RunCli({"run", "--", "true"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(testing::RuntimeLeftovers().empty());
}

TEST(CliTest, DoctorReportsTheEngineAndAssets) {
  auto r = RunCli({"doctor"});
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("QEMU"), std::string::npos);
  EXPECT_NE(r.out.find("vmlinux"), std::string::npos);
  EXPECT_NE(r.out.find(r.out.find("KVM") != std::string::npos ? "KVM" : "TCG"), std::string::npos);
}

}  // namespace
}  // namespace vessel
