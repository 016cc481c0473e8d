// Files an engine writes when it saves a VM: new files of the caller's, and the state file
// that Vm::SaveAhead() creates before Vm::Save() fills it.
#pragma once

#include <optional>
#include <string>
#include <utility>

#include "base/unique_fd.h"
#include "engine/engine.h"
#include "vessel/error.h"

namespace vessel::engine {

// The saved VM's file names in the directory Vm::Save() writes.
inline constexpr const char* kSavedMemoryFile = "memory";
inline constexpr const char* kSavedStateFile = "state";

// A new file at `path`, mode 0600, opened with `flags`: an error when it exists.
[[nodiscard]] Result<UniqueFd> CreateNewFile(const std::string& path, int flags);

// The state file that SaveAhead() created, kept open for Save() to write.
class StateAhead {
 public:
  // Creates `path` empty and keeps a writer to it; returns a reader of it for the VMs
  // started ahead of the save.
  [[nodiscard]] Result<UniqueFd> Create(const std::string& path);
  // Whether `path` is the file created ahead.
  [[nodiscard]] bool Is(const std::string& path) const { return !path.empty() && path_ == path; }
  // The writer of `path`: the one created ahead, or a new file. Either way nothing is kept.
  [[nodiscard]] Result<UniqueFd> Take(const std::string& path);

  // Vm::SaveAhead(dir) of a VM whose RAM is the file `ram`: while it is mapped shared
  // (`shared`), it will be the saved memory, so `ram` itself and `dir`'s state file,
  // created here; otherwise nothing (the save will copy the RAM).
  [[nodiscard]] Result<std::optional<VmSpec::Saved>> SaveAhead(int ram, bool shared,
                                                               const std::string& dir);

 private:
  std::string path_;
  UniqueFd writer_;
};

}  // namespace vessel::engine
