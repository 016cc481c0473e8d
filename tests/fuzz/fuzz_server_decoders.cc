// What a client of `vessel serve` sends that the server decodes itself: multipart/form-data
// upload bodies (server/multipart.h) and query strings (server/query.h). The first byte
// picks the boundary's length; the rest is the body and, again, a query string.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "invariant.h"
#include "server/multipart.h"
#include "server/query.h"

using vessel::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view input(reinterpret_cast<const char*>(data), size);
  size_t boundary_size = 1 + static_cast<uint8_t>(input[0]) % 70;
  input.remove_prefix(1);
  if (input.size() < boundary_size) return 0;
  std::string boundary(input.substr(0, boundary_size));
  std::string_view body = input.substr(boundary_size);

  (void)vessel::server::MultipartBoundary("multipart/form-data; boundary=" + boundary);
  (void)vessel::server::MultipartBoundary(body);
  auto parts = vessel::server::ParseMultipart(body, boundary);
  if (parts) {
    Check(parts->size() <= vessel::server::kMaxMultipartParts, "at most kMaxMultipartParts parts");
    for (const auto& part : *parts) {
      Check(part.data.data() >= body.data() &&
                part.data.data() + part.data.size() <= body.data() + body.size(),
            "a part's bytes lie inside the body");
    }
  }

  auto pairs = vessel::server::ParseQuery(body);
  if (pairs) {
    for (const auto& [key, value] : *pairs) {
      Check(key.size() <= body.size() && value.size() <= body.size(),
            "decoding never lengthens a query");
    }
  }
  if (auto decoded = vessel::server::UrlDecode(body)) {
    Check(decoded->size() <= body.size(), "decoding never lengthens a string");
  }
  return 0;
}
