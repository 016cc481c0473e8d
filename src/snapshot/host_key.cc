#include "snapshot/host_key.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pwd.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <optional>

#include "base/io.h"
#include "base/private_dir.h"
#include "base/unique_fd.h"

namespace vessel::snapshot {
namespace {

constexpr PrivateDirRole kConfigDirRole{"the config directory", "the snapshot key",
                                        "VESSEL_CONFIG_DIR"};
// Hex digits and a newline.
constexpr size_t kKeyFileSize = 2 * kHostKeySize + 1;

Error NotAKey(const std::string& path, std::string_view why) {
  return Error::HostIo(
      fmt::format("the snapshot key {} {}; remove it to make a new one (snapshots signed with "
                  "it then need `vessel snapshot import`)",
                  path, why),
      EINVAL);
}

std::optional<uint8_t> HexDigit(char c) {
  if (c >= '0' && c <= '9') return static_cast<uint8_t>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<uint8_t>(c - 'a' + 10);
  return std::nullopt;
}

Result<HostKey> ReadKey(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    if (errno == ELOOP) return Fail(NotAKey(path, "is a symlink"));
    return Fail(Error::HostIo("open " + path, errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Fail(Error::HostIo("stat " + path, errno));
  if (!S_ISREG(st.st_mode)) return Fail(NotAKey(path, "is not a regular file"));
  if (st.st_uid != ::geteuid()) {
    return Fail(NotAKey(path, fmt::format("belongs to uid {}, not to you", st.st_uid)));
  }
  if ((st.st_mode & 077) != 0) {
    return Fail(NotAKey(path, fmt::format("has mode {:o}: others could read it, so it proves "
                                          "nothing",
                                          st.st_mode & 07777)));
  }
  char text[kKeyFileSize + 1];
  ssize_t n = ::pread(fd.get(), text, sizeof(text), 0);
  if (n < 0) return Fail(Error::HostIo("read " + path, errno));
  if (static_cast<size_t>(n) != kKeyFileSize || text[kKeyFileSize - 1] != '\n') {
    return Fail(
        NotAKey(path, fmt::format("does not hold {} hex digits and a newline", 2 * kHostKeySize)));
  }
  HostKey key;
  for (size_t i = 0; i < kHostKeySize; ++i) {
    auto high = HexDigit(text[2 * i]);
    auto low = HexDigit(text[2 * i + 1]);
    if (!high || !low) return Fail(NotAKey(path, "holds something other than lowercase hex"));
    key.bytes[i] = static_cast<uint8_t>(*high << 4 | *low);
  }
  return key;
}

// Writes a fresh key under a temporary name and links it into place, so a reader never
// sees half a key and, of two processes racing, the second takes the first's.
Result<void> CreateKey(const std::string& path) {
  HostKey key;
  if (::getrandom(key.bytes.data(), key.bytes.size(), 0) != static_cast<ssize_t>(kHostKeySize)) {
    return Fail(Error::HostIo("getrandom for the snapshot key", errno));
  }
  std::string temporary = fmt::format("{}.{}.tmp", path, ::gettid());
  std::string text = LowerHex(key.bytes) + "\n";
  OPENSSL_cleanse(key.bytes.data(), key.bytes.size());
  UniqueFd fd(
      ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return Fail(Error::HostIo("create " + temporary, errno));
  auto written = WriteAll(fd.get(), {reinterpret_cast<const uint8_t*>(text.data()), text.size()},
                          Deadline::Never(), temporary.c_str());
  OPENSSL_cleanse(text.data(), text.size());
  if (written && ::fsync(fd.get()) != 0) written = Fail(Error::HostIo("fsync " + temporary, errno));
  if (written && ::link(temporary.c_str(), path.c_str()) != 0 && errno != EEXIST) {
    written = Fail(Error::HostIo("link " + path, errno));
  }
  ::unlink(temporary.c_str());
  return written;
}

}  // namespace

std::string LowerHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

std::string ConfigDir() {
  if (const char* dir = std::getenv("VESSEL_CONFIG_DIR"); dir && *dir) return dir;
  if (const char* dir = std::getenv("XDG_CONFIG_HOME"); dir && *dir) {
    return std::string(dir) + "/vessel";
  }
  if (const char* home = std::getenv("HOME"); home && *home) {
    return std::string(home) + "/.config/vessel";
  }
  const passwd* entry = ::getpwuid(::geteuid());
  return std::string(entry ? entry->pw_dir : "/") + "/.config/vessel";
}

Result<HostKey> LoadOrCreateHostKey(const std::string& dir) {
  const char* chosen = std::getenv("VESSEL_CONFIG_DIR");
  bool narrow = !(chosen && *chosen && dir == chosen);
  if (auto made = MakePrivateDir(dir, narrow, kConfigDirRole); !made) {
    return Fail(std::move(made).error().Context("loading the snapshot key"));
  }
  std::string path = dir + "/" + kHostKeyFile;
  auto key = ReadKey(path);
  if (key || key.error().errno_value() != ENOENT) return key;
  if (auto created = CreateKey(path); !created) return Fail(std::move(created).error());
  return ReadKey(path);
}

Result<HostKey> ThisHostKey() {
  static std::mutex mutex;
  static std::optional<HostKey> loaded;
  std::lock_guard lock(mutex);
  if (loaded) return *loaded;
  auto key = LoadOrCreateHostKey(ConfigDir());
  if (key) loaded = *key;
  return key;
}

Result<std::string> HmacSha256Hex(const HostKey& key, std::string_view text) {
  std::array<uint8_t, EVP_MAX_MD_SIZE> mac{};
  unsigned size = 0;
  if (::HMAC(EVP_sha256(), key.bytes.data(), static_cast<int>(key.bytes.size()),
             reinterpret_cast<const unsigned char*>(text.data()), text.size(), mac.data(),
             &size) == nullptr) {
    return Fail(Error::HostIo("HMAC-SHA-256", EIO));
  }
  return LowerHex(std::span(mac).first(size));
}

}  // namespace vessel::snapshot
