// The HTTP/1.1 server under `vessel serve`: Boost.Beast parses and writes the messages;
// connections are plain sockets, one thread each, so that a handler may block on a
// sandbox (a boot, a command) without holding up anyone else's requests.
//
// Every connection is bounded: the header's size, the body's size (per request, as the
// handler says), the time a client may stay silent mid-request or idle between requests,
// the time a write may wait for a client that reads nothing, and the number of
// connections at once (the next ones get a 503 and are closed).
#pragma once

#include <atomic>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel::server {

namespace http = boost::beast::http;
using Request = http::request<http::string_body>;
using RequestHead = http::request_header<>;

// Beast's string view as the standard one.
inline std::string_view Sv(boost::beast::string_view s) { return {s.data(), s.size()}; }

struct HttpLimits {
  size_t max_header_bytes = 16 * 1024;
  uint32_t max_connections = 2048;
  // How long a client may send nothing while a request is incomplete, or between requests.
  std::chrono::milliseconds idle_timeout{60'000};
  // How long one write may wait for the client to take bytes.
  std::chrono::milliseconds write_timeout{60'000};
};

// Sends the answer to one request: a whole response, or a stream of chunks (chunked
// transfer encoding) for an answer whose size is not known up front.
class ResponseWriter {
 public:
  virtual ~ResponseWriter() = default;
  // A whole response. `headers` are extra fields.
  virtual Result<void> Send(
      http::status status, std::string_view content_type, std::string body,
      std::initializer_list<std::pair<std::string_view, std::string_view>> headers = {}) = 0;
  // Starts a response whose body follows in Writes: chunked, or of `length` bytes exactly
  // when it is given (Finish fails, and the connection closes, when they were not).
  virtual Result<void> BeginStream(http::status status, std::string_view content_type,
                                   std::optional<uint64_t> length = std::nullopt) = 0;
  virtual Result<void> Write(std::string_view chunk) = 0;
  virtual Result<void> Finish() = 0;
  // True once the client has closed its end (a stream should stop).
  virtual bool ClientGone() = 0;
};

class HttpHandler {
 public:
  virtual ~HttpHandler() = default;
  // The largest body this request may carry; a larger one is answered 413 unread.
  virtual size_t BodyLimit(const RequestHead& head) const = 0;
  // Answers `request` through `writer`. Called on the connection's own thread; several
  // at once.
  virtual void Handle(Request& request, ResponseWriter& writer) = 0;
};

class HttpServer {
 public:
  // Listens on `host`:`port` (port 0: any free one). `handler` must outlive the server.
  [[nodiscard]] static Result<std::unique_ptr<HttpServer>> Listen(const std::string& host,
                                                                  uint16_t port,
                                                                  HttpHandler& handler,
                                                                  HttpLimits limits = {});
  // Stops accepting, closes every connection and joins their threads.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  [[nodiscard]] uint16_t port() const { return port_; }
  // Connections open now.
  [[nodiscard]] size_t connections();
  // Serves until Stop() is called, from another thread or a signal handler's helper.
  void Serve();
  void Stop();

 private:
  struct Connection {
    UniqueFd fd;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  HttpServer(UniqueFd listener, UniqueFd stop_read, UniqueFd stop_write, uint16_t port,
             HttpHandler& handler, HttpLimits limits);
  void Accept();
  void ServeConnection(Connection& connection);
  // Joins the threads of finished connections (all of them when `all`).
  void Reap(bool all);

  UniqueFd listener_;
  UniqueFd stop_read_;  // readable once Stop() was called
  UniqueFd stop_write_;
  uint16_t port_;
  HttpHandler& handler_;
  HttpLimits limits_;
  std::mutex mutex_;
  std::list<std::unique_ptr<Connection>> connections_;
};

// An error body in the shape E2B's API uses: {"code": <status>, "message": "..."}.
std::string ErrorBody(http::status status, std::string_view message);

}  // namespace vessel::server
