// Files in and out of one real VM.
#include <fmt/format.h>
#include <openssl/evp.h>

#include <cstring>
#include <fstream>
#include <map>
#include <random>

#include "vm_test_env.h"

namespace vessel {
namespace {

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  void Update(std::span<const uint8_t> data) { EVP_DigestUpdate(ctx_, data.data(), data.size()); }
  std::string Hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    EVP_DigestFinal_ex(ctx_, digest, &size);
    std::string hex;
    for (unsigned int i = 0; i < size; ++i) hex += fmt::format("{:02x}", digest[i]);
    return hex;
  }

 private:
  EVP_MD_CTX* ctx_;
};

class FilesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SandboxConfig config = testing::TestConfig();
    config.memory_mib = 768;  // /tmp is a tmpfs: the 256 MiB round trip lives in guest RAM
    sandbox_ = testing::MustCreate(config).release();
  }
  static void TearDownTestSuite() {
    delete sandbox_;
    sandbox_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(sandbox_, nullptr) << "the shared VM did not boot"; }

  static std::string Sh(const std::string& script) {
    auto r = sandbox_->Execute(Command::Shell(script));
    EXPECT_TRUE(r.has_value()) << r.error().ToString();
    return r ? r->stdout_data : "";
  }

  template <typename T>
  static void ExpectFileError(const Result<T>& r, GuestFileErrorKind kind,
                              const std::string& path) {
    ASSERT_FALSE(r.has_value()) << "expected " << ToString(kind) << " for " << path;
    EXPECT_EQ(r.error().kind(), ErrorKind::kGuestFile) << r.error().ToString();
    EXPECT_EQ(r.error().guest_file_kind(), kind) << r.error().ToString();
    EXPECT_EQ(r.error().subject(), path) << r.error().ToString();
  }

  static Sandbox* sandbox_;
};
Sandbox* FilesTest::sandbox_ = nullptr;

TEST_F(FilesTest, WriteReadRoundTripIsBinarySafe) {
  std::string data;
  for (int i = 0; i < 300000; ++i) data += static_cast<char>(i * 31 % 256);
  data += std::string("\0\n\xff\xfe", 4);
  ASSERT_TRUE(sandbox_->WriteFile("/tmp/bin.dat", data, 0640).has_value());
  auto back = sandbox_->ReadFile("/tmp/bin.dat");
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(*back, data);
  auto info = sandbox_->Stat("/tmp/bin.dat");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->type, FileType::kRegular);
  EXPECT_EQ(info->mode, 0640u);
  EXPECT_EQ(info->size, data.size());
  // The guest sees the same bytes.
  EXPECT_EQ(Sh("wc -c < /tmp/bin.dat"), std::to_string(data.size()) + "\n");
  // An empty file is a file too.
  ASSERT_TRUE(sandbox_->WriteFile("/tmp/empty", "").has_value());
  EXPECT_EQ(sandbox_->ReadFile("/tmp/empty").value_or("x"), "");
}

TEST_F(FilesTest, WriteIsAtomicAndReplaces) {
  ASSERT_TRUE(sandbox_->WriteFile("/tmp/atomic", "old contents").has_value());
  ASSERT_TRUE(sandbox_->WriteFile("/tmp/atomic", "new").has_value());
  EXPECT_EQ(sandbox_->ReadFile("/tmp/atomic").value_or(""), "new");
  // A source that fails mid-way leaves the old file and no temporary file behind.
  int calls = 0;
  auto failed =
      sandbox_->WriteFileStream("/tmp/atomic", [&](std::span<uint8_t> buf) -> Result<size_t> {
        if (++calls > 2) return Fail(Error::HostIo("reading the source", EIO));
        std::fill(buf.begin(), buf.end(), 'x');
        return buf.size();
      });
  ASSERT_FALSE(failed.has_value());
  EXPECT_EQ(failed.error().kind(), ErrorKind::kHostIo);
  EXPECT_EQ(sandbox_->ReadFile("/tmp/atomic").value_or(""), "new");
  EXPECT_EQ(Sh("ls -a /tmp | grep -c vessel || true"), "0\n");
}

TEST_F(FilesTest, DirectoriesListStatMakeRemoveRename) {
  ASSERT_TRUE(sandbox_->MakeDir("/tmp/d/e/f", /*parents=*/true).has_value());
  ASSERT_TRUE(sandbox_->MakeDir("/tmp/d/e/f", /*parents=*/true).has_value());
  ASSERT_TRUE(sandbox_->WriteFile("/tmp/d/one", "1").has_value());
  ASSERT_TRUE(sandbox_->WriteFile("/tmp/d/e/two", "22").has_value());
  Sh("ln -s /tmp/d/one /tmp/d/link");
  auto entries = sandbox_->ListDir("/tmp/d");
  ASSERT_TRUE(entries.has_value()) << entries.error().ToString();
  std::map<std::string, FileInfo> by_name;
  for (const auto& e : *entries) by_name[e.name] = e;
  ASSERT_EQ(by_name.size(), 3u);
  EXPECT_EQ(by_name["one"].type, FileType::kRegular);
  EXPECT_EQ(by_name["one"].size, 1u);
  EXPECT_EQ(by_name["e"].type, FileType::kDirectory);
  EXPECT_EQ(by_name["link"].type, FileType::kSymlink);
  EXPECT_EQ(sandbox_->Exists("/tmp/d/e/two").value_or(false), true);
  EXPECT_EQ(sandbox_->Exists("/tmp/d/nope").value_or(true), false);

  ASSERT_TRUE(sandbox_->Rename("/tmp/d/one", "/tmp/d/uno").has_value());
  EXPECT_EQ(sandbox_->ReadFile("/tmp/d/uno").value_or(""), "1");
  ASSERT_TRUE(sandbox_->Remove("/tmp/d/uno").has_value());
  ASSERT_TRUE(sandbox_->Remove("/tmp/d", /*recursive=*/true).has_value());
  EXPECT_EQ(sandbox_->Exists("/tmp/d").value_or(true), false);
}

TEST_F(FilesTest, EveryGuestFileErrorKind) {
  ExpectFileError(sandbox_->ReadFile("/no/such/file"), GuestFileErrorKind::kNotFound,
                  "/no/such/file");
  ExpectFileError(sandbox_->WriteFile("/no/such/dir/file", "x"), GuestFileErrorKind::kNotFound,
                  "/no/such/dir/file");
  ExpectFileError(sandbox_->ReadFile("/tmp"), GuestFileErrorKind::kIsDirectory, "/tmp");
  ASSERT_TRUE(sandbox_->WriteFile("/tmp/plain", "x").has_value());
  ExpectFileError(sandbox_->ListDir("/tmp/plain"), GuestFileErrorKind::kNotDirectory, "/tmp/plain");
  ExpectFileError(sandbox_->MakeDir("/tmp/plain"), GuestFileErrorKind::kExists, "/tmp/plain");
  ASSERT_TRUE(sandbox_->MakeDir("/tmp/full", true).has_value());
  ASSERT_TRUE(sandbox_->WriteFile("/tmp/full/x", "x").has_value());
  ExpectFileError(sandbox_->Remove("/tmp/full"), GuestFileErrorKind::kNotEmpty, "/tmp/full");
  // Permission, even for root: sysfs refuses new files.
  ExpectFileError(sandbox_->WriteFile("/sys/kernel/new-file", "x"),
                  GuestFileErrorKind::kPermissionDenied, "/sys/kernel/new-file");
  ExpectFileError(sandbox_->MakeDir("/sys/new-dir"), GuestFileErrorKind::kPermissionDenied,
                  "/sys/new-dir");
  // Out of space: a tiny tmpfs.
  Sh("mkdir -p /mnt/tiny && mount -t tmpfs -o size=64k tmpfs /mnt/tiny");
  ExpectFileError(sandbox_->WriteFile("/mnt/tiny/big", std::string(1 << 20, 'z')),
                  GuestFileErrorKind::kNoSpace, "/mnt/tiny/big");
  EXPECT_EQ(Sh("ls -A /mnt/tiny"), "");
  Sh("umount /mnt/tiny");
  // Bad paths never reach the guest.
  auto relative = sandbox_->Stat("relative/path");
  ASSERT_FALSE(relative.has_value());
  EXPECT_EQ(relative.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(sandbox_->Remove("/").error().kind(), ErrorKind::kInvalidConfig);
}

TEST_F(FilesTest, LargeFileRoundTripStreamsWithBoundedMemory) {
  constexpr uint64_t kSize = 256ull * 1024 * 1024;
  long rss_before = testing::ResidentKib();
  long rss_peak = rss_before;
  std::mt19937_64 rng(42);
  Sha256 sent_hash;
  uint64_t produced = 0;
  auto write =
      sandbox_->WriteFileStream("/tmp/large", [&](std::span<uint8_t> buf) -> Result<size_t> {
        size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), kSize - produced));
        for (size_t i = 0; i + 8 <= n; i += 8) {
          uint64_t v = rng();
          std::memcpy(buf.data() + i, &v, 8);
        }
        sent_hash.Update({buf.data(), n});
        produced += n;
        rss_peak = std::max(rss_peak, testing::ResidentKib());
        return n;
      });
  ASSERT_TRUE(write.has_value()) << write.error().ToString();
  std::string expected = sent_hash.Hex();
  EXPECT_EQ(Sh("sha256sum /tmp/large | cut -d' ' -f1"), expected + "\n");

  Sha256 received_hash;
  uint64_t received = 0;
  auto read =
      sandbox_->ReadFileStream("/tmp/large", [&](std::span<const uint8_t> chunk) -> Result<void> {
        received_hash.Update(chunk);
        received += chunk.size();
        rss_peak = std::max(rss_peak, testing::ResidentKib());
        return {};
      });
  ASSERT_TRUE(read.has_value()) << read.error().ToString();
  EXPECT_EQ(received, kSize);
  EXPECT_EQ(read->size, kSize);
  EXPECT_EQ(received_hash.Hex(), expected);
  // Neither direction held the file: the host grew by far less than its size.
  EXPECT_LT(rss_peak - rss_before, 64 * 1024)
      << "RSS grew by " << (rss_peak - rss_before) << " KiB";

  // The whole-file read holds at most kMaxWholeFileBytes (256 MiB): one byte more is a
  // clear error that names the streaming read.
  Sh("printf x >> /tmp/large");
  auto whole = sandbox_->ReadFile("/tmp/large");
  ASSERT_FALSE(whole.has_value());
  EXPECT_EQ(whole.error().kind(), ErrorKind::kInvalidConfig) << whole.error().ToString();
  EXPECT_NE(whole.error().message().find("ReadFileStream"), std::string::npos)
      << whole.error().message();
  EXPECT_EQ(Sh("echo still here"), "still here\n");
  ASSERT_TRUE(sandbox_->Remove("/tmp/large").has_value());
}

TEST_F(FilesTest, FilesAfterDestroyReturnDestroyed) {
  auto own = testing::MustCreate();
  ASSERT_NE(own, nullptr);
  ASSERT_TRUE(own->Destroy().has_value());
  auto r = own->ReadFile("/etc/passwd");
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().lifecycle()->Is<LifecycleError::Destroyed>());
}

}  // namespace
}  // namespace vessel
