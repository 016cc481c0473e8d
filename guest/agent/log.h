// Messages for the guest console (never the port).
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <utility>

namespace vessel::agent {

template <typename... Args>
void Log(fmt::format_string<Args...> format, Args&&... args) {
  fmt::print(stderr, "vessel-agent: {}\n", fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace vessel::agent
