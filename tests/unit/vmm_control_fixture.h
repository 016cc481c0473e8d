// A well-formed configure request, shared by the control protocol's tests and the VMM's
// control session tests.
#pragma once

namespace vessel::testing {

inline constexpr const char* kGoodConfigure =
    R"({"op":"configure","vcpus":2,"memory_mib":256,"kernel":"/k/vmlinux",)"
    R"("initramfs":"/k/initramfs.cpio","cmdline":"console=ttyS0 quiet",)"
    R"("console_log":"/run/vm/console.log","vsock":{"cid":3,"uds":"/run/vm/vsock.sock"},)"
    R"("agent_port":"/run/vm/agent.sock","disk":"/images/root.erofs"})";

}  // namespace vessel::testing
