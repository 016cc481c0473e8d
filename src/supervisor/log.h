// The supervisor's log: timestamped lines on stderr, which the supervisor points at
// supervisor.log in the sandbox's state directory.
#pragma once

#include <string_view>

namespace vessel::supervisor {

void Log(std::string_view message);

}  // namespace vessel::supervisor
