// A hostile fake guest agent on the other end of a socketpair, and a fixture that wires it
// to a host Connection. The agent runs either on a thread of its own (RunAgent) or on the
// test thread while the host's side runs elsewhere; every thread is joined before the
// test ends.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/deadline.h"
#include "base/io.h"
#include "base/unique_fd.h"
#include "protocol/wire.h"
#include "sandbox/connection.h"

namespace vessel::sandbox::test {

namespace proto = vessel::protocol;
using namespace std::chrono_literals;
using Bytes = std::vector<uint8_t>;

// Generous limits for the agent side, so a broken host never hangs the test run.
inline constexpr auto kAgentPatience = 10s;

inline Bytes ToBytes(std::string_view s) { return Bytes(s.begin(), s.end()); }
inline std::string ToText(std::span<const uint8_t> b) { return std::string(b.begin(), b.end()); }

inline Bytes Join(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A frame header with any size and type, for frames the encoders refuse to make.
inline Bytes HeaderBytes(uint32_t payload_size, uint8_t type, uint32_t request_id = 0) {
  Bytes b;
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(payload_size >> (8 * i)));
  b.insert(b.end(), {type, 0, 0, 0});
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(request_id >> (8 * i)));
  return b;
}

inline Bytes Stdout(uint32_t id, std::string_view s) {
  return proto::EncodeOutput(id, proto::Stream::kStdout, ToBytes(s));
}
inline Bytes Stderr(uint32_t id, std::string_view s) {
  return proto::EncodeOutput(id, proto::Stream::kStderr, ToBytes(s));
}
inline Bytes ExitedWith(uint32_t id, int32_t code) {
  return proto::EncodeExited(id, {proto::ExitHow::kExited, code, false, false});
}

// The agent's end of the channel. Used by one thread at a time.
class FakeAgent {
 public:
  FakeAgent() = default;
  explicit FakeAgent(UniqueFd fd) : fd_(std::move(fd)) {}

  // The host may already have given up and closed its end, so a failed write is not the
  // agent's test failure; the host's result is what each test asserts.
  void Send(std::span<const uint8_t> bytes) {
    (void)WriteAll(fd_.get(), bytes, Deadline::After(kAgentPatience), "fake agent send");
  }
  void SendHello(std::string version = "fake-agent 1") {
    Send(proto::EncodeHello({proto::kVersion, std::move(version)}));
  }
  // The Hello that answers a Resume.
  void SendHelloFor(uint32_t resume_id, std::string version = "fake-agent 1") {
    Send(proto::EncodeHello(resume_id, {proto::kVersion, std::move(version)}));
  }

  // The next frame from the host; nullopt on EOF, timeout or a malformed stream. A
  // timeout keeps a partial frame for the next call.
  std::optional<proto::Frame> Receive(std::chrono::milliseconds patience = kAgentPatience) {
    Deadline deadline = Deadline::After(patience);
    for (;;) {
      auto next = reader_.Next();
      if (!next) return std::nullopt;
      if (*next) return std::move(**next);
      uint8_t buf[64 * 1024];
      auto n = ReadSome(fd_.get(), buf, deadline, "fake agent receive");
      if (!n || *n == 0) return std::nullopt;
      reader_.Feed({buf, *n});
    }
  }

  // The next frame when it has `type`, else nullopt (a frame of another type is consumed).
  std::optional<proto::Frame> Receive(proto::MessageType type,
                                      std::chrono::milliseconds patience = kAgentPatience) {
    auto frame = Receive(patience);
    if (!frame || frame->header.type != type) return std::nullopt;
    return frame;
  }

  // The host's next Exec request and its id, or nullopt when the next frame is not one.
  std::optional<std::pair<uint32_t, proto::ExecRequest>> ReceiveExec() {
    auto frame = Receive(proto::MessageType::kExec);
    if (!frame) return std::nullopt;
    auto request = proto::DecodeExec(frame->payload);
    if (!request) return std::nullopt;
    return std::pair{frame->header.request_id, std::move(*request)};
  }

  // Receives an Exec and confirms its start; returns the request id (0 when none came).
  uint32_t AcceptExec(int32_t pid = 42) {
    auto exec = ReceiveExec();
    if (!exec) return 0;
    Send(proto::EncodeStarted(exec->first, {pid}));
    return exec->first;
  }

  // The id of the host's next Quiesce, or 0 when the next frame is not one.
  uint32_t ReceiveQuiesce() {
    auto frame = Receive(proto::MessageType::kQuiesce);
    if (!frame || !frame->payload.empty()) return 0;
    return frame->header.request_id;
  }
  // Receives a Quiesce and completes it with Done; returns its id (0 when none came).
  uint32_t AcceptQuiesce() {
    uint32_t id = ReceiveQuiesce();
    if (id != 0) Send(proto::EncodeDone(id));
    return id;
  }

  // The host's next Resume and its id, or nullopt when the next frame is not one.
  std::optional<std::pair<uint32_t, proto::ResumeRequest>> ReceiveResume(
      std::chrono::milliseconds patience = kAgentPatience) {
    auto frame = Receive(proto::MessageType::kResume, patience);
    if (!frame) return std::nullopt;
    auto request = proto::DecodeResume(frame->payload);
    if (!request) return std::nullopt;
    return std::pair{frame->header.request_id, std::move(*request)};
  }
  // Receives a Resume and answers it with Hello; returns its id (0 when none came).
  uint32_t AcceptResume() {
    auto resume = ReceiveResume();
    if (!resume) return 0;
    SendHelloFor(resume->first);
    return resume->first;
  }

  // Every frame the host sends until it closes its end (or the patience runs out).
  std::vector<proto::Frame> DrainUntilClose() {
    std::vector<proto::Frame> frames;
    while (auto frame = Receive()) frames.push_back(std::move(*frame));
    return frames;
  }

  void Close() { fd_.Reset(); }

 private:
  UniqueFd fd_;
  proto::FrameReader reader_;
};

// A Connection on one end of a socketpair and a FakeAgent on the other.
class AgentChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    UniqueFd host(fds[0]);
    agent_ = FakeAgent(UniqueFd(fds[1]));
    auto connection = Connection::Open(host.get());
    ASSERT_TRUE(connection.has_value()) << connection.error().ToString();
    // The connection keeps a duplicate; `host` closes here.
    connection_ = std::move(*connection);
  }
  void TearDown() override { JoinAgent(); }

  // Runs `script(agent)` on the fake agent's thread; the agent's end closes when it
  // returns. The test thread must not touch agent_ until JoinAgent().
  void RunAgent(std::function<void(FakeAgent&)> script) {
    agent_thread_ = std::thread([this, script = std::move(script)] {
      script(agent_);
      agent_.Close();
    });
  }

  // Sends a hello and starts the connection, with the test thread as the agent.
  void StartConnection() {
    agent_.SendHello();
    auto hello = connection_->Start(Deadline::After(kAgentPatience));
    ASSERT_TRUE(hello.has_value()) << hello.error().ToString();
  }

  // Shuts the host's end down, which unblocks an agent waiting on it, then joins.
  void JoinAgent() {
    if (connection_) connection_->Shutdown(Error::Backend("the test ended"));
    connection_.reset();
    if (agent_thread_.joinable()) agent_thread_.join();
  }

  std::shared_ptr<Connection> connection_;
  FakeAgent agent_;
  std::thread agent_thread_;
};

inline void ExpectBackend(const Error& error, std::string_view needle) {
  EXPECT_EQ(error.kind(), ErrorKind::kBackend) << error.ToString();
  EXPECT_NE(error.message().find(needle), std::string::npos) << error.message();
}

// A deadline that passed: tested by the flag, never by the message's text.
inline void ExpectTimeout(const Error& error) {
  EXPECT_EQ(error.kind(), ErrorKind::kBackend) << error.ToString();
  EXPECT_TRUE(error.timed_out()) << error.ToString();
  EXPECT_TRUE(error.retryable()) << error.ToString();
}

}  // namespace vessel::sandbox::test
