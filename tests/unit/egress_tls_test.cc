// The server name of a tunnel's TLS ClientHello (egress/tls.h), from ClientHellos built
// field by field here, whole, cut short, split across records and broken.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>

#include "egress/tls.h"

namespace vessel::egress {
namespace {

using Kind = HelloScan::Kind;

std::string Number(size_t n, size_t width) {
  std::string out;
  for (size_t i = width; i-- > 0;) out += static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

std::string Extension(uint16_t type, const std::string& data) {
  return Number(type, 2) + Number(data.size(), 2) + data;
}

// A server_name extension with these (type, name) entries.
std::string ServerNames(const std::vector<std::pair<uint8_t, std::string>>& entries) {
  std::string list;
  for (const auto& [type, name] : entries) {
    list += static_cast<char>(type) + Number(name.size(), 2) + name;
  }
  return Extension(0, Number(list.size(), 2) + list);
}
std::string ServerName(const std::string& name) { return ServerNames({{0, name}}); }

const std::string kSupportedVersions = Extension(43, std::string("\x02\x03\x04", 3));

// A ClientHello handshake message: TLS 1.3's fields, then `extensions` when given.
std::string Hello(const std::optional<std::string>& extensions, uint8_t type = 1,
                  size_t session_id = 32) {
  std::string body = "\x03\x03" + std::string(32, 'r') + static_cast<char>(session_id) +
                     std::string(session_id, 's') + Number(4, 2) + "\x13\x01\x13\x02" +
                     std::string("\x01\x00", 2);
  if (extensions) body += Number(extensions->size(), 2) + *extensions;
  return static_cast<char>(type) + Number(body.size(), 3) + body;
}

// `handshake` in records of at most `per_record` bytes.
std::string Records(const std::string& handshake, size_t per_record = 16 * 1024) {
  std::string out;
  for (size_t at = 0; at < handshake.size(); at += per_record) {
    std::string chunk = handshake.substr(at, per_record);
    out += "\x16\x03\x01" + Number(chunk.size(), 2) + chunk;
  }
  return out;
}

HelloScan Scan(const std::string& bytes) { return ScanClientHello(bytes); }

TEST(ClientHelloTest, TheServerNameIsRead) {
  auto scan = Scan(Records(Hello(kSupportedVersions + ServerName("api.Example.com"))));
  ASSERT_EQ(scan.kind, Kind::kServerName) << scan.problem;
  EXPECT_EQ(scan.server_name, "api.Example.com");
  // What follows the ClientHello (a client's early data) changes nothing.
  scan = Scan(Records(Hello(ServerName("a.example"))) + "\x17\x03\x03\x00\x05hello");
  EXPECT_EQ(scan.server_name, "a.example");
}

TEST(ClientHelloTest, EveryShorterPrefixNeedsMore) {
  for (size_t per_record : {size_t{16 * 1024}, size_t{7}, size_t{1}}) {
    std::string hello =
        Records(Hello(ServerName("api.example.com") + kSupportedVersions), per_record);
    for (size_t n = 0; n < hello.size(); ++n) {
      auto scan = Scan(hello.substr(0, n));
      ASSERT_EQ(scan.kind, Kind::kNeedMore)
          << "prefix " << n << " of records of " << per_record << ": " << scan.problem;
    }
    auto scan = Scan(hello);
    ASSERT_EQ(scan.kind, Kind::kServerName) << per_record << ": " << scan.problem;
    EXPECT_EQ(scan.server_name, "api.example.com");
  }
}

TEST(ClientHelloTest, OtherBytesAreNoTls) {
  for (std::string bytes : {std::string("GET / HTTP/1.1\r\n"), std::string("SSH-2.0-OpenSSH_9.2"),
                            std::string("\x16\x02\x00", 3), std::string("\x17\x03\x03\x00\x01x", 6),
                            std::string(1, '\0')}) {
    EXPECT_EQ(Scan(bytes).kind, Kind::kNotTls) << bytes;
  }
  EXPECT_EQ(Scan("").kind, Kind::kNeedMore);
  EXPECT_EQ(Scan("\x16").kind, Kind::kNeedMore);
}

TEST(ClientHelloTest, AHelloWithoutAHostNameNamesNoServer) {
  EXPECT_EQ(Scan(Records(Hello(kSupportedVersions))).kind, Kind::kNoServerName);
  EXPECT_EQ(Scan(Records(Hello(std::nullopt))).kind, Kind::kNoServerName);
  EXPECT_EQ(Scan(Records(Hello(std::string()))).kind, Kind::kNoServerName);
  // Only host_name (0) is defined; an entry of another type names nothing.
  EXPECT_EQ(Scan(Records(Hello(ServerNames({{7, "x"}})))).kind, Kind::kNoServerName);
}

TEST(ClientHelloTest, BrokenHellosAreMalformedAndSayWhy) {
  struct Case {
    std::string bytes;
    std::string says;
  };
  std::string two_records = Records(Hello(ServerName("a.example")), 20);
  two_records[25] = '\x17';  // the second record's type
  const Case cases[] = {
      {Records(Hello(ServerName("a.example") + ServerName("b.example"))),
       "two server_name extensions"},
      {Records(Hello(ServerNames({{0, "a.example"}, {0, "b.example"}}))),
       "more than one host_name"},
      {Records(Hello(ServerName("a example"))), "printable ASCII"},
      {Records(Hello(ServerName(std::string("a\0b", 3)))), "printable ASCII"},
      {Records(Hello(ServerName(std::string(256, 'a')))), "printable ASCII"},
      {Records(Hello(ServerName(""))), "printable ASCII"},
      {Records(Hello(Extension(0, Number(9, 2) + "x"))), "list length"},
      {Records(Hello(ServerName("a.example"), 2)), "handshake message 2"},
      {Records(Hello(ServerName("a.example"), 1, 33)), "session id of 33 bytes"},
      {Records(Hello(Number(5, 2))), "a truncated extension"},
      {std::string("\x16\x03\x01\x00\x00", 5), "a handshake record of 0 bytes"},
      {std::string("\x16\x03\x01\x40\x01", 5), "a handshake record of 16385 bytes"},
      {Records(std::string("\x01\x01\x00\x00", 4)), "over 65536"},
      {two_records, "no handshake inside the ClientHello"},
  };
  for (const auto& c : cases) {
    auto scan = Scan(c.bytes);
    EXPECT_EQ(scan.kind, Kind::kMalformed) << c.says;
    EXPECT_NE(scan.problem.find(c.says), std::string::npos) << scan.problem;
  }
  // Extensions whose length does not match what follows.
  std::string hello = Hello(ServerName("a.example"));
  hello.back() = 'X';
  hello += "trailing";
  hello[1] = 0;
  hello[2] = 0;
  hello[3] = static_cast<char>(hello.size() - 4);
  EXPECT_EQ(Scan(Records(hello)).kind, Kind::kMalformed);
}

// ClientHellos that `openssl s_client` sent (the fuzzer's seeds).
TEST(ClientHelloTest, RealClientHellosAreRead) {
  auto read = [](const char* name) {
    std::ifstream in(std::string(VESSEL_HELLO_CORPUS) + "/" + name, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  std::string tls13 = read("openssl_tls13_sni");
  ASSERT_GT(tls13.size(), 100u);
  auto scan = Scan(tls13);
  ASSERT_EQ(scan.kind, Kind::kServerName) << scan.problem;
  EXPECT_EQ(scan.server_name, "api.example.com");
  std::string tls12 = read("openssl_tls12_no_sni");
  ASSERT_GT(tls12.size(), 100u);
  EXPECT_EQ(Scan(tls12).kind, Kind::kNoServerName) << Scan(tls12).problem;
  EXPECT_EQ(Scan(read("not_tls")).kind, Kind::kNotTls);
}

TEST(ClientHelloTest, ServerNamesCompareWithoutCaseAndTrailingDot) {
  EXPECT_TRUE(SameServerName("API.example.com", "api.example.com"));
  EXPECT_TRUE(SameServerName("api.example.com.", "api.example.com"));
  EXPECT_TRUE(SameServerName("api.example.com", "api.example.com."));
  EXPECT_FALSE(SameServerName("api.example.com.evil", "api.example.com"));
  EXPECT_FALSE(SameServerName("example.com", "api.example.com"));
  EXPECT_FALSE(SameServerName("", "api.example.com"));
}

}  // namespace
}  // namespace vessel::egress
