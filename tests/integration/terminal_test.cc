// Commands on a pseudo-terminal in one real VM: what a shell, a REPL or `top` needs.
#include <fmt/format.h>
#include <signal.h>

#include <chrono>
#include <string>
#include <thread>

#include "vm_test_env.h"

namespace vessel {
namespace {

using testing::MustCreate;
using namespace std::chrono_literals;

class TerminalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { sandbox_ = MustCreate().release(); }
  static void TearDownTestSuite() {
    delete sandbox_;
    sandbox_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(sandbox_, nullptr) << "the shared VM did not boot"; }

  static ExecOptions OnTerminal(TerminalSize size = {}, bool with_stdin = false) {
    ExecOptions options;
    options.terminal = size;
    // A shell that misses a keystroke fails its test instead of waiting for ever.
    options.timeout = 120s;
    if (with_stdin) options.stdin_data = std::string();
    return options;
  }

  static ExecResult Run(const std::string& script, const ExecOptions& options) {
    auto result = sandbox_->Execute(Command::Shell(script), options);
    EXPECT_TRUE(result.has_value()) << result.error().ToString();
    return result.value_or(ExecResult{});
  }

  // An interactive shell on a terminal, driven as a person would.
  class Session {
   public:
    explicit Session(TerminalSize size, const Command& command = Command::Argv({"sh"})) {
      auto process = sandbox_->Start(command, OnTerminal(size, true));
      EXPECT_TRUE(process.has_value()) << process.error().ToString();
      if (process) process_ = std::move(*process);
    }
    [[nodiscard]] bool started() const { return process_ != nullptr; }
    Process& process() { return *process_; }

    void Type(std::string_view keys) {
      auto written = process_->WriteStdin(keys);
      EXPECT_TRUE(written.has_value()) << written.error().ToString();
    }
    // Reads the terminal until `text` appears after what earlier calls consumed; returns
    // what was read up to and including it, or fails the test after 60 s.
    std::string Expect(std::string_view text) {
      auto deadline = std::chrono::steady_clock::now() + 60s;
      for (;;) {
        if (auto at = screen_.find(text, consumed_); at != std::string::npos) {
          std::string seen = screen_.substr(consumed_, at + text.size() - consumed_);
          consumed_ = at + text.size();
          return seen;
        }
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left <= 0ms) {
          ADD_FAILURE() << "no \"" << text << "\" on the terminal; it shows:\n"
                        << screen_.substr(consumed_);
          return {};
        }
        auto event = process_->NextEvent(left);
        if (!event || !*event) {
          ADD_FAILURE() << "the command ended or failed before \"" << text << "\"; it showed:\n"
                        << screen_.substr(consumed_);
          return {};
        }
        if ((*event)->kind != ProcessEvent::Kind::kStdout) {
          ADD_FAILURE() << "a terminal's output arrives as stdout only";
          return {};
        }
        screen_ += (*event)->data;
      }
    }

   private:
    std::unique_ptr<Process> process_;
    std::string screen_;
    size_t consumed_ = 0;
  };

  static Sandbox* sandbox_;
};
Sandbox* TerminalTest::sandbox_ = nullptr;

TEST_F(TerminalTest, TtyNamesAPseudoTerminal) {
  auto r = Run("tty", OnTerminal());
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(r.stdout_data.starts_with("/dev/pts/")) << r.stdout_data;
  EXPECT_TRUE(r.stdout_data.ends_with("\r\n")) << "a terminal writes \\r\\n: " << r.stdout_data;
  EXPECT_EQ(r.stderr_data, "");
  // Without a terminal the same command has none.
  EXPECT_EQ(Run("tty", {}).stdout_data, "not a tty\n");
}

TEST_F(TerminalTest, StdinStdoutAndStderrAreAllTheTerminal) {
  std::string script = "for fd in 0 1 2; do [ -t $fd ] && printf T || printf -; done";
  EXPECT_EQ(Run(script, OnTerminal()).stdout_data, "TTT");
  EXPECT_EQ(Run(script, OnTerminal({}, true)).stdout_data, "TTT");
  EXPECT_EQ(Run(script, {}).stdout_data, "---");
  // What the command writes to stderr arrives on the terminal, as stdout.
  auto r = Run("echo out; echo err >&2", OnTerminal());
  EXPECT_EQ(r.stdout_data, "out\r\nerr\r\n");
  EXPECT_EQ(r.stderr_data, "");
}

TEST_F(TerminalTest, SttySizeReportsTheSizeGivenAndThenTheNewOne) {
  Session shell({.rows = 30, .cols = 101});
  ASSERT_TRUE(shell.started());
  shell.Type("stty size\n");
  shell.Expect("stty size");
  EXPECT_NE(shell.Expect("30 101"), "");
  ASSERT_TRUE(shell.process().Resize({.rows = 50, .cols = 132}).has_value());
  shell.Type("stty size\n");
  shell.Expect("stty size");
  EXPECT_NE(shell.Expect("50 132"), "");
  shell.Type("exit 7\n");
  auto result = shell.process().Wait();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->outcome, ExecResult::Outcome::kExited);
  EXPECT_EQ(result->exit_code, 7);
}

TEST_F(TerminalTest, AResizeReachesTheForegroundJobAsSigwinch) {
  Session job({.rows = 24, .cols = 80},
              Command::Shell("trap 'stty size; exit 5' WINCH; echo ready; "
                             "while :; do sleep 0.1; done"));
  ASSERT_TRUE(job.started());
  job.Expect("ready\r\n");
  ASSERT_TRUE(job.process().Resize({.rows = 40, .cols = 90}).has_value());
  EXPECT_NE(job.Expect("40 90\r\n"), "");
  auto result = job.process().Wait();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->exit_code, 5);
}

TEST_F(TerminalTest, ControlCInterruptsOnlyTheForegroundJob) {
  Session shell({.rows = 24, .cols = 80}, Command::Argv({"sh", "-i"}));
  ASSERT_TRUE(shell.started());
  // A foreground job that says when it is ready, and what a SIGINT does to it. The shell
  // gives it the terminal before it runs, so once it says "ready" ^C is its.
  shell.Type(
      "sh -c 'trap \"echo interrupted; exit 130\" INT; echo ready; "
      "while :; do sleep 0.1; done'\n");
  shell.Expect("ready\r\n");
  // ^C, as the terminal's line discipline hears it: SIGINT for the job, not for the shell.
  shell.Type("\x03");
  EXPECT_NE(shell.Expect("interrupted\r\n"), "");
  // A prompt that its own echo does not contain, to know when the shell reads again.
  shell.Type("echo status=$?; PS1='<''p''>'\n");
  shell.Expect("echo status=$?");
  EXPECT_NE(shell.Expect("status=130\r\n"), "");
  shell.Expect("<p>");
  // ^D at an empty prompt ends the shell's input, as at home. (Typed before the shell
  // reads, a line discipline turns it into a NUL when the shell's line editor switches the
  // terminal to raw mode; so the test waits for the prompt.)
  shell.Type("\x04");
  auto result = shell.process().Wait();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->outcome, ExecResult::Outcome::kExited);
  EXPECT_EQ(result->exit_code, 0);
}

TEST_F(TerminalTest, TermDefaultsToXterm256colorUnlessTheCallerSetsIt) {
  EXPECT_EQ(Run("echo $TERM", OnTerminal()).stdout_data, "xterm-256color\r\n");
  ExecOptions options = OnTerminal();
  options.env = {"TERM=vt100"};
  EXPECT_EQ(Run("echo $TERM", options).stdout_data, "vt100\r\n");
  EXPECT_EQ(Run("echo ${TERM-unset}", {}).stdout_data, "unset\n");
}

TEST_F(TerminalTest, ExitStatusSignalsAndTimeoutsComeBackAsWithPipes) {
  EXPECT_EQ(Run("exit 3", OnTerminal()).exit_code, 3);
  auto killed = Run("kill -TERM $$", OnTerminal());
  EXPECT_EQ(killed.outcome, ExecResult::Outcome::kSignaled);
  EXPECT_EQ(killed.signal, SIGTERM);
  ExecOptions options = OnTerminal();
  options.timeout = 500ms;
  EXPECT_EQ(Run("sleep 1000", options).outcome, ExecResult::Outcome::kTimedOut);
  // The VM is still usable.
  EXPECT_EQ(Run("echo ok", OnTerminal()).stdout_data, "ok\r\n");
}

TEST_F(TerminalTest, BadSizesAndAResizeWithoutATerminalAreInvalidConfig) {
  for (TerminalSize bad : {TerminalSize{0, 80}, TerminalSize{24, 0}, TerminalSize{4097, 80},
                           TerminalSize{24, 65535}}) {
    auto r = sandbox_->Execute(Command::Argv({"true"}), OnTerminal(bad));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(r.error().message().find("terminal"), std::string::npos) << r.error().ToString();
  }
  auto piped = sandbox_->Start(Command::Argv({"sleep", "1000"}), {});
  ASSERT_TRUE(piped.has_value()) << piped.error().ToString();
  auto resized = (*piped)->Resize({24, 80});
  ASSERT_FALSE(resized.has_value());
  EXPECT_EQ(resized.error().kind(), ErrorKind::kInvalidConfig);
  Session shell({.rows = 24, .cols = 80});
  ASSERT_TRUE(shell.started());
  auto bad = shell.process().Resize({0, 0});
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().kind(), ErrorKind::kInvalidConfig);
  ASSERT_TRUE((*piped)->Kill().has_value());
  ASSERT_TRUE(shell.process().Kill().has_value());
  ASSERT_TRUE(shell.process().Wait().has_value());
  // A resize after the end is no error: there is nothing left to resize.
  EXPECT_TRUE(shell.process().Resize({24, 80}).has_value());
  EXPECT_EQ(sandbox_->state(), SandboxState::kReady);
}

TEST_F(TerminalTest, AFloodOfFiftyMegabytesThroughTheTerminalStaysBoundedOnTheHost) {
  constexpr uint64_t kBytes = 50'000'000;
  ExecOptions options = OnTerminal();
  options.output_cap = 2 * kBytes;
  // Zero bytes pass a terminal's output processing unchanged, so the count is exact.
  auto process =
      sandbox_->Start(Command::Shell(fmt::format("head -c {} /dev/zero", kBytes)), options);
  ASSERT_TRUE(process.has_value()) << process.error().ToString();
  long before = testing::ResidentKib();
  // A reader that stops for a while: the guest must wait, not the host buffer.
  std::this_thread::sleep_for(2s);
  long peak = testing::ResidentKib();
  uint64_t received = 0;
  for (;;) {
    auto event = (*process)->NextEvent(120s);
    ASSERT_TRUE(event.has_value()) << event.error().ToString();
    ASSERT_TRUE(event->has_value()) << "ended without an exit event";
    if ((*event)->final()) {
      EXPECT_EQ((*event)->kind, ProcessEvent::Kind::kExited);
      EXPECT_EQ((*event)->code, 0);
      break;
    }
    received += (*event)->data.size();
    if (received % (4 << 20) < (*event)->data.size()) peak = std::max(peak, testing::ResidentKib());
  }
  EXPECT_EQ(received, kBytes);
  EXPECT_LT(peak - before, 32 * 1024) << "KiB of resident memory grew while 50 MB passed";
}

}  // namespace
}  // namespace vessel
