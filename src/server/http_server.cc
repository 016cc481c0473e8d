#include "server/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/system/error_code.hpp>
#include <cerrno>
#include <limits>
#include <nlohmann/json.hpp>

namespace vessel::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
using boost::system::error_code;

constexpr std::string_view kServerName = "vessel";
// How long, and how much, a refused request's unread body is taken before closing.
constexpr std::chrono::seconds kLingerTime{2};
constexpr size_t kMaxLingerBytes = 64 * 1024 * 1024;

// Beast 1.74 speaks boost::string_view.
beast::string_view Bsv(std::string_view s) { return {s.data(), s.size()}; }

// Waits for `events` on `fd`, or for the stop pipe. 1: ready; 0: timed out; -1: stopping
// or the descriptor failed.
int WaitFor(int fd, short events, int stop_fd, std::chrono::milliseconds timeout) {
  pollfd fds[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
  for (;;) {
    int n = ::poll(fds, 2, static_cast<int>(timeout.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || fds[1].revents) return -1;
    if (n == 0) return 0;
    return 1;
  }
}

// A connected socket as Beast's synchronous stream, with a deadline on each wait and a
// way out when the server stops.
class SocketStream {
 public:
  SocketStream(int fd, int stop_fd, const HttpLimits& limits)
      : fd_(fd), stop_fd_(stop_fd), limits_(limits) {}

  template <typename MutableBuffers>
  size_t read_some(const MutableBuffers& buffers, error_code& ec) {
    auto buffer = FirstNonEmpty<asio::mutable_buffer>(buffers);
    size_t n = Transfer(POLLIN, limits_.idle_timeout, buffer.size(), ec,
                        [&] { return ::recv(fd_, buffer.data(), buffer.size(), MSG_DONTWAIT); });
    if (!ec && n == 0 && buffer.size() > 0) ec = asio::error::eof;
    return n;
  }
  template <typename MutableBuffers>
  size_t read_some(const MutableBuffers& buffers) {
    return ThrowOnError([&](error_code& ec) { return read_some(buffers, ec); });
  }

  template <typename ConstBuffers>
  size_t write_some(const ConstBuffers& buffers, error_code& ec) {
    auto buffer = FirstNonEmpty<asio::const_buffer>(buffers);
    return Transfer(POLLOUT, limits_.write_timeout, buffer.size(), ec, [&] {
      return ::send(fd_, buffer.data(), buffer.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    });
  }
  template <typename ConstBuffers>
  size_t write_some(const ConstBuffers& buffers) {
    return ThrowOnError([&](error_code& ec) { return write_some(buffers, ec); });
  }

  [[nodiscard]] int fd() const { return fd_; }

  // After a refusal of a request whose body was not read: ends the writing side, then
  // takes and drops what the client still sends, for a while and up to a size, so that
  // closing does not reset the connection before the client has read the answer (a
  // lingering close, RFC 9112 section 9.6).
  void Linger() {
    ::shutdown(fd_, SHUT_WR);
    const auto deadline = std::chrono::steady_clock::now() + kLingerTime;
    size_t dropped = 0;
    char sink[16384];
    while (dropped < kMaxLingerBytes) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || WaitFor(fd_, POLLIN, stop_fd_, left) <= 0) return;
      ssize_t n = ::recv(fd_, sink, sizeof(sink), MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return;
      if (n > 0) dropped += static_cast<size_t>(n);
    }
  }

 private:
  // Waits up to `timeout` for `events`, then makes the non-blocking `call` (recv or send),
  // again while it would block. Nothing to move (`size` 0) is done at once.
  template <typename Call>
  size_t Transfer(short events, std::chrono::milliseconds timeout, size_t size, error_code& ec,
                  Call call) {
    ec = {};
    if (size == 0) return 0;
    for (;;) {
      int ready = WaitFor(fd_, events, stop_fd_, timeout);
      if (ready <= 0) {
        ec = ready == 0 ? beast::make_error_code(beast::error::timeout)
                        : asio::error::make_error_code(asio::error::operation_aborted);
        return 0;
      }
      ssize_t n = call();
      if (n >= 0) return static_cast<size_t>(n);
      if (errno != EINTR && errno != EAGAIN) {
        ec = error_code(errno, boost::system::system_category());
        return 0;
      }
    }
  }

  template <typename Operation>
  static size_t ThrowOnError(Operation operation) {
    error_code ec;
    size_t n = operation(ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

  // One buffer at a time: Beast asks again for the rest.
  template <typename Buffer, typename Buffers>
  static Buffer FirstNonEmpty(const Buffers& buffers) {
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers);
         ++it) {
      Buffer buffer = *it;
      if (buffer.size() > 0) return buffer;
    }
    return Buffer();
  }

  int fd_;
  int stop_fd_;
  const HttpLimits& limits_;
};

Error WriteError(const error_code& ec) {
  return Error::HostIo(fmt::format("writing the response: {}", ec.message()), 0);
}

class Writer final : public ResponseWriter {
 public:
  Writer(SocketStream& stream, unsigned version, bool keep_alive)
      : stream_(stream), version_(version), keep_alive_(keep_alive) {}

  Result<void> Send(
      http::status status, std::string_view content_type, std::string body,
      std::initializer_list<std::pair<std::string_view, std::string_view>> headers) override {
    if (started_) return Fail(Error::Backend("a response was already sent"));
    started_ = true;
    http::response<http::string_body> response{status, version_};
    response.set(http::field::server, Bsv(kServerName));
    if (!content_type.empty()) response.set(http::field::content_type, Bsv(content_type));
    for (const auto& [name, value] : headers) response.set(Bsv(name), Bsv(value));
    response.body() = std::move(body);
    response.keep_alive(keep_alive_);
    response.prepare_payload();
    error_code ec;
    http::write(stream_, response, ec);
    if (ec) {
      failed_ = true;
      return Fail(WriteError(ec));
    }
    finished_ = true;
    return {};
  }

  Result<void> BeginStream(http::status status, std::string_view content_type,
                           std::optional<uint64_t> length) override {
    if (started_) return Fail(Error::Backend("a response was already sent"));
    started_ = true;
    streaming_ = true;
    length_ = length;
    http::response<http::empty_body> response{status, version_};
    response.set(http::field::server, Bsv(kServerName));
    response.set(http::field::content_type, Bsv(content_type));
    response.keep_alive(keep_alive_);
    if (length) {
      response.content_length(*length);
    } else {
      response.chunked(true);
    }
    http::response_serializer<http::empty_body> serializer{response};
    error_code ec;
    http::write_header(stream_, serializer, ec);
    if (ec) {
      failed_ = true;
      return Fail(WriteError(ec));
    }
    return {};
  }

  Result<void> Write(std::string_view chunk) override {
    if (!streaming_ || finished_) return Fail(Error::Backend("no stream is open"));
    if (chunk.empty()) return {};  // an empty chunk would end the stream
    error_code ec;
    if (length_) {
      if (written_ + chunk.size() > *length_) {
        failed_ = true;
        return Fail(Error::Backend("the body is longer than the length it was sent with"));
      }
      written_ += chunk.size();
      asio::write(stream_, asio::const_buffer(chunk.data(), chunk.size()), ec);
    } else {
      asio::write(stream_, http::make_chunk(asio::const_buffer(chunk.data(), chunk.size())), ec);
    }
    if (ec) {
      failed_ = true;
      return Fail(WriteError(ec));
    }
    return {};
  }

  Result<void> Finish() override {
    if (!streaming_ || finished_) return Fail(Error::Backend("no stream is open"));
    finished_ = true;
    if (length_) {
      if (written_ != *length_) {
        failed_ = true;
        return Fail(Error::Backend(
            fmt::format("the body ended after {} of its {} bytes", written_, *length_)));
      }
      return {};
    }
    error_code ec;
    asio::write(stream_, http::make_chunk_last(), ec);
    if (ec) {
      failed_ = true;
      return Fail(WriteError(ec));
    }
    return {};
  }

  bool ClientGone() override {
    pollfd fd{stream_.fd(), POLLRDHUP, 0};
    return ::poll(&fd, 1, 0) > 0 && (fd.revents & (POLLRDHUP | POLLHUP | POLLERR));
  }

  [[nodiscard]] bool started() const { return started_; }
  // Whether the connection can carry another request.
  [[nodiscard]] bool reusable() const { return keep_alive_ && finished_ && !failed_; }

 private:
  SocketStream& stream_;
  unsigned version_;
  bool keep_alive_;
  bool started_ = false;
  bool streaming_ = false;
  bool finished_ = false;
  bool failed_ = false;
  std::optional<uint64_t> length_;  // a body of this length rather than chunks
  uint64_t written_ = 0;
};

// Answers a request that never reached the handler, and closes.
void Refuse(SocketStream& stream, http::status status, std::string_view message) {
  Writer writer(stream, 11, /*keep_alive=*/false);
  (void)static_cast<ResponseWriter&>(writer).Send(status, "application/json",
                                                  ErrorBody(status, message));
}

}  // namespace

std::string ErrorBody(http::status status, std::string_view message) {
  return nlohmann::json{{"code", static_cast<int>(status)}, {"message", message}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Result<std::unique_ptr<HttpServer>> HttpServer::Listen(const std::string& host, uint16_t port,
                                                       HttpHandler& handler, HttpLimits limits) {
  sockaddr_in6 addr6{};
  sockaddr_in addr4{};
  bool v6 = host.find(':') != std::string::npos;
  if (v6) {
    addr6.sin6_family = AF_INET6;
    addr6.sin6_port = htons(port);
    if (::inet_pton(AF_INET6, host.c_str(), &addr6.sin6_addr) != 1) {
      return Fail(Error::InvalidConfig("listen", "'" + host + "' is not an IP address"));
    }
  } else {
    addr4.sin_family = AF_INET;
    addr4.sin_port = htons(port);
    if (::inet_pton(AF_INET, host.c_str(), &addr4.sin_addr) != 1) {
      return Fail(Error::InvalidConfig("listen", "'" + host + "' is not an IP address"));
    }
  }
  UniqueFd listener(::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) return Fail(Error::HostIo("socket", errno));
  int one = 1;
  ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int rc = v6 ? ::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr6), sizeof(addr6))
              : ::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr4), sizeof(addr4));
  if (rc != 0) return Fail(Error::HostIo(fmt::format("bind {} port {}", host, port), errno));
  if (::listen(listener.get(), 512) != 0) return Fail(Error::HostIo("listen", errno));
  sockaddr_storage bound{};
  socklen_t size = sizeof(bound);
  ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&bound), &size);
  uint16_t actual = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                             : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  int stop[2];
  if (::pipe2(stop, O_CLOEXEC | O_NONBLOCK) != 0) return Fail(Error::HostIo("pipe", errno));
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(listener), UniqueFd(stop[0]),
                                                    UniqueFd(stop[1]), actual, handler, limits));
}

HttpServer::HttpServer(UniqueFd listener, UniqueFd stop_read, UniqueFd stop_write, uint16_t port,
                       HttpHandler& handler, HttpLimits limits)
    : listener_(std::move(listener)),
      stop_read_(std::move(stop_read)),
      stop_write_(std::move(stop_write)),
      port_(port),
      handler_(handler),
      limits_(limits) {}

HttpServer::~HttpServer() {
  Stop();
  Reap(/*all=*/true);
}

void HttpServer::Stop() {
  char byte = 1;
  (void)!::write(stop_write_.get(), &byte, 1);
}

size_t HttpServer::connections() {
  std::lock_guard lock(mutex_);
  size_t open = 0;
  for (const auto& c : connections_) {
    if (!c->done) ++open;
  }
  return open;
}

void HttpServer::Serve() {
  for (;;) {
    int ready = WaitFor(listener_.get(), POLLIN, stop_read_.get(), std::chrono::milliseconds(1000));
    if (ready < 0) break;
    Reap(/*all=*/false);
    if (ready > 0) Accept();
  }
  Reap(/*all=*/true);
}

void HttpServer::Accept() {
  UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd) return;
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connections() >= limits_.max_connections) {
    SocketStream stream(fd.get(), stop_read_.get(), limits_);
    Refuse(stream, http::status::service_unavailable,
           fmt::format("the server has {} connections open, its limit", limits_.max_connections));
    return;
  }
  auto connection = std::make_unique<Connection>();
  connection->fd = std::move(fd);
  Connection* raw = connection.get();
  {
    std::lock_guard lock(mutex_);
    connections_.push_back(std::move(connection));
  }
  raw->thread = std::thread([this, raw] {
    ServeConnection(*raw);
    raw->fd.Reset();  // the client sees the close now, not at the next reap
    raw->done = true;
  });
}

void HttpServer::Reap(bool all) {
  std::list<std::unique_ptr<Connection>> finished;
  {
    std::lock_guard lock(mutex_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (all || (*it)->done) {
        finished.push_back(std::move(*it));
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& c : finished) {
    if (c->thread.joinable()) c->thread.join();
  }
}

void HttpServer::ServeConnection(Connection& connection) {
  SocketStream stream(connection.fd.get(), stop_read_.get(), limits_);
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<uint32_t>(limits_.max_header_bytes));
    parser.body_limit(std::numeric_limits<uint64_t>::max());
    error_code ec;
    http::read_header(stream, buffer, parser, ec);
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::operation_aborted || ec == asio::error::connection_reset) {
      return;
    }
    if (ec == beast::error::timeout) {
      if (buffer.size() > 0) Refuse(stream, http::status::request_timeout, "request timed out");
      return;
    }
    if (ec == http::error::header_limit) {
      Refuse(stream, http::status::request_header_fields_too_large,
             fmt::format("the request's header is larger than {} bytes", limits_.max_header_bytes));
      return;
    }
    if (ec) {
      Refuse(stream, http::status::bad_request, "malformed HTTP request: " + ec.message());
      return;
    }
    const size_t limit = handler_.BodyLimit(parser.get().base());
    if (auto length = parser.content_length(); length && *length > limit) {
      Refuse(stream, http::status::payload_too_large,
             fmt::format("the request's body of {} bytes is larger than {} bytes, the limit here",
                         *length, limit));
      stream.Linger();
      return;
    }
    parser.body_limit(limit);
    if (parser.get()[http::field::expect] == "100-continue") {
      http::response<http::empty_body> go_on{http::status::continue_, 11};
      http::write(stream, go_on, ec);
      if (ec) return;
    }
    http::read(stream, buffer, parser, ec);
    if (ec == http::error::body_limit) {
      Refuse(stream, http::status::payload_too_large,
             fmt::format("the request's body is larger than {} bytes, the limit here", limit));
      stream.Linger();
      return;
    }
    if (ec == beast::error::timeout) {
      Refuse(stream, http::status::request_timeout, "request timed out");
      return;
    }
    if (ec) {
      if (ec != asio::error::eof && ec != http::error::partial_message &&
          ec != asio::error::operation_aborted) {
        Refuse(stream, http::status::bad_request, "malformed HTTP request: " + ec.message());
      }
      return;
    }
    Request request = parser.release();
    Writer writer(stream, request.version(), request.keep_alive());
    handler_.Handle(request, writer);
    if (!writer.started()) {
      (void)static_cast<ResponseWriter&>(writer).Send(
          http::status::internal_server_error, "application/json",
          ErrorBody(http::status::internal_server_error, "no response"));
    }
    if (!writer.reusable()) return;
  }
}

}  // namespace vessel::server
