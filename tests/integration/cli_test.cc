// The vessel CLI end to end: what a user typing the README's commands sees.
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/io.h"
#include "engine/host.h"
#include "protocol/wire.h"
#include "supervisor/supervisor_protocol.h"
#include "vm_test_env.h"

namespace vessel {
namespace {

struct CliResult {
  int status = -1;
  std::string out;
  std::string err;
};

// Runs the CLI with `input` on its stdin and `environment` ("NAME=value") added to its
// environment, and collects what it prints.
CliResult RunCli(std::vector<std::string> args, const std::string& input = {},
                 std::vector<std::string> environment = {}) {
  // Sandboxes run on the engine under test.
  if (!args.empty() && (args[0] == "run" || args[0] == "create")) {
    args.insert(args.begin() + 1, {"--engine", testing::TestEngineName()});
  }
  args.insert(args.begin(), VESSEL_CLI);
  // A CLI that exits without reading its input must not take the test down with it.
  signal(SIGPIPE, SIG_IGN);
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0)
    return {};
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    for (auto& variable : environment) putenv(variable.data());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(126);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  std::thread feeder([fd = in[1], &input] {
    size_t off = 0;
    while (off < input.size()) {
      ssize_t n = write(fd, input.data() + off, input.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    close(fd);
  });
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
  feeder.join();
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Starts the CLI in the background, its output discarded; returns its pid.
pid_t StartCli(std::vector<std::string> args) {
  // Sandboxes run on the engine under test.
  if (!args.empty() && (args[0] == "run" || args[0] == "create")) {
    args.insert(args.begin() + 1, {"--engine", testing::TestEngineName()});
  }
  args.insert(args.begin(), VESSEL_CLI);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(126);
  }
  return pid;
}

// The exit status as a shell reports it.
int WaitCli(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

template <typename Predicate>
bool Eventually(Predicate predicate, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!predicate()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
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
    execl(VESSEL_CLI, VESSEL_CLI, "run", "--engine", testing::TestEngineName(), "--", "sleep",
          "1000", static_cast<char*>(nullptr));
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

  // The VMM dies with its owner.
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
  // Whether the kvm engine can run, and why not.
  EXPECT_NE(r.out.find("engine kvm: "), std::string::npos) << r.out;
  // What confines the VMMs: jailed unless turned off; cgroups where the host has v2.
  EXPECT_NE(r.out.find("ok      VMM jail: own namespaces"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("VM cgroups: "), std::string::npos) << r.out;
  // The page size a booted VM's RAM gets: 2 MiB on a tmpfs of its own as root (unless
  // the host's shmem policy is deny), else as the host's shmem huge-page policy says.
  std::string policy = engine::SelectedPolicy(
      ReadFileToString("/sys/kernel/mm/transparent_hugepage/shmem_enabled", 4096).value_or(""));
  bool huge = geteuid() == 0 ? policy != "deny"
                             : !(policy.empty() || policy == "never" || policy == "deny");
  EXPECT_NE(r.out.find(huge ? "ok      guest RAM: 2 MiB pages" : "MISSING guest RAM: 4 KiB pages"),
            std::string::npos)
      << r.out;
  if (testing::TestEngine() == EngineKind::kKvm) {
    EXPECT_NE(r.out.find("ok      engine kvm: vessel-vmm at /"), std::string::npos) << r.out;
  }
}

TEST(CliTest, AnUnknownEngineIsAUsageError) {
  auto r = RunCli({"run", "--engine", "bochs", "--", "true"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("--engine wants qemu, kvm or auto, not bochs"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("usage"), std::string::npos) << r.err;
  r = RunCli({"create", "--engine", "xen"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("not xen"), std::string::npos) << r.err;
  EXPECT_TRUE(testing::RuntimeLeftovers().empty());
}

// Sandboxes made by `vessel create` outlive the command. One sandbox, created once, serves
// every test of this suite.
class CliSandboxTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto r = RunCli({"create", "--name", "cli-test"});
    if (r.status == 0) {
      id_ = Trimmed(r.out);
    } else {
      create_error_ = r.err;
    }
  }
  static void TearDownTestSuite() {
    if (!id_.empty()) RunCli({"rm", id_});
    id_.clear();
  }
  void SetUp() override { ASSERT_FALSE(id_.empty()) << "vessel create failed: " << create_error_; }

  // A file under the test's temporary directory, removed after the test.
  std::string TempPath(const std::string& name) {
    auto path = std::filesystem::temp_directory_path() /
                ("vessel-cli-test-" + std::to_string(getpid()) + "-" + name);
    temp_files_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const auto& path : temp_files_) std::filesystem::remove(path);
  }

  static std::string id_;
  static std::string create_error_;
  std::vector<std::filesystem::path> temp_files_;
};

std::string CliSandboxTest::id_;
std::string CliSandboxTest::create_error_;

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST_F(CliSandboxTest, CreatePrintsAnIdThatNamesTheSandbox) {
  EXPECT_EQ(id_.find_first_not_of("0123456789abcdef"), std::string::npos) << id_;
  EXPECT_TRUE(
      std::filesystem::exists(testing::TestRuntimeRoot() + "/sandboxes/" + id_ + "/state.json"));
}

TEST_F(CliSandboxTest, ExecStreamsOutputAndPassesTheExitCodeThrough) {
  auto r = RunCli({"exec", id_, "--", "echo", "hello"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "hello\n");
  r = RunCli({"exec", id_, "--", "sh", "-c", "echo out; echo err >&2; exit 7"});
  EXPECT_EQ(r.status, 7);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  // The name works wherever the id does, and the options are run's.
  r = RunCli(
      {"exec", "--env", "A=1", "--cwd", "/tmp", "cli-test", "--", "sh", "-c", "echo $A; pwd"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "1\n/tmp\n");
  EXPECT_EQ(RunCli({"exec", id_, "--timeout", "1", "--", "sleep", "30"}).status, 124);
  r = RunCli({"exec", id_, "--", "/no/such/program"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("/no/such/program"), std::string::npos) << r.err;
}

TEST_F(CliSandboxTest, ExecForwardsStdin) {
  auto r = RunCli({"exec", id_, "--", "wc", "-c"}, std::string(100000, 'x'));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(Trimmed(r.out), "100000");
}

TEST_F(CliSandboxTest, TwoExecsAtOnceRunConcurrently) {
  auto started = std::chrono::steady_clock::now();
  auto a = std::async(std::launch::async, [&] {
    return RunCli({"exec", id_, "--", "sh", "-c", "sleep 2; echo A"});
  });
  auto b = std::async(std::launch::async, [&] {
    return RunCli({"exec", id_, "--", "sh", "-c", "sleep 2; echo B"});
  });
  auto ra = a.get();
  auto rb = b.get();
  auto elapsed = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(ra.status, 0) << ra.err;
  EXPECT_EQ(rb.status, 0) << rb.err;
  EXPECT_EQ(ra.out, "A\n");
  EXPECT_EQ(rb.out, "B\n");
  // One after the other would take 4 s.
  EXPECT_LT(elapsed, std::chrono::milliseconds(3500));
}

// True once `pid` has a handler for `signal` (its SigCgt mask in /proc).
bool CatchesSignal(pid_t pid, int signal) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("SigCgt:", 0) == 0)
      return (std::stoull(line.substr(7), nullptr, 16) >> (signal - 1)) & 1;
  }
  return false;
}

TEST_F(CliSandboxTest, SignalsToExecReachTheCommand) {
  // The command's exit code (3, from its trap) tells a forwarded SIGINT from a CLI that
  // merely died of it (130).
  pid_t pid = StartCli({"exec", id_, "--", "sh", "-c", "trap 'exit 3' INT; sleep 1000 & wait"});
  ASSERT_TRUE(Eventually(
      [&] {
        return CatchesSignal(pid, SIGINT) &&
               RunCli({"exec", id_, "--", "sh", "-c", "ps | grep -q '[s]leep 1000'"}).status == 0;
      },
      std::chrono::seconds(20)));
  kill(pid, SIGINT);
  EXPECT_EQ(WaitCli(pid), 3);
}

TEST_F(CliSandboxTest, AnExecThatGoesAwayTakesItsCommandWithIt) {
  pid_t pid = StartCli({"exec", id_, "--", "sleep", "1001"});
  ASSERT_TRUE(Eventually(
      [&] {
        return RunCli({"exec", id_, "--", "sh", "-c", "ps | grep -q '[s]leep 1001'"}).status == 0;
      },
      std::chrono::seconds(20)));
  kill(pid, SIGKILL);
  WaitCli(pid);
  EXPECT_TRUE(Eventually(
      [&] {
        return RunCli({"exec", id_, "--", "sh", "-c", "ps | grep -q '[s]leep 1001'"}).status == 1;
      },
      std::chrono::seconds(10)));
}

TEST_F(CliSandboxTest, ExecWithATerminalButNoStdin) {
  // Our stdout is a pipe here, so the terminal has the default size.
  auto r = RunCli({"exec", "-t", id_, "--", "sh", "-c", "tty; stty size; [ -t 0 ] && echo in-tty"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(r.out.starts_with("/dev/pts/")) << r.out;
  EXPECT_NE(r.out.find("\r\n24 80\r\nin-tty\r\n"), std::string::npos) << r.out;
  // Without -i our stdin is not forwarded: the command reads the terminal, which nobody types
  // into, so a read times out instead of seeing our input.
  r = RunCli({"exec", "-t", "--timeout", "2", id_, "--", "cat"}, "typed\n");
  EXPECT_EQ(r.status, 124);
  EXPECT_EQ(r.out.find("typed"), std::string::npos) << r.out;
  // With -i it is; the terminal echoes it, then cat prints it.
  r = RunCli({"exec", "-it", id_, "--", "sh", "-c", "read line; echo got=$line"}, "typed\n");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("got=typed\r\n"), std::string::npos) << r.out;
  r = RunCli({"exec", "-i", "--no-stdin", id_, "--", "true"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("contradict"), std::string::npos) << r.err;
}

// A tmux server of its own, with one pane of a known size running `command`.
class Tmux {
 public:
  Tmux(const std::string& command, int cols, int rows)
      : socket_("vessel-test-" + std::to_string(getpid())) {
    ok_ = Run(fmt::format("new-session -d -s t -x {} -y {} {}", cols, rows, Quoted(command))) == 0;
  }
  ~Tmux() { Run("kill-server"); }
  [[nodiscard]] bool ok() const { return ok_; }

  void Keys(const std::string& keys) { Run("send-keys -t t " + keys); }
  void Resize(int cols, int rows) {
    Run(fmt::format("resize-window -t t -x {} -y {}", cols, rows));
  }
  // The pane's text, its scrollback included.
  std::string Screen() {
    std::string out;
    FILE* pipe =
        popen(fmt::format("tmux -L {} capture-pane -p -J -S - -t t", socket_).c_str(), "r");
    if (pipe == nullptr) return out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
    pclose(pipe);
    return out;
  }
  // Waits until the pane shows `text` `times` times; false after 60 s.
  bool Shows(const std::string& text, int times = 1) {
    return Eventually(
        [&] {
          std::string screen = Screen();
          int seen = 0;
          for (size_t at = screen.find(text); at != std::string::npos;
               at = screen.find(text, at + 1)) {
            ++seen;
          }
          return seen >= times;
        },
        std::chrono::seconds(60));
  }

  static std::string Quoted(const std::string& text) {
    std::string quoted = "'";
    for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
  }

 private:
  int Run(const std::string& args) {
    return std::system(fmt::format("tmux -L {} -f /dev/null {}", socket_, args).c_str());
  }
  std::string socket_;
  bool ok_ = false;
};

TEST_F(CliSandboxTest, ShellInATmuxPaneWorksAsAPersonUsesIt) {
  ASSERT_EQ(std::system("command -v tmux >/dev/null"), 0) << "tmux is missing: scripts/bootstrap "
                                                             "installs it";
  std::string before = TempPath("stty-before"), after = TempPath("stty-after");
  Tmux tmux(fmt::format("stty -g >{}; VESSEL_RUNTIME_DIR={} {} shell {}; echo vessel-exit=$?; "
                        "stty -g >{}; sleep 600",
                        before, testing::TestRuntimeRoot(), VESSEL_CLI, id_, after),
            100, 30);
  ASSERT_TRUE(tmux.ok());
  tmux.Keys("'echo $((6 * 7)); tty' Enter");
  ASSERT_TRUE(tmux.Shows("\n42\n")) << tmux.Screen();
  EXPECT_TRUE(tmux.Shows("\n/dev/pts/")) << tmux.Screen();
  tmux.Keys("'stty size' Enter");
  EXPECT_TRUE(tmux.Shows("\n30 100\n")) << tmux.Screen();
  tmux.Resize(120, 40);
  tmux.Keys("'stty size' Enter");
  EXPECT_TRUE(tmux.Shows("\n40 120\n")) << tmux.Screen();
  // ^C stops the foreground job only: the shell goes on.
  tmux.Keys("'sleep 1000' Enter");
  EXPECT_TRUE(Eventually(
      [&] {
        return RunCli({"exec", id_, "--", "sh", "-c", "ps | grep -q '[s]leep 1000'"}).status == 0;
      },
      std::chrono::seconds(30)));
  tmux.Keys("C-c");
  tmux.Keys("'echo after=$?' Enter");
  EXPECT_TRUE(tmux.Shows("\nafter=130\n")) << tmux.Screen();
  tmux.Keys("'exit 3' Enter");
  EXPECT_TRUE(tmux.Shows("vessel-exit=3")) << tmux.Screen();
  // The host terminal is as it was before: not left in raw mode.
  ASSERT_TRUE(Eventually([&] { return !ReadWholeFile(after).empty(); }, std::chrono::seconds(10)));
  EXPECT_EQ(ReadWholeFile(after), ReadWholeFile(before));
  EXPECT_NE(ReadWholeFile(before), "");
}

TEST(CliTest, AShellWhoseSandboxIsRemovedEndsAndLeavesTheTerminalSane) {
  auto created = RunCli({"create"});
  ASSERT_EQ(created.status, 0) << created.err;
  std::string id = Trimmed(created.out);
  auto dir = std::filesystem::temp_directory_path() /
             ("vessel-cli-test-" + std::to_string(getpid()) + "-killed-shell");
  std::filesystem::create_directories(dir);
  std::string before = dir / "before", after = dir / "after";
  {
    Tmux tmux(fmt::format("stty -g >{}; VESSEL_RUNTIME_DIR={} {} shell {}; echo vessel-exit=$?; "
                          "stty -g >{}; sleep 600",
                          before, testing::TestRuntimeRoot(), VESSEL_CLI, id, after),
              80, 24);
    ASSERT_TRUE(tmux.ok());
    tmux.Keys("'echo up-$((1 + 1))' Enter");
    ASSERT_TRUE(tmux.Shows("\nup-2\n")) << tmux.Screen();
    EXPECT_EQ(RunCli({"rm", id}).status, 0);
    EXPECT_TRUE(tmux.Shows("vessel-exit=125")) << tmux.Screen();
    EXPECT_TRUE(
        Eventually([&] { return !ReadWholeFile(after).empty(); }, std::chrono::seconds(10)));
    EXPECT_EQ(ReadWholeFile(after), ReadWholeFile(before));
  }
  std::filesystem::remove_all(dir);
  EXPECT_TRUE(testing::RuntimeLeftovers().empty());
}

TEST_F(CliSandboxTest, CpCopiesBinaryFilesInAndOut) {
  std::string data(3 * 1024 * 1024, '\0');
  std::mt19937_64 random(42);
  for (auto& c : data) c = static_cast<char>(random());
  std::string local = TempPath("in.bin");
  std::ofstream(local, std::ios::binary)
      .write(data.data(), static_cast<std::streamsize>(data.size()));
  std::filesystem::permissions(local, std::filesystem::perms(0750));

  auto r = RunCli({"cp", local, id_ + ":/tmp/data.bin"});
  ASSERT_EQ(r.status, 0) << r.err;
  r = RunCli({"exec", id_, "--", "stat", "-c", "%s %a", "/tmp/data.bin"});
  EXPECT_EQ(r.out, "3145728 750\n") << r.err;

  std::string back = TempPath("out.bin");
  r = RunCli({"cp", id_ + ":/tmp/data.bin", back});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(ReadWholeFile(back) == data);

  // Into a directory keeps the name; a missing file is an error that names it.
  r = RunCli({"cp", local, id_ + ":/tmp/"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(RunCli({"exec", id_, "--", "cmp", "/tmp/data.bin",
                    "/tmp/" + std::filesystem::path(local).filename().string()})
                .status,
            0);
  r = RunCli({"cp", id_ + ":/no/such/file", back});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("/no/such/file"), std::string::npos) << r.err;
  EXPECT_TRUE(ReadWholeFile(back) == data) << "a failed copy must leave the destination alone";
  EXPECT_EQ(RunCli({"cp", local, back}).status, 125);
}

// A raw connection to the sandbox's control socket, as a misbehaving client would open.
class RawControlClient {
 public:
  explicit RawControlClient(const std::string& id) {
    std::string path = testing::TestRuntimeRoot() + "/sandboxes/" + id + "/control.sock";
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    path.copy(address.sun_path, sizeof(address.sun_path) - 1);
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~RawControlClient() {
    if (fd_ >= 0) close(fd_);
  }
  bool connected() const { return fd_ >= 0; }
  void Send(const std::vector<uint8_t>& bytes) { (void)!write(fd_, bytes.data(), bytes.size()); }
  void Send(const std::string& text) { (void)!write(fd_, text.data(), text.size()); }
  // Everything the supervisor sends after what Next() returned, until it closes the
  // connection; nullopt when it has not closed it within 10 s.
  std::optional<std::string> ReadToEnd() {
    std::string text;
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 10'000) <= 0) return std::nullopt;
      char buf[4096];
      ssize_t n = read(fd_, buf, sizeof(buf));
      if (n <= 0) return text;
      text.append(buf, static_cast<size_t>(n));
    }
  }
  // The next frame, or nullopt when the supervisor closed the connection (or 10 s passed).
  std::optional<protocol::Frame> Next() {
    for (;;) {
      auto frame = reader_.Next();
      if (!frame) return std::nullopt;
      if (*frame) return std::move(**frame);
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 10'000) <= 0) return std::nullopt;
      uint8_t buf[4096];
      ssize_t n = read(fd_, buf, sizeof(buf));
      if (n <= 0) return std::nullopt;
      reader_.Feed({buf, static_cast<size_t>(n)});
    }
  }

 private:
  int fd_ = -1;
  protocol::FrameReader reader_;
};

TEST_F(CliSandboxTest, TheControlSocketGreetsAnswersPingsAndDropsClientsThatBreakTheProtocol) {
  {
    RawControlClient client(id_);
    ASSERT_TRUE(client.connected());
    auto hello = client.Next();
    ASSERT_TRUE(hello.has_value());
    EXPECT_EQ(hello->header.type, protocol::MessageType::kHello);
    client.Send(protocol::EncodePing(77));
    auto pong = client.Next();
    ASSERT_TRUE(pong.has_value());
    EXPECT_EQ(pong->header.type, protocol::MessageType::kPong);
    EXPECT_EQ(pong->header.request_id, 77u);
    // Only the agent sends exit statuses.
    client.Send(protocol::EncodeExited(1, {}));
    EXPECT_FALSE(client.Next().has_value());
  }
  {
    RawControlClient client(id_);
    ASSERT_TRUE(client.Next().has_value());
    std::vector<uint8_t> garbage(protocol::kHeaderSize, 0xff);
    client.Send(garbage);
    EXPECT_FALSE(client.Next().has_value());
  }
  {
    RawControlClient client(id_);
    ASSERT_TRUE(client.Next().has_value());
    std::vector<uint8_t> bad_exec = protocol::EncodeExec(1, {.argv = {"true"}});
    bad_exec.pop_back();  // a payload one byte short
    bad_exec[0] = static_cast<uint8_t>(bad_exec.size() - protocol::kHeaderSize);
    client.Send(bad_exec);
    EXPECT_FALSE(client.Next().has_value());
  }
  // The supervisor serves everyone else as before.
  auto r = RunCli({"exec", id_, "--", "echo", "still here"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "still here\n");
}

TEST_F(CliSandboxTest, TheControlSocketAnswersABadControlRequestWithAnErrorAndHangsUp) {
  struct Case {
    std::string request;
    std::string complaint;
  };
  auto line = [](const std::string& json) { return json + "\n"; };
  std::vector<Case> cases = {
      {line(R"({"op":"snapshot","dir":"relative/dir"})"), "not an absolute path"},
      {line(R"({"op":"reboot"})"), "unknown op"},
      {line(R"({"op":"snapshot","dir":"/tmp/vessel-cli-test-never-made","mode":"0777"})"),
       "unknown field"},
      {line(R"({"op":"snapshot","dir":"/tmp/vessel-cli-test-never-made"})") + "more",
       "one request per connection"},
      {line(R"({"op":[[[[[[[[1]]]]]]]],"dir":"/tmp/vessel-cli-test-never-made"})"),
       "not a JSON object"},
      {line(R"({"op":"network","allow":"example.com"})"), "wants a list"},
      {line(R"({"op":"network","allow":["example.com"],"max_bytes":1})"), "unknown field"},
      {"{" + std::string(supervisor::kMaxControlRequestSize + 1, ' '), "longer than"},
  };
  for (const auto& c : cases) {
    RawControlClient client(id_);
    ASSERT_TRUE(client.connected());
    auto hello = client.Next();
    ASSERT_TRUE(hello.has_value());
    EXPECT_EQ(hello->header.type, protocol::MessageType::kHello);
    client.Send(c.request);
    auto answer = client.ReadToEnd();
    ASSERT_TRUE(answer.has_value()) << c.request << ": the supervisor did not hang up";
    const std::string& reply = *answer;
    auto json = nlohmann::json::parse(reply, nullptr, false);
    ASSERT_TRUE(json.is_object()) << c.request << " -> " << reply;
    EXPECT_EQ(json.value("ok", true), false) << reply;
    EXPECT_EQ(json["error"].value("kind", ""), "invalid config") << reply;
    EXPECT_NE(json["error"].value("message", "").find(c.complaint), std::string::npos) << reply;
  }
  EXPECT_FALSE(std::filesystem::exists("/tmp/vessel-cli-test-never-made"));
  auto r = RunCli({"exec", id_, "--", "echo", "still here"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "still here\n");
}

TEST_F(CliSandboxTest, LsShowsTheSandboxRunning) {
  auto r = RunCli({"ls"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("ID", 0), 0u) << r.out;
  EXPECT_NE(r.out.find(id_), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("running"), std::string::npos) << r.out;

  r = RunCli({"ls", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto listing = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_TRUE(listing.is_array()) << r.out;
  bool found = false;
  for (const auto& entry : listing) {
    if (entry.value("id", "") != id_) continue;
    found = true;
    EXPECT_EQ(entry.value("name", ""), "cli-test");
    EXPECT_EQ(entry.value("state", ""), "running");
    EXPECT_EQ(entry.value("memory_mib", 0), 256);
    EXPECT_EQ(entry.value("engine", "").rfind("qemu-", 0), 0u);
    EXPECT_GE(entry.value("age_seconds", -1), 0);
  }
  EXPECT_TRUE(found) << r.out;
}

std::optional<nlohmann::json> ListedSandbox(const std::string& id) {
  auto r = RunCli({"ls", "--json"});
  auto listing = nlohmann::json::parse(r.out, nullptr, false);
  if (!listing.is_array()) return std::nullopt;
  for (const auto& entry : listing) {
    if (entry.value("id", "") == id) return entry;
  }
  return std::nullopt;
}

TEST(CliTest, ASandboxWhoseSupervisorDiedShowsDeadAndRmCleansUp) {
  auto r = RunCli({"create", "--memory", "128", "--name", "doomed"});
  ASSERT_EQ(r.status, 0) << r.err;
  std::string id = Trimmed(r.out);
  auto entry = ListedSandbox(id);
  ASSERT_TRUE(entry.has_value());
  EXPECT_EQ(entry->value("state", ""), "running");
  int pid = entry->value("pid", 0);
  ASSERT_GT(pid, 1);

  kill(pid, SIGKILL);
  EXPECT_TRUE(Eventually(
      [&] {
        auto e = ListedSandbox(id);
        return e && e->value("state", "") == "dead";
      },
      std::chrono::seconds(10)));
  r = RunCli({"exec", "doomed", "--", "true"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("not running"), std::string::npos) << r.err;

  r = RunCli({"rm", "doomed"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(std::filesystem::exists(testing::TestRuntimeRoot() + "/sandboxes/" + id));
  EXPECT_FALSE(std::filesystem::exists(testing::TestRuntimeRoot() + "/vm-" + id));
  EXPECT_TRUE(
      Eventually([] { return testing::LiveVmmProcesses().empty(); }, std::chrono::seconds(5)));
  EXPECT_FALSE(ListedSandbox(id).has_value());
}

// state.json is trusted only as far as the kernel agrees: `rm` signals the pid that serves
// the sandbox's control socket (SO_PEERCRED), and refuses when state.json names another.
TEST(CliTest, RmSignalsOnlyThePidThatServesTheControlSocket) {
  auto r = RunCli({"create", "--memory", "128", "--name", "pid-check"});
  ASSERT_EQ(r.status, 0) << r.err;
  std::string id = Trimmed(r.out);
  std::string state_path = testing::TestRuntimeRoot() + "/sandboxes/" + id + "/state.json";
  std::string original = ReadWholeFile(state_path);
  auto state = nlohmann::json::parse(original, nullptr, false);
  ASSERT_TRUE(state.is_object()) << original;

  pid_t bystander = ::fork();
  if (bystander == 0) {
    ::execl("/bin/sleep", "sleep", "60", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  state["pid"] = bystander;
  {
    std::ofstream out(state_path, std::ios::trunc);
    out << state.dump();
  }
  r = RunCli({"rm", "pid-check"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("refusing to signal"), std::string::npos) << r.err;
  EXPECT_EQ(::waitpid(bystander, nullptr, WNOHANG), 0) << "the bystander was signalled";
  ::kill(bystander, SIGKILL);
  ::waitpid(bystander, nullptr, 0);

  {
    std::ofstream out(state_path, std::ios::trunc);
    out << original;
  }
  r = RunCli({"rm", "pid-check"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(ListedSandbox(id).has_value());
}

TEST(CliTest, RmOfAnUnknownSandboxExits125) {
  auto r = RunCli({"rm", "no-such-sandbox"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("no-such-sandbox"), std::string::npos) << r.err;
  r = RunCli({"exec", "no-such-sandbox", "--", "true"});
  EXPECT_EQ(r.status, 125);
  EXPECT_EQ(RunCli({"cp", "a", "b"}).status, 125);
}

// Snapshots, restores and forks of sandboxes made by `vessel create`.

// A directory for a snapshot that does not exist yet; removed with this object.
class SnapshotDir {
 public:
  explicit SnapshotDir(const std::string& name)
      : path_(std::filesystem::temp_directory_path() /
              ("vessel-cli-test-" + std::to_string(getpid()) + "-" + name)) {}
  ~SnapshotDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// `vessel create ARGS...`; the new id, or "" with a failure recorded.
std::string CreateSandbox(std::vector<std::string> args,
                          std::vector<std::string> environment = {}) {
  args.insert(args.begin(), "create");
  auto r = RunCli(args, {}, std::move(environment));
  EXPECT_EQ(r.status, 0) << r.err;
  return r.status == 0 ? Trimmed(r.out) : "";
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

void FlipByte(const std::string& path, std::streamoff offset) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekg(offset);
  char c = 0;
  file.read(&c, 1);
  c = static_cast<char>(c ^ 0x01);
  file.seekp(offset);
  file.write(&c, 1);
}

// The CLI's hidden fork directories (.fork-*) that are still there.
std::vector<std::string> ForkDirsLeft() {
  std::vector<std::string> left;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator(testing::TestRuntimeRoot() + "/sandboxes", ec)) {
    std::string name = entry.path().filename();
    if (name.starts_with(".fork-")) left.push_back(name);
  }
  return left;
}

std::string Cat(const std::string& id, const std::string& path) {
  auto r = RunCli({"exec", id, "--", "cat", path});
  return r.status == 0 ? r.out : "exit " + std::to_string(r.status) + ": " + r.err;
}

TEST(CliSnapshotTest, ASnapshotRestoresIntoANewSandboxWithTheSameFiles) {
  std::string original = CreateSandbox({"--memory", "128", "--name", "snap-original"});
  ASSERT_FALSE(original.empty());
  auto r = RunCli({"exec", original, "--", "sh", "-c", "echo saved > /root/marker"});
  ASSERT_EQ(r.status, 0) << r.err;

  // A command that runs meanwhile waits out the snapshot and loses nothing.
  auto counting = std::async(std::launch::async, [&] {
    return RunCli(
        {"exec", original, "--", "sh", "-c", "for i in $(seq 1 20); do echo $i; sleep 0.1; done"});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  SnapshotDir dir("snap");
  r = RunCli({"snapshot", "snap-original", dir.path()});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, dir.path() + "\n");
  for (const char* file : {"manifest.json", "state", "memory"}) {
    EXPECT_TRUE(std::filesystem::exists(dir.File(file))) << file;
  }
  auto counted = counting.get();
  EXPECT_EQ(counted.status, 0) << counted.err;
  EXPECT_EQ(Lines(counted.out).size(), 20u) << counted.out;

  r = RunCli({"restore", dir.path(), "--name", "snap-restored"});
  ASSERT_EQ(r.status, 0) << r.err;
  std::string restored = Trimmed(r.out);
  EXPECT_NE(restored, original);
  EXPECT_EQ(Cat("snap-restored", "/root/marker"), "saved\n");
  auto listed = ListedSandbox(restored);
  ASSERT_TRUE(listed.has_value());
  EXPECT_EQ(listed->value("name", ""), "snap-restored");
  EXPECT_EQ(listed->value("state", ""), "running");
  EXPECT_EQ(listed->value("memory_mib", 0), 128);
  EXPECT_EQ(listed->value("vcpus", 0), 1);
  EXPECT_EQ(listed->value("restored_from", ""), dir.path());

  // The two go their own ways.
  r = RunCli({"exec", restored, "--", "sh", "-c", "echo changed > /root/marker"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(Cat(original, "/root/marker"), "saved\n");
  EXPECT_EQ(Cat(restored, "/root/marker"), "changed\n");

  r = RunCli({"rm", original, restored});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(ListedSandbox(original).has_value());
  EXPECT_FALSE(ListedSandbox(restored).has_value());
  // The snapshot is the user's: it stays, and still restores.
  EXPECT_TRUE(std::filesystem::exists(dir.File("memory")));
}

TEST(CliSnapshotTest, ForkMakesIndependentCopiesAndLeavesNothingBehind) {
  std::string parent = CreateSandbox({"--memory", "128"});
  ASSERT_FALSE(parent.empty());
  auto r = RunCli({"exec", parent, "--", "sh", "-c", "echo parent > /root/inherited"});
  ASSERT_EQ(r.status, 0) << r.err;

  r = RunCli({"fork", parent, "-n", "2"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto children = Lines(r.out);
  ASSERT_EQ(children.size(), 2u) << r.out;
  EXPECT_NE(children[0], children[1]);
  for (const auto& child : children) {
    EXPECT_NE(child, parent);
    EXPECT_EQ(Cat(child, "/root/inherited"), "parent\n");
    auto listed = ListedSandbox(child);
    ASSERT_TRUE(listed.has_value()) << child;
    EXPECT_EQ(listed->value("state", ""), "running");
    EXPECT_EQ(listed->value("forked_from", ""), parent);
    EXPECT_EQ(listed->value("memory_mib", 0), 128);
    r = RunCli({"exec", child, "--", "sh", "-c", "echo " + child + " > /root/mine"});
    EXPECT_EQ(r.status, 0) << r.err;
  }
  EXPECT_EQ(Cat(children[0], "/root/mine"), children[0] + "\n");
  EXPECT_EQ(Cat(children[1], "/root/mine"), children[1] + "\n");
  EXPECT_NE(RunCli({"exec", parent, "--", "test", "-e", "/root/mine"}).status, 0);
  // The template snapshot is gone already: the children run from their own mappings.
  EXPECT_TRUE(ForkDirsLeft().empty());

  // Removing the parent leaves the children running.
  r = RunCli({"rm", parent});
  EXPECT_EQ(r.status, 0) << r.err;
  for (const auto& child : children) {
    EXPECT_EQ(Cat(child, "/root/inherited"), "parent\n");
  }
  r = RunCli({"rm", children[0], children[1]});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(std::filesystem::exists(testing::TestRuntimeRoot() + "/sandboxes/" + children[0]));
  EXPECT_FALSE(std::filesystem::exists(testing::TestRuntimeRoot() + "/sandboxes/" + children[1]));
  EXPECT_TRUE(
      Eventually([] { return testing::LiveVmmProcesses().empty(); }, std::chrono::seconds(5)));
}

TEST(CliSnapshotTest, VerifyFindsDamageThatRestoreRefuses) {
  std::string id = CreateSandbox({"--memory", "128"});
  ASSERT_FALSE(id.empty());
  SnapshotDir good("verify-good");
  auto r = RunCli({"snapshot", id, good.path()});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(RunCli({"rm", id}).status, 0);

  r = RunCli({"snapshot", "verify", good.path()});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("ok", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("128 MiB"), std::string::npos) << r.out;

  // A byte changed inside the memory image: only the full check reads all of it.
  SnapshotDir flipped("verify-flipped");
  std::filesystem::copy(good.path(), flipped.path());
  FlipByte(flipped.File("memory"), 64 * 1024 * 1024 + 12345);
  r = RunCli({"snapshot", "verify", flipped.path()});
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("memory: checksum mismatch"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(flipped.path()), std::string::npos) << r.err;
  EXPECT_EQ(Lines(r.err).size(), 1u) << r.err;

  // Damage that a restore checks for: a state file one byte off, a memory file cut short.
  SnapshotDir damaged("verify-damaged");
  std::filesystem::copy(good.path(), damaged.path());
  FlipByte(damaged.File("state"), 100);
  auto before = RunCli({"ls", "--json"}).out;
  r = RunCli({"restore", damaged.path()});
  EXPECT_EQ(r.status, 125);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("snapshot format"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("state: checksum mismatch"), std::string::npos) << r.err;
  EXPECT_EQ(RunCli({"snapshot", "verify", damaged.path()}).status, 1);

  std::filesystem::copy_file(good.File("state"), damaged.File("state"),
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(damaged.File("memory"), 1024 * 1024);
  r = RunCli({"restore", damaged.path(), "--name", "never"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("memory: size"), std::string::npos) << r.err;
  EXPECT_EQ(RunCli({"ls", "--json"}).out, before) << "a failed restore leaves nothing behind";

  r = RunCli({"snapshot", "verify", "/no/such/snapshot"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("manifest.json"), std::string::npos) << r.err;
  EXPECT_EQ(RunCli({"snapshot", "verify"}).status, 125);
}

// Another host signs with another key: its snapshot is refused here, by restore and by
// verify, until `snapshot import` checks it in full and signs it with this host's key.
TEST(CliSnapshotTest, ASnapshotFromAnotherHostRestoresOnlyOnceImported) {
  // The sandbox's supervisor takes its snapshots, so it is the one on the other host.
  SnapshotDir other_host("other-host-config");
  SnapshotDir dir("from-another-host");
  std::vector<std::string> there = {"VESSEL_CONFIG_DIR=" + other_host.path()};
  std::string id = CreateSandbox({"--memory", "128"}, there);
  ASSERT_FALSE(id.empty());
  ASSERT_EQ(RunCli({"exec", id, "--", "sh", "-c", "echo carried > /root/note"}).status, 0);
  auto r = RunCli({"snapshot", id, dir.path()});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(RunCli({"rm", id}).status, 0);
  ASSERT_TRUE(std::filesystem::exists(other_host.File("snapshot.key")));

  r = RunCli({"restore", dir.path()});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("manifest.json: not signed by this host's key"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("vessel snapshot import"), std::string::npos) << r.err;
  r = RunCli({"snapshot", "verify", dir.path()});
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_EQ(RunCli({"snapshot", "verify", dir.path()}, {}, there).status, 0);

  r = RunCli({"snapshot", "import", dir.path()});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("ok: every checksum matches; signed with this host's key", 0), 0u)
      << r.out;
  EXPECT_EQ(RunCli({"snapshot", "verify", dir.path()}).status, 0);
  EXPECT_EQ(RunCli({"snapshot", "verify", dir.path()}, {}, there).status, 1);
  r = RunCli({"restore", dir.path()});
  ASSERT_EQ(r.status, 0) << r.err;
  std::string restored = Lines(r.out).at(0);
  r = RunCli({"exec", restored, "--", "cat", "/root/note"});
  EXPECT_EQ(r.out, "carried\n") << r.err;
  EXPECT_EQ(RunCli({"rm", restored}).status, 0);

  r = RunCli({"snapshot", "import", "/no/such/snapshot"});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("manifest.json: missing"), std::string::npos) << r.err;
}

TEST(CliSnapshotTest, BadRequestsFailWithOneLineAndLeaveNothingBehind) {
  auto one_line_failure = [](const CliResult& r, const std::string& mentions) {
    EXPECT_EQ(r.status, 125);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(Lines(r.err).size(), 1u) << r.err;
    EXPECT_NE(r.err.find(mentions), std::string::npos) << r.err;
  };
  one_line_failure(RunCli({"snapshot", "no-such-sandbox", "/tmp/never"}), "no-such-sandbox");
  one_line_failure(RunCli({"fork", "no-such-sandbox"}), "no-such-sandbox");
  one_line_failure(RunCli({"restore", "/no/such/snapshot"}), "manifest.json: missing");
  EXPECT_EQ(RunCli({"fork"}).status, 125);
  EXPECT_EQ(RunCli({"restore"}).status, 125);
  EXPECT_EQ(RunCli({"snapshot", "only-one-argument"}).status, 125);

  std::string id = CreateSandbox({"--memory", "128", "--name", "snap-errors"});
  ASSERT_FALSE(id.empty());
  for (std::string n : {"0", "65", "abc", "-1", ""}) {
    one_line_failure(RunCli({"fork", id, "-n", n}), "-n");
  }
  one_line_failure(RunCli({"restore", "/no/such/snapshot", "--name", "snap-errors"}),
                   "exists already");

  // Directories a snapshot cannot go to.
  SnapshotDir full("full");
  std::filesystem::create_directory(full.path());
  std::ofstream(full.File("something")) << "mine";
  one_line_failure(RunCli({"snapshot", id, full.path()}), "is not empty");
  EXPECT_EQ(ReadWholeFile(full.File("something")), "mine");
  SnapshotDir orphan("orphan");
  one_line_failure(RunCli({"snapshot", id, orphan.File("deeper")}), "parent does not exist");
  EXPECT_FALSE(std::filesystem::exists(orphan.path()));

  // A sandbox whose supervisor is gone cannot be saved or copied.
  auto listed = ListedSandbox(id);
  ASSERT_TRUE(listed.has_value());
  kill(listed->value("pid", 0), SIGKILL);
  ASSERT_TRUE(Eventually(
      [&] {
        auto e = ListedSandbox(id);
        return e && e->value("state", "") == "dead";
      },
      std::chrono::seconds(10)));
  SnapshotDir never("never");
  one_line_failure(RunCli({"snapshot", "snap-errors", never.path()}), "not running");
  one_line_failure(RunCli({"fork", "snap-errors", "-n", "2"}), "not running");
  EXPECT_FALSE(std::filesystem::exists(never.path()));
  EXPECT_TRUE(ForkDirsLeft().empty());

  // A fork directory whose owner died is swept by the next rm.
  std::string stale = testing::TestRuntimeRoot() + "/sandboxes/.fork-stale1";
  std::filesystem::create_directory(stale);
  std::ofstream(stale + "/memory") << "leftover";
  EXPECT_EQ(RunCli({"rm", "snap-errors"}).status, 0);
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_FALSE(ListedSandbox(id).has_value());
}

// `vessel net`: the egress policy of a running sandbox, read and changed by its supervisor.
TEST(CliNetTest, NetShowsAllowsAndDeniesRulesOfARunningSandbox) {
  std::string id =
      CreateSandbox({"--memory", "128", "--name", "net-test", "--allow-net", "127.0.0.1:18080"});
  ASSERT_FALSE(id.empty());
  // Removed however the test ends.
  struct Removal {
    std::string id;
    ~Removal() {
      if (!id.empty()) RunCli({"rm", id});
    }
  } removal{id};
  // The allowlist `vessel net ARGS... --json` prints, or a failure.
  auto allowlist = [](std::vector<std::string> args) -> std::vector<std::string> {
    args.insert(args.begin(), "net");
    args.push_back("--json");
    auto r = RunCli(args);
    EXPECT_EQ(r.status, 0) << r.err;
    auto net = nlohmann::json::parse(r.out, nullptr, false);
    if (!net.is_object() || !net["allow"].is_array()) {
      ADD_FAILURE() << "not a network object: " << r.out;
      return {};
    }
    for (const char* key : {"max_connections", "idle_timeout_s", "max_bytes", "allowed", "refused",
                            "bytes_sent", "bytes_received", "open"}) {
      EXPECT_TRUE(net[key].is_number_unsigned()) << key << " in " << r.out;
    }
    EXPECT_TRUE(net["recent_refusals"].is_array()) << r.out;
    return net["allow"].get<std::vector<std::string>>();
  };
  using Rules = std::vector<std::string>;
  EXPECT_EQ(allowlist({id}), Rules{"127.0.0.1:18080"});
  // By name too; rules are kept in their canonical spelling.
  EXPECT_EQ(allowlist({"allow", "net-test", "EXAMPLE.com"}),
            (Rules{"127.0.0.1:18080", "example.com"}));
  EXPECT_EQ(allowlist({"deny", id, "127.0.0.1:18080"}), Rules{"example.com"});
  EXPECT_EQ(allowlist({id}), Rules{"example.com"});

  auto r = RunCli({"net", id});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("allow        example.com\n", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("connections  0 made"), std::string::npos) << r.out;

  // What cannot be done fails in one line and changes nothing.
  auto one_line_failure = [](const CliResult& failed, const std::string& mentions) {
    EXPECT_EQ(failed.status, 125);
    EXPECT_EQ(failed.out, "");
    EXPECT_EQ(Lines(failed.err).size(), 1u) << failed.err;
    EXPECT_NE(failed.err.find(mentions), std::string::npos) << failed.err;
  };
  one_line_failure(RunCli({"net", "deny", id, "nothere.example"}),
                   "nothere.example is not in the sandbox's allowlist");
  one_line_failure(RunCli({"net", "allow", id, "good.example,http://bad.example/"}),
                   "http://bad.example/");
  one_line_failure(RunCli({"net", "no-such-sandbox"}), "no-such-sandbox");
  EXPECT_EQ(allowlist({id}), Rules{"example.com"});

  // A refusal shows in the counters and in the supervisor's log.
  r = RunCli({"exec", id, "--", "sh", "-c", "wget -q -O - http://denied.example/ 2>&1; true"});
  EXPECT_EQ(r.status, 0) << r.err;
  r = RunCli({"net", id, "--json"});
  auto net = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_TRUE(net.is_object()) << r.out;
  EXPECT_GE(net.value("refused", 0), 1) << r.out;
  ASSERT_FALSE(net["recent_refusals"].empty()) << r.out;
  EXPECT_NE(net["recent_refusals"].back().get<std::string>().find("denied.example"),
            std::string::npos)
      << r.out;
  std::string log_path = testing::TestRuntimeRoot() + "/sandboxes/" + id + "/supervisor.log";
  EXPECT_TRUE(Eventually(
      [&] {
        return ReadWholeFile(log_path).find("egress refused: 403 denied.example") !=
               std::string::npos;
      },
      std::chrono::seconds(5)))
      << ReadWholeFile(log_path);

  // `ls --json` carries the same policy and counters.
  auto listed = ListedSandbox(id);
  ASSERT_TRUE(listed.has_value());
  ASSERT_TRUE((*listed)["network"].is_object()) << listed->dump();
  EXPECT_EQ((*listed)["network"]["allow"], nlohmann::json::array({"example.com"}));
  EXPECT_GE((*listed)["network"].value("refused", 0), 1) << listed->dump();

  // The policy travels with a snapshot and into forks; a restore may replace it.
  SnapshotDir dir("net");
  r = RunCli({"snapshot", id, dir.path()});
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<std::string> copies;
  struct Removals {
    std::vector<std::string>& ids;
    ~Removals() {
      for (const auto& copy : ids) RunCli({"rm", copy});
    }
  } copy_removal{copies};
  r = RunCli({"restore", dir.path()});
  ASSERT_EQ(r.status, 0) << r.err;
  copies.push_back(Trimmed(r.out));
  EXPECT_EQ(allowlist({copies.back()}), Rules{"example.com"});
  r = RunCli({"restore", dir.path(), "--allow-net", "pypi.org,*.pythonhosted.org"});
  ASSERT_EQ(r.status, 0) << r.err;
  copies.push_back(Trimmed(r.out));
  EXPECT_EQ(allowlist({copies.back()}), (Rules{"pypi.org", "*.pythonhosted.org"}));
  r = RunCli({"fork", id, "-n", "1"});
  ASSERT_EQ(r.status, 0) << r.err;
  copies.push_back(Trimmed(r.out));
  EXPECT_EQ(allowlist({copies.back()}), Rules{"example.com"});
  one_line_failure(RunCli({"restore", dir.path(), "--allow-net", "http://bad.example/"}),
                   "http://bad.example/");

  removal.id.clear();
  EXPECT_EQ(RunCli({"rm", id}).status, 0);
  one_line_failure(RunCli({"net", id}), id);
}

}  // namespace
}  // namespace vessel
