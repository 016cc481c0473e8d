// Query strings and percent-encoding, for URLs the clients send.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vessel::server {

using QueryPairs = std::vector<std::pair<std::string, std::string>>;

// The value of a hex digit, either case.
std::optional<int> HexValue(char c);
// %XX and '+' decoded; nullopt for a broken escape.
std::optional<std::string> UrlDecode(std::string_view text);
// The decoded pairs of a query string (`a=1&b=2`); nullopt when an escape is broken.
std::optional<QueryPairs> ParseQuery(std::string_view query);
// The first value of `key`, if any.
std::optional<std::string> QueryValue(const QueryPairs& pairs, std::string_view key);

}  // namespace vessel::server
