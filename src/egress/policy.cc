#include "egress/policy.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <idn2.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <expected>
#include <memory>
#include <set>

namespace vessel::egress {
namespace {

namespace http = boost::beast::http;

// Longer inputs are refused before IDNA sees them: no valid name comes close.
constexpr size_t kMaxNameInput = 1024;
constexpr size_t kMaxName = 253;
constexpr size_t kMaxLabel = 63;
// How much of a hostile string a reason quotes.
constexpr size_t kMaxQuoted = 80;

// `text` fit to quote in a one-line reason: bytes outside printable ASCII become \xNN,
// and a long string is cut.
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, kMaxQuoted)) {
    auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f && c != '\\') {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", byte);
    }
  }
  if (text.size() > kMaxQuoted) out += "...";
  return out;
}

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsIgnoringCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return Lower(x) == Lower(y); });
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsHexDigit(char c) { return IsDigit(c) || (Lower(c) >= 'a' && Lower(c) <= 'f'); }

bool AllOf(std::string_view text, bool (*predicate)(char)) {
  return std::all_of(text.begin(), text.end(), predicate);
}

// 1..65535 in decimal digits; nullopt for anything else.
std::optional<uint16_t> ParsePort(std::string_view text) {
  if (text.empty() || text.size() > 5 || !AllOf(text, IsDigit)) return std::nullopt;
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || value == 0 || value > 65535) return std::nullopt;
  return static_cast<uint16_t>(value);
}

std::string PortError(std::string_view port) {
  return fmt::format("port '{}' is not a number from 1 to 65535", Printable(port));
}

// A label of letters, digits and '-', not starting or ending with '-'.
std::expected<void, std::string> CheckLabel(std::string_view label) {
  if (label.empty()) return std::unexpected("it has an empty label");
  if (label.size() > kMaxLabel) {
    return std::unexpected(
        fmt::format("label '{}' is longer than {} characters", Printable(label), kMaxLabel));
  }
  for (char c : label) {
    if (!(IsDigit(c) || (c >= 'a' && c <= 'z') || c == '-')) {
      return std::unexpected(fmt::format(
          "label '{}' has a character other than letters, digits and '-'", Printable(label)));
    }
  }
  if (label.front() == '-' || label.back() == '-') {
    return std::unexpected(fmt::format("label '{}' starts or ends with '-'", Printable(label)));
  }
  return {};
}

// Decimal or 0x-hex, as some resolvers read the parts of an IPv4 address.
bool LooksNumeric(std::string_view label) {
  if (AllOf(label, IsDigit)) return true;
  return label.size() > 2 && label[0] == '0' && Lower(label[1]) == 'x' &&
         AllOf(label.substr(2), IsHexDigit);
}

// `text` as a host name in the one form rules and hosts are compared in: ASCII (IDNA2008
// with UTS #46 non-transitional mapping, so ß stays ß and becomes an A-label), lower
// case, no trailing dot, LDH labels. Or why it is not a host name.
std::expected<std::string, std::string> NormaliseName(std::string_view text) {
  if (text.empty()) return std::unexpected("it is empty");
  if (text.size() > kMaxNameInput) return std::unexpected("it is far too long");
  bool ascii = true;
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte == 0x7f) {
      return std::unexpected("spaces and control characters are not allowed");
    }
    if (byte >= 0x80) ascii = false;
  }
  std::string name;
  if (ascii) {
    // ASCII needs no IDNA: lower case it and let the LDH check below judge it. libidn2
    // would refuse some names DNS serves (ab--cd.example).
    name.resize(text.size());
    std::transform(text.begin(), text.end(), name.begin(), Lower);
  } else {
    char* converted = nullptr;
    int rc = idn2_to_ascii_8z(std::string(text).c_str(), &converted,
                              IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT);
    std::unique_ptr<char, decltype(&idn2_free)> owned(converted, &idn2_free);
    if (rc != IDN2_OK) {
      return std::unexpected(fmt::format("IDNA refuses it: {}", idn2_strerror(rc)));
    }
    name = converted;
    std::transform(name.begin(), name.end(), name.begin(), Lower);
  }
  if (name.ends_with('.')) name.pop_back();
  if (name.empty()) return std::unexpected("it is empty");
  if (name.size() > kMaxName) {
    return std::unexpected(fmt::format("it is longer than {} characters", kMaxName));
  }
  std::string_view rest = name;
  std::string_view last;
  while (true) {
    size_t dot = rest.find('.');
    last = rest.substr(0, dot);
    if (auto ok = CheckLabel(last); !ok) return std::unexpected(ok.error());
    if (dot == std::string_view::npos) break;
    rest.remove_prefix(dot + 1);
  }
  if (LooksNumeric(last)) {
    return std::unexpected("it looks like an IP address but is not one (IPv4 is 1.2.3.4)");
  }
  return name;
}

// Where an address leads, and through which IPv6 form of an IPv4 address, if any.
struct Classification {
  AddressKind kind;
  std::string_view form;  // "IPv4-mapped", "NAT64", "IPv4-compatible" or empty
};

AddressKind ClassifyV4(std::span<const uint8_t> b) {
  uint8_t a0 = b[0], a1 = b[1], a2 = b[2], a3 = b[3];
  if (a0 == 0) return AddressKind::kUnspecified;
  if (a0 == 10) return AddressKind::kPrivate;
  if (a0 == 100 && (a1 & 0xc0) == 64) return AddressKind::kSharedCgnat;
  if (a0 == 127) return AddressKind::kLoopback;
  if (a0 == 169 && a1 == 254) return AddressKind::kLinkLocal;
  if (a0 == 172 && (a1 & 0xf0) == 16) return AddressKind::kPrivate;
  if (a0 == 192 && a1 == 0 && a2 == 0) return AddressKind::kSpecialPurpose;
  if (a0 == 192 && a1 == 0 && a2 == 2) return AddressKind::kDocumentation;
  if (a0 == 192 && a1 == 88 && a2 == 99) return AddressKind::kSpecialPurpose;  // 6to4 relays
  if (a0 == 192 && a1 == 168) return AddressKind::kPrivate;
  if (a0 == 198 && (a1 & 0xfe) == 18) return AddressKind::kBenchmarking;
  if (a0 == 198 && a1 == 51 && a2 == 100) return AddressKind::kDocumentation;
  if (a0 == 203 && a1 == 0 && a2 == 113) return AddressKind::kDocumentation;
  if ((a0 & 0xf0) == 224) return AddressKind::kMulticast;
  if (a0 == 255 && a1 == 255 && a2 == 255 && a3 == 255) return AddressKind::kBroadcast;
  if ((a0 & 0xf0) == 240) return AddressKind::kReserved;
  return AddressKind::kPublic;
}

bool StartsWith(std::span<const uint8_t> bytes, std::initializer_list<uint8_t> prefix) {
  return std::equal(prefix.begin(), prefix.end(), bytes.begin());
}

Classification ClassifyWithForm(const Address& address) {
  std::span<const uint8_t> b = address.bytes();
  if (address.is_v4()) return {ClassifyV4(b), ""};
  std::span<const uint8_t> last4 = b.subspan(12);
  constexpr uint8_t kZero12[12] = {};
  bool first12_zero = std::equal(b.begin(), b.begin() + 12, std::begin(kZero12));
  if (first12_zero) {
    bool low_zero = last4[0] == 0 && last4[1] == 0 && last4[2] == 0;
    if (low_zero && last4[3] == 0) return {AddressKind::kUnspecified, ""};
    if (low_zero && last4[3] == 1) return {AddressKind::kLoopback, ""};
    AddressKind embedded = ClassifyV4(last4);
    return {embedded == AddressKind::kPublic ? AddressKind::kSpecialPurpose : embedded,
            "IPv4-compatible"};
  }
  if (StartsWith(b, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff})) {
    return {ClassifyV4(last4), "IPv4-mapped"};
  }
  if (StartsWith(b, {0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0})) {
    return {ClassifyV4(last4), "NAT64"};
  }
  if (StartsWith(b, {0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}))
    return {AddressKind::kSpecialPurpose, ""};
  if ((b[0] & 0xfe) == 0xfc) return {AddressKind::kPrivate, ""};
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return {AddressKind::kLinkLocal, ""};
  if (b[0] == 0xff) return {AddressKind::kMulticast, ""};
  if (StartsWith(b, {0x20, 0x01, 0x0d, 0xb8})) return {AddressKind::kDocumentation, ""};
  if (b[0] == 0x3f && b[1] == 0xff && (b[2] & 0xf0) == 0) return {AddressKind::kDocumentation, ""};
  if (StartsWith(b, {0x20, 0x01, 0x00, 0x02, 0x00, 0x00})) return {AddressKind::kBenchmarking, ""};
  if (b[0] == 0x20 && b[1] == 0x01 && (b[2] & 0xfe) == 0) return {AddressKind::kSpecialPurpose, ""};
  if (b[0] == 0x20 && b[1] == 0x02) return {AddressKind::kSpecialPurpose, ""};  // 6to4
  // Global unicast is 2000::/3; IANA has assigned nothing public outside it.
  if ((b[0] & 0xe0) != 0x20) return {AddressKind::kReserved, ""};
  return {AddressKind::kPublic, ""};
}

// "a private address", "an IPv4-mapped form of a loopback address".
std::string Describe(const Classification& c) {
  std::string kind(ToString(c.kind));
  std::string article = c.kind == AddressKind::kUnspecified ? "an" : "a";
  if (c.form.empty()) return fmt::format("{} {} address", article, kind);
  std::string_view form_article = c.form.starts_with("IPv4") ? "an" : "a";
  return fmt::format("{} {} form of {} {} address", form_article, c.form, article, kind);
}

// The IPv4 address an IPv4-mapped address stands for, else the address itself.
Address Unmapped(const Address& address) {
  std::span<const uint8_t> b = address.bytes();
  if (!address.is_v4() && StartsWith(b, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff})) {
    return Address::V4({b[12], b[13], b[14], b[15]});
  }
  return address;
}

// "ports 443, 8080" for the reason of a refused port.
std::string PortsAllowedBy(const std::vector<const Rule*>& rules) {
  bool all_default =
      std::all_of(rules.begin(), rules.end(), [](const Rule* r) { return !r->port; });
  if (all_default) return "rules without a port allow 80 and 443";
  std::set<uint16_t> ports;
  for (const Rule* rule : rules) {
    if (rule->port) {
      ports.insert(*rule->port);
    } else {
      ports.insert(kDefaultPorts.begin(), kDefaultPorts.end());
    }
  }
  std::string list;
  for (uint16_t p : ports) list += (list.empty() ? "" : ", ") + std::to_string(p);
  return fmt::format("its rules allow {} {}", ports.size() == 1 ? "port" : "ports", list);
}

// The decision once the rules that match a host are known.
Decision Decide(std::vector<const Rule*> matches, std::string host, uint16_t port,
                std::optional<Address> address, std::string_view not_listed) {
  Decision decision;
  if (matches.empty()) {
    decision.reason = std::string(not_listed);
    return decision;
  }
  for (const Rule* rule : matches) {
    if (!rule->AllowsPort(port)) continue;
    decision.allowed = true;
    decision.reason =
        fmt::format("port {} of {} is allowed by rule '{}'", port, host, rule->ToString());
    decision.host = std::move(host);
    decision.address = address;
    return decision;
  }
  decision.reason =
      fmt::format("port {} is not allowed for {} ({})", port, host, PortsAllowedBy(matches));
  return decision;
}

std::unexpected<Error> RuleError(std::string_view rule, std::string_view why) {
  return Fail(Error::InvalidConfig("network", fmt::format("rule '{}': {}", Printable(rule), why)));
}

Result<Rule> ParseRule(std::string_view text) {
  if (text.size() > kMaxNameInput) return RuleError(text, "it is far too long");
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte == 0x7f) {
      return RuleError(text, "spaces and control characters are not allowed");
    }
  }
  if (text.find_first_of("/@") != std::string_view::npos) {
    return RuleError(text,
                     "a rule is NAME, *.SUFFIX or an IP address, optionally with :PORT, "
                     "not a URL");
  }
  Rule rule;
  std::string_view host = text;
  if (text.starts_with('[')) {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return RuleError(text, "'[' without ']'");
    auto address = Address::Parse(text.substr(1, close - 1));
    if (!address || address->is_v4()) {
      return RuleError(text, "only an IPv6 address goes in brackets");
    }
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return RuleError(text, "only :PORT may follow ']'");
      rule.port = ParsePort(rest.substr(1));
      if (!rule.port) return RuleError(text, PortError(rest.substr(1)));
    }
    rule.kind = Rule::Kind::kAddress;
    rule.address = address;
    return rule;
  }
  size_t colons = static_cast<size_t>(std::count(text.begin(), text.end(), ':'));
  if (colons > 1) {
    auto address = Address::Parse(text);
    if (!address) {
      return RuleError(text,
                       "neither an IPv6 address nor NAME:PORT (an IPv6 address with a port "
                       "goes in brackets: [2001:db8::1]:8080)");
    }
    rule.kind = Rule::Kind::kAddress;
    rule.address = address;
    return rule;
  }
  if (colons == 1) {
    size_t colon = text.find(':');
    host = text.substr(0, colon);
    rule.port = ParsePort(text.substr(colon + 1));
    if (!rule.port) return RuleError(text, PortError(text.substr(colon + 1)));
  }
  if (auto address = Address::Parse(host)) {
    rule.kind = Rule::Kind::kAddress;
    rule.address = address;
    return rule;
  }
  if (host == "*" || host == "*.") {
    return RuleError(text, "'*' is too broad: it would allow every host; list the domains");
  }
  if (host.starts_with("*.")) {
    rule.kind = Rule::Kind::kSuffix;
    host.remove_prefix(2);
  }
  if (host.find('*') != std::string_view::npos) {
    return RuleError(text, "a wildcard may only be the whole first label, as in *.example.com");
  }
  auto name = NormaliseName(host);
  if (!name) {
    return RuleError(text, fmt::format("not a valid host name: {}", name.error()));
  }
  if (rule.kind == Rule::Kind::kSuffix && name->find('.') == std::string::npos) {
    return RuleError(text, fmt::format("too broad: it would allow every name under the "
                                       "top-level domain '{}'; name a domain below it, as in "
                                       "*.example.{}",
                                       *name, *name));
  }
  rule.name = std::move(*name);
  return rule;
}

// host[:port] or [v6][:port], as a request target's authority writes it.
struct Authority {
  std::string host;  // IPv6 without brackets
  uint16_t port = 0;
};

std::expected<Authority, std::string> ParseAuthority(std::string_view text,
                                                     std::optional<uint16_t> default_port) {
  if (text.find('@') != std::string_view::npos) {
    return std::unexpected("user information (user@host) in the target is not accepted");
  }
  Authority authority;
  std::string_view rest;
  if (text.starts_with('[')) {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return std::unexpected("'[' without ']' in the host");
    std::string_view inside = text.substr(1, close - 1);
    auto address = Address::Parse(inside);
    if (!address || address->is_v4()) {
      return std::unexpected(
          fmt::format("'[{}]' is not an IPv6 address in brackets", Printable(inside)));
    }
    authority.host = std::string(inside);
    rest = text.substr(close + 1);
  } else {
    size_t colon = text.find(':');
    authority.host = std::string(text.substr(0, colon));
    if (colon != std::string_view::npos) rest = text.substr(colon);
  }
  if (authority.host.empty()) return std::unexpected("the target names no host");
  if (rest.empty()) {
    if (!default_port) {
      return std::unexpected(fmt::format("CONNECT needs host:port, got '{}'", Printable(text)));
    }
    authority.port = *default_port;
    return authority;
  }
  if (rest[0] != ':') {
    return std::unexpected(fmt::format("'{}' is not host:port", Printable(text)));
  }
  auto port = ParsePort(rest.substr(1));
  if (!port) return std::unexpected(PortError(rest.substr(1)));
  authority.port = *port;
  return authority;
}

std::unexpected<Error> BadRequest(std::string_view why) {
  return Fail(Error::InvalidConfig("proxy request", std::string(why)));
}

// The head for the origin server: `head` (already accepted by Beast) with the origin-form
// target, without the proxy's own headers and the guest's Connection and Keep-Alive, with
// Host set to `authority` and `Connection: close` last.
Result<std::string> RewriteHead(std::string_view head, std::string_view target,
                                std::string_view origin_target, std::string_view authority) {
  size_t line_end = head.find("\r\n");
  std::string_view request_line = head.substr(0, line_end);
  // method SP target SP version, single spaces (Beast accepted it).
  size_t target_at = request_line.find(' ') + 1;
  std::string out;
  out.reserve(head.size() + authority.size() + 8);
  out.append(request_line.substr(0, target_at));
  out.append(origin_target);
  out.append(request_line.substr(target_at + target.size()));
  out.append("\r\n");
  std::string host_line = fmt::format("Host: {}\r\n", authority);
  size_t host_at = out.size();
  bool host_written = false;
  std::string_view fields = head.substr(line_end + 2);
  while (!fields.starts_with("\r\n")) {
    size_t end = fields.find("\r\n");
    std::string_view line = fields.substr(0, end);
    fields.remove_prefix(end + 2);
    if (line.starts_with(' ') || line.starts_with('\t')) {
      return BadRequest("obsolete line folding (a header line starting with a space) is refused");
    }
    std::string_view name = line.substr(0, line.find(':'));
    if (EqualsIgnoringCase(name, "Proxy-Connection") ||
        EqualsIgnoringCase(name, "Proxy-Authorization") || EqualsIgnoringCase(name, "Connection") ||
        EqualsIgnoringCase(name, "Keep-Alive")) {
      continue;
    }
    if (EqualsIgnoringCase(name, "Host")) {
      if (host_written) return BadRequest("more than one Host header");
      out.append(host_line);
      host_written = true;
      continue;
    }
    out.append(line);
    out.append("\r\n");
  }
  if (!host_written) out.insert(host_at, host_line);
  out.append("Connection: close\r\n\r\n");
  return out;
}

}  // namespace

Address Address::V4(const std::array<uint8_t, 4>& bytes) {
  std::array<uint8_t, 16> all{};
  std::copy(bytes.begin(), bytes.end(), all.begin());
  return Address(true, all);
}

Address Address::V6(const std::array<uint8_t, 16>& bytes) { return Address(false, bytes); }

std::optional<Address> Address::Parse(std::string_view text) {
  // inet_pton takes a C string; the longest IPv6 text is 45 characters.
  if (text.empty() || text.size() > INET6_ADDRSTRLEN) return std::nullopt;
  std::string copy(text);
  std::array<uint8_t, 16> bytes{};
  if (inet_pton(AF_INET, copy.c_str(), bytes.data()) == 1) {
    return V4({bytes[0], bytes[1], bytes[2], bytes[3]});
  }
  if (inet_pton(AF_INET6, copy.c_str(), bytes.data()) == 1) return V6(bytes);
  return std::nullopt;
}

std::optional<Address> Address::FromSockaddr(const sockaddr& addr) {
  if (addr.sa_family == AF_INET) {
    sockaddr_in in{};
    std::memcpy(&in, &addr, sizeof(in));
    std::array<uint8_t, 4> bytes{};
    std::memcpy(bytes.data(), &in.sin_addr, bytes.size());
    return V4(bytes);
  }
  if (addr.sa_family == AF_INET6) {
    sockaddr_in6 in6{};
    std::memcpy(&in6, &addr, sizeof(in6));
    std::array<uint8_t, 16> bytes{};
    std::memcpy(bytes.data(), &in6.sin6_addr, bytes.size());
    return V6(bytes);
  }
  return std::nullopt;
}

std::string Address::ToString() const {
  char text[INET6_ADDRSTRLEN] = {};
  inet_ntop(v4_ ? AF_INET : AF_INET6, bytes_.data(), text, sizeof(text));
  return text;
}

std::string_view ToString(AddressKind kind) {
  switch (kind) {
    case AddressKind::kPublic: return "public";
    case AddressKind::kUnspecified: return "unspecified";
    case AddressKind::kLoopback: return "loopback";
    case AddressKind::kPrivate: return "private";
    case AddressKind::kSharedCgnat: return "shared (CGNAT)";
    case AddressKind::kLinkLocal: return "link-local";
    case AddressKind::kMulticast: return "multicast";
    case AddressKind::kBroadcast: return "broadcast";
    case AddressKind::kReserved: return "reserved";
    case AddressKind::kDocumentation: return "documentation";
    case AddressKind::kBenchmarking: return "benchmarking";
    case AddressKind::kSpecialPurpose: return "special-purpose";
  }
  return "unknown";
}

AddressKind Classify(const Address& address) { return ClassifyWithForm(address).kind; }

bool Rule::AllowsPort(uint16_t p) const {
  if (port) return *port == p;
  return std::find(kDefaultPorts.begin(), kDefaultPorts.end(), p) != kDefaultPorts.end();
}

std::string Rule::ToString() const {
  std::string text;
  switch (kind) {
    case Kind::kName: text = name; break;
    case Kind::kSuffix: text = "*." + name; break;
    case Kind::kAddress:
      text = address->is_v4() ? address->ToString() : "[" + address->ToString() + "]";
      break;
  }
  if (port) text += fmt::format(":{}", *port);
  return text;
}

Result<Policy> ParsePolicy(std::span<const std::string> rules) {
  if (rules.size() > kMaxRules) {
    return Fail(Error::InvalidConfig(
        "network", fmt::format("{} rules; at most {} are allowed", rules.size(), kMaxRules)));
  }
  std::vector<Rule> parsed;
  parsed.reserve(rules.size());
  for (size_t i = 0; i < rules.size(); ++i) {
    if (rules[i].empty()) {
      return Fail(Error::InvalidConfig("network", fmt::format("rule {} is empty", i + 1)));
    }
    auto rule = ParseRule(rules[i]);
    if (!rule) return Fail(std::move(rule).error());
    parsed.push_back(std::move(*rule));
  }
  return Policy(std::move(parsed));
}

Decision Allow(const Policy& policy, std::string_view host, uint16_t port) {
  if (port == 0) return Decision{.reason = "port 0 is not a port one can connect to"};
  std::optional<Address> literal;
  if (host.starts_with('[')) {
    if (host.ends_with(']')) literal = Address::Parse(host.substr(1, host.size() - 2));
    if (!literal || literal->is_v4()) {
      return Decision{.reason =
                          fmt::format("'{}' is not an IPv6 address in brackets", Printable(host))};
    }
  } else {
    literal = Address::Parse(host);
  }
  std::vector<const Rule*> matches;
  if (literal) {
    for (const Rule& rule : policy.rules()) {
      if (rule.kind == Rule::Kind::kAddress && rule.address == literal) matches.push_back(&rule);
    }
    std::string text = literal->ToString();
    std::string not_listed = fmt::format(
        "{} is an IP address, and IP addresses are refused unless a rule names them", text);
    return Decide(std::move(matches), std::move(text), port, literal, not_listed);
  }
  auto name = NormaliseName(host);
  if (!name) {
    return Decision{
        .reason = fmt::format("'{}' is not a valid host name: {}", Printable(host), name.error())};
  }
  for (const Rule& rule : policy.rules()) {
    bool match = false;
    if (rule.kind == Rule::Kind::kName) {
      match = *name == rule.name;
    } else if (rule.kind == Rule::Kind::kSuffix) {
      match = name->size() > rule.name.size() && name->ends_with(rule.name) &&
              (*name)[name->size() - rule.name.size() - 1] == '.';
    }
    if (match) matches.push_back(&rule);
  }
  std::string not_listed = fmt::format("{} is not in this sandbox's allowlist{}", *name,
                                       policy.empty() ? " (it is empty: no egress)" : "");
  return Decide(std::move(matches), std::move(*name), port, std::nullopt, not_listed);
}

AddressVerdict CheckAddress(const Policy& policy, std::string_view host, const Address& address,
                            uint16_t port, std::span<const Address> host_addresses) {
  std::string text = address.ToString();
  for (const Rule& rule : policy.rules()) {
    if (rule.kind == Rule::Kind::kAddress && rule.address == address && rule.AllowsPort(port)) {
      return {true, fmt::format("{} resolved to {}, which rule '{}' names", Printable(host), text,
                                rule.ToString())};
    }
  }
  Address unmapped = Unmapped(address);
  for (const Address& own : host_addresses) {
    if (Unmapped(own) == unmapped) {
      return {false,
              fmt::format("{} resolved to {}, an address of this host", Printable(host), text)};
    }
  }
  Classification classification = ClassifyWithForm(address);
  return {classification.kind == AddressKind::kPublic,
          fmt::format("{} resolved to {}, {}", Printable(host), text, Describe(classification))};
}

Result<std::vector<Address>> HostAddresses() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return Fail(Error::HostIo("getifaddrs", errno));
  std::unique_ptr<ifaddrs, decltype(&freeifaddrs)> owned(list, &freeifaddrs);
  std::vector<Address> addresses;
  for (const ifaddrs* entry = list; entry != nullptr; entry = entry->ifa_next) {
    if (entry->ifa_addr == nullptr) continue;
    if (auto address = Address::FromSockaddr(*entry->ifa_addr)) addresses.push_back(*address);
  }
  return addresses;
}

std::optional<size_t> ProxyHeadSize(std::string_view received) {
  size_t end = received.find("\r\n\r\n");
  if (end == std::string_view::npos) return std::nullopt;
  return end + 4;
}

Result<ProxyRequest> ParseProxyRequest(std::string_view received) {
  if (received.empty()) return BadRequest("empty request");
  std::optional<size_t> size = ProxyHeadSize(received.substr(0, kMaxProxyHead));
  if (!size) {
    if (received.size() >= kMaxProxyHead) {
      return BadRequest(fmt::format("the request head is longer than {} bytes", kMaxProxyHead));
    }
    return BadRequest("incomplete request head: no blank line after the headers");
  }
  std::string_view head = received.substr(0, *size);

  http::request_parser<http::empty_body> parser;
  parser.header_limit(static_cast<uint32_t>(kMaxProxyHead));
  parser.eager(false);
  boost::beast::error_code ec;
  size_t used = parser.put(boost::asio::const_buffer(head.data(), head.size()), ec);
  if (ec || !parser.is_header_done() || used != head.size()) {
    return BadRequest(fmt::format("malformed request head: {}",
                                  ec ? ec.message() : std::string("it ends early")));
  }
  const auto& request = parser.get();
  std::string_view target(request.target().data(), request.target().size());
  if (request.count(boost::beast::http::field::host) > 1) {
    return BadRequest("more than one Host header");
  }

  ProxyRequest result;
  result.head_size = head.size();
  if (request.method() == http::verb::connect) {
    auto authority = ParseAuthority(target, std::nullopt);
    if (!authority) return BadRequest(authority.error());
    result.connect = true;
    result.host = std::move(authority->host);
    result.port = authority->port;
    return result;
  }

  if (target.starts_with('/') || target == "*") {
    return BadRequest(
        fmt::format("'{}' is not a proxy request: send the absolute URI (GET http://host/path), or "
                    "CONNECT host:port for HTTPS",
                    Printable(target)));
  }
  size_t scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos) {
    return BadRequest(fmt::format("target '{}' is not an absolute http:// URI", Printable(target)));
  }
  std::string_view scheme = target.substr(0, scheme_end);
  if (EqualsIgnoringCase(scheme, "https")) {
    return BadRequest(
        "https:// URIs are not proxied as requests: HTTPS goes through CONNECT host:443");
  }
  if (!EqualsIgnoringCase(scheme, "http")) {
    return BadRequest(
        fmt::format("scheme '{}' is not proxied: only http:// and CONNECT are", Printable(scheme)));
  }
  std::string_view rest = target.substr(scheme_end + 3);
  size_t authority_end = rest.find_first_of("/?#");
  std::string_view authority_text = rest.substr(0, authority_end);
  std::string_view path =
      authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  if (path.find('#') != std::string_view::npos) {
    return BadRequest("a fragment (#...) does not belong in a request target");
  }
  auto authority = ParseAuthority(authority_text, 80);
  if (!authority) return BadRequest(authority.error());
  std::string origin_target =
      path.empty() ? "/" : (path.starts_with('?') ? "/" + std::string(path) : std::string(path));
  auto rewritten = RewriteHead(head, target, origin_target, authority_text);
  if (!rewritten) return Fail(std::move(rewritten).error());
  result.host = std::move(authority->host);
  result.port = authority->port;
  result.head = std::move(*rewritten);
  return result;
}

}  // namespace vessel::egress
