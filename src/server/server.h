// `vessel serve`: one process on one machine serving E2B's API for this user's sandboxes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "server/data_plane.h"
#include "server/e2b_api.h"
#include "server/http_server.h"
#include "server/mcp_http.h"
#include "server/registry.h"
#include "vessel/error.h"

namespace vessel::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 3000;
  std::string api_key;                  // what clients must send in X-API-Key
  std::map<std::string, size_t> pools;  // warm sandboxes per template
};

// TEMPLATE=N into `options.pools`; kInvalidConfig (subject "pool").
[[nodiscard]] Result<void> ParsePool(std::string_view text, ServerOptions& options);

// HOST:PORT ("[::1]:3000" for IPv6) into `options`; kInvalidConfig (subject "listen").
[[nodiscard]] Result<void> ParseListen(std::string_view text, ServerOptions& options);

// The API key in `path` (default: <config dir>/api-key), made when missing: 64 hex
// digits, mode 0600, in a private directory.
[[nodiscard]] Result<std::string> LoadOrCreateApiKey(const std::string& path);
std::string DefaultApiKeyPath();

// Routes requests: /mcp to the MCP endpoint, those with an E2b-Sandbox-Id header to the
// data plane, the rest to the control plane.
class Router final : public HttpHandler {
 public:
  Router(Registry& registry, const std::string& api_key)
      : control_(registry, api_key), data_(registry), mcp_(registry, api_key) {}
  size_t BodyLimit(const RequestHead& head) const override;
  void Handle(Request& request, ResponseWriter& writer) override;
  ControlPlane& control() { return control_; }
  McpEndpoint& mcp() { return mcp_; }
  // Kills the commands the data plane runs, so that their streams end, and closes the
  // MCP sessions.
  void StopCommands() {
    data_.Stop();
    mcp_.CloseAll();
  }

 private:
  ControlPlane control_;
  DataPlane data_;
  McpEndpoint mcp_;
};

// The whole server: the listener, its router and the timeout reaper.
class Server {
 public:
  [[nodiscard]] static Result<std::unique_ptr<Server>> Start(const ServerOptions& options,
                                                             Registry& registry);
  // Stops serving and joins every thread; the sandboxes keep running.
  ~Server();
  [[nodiscard]] uint16_t port() const { return http_->port(); }
  // Serves until Stop().
  void Run();
  void Stop() { http_->Stop(); }

 private:
  explicit Server(std::unique_ptr<Router> router) : router_(std::move(router)) {}
  std::unique_ptr<Router> router_;
  std::unique_ptr<HttpServer> http_;
};

}  // namespace vessel::server
