// The HTTP layer under `vessel serve`, over real loopback sockets: what a client may send
// (malformed, huge, slow, too many) gets its status and leaves the server serving.
#include "server/http_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "server_test_support.h"

namespace vessel::server {
namespace {

using namespace std::chrono_literals;

class TestHandler final : public HttpHandler {
 public:
  size_t BodyLimit(const RequestHead& head) const override {
    return head.target() == "/small" ? 1024 : 64 * 1024 * 1024;
  }
  void Handle(Request& request, ResponseWriter& writer) override {
    if (request.target() == "/stream") {
      // Chunks until the client stops taking them or goes away.
      auto begun = writer.BeginStream(http::status::ok, "application/octet-stream");
      std::string chunk(64 * 1024, 'x');
      while (begun && !writer.ClientGone() && writer.Write(chunk)) ++chunks_;
      stream_ended_ = true;
      return;
    }
    (void)writer.Send(http::status::ok, "text/plain",
                      std::string(request.target()) + " " + std::to_string(request.body().size()));
  }
  std::atomic<size_t> chunks_{0};
  std::atomic<bool> stream_ended_{false};
};

bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return condition();
}

TEST(HttpServerTest, AnswersTwoRequestsOnOneConnection) {
  TestHandler handler;
  RunningServer server(handler);
  ASSERT_TRUE(server.ok());
  UniqueFd fd = ConnectTo(server.port());
  ASSERT_TRUE(SendAll(fd.get(),
                      "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                      "GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  std::string both = ReadUntilClosed(fd.get(), 5s);
  EXPECT_NE(both.find("/a 3"), std::string::npos) << both;
  EXPECT_NE(both.find("/b 0"), std::string::npos) << both;
}

TEST(HttpServerTest, MalformedRequestsGet400AndTheServerGoesOn) {
  TestHandler handler;
  RunningServer server(handler);
  ASSERT_TRUE(server.ok());
  for (const char* bad :
       {"GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"}) {
    std::string response = Exchange(server.port(), bad);
    EXPECT_EQ(StatusOf(response), 400) << bad << " -> " << response;
    EXPECT_NE(BodyOf(response).find("\"code\":400"), std::string::npos) << response;
  }
  EXPECT_EQ(StatusOf(Exchange(server.port(), "GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")),
            200);
}

TEST(HttpServerTest, AHeaderPastItsLimitGets431) {
  TestHandler handler;
  RunningServer server(handler);
  ASSERT_TRUE(server.ok());
  std::string request =
      "GET / HTTP/1.1\r\nX-Big: " + std::string(20 * 1024, 'a') + "\r\nConnection: close\r\n\r\n";
  EXPECT_EQ(StatusOf(Exchange(server.port(), request)), 431);
}

// A client that sends its whole body before it reads still gets the 413: the server takes
// and drops the rest before closing, rather than resetting the connection under the answer.
TEST(HttpServerTest, A413ReachesAClientThatSendsItsWholeBodyFirst) {
  TestHandler handler;
  RunningServer server(handler);
  ASSERT_TRUE(server.ok());
  const std::string body(4 * 1024 * 1024, 'z');
  for (int i = 0; i < 3; ++i) {
    UniqueFd fd = ConnectTo(server.port());
    ASSERT_TRUE(fd);
    ASSERT_TRUE(SendAll(fd.get(), "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                                      std::to_string(body.size()) + "\r\n\r\n" + body));
    std::string response = ReadUntilClosed(fd.get(), 10s);
    EXPECT_EQ(StatusOf(response), 413) << i << ": " << response;
  }
}

// A 1 GiB body is refused from its Content-Length alone: nothing of it is read or held.
TEST(HttpServerTest, ABodyPastItsLimitGets413Unread) {
  TestHandler handler;
  RunningServer server(handler);
  ASSERT_TRUE(server.ok());
  auto started = std::chrono::steady_clock::now();
  std::string response = Exchange(
      server.port(), "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\nabc");
  EXPECT_EQ(StatusOf(response), 413) << response;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
  // The handler's own limit, for a chunked body that never says its size.
  std::string chunked = "POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 4; ++i) chunked += "200\r\n" + std::string(512, 'b') + "\r\n";
  chunked += "0\r\n\r\n";
  EXPECT_EQ(StatusOf(Exchange(server.port(), chunked)), 413);
  EXPECT_EQ(StatusOf(Exchange(server.port(),
                              "POST /small HTTP/1.1\r\nContent-Length: 1024\r\n"
                              "Connection: close\r\n\r\n" +
                                  std::string(1024, 'c'))),
            200);
}

// A client that sends part of a request and then nothing is answered 408 and dropped; one
// that is silent between requests is dropped without a word.
TEST(HttpServerTest, ASilentClientIsDroppedAfterTheIdleTimeout) {
  TestHandler handler;
  RunningServer server(handler, HttpLimits{.idle_timeout = 300ms});
  ASSERT_TRUE(server.ok());
  UniqueFd fd = ConnectTo(server.port());
  ASSERT_TRUE(SendAll(fd.get(), "GET / HTTP/1.1\r\nHost:"));
  auto started = std::chrono::steady_clock::now();
  std::string response = ReadUntilClosed(fd.get(), 5s);
  EXPECT_EQ(StatusOf(response), 408) << response;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 3s);
  UniqueFd idle = ConnectTo(server.port());
  EXPECT_EQ(ReadUntilClosed(idle.get(), 5s), "");
  EXPECT_TRUE(WaitUntil([&] { return server.http().connections() == 0; }, 3s));
}

// 1000 idle connections hold a thread each, and a request after them is answered at once;
// past the connection limit a client gets 503 and the ones before it are kept.
TEST(HttpServerTest, AThousandIdleConnectionsDoNotStopTheNextClient) {
  TestHandler handler;
  RunningServer server(handler, HttpLimits{.max_connections = 1001});
  ASSERT_TRUE(server.ok());
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 1000; ++i) {
    idle.push_back(ConnectTo(server.port()));
    ASSERT_TRUE(idle.back());
  }
  ASSERT_TRUE(WaitUntil([&] { return server.http().connections() == 1000; }, 20s));
  auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(StatusOf(Exchange(server.port(), "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")), 200);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2s);
  // That client's connection may still be winding down: it must be gone before the
  // 1001st is counted, or the one after would find a free place.
  ASSERT_TRUE(WaitUntil([&] { return server.http().connections() == 1000; }, 10s));
  UniqueFd held = ConnectTo(server.port());  // the 1001st
  ASSERT_TRUE(WaitUntil([&] { return server.http().connections() == 1001; }, 5s));
  std::string refused = Exchange(server.port(), "GET / HTTP/1.1\r\n\r\n");
  EXPECT_EQ(StatusOf(refused), 503) << refused;
  idle.clear();
  EXPECT_TRUE(WaitUntil([&] { return server.http().connections() == 1; }, 30s));
}

// A client that reads nothing of an endless stream stalls only its own writer, which
// gives up after the write timeout; one that hangs up ends its stream.
TEST(HttpServerTest, AStreamEndsWhenItsClientStopsReadingOrGoesAway) {
  {
    TestHandler handler;
    RunningServer server(handler, HttpLimits{.write_timeout = 300ms});
    ASSERT_TRUE(server.ok());
    UniqueFd fd = ConnectTo(server.port());
    ASSERT_TRUE(SendAll(fd.get(), "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_TRUE(WaitUntil([&] { return handler.stream_ended_.load(); }, 10s));
    EXPECT_EQ(StatusOf(Exchange(server.port(), "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")),
              200);
  }
  {
    TestHandler handler;
    RunningServer server(handler);
    ASSERT_TRUE(server.ok());
    UniqueFd fd = ConnectTo(server.port());
    ASSERT_TRUE(SendAll(fd.get(), "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
    char buffer[4096];
    ASSERT_GT(::recv(fd.get(), buffer, sizeof(buffer), 0), 0);
    fd.Reset();
    EXPECT_TRUE(WaitUntil([&] { return handler.stream_ended_.load(); }, 10s))
        << handler.chunks_ << " chunks sent";
  }
}

TEST(HttpServerTest, ListenRefusesWhatIsNotAnAddress) {
  TestHandler handler;
  EXPECT_FALSE(HttpServer::Listen("localhost", 0, handler).has_value());
  EXPECT_FALSE(HttpServer::Listen("", 0, handler).has_value());
  EXPECT_FALSE(HttpServer::Listen("1.2.3.4.5", 0, handler).has_value());
}

}  // namespace
}  // namespace vessel::server
