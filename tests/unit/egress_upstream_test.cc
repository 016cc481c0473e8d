// Connecting an allowed egress request: one lookup, every answer checked, a connection
// only to an address that passed. The resolver is scripted; the servers are real
// sockets on this host's loopback.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <string>
#include <vector>

#include "egress/upstream.h"

namespace vessel::egress {
namespace {

struct Listener {
  UniqueFd fd;
  uint16_t port = 0;
};

// A socket listening on 127.0.0.1 at a free port; connections stay in its backlog.
Listener Listen() {
  Listener listener{UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)), 0};
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(listener.fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(::listen(listener.fd.get(), 8), 0);
  socklen_t size = sizeof(addr);
  ::getsockname(listener.fd.get(), reinterpret_cast<sockaddr*>(&addr), &size);
  listener.port = ntohs(addr.sin_port);
  return listener;
}

Address Ip(std::string_view text) { return Address::Parse(text).value_or(Address::V4({})); }

Policy MustParse(std::vector<std::string> rules) {
  auto policy = ParsePolicy(rules);
  EXPECT_TRUE(policy.has_value()) << policy.error().ToString();
  return policy ? *policy : Policy();
}

// A resolver that gives each lookup the next scripted answer and counts the lookups.
struct ScriptedResolver {
  std::vector<std::vector<Address>> answers;
  int lookups = 0;
  Resolver AsResolver() {
    return [this](const std::string& host) -> Result<std::vector<Address>> {
      size_t i = static_cast<size_t>(lookups++);
      if (i >= answers.size() || answers[i].empty()) {
        return Fail(Error::Backend(host + " did not resolve: scripted"));
      }
      return answers[i];
    };
  }
};

Upstream Reach(const Policy& policy, std::string_view host, uint16_t port,
               ScriptedResolver& resolver, std::vector<Address> host_addresses = {}) {
  Decision decision = Allow(policy, host, port);
  EXPECT_TRUE(decision.allowed) << decision.reason;
  return ConnectUpstream(policy, decision, port, resolver.AsResolver(), host_addresses,
                         Deadline::After(std::chrono::seconds(5)));
}

TEST(EgressUpstreamTest, ConnectsToTheAddressThatPassed) {
  Listener server = Listen();
  Policy policy = MustParse(
      {fmt::format("api.test:{}", server.port), fmt::format("127.0.0.1:{}", server.port)});
  // 10.0.0.1 is private and not named: skipped; 127.0.0.1 is named with this port.
  ScriptedResolver resolver{{{Ip("10.0.0.1"), Ip("127.0.0.1")}}};
  Upstream upstream = Reach(policy, "api.test", server.port, resolver);
  EXPECT_EQ(upstream.status, 0) << upstream.reason;
  EXPECT_TRUE(upstream.fd);
  ASSERT_TRUE(upstream.address.has_value());
  EXPECT_EQ(*upstream.address, Ip("127.0.0.1"));
  EXPECT_EQ(resolver.lookups, 1);
}

TEST(EgressUpstreamTest, RebindingMeetsTheCheckOnEveryConnection) {
  Listener server = Listen();
  Policy policy = MustParse(
      {fmt::format("api.test:{}", server.port), fmt::format("127.0.0.1:{}", server.port)});
  // The first answer is one the policy allows; the next points at the cloud metadata
  // service. Each connection resolves once and connects only where its own answer passed.
  ScriptedResolver resolver{{{Ip("127.0.0.1")}, {Ip("169.254.169.254")}}};
  EXPECT_EQ(Reach(policy, "api.test", server.port, resolver).status, 0);
  Upstream second = Reach(policy, "api.test", server.port, resolver);
  EXPECT_EQ(second.status, 403);
  EXPECT_FALSE(second.fd);
  EXPECT_NE(second.reason.find("169.254.169.254"), std::string::npos) << second.reason;
  EXPECT_EQ(resolver.lookups, 2);
}

TEST(EgressUpstreamTest, PrivateAnswersAreRefusedWithTheFirstReason) {
  Policy policy = MustParse({"api.test"});
  ScriptedResolver resolver{{{Ip("192.168.1.2"), Ip("::1"), Ip("::ffff:10.1.2.3")}}};
  Upstream upstream = Reach(policy, "api.test", 443, resolver);
  EXPECT_EQ(upstream.status, 403);
  EXPECT_NE(upstream.reason.find("192.168.1.2"), std::string::npos) << upstream.reason;
}

TEST(EgressUpstreamTest, TheHostsOwnAddressesAreRefused) {
  Policy policy = MustParse({"api.test"});
  ScriptedResolver resolver{{{Ip("203.0.114.9")}}};
  Upstream upstream = Reach(policy, "api.test", 443, resolver, {Ip("203.0.114.9")});
  EXPECT_EQ(upstream.status, 403) << upstream.reason;
}

TEST(EgressUpstreamTest, ANameThatDoesNotResolveIs502) {
  Policy policy = MustParse({"api.test"});
  ScriptedResolver resolver{{{}}};
  Upstream upstream = Reach(policy, "api.test", 443, resolver);
  EXPECT_EQ(upstream.status, 502);
  EXPECT_NE(upstream.reason.find("did not resolve"), std::string::npos) << upstream.reason;
}

TEST(EgressUpstreamTest, ARefusedConnectionIs502) {
  uint16_t port;
  {
    Listener closed = Listen();
    port = closed.port;
  }  // nothing listens there any more
  Policy policy = MustParse({fmt::format("127.0.0.1:{}", port)});
  ScriptedResolver resolver;
  Upstream upstream = Reach(policy, "127.0.0.1", port, resolver);
  EXPECT_EQ(upstream.status, 502) << upstream.reason;
  EXPECT_EQ(resolver.lookups, 0);  // an IP literal is not looked up
}

TEST(EgressUpstreamTest, SystemResolveFindsLocalhostAndFailsOnInvalidNames) {
  auto localhost = SystemResolve("localhost");
  ASSERT_TRUE(localhost.has_value()) << localhost.error().ToString();
  EXPECT_FALSE(localhost->empty());
  EXPECT_FALSE(SystemResolve("name.invalid").has_value());
}

}  // namespace
}  // namespace vessel::egress
