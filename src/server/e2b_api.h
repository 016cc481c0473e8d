// E2B's control plane (docs/api/openapi.yaml says what is served and where Vessel
// differs): sandboxes created, listed, inspected, paused, resumed, killed, forked and given a new
// timeout, and the templates they come from. Every request carries the server's API key in
// X-API-Key; errors are {"code", "message"} with E2B's status codes, so the SDKs raise the errors
// they would raise against E2B.
#pragma once

#include <string>
#include <string_view>

#include "server/http_server.h"
#include "server/registry.h"

namespace vessel::server {

// What create and connect return as the version of the in-sandbox daemon; the SDKs
// enable features by it: 0.5.2 closing stdin, 0.5.7 raw-body uploads; below 0.6.2 the
// SDK itself refuses file metadata, which is not served.
inline constexpr std::string_view kEnvdVersion = "0.5.7";
// Control-plane bodies are small JSON objects.
inline constexpr size_t kMaxControlBody = 1024 * 1024;
// Limits on what a create may ask for.
inline constexpr size_t kMaxMapEntries = 256;
inline constexpr size_t kMaxKeyBytes = 256;
inline constexpr size_t kMaxValueBytes = 16 * 1024;
inline constexpr int64_t kMaxTimeoutSeconds = 24 * 3600;
// Sandboxes listed per page at most (E2B's limit).
inline constexpr size_t kMaxPageSize = 100;

class ControlPlane {
 public:
  // `registry` must outlive this.
  ControlPlane(Registry& registry, std::string api_key)
      : registry_(registry), api_key_(std::move(api_key)) {}

  // Answers a control-plane request.
  void Handle(const Request& request, ResponseWriter& writer);
  // Kills the sandboxes whose timeout has passed, or pauses those created with autoPause
  // (paused ones do not expire). The server calls it every second; a
  // sandbox that expired while no server ran goes at the next start.
  void ReapExpired();

 private:
  Registry& registry_;
  std::string api_key_;
};

// Whether `given` is the API key `key` (compared in constant time).
bool ApiKeyMatches(std::string_view given, std::string_view key);

// An RFC 3339 UTC timestamp with milliseconds, as E2B writes them.
std::string Rfc3339(int64_t unix_ms);

}  // namespace vessel::server
