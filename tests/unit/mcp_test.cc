// The MCP server over a registry fake (tests/mcp runs it with real sandboxes and the
// official TypeScript SDK): JSON-RPC framing, version negotiation, the tools' schemas,
// argument checks, the session's ownership of its sandboxes, and the streamable HTTP
// transport's sessions, key and refusals.
#include "server/mcp.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "fake_registry.h"
#include "server/mcp_http.h"
#include "server/server.h"
#include "server_test_support.h"

namespace vessel::server {
namespace {

using nlohmann::json;

constexpr const char* kKey = "0123456789abcdef";
const McpSession::Notify kIgnore = [](const json&) {};

json Request(json id, std::string method, json params = json::object()) {
  return {{"jsonrpc", "2.0"},
          {"id", std::move(id)},
          {"method", std::move(method)},
          {"params", std::move(params)}};
}

json CallTool(std::string name, json arguments) {
  return Request(7, "tools/call", {{"name", std::move(name)}, {"arguments", std::move(arguments)}});
}

int ErrorCode(const std::optional<json>& answer) {
  if (!answer || !answer->contains("error")) return 0;
  return (*answer)["error"].value("code", 0);
}

// The text of a tool's error result; empty when the call succeeded or is no tool result.
std::string ToolError(const std::optional<json>& answer) {
  if (!answer || !answer->contains("result")) return {};
  const json& result = (*answer)["result"];
  if (!result.value("isError", false)) return {};
  return result["content"][0].value("text", "");
}

class McpSessionTest : public ::testing::Test {
 protected:
  std::optional<json> Handle(const json& message) { return session_.Handle(message, kIgnore); }
  json Structured(const json& message) {
    auto answer = Handle(message);
    EXPECT_TRUE(answer && answer->contains("result")) << (answer ? answer->dump() : "none");
    if (!answer || !answer->contains("result")) return {};
    EXPECT_FALSE((*answer)["result"].value("isError", true)) << answer->dump();
    return (*answer)["result"].value("structuredContent", json());
  }

  FakeRegistry registry_;
  McpSession session_{registry_};
};

TEST_F(McpSessionTest, InitializeAnswersTheClientsVersionWhenSupportedElseTheLatest) {
  for (std::string version : {"2025-11-25", "2025-06-18", "2025-03-26"}) {
    auto answer = Handle(Request(1, "initialize", {{"protocolVersion", version}}));
    ASSERT_TRUE(answer);
    EXPECT_EQ((*answer)["result"]["protocolVersion"], version);
    EXPECT_TRUE((*answer)["result"]["capabilities"].contains("tools"));
    EXPECT_EQ((*answer)["result"]["serverInfo"]["name"], "vessel");
  }
  for (json asked : {json("1999-01-01"), json(""), json(42)}) {
    auto answer = Handle(Request(1, "initialize", {{"protocolVersion", asked}}));
    ASSERT_TRUE(answer);
    EXPECT_EQ((*answer)["result"]["protocolVersion"], kMcpLatestVersion) << asked;
  }
  EXPECT_EQ((*Handle(Request("p", "ping")))["result"], json::object());
}

TEST_F(McpSessionTest, EveryToolHasObjectSchemasAndTruthfulAnnotations) {
  auto answer = Handle(Request(2, "tools/list"));
  ASSERT_TRUE(answer);
  const json& tools = (*answer)["result"]["tools"];
  ASSERT_EQ(tools.size(), 15u);
  std::set<std::string> names;
  for (const auto& tool : tools) {
    std::string name = tool["name"];
    names.insert(name);
    EXPECT_EQ(tool["inputSchema"]["type"], "object") << name;
    EXPECT_EQ(tool["outputSchema"]["type"], "object") << name;
    EXPECT_FALSE(tool.value("description", "").empty()) << name;
    const json& hints = tool["annotations"];
    for (const char* hint : {"readOnlyHint", "destructiveHint", "idempotentHint"}) {
      EXPECT_TRUE(hints[hint].is_boolean()) << name << " " << hint;
    }
    // A tool that changes nothing destroys nothing.
    if (hints["readOnlyHint"]) {
      EXPECT_FALSE(hints["destructiveHint"]) << name;
    }
  }
  EXPECT_EQ(names.size(), 15u);
  for (const char* name :
       {"run_code", "sandbox_create", "sandbox_list", "sandbox_kill", "sandbox_exec",
        "sandbox_exec_start", "sandbox_exec_poll", "sandbox_exec_write_stdin",
        "sandbox_exec_signal", "files_read", "files_write", "files_list", "files_remove",
        "snapshot_create", "sandbox_fork"}) {
    EXPECT_TRUE(names.contains(name)) << name;
  }
  auto hint = [&](std::string_view name, const char* which) {
    for (const auto& tool : tools) {
      if (tool["name"] == name) return tool["annotations"][which].get<bool>();
    }
    return false;
  };
  EXPECT_TRUE(hint("sandbox_list", "readOnlyHint"));
  EXPECT_TRUE(hint("files_read", "readOnlyHint"));
  EXPECT_TRUE(hint("sandbox_kill", "destructiveHint"));
  EXPECT_TRUE(hint("files_remove", "destructiveHint"));
  EXPECT_FALSE(hint("sandbox_create", "readOnlyHint"));
}

TEST_F(McpSessionTest, MalformedMessagesGetJsonRpcErrors) {
  EXPECT_EQ(ErrorCode(Handle(json::array())), -32600);
  EXPECT_EQ(ErrorCode(Handle(json("ping"))), -32600);
  EXPECT_EQ(ErrorCode(Handle({{"id", 1}, {"method", "ping"}})), -32600);  // no jsonrpc
  EXPECT_EQ(ErrorCode(Handle({{"jsonrpc", "1.0"}, {"id", 1}, {"method", "ping"}})), -32600);
  EXPECT_EQ(ErrorCode(Handle({{"jsonrpc", 2}, {"id", 1}, {"method", "ping"}})), -32600);
  for (json id : {json::array(), json::object(), json(1.5), json(true)}) {
    EXPECT_EQ(ErrorCode(Handle({{"jsonrpc", "2.0"}, {"id", id}, {"method", "ping"}})), -32600)
        << id;
  }
  EXPECT_EQ(ErrorCode(Handle({{"jsonrpc", "2.0"}, {"id", 1}, {"method", 5}})), -32600);
  EXPECT_EQ(ErrorCode(Handle(Request(1, "resources/list"))), -32601);
  // Notifications and responses are answered with nothing.
  EXPECT_FALSE(Handle({{"jsonrpc", "2.0"}, {"method", "notifications/initialized"}}));
  EXPECT_FALSE(Handle({{"jsonrpc", "2.0"}, {"method", "no/such/notification"}}));
  EXPECT_FALSE(Handle({{"jsonrpc", "2.0"}, {"id", 3}, {"result", json::object()}}));
  json parse = McpSession::ParseError("the line is not JSON");
  EXPECT_EQ(parse["error"]["code"], -32700);
  EXPECT_TRUE(parse["id"].is_null());
}

TEST_F(McpSessionTest, BadToolCallsSayWhatIsWrong) {
  EXPECT_EQ(ErrorCode(Handle(Request(1, "tools/call", json::object()))), -32602);
  EXPECT_EQ(ErrorCode(Handle(Request(1, "tools/call", {{"name", 5}}))), -32602);
  auto unknown = Handle(CallTool("no_such_tool", json::object()));
  EXPECT_EQ(ErrorCode(unknown), -32602);
  EXPECT_NE((*unknown)["error"]["message"].get<std::string>().find("no_such_tool"),
            std::string::npos);

  EXPECT_NE(ToolError(Handle(CallTool("sandbox_exec", json::array()))).find("object"),
            std::string::npos);
  EXPECT_NE(ToolError(Handle(CallTool("sandbox_list", "all"))).find("object"), std::string::npos);
  EXPECT_NE(ToolError(Handle(CallTool("sandbox_exec", {{"command", "true"}}))).find("sandbox_id"),
            std::string::npos);
  EXPECT_NE(ToolError(Handle(CallTool("sandbox_create", {{"timeout_seconds", "60"}})))
                .find("timeout_seconds"),
            std::string::npos);
  EXPECT_NE(ToolError(Handle(CallTool("sandbox_create", {{"timeout_seconds", 0}})))
                .find("timeout_seconds"),
            std::string::npos);
  EXPECT_NE(ToolError(Handle(CallTool("sandbox_create", {{"env", {{"A", 1}}}}))).find("env"),
            std::string::npos);
  EXPECT_NE(ToolError(Handle(CallTool("sandbox_create", {{"keep", "yes"}}))).find("keep"),
            std::string::npos);
  EXPECT_TRUE(registry_.sandboxes.empty());

  EXPECT_NE(ToolError(Handle(CallTool("sandbox_exec",
                                      {{"sandbox_id", "0123456789ab"}, {"command", "true"}})))
                .find("no sandbox"),
            std::string::npos);
  EXPECT_NE(ToolError(Handle(CallTool("sandbox_create", {{"template", "nope"}}))).find("template"),
            std::string::npos);
  EXPECT_EQ(Structured(CallTool("sandbox_kill", {{"sandbox_id", "0123456789ab"}}))["killed"],
            false);
}

TEST_F(McpSessionTest, CloseRemovesTheSandboxesTheSessionMadeButTheKeptOnes) {
  std::string gone = Structured(CallTool("sandbox_create", json::object()))["sandbox_id"];
  std::string kept = Structured(
      CallTool("sandbox_create", {{"template", "python"}, {"keep", true}}))["sandbox_id"];
  ASSERT_EQ(registry_.sandboxes.size(), 2u);
  EXPECT_EQ(registry_.last_create->template_id, "python");

  json listed = Structured(CallTool("sandbox_list", json::object()))["sandboxes"];
  ASSERT_EQ(listed.size(), 2u);
  for (const auto& s : listed) EXPECT_EQ(s["owned"], s["sandbox_id"] == gone) << s;

  session_.Close();
  EXPECT_FALSE(registry_.sandboxes.contains(gone));
  EXPECT_TRUE(registry_.sandboxes.contains(kept));
  EXPECT_EQ(ErrorCode(Handle(CallTool("sandbox_list", json::object()))), -32600);
}

TEST_F(McpSessionTest, KillRemovesASandbox) {
  std::string id = Structured(CallTool("sandbox_create", json::object()))["sandbox_id"];
  EXPECT_EQ(Structured(CallTool("sandbox_kill", {{"sandbox_id", id}}))["killed"], true);
  EXPECT_TRUE(registry_.sandboxes.empty());
}

class McpHttpTest : public ::testing::Test {
 protected:
  McpHttpTest() : router_(registry_, kKey), server_(router_) {}

  // A POST (or another method) to /mcp; the whole response.
  std::string Send(const std::string& body, const std::string& session = {},
                   std::string headers = "Authorization: Bearer " + std::string(kKey) + "\r\n",
                   const std::string& method = "POST") {
    std::string request = method + " /mcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers;
    if (!session.empty()) request += "Mcp-Session-Id: " + session + "\r\n";
    request += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
               "\r\n\r\n" + body;
    return Exchange(server_.port(), request);
  }
  static std::string Header(const std::string& response, std::string_view name) {
    std::string needle = "\r\n" + std::string(name) + ": ";
    size_t at = response.find(needle);
    if (at == std::string::npos) return {};
    at += needle.size();
    return response.substr(at, response.find("\r\n", at) - at);
  }
  static json JsonOf(const std::string& response) {
    return json::parse(BodyOf(response), nullptr, /*allow_exceptions=*/false);
  }
  std::string Initialize() {
    auto response = Send(Request(1, "initialize", {{"protocolVersion", "2025-11-25"}}).dump());
    EXPECT_EQ(StatusOf(response), 200) << response;
    return Header(response, "Mcp-Session-Id");
  }

  FakeRegistry registry_;
  Router router_;
  RunningServer server_;
};

TEST_F(McpHttpTest, TheApiKeyIsABearerToken) {
  std::string ping = Request(1, "initialize").dump();
  auto none = Send(ping, {}, "");
  EXPECT_EQ(StatusOf(none), 401);
  EXPECT_EQ(Header(none, "WWW-Authenticate"), "Bearer");
  EXPECT_EQ(StatusOf(Send(ping, {}, "Authorization: Bearer wrong\r\n")), 401);
  EXPECT_EQ(StatusOf(Send(ping, {}, "Authorization: Basic " + std::string(kKey) + "\r\n")), 401);
  EXPECT_EQ(StatusOf(Send(ping, {}, "Authorization: bearer " + std::string(kKey) + "\r\n")), 200);
  EXPECT_EQ(StatusOf(Send(ping, {}, "X-API-Key: " + std::string(kKey) + "\r\n")), 200);
}

TEST_F(McpHttpTest, InitializeOpensASessionThatLaterRequestsName) {
  std::string session = Initialize();
  ASSERT_EQ(session.size(), 48u);
  EXPECT_NE(Initialize(), session);
  std::string ping = Request(2, "ping").dump();
  EXPECT_EQ(StatusOf(Send(ping)), 400);
  EXPECT_EQ(StatusOf(Send(ping, "0123")), 404);
  auto pong = Send(ping, session);
  ASSERT_EQ(StatusOf(pong), 200) << pong;
  EXPECT_EQ(JsonOf(pong)["result"], json::object());
  auto notified =
      Send(json{{"jsonrpc", "2.0"}, {"method", "notifications/initialized"}}.dump(), session);
  EXPECT_EQ(StatusOf(notified), 202);
  EXPECT_TRUE(BodyOf(notified).empty());
}

TEST_F(McpHttpTest, DeleteEndsTheSessionAndRemovesItsSandboxes) {
  std::string session = Initialize();
  auto made = Send(CallTool("sandbox_create", json::object()).dump(), session);
  ASSERT_EQ(StatusOf(made), 200) << made;
  EXPECT_EQ(registry_.sandboxes.size(), 1u);
  std::string auth = "Authorization: Bearer " + std::string(kKey) + "\r\n";
  EXPECT_EQ(StatusOf(Send("", session, auth, "DELETE")), 204);
  EXPECT_TRUE(registry_.sandboxes.empty());
  EXPECT_EQ(StatusOf(Send(Request(2, "ping").dump(), session)), 404);
  EXPECT_EQ(StatusOf(Send("", session, auth, "DELETE")), 404);
}

TEST_F(McpHttpTest, WhatTheEndpointRefuses) {
  std::string session = Initialize();
  std::string auth = "Authorization: Bearer " + std::string(kKey) + "\r\n";
  EXPECT_EQ(StatusOf(Send("", session, auth, "GET")), 405);
  EXPECT_EQ(StatusOf(Send("", session, auth, "PUT")), 405);
  auto not_json = Send("{\"jsonrpc\":", session);
  EXPECT_EQ(StatusOf(not_json), 400);
  EXPECT_EQ(JsonOf(not_json)["error"]["code"], -32700);
  EXPECT_EQ(StatusOf(Send(json::array({Request(1, "ping")}).dump(), session)), 400);
  EXPECT_EQ(StatusOf(Send(Request(1, "ping").dump(), session,
                          auth + "MCP-Protocol-Version: 2024-01-01\r\n")),
            400);
  EXPECT_EQ(StatusOf(Send(Request(1, "ping").dump(), session,
                          auth + "MCP-Protocol-Version: 2025-06-18\r\n")),
            200);
  EXPECT_EQ(
      StatusOf(Send(Request(1, "ping").dump(), session, auth + "Origin: http://evil.example\r\n")),
      403);
  EXPECT_EQ(StatusOf(Send(Request(1, "ping").dump(), session,
                          auth + "Origin: http://localhost:5173\r\n")),
            200);
  // A body over the limit is refused from its length alone.
  std::string huge =
      "POST /mcp HTTP/1.1\r\nHost: x\r\n" + auth +
      "Content-Type: application/json\r\nContent-Length: " + std::to_string(kMaxMcpMessage + 1) +
      "\r\n\r\n";
  EXPECT_EQ(StatusOf(Exchange(server_.port(), huge)), 413);
}

TEST_F(McpHttpTest, AToolCallIsAnsweredAsEventsWhenTheClientTakesThem) {
  std::string session = Initialize();
  std::string auth = "Authorization: Bearer " + std::string(kKey) + "\r\n";
  auto events = Send(CallTool("sandbox_list", json::object()).dump(), session,
                     auth + "Accept: application/json, text/event-stream\r\n");
  ASSERT_EQ(StatusOf(events), 200) << events;
  EXPECT_EQ(Header(events, "Content-Type"), "text/event-stream");
  size_t data = events.find("event: message\ndata: ");
  ASSERT_NE(data, std::string::npos) << events;
  data += std::string_view("event: message\ndata: ").size();
  json answer = json::parse(events.substr(data, events.find('\n', data) - data));
  EXPECT_EQ(answer["id"], 7);
  EXPECT_EQ(answer["result"]["structuredContent"]["sandboxes"], json::array());
  // Without text/event-stream in Accept, the same call is answered as JSON.
  auto plain = Send(CallTool("sandbox_list", json::object()).dump(), session);
  EXPECT_EQ(Header(plain, "Content-Type"), "application/json");
  EXPECT_EQ(JsonOf(plain)["result"]["structuredContent"]["sandboxes"], json::array());
}

}  // namespace
}  // namespace vessel::server
