// /mcp on `vessel serve`: MCP's streamable HTTP transport (revision 2025-11-25) for the
// sessions of server/mcp.h.
//
// A client POSTs one JSON-RPC message per request, with the API key as a bearer token
// (Authorization: Bearer KEY; X-API-Key works too). initialize opens a session and
// answers its id in Mcp-Session-Id, which every later request carries. A request is
// answered as JSON, except a tools/call from a client that accepts text/event-stream:
// that answer is a stream of server-sent events, its progress notifications and then
// its result. A notification or a response from the client gets 202. DELETE ends the
// session (its calls stop, the sandboxes it made go); GET is 405: the server never
// speaks first.
//
// Bounded: a message is at most kMaxMcpMessage (413 beyond), at most kMaxMcpSessions are
// open (503 beyond), and a session no request has used for kMcpSessionIdle is closed.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "server/http_server.h"
#include "server/mcp.h"
#include "server/registry.h"

namespace vessel::server {

inline constexpr size_t kMaxMcpSessions = 256;
inline constexpr std::chrono::minutes kMcpSessionIdle{30};

class McpEndpoint {
 public:
  // `registry` must outlive this.
  McpEndpoint(Registry& registry, std::string api_key)
      : registry_(registry), api_key_(std::move(api_key)) {}
  // CloseAll().
  ~McpEndpoint();
  McpEndpoint(const McpEndpoint&) = delete;
  McpEndpoint& operator=(const McpEndpoint&) = delete;

  // Whether `target` (a request's path and query) is this endpoint's.
  static bool Serves(std::string_view target);
  void Handle(const Request& request, ResponseWriter& writer);
  // Closes the sessions idle for kMcpSessionIdle; the server calls it every second.
  void ReapIdle();
  // Closes every session: the server is stopping.
  void CloseAll();

 private:
  struct Entry {
    std::shared_ptr<McpSession> session;
    std::chrono::steady_clock::time_point last_used;
    int requests = 0;  // that use it now
  };
  // Answers `message` in `session`: as JSON, as events, or 202 when it is no request.
  void Answer(McpSession& session, const Request& request, const nlohmann::json& message,
              ResponseWriter& writer);
  // Answers initialize in a new session.
  void Open(const nlohmann::json& message, ResponseWriter& writer);
  // The end of a request that used the session `id`.
  void Release(const std::string& id);

  Registry& registry_;
  std::string api_key_;
  std::mutex mutex_;
  std::map<std::string, Entry> sessions_;
};

}  // namespace vessel::server
