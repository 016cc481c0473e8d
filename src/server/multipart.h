// multipart/form-data bodies (RFC 7578), as the SDKs upload files: the parts of a body
// held in memory, each with its field name, file name and bytes. Untrusted input: every
// malformed body is an error naming what is wrong.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vessel/error.h"

namespace vessel::server {

inline constexpr size_t kMaxMultipartParts = 1000;
inline constexpr size_t kMaxPartHeaderBytes = 8 * 1024;

struct MultipartPart {
  std::string name;       // the form field's
  std::string filename;   // empty when the part has none
  std::string_view data;  // into the body
};

// The boundary parameter of a multipart/form-data Content-Type; nullopt for any other
// type or a missing, empty or overlong (> 70 bytes) boundary.
std::optional<std::string> MultipartBoundary(std::string_view content_type);

// The parts of `body`. kInvalidConfig (subject "body") when it is not a well-formed
// multipart body with that boundary, has more than kMaxMultipartParts parts or a part
// header beyond kMaxPartHeaderBytes.
[[nodiscard]] Result<std::vector<MultipartPart>> ParseMultipart(std::string_view body,
                                                                std::string_view boundary);

}  // namespace vessel::server
