// The host's AgentClient against a hostile fake guest agent on the other end of a
// socketpair. Every test runs the agent on its own thread and joins it.
#include "sandbox/agent_client.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/io.h"
#include "base/unique_fd.h"

namespace vessel::sandbox {
namespace {

namespace proto = vessel::protocol;
using namespace std::chrono_literals;
using Bytes = std::vector<uint8_t>;

// Generous limits for the agent side, so a broken host never hangs the test run.
constexpr auto kAgentPatience = 10s;

Bytes ToBytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

// Agent-side send. The host may already have given up and closed its end, so a failed
// write is not the agent's test failure; the host's result is what each test asserts.
void Send(int fd, const Bytes& bytes) {
  (void)WriteAll(fd, bytes, Deadline::After(kAgentPatience), "fake agent send");
}

// Agent-side receive of one frame; nullopt on EOF, timeout or a malformed stream.
std::optional<proto::Frame> Receive(int fd, proto::FrameReader& reader) {
  Deadline deadline = Deadline::After(kAgentPatience);
  for (;;) {
    auto next = reader.Next();
    if (!next) return std::nullopt;
    if (*next) return std::move(**next);
    uint8_t buf[4096];
    auto n = ReadSome(fd, buf, deadline, "fake agent receive");
    if (!n || *n == 0) return std::nullopt;
    reader.Feed({buf, *n});
  }
}

// Blocks until the host closes its end (or the patience runs out).
void AwaitHostClose(int fd) {
  Deadline deadline = Deadline::After(kAgentPatience);
  uint8_t buf[4096];
  for (;;) {
    auto n = ReadSome(fd, buf, deadline, "fake agent waiting for close");
    if (!n || *n == 0) return;
  }
}

// What the fake agent saw of an Exec frame.
struct Received {
  uint32_t request_id = 0;
  proto::ExecRequest request;
};

// Reads the host's Exec frame and decodes it; the test asserts on it after the join.
std::optional<Received> ReceiveExec(int fd, proto::FrameReader& reader) {
  auto frame = Receive(fd, reader);
  if (!frame || frame->header.type != proto::MessageType::kExec) return std::nullopt;
  auto request = proto::DecodeExec(frame->payload);
  if (!request) return std::nullopt;
  return Received{frame->header.request_id, std::move(*request)};
}

Bytes Stdout(uint32_t id, std::string_view s) {
  return proto::EncodeOutput(id, proto::Stream::kStdout, ToBytes(s));
}
Bytes Stderr(uint32_t id, std::string_view s) {
  return proto::EncodeOutput(id, proto::Stream::kStderr, ToBytes(s));
}

class AgentClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    host_.Reset(fds[0]);
    agent_fd_.Reset(fds[1]);
  }
  void TearDown() override { JoinAgent(); }

  // Runs `script(agent_fd)` on the fake agent's thread. The agent's end closes when the
  // script returns.
  template <typename Script>
  void RunAgent(Script script) {
    agent_ = std::thread(
        [fd = std::move(agent_fd_), script = std::move(script)]() mutable { script(fd.get()); });
  }

  // Closes the host's end, which unblocks an agent waiting on it, then joins.
  void JoinAgent() {
    host_.Reset();
    if (agent_.joinable()) agent_.join();
  }

  static proto::ExecRequest Request(std::vector<std::string> argv) {
    proto::ExecRequest request;
    request.argv = std::move(argv);
    request.output_cap = 1024 * 1024;
    return request;
  }

  Result<ExecResult> RunOneCommand(const proto::ExecRequest& request) {
    AgentClient client(host_.get());
    return client.Execute(request, Deadline::After(kAgentPatience));
  }

  UniqueFd host_;
  UniqueFd agent_fd_;
  std::thread agent_;
};

void ExpectBackend(const Error& error, std::string_view needle) {
  EXPECT_EQ(error.kind(), ErrorKind::kBackend) << error.ToString();
  EXPECT_NE(error.message().find(needle), std::string::npos) << error.message();
}

// Hello.

TEST_F(AgentClientTest, AwaitHelloSucceeds) {
  RunAgent([](int fd) {
    Send(fd, proto::EncodeHello({proto::kVersion, "vessel-agent 0.1.0"}));
    AwaitHostClose(fd);
  });
  AgentClient client(host_.get());
  auto hello = client.AwaitHello(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_TRUE(hello.has_value()) << hello.error().ToString();
  EXPECT_EQ(hello->version, proto::kVersion);
  EXPECT_EQ(hello->agent_version, "vessel-agent 0.1.0");
}

TEST_F(AgentClientTest, AwaitHelloSplitIntoSingleBytes) {
  RunAgent([](int fd) {
    Bytes hello = proto::EncodeHello({proto::kVersion, "slow agent"});
    for (uint8_t byte : hello) {
      Send(fd, Bytes{byte});
      std::this_thread::sleep_for(1ms);
    }
    AwaitHostClose(fd);
  });
  AgentClient client(host_.get());
  auto hello = client.AwaitHello(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_TRUE(hello.has_value()) << hello.error().ToString();
  EXPECT_EQ(hello->agent_version, "slow agent");
}

TEST_F(AgentClientTest, WrongProtocolVersion) {
  RunAgent([](int fd) { Send(fd, proto::EncodeHello({proto::kVersion + 1, "future agent"})); });
  AgentClient client(host_.get());
  auto hello = client.AwaitHello(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "protocol version 2");
}

TEST_F(AgentClientTest, FirstFrameNotHello) {
  RunAgent([](int fd) { Send(fd, Stdout(0, "surprise")); });
  AgentClient client(host_.get());
  auto hello = client.AwaitHello(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "other than hello");
}

class AgentClientGarbageTest : public AgentClientTest,
                               public ::testing::WithParamInterface<Bytes> {};

TEST_P(AgentClientGarbageTest, GarbageIsABackendError) {
  RunAgent([garbage = GetParam()](int fd) {
    Send(fd, garbage);
    AwaitHostClose(fd);
  });
  AgentClient client(host_.get());
  auto hello = client.AwaitHello(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  EXPECT_EQ(hello.error().kind(), ErrorKind::kBackend) << hello.error().ToString();
}

Bytes HeaderBytes(uint32_t payload_size, uint8_t type) {
  Bytes b;
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(payload_size >> (8 * i)));
  b.insert(b.end(), {type, 0, 0, 0, 0, 0, 0, 0});
  return b;
}

Bytes Join(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

INSTANTIATE_TEST_SUITE_P(
    Patterns, AgentClientGarbageTest,
    ::testing::Values(ToBytes("GET / HTTP/1.1\r\nHost: guest\r\n\r\n"),  // huge size
                      Bytes(12, 0x00),                                   // type 0
                      Bytes(64, 0xff),                                   // huge size, type 255
                      Bytes{1, 0, 0, 0, 1, 0xff, 0, 0, 0, 0, 0, 0, 0},   // reserved bytes
                      // A hello header around a payload that is not a hello.
                      Join(HeaderBytes(7, 1), ToBytes("garbage")),
                      // A hello whose version string claims 4 GiB.
                      Join(HeaderBytes(8, 1), Bytes{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})));

TEST_F(AgentClientTest, HeaderClaimingFourGigabytes) {
  RunAgent([](int fd) {
    Send(fd, HeaderBytes(0xffffffff, static_cast<uint8_t>(proto::MessageType::kOutput)));
    AwaitHostClose(fd);
  });
  AgentClient client(host_.get());
  auto started = std::chrono::steady_clock::now();
  auto hello = client.AwaitHello(Deadline::After(kAgentPatience));
  auto elapsed = std::chrono::steady_clock::now() - started;
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "exceeds the cap");
  EXPECT_NE(hello.error().message().find("from the guest agent"), std::string::npos);
  // Rejected from the header alone, without waiting for a payload that never comes.
  EXPECT_LT(elapsed, 5s);
}

TEST_F(AgentClientTest, PeerClosesMidFrame) {
  RunAgent([](int fd) {
    Bytes hello = proto::EncodeHello({proto::kVersion, "agent"});
    hello.resize(hello.size() - 3);
    Send(fd, hello);
  });
  AgentClient client(host_.get());
  auto hello = client.AwaitHello(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "mid-frame");
}

TEST_F(AgentClientTest, PeerClosesMidHeader) {
  RunAgent([](int fd) { Send(fd, Bytes{4, 0, 0}); });
  AgentClient client(host_.get());
  auto hello = client.AwaitHello(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "mid-frame");
}

TEST_F(AgentClientTest, PeerClosesCleanly) {
  RunAgent([](int) {});
  AgentClient client(host_.get());
  auto hello = client.AwaitHello(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "channel closed");
  EXPECT_EQ(hello.error().message().find("mid-frame"), std::string::npos)
      << hello.error().message();
}

TEST_F(AgentClientTest, SilenceTimesOutAtTheDeadline) {
  RunAgent([](int fd) { AwaitHostClose(fd); });
  AgentClient client(host_.get());
  auto started = std::chrono::steady_clock::now();
  auto hello = client.AwaitHello(Deadline::After(100ms));
  auto elapsed = std::chrono::steady_clock::now() - started;
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "timed out");
  EXPECT_GE(elapsed, 90ms);
  EXPECT_LT(elapsed, 2s);
}

// Execute.

TEST_F(AgentClientTest, ExecuteDeliversTheRequestAndCollectsOutput) {
  proto::ExecRequest request;
  request.argv = {"/bin/sh", "-c", "printf 'a\\nb'", std::string("\xff\xfe\n\0x", 5)};
  request.env = {"PATH=/usr/bin:/bin", "MULTI=line1\nline2", "EMPTY="};
  request.cwd = "/tmp/some dir";
  request.timeout_ms = 2500;
  request.output_cap = 64;

  std::optional<Received> received;
  RunAgent([&received](int fd) {
    proto::FrameReader reader;
    received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, Stdout(id, "hello\n"));
    Send(fd, Stderr(id, "warning: x\n"));
    Send(fd, Join(Stdout(id, "world\n"), proto::EncodeOutput(id, proto::Stream::kStdout, {})));
    Send(fd, proto::EncodeExited(id, {proto::ExitHow::kExited, 3, false, true}));
    AwaitHostClose(fd);
  });
  auto started = std::chrono::steady_clock::now();
  auto result = RunOneCommand(request);
  auto elapsed = std::chrono::steady_clock::now() - started;
  JoinAgent();

  ASSERT_TRUE(received.has_value()) << "the agent did not get a decodable Exec frame";
  EXPECT_EQ(received->request_id, 1u);
  EXPECT_EQ(received->request.argv, request.argv);
  EXPECT_EQ(received->request.env, request.env);
  EXPECT_EQ(received->request.cwd, request.cwd);
  EXPECT_EQ(received->request.timeout_ms, 2500u);
  EXPECT_EQ(received->request.output_cap, 64u);

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

TEST_F(AgentClientTest, ExecuteSuccessIsOk) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, proto::EncodeExited(id, {proto::ExitHow::kExited, 0, false, false}));
    AwaitHostClose(fd);
  });
  auto result = RunOneCommand(Request({"true"}));
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_TRUE(result->ok());
  EXPECT_EQ(result->stdout_data, "");
  EXPECT_EQ(result->stderr_data, "");
}

TEST_F(AgentClientTest, RequestIdsIncreasePerCommand) {
  std::vector<uint32_t> ids;
  RunAgent([&ids](int fd) {
    proto::FrameReader reader;
    for (int i = 0; i < 3; ++i) {
      auto received = ReceiveExec(fd, reader);
      if (!received) return;
      ids.push_back(received->request_id);
      Send(fd,
           proto::EncodeExited(received->request_id, {proto::ExitHow::kExited, i, false, false}));
    }
    AwaitHostClose(fd);
  });
  AgentClient client(host_.get());
  std::vector<int> codes;
  for (int i = 0; i < 3; ++i) {
    auto result = client.Execute(Request({"cmd"}), Deadline::After(kAgentPatience));
    ASSERT_TRUE(result.has_value()) << result.error().ToString();
    codes.push_back(result->exit_code);
  }
  JoinAgent();
  EXPECT_EQ(ids, (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(codes, (std::vector<int>{0, 1, 2}));
}

TEST_F(AgentClientTest, HelloDuringACommandIsSkipped) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, proto::EncodeHello({proto::kVersion, "restarted"}));
    Send(fd, Stdout(id, "ok"));
    Send(fd, proto::EncodeExited(id, {proto::ExitHow::kExited, 0, false, false}));
    AwaitHostClose(fd);
  });
  auto result = RunOneCommand(Request({"cmd"}));
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->stdout_data, "ok");
}

TEST_F(AgentClientTest, ErrorWithPathIsAGuestFileError) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, proto::EncodeError(id, {2, "/no/such/dir", "No such file or directory"}));
    AwaitHostClose(fd);
  });
  auto result = RunOneCommand(Request({"ls"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().kind(), ErrorKind::kGuestFile) << result.error().ToString();
  EXPECT_EQ(result.error().subject(), "/no/such/dir");
  EXPECT_NE(result.error().message().find("No such file or directory"), std::string::npos);
}

TEST_F(AgentClientTest, ErrorWithoutPathIsABackendError) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, proto::EncodeError(id, {12, "", "fork failed"}));
    AwaitHostClose(fd);
  });
  auto result = RunOneCommand(Request({"ls"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "fork failed");
  EXPECT_EQ(result.error().subject(), "");
}

TEST_F(AgentClientTest, ReplyForAnotherRequestId) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, proto::EncodeExited(id + 41, {proto::ExitHow::kExited, 0, false, false}));
    AwaitHostClose(fd);
  });
  auto result = RunOneCommand(Request({"cmd"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "answered request 42 while 1 was in flight");
}

TEST_F(AgentClientTest, OutputAtTheCapIsAcceptedPerStream) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, Stdout(id, "abcd"));
    Send(fd, Stderr(id, "wx"));
    Send(fd, Stderr(id, "yz"));
    Send(fd, proto::EncodeExited(id, {proto::ExitHow::kExited, 0, true, true}));
    AwaitHostClose(fd);
  });
  proto::ExecRequest request = Request({"cmd"});
  request.output_cap = 4;
  auto result = RunOneCommand(request);
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->stdout_data, "abcd");
  EXPECT_EQ(result->stderr_data, "wxyz");
  EXPECT_TRUE(result->stdout_truncated);
  EXPECT_TRUE(result->stderr_truncated);
}

TEST_F(AgentClientTest, OutputOverTheCap) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, Stdout(id, "abc"));
    Send(fd, Stdout(id, "de"));
    Send(fd, proto::EncodeExited(id, {proto::ExitHow::kExited, 0, false, false}));
    AwaitHostClose(fd);
  });
  proto::ExecRequest request = Request({"cmd"});
  request.output_cap = 4;
  auto result = RunOneCommand(request);
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "more output than the cap");
}

TEST_F(AgentClientTest, SignaledOutcome) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, Stderr(id, "dying"));
    Send(fd, proto::EncodeExited(id, {proto::ExitHow::kSignaled, 9, false, false}));
    AwaitHostClose(fd);
  });
  auto result = RunOneCommand(Request({"cmd"}));
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->outcome, ExecResult::Outcome::kSignaled);
  EXPECT_EQ(result->signal, 9);
  EXPECT_EQ(result->exit_code, 0);
  EXPECT_EQ(result->stderr_data, "dying");
  EXPECT_FALSE(result->ok());
}

TEST_F(AgentClientTest, TimedOutOutcome) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Send(fd, proto::EncodeExited(id, {proto::ExitHow::kTimedOut, 9, true, false}));
    AwaitHostClose(fd);
  });
  proto::ExecRequest request = Request({"sleep", "100"});
  request.timeout_ms = 10;
  auto result = RunOneCommand(request);
  JoinAgent();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(result->outcome, ExecResult::Outcome::kTimedOut);
  EXPECT_EQ(result->signal, 9);
  EXPECT_TRUE(result->stdout_truncated);
  EXPECT_FALSE(result->stderr_truncated);
  EXPECT_FALSE(result->ok());
}

TEST_F(AgentClientTest, MalformedExitStatus) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    uint32_t id = received ? received->request_id : 0;
    Bytes frame = proto::EncodeExited(id, {proto::ExitHow::kExited, 0, false, false});
    frame[proto::kHeaderSize] = 7;  // exit kind
    Send(fd, frame);
    AwaitHostClose(fd);
  });
  auto result = RunOneCommand(Request({"cmd"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "unknown kind");
}

TEST_F(AgentClientTest, UnexpectedFrameType) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    Send(fd, proto::EncodePong(received ? received->request_id : 0));
    AwaitHostClose(fd);
  });
  auto result = RunOneCommand(Request({"cmd"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "unexpected frame type 7");
}

TEST_F(AgentClientTest, PeerClosesDuringACommand) {
  RunAgent([](int fd) {
    proto::FrameReader reader;
    auto received = ReceiveExec(fd, reader);
    Send(fd, Stdout(received ? received->request_id : 0, "partial"));
  });
  auto result = RunOneCommand(Request({"cmd"}));
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "channel closed");
}

TEST_F(AgentClientTest, ExecuteAfterThePeerIsGone) {
  RunAgent([](int) {});
  agent_.join();  // the agent's end is closed before the command is sent
  AgentClient client(host_.get());
  auto result = client.Execute(Request({"cmd"}), Deadline::After(kAgentPatience));
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "closed");
}

TEST_F(AgentClientTest, ExecuteTimesOutWhenTheAgentIsSilent) {
  RunAgent([](int fd) { AwaitHostClose(fd); });
  AgentClient client(host_.get());
  auto started = std::chrono::steady_clock::now();
  auto result = client.Execute(Request({"cmd"}), Deadline::After(100ms));
  auto elapsed = std::chrono::steady_clock::now() - started;
  JoinAgent();
  ASSERT_FALSE(result.has_value());
  ExpectBackend(result.error(), "timed out");
  EXPECT_LT(elapsed, 2s);
}

}  // namespace
}  // namespace vessel::sandbox
