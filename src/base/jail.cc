#include "base/jail.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/capability.h>
#include <linux/mount.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <tuple>

namespace vessel {
namespace {

// What every VMM needs besides its own paths: its libraries and the loader's cache.
constexpr const char* kSystemPaths[] = {"/usr", "/etc/ld.so.cache"};
// Top-level names that are directories on some hosts and symlinks into /usr on others.
constexpr const char* kTopLevel[] = {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"};
constexpr const char* kBasicDevices[] = {"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"};

bool Inside(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.starts_with(dir) && path[dir.size()] == '/';
}

// Mount flags of the file system at `path` that a read-only remount must keep: in a user
// namespace the kernel refuses to clear the ones the bound mount has locked.
unsigned long KeptFlags(const char* path) {
  struct statfs fs {};
  if (statfs(path, &fs) != 0) return 0;
  unsigned long kept = 0;
  // statfs reports the mount's flags as the ST_* bits of statvfs.
  if (fs.f_flags & ST_NOSUID) kept |= MS_NOSUID;
  if (fs.f_flags & ST_NODEV) kept |= MS_NODEV;
  if (fs.f_flags & ST_NOEXEC) kept |= MS_NOEXEC;
  if (fs.f_flags & ST_NOATIME) kept |= MS_NOATIME;
  if (fs.f_flags & ST_NODIRATIME) kept |= MS_NODIRATIME;
  if (fs.f_flags & ST_RELATIME) kept |= MS_RELATIME;
  return kept;
}

int WriteFile(const char* path, const std::string& text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t n = write(fd, text.data(), text.size());
  int error = n == static_cast<ssize_t>(text.size()) ? 0 : (n < 0 ? errno : EIO);
  close(fd);
  return error;
}

int RunStep(const JailStep& step) {
  const char* path = step.path.c_str();
  switch (step.op) {
    case JailStep::Op::kMountRoot:
      // Nothing done inside may reach the host's mount table.
      if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return errno;
      return mount("tmpfs", path, "tmpfs", MS_NOSUID, "mode=0755,size=1m") == 0 ? 0 : errno;
    case JailStep::Op::kMkdir: return mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : errno;
    case JailStep::Op::kFile: {
      int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) return errno;
      close(fd);
      return 0;
    }
    case JailStep::Op::kBind:
      // Not recursive: what is mounted below a bound path (the jail's own root, below the VM
      // directory) stays outside.
      return mount(step.source.c_str(), path, nullptr, MS_BIND, nullptr) == 0 ? 0 : errno;
    case JailStep::Op::kReadOnly:
      return mount(nullptr, path, nullptr,
                   MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | KeptFlags(path), nullptr) == 0
                 ? 0
                 : errno;
    case JailStep::Op::kSymlink: return symlink(step.source.c_str(), path) == 0 ? 0 : errno;
    case JailStep::Op::kMknod:
      if (mknod(path, S_IFCHR | step.mode, step.rdev) != 0) return errno;
      if (chown(path, step.uid, step.gid) != 0 || chmod(path, step.mode) != 0) return errno;
      return 0;
    case JailStep::Op::kProc:
      // Only the processes (subset=pid): no /proc/sys, /proc/sysrq-trigger or the like,
      // which a jailed uid 0 could write without any capability.
      return mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "subset=pid") == 0
                 ? 0
                 : errno;
    case JailStep::Op::kPivot:
      // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves
      // only the new.
      if (chdir(path) != 0) return errno;
      if (syscall(SYS_pivot_root, ".", ".") == 0) {
        if (umount2(".", MNT_DETACH) != 0) return errno;
        return chdir("/") == 0 ? 0 : errno;
      }
      // A root that is the initramfs (rootfs) cannot be pivoted away from: move the new
      // root over it and chroot, as switch_root does. With every capability dropped next,
      // CAP_SYS_CHROOT included, there is no way back out.
      if (errno != EINVAL) return errno;
      if (mount(".", "/", nullptr, MS_MOVE, nullptr) != 0) return errno;
      if (chroot(".") != 0) return errno;
      return chdir("/") == 0 ? 0 : errno;
    case JailStep::Op::kWrite: return WriteFile(path, step.source);
    case JailStep::Op::kAttach:
      return syscall(SYS_move_mount, step.tree, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) == 0
                 ? 0
                 : errno;
  }
  return EINVAL;
}

int DropPrivileges(const JailPlan& plan) {
  // The bounding set first, while CAP_SETPCAP is still held: a root that execs gets only
  // what is left in it, which is nothing.
  for (int cap = 0; cap <= 63; ++cap) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return errno;
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
    return errno;
  }
  // The system calls themselves: the C library's wrappers change the ids of every thread
  // it knows of, and a child cloned from a threaded process has only the one, while the
  // library still counts its parent's, and waits for a thread being created at the time
  // of the clone forever.
  if (plan.gid) {
    if (syscall(SYS_setgroups, 0, nullptr) != 0) return errno;
    if (syscall(SYS_setresgid, *plan.gid, *plan.gid, *plan.gid) != 0) return errno;
  }
  if (plan.uid && syscall(SYS_setresuid, *plan.uid, *plan.uid, *plan.uid) != 0) return errno;
  __user_cap_header_struct header{.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capset, &header, none) != 0) return errno;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return errno;
  return 0;
}

}  // namespace

HostFacts ProbeHost(const JailSpec& spec) {
  HostFacts host;
  host.root = geteuid() == 0;
  host.uid = geteuid();
  host.gid = getegid();
  for (const char* name : kTopLevel) {
    char target[256];
    ssize_t n = readlink(name, target, sizeof(target) - 1);
    if (n > 0) host.symlinks[name] = std::string(target, static_cast<size_t>(n));
  }
  std::vector<std::string> devices(std::begin(kBasicDevices), std::end(kBasicDevices));
  devices.insert(devices.end(), spec.devices.begin(), spec.devices.end());
  for (const auto& device : devices) {
    struct stat st {};
    if (stat(device.c_str(), &st) == 0 && S_ISCHR(st.st_mode)) {
      host.devices[device] = {st.st_rdev, static_cast<mode_t>(st.st_mode & 0777)};
    }
  }
  std::vector<std::string> paths(std::begin(kSystemPaths), std::end(kSystemPaths));
  paths.insert(paths.end(), spec.read_only.begin(), spec.read_only.end());
  paths.insert(paths.end(), spec.writable.begin(), spec.writable.end());
  for (const char* name : kTopLevel) {
    if (!host.symlinks.contains(name)) paths.push_back(name);
  }
  for (const auto& path : paths) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
      host.missing.push_back(path);
    } else if (S_ISDIR(st.st_mode)) {
      host.directories.push_back(path);
    }
  }
  return host;
}

Result<JailPlan> PlanJail(const JailSpec& spec, const HostFacts& host) {
  if (spec.root.empty() || spec.root[0] != '/') {
    return Fail(Error::InvalidConfig("jail root", "must be an absolute path"));
  }
  auto absolute = [](const std::string& path) {
    return !path.empty() && path[0] == '/' && path.find("/..") == std::string::npos;
  };
  for (const auto* list : {&spec.read_only, &spec.writable, &spec.devices}) {
    for (const auto& path : *list) {
      if (!absolute(path)) {
        return Fail(Error::InvalidConfig("jail path", fmt::format("{} is not absolute", path)));
      }
    }
  }
  for (const auto& attached : spec.attached) {
    if (!absolute(attached.path) || attached.tree < 0) {
      return Fail(Error::InvalidConfig(
          "jail mount", fmt::format("{} is not absolute or has no mount", attached.path)));
    }
  }
  auto missing = [&host](const std::string& path) {
    return std::find(host.missing.begin(), host.missing.end(), path) != host.missing.end();
  };
  auto is_directory = [&host](const std::string& path) {
    return std::find(host.directories.begin(), host.directories.end(), path) !=
           host.directories.end();
  };
  JailPlan plan;
  plan.clone_flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
  auto& steps = plan.steps;
  if (!host.root) {
    // Without root, a user namespace grants the rest; the VMM keeps our uid in it.
    plan.clone_flags |= CLONE_NEWUSER;
    steps.push_back({.op = JailStep::Op::kWrite, .path = "/proc/self/setgroups", .source = "deny"});
    steps.push_back({.op = JailStep::Op::kWrite,
                     .path = "/proc/self/uid_map",
                     .source = fmt::format("{0} {0} 1\n", host.uid)});
    steps.push_back({.op = JailStep::Op::kWrite,
                     .path = "/proc/self/gid_map",
                     .source = fmt::format("{0} {0} 1\n", host.gid)});
  } else {
    plan.uid = spec.uid;
    plan.gid = spec.gid;
  }
  const std::string& root = spec.root;
  steps.push_back({.op = JailStep::Op::kMountRoot, .path = root});

  std::set<std::string> made;
  auto make_parents = [&](const std::string& path) {
    for (size_t slash = path.find('/', 1); slash != std::string::npos;
         slash = path.find('/', slash + 1)) {
      std::string dir = path.substr(0, slash);
      if (made.insert(dir).second)
        steps.push_back({.op = JailStep::Op::kMkdir, .path = root + dir});
    }
  };
  struct Bind {
    std::string path;
    bool writable;
  };
  std::vector<Bind> binds;
  for (const char* path : kSystemPaths) binds.push_back({path, false});
  for (const char* name : kTopLevel) {
    if (!host.symlinks.contains(name)) binds.push_back({name, false});
  }
  for (const auto& path : spec.read_only) binds.push_back({path, false});
  for (const auto& path : spec.writable) binds.push_back({path, true});
  std::sort(binds.begin(), binds.end(),
            [](const Bind& a, const Bind& b) { return a.path < b.path; });
  std::vector<std::string> bound_dirs;
  for (const auto& bind : binds) {
    if (missing(bind.path)) continue;
    bool covered = std::any_of(bound_dirs.begin(), bound_dirs.end(), [&](const std::string& dir) {
      return bind.path == dir || Inside(bind.path, dir);
    });
    if (covered) continue;
    make_parents(bind.path);
    std::string target = root + bind.path;
    if (is_directory(bind.path)) {
      bound_dirs.push_back(bind.path);
      made.insert(bind.path);
      steps.push_back({.op = JailStep::Op::kMkdir, .path = target});
    } else {
      steps.push_back({.op = JailStep::Op::kFile, .path = target});
    }
    steps.push_back({.op = JailStep::Op::kBind, .path = target, .source = bind.path});
    if (!bind.writable) steps.push_back({.op = JailStep::Op::kReadOnly, .path = target});
  }
  for (const auto& [name, target] : host.symlinks) {
    steps.push_back({.op = JailStep::Op::kSymlink, .path = root + name, .source = target});
  }

  std::vector<std::string> devices(std::begin(kBasicDevices), std::end(kBasicDevices));
  devices.insert(devices.end(), spec.devices.begin(), spec.devices.end());
  for (const auto& device : devices) {
    auto it = host.devices.find(device);
    if (it == host.devices.end()) continue;
    make_parents(device);
    std::string target = root + device;
    if (host.root) {
      // A node of the jail's own, on its tmpfs: the jailed uid may open it, and the host's
      // node keeps its owner and mode.
      steps.push_back({.op = JailStep::Op::kMknod,
                       .path = target,
                       .rdev = it->second.rdev,
                       .mode = it->second.mode,
                       .uid = spec.uid.value_or(0),
                       .gid = spec.gid.value_or(0)});
    } else {
      steps.push_back({.op = JailStep::Op::kFile, .path = target});
      steps.push_back({.op = JailStep::Op::kBind, .path = target, .source = device});
    }
  }
  for (const auto& attached : spec.attached) {
    make_parents(attached.path);
    std::string target = root + attached.path;
    steps.push_back({.op = JailStep::Op::kFile, .path = target});
    steps.push_back({.op = JailStep::Op::kAttach, .path = target, .tree = attached.tree});
  }
  steps.push_back({.op = JailStep::Op::kMkdir, .path = root + "/proc"});
  steps.push_back({.op = JailStep::Op::kProc, .path = root + "/proc"});
  steps.push_back({.op = JailStep::Op::kPivot, .path = root});
  return plan;
}

int RunJailSteps(const JailPlan& plan, size_t* failed_step) {
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    if (int error = RunStep(plan.steps[i]); error != 0) {
      *failed_step = i;
      return error;
    }
  }
  *failed_step = plan.steps.size();
  return DropPrivileges(plan);
}

namespace {

// A user namespace whose map takes ids `from` to `to`, for an idmapped mount: made by a
// child that enters it and waits while we write its maps and open it.
Result<UniqueFd> MappingNamespace(uid_t from_uid, gid_t from_gid, uid_t to_uid, gid_t to_gid) {
  int hold[2], ready[2];
  if (pipe2(hold, O_CLOEXEC) != 0) return Fail(Error::HostIo("pipe", errno));
  UniqueFd hold_read(hold[0]), hold_write(hold[1]);
  if (pipe2(ready, O_CLOEXEC) != 0) return Fail(Error::HostIo("pipe", errno));
  UniqueFd ready_read(ready[0]), ready_write(ready[1]);
  pid_t pid = fork();
  if (pid < 0) return Fail(Error::HostIo("fork", errno));
  if (pid == 0) {
    close(hold[1]);
    char entered = unshare(CLONE_NEWUSER) == 0 ? 1 : 0;
    (void)!write(ready[1], &entered, 1);
    char byte;
    (void)!read(hold[0], &byte, 1);  // until the parent closes its end
    _exit(0);
  }
  hold_read.Reset();
  ready_write.Reset();
  char entered = 0;
  Result<UniqueFd> result = Fail(Error::HostIo("enter a user namespace", EPERM));
  if (read(ready_read.get(), &entered, 1) == 1 && entered == 1) {
    std::string proc = fmt::format("/proc/{}/", pid);
    int error = WriteFile((proc + "uid_map").c_str(), fmt::format("{} {} 1\n", from_uid, to_uid));
    if (error == 0) {
      error = WriteFile((proc + "gid_map").c_str(), fmt::format("{} {} 1\n", from_gid, to_gid));
    }
    UniqueFd ns(open((proc + "ns/user").c_str(), O_RDONLY | O_CLOEXEC));
    if (error == 0 && !ns) error = errno;
    result = error == 0 ? Result<UniqueFd>(std::move(ns))
                        : Fail(Error::HostIo("map ids in a user namespace", error));
  }
  hold_write.Reset();
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  return result;
}

}  // namespace

Result<UniqueFd> IdmappedFile(int fd, uid_t uid, gid_t gid) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return Fail(Error::HostIo("stat a file to map", errno));
  // One namespace per mapping, kept: a process maps the same caller's files many times.
  static std::mutex mutex;
  static std::map<std::tuple<uid_t, gid_t, uid_t, gid_t>, UniqueFd> namespaces;
  std::lock_guard lock(mutex);
  auto key = std::make_tuple(st.st_uid, st.st_gid, uid, gid);
  auto it = namespaces.find(key);
  if (it == namespaces.end()) {
    auto ns = MappingNamespace(st.st_uid, st.st_gid, uid, gid);
    if (!ns) return Fail(std::move(ns).error());
    it = namespaces.emplace(key, std::move(*ns)).first;
  }
  UniqueFd tree(static_cast<int>(
      syscall(SYS_open_tree, fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH)));
  if (!tree) return Fail(Error::HostIo("open_tree", errno));
  mount_attr attr{};
  attr.attr_set = MOUNT_ATTR_IDMAP;
  attr.userns_fd = static_cast<__u64>(static_cast<unsigned>(it->second.get()));
  if (syscall(SYS_mount_setattr, tree.get(), "", AT_EMPTY_PATH, &attr, sizeof(attr)) != 0) {
    return Fail(Error::HostIo("idmap a mount (mount_setattr)", errno));
  }
  return tree;
}

std::string DescribeJailStep(const JailPlan& plan, size_t index) {
  if (index >= plan.steps.size()) return "drop privileges";
  const JailStep& step = plan.steps[index];
  switch (step.op) {
    case JailStep::Op::kMountRoot: return "mount the jail's root on " + step.path;
    case JailStep::Op::kMkdir: return "make the directory " + step.path;
    case JailStep::Op::kFile: return "make the mount point " + step.path;
    case JailStep::Op::kBind: return fmt::format("bind {} on {}", step.source, step.path);
    case JailStep::Op::kReadOnly: return "make " + step.path + " read-only";
    case JailStep::Op::kSymlink: return fmt::format("link {} to {}", step.path, step.source);
    case JailStep::Op::kMknod: return "make the device " + step.path;
    case JailStep::Op::kProc: return "mount proc on " + step.path;
    case JailStep::Op::kPivot: return "make " + step.path + " the root";
    case JailStep::Op::kWrite: return "write " + step.path;
    case JailStep::Op::kAttach: return "attach a mount on " + step.path;
  }
  return "an unknown step";
}

}  // namespace vessel
