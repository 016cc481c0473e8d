// The snapshot directory format: what WriteManifest writes, that Open reads it back, and
// that every kind of damage is refused with a message naming it.
#include "snapshot/snapshot.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace vessel::snapshot {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint32_t kMemoryMib = 2;
constexpr size_t kStateSize = 60 * 1024;
// Where the test's guest RAM holds data; the rest of the memory file is a hole.
constexpr off_t kGuestPageOffset = 1024 * 1024 + 4096;

void WriteFile(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteAt(const std::string& path, off_t offset, std::string_view data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::pwrite(fd, data.data(), data.size(), offset), static_cast<ssize_t>(data.size()));
  ::close(fd);
}

void FlipByte(const std::string& path, off_t offset) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  char byte = 0;
  ASSERT_EQ(::pread(fd, &byte, 1, offset), 1);
  byte = static_cast<char>(byte ^ 0x20);
  ASSERT_EQ(::pwrite(fd, &byte, 1, offset), 1);
  ::close(fd);
}

std::string Pattern(size_t size, unsigned seed) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 131 + seed) >> 3);
  return s;
}

std::string Sha256Of(std::string_view data, const fs::path& scratch) {
  WriteFile(scratch.string(), data);
  auto digest = FileSha256(scratch.string());
  EXPECT_TRUE(digest.has_value()) << digest.error().ToString();
  return digest.value_or("");
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// A scratch directory, removed with everything in it.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "vessel-snapshot-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::string At(const char* name) const { return (root_ / name).string(); }

  fs::path root_;
};

// A snapshot as the engine and WriteManifest leave it: a 60 KiB state and a 2 MiB sparse
// memory file with one page of data.
class SnapshotTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    dir_ = At("snapshot");
    kernel_ = At("vmlinux");
    initramfs_ = At("initramfs.cpio");
    WriteFile(kernel_, "not really a kernel");
    WriteFile(initramfs_, "not really an initramfs");
    ASSERT_TRUE(PrepareDirectory(dir_).has_value());
    WriteFile(File(kStateFile), Pattern(kStateSize, 1));
    WriteFile(File(kMemoryFile), "");
    ASSERT_EQ(::truncate(File(kMemoryFile).c_str(), kMemoryMib * kMiB), 0);
    WriteAt(File(kMemoryFile), kGuestPageOffset, Pattern(4096, 2));
    auto written = WriteManifest(dir_, Valid(), key_);
    ASSERT_TRUE(written.has_value()) << written.error().ToString();
  }

  std::string File(const char* name) const { return dir_ + "/" + name; }

  Manifest Valid() const {
    Manifest m;
    m.engine = "qemu-tcg";
    m.engine_version = "QEMU emulator version 7.2.22";
    m.vessel_version = "0.1.0";
    m.vcpus = 2;
    m.memory_mib = kMemoryMib;
    m.name = "unit test";
    m.kernel_path = kernel_;
    m.kernel_sha256 = FileSha256(kernel_).value_or("");
    m.initramfs_path = initramfs_;
    m.initramfs_sha256 = FileSha256(initramfs_).value_or("");
    m.created_unix_ms = 1'700'000'000'123;
    return m;
  }

  void ExpectFormatError(Depth depth, std::string_view needle) {
    auto opened = Open(dir_, depth, key_);
    ASSERT_FALSE(opened.has_value()) << "expected an error naming \"" << needle << "\"";
    EXPECT_EQ(opened.error().kind(), ErrorKind::kSnapshotFormat) << opened.error().ToString();
    EXPECT_NE(opened.error().message().find(needle), std::string::npos)
        << "\"" << opened.error().message() << "\" does not name \"" << needle << "\"";
  }
  void ExpectFormatError(std::string_view needle) { ExpectFormatError(Depth::kRestore, needle); }

  // Edits the manifest's JSON and gives it a matching checksum, as a writer that got a
  // field wrong would.
  void EditManifest(const std::function<void(json&)>& edit) {
    json object = json::parse(ReadFile(File(kManifestFile)));
    object.erase("manifest_sha256");
    object.erase("manifest_hmac");
    edit(object);
    std::string body = object.dump();
    object["manifest_sha256"] = Sha256Of(body, root_ / "canonical");
    object["manifest_hmac"] = HmacSha256Hex(key_, body).value_or("");
    WriteFile(File(kManifestFile), object.dump(2));
  }

  std::string dir_;
  std::string kernel_;
  std::string initramfs_;
  HostKey key_ = [] {
    HostKey key;
    for (size_t i = 0; i < key.bytes.size(); ++i) key.bytes[i] = static_cast<uint8_t>(i * 7 + 1);
    return key;
  }();
};

TEST_F(SnapshotTest, RoundTrip) {
  for (Depth depth : {Depth::kRestore, Depth::kFull}) {
    auto opened = Open(dir_, depth, key_);
    ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
    Manifest want = Valid();
    const Manifest& got = opened->manifest;
    EXPECT_EQ(got.format_version, kFormatVersion);
    EXPECT_EQ(got.engine, want.engine);
    EXPECT_EQ(got.engine_version, want.engine_version);
    EXPECT_EQ(got.vessel_version, want.vessel_version);
    EXPECT_EQ(got.vcpus, want.vcpus);
    EXPECT_EQ(got.memory_mib, want.memory_mib);
    EXPECT_EQ(got.name, want.name);
    EXPECT_EQ(got.kernel_path, want.kernel_path);
    EXPECT_EQ(got.kernel_sha256, want.kernel_sha256);
    EXPECT_EQ(got.initramfs_path, want.initramfs_path);
    EXPECT_EQ(got.initramfs_sha256, want.initramfs_sha256);
    EXPECT_EQ(got.created_unix_ms, want.created_unix_ms);
    EXPECT_EQ(got.state.size, kStateSize);
    EXPECT_EQ(got.state.sha256, FileSha256(File(kStateFile)).value_or(""));
    EXPECT_EQ(got.memory.size, kMemoryMib * kMiB);
    EXPECT_EQ(got.memory.sha256, MemorySha256(File(kMemoryFile)).value_or(""));
  }
}

TEST_F(SnapshotTest, WritesPrivateFilesAndAChecksummedSignedManifest) {
  EXPECT_EQ(ModeOf(dir_), 0700u);
  EXPECT_EQ(ModeOf(File(kManifestFile)), 0600u);
  EXPECT_EQ(ModeOf(File(kStateFile)), 0600u);
  EXPECT_EQ(ModeOf(File(kMemoryFile)), 0600u);
  EXPECT_FALSE(fs::exists(File(kManifestFile) + std::string(".tmp")));

  json object = json::parse(ReadFile(File(kManifestFile)));
  ASSERT_TRUE(object.is_object());
  std::string recorded = object.at("manifest_sha256").get<std::string>();
  std::string signature = object.at("manifest_hmac").get<std::string>();
  object.erase("manifest_sha256");
  object.erase("manifest_hmac");
  EXPECT_EQ(recorded, Sha256Of(object.dump(), root_ / "canonical"));
  EXPECT_EQ(signature, HmacSha256Hex(key_, object.dump()).value_or(""));
  EXPECT_EQ(object.at("format_version"), 3);
  EXPECT_FALSE(object.contains("image"));
  EXPECT_EQ(object.at("memory").at("size"), kMemoryMib * kMiB);
}

TEST_F(SnapshotTest, ARootImageIsRecorded) {
  for (uint32_t version : {kFormatVersionWithImage, kFormatVersion}) {
    SCOPED_TRACE(version);
    Manifest m = Valid();
    m.format_version = version;
    m.image_digest = "sha256:" + std::string(64, 'a');
    m.image_name = "python";
    ASSERT_TRUE(WriteManifest(dir_, m, key_).has_value());
    auto opened = Open(dir_, Depth::kFull, key_);
    ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
    EXPECT_EQ(opened->manifest.format_version, version);
    EXPECT_EQ(opened->manifest.image_digest, m.image_digest);
    EXPECT_EQ(opened->manifest.image_name, "python");
  }
}

TEST_F(SnapshotTest, FormatTwoWithoutItsImageIsRefused) {
  Manifest m = Valid();
  m.format_version = kFormatVersionWithImage;
  ASSERT_TRUE(WriteManifest(dir_, m, key_).has_value());
  ExpectFormatError("manifest.json: field image missing or not an object");
}

TEST_F(SnapshotTest, AnImageDigestThatIsNoDigestIsRefused) {
  Manifest m = Valid();
  m.format_version = kFormatVersion;
  m.image_digest = "md5:1234";
  auto written = WriteManifest(dir_, m, key_);
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().kind(), ErrorKind::kSnapshotFormat);
  EXPECT_NE(written.error().message().find("image.digest"), std::string::npos);
}

TEST_F(SnapshotTest, TheEgressPolicyIsRecordedAndAnOlderManifestHasNone) {
  Manifest m = Valid();
  m.network = {.allow = {"example.com", "*.pythonhosted.org:8443"},
               .max_connections = 8,
               .idle_timeout = std::chrono::seconds(30),
               .max_bytes = 1 << 20};
  ASSERT_TRUE(WriteManifest(dir_, m, key_).has_value());
  auto opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
  const NetworkPolicy& got = opened->manifest.network;
  EXPECT_EQ(got.allow, m.network.allow);
  EXPECT_EQ(got.max_connections, 8u);
  EXPECT_EQ(got.idle_timeout, std::chrono::seconds(30));
  EXPECT_EQ(got.max_bytes, uint64_t{1} << 20);

  // A snapshot of a Vessel without egress: none.
  EditManifest([](json& o) { o.erase("network"); });
  opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
  EXPECT_TRUE(opened->manifest.network.allow.empty());
  EXPECT_EQ(opened->manifest.network.max_connections, NetworkPolicy{}.max_connections);
}

TEST_F(SnapshotTest, AMalformedEgressPolicyIsRefused) {
  struct Case {
    std::function<void(json&)> edit;
    std::string message;
  };
  std::vector<Case> cases = {
      {[](json& o) { o["network"] = "example.com"; }, "field network is not an object"},
      {[](json& o) { o["network"].erase("allow"); }, "field network.allow missing or not an array"},
      {[](json& o) {
         o["network"]["allow"] = {"example.com", 80};
       },
       "field network.allow has an entry that is not a string"},
      {[](json& o) {
         o["network"]["allow"] = std::vector<std::string>(kMaxNetworkRules + 1, "example.com");
       },
       fmt::format("field network.allow has {} entries, more than {}", kMaxNetworkRules + 1,
                   kMaxNetworkRules)},
      {[](json& o) { o["network"]["max_connections"] = -1; },
       "field network.max_connections is -1, out of range"},
      {[](json& o) { o["network"]["idle_timeout_s"] = "300"; },
       "field network.idle_timeout_s missing or not a number"},
      {[](json& o) { o["network"].erase("max_bytes"); },
       "field network.max_bytes missing or not a number"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    ASSERT_TRUE(WriteManifest(dir_, Valid(), key_).has_value());
    EditManifest(c.edit);
    ExpectFormatError("manifest.json: " + c.message);
  }
}

TEST_F(SnapshotTest, RewritingAManifestReplacesIt) {
  Manifest m = Valid();
  m.name = "second";
  ASSERT_TRUE(WriteManifest(dir_, m, key_).has_value());
  auto opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
  EXPECT_EQ(opened->manifest.name, "second");
}

// The manifest file.

TEST_F(SnapshotTest, MissingManifest) {
  fs::remove(File(kManifestFile));
  ExpectFormatError("manifest.json: missing");
}

TEST_F(SnapshotTest, MissingDirectoryIsAMissingManifest) {
  dir_ = At("nowhere");
  ExpectFormatError("manifest.json: missing");
}

TEST_F(SnapshotTest, EmptyManifest) {
  WriteFile(File(kManifestFile), "");
  ExpectFormatError("manifest.json: empty");
}

TEST_F(SnapshotTest, TruncatedManifest) {
  std::string text = ReadFile(File(kManifestFile));
  WriteFile(File(kManifestFile), text.substr(0, text.size() / 2));
  ExpectFormatError("manifest.json: truncated");
}

TEST_F(SnapshotTest, FlippedByteInTheManifest) {
  std::string text = ReadFile(File(kManifestFile));
  size_t at = text.find("QEMU emulator");
  ASSERT_NE(at, std::string::npos);
  text[at] = 'q';
  WriteFile(File(kManifestFile), text);
  ExpectFormatError("manifest.json: checksum mismatch");
}

TEST_F(SnapshotTest, ManifestThatIsNotJson) {
  WriteFile(File(kManifestFile), "{\"engine\": qemu}");
  ExpectFormatError("manifest.json: not valid JSON");
}

TEST_F(SnapshotTest, ManifestWithTrailingGarbage) {
  WriteFile(File(kManifestFile), ReadFile(File(kManifestFile)) + "}");
  ExpectFormatError("manifest.json: not valid JSON");
}

TEST_F(SnapshotTest, ManifestWithANumberTooLarge) {
  WriteFile(File(kManifestFile), "{\"engine\": 1e999}");
  ExpectFormatError("manifest.json: not valid JSON");
}

TEST_F(SnapshotTest, ManifestThatIsNotAnObject) {
  WriteFile(File(kManifestFile), "[1, 2, 3]");
  ExpectFormatError("manifest.json: not a JSON object");
}

TEST_F(SnapshotTest, HugeManifest) {
  WriteFile(File(kManifestFile), "{\"pad\": \"" + std::string(kMaxManifestSize, 'x') + "\"}");
  ExpectFormatError("manifest.json: 1048587 bytes, larger than the 1048576-byte cap");
}

TEST_F(SnapshotTest, DeeplyNestedManifest) {
  WriteFile(File(kManifestFile),
            "{\"a\": " + std::string(100'000, '[') + std::string(100'000, ']') + "}");
  ExpectFormatError("manifest.json: nested deeper than");
}

TEST_F(SnapshotTest, ManifestWithoutChecksum) {
  json object = json::parse(ReadFile(File(kManifestFile)));
  object.erase("manifest_sha256");
  WriteFile(File(kManifestFile), object.dump());
  ExpectFormatError("manifest.json: field manifest_sha256 missing");
}

TEST_F(SnapshotTest, UnknownFormatVersion) {
  Manifest m = Valid();
  m.format_version = 7;
  ASSERT_TRUE(WriteManifest(dir_, m, key_).has_value());
  ExpectFormatError("manifest.json: unknown format version 7 (this Vessel reads 1 to 3)");
}

TEST_F(SnapshotTest, MissingField) {
  for (const char* field : {"format_version", "engine", "engine_version", "vessel_version", "vcpus",
                            "memory_mib", "name", "kernel_path", "kernel_sha256", "initramfs_path",
                            "initramfs_sha256", "created_unix_ms", "state", "memory"}) {
    SCOPED_TRACE(field);
    ASSERT_TRUE(WriteManifest(dir_, Valid(), key_).has_value());
    EditManifest([&](json& object) { object.erase(field); });
    ExpectFormatError(fmt::format("manifest.json: field {} missing", field));
  }
  ASSERT_TRUE(WriteManifest(dir_, Valid(), key_).has_value());
  EditManifest([](json& object) { object["memory"].erase("sha256"); });
  ExpectFormatError("manifest.json: field memory.sha256 missing or not a string");
}

TEST_F(SnapshotTest, FieldOfTheWrongType) {
  struct Case {
    std::function<void(json&)> edit;
    std::string message;
  };
  std::vector<Case> cases = {
      {[](json& o) { o["memory_mib"] = "2"; }, "field memory_mib missing or not a number"},
      {[](json& o) { o["vcpus"] = 2.5; }, "field vcpus is not an integer"},
      {[](json& o) { o["vcpus"] = -1; }, "field vcpus is -1, out of range"},
      {[](json& o) { o["created_unix_ms"] = json::array(); }, "field created_unix_ms missing"},
      {[](json& o) { o["engine"] = 1; }, "field engine missing or not a string"},
      {[](json& o) { o["name"] = nullptr; }, "field name missing or not a string"},
      {[](json& o) { o["state"] = "60 KiB"; }, "field state missing or not an object"},
      {[](json& o) { o["state"]["size"] = true; }, "field state.size missing or not a number"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    ASSERT_TRUE(WriteManifest(dir_, Valid(), key_).has_value());
    EditManifest(c.edit);
    ExpectFormatError("manifest.json: " + c.message);
  }
}

TEST_F(SnapshotTest, FieldWithAnInsaneValue) {
  struct Case {
    std::function<void(json&)> edit;
    std::string message;
  };
  std::vector<Case> cases = {
      {[](json& o) { o["vcpus"] = 0; }, "field vcpus is 0, outside 1..64"},
      {[](json& o) { o["vcpus"] = 65; }, "field vcpus is 65, outside 1..64"},
      {[](json& o) { o["memory_mib"] = 0; }, "field memory_mib is 0"},
      {[](json& o) { o["memory_mib"] = 3; }, "field memory.size is 2097152, but memory_mib 3"},
      {[](json& o) { o["engine"] = ""; }, "field engine is empty"},
      {[](json& o) { o["kernel_sha256"] = "abc"; }, "field kernel_sha256 is not 64 lowercase hex"},
      {[](json& o) { o["initramfs_sha256"] = std::string(64, 'G'); },
       "field initramfs_sha256 is not 64 lowercase hex"},
      {[](json& o) {
         std::string upper = o["state"]["sha256"];
         for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
         o["state"]["sha256"] = upper;
       },
       "field state.sha256 is not 64 lowercase hex"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    ASSERT_TRUE(WriteManifest(dir_, Valid(), key_).has_value());
    EditManifest(c.edit);
    ExpectFormatError("manifest.json: " + c.message);
  }
}

TEST_F(SnapshotTest, UnknownFieldsAreIgnored) {
  EditManifest([](json& o) { o["added_later"] = {{"x", 1}}; });
  EXPECT_TRUE(Open(dir_, Depth::kFull, key_).has_value());
}

// The state file.

TEST_F(SnapshotTest, TruncatedState) {
  ASSERT_EQ(::truncate(File(kStateFile).c_str(), 1234), 0);
  ExpectFormatError("state: size 1234, manifest says 61440");
}

TEST_F(SnapshotTest, FlippedByteInTheState) {
  FlipByte(File(kStateFile), kStateSize / 2);
  ExpectFormatError("state: checksum mismatch");
}

TEST_F(SnapshotTest, MissingState) {
  fs::remove(File(kStateFile));
  ExpectFormatError("state: missing");
}

TEST_F(SnapshotTest, StateThatIsADirectory) {
  fs::remove(File(kStateFile));
  fs::create_directory(File(kStateFile));
  ExpectFormatError("state: not a regular file");
}

// The memory file.

TEST_F(SnapshotTest, MissingMemory) {
  fs::remove(File(kMemoryFile));
  ExpectFormatError("memory: missing");
}

TEST_F(SnapshotTest, TruncatedMemory) {
  ASSERT_EQ(::truncate(File(kMemoryFile).c_str(), kMiB), 0);
  ExpectFormatError("memory: size 1048576, manifest says 2097152");
}

TEST_F(SnapshotTest, FlippedByteInTheMemoryIsFoundByARestoreToo) {
  FlipByte(File(kMemoryFile), kGuestPageOffset + 100);
  ExpectFormatError(Depth::kRestore, "memory: checksum mismatch");
  ExpectFormatError(Depth::kFull, "memory: checksum mismatch");
}

// Formats 1 and 2 digest the memory file as a whole; they are still read and checked so.
TEST_F(SnapshotTest, FormatsOneAndTwoDigestTheWholeMemoryFile) {
  for (uint32_t version : {kFormatVersionWithoutImage, kFormatVersionWithImage}) {
    SCOPED_TRACE(version);
    Manifest m = Valid();
    m.format_version = version;
    if (version == kFormatVersionWithImage) m.image_digest = "sha256:" + std::string(64, 'b');
    ASSERT_TRUE(WriteManifest(dir_, m, key_).has_value());
    auto opened = Open(dir_, Depth::kFull, key_);
    ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
    EXPECT_EQ(opened->manifest.memory.sha256, FileSha256(File(kMemoryFile)).value_or(""));
    EXPECT_NE(opened->manifest.memory.sha256, MemorySha256(File(kMemoryFile)).value_or(""));
  }
  FlipByte(File(kMemoryFile), kGuestPageOffset + 7);
  ExpectFormatError(Depth::kFull, "memory: checksum mismatch");
}

TEST_F(SnapshotTest, ByteWrittenIntoAHoleOfTheMemory) {
  WriteAt(File(kMemoryFile), 12345, "x");
  ExpectFormatError(Depth::kRestore, "memory: checksum mismatch");
  ExpectFormatError(Depth::kFull, "memory: checksum mismatch");
}

// A restore skips hashing only the memory file this host sealed, unwritten since; the
// file's owner can fake that (write, then set the old mtime back), which only a full
// check sees. That owner is the user whose snapshot it is.
TEST_F(SnapshotTest, ARestoreTakesTheSealedMemoryFileUnreadAndAFullCheckReadsIt) {
  struct stat before {};
  ASSERT_EQ(::stat(File(kMemoryFile).c_str(), &before), 0);
  FlipByte(File(kMemoryFile), kGuestPageOffset + 100);
  timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, File(kMemoryFile).c_str(), times, 0), 0);
  EXPECT_TRUE(Open(dir_, Depth::kRestore, key_).has_value());
  ExpectFormatError(Depth::kFull, "memory: checksum mismatch");
}

TEST_F(SnapshotTest, ACopiedMemoryFileIsHashedAtRestore) {
  std::string copy = File("memory-copy");
  ASSERT_TRUE(fs::copy_file(File(kMemoryFile), copy));
  ASSERT_EQ(::rename(copy.c_str(), File(kMemoryFile).c_str()), 0);
  EXPECT_TRUE(Open(dir_, Depth::kRestore, key_).has_value());
  FlipByte(File(kMemoryFile), 7);
  ExpectFormatError(Depth::kRestore, "memory: checksum mismatch");
}

TEST_F(SnapshotTest, TheOpenedFilesAreTheOnesChecked) {
  auto opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
  struct stat st {};
  struct stat by_path {};
  ASSERT_EQ(::fstat(opened->state.get(), &st), 0);
  ASSERT_EQ(::stat(File(kStateFile).c_str(), &by_path), 0);
  EXPECT_EQ(st.st_ino, by_path.st_ino);
  // Swapping the files afterwards changes nothing for the holder of the descriptors.
  ASSERT_EQ(::rename(File(kMemoryFile).c_str(), File("elsewhere").c_str()), 0);
  WriteFile(File(kMemoryFile), "swapped");
  ASSERT_EQ(::fstat(opened->memory.get(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kMemoryMib * kMiB);
}

// The signature.

TEST_F(SnapshotTest, AManifestSignedByAnotherHostIsRefused) {
  HostKey other = key_;
  other.bytes[0] ^= 1;
  auto opened = Open(dir_, Depth::kRestore, other);
  ASSERT_FALSE(opened.has_value());
  EXPECT_EQ(opened.error().kind(), ErrorKind::kSnapshotFormat);
  EXPECT_NE(opened.error().message().find("manifest.json: not signed by this host's key"),
            std::string::npos)
      << opened.error().message();
}

// What someone without the key can do: change a field and compute a fresh checksum.
TEST_F(SnapshotTest, AnAlteredManifestWithAFreshChecksumIsRefused) {
  json object = json::parse(ReadFile(File(kManifestFile)));
  std::string signature = object.at("manifest_hmac");
  object.erase("manifest_sha256");
  object.erase("manifest_hmac");
  object["kernel_path"] = "/tmp/their-kernel";
  std::string body = object.dump();
  object["manifest_sha256"] = Sha256Of(body, root_ / "canonical");
  object["manifest_hmac"] = signature;
  WriteFile(File(kManifestFile), object.dump(2));
  ExpectFormatError("manifest.json: not signed by this host's key");
}

TEST_F(SnapshotTest, AnUnsignedManifestIsRefused) {
  json object = json::parse(ReadFile(File(kManifestFile)));
  object.erase("manifest_hmac");
  WriteFile(File(kManifestFile), object.dump(2));
  ExpectFormatError("manifest.json: not signed (made by an older Vessel, or stripped)");
  object["manifest_hmac"] = 42;
  WriteFile(File(kManifestFile), object.dump(2));
  ExpectFormatError("manifest.json: not signed by this host's key");
}

TEST_F(SnapshotTest, ImportSignsASnapshotForAnotherHost) {
  HostKey other = key_;
  other.bytes[31] ^= 0x80;
  auto imported = Import(dir_, other);
  ASSERT_TRUE(imported.has_value()) << imported.error().ToString();
  EXPECT_EQ(imported->name, "unit test");
  EXPECT_TRUE(Open(dir_, Depth::kFull, other).has_value());
  ExpectFormatError("manifest.json: not signed by this host's key");
}

TEST_F(SnapshotTest, ImportChecksEverythingButTheSignatureAndSignsNothingDamaged) {
  HostKey other = key_;
  other.bytes[5] ^= 2;
  std::string manifest = ReadFile(File(kManifestFile));
  WriteAt(File(kMemoryFile), 99, "x");
  auto imported = Import(dir_, other);
  ASSERT_FALSE(imported.has_value());
  EXPECT_NE(imported.error().message().find("memory: checksum mismatch"), std::string::npos)
      << imported.error().message();
  EXPECT_EQ(ReadFile(File(kManifestFile)), manifest);
}

// The writer.

TEST_F(SnapshotTest, WriterRefusesAnInvalidManifest) {
  fs::remove(File(kManifestFile));
  Manifest m = Valid();
  m.vcpus = 0;
  auto written = WriteManifest(dir_, m, key_);
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().kind(), ErrorKind::kSnapshotFormat);
  EXPECT_NE(written.error().message().find("field vcpus is 0"), std::string::npos)
      << written.error().message();
  EXPECT_FALSE(fs::exists(File(kManifestFile)));
}

TEST_F(SnapshotTest, WriterRefusesMemoryOfTheWrongSize) {
  Manifest m = Valid();
  m.memory_mib = 4;
  auto written = WriteManifest(dir_, m, key_);
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().kind(), ErrorKind::kSnapshotFormat);
  EXPECT_NE(written.error().message().find("memory.size is 2097152, but memory_mib 4"),
            std::string::npos)
      << written.error().message();
}

TEST_F(SnapshotTest, WriterNeedsTheDataFiles) {
  fs::remove(File(kMemoryFile));
  auto written = WriteManifest(dir_, Valid(), key_);
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().kind(), ErrorKind::kSnapshotFormat);
  EXPECT_NE(written.error().message().find("memory: missing"), std::string::npos)
      << written.error().message();
}

TEST_F(SnapshotTest, WriterRefusesTextThatIsNotUtf8) {
  Manifest m = Valid();
  m.name = "bad \xff name";
  auto written = WriteManifest(dir_, m, key_);
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().kind(), ErrorKind::kInvalidConfig) << written.error().ToString();
}

// Compatibility.

TEST_F(SnapshotTest, CompatibleWithTheSameEngineAndAssets) {
  auto opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value());
  auto compatible = CheckCompatible(opened->manifest, "qemu-tcg", kernel_, initramfs_);
  EXPECT_TRUE(compatible.has_value()) << compatible.error().ToString();
}

TEST_F(SnapshotTest, AssetsMayMoveIfTheirContentStays) {
  auto opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value());
  std::string moved = At("vmlinux.moved");
  fs::copy_file(kernel_, moved);
  EXPECT_TRUE(CheckCompatible(opened->manifest, "qemu-tcg", moved, initramfs_).has_value());
}

TEST_F(SnapshotTest, IncompatibleWithAnotherEngine) {
  auto opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value());
  auto compatible = CheckCompatible(opened->manifest, "qemu-kvm", kernel_, initramfs_);
  ASSERT_FALSE(compatible.has_value());
  EXPECT_EQ(compatible.error().kind(), ErrorKind::kSnapshotFormat);
  EXPECT_EQ(compatible.error().message(),
            "snapshot was taken by engine qemu-tcg, this is qemu-kvm");
}

TEST_F(SnapshotTest, IncompatibleWithAChangedKernel) {
  auto opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value());
  ASSERT_TRUE(AssetSha256(kernel_).has_value());  // cached now
  WriteFile(kernel_, "another kernel");
  auto compatible = CheckCompatible(opened->manifest, "qemu-tcg", kernel_, initramfs_);
  ASSERT_FALSE(compatible.has_value());
  EXPECT_EQ(compatible.error().kind(), ErrorKind::kSnapshotFormat);
  EXPECT_NE(compatible.error().message().find("kernel " + kernel_ + " is not the one the snapshot was taken with"),
            std::string::npos)
      << compatible.error().message();
}

TEST_F(SnapshotTest, IncompatibleWithAnInitramfsChangedInPlace) {
  auto opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value());
  ASSERT_TRUE(AssetSha256(initramfs_).has_value());
  // Same size, same inode; only the timestamps tell.
  WriteAt(initramfs_, 0, "N");
  timespec times[2] = {{0, UTIME_OMIT}, {1'000'000'000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, initramfs_.c_str(), times, 0), 0);
  auto compatible = CheckCompatible(opened->manifest, "qemu-tcg", kernel_, initramfs_);
  ASSERT_FALSE(compatible.has_value());
  EXPECT_NE(compatible.error().message().find("initramfs " + initramfs_ + " is not the one"),
            std::string::npos)
      << compatible.error().message();
}

TEST_F(SnapshotTest, MissingKernelIsAHostError) {
  auto opened = Open(dir_, Depth::kRestore, key_);
  ASSERT_TRUE(opened.has_value());
  fs::remove(kernel_);
  auto compatible = CheckCompatible(opened->manifest, "qemu-tcg", kernel_, initramfs_);
  ASSERT_FALSE(compatible.has_value());
  EXPECT_EQ(compatible.error().kind(), ErrorKind::kHostIo);
  EXPECT_EQ(compatible.error().errno_value(), ENOENT);
}

// PrepareDirectory.

using SnapshotDirectoryTest = TempDirTest;

void ExpectInvalidDirectory(const Result<void>& result, std::string_view needle) {
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().kind(), ErrorKind::kInvalidConfig) << result.error().ToString();
  EXPECT_EQ(result.error().subject(), "snapshot directory");
  EXPECT_NE(result.error().message().find(needle), std::string::npos) << result.error().message();
}

TEST_F(SnapshotDirectoryTest, CreatesAPrivateDirectory) {
  std::string dir = At("new");
  mode_t old_umask = ::umask(0);
  auto prepared = PrepareDirectory(dir);
  ::umask(old_umask);
  ASSERT_TRUE(prepared.has_value()) << prepared.error().ToString();
  EXPECT_TRUE(fs::is_directory(dir));
  EXPECT_EQ(ModeOf(dir), 0700u);
}

TEST_F(SnapshotDirectoryTest, AcceptsAnEmptyDirectoryAndMakesItPrivate) {
  std::string dir = At("empty");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  ASSERT_TRUE(PrepareDirectory(dir).has_value());
  EXPECT_EQ(ModeOf(dir), 0700u);
}

TEST_F(SnapshotDirectoryTest, RejectsANonEmptyDirectory) {
  std::string dir = At("full");
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  WriteFile(dir + "/old", "x");
  ExpectInvalidDirectory(PrepareDirectory(dir), "is not empty");
}

TEST_F(SnapshotDirectoryTest, RejectsAFile) {
  std::string file = At("file");
  WriteFile(file, "x");
  ExpectInvalidDirectory(PrepareDirectory(file), "is not a directory");
}

TEST_F(SnapshotDirectoryTest, RejectsASymbolicLink) {
  std::string target = At("target");
  ASSERT_EQ(::mkdir(target.c_str(), 0700), 0);
  std::string link = At("link");
  fs::create_directory_symlink(target, link);
  ExpectInvalidDirectory(PrepareDirectory(link), "is a symbolic link");
}

TEST_F(SnapshotDirectoryTest, RejectsAMissingParent) {
  ExpectInvalidDirectory(PrepareDirectory(At("no/such")), "its parent does not exist");
}

// Digests.

using SnapshotSha256Test = TempDirTest;

TEST_F(SnapshotSha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Of("", At("empty")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Of("abc", At("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Of(std::string(1'000'000, 'a'), At("million")),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_F(SnapshotSha256Test, SparseFileHashesLikeTheSameBytesWrittenDensely) {
  // Data at the start, across a chunk boundary and in the middle; holes between them
  // and at the end, which is not chunk-aligned.
  const uint64_t size = 5 * kMiB + 123;
  std::string dense(size, '\0');
  std::string sparse_path = At("sparse");
  WriteFile(sparse_path, "");
  ASSERT_EQ(::truncate(sparse_path.c_str(), static_cast<off_t>(size)), 0);
  for (auto [offset, length] :
       {std::pair<uint64_t, size_t>{0, 100}, {kMiB - 10, 20}, {2 * kMiB + 7, 3 * kMiB / 2}}) {
    std::string data = Pattern(length, static_cast<unsigned>(offset));
    dense.replace(offset, length, data);
    WriteAt(sparse_path, static_cast<off_t>(offset), data);
  }
  struct stat st {};
  ASSERT_EQ(::stat(sparse_path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);

  auto sparse_digest = FileSha256(sparse_path);
  ASSERT_TRUE(sparse_digest.has_value()) << sparse_digest.error().ToString();
  EXPECT_EQ(*sparse_digest, Sha256Of(dense, At("dense")));
}

TEST_F(SnapshotSha256Test, EntirelySparseFile) {
  std::string path = At("hole");
  WriteFile(path, "");
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(3 * kMiB)), 0);
  EXPECT_EQ(FileSha256(path).value_or(""), Sha256Of(std::string(3 * kMiB, '\0'), At("zeros")));
}

TEST_F(SnapshotSha256Test, ErrorsAreHostErrors) {
  auto missing = FileSha256(At("missing"));
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kHostIo);
  EXPECT_EQ(missing.error().errno_value(), ENOENT);

  auto directory = FileSha256(root_.string());
  ASSERT_FALSE(directory.has_value());
  EXPECT_EQ(directory.error().kind(), ErrorKind::kHostIo);
}

TEST_F(SnapshotSha256Test, AssetDigestFollowsTheFile) {
  std::string path = At("asset");
  WriteFile(path, "abc");
  EXPECT_EQ(AssetSha256(path).value_or(""),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(AssetSha256(path).value_or(""),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  WriteFile(path, "");
  EXPECT_EQ(AssetSha256(path).value_or(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  fs::remove(path);
  EXPECT_FALSE(AssetSha256(path).has_value());
}

TEST_F(SnapshotSha256Test, AssetDigestFromManyThreads) {
  std::string path = At("asset");
  WriteFile(path, Pattern(3 * kMiB, 7));
  std::string want = FileSha256(path).value_or("");
  std::vector<std::string> got(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&, i] { got[i] = AssetSha256(path).value_or("error"); });
  }
  for (auto& t : threads) t.join();
  for (const auto& digest : got) EXPECT_EQ(digest, want);
}

}  // namespace
}  // namespace vessel::snapshot

namespace vessel::snapshot {
namespace {

// The host key.
class HostKeyTest : public TempDirTest {};

TEST_F(HostKeyTest, IsMadeOnceWithPrivateModesAndThenRead) {
  std::string dir = At("config/vessel");
  auto made = LoadOrCreateHostKey(dir);
  ASSERT_TRUE(made.has_value()) << made.error().ToString();
  EXPECT_EQ(ModeOf(dir), 0700u);
  EXPECT_EQ(ModeOf(dir + "/" + kHostKeyFile), 0600u);
  std::string text = ReadFile(dir + "/" + kHostKeyFile);
  EXPECT_EQ(text.size(), 65u);
  EXPECT_EQ(text.back(), '\n');
  auto again = LoadOrCreateHostKey(dir);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->bytes, made->bytes);
  EXPECT_NE(made->bytes, HostKey{}.bytes);
}

TEST_F(HostKeyTest, ProcessesRacingToMakeItAgreeOnOne) {
  std::string dir = At("racing");
  std::vector<HostKey> keys(8);
  std::vector<std::thread> threads;
  for (auto& key : keys) {
    threads.emplace_back([&dir, &key] { key = LoadOrCreateHostKey(dir).value_or(HostKey{}); });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& key : keys) EXPECT_EQ(key.bytes, keys[0].bytes);
  EXPECT_NE(keys[0].bytes, HostKey{}.bytes);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST_F(HostKeyTest, AKeyOthersCouldReadOrReplaceIsRefused) {
  std::string dir = At("vessel");
  ASSERT_TRUE(LoadOrCreateHostKey(dir).has_value());
  std::string path = dir + "/" + kHostKeyFile;
  auto refused = [&](std::string_view needle) {
    auto key = LoadOrCreateHostKey(dir);
    ASSERT_FALSE(key.has_value()) << needle;
    EXPECT_NE(key.error().message().find(needle), std::string::npos) << key.error().message();
  };
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  refused("has mode 644");
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  WriteFile(path, "short\n");
  refused("does not hold 64 hex digits and a newline");
  WriteFile(path, std::string(64, 'Z') + "\n");
  refused("holds something other than lowercase hex");
  ASSERT_TRUE(fs::remove(path));
  WriteFile(At("elsewhere"), std::string(64, 'a') + "\n");
  ASSERT_EQ(::chmod(At("elsewhere").c_str(), 0600), 0);
  fs::create_symlink(At("elsewhere"), path);
  refused("is a symlink");
  ASSERT_TRUE(fs::remove(path));
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  refused("is not a regular file");
}

TEST_F(HostKeyTest, HmacIsHmacSha256) {
  // printf Vessel | openssl dgst -sha256 -mac HMAC -macopt hexkey:0102...20
  HostKey key;
  for (size_t i = 0; i < key.bytes.size(); ++i) key.bytes[i] = static_cast<uint8_t>(i + 1);
  auto mac = HmacSha256Hex(key, "Vessel");
  ASSERT_TRUE(mac.has_value());
  EXPECT_EQ(*mac, "b5c8af7586a876e06ef1a03a0c33c1ab907fb436bd1a3f59fa1ae4c6884a58e8");
}

}  // namespace
// MemorySha256 as format 3 defines it, computed here the slow way: every page read and
// hashed, the last one as short as it is.
std::string PagesDigestTheSlowWay(const std::string& data) {
  std::string concatenated;
  for (size_t at = 0; at < data.size(); at += kMemoryDigestPage) {
    std::string page = data.substr(at, kMemoryDigestPage);
    std::array<unsigned char, 32> digest{};
    EXPECT_EQ(EVP_Digest(page.data(), page.size(), digest.data(), nullptr, EVP_sha256(), nullptr),
              1);
    concatenated.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  }
  std::array<unsigned char, 32> top{};
  EXPECT_EQ(EVP_Digest(concatenated.data(), concatenated.size(), top.data(), nullptr, EVP_sha256(),
                       nullptr),
            1);
  std::string hex;
  for (unsigned char byte : top) hex += fmt::format("{:02x}", byte);
  return hex;
}

TEST_F(TempDirTest, MemoryDigestIsTheDigestOfItsPagesDigests) {
  // Data, a hole, zeros written densely, a page of data in the middle of a hole, and a
  // short last page: each digested as its bytes, holes and zeros alike.
  std::string path = At("memory");
  std::string content = Pattern(3 * kMemoryDigestPage + 100, 5);
  content += std::string(5 * kMemoryDigestPage, '\0');
  content += Pattern(kMemoryDigestPage, 6);
  content += std::string(64 * kMemoryDigestPage, '\0');
  content += Pattern(kMemoryDigestPage - 1, 7);
  WriteFile(path, "");
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(content.size())), 0);
  WriteAt(path, 0, content.substr(0, 3 * kMemoryDigestPage + 100));
  WriteAt(path, 4 * kMemoryDigestPage, std::string(kMemoryDigestPage, '\0'));
  size_t middle = 3 * kMemoryDigestPage + 100 + 5 * kMemoryDigestPage;
  WriteAt(path, static_cast<off_t>(middle), content.substr(middle, kMemoryDigestPage));
  size_t tail = content.size() - (kMemoryDigestPage - 1);
  WriteAt(path, static_cast<off_t>(tail), content.substr(tail));
  ASSERT_EQ(ReadFile(path), content);
  std::string want = PagesDigestTheSlowWay(content);
  EXPECT_EQ(MemorySha256(path).value_or(""), want);
  // A dense copy of the same bytes has the same digest.
  std::string dense = At("dense");
  WriteFile(dense, content);
  EXPECT_EQ(MemorySha256(dense).value_or(""), want);
  // One byte more in what was a hole changes it.
  WriteAt(path, static_cast<off_t>(middle + 10 * kMemoryDigestPage), "x");
  EXPECT_NE(MemorySha256(path).value_or(want), want);
}

TEST_F(TempDirTest, MemoryDigestIsTheSameWhereverTheThreadsSegmentsMeet) {
  // 100 MiB and a short page: the pages are digested in segments of 32 MiB on several
  // threads, and the digests joined in order. Data on both sides of each segment's edge.
  constexpr size_t kMib = 1 << 20;
  std::string content(100 * kMib + 10, '\0');
  std::string path = At("memory");
  WriteFile(path, "");
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(content.size())), 0);
  uint8_t seed = 1;
  for (size_t at : {size_t{0}, 32 * kMib - kMemoryDigestPage, 32 * kMib, 64 * kMib - 1,
                    96 * kMib + 3, 100 * kMib}) {
    std::string data = Pattern(std::min<size_t>(kMemoryDigestPage, content.size() - at), seed++);
    content.replace(at, data.size(), data);
    WriteAt(path, static_cast<off_t>(at), data);
  }
  EXPECT_EQ(MemorySha256(path).value_or(""), PagesDigestTheSlowWay(content));
}

TEST_F(TempDirTest, MemoryDigestOfAnEmptyFileIsThatOfNoPages) {
  std::string path = At("empty");
  WriteFile(path, "");
  EXPECT_EQ(MemorySha256(path).value_or(""), PagesDigestTheSlowWay(""));
}

}  // namespace vessel::snapshot
