// What the host's egress proxy decides from a hostile guest (egress/policy.h): proxy
// request heads, host names and resolved addresses, against rules a user wrote. The input is
// NUL-separated: a request head, the rules (one a line), the hosts (one a line), and two
// bytes of port (443 when absent). Rules that do not parse give way to a fixed policy, so
// that hosts are always decided against something.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "egress/policy.h"
#include "invariant.h"

using vessel::ErrorKind;
using vessel::egress::Address;
using vessel::egress::AddressKind;
using vessel::egress::AddressVerdict;
using vessel::egress::Decision;
using vessel::egress::Policy;
using vessel::egress::Rule;
using vessel::fuzz::Check;

namespace {

// Round-tripping every rule of a long list through ParsePolicy would slow the fuzzer down
// without finding more.
constexpr size_t kMaxRoundTrips = 64;

bool IsPrintable(std::string_view text) {
  for (char c : text) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool StartsWithIgnoringCase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (Lower(text[i]) != prefix[i]) return false;
  }
  return true;
}

std::vector<std::string_view> Split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  while (true) {
    size_t at = text.find(separator);
    parts.push_back(text.substr(0, at));
    if (at == std::string_view::npos) return parts;
    text.remove_prefix(at + 1);
  }
}

const Policy& FallbackPolicy() {
  static const Policy policy = *vessel::egress::ParsePolicy(
      std::vector<std::string>{"*.example.com", "example.org:8080", "bücher.example",
                               "127.0.0.1:8080", "[::1]", "203.0.113.7", "8.8.4.4:53"});
  return policy;
}

const std::vector<Address>& OwnAddresses() {
  static const std::vector<Address> own = {*Address::Parse("8.8.4.4"),
                                           *Address::Parse("2606:4700::6810:1")};
  return own;
}

// Matching written again, independently of Allow's.
bool Matches(const Rule& rule, const Decision& decision) {
  switch (rule.kind) {
    case Rule::Kind::kName: return !decision.address && decision.host == rule.name;
    case Rule::Kind::kSuffix:
      return !decision.address && decision.host.size() > rule.name.size() + 1 &&
             decision.host.ends_with("." + rule.name);
    case Rule::Kind::kAddress: return decision.address && rule.address == decision.address;
  }
  return false;
}

bool IsNormalName(std::string_view name) {
  if (name.empty() || name.size() > 253 || name.front() == '.' || name.back() == '.') {
    return false;
  }
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  }
  return name.find("..") == std::string_view::npos;
}

void CheckRules(const Policy& policy) {
  Check(policy.rules().size() <= vessel::egress::kMaxRules, "at most kMaxRules rules");
  for (size_t i = 0; i < policy.rules().size() && i < kMaxRoundTrips; ++i) {
    const Rule& rule = policy.rules()[i];
    if (rule.kind == Rule::Kind::kAddress) {
      Check(rule.address.has_value() && rule.name.empty(), "an address rule has an address");
    } else {
      Check(IsNormalName(rule.name), "a rule's name is normalised");
      Check(rule.kind != Rule::Kind::kSuffix || rule.name.find('.') != std::string::npos,
            "a suffix has at least two labels");
    }
    Check(rule.port != 0, "a rule's port is never 0");
    auto again = vessel::egress::ParsePolicy(std::vector<std::string>{rule.ToString()});
    Check(again.has_value() && again->rules().size() == 1, "a rule's spelling parses again");
    const Rule& same = again->rules()[0];
    Check(same.kind == rule.kind && same.name == rule.name && same.address == rule.address &&
              same.port == rule.port,
          "a rule's spelling parses to the same rule");
  }
}

void CheckDecision(const Policy& policy, std::string_view host, uint16_t port) {
  Decision decision = vessel::egress::Allow(policy, host, port);
  Check(!decision.reason.empty() && IsPrintable(decision.reason),
        "a decision's reason is one printable line");
  if (!decision.allowed) return;
  Check(port != 0 && !policy.empty(), "nothing is allowed on port 0 or by an empty policy");
  bool matched = false;
  for (const Rule& rule : policy.rules())
    matched = matched || (Matches(rule, decision) && rule.AllowsPort(port));
  Check(matched, "an allowed host is one a rule matches, on a port the rule allows");
  if (decision.address) {
    Check(decision.host == decision.address->ToString(), "a literal's host is its address");
  } else {
    Check(IsNormalName(decision.host), "an allowed name is normalised");
  }
  Decision again = vessel::egress::Allow(policy, decision.host, port);
  Check(again.allowed && again.host == decision.host, "the normalised host is decided alike");
}

void CheckResolved(const Policy& policy, std::string_view host, uint16_t port) {
  std::string_view text = host;
  if (text.starts_with('[') && text.ends_with(']') && text.size() >= 2) {
    text = text.substr(1, text.size() - 2);
  }
  auto address = Address::Parse(text);
  if (!address) return;
  AddressVerdict verdict =
      vessel::egress::CheckAddress(policy, host, *address, port, OwnAddresses());
  Check(!verdict.reason.empty() && IsPrintable(verdict.reason),
        "an address verdict's reason is one printable line");
  bool named = false;
  for (const Rule& rule : policy.rules()) {
    named = named || (rule.address == address && rule.AllowsPort(port));
  }
  bool own = false;
  for (const Address& a : OwnAddresses()) own = own || a == *address;
  if (named) {
    Check(verdict.allowed, "an address a rule names passes on the rule's ports");
  } else if (verdict.allowed) {
    Check(vessel::egress::Classify(*address) == AddressKind::kPublic && !own,
          "an address no rule names passes only when public and not the host's own");
  }
  if (address->is_v4()) {
    std::array<uint8_t, 16> mapped{};
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    std::copy(address->bytes().begin(), address->bytes().end(), mapped.begin() + 12);
    Check(vessel::egress::Classify(Address::V6(mapped)) == vessel::egress::Classify(*address),
          "an IPv4-mapped address classifies as the address it maps");
  }
}

void CheckRequest(std::string_view input) {
  auto request = vessel::egress::ParseProxyRequest(input);
  if (!request) {
    Check(request.error().kind() == ErrorKind::kInvalidConfig &&
              IsPrintable(request.error().message()),
          "a refused request says why in one printable line");
    return;
  }
  Check(request->port != 0 && !request->host.empty(), "a request names a host and a port");
  Check(request->head_size <= input.size() && request->head_size <= vessel::egress::kMaxProxyHead,
        "the head lies within the input and the limit");
  if (request->connect) {
    Check(request->head.empty(), "CONNECT forwards no head");
    return;
  }
  // The target loses "http://" and keeps its authority only in the Host header, which may
  // be new: at most 2 bytes more ("/" for an empty path, and the Host line's 8 bytes against
  // the scheme's 7), and the closing "Connection: close" line (19 bytes).
  constexpr size_t kConnectionClose = sizeof("Connection: close\r\n") - 1;
  Check(request->head.size() <= request->head_size + 2 + kConnectionClose,
        "the rewritten head is no longer than the input, its Host header and Connection: close");
  Check(request->head.ends_with("\r\nConnection: close\r\n\r\n"),
        "the rewritten head asks the origin to close after its answer");
  Check(vessel::egress::ProxyHeadSize(request->head) == request->head.size(),
        "the rewritten head ends at its one blank line");
  Check(!vessel::egress::ParseProxyRequest(request->head),
        "the rewritten head is origin-form, no longer a proxy request");
  size_t hosts = 0;
  for (std::string_view line : Split(request->head, '\n')) {
    Check(!StartsWithIgnoringCase(line, "proxy-connection:") &&
              !StartsWithIgnoringCase(line, "proxy-authorization:"),
          "the proxy's headers are dropped");
    if (StartsWithIgnoringCase(line, "host:")) ++hosts;
  }
  Check(hosts == 1, "the rewritten head has exactly one Host header");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> sections = Split(input, '\0');
  CheckRequest(sections[0]);

  std::vector<std::string> rules;
  if (sections.size() > 1) {
    for (std::string_view rule : Split(sections[1], '\n')) rules.emplace_back(rule);
  }
  auto parsed = vessel::egress::ParsePolicy(rules);
  if (parsed) {
    CheckRules(*parsed);
  } else {
    Check(
        parsed.error().kind() == ErrorKind::kInvalidConfig && IsPrintable(parsed.error().message()),
        "a refused rule list says why in one printable line");
  }
  const Policy& policy = parsed ? *parsed : FallbackPolicy();

  uint16_t port = 443;
  if (sections.size() > 3 && sections[3].size() >= 2) {
    port = static_cast<uint16_t>(static_cast<uint8_t>(sections[3][0]) << 8 |
                                 static_cast<uint8_t>(sections[3][1]));
  }
  if (sections.size() > 2) {
    for (std::string_view host : Split(sections[2], '\n')) {
      CheckDecision(policy, host, port);
      CheckResolved(policy, host, port);
    }
  }
  if (auto request = vessel::egress::ParseProxyRequest(sections[0])) {
    CheckDecision(policy, request->host, request->port);
    CheckResolved(policy, request->host, request->port);
  }
  return 0;
}
