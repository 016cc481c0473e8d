// E2B's data plane (what E2B calls envd), for the requests the SDK routes to a sandbox
// with the E2b-Sandbox-Id header: the process service over the Connect protocol with
// JSON (process.Process: Start as a server stream, with or without a pty; SendSignal,
// SendInput, CloseStdin, Update to resize a pty, List), the file system service
// (filesystem.Filesystem: Stat, ListDir, MakeDir, Move, Remove), GET and POST /files (downloads;
// uploads as a raw body or multipart form) and /health. Each request must carry the sandbox's
// access token in X-Access-Token when it has one.
//
// A command runs through the sandbox's supervisor (supervisor/client.h), as `vessel exec`
// does. A client that goes away from a Start stream takes its command with it (killed).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "server/http_server.h"
#include "server/registry.h"
#include "vessel/sandbox.h"

namespace vessel::server {

// The most bytes of a Connect message (request or one event) the data plane takes.
inline constexpr size_t kMaxConnectMessage = 4 * 1024 * 1024;
// The largest upload to /files (the body is held in memory while it is written).
inline constexpr size_t kMaxUploadBytes = 128 * 1024 * 1024;
// The most entries a ListDir answers with, whatever its depth.
inline constexpr size_t kMaxListedEntries = 10'000;
// Events sent without output in between, so proxies and the SDK know the stream lives.
inline constexpr std::chrono::seconds kKeepAliveInterval{30};

class DataPlane {
 public:
  explicit DataPlane(Registry& registry) : registry_(registry) {}

  // Answers a request whose E2b-Sandbox-Id header names `sandbox_id`.
  void Handle(const Request& request, std::string_view sandbox_id, ResponseWriter& writer);

 private:
  // A command started through Start, while its stream is open.
  struct Running {
    std::shared_ptr<sandbox::Connection> connection;
    std::unique_ptr<Process> process;
    std::string cmd;
    std::vector<std::string> args;
    std::map<std::string, std::string> envs;
    std::string cwd;
    bool terminal = false;  // started with a pty: its output is "pty", its input too
  };
  using Key = std::pair<std::string, int>;  // sandbox id, pid

  void Start(const Request& request, const ApiSandbox& sandbox, ResponseWriter& writer);
  void Unary(std::string_view method, const Request& request, const ApiSandbox& sandbox,
             ResponseWriter& writer);
  std::shared_ptr<Running> Find(const std::string& sandbox_id, int pid);
  void Filesystem(std::string_view method, const Request& request, const ApiSandbox& sandbox,
                  ResponseWriter& writer);
  void Files(const Request& request, const ApiSandbox& sandbox, ResponseWriter& writer);

  Registry& registry_;
  std::mutex mutex_;
  std::map<Key, std::shared_ptr<Running>> running_;
};

// Base64 (RFC 4648, with padding), as proto3 JSON writes bytes; Decode accepts the
// URL-safe alphabet too and fails on anything else.
std::string Base64Encode(std::string_view bytes);
[[nodiscard]] std::optional<std::string> Base64Decode(std::string_view text);

}  // namespace vessel::server
