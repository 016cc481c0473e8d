// Streaming, concurrent processes, stdin and signals in one real VM.
#include <fmt/format.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "vm_test_env.h"

namespace vessel {
namespace {

using Clock = std::chrono::steady_clock;
using Kind = ProcessEvent::Kind;

class StreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SandboxConfig config = testing::TestConfig();
    config.vcpus = 2;
    sandbox_ = testing::MustCreate(config).release();
  }
  static void TearDownTestSuite() {
    delete sandbox_;
    sandbox_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(sandbox_, nullptr) << "the shared VM did not boot"; }

  static std::unique_ptr<Process> Start(const std::string& script,
                                        const ExecOptions& options = {}) {
    auto process = sandbox_->Start(Command::Shell(script), options);
    EXPECT_TRUE(process.has_value()) << process.error().ToString();
    return process ? std::move(*process) : nullptr;
  }

  static Sandbox* sandbox_;
};
Sandbox* StreamTest::sandbox_ = nullptr;

TEST_F(StreamTest, FirstChunkArrivesBeforeTheProcessEnds) {
  auto start = Clock::now();
  auto p = Start("echo a; sleep 2; echo b");
  ASSERT_NE(p, nullptr);
  EXPECT_GT(p->pid(), 1);
  auto first = p->NextEvent();
  ASSERT_TRUE(first.has_value() && first->has_value());
  auto first_at = Clock::now() - start;
  EXPECT_EQ((*first)->kind, Kind::kStdout);
  EXPECT_EQ((*first)->data, "a\n");
  EXPECT_LT(first_at, std::chrono::milliseconds(1500));

  std::string rest;
  std::optional<ProcessEvent> last;
  for (;;) {
    auto event = p->NextEvent();
    ASSERT_TRUE(event.has_value()) << event.error().ToString();
    if (!*event) break;
    if ((*event)->final())
      last = **event;
    else
      rest += (*event)->data;
  }
  EXPECT_EQ(rest, "b\n");
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->kind, Kind::kExited);
  EXPECT_GE(Clock::now() - start, std::chrono::seconds(2));
}

TEST_F(StreamTest, SixteenConcurrentProcessesKeepTheirOwnOutput) {
  std::vector<std::unique_ptr<Process>> processes;
  for (int i = 0; i < 16; ++i) {
    processes.push_back(Start(fmt::format(
        "sleep 1; for j in 1 2 3; do echo p{}-$j; done; echo e{} >&2; exit {}", i, i, i)));
    ASSERT_NE(processes.back(), nullptr);
  }
  auto start = Clock::now();
  for (int i = 0; i < 16; ++i) {
    auto r = processes[static_cast<size_t>(i)]->Wait();
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ(r->stdout_data, fmt::format("p{0}-1\np{0}-2\np{0}-3\n", i));
    EXPECT_EQ(r->stderr_data, fmt::format("e{}\n", i));
    EXPECT_EQ(r->exit_code, i);
  }
  // They ran at once: sixteen one-second sleeps took far less than sixteen seconds.
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(8));
}

TEST_F(StreamTest, StdinRoundTrip) {
  ExecOptions options;
  options.stdin_data = std::string("hello\nworld\n");
  auto r = sandbox_->Execute(Command::Argv({"cat"}), options);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->stdout_data, "hello\nworld\n");

  // 8 MiB, more than the flow-control window, through a command that reads it all.
  std::string big(8 * 1024 * 1024, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 7919) >> 3);
  options.stdin_data = big;
  r = sandbox_->Execute(Command::Argv({"wc", "-c"}), options);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->stdout_data.substr(r->stdout_data.find_first_not_of(' ')), "8388608\n");

  // Interactive: write, read the echo, write again, close.
  options.stdin_data = std::string();
  auto p = sandbox_->Start(Command::Argv({"cat"}), options);
  ASSERT_TRUE(p.has_value());
  ASSERT_TRUE((*p)->WriteStdin("ping\n").has_value());
  auto echo = (*p)->NextEvent(std::chrono::seconds(10));
  ASSERT_TRUE(echo.has_value() && echo->has_value());
  EXPECT_EQ((*echo)->data, "ping\n");
  ASSERT_TRUE((*p)->WriteStdin(std::string("\0bin\xff", 5)).has_value());
  ASSERT_TRUE((*p)->CloseStdin().has_value());
  auto rest = (*p)->Wait();
  ASSERT_TRUE(rest.has_value());
  EXPECT_EQ(rest->stdout_data, std::string("\0bin\xff", 5));
  EXPECT_EQ(rest->exit_code, 0);
  EXPECT_FALSE((*p)->WriteStdin("late").has_value());
}

TEST_F(StreamTest, SignalAndKill) {
  auto p = Start("trap 'echo got-usr1; exit 5' USR1; echo ready; while :; do sleep 0.05; done");
  ASSERT_NE(p, nullptr);
  auto ready = p->NextEvent(std::chrono::seconds(10));
  ASSERT_TRUE(ready.has_value() && ready->has_value());
  EXPECT_EQ((*ready)->data, "ready\n");
  ASSERT_TRUE(p->Signal(SIGUSR1).has_value());
  auto r = p->Wait();
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->stdout_data, "got-usr1\n");
  EXPECT_EQ(r->exit_code, 5);

  auto q = Start("sleep 1000");
  ASSERT_NE(q, nullptr);
  ASSERT_TRUE(q->Kill().has_value());
  r = q->Wait();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->outcome, ExecResult::Outcome::kSignaled);
  EXPECT_EQ(r->signal, SIGKILL);
  EXPECT_FALSE(p->Signal(0).has_value());
}

TEST_F(StreamTest, OneProcessTimesOutWhileItsSiblingsGoOn) {
  ExecOptions short_timeout;
  short_timeout.timeout = std::chrono::milliseconds(800);
  auto doomed = Start("sleep 100", short_timeout);
  auto sibling = Start("sleep 2; echo survived");
  ASSERT_NE(doomed, nullptr);
  ASSERT_NE(sibling, nullptr);
  auto d = doomed->Wait();
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->outcome, ExecResult::Outcome::kTimedOut);
  auto s = sibling->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->stdout_data, "survived\n");
  EXPECT_EQ(s->outcome, ExecResult::Outcome::kExited);
}

TEST_F(StreamTest, ASlowReaderDoesNotStallOtherProcesses) {
  // Produces far more than a window and is not read for a while.
  ExecOptions options;
  options.output_cap = 64 * 1024 * 1024;
  auto flood = Start("head -c 33554432 /dev/zero", options);
  ASSERT_NE(flood, nullptr);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto start = Clock::now();
  auto quick = sandbox_->Execute(Command::Argv({"echo", "unblocked"}));
  ASSERT_TRUE(quick.has_value()) << quick.error().ToString();
  EXPECT_EQ(quick->stdout_data, "unblocked\n");
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  // The flood still arrives whole once read.
  auto r = flood->Wait();
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->stdout_data.size(), 33554432u);
}

TEST_F(StreamTest, HandleOfADestroyedSandboxFailsCleanly) {
  auto own = testing::MustCreate();
  ASSERT_NE(own, nullptr);
  auto p = own->Start(Command::Argv({"sleep", "100"}));
  ASSERT_TRUE(p.has_value());
  std::thread waiter([&] {
    auto r = (*p)->Wait();
    ASSERT_FALSE(r.has_value());
    ASSERT_EQ(r.error().kind(), ErrorKind::kLifecycle) << r.error().ToString();
    EXPECT_TRUE(r.error().lifecycle()->Is<LifecycleError::Destroyed>());
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(own->Destroy().has_value());
  waiter.join();
  EXPECT_FALSE((*p)->WriteStdin("x").has_value());
  auto after = own->Start(Command::Argv({"true"}));
  ASSERT_FALSE(after.has_value());
  EXPECT_TRUE(after.error().lifecycle()->Is<LifecycleError::Destroyed>());
}

}  // namespace
}  // namespace vessel
