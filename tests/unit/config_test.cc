#include "sandbox/config.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sandbox/process.h"

namespace vessel::sandbox {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class FakeEngine final : public engine::Engine {
 public:
  std::string name() const override { return "fake"; }
  uint32_t max_vcpus() const override { return 2; }
  uint32_t max_memory_mib() const override { return 1024; }
  std::string version() const override { return "fake 1"; }
  Result<std::unique_ptr<engine::Vm>> Start(const engine::VmSpec&) override {
    return Fail(Error::UnsupportedPlatform("the fake engine starts nothing"));
  }
};

void ExpectInvalid(const Result<engine::VmSpec>& result, std::string_view field) {
  ASSERT_FALSE(result.has_value()) << "expected kInvalidConfig for " << field;
  EXPECT_EQ(result.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(result.error().subject(), field) << result.error().message();
}

// Restores an environment variable on scope exit.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

class ValidateConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "vessel-config-test-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    kernel_ = (dir_ / "vmlinux").string();
    initramfs_ = (dir_ / "initramfs.cpio").string();
    std::ofstream(kernel_) << "not really a kernel";
    std::ofstream(initramfs_) << "not really an initramfs";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  SandboxConfig Valid() const {
    SandboxConfig config;
    config.vcpus = 2;
    config.memory_mib = 512;
    config.kernel = kernel_;
    config.initramfs = initramfs_;
    config.boot_timeout = 5s;
    config.name = "unit test";
    return config;
  }

  FakeEngine engine_;
  fs::path dir_;
  std::string kernel_;
  std::string initramfs_;
};

TEST_F(ValidateConfigTest, ValidConfigBecomesTheSameSpec) {
  auto spec = ValidateConfig(Valid(), engine_);
  ASSERT_TRUE(spec.has_value()) << spec.error().ToString();
  EXPECT_EQ(spec->kernel, kernel_);
  EXPECT_EQ(spec->initramfs, initramfs_);
  EXPECT_EQ(spec->vcpus, 2u);
  EXPECT_EQ(spec->memory_mib, 512u);
  EXPECT_EQ(spec->name, "unit test");
}

TEST_F(ValidateConfigTest, BoundariesAreAccepted) {
  for (uint32_t vcpus : {1u, 2u}) {
    for (uint32_t memory : {engine::kMinGuestMemoryMib, 1024u}) {
      SandboxConfig config = Valid();
      config.vcpus = vcpus;
      config.memory_mib = memory;
      auto spec = ValidateConfig(config, engine_);
      ASSERT_TRUE(spec.has_value()) << spec.error().ToString();
      EXPECT_EQ(spec->vcpus, vcpus);
      EXPECT_EQ(spec->memory_mib, memory);
    }
  }
}

TEST_F(ValidateConfigTest, VcpusOutOfRange) {
  for (uint32_t vcpus : {0u, 3u, UINT32_MAX}) {
    SandboxConfig config = Valid();
    config.vcpus = vcpus;
    ExpectInvalid(ValidateConfig(config, engine_), "vcpus");
  }
}

TEST_F(ValidateConfigTest, MemoryOutOfRange) {
  for (uint32_t memory : {0u, 63u, 1025u, UINT32_MAX}) {
    SandboxConfig config = Valid();
    config.memory_mib = memory;
    ExpectInvalid(ValidateConfig(config, engine_), "memory_mib");
  }
}

TEST_F(ValidateConfigTest, BootTimeoutMustBePositive) {
  for (auto timeout : {0ms, -1ms}) {
    SandboxConfig config = Valid();
    config.boot_timeout = timeout;
    ExpectInvalid(ValidateConfig(config, engine_), "boot_timeout");
  }
}

TEST_F(ValidateConfigTest, ForksAheadBeyondTheForkLimit) {
  for (uint32_t n : {kMaxForks + 1, UINT32_MAX}) {
    SandboxConfig config = Valid();
    config.forks_ahead = n;
    ExpectInvalid(ValidateConfig(config, engine_), "forks_ahead");
  }
  SandboxConfig config = Valid();
  config.forks_ahead = kMaxForks;
  EXPECT_TRUE(ValidateConfig(config, engine_));
}

TEST_F(ValidateConfigTest, MissingKernel) {
  SandboxConfig config = Valid();
  config.kernel = (dir_ / "no-such-vmlinux").string();
  auto result = ValidateConfig(config, engine_);
  ExpectInvalid(result, "kernel");
  EXPECT_NE(result.error().message().find("no-such-vmlinux"), std::string::npos);
}

TEST_F(ValidateConfigTest, KernelThatIsADirectory) {
  SandboxConfig config = Valid();
  config.kernel = dir_.string();
  ExpectInvalid(ValidateConfig(config, engine_), "kernel");
}

TEST_F(ValidateConfigTest, MissingInitramfs) {
  SandboxConfig config = Valid();
  config.initramfs = (dir_ / "no-such-initramfs").string();
  auto result = ValidateConfig(config, engine_);
  ExpectInvalid(result, "initramfs");
  EXPECT_NE(result.error().message().find("no-such-initramfs"), std::string::npos);
}

TEST_F(ValidateConfigTest, FirstWrongFieldIsNamed) {
  SandboxConfig config = Valid();
  config.vcpus = 0;
  config.memory_mib = 1;
  config.kernel = (dir_ / "missing").string();
  ExpectInvalid(ValidateConfig(config, engine_), "vcpus");
}

TEST_F(ValidateConfigTest, EmptyAssetPathsUseTheAssetDir) {
  ScopedEnv env("VESSEL_ASSET_DIR", dir_.string());
  EXPECT_EQ(DefaultAssetDir(), dir_.string());
  SandboxConfig config = Valid();
  config.kernel.clear();
  config.initramfs.clear();
  auto spec = ValidateConfig(config, engine_);
  ASSERT_TRUE(spec.has_value()) << spec.error().ToString();
  EXPECT_EQ(spec->kernel, dir_.string() + "/vmlinux");
  EXPECT_EQ(spec->initramfs, dir_.string() + "/initramfs.cpio");
}

TEST_F(ValidateConfigTest, EmptyAssetPathsInAnEmptyAssetDir) {
  fs::path empty = dir_ / "empty";
  fs::create_directory(empty);
  ScopedEnv env("VESSEL_ASSET_DIR", empty.string());
  SandboxConfig config = Valid();
  config.kernel.clear();
  ExpectInvalid(ValidateConfig(config, engine_), "kernel");
  config = Valid();
  config.initramfs.clear();
  ExpectInvalid(ValidateConfig(config, engine_), "initramfs");
}

// MakeExecRequest: what a caller may ask of the agent.

void ExpectInvalidRequest(const Command& command, const ExecOptions& options,
                          std::string_view field) {
  auto result = MakeExecRequest(command, options);
  ASSERT_FALSE(result.has_value()) << "expected kInvalidConfig for " << field;
  EXPECT_EQ(result.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(result.error().subject(), field) << result.error().message();
}

TEST(MakeExecRequestTest, CopiesEverything) {
  ExecOptions options;
  options.env = {"PATH=/bin", "A=b=c", "EMPTY="};
  options.cwd = "/tmp";
  options.timeout = 1500ms;
  options.output_cap = 12345;
  Command command = Command::Argv({"echo", "a\nb", "\xff"});
  auto request = MakeExecRequest(command, options);
  ASSERT_TRUE(request.has_value()) << request.error().ToString();
  EXPECT_EQ(request->argv, command.argv);
  EXPECT_EQ(request->env, options.env);
  EXPECT_EQ(request->cwd, "/tmp");
  EXPECT_EQ(request->timeout_ms, 1500u);
  EXPECT_EQ(request->output_cap, 12345u);
}

TEST(MakeExecRequestTest, ShellCommand) {
  auto request = MakeExecRequest(Command::Shell("echo hi | wc -c"), {});
  ASSERT_TRUE(request.has_value()) << request.error().ToString();
  EXPECT_EQ(request->argv, (std::vector<std::string>{"/bin/sh", "-c", "echo hi | wc -c"}));
  EXPECT_EQ(request->cwd, "");
  EXPECT_EQ(request->timeout_ms, 0u);
}

TEST(MakeExecRequestTest, EmptyArgv) { ExpectInvalidRequest(Command::Argv({}), {}, "command"); }

TEST(MakeExecRequestTest, EmptyProgramName) {
  ExpectInvalidRequest(Command::Argv({"", "arg"}), {}, "command");
}

TEST(MakeExecRequestTest, NulByteInAnArgument) {
  ExpectInvalidRequest(Command::Argv({"echo", std::string("a\0b", 3)}), {}, "command");
  ExpectInvalidRequest(Command::Argv({std::string("ec\0ho", 5)}), {}, "command");
}

TEST(MakeExecRequestTest, OversizeArgument) {
  ExpectInvalidRequest(Command::Argv({"echo", std::string(protocol::kMaxStringSize + 1, 'x')}), {},
                       "command");
  EXPECT_TRUE(
      MakeExecRequest(Command::Argv({"echo", std::string(protocol::kMaxStringSize, 'x')}), {}));
}

TEST(MakeExecRequestTest, TooManyArgs) {
  std::vector<std::string> argv(protocol::kMaxArgs + 1, "a");
  ExpectInvalidRequest(Command::Argv(argv), {}, "command");
  argv.pop_back();
  EXPECT_TRUE(MakeExecRequest(Command::Argv(argv), {}));
}

TEST(MakeExecRequestTest, TotalOverThePayloadCap) {
  // Payload: argc(4) + "x"(4+1) + a(4+131072) + b(4+n) + envc(4) + cwd(4) + timeout(4) + cap(8)
  // + flags(1) + window(4).
  constexpr uint32_t kFirst = protocol::kMaxStringSize;
  constexpr uint32_t kSecondAtCap = protocol::kMaxPayload - 42 - kFirst;
  Command at_cap = Command::Argv({"x", std::string(kFirst, 'a'), std::string(kSecondAtCap, 'b')});
  auto request = MakeExecRequest(at_cap, {});
  ASSERT_TRUE(request.has_value()) << request.error().ToString();
  auto frame = protocol::EncodeExec(1, *request);
  EXPECT_EQ(frame.size(), protocol::kHeaderSize + protocol::kMaxPayload);
  auto decoded =
      protocol::DecodeExec(std::span<const uint8_t>(frame).subspan(protocol::kHeaderSize));
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->argv, at_cap.argv);

  Command over = Command::Argv({"x", std::string(kFirst, 'a'), std::string(kSecondAtCap + 1, 'b')});
  ExpectInvalidRequest(over, {}, "command");
}

TEST(MakeExecRequestTest, EnvEntryWithoutEquals) {
  ExecOptions options;
  options.env = {"PATH=/bin", "NOEQUALS"};
  ExpectInvalidRequest(Command::Argv({"true"}), options, "env");
}

TEST(MakeExecRequestTest, EnvEntryWithEmptyKey) {
  ExecOptions options;
  options.env = {"=x"};
  ExpectInvalidRequest(Command::Argv({"true"}), options, "env");
}

TEST(MakeExecRequestTest, EnvEntryWithNulOrOversize) {
  ExecOptions options;
  options.env = {std::string("A=b\0c", 5)};
  ExpectInvalidRequest(Command::Argv({"true"}), options, "env");
  options.env = {"A=" + std::string(protocol::kMaxStringSize, 'v')};
  ExpectInvalidRequest(Command::Argv({"true"}), options, "env");
}

TEST(MakeExecRequestTest, TooManyEnvEntries) {
  ExecOptions options;
  options.env.assign(protocol::kMaxEnv + 1, "A=b");
  ExpectInvalidRequest(Command::Argv({"true"}), options, "env");
}

TEST(MakeExecRequestTest, BadCwd) {
  ExecOptions options;
  options.cwd = std::string(protocol::kMaxPathSize + 1, 'd');
  ExpectInvalidRequest(Command::Argv({"true"}), options, "cwd");
  options.cwd = std::string("/tmp\0/etc", 9);
  ExpectInvalidRequest(Command::Argv({"true"}), options, "cwd");
}

TEST(MakeExecRequestTest, TimeoutOutOfRange) {
  ExecOptions options;
  options.timeout = -1ms;
  ExpectInvalidRequest(Command::Argv({"true"}), options, "timeout");
  options.timeout = std::chrono::milliseconds(int64_t{UINT32_MAX} + 1);
  ExpectInvalidRequest(Command::Argv({"true"}), options, "timeout");
  options.timeout = std::chrono::milliseconds(UINT32_MAX);
  auto request = MakeExecRequest(Command::Argv({"true"}), options);
  ASSERT_TRUE(request.has_value()) << request.error().ToString();
  EXPECT_EQ(request->timeout_ms, UINT32_MAX);
}

}  // namespace
}  // namespace vessel::sandbox
