// Per-VM cgroups, against a directory laid out like a cgroup v2 root: which roots are
// taken, what a VM's cgroup is given, and that a host without one is left alone.
#include "engine/vm_cgroup.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace vessel::engine {
namespace {

namespace fs = std::filesystem;

std::string Read(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class VmCgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "vessel-cgroup-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  void Offer(const std::string& controllers) {
    std::ofstream(root_ / "cgroup.controllers") << controllers << "\n";
    std::ofstream(root_ / "cgroup.subtree_control");
  }

  fs::path root_;
};

TEST_F(VmCgroupTest, ARootThatOffersTheControllersGetsAVesselSubtree) {
  Offer("cpuset cpu io memory hugetlb pids rdma misc");
  auto parent = CgroupParentIn(root_.string());
  ASSERT_TRUE(parent.has_value());
  EXPECT_EQ(*parent, (root_ / "vessel").string());
  EXPECT_EQ(Read(root_ / "cgroup.subtree_control"), "+memory +pids +cpu");
  EXPECT_EQ(Read(root_ / "vessel" / "cgroup.subtree_control"), "+memory +pids +cpu");
}

TEST_F(VmCgroupTest, AHostWithoutThemIsLeftAlone) {
  // cgroup v1 (no cgroup.controllers), or a v2 root without the memory controller.
  EXPECT_FALSE(CgroupParentIn(root_.string()).has_value());
  Offer("cpu io pids");
  EXPECT_FALSE(CgroupParentIn(root_.string()).has_value());
  EXPECT_FALSE(fs::exists(root_ / "vessel"));
  EXPECT_EQ(Read(root_ / "cgroup.subtree_control"), "");
}

TEST_F(VmCgroupTest, AVmsCgroupHasTheLimitsOfItsSize) {
  VmSpec spec;
  spec.vcpus = 2;
  spec.memory_mib = 512;
  CgroupLimits limits = LimitsFor(spec);
  EXPECT_EQ(limits.memory_max, (2 * 512 + 512) * 1024ull * 1024);
  EXPECT_EQ(limits.cpu_quota_us, 200'000u);
  EXPECT_EQ(limits.pids_max, kVmmPidsMax);
  {
    auto cgroup = VmCgroup::Create(root_.string(), "abc123", limits);
    ASSERT_TRUE(cgroup.has_value()) << cgroup.error().ToString();
    fs::path dir = root_ / "vm-abc123";
    EXPECT_EQ(cgroup->path(), dir.string());
    EXPECT_EQ(cgroup->procs(), (dir / "cgroup.procs").string());
    EXPECT_EQ(Read(dir / "memory.max"), std::to_string(limits.memory_max));
    EXPECT_EQ(Read(dir / "pids.max"), "256");
    EXPECT_EQ(Read(dir / "cpu.max"), "200000 100000");
    // A second VM of the same id is refused, not merged.
    EXPECT_FALSE(VmCgroup::Create(root_.string(), "abc123", limits).has_value());
    // A real cgroup's control files vanish with it; these do not, so clear them here.
    for (const char* file : {"memory.max", "pids.max", "cpu.max"}) fs::remove(dir / file);
  }
  EXPECT_FALSE(fs::exists(root_ / "vm-abc123")) << "the cgroup goes with its VM";
}

}  // namespace
}  // namespace vessel::engine
