// Choosing the engine and the agent channel, and what the kvm engine asks vessel-vmm
// for: all without KVM.
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/host.h"
#include "engine/kvm/kvm_engine.h"
#include "engine/qemu/qemu_engine.h"
#include "engine/select.h"
#include "sandbox/config.h"

namespace vessel::sandbox {
namespace {

using engine::AgentChannel;

const engine::Host kKvmHost{std::nullopt, "/usr/libexec/vessel-vmm"};
const engine::Host kNoKvmHost{std::string("/dev/kvm cannot be opened: No such file or directory"),
                              "/usr/libexec/vessel-vmm"};
const engine::Host kNoVmmHost{std::nullopt, ""};

TEST(HostTest, SelectedPolicyIsTheBracketedWord) {
  EXPECT_EQ(engine::SelectedPolicy("always within_size advise [never] deny force\n"), "never");
  EXPECT_EQ(engine::SelectedPolicy("[always] madvise never"), "always");
  EXPECT_EQ(engine::SelectedPolicy(""), "");
  EXPECT_EQ(engine::SelectedPolicy("always [advise"), "");
  EXPECT_EQ(engine::SelectedPolicy("always] advise ["), "");
}

// A VM's RAM: sized, linked nowhere, open to a jailed VMM through its descriptor; as
// root, on a tmpfs of its own that is in no mount table, and gone with its descriptor.
TEST(HostTest, GuestRamIsAnUnlinkedFileInMemoryOfItsSize) {
  auto mounts = [] {
    std::ifstream in("/proc/self/mountinfo");
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  std::string before = mounts();
  {
    auto ram = engine::CreateGuestRam(uint64_t{8} << 20);
    ASSERT_TRUE(ram.has_value()) << ram.error().ToString();
    struct stat st {};
    ASSERT_EQ(::fstat(ram->get(), &st), 0);
    EXPECT_EQ(st.st_size, off_t{8} << 20);
    EXPECT_EQ(st.st_nlink, 0u);
    EXPECT_EQ(st.st_mode & 0666, 0666u);
    EXPECT_EQ(st.st_blocks, 0);  // nothing is allocated before the guest writes
    struct statfs fs {};
    ASSERT_EQ(::fstatfs(ram->get(), &fs), 0);
    EXPECT_EQ(fs.f_type, TMPFS_MAGIC);
    EXPECT_EQ(mounts(), before);
    if (::geteuid() == 0) {
      // Its own tmpfs, the size of the RAM: no room beyond it.
      EXPECT_EQ(static_cast<uint64_t>(fs.f_blocks) * static_cast<uint64_t>(fs.f_bsize),
                uint64_t{8} << 20);
    }
  }
  EXPECT_EQ(mounts(), before);
}

TEST(EngineChoiceTest, AutoPicksKvmWhereItCanRun) {
  EXPECT_EQ(engine::Select(EngineKind::kAuto, kKvmHost), EngineKind::kKvm);
  EXPECT_EQ(engine::Select(EngineKind::kAuto, kNoKvmHost), EngineKind::kQemu);
  EXPECT_EQ(engine::Select(EngineKind::kAuto, kNoVmmHost), EngineKind::kQemu);
}

TEST(EngineChoiceTest, QemuRunsEverywhere) {
  for (const auto& host : {kKvmHost, kNoKvmHost, kNoVmmHost}) {
    EXPECT_EQ(engine::Select(EngineKind::kQemu, host), EngineKind::kQemu);
  }
}

TEST(EngineChoiceTest, KvmWhereItCannotRunIsUnsupportedPlatformSayingWhy) {
  EXPECT_EQ(engine::Select(EngineKind::kKvm, kKvmHost), EngineKind::kKvm);
  auto no_kvm = engine::Select(EngineKind::kKvm, kNoKvmHost);
  ASSERT_FALSE(no_kvm.has_value());
  EXPECT_EQ(no_kvm.error().kind(), ErrorKind::kUnsupportedPlatform);
  EXPECT_NE(no_kvm.error().message().find("/dev/kvm cannot be opened"), std::string::npos)
      << no_kvm.error().message();
  EXPECT_NE(no_kvm.error().message().find("use engine qemu"), std::string::npos);
  auto no_vmm = engine::Select(EngineKind::kKvm, kNoVmmHost);
  ASSERT_FALSE(no_vmm.has_value());
  EXPECT_EQ(no_vmm.error().kind(), ErrorKind::kUnsupportedPlatform);
  EXPECT_NE(no_vmm.error().message().find("VESSEL_VMM"), std::string::npos);
}

TEST(EngineChoiceTest, MakeConstructsTheSelectedEngine) {
  auto kvm = engine::Make(EngineKind::kAuto, kKvmHost);
  ASSERT_TRUE(kvm.has_value()) << kvm.error().ToString();
  EXPECT_EQ((*kvm)->name(), "kvm");
  auto tcg = engine::Make(EngineKind::kAuto, kNoKvmHost);
  ASSERT_TRUE(tcg.has_value()) << tcg.error().ToString();
  EXPECT_EQ((*tcg)->name(), "qemu-tcg");
  auto qemu_kvm = engine::Make(EngineKind::kQemu, kKvmHost);
  ASSERT_TRUE(qemu_kvm.has_value()) << qemu_kvm.error().ToString();
  EXPECT_EQ((*qemu_kvm)->name(), "qemu-kvm");
  auto refused = engine::Make(EngineKind::kKvm, kNoVmmHost);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().kind(), ErrorKind::kUnsupportedPlatform);
}

TEST(EngineChoiceTest, EveryEngineHasTheSameGuestLimits) {
  for (auto kind : {EngineKind::kQemu, EngineKind::kKvm}) {
    auto made = engine::Make(kind, kKvmHost);
    ASSERT_TRUE(made.has_value());
    EXPECT_EQ((*made)->max_vcpus(), engine::GuestVcpuLimit());
    EXPECT_EQ((*made)->max_memory_mib(), engine::GuestMemoryLimitMib());
  }
  EXPECT_GE(engine::GuestVcpuLimit(), 1u);
  EXPECT_LE(engine::GuestVcpuLimit(), engine::kMaxGuestVcpus);
  EXPECT_GE(engine::GuestMemoryLimitMib(), engine::kMinGuestMemoryMib);
  EXPECT_LE(engine::GuestMemoryLimitMib(), engine::kMaxGuestMemoryMib);
}

TEST(EngineChoiceTest, RestoringPicksTheEngineThatSaved) {
  EXPECT_EQ(engine::KindOfEngineName("kvm"), EngineKind::kKvm);
  EXPECT_EQ(engine::KindOfEngineName("qemu-tcg"), EngineKind::kQemu);
  EXPECT_EQ(engine::KindOfEngineName("qemu-kvm"), EngineKind::kQemu);
  EXPECT_EQ(engine::KindOfEngineName("bochs"), EngineKind::kAuto);
}

TEST(EngineChoiceTest, ChannelsFollowTheEngine) {
  engine::qemu::QemuEngine qemu;
  engine::kvm::KvmEngine kvm;
  EXPECT_EQ(ChooseChannel(Channel::kAuto, qemu), AgentChannel::kVirtioSerial);
  EXPECT_EQ(ChooseChannel(Channel::kAuto, kvm), AgentChannel::kVsock);
  EXPECT_EQ(ChooseChannel(Channel::kVirtioSerial, qemu), AgentChannel::kVirtioSerial);
  EXPECT_EQ(ChooseChannel(Channel::kVirtioSerial, kvm), AgentChannel::kVirtioSerial);
  EXPECT_EQ(ChooseChannel(Channel::kVsock, kvm), AgentChannel::kVsock);
  auto unavailable = ChooseChannel(Channel::kVsock, qemu);
  ASSERT_FALSE(unavailable.has_value());
  ASSERT_EQ(unavailable.error().kind(), ErrorKind::kLifecycle);
  EXPECT_TRUE(unavailable.error().lifecycle()->Is<LifecycleError::VsockUnavailable>());
  EXPECT_FALSE(unavailable.error().lifecycle()->Retryable());
}

class ValidateChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/vessel-channel-test-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    config_.kernel = dir_ + "/vmlinux";
    config_.initramfs = dir_ + "/initramfs.cpio";
    std::ofstream(config_.kernel) << "kernel";
    std::ofstream(config_.initramfs) << "initramfs";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_;
  SandboxConfig config_;
};

TEST_F(ValidateChannelTest, TheSpecCarriesTheChosenChannel) {
  engine::kvm::KvmEngine kvm;
  auto spec = ValidateConfig(config_, kvm);
  ASSERT_TRUE(spec.has_value()) << spec.error().ToString();
  EXPECT_EQ(spec->channel, AgentChannel::kVsock);
  config_.channel = Channel::kVirtioSerial;
  spec = ValidateConfig(config_, kvm);
  ASSERT_TRUE(spec.has_value()) << spec.error().ToString();
  EXPECT_EQ(spec->channel, AgentChannel::kVirtioSerial);

  engine::qemu::QemuEngine qemu;
  config_.channel = Channel::kVsock;
  auto refused = ValidateConfig(config_, qemu);
  ASSERT_FALSE(refused.has_value());
  EXPECT_TRUE(refused.error().lifecycle() &&
              refused.error().lifecycle()->Is<LifecycleError::VsockUnavailable>());
}

TEST(KvmEngineUnitTest, TheGuestCmdlineNamesTheVsockChannelOnlyForVsock) {
  engine::VmSpec spec;
  spec.channel = AgentChannel::kVsock;
  std::string vsock = engine::kvm::KvmGuestCmdline(spec);
  EXPECT_NE(vsock.find("vessel.channel=vsock:1024"), std::string::npos) << vsock;
  EXPECT_NE(vsock.find("console=ttyS0"), std::string::npos);
  EXPECT_NE(vsock.find("reboot=t panic=-1"), std::string::npos);
  EXPECT_NE(vsock.find(" quiet"), std::string::npos);
  EXPECT_TRUE(vsock.ends_with(" vessel.channel=vsock:1024"))
      << "nothing after the channel without guest_args: " << vsock;
  spec.channel = AgentChannel::kVirtioSerial;
  std::string serial = engine::kvm::KvmGuestCmdline(spec, false);
  EXPECT_EQ(serial.find("vessel.channel"), std::string::npos) << serial;
  EXPECT_EQ(serial.find("quiet"), std::string::npos) << serial;
}

TEST(KvmEngineUnitTest, TheGuestCmdlineEndsWithTheGuestArgs) {
  engine::VmSpec spec;
  spec.channel = AgentChannel::kVsock;
  spec.guest_args = "vessel.root=/dev/vda vessel.overlay=tmpfs";
  std::string cmdline = engine::kvm::KvmGuestCmdline(spec);
  std::string tail = " vessel.channel=vsock:1024 vessel.root=/dev/vda vessel.overlay=tmpfs";
  ASSERT_GE(cmdline.size(), tail.size());
  EXPECT_EQ(cmdline.substr(cmdline.size() - tail.size()), tail) << cmdline;
  EXPECT_EQ(cmdline.find("  "), std::string::npos) << cmdline;
}

TEST(KvmEngineUnitTest, ConfigureCarriesTheSpecAndTheRuntimePaths) {
  engine::VmSpec spec;
  spec.kernel = "/assets/vmlinux";
  spec.initramfs = "/assets/initramfs.cpio";
  spec.vcpus = 2;
  spec.memory_mib = 512;
  engine::kvm::KvmPaths paths{"/run/vm-1/console.log", "/run/vm-1/vsock.sock",
                              "/run/vm-1/agent.sock"};
  auto request = engine::kvm::ConfigureRequest(spec, "console=ttyS0", paths,
                                               protocol::vmm_control::MemorySource::kShared);
  const protocol::vmm_control::VmConfig& config = request.config;
  EXPECT_EQ(config.vcpus, 2u);
  EXPECT_EQ(config.memory_mib, 512u);
  EXPECT_EQ(config.kernel, "/assets/vmlinux");
  EXPECT_EQ(config.initramfs, "/assets/initramfs.cpio");
  EXPECT_EQ(config.cmdline, "console=ttyS0");
  EXPECT_EQ(config.console_log, "/run/vm-1/console.log");
  ASSERT_TRUE(config.vsock);
  EXPECT_EQ(config.vsock->cid, 3u);
  EXPECT_EQ(config.vsock->uds, "/run/vm-1/vsock.sock");
  EXPECT_EQ(config.agent_port, "/run/vm-1/agent.sock");
  EXPECT_TRUE(config.disk.empty()) << "no image, no disk";
  EXPECT_EQ(config.memory, protocol::vmm_control::MemorySource::kShared);
  // What the engine sends, the VMM accepts as it is.
  auto message = protocol::vmm_control::EncodeRequest(request);
  ASSERT_TRUE(message) << message.error().ToString();
  auto decoded = protocol::vmm_control::DecodeRequest(*message);
  ASSERT_TRUE(decoded) << decoded.error().ToString();
  EXPECT_EQ(*decoded, protocol::vmm_control::Request(request));
}

TEST(KvmEngineUnitTest, TheImageIsTheVmmsDiskByItsAbsolutePath) {
  engine::VmSpec spec;
  spec.kernel = "/assets/vmlinux";
  spec.initramfs = "/assets/initramfs.cpio";
  engine::kvm::KvmPaths paths{"/run/vm-1/console.log", "/run/vm-1/vsock.sock",
                              "/run/vm-1/agent.sock"};
  spec.image = "/var/lib/vessel/images/root.erofs";
  EXPECT_EQ(
      engine::kvm::ConfigureRequest(spec, "", paths, protocol::vmm_control::MemorySource::kShared)
          .config.disk,
      spec.image);
  // A relative path is made absolute: the VMM refuses relative ones.
  spec.image = "images/root.erofs";
  std::string disk =
      engine::kvm::ConfigureRequest(spec, "", paths, protocol::vmm_control::MemorySource::kShared)
          .config.disk;
  EXPECT_EQ(disk, (std::filesystem::current_path() / "images/root.erofs").string());
  auto message = protocol::vmm_control::EncodeRequest(
      engine::kvm::ConfigureRequest(spec, "", paths, protocol::vmm_control::MemorySource::kShared));
  ASSERT_TRUE(message) << message.error().ToString();
  auto decoded = protocol::vmm_control::DecodeRequest(*message);
  ASSERT_TRUE(decoded) << decoded.error().ToString();
  EXPECT_EQ(std::get<protocol::vmm_control::request::Configure>(*decoded).config.disk, disk);
}

TEST(KvmEngineUnitTest, VesselVmmIsFoundThroughTheEnvironmentFirst) {
  const char* saved = std::getenv("VESSEL_VMM");
  std::string saved_value = saved ? saved : "";
  char pattern[] = "/tmp/vessel-vmm-test-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  std::string fake = std::string(pattern) + "/my-vmm";
  std::ofstream(fake) << "#!/bin/sh\n";
  ::chmod(fake.c_str(), 0755);
  ::setenv("VESSEL_VMM", fake.c_str(), 1);
  EXPECT_EQ(engine::kvm::FindVmm(), fake);
  // A $VESSEL_VMM that is not executable is not silently replaced by another binary.
  ::chmod(fake.c_str(), 0644);
  EXPECT_EQ(engine::kvm::FindVmm(), "");
  if (saved) {
    ::setenv("VESSEL_VMM", saved_value.c_str(), 1);
  } else {
    ::unsetenv("VESSEL_VMM");
  }
  std::filesystem::remove_all(pattern);
}

TEST(QemuEngineUnitTest, VersionIsAskedOncePerBinary) {
  char pattern[] = "/tmp/vessel-qemu-version-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  auto fake_qemu = [&](const std::string& name, const std::string& version) {
    std::string path = std::string(pattern) + "/" + name;
    std::ofstream(path) << "#!/bin/sh\necho '" << version << "'\necho second line\n";
    ::chmod(path.c_str(), 0755);
    return path;
  };
  std::string old_qemu = fake_qemu("qemu-old", "QEMU emulator version 7.2.22");
  std::string new_qemu = fake_qemu("qemu-new", "QEMU emulator version 9.1.0");
  engine::qemu::QemuEngine first({.binary = old_qemu, .accel = engine::qemu::Accel::kTcg});
  engine::qemu::QemuEngine second({.binary = new_qemu, .accel = engine::qemu::Accel::kTcg});
  EXPECT_EQ(first.version(), "QEMU emulator version 7.2.22");
  EXPECT_EQ(second.version(), "QEMU emulator version 9.1.0");
  // Cached: a binary that changes after the first question keeps its first answer.
  fake_qemu("qemu-old", "QEMU emulator version 8.0.0");
  EXPECT_EQ(first.version(), "QEMU emulator version 7.2.22");
  engine::qemu::QemuEngine missing(
      {.binary = std::string(pattern) + "/absent", .accel = engine::qemu::Accel::kTcg});
  EXPECT_EQ(missing.version(), "unknown");
  std::filesystem::remove_all(pattern);
}

TEST(KvmEngineUnitTest, WithoutKvmStartIsUnsupportedPlatform) {
  if (engine::KvmUsable()) GTEST_SKIP() << "this host has a usable /dev/kvm";
  engine::kvm::KvmEngine kvm;
  EXPECT_EQ(kvm.name(), "kvm");
  EXPECT_TRUE(kvm.SupportsVsock());
  EXPECT_EQ(kvm.max_vcpus() >= 1 && kvm.max_vcpus() <= 8, true);
  auto vm = kvm.Start(engine::VmSpec{});
  ASSERT_FALSE(vm.has_value());
  EXPECT_EQ(vm.error().kind(), ErrorKind::kUnsupportedPlatform);
  EXPECT_NE(vm.error().message().find("/dev/kvm"), std::string::npos) << vm.error().message();
}

}  // namespace
}  // namespace vessel::sandbox
