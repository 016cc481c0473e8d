// Egress through the host: the agent's proxy on the guest's 127.0.0.1:3128, the host's
// allowlist, address checks and limits, against servers this test runs on the host's
// loopback.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.h"
#include "vm_test_env.h"

namespace vessel {
namespace {

// A TCP server on the host's 127.0.0.1, one thread per connection.
class LocalServer {
 public:
  enum class Mode {
    kHttp,    // answers each request head with 200 and a body naming its target
    kEcho,    // answers the first bytes with "echo:" and them, then closes
    kSilent,  // accepts and never answers
  };

  explicit LocalServer(Mode mode) : mode_(mode) {
    listener_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listener_.get(), 64), 0);
    socklen_t size = sizeof(addr);
    ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &size);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { Accept(); });
  }
  ~LocalServer() {
    stop_ = true;
    ::shutdown(listener_.get(), SHUT_RDWR);
    acceptor_.join();
    std::lock_guard lock(mutex_);
    for (auto& thread : threads_) thread.join();
  }

  [[nodiscard]] uint16_t port() const { return port_; }
  // The request heads received so far.
  std::vector<std::string> heads() {
    std::lock_guard lock(mutex_);
    return heads_;
  }

 private:
  void Accept() {
    for (;;) {
      int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      std::lock_guard lock(mutex_);
      threads_.emplace_back([this, fd] { Serve(UniqueFd(fd)); });
    }
  }

  // Reads until `done` says the input is complete, the peer ends, or the server stops.
  std::string ReadUntil(int fd, const std::function<bool(const std::string&)>& done) {
    std::string in;
    char buf[4096];
    while (!stop_ && !done(in)) {
      pollfd pfd{fd, POLLIN, 0};
      if (::poll(&pfd, 1, 100) <= 0) continue;
      ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      in.append(buf, static_cast<size_t>(n));
    }
    return in;
  }

  void Serve(UniqueFd fd) {
    switch (mode_) {
      case Mode::kHttp: {
        std::string head = ReadUntil(fd.get(), [](const std::string& in) {
          return in.find("\r\n\r\n") != std::string::npos;
        });
        {
          std::lock_guard lock(mutex_);
          heads_.push_back(head);
        }
        std::string target = head.substr(0, head.find("\r\n"));
        std::string body = fmt::format("served {}\n", target);
        std::string answer =
            fmt::format("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        body.size(), body);
        (void)!::write(fd.get(), answer.data(), answer.size());
        return;
      }
      case Mode::kEcho: {
        std::string in =
            ReadUntil(fd.get(), [](const std::string& got) { return got.find('\n') != got.npos; });
        std::string answer = "echo:" + in;
        (void)!::write(fd.get(), answer.data(), answer.size());
        return;
      }
      case Mode::kSilent:
        // Holds the connection, even after the client's end of file, until the server stops.
        while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(50));
        return;
    }
  }

  const Mode mode_;
  UniqueFd listener_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_ = false;
  std::thread acceptor_;
  std::mutex mutex_;
  std::vector<std::thread> threads_;
  std::vector<std::string> heads_;
};

size_t OpenFds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    ++n;
  }
  return n;
}

class EgressTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    http_ = new LocalServer(LocalServer::Mode::kHttp);
    echo_ = new LocalServer(LocalServer::Mode::kEcho);
    silent_ = new LocalServer(LocalServer::Mode::kSilent);
    sandbox_ = testing::MustCreate().release();
  }
  static void TearDownTestSuite() {
    delete sandbox_;
    sandbox_ = nullptr;
    delete http_;
    delete echo_;
    delete silent_;
  }
  void SetUp() override {
    ASSERT_NE(sandbox_, nullptr) << "the shared VM did not boot";
    Allow({});
  }

  static void Allow(std::vector<std::string> rules, std::chrono::seconds idle = {}) {
    NetworkPolicy policy;
    policy.allow = std::move(rules);
    if (idle.count() != 0) policy.idle_timeout = idle;
    auto set = sandbox_->SetNetwork(policy);
    ASSERT_TRUE(set.has_value()) << set.error().ToString();
  }

  static ExecResult Run(const std::string& script) {
    auto result = sandbox_->Execute(Command::Shell(script));
    EXPECT_TRUE(result.has_value()) << result.error().ToString();
    return result ? *result : ExecResult{};
  }

  // What the proxy answers to `request`, sent raw with nc.
  static std::string Ask(const std::string& request) {
    return Run(fmt::format("printf '{}' | nc 127.0.0.1 3128", request)).stdout_data;
  }

  static std::string Loopback(uint16_t port) { return fmt::format("127.0.0.1:{}", port); }

  static Sandbox* sandbox_;
  static LocalServer* http_;
  static LocalServer* echo_;
  static LocalServer* silent_;
};
Sandbox* EgressTest::sandbox_ = nullptr;
LocalServer* EgressTest::http_ = nullptr;
LocalServer* EgressTest::echo_ = nullptr;
LocalServer* EgressTest::silent_ = nullptr;

TEST_F(EgressTest, CommandsGetTheProxyVariables) {
  auto r = Run("echo $HTTP_PROXY $https_proxy $NO_PROXY");
  EXPECT_EQ(r.stdout_data, "http://127.0.0.1:3128 http://127.0.0.1:3128 localhost,127.0.0.1\n");
}

TEST_F(EgressTest, WithoutAPolicyNothingGoesOut) {
  auto r = Run(fmt::format("wget -q -O - http://{}/x 2>&1", Loopback(http_->port())));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.stdout_data.find("403"), std::string::npos) << r.stdout_data;
  EXPECT_TRUE(http_->heads().empty() || http_->heads().back().find("GET /x ") == std::string::npos);
}

TEST_F(EgressTest, AnAllowedAddressIsReachedThroughWget) {
  Allow({Loopback(http_->port())});
  auto r = Run(fmt::format("wget -q -O - http://{}/hello?a=1", Loopback(http_->port())));
  EXPECT_EQ(r.exit_code, 0) << r.stderr_data;
  EXPECT_EQ(r.stdout_data, "served GET /hello?a=1 HTTP/1.1\n");
  // The origin got the origin form, its own Host, and a request that ends its connection.
  std::string head = http_->heads().back();
  EXPECT_NE(head.find(fmt::format("Host: {}\r\n", Loopback(http_->port()))), std::string::npos)
      << head;
  EXPECT_NE(head.find("Connection: close\r\n"), std::string::npos) << head;
  EXPECT_EQ(head.find("Proxy-"), std::string::npos) << head;
}

TEST_F(EgressTest, ADeniedNameIsAnswered403WithTheReason) {
  Allow({"*.example.com", Loopback(http_->port())});
  std::string answer = Ask("GET http://example.org/ HTTP/1.1\\r\\nHost: example.org\\r\\n\\r\\n");
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 403 Forbidden\r\n")) << answer;
  EXPECT_NE(answer.find("example.org"), std::string::npos) << answer;
  // `*.example.com` is not example.com itself; only a name below it.
  answer = Ask("CONNECT example.com:443 HTTP/1.1\\r\\n\\r\\n");
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 403 Forbidden\r\n")) << answer;
  // A port the rule does not name.
  answer = Ask(fmt::format("GET http://127.0.0.1:{}/ HTTP/1.1\\r\\n\\r\\n", http_->port() + 1));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 403 Forbidden\r\n")) << answer;
  auto stats = sandbox_->network_stats();
  ASSERT_FALSE(stats.recent_refusals.empty());
  EXPECT_NE(stats.recent_refusals.back().find("403"), std::string::npos);
}

TEST_F(EgressTest, AnAllowedNameThatResolvesToLoopbackIsRefusedUnlessItsAddressIsAllowed) {
  uint16_t port = http_->port();
  Allow({fmt::format("localhost:{}", port)});
  std::string answer = Ask(fmt::format("GET http://localhost:{}/ HTTP/1.1\\r\\n\\r\\n", port));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 403 Forbidden\r\n")) << answer;
  EXPECT_NE(answer.find("resolved to 127.0.0.1"), std::string::npos) << answer;
  Allow({fmt::format("localhost:{}", port), Loopback(port)});
  answer = Ask(fmt::format("GET http://localhost:{}/n HTTP/1.1\\r\\n\\r\\n", port));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 200 OK\r\n")) << answer;
  EXPECT_NE(answer.find("served GET /n HTTP/1.1"), std::string::npos) << answer;
}

TEST_F(EgressTest, ConnectTunnelsBytesBothWays) {
  Allow({Loopback(echo_->port())});
  std::string answer =
      Ask(fmt::format("CONNECT 127.0.0.1:{} HTTP/1.1\\r\\n\\r\\nping\\n", echo_->port()));
  EXPECT_EQ(answer, "HTTP/1.1 200 Connection established\r\n\r\necho:ping\n");
  EXPECT_GE(sandbox_->network_stats().allowed, 1u);
}

TEST_F(EgressTest, APolicyChangeTakesEffectForTheNextConnection) {
  std::string get = fmt::format("wget -q -O - http://{}/", Loopback(http_->port()));
  EXPECT_NE(Run(get).exit_code, 0);
  Allow({Loopback(http_->port())});
  EXPECT_EQ(Run(get).exit_code, 0);
  EXPECT_EQ(sandbox_->network().allow, std::vector<std::string>{Loopback(http_->port())});
  Allow({});
  EXPECT_NE(Run(get).exit_code, 0);
}

TEST_F(EgressTest, BadRequestsGetTheirStatus) {
  Allow({Loopback(http_->port())});
  EXPECT_TRUE(Ask("garbage\\r\\n\\r\\n").starts_with("HTTP/1.1 400 Bad Request\r\n"));
  // An origin-form request is not a proxy request, nor a path for a target.
  EXPECT_TRUE(Ask("GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n").starts_with("HTTP/1.1 400"));
  EXPECT_TRUE(Ask("CONNECT /run/vessel/sock:1 HTTP/1.1\\r\\n\\r\\n").starts_with("HTTP/1.1 4"));
  // A 1 MiB request line, and 10,000 headers.
  auto r =
      Run("{ printf 'GET http://x.example/'; head -c 1048576 /dev/zero | tr '\\\\0' a; "
          "printf ' HTTP/1.1\\r\\n\\r\\n'; } | nc 127.0.0.1 3128 | head -1");
  EXPECT_EQ(r.stdout_data, "HTTP/1.1 431 Request Header Fields Too Large\r\n");
  r =
      Run("{ printf 'GET http://x.example/ HTTP/1.1\\r\\n'; i=0; while [ $i -lt 10000 ]; do "
          "printf 'X-%d: y\\r\\n' $i; i=$((i+1)); done; printf '\\r\\n'; } | nc 127.0.0.1 3128 | "
          "head -1");
  EXPECT_EQ(r.stdout_data, "HTTP/1.1 431 Request Header Fields Too Large\r\n");
  // The host's own loopback, not allowed.
  EXPECT_TRUE(Ask("CONNECT 127.0.0.1:22 HTTP/1.1\\r\\n\\r\\n").starts_with("HTTP/1.1 403"));
}

TEST_F(EgressTest, ASlowHeadTimesOut) {
  // The head never completes: the proxy gives up after 10 s.
  auto r = Run("{ printf 'GET http://x.example/ HTTP/1.1\\r\\n'; sleep 12; } | nc 127.0.0.1 3128 "
               "| head -1");
  EXPECT_EQ(r.stdout_data, "HTTP/1.1 408 Request Timeout\r\n");
}

TEST_F(EgressTest, AnUpstreamThatNeverAnswersIs504AfterTheIdleTimeout) {
  Allow({Loopback(silent_->port())}, std::chrono::seconds(2));
  std::string answer =
      Ask(fmt::format("GET http://127.0.0.1:{}/ HTTP/1.1\\r\\n\\r\\n", silent_->port()));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 504 Gateway Timeout\r\n")) << answer;
  EXPECT_NE(answer.find("no answer within 2 s"), std::string::npos) << answer;
}

TEST_F(EgressTest, ManyParallelConnectionsAreAnsweredAndLeaveNothingBehind) {
  Allow({Loopback(http_->port())});
  size_t fds_before = OpenFds();
  long rss_before = testing::ResidentKib();
  // 300 at once: beyond the host's 64 (503) and the agent's 256 (closed at once).
  auto r =
      Run("i=0; while [ $i -lt 300 ]; do "
          "(printf 'GET http://denied.example/ HTTP/1.1\\r\\n\\r\\n' | nc 127.0.0.1 3128 "
          "> /tmp/par.$i 2>&1 &); i=$((i+1)); done; sleep 1; "
          "while pgrep -x nc >/dev/null; do sleep 0.2; done; "
          "cat /tmp/par.* | grep -c '^HTTP/1.1 [45]0[0-9]'; rm -f /tmp/par.*");
  EXPECT_EQ(r.exit_code, 0) << r.stderr_data;
  EXPECT_GT(std::stoi(r.stdout_data.empty() ? "0" : r.stdout_data), 0) << r.stdout_data;
  // The sandbox is healthy, and the host holds no connection, descriptor or memory for them.
  EXPECT_EQ(Run(fmt::format("wget -q -O - http://{}/after", Loopback(http_->port()))).stdout_data,
            "served GET /after HTTP/1.1\n");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (sandbox_->network_stats().open != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(sandbox_->network_stats().open, 0u);
  EXPECT_LE(OpenFds(), fds_before + 2);
  EXPECT_LT(testing::ResidentKib(), rss_before + 64 * 1024);
}

TEST_F(EgressTest, AForkStartsWithThePolicyInForce) {
  Allow({Loopback(http_->port())});
  auto children = sandbox_->Fork(1);
  ASSERT_TRUE(children.has_value()) << children.error().ToString();
  Sandbox& child = *children->front();
  EXPECT_EQ(child.network().allow, std::vector<std::string>{Loopback(http_->port())});
  auto r = child.Execute(
      Command::Shell(fmt::format("wget -q -O - http://{}/child", Loopback(http_->port()))));
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->stdout_data, "served GET /child HTTP/1.1\n");
  // The child's policy is its own from then on.
  ASSERT_TRUE(child.SetNetwork({}).has_value());
  EXPECT_EQ(sandbox_->network().allow, std::vector<std::string>{Loopback(http_->port())});
}

TEST_F(EgressTest, ASnapshotCarriesThePolicyAndARestoreMayReplaceIt) {
  Allow({Loopback(http_->port())});
  std::string dir =
      std::filesystem::temp_directory_path() / fmt::format("vessel-egress-snapshot-{}", ::getpid());
  struct Removal {
    std::string path;
    ~Removal() { std::filesystem::remove_all(path); }
  } removal{dir};
  auto saved = sandbox_->Snapshot(dir);
  ASSERT_TRUE(saved.has_value()) << saved.error().ToString();

  auto kept = Sandbox::Restore(dir);
  ASSERT_TRUE(kept.has_value()) << kept.error().ToString();
  EXPECT_EQ((*kept)->network().allow, std::vector<std::string>{Loopback(http_->port())});
  auto r = (*kept)->Execute(
      Command::Shell(fmt::format("wget -q -O - http://{}/restored", Loopback(http_->port()))));
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->stdout_data, "served GET /restored HTTP/1.1\n");
  kept->reset();

  // Replaced by nothing: no egress.
  auto replaced = Sandbox::Restore(dir, {.network = NetworkPolicy{}});
  ASSERT_TRUE(replaced.has_value()) << replaced.error().ToString();
  EXPECT_TRUE((*replaced)->network().allow.empty());
  r = (*replaced)->Execute(
      Command::Shell(fmt::format("wget -q -O - http://{}/replaced 2>&1", Loopback(http_->port()))));
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_NE(r->stdout_data.find("403"), std::string::npos) << r->stdout_data;
  EXPECT_EQ((*replaced)->network_stats().refused, 1u);
}

TEST_F(EgressTest, ABadRuleIsRefusedAndThePolicyKept) {
  Allow({Loopback(http_->port())});
  NetworkPolicy bad;
  bad.allow = {"http://example.com/"};
  auto set = sandbox_->SetNetwork(bad);
  ASSERT_FALSE(set.has_value());
  EXPECT_EQ(set.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(sandbox_->network().allow, std::vector<std::string>{Loopback(http_->port())});
  bad.allow = {};
  bad.max_connections = 0;
  EXPECT_FALSE(sandbox_->SetNetwork(bad).has_value());
}

}  // namespace
}  // namespace vessel
