// Per-VM runtime directories under one root, and their cleanup.
//
// Each VM directory holds a lock file that its owning host process keeps locked. When
// that process dies, however it dies, the lock goes with it, and the next Vessel process
// that creates a VM removes the orphaned directory.
#pragma once

#include <string>
#include <utility>

#include "base/private_dir.h"
#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel::engine {

// $VESSEL_RUNTIME_DIR, else $XDG_RUNTIME_DIR/vessel, else /run/vessel for root, else
// /tmp/vessel-<uid>.
std::string RuntimeRoot();

// The runtime root's role, for MakePrivateDir's errors.
extern const PrivateDirRole kRuntimeDirRole;
// RuntimeRoot(), made private with MakePrivateDir; narrowed unless $VESSEL_RUNTIME_DIR
// chose it.
[[nodiscard]] Result<std::string> PrivateRuntimeRoot();

class RuntimeDir {
 public:
  // Creates <root>/vm-<id> (0700) with a fresh random id, and locks it.
  [[nodiscard]] static Result<RuntimeDir> Create();
  RuntimeDir(RuntimeDir&& other) noexcept
      : id_(std::move(other.id_)),
        path_(std::exchange(other.path_, {})),
        lock_(std::move(other.lock_)) {}
  RuntimeDir& operator=(RuntimeDir&& other) noexcept {
    if (this != &other) {
      Remove();
      id_ = std::move(other.id_);
      path_ = std::exchange(other.path_, {});
      lock_ = std::move(other.lock_);
    }
    return *this;
  }
  ~RuntimeDir() { Remove(); }

  [[nodiscard]] const std::string& id() const { return id_; }
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::string File(const std::string& name) const { return path_ + "/" + name; }
  // Why the VM might have failed, for error messages: the tails of the VMM's own log
  // (vmm.log, introduced as "<vmm> said") and of the guest console (console.log).
  [[nodiscard]] std::string Diagnostics(const std::string& vmm) const;
  void Remove();

 private:
  RuntimeDir() = default;
  std::string id_;
  std::string path_;
  UniqueFd lock_;
};

// Removes the directories of VMs whose owner process is gone. Returns how many.
int SweepStaleRuntimeDirs();

}  // namespace vessel::engine
