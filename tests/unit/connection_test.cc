// The host's Connection against a hostile fake guest agent: the hello, routing frames by
// request id, failing every request when the channel breaks, and quiescing and resuming
// the channel around a snapshot.
#include "sandbox/connection.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
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

// Start: the hello.

class ConnectionStartTest : public AgentChannelTest {};

TEST_F(ConnectionStartTest, ReturnsTheHello) {
  RunAgent([](FakeAgent& agent) {
    agent.SendHello("vessel-agent 0.1.0");
    agent.DrainUntilClose();
  });
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_TRUE(hello.has_value()) << hello.error().ToString();
  EXPECT_EQ(hello->version, proto::kVersion);
  EXPECT_EQ(hello->agent_version, "vessel-agent 0.1.0");
}

TEST_F(ConnectionStartTest, HelloSplitIntoSingleBytes) {
  RunAgent([](FakeAgent& agent) {
    Bytes hello = proto::EncodeHello({proto::kVersion, "slow agent"});
    for (uint8_t byte : hello) {
      agent.Send(Bytes{byte});
      std::this_thread::sleep_for(1ms);
    }
    agent.DrainUntilClose();
  });
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_TRUE(hello.has_value()) << hello.error().ToString();
  EXPECT_EQ(hello->agent_version, "slow agent");
}

TEST_F(ConnectionStartTest, WrongProtocolVersion) {
  RunAgent([](FakeAgent& agent) {
    agent.Send(proto::EncodeHello({proto::kVersion + 1, "future agent"}));
    agent.DrainUntilClose();
  });
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), fmt::format("protocol version {}", proto::kVersion + 1));
}

TEST_F(ConnectionStartTest, FirstFrameNotHello) {
  RunAgent([](FakeAgent& agent) { agent.Send(Stdout(0, "surprise")); });
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "other than hello");
}

class ConnectionGarbageTest : public AgentChannelTest,
                              public ::testing::WithParamInterface<Bytes> {};

TEST_P(ConnectionGarbageTest, GarbageInsteadOfAHelloIsABackendError) {
  RunAgent([garbage = GetParam()](FakeAgent& agent) {
    agent.Send(garbage);
    agent.DrainUntilClose();
  });
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  EXPECT_EQ(hello.error().kind(), ErrorKind::kBackend) << hello.error().ToString();
}

// Header-level garbage. (A hello after the first is ignored unread, so a malformed hello
// payload breaks nothing once the connection runs.)
const Bytes kBrokenHeaders[] = {
    ToBytes("GET / HTTP/1.1\r\nHost: guest\r\n\r\n"),  // huge size
    Bytes(12, 0x00),                                   // type 0
    Bytes(64, 0xff),                                   // huge size, type 255
    Bytes{1, 0, 0, 0, 1, 0xff, 0, 0, 0, 0, 0, 0, 0},   // reserved bytes
    HeaderBytes(0, proto::kLastMessageType + 1),       // type past the last
};

INSTANTIATE_TEST_SUITE_P(Patterns, ConnectionGarbageTest,
                         ::testing::Values(kBrokenHeaders[0], kBrokenHeaders[1], kBrokenHeaders[2],
                                           kBrokenHeaders[3], kBrokenHeaders[4],
                                           // A hello header around a payload that is not a hello.
                                           Join(HeaderBytes(7, 1), ToBytes("garbage")),
                                           // A hello whose version string claims 4 GiB.
                                           Join(HeaderBytes(8, 1),
                                                Bytes{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})));

class ConnectionBrokenHeaderTest : public AgentChannelTest,
                                   public ::testing::WithParamInterface<Bytes> {};

TEST_P(ConnectionBrokenHeaderTest, FailsEveryRequestAfterTheHello) {
  StartConnection();
  auto first = connection_->NewRequest(RequestKind::kProcess);
  auto second = connection_->NewRequest(RequestKind::kProcess);
  RunAgent([garbage = GetParam()](FakeAgent& agent) {
    agent.Send(garbage);
    agent.DrainUntilClose();
  });
  auto a = first->Next(Deadline::After(kAgentPatience));
  auto b = second->Next(Deadline::After(kAgentPatience));
  auto failure = connection_->failure();
  JoinAgent();
  ASSERT_FALSE(a.has_value());
  ASSERT_FALSE(b.has_value());
  EXPECT_EQ(a.error().kind(), ErrorKind::kBackend) << a.error().ToString();
  EXPECT_EQ(b.error().message(), a.error().message());
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->message(), a.error().message());
}

INSTANTIATE_TEST_SUITE_P(Patterns, ConnectionBrokenHeaderTest, ::testing::ValuesIn(kBrokenHeaders));

TEST_F(ConnectionStartTest, GarbageInTheSameWriteAsTheHelloBreaksTheConnection) {
  RunAgent([](FakeAgent& agent) {
    agent.Send(Join(proto::EncodeHello({proto::kVersion, "agent"}), Bytes(64, 0xff)));
    agent.DrainUntilClose();
  });
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  ASSERT_TRUE(hello.has_value()) << hello.error().ToString();
  // The garbage is already buffered: no further read may be needed to find it.
  auto frame = connection_->NewRequest(RequestKind::kProcess)->Next(Deadline::After(5s));
  JoinAgent();
  ASSERT_FALSE(frame.has_value());
  ExpectBackend(frame.error(), "exceeds the cap");
}

TEST_F(ConnectionStartTest, HeaderClaimingFourGigabytes) {
  RunAgent([](FakeAgent& agent) {
    agent.Send(HeaderBytes(0xffffffff, static_cast<uint8_t>(proto::MessageType::kOutput)));
    agent.DrainUntilClose();
  });
  auto started = std::chrono::steady_clock::now();
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  auto elapsed = std::chrono::steady_clock::now() - started;
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "exceeds the cap");
  EXPECT_NE(hello.error().message().find("from the guest agent"), std::string::npos);
  // Rejected from the header alone, without waiting for a payload that never comes.
  EXPECT_LT(elapsed, 5s);
}

TEST_F(ConnectionStartTest, PeerClosesMidFrame) {
  RunAgent([](FakeAgent& agent) {
    Bytes hello = proto::EncodeHello({proto::kVersion, "agent"});
    hello.resize(hello.size() - 3);
    agent.Send(hello);
  });
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "mid-frame");
}

TEST_F(ConnectionStartTest, PeerClosesMidHeader) {
  RunAgent([](FakeAgent& agent) { agent.Send(Bytes{4, 0, 0}); });
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "mid-frame");
}

TEST_F(ConnectionStartTest, PeerClosesCleanly) {
  RunAgent([](FakeAgent&) {});
  auto hello = connection_->Start(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "channel closed");
  EXPECT_EQ(hello.error().message().find("mid-frame"), std::string::npos)
      << hello.error().message();
}

TEST_F(ConnectionStartTest, SilenceTimesOutAtTheDeadline) {
  RunAgent([](FakeAgent& agent) { agent.DrainUntilClose(); });
  auto started = std::chrono::steady_clock::now();
  auto hello = connection_->Start(Deadline::After(100ms));
  auto elapsed = std::chrono::steady_clock::now() - started;
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectTimeout(hello.error());
  EXPECT_GE(elapsed, 90ms);
  EXPECT_LT(elapsed, 2s);
}

// Routing, after the hello.

class ConnectionTest : public AgentChannelTest {
 protected:
  void SetUp() override {
    AgentChannelTest::SetUp();
    StartConnection();
  }
};

TEST_F(ConnectionTest, RequestIdsStartAtOneAndIncrease) {
  auto a = connection_->NewRequest(RequestKind::kProcess);
  auto b = connection_->NewRequest(RequestKind::kProcess);
  auto c = connection_->NewRequest(RequestKind::kProcess, /*raw=*/true);
  EXPECT_EQ(a->id(), 1u);
  EXPECT_EQ(b->id(), 2u);
  EXPECT_EQ(c->id(), 3u);
}

TEST_F(ConnectionTest, FramesAreRoutedByRequestIdInOrder) {
  auto a = connection_->NewRequest(RequestKind::kProcess);
  auto b = connection_->NewRequest(RequestKind::kProcess);
  agent_.Send(Stdout(b->id(), "b1"));
  agent_.Send(Stdout(a->id(), "a1"));
  agent_.Send(Stdout(b->id(), "b2"));
  agent_.Send(Stdout(a->id(), "a2"));
  for (const auto& [mailbox, text] : std::vector<std::pair<std::shared_ptr<Mailbox>, std::string>>{
           {a, "a1"}, {a, "a2"}, {b, "b1"}, {b, "b2"}}) {
    auto frame = mailbox->Next(Deadline::After(kAgentPatience));
    ASSERT_TRUE(frame.has_value()) << frame.error().ToString();
    EXPECT_EQ(frame->header.request_id, mailbox->id());
    auto output = proto::DecodeOutput(frame->payload);
    ASSERT_TRUE(output.has_value());
    EXPECT_EQ(ToText(output->data), text);
  }
}

TEST_F(ConnectionTest, UnknownRequestIdsAreDropped) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  agent_.Send(ExitedWith(mailbox->id() + 41, 0));
  agent_.Send(Stdout(0, "for nobody"));
  agent_.Send(proto::EncodeDone(0xffffffff));
  agent_.Send(Stdout(mailbox->id(), "mine"));
  auto frame = mailbox->Next(Deadline::After(kAgentPatience));
  ASSERT_TRUE(frame.has_value()) << frame.error().ToString();
  EXPECT_EQ(frame->header.type, proto::MessageType::kOutput);
  EXPECT_EQ(frame->header.request_id, mailbox->id());
  EXPECT_FALSE(connection_->failure().has_value());
}

TEST_F(ConnectionTest, FramesAfterTheLastFrameOfARequestAreDropped) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  agent_.Send(ExitedWith(mailbox->id(), 0));
  agent_.Send(Stdout(mailbox->id(), "too late"));
  auto exited = mailbox->Next(Deadline::After(kAgentPatience));
  ASSERT_TRUE(exited.has_value()) << exited.error().ToString();
  EXPECT_EQ(exited->header.type, proto::MessageType::kExited);
  EXPECT_TRUE(mailbox->ended());
  auto late = mailbox->Next(Deadline::After(100ms));
  ASSERT_FALSE(late.has_value());
  ExpectTimeout(late.error());
}

TEST_F(ConnectionTest, FramesAfterEndRequestAreDropped) {
  auto ended = connection_->NewRequest(RequestKind::kProcess);
  auto other = connection_->NewRequest(RequestKind::kProcess);
  connection_->EndRequest(ended->id());
  agent_.Send(Stdout(ended->id(), "dropped"));
  agent_.Send(Stdout(other->id(), "kept"));
  auto frame = other->Next(Deadline::After(kAgentPatience));
  ASSERT_TRUE(frame.has_value()) << frame.error().ToString();
  // Routing is in order: the dropped frame came first.
  auto none = ended->Next(Deadline::After(0ms));
  EXPECT_FALSE(none.has_value());
  EXPECT_FALSE(ended->ended());
}

TEST_F(ConnectionTest, HelloAfterTheFirstIsIgnored) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  agent_.SendHello("restarted");
  agent_.Send(Stdout(mailbox->id(), "ok"));
  auto frame = mailbox->Next(Deadline::After(kAgentPatience));
  ASSERT_TRUE(frame.has_value()) << frame.error().ToString();
  EXPECT_EQ(frame->header.type, proto::MessageType::kOutput);
}

TEST_F(ConnectionTest, NextTimesOutAtTheDeadlineAndTheRequestGoesOn) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  auto started = std::chrono::steady_clock::now();
  auto frame = mailbox->Next(Deadline::After(100ms));
  auto elapsed = std::chrono::steady_clock::now() - started;
  ASSERT_FALSE(frame.has_value());
  ExpectTimeout(frame.error());
  EXPECT_GE(elapsed, 90ms);
  EXPECT_LT(elapsed, 2s);
  agent_.Send(ExitedWith(mailbox->id(), 0));
  auto later = mailbox->Next(Deadline::After(kAgentPatience));
  EXPECT_TRUE(later.has_value()) << later.error().ToString();
}

TEST_F(ConnectionTest, PeerClosesMidFrame) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  Bytes frame = Stdout(mailbox->id(), "partial");
  frame.resize(frame.size() - 2);
  agent_.Send(frame);
  agent_.Close();
  auto next = mailbox->Next(Deadline::After(kAgentPatience));
  ASSERT_FALSE(next.has_value());
  ExpectBackend(next.error(), "mid-frame");
}

TEST_F(ConnectionTest, PeerClosesCleanly) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  agent_.Send(Stdout(mailbox->id(), "whole"));
  agent_.Close();
  // Frames that arrived before the close are still delivered, then the failure.
  auto first = mailbox->Next(Deadline::After(kAgentPatience));
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  auto next = mailbox->Next(Deadline::After(kAgentPatience));
  ASSERT_FALSE(next.has_value());
  ExpectBackend(next.error(), "channel closed");
  EXPECT_EQ(next.error().message().find("mid-frame"), std::string::npos);
  auto sent = connection_->Send(proto::EncodePing(9));
  ASSERT_FALSE(sent.has_value());
  ExpectBackend(sent.error(), "channel closed");
}

TEST_F(ConnectionTest, ShutdownFailsEveryRequestWithTheFirstReason) {
  auto waiting = connection_->NewRequest(RequestKind::kProcess);
  std::optional<Result<proto::Frame>> woken;
  std::thread waiter([&] { woken = waiting->Next(Deadline::After(kAgentPatience)); });
  connection_->Shutdown(DestroyedError());
  connection_->Shutdown(Error::Backend("a later reason"));
  waiter.join();

  ASSERT_TRUE(woken.has_value());
  ASSERT_FALSE(woken->has_value());
  ASSERT_NE(woken->error().lifecycle(), nullptr) << woken->error().ToString();
  EXPECT_TRUE(woken->error().lifecycle()->Is<LifecycleError::Destroyed>());
  // Later requests and sends fail the same way, at once.
  auto later = connection_->NewRequest(RequestKind::kProcess);
  auto frame = later->Next(Deadline::Never());
  ASSERT_FALSE(frame.has_value());
  ASSERT_NE(frame.error().lifecycle(), nullptr);
  EXPECT_TRUE(frame.error().lifecycle()->Is<LifecycleError::Destroyed>());
  auto sent = connection_->Send(proto::EncodePing(1));
  ASSERT_FALSE(sent.has_value());
  EXPECT_EQ(sent.error().kind(), ErrorKind::kLifecycle);
  ASSERT_TRUE(connection_->failure().has_value());
  EXPECT_EQ(connection_->failure()->kind(), ErrorKind::kLifecycle);
  // The agent sees the channel close.
  EXPECT_FALSE(agent_.Receive().has_value());
}

TEST_F(ConnectionTest, ConcurrentSendsNeverInterleave) {
  constexpr int kThreads = 8;
  constexpr int kFramesEach = 40;
  std::vector<std::thread> senders;
  std::atomic<int> failures = 0;
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([&, t] {
      Bytes data(20'000 + static_cast<size_t>(t), static_cast<uint8_t>('a' + t));
      for (int i = 0; i < kFramesEach; ++i) {
        if (!connection_->Send(proto::EncodeStdin(static_cast<uint32_t>(t + 1), data))) ++failures;
      }
    });
  }
  int received = 0;
  bool intact = true;
  for (int i = 0; i < kThreads * kFramesEach; ++i) {
    auto frame = agent_.Receive(proto::MessageType::kStdin);
    if (!frame) break;
    uint32_t t = frame->header.request_id - 1;
    intact = intact && frame->payload == Bytes(20'000 + t, static_cast<uint8_t>('a' + t));
    ++received;
  }
  for (auto& sender : senders) sender.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(received, kThreads * kFramesEach);
  EXPECT_TRUE(intact);
}

TEST_F(ConnectionTest, StdinCreditIsConsumedByTheMailbox) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  constexpr uint32_t kWindow = 100;
  ASSERT_TRUE(mailbox->AcquireStdinCredit(60, kWindow, Deadline::After(kAgentPatience)));
  ASSERT_TRUE(mailbox->AcquireStdinCredit(40, kWindow, Deadline::After(kAgentPatience)));
  // The window is full: one more byte waits for credit.
  auto blocked = mailbox->AcquireStdinCredit(1, kWindow, Deadline::After(100ms));
  ASSERT_FALSE(blocked.has_value());
  ExpectBackend(blocked.error(), "did not take it in time");

  std::optional<Result<void>> acquired;
  std::thread writer([&] {
    acquired = mailbox->AcquireStdinCredit(50, kWindow, Deadline::After(kAgentPatience));
  });
  agent_.Send(proto::EncodeCredit(mailbox->id(), {proto::Stream::kStdin, 50}));
  writer.join();
  ASSERT_TRUE(acquired.has_value());
  EXPECT_TRUE(acquired->has_value()) << acquired->error().ToString();
  // The credit was not queued as a frame.
  auto frame = mailbox->Next(Deadline::After(50ms));
  EXPECT_FALSE(frame.has_value());
}

TEST_F(ConnectionTest, ARawMailboxReceivesCreditFrames) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess, /*raw=*/true);
  agent_.Send(proto::EncodeCredit(mailbox->id(), {proto::Stream::kStdin, 7}));
  auto frame = mailbox->Next(Deadline::After(kAgentPatience));
  ASSERT_TRUE(frame.has_value()) << frame.error().ToString();
  EXPECT_EQ(frame->header.type, proto::MessageType::kCredit);
}

TEST_F(ConnectionTest, StdinCreditWaitEndsWithTheRequest) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  ASSERT_TRUE(mailbox->AcquireStdinCredit(10, 10, Deadline::After(kAgentPatience)));
  std::optional<Result<void>> acquired;
  std::thread writer(
      [&] { acquired = mailbox->AcquireStdinCredit(10, 10, Deadline::After(kAgentPatience)); });
  agent_.Send(ExitedWith(mailbox->id(), 0));
  writer.join();
  ASSERT_TRUE(acquired.has_value());
  ASSERT_FALSE(acquired->has_value());
  EXPECT_EQ(acquired->error().kind(), ErrorKind::kLifecycle) << acquired->error().ToString();
}

// What a guest can make the host hold: a frame no request of its kind gets fails that
// request as it arrives; frames outside flow control and the connection's queue as a whole
// have budgets; in every case only the request the frame was for fails.

struct UnexpectedFrameCase {
  const char* name;
  RequestKind kind;
  std::function<Bytes(uint32_t id)> frame;
};

class ConnectionUnexpectedFrameTest : public ConnectionTest,
                                      public ::testing::WithParamInterface<UnexpectedFrameCase> {};

TEST_P(ConnectionUnexpectedFrameTest, FailsOnlyTheRequestItCameFor) {
  auto victim = connection_->NewRequest(GetParam().kind);
  auto bystander = connection_->NewRequest(RequestKind::kProcess);
  agent_.Send(GetParam().frame(victim->id()));
  agent_.Send(GetParam().frame(victim->id()));  // dropped: the request failed already
  agent_.Send(ExitedWith(bystander->id(), 0));
  auto failed = victim->Next(Deadline::After(kAgentPatience));
  ASSERT_FALSE(failed.has_value()) << "queued a frame of type " << static_cast<int>(failed->header.type);
  ExpectBackend(failed.error(), "unexpected frame type");
  auto exited = bystander->Next(Deadline::After(kAgentPatience));
  ASSERT_TRUE(exited.has_value()) << exited.error().ToString();
  EXPECT_EQ(exited->header.type, proto::MessageType::kExited);
  EXPECT_FALSE(connection_->failure().has_value());
}

Bytes OutputOnStream(uint32_t id, uint8_t stream) {
  return Join(HeaderBytes(2, static_cast<uint8_t>(proto::MessageType::kOutput), id),
              Bytes{stream, 'x'});
}

proto::FileInfo Entry(std::string name) {
  return {.type = proto::FileType::kRegular, .mode = 0644, .size = 1, .mtime = 0,
          .name = std::move(name)};
}

INSTANTIATE_TEST_SUITE_P(
    Frames, ConnectionUnexpectedFrameTest,
    ::testing::Values(
        UnexpectedFrameCase{"FileInfoOnAProcess", RequestKind::kProcess,
                            [](uint32_t id) { return proto::EncodeFileInfo(id, Entry("f")); }},
        UnexpectedFrameCase{"FileDataOnAProcess", RequestKind::kProcess,
                            [](uint32_t id) { return proto::EncodeFileData(id, ToBytes("d")); }},
        UnexpectedFrameCase{"DoneOnAProcess", RequestKind::kProcess,
                            [](uint32_t id) { return proto::EncodeDone(id); }},
        UnexpectedFrameCase{"PongOnAProcess", RequestKind::kProcess,
                            [](uint32_t id) { return proto::EncodePong(id); }},
        UnexpectedFrameCase{"HelloOnAProcess", RequestKind::kProcess,
                            [](uint32_t id) { return proto::EncodeHello(id, {}); }},
        UnexpectedFrameCase{"OutputOnAnUnknownStream", RequestKind::kProcess,
                            [](uint32_t id) { return OutputOnStream(id, 7); }},
        UnexpectedFrameCase{"OutputOnStdin", RequestKind::kProcess,
                            [](uint32_t id) { return OutputOnStream(id, 0); }},
        UnexpectedFrameCase{"EmptyOutput", RequestKind::kProcess,
                            [](uint32_t id) {
                              return HeaderBytes(0, static_cast<uint8_t>(proto::MessageType::kOutput),
                                                 id);
                            }},
        UnexpectedFrameCase{"FileCreditOnAProcess", RequestKind::kProcess,
                            [](uint32_t id) {
                              return proto::EncodeCredit(id, {proto::Stream::kFile, 1});
                            }},
        UnexpectedFrameCase{"HostBoundExec", RequestKind::kProcess,
                            [](uint32_t id) {
                              return proto::EncodeExec(id, {.argv = {"sh"}});
                            }},
        UnexpectedFrameCase{"HostBoundStdin", RequestKind::kProcess,
                            [](uint32_t id) { return proto::EncodeStdin(id, ToBytes("in")); }},
        UnexpectedFrameCase{"HostBoundQuiesce", RequestKind::kControl,
                            [](uint32_t id) { return proto::EncodeQuiesce(id); }},
        UnexpectedFrameCase{"StartedOnAFile", RequestKind::kFile,
                            [](uint32_t id) { return proto::EncodeStarted(id, {42}); }},
        UnexpectedFrameCase{"ExitedOnAFile", RequestKind::kFile,
                            [](uint32_t id) { return ExitedWith(id, 0); }},
        UnexpectedFrameCase{"OutputOnAFile", RequestKind::kFile,
                            [](uint32_t id) { return Stdout(id, "out"); }},
        UnexpectedFrameCase{"StdinCreditOnAFile", RequestKind::kFile,
                            [](uint32_t id) {
                              return proto::EncodeCredit(id, {proto::Stream::kStdin, 1});
                            }},
        UnexpectedFrameCase{"OutputOnAQuiesce", RequestKind::kControl,
                            [](uint32_t id) { return Stdout(id, "out"); }},
        UnexpectedFrameCase{"FileInfoOnAQuiesce", RequestKind::kControl,
                            [](uint32_t id) { return proto::EncodeFileInfo(id, Entry("f")); }}),
    [](const ::testing::TestParamInfo<UnexpectedFrameCase>& param) { return param.param.name; });

// Resident memory of this process, in KiB; 0 when unknown.
uint64_t ResidentKiB() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

// Memory a frame flood leaves resident: under ASan, freed memory sits in its quarantine,
// so only an ordinary build can tell.
void ExpectResidentGrowthBelow(uint64_t before_kib, uint64_t limit_mib) {
#if defined(__SANITIZE_ADDRESS__)
  (void)before_kib;
  (void)limit_mib;
#else
  uint64_t after_kib = ResidentKiB();
  EXPECT_LT(after_kib, before_kib + limit_mib * 1024)
      << "resident memory grew from " << before_kib << " KiB to " << after_kib << " KiB";
#endif
}

// Drains `mailbox` to its failure; returns the payload bytes it had queued.
uint64_t DrainToFailure(Mailbox& mailbox, std::string_view needle) {
  uint64_t queued = 0;
  for (;;) {
    auto frame = mailbox.Next(Deadline::After(kAgentPatience));
    if (!frame) {
      ExpectBackend(frame.error(), needle);
      return queued;
    }
    queued += frame->payload.size();
  }
}

TEST_F(ConnectionTest, AFloodOutsideFlowControlFailsOnlyItsRequestAtItsBudget) {
  auto listing = connection_->NewRequest(RequestKind::kFile);
  auto bystander = connection_->NewRequest(RequestKind::kProcess);
  uint64_t before = ResidentKiB();
  // 128 MiB of directory entries that nobody reads: five times the budget.
  constexpr size_t kNameSize = 4000;
  constexpr size_t kEntries = (128u << 20) / kNameSize;
  RunAgent([&, listing_id = listing->id(), bystander_id = bystander->id()](FakeAgent& agent) {
    Bytes entry = proto::EncodeFileInfo(listing_id, Entry(std::string(kNameSize, 'n')));
    for (size_t i = 0; i < kEntries; ++i) agent.Send(entry);
    agent.Send(ExitedWith(bystander_id, 0));
    agent.DrainUntilClose();
  });
  auto exited = bystander->Next(Deadline::After(60s));
  ASSERT_TRUE(exited.has_value()) << exited.error().ToString();
  EXPECT_EQ(exited->header.type, proto::MessageType::kExited);
  ExpectResidentGrowthBelow(before, 64);
  uint64_t queued = DrainToFailure(*listing, "frames outside flow control on one request");
  EXPECT_LE(queued, kMaxUnwindowedBytesPerRequest);
  EXPECT_GT(queued, kMaxUnwindowedBytesPerRequest / 2);
  EXPECT_FALSE(connection_->failure().has_value());
}

TEST_F(ConnectionTest, StrayCreditsAreCountedToo) {
  auto upload = connection_->NewRequest(RequestKind::kFile);
  auto bystander = connection_->NewRequest(RequestKind::kProcess);
  constexpr size_t kBatch = 4096;
  constexpr size_t kCredits = kMaxUnwindowedBytesPerRequest / kQueuedFrameOverhead + kBatch;
  RunAgent([&, id = upload->id(), bystander_id = bystander->id()](FakeAgent& agent) {
    Bytes credit = proto::EncodeCredit(id, {proto::Stream::kFile, 1});
    Bytes batch;
    for (size_t i = 0; i < kBatch; ++i) batch.insert(batch.end(), credit.begin(), credit.end());
    for (size_t sent = 0; sent < kCredits; sent += kBatch) agent.Send(batch);
    agent.Send(ExitedWith(bystander_id, 0));
    agent.DrainUntilClose();
  });
  // Nothing is read from the upload until every credit was routed.
  ASSERT_TRUE(bystander->Next(Deadline::After(60s)).has_value());
  uint64_t credits = 0;
  for (;;) {
    auto frame = upload->TryNext();
    ASSERT_TRUE(frame.has_value()) << "no failure after " << credits << " credits";
    if (!*frame) {
      ExpectBackend(frame->error(), "frames outside flow control");
      break;
    }
    ++credits;
  }
  EXPECT_LT(credits, kCredits);
  EXPECT_FALSE(connection_->failure().has_value());
}

// The connection's budget: requests without a window (a raw relay's client is slow, say)
// together hold at most kMaxQueuedBytesPerConnection; the request whose frame would go
// beyond fails, and the others keep what they have.
TEST_F(ConnectionTest, TheConnectionsQueueHasABudgetAndOnlyTheRequestPastItFails) {
  constexpr size_t kRequests = 4;
  constexpr uint64_t kPerRequest = kMaxQueuedBytesPerConnection / 3;  // the 4th goes beyond
  std::vector<std::shared_ptr<Mailbox>> requests;
  for (size_t i = 0; i < kRequests; ++i) {
    requests.push_back(connection_->NewRequest(RequestKind::kProcess));
  }
  auto bystander = connection_->NewRequest(RequestKind::kProcess);
  std::vector<uint32_t> ids;
  for (auto& request : requests) ids.push_back(request->id());
  RunAgent([&, ids, bystander_id = bystander->id()](FakeAgent& agent) {
    for (uint32_t id : ids) {
      Bytes mine = proto::EncodeOutput(id, proto::Stream::kStdout, Bytes(proto::kMaxOutputChunk, 'o'));
      for (uint64_t sent = 0; sent < kPerRequest; sent += proto::kMaxOutputChunk) agent.Send(mine);
    }
    agent.Send(ExitedWith(bystander_id, 0));
    agent.DrainUntilClose();
  });
  auto exited = bystander->Next(Deadline::After(60s));
  // The bystander's one frame may be past the budget too: it fails alone, clearly.
  if (!exited) ExpectBackend(exited.error(), "its limit");
  uint64_t total = 0;
  size_t failed = 0;
  for (auto& request : requests) {
    uint64_t queued = 0;
    for (;;) {
      auto frame = request->TryNext();
      if (!frame) break;
      if (!*frame) {
        ExpectBackend(frame->error(), "frames that nobody read yet, its limit");
        ++failed;
        break;
      }
      queued += (*frame)->payload.size();
    }
    total += queued;
  }
  EXPECT_GE(failed, 1u);
  EXPECT_LE(failed, 2u);
  EXPECT_LE(total, kMaxQueuedBytesPerConnection);
  EXPECT_FALSE(connection_->failure().has_value());
}

// Quiesce and Resume, on a started connection. The test thread is the agent; the host's
// blocking calls run on threads of their own, joined before anything is asserted.

class ConnectionQuiesceTest : public ConnectionTest {
 protected:
  // Quiesces with the test thread answering as the agent.
  void QuiesceConnection() {
    std::optional<Result<void>> quiesced;
    std::thread quiescer([&] { quiesced = connection_->Quiesce(Deadline::After(kAgentPatience)); });
    uint32_t id = agent_.AcceptQuiesce();
    quiescer.join();
    EXPECT_NE(id, 0u);
    ASSERT_TRUE(quiesced.has_value());
    ASSERT_TRUE(quiesced->has_value()) << quiesced->error().ToString();
  }
};

TEST_F(ConnectionQuiesceTest, SendsQuiesceAfterEarlierFramesAndWaitsForDone) {
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  ASSERT_TRUE(connection_->Send(proto::EncodePing(mailbox->id())));
  std::optional<Result<void>> quiesced;
  std::thread quiescer([&] { quiesced = connection_->Quiesce(Deadline::After(kAgentPatience)); });
  auto ping = agent_.Receive(proto::MessageType::kPing);
  auto quiesce = agent_.Receive(proto::MessageType::kQuiesce);
  if (quiesce) {
    // Frames of other requests are still routed until the Done.
    agent_.Send(Stdout(mailbox->id(), "before the snapshot"));
    agent_.Send(proto::EncodeDone(quiesce->header.request_id));
  }
  quiescer.join();
  ASSERT_TRUE(ping.has_value());
  ASSERT_TRUE(quiesce.has_value());
  EXPECT_TRUE(quiesce->payload.empty());
  EXPECT_NE(quiesce->header.request_id, mailbox->id());
  ASSERT_TRUE(quiesced.has_value());
  EXPECT_TRUE(quiesced->has_value()) << quiesced->error().ToString();
  auto output = mailbox->Next(Deadline::After(kAgentPatience));
  ASSERT_TRUE(output.has_value()) << output.error().ToString();
  EXPECT_EQ(output->header.type, proto::MessageType::kOutput);
}

TEST_F(ConnectionQuiesceTest, HoldsOtherSendersUntilResumeReturns) {
  QuiesceConnection();
  std::atomic<bool> sent = false;
  std::optional<Result<void>> send_result;
  std::thread sender([&] {
    send_result = connection_->Send(proto::EncodePing(77));
    sent = true;
  });
  // Blocked, not failed: nothing reaches the agent.
  auto early = agent_.Receive(200ms);
  bool held_while_quiesced = !sent;

  std::optional<Result<proto::Hello>> resumed;
  std::thread resumer([&] {
    resumed =
        connection_->Resume(MakeResumeRequest(/*clone=*/false), Deadline::After(kAgentPatience));
  });
  // The Resume itself goes out while the senders are held.
  auto resume = agent_.ReceiveResume();
  bool held_until_hello = !sent;
  if (resume) agent_.SendHelloFor(resume->first, "resumed agent");
  resumer.join();
  sender.join();

  EXPECT_FALSE(early.has_value());
  EXPECT_TRUE(held_while_quiesced);
  EXPECT_TRUE(held_until_hello);
  ASSERT_TRUE(resume.has_value());
  EXPECT_FALSE(resume->second.clone);
  EXPECT_EQ(resume->second.entropy.size(), 64u);
  ASSERT_TRUE(resumed.has_value());
  ASSERT_TRUE(resumed->has_value()) << resumed->error().ToString();
  EXPECT_EQ((*resumed)->agent_version, "resumed agent");
  ASSERT_TRUE(send_result.has_value());
  EXPECT_TRUE(send_result->has_value()) << send_result->error().ToString();
  auto ping = agent_.Receive(proto::MessageType::kPing);
  ASSERT_TRUE(ping.has_value());
  EXPECT_EQ(ping->header.request_id, 77u);
  // Requests go on as before.
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  agent_.Send(Stdout(mailbox->id(), "after"));
  EXPECT_TRUE(mailbox->Next(Deadline::After(kAgentPatience)).has_value());
}

TEST_F(ConnectionQuiesceTest, ManySendersAreHeldAndAllReleased) {
  QuiesceConnection();
  constexpr int kSenders = 6;
  std::atomic<int> done = 0;
  std::atomic<int> failures = 0;
  std::vector<std::thread> senders;
  for (int i = 0; i < kSenders; ++i) {
    senders.emplace_back([&, i] {
      if (!connection_->Send(proto::EncodePing(static_cast<uint32_t>(100 + i)))) ++failures;
      ++done;
    });
  }
  std::this_thread::sleep_for(100ms);
  int done_while_quiesced = done;
  std::thread resumer([&] {
    (void)connection_->Resume(MakeResumeRequest(false), Deadline::After(kAgentPatience));
  });
  uint32_t resume_id = agent_.AcceptResume();
  resumer.join();
  int pings = 0;
  for (int i = 0; i < kSenders; ++i) pings += agent_.Receive(proto::MessageType::kPing) ? 1 : 0;
  for (auto& sender : senders) sender.join();
  EXPECT_NE(resume_id, 0u);
  EXPECT_EQ(done_while_quiesced, 0);
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(pings, kSenders);
}

TEST_F(ConnectionQuiesceTest, TimeoutLetsSendersGoAndALateDoneIsDropped) {
  auto started = std::chrono::steady_clock::now();
  auto quiesced = connection_->Quiesce(Deadline::After(100ms));
  auto elapsed = std::chrono::steady_clock::now() - started;
  ASSERT_FALSE(quiesced.has_value());
  ExpectTimeout(quiesced.error());
  EXPECT_NE(quiesced.error().message().find("quiescing the guest agent"), std::string::npos);
  EXPECT_GE(elapsed, 90ms);
  EXPECT_LT(elapsed, 2s);
  uint32_t id = agent_.ReceiveQuiesce();
  EXPECT_NE(id, 0u);
  agent_.Send(proto::EncodeDone(id));
  ASSERT_TRUE(connection_->Send(proto::EncodePing(5)));
  auto ping = agent_.Receive(proto::MessageType::kPing);
  ASSERT_TRUE(ping.has_value());
  EXPECT_FALSE(connection_->failure().has_value());
  // Not paused any more, so a new Quiesce is allowed.
  std::optional<Result<void>> again;
  std::thread quiescer([&] { again = connection_->Quiesce(Deadline::After(kAgentPatience)); });
  agent_.AcceptQuiesce();
  quiescer.join();
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->has_value()) << again->error().ToString();
}

TEST_F(ConnectionQuiesceTest, AnErrorAnswerFailsTheQuiesceAndLetsSendersGo) {
  std::optional<Result<void>> quiesced;
  std::thread quiescer([&] { quiesced = connection_->Quiesce(Deadline::After(kAgentPatience)); });
  uint32_t id = agent_.ReceiveQuiesce();
  agent_.Send(proto::EncodeError(id, {EPROTO, "", "malformed quiesce: 1 unexpected bytes"}));
  quiescer.join();
  EXPECT_NE(id, 0u);
  ASSERT_TRUE(quiesced.has_value());
  ASSERT_FALSE(quiesced->has_value());
  ExpectBackend(quiesced->error(), "the guest agent failed: malformed quiesce");
  ASSERT_TRUE(connection_->Send(proto::EncodePing(6)));
  EXPECT_TRUE(agent_.Receive(proto::MessageType::kPing).has_value());
}

TEST_F(ConnectionQuiesceTest, ADoneWithAPayloadIsRejected) {
  std::optional<Result<void>> quiesced;
  std::thread quiescer([&] { quiesced = connection_->Quiesce(Deadline::After(kAgentPatience)); });
  uint32_t id = agent_.ReceiveQuiesce();
  agent_.Send(Join(HeaderBytes(1, static_cast<uint8_t>(proto::MessageType::kDone), id), Bytes{0}));
  quiescer.join();
  ASSERT_TRUE(quiesced.has_value());
  ASSERT_FALSE(quiesced->has_value());
  ExpectBackend(quiesced->error(), "malformed done");
}

TEST_F(ConnectionQuiesceTest, ASecondQuiesceIsALifecycleErrorAndSendsNothing) {
  QuiesceConnection();
  auto again = connection_->Quiesce(Deadline::After(kAgentPatience));
  ASSERT_FALSE(again.has_value());
  ASSERT_NE(again.error().lifecycle(), nullptr) << again.error().ToString();
  EXPECT_NE(again.error().message().find("quiesced already"), std::string::npos);
  EXPECT_FALSE(agent_.Receive(100ms).has_value());
}

TEST_F(ConnectionQuiesceTest, ShutdownFailsHeldSendersWithItsReason) {
  QuiesceConnection();
  std::optional<Result<void>> sent;
  std::thread sender([&] { sent = connection_->Send(proto::EncodePing(8)); });
  std::this_thread::sleep_for(50ms);
  connection_->Shutdown(DestroyedError());
  sender.join();
  ASSERT_TRUE(sent.has_value());
  ASSERT_FALSE(sent->has_value());
  ASSERT_NE(sent->error().lifecycle(), nullptr) << sent->error().ToString();
  EXPECT_TRUE(sent->error().lifecycle()->Is<LifecycleError::Destroyed>());
  auto resumed = connection_->Resume(MakeResumeRequest(false), Deadline::After(kAgentPatience));
  ASSERT_FALSE(resumed.has_value());
  EXPECT_EQ(resumed.error().kind(), ErrorKind::kLifecycle) << resumed.error().ToString();
}

TEST_F(ConnectionQuiesceTest, ResumeWithoutQuiesceReturnsTheHello) {
  std::optional<Result<proto::Hello>> resumed;
  std::thread resumer([&] {
    resumed = connection_->Resume(MakeResumeRequest(false), Deadline::After(kAgentPatience));
  });
  auto resume = agent_.ReceiveResume();
  // An unsolicited hello (the channel reconnected) does not answer the Resume.
  agent_.SendHello("reconnected");
  if (resume) agent_.SendHelloFor(resume->first, "the answer");
  resumer.join();
  ASSERT_TRUE(resume.has_value());
  ASSERT_TRUE(resumed.has_value());
  ASSERT_TRUE(resumed->has_value()) << resumed->error().ToString();
  EXPECT_EQ((*resumed)->agent_version, "the answer");
  EXPECT_EQ((*resumed)->version, proto::kVersion);
}

TEST_F(ConnectionQuiesceTest, AnErrorAnswerFailsTheResumeAndLetsSendersGo) {
  QuiesceConnection();
  std::optional<Result<void>> sent;
  std::thread sender([&] { sent = connection_->Send(proto::EncodePing(9)); });
  std::optional<Result<proto::Hello>> resumed;
  std::thread resumer([&] {
    resumed = connection_->Resume(MakeResumeRequest(true), Deadline::After(kAgentPatience));
  });
  auto resume = agent_.ReceiveResume();
  if (resume) {
    agent_.Send(
        proto::EncodeError(resume->first, {EPERM, "", "set the clock: Operation not permitted"}));
  }
  resumer.join();
  sender.join();
  ASSERT_TRUE(resume.has_value());
  EXPECT_TRUE(resume->second.clone);
  ASSERT_TRUE(resumed.has_value());
  ASSERT_FALSE(resumed->has_value());
  ExpectBackend(resumed->error(), "resuming the guest agent");
  ExpectBackend(resumed->error(), "set the clock: Operation not permitted");
  ASSERT_TRUE(sent.has_value());
  EXPECT_TRUE(sent->has_value()) << sent->error().ToString();
  EXPECT_TRUE(agent_.Receive(proto::MessageType::kPing).has_value());
}

TEST_F(ConnectionQuiesceTest, ResumeTimesOutAndLetsSendersGo) {
  QuiesceConnection();
  auto resumed = connection_->Resume(MakeResumeRequest(false), Deadline::After(100ms));
  ASSERT_FALSE(resumed.has_value());
  ExpectTimeout(resumed.error());
  EXPECT_TRUE(agent_.ReceiveResume().has_value());
  ASSERT_TRUE(connection_->Send(proto::EncodePing(10)));
  EXPECT_TRUE(agent_.Receive(proto::MessageType::kPing).has_value());
}

TEST_F(ConnectionQuiesceTest, ResumeRefusesBadEntropyAndSendsNothing) {
  QuiesceConnection();
  for (const proto::ResumeRequest& request :
       {proto::ResumeRequest{true, 1, Bytes(proto::kMinCloneEntropy - 1, 1)},
        proto::ResumeRequest{true, 1, {}},
        proto::ResumeRequest{false, 1, Bytes(proto::kMaxEntropy + 1, 1)}}) {
    auto resumed = connection_->Resume(request, Deadline::After(kAgentPatience));
    ASSERT_FALSE(resumed.has_value());
    EXPECT_EQ(resumed.error().kind(), ErrorKind::kInvalidConfig) << resumed.error().ToString();
  }
  EXPECT_FALSE(agent_.Receive(100ms).has_value());
}

TEST_F(ConnectionStartTest, QuiesceAndResumeNeedAStartedConnection) {
  auto quiesced = connection_->Quiesce(Deadline::After(kAgentPatience));
  ASSERT_FALSE(quiesced.has_value());
  EXPECT_EQ(quiesced.error().kind(), ErrorKind::kLifecycle) << quiesced.error().ToString();
  auto resumed = connection_->Resume(MakeResumeRequest(false), Deadline::After(kAgentPatience));
  ASSERT_FALSE(resumed.has_value());
  EXPECT_EQ(resumed.error().kind(), ErrorKind::kLifecycle) << resumed.error().ToString();
}

// StartResumed: a clone's agent on a fresh connection.

class ConnectionStartResumedTest : public AgentChannelTest {};

TEST_F(ConnectionStartResumedTest, DropsWhatCameBeforeItsHelloThenRoutes) {
  std::optional<std::pair<uint32_t, proto::ResumeRequest>> seen;
  RunAgent([&](FakeAgent& agent) {
    // Whatever the agent had for the host it was snapshotted with, whose ids may be the
    // same as the new host's.
    agent.Send(Stdout(1, "for the parent"));
    agent.SendHello("reconnected");
    agent.Send(proto::EncodeDone(2));
    seen = agent.ReceiveResume();
    if (!seen) return;
    uint32_t id = seen->first;
    agent.Send(ExitedWith(id + 1, 0));
    agent.SendHelloFor(id + 5, "another id");
    agent.SendHelloFor(id, "clone agent");
    // Routing runs now: answer the host's next request.
    auto ping = agent.Receive(proto::MessageType::kPing);
    if (ping) agent.Send(Stdout(ping->header.request_id, "routed"));
    agent.DrainUntilClose();
  });
  proto::ResumeRequest request = MakeResumeRequest(/*clone=*/true);
  auto hello = connection_->StartResumed(request, Deadline::After(kAgentPatience));
  ASSERT_TRUE(hello.has_value()) << hello.error().ToString();
  EXPECT_EQ(hello->agent_version, "clone agent");
  auto mailbox = connection_->NewRequest(RequestKind::kProcess);
  ASSERT_TRUE(connection_->Send(proto::EncodePing(mailbox->id())));
  auto frame = mailbox->Next(Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_TRUE(frame.has_value()) << frame.error().ToString();
  auto output = proto::DecodeOutput(frame->payload);
  ASSERT_TRUE(output.has_value());
  EXPECT_EQ(ToText(output->data), "routed");
  ASSERT_TRUE(seen.has_value());
  EXPECT_TRUE(seen->second.clone);
  EXPECT_EQ(seen->second.wall_clock_ns, request.wall_clock_ns);
  EXPECT_EQ(seen->second.entropy, request.entropy);
  // Its request id is taken: the next request gets another.
  EXPECT_NE(mailbox->id(), seen->first);
}

TEST_F(ConnectionStartResumedTest, AnErrorAnswerFails) {
  RunAgent([](FakeAgent& agent) {
    auto resume = agent.ReceiveResume();
    if (resume) {
      agent.Send(proto::EncodeError(resume->first,
                                    {EPERM, "", "reseed the RNG: Operation not permitted"}));
    }
    agent.DrainUntilClose();
  });
  auto hello = connection_->StartResumed(MakeResumeRequest(true), Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "resuming the guest agent");
  ExpectBackend(hello.error(), "reseed the RNG");
}

TEST_F(ConnectionStartResumedTest, WrongProtocolVersion) {
  RunAgent([](FakeAgent& agent) {
    auto resume = agent.ReceiveResume();
    if (resume) agent.Send(proto::EncodeHello(resume->first, {proto::kVersion + 1, "old"}));
    agent.DrainUntilClose();
  });
  auto hello = connection_->StartResumed(MakeResumeRequest(true), Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), fmt::format("protocol version {}", proto::kVersion + 1));
}

TEST_F(ConnectionStartResumedTest, TimesOutAtTheDeadline) {
  RunAgent([](FakeAgent& agent) { agent.DrainUntilClose(); });
  auto started = std::chrono::steady_clock::now();
  auto hello = connection_->StartResumed(MakeResumeRequest(true), Deadline::After(100ms));
  auto elapsed = std::chrono::steady_clock::now() - started;
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectTimeout(hello.error());
  EXPECT_GE(elapsed, 90ms);
  EXPECT_LT(elapsed, 2s);
}

TEST_F(ConnectionStartResumedTest, ABrokenStreamBeforeTheHelloFails) {
  RunAgent([](FakeAgent& agent) {
    auto resume = agent.ReceiveResume();
    agent.Send(HeaderBytes(0, proto::kLastMessageType + 1));
    if (resume) agent.SendHelloFor(resume->first);
    agent.DrainUntilClose();
  });
  auto hello = connection_->StartResumed(MakeResumeRequest(true), Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "unknown frame type");
}

TEST_F(ConnectionStartResumedTest, TheChannelClosing) {
  RunAgent([](FakeAgent& agent) { (void)agent.ReceiveResume(); });
  auto hello = connection_->StartResumed(MakeResumeRequest(true), Deadline::After(kAgentPatience));
  JoinAgent();
  ASSERT_FALSE(hello.has_value());
  ExpectBackend(hello.error(), "channel closed");
}

TEST_F(ConnectionStartResumedTest, OnlyACloneWithEnoughEntropyIsSent) {
  std::vector<proto::Frame> frames;
  RunAgent([&](FakeAgent& agent) { frames = agent.DrainUntilClose(); });
  for (const proto::ResumeRequest& request :
       {MakeResumeRequest(/*clone=*/false),
        proto::ResumeRequest{true, 1, Bytes(proto::kMinCloneEntropy - 1, 1)}}) {
    auto hello = connection_->StartResumed(request, Deadline::After(kAgentPatience));
    ASSERT_FALSE(hello.has_value());
    EXPECT_EQ(hello.error().kind(), ErrorKind::kInvalidConfig) << hello.error().ToString();
  }
  JoinAgent();
  EXPECT_TRUE(frames.empty());
}

TEST(MakeResumeRequestTest, CarriesTheWallClockAndFreshEntropy) {
  auto now_ns = [] {
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    return static_cast<uint64_t>(now.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(now.tv_nsec);
  };
  uint64_t before = now_ns();
  proto::ResumeRequest clone = MakeResumeRequest(true);
  proto::ResumeRequest parent = MakeResumeRequest(false);
  uint64_t after = now_ns();
  EXPECT_TRUE(clone.clone);
  EXPECT_FALSE(parent.clone);
  EXPECT_GE(clone.wall_clock_ns, before);
  EXPECT_LE(parent.wall_clock_ns, after);
  EXPECT_LE(clone.wall_clock_ns, parent.wall_clock_ns);
  EXPECT_EQ(clone.entropy.size(), 64u);
  EXPECT_EQ(parent.entropy.size(), 64u);
  EXPECT_NE(clone.entropy, parent.entropy);
  // It is what the wire format accepts.
  Bytes frame = proto::EncodeResume(1, clone);
  EXPECT_TRUE(proto::DecodeResume(std::span<const uint8_t>(frame).subspan(proto::kHeaderSize)));
}

}  // namespace
}  // namespace vessel::sandbox
