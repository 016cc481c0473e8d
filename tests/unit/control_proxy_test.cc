// The supervisor's relay between a control-socket client and the guest agent, against a
// fake agent: no VM, no supervisor process.
#include "supervisor/control_proxy.h"

#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "fake_agent.h"
#include "supervisor/state.h"

namespace vessel::sandbox::test {
namespace {

class FakeRawAgent final : public RawAgent {
 public:
  explicit FakeRawAgent(std::shared_ptr<Connection> connection)
      : connection_(std::move(connection)) {}
  std::string version() const override { return "fake-agent 1"; }
  Result<std::shared_ptr<Connection>> Begin(Operation) override { return connection_; }

 private:
  std::shared_ptr<Connection> connection_;
};

proto::ExecRequest Exec(std::string program) { return {.argv = {std::move(program)}}; }

class ControlProxyTest : public AgentChannelTest {
 protected:
  void SetUp() override {
    ::signal(SIGPIPE, SIG_IGN);
    AgentChannelTest::SetUp();
    StartConnection();
    raw_agent_ = std::make_unique<FakeRawAgent>(connection_);
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    client_ = FakeAgent(UniqueFd(fds[0]));
    session_ =
        std::make_unique<supervisor::ClientSession>(*raw_agent_, on_control_, UniqueFd(fds[1]));
    auto hello = client_.Receive(proto::MessageType::kHello);
    ASSERT_TRUE(hello.has_value());
    EXPECT_EQ(hello->header.request_id, 0u);
  }
  void TearDown() override {
    session_.reset();
    AgentChannelTest::TearDown();
  }

  bool SessionFinishes() {
    auto until = std::chrono::steady_clock::now() + kAgentPatience;
    while (!session_->finished()) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::sleep_for(10ms);
    }
    return true;
  }

  supervisor::ControlHandler on_control_ = [](const supervisor::ControlRequest&) {
    return Result<void>();
  };
  std::unique_ptr<FakeRawAgent> raw_agent_;
  FakeAgent client_;  // the client's end, speaking frames
  std::unique_ptr<supervisor::ClientSession> session_;
};

TEST_F(ControlProxyTest, RelaysARequestBothWaysWithItsOwnIds) {
  RunAgent([](FakeAgent& agent) {
    auto exec = agent.ReceiveExec();
    ASSERT_TRUE(exec.has_value());
    EXPECT_EQ(exec->second.argv, std::vector<std::string>{"cat"});
    uint32_t id = exec->first;
    agent.Send(proto::EncodeStarted(id, {42}));
    auto stdin_frame = agent.Receive(proto::MessageType::kStdin);
    ASSERT_TRUE(stdin_frame.has_value());
    EXPECT_EQ(stdin_frame->header.request_id, id);
    agent.Send(Stdout(id, ToText(stdin_frame->payload)));
    agent.Send(ExitedWith(id, 3));
  });
  client_.Send(proto::EncodeExec(7, Exec("cat")));
  auto started = client_.Receive(proto::MessageType::kStarted);
  ASSERT_TRUE(started.has_value());
  EXPECT_EQ(started->header.request_id, 7u);
  client_.Send(proto::EncodeStdin(7, ToBytes("hello")));
  auto output = client_.Receive(proto::MessageType::kOutput);
  ASSERT_TRUE(output.has_value());
  EXPECT_EQ(output->header.request_id, 7u);
  EXPECT_EQ(ToText(proto::DecodeOutput(output->payload)->data), "hello");
  auto exited = client_.Receive(proto::MessageType::kExited);
  ASSERT_TRUE(exited.has_value());
  EXPECT_EQ(exited->header.request_id, 7u);
  EXPECT_EQ(proto::DecodeExited(exited->payload)->code, 3);
  // The session answers pings itself.
  client_.Send(proto::EncodePing(9));
  auto pong = client_.Receive(proto::MessageType::kPong);
  ASSERT_TRUE(pong.has_value());
  EXPECT_EQ(pong->header.request_id, 9u);
}

TEST_F(ControlProxyTest, AClientThatHangsUpMidRequestHasItKilled) {
  std::optional<int32_t> signal;
  RunAgent([&signal](FakeAgent& agent) {
    uint32_t id = agent.AcceptExec();
    ASSERT_NE(id, 0u);
    auto frame = agent.Receive(proto::MessageType::kSignal);
    ASSERT_TRUE(frame.has_value());
    EXPECT_EQ(frame->header.request_id, id);
    signal = proto::DecodeSignal(frame->payload).value_or(0);
  });
  client_.Send(proto::EncodeExec(1, Exec("sleep")));
  ASSERT_TRUE(client_.Receive(proto::MessageType::kStarted).has_value());
  client_.Close();
  EXPECT_TRUE(SessionFinishes());
  JoinAgent();
  EXPECT_EQ(signal, SIGKILL);
}

TEST_F(ControlProxyTest, AMalformedFrameFromTheClientEndsItsSession) {
  RunAgent([](FakeAgent& agent) {
    // Nothing of the client's reaches the agent.
    EXPECT_FALSE(agent.Receive(500ms).has_value());
  });
  client_.Send(
      HeaderBytes(proto::kMaxPayload + 1, static_cast<uint8_t>(proto::MessageType::kExec), 1));
  EXPECT_FALSE(client_.Receive().has_value()) << "the session hangs up";
  EXPECT_TRUE(SessionFinishes());
}

TEST_F(ControlProxyTest, AFrameTypeOnlyTheSupervisorSendsEndsTheSession) {
  client_.Send(proto::EncodeQuiesce(3));
  EXPECT_FALSE(client_.Receive().has_value());
  EXPECT_TRUE(SessionFinishes());
}

TEST_F(ControlProxyTest, ManyConcurrentRequestsEachGetTheirOwnAnswers) {
  constexpr uint32_t kRequests = 100;
  RunAgent([](FakeAgent& agent) {
    std::vector<std::pair<uint32_t, std::string>> execs;
    for (uint32_t i = 0; i < kRequests; ++i) {
      auto exec = agent.ReceiveExec();
      ASSERT_TRUE(exec.has_value());
      execs.emplace_back(exec->first, exec->second.argv.at(0));
    }
    // Answered out of order, interleaved.
    for (auto it = execs.rbegin(); it != execs.rend(); ++it)
      agent.Send(Stdout(it->first, it->second));
    for (const auto& [id, word] : execs) agent.Send(ExitedWith(id, 0));
  });
  for (uint32_t i = 1; i <= kRequests; ++i) {
    client_.Send(proto::EncodeExec(i, Exec("word" + std::to_string(i))));
  }
  std::map<uint32_t, std::string> outputs;
  std::set<uint32_t> exited;
  while (exited.size() < kRequests) {
    auto frame = client_.Receive();
    ASSERT_TRUE(frame.has_value());
    uint32_t id = frame->header.request_id;
    if (frame->header.type == proto::MessageType::kOutput) {
      EXPECT_FALSE(exited.contains(id)) << "output after exit";
      outputs[id] = ToText(proto::DecodeOutput(frame->payload)->data);
    } else {
      ASSERT_EQ(frame->header.type, proto::MessageType::kExited);
      exited.insert(id);
    }
  }
  ASSERT_EQ(outputs.size(), kRequests);
  for (const auto& [id, text] : outputs) EXPECT_EQ(text, "word" + std::to_string(id));
}

// A client of another user reaches the listener only where the socket's directory lets it
// (never the private runtime directory); even then the server hangs up on it unheard.
TEST_F(ControlProxyTest, TheServerHangsUpOnAClientOfAnotherUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to run a client as another user";
  char pattern[] = "/tmp/vessel-peer-test-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  std::string dir = pattern;
  ASSERT_EQ(::chmod(dir.c_str(), 0777), 0);
  std::string path = dir + "/control.sock";
  auto listener = supervisor::ListenControl(path);
  ASSERT_TRUE(listener.has_value()) << listener.error().ToString();
  ASSERT_EQ(::chmod(path.c_str(), 0777), 0);
  supervisor::ControlServer server(*raw_agent_, on_control_, std::move(*listener));
  pid_t client = ::fork();
  if (client == 0) {
    // Exits 0 when the server closed the connection without a byte.
    if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(2);
    }
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof(address.sun_path), "%s", path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) ::_exit(3);
    char byte;
    ::_exit(::read(fd, &byte, 1) == 0 ? 0 : 4);
  }
  int status = 0;
  for (int i = 0; i < 500 && ::waitpid(client, &status, WNOHANG) == 0; ++i) {
    server.AcceptPending();
    std::this_thread::sleep_for(10ms);
  }
  if (::waitpid(client, &status, WNOHANG) == 0) {
    ::kill(client, SIGKILL);
    ::waitpid(client, &status, 0);
  }
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "2: setuid failed, 3: connect failed, 4: the server spoke to it";
}

}  // namespace
}  // namespace vessel::sandbox::test
