// The jail a VMM process starts in: fresh mount, pid, network, IPC and UTS namespaces,
// a root file system that holds only what the VMM needs, no capabilities, and, when
// Vessel runs as root and the VMM can do without root's files, an unprivileged uid.
//
// Building one is two halves. PlanJail turns a JailSpec and what the host looks like
// (HostFacts) into a list of steps: plain data, unit-tested. RunJailSteps performs them
// in the child between fork and exec, with async-signal-safe system calls only.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel {

struct JailSpec {
  // An empty directory the new root (a tmpfs, seen only inside the jail) is mounted on.
  std::string root;
  // Host paths that appear inside at the same path: files or directories.
  std::vector<std::string> read_only;
  std::vector<std::string> writable;
  // Device nodes the VMM may open, e.g. /dev/kvm; missing ones are left out.
  std::vector<std::string> devices;
  // The uid and gid to run as; only when the jail is built as root. The devices made for
  // the jail are theirs.
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  // Detached mounts (IdmappedFile) attached at a path of the jail's own. The descriptor
  // stays the caller's, open until the jailed child has started.
  struct Attached {
    int tree = -1;
    std::string path;  // inside the jail, absolute
  };
  std::vector<Attached> attached;
};

// What PlanJail needs to know of the host.
struct HostFacts {
  bool root = false;  // euid 0: device nodes are made with mknod; else a user namespace
  uid_t uid = 0;      // this process's, for a user namespace's map
  gid_t gid = 0;
  // Top-level directories that are symlinks (Debian's /lib -> usr/lib), by path.
  std::map<std::string, std::string> symlinks;
  // Device nodes that exist: path -> {rdev, mode}.
  struct Device {
    dev_t rdev = 0;
    mode_t mode = 0;
  };
  std::map<std::string, Device> devices;
  // Paths that are directories (the others are bound as files), and paths that do not
  // exist (left out).
  std::vector<std::string> directories;
  std::vector<std::string> missing;
};

// Looks at the host for the paths `spec` names.
HostFacts ProbeHost(const JailSpec& spec);

struct JailStep {
  enum class Op {
    kMountRoot,  // a tmpfs on `path`: the new root
    kMkdir,      // mkdir `path` (mode 0755)
    kFile,       // create the empty file `path`, a mount point
    kBind,       // bind `source` on `path`
    kReadOnly,   // remount the bind at `path` read-only
    kSymlink,    // `path` -> `source`
    kMknod,      // a character device `path` with `rdev` and `mode`, owned by `uid`:`gid`
    kProc,       // mount a proc file system of processes only (subset=pid) on `path`
    kPivot,      // make `path` the root; the old root goes
    kWrite,      // write `source` to the file `path` (a user namespace's maps)
    kAttach,     // attach the detached mount `tree` on `path`
  };
  Op op;
  std::string path;
  std::string source;
  dev_t rdev = 0;
  mode_t mode = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  int tree = -1;
  bool operator==(const JailStep&) const = default;
};

struct JailPlan {
  int clone_flags = 0;  // CLONE_NEW* for the child
  std::vector<JailStep> steps;
  // Credentials to take after the steps, when set.
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
};

// The namespaces, mounts and devices that make `spec`'s jail on a host like `host`.
// kInvalidConfig when a path is not absolute or the root is not set.
[[nodiscard]] Result<JailPlan> PlanJail(const JailSpec& spec, const HostFacts& host);

// In the child, after clone(plan.clone_flags): performs the steps, drops every
// capability (and the uid, when the plan says), and sets no_new_privs. Returns 0, or the
// errno of the first failure with the index of the step in `*failed_step` (steps.size()
// for the credentials). Async-signal-safe: allocates nothing.
int RunJailSteps(const JailPlan& plan, size_t* failed_step);

// A detached mount of the file `fd` names, on which the file's owner is seen as `uid` and
// its group as `gid` (an idmapped mount): a jailed child running as them may open it as
// its owner could, and the file itself keeps its owner and mode. Needs root, and a file
// system that takes idmapped mounts (ext4, xfs, btrfs, tmpfs since Linux 6.3); elsewhere
// kHostIo. Attach it with JailSpec::attached.
[[nodiscard]] Result<UniqueFd> IdmappedFile(int fd, uid_t uid, gid_t gid);

// A step for an error message: "bind /usr on /run/vessel/vm-1/root/usr".
std::string DescribeJailStep(const JailPlan& plan, size_t index);

}  // namespace vessel
