#include "snapshot/host_key.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <optional>

#include "base/secret_file.h"

namespace vessel::snapshot {
namespace {

constexpr SecretRole kHostKeyRole{"the snapshot key",
                                  "snapshots signed with it then need `vessel snapshot import`"};

}  // namespace

Result<HostKey> LoadOrCreateHostKey(const std::string& dir) {
  if (auto made = MakePrivateConfigDir(dir, "the snapshot key"); !made) {
    return Fail(std::move(made).error().Context("loading the snapshot key"));
  }
  auto secret = LoadOrCreateSecret(dir + "/" + kHostKeyFile, kHostKeySize, kHostKeyRole);
  if (!secret) return Fail(std::move(secret).error());
  HostKey key;
  std::copy(secret->begin(), secret->end(), key.bytes.begin());
  OPENSSL_cleanse(secret->data(), secret->size());
  return key;
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
