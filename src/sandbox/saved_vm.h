// Starting sandboxes from a saved VM (a snapshot directory), for the pools: what they need
// of the sandbox's internals and nothing more.
#pragma once

#include <memory>
#include <string>

#include "base/deadline.h"
#include "engine/engine.h"
#include "vessel/error.h"
#include "vessel/sandbox.h"

namespace vessel::sandbox {

// What restoring a snapshot directory needs: the engine and the VM's spec.
struct SavedVm {
  std::shared_ptr<engine::Engine> engine;
  engine::VmSpec spec;  // with restore set
};

// Checks the snapshot in `dir` (kSnapshotFormat when it is damaged, foreign or its assets
// changed) and makes the spec to restore it with `options`.
[[nodiscard]] Result<SavedVm> OpenSaved(const std::string& dir, const RestoreOptions& options);

// Starts a VM from a saved one (spec.restore set) and wakes its agent as a clone.
[[nodiscard]] Result<std::unique_ptr<Sandbox>> StartSaved(std::shared_ptr<engine::Engine> engine,
                                                          const engine::VmSpec& spec,
                                                          Deadline deadline);

// The second half of StartSaved(), for a VM that engine->Start(spec) started ahead of time
// and that has waited since, its memory mapped: loads the saved state, runs the VM and wakes
// its agent as a clone. Destroys the VM on failure.
[[nodiscard]] Result<std::unique_ptr<Sandbox>> FinishSaved(std::shared_ptr<engine::Engine> engine,
                                                           std::unique_ptr<engine::Vm> vm,
                                                           const engine::VmSpec& spec,
                                                           Deadline deadline);

}  // namespace vessel::sandbox
