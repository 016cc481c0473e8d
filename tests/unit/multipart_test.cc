// multipart/form-data bodies as uploads send them, and the malformed ones a client may.
#include "server/multipart.h"

#include <gtest/gtest.h>

namespace vessel::server {
namespace {

std::string Part(std::string_view boundary, std::string_view disposition, std::string_view data) {
  return "--" + std::string(boundary) + "\r\nContent-Disposition: " + std::string(disposition) +
         "\r\nContent-Type: application/octet-stream\r\n\r\n" + std::string(data) + "\r\n";
}

TEST(MultipartTest, TheBoundaryComesFromTheContentType) {
  EXPECT_EQ(MultipartBoundary("multipart/form-data; boundary=abc"), "abc");
  EXPECT_EQ(MultipartBoundary("Multipart/Form-Data; charset=x; boundary=\"a b\""), "a b");
  EXPECT_FALSE(MultipartBoundary("application/octet-stream"));
  EXPECT_FALSE(MultipartBoundary("multipart/form-data"));
  EXPECT_FALSE(MultipartBoundary("multipart/form-data; boundary="));
  EXPECT_FALSE(MultipartBoundary("multipart/form-data; boundary=" + std::string(71, 'b')));
}

TEST(MultipartTest, PartsKeepTheirNamesFileNamesAndBytes) {
  std::string binary("\0\r\n--x\r\nnot a boundary", 22);
  std::string body = "preamble\r\n" +
                     Part("XyZ", R"(form-data; name="file"; filename="/tmp/a")", "hi") +
                     Part("XyZ", R"(form-data; name="file"; filename="b%22c%0Ad")", binary) +
                     Part("XyZ", R"(form-data; name="note")", "") + "--XyZ--\r\nepilogue";
  auto parts = ParseMultipart(body, "XyZ");
  ASSERT_TRUE(parts.has_value()) << parts.error().ToString();
  ASSERT_EQ(parts->size(), 3u);
  EXPECT_EQ((*parts)[0].name, "file");
  EXPECT_EQ((*parts)[0].filename, "/tmp/a");
  EXPECT_EQ((*parts)[0].data, "hi");
  EXPECT_EQ((*parts)[1].filename, "b\"c\nd");
  EXPECT_EQ((*parts)[1].data, binary);
  EXPECT_EQ((*parts)[2].name, "note");
  EXPECT_EQ((*parts)[2].data, "");
}

TEST(MultipartTest, MalformedBodiesAreRefusedWithWhy) {
  const std::string ok = Part("B", R"(form-data; name="file")", "data");
  struct Case {
    std::string body;
    std::string says;
  };
  const Case cases[] = {
      {"", "no boundary"},
      {"no delimiter here", "no boundary"},
      {"--Bjunk", "not followed by CRLF"},
      {"--B\r\nContent-Disposition: form-data; name=\"file\"", "headers do not end"},
      {"--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ndata", "ends inside a part"},
      {"--B\r\nX-Other: 1\r\n\r\ndata\r\n--B--", "no Content-Disposition"},
      {"--B\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\nd\r\n--B--", "not form-data"},
      {"--B\r\nContent-Disposition: form-data\r\n\r\nd\r\n--B--", "has no name"},
      {"--B\r\nContent-Disposition: form-data; name=\"f\r\n\r\nd\r\n--B--", "has no name"},
      {"--B\r\nno colon\r\n\r\nd\r\n--B--", "no ':'"},
      {"--B\r\n" + std::string(9000, 'h') + "\r\n\r\nd\r\n--B--", "exceed"},
  };
  for (const auto& c : cases) {
    auto parts = ParseMultipart(c.body, "B");
    ASSERT_FALSE(parts.has_value()) << c.body;
    EXPECT_NE(parts.error().message().find(c.says), std::string::npos)
        << c.says << " in " << parts.error().ToString();
  }
  std::string many;
  for (size_t i = 0; i <= kMaxMultipartParts; ++i) many += ok;
  auto refused = ParseMultipart(many + "--B--", "B");
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message().find("more than"), std::string::npos);
}

}  // namespace
}  // namespace vessel::server
