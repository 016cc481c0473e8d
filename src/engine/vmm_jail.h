// The jail (base/jail.h) every VMM process of a VM starts in.
#pragma once

#include <string>

#include "base/jail.h"
#include "engine/engine.h"
#include "vessel/error.h"

namespace vessel::engine {

struct VmmJailOptions {
  std::string vm_dir;  // the VM's runtime directory: writable, and where the root is built
  std::string binary;  // the VMM's executable: visible when it is not under /usr
  bool kvm = false;    // the VMM opens /dev/kvm
  // As root, run as the uid and gid of `nobody` (the VM directory becomes theirs). For a
  // VMM that needs no file of root's: QEMU opens the snapshot files it maps by name.
  bool unprivileged = false;
};

// What the VMM may see: its VM directory (writable), the guest's kernel, initramfs and
// image, its binary, /usr and the basic devices (read-only or made for it), /dev/kvm when
// it uses KVM. Makes <vm_dir>/root, the jail's mount point, and with `unprivileged` gives
// the VM directory to the jail's uid.
[[nodiscard]] Result<JailSpec> VmmJail(const VmSpec& spec, const VmmJailOptions& options);

// Whether VMMs are jailed: unless VESSEL_JAIL=off, for hosts that forbid namespaces
// (docs/security.md says what that gives up).
bool JailEnabled();

}  // namespace vessel::engine
