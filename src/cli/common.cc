#include <fmt/format.h>

#include <cstdio>

#include "cli/cli.h"

namespace vessel::cli {

void PrintError(std::string_view message) { fmt::print(stderr, "vessel: {}\n", message); }

int Failure(std::string_view message) {
  PrintError(message);
  return kExitVesselError;
}

int Failure(const Error& error) { return Failure(error.ToString()); }

}  // namespace vessel::cli
