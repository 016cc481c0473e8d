// vessel_image_bench: what a root image costs, side by side in one run: create -> ready with
// the python image against the minimal guest, the first and warm `python3 -c pass`, the
// image's size against its tree and a cached build, and the host memory (PSS) of a
// python-image parent with 8 forks against 9 cold python-image VMs.
//
//   vessel_image_bench [--rounds N] [--exec-iterations N] [--image NAME] [--cold-build]
//
// --cold-build also builds the python recipe into a fresh, temporary image store (minutes).
#include <fmt/format.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string_view>
#include <vector>

#include "bench/pss.h"
#include "bench/stats.h"
#include "image/image.h"
#include "vessel/sandbox.h"

namespace vessel::bench {
namespace {

struct Options {
  int rounds = 5;
  int exec_iterations = 10;
  std::string image = "python";
  bool cold_build = false;
};

constexpr uint32_t kMemoryMib = 512;

Result<double> TimedExec(Sandbox& sandbox, const std::string& script) {
  auto start = Clock::now();
  auto r = sandbox.Execute(Command::Shell(script));
  double ms = MsSince(start);
  if (!r) return Fail(std::move(r).error());
  if (!r->ok()) return Fail(Error::Backend(fmt::format("`{}` failed: {}", script, r->stderr_data)));
  return ms;
}

Result<void> RunAll(const Options& options) {
  auto record = image::Store::Default().Find(options.image);
  if (!record) return Fail(std::move(record).error());
  SandboxConfig minimal;
  minimal.memory_mib = kMemoryMib;
  SandboxConfig imaged = minimal;
  imaged.image = options.image;

  Series cold_minimal{"create -> ready, minimal guest", {}};
  Series cold_image{fmt::format("create -> ready, {} image", options.image), {}};
  Series first_python{"first `python3 -c pass` after ready", {}};
  Series warm_python{"warm `python3 -c pass`", {}};
  Series first_numpy{"first `python3 -c 'import numpy'`", {}};
  for (int round = 0; round < options.rounds; ++round) {
    auto start = Clock::now();
    auto plain = Sandbox::Create(minimal);
    if (!plain) return Fail(std::move(plain).error());
    cold_minimal.ms.push_back(MsSince(start));
    plain->reset();

    start = Clock::now();
    auto vm = Sandbox::Create(imaged);
    if (!vm) return Fail(std::move(vm).error());
    cold_image.ms.push_back(MsSince(start));
    auto first = TimedExec(**vm, "python3 -c pass");
    if (!first) return Fail(std::move(first).error());
    first_python.ms.push_back(*first);
    for (int i = 0; i < options.exec_iterations; ++i) {
      auto warm = TimedExec(**vm, "python3 -c pass");
      if (!warm) return Fail(std::move(warm).error());
      warm_python.ms.push_back(*warm);
    }
    auto numpy = TimedExec(**vm, "python3 -c 'import numpy'");
    if (!numpy) return Fail(std::move(numpy).error());
    first_numpy.ms.push_back(*numpy);
  }

  Series cached_build{"image build, cached (same recipe)", {}};
  for (int i = 0; i < options.rounds; ++i) {
    auto start = Clock::now();
    auto built = image::Build(image::Store::Default(), options.image,
                              image::BuiltinRecipe("python").value(), {});
    if (!built) return Fail(std::move(built).error());
    cached_build.ms.push_back(MsSince(start));
  }
  Series cold_build{"image build, cold (python recipe, fresh store)", {}};
  if (options.cold_build) {
    char pattern[] = "/tmp/vessel-image-bench-XXXXXX";
    std::string root = ::mkdtemp(pattern);
    auto start = Clock::now();
    auto built = image::Build(image::Store(root), "python", image::BuiltinRecipe("python").value(), {});
    cold_build.ms.push_back(MsSince(start));
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
    if (!built) return Fail(std::move(built).error());
  }

  // Memory: a python-image parent that ran python, with 8 forks, against 9 such cold VMs.
  long forked_kib = 0;
  long cold_kib = 0;
  const std::string warm = "python3 -c 'import numpy, requests'";
  {
    auto parent = Sandbox::Create(imaged);
    if (!parent) return Fail(std::move(parent).error());
    if (auto r = TimedExec(**parent, warm); !r) return Fail(std::move(r).error());
    auto children = (*parent)->Fork(8);
    if (!children) return Fail(std::move(children).error());
    std::vector<std::string> ids{(*parent)->id()};
    for (auto& child : *children) ids.push_back(child->id());
    forked_kib = PssKib(ids);
  }
  {
    std::vector<std::unique_ptr<Sandbox>> vms;
    std::vector<std::string> ids;
    for (int i = 0; i < 9; ++i) {
      auto vm = Sandbox::Create(imaged);
      if (!vm) return Fail(std::move(vm).error());
      if (auto r = TimedExec(**vm, warm); !r) return Fail(std::move(r).error());
      ids.push_back((*vm)->id());
      vms.push_back(std::move(*vm));
    }
    cold_kib = PssKib(ids);
  }

  fmt::print("engine qemu (Sandbox default), {} MiB guests, 1 vCPU, {} rounds, image {} ({})\n\n",
             kMemoryMib, options.rounds, options.image, record->digest.substr(0, 19));
  std::vector<const Series*> rows = {&cold_minimal, &cold_image, &first_python, &warm_python,
                                     &first_numpy, &cached_build};
  if (options.cold_build) rows.push_back(&cold_build);
  PrintTable(rows);
  fmt::print("ratios of medians:\n");
  PrintRatio("create -> ready, image / minimal", cold_image, cold_minimal);
  PrintRatio("first python3 / warm python3", first_python, warm_python);
  fmt::print("image size: {:.1f} MiB erofs for a {:.1f} MiB tree: {:.2f}x\n",
             static_cast<double>(record->size) / (1 << 20),
             static_cast<double>(record->tree_size) / (1 << 20),
             record->tree_size ? static_cast<double>(record->size) / static_cast<double>(record->tree_size) : 0.0);
  fmt::print("host memory (PSS of the QEMU processes, each VM ran `{}`):\n", warm);
  fmt::print("  1 parent + 8 forks: {:.1f} MiB\n", static_cast<double>(forked_kib) / 1024);
  fmt::print("  9 cold VMs:         {:.1f} MiB\n", static_cast<double>(cold_kib) / 1024);
  if (cold_kib > 0) {
    fmt::print("  forks / cold: {:.2f}x\n",
               static_cast<double>(forked_kib) / static_cast<double>(cold_kib));
  }
  return {};
}

}  // namespace
}  // namespace vessel::bench

int main(int argc, char** argv) {
  vessel::bench::Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    int value = 0;
    if (i + 1 < argc && arg == "--rounds" && vessel::bench::ParseInt(argv[i + 1], value)) {
      options.rounds = value;
      ++i;
    } else if (i + 1 < argc && arg == "--exec-iterations" &&
               vessel::bench::ParseInt(argv[i + 1], value)) {
      options.exec_iterations = value;
      ++i;
    } else if (i + 1 < argc && arg == "--image") {
      options.image = argv[++i];
    } else if (arg == "--cold-build") {
      options.cold_build = true;
    } else {
      fmt::print(stderr, "usage: vessel_image_bench [--rounds N] [--exec-iterations N] "
                         "[--image NAME] [--cold-build]\n");
      return 2;
    }
  }
  if (auto r = vessel::bench::RunAll(options); !r) {
    fmt::print(stderr, "vessel_image_bench: {}\n", r.error().ToString());
    return 1;
  }
  return 0;
}
