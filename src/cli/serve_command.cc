// `vessel serve`: E2B's sandbox API for this user's sandboxes, until SIGTERM or SIGINT.
// The sandboxes outlive the server: each has its own supervisor.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "cli/cli.h"
#include "server/server.h"
#include "supervisor/launch.h"

namespace vessel::cli {
namespace {

// The server to stop when a signal comes; read by a thread that waits for the signals.
int WaitForStopSignal() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  int received = 0;
  sigwait(&signals, &received);
  return received;
}

}  // namespace

int Serve(const ServeArgs& args) {
  server::ServerOptions options;
  if (auto parsed = server::ParseListen(args.listen, options); !parsed) {
    return Failure(parsed.error());
  }
  for (const auto& pool : args.pools) {
    if (auto parsed = server::ParsePool(pool, options); !parsed) return Failure(parsed.error());
  }
  std::string key_path =
      args.api_key_file.empty() ? server::DefaultApiKeyPath() : args.api_key_file;
  auto key = server::LoadOrCreateApiKey(key_path);
  if (!key) return Failure(key.error());
  options.api_key = std::move(*key);
  if (auto prepared = supervisor::PrepareToSupervise(); !prepared) {
    return Failure(prepared.error());
  }
  // SIGTERM and SIGINT are taken by sigwait below, in every thread; SIGPIPE is a failed
  // write to a client that went away.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  server::SupervisorRegistry registry;
  if (auto pools = registry.StartPools(options.pools); !pools) return Failure(pools.error());
  auto server = server::Server::Start(options, registry);
  if (!server) return Failure(server.error());
  bool loopback =
      options.host == "127.0.0.1" || options.host == "::1" || options.host.starts_with("127.");
  std::string host =
      options.host.find(':') != std::string::npos ? "[" + options.host + "]" : options.host;
  fmt::print(stderr, "vessel serve: E2B API on http://{}:{}\n", host, (*server)->port());
  fmt::print(stderr, "vessel serve: MCP on http://{}:{}/mcp\n", host, (*server)->port());
  fmt::print(stderr, "vessel serve: API key in {}\n", key_path);
  for (const auto& [template_id, size] : options.pools) {
    fmt::print(stderr, "vessel serve: keeping {} warm '{}' sandboxes\n", size, template_id);
  }
  if (!loopback) {
    fmt::print(stderr,
               "vessel serve: WARNING: listening on {}, not on loopback: anyone who can reach "
               "this address and holds the API key can run code here; the API is plain HTTP\n",
               options.host);
  }
  std::thread stopper([&] {
    int signal = WaitForStopSignal();
    fmt::print(stderr,
               "vessel serve: {}: stopping; sandboxes keep running, but those MCP sessions made\n",
               signal == SIGTERM ? "SIGTERM" : "SIGINT");
    (*server)->Stop();
  });
  (*server)->Run();
  // Run() returns only after Stop(), which only the stopper calls.
  stopper.join();
  return 0;
}

}  // namespace vessel::cli
