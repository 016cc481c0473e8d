// E2B's data plane (what E2B calls envd), for the requests the SDK routes to a sandbox
// with the E2b-Sandbox-Id header: the process service over the Connect protocol with
// JSON (process.Process: Start as a server stream, with or without a pty; Connect, a
// stream of a running command's events; SendSignal,
// SendInput, CloseStdin, Update to resize a pty, List), the file system service
// (filesystem.Filesystem: Stat, ListDir, MakeDir, Move, Remove), GET and POST /files (downloads;
// uploads as a raw body or multipart form) and /health. Each request must carry the sandbox's
// access token in X-Access-Token when it has one.
//
// A command runs through the sandbox's supervisor (supervisor/client.h), as `vessel exec`
// does. Its events are read by a thread of its own and handed to its listeners: the Start
// stream that ran it and any Connect stream since, each with a bounded backlog. A command
// runs on when its listeners go away (the SDK's disconnect()), until it ends, is killed or
// the server stops.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
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
// The most bytes of events one listener of a command may have waiting; past it that
// listener's stream ends (resource_exhausted) and the command runs on.
inline constexpr size_t kMaxListenerBacklog = 16 * 1024 * 1024;
// The most commands the data plane runs at once, over all sandboxes.
inline constexpr size_t kMaxRunningCommands = 1024;

class DataPlane {
 public:
  explicit DataPlane(Registry& registry) : registry_(registry) {}
  // Kills the commands it runs and ends their streams, within a second or so.
  void Stop();
  // Stop(), and waits for their threads.
  ~DataPlane();
  DataPlane(const DataPlane&) = delete;
  DataPlane& operator=(const DataPlane&) = delete;

  // Answers a request whose E2b-Sandbox-Id header names `sandbox_id`.
  void Handle(const Request& request, std::string_view sandbox_id, ResponseWriter& writer);

 private:
  // A stream that hears of a command's events: envelopes ready to write.
  struct Listener {
    std::deque<std::string> envelopes;
    size_t bytes = 0;
    bool dropped = false;  // it fell kMaxListenerBacklog behind
    bool closed = false;   // the last envelope (end of stream) is queued
  };
  // A command started through Start, until it ends.
  struct Running {
    std::shared_ptr<sandbox::Connection> connection;
    std::unique_ptr<Process> process;
    std::string cmd;
    std::vector<std::string> args;
    std::map<std::string, std::string> envs;
    std::string cwd;
    bool terminal = false;  // started with a pty: its output is "pty", its input too
    std::mutex mutex;       // guards the rest
    std::condition_variable changed;
    std::vector<std::shared_ptr<Listener>> listeners;
    bool over = false;  // its events are all published
  };
  using Key = std::pair<std::string, int>;  // sandbox id, pid

  void Start(const Request& request, const ApiSandbox& sandbox, ResponseWriter& writer);
  void Connect(const Request& request, const ApiSandbox& sandbox, ResponseWriter& writer);
  // Reads the command's events until it ends and publishes them; on its own thread.
  void Pump(std::shared_ptr<Running> running, Key key);
  static void Publish(Running& running, std::string envelope, bool last = false);
  // Streams the command's events to the client of `writer`, from the start event on.
  static void Listen(Running& running, const std::shared_ptr<Listener>& listener, int pid,
                     ResponseWriter& writer);
  void Unary(std::string_view method, const Request& request, const ApiSandbox& sandbox,
             ResponseWriter& writer);
  std::shared_ptr<Running> Find(const std::string& sandbox_id, int pid);
  void Filesystem(std::string_view method, const Request& request, const ApiSandbox& sandbox,
                  ResponseWriter& writer);
  void Files(const Request& request, const ApiSandbox& sandbox, ResponseWriter& writer);

  Registry& registry_;
  std::mutex mutex_;
  std::condition_variable pumps_done_;
  std::map<Key, std::shared_ptr<Running>> running_;
  size_t pumps_ = 0;  // threads in Pump
  std::atomic<bool> stopping_ = false;  // read by each pump without the lock
};

// Base64 (RFC 4648, with padding), as proto3 JSON writes bytes; Decode accepts the
// URL-safe alphabet too and fails on anything else.
std::string Base64Encode(std::string_view bytes);
[[nodiscard]] std::optional<std::string> Base64Decode(std::string_view text);

}  // namespace vessel::server
