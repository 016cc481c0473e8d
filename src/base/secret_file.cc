#include "base/secret_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <pwd.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <optional>

#include "base/io.h"
#include "base/private_dir.h"
#include "base/unique_fd.h"

namespace vessel {
namespace {

Error NotASecret(const SecretRole& role, const std::string& path, std::string_view why) {
  return Error::HostIo(
      fmt::format("{} {} {}; remove it to make a new one ({})", role.name, path, why, role.remedy),
      EINVAL);
}

std::optional<uint8_t> HexDigit(char c) {
  if (c >= '0' && c <= '9') return static_cast<uint8_t>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<uint8_t>(c - 'a' + 10);
  return std::nullopt;
}

// Overwrites a copy of a secret before it is freed.
void Wipe(std::span<volatile uint8_t> bytes) {
  for (auto& b : bytes) b = 0;
}

Result<std::vector<uint8_t>> ReadSecret(const std::string& path, size_t size,
                                        const SecretRole& role) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    if (errno == ELOOP) return Fail(NotASecret(role, path, "is a symlink"));
    return Fail(Error::HostIo("open " + path, errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Fail(Error::HostIo("stat " + path, errno));
  if (!S_ISREG(st.st_mode)) return Fail(NotASecret(role, path, "is not a regular file"));
  if (st.st_uid != ::geteuid()) {
    return Fail(NotASecret(role, path, fmt::format("belongs to uid {}, not to you", st.st_uid)));
  }
  if ((st.st_mode & 077) != 0) {
    return Fail(NotASecret(role, path,
                           fmt::format("has mode {:o}: others could read it, so it proves nothing",
                                       st.st_mode & 07777)));
  }
  const size_t file_size = 2 * size + 1;
  std::string text(file_size + 1, '\0');
  ssize_t n = ::pread(fd.get(), text.data(), text.size(), 0);
  if (n < 0) return Fail(Error::HostIo("read " + path, errno));
  if (static_cast<size_t>(n) != file_size || text[file_size - 1] != '\n') {
    Wipe({reinterpret_cast<volatile uint8_t*>(text.data()), text.size()});
    return Fail(
        NotASecret(role, path, fmt::format("does not hold {} hex digits and a newline", 2 * size)));
  }
  std::vector<uint8_t> bytes(size);
  for (size_t i = 0; i < size; ++i) {
    auto high = HexDigit(text[2 * i]);
    auto low = HexDigit(text[2 * i + 1]);
    if (!high || !low) {
      Wipe({reinterpret_cast<volatile uint8_t*>(text.data()), text.size()});
      return Fail(NotASecret(role, path, "holds something other than lowercase hex"));
    }
    bytes[i] = static_cast<uint8_t>(*high << 4 | *low);
  }
  Wipe({reinterpret_cast<volatile uint8_t*>(text.data()), text.size()});
  return bytes;
}

// Writes a fresh secret under a temporary name and links it into place, so a reader
// never sees half of one and, of two processes racing, the second takes the first's.
Result<void> CreateSecret(const std::string& path, size_t size, const SecretRole& role) {
  std::vector<uint8_t> bytes(size);
  if (::getrandom(bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(size)) {
    return Fail(Error::HostIo(fmt::format("getrandom for {}", role.name), errno));
  }
  std::string temporary = fmt::format("{}.{}.tmp", path, ::gettid());
  std::string text = LowerHex(bytes) + "\n";
  Wipe(bytes);
  UniqueFd fd(
      ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return Fail(Error::HostIo("create " + temporary, errno));
  auto written = WriteAll(fd.get(), {reinterpret_cast<const uint8_t*>(text.data()), text.size()},
                          Deadline::Never(), temporary.c_str());
  Wipe({reinterpret_cast<volatile uint8_t*>(text.data()), text.size()});
  if (written && ::fsync(fd.get()) != 0) written = Fail(Error::HostIo("fsync " + temporary, errno));
  if (written && ::link(temporary.c_str(), path.c_str()) != 0 && errno != EEXIST) {
    written = Fail(Error::HostIo("link " + path, errno));
  }
  ::unlink(temporary.c_str());
  return written;
}

}  // namespace

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

Result<void> MakePrivateConfigDir(const std::string& dir, std::string_view holds) {
  const char* chosen = std::getenv("VESSEL_CONFIG_DIR");
  bool narrow = !(chosen && *chosen && dir == chosen);
  return MakePrivateDir(dir, narrow,
                        PrivateDirRole{"the config directory", holds, "VESSEL_CONFIG_DIR"});
}

Result<std::vector<uint8_t>> LoadOrCreateSecret(const std::string& path, size_t size,
                                                const SecretRole& role) {
  auto secret = ReadSecret(path, size, role);
  if (secret || secret.error().errno_value() != ENOENT) return secret;
  if (auto created = CreateSecret(path, size, role); !created) {
    return Fail(std::move(created).error());
  }
  return ReadSecret(path, size, role);
}

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

}  // namespace vessel
