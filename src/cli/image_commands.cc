// `vessel image build|import|ls|rm`: the image store (image/image.h) from the command line.
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <fmt/format.h>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "image/image.h"

namespace vessel::cli {
namespace {

// Stages on stderr for a person at a terminal; nothing for scripts.
image::Progress TerminalProgress() {
  if (!::isatty(STDERR_FILENO)) return {};
  auto start = std::chrono::steady_clock::now();
  return [start](std::string_view line) {
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cerr << fmt::format("[{:6.1f}s] {}\n", seconds, line);
  };
}

std::string Size(uint64_t bytes) {
  auto value = static_cast<double>(bytes);
  if (bytes >= (uint64_t{1} << 30)) return fmt::format("{:.1f}G", value / (1 << 30));
  if (bytes >= (uint64_t{1} << 20)) return fmt::format("{:.1f}M", value / (1 << 20));
  return fmt::format("{:.1f}K", value / 1024.0);
}

std::string Created(int64_t unix_ms) {
  std::time_t t = unix_ms / 1000;
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

std::vector<std::string> SplitPackages(const std::string& text) {
  std::vector<std::string> packages;
  std::string current;
  for (char c : text + " ") {
    if (c == ' ' || c == ',' || c == '\t' || c == '\n') {
      if (!current.empty()) packages.push_back(std::move(current));
      current.clear();
    } else {
      current += c;
    }
  }
  return packages;
}

}  // namespace

int ImageBuild(const ImageBuildArgs& args) {
  std::optional<image::Recipe> recipe;
  if (args.packages) {
    recipe = image::Recipe{.packages = SplitPackages(*args.packages)};
  } else {
    recipe = image::BuiltinRecipe(args.name);
    if (!recipe) {
      return Failure(fmt::format("no built-in recipe named '{}' (python, debian): give "
                                 "--packages \"PKG...\"",
                                 args.name));
    }
  }
  if (!args.suite.empty()) recipe->suite = args.suite;
  if (!args.mirror.empty()) recipe->mirror = args.mirror;
  auto built = image::Build(image::Store::Default(), args.name, *recipe, TerminalProgress());
  if (!built) return Failure(built.error());
  const auto& r = built->record;
  std::cout << fmt::format("{} {} ({}, {} packages{})\n", r.name, r.digest, Size(r.size),
                           r.installed_packages, built->cached ? ", cached" : "");
  return 0;
}

int ImageImport(const ImageImportArgs& args) {
  auto report = image::Import(image::Store::Default(), args.name, args.tarball, TerminalProgress());
  if (!report) return Failure(report.error());
  const auto& r = report->record;
  std::cout << fmt::format("{} {} ({})\n", r.name, r.digest, Size(r.size));
  if (report->made_relative || report->dropped_devices || report->cleared_setid) {
    std::cerr << fmt::format(
        "vessel: of {} entries, {} absolute paths were made relative, {} device nodes, FIFOs "
        "or sockets were left out, {} setuid/setgid bits were cleared\n",
        report->entries, report->made_relative, report->dropped_devices, report->cleared_setid);
  }
  return 0;
}

int ImageList(const ImageListArgs& args) {
  auto records = image::Store::Default().List();
  if (!records) return Failure(records.error());
  if (args.json) {
    auto out = nlohmann::json::array();
    for (const auto& r : *records) {
      out.push_back({{"name", r.name},
                     {"digest", r.digest},
                     {"size", r.size},
                     {"tree_size", r.tree_size},
                     {"created_unix_ms", r.created_unix_ms},
                     {"source", r.source},
                     {"suite", r.suite},
                     {"packages", r.packages},
                     {"installed_packages", r.installed_packages}});
    }
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format("{:<16} {:<19} {:>7} {:<20} {}\n", "NAME", "DIGEST", "SIZE",
                           "CREATED", "PACKAGES");
  for (const auto& r : *records) {
    std::string packages = r.source == "import" ? "(imported)"
                           : r.packages.empty() ? fmt::format("({} essential)", r.installed_packages)
                                                : fmt::format("{}", fmt::join(r.packages, " "));
    std::cout << fmt::format("{:<16} {:<19} {:>7} {:<20} {}\n", r.name,
                             r.digest.substr(0, 19), Size(r.size), Created(r.created_unix_ms),
                             packages);
  }
  return 0;
}

int ImageRemove(const ImageRemoveArgs& args) {
  int status = 0;
  for (const auto& name : args.names) {
    if (auto r = image::Store::Default().Remove(name); !r) status = Failure(r.error());
  }
  return status;
}

}  // namespace vessel::cli
