// A server on a loopback port and a raw client for it, for the server's unit tests.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "base/unique_fd.h"
#include "server/http_server.h"

namespace vessel::server {

// Serves `handler` on 127.0.0.1:<any port> on a thread of its own until destroyed.
class RunningServer {
 public:
  explicit RunningServer(HttpHandler& handler, HttpLimits limits = {}) {
    auto server = HttpServer::Listen("127.0.0.1", 0, handler, limits);
    if (server) server_ = std::move(*server);
    if (server_) thread_ = std::thread([this] { server_->Serve(); });
  }
  ~RunningServer() {
    if (server_) server_->Stop();
    if (thread_.joinable()) thread_.join();
  }
  [[nodiscard]] bool ok() const { return server_ != nullptr; }
  [[nodiscard]] uint16_t port() const { return server_->port(); }
  HttpServer& http() { return *server_; }

 private:
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

inline UniqueFd ConnectTo(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return {};
  return fd;
}

inline bool SendAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Everything the server sends until it closes the connection or `timeout` passes.
inline std::string ReadUntilClosed(int fd, std::chrono::milliseconds timeout) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buffer[65536];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

// One request on a connection of its own ("Connection: close" is added); the response.
inline std::string Exchange(uint16_t port, std::string request,
                            std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  UniqueFd fd = ConnectTo(port);
  if (!fd) return {};
  if (!SendAll(fd.get(), request)) return {};
  return ReadUntilClosed(fd.get(), timeout);
}

// The status code of a response, 0 when there is none.
inline int StatusOf(const std::string& response) {
  if (!response.starts_with("HTTP/1.1 ") || response.size() < 12) return 0;
  return std::stoi(response.substr(9, 3));
}

inline std::string BodyOf(const std::string& response) {
  size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? std::string() : response.substr(end + 4);
}

}  // namespace vessel::server
