// The TLS server name a guest asks for in a CONNECT tunnel, read from its ClientHello
// (RFC 8446 section 4.1.2, RFC 6066 section 3) as data, without sockets.
//
// The proxy tunnels HTTPS without looking into it, except for this: the first bytes of a
// tunnel to a host name must not be a ClientHello naming another server. Otherwise a guest
// allowed to reach one name could CONNECT to it and ask the same front (a CDN, a shared
// load balancer) for any other site by its SNI. A tunnel that does not begin with a TLS
// handshake, or whose ClientHello names no server, is left alone.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace vessel::egress {

// The largest ClientHello read, its record headers included; real ones are a few KiB.
inline constexpr size_t kMaxClientHello = 64 * 1024;

struct HelloScan {
  enum class Kind {
    kNeedMore,      // a ClientHello so far: more bytes decide
    kNotTls,        // the bytes are no TLS handshake record
    kServerName,    // server_name: the host_name it carries
    kNoServerName,  // a whole ClientHello without a server_name
    kMalformed,     // problem: what is wrong
  };
  Kind kind = Kind::kNeedMore;
  std::string server_name;
  std::string problem;
};

// Reads the first bytes a client sent into a tunnel. The ClientHello may span several
// handshake records. The name is returned as sent, but only when it is 1 to 255 printable
// ASCII characters; anything else, more than one host_name, a second server_name
// extension or a ClientHello over kMaxClientHello is kMalformed.
[[nodiscard]] HelloScan ScanClientHello(std::string_view bytes);

// Whether `server_name` names `host`: equal but for ASCII case and one trailing dot on
// either.
[[nodiscard]] bool SameServerName(std::string_view server_name, std::string_view host);

}  // namespace vessel::egress
