#include "engine/vmm_jail.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string_view>

namespace vessel::engine {
namespace {

constexpr const char* kJailUser = "nobody";
constexpr uid_t kNobody = 65534;

}  // namespace

bool JailEnabled() {
  const char* setting = std::getenv("VESSEL_JAIL");
  return !(setting && std::string_view(setting) == "off");
}

std::optional<JailIds> JailUser() {
  if (::geteuid() != 0) return std::nullopt;
  passwd entry{};
  passwd* user = nullptr;
  char buffer[1024];
  ::getpwnam_r(kJailUser, &entry, buffer, sizeof(buffer), &user);
  return JailIds{user ? user->pw_uid : kNobody, user ? user->pw_gid : kNobody};
}

Result<JailSpec> VmmJail(const VmSpec& spec, const VmmJailOptions& options) {
  JailSpec jail;
  jail.root = options.vm_dir + "/root";
  if (::mkdir(jail.root.c_str(), 0755) != 0 && errno != EEXIST) {
    return Fail(Error::HostIo("create " + jail.root, errno));
  }
  jail.writable = {options.vm_dir};
  jail.read_only = {spec.kernel, spec.initramfs};
  if (!spec.image.empty()) jail.read_only.push_back(spec.image);
  if (options.binary.starts_with("/") && !options.binary.starts_with("/usr/")) {
    jail.read_only.push_back(options.binary);
  }
  if (options.kvm) jail.devices.push_back("/dev/kvm");
  if (auto ids = JailUser(); options.unprivileged && ids) {
    jail.uid = ids->uid;
    jail.gid = ids->gid;
    if (::chown(options.vm_dir.c_str(), ids->uid, ids->gid) != 0) {
      return Fail(Error::HostIo("give " + options.vm_dir + " to the jail's uid", errno));
    }
  }
  return jail;
}

}  // namespace vessel::engine
