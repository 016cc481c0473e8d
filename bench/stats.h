// Command-line values, medians, percentiles and the table the benchmarks print.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/stats.h"
#include "vessel/engine_kind.h"

namespace vessel::bench {

using Clock = std::chrono::steady_clock;

inline double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// A positive integer command-line value.
inline bool ParseInt(std::string_view text, int& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size() && out > 0;
}

// An --engine value: auto, qemu or kvm.
inline std::optional<EngineKind> ParseEngine(std::string_view text) {
  if (text == "auto") return EngineKind::kAuto;
  if (text == "qemu") return EngineKind::kQemu;
  if (text == "kvm") return EngineKind::kKvm;
  return std::nullopt;
}

struct Series {
  std::string name;
  std::vector<double> ms;
};

inline std::optional<double> Median(const Series& s) {
  if (s.ms.empty()) return std::nullopt;
  auto sorted = s.ms;
  std::sort(sorted.begin(), sorted.end());
  return Percentile(sorted, 50);
}

inline std::string Cell(std::optional<double> v) { return v ? fmt::format("{:.2f}", *v) : "-"; }

inline void PrintTable(const std::vector<const Series*>& rows) {
  size_t name_width = 6;
  for (const Series* s : rows) name_width = std::max(name_width, s->name.size());
  fmt::print("{:<{}}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}\n", "metric (ms)", name_width, "n",
             "min", "median", "p90", "p99", "max");
  fmt::print("{}\n", std::string(name_width + 2 + 5 + 5 * 11, '-'));
  for (const Series* s : rows) {
    auto sorted = s->ms;
    std::sort(sorted.begin(), sorted.end());
    std::optional<double> min, median, p90, p99, max;
    if (!sorted.empty()) {
      min = sorted.front();
      median = Percentile(sorted, 50);
      max = sorted.back();
      // A percentile means something only with enough samples above it.
      if (sorted.size() >= 10) p90 = Percentile(sorted, 90);
      if (sorted.size() >= 100) p99 = Percentile(sorted, 99);
    }
    fmt::print("{:<{}}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}\n", s->name, name_width,
               sorted.size(), Cell(min), Cell(median), Cell(p90), Cell(p99), Cell(max));
  }
}

inline void PrintRatio(std::string_view label, const Series& num, const Series& den) {
  auto n = Median(num);
  auto d = Median(den);
  if (!n || !d || *d <= 0) return;
  fmt::print("  {}: {:.2f}x  ({:.1f} / {:.1f} ms)\n", label, *n / *d, *n, *d);
}

}  // namespace vessel::bench
