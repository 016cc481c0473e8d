// Percentiles of latency samples, shared by the pools' statistics and the benchmarks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace vessel {

// The nearest-rank percentile `p` (0..100] of `sorted`, which is sorted and not empty.
template <typename T>
[[nodiscard]] T Percentile(const std::vector<T>& sorted, double p) {
  auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace vessel
