// vessel_stream_bench: command round trips, concurrency and file throughput in one ready
// VM, printed side by side in one run.
//
//   vessel_stream_bench [--exec-iterations N] [--file-mib N] [--rounds N]
#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <string_view>
#include <vector>

#include "bench/stats.h"
#include "vessel/sandbox.h"

namespace vessel::bench {
namespace {

struct Options {
  int exec_iterations = 200;
  int file_mib = 64;
  int rounds = 5;
};

Result<void> RunAll(const Options& options) {
  SandboxConfig config;
  config.vcpus = 2;
  config.memory_mib = 512;
  auto sandbox = Sandbox::Create(config);
  if (!sandbox) return Fail(std::move(sandbox).error());
  Sandbox& sb = **sandbox;

  Series exec{"exec `true` round trip", {}};
  for (int i = 0; i < options.exec_iterations + 10; ++i) {
    auto start = Clock::now();
    auto r = sb.Execute(Command::Argv({"true"}));
    if (!r) return Fail(std::move(r).error());
    if (i >= 10) exec.ms.push_back(MsSince(start));
  }

  Series sequential{"16 x `true`, one after another", {}};
  Series concurrent{"16 x `true`, all started at once", {}};
  for (int round = 0; round < options.rounds; ++round) {
    auto start = Clock::now();
    for (int i = 0; i < 16; ++i) {
      auto r = sb.Execute(Command::Argv({"true"}));
      if (!r) return Fail(std::move(r).error());
    }
    sequential.ms.push_back(MsSince(start));
    start = Clock::now();
    std::vector<std::unique_ptr<Process>> processes;
    for (int i = 0; i < 16; ++i) {
      auto p = sb.Start(Command::Argv({"true"}));
      if (!p) return Fail(std::move(p).error());
      processes.push_back(std::move(*p));
    }
    for (auto& p : processes) {
      auto r = p->Wait();
      if (!r) return Fail(std::move(r).error());
    }
    concurrent.ms.push_back(MsSince(start));
  }

  const uint64_t size = static_cast<uint64_t>(options.file_mib) * 1024 * 1024;
  Series to_guest{fmt::format("write {} MiB host -> guest", options.file_mib), {}};
  Series from_guest{fmt::format("read {} MiB guest -> host", options.file_mib), {}};
  // What the guest does alone with the same bytes, exec included: a pipe into a file, as
  // the agent writes an upload; a file into a pipe, as it reads a download.
  Series guest_in{fmt::format("guest alone: {} MiB pipe -> file (dd | cat >)", options.file_mib),
                  {}};
  Series guest_out{fmt::format("guest alone: {} MiB file -> pipe (cat | cat)", options.file_mib),
                   {}};
  auto guest_alone = [&](const std::string& script, Series& series) -> Result<void> {
    auto start = Clock::now();
    auto run = sb.Execute(Command::Argv({"sh", "-c", script}));
    if (!run) return Fail(std::move(run).error());
    if (!run->ok()) return Fail(Error::Backend("`" + script + "` failed in the guest"));
    series.ms.push_back(MsSince(start));
    return {};
  };
  std::vector<uint8_t> pattern(256 * 1024);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 131);
  for (int round = 0; round < options.rounds; ++round) {
    uint64_t sent = 0;
    auto start = Clock::now();
    auto w = sb.WriteFileStream("/tmp/bench.dat", [&](std::span<uint8_t> buf) -> Result<size_t> {
      size_t n = static_cast<size_t>(std::min<uint64_t>({buf.size(), pattern.size(), size - sent}));
      std::copy_n(pattern.begin(), n, buf.begin());
      sent += n;
      return n;
    });
    if (!w) return Fail(std::move(w).error());
    to_guest.ms.push_back(MsSince(start));
    start = Clock::now();
    uint64_t received = 0;
    auto r =
        sb.ReadFileStream("/tmp/bench.dat", [&](std::span<const uint8_t> chunk) -> Result<void> {
          received += chunk.size();
          return {};
        });
    if (!r) return Fail(std::move(r).error());
    from_guest.ms.push_back(MsSince(start));
    if (received != size) return Fail(Error::Backend("short read in the benchmark"));
    if (auto alone = guest_alone(
            fmt::format("dd if=/dev/zero bs=65536 count={} 2>/dev/null | cat > /tmp/bench2.dat",
                        size / 65536),
            guest_in);
        !alone) {
      return alone;
    }
    if (auto alone = guest_alone("cat /tmp/bench2.dat | cat > /dev/null", guest_out); !alone) {
      return alone;
    }
  }
  (void)sb.Destroy();

  fmt::print("vessel_stream_bench: engine {}, guest 2 vCPUs, 512 MiB\n\n", sb.engine_name());
  PrintTable({&exec, &sequential, &concurrent, &to_guest, &from_guest, &guest_in, &guest_out});
  auto mbps = [&](const Series& s) {
    auto m = Median(s);
    return m ? static_cast<double>(size) / (1024.0 * 1024.0) / (*m / 1000.0) : 0.0;
  };
  fmt::print(
      "\nthroughput (median): host -> guest {:.1f} MiB/s, guest -> host {:.1f} MiB/s; "
      "the guest alone: pipe -> file {:.1f} MiB/s, file -> pipe {:.1f} MiB/s\n",
      mbps(to_guest), mbps(from_guest), mbps(guest_in), mbps(guest_out));
  fmt::print("ratios of medians:\n");
  PrintRatio("16 concurrent / 16 sequential `true`", concurrent, sequential);
  PrintRatio("upload / the guest's own pipe -> file (time; rate ratio is its inverse)", to_guest,
             guest_in);
  PrintRatio("download / the guest's own file -> pipe (time)", from_guest, guest_out);
  return {};
}

}  // namespace
}  // namespace vessel::bench

int main(int argc, char** argv) {
  vessel::bench::Options options;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string_view flag = argv[i];
    std::string_view value = argv[i + 1];
    int n = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
    if (ec != std::errc() || end != value.data() + value.size() || n <= 0) {
      fmt::print(stderr, "vessel_stream_bench: {} wants a positive number\n", flag);
      return 2;
    }
    if (flag == "--exec-iterations")
      options.exec_iterations = n;
    else if (flag == "--file-mib")
      options.file_mib = n;
    else if (flag == "--rounds")
      options.rounds = n;
    else {
      fmt::print(stderr,
                 "usage: vessel_stream_bench [--exec-iterations N] [--file-mib N] [--rounds N]\n");
      return 2;
    }
  }
  auto result = vessel::bench::RunAll(options);
  if (!result) {
    fmt::print(stderr, "vessel_stream_bench: {}\n", result.error().ToString());
    return 1;
  }
  return 0;
}
