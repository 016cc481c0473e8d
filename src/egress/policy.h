// The egress policy of a sandbox: which hosts and ports its guest may reach, decided as
// data, without sockets, so that every decision has a unit test.
//
// A guest has no network interface: its egress is to go through an HTTP proxy that the
// agent offers on the guest's 127.0.0.1:3128, each connection relayed to the host, which,
// in this order:
//   1. reads the request head (at most kMaxProxyHead bytes, ProxyHeadSize says where it
//      ends) and parses it: ParseProxyRequest;
//   2. checks the host and port against the allowlist: Allow;
//   3. resolves the name itself (Decision::host). The guest never does DNS, so it cannot
//      leak data through lookups of names it makes up;
//   4. checks every resolved address (CheckAddress) and connects only to an address that
//      passed. The allowlist says which names; the address check says where a name may
//      lead: an allowed name whose DNS points at 127.0.0.1, the host's LAN or a cloud
//      metadata address is refused, however the name was allowed.
// Defaults deny: an empty policy allows nothing. Every function here is pure except
// HostAddresses, and all are safe to call from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "vessel/error.h"

struct sockaddr;

namespace vessel::egress {

inline constexpr size_t kMaxRules = 1024;
// The longest proxy request head, blank line included, that the host reads from a guest.
inline constexpr size_t kMaxProxyHead = 16 * 1024;
// The ports a rule without one allows: plain HTTP and HTTPS.
inline constexpr std::array<uint16_t, 2> kDefaultPorts = {80, 443};

// An IPv4 or IPv6 address. IPv4 is a family of its own, never kept as its mapped IPv6
// form, so ::ffff:10.0.0.1 and 10.0.0.1 are different addresses that classify alike.
class Address {
 public:
  static Address V4(const std::array<uint8_t, 4>& bytes);
  static Address V6(const std::array<uint8_t, 16>& bytes);
  // Dotted-quad IPv4 (four decimal numbers, no leading zeros) or IPv6 text without
  // brackets or zone; nullopt for anything else.
  static std::optional<Address> Parse(std::string_view text);
  // The address of an AF_INET or AF_INET6 socket address (the port is ignored); nullopt
  // for other families. `addr` must be a whole sockaddr_in or sockaddr_in6 for its family,
  // as getaddrinfo and getifaddrs return them.
  static std::optional<Address> FromSockaddr(const sockaddr& addr);

  [[nodiscard]] bool is_v4() const { return v4_; }
  // 4 bytes for IPv4, 16 for IPv6, in network order.
  [[nodiscard]] std::span<const uint8_t> bytes() const {
    return std::span<const uint8_t>(bytes_).first(v4_ ? 4 : 16);
  }
  // The canonical text: 10.0.0.1, ::1, ::ffff:10.0.0.1.
  [[nodiscard]] std::string ToString() const;

  bool operator==(const Address&) const = default;

 private:
  Address(bool v4, const std::array<uint8_t, 16>& bytes) : v4_(v4), bytes_(bytes) {}

  bool v4_ = true;
  std::array<uint8_t, 16> bytes_{};
};

// Where an address leads. Everything but kPublic is refused after resolution unless a
// rule names the address.
enum class AddressKind {
  kPublic,
  kUnspecified,     // 0.0.0.0/8, ::
  kLoopback,        // 127.0.0.0/8, ::1
  kPrivate,         // 10/8, 172.16/12, 192.168/16, fc00::/7
  kSharedCgnat,     // 100.64.0.0/10
  kLinkLocal,       // 169.254/16 (cloud metadata lives here), fe80::/10
  kMulticast,       // 224.0.0.0/4, ff00::/8
  kBroadcast,       // 255.255.255.255
  kReserved,        // 240.0.0.0/4, and all IPv6 outside 2000::/3 not named elsewhere
  kDocumentation,   // 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20
  kBenchmarking,    // 198.18.0.0/15, 2001:2::/48
  kSpecialPurpose,  // 192.0.0/24, 192.88.99/24, 2001::/23, 2002::/16, 64:ff9b:1::/48,
                    // IPv4-compatible ::a.b.c.d
};

std::string_view ToString(AddressKind kind);

// The kind of `address`. IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d)
// addresses reach the IPv4 address they embed, so they take its kind; an
// IPv4-compatible address (::a.b.c.d, deprecated) takes the embedded kind when that is
// not public, else kSpecialPurpose.
AddressKind Classify(const Address& address);

// One allowlist entry, normalised. Made by ParsePolicy only.
struct Rule {
  enum class Kind {
    kName,     // exactly `name`
    kSuffix,   // any name ending in "." + `name`, but not `name` itself
    kAddress,  // exactly `address`, as an IP literal host or a resolved address
  };
  Kind kind = Kind::kName;
  // kName, kSuffix: ASCII (IDNA A-labels), lower case, no trailing dot, at least two
  // labels for kSuffix.
  std::string name;
  std::optional<Address> address;  // kAddress only
  std::optional<uint16_t> port;    // nullopt: kDefaultPorts

  [[nodiscard]] bool AllowsPort(uint16_t p) const;
  // The rule in its canonical spelling: "*.example.com", "xn--bcher-kva.example:8080",
  // "[::1]:8080".
  [[nodiscard]] std::string ToString() const;
};

// A sandbox's allowlist. The default (and an empty rule list) allows no egress at all.
class Policy {
 public:
  Policy() = default;

  [[nodiscard]] const std::vector<Rule>& rules() const { return rules_; }
  [[nodiscard]] bool empty() const { return rules_.empty(); }

 private:
  friend Result<Policy> ParsePolicy(std::span<const std::string> rules);
  explicit Policy(std::vector<Rule> rules) : rules_(std::move(rules)) {}

  std::vector<Rule> rules_;
};

// The policy of a rule list, as a user writes it (`--allow-net`, the API's allowlist).
// A rule is one of
//   NAME            api.github.com, BÜCHER.example (IDNA-normalised), example.com.
//   *.SUFFIX        *.github.com: any name below github.com, at any depth
//   IPv4 or [IPv6]  203.0.113.7, [2001:db8::1] (brackets optional without a port)
// each optionally followed by :PORT. Without a port a rule allows 80 and 443, with one
// that port only. Names are compared in their ASCII (A-label) form, lower case, without
// a trailing dot, so every spelling of a name meets the same rule.
//
// `*.x` does not match `x` itself: the two are often different services (the apex may be
// a marketing site on another provider), and a rule that allows both should say so with
// two rules. A bare `*` or a single-label suffix (`*.com`) is refused as too broad.
// Names whose last label is numeric are refused: they read as malformed IP addresses,
// which resolvers interpret in surprising ways (`127.1`).
//
// kInvalidConfig (subject "network") naming the rule and what is wrong with it: an empty
// rule, spaces or control characters, a URL, a bad port (0, > 65535, not digits), an
// invalid name (empty or overlong label, a character other than letters, digits and '-'
// after IDNA, more than 253 characters), a misplaced wildcard; or more than kMaxRules
// rules.
[[nodiscard]] Result<Policy> ParsePolicy(std::span<const std::string> rules);

// The answer to "may the guest reach host:port?".
struct Decision {
  bool allowed = false;
  // One printable ASCII line saying why, fit for a 403 body or a log: "example.org is not
  // in this sandbox's allowlist". Bytes of the guest's host that are not printable ASCII
  // are escaped as \xNN.
  std::string reason;
  // When allowed: the name to resolve (ASCII, lower case, no trailing dot), or the
  // canonical text of an IP literal.
  std::string host;
  // When allowed and the host was an IP literal: the address to connect to, no lookup.
  std::optional<Address> address;
};

// Whether `policy` lets the guest reach `host`:`port`. `host` is as the guest sent it: any
// case, UTF-8 IDN or A-labels, with or without a trailing dot, or an IP literal (IPv6
// bracketed or not). A name is allowed when a name or suffix rule matches it and allows
// the port. An IP literal is allowed only when an address rule names that exact address
// and allows the port: a guest that could name any address would bypass the allowlist.
// An allowed name must still pass CheckAddress for each address it resolves to.
Decision Allow(const Policy& policy, std::string_view host, uint16_t port);

// The answer to "may the host connect to this resolved address?".
struct AddressVerdict {
  bool allowed = false;
  // One printable line: "api.example.com resolved to 10.0.0.5, a private address".
  std::string reason;
};

// Whether the host may connect to `address`:`port`, which `host` (as Decision::host gave
// it) resolved to. Refused: every address whose Classify kind is not kPublic, and any of
// `host_addresses` (the host's own, from HostAddresses(); IPv4-mapped forms included),
// since a service on the host listening on all interfaces is as private as its loopback.
// Checked after resolution because only the resolved address says where a connection
// goes: a name checked before resolving can point anywhere (DNS rebinding).
//
// The exception: an address rule naming exactly `address` and allowing `port` lets it
// through, whatever its kind (tests reach a server on 127.0.0.1:PORT that way). The
// exception needs the port, so that `127.0.0.1:8080` in the list does not open the
// host's 127.0.0.1:22 to a name that resolves to 127.0.0.1. It needs the exact form:
// naming 127.0.0.1 does not exempt ::ffff:127.0.0.1.
AddressVerdict CheckAddress(const Policy& policy, std::string_view host, const Address& address,
                            uint16_t port, std::span<const Address> host_addresses);

// The addresses of this host's interfaces, up or down, for CheckAddress. They change (DHCP,
// hotplug), so the proxy should read them again now and then. kHostIo when getifaddrs
// fails.
[[nodiscard]] Result<std::vector<Address>> HostAddresses();

// A proxy request from the guest.
struct ProxyRequest {
  // True for CONNECT host:port (HTTPS and any other TLS): after a 200 answer the bytes
  // flow both ways untouched.
  bool connect = false;
  // As the request wrote it, IPv6 without brackets; for Allow, which validates it.
  std::string host;
  uint16_t port = 0;  // never 0; 80 when an http:// URI names none
  // For a plain-HTTP request: the head to send the origin server. Its request target is
  // the origin form (/path?query), Proxy-Connection and Proxy-Authorization are dropped
  // (they are for the proxy, and the latter is a credential), the Host header is the URI's
  // authority (RFC 9112 3.2.2: a proxy replaces it), Connection and Keep-Alive give way to
  // a last `Connection: close`, and every other byte is as the guest sent it. Empty for
  // CONNECT. One request per proxied connection: the origin closes after its answer, so a
  // client's next request, perhaps for another host, comes on a connection of its own and
  // is checked like the first.
  std::string head;
  // The bytes of the input the request head took; whatever follows (a body, or the first
  // tunnel bytes) belongs to the connection and is relayed as it is.
  size_t head_size = 0;
};

// The size of the request head at the start of `received` (through its blank line), or
// nullopt when `received` holds no complete head yet. The proxy reads until this is known
// or kMaxProxyHead bytes have arrived.
std::optional<size_t> ProxyHeadSize(std::string_view received);

// The proxy request whose head starts `received`. Accepted: HTTP/1.0 and 1.1, CONNECT with
// an authority-form target (host:port, port required), and any other method with an
// absolute http:// URI. kInvalidConfig (subject "proxy request") with a reason fit for a
// 400 answer when the head is empty, incomplete (no blank line), over kMaxProxyHead or
// malformed HTTP; for an https:// URI (HTTPS goes through CONNECT, so that the proxy never
// sees its plaintext); for an origin-form target (GET / with a Host header: not a proxy
// request); for user information (user@host) in the target; for more than one Host header
// or obsolete line folding; for a port that is missing on CONNECT, 0, or not a number.
// Whether the host is allowed is Allow's decision, not this one's.
[[nodiscard]] Result<ProxyRequest> ParseProxyRequest(std::string_view received);

}  // namespace vessel::egress
