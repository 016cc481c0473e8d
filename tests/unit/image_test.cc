// The guest image store: names, recipes, imports made safe entry by entry, and the store's
// refusals to remove what a sandbox or a snapshot still needs. Every test has a store of
// its own in a temporary directory; imports pack real erofs files with mkfs.erofs, and
// nothing runs mmdebstrap.
#include "image/image.h"

#include <archive.h>
#include <archive_entry.h>
#include <elf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/subprocess.h"

namespace vessel::image {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr milliseconds kToolTimeout{30'000};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(out.good()) << path;
}

// The names of the entries of `dir`, or none when it does not exist.
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

// A 64-byte ELF header of a program for `machine`: all CheckArchitecture reads.
std::string ElfHeader(uint16_t machine) {
  Elf64_Ehdr header{};
  std::memcpy(header.e_ident, ELFMAG, SELFMAG);
  header.e_ident[EI_CLASS] = ELFCLASS64;
  header.e_ident[EI_DATA] = ELFDATA2LSB;
  header.e_ident[EI_VERSION] = EV_CURRENT;
  header.e_type = ET_EXEC;
  header.e_machine = machine;
  header.e_version = EV_CURRENT;
  header.e_ehsize = sizeof(Elf64_Ehdr);
  return std::string(reinterpret_cast<const char*>(&header), sizeof(header));
}

// One entry of a tarball a test writes.
struct TarEntry {
  std::string path;
  mode_t type = AE_IFREG;
  mode_t perm = 0644;
  std::string data;      // a file's bytes
  std::string symlink;   // a symbolic link's target
  std::string hardlink;  // a hard link's target
};

TarEntry Dir(std::string path) { return {.path = std::move(path), .type = AE_IFDIR, .perm = 0755}; }
TarEntry File(std::string path, std::string data, mode_t perm = 0644) {
  return {.path = std::move(path), .perm = perm, .data = std::move(data)};
}
TarEntry Symlink(std::string path, std::string target) {
  return {.path = std::move(path), .type = AE_IFLNK, .perm = 0777, .symlink = std::move(target)};
}
TarEntry HardLink(std::string path, std::string target) {
  return {.path = std::move(path), .hardlink = std::move(target)};
}

void WriteTarball(const std::string& path, const std::vector<TarEntry>& entries) {
  std::unique_ptr<archive, decltype(&archive_write_free)> writer(archive_write_new(),
                                                                 archive_write_free);
  ASSERT_EQ(archive_write_set_format_pax_restricted(writer.get()), ARCHIVE_OK);
  ASSERT_EQ(archive_write_open_filename(writer.get(), path.c_str()), ARCHIVE_OK)
      << archive_error_string(writer.get());
  for (const auto& e : entries) {
    std::unique_ptr<archive_entry, decltype(&archive_entry_free)> entry(archive_entry_new(),
                                                                        archive_entry_free);
    archive_entry_set_pathname(entry.get(), e.path.c_str());
    archive_entry_set_filetype(entry.get(), e.type);
    archive_entry_set_perm(entry.get(), e.perm);
    archive_entry_set_mtime(entry.get(), 1'700'000'000, 0);
    if (!e.symlink.empty()) archive_entry_set_symlink(entry.get(), e.symlink.c_str());
    if (!e.hardlink.empty()) archive_entry_set_hardlink(entry.get(), e.hardlink.c_str());
    if (e.type == AE_IFCHR || e.type == AE_IFBLK)
      archive_entry_set_rdev(entry.get(), makedev(1, 3));
    archive_entry_set_size(entry.get(), static_cast<la_int64_t>(e.data.size()));
    ASSERT_EQ(archive_write_header(writer.get(), entry.get()), ARCHIVE_OK)
        << e.path << ": " << archive_error_string(writer.get());
    if (!e.data.empty()) {
      ASSERT_EQ(archive_write_data(writer.get(), e.data.data(), e.data.size()),
                static_cast<la_ssize_t>(e.data.size()));
    }
  }
  ASSERT_EQ(archive_write_close(writer.get()), ARCHIVE_OK) << archive_error_string(writer.get());
}

const std::string& Busybox() {
  static const std::string bytes = ReadFile("/bin/busybox");
  return bytes;
}

// The smallest tree an import accepts: an x86-64 shell.
std::vector<TarEntry> MinimalTree() {
  return {Dir("bin"), File("bin/busybox", Busybox(), 0755), Symlink("bin/sh", "busybox")};
}

std::vector<TarEntry> With(std::vector<TarEntry> entries, std::vector<TarEntry> more) {
  entries.insert(entries.end(), more.begin(), more.end());
  return entries;
}

std::string Sha256sum(const std::string& path) {
  auto out = RunForOutput({"sha256sum", path}, kToolTimeout);
  EXPECT_TRUE(out.has_value()) << out.error().ToString();
  return out ? out->substr(0, out->find(' ')) : "";
}

// What dump.erofs says of `path` in the erofs image `erofs` (it exits with 0 also when the
// path is not there, saying so on stderr).
std::string DumpInode(const std::string& erofs, const std::string& path) {
  auto out = RunForOutput({"dump.erofs", "--path=" + path, erofs}, kToolTimeout);
  EXPECT_TRUE(out.has_value()) << out.error().ToString();
  return out.value_or("");
}

bool InImage(const std::string& erofs, const std::string& path) {
  return DumpInode(erofs, path).find("NID: ") != std::string::npos;
}

// The mode of `path` inside the erofs image `erofs`, from its inode (dump.erofs finds the
// inode but shows only the permission bits, not setuid and setgid).
mode_t ModeInImage(const std::string& erofs, const std::string& path) {
  std::smatch nid;
  std::string text = DumpInode(erofs, path);
  if (!std::regex_search(text, nid, std::regex("NID: ([0-9]+)"))) {
    ADD_FAILURE() << "no NID for " << path << " in: " << text;
    return 0;
  }
  std::string image = ReadFile(erofs);
  constexpr size_t kSuperBlock = 1024;
  constexpr size_t kInodeSlot = 32;
  uint8_t block_bits = static_cast<uint8_t>(image.at(kSuperBlock + 12));
  uint32_t meta_block = 0;
  std::memcpy(&meta_block, image.data() + kSuperBlock + 40, sizeof(meta_block));
  size_t inode = (size_t{meta_block} << block_bits) + std::stoull(nid[1]) * kInodeSlot;
  // i_mode follows i_format and i_xattr_icount in compact and extended inodes alike.
  uint16_t mode = 0;
  std::memcpy(&mode, image.data() + inode + 4, sizeof(mode));
  return mode;
}

Error ErrorOf(const auto& result) {
  EXPECT_FALSE(result.has_value());
  if (result) return Error::Backend("the call succeeded");
  return result.error();
}

std::string Digest(char c) { return "sha256:" + std::string(64, c); }

// A new directory for one test, holding its store and tarballs.
std::string MakeTestDir() {
  std::string dir = (fs::temp_directory_path() / "vessel-image-test-XXXXXX").string();
  if (::mkdtemp(dir.data()) == nullptr) std::abort();
  return dir;
}

class ImageTest : public ::testing::Test {
 protected:
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string Path(std::string_view name) const { return dir_ + "/" + std::string(name); }

  // A tarball of `entries` in the test's directory.
  std::string Tarball(std::string_view name, const std::vector<TarEntry>& entries) {
    std::string path = Path(name);
    WriteTarball(path, entries);
    return path;
  }

  ImportReport MustImport(std::string_view name, const std::string& tarball) {
    auto report = Import(store_, name, tarball, nullptr);
    if (report) return *report;
    ADD_FAILURE() << report.error().ToString();
    // A digest of nothing stored, so that the test goes on to fail without a crash.
    return ImportReport{.record = {.digest = Digest('0')}};
  }

  void WriteRecord(const std::string& name, const std::string& digest,
                   const std::string& architecture = "amd64") {
    fs::create_directories(store_.root() + "/names");
    WriteFile(store_.root() + "/names/" + name + ".json",
              "{\"name\": \"" + name + "\", \"digest\": \"" + digest + "\", \"size\": 1, " +
                  "\"architecture\": \"" + architecture + "\"}");
  }

  // What a refused import must leave: no names, no blobs, no scratch files.
  void ExpectStoreEmpty() {
    EXPECT_TRUE(Entries(store_.root() + "/names").empty());
    EXPECT_TRUE(Entries(store_.root() + "/blobs").empty());
    EXPECT_TRUE(Entries(store_.root() + "/tmp").empty());
  }

  const std::string dir_ = MakeTestDir();
  const Store store_{dir_ + "/store"};
};

// --- names -----------------------------------------------------------------------------

TEST(ImageNameTest, AcceptsLowerCaseLettersDigitsDotsUnderscoresAndDashes) {
  for (std::string name :
       {std::string("python"), std::string("a"), std::string("0"), std::string("py3.11"),
        std::string("my_image-2"), std::string(64, 'x')}) {
    EXPECT_TRUE(CheckName(name).has_value()) << name;
  }
}

TEST(ImageNameTest, RefusesEmptyTooLongUpperCaseLeadingDashSlashAndDotDot) {
  for (std::string name : {std::string(), std::string(65, 'x'), std::string("Python"),
                           std::string("-rf"), std::string("a/b"), std::string("/"),
                           std::string(".."), std::string(".hidden"), std::string("a b")}) {
    auto r = CheckName(name);
    ASSERT_FALSE(r.has_value()) << name;
    EXPECT_EQ(r.error().kind(), ErrorKind::kInvalidConfig) << name;
    EXPECT_EQ(r.error().subject(), "image");
    EXPECT_NE(r.error().message().find("is not an image name"), std::string::npos);
  }
}

// --- recipes ---------------------------------------------------------------------------

TEST(ImageRecipeTest, HashIgnoresPackageOrderAndDuplicates) {
  Recipe a{.packages = {"curl", "git", "python3"}};
  Recipe b{.packages = {"python3", "curl", "git", "curl"}};
  EXPECT_EQ(a.Hash(), b.Hash());
  EXPECT_EQ(a.Hash().size(), 32u);
}

TEST(ImageRecipeTest, HashDependsOnSuiteMirrorAndPackages) {
  Recipe base{.packages = {"curl"}};
  Recipe suite = base;
  suite.suite = "trixie";
  Recipe mirror = base;
  mirror.mirror = "http://mirror.example/debian";
  Recipe packages{.packages = {"wget"}};
  Recipe none;
  EXPECT_NE(base.Hash(), suite.Hash());
  EXPECT_NE(base.Hash(), mirror.Hash());
  EXPECT_NE(base.Hash(), packages.Hash());
  EXPECT_NE(base.Hash(), none.Hash());
}

TEST(ImageRecipeTest, BuiltinRecipes) {
  auto python = BuiltinRecipe("python");
  ASSERT_TRUE(python.has_value());
  EXPECT_NE(std::find(python->packages.begin(), python->packages.end(), "python3-numpy"),
            python->packages.end());
  auto debian = BuiltinRecipe("debian");
  ASSERT_TRUE(debian.has_value());
  EXPECT_TRUE(debian->packages.empty());
  EXPECT_FALSE(BuiltinRecipe("nope").has_value());
}

// --- build's input checks (nothing that would run mmdebstrap) ---------------------------

TEST_F(ImageTest, BuildRefusesABadImageName) {
  Error e = ErrorOf(Build(store_, "Bad Name", Recipe{}, nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(e.subject(), "image");
  EXPECT_TRUE(Entries(store_.root() + "/names").empty());
}

TEST_F(ImageTest, BuildRefusesWhatIsNotADebianPackageName) {
  for (std::string package : {"Py Thon", "../x", "x", "-o", "curl;rm"}) {
    Error e = ErrorOf(Build(store_, "ok", Recipe{.packages = {"curl", package}}, nullptr));
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig) << package;
    EXPECT_EQ(e.subject(), "packages");
    EXPECT_NE(e.message().find("'" + package + "'"), std::string::npos) << e.message();
  }
  EXPECT_TRUE(Entries(store_.root() + "/tmp").empty());
}

// --- imports ---------------------------------------------------------------------------

TEST_F(ImageTest, ImportsAMinimalTreeAndListsIt) {
  ImportReport report = MustImport("mini", Tarball("mini.tar", MinimalTree()));
  EXPECT_EQ(report.entries, 3u);
  EXPECT_EQ(report.made_relative, 0u);
  EXPECT_EQ(report.dropped_devices, 0u);
  EXPECT_EQ(report.cleared_setid, 0u);
  const ImageRecord& record = report.record;
  EXPECT_EQ(record.name, "mini");
  EXPECT_EQ(record.source, "import");
  EXPECT_EQ(record.architecture, "amd64");
  EXPECT_EQ(record.tree_size, Busybox().size());
  std::string blob = store_.BlobPath(record.digest);
  EXPECT_EQ(record.size, fs::file_size(blob));
  EXPECT_EQ(record.digest, "sha256:" + Sha256sum(blob));
  EXPECT_EQ(fs::status(blob).permissions(), fs::perms(0444));

  auto list = store_.List();
  ASSERT_TRUE(list.has_value()) << list.error().ToString();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "mini");
  EXPECT_EQ((*list)[0].digest, record.digest);
  for (const std::string& key : {std::string("mini"), record.digest}) {
    auto found = store_.Find(key);
    ASSERT_TRUE(found.has_value()) << key << ": " << found.error().ToString();
    EXPECT_EQ(found->name, "mini");
    EXPECT_EQ(found->digest, record.digest);
    EXPECT_EQ(found->size, record.size);
    EXPECT_EQ(found->source, "import");
  }
  EXPECT_TRUE(Entries(store_.root() + "/tmp").empty());
}

TEST_F(ImageTest, ImportMakesAbsolutePathsRelative) {
  ImportReport report = MustImport(
      "abs", Tarball("abs.tar", With(MinimalTree(), {Dir("/etc"), File("/etc/x", "hello\n")})));
  EXPECT_EQ(report.made_relative, 2u);
  EXPECT_EQ(report.record.tree_size, Busybox().size() + 6);
  std::string inode = DumpInode(store_.BlobPath(report.record.digest), "/etc/x");
  EXPECT_NE(inode.find("Size: 6 "), std::string::npos) << inode;
}

TEST_F(ImageTest, ImportRefusesADotDotEntryAndLeavesNothing) {
  Error e = ErrorOf(Import(
      store_, "evil", Tarball("evil.tar", With(MinimalTree(), {File("../evil", "x")})), nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("'../evil'"), std::string::npos) << e.message();
  EXPECT_FALSE(fs::exists(Path("evil")));
  ExpectStoreEmpty();
}

// Debian trees have hard links (perl, gzip's programs); a tar hard link has no file type.
TEST_F(ImageTest, ImportKeepsHardLinksInsideTheTree) {
  ImportReport report = MustImport(
      "links", Tarball("links.tar", With(MinimalTree(), {HardLink("bin/bb", "bin/busybox"),
                                                         HardLink("/bin/ash", "/bin/busybox")})));
  EXPECT_EQ(report.entries, 5u);
  EXPECT_EQ(report.made_relative, 2u);
  EXPECT_EQ(report.record.tree_size, 3 * Busybox().size());
  std::string inode = DumpInode(store_.BlobPath(report.record.digest), "/bin/bb");
  EXPECT_NE(inode.find("Links: 3 "), std::string::npos) << inode;
  EXPECT_NE(inode.find("Size: " + std::to_string(Busybox().size())), std::string::npos) << inode;
}

TEST_F(ImageTest, ImportRefusesAHardLinkLeadingOutside) {
  Error e = ErrorOf(
      Import(store_, "evil",
             Tarball("evil.tar", With(MinimalTree(), {HardLink("etc-passwd", "../../etc/passwd")})),
             nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("'etc-passwd'"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("outside the tree"), std::string::npos) << e.message();
  ExpectStoreEmpty();
}

// A link may point anywhere, but nothing is written through one: that would reach the
// host's files.
TEST_F(ImageTest, ImportRefusesToWriteThroughALink) {
  Error e = ErrorOf(Import(
      store_, "evil",
      Tarball("evil.tar", With(MinimalTree(), {Symlink("out", dir_), File("out/planted", "x")})),
      nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("'out/planted'"), std::string::npos) << e.message();
  EXPECT_FALSE(fs::exists(Path("planted")));
  ExpectStoreEmpty();
}

TEST_F(ImageTest, ImportRefusesAHardLinkThroughALink) {
  WriteFile(Path("secret"), "host secret\n");
  Error e = ErrorOf(
      Import(store_, "evil",
             Tarball("evil.tar",
                     With(MinimalTree(), {Symlink("out", dir_), HardLink("stolen", "out/secret")})),
             nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("'stolen'"), std::string::npos) << e.message();
  EXPECT_EQ(fs::hard_link_count(Path("secret")), 1u);
  ExpectStoreEmpty();
}

TEST_F(ImageTest, ImportDropsDevicesAndFifos) {
  ImportReport report = MustImport(
      "devs", Tarball("devs.tar", With(MinimalTree(), {Dir("dev"),
                                                       {.path = "dev/null", .type = AE_IFCHR},
                                                       {.path = "dev/sda", .type = AE_IFBLK},
                                                       {.path = "dev/pipe", .type = AE_IFIFO}})));
  EXPECT_EQ(report.dropped_devices, 3u);
  EXPECT_EQ(report.entries, 7u);
  std::string blob = store_.BlobPath(report.record.digest);
  EXPECT_TRUE(InImage(blob, "/dev"));
  EXPECT_FALSE(InImage(blob, "/dev/null"));
  EXPECT_FALSE(InImage(blob, "/dev/sda"));
  EXPECT_FALSE(InImage(blob, "/dev/pipe"));
}

TEST_F(ImageTest, ImportClearsSetuidAndSetgid) {
  std::vector<TarEntry> tree = {Dir("bin"), File("bin/busybox", Busybox(), 04755),
                                Symlink("bin/sh", "busybox"), File("bin/wall", "x", 02755),
                                File("bin/plain", "x", 0700)};
  ImportReport report = MustImport("setid", Tarball("setid.tar", tree));
  EXPECT_EQ(report.cleared_setid, 2u);
  std::string blob = store_.BlobPath(report.record.digest);
  EXPECT_EQ(ModeInImage(blob, "/bin/busybox"), S_IFREG | 0755);
  EXPECT_EQ(ModeInImage(blob, "/bin/wall"), S_IFREG | 0755);
  EXPECT_EQ(ModeInImage(blob, "/bin/plain"), S_IFREG | 0700);
}

TEST_F(ImageTest, ImportRefusesAShellForAnotherArchitecture) {
  std::vector<TarEntry> tree = {Dir("bin"), File("bin/sh", ElfHeader(EM_AARCH64), 0755)};
  Error e = ErrorOf(Import(store_, "arm", Tarball("arm.tar", tree), nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("another architecture"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("arm64"), std::string::npos) << e.message();
  ExpectStoreEmpty();
}

// The shell is found as the guest would find it: links resolve inside the tree, so an
// absolute link or one with more ".." than the tree is deep never reaches the host's
// (x86-64) programs.
TEST_F(ImageTest, ArchitectureCheckResolvesAbsoluteDirectoryLinksInsideTheTree) {
  std::vector<TarEntry> tree = {Dir("usr"), Dir("usr/bin"),
                                File("usr/bin/sh", ElfHeader(EM_AARCH64), 0755),
                                Symlink("bin", "/usr/bin")};
  Error e = ErrorOf(Import(store_, "arm", Tarball("arm.tar", tree), nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("another architecture"), std::string::npos) << e.message();
}

TEST_F(ImageTest, ArchitectureCheckKeepsDotDotAtTheTreesRoot) {
  std::vector<TarEntry> tree = {Dir("bin"), File("bin/busybox", ElfHeader(EM_AARCH64), 0755),
                                Symlink("bin/sh", "../../../../../../../../../../bin/busybox")};
  Error e = ErrorOf(Import(store_, "arm", Tarball("arm.tar", tree), nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("another architecture"), std::string::npos) << e.message();
}

TEST_F(ImageTest, ImportAcceptsAShellBehindRelativeAndAbsoluteLinks) {
  // A merged /usr: bin -> usr/bin, and sh -> /usr/bin/busybox.
  std::vector<TarEntry> tree = {
      Dir("usr"), Dir("usr/bin"), File("usr/bin/busybox", Busybox(), 0755),
      Symlink("usr/bin/sh", "/usr/bin/busybox"), Symlink("bin", "usr/bin")};
  MustImport("merged", Tarball("merged.tar", tree));
}

TEST_F(ImageTest, ImportRefusesATreeWithoutAShell) {
  Error e =
      ErrorOf(Import(store_, "noshell",
                     Tarball("noshell.tar", {Dir("etc"), File("etc/hostname", "x\n")}), nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("no shell"), std::string::npos) << e.message();
  ExpectStoreEmpty();
}

TEST_F(ImageTest, ImportRefusesATruncatedTarball) {
  std::string whole = ReadFile(Tarball("whole.tar", MinimalTree()));
  // The ustar headers of bin/ and bin/busybox, then half of busybox's bytes.
  std::string cut = Path("cut.tar");
  WriteFile(cut, std::string_view(whole).substr(0, 1024 + Busybox().size() / 2));
  Error e = ErrorOf(Import(store_, "cut", cut, nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("truncated or damaged"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("bin/busybox"), std::string::npos) << e.message();
  ExpectStoreEmpty();
}

TEST_F(ImageTest, ImportRefusesWhatIsNotATarball) {
  std::string text = Path("notes.txt");
  std::string lines;
  for (int i = 0; i < 100; ++i) lines += "this is not a tar archive\n";
  WriteFile(text, lines);
  Error e = ErrorOf(Import(store_, "text", text, nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(e.subject(), "tarball");
  EXPECT_NE(e.message().find(text), std::string::npos) << e.message();
  ExpectStoreEmpty();
}

TEST_F(ImageTest, ImportRefusesAMissingTarball) {
  Error e = ErrorOf(Import(store_, "missing", Path("missing.tar"), nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(e.subject(), "tarball");
  EXPECT_NE(e.message().find("missing.tar"), std::string::npos) << e.message();
}

TEST_F(ImageTest, ImportRefusesABadName) {
  Error e = ErrorOf(Import(store_, "../up", Tarball("mini.tar", MinimalTree()), nullptr));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(e.subject(), "image");
  ExpectStoreEmpty();
}

// --- the store -------------------------------------------------------------------------

TEST_F(ImageTest, FindOfAnUnknownNameListsTheNamesThatExist) {
  Error none = ErrorOf(store_.Find("python"));
  EXPECT_EQ(none.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(none.message().find("none yet"), std::string::npos) << none.message();

  WriteRecord("alpha", Digest('a'));
  WriteRecord("beta", Digest('b'));
  Error e = ErrorOf(store_.Find("python"));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(e.subject(), "image");
  EXPECT_NE(e.message().find("'python'"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("alpha, beta"), std::string::npos) << e.message();

  Error unknown_digest = ErrorOf(store_.Find(Digest('c')));
  EXPECT_EQ(unknown_digest.kind(), ErrorKind::kInvalidConfig);
}

TEST_F(ImageTest, UseHoldsTheImageAgainstRemove) {
  ImportReport report = MustImport("mini", Tarball("mini.tar", MinimalTree()));
  std::string blob = store_.BlobPath(report.record.digest);
  {
    auto use = store_.Use("mini");
    ASSERT_TRUE(use.has_value()) << use.error().ToString();
    EXPECT_EQ(use->path, blob);
    EXPECT_EQ(use->record.digest, report.record.digest);
    EXPECT_TRUE(use->lock);
    Error e = ErrorOf(store_.Remove("mini"));
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(e.message().find("in use"), std::string::npos) << e.message();
    EXPECT_TRUE(fs::exists(blob));
    EXPECT_TRUE(store_.Find("mini").has_value());
  }
  auto removed = store_.Remove("mini");
  ASSERT_TRUE(removed.has_value()) << removed.error().ToString();
  EXPECT_FALSE(fs::exists(blob));
  EXPECT_TRUE(Entries(store_.root() + "/blobs").empty());
  EXPECT_FALSE(store_.Find("mini").has_value());
}

TEST_F(ImageTest, TheBlobGoesWithItsLastName) {
  std::string tarball = Tarball("mini.tar", MinimalTree());
  ImportReport first = MustImport("first", tarball);
  ImportReport second = MustImport("second", tarball);
  ASSERT_EQ(first.record.digest, second.record.digest);
  std::string blob = store_.BlobPath(first.record.digest);

  ASSERT_TRUE(store_.Remove("first").has_value());
  EXPECT_TRUE(fs::exists(blob));
  {
    auto use = store_.Use("second");
    ASSERT_TRUE(use.has_value()) << use.error().ToString();
  }

  ASSERT_TRUE(store_.Remove("second").has_value());
  EXPECT_FALSE(fs::exists(blob));
  EXPECT_TRUE(Entries(store_.root() + "/blobs").empty());
}

TEST_F(ImageTest, RemoveRefusesWhileASnapshotNeedsTheImage) {
  ImportReport report = MustImport("mini", Tarball("mini.tar", MinimalTree()));
  std::string snapshot = Path("snap");
  ASSERT_EQ(::mkdir(snapshot.c_str(), 0700), 0);
  WriteFile(snapshot + "/manifest.json",
            "{\"root_image\": {\"name\": \"mini\", \"digest\": \"" + report.record.digest + "\"}}");
  ASSERT_TRUE(store_.AddSnapshotRef(report.record.digest, snapshot).has_value());

  Error e = ErrorOf(store_.Remove("mini"));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find(snapshot), std::string::npos) << e.message();
  EXPECT_TRUE(fs::exists(store_.BlobPath(report.record.digest)));

  fs::remove_all(snapshot);
  auto removed = store_.Remove("mini");
  ASSERT_TRUE(removed.has_value()) << removed.error().ToString();
  EXPECT_FALSE(fs::exists(store_.BlobPath(report.record.digest)));
  EXPECT_TRUE(Entries(store_.root() + "/refs").empty());
}

TEST_F(ImageTest, ASnapshotThatNamesAnotherImageDoesNotHoldThisOne) {
  ImportReport report = MustImport("mini", Tarball("mini.tar", MinimalTree()));
  std::string snapshot = Path("snap");
  ASSERT_EQ(::mkdir(snapshot.c_str(), 0700), 0);
  WriteFile(snapshot + "/manifest.json", "{\"root_image\": {\"digest\": \"" + Digest('a') + "\"}}");
  ASSERT_TRUE(store_.AddSnapshotRef(report.record.digest, snapshot).has_value());
  auto removed = store_.Remove("mini");
  ASSERT_TRUE(removed.has_value()) << removed.error().ToString();
}

TEST_F(ImageTest, AddSnapshotRefRefusesWhatIsNotADigest) {
  for (std::string digest :
       {std::string(), std::string("sha256:"), "sha256:../../" + std::string(58, 'a')}) {
    Error e = ErrorOf(store_.AddSnapshotRef(digest, Path("snap")));
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig) << digest;
  }
  EXPECT_TRUE(Entries(store_.root() + "/refs").empty());
}

TEST_F(ImageTest, UseRefusesABlobChangedOnDisk) {
  ImportReport report = MustImport("mini", Tarball("mini.tar", MinimalTree()));
  ASSERT_TRUE(store_.Use("mini").has_value());  // checked once: its stamp is stored
  std::string blob = store_.BlobPath(report.record.digest);
  struct stat before {};
  ASSERT_EQ(::stat(blob.c_str(), &before), 0);
  ASSERT_EQ(::chmod(blob.c_str(), 0644), 0);
  int fd = ::open(blob.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  off_t middle = before.st_size / 2;
  char byte = 0;
  ASSERT_EQ(::pread(fd, &byte, 1, middle), 1);
  byte = static_cast<char>(byte ^ 0x01);
  ASSERT_EQ(::pwrite(fd, &byte, 1, middle), 1);
  // A write moves the mtime; make sure it moved even within one tick of a coarse clock.
  struct timespec times[2] = {before.st_atim, before.st_mtim};
  times[1].tv_sec += 1;
  ASSERT_EQ(::futimens(fd, times), 0);
  ::close(fd);
  ASSERT_EQ(fs::file_size(blob), static_cast<uintmax_t>(before.st_size));

  Error e = ErrorOf(store_.Use("mini"));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("changed on disk"), std::string::npos) << e.message();

  Error restore = ErrorOf(store_.UseForSnapshot(report.record.digest, "mini"));
  EXPECT_EQ(restore.kind(), ErrorKind::kSnapshotFormat);
  EXPECT_NE(restore.message().find("changed on disk"), std::string::npos) << restore.message();
}

TEST_F(ImageTest, UseForSnapshotFindsTheImageByDigest) {
  ImportReport report = MustImport("mini", Tarball("mini.tar", MinimalTree()));
  auto use = store_.UseForSnapshot(report.record.digest, "mini");
  ASSERT_TRUE(use.has_value()) << use.error().ToString();
  EXPECT_EQ(use->path, store_.BlobPath(report.record.digest));
}

TEST_F(ImageTest, UseForSnapshotOfAMissingDigestIsASnapshotError) {
  std::string digest = Digest('e');
  Error e = ErrorOf(store_.UseForSnapshot(digest, "gone"));
  EXPECT_EQ(e.kind(), ErrorKind::kSnapshotFormat);
  EXPECT_NE(e.message().find(digest), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("'gone'"), std::string::npos) << e.message();

  Error not_digest = ErrorOf(store_.UseForSnapshot("sha256:xyz", "gone"));
  EXPECT_EQ(not_digest.kind(), ErrorKind::kSnapshotFormat);
}

TEST_F(ImageTest, UseRefusesAnImageForAnotherArchitecture) {
  WriteRecord("x", Digest('a'), "arm64");
  Error e = ErrorOf(store_.Use("x"));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(e.message().find("arm64"), std::string::npos) << e.message();
}

TEST_F(ImageTest, RemoveOfAnUnknownNameIsRefused) {
  Error e = ErrorOf(store_.Remove("nothing"));
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  Error bad = ErrorOf(store_.Remove("../names/x"));
  EXPECT_EQ(bad.kind(), ErrorKind::kInvalidConfig);
}

// --- concurrency -----------------------------------------------------------------------

TEST_F(ImageTest, TwoImportsAtOnceBothSucceed) {
  std::string one = Tarball("one.tar", MinimalTree());
  std::string two = Tarball("two.tar", With(MinimalTree(), {File("etc-hostname", "two\n")}));
  Result<ImportReport> first = Fail(Error::Backend("not run"));
  Result<ImportReport> second = Fail(Error::Backend("not run"));
  std::thread a([&] { first = Import(store_, "one", one, nullptr); });
  std::thread b([&] { second = Import(store_, "two", two, nullptr); });
  a.join();
  b.join();
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  ASSERT_TRUE(second.has_value()) << second.error().ToString();
  EXPECT_NE(first->record.digest, second->record.digest);
  auto list = store_.List();
  ASSERT_TRUE(list.has_value());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "one");
  EXPECT_EQ((*list)[1].name, "two");
  EXPECT_TRUE(store_.Use("one").has_value());
  EXPECT_TRUE(store_.Use("two").has_value());
  EXPECT_TRUE(Entries(store_.root() + "/tmp").empty());
}

TEST_F(ImageTest, LockRecipeExcludesASecondLockerUntilTheFirstReleases) {
  using Clock = std::chrono::steady_clock;
  auto held = store_.LockRecipe("recipe");
  ASSERT_TRUE(held.has_value()) << held.error().ToString();
  auto other = store_.LockRecipe("another-recipe");
  ASSERT_TRUE(other.has_value()) << other.error().ToString();

  std::atomic<bool> acquired{false};
  Clock::time_point acquired_at;
  std::thread waiter([&] {
    auto lock = store_.LockRecipe("recipe");
    acquired_at = Clock::now();
    acquired = lock.has_value();
  });
  std::this_thread::sleep_for(milliseconds(150));
  EXPECT_FALSE(acquired.load());
  Clock::time_point released_at = Clock::now();
  held->Reset();
  waiter.join();
  EXPECT_TRUE(acquired.load());
  EXPECT_GE(acquired_at, released_at);
}

}  // namespace
}  // namespace vessel::image
