// Executing commands in one real VM, shared by the suite: it boots once.
#include <fmt/format.h>
#include <openssl/evp.h>
#include <signal.h>

#include <string>

#include "vm_test_env.h"

namespace vessel {
namespace {

using testing::MustCreate;
using Outcome = ExecResult::Outcome;

// The hex SHA-256 of `data`, to compare with the guest's `sha256sum`.
std::string Sha256Hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < size; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

class ExecTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SandboxConfig config = testing::TestConfig();
    config.vcpus = 2;
    sandbox_ = MustCreate(config).release();
  }
  static void TearDownTestSuite() {
    delete sandbox_;
    sandbox_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(sandbox_, nullptr) << "the shared VM did not boot"; }

  static ExecResult Run(const Command& command, const ExecOptions& options = {}) {
    auto result = sandbox_->Execute(command, options);
    EXPECT_TRUE(result.has_value()) << result.error().ToString();
    return result.value_or(ExecResult{});
  }
  static ExecResult Sh(const std::string& script, const ExecOptions& options = {}) {
    return Run(Command::Shell(script), options);
  }

  static Sandbox* sandbox_;
};
Sandbox* ExecTest::sandbox_ = nullptr;

TEST_F(ExecTest, EchoPrintsToStdout) {
  auto r = Run(Command::Argv({"echo", "hello", "world"}));
  EXPECT_EQ(r.outcome, Outcome::kExited);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.stdout_data, "hello world\n");
  EXPECT_EQ(r.stderr_data, "");
  EXPECT_TRUE(r.ok());
}

TEST_F(ExecTest, ExitCodesArePassedThrough) {
  for (int code : {0, 1, 3, 255}) {
    auto r = Sh("exit " + std::to_string(code));
    EXPECT_EQ(r.outcome, Outcome::kExited);
    EXPECT_EQ(r.exit_code, code);
  }
}

TEST_F(ExecTest, DeathBySignalIsReported) {
  auto r = Sh("kill -TERM $$");
  EXPECT_EQ(r.outcome, Outcome::kSignaled);
  EXPECT_EQ(r.signal, SIGTERM);
  r = Sh("kill -KILL $$");
  EXPECT_EQ(r.outcome, Outcome::kSignaled);
  EXPECT_EQ(r.signal, SIGKILL);
}

TEST_F(ExecTest, StdoutAndStderrStayApart) {
  auto r = Sh("echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3");
  EXPECT_EQ(r.stdout_data, "out1\nout2\n");
  EXPECT_EQ(r.stderr_data, "err1\nerr2\n");
  EXPECT_EQ(r.exit_code, 3);
}

TEST_F(ExecTest, EnvironmentIsExactlyTheOneGiven) {
  ExecOptions options;
  options.env = {"A=1", "B=two words", "EMPTY="};
  auto r = Sh("echo \"$A|$B|$EMPTY|${HOME-unset}\"; command -v true >/dev/null && echo path-ok",
              options);
  EXPECT_EQ(r.stdout_data, "1|two words||unset\npath-ok\n");
}

TEST_F(ExecTest, WorkingDirectoryIsApplied) {
  ExecOptions options;
  options.cwd = "/tmp";
  EXPECT_EQ(Run(Command::Argv({"pwd"}), options).stdout_data, "/tmp\n");
  EXPECT_EQ(Run(Command::Argv({"pwd"})).stdout_data, "/\n");
}

TEST_F(ExecTest, MissingWorkingDirectoryIsAGuestFileError) {
  ExecOptions options;
  options.cwd = "/no/such/dir";
  auto r = sandbox_->Execute(Command::Argv({"true"}), options);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kGuestFile);
  EXPECT_EQ(r.error().subject(), "/no/such/dir");
  EXPECT_EQ(sandbox_->state(), SandboxState::kReady);
}

TEST_F(ExecTest, MissingProgramIsAGuestFileError) {
  auto r = sandbox_->Execute(Command::Argv({"no-such-program"}));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kGuestFile);
  EXPECT_EQ(r.error().subject(), "no-such-program");
  EXPECT_EQ(Run(Command::Argv({"true"})).exit_code, 0);
}

TEST_F(ExecTest, TimeoutKillsTheWholeProcessGroupAndTheVmStaysUsable) {
  ExecOptions options;
  options.timeout = std::chrono::milliseconds(1500);
  auto r = Sh("sleep 1000 & while :; do :; done", options);
  EXPECT_EQ(r.outcome, Outcome::kTimedOut);
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_GE(r.duration, std::chrono::milliseconds(1400));
  EXPECT_LT(r.duration, std::chrono::seconds(10));
  // The background sleep was in the same process group and died with it.
  auto ps = Sh("ps -o args | grep -c '^sleep 1000' || true");
  EXPECT_EQ(ps.stdout_data, "0\n");
  EXPECT_EQ(Sh("echo still here").stdout_data, "still here\n");
}

TEST_F(ExecTest, EightMebibytesOfBinaryOutputArriveIntact) {
  auto r =
      Sh("head -c 8388608 /dev/urandom > /tmp/blob && sha256sum < /tmp/blob >&2 && cat /tmp/blob; "
         "rm /tmp/blob");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_data;
  ASSERT_EQ(r.stdout_data.size(), 8388608u);
  EXPECT_FALSE(r.stdout_truncated);
  EXPECT_EQ(r.stderr_data, Sha256Hex(r.stdout_data) + "  -\n");
}

TEST_F(ExecTest, OutputOverTheCapIsTruncatedAndFlagged) {
  ExecOptions options;
  options.output_cap = 1000;
  auto r = Sh("head -c 300000 /dev/zero; head -c 10 /dev/zero >&2", options);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.stdout_data, std::string(1000, '\0'));
  EXPECT_TRUE(r.stdout_truncated);
  EXPECT_EQ(r.stderr_data.size(), 10u);
  EXPECT_FALSE(r.stderr_truncated);
}

TEST_F(ExecTest, ArgumentsAreBinarySafe) {
  std::string weird = "line1\nline2\t\"quoted\" 'single' $HOME \\ \xff\xfe\x01 end";
  auto r = Run(Command::Argv({"printf", "%s", weird}));
  EXPECT_EQ(r.stdout_data, weird);
}

TEST_F(ExecTest, OrphansAreReaped) {
  Sh("for i in 1 2 3 4 5; do (sleep 0.1 &); done");
  Sh("sleep 0.5");
  auto zombies = Sh("ps -o stat | grep -c '^Z' || true");
  EXPECT_EQ(zombies.stdout_data, "0\n");
}

TEST_F(ExecTest, GuestSeesTheConfiguredCpus) {
  EXPECT_EQ(Run(Command::Argv({"nproc"})).stdout_data, "2\n")
      << "the guest's own account of its CPUs:\n"
      << Sh("cat /sys/devices/system/cpu/online; dmesg | grep -iE 'smp|cpu ?#?1|stall'").stdout_data;
}

TEST_F(ExecTest, CallerInputThatCannotBeCarriedIsInvalidConfig) {
  auto r = sandbox_->Execute(Command::Argv({}));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kInvalidConfig);
  r = sandbox_->Execute(Command::Argv({"echo", std::string("a\0b", 3)}));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(sandbox_->state(), SandboxState::kReady);
}

}  // namespace
}  // namespace vessel
