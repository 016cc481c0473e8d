// Egress through the host's proxy: a download and a small request through it, next to the
// same download by the host directly, the guest's own pipe rate, and the same small
// request served inside the guest.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.h"
#include "bench/stats.h"
#include "vessel/sandbox.h"

namespace vessel::bench {
namespace {

struct Options {
  int download_mib = 256;
  int rounds = 3;
  int requests = 100;
};

// An HTTP server on the host's 127.0.0.1: /big is `size` bytes, anything else "ok".
class Server {
 public:
  explicit Server(uint64_t size) : size_(size) {
    listener_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    (void)::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    (void)::listen(listener_.get(), 16);
    socklen_t length = sizeof(addr);
    ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &length);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~Server() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    thread_.join();
  }
  [[nodiscard]] uint16_t port() const { return port_; }

 private:
  void Loop() {
    std::vector<char> block(256 * 1024, 'x');
    for (;;) {
      UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!fd) return;
      std::string head;
      char buf[4096];
      while (head.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = ::read(fd.get(), buf, sizeof(buf));
        if (n <= 0) break;
        head.append(buf, static_cast<size_t>(n));
      }
      bool big = head.find(" /big ") != std::string::npos;
      uint64_t size = big ? size_ : 2;
      std::string answer =
          fmt::format("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", size);
      if (!big) answer += "ok";
      if (::send(fd.get(), answer.data(), answer.size(), MSG_NOSIGNAL) < 0) continue;
      for (uint64_t sent = 0; big && sent < size;) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(block.size(), size - sent));
        ssize_t w = ::send(fd.get(), block.data(), n, MSG_NOSIGNAL);
        if (w <= 0) break;
        sent += static_cast<uint64_t>(w);
      }
    }
  }

  const uint64_t size_;
  UniqueFd listener_;
  uint16_t port_ = 0;
  std::thread thread_;
};

// The host downloading /big itself: bytes received.
uint64_t HostDownload(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return 0;
  std::string request = "GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  (void)::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL);
  std::vector<char> buf(256 * 1024);
  uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n <= 0) return total;
    total += static_cast<uint64_t>(n);
  }
}

Result<void> Run(const Options& options) {
  const uint64_t size = static_cast<uint64_t>(options.download_mib) << 20;
  Server server(size);
  SandboxConfig config;
  config.vcpus = 2;
  config.memory_mib = 512;
  config.network.allow = {fmt::format("127.0.0.1:{}", server.port())};
  auto created = Sandbox::Create(config);
  if (!created) return Fail(std::move(created).error());
  Sandbox& sb = **created;
  auto run = [&](const std::string& script, const ExecOptions& exec = {}) -> Result<double> {
    auto start = Clock::now();
    auto r = sb.Execute(Command::Shell(script), exec);
    double ms = MsSince(start);
    if (!r) return Fail(std::move(r).error());
    if (!r->ok())
      return Fail(Error::Backend(fmt::format("`{}` failed: {}", script, r->stderr_data)));
    return ms;
  };
  // A guest-local server for the same small request without the proxy.
  if (auto r = run("mkdir -p /tmp/www && echo -n ok > /tmp/www/small && "
                   "httpd -p 127.0.0.1:8080 -h /tmp/www");
      !r) {
    return Fail(std::move(r).error());
  }
  ExecOptions no_proxy;
  no_proxy.env = {"http_proxy=", "HTTP_PROXY="};

  std::string url = fmt::format("http://127.0.0.1:{}", server.port());
  Series proxied{fmt::format("download {} MiB via the proxy (guest wget)", options.download_mib),
                 {}};
  Series direct{fmt::format("download {} MiB by the host directly", options.download_mib), {}};
  Series pipe{fmt::format("{} MiB through a guest pipe (head | cat)", options.download_mib), {}};
  for (int round = 0; round < options.rounds; ++round) {
    auto ms = run(fmt::format("wget -q -O /dev/null {}/big", url));
    if (!ms) return Fail(std::move(ms).error());
    proxied.ms.push_back(*ms);
    auto start = Clock::now();
    if (HostDownload(server.port()) < size) return Fail(Error::Backend("short host download"));
    direct.ms.push_back(MsSince(start));
    ms = run(fmt::format("head -c {} /dev/zero | cat > /dev/null", size));
    if (!ms) return Fail(std::move(ms).error());
    pipe.ms.push_back(*ms);
  }
  Series request{"small request via the proxy (wget, exec included)", {}};
  Series local{"small request inside the guest (wget, exec included)", {}};
  Series exec{"exec `true` (the exec alone)", {}};
  for (int i = 0; i < options.requests; ++i) {
    auto ms = run(fmt::format("wget -q -O /dev/null {}/small", url));
    if (!ms) return Fail(std::move(ms).error());
    request.ms.push_back(*ms);
    ms = run("wget -q -O /dev/null http://127.0.0.1:8080/small", no_proxy);
    if (!ms) return Fail(std::move(ms).error());
    local.ms.push_back(*ms);
    ms = run("true");
    if (!ms) return Fail(std::move(ms).error());
    exec.ms.push_back(*ms);
  }
  auto stats = sb.network_stats();
  (void)sb.Destroy();

  fmt::print("vessel_egress_bench: engine {}, guest 2 vCPUs, 512 MiB\n\n", sb.engine_name());
  PrintTable({&proxied, &direct, &pipe, &request, &local, &exec});
  auto mibps = [&](const Series& s) {
    auto m = Median(s);
    return m ? static_cast<double>(size) / (1024.0 * 1024.0) / (*m / 1000.0) : 0.0;
  };
  fmt::print(
      "\nthroughput (median): via the proxy {:.1f} MiB/s, host directly {:.1f} MiB/s, "
      "guest pipe {:.1f} MiB/s\n",
      mibps(proxied), mibps(direct), mibps(pipe));
  fmt::print("ratios of medians:\n");
  PrintRatio("proxied download / host download (time)", proxied, direct);
  PrintRatio("proxied download / guest pipe (time)", proxied, pipe);
  PrintRatio("small request via the proxy / inside the guest", request, local);
  fmt::print("egress counters: {} allowed, {} refused, {} bytes in\n", stats.allowed, stats.refused,
             stats.bytes_received);
  return {};
}

}  // namespace
}  // namespace vessel::bench

int main(int argc, char** argv) {
  vessel::bench::Options options;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string_view flag = argv[i];
    int n = 0;
    if (!vessel::bench::ParseInt(argv[i + 1], n)) {
      fmt::print(stderr, "vessel_egress_bench: {} wants a positive number\n", flag);
      return 2;
    }
    if (flag == "--download-mib") {
      options.download_mib = n;
    } else if (flag == "--rounds") {
      options.rounds = n;
    } else if (flag == "--requests") {
      options.requests = n;
    } else {
      fmt::print(stderr,
                 "usage: vessel_egress_bench [--download-mib N] [--rounds N] [--requests N]\n");
      return 2;
    }
  }
  auto result = vessel::bench::Run(options);
  if (!result) {
    fmt::print(stderr, "vessel_egress_bench: {}\n", result.error().ToString());
    return 1;
  }
  return 0;
}
