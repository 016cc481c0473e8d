#include "egress/tls.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace vessel::egress {
namespace {

constexpr uint8_t kHandshakeRecord = 22;
constexpr uint8_t kClientHello = 1;
constexpr uint16_t kServerNameExtension = 0;
constexpr uint8_t kHostName = 0;
constexpr size_t kRecordHeader = 5;
constexpr size_t kMaxRecordPayload = 16 * 1024;  // TLSPlaintext.length
constexpr size_t kHandshakeHeader = 4;
constexpr size_t kMaxSessionId = 32;
constexpr size_t kMaxServerName = 255;

HelloScan Malformed(std::string problem) {
  return {.kind = HelloScan::Kind::kMalformed, .problem = std::move(problem)};
}

// Big-endian fields, front to back; reading past the end clears ok() and yields zeros.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  [[nodiscard]] bool ok() const { return ok_; }
  [[nodiscard]] bool done() const { return bytes_.empty(); }
  [[nodiscard]] size_t left() const { return bytes_.size(); }

  uint32_t Number(size_t width) {
    std::string_view field = Take(width);
    uint32_t n = 0;
    for (char c : field) n = n << 8 | static_cast<uint8_t>(c);
    return n;
  }
  std::string_view Take(size_t n) {
    if (n > bytes_.size()) {
      ok_ = false;
      bytes_ = {};
      return {};
    }
    std::string_view taken = bytes_.substr(0, n);
    bytes_.remove_prefix(n);
    return taken;
  }

 private:
  std::string_view bytes_;
  bool ok_ = true;
};

bool IsHostNameText(std::string_view name) {
  return !name.empty() && name.size() <= kMaxServerName &&
         std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// The server_name extension's ServerNameList.
HelloScan ReadServerNameList(std::string_view data) {
  Reader list(data);
  size_t size = list.Number(2);
  if (!list.ok() || size == 0 || size != list.left()) {
    return Malformed("a server_name extension whose list length does not match it");
  }
  std::string name;
  while (!list.done()) {
    auto type = static_cast<uint8_t>(list.Number(1));
    std::string_view entry = list.Take(list.Number(2));
    if (!list.ok()) return Malformed("a truncated server_name entry");
    if (type != kHostName) continue;  // no other type is defined
    if (!name.empty()) return Malformed("more than one host_name in server_name");
    if (!IsHostNameText(entry)) {
      return Malformed("a host_name that is not 1 to 255 printable ASCII characters");
    }
    name = entry;
  }
  if (name.empty()) return {.kind = HelloScan::Kind::kNoServerName};
  return {.kind = HelloScan::Kind::kServerName, .server_name = std::move(name)};
}

// A whole ClientHello body (after the handshake header).
HelloScan ReadClientHello(std::string_view body) {
  Reader hello(body);
  hello.Take(2 + 32);  // legacy_version, random
  size_t session_id = hello.Number(1);
  if (session_id > kMaxSessionId) {
    return Malformed(fmt::format("a session id of {} bytes", session_id));
  }
  hello.Take(session_id);
  size_t suites = hello.Number(2);
  if (hello.ok() && (suites < 2 || suites % 2 != 0)) {
    return Malformed(fmt::format("cipher suites of {} bytes", suites));
  }
  hello.Take(suites);
  size_t compressions = hello.Number(1);
  if (hello.ok() && compressions < 1) return Malformed("no compression method");
  hello.Take(compressions);
  if (!hello.ok()) return Malformed("a truncated ClientHello");
  if (hello.done()) return {.kind = HelloScan::Kind::kNoServerName};
  size_t extensions = hello.Number(2);
  if (!hello.ok() || extensions != hello.left()) {
    return Malformed("extensions whose length does not match the ClientHello");
  }
  std::optional<HelloScan> server_name;
  while (!hello.done()) {
    auto type = static_cast<uint16_t>(hello.Number(2));
    std::string_view data = hello.Take(hello.Number(2));
    if (!hello.ok()) return Malformed("a truncated extension");
    if (type != kServerNameExtension) continue;
    if (server_name) return Malformed("two server_name extensions");
    server_name = ReadServerNameList(data);
    if (server_name->kind == HelloScan::Kind::kMalformed) return *server_name;
  }
  return server_name.value_or(HelloScan{.kind = HelloScan::Kind::kNoServerName});
}

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

}  // namespace

HelloScan ScanClientHello(std::string_view bytes) {
  std::string handshake;
  size_t at = 0;
  for (;;) {
    std::string_view record = bytes.substr(at);
    // The first record decides whether this is TLS at all; later ones must go on with it.
    if (record.empty()) return {};
    if (static_cast<uint8_t>(record[0]) != kHandshakeRecord) {
      return at == 0 ? HelloScan{.kind = HelloScan::Kind::kNotTls}
                     : Malformed("a record that is no handshake inside the ClientHello");
    }
    if (record.size() < 2) return {};
    if (record[1] != 3) {
      return at == 0 ? HelloScan{.kind = HelloScan::Kind::kNotTls}
                     : Malformed("a record of another protocol version inside the ClientHello");
    }
    if (record.size() < kRecordHeader) return {};
    size_t length = Reader(record.substr(3, 2)).Number(2);
    if (length == 0 || length > kMaxRecordPayload) {
      return Malformed(fmt::format("a handshake record of {} bytes", length));
    }
    if (at + kRecordHeader + length > kMaxClientHello) {
      return Malformed(fmt::format("a ClientHello over {} bytes", kMaxClientHello));
    }
    std::string_view payload = record.substr(kRecordHeader, length);
    handshake.append(payload);
    if (handshake.empty()) return {};
    if (static_cast<uint8_t>(handshake[0]) != kClientHello) {
      return Malformed(fmt::format("handshake message {} where a ClientHello belongs",
                                   static_cast<uint8_t>(handshake[0])));
    }
    if (handshake.size() >= kHandshakeHeader) {
      Reader header(handshake);
      header.Take(1);
      size_t body = header.Number(3);
      if (kHandshakeHeader + body > kMaxClientHello) {
        return Malformed(fmt::format("a ClientHello of {} bytes, over {}", body, kMaxClientHello));
      }
      if (handshake.size() >= kHandshakeHeader + body) {
        return ReadClientHello(std::string_view(handshake).substr(kHandshakeHeader, body));
      }
    }
    if (payload.size() < length) return {};
    at += kRecordHeader + length;
  }
}

bool SameServerName(std::string_view server_name, std::string_view host) {
  if (server_name.ends_with('.')) server_name.remove_suffix(1);
  if (host.ends_with('.')) host.remove_suffix(1);
  return server_name.size() == host.size() &&
         std::equal(server_name.begin(), server_name.end(), host.begin(),
                    [](char a, char b) { return Lower(a) == Lower(b); });
}

}  // namespace vessel::egress
