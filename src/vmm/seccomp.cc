#include "vmm/seccomp.h"

#include <fmt/format.h>
#include <linux/audit.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <iterator>

#include "vmm/arch/x86/kvm_state.h"

namespace vessel::vmm {
namespace {

constexpr uint32_t kX32SyscallBit = 0x40000000;
// Load low half, compare, load high half, compare, allow.
constexpr size_t kInstructionsPerValue = 5;

// The ioctl requests of a running VM: KVM_RUN, and the KVM_GET_* of a snapshot (among them
// KVM_GET_REGS and KVM_GET_SREGS, which also log a failed vCPU). The VM's set-up
// (KVM_CREATE_*, KVM_SET_*, a restore's too) is over before the filter is installed.
std::vector<uint64_t> RunningVmIoctls() {
  std::vector<uint64_t> ioctls = SaveStateIoctls();
  ioctls.push_back(KVM_RUN);
  return ioctls;
}

// Allowances whose arguments are checked are filled in by VmmSyscallPolicy.
const SyscallAllowance kPolicy[] = {
    // vCPU threads
    {SYS_ioctl, "ioctl", "KVM_RUN on each vCPU; the KVM_GET_* of a snapshot, and to log a vCPU"},
    {SYS_rt_sigreturn, "rt_sigreturn", "returning from the empty handler of the vCPU kick signal"},
    {SYS_tgkill, "tgkill", "kicking a vCPU thread of this process out of KVM_RUN"},
    {SYS_rt_sigprocmask, "rt_sigprocmask", "glibc masks signals around thread exit"},
    // Threads meeting each other
    {SYS_futex, "futex", "mutexes and condition variables between vCPU, I/O and main threads"},
    {SYS_sched_yield, "sched_yield", "glibc spin-then-yield in contended locks"},
    {SYS_exit, "exit", "a vCPU or I/O thread ends when the VM stops"},
    {SYS_exit_group, "exit_group", "the process ends after shutdown or a guest reset"},
    {SYS_madvise, "madvise", "glibc frees the stack of a finished thread with MADV_DONTNEED"},
    {SYS_munmap, "munmap", "unmapping a vCPU's kvm_run area and guest memory on the way out"},
    // Memory allocation
    {SYS_brk, "brk", "malloc growing the heap"},
    {SYS_mmap, "mmap", "malloc of large blocks"},
    {SYS_mremap, "mremap", "realloc of large blocks"},
    {SYS_mprotect, "mprotect", "malloc arenas of new threads grow in place"},
    // Device I/O, console log, control socket
    {SYS_read, "read", "sockets of the devices, eventfds"},
    {SYS_write, "write", "the console log, sockets of the devices, eventfds and irqfds"},
    {SYS_readv, "readv", "scatter reads from device sockets into guest buffers"},
    {SYS_pread64, "pread64", "virtio-blk reads of the read-only disk image into guest buffers"},
    {SYS_pwrite64, "pwrite64", "a snapshot's state and memory, to files the host hands over"},
    {SYS_writev, "writev", "gather writes from guest buffers to device sockets, stderr"},
    {SYS_recvfrom, "recvfrom", "recv() on the control and device sockets"},
    {SYS_recvmsg, "recvmsg", "control requests (one SOCK_SEQPACKET message each)"},
    {SYS_sendto, "sendto", "send() of control replies and device data"},
    {SYS_sendmsg, "sendmsg", "control replies and device data"},
    {SYS_close, "close", "connections of the host to the devices' sockets end"},
    {SYS_shutdown, "shutdown", "a vsock stream half-closed by the guest"},
    {SYS_fcntl, "fcntl", "setting a newly accepted socket non-blocking"},
    {SYS_accept4, "accept4", "the host connecting to the vsock and agent sockets"},
    {SYS_socket, "socket", "a guest-initiated vsock connection to a host unix socket (AF_UNIX)"},
    {SYS_connect, "connect", "a guest-initiated vsock connection to a host unix socket"},
    {SYS_getsockopt, "getsockopt", "SO_ERROR of a non-blocking connect"},
    {SYS_epoll_wait, "epoll_wait", "the I/O thread's event loop"},
    {SYS_epoll_pwait, "epoll_pwait", "the I/O thread's event loop (glibc may use this)"},
    {SYS_epoll_ctl, "epoll_ctl", "watching descriptors of new connections"},
    {SYS_poll, "poll", "the main thread waits for control requests and the VM to stop"},
    {SYS_ppoll, "ppoll", "poll() as glibc may implement it"},
    {SYS_eventfd2, "eventfd2", "wake-up descriptors of device connections"},
    {SYS_fstat, "fstat", "stdio buffering of stderr"},
    {SYS_newfstatat, "newfstatat", "stdio buffering of stderr (fstat as newer glibc calls it)"},
    {SYS_lseek, "lseek", "stdio on stderr"},
    // Time
    {SYS_clock_gettime, "clock_gettime", "timestamps when the vDSO is unavailable"},
    {SYS_clock_nanosleep, "clock_nanosleep", "short back-off sleeps"},
    {SYS_nanosleep, "nanosleep", "short back-off sleeps"},
    {SYS_gettid, "gettid", "glibc thread identity"},
    {SYS_getpid, "getpid", "glibc raise() and thread identity"},
    {SYS_restart_syscall, "restart_syscall", "a sleep interrupted by the kick signal resumes"},
};

sock_filter Statement(int code, uint32_t k) {
  return sock_filter{.code = static_cast<uint16_t>(code), .jt = 0, .jf = 0, .k = k};
}
sock_filter Jump(int code, uint32_t k, uint8_t jt, uint8_t jf) {
  return sock_filter{.code = static_cast<uint16_t>(code), .jt = jt, .jf = jf, .k = k};
}

}  // namespace

std::vector<SyscallAllowance> VmmSyscallPolicy(pid_t self) {
  std::vector<SyscallAllowance> policy(std::begin(kPolicy), std::end(kPolicy));
  for (SyscallAllowance& a : policy) {
    if (a.number == SYS_tgkill) a.only_if = ArgOneOf{0, {static_cast<uint64_t>(self)}};
    if (a.number == SYS_socket) a.only_if = ArgOneOf{0, {AF_UNIX}};
    if (a.number == SYS_ioctl) {
      a.only_if = ArgOneOf{1, RunningVmIoctls()};
    }
  }
  return policy;
}

std::vector<sock_filter> CompileSeccompFilter(std::span<const SyscallAllowance> allowed) {
  std::vector<sock_filter> prog;
  prog.push_back(Statement(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0));
  prog.push_back(Statement(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
  prog.push_back(Statement(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
  prog.push_back(Jump(BPF_JMP | BPF_JGE | BPF_K, kX32SyscallBit, 0, 1));
  prog.push_back(Statement(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
  for (const SyscallAllowance& a : allowed) {
    if (!a.only_if) {
      prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(a.number), 0, 1));
      prog.push_back(Statement(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
      continue;
    }
    // The number matches: the argument decides, both halves of it, against each value in
    // turn; else on to the next rule with the number still in the accumulator.
    const std::vector<uint64_t>& values = a.only_if->values;
    const uint32_t arg = offsetof(seccomp_data, args) + 8 * a.only_if->index;
    const auto rule_size = static_cast<uint32_t>(kInstructionsPerValue * values.size() + 1);
    prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(a.number), 1, 0));
    prog.push_back(Statement(BPF_JMP | BPF_JA, rule_size));  // a 32-bit jump: any length
    for (uint64_t value : values) {
      prog.push_back(Statement(BPF_LD | BPF_W | BPF_ABS, arg));  // little-endian: low half
      prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(value), 0, 3));
      prog.push_back(Statement(BPF_LD | BPF_W | BPF_ABS, arg + 4));
      prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(value >> 32), 0, 1));
      prog.push_back(Statement(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    }
    prog.push_back(Statement(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
  }
  prog.push_back(Statement(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
  return prog;
}

Result<void> InstallSeccompFilter(std::span<const sock_filter> filter) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return Fail(Error::HostIo("prctl(PR_SET_NO_NEW_PRIVS)", errno));
  }
  sock_fprog program{.len = static_cast<unsigned short>(filter.size()),
                     .filter = const_cast<sock_filter*>(filter.data())};
  long rc = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &program);
  if (rc < 0) return Fail(Error::HostIo("installing the seccomp filter", errno));
  if (rc > 0) {
    return Fail(Error::Backend(
        fmt::format("installing the seccomp filter: thread {} could not be synchronised", rc)));
  }
  return {};
}

}  // namespace vessel::vmm
