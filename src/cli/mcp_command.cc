// `vessel mcp`: the MCP server (server/mcp.h) on stdin and stdout, one JSON-RPC message a
// line, for clients that spawn their server. Requests are answered as they finish, each
// tools/call on a thread of its own, so that a long command does not hold up a ping or
// the cancellation of it. At the end of stdin, or at SIGTERM, SIGINT or SIGHUP (how
// clients stop a server that does not leave at once), the session closes: its calls stop
// and the sandboxes it made (but those kept) are removed.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "cli/cli.h"
#include "server/mcp.h"
#include "supervisor/launch.h"

namespace vessel::cli {
namespace {

// Reads one line of at most `max` bytes; false at the end of input. A longer line is read
// to its end and given as empty with `too_long` set.
bool ReadLine(std::string& line, size_t max, bool& too_long) {
  line.clear();
  too_long = false;
  int c;
  while ((c = std::getc(stdin)) != EOF) {
    if (c == '\n') return true;
    if (line.size() < max) {
      line.push_back(static_cast<char>(c));
    } else {
      too_long = true;
    }
  }
  return !line.empty() || too_long;
}

}  // namespace

int Mcp() {
  if (auto prepared = supervisor::PrepareToSupervise(); !prepared) {
    return Failure(prepared.error());
  }
  // The stop signals are taken by sigwait below, in every thread.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  for (int signal : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&stop_signals, signal);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  server::SupervisorRegistry registry;
  server::McpSession session(registry);
  std::mutex out_mutex;
  auto send = [&](const nlohmann::json& message) {
    std::string text = message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    std::lock_guard lock(out_mutex);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  };
  std::mutex calls_mutex;
  std::condition_variable calls_done;
  size_t calls = 0;
  // Whoever leaves first, the main thread at the end of stdin or the signal thread, closes
  // the session; the other then waits here until the process is gone.
  static std::mutex leaving;
  auto close = [&] {
    leaving.lock();
    session.Close();
    std::unique_lock lock(calls_mutex);
    calls_done.wait(lock, [&] { return calls == 0; });
  };
  // The main thread may be blocked reading stdin: a signal closes the session from here,
  // and leaves at once.
  std::thread([&] {
    int received = 0;
    sigwait(&stop_signals, &received);
    close();
    std::lock_guard lock(out_mutex);
    std::fflush(stdout);
    std::_Exit(128 + received);
  }).detach();
  std::string line;
  bool too_long = false;
  while (ReadLine(line, server::kMaxMcpMessage, too_long)) {
    if (too_long) {
      send(server::McpSession::ParseError(
          fmt::format("a message of more than {} MiB", server::kMaxMcpMessage >> 20)));
      continue;
    }
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto message = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (message.is_discarded()) {
      send(server::McpSession::ParseError("the line is not JSON"));
      continue;
    }
    bool long_call =
        message.is_object() && message.contains("method") && message["method"] == "tools/call";
    if (!long_call) {
      if (auto answer = session.Handle(message, send)) send(*answer);
      continue;
    }
    {
      std::lock_guard lock(calls_mutex);
      ++calls;
    }
    std::thread([&, message = std::move(message)] {
      if (auto answer = session.Handle(message, send)) send(*answer);
      std::lock_guard lock(calls_mutex);
      if (--calls == 0) calls_done.notify_all();
    }).detach();
  }
  close();
  return 0;
}

}  // namespace vessel::cli
