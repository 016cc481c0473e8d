// The supervisor's relay between a control-socket client and the guest agent, against a
// fake agent: no VM, no supervisor process. Also its control requests and their replies,
// which are untrusted input both ways.
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
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "fake_agent.h"
#include "supervisor/state.h"
#include "supervisor/supervisor_protocol.h"

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

  // Answers a network request with a policy of the rules it allows, and refuses one that
  // denies anything.
  supervisor::ControlHandler on_control_ =
      [](const supervisor::ControlRequest& request) -> Result<supervisor::ControlReply> {
    if (request.op != supervisor::ControlRequest::Op::kNetwork) return supervisor::ControlReply{};
    if (!request.deny.empty()) {
      return Fail(Error::InvalidConfig("network", request.deny[0] + " is not in the allowlist"));
    }
    supervisor::NetworkReport report;
    report.policy.allow = request.allow;
    report.stats.refused = 1;
    report.stats.recent_refusals = {"403 example.org: not in this sandbox's allowlist"};
    return supervisor::ControlReply{.network = std::move(report)};
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

// Sends `request` as a new client of its own and returns all the session answered after
// its greeting.
std::string ControlExchange(RawAgent& agent, const supervisor::ControlHandler& on_control,
                            const std::string& request) {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  UniqueFd client(fds[0]);
  supervisor::ClientSession session(agent, on_control, UniqueFd(fds[1]));
  EXPECT_TRUE(WriteAll(client.get(), ToBytes(request), Deadline::After(kAgentPatience), "send")
                  .has_value());
  std::string received;
  std::vector<uint8_t> buf(64 * 1024);
  for (;;) {
    auto n = ReadSome(client.get(), buf, Deadline::After(kAgentPatience), "receive");
    if (!n || *n == 0) break;
    received.append(reinterpret_cast<const char*>(buf.data()), *n);
  }
  if (received.size() < proto::kHeaderSize) return "";
  auto header = proto::DecodeHeader(std::span<const uint8_t, proto::kHeaderSize>(
      reinterpret_cast<const uint8_t*>(received.data()), proto::kHeaderSize));
  EXPECT_TRUE(header.has_value() && header->type == proto::MessageType::kHello);
  return received.substr(proto::kHeaderSize + header->payload_size);
}

TEST_F(ControlProxyTest, ANetworkRequestIsAnsweredWithTheReplyOfItsHandlerThenTheSessionEnds) {
  std::string reply = ControlExchange(*raw_agent_, on_control_,
                                      R"({"op":"network","allow":["example.com"]})"
                                      "\n");
  auto parsed = supervisor::ParseControlReply(reply);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString() << ": " << reply;
  ASSERT_TRUE(parsed->network.has_value()) << reply;
  EXPECT_EQ(parsed->network->policy.allow, std::vector<std::string>{"example.com"});
  EXPECT_EQ(parsed->network->stats.refused, 1u);
  EXPECT_EQ(parsed->network->stats.recent_refusals.size(), 1u);

  reply = ControlExchange(*raw_agent_, on_control_,
                          R"({"op":"network","deny":["nothere.example"]})"
                          "\n");
  parsed = supervisor::ParseControlReply(reply);
  ASSERT_FALSE(parsed.has_value()) << reply;
  EXPECT_EQ(parsed.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(parsed.error().subject(), "network");
  EXPECT_NE(parsed.error().message().find("nothere.example"), std::string::npos);

  // A request that breaks the rules never reaches the handler.
  reply = ControlExchange(*raw_agent_, on_control_,
                          R"({"op":"network","allow":"example.com"})"
                          "\n");
  parsed = supervisor::ParseControlReply(reply);
  ASSERT_FALSE(parsed.has_value()) << reply;
  EXPECT_EQ(parsed.error().subject(), "control request");
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

// Control requests and replies, encoded and parsed without a socket.
namespace control {

using supervisor::ControlReply;
using supervisor::ControlRequest;
using supervisor::NetworkReport;

std::string Line(const std::string& json) { return json + "\n"; }

// The message of the error that parsing `line` as a request gives, "" when it parses.
std::string RequestComplaint(const std::string& line) {
  auto parsed = supervisor::ParseControlRequest(line);
  if (parsed) return "";
  EXPECT_EQ(parsed.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(parsed.error().subject(), "control request");
  return parsed.error().message();
}

TEST(ControlRequestTest, ANetworkRequestRoundTrips) {
  ControlRequest request{.op = ControlRequest::Op::kNetwork,
                         .allow = {"api.example.com", "*.example.org:8080", "[::1]:3000"},
                         .deny = {"127.0.0.1:8080"}};
  auto line = supervisor::EncodeControlRequest(request);
  ASSERT_TRUE(line.has_value()) << line.error().ToString();
  auto parsed = supervisor::ParseControlRequest(*line);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_EQ(parsed->op, ControlRequest::Op::kNetwork);
  EXPECT_EQ(parsed->allow, request.allow);
  EXPECT_EQ(parsed->deny, request.deny);

  // Both lists are optional: without them the request only asks.
  line = supervisor::EncodeControlRequest({.op = ControlRequest::Op::kNetwork});
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ(*line, Line(R"({"op":"network"})"));
  parsed = supervisor::ParseControlRequest(Line(R"({"allow":[],"op":"network","deny":[]})"));
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_TRUE(parsed->allow.empty());
  EXPECT_TRUE(parsed->deny.empty());
}

TEST(ControlRequestTest, ANetworkRequestMayReplaceTheWholeAllowlist) {
  ControlRequest request{
      .op = ControlRequest::Op::kNetwork, .allow = {"pypi.org"}, .replace = true};
  auto line = supervisor::EncodeControlRequest(request);
  ASSERT_TRUE(line.has_value()) << line.error().ToString();
  auto parsed = supervisor::ParseControlRequest(*line);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_TRUE(parsed->replace);
  EXPECT_EQ(parsed->allow, request.allow);
  // Replaced by nothing: no egress.
  parsed = supervisor::ParseControlRequest(Line(R"({"op":"network","replace":true})"));
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_TRUE(parsed->replace);
  EXPECT_TRUE(parsed->allow.empty());

  // A replacement has nothing to deny; replace is a boolean.
  request.deny = {"example.com"};
  EXPECT_FALSE(supervisor::EncodeControlRequest(request).has_value());
  EXPECT_NE(RequestComplaint(Line(R"({"op":"network","replace":true,"deny":["example.com"]})"))
                .find("takes no deny"),
            std::string::npos);
  EXPECT_NE(RequestComplaint(Line(R"({"op":"network","replace":"yes"})"))
                .find("replace wants true or false"),
            std::string::npos);
}

TEST(ControlRequestTest, FieldsAnOpDoesNotDefineAreRefused) {
  EXPECT_NE(RequestComplaint(Line(R"({"op":"network","allow":[],"dir":"/tmp/x"})"))
                .find("unknown field \"dir\" in a network request"),
            std::string::npos);
  EXPECT_NE(RequestComplaint(Line(R"({"op":"network","max_bytes":5})")).find("unknown field"),
            std::string::npos);
  EXPECT_NE(RequestComplaint(Line(R"({"op":"snapshot","dir":"/tmp/x","allow":["a.example"]})"))
                .find("unknown field \"allow\" in a snapshot request"),
            std::string::npos);
}

TEST(ControlRequestTest, RuleListsOfTheWrongTypeAreRefused) {
  for (std::string fields :
       {R"("allow":"example.com")", R"("allow":[1])", R"("deny":null)",
        R"("deny":{"rule":"example.com"})", R"("allow":[true])", R"("allow":["a.example",null])"}) {
    SCOPED_TRACE(fields);
    EXPECT_NE(RequestComplaint(Line(R"({"op":"network",)" + fields + "}"))
                  .find("wants a list of at most 1024 strings"),
              std::string::npos);
  }
  // Lists hold strings, never lists.
  EXPECT_NE(RequestComplaint(Line(R"({"op":"network","allow":[["a.example"]]})"))
                .find("not a JSON object"),
            std::string::npos);
  EXPECT_NE(RequestComplaint(Line(R"({"op":["network"]})")).find("no \"op\" string"),
            std::string::npos);
}

TEST(ControlRequestTest, MoreOrLongerRulesThanARequestCarriesAreRefusedBothWays) {
  std::vector<std::string> most(supervisor::kMaxNetworkRules, "a.example");
  std::vector<std::string> too_many(supervisor::kMaxNetworkRules + 1, "a.example");
  std::string longest(supervisor::kMaxNetworkRuleSize, 'a');
  std::string too_long(supervisor::kMaxNetworkRuleSize + 1, 'a');
  auto as_line = [](const char* key, const std::vector<std::string>& rules) {
    return Line(nlohmann::json{{"op", "network"}, {key, rules}}.dump());
  };
  EXPECT_EQ(RequestComplaint(as_line("allow", most)), "");
  EXPECT_NE(RequestComplaint(as_line("allow", too_many)).find("at most 1024"), std::string::npos);
  EXPECT_NE(RequestComplaint(as_line("deny", too_many)).find("at most 1024"), std::string::npos);
  EXPECT_EQ(RequestComplaint(as_line("deny", {longest})), "");
  EXPECT_NE(RequestComplaint(as_line("deny", {too_long})).find("at most 1024 bytes"),
            std::string::npos);

  // The encoder refuses what the parser would, with the user's words.
  for (const ControlRequest& request :
       {ControlRequest{.op = ControlRequest::Op::kNetwork, .allow = too_many},
        ControlRequest{.op = ControlRequest::Op::kNetwork, .deny = {too_long}},
        ControlRequest{.op = ControlRequest::Op::kNetwork, .allow = {"b\xffgus.example"}}}) {
    auto line = supervisor::EncodeControlRequest(request);
    ASSERT_FALSE(line.has_value());
    EXPECT_EQ(line.error().kind(), ErrorKind::kInvalidConfig);
    EXPECT_EQ(line.error().subject(), "network");
  }
}

TEST(ControlRequestTest, TheLargestNetworkRequestFitsAndALongerLineIsRefused) {
  std::vector<std::string> full(supervisor::kMaxNetworkRules,
                                std::string(supervisor::kMaxNetworkRuleSize, 'a'));
  auto line = supervisor::EncodeControlRequest(
      {.op = ControlRequest::Op::kNetwork, .allow = full, .deny = full});
  ASSERT_TRUE(line.has_value()) << line.error().ToString();
  EXPECT_LE(line->size(), supervisor::kMaxControlRequestSize);
  auto parsed = supervisor::ParseControlRequest(*line);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_EQ(parsed->deny.size(), supervisor::kMaxNetworkRules);

  std::string oversize = R"({"op":"network","allow":[")" +
                         std::string(supervisor::kMaxControlRequestSize, 'a') + "\"]}\n";
  EXPECT_NE(RequestComplaint(oversize).find("longer than"), std::string::npos);
}

NetworkReport SampleReport() {
  NetworkReport report;
  report.policy = {.allow = {"example.com", "*.example.org:8080", "[::1]:3000"},
                   .max_connections = 16,
                   .idle_timeout = std::chrono::seconds(90),
                   .max_bytes = 1ull << 40};
  report.stats = {.allowed = 5,
                  .refused = 2,
                  .bytes_sent = 1234,
                  .bytes_received = 1ull << 33,
                  .open = 1,
                  .recent_refusals = {"403 example.net: not in this sandbox's allowlist",
                                      "502 example.com resolved to 10.0.0.5, a private address"}};
  return report;
}

void ExpectSameReport(const NetworkReport& a, const NetworkReport& b) {
  EXPECT_EQ(a.policy.allow, b.policy.allow);
  EXPECT_EQ(a.policy.max_connections, b.policy.max_connections);
  EXPECT_EQ(a.policy.idle_timeout, b.policy.idle_timeout);
  EXPECT_EQ(a.policy.max_bytes, b.policy.max_bytes);
  EXPECT_EQ(a.stats.allowed, b.stats.allowed);
  EXPECT_EQ(a.stats.refused, b.stats.refused);
  EXPECT_EQ(a.stats.bytes_sent, b.stats.bytes_sent);
  EXPECT_EQ(a.stats.bytes_received, b.stats.bytes_received);
  EXPECT_EQ(a.stats.open, b.stats.open);
  EXPECT_EQ(a.stats.recent_refusals, b.stats.recent_refusals);
}

TEST(ControlReplyTest, ANetworkReplyRoundTrips) {
  NetworkReport report = SampleReport();
  std::string line = supervisor::EncodeControlReply(ControlReply{.network = report});
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  auto parsed = supervisor::ParseControlReply(line);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  ASSERT_TRUE(parsed->network.has_value());
  ExpectSameReport(*parsed->network, report);

  // The reply's object is what `vessel net --json` prints.
  auto object = nlohmann::json::parse(supervisor::EncodeNetworkReport(report, 2));
  EXPECT_EQ(object, nlohmann::json::parse(line)["network"]);
  EXPECT_EQ(object["idle_timeout_s"], 90);
  EXPECT_EQ(object["allow"][1], "*.example.org:8080");

  // A snapshot's success carries nothing; an error comes back as it was.
  parsed = supervisor::ParseControlReply(supervisor::EncodeControlReply(ControlReply{}));
  ASSERT_TRUE(parsed.has_value());
  EXPECT_FALSE(parsed->network.has_value());
  parsed = supervisor::ParseControlReply(supervisor::EncodeControlReply(
      Fail(Error::InvalidConfig("network", "nothere.example is not in the allowlist"))));
  ASSERT_FALSE(parsed.has_value());
  EXPECT_EQ(parsed.error().ToString(),
            "invalid config: network: nothere.example is not in the allowlist");
}

TEST(ControlReplyTest, TheLargestNetworkReplyFitsAndRefusalsAreClipped) {
  NetworkReport report;
  report.policy.allow.assign(supervisor::kMaxNetworkRules,
                             std::string(supervisor::kMaxNetworkRuleSize, 'a'));
  // Refusals beyond the reply's count and size are dropped, oldest first, and clipped.
  for (size_t i = 0; i < supervisor::kMaxReportedRefusals + 3; ++i) {
    report.stats.recent_refusals.push_back(std::to_string(i) +
                                           std::string(2 * supervisor::kMaxRefusalSize, '\x1b'));
  }
  std::string line = supervisor::EncodeControlReply(ControlReply{.network = report});
  EXPECT_LE(line.size(), supervisor::kMaxControlReplySize);
  auto parsed = supervisor::ParseControlReply(line);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  ASSERT_TRUE(parsed->network.has_value());
  EXPECT_EQ(parsed->network->policy.allow.size(), supervisor::kMaxNetworkRules);
  const auto& refusals = parsed->network->stats.recent_refusals;
  ASSERT_EQ(refusals.size(), supervisor::kMaxReportedRefusals);
  EXPECT_EQ(refusals.front().substr(0, 1), "3");
  for (const auto& refusal : refusals) EXPECT_EQ(refusal.size(), supervisor::kMaxRefusalSize);
}

TEST(ControlReplyTest, HostileRepliesAreBackendErrorsNeverCrashes) {
  nlohmann::json good = nlohmann::json::parse(
      supervisor::EncodeControlReply(ControlReply{.network = SampleReport()}));
  std::vector<std::string> hostile;
  auto with = [&](const std::function<void(nlohmann::json&)>& change) {
    nlohmann::json reply = good;
    change(reply);
    hostile.push_back(Line(reply.dump()));
  };
  with([](auto& r) { r["network"] = "everything"; });
  with([](auto& r) { r["network"] = nullptr; });
  with([](auto& r) { r["network"].erase("allow"); });
  with([](auto& r) { r["network"].erase("recent_refusals"); });
  with([](auto& r) { r["network"]["allow"] = "example.com"; });
  with([](auto& r) { r["network"]["allow"] = {1, 2}; });
  with([](auto& r) { r["network"]["allow"] = {{"nested"}}; });
  with([](auto& r) { r["network"]["max_connections"] = -1; });
  with([](auto& r) { r["network"]["max_connections"] = 1ull << 32; });
  with([](auto& r) { r["network"]["open"] = 1.5; });
  with([](auto& r) { r["network"]["refused"] = "many"; });
  with([](auto& r) { r["network"]["idle_timeout_s"] = std::numeric_limits<uint64_t>::max(); });
  with([](auto& r) {
    r["network"]["allow"] = std::vector<std::string>(supervisor::kMaxNetworkRules + 1, "a");
  });
  with([](auto& r) {
    r["network"]["allow"] = {std::string(supervisor::kMaxNetworkRuleSize + 1, 'a')};
  });
  with([](auto& r) {
    r["network"]["recent_refusals"] =
        std::vector<std::string>(supervisor::kMaxReportedRefusals + 1, "403 x");
  });
  with([](auto& r) {
    r["network"]["recent_refusals"] = {std::string(supervisor::kMaxRefusalSize + 1, 'x')};
  });
  hostile.push_back(Line(R"({"ok":true,"network":{"allow":[[[[[["deep"]]]]]]}})"));
  hostile.push_back(Line(R"({"ok":true,"network":{"allow":["a")" +
                         std::string(supervisor::kMaxControlReplySize, 'a') + "\"]}}"));
  hostile.push_back(Line(R"({"ok":true,"network":{)"));
  hostile.push_back(R"({"ok":true})");  // no newline
  for (const auto& line : hostile) {
    SCOPED_TRACE(line.substr(0, 200));
    auto parsed = supervisor::ParseControlReply(line);
    ASSERT_FALSE(parsed.has_value());
    EXPECT_EQ(parsed.error().kind(), ErrorKind::kBackend);
    EXPECT_LT(parsed.error().message().size(), 512u) << "the error quotes a clipped reply";
  }
  // Fields it does not know are ignored, as in the rest of the reply.
  nlohmann::json newer = good;
  newer["network"]["dns_queries"] = 7;
  newer["elapsed_ms"] = 3;
  auto parsed = supervisor::ParseControlReply(Line(newer.dump()));
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  ExpectSameReport(*parsed->network, SampleReport());
}

}  // namespace control

}  // namespace
}  // namespace vessel::sandbox::test
