#include "egress/upstream.h"

#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace vessel::egress {
namespace {

// A socket address for `address`:`port`.
socklen_t ToSockaddr(const Address& address, uint16_t port, sockaddr_storage& storage) {
  std::memset(&storage, 0, sizeof(storage));
  auto bytes = address.bytes();
  if (address.is_v4()) {
    auto& in = reinterpret_cast<sockaddr_in&>(storage);
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    std::memcpy(&in.sin_addr, bytes.data(), bytes.size());
    return sizeof(sockaddr_in);
  }
  auto& in6 = reinterpret_cast<sockaddr_in6&>(storage);
  in6.sin6_family = AF_INET6;
  in6.sin6_port = htons(port);
  std::memcpy(&in6.sin6_addr, bytes.data(), bytes.size());
  return sizeof(sockaddr_in6);
}

// One non-blocking connect, waited for until `deadline`: the socket, or the errno
// (ETIMEDOUT when the deadline passed).
Result<UniqueFd> ConnectOne(const Address& address, uint16_t port, Deadline deadline) {
  sockaddr_storage storage;
  socklen_t size = ToSockaddr(address, port, storage);
  UniqueFd fd(::socket(storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Fail(Error::HostIo("socket", errno));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&storage), size) == 0) return fd;
  if (errno != EINPROGRESS) return Fail(Error::HostIo("connect", errno));
  pollfd pfd{fd.get(), POLLOUT, 0};
  int ready;
  do {
    ready = ::poll(&pfd, 1, deadline.PollTimeoutMs());
  } while (ready < 0 && errno == EINTR);
  if (ready == 0) return Fail(Error::HostIo("connect", ETIMEDOUT));
  if (ready < 0) return Fail(Error::HostIo("poll", errno));
  int error = 0;
  socklen_t length = sizeof(error);
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
  if (error != 0) return Fail(Error::HostIo("connect", error));
  return fd;
}

}  // namespace

Result<std::vector<Address>> SystemResolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int status = ::getaddrinfo(host.c_str(), nullptr, &hints, &found);
  if (status != 0) {
    return Fail(Error::Backend(
        fmt::format("{} did not resolve: {}", host,
                    status == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(status))));
  }
  std::vector<Address> addresses;
  for (addrinfo* it = found; it != nullptr; it = it->ai_next) {
    auto address = Address::FromSockaddr(*it->ai_addr);
    if (address && std::find(addresses.begin(), addresses.end(), *address) == addresses.end()) {
      addresses.push_back(*address);
    }
  }
  ::freeaddrinfo(found);
  if (addresses.empty()) return Fail(Error::Backend(host + " resolved to no IP address"));
  return addresses;
}

Upstream ConnectUpstream(const Policy& policy, const Decision& decision, uint16_t port,
                         const Resolver& resolve, std::span<const Address> host_addresses,
                         Deadline deadline) {
  std::vector<Address> candidates;
  if (decision.address) {
    candidates.push_back(*decision.address);
  } else {
    auto resolved = resolve(decision.host);
    if (!resolved) return {.status = 502, .reason = resolved.error().message()};
    candidates = std::move(*resolved);
  }
  std::vector<Address> passed;
  std::string refusal;
  for (const Address& address : candidates) {
    // An IP literal was checked by Allow against its address rule already, but the host's
    // own addresses and the rule's port are CheckAddress's to judge as for any name.
    auto verdict = CheckAddress(policy, decision.host, address, port, host_addresses);
    if (verdict.allowed) {
      passed.push_back(address);
    } else if (refusal.empty()) {
      refusal = std::move(verdict.reason);
    }
  }
  if (passed.empty()) return {.status = 403, .reason = std::move(refusal)};
  std::string failures;
  for (const Address& address : passed) {
    auto fd = ConnectOne(address, port, deadline);
    if (fd) {
      return {.status = 0,
              .reason = fmt::format("{} at {} port {}", decision.host, address.ToString(), port),
              .fd = std::move(*fd),
              .address = address};
    }
    if (fd.error().errno_value() == ETIMEDOUT || deadline.Expired()) {
      return {.status = 504,
              .reason = fmt::format("{} port {}: no connection within the connect timeout",
                                    decision.host, port)};
    }
    if (!failures.empty()) failures += ", ";
    failures += fmt::format("{}: {}", address.ToString(), std::strerror(fd.error().errno_value()));
  }
  return {
      .status = 502,
      .reason = fmt::format("{} port {}: connection failed ({})", decision.host, port, failures)};
}

}  // namespace vessel::egress
