// The host ends of vessel-vmm's sockets against fakes on threads: the control socket
// (SOCK_SEQPACKET, one JSON object per message) and hybrid vsock ("CONNECT <port>").
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "engine/kvm/kvm_engine.h"

namespace vessel::engine::kvm {
namespace {

using namespace std::chrono_literals;
namespace control = protocol::vmm_control;
using control::kMaxMessage;

struct SeqpacketPair {
  UniqueFd host;
  UniqueFd vmm;
};

SeqpacketPair MakeSeqpacketPair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

std::string ReceiveMessage(int fd) {
  std::string buffer(kMaxMessage, '\0');
  ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
  buffer.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return buffer;
}

void SendMessage(int fd, const std::string& message) {
  ASSERT_EQ(::send(fd, message.data(), message.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(message.size()));
}

TEST(ControlClientTest, ARequestGetsItsReply) {
  auto pair = MakeSeqpacketPair();
  std::thread vmm([&] {
    auto request = nlohmann::json::parse(ReceiveMessage(pair.vmm.get()));
    EXPECT_EQ(request["op"], "hello");
    EXPECT_EQ(request["version"], 1);
    SendMessage(pair.vmm.get(), R"({"ok":true,"version":1,"vmm":"vessel-vmm 0.1.0"})");
  });
  ControlClient client(std::move(pair.host));
  auto reply = client.Call(control::request::Hello{1}, Deadline::After(5s));
  vmm.join();
  ASSERT_TRUE(reply.has_value()) << reply.error().ToString();
  EXPECT_EQ(reply->vmm, "vessel-vmm 0.1.0");
}

TEST(ControlClientTest, AnErrorReplyIsBackendWithTheVmmsWords) {
  auto pair = MakeSeqpacketPair();
  std::thread vmm([&] {
    (void)ReceiveMessage(pair.vmm.get());
    SendMessage(pair.vmm.get(), R"({"ok":false,"error":"start before configure"})");
  });
  ControlClient client(std::move(pair.host));
  auto reply = client.Call(control::request::Start{}, Deadline::After(5s));
  vmm.join();
  ASSERT_FALSE(reply.has_value());
  EXPECT_EQ(reply.error().kind(), ErrorKind::kBackend);
  EXPECT_EQ(reply.error().message(), "vessel-vmm: start before configure");
}

TEST(ControlClientTest, MalformedRepliesAreBackendErrors) {
  for (std::string bad : {std::string("not json"), std::string("[1,2]"),
                          std::string(R"({"state":"running"})"), std::string(R"({"ok":"yes"})")}) {
    SCOPED_TRACE(bad);
    auto pair = MakeSeqpacketPair();
    std::thread vmm([&] {
      (void)ReceiveMessage(pair.vmm.get());
      SendMessage(pair.vmm.get(), bad);
    });
    ControlClient client(std::move(pair.host));
    auto reply = client.Call(control::request::Status{}, Deadline::After(5s));
    vmm.join();
    ASSERT_FALSE(reply.has_value());
    EXPECT_EQ(reply.error().kind(), ErrorKind::kBackend);
    EXPECT_NE(reply.error().message().find("malformed"), std::string::npos)
        << reply.error().message();
  }
}

TEST(ControlClientTest, AnOversizedReplyIsRefused) {
  auto pair = MakeSeqpacketPair();
  int size = 256 * 1024;
  ASSERT_EQ(::setsockopt(pair.vmm.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)), 0);
  std::thread vmm([&] {
    (void)ReceiveMessage(pair.vmm.get());
    std::string huge = R"({"ok":true,"pad":")" + std::string(kMaxMessage, 'x') + "\"}";
    (void)::send(pair.vmm.get(), huge.data(), huge.size(), MSG_NOSIGNAL);
  });
  ControlClient client(std::move(pair.host));
  auto reply = client.Call(control::request::Status{}, Deadline::After(5s));
  vmm.join();
  ASSERT_FALSE(reply.has_value());
  EXPECT_NE(reply.error().message().find("oversized"), std::string::npos)
      << reply.error().message();
}

TEST(ControlClientTest, ASilentOrGoneVmmFailsInsteadOfHanging) {
  auto pair = MakeSeqpacketPair();
  ControlClient client(std::move(pair.host));
  auto start = std::chrono::steady_clock::now();
  auto silent = client.Call(control::request::Status{}, Deadline::After(200ms));
  ASSERT_FALSE(silent.has_value());
  EXPECT_TRUE(silent.error().timed_out()) << silent.error().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  pair.vmm.Reset();
  auto gone = client.Call(control::request::Status{}, Deadline::After(2s));
  ASSERT_FALSE(gone.has_value());
  EXPECT_EQ(gone.error().kind(), ErrorKind::kBackend);
  client.Close();
  auto closed = client.Call(control::request::Status{}, Deadline::After(2s));
  ASSERT_FALSE(closed.has_value());
}

// A fake hybrid vsock socket: refuses the first `refusals` connections as a VMM does
// while nothing listens in the guest, then accepts one and writes `greeting` after "OK".
class FakeHybridVsock {
 public:
  FakeHybridVsock(std::string path, int refusals, std::string greeting) : path_(std::move(path)) {
    listener_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listener_.get(), 8), 0);
    thread_ = std::thread([this, refusals, greeting] {
      for (int i = 0;; ++i) {
        UniqueFd peer(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!peer || stop_) return;
        char buf[64] = {};
        ssize_t n = ::read(peer.get(), buf, sizeof(buf) - 1);
        requests_.push_back(n > 0 ? std::string(buf, static_cast<size_t>(n)) : "");
        if (i < refusals) continue;  // closed: nothing listens on that port yet
        std::string answer = "OK 1073741824\n" + greeting;
        (void)::write(peer.get(), answer.data(), answer.size());
        accepted_ = std::move(peer);
        return;
      }
    });
  }
  ~FakeHybridVsock() {
    Stop();
    ::unlink(path_.c_str());
  }
  // Stops the thread; the requests it read are then stable.
  const std::vector<std::string>& Requests() {
    Stop();
    return requests_;
  }

 private:
  void Stop() {
    if (!thread_.joinable()) return;
    stop_ = true;
    // A connection wakes the thread if it waits in accept().
    UniqueFd wake(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    (void)::connect(wake.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    thread_.join();
  }

  std::atomic<bool> stop_ = false;
  std::string path_;
  UniqueFd listener_;
  UniqueFd accepted_;
  std::vector<std::string> requests_;
  std::thread thread_;
};

std::string SocketPath(const char* name) {
  return (std::filesystem::temp_directory_path() /
          (std::string("vessel-vsock-") + std::to_string(::getpid()) + "-" + name))
      .string();
}

TEST(ConnectVsockTest, RetriesWhileTheGuestIsNotListeningThenKeepsTheAgentsBytes) {
  std::string path = SocketPath("retry");
  auto vsock = std::make_unique<FakeHybridVsock>(path, 3, "HELLO");
  auto stream = ConnectVsock(path, 1024, Deadline::After(5s), [] { return true; });
  ASSERT_TRUE(stream.has_value()) << stream.error().ToString();
  // What followed "OK ...\n" is the agent's, and still there to read.
  char buf[16] = {};
  ASSERT_EQ(::read(stream->get(), buf, sizeof(buf)), 5);
  EXPECT_EQ(std::string(buf, 5), "HELLO");
  auto requests = vsock->Requests();
  ASSERT_EQ(requests.size(), 4u);
  for (const auto& request : requests) EXPECT_EQ(request, "CONNECT 1024\n");
}

TEST(ConnectVsockTest, NothingAcceptingBeforeTheDeadlineIsVsockNotConnected) {
  std::string path = SocketPath("never");
  FakeHybridVsock vsock(path, 1'000'000, "");
  auto start = std::chrono::steady_clock::now();
  auto stream = ConnectVsock(path, 1024, Deadline::After(300ms), [] { return true; });
  auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(stream.has_value());
  ASSERT_EQ(stream.error().kind(), ErrorKind::kLifecycle) << stream.error().ToString();
  EXPECT_TRUE(stream.error().lifecycle()->Is<LifecycleError::VsockNotConnected>());
  EXPECT_TRUE(stream.error().lifecycle()->Retryable());
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 2s);
}

TEST(ConnectVsockTest, NoSocketYetIsRetriedToo) {
  std::string path = SocketPath("missing");
  auto stream = ConnectVsock(path, 1024, Deadline::After(100ms), [] { return true; });
  ASSERT_FALSE(stream.has_value());
  EXPECT_EQ(stream.error().kind(), ErrorKind::kLifecycle) << stream.error().ToString();
}

TEST(ConnectVsockTest, AVmmThatExitedIsABackendError) {
  std::string path = SocketPath("dead");
  auto stream = ConnectVsock(path, 1024, Deadline::After(5s), [] { return false; });
  ASSERT_FALSE(stream.has_value());
  EXPECT_EQ(stream.error().kind(), ErrorKind::kBackend);
  EXPECT_NE(stream.error().message().find("exited"), std::string::npos);
}

TEST(ConnectVsockTest, AMalformedAnswerIsABackendError) {
  std::string path = SocketPath("garbage");
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  std::thread vmm([&] {
    UniqueFd peer(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    char buf[64];
    (void)::read(peer.get(), buf, sizeof(buf));
    std::string answer(200, 'z');
    (void)::write(peer.get(), answer.data(), answer.size());
    (void)::read(peer.get(), buf, sizeof(buf));  // until the host hangs up
  });
  auto stream = ConnectVsock(path, 1024, Deadline::After(5s), [] { return true; });
  vmm.join();
  ::unlink(path.c_str());
  ASSERT_FALSE(stream.has_value());
  EXPECT_EQ(stream.error().kind(), ErrorKind::kBackend);
  EXPECT_NE(stream.error().message().find("overlong"), std::string::npos)
      << stream.error().message();
}

}  // namespace
}  // namespace vessel::engine::kvm
