// Snapshot, restore and fork of real VMs.
#include "snapshot/snapshot.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <thread>

#include "base/io.h"
#include "vm_test_env.h"

namespace vessel {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// This host's snapshot key, as the library uses it.
const snapshot::HostKey& HostKey() {
  static const snapshot::HostKey key = snapshot::ThisHostKey().value();
  return key;
}

// A fresh directory for snapshots, removed with the test.
class SnapshotDirs {
 public:
  SnapshotDirs() {
    char pattern[] = "/tmp/vessel-snapshot-test-XXXXXX";
    root_ = ::mkdtemp(pattern);
  }
  ~SnapshotDirs() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  std::string Path(const std::string& name) const { return root_ + "/" + name; }

 private:
  std::string root_;
};

std::string Sh(Sandbox& sandbox, const std::string& script) {
  auto result = sandbox.Execute(Command::Shell(script));
  EXPECT_TRUE(result.has_value()) << result.error().ToString();
  if (!result) return {};
  EXPECT_TRUE(result->ok()) << script << "\nstderr: " << result->stderr_data;
  return result->stdout_data;
}

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::unique_ptr<Sandbox> MustRestore(const std::string& dir, const RestoreOptions& options = {}) {
  auto restored = Sandbox::Restore(dir, options);
  EXPECT_TRUE(restored.has_value()) << restored.error().ToString();
  return restored ? std::move(*restored) : nullptr;
}

// A counter that a detached background process bumps every 50 ms, and its pid. Each value
// is renamed into place, so a reader never sees the file truncated and not yet written.
constexpr const char* kStartCounter =
    "setsid sh -c 'echo $$ > /tmp/counter.pid; i=0; while true; do i=$((i+1)); "
    "echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.05; done' "
    "> /dev/null 2>&1 < /dev/null & "
    "while [ ! -s /tmp/counter ]; do sleep 0.01; done";

int Counter(Sandbox& sandbox) { return std::stoi(Trimmed(Sh(sandbox, "cat /tmp/counter"))); }

long UnixSeconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

// The guest's wall clock is within 1 s of the host's. `date +%s` has whole seconds, so
// the guest's reading must fall in [host before - 1, host after + 1].
void ExpectClockIsTheHosts(Sandbox& sandbox) {
  auto before = std::chrono::system_clock::now();
  long guest = std::stol(Trimmed(Sh(sandbox, "date +%s")));
  auto after = std::chrono::system_clock::now();
  EXPECT_GE(guest, UnixSeconds(before) - 1);
  EXPECT_LE(guest, UnixSeconds(after) + 1);
}

TEST(SnapshotTest, RoundTripKeepsFilesAndARunningBackgroundProcess) {
  SnapshotDirs dirs;
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  ASSERT_TRUE(parent->WriteFile("/tmp/before", "saved content\n"));
  Sh(*parent, kStartCounter);
  std::string pid = Trimmed(Sh(*parent, "cat /tmp/counter.pid"));

  std::string dir = dirs.Path("snap");
  // The count saved is at least this one. (The parent runs on while Snapshot() writes the
  // manifest, which hashes the memory: a reading after it may be seconds later.)
  int before_snapshot = Counter(*parent);
  auto snapshot = parent->Snapshot(dir);
  ASSERT_TRUE(snapshot) << snapshot.error().ToString();
  struct stat st{};
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  // The parent goes on as if nothing happened, and diverges from the snapshot.
  EXPECT_EQ(parent->state(), SandboxState::kReady);
  ASSERT_TRUE(parent->WriteFile("/tmp/after", "only in the parent\n"));
  EXPECT_EQ(Trimmed(Sh(*parent, "kill -0 " + pid + " && echo alive")), "alive");

  auto restored = MustRestore(dir);
  ASSERT_TRUE(restored);
  EXPECT_EQ(restored->state(), SandboxState::kReady);
  EXPECT_NE(restored->id(), parent->id());
  auto before = restored->ReadFile("/tmp/before");
  ASSERT_TRUE(before) << before.error().ToString();
  EXPECT_EQ(*before, "saved content\n");
  auto after = restored->Exists("/tmp/after");
  ASSERT_TRUE(after);
  EXPECT_FALSE(*after) << "a file written after the snapshot leaked into it";
  // The background process is the same process, still counting from where it was.
  EXPECT_EQ(Trimmed(Sh(*restored, "kill -0 " + pid + " && echo alive")), "alive");
  int first = Counter(*restored);
  EXPECT_GE(first, before_snapshot);
  std::this_thread::sleep_for(300ms);
  EXPECT_GT(Counter(*restored), first);
}

TEST(SnapshotTest, OneSnapshotRestoresIntoFourIndependentSandboxes) {
  SnapshotDirs dirs;
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  ASSERT_TRUE(parent->WriteFile("/tmp/base", "base\n"));
  std::string dir = dirs.Path("snap");
  ASSERT_TRUE(parent->Snapshot(dir));
  ASSERT_TRUE(parent->Destroy());

  std::vector<std::unique_ptr<Sandbox>> restored;
  for (int i = 0; i < 4; ++i) {
    restored.push_back(MustRestore(dir, {.name = fmt::format("copy-{}", i)}));
    ASSERT_TRUE(restored.back());
  }
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(restored[i]->WriteFile(fmt::format("/tmp/mine-{}", i), "x"));
  }
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(*restored[i]->ReadFile("/tmp/base"), "base\n");
    for (size_t j = 0; j < 4; ++j) {
      auto exists = restored[i]->Exists(fmt::format("/tmp/mine-{}", j));
      ASSERT_TRUE(exists);
      EXPECT_EQ(*exists, i == j) << "sandbox " << i << " sees the file of " << j;
    }
  }
  // A restore reads the snapshot and never writes it.
  auto verified = snapshot::Open(dir, snapshot::Depth::kFull, HostKey());
  EXPECT_TRUE(verified) << verified.error().ToString();
}

TEST(SnapshotTest, EightForksDivergeAndAreNotTwins) {
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  ASSERT_TRUE(parent->WriteFile("/tmp/base", "base\n"));
  auto children = parent->Fork(8);
  ASSERT_TRUE(children) << children.error().ToString();
  ASSERT_EQ(children->size(), 8u);

  std::set<std::string> ids{parent->id()}, samples, uuids;
  for (size_t i = 0; i < children->size(); ++i) {
    Sandbox& child = *(*children)[i];
    EXPECT_EQ(child.state(), SandboxState::kReady);
    ids.insert(child.id());
    ASSERT_TRUE(child.WriteFile("/tmp/who", std::to_string(i)));
    samples.insert(Sh(child, "head -c 16 /dev/urandom | od -An -tx1"));
    ExpectClockIsTheHosts(child);
    uuids.insert(Sh(child, "cat /proc/sys/kernel/random/uuid"));
  }
  EXPECT_EQ(ids.size(), 9u);
  EXPECT_EQ(samples.size(), 8u) << "two forks produced the same /dev/urandom bytes";
  EXPECT_EQ(uuids.size(), 8u) << "two forks produced the same uuid";
  for (size_t i = 0; i < children->size(); ++i) {
    Sandbox& child = *(*children)[i];
    EXPECT_EQ(*child.ReadFile("/tmp/who"), std::to_string(i));
    EXPECT_EQ(*child.ReadFile("/tmp/base"), "base\n");
  }
  auto parent_who = parent->Exists("/tmp/who");
  ASSERT_TRUE(parent_who);
  EXPECT_FALSE(*parent_who);
}

TEST(SnapshotTest, RestoredClockIsTheHostsAndRngIsReseeded) {
  SnapshotDirs dirs;
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  std::string dir = dirs.Path("snap");
  ASSERT_TRUE(parent->Snapshot(dir));
  std::string parent_sample = Sh(*parent, "head -c 16 /dev/urandom | od -An -tx1");
  // Without the clock set on restore, the copies would be this far behind the host.
  std::this_thread::sleep_for(3s);
  for (int i = 0; i < 2; ++i) {
    auto restored = MustRestore(dir);
    ASSERT_TRUE(restored);
    ExpectClockIsTheHosts(*restored);
    EXPECT_NE(Sh(*restored, "head -c 16 /dev/urandom | od -An -tx1"), parent_sample);
  }
}

TEST(SnapshotTest, DestroyingTheParentLeavesForksRunning) {
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  auto children = parent->Fork(2);
  ASSERT_TRUE(children) << children.error().ToString();
  ASSERT_TRUE(parent->Destroy());
  for (auto& child : *children) {
    EXPECT_EQ(Trimmed(Sh(*child, "echo still here")), "still here");
  }
}

// The VMMs a sandbox with forks_ahead = n holds while it waits for its fork: its own, n
// children's, and on QEMU the one it goes on in after the save in place.
size_t VmmsWithForksAhead(size_t n) {
  return 1 + n + (testing::TestEngine() == EngineKind::kQemu ? 1 : 0);
}

TEST(SnapshotTest, ChildrenStartedAheadSeeThePresentAndTheUnusedOnesGo) {
  auto config = testing::TestConfig();
  config.forks_ahead = 3;
  auto parent = testing::MustCreate(config);
  ASSERT_TRUE(parent);
  EXPECT_EQ(testing::LiveVmmProcesses().size(), VmmsWithForksAhead(3));
  // Written after the children's VMMs started: they see the memory as the fork finds it.
  ASSERT_TRUE(parent->WriteFile("/tmp/mark", "before the fork"));
  auto children = parent->Fork(1);
  ASSERT_TRUE(children) << children.error().ToString();
  Sandbox& child = *(*children)[0];
  EXPECT_EQ(*child.ReadFile("/tmp/mark"), "before the fork");
  ASSERT_TRUE(child.WriteFile("/tmp/mark", "child"));
  EXPECT_EQ(*parent->ReadFile("/tmp/mark"), "before the fork");
  EXPECT_EQ(testing::LiveVmmProcesses().size(), 2u) << "children started ahead outlived the fork";
  // The next fork copies the parent's memory, as any second fork does.
  auto again = parent->Fork(1);
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(*(*again)[0]->ReadFile("/tmp/mark"), "before the fork");
}

TEST(SnapshotTest, AForkOfMoreThanWereStartedAheadStartsTheRest) {
  auto config = testing::TestConfig();
  config.forks_ahead = 1;
  auto parent = testing::MustCreate(config);
  ASSERT_TRUE(parent);
  auto children = parent->Fork(3);
  ASSERT_TRUE(children) << children.error().ToString();
  std::set<std::string> ids;
  for (auto& child : *children) {
    EXPECT_EQ(Trimmed(Sh(*child, "echo up")), "up");
    ids.insert(Trimmed(Sh(*child, "cat /proc/sys/kernel/random/uuid")));
  }
  EXPECT_EQ(ids.size(), 3u);
  EXPECT_EQ(testing::LiveVmmProcesses().size(), 4u);
}

TEST(SnapshotTest, ASnapshotOrDestroyLetsTheChildrenStartedAheadGo) {
  SnapshotDirs dirs;
  auto config = testing::TestConfig();
  config.forks_ahead = 2;
  auto parent = testing::MustCreate(config);
  ASSERT_TRUE(parent);
  ASSERT_TRUE(parent->WriteFile("/tmp/mark", "saved"));
  ASSERT_TRUE(parent->Snapshot(dirs.Path("one")));
  EXPECT_EQ(testing::LiveVmmProcesses().size(), 1u);
  auto restored = MustRestore(dirs.Path("one"));
  ASSERT_TRUE(restored);
  EXPECT_EQ(*restored->ReadFile("/tmp/mark"), "saved");
  ASSERT_TRUE(restored->Destroy());
  auto children = parent->Fork(2);
  ASSERT_TRUE(children) << children.error().ToString();
  for (auto& child : *children) EXPECT_EQ(*child->ReadFile("/tmp/mark"), "saved");
  children->clear();
  ASSERT_TRUE(parent->Destroy());

  auto waiting = testing::MustCreate(config);
  ASSERT_TRUE(waiting);
  EXPECT_EQ(testing::LiveVmmProcesses().size(), VmmsWithForksAhead(2));
  ASSERT_TRUE(waiting->Destroy());
  EXPECT_TRUE(testing::LiveVmmProcesses().empty());
}

TEST(SnapshotTest, AForkCanBeSnapshottedAndForkedAgain) {
  SnapshotDirs dirs;
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  auto first = parent->Fork(1);
  ASSERT_TRUE(first) << first.error().ToString();
  Sandbox& child = *(*first)[0];
  ASSERT_TRUE(child.WriteFile("/tmp/generation", "2"));
  std::string dir = dirs.Path("second");
  ASSERT_TRUE(child.Snapshot(dir));
  auto restored = MustRestore(dir);
  ASSERT_TRUE(restored);
  EXPECT_EQ(*restored->ReadFile("/tmp/generation"), "2");
  auto grandchildren = restored->Fork(2);
  ASSERT_TRUE(grandchildren) << grandchildren.error().ToString();
  for (auto& grandchild : *grandchildren) {
    EXPECT_EQ(*grandchild->ReadFile("/tmp/generation"), "2");
  }
  // The parent's second snapshot, after its first, is of a VM that already runs on a
  // saved image.
  ASSERT_TRUE(parent->Snapshot(dirs.Path("parent-1")));
  ASSERT_TRUE(parent->WriteFile("/tmp/generation", "parent"));
  ASSERT_TRUE(parent->Snapshot(dirs.Path("parent-2")));
  auto again = MustRestore(dirs.Path("parent-2"));
  ASSERT_TRUE(again);
  EXPECT_EQ(*again->ReadFile("/tmp/generation"), "parent");
}

// Why VMMs keep this process's uid in this run, or nullopt when they run as nobody.
std::optional<std::string> NoOtherUid() {
  if (::geteuid() != 0) return "VMMs run as another uid only when started by root";
  if (const char* jail = std::getenv("VESSEL_JAIL"); jail && std::string(jail) == "off") {
    return "the jail is off in this run";
  }
  return std::nullopt;
}

// Started by root, every QEMU runs as nobody: a restored VM's too, although its memory is
// the caller's file, mode 0600 (it is seen through an idmapped mount, docs/security.md).
// The snapshot files stay the caller's.
TEST(SnapshotTest, RestoredAndForkedVmmsRunAsNobodyAndTheFilesStayTheCallers) {
  if (auto why = NoOtherUid()) GTEST_SKIP() << *why;
  SnapshotDirs dirs;
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  ASSERT_TRUE(parent->WriteFile("/tmp/generation", "1"));
  std::string dir = dirs.Path("snap");
  ASSERT_TRUE(parent->Snapshot(dir));
  auto restored = MustRestore(dir);
  ASSERT_TRUE(restored);
  // A restored VM's RAM is a private mapping: its fork saves by copy, and the child is
  // restored from that copy.
  auto children = restored->Fork(1);
  ASSERT_TRUE(children) << children.error().ToString();
  Sandbox& child = *(*children)[0];
  ASSERT_TRUE(child.WriteFile("/tmp/generation", "2"));
  std::string again = dirs.Path("again");
  ASSERT_TRUE(child.Snapshot(again));
  auto grandchild = MustRestore(again);
  ASSERT_TRUE(grandchild);
  EXPECT_EQ(*grandchild->ReadFile("/tmp/generation"), "2");
  EXPECT_EQ(*restored->ReadFile("/tmp/generation"), "1");

  auto pids = testing::LiveVmmProcesses();
  EXPECT_EQ(pids.size(), 4u);
  for (int pid : pids) {
    std::ifstream in(fmt::format("/proc/{}/status", pid));
    std::string status(std::istreambuf_iterator<char>(in), {});
    EXPECT_NE(status.find("\nUid:\t65534\t65534\t65534\t65534\n"), std::string::npos) << status;
  }
  for (const auto& snapshot : {dir, again}) {
    for (const char* name : {"memory", "state"}) {
      struct stat st {};
      ASSERT_EQ(::stat((snapshot + "/" + name).c_str(), &st), 0) << snapshot << "/" << name;
      EXPECT_EQ(st.st_uid, 0u) << snapshot << "/" << name;
      EXPECT_EQ(st.st_mode & 0777, 0600u) << snapshot << "/" << name;
    }
  }
}

// A snapshot on a file system that takes no idmapped mount (ramfs here; NFS, for one,
// elsewhere) still restores: that VM's QEMU keeps the caller's uid, without a capability.
TEST(SnapshotTest, OnAFileSystemWithoutIdmappedMountsARestoreKeepsTheCallersUid) {
  VESSEL_REQUIRE_QEMU();  // vessel-vmm is handed the saved memory open, by any file system
  if (auto why = NoOtherUid()) GTEST_SKIP() << *why;
  SnapshotDirs dirs;
  std::string ramfs = dirs.Path("ramfs");
  ASSERT_EQ(::mkdir(ramfs.c_str(), 0700), 0);
  ASSERT_EQ(::mount("vessel-test", ramfs.c_str(), "ramfs", MS_NOSUID | MS_NODEV, "mode=0700"), 0)
      << std::strerror(errno);
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{ramfs};
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  ASSERT_TRUE(parent->WriteFile("/tmp/where", "ramfs"));
  std::string dir = ramfs + "/snap";
  ASSERT_TRUE(parent->Snapshot(dir));
  parent.reset();
  auto restored = MustRestore(dir);
  ASSERT_TRUE(restored);
  EXPECT_EQ(*restored->ReadFile("/tmp/where"), "ramfs");
  auto pids = testing::LiveVmmProcesses();
  ASSERT_EQ(pids.size(), 1u);
  std::ifstream in(fmt::format("/proc/{}/status", pids[0]));
  std::string status(std::istreambuf_iterator<char>(in), {});
  EXPECT_NE(status.find("\nUid:\t0\t0\t0\t0\n"), std::string::npos) << status;
  EXPECT_NE(status.find("\nCapEff:\t0000000000000000\n"), std::string::npos) << status;
  restored.reset();
}

TEST(SnapshotTest, AStreamingCommandSurvivesTheSnapshotInTheParentOnly) {
  SnapshotDirs dirs;
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  auto process = parent->Start(
      Command::Shell("for i in $(seq 1 20); do echo $i; sleep 0.05; done; echo done > /tmp/ran"));
  ASSERT_TRUE(process) << process.error().ToString();
  std::this_thread::sleep_for(200ms);
  std::string dir = dirs.Path("snap");
  ASSERT_TRUE(parent->Snapshot(dir));
  auto result = (*process)->Wait();
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_TRUE(result->ok());
  std::string expected;
  for (int i = 1; i <= 20; ++i) expected += std::to_string(i) + "\n";
  EXPECT_EQ(result->stdout_data, expected);

  // In the copy nobody waits for that command: it was killed there.
  auto restored = MustRestore(dir);
  ASSERT_TRUE(restored);
  std::this_thread::sleep_for(1500ms);
  auto ran = restored->Exists("/tmp/ran");
  ASSERT_TRUE(ran);
  EXPECT_FALSE(*ran);
  EXPECT_EQ(Trimmed(Sh(*restored, "echo works")), "works");
}

TEST(SnapshotTest, CommandsDuringASnapshotWaitAndSucceed) {
  SnapshotDirs dirs;
  auto parent = testing::MustCreate();
  ASSERT_TRUE(parent);
  std::atomic<bool> stop = false;
  std::atomic<int> ran = 0;
  std::thread runner([&] {
    while (!stop) {
      auto result = parent->Execute(Command::Argv({"true"}));
      EXPECT_TRUE(result.has_value()) << result.error().ToString();
      if (result) ++ran;
    }
  });
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(parent->Snapshot(dirs.Path(fmt::format("snap-{}", i))));
  }
  stop = true;
  runner.join();
  EXPECT_GT(ran.load(), 0);
}

TEST(SnapshotTest, SnapshotAndForkOutsideReadyGiveLifecycleErrors) {
  SnapshotDirs dirs;
  auto sandbox = testing::MustCreate();
  ASSERT_TRUE(sandbox);
  // Kill the VM behind the sandbox's back: it fails.
  for (int pid : testing::LiveVmmProcesses()) ::kill(pid, SIGKILL);
  auto broken = sandbox->Execute(Command::Argv({"true"}));
  ASSERT_FALSE(broken);
  ASSERT_EQ(sandbox->state(), SandboxState::kFailed);
  auto snap = sandbox->Snapshot(dirs.Path("failed"));
  ASSERT_FALSE(snap);
  ASSERT_NE(snap.error().lifecycle(), nullptr) << snap.error().ToString();
  EXPECT_TRUE(snap.error().lifecycle()->Is<LifecycleError::NotReady>());
  EXPECT_FALSE(fs::exists(dirs.Path("failed")));
  auto fork = sandbox->Fork(1);
  ASSERT_FALSE(fork);
  ASSERT_NE(fork.error().lifecycle(), nullptr) << fork.error().ToString();
  EXPECT_TRUE(fork.error().lifecycle()->Is<LifecycleError::NotReadyForFork>());

  ASSERT_TRUE(sandbox->Destroy());
  snap = sandbox->Snapshot(dirs.Path("destroyed"));
  ASSERT_FALSE(snap);
  ASSERT_NE(snap.error().lifecycle(), nullptr);
  EXPECT_TRUE(snap.error().lifecycle()->Is<LifecycleError::Destroyed>());
  fork = sandbox->Fork(1);
  ASSERT_FALSE(fork);
  ASSERT_NE(fork.error().lifecycle(), nullptr);
  EXPECT_TRUE(fork.error().lifecycle()->Is<LifecycleError::Destroyed>());
}

TEST(SnapshotTest, BadArgumentsAreClearErrors) {
  SnapshotDirs dirs;
  auto sandbox = testing::MustCreate();
  ASSERT_TRUE(sandbox);
  auto zero = sandbox->Fork(0);
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.error().kind(), ErrorKind::kInvalidConfig);
  auto many = sandbox->Fork(65);
  ASSERT_FALSE(many);
  EXPECT_EQ(many.error().kind(), ErrorKind::kInvalidConfig);
  // A directory that holds something already.
  std::string full = dirs.Path("full");
  fs::create_directories(full);
  std::ofstream(full + "/file") << "x";
  auto snap = sandbox->Snapshot(full);
  ASSERT_FALSE(snap);
  EXPECT_EQ(snap.error().kind(), ErrorKind::kInvalidConfig) << snap.error().ToString();
  EXPECT_TRUE(fs::exists(full + "/file"));
  // A parent that does not exist.
  snap = sandbox->Snapshot(dirs.Path("no/such/parent"));
  ASSERT_FALSE(snap);
  // Restoring what is not a snapshot.
  for (const std::string& dir : {dirs.Path("missing"), full, std::string()}) {
    auto restored = Sandbox::Restore(dir);
    ASSERT_FALSE(restored) << dir;
    EXPECT_EQ(restored.error().kind(), ErrorKind::kSnapshotFormat) << restored.error().ToString();
  }
  // The sandbox is none the worse.
  EXPECT_EQ(Trimmed(Sh(*sandbox, "echo ok")), "ok");
}

// Every way a snapshot on disk can be damaged is refused with SnapshotFormat naming the
// problem, and nothing is left running.
class CorruptSnapshotTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dirs_ = new SnapshotDirs;
    auto sandbox = testing::MustCreate();
    ASSERT_TRUE(sandbox);
    ASSERT_TRUE(sandbox->Snapshot(dirs_->Path("good")));
  }
  static void TearDownTestSuite() {
    delete dirs_;
    dirs_ = nullptr;
  }

  // A copy of the good snapshot to damage: its files, as sparse as they are and with their
  // modes (what `cp -a --sparse=always` does, where there is no GNU cp).
  std::string Copy(const std::string& name) {
    std::string dir = dirs_->Path(name);
    EXPECT_EQ(::mkdir(dir.c_str(), 0700), 0) << dir;
    for (const auto& entry : fs::directory_iterator(dirs_->Path("good"))) {
      std::string to = dir + "/" + entry.path().filename().string();
      UniqueFd in(::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC));
      struct stat st {};
      EXPECT_EQ(::fstat(in.get(), &st), 0) << entry.path();
      UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 07777));
      EXPECT_TRUE(in && out) << to;
      EXPECT_EQ(::ftruncate(out.get(), st.st_size), 0) << to;
      EXPECT_TRUE(CopyDataSkippingZeros(in.get(), out.get(), st.st_size)) << to;
    }
    return dir;
  }

  static void FlipByte(const std::string& path, off_t offset) {
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(offset);
    char c = 0;
    file.get(c);
    file.seekp(offset);
    file.put(static_cast<char>(c ^ 0x01));
  }

  static void ExpectRefused(const std::string& dir, const std::string& needle) {
    auto restored = Sandbox::Restore(dir);
    ASSERT_FALSE(restored) << "restored a damaged snapshot: " << needle;
    EXPECT_EQ(restored.error().kind(), ErrorKind::kSnapshotFormat) << restored.error().ToString();
    EXPECT_NE(restored.error().message().find(needle), std::string::npos)
        << "expected '" << needle << "' in: " << restored.error().message();
  }

  static void Rewrite(const std::string& dir, const std::function<void(snapshot::Manifest&)>& edit) {
    auto manifest = snapshot::Open(dir, snapshot::Depth::kRestore, HostKey());
    ASSERT_TRUE(manifest) << manifest.error().ToString();
    edit(manifest->manifest);
    ASSERT_TRUE(snapshot::WriteManifest(dir, manifest->manifest, HostKey()));
  }

  static SnapshotDirs* dirs_;
};
SnapshotDirs* CorruptSnapshotTest::dirs_ = nullptr;

TEST_F(CorruptSnapshotTest, TheGoodOneRestoresAndVerifies) {
  auto verified = snapshot::Open(dirs_->Path("good"), snapshot::Depth::kFull, HostKey());
  EXPECT_TRUE(verified) << verified.error().ToString();
  EXPECT_TRUE(MustRestore(Copy("good-copy")));
}

TEST_F(CorruptSnapshotTest, TruncatedState) {
  std::string dir = Copy("truncated-state");
  fs::resize_file(dir + "/state", fs::file_size(dir + "/state") / 2);
  ExpectRefused(dir, "state");
}

TEST_F(CorruptSnapshotTest, TruncatedMemory) {
  std::string dir = Copy("truncated-memory");
  fs::resize_file(dir + "/memory", fs::file_size(dir + "/memory") - 4096);
  ExpectRefused(dir, "memory");
}

TEST_F(CorruptSnapshotTest, MissingMemory) {
  std::string dir = Copy("missing-memory");
  fs::remove(dir + "/memory");
  ExpectRefused(dir, "memory");
}

TEST_F(CorruptSnapshotTest, FlippedByteInTheManifest) {
  std::string dir = Copy("flipped-manifest");
  std::string text;
  std::getline(std::ifstream(dir + "/manifest.json"), text, '\0');
  FlipByte(dir + "/manifest.json", static_cast<off_t>(text.find("\"vcpus\"") + 9));
  ExpectRefused(dir, "manifest");
}

TEST_F(CorruptSnapshotTest, FlippedByteInTheState) {
  std::string dir = Copy("flipped-state");
  FlipByte(dir + "/state", static_cast<off_t>(fs::file_size(dir + "/state") / 2));
  ExpectRefused(dir, "state");
}

// A state the manifest vouches for (a crafted snapshot) that the VMM cannot load is still
// the snapshot's fault, and nothing is left running.
TEST_F(CorruptSnapshotTest, AStateUnderAGoodManifestThatVesselVmmCannotLoad) {
  if (testing::TestEngine() != EngineKind::kKvm) {
    GTEST_SKIP() << "QEMU's state is QEMU's own to check";
  }
  std::string dir = Copy("resealed-state");
  auto opened = snapshot::Open(dir, snapshot::Depth::kRestore, HostKey());
  ASSERT_TRUE(opened) << opened.error().ToString();
  std::string state = dir + "/state";
  fs::resize_file(state, fs::file_size(state) - 1);  // the end record is cut short
  ASSERT_TRUE(snapshot::WriteManifest(dir, opened->manifest, HostKey()));  // sealed anew
  ExpectRefused(dir, "machine state");
}

TEST_F(CorruptSnapshotTest, FlippedByteInTheMemoryFailsVerify) {
  std::string dir = Copy("flipped-memory");
  FlipByte(dir + "/memory", 4096 * 17 + 5);
  auto verified = snapshot::Open(dir, snapshot::Depth::kFull, HostKey());
  ASSERT_FALSE(verified);
  EXPECT_EQ(verified.error().kind(), ErrorKind::kSnapshotFormat);
  EXPECT_NE(verified.error().message().find("memory"), std::string::npos)
      << verified.error().message();
}

TEST_F(CorruptSnapshotTest, UnknownFormatVersion) {
  std::string dir = Copy("future-version");
  Rewrite(dir, [](snapshot::Manifest& m) { m.format_version = 99; });
  ExpectRefused(dir, "version 99");
}

TEST_F(CorruptSnapshotTest, AnotherEnginesState) {
  std::string dir = Copy("other-engine");
  Rewrite(dir, [](snapshot::Manifest& m) { m.engine = "vessel-vmm"; });
  ExpectRefused(dir, "vessel-vmm");
}

TEST_F(CorruptSnapshotTest, AKernelThatChangedSinceTheSnapshot) {
  std::string dir = Copy("changed-kernel");
  std::string kernel = dir + "-vmlinux";
  auto manifest = snapshot::Open(dir, snapshot::Depth::kRestore, HostKey());
  ASSERT_TRUE(manifest) << manifest.error().ToString();
  fs::copy_file(manifest->manifest.kernel_path, kernel);
  std::ofstream(kernel, std::ios::app) << "changed";
  auto restored = Sandbox::Restore(dir, {.kernel = kernel});
  ASSERT_FALSE(restored);
  EXPECT_EQ(restored.error().kind(), ErrorKind::kSnapshotFormat) << restored.error().ToString();
  EXPECT_NE(restored.error().message().find("kernel " + kernel + " is not the one"),
            std::string::npos)
      << restored.error().message();
  fs::remove(kernel);
}

// A manifest is data: one rewritten to name another kernel, with that kernel's digest and
// a valid checksum, does not choose what this host boots. The restore checks the
// configured kernel against the recorded digest and refuses.
TEST_F(CorruptSnapshotTest, AManifestThatNamesAnotherKernelDoesNotChooseIt) {
  std::string dir = Copy("other-kernel");
  std::string kernel = dir + "-vmlinux";
  Rewrite(dir, [&](snapshot::Manifest& m) {
    fs::copy_file(m.kernel_path, kernel);
    std::ofstream(kernel, std::ios::app) << "planted";
    m.kernel_path = kernel;
    m.kernel_sha256 = snapshot::FileSha256(kernel).value_or("");
  });
  ExpectRefused(dir, "is not the one the snapshot was taken with");
  fs::remove(kernel);
}

// The manifest's paths are only a record: a snapshot whose manifest names paths that do
// not exist here restores with this host's assets.
TEST_F(CorruptSnapshotTest, ManifestPathsThatDoNotExistHereDoNotMatter) {
  std::string dir = Copy("moved-assets");
  Rewrite(dir, [](snapshot::Manifest& m) {
    m.kernel_path = "/nonexistent/vmlinux";
    m.initramfs_path = "/nonexistent/initramfs.cpio";
  });
  auto restored = Sandbox::Restore(dir);
  ASSERT_TRUE(restored) << restored.error().ToString();
  EXPECT_EQ(Sh(**restored, "echo back"), "back\n");
}

TEST_F(CorruptSnapshotTest, EmptyManifest) {
  std::string dir = Copy("empty-manifest");
  fs::resize_file(dir + "/manifest.json", 0);
  ExpectRefused(dir, "manifest");
}

}  // namespace
}  // namespace vessel
