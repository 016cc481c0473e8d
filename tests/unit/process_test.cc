// StartProcess and the Process handle against a hostile fake guest agent: the request on
// the wire, outcomes, errors, flow control in both directions, signals, and a connection
// that goes away under a handle.
#include "sandbox/process.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fake_agent.h"

namespace vessel::sandbox {
namespace {

using namespace test;

Error DestroyedError() {
  return Error::Lifecycle({LifecycleError::Destroyed{"the sandbox was destroyed"}});
}

void ExpectDestroyed(const Error& error) {
  ASSERT_NE(error.lifecycle(), nullptr) << error.ToString();
  EXPECT_TRUE(error.lifecycle()->Is<LifecycleError::Destroyed>()) << error.ToString();
}

class ProcessTest : public AgentChannelTest {
 protected:
  void SetUp() override {
    AgentChannelTest::SetUp();
    StartConnection();
  }

  // Runs a command to completion, as Sandbox::Execute() does.
  Result<ExecResult> Execute(const Command& command, const ExecOptions& options = {}) {
    auto process = StartProcess(connection_, command, options, /*close_stdin=*/true);
    if (!process) return Fail(std::move(process).error());
    return (*process)->Wait();
  }

  // Starts a command with the test thread as the agent, which confirms the start; the
  // request and its id land in exec_ and id_.
  std::unique_ptr<Process> StartInteractive(const ExecOptions& options = {}) {
    Result<std::unique_ptr<Process>> process = Fail(Error::Backend("not started"));
    std::thread host([&] {
      process = StartProcess(connection_, Command::Argv({"cmd"}), options, /*close_stdin=*/false);
    });
    if (auto exec = agent_.ReceiveExec()) {
      id_ = exec->first;
      exec_ = exec->second;
      agent_.Send(proto::EncodeStarted(id_, {42}));
    }
    host.join();
    EXPECT_TRUE(process.has_value()) << process.error().ToString();
    return process ? std::move(*process) : nullptr;
  }

  uint32_t id_ = 0;
  proto::ExecRequest exec_;
};

// The request and the outcome.

TEST_F(ProcessTest, ExecuteDeliversTheRequestAndCollectsOutput) {
  Command command = Command::Argv({"/bin/sh", "-c", "printf 'a\\nb'", "\xff\xfe\n"});
  ExecOptions options;
  options.env = {"PATH=/usr/bin:/bin", "MULTI=line1\nline2", "EMPTY="};
  options.cwd = "/tmp/some dir";
  options.timeout = 2500ms;
  options.output_cap = 64;

  std::optional<std::pair<uint32_t, proto::ExecRequest>> received;
  RunAgent([&received](FakeAgent& agent) {
    received = agent.ReceiveExec();
    uint32_t id = received ? received->first : 0;
    agent.Send(proto::EncodeStarted(id, {1234}));
    agent.Send(Stdout(id, "hello\n"));
    agent.Send(Stderr(id, "warning: x\n"));
    agent.Send(Join(Stdout(id, "world\n"), proto::EncodeOutput(id, proto::Stream::kStdout, {})));
    agent.Send(proto::EncodeExited(id, {proto::ExitHow::kExited, 3, false, true}));
    agent.DrainUntilClose();
  });
  auto started = std::chrono::steady_clock::now();
  auto process = StartProcess(connection_, command, options, /*close_stdin=*/true);
  ASSERT_TRUE(process.has_value()) << process.error().ToString();
  EXPECT_EQ((*process)->pid(), 1234);
  auto result = (*process)->Wait();
  auto elapsed = std::chrono::steady_clock::now() - started;
  JoinAgent();

  ASSERT_TRUE(received.has_value()) << "the agent did not get a decodable Exec frame";
  EXPECT_EQ(received->first, 1u);
  const proto::ExecRequest& request = received->second;
  EXPECT_EQ(request.argv, command.argv);
  EXPECT_EQ(request.env, options.env);
  EXPECT_EQ(request.cwd, options.cwd);
  EXPECT_EQ(request.timeout_ms, 2500u);
  EXPECT_EQ(request.output_cap, 64u);
  EXPECT_FALSE(request.stdin_pipe);
  EXPECT_EQ(request.window, kStreamWindow);

  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->outcome, ExecResult::Outcome::kExited);
  EXPECT_EQ(result->exit_code, 3);
  EXPECT_EQ(result->signal, 0);
  EXPECT_EQ(result->stdout_data, "hello\nworld\n");
  EXPECT_EQ(result->stderr_data, "warning: x\n");
  EXPECT_FALSE(result->stdout_truncated);
  EXPECT_TRUE(result->stderr_truncated);
  EXPECT_FALSE(result->ok());
  EXPECT_LE(result->duration, elapsed);
}

TEST_F(ProcessTest, ExecuteSuccessIsOk) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.Send(ExitedWith(id, 0));
    agent.DrainUntilClose();
  });
  auto result = Execute(Command::Argv({"true"}));
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_TRUE(result->ok());
  EXPECT_EQ(result->stdout_data, "");
  EXPECT_EQ(result->stderr_data, "");
}

TEST_F(ProcessTest, RequestIdsIncreasePerCommand) {
  std::vector<uint32_t> ids;
  RunAgent([&ids](FakeAgent& agent) {
    for (int i = 0; i < 3; ++i) {
      uint32_t id = agent.AcceptExec();
      if (id == 0) return;
      ids.push_back(id);
      agent.Send(ExitedWith(id, i));
    }
    agent.DrainUntilClose();
  });
  std::vector<int> codes;
  for (int i = 0; i < 3; ++i) {
    auto result = Execute(Command::Argv({"cmd"}));
    ASSERT_TRUE(result.has_value()) << result.error().ToString();
    codes.push_back(result->exit_code);
  }
  JoinAgent();
  EXPECT_EQ(ids, (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(codes, (std::vector<int>{0, 1, 2}));
}

TEST_F(ProcessTest, HelloDuringACommandIsSkipped) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.SendHello("restarted");
    agent.Send(Stdout(id, "ok"));
    agent.Send(ExitedWith(id, 0));
    agent.DrainUntilClose();
  });
  auto result = Execute(Command::Argv({"cmd"}));
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->stdout_data, "ok");
}

TEST_F(ProcessTest, RepliesForOtherRequestIdsAreDropped) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.Send(ExitedWith(id + 41, 7));
    agent.Send(Stdout(id + 1, "not mine"));
    agent.Send(Stdout(id, "mine"));
    agent.Send(ExitedWith(id, 0));
    agent.DrainUntilClose();
  });
  auto result = Execute(Command::Argv({"cmd"}));
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->exit_code, 0);
  EXPECT_EQ(result->stdout_data, "mine");
}

struct GuestErrnoCase {
  int guest_errno;
  GuestFileErrorKind kind;
};

class ProcessGuestFileErrorTest : public ProcessTest,
                                  public ::testing::WithParamInterface<GuestErrnoCase> {};

TEST_P(ProcessGuestFileErrorTest, ErrorWithAPathIsAGuestFileError) {
  int guest_errno = GetParam().guest_errno;
  RunAgent([guest_errno](FakeAgent& agent) {
    auto exec = agent.ReceiveExec();
    agent.Send(proto::EncodeError(exec ? exec->first : 0,
                                  {guest_errno, "/no/such/dir", "the working directory failed"}));
    agent.DrainUntilClose();
  });
  auto process = StartProcess(connection_, Command::Argv({"ls"}), {}, /*close_stdin=*/true);
  JoinAgent();
  ASSERT_FALSE(process.has_value());
  const Error& error = process.error();
  EXPECT_EQ(error.kind(), ErrorKind::kGuestFile) << error.ToString();
  EXPECT_EQ(error.subject(), "/no/such/dir");
  EXPECT_EQ(error.errno_value(), guest_errno);
  EXPECT_EQ(error.guest_file_kind(), GetParam().kind);
  EXPECT_NE(error.message().find("the working directory failed"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(
    Errnos, ProcessGuestFileErrorTest,
    ::testing::Values(GuestErrnoCase{ENOENT, GuestFileErrorKind::kNotFound},
                      GuestErrnoCase{EACCES, GuestFileErrorKind::kPermissionDenied},
                      GuestErrnoCase{ENOTDIR, GuestFileErrorKind::kNotDirectory}));

TEST_F(ProcessTest, ErrorWithoutAPathIsABackendError) {
  RunAgent([](FakeAgent& agent) {
    auto exec = agent.ReceiveExec();
    agent.Send(proto::EncodeError(exec ? exec->first : 0, {12, "", "fork failed"}));
    agent.DrainUntilClose();
  });
  auto result = Execute(Command::Argv({"ls"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "fork failed");
  EXPECT_EQ(result.error().subject(), "");
  EXPECT_FALSE(result.error().guest_file_kind().has_value());
}

TEST_F(ProcessTest, ErrorAfterTheStartEndsTheProcess) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.Send(Stdout(id, "some"));
    agent.Send(proto::EncodeError(id, {EIO, "/dev/vdb", "Input/output error"}));
    agent.DrainUntilClose();
  });
  auto process = StartProcess(connection_, Command::Argv({"cmd"}), {}, /*close_stdin=*/true);
  ASSERT_TRUE(process.has_value()) << process.error().ToString();
  auto output = (*process)->NextEvent();
  auto error = (*process)->NextEvent();
  auto after = (*process)->NextEvent();
  JoinAgent();
  ASSERT_TRUE(output.has_value() && output->has_value());
  EXPECT_EQ((*output)->data, "some");
  ASSERT_FALSE(error.has_value());
  EXPECT_EQ(error.error().guest_file_kind(), GuestFileErrorKind::kIo);
  ASSERT_TRUE(after.has_value()) << after.error().ToString();
  EXPECT_FALSE(after->has_value());
}

TEST_F(ProcessTest, OutputAtTheCapIsAcceptedPerStream) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.Send(Stdout(id, "abcd"));
    agent.Send(Stderr(id, "wx"));
    agent.Send(Stderr(id, "yz"));
    agent.Send(proto::EncodeExited(id, {proto::ExitHow::kExited, 0, true, true}));
    agent.DrainUntilClose();
  });
  ExecOptions options;
  options.output_cap = 4;
  auto result = Execute(Command::Argv({"cmd"}), options);
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->stdout_data, "abcd");
  EXPECT_EQ(result->stderr_data, "wxyz");
  EXPECT_TRUE(result->stdout_truncated);
  EXPECT_TRUE(result->stderr_truncated);
}

TEST_F(ProcessTest, OutputOverTheCap) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.Send(Stdout(id, "abc"));
    agent.Send(Stdout(id, "de"));
    agent.Send(ExitedWith(id, 0));
    agent.DrainUntilClose();
  });
  ExecOptions options;
  options.output_cap = 4;
  auto result = Execute(Command::Argv({"cmd"}), options);
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "more output than the cap");
}

TEST_F(ProcessTest, SignaledOutcome) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.Send(Stderr(id, "dying"));
    agent.Send(proto::EncodeExited(id, {proto::ExitHow::kSignaled, 9, false, false}));
    agent.DrainUntilClose();
  });
  auto result = Execute(Command::Argv({"cmd"}));
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->outcome, ExecResult::Outcome::kSignaled);
  EXPECT_EQ(result->signal, 9);
  EXPECT_EQ(result->exit_code, 0);
  EXPECT_EQ(result->stderr_data, "dying");
  EXPECT_FALSE(result->ok());
}

TEST_F(ProcessTest, TimedOutOutcome) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.Send(proto::EncodeExited(id, {proto::ExitHow::kTimedOut, 9, true, false}));
    agent.DrainUntilClose();
  });
  ExecOptions options;
  options.timeout = 10ms;
  auto result = Execute(Command::Argv({"sleep", "100"}), options);
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->outcome, ExecResult::Outcome::kTimedOut);
  EXPECT_EQ(result->signal, 9);
  EXPECT_TRUE(result->stdout_truncated);
  EXPECT_FALSE(result->stderr_truncated);
  EXPECT_FALSE(result->ok());
}

TEST_F(ProcessTest, MalformedExitStatus) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    Bytes frame = ExitedWith(id, 0);
    frame[proto::kHeaderSize] = 7;  // exit kind
    agent.Send(frame);
    agent.DrainUntilClose();
  });
  auto result = Execute(Command::Argv({"cmd"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "unknown kind");
}

TEST_F(ProcessTest, UnexpectedFrameType) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.Send(proto::EncodePong(id));
    agent.DrainUntilClose();
  });
  auto result = Execute(Command::Argv({"cmd"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "unexpected frame type 7");
}

TEST_F(ProcessTest, PeerClosesDuringACommand) {
  RunAgent([](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    agent.Send(Stdout(id, "partial"));
  });
  auto result = Execute(Command::Argv({"cmd"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "channel closed");
}

TEST_F(ProcessTest, StartAfterThePeerIsGone) {
  agent_.Close();
  auto process = StartProcess(connection_, Command::Argv({"cmd"}), {}, /*close_stdin=*/true);
  ASSERT_FALSE(process.has_value());
  ExpectBackend(process.error(), "closed");
}

TEST_F(ProcessTest, InvalidCommandIsRejectedBeforeAnythingIsSent) {
  auto process = StartProcess(connection_, Command::Argv({}), {}, /*close_stdin=*/true);
  ASSERT_FALSE(process.has_value());
  EXPECT_EQ(process.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_FALSE(agent_.Receive(50ms).has_value());
}

TEST_F(ProcessTest, NextEventTimesOutAndTheProcessGoesOn) {
  auto process = StartInteractive();
  ASSERT_NE(process, nullptr);
  auto started = std::chrono::steady_clock::now();
  auto event = process->NextEvent(100ms);
  auto elapsed = std::chrono::steady_clock::now() - started;
  ASSERT_FALSE(event.has_value());
  ExpectTimeout(event.error());
  EXPECT_GE(elapsed, 90ms);
  EXPECT_LT(elapsed, 2s);

  agent_.Send(Stdout(id_, "late"));
  agent_.Send(ExitedWith(id_, 0));
  auto result = process->Wait();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->stdout_data, "late");
}

// Started must come first.

struct StartReplyCase {
  const char* name;
  std::function<Bytes(uint32_t id)> reply;
  const char* needle;
  bool breaks_connection;
};

class ProcessStartReplyTest : public ProcessTest,
                              public ::testing::WithParamInterface<StartReplyCase> {};

TEST_P(ProcessStartReplyTest, StartFailsCleanly) {
  RunAgent([reply = GetParam().reply](FakeAgent& agent) {
    auto exec = agent.ReceiveExec();
    agent.Send(reply(exec ? exec->first : 0));
    agent.DrainUntilClose();
  });
  auto process = StartProcess(connection_, Command::Argv({"cmd"}), {}, /*close_stdin=*/true);
  auto failure = connection_->failure();
  JoinAgent();
  ASSERT_FALSE(process.has_value());
  ExpectBackend(process.error(), GetParam().needle);
  EXPECT_EQ(failure.has_value(), GetParam().breaks_connection);
}

INSTANTIATE_TEST_SUITE_P(
    Replies, ProcessStartReplyTest,
    ::testing::Values(
        StartReplyCase{"Exited", [](uint32_t id) { return ExitedWith(id, 0); }, "did not confirm",
                       false},
        StartReplyCase{"Output", [](uint32_t id) { return Stdout(id, "early"); }, "did not confirm",
                       false},
        // A process request never gets Done: refused as it arrives.
        StartReplyCase{"Done", [](uint32_t id) { return proto::EncodeDone(id); },
                       "unexpected frame type 15", false},
        StartReplyCase{"MalformedStarted",
                       [](uint32_t id) {
                         return Join(
                             HeaderBytes(3, static_cast<uint8_t>(proto::MessageType::kStarted), id),
                             Bytes{1, 2, 3});
                       },
                       "malformed started", false},
        StartReplyCase{"ZeroPid", [](uint32_t id) { return proto::EncodeStarted(id, {0}); },
                       "pid out of range", false},
        StartReplyCase{"Garbage", [](uint32_t) { return Bytes(64, 0xff); }, "exceeds the cap",
                       true}),
    [](const ::testing::TestParamInfo<StartReplyCase>& param_info) {
      return std::string(param_info.param.name);
    });

// Flow control.

TEST_F(ProcessTest, CreditsFlowAsTheCallerConsumesOutput) {
  auto process = StartInteractive();
  ASSERT_NE(process, nullptr);
  constexpr uint32_t kChunk = kStreamWindow / 16;
  for (proto::Stream stream : {proto::Stream::kStdout, proto::Stream::kStderr}) {
    SCOPED_TRACE(static_cast<int>(stream));
    for (int i = 0; i < 3; ++i) {
      agent_.Send(proto::EncodeOutput(id_, stream, Bytes(kChunk, 'c')));
      auto event = process->NextEvent(kAgentPatience);
      ASSERT_TRUE(event.has_value() && event->has_value());
      EXPECT_EQ((*event)->data.size(), kChunk);
    }
    // Less than a quarter window handed out: no credit yet.
    EXPECT_FALSE(agent_.Receive(100ms).has_value());
    agent_.Send(proto::EncodeOutput(id_, stream, Bytes(kChunk, 'c')));
    auto event = process->NextEvent(kAgentPatience);
    ASSERT_TRUE(event.has_value() && event->has_value());
    auto frame = agent_.Receive(proto::MessageType::kCredit);
    ASSERT_TRUE(frame.has_value());
    EXPECT_EQ(frame->header.request_id, id_);
    auto credit = proto::DecodeCredit(frame->payload);
    ASSERT_TRUE(credit.has_value()) << credit.error().ToString();
    EXPECT_EQ(credit->stream, stream);
    EXPECT_EQ(credit->bytes, kStreamWindow / 4);
  }
  agent_.Send(ExitedWith(id_, 0));
  auto exited = process->NextEvent(kAgentPatience);
  ASSERT_TRUE(exited.has_value() && exited->has_value());
  EXPECT_EQ((*exited)->kind, ProcessEvent::Kind::kExited);
  auto end = process->NextEvent(kAgentPatience);
  ASSERT_TRUE(end.has_value());
  EXPECT_FALSE(end->has_value());
}

TEST_F(ProcessTest, OutputBeyondTheWindowWithoutCredit) {
  // A request of its own marks when the agent's frames have all been routed.
  auto marker = connection_->NewRequest(RequestKind::kFile);  // its Done marks the end
  constexpr int kChunks = static_cast<int>(kStreamWindow / proto::kMaxOutputChunk) + 1;
  RunAgent([marker_id = marker->id()](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    for (int i = 0; i < kChunks; ++i) {
      agent.Send(
          proto::EncodeOutput(id, proto::Stream::kStdout, Bytes(proto::kMaxOutputChunk, 'o')));
    }
    agent.Send(proto::EncodeDone(marker_id));
    agent.Send(ExitedWith(id, 0));
    agent.DrainUntilClose();
  });
  auto process = StartProcess(connection_, Command::Argv({"cmd"}), {}, /*close_stdin=*/true);
  ASSERT_TRUE(process.has_value()) << process.error().ToString();
  ASSERT_TRUE(marker->Next(Deadline::After(kAgentPatience)).has_value());
  uint64_t handed_out = 0;
  std::optional<Error> error;
  for (;;) {
    auto event = (*process)->NextEvent(kAgentPatience);
    if (!event) {
      error = event.error();
      break;
    }
    if (!*event || (*event)->final()) break;
    handed_out += (*event)->data.size();
  }
  JoinAgent();
  ASSERT_TRUE(error.has_value()) << "took " << handed_out << " bytes beyond the window";
  ExpectBackend(*error, "window");
  EXPECT_LE(handed_out, kStreamWindow);
}

TEST_F(ProcessTest, WriteStdinWaitsForCredit) {
  ExecOptions options;
  options.stdin_data = "";
  auto process = StartInteractive(options);
  ASSERT_NE(process, nullptr);
  EXPECT_TRUE(exec_.stdin_pipe);
  EXPECT_EQ(exec_.window, kStreamWindow);

  std::string data(kStreamWindow + 10, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  std::atomic<bool> done = false;
  std::optional<Result<void>> written;
  std::thread writer([&] {
    written = process->WriteStdin(data);
    done = true;
  });
  std::string received;
  while (received.size() < kStreamWindow) {
    auto frame = agent_.Receive(proto::MessageType::kStdin);
    if (!frame) break;
    EXPECT_EQ(frame->header.request_id, id_);
    EXPECT_LE(frame->payload.size(), proto::kMaxPayload);
    received += ToText(frame->payload);
  }
  EXPECT_EQ(received.size(), kStreamWindow);
  // A window is in flight: the writer waits.
  EXPECT_FALSE(agent_.Receive(200ms).has_value());
  EXPECT_FALSE(done.load());
  agent_.Send(proto::EncodeCredit(id_, {proto::Stream::kStdin, proto::kMaxPayload}));
  if (auto rest = agent_.Receive(proto::MessageType::kStdin)) received += ToText(rest->payload);
  writer.join();
  ASSERT_TRUE(written.has_value());
  EXPECT_TRUE(written->has_value()) << written->error().ToString();
  EXPECT_EQ(received, data);

  // Closing sends an empty Stdin frame; after that stdin is gone.
  ASSERT_TRUE(process->CloseStdin());
  auto close = agent_.Receive(proto::MessageType::kStdin);
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ(close->header.request_id, id_);
  EXPECT_TRUE(close->payload.empty());
  auto again = process->WriteStdin("x");
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().kind(), ErrorKind::kInvalidConfig);
  auto close_again = process->CloseStdin();
  ASSERT_FALSE(close_again.has_value());
  EXPECT_EQ(close_again.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_FALSE(agent_.Receive(50ms).has_value());
}

TEST_F(ProcessTest, StdinNotOpenedIsRejected) {
  auto process = StartInteractive();
  ASSERT_NE(process, nullptr);
  EXPECT_FALSE(exec_.stdin_pipe);
  auto written = process->WriteStdin("x");
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().kind(), ErrorKind::kInvalidConfig);
  auto closed = process->CloseStdin();
  ASSERT_FALSE(closed.has_value());
  EXPECT_EQ(closed.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_FALSE(agent_.Receive(50ms).has_value());
}

TEST_F(ProcessTest, ExecuteFeedsStdinThenClosesIt) {
  std::vector<std::string> stdin_frames;
  bool stdin_pipe = false;
  RunAgent([&](FakeAgent& agent) {
    auto exec = agent.ReceiveExec();
    if (!exec) return;
    stdin_pipe = exec->second.stdin_pipe;
    agent.Send(proto::EncodeStarted(exec->first, {7}));
    while (auto frame = agent.Receive(proto::MessageType::kStdin)) {
      stdin_frames.push_back(ToText(frame->payload));
      if (frame->payload.empty()) break;
    }
    agent.Send(Stdout(exec->first, "olleh"));
    agent.Send(ExitedWith(exec->first, 0));
    agent.DrainUntilClose();
  });
  ExecOptions options;
  options.stdin_data = "hello";
  auto result = Execute(Command::Argv({"rev"}), options);
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->stdout_data, "olleh");
  EXPECT_TRUE(stdin_pipe);
  EXPECT_EQ(stdin_frames, (std::vector<std::string>{"hello", ""}));
}

// Signals.

TEST_F(ProcessTest, SignalSendsASignalFrame) {
  auto process = StartInteractive();
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(process->Signal(15));
  ASSERT_TRUE(process->Kill());
  for (int32_t want : {15, 9}) {
    auto frame = agent_.Receive(proto::MessageType::kSignal);
    ASSERT_TRUE(frame.has_value());
    EXPECT_EQ(frame->header.request_id, id_);
    auto signal = proto::DecodeSignal(frame->payload);
    ASSERT_TRUE(signal.has_value()) << signal.error().ToString();
    EXPECT_EQ(*signal, want);
  }
  for (int bad : {0, -1, 65}) {
    auto signal = process->Signal(bad);
    ASSERT_FALSE(signal.has_value());
    EXPECT_EQ(signal.error().kind(), ErrorKind::kInvalidConfig);
  }
  EXPECT_FALSE(agent_.Receive(50ms).has_value());

  // Once the process has ended, a signal has no effect.
  agent_.Send(proto::EncodeExited(id_, {proto::ExitHow::kSignaled, 15, false, false}));
  auto result = process->Wait();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->outcome, ExecResult::Outcome::kSignaled);
  EXPECT_TRUE(process->Signal(15));
  process.reset();
  EXPECT_FALSE(agent_.Receive(50ms).has_value());
}

TEST_F(ProcessTest, DestroyingARunningHandleKillsTheProcess) {
  auto process = StartInteractive();
  ASSERT_NE(process, nullptr);
  process.reset();
  auto frame = agent_.Receive(proto::MessageType::kSignal);
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(frame->header.request_id, id_);
  auto signal = proto::DecodeSignal(frame->payload);
  ASSERT_TRUE(signal.has_value());
  EXPECT_EQ(*signal, 9);
  // Nothing else but credit, which lets the agent drain the dying command's pipes.
  while (auto after = agent_.Receive(100ms)) {
    EXPECT_EQ(after->header.type, proto::MessageType::kCredit);
    EXPECT_EQ(after->header.request_id, id_);
  }
  // Whatever the agent still sends for it is dropped; the connection stays healthy.
  agent_.Send(Stdout(id_, "orphan"));
  agent_.Send(proto::EncodeExited(id_, {proto::ExitHow::kSignaled, 9, false, false}));
  auto next = StartInteractive();
  ASSERT_NE(next, nullptr);
  agent_.Send(ExitedWith(id_, 0));
  auto result = next->Wait();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->stdout_data, "");
}

// The connection goes away under a handle.

TEST_F(ProcessTest, ShutdownWakesEveryWaiterWithItsReason) {
  ExecOptions options;
  options.stdin_data = "";
  auto process = StartInteractive(options);
  ASSERT_NE(process, nullptr);
  std::optional<Result<std::optional<ProcessEvent>>> event;
  std::optional<Result<void>> written;
  std::thread reader([&] { event = process->NextEvent(); });
  std::thread writer([&] { written = process->WriteStdin(std::string(kStreamWindow + 1, 's')); });
  // Once a window has arrived, the writer waits for credit that never comes.
  size_t received = 0;
  while (received < kStreamWindow) {
    auto frame = agent_.Receive(proto::MessageType::kStdin);
    if (!frame) break;
    received += frame->payload.size();
  }
  connection_->Shutdown(DestroyedError());
  reader.join();
  writer.join();

  ASSERT_TRUE(event.has_value());
  ASSERT_FALSE(event->has_value());
  ExpectDestroyed(event->error());
  ASSERT_TRUE(written.has_value());
  ASSERT_FALSE(written->has_value());
  ExpectDestroyed(written->error());
  // Later calls fail the same way instead of hanging.
  auto again = process->NextEvent();
  ASSERT_FALSE(again.has_value());
  ExpectDestroyed(again.error());
  auto write_again = process->WriteStdin("x");
  ASSERT_FALSE(write_again.has_value());
  ExpectDestroyed(write_again.error());
  auto wait = process->Wait();
  ASSERT_FALSE(wait.has_value());
  ExpectDestroyed(wait.error());
  auto started = StartProcess(connection_, Command::Argv({"cmd"}), {}, /*close_stdin=*/true);
  ASSERT_FALSE(started.has_value());
  ExpectDestroyed(started.error());
}

// Many processes on one connection.

TEST_F(ProcessTest, ConcurrentProcessesGetTheirOwnOutput) {
  constexpr int kProcesses = 16;
  constexpr int kRounds = 20;
  auto expected_stdout = [](int tag) {
    std::string s;
    for (int round = 0; round < kRounds; ++round) s += fmt::format("{}:{};", tag, round);
    return s;
  };
  RunAgent([](FakeAgent& agent) {
    std::map<uint32_t, int> tags;  // request id -> the command's tag
    for (int i = 0; i < kProcesses; ++i) {
      auto exec = agent.ReceiveExec();
      if (!exec || exec->second.argv.size() != 2) return;
      tags[exec->first] = std::stoi(exec->second.argv[1]);
      agent.Send(proto::EncodeStarted(exec->first, {100 + tags[exec->first]}));
    }
    // Frames of different requests interleave, in an order unlike the requests'.
    for (int round = 0; round < kRounds; ++round) {
      for (auto it = tags.rbegin(); it != tags.rend(); ++it) {
        agent.Send(Stdout(it->first, fmt::format("{}:{};", it->second, round)));
        agent.Send(Stderr(it->first, std::to_string(it->second)));
      }
    }
    for (const auto& [id, tag] : tags) agent.Send(ExitedWith(id, tag));
    agent.DrainUntilClose();
  });
  std::vector<std::optional<Result<ExecResult>>> results(kProcesses);
  std::vector<int> pids(kProcesses);
  {
    std::vector<std::thread> hosts;
    for (int i = 0; i < kProcesses; ++i) {
      hosts.emplace_back([&, i] {
        auto process = StartProcess(connection_, Command::Argv({"cmd", std::to_string(i)}), {},
                                    /*close_stdin=*/true);
        if (!process) {
          results[static_cast<size_t>(i)].emplace(Fail(std::move(process).error()));
          return;
        }
        pids[static_cast<size_t>(i)] = (*process)->pid();
        results[static_cast<size_t>(i)].emplace((*process)->Wait());
      });
    }
    for (auto& host : hosts) host.join();
  }
  JoinAgent();
  for (int i = 0; i < kProcesses; ++i) {
    SCOPED_TRACE(i);
    const auto& result = results[static_cast<size_t>(i)];
    ASSERT_TRUE(result.has_value());
    ASSERT_TRUE(result->has_value()) << result->error().ToString();
    EXPECT_EQ(pids[static_cast<size_t>(i)], 100 + i);
    EXPECT_EQ((*result)->exit_code, i);
    EXPECT_EQ((*result)->stdout_data, expected_stdout(i));
    std::string stderr_data;
    for (int round = 0; round < kRounds; ++round) stderr_data += std::to_string(i);
    EXPECT_EQ((*result)->stderr_data, stderr_data);
  }
}

}  // namespace
}  // namespace vessel::sandbox
