// The VMM's jail: the plan as data (PlanJail against made-up hosts), and a real child
// started in one, looked at from outside through /proc.
#include "base/jail.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/subprocess.h"

namespace vessel {
namespace {

namespace fs = std::filesystem;
using Op = JailStep::Op;

HostFacts DebianRoot() {
  HostFacts host;
  host.root = true;
  host.symlinks = {
      {"/bin", "usr/bin"}, {"/lib", "usr/lib"}, {"/lib64", "usr/lib64"}, {"/sbin", "usr/sbin"}};
  host.devices = {{"/dev/null", {makedev(1, 3), 0666}},
                  {"/dev/urandom", {makedev(1, 9), 0666}},
                  {"/dev/kvm", {makedev(10, 232), 0600}}};
  host.directories = {"/usr", "/run/vessel/vm-1"};
  host.missing = {"/lib32", "/libx32", "/dev/zero", "/dev/random"};
  return host;
}

JailSpec VmSpec() {
  JailSpec spec;
  spec.root = "/run/vessel/vm-1/root";
  spec.writable = {"/run/vessel/vm-1"};
  spec.read_only = {"/opt/guest/vmlinux", "/opt/guest/initramfs.cpio"};
  spec.devices = {"/dev/kvm"};
  spec.uid = 65534;
  spec.gid = 65534;
  return spec;
}

bool Has(const JailPlan& plan, const JailStep& step) {
  return std::find(plan.steps.begin(), plan.steps.end(), step) != plan.steps.end();
}

size_t IndexOf(const JailPlan& plan, Op op, const std::string& path) {
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    if (plan.steps[i].op == op && plan.steps[i].path == path) return i;
  }
  return plan.steps.size();
}

TEST(JailPlanTest, AsRootEveryNamespaceButUserAndTheUidDropped) {
  auto plan = PlanJail(VmSpec(), DebianRoot());
  ASSERT_TRUE(plan.has_value()) << plan.error().ToString();
  EXPECT_EQ(plan->clone_flags,
            CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS);
  EXPECT_EQ(plan->uid, 65534u);
  EXPECT_EQ(plan->gid, 65534u);
  EXPECT_EQ(plan->steps.front(), (JailStep{.op = Op::kMountRoot, .path = "/run/vessel/vm-1/root"}));
  EXPECT_EQ(plan->steps.back(), (JailStep{.op = Op::kPivot, .path = "/run/vessel/vm-1/root"}));
}

TEST(JailPlanTest, TheVmDirectoryIsWritableAndEverythingElseReadOnly) {
  auto plan = PlanJail(VmSpec(), DebianRoot());
  ASSERT_TRUE(plan.has_value());
  const std::string root = "/run/vessel/vm-1/root";
  for (const std::string path : {"/usr", "/opt/guest/vmlinux", "/opt/guest/initramfs.cpio"}) {
    SCOPED_TRACE(path);
    EXPECT_TRUE(Has(*plan, {.op = Op::kBind, .path = root + path, .source = path}));
    EXPECT_TRUE(Has(*plan, {.op = Op::kReadOnly, .path = root + path}));
  }
  EXPECT_TRUE(Has(*plan, {.op = Op::kFile, .path = root + "/opt/guest/vmlinux"}));
  EXPECT_TRUE(Has(*plan, {.op = Op::kMkdir, .path = root + "/usr"}));
  EXPECT_TRUE(Has(
      *plan, {.op = Op::kBind, .path = root + "/run/vessel/vm-1", .source = "/run/vessel/vm-1"}));
  EXPECT_FALSE(Has(*plan, {.op = Op::kReadOnly, .path = root + "/run/vessel/vm-1"}));
  // Parents come before what is made in them.
  EXPECT_LT(IndexOf(*plan, Op::kMkdir, root + "/opt"),
            IndexOf(*plan, Op::kMkdir, root + "/opt/guest"));
  EXPECT_LT(IndexOf(*plan, Op::kMkdir, root + "/opt/guest"),
            IndexOf(*plan, Op::kFile, root + "/opt/guest/vmlinux"));
  // Nothing else of the host is bound: no /home, /etc beyond the loader's cache, /tmp.
  for (const auto& step : plan->steps) {
    if (step.op != Op::kBind) continue;
    EXPECT_TRUE(step.source == "/usr" || step.source == "/etc/ld.so.cache" ||
                step.source.starts_with("/opt/guest/") || step.source == "/run/vessel/vm-1")
        << step.source;
  }
}

TEST(JailPlanTest, MergedUsrLinksAreLinksAndMissingPathsAreLeftOut) {
  auto plan = PlanJail(VmSpec(), DebianRoot());
  ASSERT_TRUE(plan.has_value());
  const std::string root = "/run/vessel/vm-1/root";
  EXPECT_TRUE(Has(*plan, {.op = Op::kSymlink, .path = root + "/lib", .source = "usr/lib"}));
  EXPECT_TRUE(Has(*plan, {.op = Op::kSymlink, .path = root + "/bin", .source = "usr/bin"}));
  for (const auto& step : plan->steps) {
    EXPECT_NE(step.path, root + "/lib32");
    EXPECT_NE(step.path, root + "/dev/zero");
  }
}

TEST(JailPlanTest, AsRootDevicesAreMadeForTheJailsUid) {
  auto plan = PlanJail(VmSpec(), DebianRoot());
  ASSERT_TRUE(plan.has_value());
  const std::string root = "/run/vessel/vm-1/root";
  EXPECT_TRUE(Has(*plan, {.op = Op::kMknod,
                          .path = root + "/dev/kvm",
                          .rdev = makedev(10, 232),
                          .mode = 0600,
                          .uid = 65534,
                          .gid = 65534}));
  EXPECT_TRUE(Has(*plan, {.op = Op::kMknod,
                          .path = root + "/dev/null",
                          .rdev = makedev(1, 3),
                          .mode = 0666,
                          .uid = 65534,
                          .gid = 65534}));
  EXPECT_TRUE(Has(*plan, {.op = Op::kProc, .path = root + "/proc"}));
}

TEST(JailPlanTest, WithoutRootAUserNamespaceMapsOurOwnIds) {
  HostFacts host = DebianRoot();
  host.root = false;
  host.uid = 1000;
  host.gid = 100;
  JailSpec spec = VmSpec();
  auto plan = PlanJail(spec, host);
  ASSERT_TRUE(plan.has_value());
  EXPECT_TRUE(plan->clone_flags & CLONE_NEWUSER);
  EXPECT_FALSE(plan->uid.has_value()) << "a user namespace keeps our uid";
  ASSERT_GE(plan->steps.size(), 3u);
  EXPECT_EQ(plan->steps[0],
            (JailStep{.op = Op::kWrite, .path = "/proc/self/setgroups", .source = "deny"}));
  EXPECT_EQ(plan->steps[1],
            (JailStep{.op = Op::kWrite, .path = "/proc/self/uid_map", .source = "1000 1000 1\n"}));
  EXPECT_EQ(plan->steps[2],
            (JailStep{.op = Op::kWrite, .path = "/proc/self/gid_map", .source = "100 100 1\n"}));
  // No mknod in a user namespace: the host's nodes are bound instead.
  const std::string root = "/run/vessel/vm-1/root";
  EXPECT_TRUE(Has(*plan, {.op = Op::kBind, .path = root + "/dev/kvm", .source = "/dev/kvm"}));
  for (const auto& step : plan->steps) EXPECT_NE(step.op, Op::kMknod);
}

TEST(JailPlanTest, APathInsideABoundDirectoryIsNotBoundAgain) {
  JailSpec spec = VmSpec();
  spec.read_only.push_back("/run/vessel/vm-1/image.erofs");
  auto plan = PlanJail(spec, DebianRoot());
  ASSERT_TRUE(plan.has_value());
  for (const auto& step : plan->steps) {
    EXPECT_NE(step.source, "/run/vessel/vm-1/image.erofs");
  }
}

TEST(JailPlanTest, AnAttachedMountGetsAMountPointInTheRootBeforeThePivot) {
  JailSpec spec = VmSpec();
  spec.attached.push_back({.tree = 7, .path = "/saved/memory"});
  auto plan = PlanJail(spec, DebianRoot());
  ASSERT_TRUE(plan.has_value());
  const std::string root = "/run/vessel/vm-1/root";
  size_t dir = IndexOf(*plan, Op::kMkdir, root + "/saved");
  size_t point = IndexOf(*plan, Op::kFile, root + "/saved/memory");
  size_t attach = IndexOf(*plan, Op::kAttach, root + "/saved/memory");
  size_t pivot = IndexOf(*plan, Op::kPivot, root);
  EXPECT_LT(dir, point);
  EXPECT_LT(point, attach);
  EXPECT_LT(attach, pivot);
  ASSERT_LT(attach, plan->steps.size());
  EXPECT_EQ(plan->steps[attach].tree, 7);
  EXPECT_EQ(DescribeJailStep(*plan, attach), "attach a mount on " + root + "/saved/memory");
}

TEST(JailPlanTest, BadSpecsAreRefused) {
  JailSpec spec = VmSpec();
  spec.root = "relative/root";
  EXPECT_FALSE(PlanJail(spec, DebianRoot()).has_value());
  spec = VmSpec();
  spec.root.clear();
  EXPECT_FALSE(PlanJail(spec, DebianRoot()).has_value());
  spec = VmSpec();
  spec.read_only.push_back("opt/vmlinux");
  EXPECT_FALSE(PlanJail(spec, DebianRoot()).has_value());
  spec = VmSpec();
  spec.writable.push_back("/run/vessel/../../etc");
  EXPECT_FALSE(PlanJail(spec, DebianRoot()).has_value());
  spec = VmSpec();
  spec.attached.push_back({.tree = 7, .path = "saved/memory"});
  EXPECT_FALSE(PlanJail(spec, DebianRoot()).has_value());
  spec = VmSpec();
  spec.attached.push_back({.tree = -1, .path = "/saved/memory"});
  EXPECT_FALSE(PlanJail(spec, DebianRoot()).has_value());
}

// A real child in a real jail. Needs root (CI has it): the namespaces, mknod and the uid.
class JailedChildTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "a jail with a uid of its own needs root";
    std::string pattern = (fs::path(::testing::TempDir()) / "vessel-jail-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((dir_ + "/root").c_str(), 0755), 0);
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  std::string dir_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST_F(JailedChildTest, SeesOnlyItsPathsHasNoCapabilitiesAndItsOwnNamespaces) {
  // The child writes what it finds into out/, its one writable directory; the asset,
  // writable by anyone on the host, is bound read-only. `done` comes last.
  std::string out = dir_ + "/out";
  std::string asset = dir_ + "/assets/asset";
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  ASSERT_EQ(::chown(out.c_str(), 65534, 65534), 0);
  ASSERT_EQ(::mkdir((dir_ + "/assets").c_str(), 0755), 0);
  std::ofstream(asset) << "read only";
  ASSERT_EQ(::chmod(asset.c_str(), 0666), 0);
  SpawnOptions options;
  options.argv = {"/bin/sh", "-c",
                  "ls / > " + out + "/ls; cat " + asset + " > " + out +
                      "/copy; "
                      "if echo x 2> /dev/null > " +
                      asset +
                      "; then echo written; else echo refused; "
                      "fi > " +
                      out +
                      "/write; "
                      "if test -e /etc/passwd; then echo seen; else echo hidden; fi > " +
                      out + "/passwd; echo > " + out + "/done; exec sleep 30"};
  options.jail = JailSpec{.root = dir_ + "/root",
                          .read_only = {asset},
                          .writable = {out},
                          .devices = {},
                          .uid = 65534,
                          .gid = 65534};
  auto child = Subprocess::Spawn(options);
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  pid_t pid = child->pid();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!fs::exists(out + "/done") && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(fs::exists(out + "/done"));
  std::string status = ReadAll(fmt::format("/proc/{}/status", pid));
  EXPECT_NE(status.find("Uid:\t65534\t65534\t65534\t65534"), std::string::npos) << status;
  EXPECT_NE(status.find("CapEff:\t0000000000000000"), std::string::npos) << status;
  EXPECT_NE(status.find("CapBnd:\t0000000000000000"), std::string::npos) << status;
  EXPECT_NE(status.find("NoNewPrivs:\t1"), std::string::npos) << status;
  for (const char* ns : {"mnt", "pid", "net", "ipc", "uts"}) {
    SCOPED_TRACE(ns);
    EXPECT_NE(fs::read_symlink(fmt::format("/proc/{}/ns/{}", pid, ns)),
              fs::read_symlink(fmt::format("/proc/self/ns/{}", ns)));
  }
  EXPECT_EQ(ReadAll(out + "/copy"), "read only");
  EXPECT_EQ(ReadAll(out + "/write"), "refused\n");
  EXPECT_EQ(ReadAll(asset), "read only");
  EXPECT_EQ(ReadAll(out + "/passwd"), "hidden\n");
  std::string listing = ReadAll(out + "/ls");
  EXPECT_EQ(listing.find("home"), std::string::npos) << listing;
  EXPECT_NE(listing.find("usr"), std::string::npos) << listing;
  // Its pid namespace's init: killing it takes everything in it.
  child->Kill();
  EXPECT_FALSE(fs::exists(fmt::format("/proc/{}", pid)));
}

// A jail that keeps uid 0 (as QEMU's does) drops every capability, but files of root's
// with write permission for their owner stay writable to it: the kernel's settings under
// /proc/sys, /proc/sysrq-trigger. The jail's /proc has only the processes.
TEST_F(JailedChildTest, ItsProcHasOnlyProcessesSoUidZeroWritesNoKernelSetting) {
  std::string out = dir_ + "/out";
  ASSERT_EQ(::mkdir(out.c_str(), 0700), 0);
  SpawnOptions options;
  options.argv = {
      "/bin/sh", "-c",
      "for p in /proc/sys /proc/sys/kernel/core_pattern /proc/sysrq-trigger /proc/kcore "
      "/proc/self/fd /proc/1/status; do if test -e $p; then echo \"$p seen\"; "
      "else echo \"$p hidden\"; fi; done > " +
          out + "/seen; echo > " + out + "/done"};
  options.jail = JailSpec{.root = dir_ + "/root",
                          .read_only = {},
                          .writable = {out},
                          .devices = {},
                          .uid = std::nullopt,
                          .gid = std::nullopt};
  auto child = Subprocess::Spawn(options);
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  ASSERT_TRUE(child->WaitFor(std::chrono::seconds(10)));
  ASSERT_TRUE(fs::exists(out + "/done"));
  EXPECT_EQ(ReadAll(out + "/seen"),
            "/proc/sys hidden\n/proc/sys/kernel/core_pattern hidden\n/proc/sysrq-trigger hidden\n"
            "/proc/kcore hidden\n/proc/self/fd seen\n/proc/1/status seen\n");
}

// vessel-vmm finds the pages a restored or forked guest wrote in its own pagemap
// (src/vmm/core/data_pages.h), which it opens in its jail, as its own uid.
TEST_F(JailedChildTest, ReadsItsOwnPagemap) {
  std::string out = dir_ + "/out";
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  ASSERT_EQ(::chown(out.c_str(), 65534, 65534), 0);
  SpawnOptions options;
  options.argv = {
      "/bin/sh", "-c",
      "head -c 8 /proc/self/pagemap | wc -c > " + out + "/read; echo > " + out + "/done"};
  options.jail = JailSpec{.root = dir_ + "/root", .writable = {out}, .uid = 65534, .gid = 65534};
  auto child = Subprocess::Spawn(options);
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  ASSERT_TRUE(child->WaitFor(std::chrono::seconds(10)));
  ASSERT_TRUE(fs::exists(out + "/done"));
  EXPECT_EQ(ReadAll(out + "/read"), "8\n");
}

// A file of root's, mode 0600, attached through an idmapped mount: the jailed child, as
// nobody, reads and writes it as its owner would, while the same file bound as it is stays
// closed to it; on the host it keeps its owner and mode.
TEST_F(JailedChildTest, AnIdmappedFileIsTheJailUsersOwnAndTheHostFileKeepsItsOwner) {
  std::string out = dir_ + "/out";
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  ASSERT_EQ(::chown(out.c_str(), 65534, 65534), 0);
  std::string secret = dir_ + "/secret";
  std::ofstream(secret) << "root's";
  ASSERT_EQ(::chmod(secret.c_str(), 0600), 0);
  UniqueFd fd(::open(secret.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd);
  auto tree = IdmappedFile(fd.get(), 65534, 65534);
  ASSERT_TRUE(tree.has_value()) << tree.error().ToString();
  SpawnOptions options;
  options.argv = {"/bin/sh", "-c",
                  "cat /mapped/secret > " + out +
                      "/mapped; echo ' and nobody' >> /mapped/secret; " + "if cat " + secret +
                      " 2> /dev/null; then echo read; else echo refused; fi > " + out +
                      "/bound; stat -c %u /mapped/secret > " + out + "/owner"};
  options.jail = JailSpec{.root = dir_ + "/root",
                          .read_only = {},
                          .writable = {out, secret},
                          .devices = {},
                          .uid = 65534,
                          .gid = 65534,
                          .attached = {{.tree = tree->get(), .path = "/mapped/secret"}}};
  auto child = Subprocess::Spawn(options);
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  ASSERT_TRUE(child->WaitFor(std::chrono::seconds(10)));
  EXPECT_EQ(ReadAll(out + "/mapped"), "root's");
  EXPECT_EQ(ReadAll(out + "/bound"), "refused\n");
  EXPECT_EQ(ReadAll(out + "/owner"), "65534\n");
  EXPECT_EQ(ReadAll(secret), "root's and nobody\n");
  struct stat st {};
  ASSERT_EQ(::stat(secret.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(JailedChildTest, AFileSystemWithoutIdmappedMountsIsAnError) {
  UniqueFd fd(::open("/proc/self/status", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd);
  auto tree = IdmappedFile(fd.get(), 65534, 65534);
  ASSERT_FALSE(tree.has_value());
  EXPECT_EQ(tree.error().kind(), ErrorKind::kHostIo) << tree.error().ToString();
}

// The child takes its uid with the system calls themselves: the C library's would wait
// on the parent's threads, which the clone did not copy, and hang when one was being
// created at the time.
TEST_F(JailedChildTest, TakesItsUidWhileTheParentCreatesThreads) {
  std::atomic<bool> stop{false};
  std::thread churn([&stop] {
    while (!stop) std::thread([] {}).join();
  });
  auto spawn_all = [](const std::string& root) {
    for (int i = 0; i < 40; ++i) {
      SpawnOptions options;
      options.argv = {"/bin/true"};
      options.jail = JailSpec{.root = root, .uid = 65534, .gid = 65534};
      auto child = Subprocess::Spawn(options);
      if (!child) return child.error().ToString();
      if (!child->WaitFor(std::chrono::seconds(10))) return std::string("a child hung");
    }
    return std::string();
  };
  // On a thread of its own, left behind should it hang: the test fails rather than waits.
  auto result = std::make_shared<std::promise<std::string>>();
  auto spawned = result->get_future();
  std::thread([spawn_all, root = dir_ + "/root", result] {
    result->set_value(spawn_all(root));
  }).detach();
  bool done = spawned.wait_for(std::chrono::seconds(60)) == std::future_status::ready;
  stop = true;
  churn.join();
  ASSERT_TRUE(done) << "a jailed child hung taking its uid";
  EXPECT_EQ(spawned.get(), "");
}

TEST_F(JailedChildTest, AFailedStepIsAnErrorNamingIt) {
  SpawnOptions options;
  options.argv = {"/bin/true"};
  options.jail = JailSpec{.root = dir_ + "/no-such-root",
                          .read_only = {},
                          .writable = {},
                          .devices = {},
                          .uid = std::nullopt,
                          .gid = std::nullopt};
  auto child = Subprocess::Spawn(options);
  ASSERT_FALSE(child.has_value());
  EXPECT_NE(child.error().message().find("mount the jail's root on " + dir_ + "/no-such-root"),
            std::string::npos)
      << child.error().ToString();
}

}  // namespace
}  // namespace vessel
