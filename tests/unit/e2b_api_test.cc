// E2B's control plane over a registry fake (the real one, over supervisors and VMs, is
// exercised by tests/e2b with the e2b SDK): routing, the API key, what a request may ask
// for, and the shapes of the answers.
#include "server/e2b_api.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "fake_registry.h"
#include "server/data_plane.h"
#include "server/server.h"
#include "server_test_support.h"
#include "supervisor/state.h"
#include "supervisor/supervisor.h"

namespace vessel::server {
namespace {

using nlohmann::json;

constexpr const char* kKey = "0123456789abcdef";

class E2bApiTest : public ::testing::Test {
 protected:
  E2bApiTest() : router_(registry_, kKey), server_(router_) {}

  // A request with the API key (unless `key` says otherwise); the whole response.
  std::string Call(std::string method, std::string target, std::string body = {},
                   std::string key = kKey) {
    std::string request = method + " " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
    if (!key.empty()) request += "X-API-Key: " + key + "\r\n";
    if (!body.empty()) {
      request +=
          "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
          "\r\n";
    }
    return Exchange(server_.port(), request + "\r\n" + body);
  }
  json JsonOf(const std::string& response) {
    return json::parse(BodyOf(response), nullptr, /*allow_exceptions=*/false);
  }
  std::string CreateOne(std::string body = R"({"templateID":"base"})") {
    auto response = Call("POST", "/sandboxes", body);
    EXPECT_EQ(StatusOf(response), 201) << response;
    return JsonOf(response).value("sandboxID", "");
  }

  FakeRegistry registry_;
  Router router_;
  RunningServer server_;
};

TEST_F(E2bApiTest, EveryRequestButHealthNeedsTheApiKey) {
  EXPECT_EQ(StatusOf(Call("GET", "/health", {}, "")), 204);
  for (std::string key : {"", "wrong", "0123456789abcdeF", "0123456789abcdef0"}) {
    auto response = Call("GET", "/v2/sandboxes", {}, key);
    EXPECT_EQ(StatusOf(response), 401) << key;
    EXPECT_EQ(JsonOf(response)["code"], 401) << response;
    EXPECT_FALSE(JsonOf(response)["message"].get<std::string>().empty());
  }
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes", R"({"templateID":"base"})", "wrong")), 401);
  EXPECT_TRUE(registry_.sandboxes.empty());
  EXPECT_EQ(StatusOf(Call("GET", "/v2/sandboxes")), 200);
}

TEST_F(E2bApiTest, CreateReturnsTheSandboxAndItsAccessToken) {
  auto response = Call("POST", "/v2/sandboxes",
                       R"({"templateID":"python","timeout":60,"metadata":{"user":"ann"},)"
                       R"("envVars":{"A":"1"},"cpuCount":2,"memoryMB":1024,"secure":true,)"
                       R"("allow_internet_access":true,"autoPause":false})");
  ASSERT_EQ(StatusOf(response), 201) << response;
  json body = JsonOf(response);
  EXPECT_EQ(body["templateID"], "python");
  EXPECT_EQ(body["clientID"], "vessel");
  EXPECT_EQ(body["envdVersion"], std::string(kEnvdVersion));
  std::string id = body["sandboxID"];
  EXPECT_EQ(body["envdAccessToken"], registry_.sandboxes.at(id).attributes.access_token);
  ASSERT_TRUE(registry_.last_create.has_value());
  EXPECT_EQ(registry_.last_create->timeout, std::chrono::seconds(60));
  EXPECT_EQ(registry_.last_create->metadata.at("user"), "ann");
  EXPECT_EQ(registry_.last_create->env_vars.at("A"), "1");
  EXPECT_EQ(registry_.last_create->cpu_count, 2u);
  EXPECT_EQ(registry_.last_create->memory_mb, 1024u);
  // The SDK's default timeout, when none is given.
  CreateOne();
  EXPECT_EQ(registry_.last_create->timeout, std::chrono::seconds(300));
}

TEST_F(E2bApiTest, NetworkSettingsBecomeTheSandboxsAllowlist) {
  using Rules = std::vector<std::string>;
  auto created_with = [&](const std::string& fields) -> std::optional<Rules> {
    auto response = Call("POST", "/sandboxes", R"({"templateID":"base",)" + fields + "}");
    EXPECT_EQ(StatusOf(response), 201) << fields << " -> " << response;
    return registry_.last_create ? registry_.last_create->allow_out : std::nullopt;
  };
  // allowOut names hosts and single addresses, in canonical spelling; the rest is denied.
  EXPECT_EQ(created_with(R"("network":{"allowOut":["PyPI.org","*.pythonhosted.org",)"
                         R"("1.2.3.4/32","::1/128","127.0.0.1:8080"],"denyOut":["0.0.0.0/0"]})"),
            (Rules{"pypi.org", "*.pythonhosted.org", "1.2.3.4", "[::1]", "127.0.0.1:8080"}));
  // No internet access: nothing; a network without allowOut: nothing either.
  EXPECT_EQ(created_with(R"("allow_internet_access":false)"), Rules{});
  EXPECT_EQ(created_with(R"("network":{"allowPublicTraffic":false})"), Rules{});
  // Nothing said, or internet access (which Vessel does not give): unset, the template's own.
  EXPECT_EQ(created_with(R"("allow_internet_access":true)"), std::nullopt);
  EXPECT_EQ(created_with(R"("network":null)"), std::nullopt);
  EXPECT_EQ(created_with(R"("timeout":10)"), std::nullopt);

  struct Case {
    std::string fields;
    std::string says;
  };
  const Case bad[] = {
      {R"("allow_internet_access":"yes")", "'allow_internet_access' must be a boolean"},
      {R"("network":[])", "'network' must be an object"},
      {R"("network":{"allowOut":"pypi.org"})", "'network.allowOut' must be a list"},
      {R"("network":{"allowOut":[1]})", "'network.allowOut' holds strings"},
      {R"("network":{"denyOut":[{}]})", "'network.denyOut' holds strings"},
      {R"("network":{"allowOut":["10.0.0.0/8"]})", "address ranges are not served"},
      {R"("network":{"allowOut":["http://pypi.org/"]})", "http://pypi.org/"},
      {R"("network":{"rules":{"api.example.com":[{}]}})", "'network.rules' is not served"},
      {R"("network":{"egressProxy":{"address":"p:1080"}})", "'network.egressProxy' is not served"},
      {R"("network":{"allowEverything":true})", "unknown field 'network.allowEverything'"},
  };
  for (const auto& c : bad) {
    auto response = Call("POST", "/sandboxes", R"({"templateID":"base",)" + c.fields + "}");
    EXPECT_EQ(StatusOf(response), 400) << c.fields << " -> " << response;
    EXPECT_NE(JsonOf(response).value("message", "").find(c.says), std::string::npos)
        << c.fields << " -> " << response;
  }
  std::string many = R"({"templateID":"base","network":{"allowOut":[)";
  for (size_t i = 0; i <= kMaxNetworkRules; ++i)
    many += (i ? "," : "") + std::string("\"a.example\"");
  auto response = Call("POST", "/sandboxes", many + "]}}");
  EXPECT_EQ(StatusOf(response), 400) << response;
}

TEST_F(E2bApiTest, UpdatingTheNetworkReplacesTheAllowlist) {
  std::string id = CreateOne();
  auto response = Call("PUT", "/sandboxes/" + id + "/network",
                       R"({"allowOut":["api.example.com"],"denyOut":["0.0.0.0/0"]})");
  EXPECT_EQ(StatusOf(response), 204) << response;
  EXPECT_EQ(registry_.networks.at(id), std::vector<std::string>{"api.example.com"});
  // A field left out is cleared: no allowOut, no egress.
  response = Call("PUT", "/sandboxes/" + id + "/network", R"({"allow_internet_access":true})");
  EXPECT_EQ(StatusOf(response), 204) << response;
  EXPECT_TRUE(registry_.networks.at(id).empty());

  response = Call("PUT", "/sandboxes/" + id + "/network", R"({"allowOut":["10.0.0.0/24"]})");
  EXPECT_EQ(StatusOf(response), 400) << response;
  EXPECT_TRUE(registry_.networks.at(id).empty());
  EXPECT_EQ(StatusOf(Call("PUT", "/sandboxes/" + id + "/network", "[]")), 400);
  EXPECT_EQ(StatusOf(Call("PUT", "/sandboxes/00000000dead/network", "{}")), 404);
}

TEST_F(E2bApiTest, ABadCreateIsRefusedWithWhatIsWrong) {
  struct Case {
    std::string body;
    int status;
    std::string says;
  };
  const Case cases[] = {
      {"{", 400, "not valid JSON"},
      {"[1]", 400, "not a JSON object"},
      {"{}", 400, "'templateID' is required"},
      {R"({"templateID":""})", 400, "'templateID' is required"},
      {R"({"templateID":7})", 400, "'templateID' is required"},
      {R"({"templateID":"base","bogus":1})", 400, "unknown field 'bogus'"},
      {R"({"templateID":"base","timeout":-1})", 400, "'timeout' must be between"},
      {R"({"templateID":"base","timeout":99999999999})", 400, "'timeout' must be between"},
      {R"({"templateID":"base","timeout":"5"})", 400, "'timeout' must be an integer"},
      {R"({"templateID":"base","metadata":{"a":1}})", 400, "'metadata.a' must be a string"},
      {R"({"templateID":"base","envVars":[]})", 400, "'envVars' must be an object"},
      {R"({"templateID":"base","cpuCount":0})", 400, "'cpuCount' must be between"},
      {R"({"templateID":"base","memoryMB":64})", 400, "'memoryMB' must be between"},
      {R"({"templateID":"base","autoPause":"yes"})", 400, "'autoPause' must be a boolean"},
      {R"({"templateID":"base","volumeMounts":[{"name":"v","path":"/v"}]})", 400,
       "'volumeMounts' is not served"},
      {R"({"templateID":"nope"})", 404, "template not found"},
  };
  for (const auto& c : cases) {
    auto response = Call("POST", "/sandboxes", c.body);
    EXPECT_EQ(StatusOf(response), c.status) << c.body << " -> " << response;
    EXPECT_NE(JsonOf(response).value("message", "").find(c.says), std::string::npos)
        << c.body << " -> " << response;
  }
  std::string many = R"({"templateID":"base","metadata":{)";
  for (size_t i = 0; i <= kMaxMapEntries; ++i)
    many += fmt::format(R"({}"k{}":"v")", i ? "," : "", i);
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes", many + "}}")), 400);
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes",
                          R"({"templateID":"base","envVars":{"A":")" +
                              std::string(kMaxValueBytes + 1, 'v') + R"("}})")),
            400);
  EXPECT_TRUE(registry_.sandboxes.empty());
}

TEST_F(E2bApiTest, ListFiltersByMetadataAndStateAndPages) {
  std::string a = CreateOne(R"({"templateID":"base","metadata":{"user":"ann","app":"x y"}})");
  std::string b = CreateOne(R"({"templateID":"base","metadata":{"user":"bob"}})");
  std::string c = CreateOne(R"({"templateID":"base"})");
  registry_.sandboxes.at(c).state = "failed";
  auto ids = [&](const std::string& target) {
    std::vector<std::string> out;
    auto response = Call("GET", target);
    EXPECT_EQ(StatusOf(response), 200) << target << " -> " << response;
    for (const auto& s : JsonOf(response)) out.push_back(s["sandboxID"]);
    return out;
  };
  EXPECT_EQ(ids("/v2/sandboxes"), (std::vector<std::string>{a, b, c}));
  // metadata=user=ann&app=x y, encoded as the SDK does: each key and value, then the
  // pairs as a query string, then the parameter.
  EXPECT_EQ(ids("/v2/sandboxes?metadata=user%3Dann%26app%3Dx%252520y"),
            std::vector<std::string>{a});
  EXPECT_EQ(ids("/v2/sandboxes?metadata=user%3Dcarl"), std::vector<std::string>{});
  EXPECT_EQ(ids("/v2/sandboxes?state=running"), (std::vector<std::string>{a, b}));
  EXPECT_EQ(ids("/v2/sandboxes?state=running,failed"), (std::vector<std::string>{a, b, c}));
  EXPECT_EQ(ids("/sandboxes"), (std::vector<std::string>{a, b}));  // running only
  auto page = Call("GET", "/v2/sandboxes?limit=2");
  EXPECT_NE(page.find("X-Next-Token: " + b), std::string::npos) << page;
  EXPECT_EQ(ids("/v2/sandboxes?limit=2&nextToken=" + b), std::vector<std::string>{c});
  EXPECT_EQ(ids("/v2/sandboxes?order=desc"), (std::vector<std::string>{c, b, a}));
  EXPECT_EQ(ids("/v2/sandboxes?template=base"), (std::vector<std::string>{a, b, c}));
  EXPECT_EQ(ids("/v2/sandboxes?template=python"), std::vector<std::string>{});
  EXPECT_EQ(StatusOf(Call("GET", "/v2/sandboxes?nextToken=ffff")), 400);
  EXPECT_EQ(StatusOf(Call("GET", "/v2/sandboxes?order=sideways")), 400);
  EXPECT_EQ(StatusOf(Call("GET", "/v2/sandboxes?state=sleeping")), 400);
  EXPECT_EQ(StatusOf(Call("GET", "/v2/sandboxes?limit=0")), 400);
  EXPECT_EQ(StatusOf(Call("GET", "/v2/sandboxes?limit=101")), 400);
  EXPECT_EQ(StatusOf(Call("GET", "/v2/sandboxes?metadata=%zz")), 400);
  json listed = JsonOf(Call("GET", "/v2/sandboxes"))[0];
  for (const char* field : {"templateID", "sandboxID", "clientID", "startedAt", "endAt", "cpuCount",
                            "memoryMB", "diskSizeMB", "state", "envdVersion"}) {
    EXPECT_TRUE(listed.contains(field)) << field;
  }
  EXPECT_FALSE(listed.contains("envdAccessToken"));
}

TEST_F(E2bApiTest, PauseResumeAndConnectAnswerAsE2bDoes) {
  std::string id = CreateOne();
  std::string at = "/sandboxes/" + id;
  EXPECT_EQ(StatusOf(Call("POST", at + "/resume", "{}")), 409) << "not paused";
  EXPECT_EQ(StatusOf(Call("POST", at + "/pause", R"({"memory":true})")), 204);
  EXPECT_EQ(JsonOf(Call("GET", at))["state"], "paused");
  EXPECT_EQ(StatusOf(Call("POST", at + "/pause")), 409);
  auto listed = JsonOf(Call("GET", "/v2/sandboxes?state=paused"));
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0]["sandboxID"], id);
  EXPECT_EQ(JsonOf(Call("GET", "/v2/sandboxes?state=running")).size(), 0u);
  // Connecting to a paused sandbox resumes it, with 201; to a running one, 200.
  auto resumed = Call("POST", "/v2/sandboxes/" + id + "/connect", R"({"timeout":60})");
  EXPECT_EQ(StatusOf(resumed), 201) << resumed;
  EXPECT_EQ(JsonOf(resumed)["sandboxID"], id);
  EXPECT_EQ(registry_.sandboxes.at(id).state, "running");
  EXPECT_EQ(StatusOf(Call("POST", "/v2/sandboxes/" + id + "/connect", R"({"timeout":60})")), 200);
  EXPECT_EQ(StatusOf(Call("POST", at + "/pause")), 204);
  for (const char* body : {R"({"timeout":-1})", "[]", "{"}) {
    EXPECT_EQ(StatusOf(Call("POST", at + "/resume", body)), 400) << body;
  }
  EXPECT_EQ(StatusOf(Call("POST", at + "/resume", R"({"timeout":30})")), 201);
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/0123456789ab/pause")), 404);
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/0123456789ab/resume")), 404);
}

TEST_F(E2bApiTest, AnExpiredSandboxWithAutoPauseIsPausedNotKilled) {
  auto created = Call("POST", "/sandboxes", R"({"templateID":"base","autoPause":true})");
  ASSERT_EQ(StatusOf(created), 201) << created;
  std::string id = JsonOf(created)["sandboxID"];
  EXPECT_TRUE(registry_.last_create->auto_pause);
  registry_.sandboxes.at(id).attributes.auto_pause = true;
  EXPECT_EQ(JsonOf(Call("GET", "/sandboxes/" + id))["lifecycle"]["onTimeout"], "pause");
  registry_.sandboxes.at(id).attributes.end_at_ms = NowMs() - 1;
  router_.control().ReapExpired();
  ASSERT_TRUE(registry_.sandboxes.contains(id));
  EXPECT_EQ(registry_.sandboxes.at(id).state, "paused");
  router_.control().ReapExpired();  // paused ones do not expire
  EXPECT_TRUE(registry_.sandboxes.contains(id));
}

TEST_F(E2bApiTest, SnapshotsAreMadeListedPagedAndDeleted) {
  std::string id = CreateOne();
  auto made = Call("POST", "/sandboxes/" + id + "/snapshots", R"({"name":"ready"})");
  ASSERT_EQ(StatusOf(made), 201) << made;
  EXPECT_EQ(JsonOf(made)["names"], json::array({"ready"}));
  std::string first = JsonOf(made)["snapshotID"];
  ASSERT_EQ(StatusOf(Call("POST", "/sandboxes/" + id + "/snapshots")), 201);
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/" + id + "/snapshots", R"({"name":"taken"})")), 400);
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/" + id + "/snapshots", R"({"name":7})")), 400);
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/0123456789ab/snapshots", "{}")), 404);

  EXPECT_EQ(JsonOf(Call("GET", "/snapshots")).size(), 2u);
  EXPECT_EQ(JsonOf(Call("GET", "/snapshots?name=ready")).size(), 1u);
  EXPECT_EQ(JsonOf(Call("GET", "/snapshots?sandboxID=" + id)).size(), 2u);
  EXPECT_EQ(JsonOf(Call("GET", "/snapshots?sandboxID=0123456789ab")).size(), 0u);
  auto page = Call("GET", "/snapshots?limit=1");
  ASSERT_EQ(JsonOf(page).size(), 1u);
  EXPECT_NE(page.find("X-Next-Token: " + first), std::string::npos) << page;
  auto rest = JsonOf(Call("GET", "/snapshots?limit=1&nextToken=" + first));
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_NE(rest[0]["snapshotID"], first);
  EXPECT_EQ(StatusOf(Call("GET", "/snapshots?limit=0")), 400);

  EXPECT_EQ(StatusOf(Call("DELETE", "/templates/" + first)), 204);
  EXPECT_EQ(StatusOf(Call("DELETE", "/templates/" + first)), 404);
  EXPECT_EQ(StatusOf(Call("DELETE", "/templates/base")), 400);
  EXPECT_EQ(JsonOf(Call("GET", "/snapshots")).size(), 1u);
}

TEST_F(E2bApiTest, AForkAnswersWithItsChildrenAndRefusesCountsOutOfRange) {
  std::string id = CreateOne();
  auto forked = Call("POST", "/sandboxes/" + id + "/fork", R"({"count":3,"timeout":60})");
  ASSERT_EQ(StatusOf(forked), 200) << forked;
  json children = JsonOf(forked);
  ASSERT_EQ(children.size(), 3u);
  for (const auto& child : children) {
    EXPECT_NE(child["sandbox"]["sandboxID"], id);
    EXPECT_TRUE(child["sandbox"].contains("envdAccessToken")) << child;
  }
  // Without a body: one child, with a create's default timeout.
  auto one = Call("POST", "/sandboxes/" + id + "/fork");
  ASSERT_EQ(StatusOf(one), 200) << one;
  EXPECT_EQ(JsonOf(one).size(), 1u);
  for (const char* body : {R"({"count":0})", R"({"count":65})", R"({"count":"2"})",
                           R"({"timeout":-1})", R"([])", "{"}) {
    EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/" + id + "/fork", body)), 400) << body;
  }
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/0123456789ab/fork", "{}")), 404);
}

TEST_F(E2bApiTest, GetKillAndTimeoutsOfOneSandbox) {
  std::string id = CreateOne();
  auto detail = Call("GET", "/sandboxes/" + id);
  ASSERT_EQ(StatusOf(detail), 200);
  EXPECT_EQ(JsonOf(detail)["envdAccessToken"], registry_.sandboxes.at(id).attributes.access_token);
  EXPECT_EQ(JsonOf(detail)["state"], "running");

  const int64_t before = NowMs();
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/" + id + "/timeout", R"({"timeout":5})")), 204);
  int64_t end = registry_.sandboxes.at(id).attributes.end_at_ms;
  EXPECT_GE(end, before + 5000);
  EXPECT_LE(end, NowMs() + 5000);
  // connect and refreshes only extend.
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/" + id + "/refreshes", R"({"duration":1})")), 204);
  EXPECT_EQ(registry_.sandboxes.at(id).attributes.end_at_ms, end);
  auto connected = Call("POST", "/v2/sandboxes/" + id + "/connect", R"({"timeout":600})");
  EXPECT_EQ(StatusOf(connected), 200) << connected;
  EXPECT_EQ(JsonOf(connected)["sandboxID"], id);
  EXPECT_GE(registry_.sandboxes.at(id).attributes.end_at_ms, before + 600'000);
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/" + id + "/timeout", R"({})")), 400);
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/" + id + "/timeout", R"({"timeout":-3})")), 400);

  EXPECT_EQ(StatusOf(Call("DELETE", "/sandboxes/" + id)), 204);
  for (auto [method, target] : std::initializer_list<std::pair<const char*, std::string>>{
           {"GET", "/sandboxes/" + id},
           {"DELETE", "/sandboxes/" + id},
           {"GET", "/sandboxes/not-hex"},
           {"GET", "/sandboxes/" + std::string(100, 'a')}}) {
    auto response = Call(method, target);
    EXPECT_EQ(StatusOf(response), 404) << method << " " << target;
    EXPECT_EQ(JsonOf(response)["code"], 404);
  }
  EXPECT_EQ(StatusOf(Call("POST", "/sandboxes/" + id + "/timeout", R"({"timeout":5})")), 404);
  EXPECT_EQ(StatusOf(Call("GET", "/no/such/thing")), 404);
  EXPECT_EQ(StatusOf(Call("PATCH", "/sandboxes")), 404);
}

TEST_F(E2bApiTest, ExpiredSandboxesAreKilled) {
  std::string keep = CreateOne();
  std::string expire = CreateOne(R"({"templateID":"base","timeout":0})");
  router_.control().ReapExpired();
  EXPECT_TRUE(registry_.sandboxes.contains(keep));
  EXPECT_FALSE(registry_.sandboxes.contains(expire));
}

TEST_F(E2bApiTest, TemplatesAreListed) {
  auto response = Call("GET", "/templates");
  ASSERT_EQ(StatusOf(response), 200);
  json templates = JsonOf(response);
  ASSERT_EQ(templates.size(), 1u);
  EXPECT_EQ(templates[0]["templateID"], "base");
  EXPECT_EQ(templates[0]["buildStatus"], "ready");
}

// The data plane: requests with E2b-Sandbox-Id. The fake has no agents, so what is
// checked is everything before a command would run.
class DataPlaneTest : public E2bApiTest {
 protected:
  std::string Data(std::string id, std::string token, std::string method, std::string target,
                   std::string content_type, std::string body) {
    std::string request = method + " " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" +
                          "E2b-Sandbox-Id: " + id + "\r\n";
    if (!token.empty()) request += "X-Access-Token: " + token + "\r\n";
    request += "Content-Type: " + content_type +
               "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    return Exchange(server_.port(), request);
  }
  static std::string Envelope(std::string message, int lie = 0) {
    uint32_t size = static_cast<uint32_t>(message.size() + static_cast<size_t>(lie));
    std::string out(5, '\0');
    for (int i = 0; i < 4; ++i)
      out[static_cast<size_t>(1 + i)] = static_cast<char>(size >> (24 - 8 * i));
    return out + message;
  }
};

TEST_F(DataPlaneTest, TheAccessTokenIsRequiredAndTheSandboxMustExist) {
  std::string id = CreateOne();
  std::string token = registry_.sandboxes.at(id).attributes.access_token;
  EXPECT_EQ(StatusOf(Data(id, token, "GET", "/health", "text/plain", "")), 204);
  for (std::string wrong : {std::string(), std::string("nope"), token + "x"}) {
    auto response = Data(id, wrong, "GET", "/health", "text/plain", "");
    EXPECT_EQ(StatusOf(response), 401) << wrong;
    EXPECT_EQ(JsonOf(response)["code"], "unauthenticated") << response;
  }
  EXPECT_EQ(StatusOf(Data("abcdef", token, "GET", "/health", "text/plain", "")), 404);
  // A streaming call hears of it in its end message, with 200, as Connect streams do.
  auto stream =
      Data("abcdef", token, "POST", "/process.Process/Start", "application/connect+json", "");
  EXPECT_EQ(StatusOf(stream), 200) << stream;
  EXPECT_NE(stream.find(R"("code":"not_found")"), std::string::npos) << stream;
  auto wrong = Data(id, "nope", "POST", "/process.Process/Start", "application/connect+json", "");
  EXPECT_NE(wrong.find(R"("code":"unauthenticated")"), std::string::npos) << wrong;
  auto unknown = Data(id, token, "POST", "/filesystem.Filesystem/Nope", "application/json", "{}");
  EXPECT_EQ(StatusOf(unknown), 404);
  EXPECT_EQ(JsonOf(unknown)["code"], "unimplemented");
}

TEST_F(DataPlaneTest, ABadStartEndsItsStreamWithTheError) {
  std::string id = CreateOne();
  std::string token = registry_.sandboxes.at(id).attributes.access_token;
  const std::string kStream = "application/connect+json";
  struct Case {
    std::string body;
    std::string says;
  };
  const Case cases[] = {
      {"", "not a Connect envelope"},
      {"\x01", "not a Connect envelope"},
      {Envelope(R"({"process":{"cmd":"true"}})", 10), "the envelope says"},
      {Envelope(R"({"process":{"cmd":"true"}})", -3), "the envelope says"},
      {Envelope("[]"), "not a JSON object"},
      {Envelope("{"), "not a JSON object"},
      {Envelope("{}"), "'process.cmd' is required"},
      {Envelope(R"({"process":{"cmd":1}})"), "'process.cmd' is required"},
      {Envelope(R"({"process":{"cmd":"x","args":"y"}})"), "'process.args' must be a list"},
      {Envelope(R"({"process":{"cmd":"x","envs":{"A":1}}})"), "'process.envs' must map"},
      {Envelope(R"({"process":{"cmd":"x"},"pty":"big"})"), "'pty' must be an object"},
      {Envelope(R"({"process":{"cmd":"x"},"pty":{}})"), "'pty.size' with cols and rows"},
      {Envelope(R"({"process":{"cmd":"x"},"pty":{"size":{"rows":24}}})"), "'pty.size.cols'"},
      {Envelope(R"({"process":{"cmd":"x"},"pty":{"size":{"cols":0,"rows":24}}})"),
       "'pty.size.cols' must be a positive number"},
      {Envelope(R"({"process":{"cmd":"x"},"pty":{"size":{"cols":-80,"rows":24}}})"),
       "'pty.size.cols' must be a positive number"},
      {Envelope(R"({"process":{"cmd":"x"},"pty":{"size":{"cols":80,"rows":65536}}})"),
       "'pty.size.rows' must be a positive number"},
      {Envelope(R"({"process":{"cmd":"x"},"pty":{"size":{"cols":80,"rows":"24"}}})"),
       "'pty.size.rows' must be a positive number"},
      {Envelope(R"({"process":{"cmd":"x"},"pty":{"size":{"cols":80,"rows":24}}})"), "no agents"},
      {Envelope(R"({"process":{"cmd":"x"}})"), "no agents"},
  };
  for (const auto& c : cases) {
    auto response = Data(id, token, "POST", "/process.Process/Start", kStream, c.body);
    EXPECT_EQ(StatusOf(response), 200) << response;
    EXPECT_NE(response.find("\"error\""), std::string::npos) << response;
    EXPECT_NE(response.find(c.says), std::string::npos) << c.says << " in " << response;
  }
}

TEST_F(DataPlaneTest, UnaryCallsNameWhatIsMissing) {
  std::string id = CreateOne();
  std::string token = registry_.sandboxes.at(id).attributes.access_token;
  auto call = [&](std::string method, std::string body) {
    return Data(id, token, "POST", "/process.Process/" + method, "application/json", body);
  };
  auto listed = call("List", "{}");
  EXPECT_EQ(StatusOf(listed), 200);
  EXPECT_EQ(JsonOf(listed)["processes"].size(), 0u);
  EXPECT_EQ(StatusOf(call("SendSignal", R"({"process":{"pid":77},"signal":"SIGNAL_SIGKILL"})")),
            404);
  EXPECT_EQ(StatusOf(call("SendSignal", R"({"signal":"SIGNAL_SIGKILL"})")), 400);
  EXPECT_EQ(StatusOf(call("SendInput", R"({"process":{"pid":-1}})")), 400);
  EXPECT_EQ(StatusOf(call("CloseStdin", "not json")), 400);
  EXPECT_EQ(StatusOf(call("Update", "{}")), 400);
  EXPECT_EQ(
      StatusOf(call("Update", R"({"process":{"pid":77},"pty":{"size":{"cols":1,"rows":1}}})")),
      404);
  auto stream_input = call("StreamInput", R"({"process":{"pid":77}})");
  EXPECT_EQ(StatusOf(stream_input), 404);
  EXPECT_EQ(JsonOf(stream_input)["code"], "unimplemented");
  // Connect is a stream: what is wrong comes in its end message.
  auto connect = [&](std::string body) {
    return Data(id, token, "POST", "/process.Process/Connect", "application/connect+json", body);
  };
  auto missing = connect(Envelope(R"({"process":{"pid":77}})"));
  EXPECT_EQ(StatusOf(missing), 200);
  EXPECT_NE(missing.find("process with pid 77 not found"), std::string::npos) << missing;
  for (std::string bad : {Envelope(R"({"process":{}})"), Envelope("{}"), std::string("\x01")}) {
    auto refused = connect(bad);
    EXPECT_NE(refused.find(R"("code":"invalid_argument")"), std::string::npos) << refused;
  }
}

TEST(Base64Test, RoundTripsAndRefusesWhatIsNotBase64) {
  for (std::string bytes : {std::string(), std::string("a"), std::string("ab"), std::string("abc"),
                            std::string("\0\xff\x10 binary", 10)}) {
    auto decoded = Base64Decode(Base64Encode(bytes));
    ASSERT_TRUE(decoded.has_value()) << bytes;
    EXPECT_EQ(*decoded, bytes);
  }
  EXPECT_EQ(Base64Encode("hello"), "aGVsbG8=");
  EXPECT_EQ(Base64Decode("aGVsbG8"), "hello");                  // unpadded
  EXPECT_EQ(Base64Decode("_-8="), std::string("\xff\xef", 2));  // URL-safe
  EXPECT_FALSE(Base64Decode("a$b=").has_value());
}

TEST(ServerOptionsTest, ListenIsHostColonPort) {
  ServerOptions options;
  ASSERT_TRUE(ParseListen("127.0.0.1:8080", options));
  EXPECT_EQ(options.host, "127.0.0.1");
  EXPECT_EQ(options.port, 8080);
  ASSERT_TRUE(ParseListen("[::1]:0", options));
  EXPECT_EQ(options.host, "::1");
  EXPECT_EQ(options.port, 0);
  for (const char* bad : {"", "3000", ":3000", "host:", "h:70000", "h:-1", "h:3x", "[::1:3"}) {
    EXPECT_FALSE(ParseListen(bad, options)) << bad;
  }
}

TEST(ServerOptionsTest, PoolsAreTemplateEqualsCount) {
  ServerOptions options;
  ASSERT_TRUE(ParsePool("python=4", options));
  ASSERT_TRUE(ParsePool("a=b=0", options));
  EXPECT_EQ(options.pools.at("python"), 4u);
  EXPECT_EQ(options.pools.at("a=b"), 0u);
  for (const char* bad : {"", "python", "=3", "python=", "python=-1", "python=2x"}) {
    EXPECT_FALSE(ParsePool(bad, options)) << bad;
  }
}

TEST(ServerOptionsTest, TheApiKeyIsMadeOnceAndPrivate) {
  std::string dir = ::testing::TempDir() + "/vessel-api-key-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  ::chmod(dir.c_str(), 0700);
  auto first = LoadOrCreateApiKey(dir + "/api-key");
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  EXPECT_EQ(first->size(), 64u);
  auto again = LoadOrCreateApiKey(dir + "/api-key");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(*first, *again);
  struct stat st {};
  ASSERT_EQ(::stat((dir + "/api-key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ::chmod((dir + "/api-key").c_str(), 0644);
  auto open_to_others = LoadOrCreateApiKey(dir + "/api-key");
  ASSERT_FALSE(open_to_others.has_value());
  EXPECT_NE(open_to_others.error().message().find("the API key"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace vessel::server

namespace vessel::supervisor {
namespace {

TEST(SandboxIdTest, OnlyLowercaseHexOfOneTo64Digits) {
  EXPECT_TRUE(IsSandboxId("0123456789ab"));
  EXPECT_TRUE(IsSandboxId(std::string(64, 'f')));
  for (std::string bad : {std::string(), std::string(65, 'a'), std::string("ABCDEF"),
                          std::string("../etc"), std::string("12 34"), std::string("g")}) {
    EXPECT_FALSE(IsSandboxId(bad)) << bad;
  }
}

TEST(SandboxIdTest, ASupervisorConfigTakesAnIdOrNone) {
  SupervisorConfig config{.ready_fd = 3};
  auto none = ParseSupervisorConfig(EncodeSupervisorConfig(config));
  ASSERT_TRUE(none.has_value()) << none.error().ToString();
  EXPECT_EQ(none->id, "");
  config.id = "00ff00ff00ff";
  auto given = ParseSupervisorConfig(EncodeSupervisorConfig(config));
  ASSERT_TRUE(given.has_value()) << given.error().ToString();
  EXPECT_EQ(given->id, "00ff00ff00ff");
  config.id = "../other";
  EXPECT_FALSE(ParseSupervisorConfig(EncodeSupervisorConfig(config)).has_value());
}

}  // namespace
}  // namespace vessel::supervisor
