// The jail (base/jail.h) every VMM process of a VM starts in.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "base/jail.h"
#include "engine/engine.h"
#include "vessel/error.h"

namespace vessel::engine {

struct VmmJailOptions {
  std::string vm_dir;  // the VM's runtime directory: writable, and where the root is built
  std::string binary;  // the VMM's executable: visible when it is not under /usr
  bool kvm = false;    // the VMM opens /dev/kvm
  // As root, run as JailUser() (the VM directory becomes theirs). For a VMM that needs no
  // file of root's but those handed to it (by descriptor, or by an idmapped mount).
  bool unprivileged = false;
};

struct JailIds {
  uid_t uid;
  gid_t gid;
};

// The uid and gid of `nobody`, which an unprivileged jail started by root runs as; unset
// when we are not root (the jail then keeps our ids, in a user namespace).
std::optional<JailIds> JailUser();

// What the VMM may see: its VM directory (writable), the guest's kernel, initramfs and
// image, its binary, /usr and the basic devices (read-only or made for it), /dev/kvm when
// it uses KVM. Makes <vm_dir>/root, the jail's mount point, and with `unprivileged` gives
// the VM directory to the jail's uid.
[[nodiscard]] Result<JailSpec> VmmJail(const VmSpec& spec, const VmmJailOptions& options);

// Whether VMMs are jailed: unless VESSEL_JAIL=off, for hosts that forbid namespaces
// (docs/security.md says what that gives up).
bool JailEnabled();

}  // namespace vessel::engine
