// The egress policy: the rules a user writes, the hosts and addresses a guest may reach,
// and the proxy request heads a guest sends, good and hostile.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <string>
#include <vector>

#include "egress/policy.h"

namespace vessel::egress {
namespace {

Policy MustParse(std::vector<std::string> rules) {
  auto policy = ParsePolicy(rules);
  EXPECT_TRUE(policy.has_value()) << policy.error().ToString();
  return policy ? *policy : Policy();
}

// The error message for a rule list that must be refused.
std::string Refusal(std::vector<std::string> rules) {
  auto policy = ParsePolicy(rules);
  EXPECT_FALSE(policy.has_value()) << "accepted: " << (rules.empty() ? "" : rules[0]);
  if (policy) return "";
  EXPECT_EQ(policy.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(policy.error().subject(), "network");
  return policy.error().message();
}

Address Ip(std::string_view text) {
  auto address = Address::Parse(text);
  EXPECT_TRUE(address.has_value()) << text;
  return address.value_or(Address::V4({0, 0, 0, 0}));
}

bool Allowed(const Policy& policy, std::string_view host, uint16_t port) {
  return Allow(policy, host, port).allowed;
}

// --- rules -------------------------------------------------------------------------------

TEST(EgressRulesTest, EachFormParsesToItsCanonicalRule) {
  Policy policy =
      MustParse({"api.github.com", "*.example.com", "example.org:8080", "*.example.net:8443",
                 "203.0.113.7", "203.0.113.8:9000", "[::1]", "[2001:db8::1]:8080", "2001:db8::2"});
  ASSERT_EQ(policy.rules().size(), 9u);
  std::vector<std::string> canonical;
  for (const Rule& rule : policy.rules()) canonical.push_back(rule.ToString());
  EXPECT_EQ(canonical,
            (std::vector<std::string>{"api.github.com", "*.example.com", "example.org:8080",
                                      "*.example.net:8443", "203.0.113.7", "203.0.113.8:9000",
                                      "[::1]", "[2001:db8::1]:8080", "[2001:db8::2]"}));
  EXPECT_EQ(policy.rules()[0].kind, Rule::Kind::kName);
  EXPECT_EQ(policy.rules()[1].kind, Rule::Kind::kSuffix);
  EXPECT_EQ(policy.rules()[1].name, "example.com");
  EXPECT_EQ(policy.rules()[4].kind, Rule::Kind::kAddress);
  EXPECT_EQ(policy.rules()[4].address, Ip("203.0.113.7"));
  EXPECT_FALSE(policy.rules()[0].port.has_value());
  EXPECT_EQ(policy.rules()[2].port, 8080);
}

TEST(EgressRulesTest, NamesAreNormalisedToLowerCaseAsciiWithoutTrailingDot) {
  Policy policy = MustParse({"API.GitHub.COM.", "BÜCHER.example", "*.Faß.DE", "a--b.example"});
  EXPECT_EQ(policy.rules()[0].name, "api.github.com");
  EXPECT_EQ(policy.rules()[1].name, "xn--bcher-kva.example");
  // Non-transitional: ß stays itself and becomes an A-label, not "ss".
  EXPECT_EQ(policy.rules()[2].name, "xn--fa-hia.de");
  EXPECT_EQ(policy.rules()[3].name, "a--b.example");
}

TEST(EgressRulesTest, AnEmptyListAllowsNothing) {
  Policy policy = MustParse({});
  EXPECT_TRUE(policy.empty());
  Decision decision = Allow(policy, "example.com", 443);
  EXPECT_FALSE(decision.allowed);
  EXPECT_EQ(decision.reason,
            "example.com is not in this sandbox's allowlist (it is empty: no egress)");
  EXPECT_FALSE(Allowed(Policy(), "example.com", 80));
}

TEST(EgressRulesTest, BadRulesAreRefusedNamingTheRule) {
  EXPECT_EQ(Refusal({"example.com", ""}), "network: rule 2 is empty");
  EXPECT_EQ(Refusal({"exa mple.com"}),
            "network: rule 'exa mple.com': spaces and control characters are not allowed");
  EXPECT_EQ(Refusal({"example.com\n"}),
            "network: rule 'example.com\\x0a': spaces and control characters are not allowed");
  EXPECT_EQ(Refusal({"example.com:0"}),
            "network: rule 'example.com:0': port '0' is not a number from 1 to 65535");
  EXPECT_NE(Refusal({"example.com:65536"}).find("port '65536' is not a number"), std::string::npos);
  EXPECT_NE(Refusal({"example.com:http"}).find("port 'http'"), std::string::npos);
  EXPECT_NE(Refusal({"example.com:"}).find("port ''"), std::string::npos);
  EXPECT_NE(Refusal({"example.com:-1"}).find("port '-1'"), std::string::npos);
  EXPECT_NE(Refusal({"example.com:+80"}).find("port '+80'"), std::string::npos);
  EXPECT_NE(Refusal({"example.com:123456"}).find("port '123456'"), std::string::npos);
  EXPECT_EQ(Refusal({"a..example.com"}),
            "network: rule 'a..example.com': not a valid host name: it has an empty label");
  EXPECT_NE(Refusal({".example.com"}).find("empty label"), std::string::npos);
  EXPECT_NE(Refusal({"example.com.."}).find("empty label"), std::string::npos);
  EXPECT_NE(Refusal({"."}).find("it is empty"), std::string::npos);
  EXPECT_NE(Refusal({"under_score.example"}).find("other than letters, digits and '-'"),
            std::string::npos);
  EXPECT_NE(Refusal({"-lead.example"}).find("starts or ends with '-'"), std::string::npos);
  EXPECT_NE(Refusal({"trail-.example"}).find("starts or ends with '-'"), std::string::npos);
  EXPECT_NE(Refusal({std::string(64, 'a') + ".example"}).find("longer than 63 characters"),
            std::string::npos);
  std::string long_name;
  for (int i = 0; i < 5; ++i) long_name += std::string(60, 'a') + ".";
  long_name += "example";
  EXPECT_NE(Refusal({long_name}).find("longer than 253 characters"), std::string::npos);
  EXPECT_NE(Refusal({std::string(5000, 'a')}).find("far too long"), std::string::npos);
  EXPECT_NE(Refusal({"https://example.com"}).find("not a URL"), std::string::npos);
  EXPECT_NE(Refusal({"example.com/path"}).find("not a URL"), std::string::npos);
  EXPECT_NE(Refusal({"user@example.com"}).find("not a URL"), std::string::npos);
  EXPECT_NE(Refusal({"xn--.example"}).find("not a valid host name"), std::string::npos);
  EXPECT_NE(Refusal({"b\xff.example"}).find("IDNA refuses it"), std::string::npos);
}

TEST(EgressRulesTest, WildcardsAreOnlyWholeFirstLabelsOverAtLeastTwoLabels) {
  EXPECT_NE(Refusal({"*"}).find("'*' is too broad"), std::string::npos);
  EXPECT_NE(Refusal({"*:443"}).find("'*' is too broad"), std::string::npos);
  EXPECT_NE(Refusal({"*.com"}).find("too broad: it would allow every name under the top-level "
                                    "domain 'com'"),
            std::string::npos);
  EXPECT_NE(Refusal({"*.COM."}).find("too broad"), std::string::npos);
  EXPECT_NE(Refusal({"*.*.example.com"}).find("whole first label"), std::string::npos);
  EXPECT_NE(Refusal({"a*.example.com"}).find("whole first label"), std::string::npos);
  EXPECT_NE(Refusal({"*example.com"}).find("whole first label"), std::string::npos);
  EXPECT_NE(Refusal({"api.*.com"}).find("whole first label"), std::string::npos);
  EXPECT_NE(Refusal({"*."}).find("too broad"), std::string::npos);
}

TEST(EgressRulesTest, IpLiteralsAndLookalikes) {
  EXPECT_NE(Refusal({"[1.2.3.4]"}).find("only an IPv6 address goes in brackets"),
            std::string::npos);
  EXPECT_NE(Refusal({"[::1"}).find("'[' without ']'"), std::string::npos);
  EXPECT_NE(Refusal({"[::1]x"}).find("only :PORT may follow ']'"), std::string::npos);
  EXPECT_NE(Refusal({"[::1]:0"}).find("port '0'"), std::string::npos);
  EXPECT_NE(Refusal({"2001:db8::1:8080x"}).find("goes in brackets"), std::string::npos);
  // Numeric last labels read as broken IPv4 (127.1, 0x7f.1, 01.2.3.4).
  EXPECT_NE(Refusal({"127.1"}).find("looks like an IP address"), std::string::npos);
  EXPECT_NE(Refusal({"1.2.3.4.5"}).find("looks like an IP address"), std::string::npos);
  EXPECT_NE(Refusal({"01.2.3.4"}).find("looks like an IP address"), std::string::npos);
  EXPECT_NE(Refusal({"0x7f000001"}).find("looks like an IP address"), std::string::npos);
  // A numeric label elsewhere is a name like any other.
  EXPECT_EQ(MustParse({"1.example.com", "0x1.example"}).rules().size(), 2u);
}

TEST(EgressRulesTest, AtMostMaxRules) {
  std::vector<std::string> rules(kMaxRules, "example.com");
  EXPECT_EQ(MustParse(rules).rules().size(), kMaxRules);
  rules.push_back("example.org");
  EXPECT_EQ(Refusal(rules), "network: 1025 rules; at most 1024 are allowed");
}

TEST(EgressRulesTest, LongRulesAreQuotedShortInErrors) {
  std::string message = Refusal({std::string(200, 'a') + " b"});
  EXPECT_LT(message.size(), 200u);
  EXPECT_NE(message.find("..."), std::string::npos);
}

// --- hosts -------------------------------------------------------------------------------

TEST(EgressAllowTest, ExactNamesInAnySpelling) {
  Policy policy = MustParse({"api.github.com", "bücher.example"});
  EXPECT_TRUE(Allowed(policy, "api.github.com", 443));
  EXPECT_TRUE(Allowed(policy, "API.GITHUB.COM", 443));
  EXPECT_TRUE(Allowed(policy, "api.github.com.", 80));
  EXPECT_TRUE(Allowed(policy, "BÜCHER.example", 443));
  EXPECT_TRUE(Allowed(policy, "xn--bcher-kva.example", 443));
  EXPECT_TRUE(Allowed(policy, "XN--BCHER-KVA.EXAMPLE.", 443));
  EXPECT_FALSE(Allowed(policy, "github.com", 443));
  EXPECT_FALSE(Allowed(policy, "x.api.github.com", 443));
  EXPECT_FALSE(Allowed(policy, "api.github.com.evil.example", 443));
  EXPECT_FALSE(Allowed(policy, "buecher.example", 443));

  Decision decision = Allow(policy, "BÜCHER.example.", 443);
  EXPECT_EQ(decision.host, "xn--bcher-kva.example");
  EXPECT_FALSE(decision.address.has_value());
  EXPECT_EQ(decision.reason,
            "port 443 of xn--bcher-kva.example is allowed by rule "
            "'xn--bcher-kva.example'");
}

TEST(EgressAllowTest, IdnRulesMatchAsciiHostsAndBack) {
  Policy ascii_rule = MustParse({"xn--bcher-kva.example"});
  EXPECT_TRUE(Allowed(ascii_rule, "BÜCHER.example", 443));
  EXPECT_TRUE(Allowed(ascii_rule,
                      "bu\xcc\x88"
                      "cher.example",
                      443));  // u + combining diaeresis
  EXPECT_TRUE(Allowed(ascii_rule,
                      "bücher\xe3\x80\x82"
                      "example",
                      443));  // ideographic full stop
}

TEST(EgressAllowTest, WildcardsMatchAnyDepthButNotTheApex) {
  Policy policy = MustParse({"*.example.com"});
  EXPECT_TRUE(Allowed(policy, "a.example.com", 443));
  EXPECT_TRUE(Allowed(policy, "a.b.example.com", 443));
  EXPECT_TRUE(Allowed(policy, "A.B.C.EXAMPLE.COM.", 80));
  EXPECT_FALSE(Allowed(policy, "example.com", 443));
  EXPECT_FALSE(Allowed(policy, "example.com.", 443));
  EXPECT_FALSE(Allowed(policy, "badexample.com", 443));
  EXPECT_FALSE(Allowed(policy, "a.example.com.evil", 443));
  EXPECT_FALSE(Allowed(policy, "a.example.co", 443));
  EXPECT_EQ(Allow(policy, "example.com", 443).reason,
            "example.com is not in this sandbox's allowlist");
  // The apex takes a rule of its own.
  EXPECT_TRUE(Allowed(MustParse({"*.example.com", "example.com"}), "example.com", 443));
}

TEST(EgressAllowTest, PortsWithoutARuleAre80And443Only) {
  Policy policy = MustParse({"api.github.com", "*.example.com:8443", "example.org:8080",
                             "example.org", "example.net:22"});
  EXPECT_TRUE(Allowed(policy, "api.github.com", 80));
  EXPECT_TRUE(Allowed(policy, "api.github.com", 443));
  EXPECT_FALSE(Allowed(policy, "api.github.com", 8080));
  EXPECT_EQ(Allow(policy, "api.github.com", 22).reason,
            "port 22 is not allowed for api.github.com (rules without a port allow 80 and 443)");
  EXPECT_TRUE(Allowed(policy, "x.example.com", 8443));
  EXPECT_FALSE(Allowed(policy, "x.example.com", 443));
  EXPECT_EQ(Allow(policy, "x.example.com", 443).reason,
            "port 443 is not allowed for x.example.com (its rules allow port 8443)");
  EXPECT_TRUE(Allowed(policy, "example.org", 8080));
  EXPECT_TRUE(Allowed(policy, "example.org", 443));
  EXPECT_EQ(Allow(policy, "example.org", 9000).reason,
            "port 9000 is not allowed for example.org (its rules allow ports 80, 443, 8080)");
  EXPECT_TRUE(Allowed(policy, "example.net", 22));
  EXPECT_FALSE(Allowed(policy, "example.net", 443));
  EXPECT_FALSE(Allowed(policy, "api.github.com", 0));
  EXPECT_EQ(Allow(policy, "api.github.com", 0).reason, "port 0 is not a port one can connect to");
}

TEST(EgressAllowTest, IpLiteralsOnlyWhenARuleNamesThem) {
  Policy policy = MustParse(
      {"203.0.113.7", "127.0.0.1:8080", "[2001:db8::1]:443", "*.example.com", "[::1]:9000"});
  Decision v4 = Allow(policy, "203.0.113.7", 443);
  EXPECT_TRUE(v4.allowed);
  EXPECT_EQ(v4.host, "203.0.113.7");
  EXPECT_EQ(v4.address, Ip("203.0.113.7"));
  EXPECT_TRUE(Allowed(policy, "127.0.0.1", 8080));
  EXPECT_FALSE(Allowed(policy, "127.0.0.1", 80));
  EXPECT_TRUE(Allowed(policy, "[2001:db8::1]", 443));
  EXPECT_TRUE(Allowed(policy, "2001:db8::1", 443));
  EXPECT_TRUE(Allowed(policy, "2001:DB8:0::1", 443));  // any spelling of the same address
  EXPECT_TRUE(Allowed(policy, "[::1]", 9000));
  EXPECT_FALSE(Allowed(policy, "[::1]", 9001));
  EXPECT_EQ(Allow(policy, "[2001:db8::1]", 80).reason,
            "port 80 is not allowed for 2001:db8::1 (its rules allow port 443)");

  Decision unlisted = Allow(policy, "198.51.100.1", 443);
  EXPECT_FALSE(unlisted.allowed);
  EXPECT_EQ(unlisted.reason,
            "198.51.100.1 is an IP address, and IP addresses are refused unless a rule names them");
  EXPECT_FALSE(Allowed(policy, "[2001:db8::2]", 443));
  // The mapped form is another address.
  EXPECT_FALSE(Allowed(policy, "::ffff:203.0.113.7", 443));
  // An address never matches a name rule, however it is dressed up.
  EXPECT_FALSE(Allowed(policy, "203.0.113.7.example.com.evil", 443));
  EXPECT_FALSE(Allowed(MustParse({"*.example.com"}), "1.2.3.4", 443));
}

TEST(EgressAllowTest, MalformedHostsAreRefusedWithPrintableReasons) {
  Policy policy = MustParse({"*.example.com", "::1"});
  for (std::string_view host : {"",
                                ".",
                                "..",
                                "a..example.com",
                                "a b.example.com",
                                "a_b.example.com",
                                "-a.example.com",
                                "*.example.com",
                                "[::1",
                                "[::1]x",
                                "[1.2.3.4]",
                                "[]",
                                "::1%lo",
                                "fe80::1%eth0",
                                "127.1",
                                "0x7f.0.0.1",
                                "2130706433",
                                "01.2.3.4",
                                "1.2.3.4.",
                                "\xff\xfe.example.com",
                                "a.example.com/path",
                                "a.example.com:443",
                                "user@a.example.com"}) {
    Decision decision = Allow(policy, host, 443);
    EXPECT_FALSE(decision.allowed) << host;
    for (char c : decision.reason) {
      EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "unprintable reason for " << host;
    }
  }
  EXPECT_EQ(Allow(policy, "a\r\nSet-Cookie: x", 443).reason,
            "'a\\x0d\\x0aSet-Cookie: x' is not a valid host name: spaces and control characters "
            "are not allowed");
  EXPECT_EQ(Allow(policy, "[::1", 443).reason, "'[::1' is not an IPv6 address in brackets");
  std::string huge(100000, 'a');
  Decision decision = Allow(policy, huge, 443);
  EXPECT_FALSE(decision.allowed);
  EXPECT_LT(decision.reason.size(), 200u);
  EXPECT_FALSE(Allowed(policy, std::string(64, 'a') + ".example.com", 443));
}

// --- addresses ---------------------------------------------------------------------------

TEST(EgressAddressTest, AddressesParseAndPrintCanonically) {
  EXPECT_EQ(Ip("10.0.0.1").ToString(), "10.0.0.1");
  EXPECT_TRUE(Ip("10.0.0.1").is_v4());
  EXPECT_EQ(Ip("10.0.0.1").bytes().size(), 4u);
  EXPECT_EQ(Ip("2001:DB8:0:0::1").ToString(), "2001:db8::1");
  EXPECT_EQ(Ip("::ffff:10.0.0.1").ToString(), "::ffff:10.0.0.1");
  EXPECT_EQ(Ip("::1").bytes().size(), 16u);
  EXPECT_NE(Ip("::ffff:10.0.0.1"), Ip("10.0.0.1"));
  for (std::string_view bad : {"", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.1.1.1", "1.2.3.4 ",
                               "[::1]", "::1%lo", "example.com", ":::", "1::2::3"}) {
    EXPECT_FALSE(Address::Parse(bad).has_value()) << bad;
  }
  EXPECT_FALSE(Address::Parse(std::string(1000, '1')).has_value());
}

TEST(EgressAddressTest, SocketAddressesConvert) {
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_port = htons(443);
  inet_pton(AF_INET, "192.0.2.9", &in.sin_addr);
  EXPECT_EQ(Address::FromSockaddr(reinterpret_cast<const sockaddr&>(in)), Ip("192.0.2.9"));
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  inet_pton(AF_INET6, "2001:db8::5", &in6.sin6_addr);
  EXPECT_EQ(Address::FromSockaddr(reinterpret_cast<const sockaddr&>(in6)), Ip("2001:db8::5"));
  sockaddr_storage unix_address{};
  unix_address.ss_family = AF_UNIX;
  EXPECT_FALSE(Address::FromSockaddr(reinterpret_cast<const sockaddr&>(unix_address)));
}

struct KindCase {
  const char* address;
  AddressKind kind;
};

TEST(EgressAddressTest, EveryClassIsRecognised) {
  const KindCase cases[] = {
      {"0.0.0.0", AddressKind::kUnspecified},
      {"0.1.2.3", AddressKind::kUnspecified},
      {"::", AddressKind::kUnspecified},
      {"127.0.0.1", AddressKind::kLoopback},
      {"127.255.255.254", AddressKind::kLoopback},
      {"::1", AddressKind::kLoopback},
      {"10.0.0.5", AddressKind::kPrivate},
      {"10.255.255.255", AddressKind::kPrivate},
      {"172.16.0.1", AddressKind::kPrivate},
      {"172.31.255.255", AddressKind::kPrivate},
      {"192.168.1.1", AddressKind::kPrivate},
      {"fc00::1", AddressKind::kPrivate},
      {"fdff:ffff::1", AddressKind::kPrivate},
      {"100.64.0.1", AddressKind::kSharedCgnat},
      {"100.127.255.255", AddressKind::kSharedCgnat},
      {"169.254.169.254", AddressKind::kLinkLocal},
      {"fe80::1", AddressKind::kLinkLocal},
      {"febf::1", AddressKind::kLinkLocal},
      {"224.0.0.1", AddressKind::kMulticast},
      {"239.255.255.250", AddressKind::kMulticast},
      {"ff02::1", AddressKind::kMulticast},
      {"255.255.255.255", AddressKind::kBroadcast},
      {"240.0.0.1", AddressKind::kReserved},
      {"255.255.255.254", AddressKind::kReserved},
      {"fec0::1", AddressKind::kReserved},
      {"100::1", AddressKind::kReserved},
      {"4000::1", AddressKind::kReserved},
      {"192.0.2.1", AddressKind::kDocumentation},
      {"198.51.100.1", AddressKind::kDocumentation},
      {"203.0.113.1", AddressKind::kDocumentation},
      {"2001:db8::1", AddressKind::kDocumentation},
      {"3fff::1", AddressKind::kDocumentation},
      {"198.18.0.1", AddressKind::kBenchmarking},
      {"198.19.255.255", AddressKind::kBenchmarking},
      {"2001:2::1", AddressKind::kBenchmarking},
      {"192.0.0.8", AddressKind::kSpecialPurpose},
      {"192.88.99.1", AddressKind::kSpecialPurpose},
      {"2001::1", AddressKind::kSpecialPurpose},        // Teredo
      {"2002:a00:1::1", AddressKind::kSpecialPurpose},  // 6to4
      {"64:ff9b:1::1", AddressKind::kSpecialPurpose},
      {"::8.8.8.8", AddressKind::kSpecialPurpose},  // IPv4-compatible, deprecated
      // The edges around them are public.
      {"8.8.8.8", AddressKind::kPublic},
      {"1.1.1.1", AddressKind::kPublic},
      {"9.255.255.255", AddressKind::kPublic},
      {"11.0.0.0", AddressKind::kPublic},
      {"100.63.255.255", AddressKind::kPublic},
      {"100.128.0.0", AddressKind::kPublic},
      {"126.255.255.255", AddressKind::kPublic},
      {"128.0.0.0", AddressKind::kPublic},
      {"169.253.0.1", AddressKind::kPublic},
      {"172.15.255.255", AddressKind::kPublic},
      {"172.32.0.0", AddressKind::kPublic},
      {"192.167.0.1", AddressKind::kPublic},
      {"198.17.255.255", AddressKind::kPublic},
      {"198.20.0.0", AddressKind::kPublic},
      {"223.255.255.255", AddressKind::kPublic},
      {"2606:4700::1111", AddressKind::kPublic},
      {"2001:4860:4860::8888", AddressKind::kPublic},
      {"2003::1", AddressKind::kPublic},
      {"3ffe::1", AddressKind::kPublic},
      {"::ffff:8.8.8.8", AddressKind::kPublic},
      {"64:ff9b::8.8.8.8", AddressKind::kPublic},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(Classify(Ip(c.address)), c.kind)
        << c.address << " is " << ToString(Classify(Ip(c.address)));
  }
}

TEST(EgressAddressTest, EmbeddedIpv4TakesItsKindInEveryForm) {
  for (std::string_view v4 : {"127.0.0.1", "10.0.0.5", "169.254.169.254", "100.64.0.1", "224.0.0.1",
                              "0.0.0.0", "255.255.255.255", "240.0.0.1"}) {
    AddressKind kind = Classify(Ip(v4));
    ASSERT_NE(kind, AddressKind::kPublic) << v4;
    EXPECT_EQ(Classify(Ip("::ffff:" + std::string(v4))), kind) << v4;
    EXPECT_EQ(Classify(Ip("64:ff9b::" + std::string(v4))), kind) << v4;
  }
  // ::0.0.0.0 and ::0.0.0.1 are :: and ::1.
  EXPECT_EQ(Classify(Ip("::10.0.0.5")), AddressKind::kPrivate);
  EXPECT_EQ(Classify(Ip("::127.0.0.2")), AddressKind::kLoopback);
}

TEST(EgressAddressTest, NonPublicAddressesAreRefusedWithTheirKind) {
  Policy policy = MustParse({"api.example.com"});
  auto check = [&](std::string_view address) {
    return CheckAddress(policy, "api.example.com", Ip(address), 443, {});
  };
  AddressVerdict private_address = check("10.0.0.5");
  EXPECT_FALSE(private_address.allowed);
  EXPECT_EQ(private_address.reason, "api.example.com resolved to 10.0.0.5, a private address");
  EXPECT_EQ(check("::").reason, "api.example.com resolved to ::, an unspecified address");
  EXPECT_EQ(check("::ffff:127.0.0.1").reason,
            "api.example.com resolved to ::ffff:127.0.0.1, an IPv4-mapped form of a loopback "
            "address");
  EXPECT_EQ(check("64:ff9b::a9fe:a9fe").reason,
            "api.example.com resolved to 64:ff9b::a9fe:a9fe, a NAT64 form of a link-local "
            "address");
  for (std::string_view address : {"127.0.0.1",
                                   "::1",
                                   "10.1.2.3",
                                   "172.20.0.1",
                                   "192.168.0.10",
                                   "fd00::5",
                                   "169.254.169.254",
                                   "fe80::1",
                                   "100.100.100.100",
                                   "224.0.0.251",
                                   "ff05::2",
                                   "0.0.0.0",
                                   "255.255.255.255",
                                   "250.1.2.3",
                                   "192.0.2.10",
                                   "198.18.5.5",
                                   "2001:db8::9",
                                   "::ffff:10.0.0.1",
                                   "::ffff:169.254.169.254",
                                   "64:ff9b::10.0.0.1",
                                   "::ffff:0.0.0.0"}) {
    EXPECT_FALSE(check(address).allowed) << address;
  }
  AddressVerdict public_address = check("8.8.8.8");
  EXPECT_TRUE(public_address.allowed);
  EXPECT_EQ(public_address.reason, "api.example.com resolved to 8.8.8.8, a public address");
  EXPECT_TRUE(check("2606:4700::1111").allowed);
  EXPECT_TRUE(check("::ffff:8.8.8.8").allowed);
}

TEST(EgressAddressTest, TheHostsOwnAddressesAreRefused) {
  Policy policy = MustParse({"api.example.com"});
  std::vector<Address> own = {Ip("8.8.4.4"), Ip("2606:4700::6810:1")};
  AddressVerdict verdict = CheckAddress(policy, "api.example.com", Ip("8.8.4.4"), 443, own);
  EXPECT_FALSE(verdict.allowed);
  EXPECT_EQ(verdict.reason, "api.example.com resolved to 8.8.4.4, an address of this host");
  EXPECT_FALSE(CheckAddress(policy, "api.example.com", Ip("::ffff:8.8.4.4"), 443, own).allowed);
  EXPECT_FALSE(CheckAddress(policy, "api.example.com", Ip("2606:4700::6810:1"), 443, own).allowed);
  EXPECT_TRUE(CheckAddress(policy, "api.example.com", Ip("8.8.8.8"), 443, own).allowed);
}

TEST(EgressAddressTest, ARuleNamingTheAddressAndPortExemptsIt) {
  Policy policy = MustParse({"127.0.0.1:8080", "10.0.0.5", "[::1]:9000", "8.8.4.4:53"});
  std::vector<Address> own = {Ip("127.0.0.1"), Ip("8.8.4.4")};
  AddressVerdict loopback = CheckAddress(policy, "127.0.0.1", Ip("127.0.0.1"), 8080, own);
  EXPECT_TRUE(loopback.allowed) << loopback.reason;
  EXPECT_EQ(loopback.reason, "127.0.0.1 resolved to 127.0.0.1, which rule '127.0.0.1:8080' names");
  // Only the port the rule names: the host's other loopback services stay closed.
  EXPECT_FALSE(CheckAddress(policy, "evil.example", Ip("127.0.0.1"), 22, own).allowed);
  EXPECT_FALSE(CheckAddress(policy, "evil.example", Ip("127.0.0.1"), 80, own).allowed);
  EXPECT_TRUE(CheckAddress(policy, "x", Ip("10.0.0.5"), 443, own).allowed);
  EXPECT_FALSE(CheckAddress(policy, "x", Ip("10.0.0.5"), 8080, own).allowed);
  EXPECT_TRUE(CheckAddress(policy, "x", Ip("::1"), 9000, own).allowed);
  EXPECT_TRUE(CheckAddress(policy, "x", Ip("8.8.4.4"), 53, own).allowed);
  EXPECT_FALSE(CheckAddress(policy, "x", Ip("8.8.4.4"), 443, own).allowed);
  // Only the exact form.
  EXPECT_FALSE(CheckAddress(policy, "x", Ip("::ffff:127.0.0.1"), 8080, own).allowed);
  EXPECT_FALSE(CheckAddress(policy, "x", Ip("10.0.0.6"), 443, own).allowed);
}

TEST(EgressAddressTest, HostAddressesIncludeLoopback) {
  auto addresses = HostAddresses();
  ASSERT_TRUE(addresses.has_value()) << addresses.error().ToString();
  bool loopback = false;
  for (const Address& a : *addresses) loopback = loopback || a == Ip("127.0.0.1");
  EXPECT_TRUE(loopback);
}

// --- proxy request heads -----------------------------------------------------------------

ProxyRequest MustParseRequest(std::string_view head) {
  auto request = ParseProxyRequest(head);
  EXPECT_TRUE(request.has_value()) << request.error().ToString();
  return request.value_or(ProxyRequest{});
}

// The message for a head that must be refused.
std::string BadHead(std::string_view head) {
  auto request = ParseProxyRequest(head);
  EXPECT_FALSE(request.has_value()) << "accepted: " << head;
  if (request) return "";
  EXPECT_EQ(request.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(request.error().subject(), "proxy request");
  return request.error().message();
}

TEST(EgressProxyRequestTest, ConnectNamesHostAndPort) {
  std::string head =
      "CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\n"
      "Proxy-Authorization: Basic eDp5\r\n\r\n";
  ProxyRequest request = MustParseRequest(head);
  EXPECT_TRUE(request.connect);
  EXPECT_EQ(request.host, "api.github.com");
  EXPECT_EQ(request.port, 443);
  EXPECT_EQ(request.head, "");
  EXPECT_EQ(request.head_size, head.size());

  ProxyRequest v6 = MustParseRequest("CONNECT [2001:db8::1]:8443 HTTP/1.0\r\n\r\n");
  EXPECT_EQ(v6.host, "2001:db8::1");
  EXPECT_EQ(v6.port, 8443);
  ProxyRequest idn = MustParseRequest("CONNECT BÜCHER.example:443 HTTP/1.1\r\n\r\n");
  EXPECT_EQ(idn.host, "BÜCHER.example");
}

TEST(EgressProxyRequestTest, BytesAfterTheHeadAreNotPartOfIt) {
  std::string head = "CONNECT example.com:443 HTTP/1.1\r\n\r\n";
  ProxyRequest request = MustParseRequest(head + "\x16\x03\x01 tls hello");
  EXPECT_EQ(request.head_size, head.size());
  std::string post = "POST http://example.com/f HTTP/1.1\r\nContent-Length: 4\r\n\r\n";
  ProxyRequest with_body = MustParseRequest(post + "body");
  EXPECT_EQ(with_body.head_size, post.size());
  EXPECT_EQ(
      with_body.head,
      "POST /f HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\nConnection: close\r\n\r\n");
}

TEST(EgressProxyRequestTest, ConnectNeedsAValidHostAndPort) {
  EXPECT_EQ(BadHead("CONNECT example.com HTTP/1.1\r\n\r\n"),
            "proxy request: CONNECT needs host:port, got 'example.com'");
  EXPECT_NE(BadHead("CONNECT example.com:0 HTTP/1.1\r\n\r\n").find("port '0'"), std::string::npos);
  EXPECT_NE(BadHead("CONNECT example.com:65536 HTTP/1.1\r\n\r\n").find("port '65536'"),
            std::string::npos);
  EXPECT_NE(BadHead("CONNECT example.com: HTTP/1.1\r\n\r\n").find("port ''"), std::string::npos);
  EXPECT_NE(BadHead("CONNECT example.com:https HTTP/1.1\r\n\r\n").find("port 'https'"),
            std::string::npos);
  EXPECT_NE(BadHead("CONNECT :443 HTTP/1.1\r\n\r\n").find("names no host"), std::string::npos);
  EXPECT_NE(BadHead("CONNECT user:pw@example.com:443 HTTP/1.1\r\n\r\n").find("user information"),
            std::string::npos);
  EXPECT_NE(BadHead("CONNECT [::1 HTTP/1.1\r\n\r\n").find("'[' without ']'"), std::string::npos);
  EXPECT_NE(BadHead("CONNECT [1.2.3.4]:443 HTTP/1.1\r\n\r\n").find("not an IPv6 address"),
            std::string::npos);
  EXPECT_NE(BadHead("CONNECT [::1]443 HTTP/1.1\r\n\r\n").find("is not host:port"),
            std::string::npos);
  EXPECT_NE(BadHead("CONNECT ::1:443 HTTP/1.1\r\n\r\n").find("names no host"), std::string::npos);
  EXPECT_NE(BadHead("CONNECT http://example.com:443/ HTTP/1.1\r\n\r\n").find("port"),
            std::string::npos);
}

TEST(EgressProxyRequestTest, AbsoluteGetIsRewrittenForTheOrigin) {
  std::string head =
      "GET http://example.com/path/to?q=1&r=%20x HTTP/1.1\r\n"
      "Host: example.com\r\n"
      "User-Agent: curl/8.0\r\n"
      "Proxy-Connection: Keep-Alive\r\n"
      "Connection: keep-alive\r\n"
      "Keep-Alive: timeout=5\r\n"
      "Accept:  */*  \r\n"
      "proxy-authorization: Basic eDp5\r\n"
      "X-Empty:\r\n"
      "\r\n";
  ProxyRequest request = MustParseRequest(head);
  EXPECT_FALSE(request.connect);
  EXPECT_EQ(request.host, "example.com");
  EXPECT_EQ(request.port, 80);
  EXPECT_EQ(request.head,
            "GET /path/to?q=1&r=%20x HTTP/1.1\r\n"
            "Host: example.com\r\n"
            "User-Agent: curl/8.0\r\n"
            "Accept:  */*  \r\n"
            "X-Empty:\r\n"
            "Connection: close\r\n"
            "\r\n");
  EXPECT_EQ(request.head_size, head.size());
}

TEST(EgressProxyRequestTest, HostIsTheUriAuthority) {
  // A lying Host header is replaced in place.
  ProxyRequest lying = MustParseRequest(
      "GET http://example.com:8080/ HTTP/1.1\r\nAccept: */*\r\nhost: evil.example\r\nX: y\r\n\r\n");
  EXPECT_EQ(lying.port, 8080);
  EXPECT_EQ(lying.head,
            "GET / HTTP/1.1\r\nAccept: */*\r\nHost: example.com:8080\r\nX: y\r\nConnection: "
            "close\r\n\r\n");
  // No Host header (HTTP/1.0): one is added after the request line.
  ProxyRequest missing = MustParseRequest("GET http://Example.COM HTTP/1.0\r\nX: y\r\n\r\n");
  EXPECT_EQ(missing.host, "Example.COM");
  EXPECT_EQ(missing.head,
            "GET / HTTP/1.0\r\nHost: Example.COM\r\nX: y\r\nConnection: close\r\n\r\n");
  ProxyRequest query_only = MustParseRequest("HEAD http://example.com?x HTTP/1.1\r\n\r\n");
  EXPECT_EQ(query_only.head, "HEAD /?x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
  ProxyRequest v6 = MustParseRequest("GET http://[2001:db8::1]:81/a HTTP/1.1\r\n\r\n");
  EXPECT_EQ(v6.host, "2001:db8::1");
  EXPECT_EQ(v6.port, 81);
  EXPECT_EQ(v6.head, "GET /a HTTP/1.1\r\nHost: [2001:db8::1]:81\r\nConnection: close\r\n\r\n");
  ProxyRequest upper_scheme = MustParseRequest("GET HTTP://example.com/ HTTP/1.1\r\n\r\n");
  EXPECT_EQ(upper_scheme.host, "example.com");
  ProxyRequest custom = MustParseRequest("PURGE http://example.com/x HTTP/1.1\r\n\r\n");
  EXPECT_EQ(custom.head, "PURGE /x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
}

TEST(EgressProxyRequestTest, WhatIsNotAProxyRequestIsRefused) {
  EXPECT_EQ(BadHead("GET https://example.com/ HTTP/1.1\r\n\r\n"),
            "proxy request: https:// URIs are not proxied as requests: HTTPS goes through "
            "CONNECT host:443");
  EXPECT_EQ(BadHead("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            "proxy request: '/' is not a proxy request: send the absolute URI (GET "
            "http://host/path), or CONNECT host:port for HTTPS");
  EXPECT_NE(BadHead("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").find("not a proxy request"),
            std::string::npos);
  EXPECT_NE(BadHead("GET ftp://example.com/ HTTP/1.1\r\n\r\n").find("scheme 'ftp'"),
            std::string::npos);
  EXPECT_NE(BadHead("GET example.com/ HTTP/1.1\r\n\r\n").find("not an absolute http:// URI"),
            std::string::npos);
  EXPECT_NE(BadHead("GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n").find("user information"),
            std::string::npos);
  // '@' in the path is no user information.
  EXPECT_EQ(MustParseRequest("GET http://example.com/@x HTTP/1.1\r\n\r\n").head,
            "GET /@x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
  EXPECT_NE(BadHead("GET http:///path HTTP/1.1\r\n\r\n").find("names no host"), std::string::npos);
  EXPECT_NE(BadHead("GET http://example.com:0/ HTTP/1.1\r\n\r\n").find("port '0'"),
            std::string::npos);
  EXPECT_NE(BadHead("GET http://example.com:/ HTTP/1.1\r\n\r\n").find("port ''"),
            std::string::npos);
  EXPECT_NE(BadHead("GET http://example.com/#frag HTTP/1.1\r\n\r\n").find("fragment"),
            std::string::npos);
  EXPECT_NE(BadHead("GET http://example.com/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
                .find("more than one Host header"),
            std::string::npos);
  EXPECT_NE(BadHead("GET http://example.com/ HTTP/1.1\r\nX: a\r\n  b\r\n\r\n")
                .find("obsolete line folding"),
            std::string::npos);
}

TEST(EgressProxyRequestTest, MalformedHeadsAreRefused) {
  EXPECT_EQ(BadHead(""), "proxy request: empty request");
  EXPECT_EQ(BadHead("CONNECT example.com:443 HTTP/1.1\r\n"),
            "proxy request: incomplete request head: no blank line after the headers");
  EXPECT_NE(BadHead("CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n").find("no blank line"),
            std::string::npos);
  EXPECT_NE(BadHead("CONNECT exam").find("no blank line"), std::string::npos);
  EXPECT_NE(BadHead("CONNECT example.com:443 HTTP/1.1\n\n").find("no blank line"),
            std::string::npos);
  EXPECT_EQ(BadHead("GET http://example.com/ HTTP/1.1\r\nX: " + std::string(kMaxProxyHead, 'a') +
                    "\r\n\r\n"),
            "proxy request: the request head is longer than 16384 bytes");
  EXPECT_NE(BadHead(std::string(kMaxProxyHead * 4, 'x')).find("longer than 16384"),
            std::string::npos);
  const std::string nul("GET http://exa\0mple.com/ HTTP/1.1\r\n\r\n", 37);
  for (std::string_view garbage :
       {std::string_view(nul), std::string_view("\r\n\r\n"),
        std::string_view("\x16\x03\x01\x02\x00\r\n\r\n"),
        std::string_view("GET http://example.com/ HTTP/2.0\r\n\r\n"),
        std::string_view("GET http://example.com/ HTTP/0.9\r\n\r\n"),
        std::string_view("GET http://example.com/\r\n\r\n"),
        std::string_view("GET  http://example.com/ HTTP/1.1\r\n\r\n"),
        std::string_view("GET http://example.com/ HTTP/1.1\r\nNo colon\r\n\r\n"),
        std::string_view("GET http://example.com/ HTTP/1.1\r\nBad Name: x\r\n\r\n"),
        std::string_view("GET http://example.com/ HTTP/1.1\r\nX: a\rb\r\n\r\n"),
        std::string_view("GET http://example.com/ HTTP/1.1\r\nX: a\nb\r\n\r\n"),
        std::string_view("GET http://example.com/ HTTP/1.1\r\nContent-Length: x\r\n\r\n")}) {
    auto request = ParseProxyRequest(garbage);
    EXPECT_FALSE(request.has_value()) << garbage;
  }
  EXPECT_NE(BadHead("GET http://example.com/ HTTP/2.0\r\n\r\n").find("malformed request head"),
            std::string::npos);
}

TEST(EgressProxyRequestTest, TheHeadSizeIsKnownAtTheBlankLine) {
  EXPECT_EQ(ProxyHeadSize(""), std::nullopt);
  EXPECT_EQ(ProxyHeadSize("GET http://a/ HTTP/1.1\r\n"), std::nullopt);
  EXPECT_EQ(ProxyHeadSize("GET http://a/ HTTP/1.1\r\n\r"), std::nullopt);
  EXPECT_EQ(ProxyHeadSize("GET http://a/ HTTP/1.1\r\n\r\n"), 26u);
  EXPECT_EQ(ProxyHeadSize("GET http://a/ HTTP/1.1\r\n\r\nbody\r\n\r\n"), 26u);
}

TEST(EgressProxyRequestTest, ParsedRequestsFeedTheDecision) {
  Policy policy = MustParse({"*.github.com", "[::1]:8080"});
  ProxyRequest https = MustParseRequest("CONNECT API.GitHub.com.:443 HTTP/1.1\r\n\r\n");
  Decision decision = Allow(policy, https.host, https.port);
  EXPECT_TRUE(decision.allowed) << decision.reason;
  EXPECT_EQ(decision.host, "api.github.com");
  ProxyRequest v6 = MustParseRequest("GET http://[::1]:8080/ HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(Allow(policy, v6.host, v6.port).allowed);
  ProxyRequest ssh = MustParseRequest("CONNECT api.github.com:22 HTTP/1.1\r\n\r\n");
  EXPECT_FALSE(Allow(policy, ssh.host, ssh.port).allowed);
}

}  // namespace
}  // namespace vessel::egress
