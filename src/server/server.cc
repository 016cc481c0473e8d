#include "server/server.h"

#include <fmt/format.h>

#include <charconv>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "base/secret_file.h"

namespace vessel::server {
namespace {

constexpr size_t kApiKeySize = 32;
constexpr SecretRole kApiKeyRole{"the API key", "clients then need the new key in E2B_API_KEY"};
constexpr std::chrono::seconds kReapInterval{1};

}  // namespace

Result<void> ParseListen(std::string_view text, ServerOptions& options) {
  auto bad = [&] {
    return Fail(Error::InvalidConfig(
        "listen", fmt::format("'{}' is not HOST:PORT (127.0.0.1:3000, [::1]:3000)", text)));
  };
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad();
  std::string_view host = text.substr(0, colon);
  std::string_view port = text.substr(colon + 1);
  if (host.starts_with('[')) {
    if (!host.ends_with(']')) return bad();
    host = host.substr(1, host.size() - 2);
  }
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return bad();
  }
  options.host = std::string(host);
  options.port = static_cast<uint16_t>(value);
  return {};
}

Result<void> ParsePool(std::string_view text, ServerOptions& options) {
  size_t eq = text.rfind('=');
  unsigned count = 0;
  std::string_view number = eq == std::string_view::npos ? std::string_view() : text.substr(eq + 1);
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), count);
  if (eq == 0 || eq == std::string_view::npos || number.empty() || ec != std::errc() ||
      end != number.data() + number.size()) {
    return Fail(Error::InvalidConfig("pool", fmt::format("'{}' is not TEMPLATE=N", text)));
  }
  options.pools[std::string(text.substr(0, eq))] = count;
  return {};
}

std::string DefaultApiKeyPath() { return ConfigDir() + "/api-key"; }

Result<std::string> LoadOrCreateApiKey(const std::string& path) {
  if (path == DefaultApiKeyPath()) {
    if (auto made = MakePrivateConfigDir(ConfigDir(), "the API key"); !made) {
      return Fail(std::move(made).error());
    }
  }
  auto secret = LoadOrCreateSecret(path, kApiKeySize, kApiKeyRole);
  if (!secret) return Fail(std::move(secret).error());
  return LowerHex(*secret);
}

size_t Router::BodyLimit(const RequestHead& head) const {
  if (McpEndpoint::Serves(Sv(head.target()))) return kMaxMcpMessage;
  if (head.find("E2b-Sandbox-Id") == head.end()) return kMaxControlBody;
  std::string_view target(head.target().data(), head.target().size());
  bool upload =
      head.method() == http::verb::post && (target == "/files" || target.starts_with("/files?"));
  return upload ? kMaxUploadBytes : kMaxConnectMessage;
}

void Router::Handle(Request& request, ResponseWriter& writer) {
  if (McpEndpoint::Serves(Sv(request.target()))) return mcp_.Handle(request, writer);
  auto sandbox = request.find("E2b-Sandbox-Id");
  if (sandbox == request.end()) return control_.Handle(request, writer);
  data_.Handle(request, {sandbox->value().data(), sandbox->value().size()}, writer);
}

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& options, Registry& registry) {
  std::unique_ptr<Server> server(new Server(std::make_unique<Router>(registry, options.api_key)));
  auto http = HttpServer::Listen(options.host, options.port, *server->router_);
  if (!http) return Fail(std::move(http).error());
  server->http_ = std::move(*http);
  return server;
}

Server::~Server() {
  if (http_) http_->Stop();
  // Before the connections' threads are joined: a stream waits for its command's events.
  router_->StopCommands();
}

void Server::Run() {
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  std::thread reaper([&] {
    std::unique_lock lock(mutex);
    while (!stopping) {
      lock.unlock();
      router_->control().ReapExpired();
      router_->mcp().ReapIdle();
      lock.lock();
      wake.wait_for(lock, kReapInterval, [&] { return stopping; });
    }
  });
  http_->Serve();
  {
    std::lock_guard lock(mutex);
    stopping = true;
  }
  wake.notify_all();
  reaper.join();
}

}  // namespace vessel::server
