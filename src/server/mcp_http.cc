#include "server/mcp_http.h"

#include <fmt/format.h>

#include <boost/beast/core/string.hpp>
#include <utility>
#include <vector>

#include "server/e2b_api.h"

namespace vessel::server {
namespace {

using json = nlohmann::json;
using status = http::status;
constexpr std::string_view kPath = "/mcp";
constexpr const char* kSessionHeader = "Mcp-Session-Id";
constexpr int kInvalidRequest = -32600;
constexpr int kCancelled = -32800;

std::string Dump(const json& message) {
  return message.dump(-1, ' ', false, json::error_handler_t::replace);
}

// A refusal of the whole HTTP request, as a JSON-RPC error without an id.
void Refuse(ResponseWriter& writer, status code, std::string message,
            std::initializer_list<std::pair<std::string_view, std::string_view>> headers = {}) {
  json body = {{"jsonrpc", "2.0"},
               {"id", nullptr},
               {"error", {{"code", kInvalidRequest}, {"message", std::move(message)}}}};
  (void)writer.Send(code, "application/json", Dump(body), headers);
}

// Browsers name the page that sends a request: only pages on this machine may talk to the
// endpoint (a page elsewhere could otherwise reach a server on loopback by DNS rebinding).
bool LocalOrigin(std::string_view origin) {
  size_t scheme = origin.find("://");
  if (scheme == std::string_view::npos) return false;
  std::string_view host = origin.substr(scheme + 3);
  if (host.starts_with('[')) {
    host = host.substr(0, host.find(']') + 1);
  } else {
    host = host.substr(0, host.find(':'));
  }
  return host == "localhost" || host == "127.0.0.1" || host == "[::1]";
}

std::string_view BearerToken(const Request& request) {
  std::string_view auth = Sv(request[http::field::authorization]);
  if (auth.size() > 7 && boost::beast::iequals(boost::beast::string_view(auth.data(), 7), "bearer ")) {
    return auth.substr(7);
  }
  return Sv(request["X-API-Key"]);
}

bool IsRequest(const json& message) {
  return message.is_object() && message.contains("id") && message.contains("method");
}

}  // namespace

McpEndpoint::~McpEndpoint() { CloseAll(); }

bool McpEndpoint::Serves(std::string_view target) {
  return target.substr(0, target.find('?')) == kPath;
}

void McpEndpoint::Handle(const Request& request, ResponseWriter& writer) {
  if (auto origin = request.find(http::field::origin);
      origin != request.end() && !LocalOrigin(Sv(origin->value()))) {
    return Refuse(writer, status::forbidden,
                  fmt::format("requests from the origin '{}' are refused: only pages on this "
                              "machine may call the MCP endpoint",
                              Sv(origin->value())));
  }
  std::string_view key = BearerToken(request);
  if (!ApiKeyMatches(key, api_key_)) {
    return Refuse(
        writer, status::unauthorized,
        key.empty() ? "the API key is required: Authorization: Bearer KEY" : "Invalid API key",
        {{"WWW-Authenticate", "Bearer"}});
  }
  const std::string id(Sv(request[kSessionHeader]));
  if (request.method() == http::verb::get) {
    return Refuse(writer, status::method_not_allowed,
                  "the server sends no messages of its own: there is no stream to GET",
                  {{"Allow", "POST, DELETE"}});
  }
  if (request.method() == http::verb::delete_) {
    std::shared_ptr<McpSession> session;
    {
      std::lock_guard lock(mutex_);
      auto it = sessions_.find(id);
      if (it != sessions_.end()) {
        session = std::move(it->second.session);
        sessions_.erase(it);
      }
    }
    if (!session) return Refuse(writer, status::not_found, "no such MCP session");
    session->Close();
    (void)writer.Send(status::no_content, "", "");
    return;
  }
  if (request.method() != http::verb::post) {
    return Refuse(writer, status::method_not_allowed, "the MCP endpoint takes POST and DELETE",
                  {{"Allow", "POST, DELETE"}});
  }
  if (auto version = Sv(request["MCP-Protocol-Version"]);
      !version.empty() && !McpSupportsVersion(version)) {
    return Refuse(writer, status::bad_request,
                  fmt::format("protocol version '{}' is not supported", version));
  }
  json message = json::parse(request.body(), nullptr, /*allow_exceptions=*/false);
  if (message.is_discarded()) {
    (void)writer.Send(status::bad_request, "application/json",
                      Dump(McpSession::ParseError("the body is not JSON")));
    return;
  }
  if (!message.is_object()) {
    return Refuse(writer, status::bad_request,
                  "the body must be one JSON-RPC message (batches are not taken)");
  }
  if (IsRequest(message) && message["method"] == "initialize") {
    return Open(message, writer);
  }
  if (id.empty()) {
    return Refuse(writer, status::bad_request,
                  "the Mcp-Session-Id header is required (initialize gives one)");
  }
  std::shared_ptr<McpSession> session;
  {
    std::lock_guard lock(mutex_);
    auto it = sessions_.find(id);
    if (it != sessions_.end()) {
      session = it->second.session;
      ++it->second.requests;
      it->second.last_used = std::chrono::steady_clock::now();
    }
  }
  if (!session) {
    return Refuse(writer, status::not_found, "no such MCP session: initialize a new one");
  }
  Answer(*session, request, message, writer);
  Release(id);
}

void McpEndpoint::Open(const json& message, ResponseWriter& writer) {
  auto id = NewAccessToken();
  if (!id) return Refuse(writer, status::internal_server_error, id.error().ToString());
  auto session = std::make_shared<McpSession>(registry_);
  auto answer = session->Handle(message, [](const json&) {});
  {
    std::lock_guard lock(mutex_);
    if (sessions_.size() >= kMaxMcpSessions) {
      return Refuse(writer, status::service_unavailable,
                    fmt::format("{} MCP sessions are open, the most this server keeps: end one "
                                "(DELETE) first",
                                kMaxMcpSessions));
    }
    sessions_[*id] = {.session = session, .last_used = std::chrono::steady_clock::now()};
  }
  (void)writer.Send(status::ok, "application/json", Dump(*answer), {{kSessionHeader, *id}});
}

void McpEndpoint::Answer(McpSession& session, const Request& request, const json& message,
                         ResponseWriter& writer) {
  if (!IsRequest(message)) {
    (void)session.Handle(message, [](const json&) {});
    (void)writer.Send(status::accepted, "", "");
    return;
  }
  bool events =
      message["method"] == "tools/call" &&
      Sv(request[http::field::accept]).find("text/event-stream") != std::string_view::npos;
  if (!events) {
    auto answer = session.Handle(message, [](const json&) {});
    if (!answer) {
      answer = json{{"jsonrpc", "2.0"},
                    {"id", message["id"]},
                    {"error", {{"code", kCancelled}, {"message", "the request was cancelled"}}}};
    }
    (void)writer.Send(status::ok, "application/json", Dump(*answer));
    return;
  }
  // A call that runs long: its progress, then its answer, each as an event. A client that
  // goes away does not cancel it (it sends notifications/cancelled for that).
  if (!writer.BeginStream(status::ok, "text/event-stream")) return;
  std::mutex write_mutex;
  bool broken = false;
  auto send = [&](const json& event) {
    std::lock_guard lock(write_mutex);
    if (!broken) broken = !writer.Write(fmt::format("event: message\ndata: {}\n\n", Dump(event)));
  };
  if (auto answer = session.Handle(message, send)) send(*answer);
  if (!broken) (void)writer.Finish();
}

void McpEndpoint::Release(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  --it->second.requests;
  it->second.last_used = std::chrono::steady_clock::now();
}

void McpEndpoint::ReapIdle() {
  std::vector<std::shared_ptr<McpSession>> idle;
  {
    std::lock_guard lock(mutex_);
    auto now = std::chrono::steady_clock::now();
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (it->second.requests == 0 && now - it->second.last_used >= kMcpSessionIdle) {
        idle.push_back(std::move(it->second.session));
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& session : idle) session->Close();
}

void McpEndpoint::CloseAll() {
  std::map<std::string, Entry> sessions;
  {
    std::lock_guard lock(mutex_);
    sessions.swap(sessions_);
  }
  for (auto& [id, entry] : sessions) entry.session->Close();
}

}  // namespace vessel::server
