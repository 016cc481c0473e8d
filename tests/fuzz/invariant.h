// The fuzz targets' invariant check: a broken invariant aborts, which libFuzzer reports as
// a crash with the input that caused it.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace vessel::fuzz {

inline void Check(bool ok, const char* invariant) {
  if (ok) return;
  std::fprintf(stderr, "invariant broken: %s\n", invariant);
  std::abort();
}

}  // namespace vessel::fuzz
