// The host's side of one allowed egress connection: the name resolved once, every answer
// checked, and a connection made only to an address that passed.
//
// The lookup is a parameter (Resolver) so that tests can script answers: a name that is
// public on the first lookup and private on the next (DNS rebinding) must meet the check
// on each connection, and the connection must go to the address that was checked.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/deadline.h"
#include "base/unique_fd.h"
#include "egress/policy.h"

namespace vessel::egress {

// The addresses `host` (a Decision::host name) resolves to, in the resolver's order; a
// kBackend error saying why when it resolves to none.
using Resolver = std::function<Result<std::vector<Address>>(const std::string& host)>;

// getaddrinfo(3) for TCP, IPv4 and IPv6, without AI_ADDRCONFIG (the host's own
// configuration decides nothing here; CheckAddress does).
[[nodiscard]] Result<std::vector<Address>> SystemResolve(const std::string& host);

// How an attempt to reach an allowed host ended.
struct Upstream {
  // 0: connected. Otherwise the HTTP status the guest is answered with: 403 when every
  // address the name resolved to was refused, 502 when the name did not resolve or every
  // connection failed, 504 when the deadline passed first.
  int status = 0;
  // One printable line for the guest and the log: why, or where the connection went.
  std::string reason;
  UniqueFd fd;                     // connected, non-blocking; set when status is 0
  std::optional<Address> address;  // the address connected to, when status is 0
};

// Resolves decision.host (unless it is an IP literal: decision.address), checks each
// address with CheckAddress and connects to those that passed, in order, until one
// accepts or `deadline` passes. Resolves exactly once: what is checked is what is
// connected to. `decision` must be allowed.
[[nodiscard]] Upstream ConnectUpstream(const Policy& policy, const Decision& decision,
                                       uint16_t port, const Resolver& resolve,
                                       std::span<const Address> host_addresses, Deadline deadline);

}  // namespace vessel::egress
