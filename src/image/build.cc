// `vessel image build`: a Debian tree from mmdebstrap, packed by mkfs.erofs.
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <openssl/evp.h>
#include <thread>

#include "base/io.h"
#include "base/subprocess.h"
#include "image/image.h"
#include "image/tree.h"

namespace vessel::image {
namespace {

namespace fs = std::filesystem;

// Bump when the recipe's meaning changes (options below), so that old builds are not
// reused for it.
constexpr int kRecipeVersion = 1;
constexpr auto kBuildTimeout = std::chrono::minutes(30);
constexpr auto kPackTimeout = std::chrono::minutes(10);
constexpr auto kPollInterval = std::chrono::milliseconds(200);

// Documentation and translations nobody reads in a sandbox; licences stay.
constexpr const char* kDpkgOptions[] = {
    "path-exclude=/usr/share/man/*",     "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",     "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",  "path-include=/usr/share/locale/locale.alias",
};

bool IsPackageName(std::string_view p) {
  // Debian policy 5.6.1: lower case letters, digits, '+', '-', '.'; at least two
  // characters, starting with a letter or digit.
  auto ok = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
  };
  return p.size() >= 2 && p.size() <= 128 && ((p[0] >= 'a' && p[0] <= 'z') || (p[0] >= '0' && p[0] <= '9')) &&
         std::all_of(p.begin(), p.end(), ok);
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned i = 0; i < len; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

// The lines of mmdebstrap's log from `offset` on that say what it is doing ("I: ...").
void ReportStages(const std::string& log, size_t& offset, const Progress& progress) {
  auto text = ReadFileToString(log, 64 * 1024 * 1024);
  if (!text || text->size() <= offset) return;
  size_t end = text->rfind('\n');
  if (end == std::string::npos || end < offset) return;
  std::string_view fresh(text->data() + offset, end + 1 - offset);
  offset = end + 1;
  while (!fresh.empty()) {
    std::string_view line = fresh.substr(0, fresh.find('\n'));
    fresh.remove_prefix(std::min(fresh.size(), line.size() + 1));
    if (line.starts_with("I: ")) progress(line.substr(3));
  }
}

// Why mmdebstrap failed, from its log: apt's "E:" lines, an unknown package named.
Error BuildFailure(const std::string& log, const Recipe& recipe) {
  std::string text = ReadFileTail(log, 256 * 1024);
  std::string errors;
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + at, end - at);
    if (line.starts_with("E: ")) errors += std::string(line) + "\n";
    for (const auto& p : recipe.packages) {
      if (line.find(fmt::format("Unable to locate package {}", p)) != std::string_view::npos ||
          line.find(fmt::format("Package '{}' has no installation candidate", p)) !=
              std::string_view::npos) {
        return Error::InvalidConfig(
            "packages", fmt::format("Debian {} has no package '{}' ({})", recipe.suite, p,
                                    recipe.mirror));
      }
    }
    at = end + 1;
  }
  if (errors.empty()) errors = ReadFileTail(log, 2048);
  while (!errors.empty() && errors.back() == '\n') errors.pop_back();
  return Error::Backend("mmdebstrap failed").Detail(errors);
}

// Runs `argv`, logging to `log`, until it exits or `timeout` passes; reports mmdebstrap's
// stages on the way. The wait status, or an error.
Result<int> RunLogged(const std::vector<std::string>& argv, const std::string& log,
                      std::chrono::milliseconds timeout, const Progress& progress) {
  auto child = Subprocess::Spawn({.argv = argv, .inherit_fds = {}, .output_path = log});
  if (!child) return Fail(std::move(child).error());
  auto give_up = std::chrono::steady_clock::now() + timeout;
  size_t offset = 0;
  while (child->Running()) {
    if (std::chrono::steady_clock::now() > give_up) {
      child->Kill();
      return Fail(Error::Timeout(fmt::format("{} did not finish in {} s", argv[0],
                                             std::chrono::duration_cast<std::chrono::seconds>(timeout).count())));
    }
    if (progress) ReportStages(log, offset, progress);
    std::this_thread::sleep_for(kPollInterval);
  }
  if (progress) ReportStages(log, offset, progress);
  return child->status().value_or(-1);
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::string Recipe::Hash() const {
  std::vector<std::string> sorted = packages;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  std::string text = fmt::format("vessel image recipe {}\nsuite {}\nmirror {}\narch {}\n",
                                 kRecipeVersion, suite, mirror, kArchitecture);
  for (const auto& p : sorted) text += "package " + p + "\n";
  return Sha256Hex(text).substr(0, 32);
}

std::optional<Recipe> BuiltinRecipe(std::string_view name) {
  if (name == "python") {
    return Recipe{.packages = {"python3", "python3-pip", "python3-venv", "python3-numpy",
                               "python3-requests", "git", "curl", "ca-certificates"}};
  }
  if (name == "debian") return Recipe{};
  return std::nullopt;
}

std::vector<std::string> MissingTools() {
  std::vector<std::string> missing;
  for (const char* tool : {"mmdebstrap", "mkfs.erofs"}) {
    bool found = false;
    for (const char* dir : {"/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"}) {
      found |= ::access(fmt::format("{}/{}", dir, tool).c_str(), X_OK) == 0;
    }
    if (!found) missing.push_back(tool);
  }
  return missing;
}

Result<BuildResult> Build(const Store& store, std::string_view name, const Recipe& recipe,
                          const Progress& progress) {
  if (auto r = CheckName(name); !r) return Fail(std::move(r).error());
  for (const auto& p : recipe.packages) {
    if (!IsPackageName(p)) {
      return Fail(Error::InvalidConfig("packages", fmt::format("'{}' is not a Debian package name", p)));
    }
  }
  if (auto missing = MissingTools(); !missing.empty()) {
    return Fail(Error::UnsupportedPlatform(fmt::format(
        "building an image needs {}: install it (scripts/bootstrap does)", fmt::join(missing, " and "))));
  }
  std::string hash = recipe.Hash();
  auto reuse = [&]() -> Result<std::optional<BuildResult>> {
    auto cached = store.FromRecipe(hash, name);
    if (!cached) return Fail(std::move(cached).error());
    if (!*cached) return std::optional<BuildResult>();
    return std::optional<BuildResult>(BuildResult{std::move(**cached), true});
  };
  if (auto r = reuse(); !r || *r) return r ? Result<BuildResult>(std::move(**r)) : Fail(std::move(r).error());
  // One build per recipe at a time; whoever waited here reuses the first one's image.
  auto lock = store.LockRecipe(hash);
  if (!lock) return Fail(std::move(lock).error());
  if (auto r = reuse(); !r || *r) return r ? Result<BuildResult>(std::move(**r)) : Fail(std::move(r).error());

  auto scratch = store.ScratchDir();
  if (!scratch) return Fail(std::move(scratch).error());
  struct Cleanup {
    std::string dir;
    ~Cleanup() { (void)RemoveTree(dir); }
  } cleanup{*scratch};
  std::string tree = *scratch + "/tree";
  std::string log = *scratch + "/build.log";

  if (progress) {
    progress(fmt::format("building '{}': Debian {} with {} from {}", name, recipe.suite,
                         recipe.packages.empty() ? std::string("the essential set only")
                                                 : fmt::format("{}", fmt::join(recipe.packages, " ")),
                         recipe.mirror));
  }
  std::vector<std::string> argv = {"mmdebstrap", "--variant=essential", "--mode=auto",
                                   "--format=directory", "--architectures=amd64"};
  if (!recipe.packages.empty()) argv.push_back("--include=" + fmt::format("{}", fmt::join(recipe.packages, ",")));
  for (const char* option : kDpkgOptions) argv.push_back(fmt::format("--dpkgopt={}", option));
  argv.insert(argv.end(), {"--aptopt=Acquire::Retries \"3\"", recipe.suite, tree, recipe.mirror});
  auto status = RunLogged(argv, log, kBuildTimeout, progress);
  if (!status) return Fail(std::move(status).error());
  if (*status != 0) return Fail(BuildFailure(log, recipe));

  auto installed = RunForOutput(
      {"dpkg-query", "--admindir=" + tree + "/var/lib/dpkg", "-W", "-f=${Package}\\n"},
      std::chrono::seconds(60), 4 * 1024 * 1024);
  uint64_t packages = installed ? static_cast<uint64_t>(std::count(installed->begin(), installed->end(), '\n')) : 0;
  auto tree_size = TreeSize(tree);
  if (!tree_size) return Fail(std::move(tree_size).error());
  if (progress) {
    progress(fmt::format("packing {} packages ({} MiB) into erofs", packages, *tree_size >> 20));
  }
  std::string erofs = *scratch + "/image.erofs";
  if (auto r = PackTree(tree, erofs, hash, log, kPackTimeout); !r) return Fail(std::move(r).error());

  ImageRecord record{.name = std::string(name),
                     .tree_size = *tree_size,
                     .source = "debian",
                     .suite = recipe.suite,
                     .mirror = recipe.mirror,
                     .packages = recipe.packages,
                     .installed_packages = packages,
                     .recipe = hash,
                     .created_unix_ms = NowMs()};
  auto stored = store.Add(erofs, std::move(record));
  if (!stored) return Fail(std::move(stored).error());
  return BuildResult{std::move(*stored), false};
}

}  // namespace vessel::image
