// The server name of a tunnel's first bytes (egress/tls.h), which a hostile guest writes:
// whatever the bytes, the scan ends with a verdict that later bytes cannot change, and a
// server name it returns is one line of printable ASCII.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "egress/tls.h"
#include "invariant.h"

using vessel::egress::HelloScan;
using vessel::egress::kMaxClientHello;
using vessel::egress::SameServerName;
using vessel::egress::ScanClientHello;
using vessel::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  HelloScan scan = ScanClientHello(bytes);
  switch (scan.kind) {
    case HelloScan::Kind::kNeedMore:
      Check(size < kMaxClientHello, "only a ClientHello under the cap waits for more");
      return 0;
    case HelloScan::Kind::kNotTls:
      Check(size > 0 && (data[0] != 22 || (size > 1 && data[1] != 3)),
            "only a first record that is no TLS handshake is kNotTls");
      break;
    case HelloScan::Kind::kServerName:
      Check(!scan.server_name.empty() && scan.server_name.size() <= 255,
            "a server name is 1 to 255 characters");
      for (char c : scan.server_name) Check(c > 0x20 && c < 0x7f, "a server name is printable");
      Check(SameServerName(scan.server_name, scan.server_name), "a name is its own");
      break;
    case HelloScan::Kind::kNoServerName: break;
    case HelloScan::Kind::kMalformed:
      Check(!scan.problem.empty(), "a malformed hello says why");
      break;
  }
  // A verdict is final: what the client sends after it changes nothing.
  std::string longer(bytes);
  longer += "\x16\x03\x01\x00\x05trailing";
  HelloScan again = ScanClientHello(longer);
  Check(again.kind == scan.kind && again.server_name == scan.server_name &&
            again.problem == scan.problem,
        "bytes after a verdict do not change it");
  return 0;
}
