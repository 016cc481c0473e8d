#include "server/multipart.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace vessel::server {
namespace {

constexpr size_t kMaxBoundary = 70;

Error Malformed(std::string_view why) {
  return Error::InvalidConfig("body", fmt::format("malformed multipart/form-data: {}", why));
}

bool EqualsIgnoringCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The parameter `key` of a header value such as `form-data; name="file"; filename="a"`:
// quoted (with \" escapes) or a bare token. nullopt when absent or unterminated.
std::optional<std::string> Parameter(std::string_view value, std::string_view key) {
  size_t at = 0;
  while ((at = value.find(';', at)) != std::string_view::npos) {
    std::string_view rest = Trim(value.substr(at + 1));
    ++at;
    size_t eq = rest.find('=');
    if (eq == std::string_view::npos || !EqualsIgnoringCase(Trim(rest.substr(0, eq)), key)) {
      continue;
    }
    std::string_view v = Trim(rest.substr(eq + 1));
    std::string out;
    if (v.starts_with('"')) {
      for (size_t i = 1; i < v.size(); ++i) {
        if (v[i] == '\\' && i + 1 < v.size()) {
          out.push_back(v[++i]);
        } else if (v[i] == '"') {
          return out;
        } else {
          out.push_back(v[i]);
        }
      }
      return std::nullopt;
    }
    return std::string(v.substr(0, v.find(';')));
  }
  return std::nullopt;
}

// What form encoders escape in a file name: '"', CR and LF as %22, %0D and %0A.
std::string UnescapeFilename(std::string_view name) {
  std::string out;
  for (size_t i = 0; i < name.size(); ++i) {
    std::string_view rest = name.substr(i);
    if (rest.starts_with("%22")) {
      out.push_back('"');
    } else if (rest.starts_with("%0D") || rest.starts_with("%0d")) {
      out.push_back('\r');
    } else if (rest.starts_with("%0A") || rest.starts_with("%0a")) {
      out.push_back('\n');
    } else {
      out.push_back(name[i]);
      continue;
    }
    i += 2;
  }
  return out;
}

}  // namespace

std::optional<std::string> MultipartBoundary(std::string_view content_type) {
  std::string_view type = Trim(content_type.substr(0, content_type.find(';')));
  if (!EqualsIgnoringCase(type, "multipart/form-data")) return std::nullopt;
  auto boundary = Parameter(content_type, "boundary");
  if (!boundary || boundary->empty() || boundary->size() > kMaxBoundary) return std::nullopt;
  return boundary;
}

Result<std::vector<MultipartPart>> ParseMultipart(std::string_view body,
                                                  std::string_view boundary) {
  const std::string delimiter = "--" + std::string(boundary);
  const std::string next_delimiter = "\r\n" + delimiter;
  // A preamble before the first delimiter is allowed and ignored.
  size_t at = body.starts_with(delimiter) ? 0 : body.find(next_delimiter);
  if (at == std::string_view::npos) return Fail(Malformed("no boundary in the body"));
  at += body.starts_with(delimiter) ? delimiter.size() : next_delimiter.size();
  std::vector<MultipartPart> parts;
  for (;;) {
    std::string_view rest = body.substr(at);
    if (rest.starts_with("--")) return parts;  // the closing delimiter; an epilogue may follow
    if (!rest.starts_with("\r\n")) return Fail(Malformed("a boundary is not followed by CRLF"));
    at += 2;
    if (parts.size() == kMaxMultipartParts) {
      return Fail(Malformed(fmt::format("more than {} parts", kMaxMultipartParts)));
    }
    size_t headers_end = body.find("\r\n\r\n", at);
    if (headers_end == std::string_view::npos)
      return Fail(Malformed("a part's headers do not end"));
    if (headers_end - at > kMaxPartHeaderBytes) {
      return Fail(Malformed(fmt::format("a part's headers exceed {} bytes", kMaxPartHeaderBytes)));
    }
    MultipartPart part;
    bool has_disposition = false;
    std::string_view headers = body.substr(at, headers_end - at);
    while (!headers.empty()) {
      size_t eol = headers.find("\r\n");
      std::string_view line = headers.substr(0, eol);
      headers = eol == std::string_view::npos ? std::string_view() : headers.substr(eol + 2);
      size_t colon = line.find(':');
      if (colon == std::string_view::npos) return Fail(Malformed("a part header has no ':'"));
      if (!EqualsIgnoringCase(Trim(line.substr(0, colon)), "Content-Disposition")) continue;
      std::string_view value = Trim(line.substr(colon + 1));
      if (!EqualsIgnoringCase(Trim(value.substr(0, value.find(';'))), "form-data")) {
        return Fail(Malformed("a part is not form-data"));
      }
      auto name = Parameter(value, "name");
      if (!name) return Fail(Malformed("a part has no name"));
      part.name = std::move(*name);
      if (auto filename = Parameter(value, "filename")) part.filename = UnescapeFilename(*filename);
      has_disposition = true;
    }
    if (!has_disposition) return Fail(Malformed("a part has no Content-Disposition"));
    size_t data_start = headers_end + 4;
    size_t data_end = body.find(next_delimiter, data_start);
    if (data_end == std::string_view::npos) return Fail(Malformed("the body ends inside a part"));
    part.data = body.substr(data_start, data_end - data_start);
    parts.push_back(std::move(part));
    at = data_end + next_delimiter.size();
  }
}

}  // namespace vessel::server
