// The runtime directories and control sockets trust only this user: directories are made
// 0700 and checked (MakePrivateDir), sandbox state in a directory of another user
// is refused, and both ends of a control socket check their peer's uid. The two-user cases
// run a child as nobody (65534) and need root; elsewhere they skip.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "engine/runtime_dir.h"
#include "supervisor/state.h"

namespace vessel {
namespace {

namespace fs = std::filesystem;

constexpr uid_t kNobody = 65534;

class PrivateDirsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/vessel-private-test-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    base_ = pattern;
    if (const char* old = std::getenv("VESSEL_RUNTIME_DIR")) old_runtime_ = old;
  }
  void TearDown() override {
    if (old_runtime_) {
      ::setenv("VESSEL_RUNTIME_DIR", old_runtime_->c_str(), 1);
    } else {
      ::unsetenv("VESSEL_RUNTIME_DIR");
    }
    std::error_code ec;
    fs::remove_all(base_, ec);
  }

  static mode_t ModeOf(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  }

  // Runs `body` in a child process as nobody; true when it exited 0.
  static bool AsNobody(const std::function<bool()>& body) {
    pid_t pid = ::fork();
    if (pid == 0) {
      bool ok = ::setgroups(0, nullptr) == 0 && ::setresgid(kNobody, kNobody, kNobody) == 0 &&
                ::setresuid(kNobody, kNobody, kNobody) == 0 && body();
      ::_exit(ok ? 0 : 1);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

  // A directory both users may create entries in.
  std::string SharedDir() {
    std::string dir = base_ + "/shared";
    EXPECT_EQ(::mkdir(dir.c_str(), 0777), 0);
    EXPECT_EQ(::chmod(dir.c_str(), 01777), 0);
    EXPECT_EQ(::chmod(base_.c_str(), 0755), 0);
    return dir;
  }

  std::string base_;
  std::optional<std::string> old_runtime_;
};

#define SKIP_UNLESS_ROOT() \
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to run a child as another user"

TEST_F(PrivateDirsTest, MakesMissingDirectoriesWithMode0700) {
  std::string dir = base_ + "/a/b";
  ASSERT_TRUE(MakePrivateDir(dir, false, engine::kRuntimeDirRole).has_value());
  EXPECT_EQ(ModeOf(dir), 0700u);
  // Again: nothing to do.
  EXPECT_TRUE(MakePrivateDir(dir, false, engine::kRuntimeDirRole).has_value());
}

TEST_F(PrivateDirsTest, ASymlinkIsRefusedAndItsTargetLeftAlone) {
  std::string target = base_ + "/target";
  ASSERT_EQ(::mkdir(target.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(target.c_str(), 0755), 0);
  std::string link = base_ + "/link";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  auto made = MakePrivateDir(link, true, engine::kRuntimeDirRole);
  ASSERT_FALSE(made.has_value());
  EXPECT_NE(made.error().message().find("is a symlink"), std::string::npos)
      << made.error().message();
  EXPECT_NE(made.error().message().find("VESSEL_RUNTIME_DIR"), std::string::npos);
  EXPECT_EQ(ModeOf(target), 0755u);
}

TEST_F(PrivateDirsTest, AWideDirectoryOfOursIsNarrowedOnlyWhenVesselNamedIt) {
  std::string dir = base_ + "/wide";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  auto refused = MakePrivateDir(dir, /*narrow=*/false, engine::kRuntimeDirRole);
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message().find("has mode 755"), std::string::npos)
      << refused.error().message();
  EXPECT_EQ(ModeOf(dir), 0755u);
  ASSERT_TRUE(MakePrivateDir(dir, /*narrow=*/true, engine::kRuntimeDirRole).has_value());
  EXPECT_EQ(ModeOf(dir), 0700u);
}

TEST_F(PrivateDirsTest, AUserChosenRuntimeDirOpenToOthersIsRefusedNotChanged) {
  std::string dir = base_ + "/chosen";
  ASSERT_EQ(::mkdir(dir.c_str(), 0777), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 01777), 0);
  ::setenv("VESSEL_RUNTIME_DIR", dir.c_str(), 1);
  auto ids = supervisor::ListSandboxIds();
  ASSERT_FALSE(ids.has_value());
  EXPECT_NE(ids.error().message().find("chmod 700"), std::string::npos) << ids.error().message();
  EXPECT_EQ(ModeOf(dir), 01777u);
  EXPECT_FALSE(engine::RuntimeDir::Create().has_value());
}

TEST_F(PrivateDirsTest, ARuntimeRootAnotherUserMadeFirstIsRefused) {
  SKIP_UNLESS_ROOT();
  std::string root = SharedDir() + "/vessel-root";
  // The other user gets there first, with a directory that looks right: 0700, sandboxes/
  // inside, and a state.json naming a pid of their choice.
  ASSERT_TRUE(AsNobody([&] {
    return ::mkdir(root.c_str(), 0700) == 0 && ::mkdir((root + "/sandboxes").c_str(), 0700) == 0;
  }));
  ::setenv("VESSEL_RUNTIME_DIR", root.c_str(), 1);
  auto ids = supervisor::ListSandboxIds();
  ASSERT_FALSE(ids.has_value());
  EXPECT_NE(ids.error().message().find("belongs to uid 65534"), std::string::npos)
      << ids.error().message();
  auto resolved = supervisor::Resolve("box");
  ASSERT_FALSE(resolved.has_value());
  EXPECT_NE(resolved.error().message().find("belongs to uid 65534"), std::string::npos);
  auto vm_dir = engine::RuntimeDir::Create();
  ASSERT_FALSE(vm_dir.has_value());
  EXPECT_NE(vm_dir.error().message().find("belongs to uid 65534"), std::string::npos);
  // Nothing of ours was put there.
  EXPECT_TRUE(fs::is_empty(root + "/sandboxes"));
}

TEST_F(PrivateDirsTest, AClientRefusesAControlSocketServedByAnotherUser) {
  SKIP_UNLESS_ROOT();
  std::string path = SharedDir() + "/control.sock";
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t server = ::fork();
  if (server == 0) {
    ::close(ready[0]);
    bool ok = ::setgroups(0, nullptr) == 0 && ::setresgid(kNobody, kNobody, kNobody) == 0 &&
              ::setresuid(kNobody, kNobody, kNobody) == 0;
    auto listener = ok ? supervisor::ListenControl(path) : Fail(Error::Backend("setuid"));
    char byte = listener ? 'y' : 'n';
    (void)!::write(ready[1], &byte, 1);
    ::pause();
    ::_exit(0);
  }
  ::close(ready[1]);
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  ::close(ready[0]);
  ASSERT_EQ(byte, 'y');
  auto connected = supervisor::ConnectControl(path);
  ::kill(server, SIGKILL);
  ::waitpid(server, nullptr, 0);
  ASSERT_FALSE(connected.has_value());
  EXPECT_NE(connected.error().message().find("runs as uid 65534"), std::string::npos)
      << connected.error().message();
}

TEST_F(PrivateDirsTest, PeerOfThisUserNamesOurOwnPeer) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  UniqueFd a(fds[0]);
  UniqueFd b(fds[1]);
  auto peer = supervisor::PeerOfThisUser(a.get());
  ASSERT_TRUE(peer.has_value()) << peer.error().ToString();
  EXPECT_EQ(*peer, ::getpid());
}

}  // namespace
}  // namespace vessel
