// Choosing engines and channels, and what only the kvm engine (vessel-vmm) does: vsock,
// a guest that panics or resets its vsock device, snapshots it refuses, a read-only disk.
//
// EngineSelectionTest runs on every host; KvmEngineTest needs the kvm engine under test
// (VESSEL_TEST_ENGINE=kvm, or auto on a host with /dev/kvm) and skips otherwise.
#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "engine/host.h"
#include "engine/select.h"
#include "sandbox/sandbox_impl.h"
#include "vm_test_env.h"

namespace vessel {
namespace {

using testing::LiveVmmProcesses;
using testing::MustCreate;
using testing::RuntimeLeftovers;
using testing::ExpectNothingLeft;

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string Sh(Sandbox& sandbox, const std::string& script) {
  auto result = sandbox.Execute(Command::Shell(script));
  EXPECT_TRUE(result.has_value()) << result.error().ToString();
  if (!result) return {};
  EXPECT_TRUE(result->ok()) << script << "\nstderr: " << result->stderr_data;
  return Trimmed(result->stdout_data);
}

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < size; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

std::string ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Starts every VM with `image` as its read-only disk: how the sandbox layer will pass an
// image once its config names one.
class WithImage final : public engine::Engine {
 public:
  WithImage(std::unique_ptr<engine::Engine> engine, std::string image)
      : engine_(std::move(engine)), image_(std::move(image)) {}
  std::string name() const override { return engine_->name(); }
  bool SupportsVsock() const override { return engine_->SupportsVsock(); }
  uint32_t max_vcpus() const override { return engine_->max_vcpus(); }
  uint32_t max_memory_mib() const override { return engine_->max_memory_mib(); }
  std::string version() const override { return engine_->version(); }
  Result<std::unique_ptr<engine::Vm>> Start(const engine::VmSpec& spec) override {
    engine::VmSpec with_image = spec;
    with_image.image = image_;
    return engine_->Start(with_image);
  }

 private:
  std::unique_ptr<engine::Engine> engine_;
  std::string image_;
};

// A file of the test, removed however the test ends.
struct TestFile {
  std::string path;
  ~TestFile() { std::filesystem::remove(path); }
};

Result<std::unique_ptr<Sandbox>> CreateWithImage(const std::string& image) {
  auto kvm = engine::Make(EngineKind::kKvm);
  if (!kvm) return Fail(std::move(kvm).error());
  SandboxConfig config = testing::TestConfig();
  return Sandbox::Impl::Create(config, std::make_unique<WithImage>(std::move(*kvm), image));
}

bool IsVsockNotConnected(const Error& error) {
  return error.lifecycle() && error.lifecycle()->Is<LifecycleError::VsockNotConnected>();
}

TEST(EngineSelectionTest, AskingForKvmWithoutKvmIsUnsupportedPlatform) {
  if (engine::KvmUsable()) GTEST_SKIP() << "this host has a usable /dev/kvm";
  SandboxConfig config{.engine = EngineKind::kKvm};
  auto sandbox = Sandbox::Create(config);
  ASSERT_FALSE(sandbox.has_value());
  EXPECT_EQ(sandbox.error().kind(), ErrorKind::kUnsupportedPlatform) << sandbox.error().ToString();
  EXPECT_NE(sandbox.error().message().find("/dev/kvm"), std::string::npos)
      << sandbox.error().message();
  ExpectNothingLeft();
}

TEST(EngineSelectionTest, VsockOnTheQemuEngineIsVsockUnavailable) {
  SandboxConfig config{.engine = EngineKind::kQemu, .channel = Channel::kVsock};
  auto sandbox = Sandbox::Create(config);
  ASSERT_FALSE(sandbox.has_value());
  ASSERT_EQ(sandbox.error().kind(), ErrorKind::kLifecycle) << sandbox.error().ToString();
  EXPECT_TRUE(sandbox.error().lifecycle()->Is<LifecycleError::VsockUnavailable>());
  EXPECT_FALSE(sandbox.error().lifecycle()->Retryable());
  EXPECT_NE(sandbox.error().message().find("engine kvm has vsock"), std::string::npos)
      << sandbox.error().message();
  ExpectNothingLeft();
}

TEST(EngineSelectionTest, TheDefaultsPickTheEngineUnderTestAndItsChannel) {
  auto sandbox = MustCreate(SandboxConfig{});
  ASSERT_NE(sandbox, nullptr);
  bool kvm = testing::TestEngine() == EngineKind::kKvm;
  if (kvm) {
    EXPECT_EQ(sandbox->engine_name(), "kvm");
  } else {
    EXPECT_EQ(sandbox->engine_name().rfind("qemu-", 0), 0u) << sandbox->engine_name();
  }
  // The agent learns its channel from the kernel command line: vsock on kvm only.
  std::string cmdline = Sh(*sandbox, "cat /proc/cmdline");
  EXPECT_EQ(cmdline.find("vessel.channel=vsock:1024") != std::string::npos, kvm) << cmdline;
}

class KvmEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::TestEngine() != EngineKind::kKvm) {
      GTEST_SKIP() << "needs the kvm engine: VESSEL_TEST_ENGINE=kvm on a host with /dev/kvm "
                      "(tests/nested/kvm-suite runs it in a nested VM)";
    }
  }
  void TearDown() override {
    if (!IsSkipped()) ExpectNothingLeft();
  }
};

TEST_F(KvmEngineTest, BootsAndExecutesOverVsock) {
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  EXPECT_EQ(sandbox->engine_name(), "kvm");
  EXPECT_EQ(sandbox->agent_version().rfind("vessel-agent", 0), 0u);
  EXPECT_EQ(Sh(*sandbox, "echo hello from vessel-vmm"), "hello from vessel-vmm");
  EXPECT_NE(Sh(*sandbox, "cat /proc/cmdline").find("vessel.channel=vsock:1024"), std::string::npos);
  // Guest memory is what was asked for (give or take the kernel's own reservations).
  uint64_t kib = std::stoull(Sh(*sandbox, "awk '/MemTotal/ {print $2}' /proc/meminfo"));
  EXPECT_GT(kib, 200u * 1024);
  EXPECT_LE(kib, 256u * 1024);
}

TEST_F(KvmEngineTest, TheVirtioSerialChannelWorksToo) {
  SandboxConfig config = testing::TestConfig();
  config.channel = Channel::kVirtioSerial;
  auto sandbox = MustCreate(config);
  ASSERT_NE(sandbox, nullptr);
  EXPECT_EQ(Sh(*sandbox, "echo over the console port"), "over the console port");
  EXPECT_EQ(Sh(*sandbox, "cat /proc/cmdline").find("vessel.channel"), std::string::npos);
  auto data = std::string(256 * 1024, 'x');
  ASSERT_TRUE(sandbox->WriteFile("/tmp/big", data));
  auto back = sandbox->ReadFile("/tmp/big");
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(*back, data);
}

TEST_F(KvmEngineTest, TwoVcpusShowTwoCpus) {
  SandboxConfig config = testing::TestConfig();
  config.vcpus = 2;
  auto sandbox = Sandbox::Create(config);
  if (!sandbox && sandbox.error().kind() == ErrorKind::kInvalidConfig) {
    GTEST_SKIP() << "this host has one CPU: " << sandbox.error().ToString();
  }
  ASSERT_TRUE(sandbox.has_value()) << sandbox.error().ToString();
  EXPECT_EQ(Sh(**sandbox, "nproc"), "2");
  EXPECT_EQ(Sh(**sandbox, "grep -c ^processor /proc/cpuinfo"), "2");
}

TEST_F(KvmEngineTest, AGuestThatPanicsEndsTheVmAndTheSandboxFails) {
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  auto crash = sandbox->Execute(Command::Shell("echo c > /proc/sysrq-trigger; sleep 100"));
  ASSERT_FALSE(crash.has_value());
  EXPECT_EQ(crash.error().kind(), ErrorKind::kBackend) << crash.error().ToString();
  // The diagnostics say what happened: the VMM's log and the console's panic.
  EXPECT_NE(crash.error().message().find("the VM exited"), std::string::npos)
      << crash.error().message();
  EXPECT_NE(crash.error().message().find("sysrq"), std::string::npos) << crash.error().message();
  EXPECT_EQ(sandbox->state(), SandboxState::kFailed);
  EXPECT_TRUE(LiveVmmProcesses().empty()) << "vessel-vmm outlived its guest";
  EXPECT_TRUE(sandbox->Destroy().has_value());
}

TEST_F(KvmEngineTest, AGuestThatPowersOffEndsTheVm) {
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  auto off = sandbox->Execute(Command::Shell("reboot -f; sleep 100"));
  ASSERT_FALSE(off.has_value());
  // The guest resets its vsock device on the way down, moments before the VMM exits:
  // the call may see the channel drop first (VsockNotConnected) or the VM gone (kBackend).
  EXPECT_TRUE(off.error().kind() == ErrorKind::kBackend || IsVsockNotConnected(off.error()))
      << off.error().ToString();
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!LiveVmmProcesses().empty() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(LiveVmmProcesses().empty()) << "vessel-vmm outlived its guest";
  EXPECT_EQ(sandbox->state(), SandboxState::kFailed);
  auto next = sandbox->Execute(Command::Argv({"true"}));
  ASSERT_FALSE(next.has_value());
  EXPECT_TRUE(next.error().lifecycle() &&
              next.error().lifecycle()->Is<LifecycleError::InvalidState>())
      << next.error().ToString();
  EXPECT_TRUE(sandbox->Destroy().has_value());
}

TEST_F(KvmEngineTest, DestroyShutsTheVmmDownAndRemovesEverything) {
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  EXPECT_EQ(LiveVmmProcesses().size(), 1u);
  EXPECT_EQ(RuntimeLeftovers().size(), 1u);
  ASSERT_TRUE(sandbox->Destroy().has_value());
  EXPECT_EQ(sandbox->state(), SandboxState::kDestroyed);
}

TEST_F(KvmEngineTest, BadConfigsAreRefused) {
  SandboxConfig config = testing::TestConfig();
  config.vcpus = 9;
  auto too_many = Sandbox::Create(config);
  ASSERT_FALSE(too_many.has_value());
  EXPECT_EQ(too_many.error().subject(), "vcpus") << too_many.error().ToString();

  config = testing::TestConfig();
  config.memory_mib = 32 * 1024;
  auto too_big = Sandbox::Create(config);
  ASSERT_FALSE(too_big.has_value());
  EXPECT_EQ(too_big.error().subject(), "memory_mib") << too_big.error().ToString();

  std::string bogus = testing::TestRuntimeRoot() + "-kvm-bogus-kernel";
  std::ofstream(bogus) << "not a kernel";
  config = testing::TestConfig();
  config.kernel = bogus;
  auto not_elf = Sandbox::Create(config);
  std::filesystem::remove(bogus);
  ASSERT_FALSE(not_elf.has_value());
  EXPECT_EQ(not_elf.error().kind(), ErrorKind::kBackend) << not_elf.error().ToString();
  EXPECT_NE(not_elf.error().message().find("vessel-vmm"), std::string::npos)
      << not_elf.error().message();
}

// A fork freezes the parent's RAM in place: the parent goes on in the same vessel-vmm, from
// a private mapping of what its children map too. Its next fork copies instead (its RAM
// is no longer its own file), and both generations run side by side.
TEST_F(KvmEngineTest, AForkKeepsTheParentsVmmAndItsNextForkCopies) {
  auto parent = MustCreate();
  ASSERT_NE(parent, nullptr);
  std::vector<int> before = testing::LiveVmmProcesses();
  ASSERT_EQ(before.size(), 1u);
  ASSERT_EQ(Sh(*parent, "echo first > /tmp/generation && cat /tmp/generation"), "first");
  auto first = parent->Fork(1);
  ASSERT_TRUE(first) << first.error().ToString();
  std::vector<int> after = testing::LiveVmmProcesses();
  EXPECT_EQ(after.size(), 2u);
  EXPECT_NE(std::find(after.begin(), after.end(), before[0]), after.end())
      << "the parent's vessel-vmm was replaced";

  ASSERT_EQ(Sh(*parent, "echo second > /tmp/generation && cat /tmp/generation"), "second");
  auto second = parent->Fork(1);
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_EQ(Sh(*(*first)[0], "cat /tmp/generation"), "first");
  EXPECT_EQ(Sh(*(*second)[0], "cat /tmp/generation"), "second");
  EXPECT_EQ(Sh(*parent, "cat /tmp/generation"), "second");
  EXPECT_EQ(testing::LiveVmmProcesses().size(), 3u);
}

// The guest resets its vsock device: the channel drops while the VM goes on. Calls say
// VsockNotConnected (retryable) and the sandbox stays ready; once the device is back,
// the next call connects again.
TEST_F(KvmEngineTest, UnbindingTheVsockDriverIsVsockNotConnectedUntilItIsBack) {
  auto sandbox = MustCreate();
  ASSERT_NE(sandbox, nullptr);
  // The driver is vmw_vsock_virtio_transport; found by its bound device, not by name.
  std::string driver = Sh(*sandbox,
                          "dirname $(ls -d /sys/bus/virtio/drivers/*/virtio* | "
                          "grep vsock)");
  std::string device = Sh(*sandbox, "basename $(ls -d " + driver + "/virtio*)");
  ASSERT_EQ(device.rfind("virtio", 0), 0u) << driver << " " << device;
  Sh(*sandbox, "(sleep 0.3; echo " + device + " > " + driver + "/unbind; sleep 6; echo " + device +
                   " > " + driver + "/bind) </dev/null >/dev/null 2>&1 &");
  std::this_thread::sleep_for(std::chrono::seconds(1));

  auto down = sandbox->Execute(Command::Argv({"true"}));
  ASSERT_FALSE(down.has_value()) << "a command ran while the vsock device was unbound";
  EXPECT_TRUE(IsVsockNotConnected(down.error())) << down.error().ToString();
  EXPECT_TRUE(down.error().lifecycle() && down.error().lifecycle()->Retryable());
  EXPECT_EQ(sandbox->state(), SandboxState::kReady);
  auto files = sandbox->Exists("/tmp");
  ASSERT_FALSE(files.has_value());
  EXPECT_TRUE(IsVsockNotConnected(files.error())) << files.error().ToString();

  // Rebound after ~6 s: a later call reconnects by itself.
  Result<ExecResult> up = Fail(Error::Backend("not tried"));
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (std::chrono::steady_clock::now() < until) {
    up = sandbox->Execute(Command::Shell("echo back"));
    if (up || !IsVsockNotConnected(up.error())) break;
  }
  ASSERT_TRUE(up.has_value()) << up.error().ToString();
  EXPECT_EQ(Trimmed(up->stdout_data), "back");
  EXPECT_EQ(sandbox->state(), SandboxState::kReady);
}

// The image is the guest's /dev/vda: read-only, every byte of the file readable (its
// partial last sector padded with zeros), and no guest write reaches the file.
TEST_F(KvmEngineTest, TheImageIsAReadOnlyDiskWithTheFilesBytes) {
  TestFile file{testing::TestRuntimeRoot() + "-kvm-disk.img"};
  const std::string& image = file.path;
  // 1 MiB of a pattern that differs in every sector, and a tail of 300 bytes.
  constexpr size_t kImageBytes = (1 << 20) + 300;
  std::string content(kImageBytes, '\0');
  uint32_t x = 0x12345678;
  for (char& c : content) {
    x = x * 1664525 + 1013904223;
    c = static_cast<char>(x >> 24);
  }
  std::ofstream(image, std::ios::binary).write(content.data(), kImageBytes);
  ASSERT_EQ(ReadWhole(image), content);
  std::string padded = content + std::string(512 - kImageBytes % 512, '\0');

  auto sandbox = CreateWithImage(image);
  ASSERT_TRUE(sandbox.has_value()) << sandbox.error().ToString();
  Sandbox& vm = **sandbox;
  EXPECT_EQ(Sh(vm, "cat /sys/block/vda/size"), std::to_string(padded.size() / 512));
  EXPECT_EQ(Sh(vm, "cat /sys/block/vda/ro"), "1");
  EXPECT_EQ(Sh(vm, "cat /sys/block/vda/serial"), "vessel-root");
  EXPECT_EQ(Sh(vm, fmt::format("head -c {} /dev/vda | sha256sum", kImageBytes)),
            Sha256Hex(content) + "  -");
  EXPECT_EQ(Sh(vm, "sha256sum < /dev/vda"), Sha256Hex(padded) + "  -");
  // The last sector, read on its own without the page cache in the way.
  EXPECT_EQ(Sh(vm,
               "echo 3 > /proc/sys/vm/drop_caches; "
               "dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | sha256sum"),
            Sha256Hex(padded.substr(2048 * 512)) + "  -");

  auto write = vm.Execute(Command::Shell(
      "dd if=/dev/zero of=/dev/vda bs=512 count=8 conv=notrunc,fsync; echo dd=$? >&2; "
      "blockdev --setrw /dev/vda; dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=notrunc,fsync"));
  ASSERT_TRUE(write.has_value()) << write.error().ToString();
  EXPECT_FALSE(write->ok()) << "a guest wrote its read-only disk\n" << write->stderr_data;
  EXPECT_NE(write->stderr_data.find("dd="), std::string::npos) << write->stderr_data;
  EXPECT_EQ(write->stderr_data.find("dd=0"), std::string::npos) << write->stderr_data;
  EXPECT_EQ(Sh(vm, "echo 3 > /proc/sys/vm/drop_caches; sha256sum < /dev/vda"),
            Sha256Hex(padded) + "  -");
  EXPECT_EQ(Sh(vm, "cat /sys/block/vda/ro"), "1");
  ASSERT_TRUE(vm.Destroy().has_value());
  EXPECT_EQ(ReadWhole(image), content) << "the image file changed";
}

TEST_F(KvmEngineTest, AnImageThatCannotBeOpenedFailsNamingIt) {
  std::string missing = testing::TestRuntimeRoot() + "-kvm-no-such-disk.img";
  auto sandbox = CreateWithImage(missing);
  ASSERT_FALSE(sandbox.has_value());
  EXPECT_EQ(sandbox.error().kind(), ErrorKind::kBackend) << sandbox.error().ToString();
  EXPECT_NE(sandbox.error().message().find("opening the disk " + missing), std::string::npos)
      << sandbox.error().message();
}

}  // namespace
}  // namespace vessel
