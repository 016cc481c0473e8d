#include "server/e2b_api.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <expected>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "sandbox/egress.h"
#include "server/query.h"
#include "supervisor/state.h"
#include "vessel/sandbox.h"

namespace vessel::server {
namespace {

using http::status;
using nlohmann::json;

constexpr std::string_view kJson = "application/json";
constexpr std::string_view kClientId = "vessel";
// What a sandbox without a timeout reports as its end.
constexpr std::string_view kNoEnd = "9999-12-31T23:59:59.000Z";

// The fields of E2B's NewSandbox, and Vessel's cpuCount and memoryMB. Those Vessel does
// not act on yet are accepted when they ask for nothing (docs/api/openapi.yaml).
const std::set<std::string, std::less<>> kNewSandboxFields = {
    "templateID", "timeout",  "autoPause", "autoResume", "secure",       "allow_internet_access",
    "network",    "metadata", "envVars",   "mcp",        "volumeMounts", "cpuCount",
    "memoryMB"};

// A failure to answer with: a status and its message.
struct ApiError {
  status code;
  std::string message;
};
template <typename T>
using ApiResult = std::expected<T, ApiError>;

// Beast 1.74 speaks boost::string_view.

ApiError BadRequest(std::string message) { return {status::bad_request, std::move(message)}; }

void Reply(ResponseWriter& writer, status code, const json& body) {
  (void)writer.Send(code, kJson, body.dump(-1, ' ', false, json::error_handler_t::replace));
}
void ReplyError(ResponseWriter& writer, const ApiError& error) {
  (void)writer.Send(error.code, kJson, ErrorBody(error.code, error.message));
}
void ReplyEmpty(ResponseWriter& writer) { (void)writer.Send(status::no_content, {}, {}); }

// A Vessel error as the API's: a config the request chose is the client's fault.
ApiError FromError(const Error& error) {
  if (error.kind() == ErrorKind::kInvalidConfig) {
    if (error.subject() == "templateID") return {status::not_found, error.message()};
    return BadRequest(error.ToString());
  }
  return {status::internal_server_error, error.ToString()};
}

// The pairs of a query string, or 400.
ApiResult<QueryPairs> ParseQueryOr400(std::string_view query) {
  auto pairs = ParseQuery(query);
  if (!pairs) return std::unexpected(BadRequest("malformed query string"));
  return std::move(*pairs);
}

ApiResult<json> ParseObject(const Request& request) {
  if (request.body().empty()) return std::unexpected(BadRequest("the request has no JSON body"));
  auto body = json::parse(request.body(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return std::unexpected(BadRequest("the body is not valid JSON"));
  if (!body.is_object()) return std::unexpected(BadRequest("the body is not a JSON object"));
  return body;
}

// A body that may be absent: {} then.
ApiResult<json> OptionalObject(const Request& request) {
  if (request.body().empty()) return json::object();
  return ParseObject(request);
}

// The seconds a sandbox lives when a request does not say.
constexpr int64_t kDefaultTimeout = kDefaultSandboxTimeout.count();

// A `limit` query parameter: 1 to kMaxPageSize.
ApiResult<size_t> PageLimit(std::string_view value) {
  unsigned n = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (ec != std::errc() || end != value.data() + value.size() || n < 1 || n > kMaxPageSize) {
    return std::unexpected(BadRequest(fmt::format("'limit' must be 1 to {}", kMaxPageSize)));
  }
  return n;
}

ApiResult<int64_t> IntegerField(const json& body, const char* field, int64_t min, int64_t max) {
  const json& value = body.at(field);
  if (!value.is_number_integer()) {
    return std::unexpected(BadRequest(fmt::format("'{}' must be an integer", field)));
  }
  int64_t n = value.get<int64_t>();
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(max)) n = max + 1;
  if (n < min || n > max) {
    return std::unexpected(
        BadRequest(fmt::format("'{}' must be between {} and {}, not {}", field, min, max, n)));
  }
  return n;
}

// `field` of `body` in min..max when it is there and not null, else `fallback`.
ApiResult<int64_t> OptionalInteger(const json& body, const char* field, int64_t min, int64_t max,
                                   int64_t fallback) {
  if (!body.contains(field) || body.at(field).is_null()) return fallback;
  return IntegerField(body, field, min, max);
}

ApiResult<std::map<std::string, std::string>> StringMap(const json& body, const char* field) {
  const json& value = body.at(field);
  std::map<std::string, std::string> out;
  if (value.is_null()) return out;
  if (!value.is_object()) {
    return std::unexpected(BadRequest(fmt::format("'{}' must be an object of strings", field)));
  }
  if (value.size() > kMaxMapEntries) {
    return std::unexpected(BadRequest(
        fmt::format("'{}' has {} entries; at most {}", field, value.size(), kMaxMapEntries)));
  }
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return std::unexpected(BadRequest(fmt::format("'{}.{}' must be a string", field, key)));
    }
    if (key.empty() || key.size() > kMaxKeyBytes ||
        item.get_ref<const std::string&>().size() > kMaxValueBytes) {
      return std::unexpected(
          BadRequest(fmt::format("'{}' keys must be 1 to {} bytes and values at most {}", field,
                                 kMaxKeyBytes, kMaxValueBytes)));
    }
    out.emplace(key, item.get<std::string>());
  }
  return out;
}

// E2B's network settings (SandboxNetworkConfig, and SandboxNetworkUpdateConfig's
// top-level fields) as a Vessel allowlist, checked: `allowOut` names the hosts (a bare
// address, a /32 or /128, or a name, with Vessel's optional :PORT); the rest of the
// network is denied, so `denyOut` adds nothing; `allow_internet_access: false` allows
// nothing, and `true` asks for nothing Vessel gives (docs/server.md). Unset when neither
// says anything that changes the allowlist.
ApiResult<std::optional<std::vector<std::string>>> AllowOut(const json* network,
                                                            const json* internet) {
  if (internet && !internet->is_null() && !internet->is_boolean()) {
    return std::unexpected(BadRequest("'allow_internet_access' must be a boolean"));
  }
  bool said = internet && internet->is_boolean() && !internet->get<bool>();
  std::vector<std::string> allow;
  if (network && !network->is_null()) {
    if (!network->is_object()) return std::unexpected(BadRequest("'network' must be an object"));
    said = true;
    for (const auto& [key, value] : network->items()) {
      if (key == "allowOut" || key == "denyOut") {
        if (!value.is_null() && (!value.is_array() || value.size() > kMaxNetworkRules)) {
          return std::unexpected(BadRequest(fmt::format(
              "'network.{}' must be a list of at most {} strings", key, kMaxNetworkRules)));
        }
        for (const json& entry : value.is_null() ? json::array() : value) {
          if (!entry.is_string()) {
            return std::unexpected(BadRequest(fmt::format("'network.{}' holds strings", key)));
          }
          if (key == "denyOut") continue;
          std::string rule = entry.get<std::string>();
          size_t slash = rule.find('/');
          if (slash != std::string::npos) {
            std::string_view bits = std::string_view(rule).substr(slash + 1);
            bool v6 = rule.find(':') != std::string::npos;
            if (bits != (v6 ? "128" : "32")) {
              return std::unexpected(BadRequest(fmt::format(
                  "'network.allowOut' entry {}: address ranges are not served; name the "
                  "hosts or single addresses",
                  rule)));
            }
            rule.resize(slash);
            if (v6) rule = "[" + rule + "]";
          }
          allow.push_back(std::move(rule));
        }
      } else if (key == "rules" || key == "egressProxy") {
        if (!value.is_null() && !value.empty()) {
          return std::unexpected(BadRequest(fmt::format("'network.{}' is not served", key)));
        }
      } else if (key != "allowPublicTraffic" && key != "maskRequestHost" && key != "httpsPorts") {
        return std::unexpected(BadRequest(fmt::format("unknown field 'network.{}'", key)));
      }
    }
  }
  if (!said) return std::optional<std::vector<std::string>>();
  auto checked = sandbox::CheckNetworkPolicy({.allow = allow});
  if (!checked) return std::unexpected(BadRequest(checked.error().message()));
  return std::optional(std::move(checked->policy.allow));
}

ApiResult<NewSandbox> ParseNewSandbox(const Request& request) {
  auto body = ParseObject(request);
  if (!body) return std::unexpected(body.error());
  for (const auto& [key, value] : body->items()) {
    if (!kNewSandboxFields.contains(key)) {
      return std::unexpected(BadRequest(fmt::format("unknown field '{}'", key)));
    }
  }
  NewSandbox out;
  auto it = body->find("templateID");
  if (it == body->end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
    return std::unexpected(BadRequest("'templateID' is required: a template's name"));
  }
  out.template_id = it->get<std::string>();
  if (body->contains("timeout")) {
    auto timeout = IntegerField(*body, "timeout", 0, kMaxTimeoutSeconds);
    if (!timeout) return std::unexpected(timeout.error());
    out.timeout = std::chrono::seconds(*timeout);
  }
  for (const char* field : {"metadata", "envVars"}) {
    if (!body->contains(field)) continue;
    auto map = StringMap(*body, field);
    if (!map) return std::unexpected(map.error());
    (std::string_view(field) == "metadata" ? out.metadata : out.env_vars) = std::move(*map);
  }
  if (body->contains("cpuCount")) {
    auto n = IntegerField(*body, "cpuCount", 1, 64);
    if (!n) return std::unexpected(n.error());
    out.cpu_count = static_cast<uint32_t>(*n);
  }
  if (body->contains("memoryMB")) {
    auto n = IntegerField(*body, "memoryMB", 128, 1 << 20);
    if (!n) return std::unexpected(n.error());
    out.memory_mb = static_cast<uint32_t>(*n);
  }
  for (const char* field : {"autoPause", "secure"}) {
    if (body->contains(field) && !body->at(field).is_boolean()) {
      return std::unexpected(BadRequest(fmt::format("'{}' must be a boolean", field)));
    }
  }
  out.auto_pause = body->value("autoPause", false);
  auto field = [&body](const char* key) {
    auto found = body->find(key);
    return found == body->end() ? nullptr : &*found;
  };
  auto allow_out = AllowOut(field("network"), field("allow_internet_access"));
  if (!allow_out) return std::unexpected(allow_out.error());
  out.allow_out = std::move(*allow_out);
  if (body->contains("volumeMounts") && !body->at("volumeMounts").is_null() &&
      !body->at("volumeMounts").empty()) {
    return std::unexpected(BadRequest("'volumeMounts' is not served"));
  }
  if (body->contains("mcp") && !body->at("mcp").is_null()) {
    return std::unexpected(BadRequest("'mcp' is not served"));
  }
  return out;
}

json SandboxJson(const ApiSandbox& s) {
  json out = {{"templateID", s.attributes.template_id},
              {"sandboxID", s.id},
              {"alias", s.attributes.template_id},
              {"clientID", kClientId},
              {"envdVersion", kEnvdVersion},
              {"domain", nullptr}};
  if (!s.attributes.access_token.empty()) out["envdAccessToken"] = s.attributes.access_token;
  return out;
}

json ListedJson(const ApiSandbox& s) {
  return {{"templateID", s.attributes.template_id},
          {"alias", s.attributes.template_id},
          {"sandboxID", s.id},
          {"clientID", kClientId},
          {"startedAt", Rfc3339(s.started_at_ms)},
          {"endAt", s.attributes.end_at_ms ? Rfc3339(s.attributes.end_at_ms) : std::string(kNoEnd)},
          {"cpuCount", s.cpu_count},
          {"memoryMB", s.memory_mb},
          {"diskSizeMB", 0},
          {"metadata", s.attributes.metadata},
          {"state", s.state},
          {"envdVersion", kEnvdVersion}};
}

json DetailJson(const ApiSandbox& s) {
  json out = ListedJson(s);
  out["domain"] = nullptr;
  out["lifecycle"] = {{"autoResume", false},
                      {"onTimeout", s.attributes.auto_pause ? "pause" : "kill"}};
  if (!s.attributes.access_token.empty()) out["envdAccessToken"] = s.attributes.access_token;
  return out;
}

ApiError NotFound(std::string_view id) {
  return {status::not_found, fmt::format("sandbox \"{}\" doesn't exist or you don't have access "
                                         "to it",
                                         id)};
}

}  // namespace

bool ApiKeyMatches(std::string_view given, std::string_view key) {
  return given.size() == key.size() && CRYPTO_memcmp(given.data(), key.data(), key.size()) == 0;
}

std::string Rfc3339(int64_t unix_ms) {
  std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", utc, unix_ms % 1000);
}

void ControlPlane::Handle(const Request& request, ResponseWriter& writer) {
  std::string_view target = Sv(request.target());
  size_t question = target.find('?');
  std::string_view path = target.substr(0, question);
  std::string_view query =
      question == std::string_view::npos ? std::string_view() : target.substr(question + 1);
  const auto method = request.method();

  if (path == "/health" && method == http::verb::get) return ReplyEmpty(writer);

  std::string_view key = Sv(request["X-API-Key"]);
  if (!ApiKeyMatches(key, api_key_)) {
    return ReplyError(writer, {status::unauthorized,
                               key.empty() ? "missing X-API-Key header: the API key is required"
                                           : "Invalid API key"});
  }

  auto fail = [&](const ApiError& e) { ReplyError(writer, e); };

  if (path == "/templates" && method == http::verb::get) {
    auto templates = registry_.Templates();
    if (!templates) return fail(FromError(templates.error()));
    json out = json::array();
    for (const auto& t : *templates) {
      std::string created = Rfc3339(t.created_ms);
      out.push_back({{"templateID", t.id},
                     {"buildID", t.id},
                     {"cpuCount", t.cpu_count},
                     {"memoryMB", t.memory_mb},
                     {"diskSizeMB", 0},
                     {"public", false},
                     {"aliases", t.aliases},
                     {"names", t.aliases},
                     {"createdAt", created},
                     {"updatedAt", created},
                     {"createdBy", nullptr},
                     {"lastSpawnedAt", nullptr},
                     {"spawnCount", 0},
                     {"buildCount", 1},
                     {"envdVersion", kEnvdVersion},
                     {"buildStatus", "ready"}});
    }
    return Reply(writer, status::ok, out);
  }

  if (path == "/snapshots" && method == http::verb::get) {
    // ?sandboxID= and ?name= filter; ?limit= and ?nextToken= page, by creation.
    auto params = ParseQueryOr400(query);
    if (!params) return fail(params.error());
    std::string sandbox_filter, name_filter, after;
    size_t limit = kMaxPageSize;
    for (const auto& [name, value] : *params) {
      if (name == "sandboxID") sandbox_filter = value;
      if (name == "name") name_filter = value;
      if (name == "nextToken") after = value;
      if (name == "limit") {
        auto n = PageLimit(value);
        if (!n) return fail(n.error());
        limit = *n;
      }
    }
    auto snapshots = registry_.Snapshots();
    if (!snapshots) return fail(FromError(snapshots.error()));
    json out = json::array();
    bool skipping = !after.empty();
    std::string last;
    bool more = false;
    for (const auto& s : *snapshots) {
      if (skipping) {
        skipping = s.id != after;
        continue;
      }
      if (!sandbox_filter.empty() && s.sandbox_id != sandbox_filter) continue;
      if (!name_filter.empty() &&
          std::find(s.names.begin(), s.names.end(), name_filter) == s.names.end()) {
        continue;
      }
      if (out.size() == limit) {
        more = true;
        break;
      }
      out.push_back({{"snapshotID", s.id}, {"names", s.names}});
      last = s.id;
    }
    if (!more) return Reply(writer, status::ok, out);
    (void)writer.Send(status::ok, kJson, out.dump(-1, ' ', false, json::error_handler_t::replace),
                      {{"X-Next-Token", last}});
    return;
  }

  if (path.starts_with("/templates/") && method == http::verb::delete_) {
    std::string template_id(path.substr(std::string_view("/templates/").size()));
    auto deleted = registry_.DeleteTemplate(template_id);
    if (!deleted) return fail(FromError(deleted.error()));
    switch (*deleted) {
      case DeleteOutcome::kDeleted: return ReplyEmpty(writer);
      case DeleteOutcome::kNotFound:
        return fail({status::not_found, fmt::format("template '{}' not found", template_id)});
      case DeleteOutcome::kNotASnapshot:
        return fail(BadRequest(fmt::format(
            "template '{}' is not a snapshot: images are removed with `vessel image rm`",
            template_id)));
    }
  }

  if ((path == "/sandboxes" || path == "/v2/sandboxes") && method == http::verb::post) {
    auto wanted = ParseNewSandbox(request);
    if (!wanted) return fail(wanted.error());
    auto sandbox = registry_.Create(*wanted);
    if (!sandbox) return fail(FromError(sandbox.error()));
    return Reply(writer, status::created, SandboxJson(*sandbox));
  }

  if ((path == "/sandboxes" || path == "/v2/sandboxes") && method == http::verb::get) {
    auto params = ParseQueryOr400(query);
    if (!params) return fail(params.error());
    std::vector<std::pair<std::string, std::string>> metadata;
    std::set<std::string, std::less<>> states;
    size_t limit = kMaxPageSize;
    std::string after;
    std::string template_id;
    bool descending = false;
    for (const auto& [name, value] : *params) {
      if (name == "metadata") {
        // The SDK encodes each key and value, then the pairs as a query string.
        auto pairs = ParseQueryOr400(value);
        if (!pairs) return fail(pairs.error());
        for (auto& [k, v] : *pairs) {
          auto meta_key = UrlDecode(k);
          auto meta_value = UrlDecode(v);
          if (!meta_key || !meta_value) return fail(BadRequest("malformed metadata query"));
          metadata.emplace_back(std::move(*meta_key), std::move(*meta_value));
        }
      } else if (name == "template") {
        template_id = value;
      } else if (name == "order") {
        if (value != "asc" && value != "desc") {
          return fail(BadRequest("'order' is asc or desc"));
        }
        descending = value == "desc";
      } else if (name == "startedAfter") {
        return fail(BadRequest("'startedAfter' is not served"));
      } else if (name == "state") {
        for (size_t start = 0; start <= value.size();) {
          size_t comma = value.find(',', start);
          std::string state = value.substr(start, comma - start);
          if (state != "running" && state != "paused" && state != "failed") {
            return fail(BadRequest(fmt::format("unknown state '{}'", state)));
          }
          states.insert(state);
          if (comma == std::string::npos) break;
          start = comma + 1;
        }
      } else if (name == "limit") {
        auto n = PageLimit(value);
        if (!n) return fail(n.error());
        limit = *n;
      } else if (name == "nextToken") {
        after = value;
      }
    }
    // The legacy list shows running sandboxes only.
    if (path == "/sandboxes" && states.empty()) states.insert("running");
    auto sandboxes = registry_.List();
    if (!sandboxes) return fail(FromError(sandboxes.error()));
    // By start, then id: the page token is the last sandbox's id.
    std::sort(sandboxes->begin(), sandboxes->end(), [&](const ApiSandbox& a, const ApiSandbox& b) {
      auto ka = std::tie(a.started_at_ms, a.id);
      auto kb = std::tie(b.started_at_ms, b.id);
      return descending ? kb < ka : ka < kb;
    });
    if (!after.empty()) {
      auto it = std::find_if(sandboxes->begin(), sandboxes->end(),
                             [&](const ApiSandbox& s) { return s.id == after; });
      if (it == sandboxes->end()) return fail(BadRequest("'nextToken' names no sandbox"));
      sandboxes->erase(sandboxes->begin(), it + 1);
    }
    json out = json::array();
    std::string next;
    for (const auto& s : *sandboxes) {
      if (!template_id.empty() && s.attributes.template_id != template_id) continue;
      if (!states.empty() && !states.contains(s.state)) continue;
      bool matches = std::all_of(metadata.begin(), metadata.end(), [&](const auto& kv) {
        auto found = s.attributes.metadata.find(kv.first);
        return found != s.attributes.metadata.end() && found->second == kv.second;
      });
      if (!matches) continue;
      if (out.size() == limit) {
        next = out.back()["sandboxID"].get<std::string>();
        break;
      }
      out.push_back(ListedJson(s));
    }
    std::string body = out.dump(-1, ' ', false, json::error_handler_t::replace);
    if (next.empty()) {
      (void)writer.Send(status::ok, kJson, std::move(body));
    } else {
      (void)writer.Send(status::ok, kJson, std::move(body), {{"X-Next-Token", next}});
    }
    return;
  }

  // /sandboxes/{id}[/action], /v2/sandboxes/{id}/connect
  constexpr std::string_view kPrefix = "/sandboxes/";
  if (path.starts_with("/v2/sandboxes/") && path.ends_with("/connect")) path.remove_prefix(3);
  if (!path.starts_with(kPrefix)) {
    return fail({status::not_found,
                 fmt::format("no such endpoint: {} {}", Sv(request.method_string()), path)});
  }
  std::string_view rest = path.substr(kPrefix.size());
  std::string_view id = rest.substr(0, rest.find('/'));
  std::string_view action =
      rest.size() > id.size() ? rest.substr(id.size() + 1) : std::string_view();
  if (!supervisor::IsSandboxId(id)) return fail(NotFound(id));
  std::string sandbox_id(id);

  if (action.empty() && method == http::verb::get) {
    auto sandbox = registry_.Get(sandbox_id);
    if (!sandbox) return fail(FromError(sandbox.error()));
    if (!*sandbox) return fail(NotFound(id));
    return Reply(writer, status::ok, DetailJson(**sandbox));
  }
  if (action.empty() && method == http::verb::delete_) {
    auto killed = registry_.Kill(sandbox_id);
    if (!killed) return fail(FromError(killed.error()));
    if (!*killed) return fail(NotFound(id));
    return ReplyEmpty(writer);
  }
  if (method == http::verb::put && action == "network") {
    // Replaces the allowlist: a field left out is cleared, as E2B's update does.
    auto body = ParseObject(request);
    if (!body) return fail(body.error());
    json network = json::object();
    const json* internet = nullptr;
    for (const auto& [field, value] : body->items()) {
      if (field == "allow_internet_access") {
        internet = &value;
      } else {
        network[field] = value;
      }
    }
    auto allow_out = AllowOut(&network, internet);
    if (!allow_out) return fail(allow_out.error());
    auto set = registry_.SetNetwork(sandbox_id, allow_out->value_or(std::vector<std::string>{}));
    if (!set) return fail(FromError(set.error()));
    if (!*set) return fail(NotFound(id));
    return ReplyEmpty(writer);
  }
  if (method == http::verb::post && action == "pause") {
    // The body ({"memory": keepMemory}) changes nothing: a pause always keeps the memory.
    auto paused = registry_.Pause(sandbox_id);
    if (!paused) return fail(FromError(paused.error()));
    switch (*paused) {
      case PauseOutcome::kPaused: return ReplyEmpty(writer);
      case PauseOutcome::kNotFound: return fail(NotFound(id));
      case PauseOutcome::kAlreadyPaused:
        return fail({status::conflict, fmt::format("sandbox {} is already paused", id)});
      case PauseOutcome::kNotRunning:
        return fail({status::conflict,
                     fmt::format("sandbox {} is not running (its VM stopped): only a running "
                                 "sandbox can be paused; kill it",
                                 id)});
    }
  }
  if (method == http::verb::post && action == "resume") {
    // The legacy resume: {"timeout": seconds}; a running sandbox is a conflict.
    auto body = OptionalObject(request);
    if (!body) return fail(body.error());
    auto timeout = OptionalInteger(*body, "timeout", 0, kMaxTimeoutSeconds, kDefaultTimeout);
    if (!timeout) return fail(timeout.error());
    auto sandbox = registry_.Get(sandbox_id);
    if (!sandbox) return fail(FromError(sandbox.error()));
    if (!*sandbox) return fail(NotFound(id));
    if ((*sandbox)->state != "paused") {
      return fail({status::conflict, fmt::format("sandbox {} is not paused", id)});
    }
    auto resumed = registry_.Resume(sandbox_id, std::chrono::seconds(*timeout));
    if (!resumed) return fail(FromError(resumed.error()));
    if (!*resumed) return fail(NotFound(id));
    return Reply(writer, status::created, SandboxJson(**resumed));
  }
  if (method == http::verb::post && action == "snapshots") {
    // {"name": optional}: the sandbox as it is now, kept as a template; it runs on.
    auto body = OptionalObject(request);
    if (!body) return fail(body.error());
    std::string name;
    if (body->contains("name") && !(*body)["name"].is_null()) {
      if (!(*body)["name"].is_string()) return fail(BadRequest("'name' must be a string"));
      name = (*body)["name"].get<std::string>();
    }
    auto snapshot = registry_.Snapshot(sandbox_id, name);
    if (!snapshot) return fail(FromError(snapshot.error()));
    if (!*snapshot) return fail(NotFound(id));
    return Reply(writer, status::created,
                 {{"snapshotID", (*snapshot)->id}, {"names", (*snapshot)->names}});
  }
  if (method == http::verb::post && action == "fork") {
    // {"count": N (default 1), "timeout": seconds}: N copies of the sandbox as it is now.
    auto body = OptionalObject(request);
    if (!body) return fail(body.error());
    auto count = OptionalInteger(*body, "count", 1, kMaxForks, 1);
    if (!count) return fail(count.error());
    auto timeout = OptionalInteger(*body, "timeout", 0, kMaxTimeoutSeconds, kDefaultTimeout);
    if (!timeout) return fail(timeout.error());
    auto children =
        registry_.Fork(sandbox_id, static_cast<uint32_t>(*count), std::chrono::seconds(*timeout));
    if (!children) return fail(FromError(children.error()));
    if (!*children) return fail(NotFound(id));
    json out = json::array();
    for (const auto& child : **children) out.push_back({{"sandbox", SandboxJson(child)}});
    return Reply(writer, status::ok, out);
  }
  if (method == http::verb::post &&
      (action == "timeout" || action == "refreshes" || action == "connect")) {
    // timeout: the TTL from now, as asked; refreshes and connect only extend it.
    const char* field = action == "refreshes" ? "duration" : "timeout";
    // Only timeout requires its field; without one, refreshes and connect keep the end.
    std::optional<int64_t> seconds;
    if (!request.body().empty() || action == "timeout") {
      auto body = ParseObject(request);
      if (!body) return fail(body.error());
      if (body->contains(field)) {
        auto n = IntegerField(*body, field, 0, action == "refreshes" ? 3600 : kMaxTimeoutSeconds);
        if (!n) return fail(n.error());
        seconds = *n;
      } else if (action == "timeout") {
        return fail(BadRequest(fmt::format("'{}' is required: seconds from now", field)));
      }
    }
    auto sandbox = registry_.Get(sandbox_id);
    if (!sandbox) return fail(FromError(sandbox.error()));
    if (!*sandbox) return fail(NotFound(id));
    if (action == "connect" && (*sandbox)->state == "paused") {
      // Connecting to a paused sandbox resumes it: 201, as E2B answers.
      auto resumed = registry_.Resume(
          sandbox_id, seconds ? std::chrono::seconds(*seconds) : kDefaultSandboxTimeout);
      if (!resumed) return fail(FromError(resumed.error()));
      if (!*resumed) return fail(NotFound(id));
      return Reply(writer, status::created, SandboxJson(**resumed));
    }
    int64_t current = (*sandbox)->attributes.end_at_ms;
    int64_t end_at = seconds ? NowMs() + *seconds * 1000 : current;
    if (action != "timeout" && (current == 0 || current > end_at)) end_at = current;
    auto set = registry_.SetEndAt(sandbox_id, end_at);
    if (!set) return fail(FromError(set.error()));
    if (!*set) return fail(NotFound(id));
    if (action != "connect") return ReplyEmpty(writer);
    (*sandbox)->attributes.end_at_ms = end_at;
    return Reply(writer, status::ok, SandboxJson(**sandbox));
  }
  fail({status::not_found,
        fmt::format("no such endpoint: {} {}", Sv(request.method_string()), path)});
}

void ControlPlane::ReapExpired() {
  auto sandboxes = registry_.List();
  if (!sandboxes) return;
  const int64_t now = NowMs();
  for (const auto& s : *sandboxes) {
    // A paused sandbox waits for its owner, whatever its end.
    if (s.state == "paused" || s.attributes.end_at_ms == 0 || s.attributes.end_at_ms > now) {
      continue;
    }
    if (s.attributes.auto_pause && s.state == "running") {
      auto paused = registry_.Pause(s.id);
      if (paused) continue;
      std::fprintf(stderr, "vessel serve: pausing expired sandbox %s failed, killing it: %s\n",
                   s.id.c_str(), paused.error().ToString().c_str());
    }
    (void)registry_.Kill(s.id);
  }
}

}  // namespace vessel::server
