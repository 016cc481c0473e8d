#include "vmm/seccomp.h"

#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <optional>
#include <set>
#include <vector>

#include "vmm/arch/x86/kvm_state.h"

namespace vessel::vmm {
namespace {

// Runs a classic BPF program on seccomp_data, implementing only what a seccomp filter
// compiled from a policy may contain. A malformed program fails the test.
uint32_t RunFilter(const std::vector<sock_filter>& prog, const seccomp_data& data) {
  uint32_t acc = 0;
  for (size_t pc = 0; pc < prog.size(); ++pc) {
    const sock_filter& ins = prog[pc];
    switch (ins.code) {
      case BPF_LD | BPF_W | BPF_ABS:
        EXPECT_LE(ins.k + 4, sizeof(data));
        std::memcpy(&acc, reinterpret_cast<const uint8_t*>(&data) + ins.k, 4);
        break;
      case BPF_JMP | BPF_JEQ | BPF_K: pc += acc == ins.k ? ins.jt : ins.jf; break;
      case BPF_JMP | BPF_JGE | BPF_K: pc += acc >= ins.k ? ins.jt : ins.jf; break;
      case BPF_JMP | BPF_JA: pc += ins.k; break;
      case BPF_RET | BPF_K: return ins.k;
      default: ADD_FAILURE() << "unexpected instruction " << ins.code; return 0;
    }
  }
  ADD_FAILURE() << "the program fell off its end";
  return 0;
}

// The VMM's pid in these tests.
constexpr pid_t kSelf = 4242;

// One argument of a call.
struct Arg {
  unsigned index;
  uint64_t value;
};

uint32_t RunSyscall(long nr, uint32_t arch = AUDIT_ARCH_X86_64,
                    std::optional<Arg> arg = std::nullopt) {
  seccomp_data data{};
  data.nr = static_cast<int>(nr);
  data.arch = arch;
  if (arg) data.args[arg->index] = arg->value;
  return RunFilter(CompileSeccompFilter(VmmSyscallPolicy(kSelf)), data);
}

TEST(Seccomp, AllowsEveryListedSyscall) {
  for (const auto& a : VmmSyscallPolicy(kSelf)) {
    if (!a.only_if) {
      EXPECT_EQ(RunSyscall(a.number), SECCOMP_RET_ALLOW) << a.name;
      continue;
    }
    for (uint64_t value : a.only_if->values) {
      EXPECT_EQ(RunSyscall(a.number, AUDIT_ARCH_X86_64, Arg{a.only_if->index, value}),
                SECCOMP_RET_ALLOW)
          << a.name << " " << value;
    }
  }
}

// Signals go only to the VMM's own threads, sockets are only unix sockets: any other
// value, in either half of the 64-bit argument, kills.
TEST(Seccomp, TgkillOnlyToItselfAndSocketOnlyUnix) {
  const uint64_t self = kSelf;
  EXPECT_EQ(RunSyscall(SYS_tgkill, AUDIT_ARCH_X86_64, Arg{0, self}), SECCOMP_RET_ALLOW);
  for (uint64_t other : {uint64_t{1}, self + 1, self | (uint64_t{1} << 32), uint64_t{0}}) {
    EXPECT_EQ(RunSyscall(SYS_tgkill, AUDIT_ARCH_X86_64, Arg{0, other}), SECCOMP_RET_KILL_PROCESS)
        << other;
  }
  EXPECT_EQ(RunSyscall(SYS_socket, AUDIT_ARCH_X86_64, Arg{0, AF_UNIX}), SECCOMP_RET_ALLOW);
  for (uint64_t family : {uint64_t{AF_INET}, uint64_t{AF_INET6}, uint64_t{AF_NETLINK},
                          uint64_t{AF_VSOCK}, uint64_t{AF_UNIX} | (uint64_t{1} << 32)}) {
    EXPECT_EQ(RunSyscall(SYS_socket, AUDIT_ARCH_X86_64, Arg{0, family}), SECCOMP_RET_KILL_PROCESS)
        << family;
  }
  // A rule with an argument leaves the rules after it intact.
  EXPECT_EQ(RunSyscall(SYS_restart_syscall), SECCOMP_RET_ALLOW);
}

// A running VM asks KVM only to run a vCPU and to read its state (a snapshot, a log):
// creating devices, memory slots or vCPUs, setting registers or any other device's ioctl
// kills.
TEST(Seccomp, IoctlOnlyForTheRequestsOfARunningVm) {
  std::vector<uint64_t> allowed = SaveStateIoctls();
  allowed.push_back(KVM_RUN);
  for (uint64_t request : {uint64_t{KVM_GET_REGS}, uint64_t{KVM_GET_SREGS}, uint64_t{KVM_GET_LAPIC},
                           uint64_t{KVM_GET_CLOCK}}) {
    EXPECT_NE(std::find(allowed.begin(), allowed.end(), request), allowed.end()) << request;
  }
  for (uint64_t request : allowed) {
    EXPECT_EQ(RunSyscall(SYS_ioctl, AUDIT_ARCH_X86_64, Arg{1, request}), SECCOMP_RET_ALLOW)
        << request;
  }
  for (uint64_t request :
       {uint64_t{KVM_CREATE_VM}, uint64_t{KVM_CREATE_VCPU}, uint64_t{KVM_SET_USER_MEMORY_REGION},
        uint64_t{KVM_SET_REGS}, uint64_t{KVM_SET_SREGS}, uint64_t{KVM_IRQFD},
        uint64_t{KVM_SET_LAPIC}, uint64_t{KVM_SET_CLOCK}, uint64_t{KVM_SET_IRQCHIP},
        uint64_t{KVM_CHECK_EXTENSION}, uint64_t{TIOCSTI}, uint64_t{FIONREAD}, uint64_t{0},
        uint64_t{KVM_RUN} | (uint64_t{1} << 32)}) {
    EXPECT_EQ(RunSyscall(SYS_ioctl, AUDIT_ARCH_X86_64, Arg{1, request}), SECCOMP_RET_KILL_PROCESS)
        << request;
  }
  // The request is argument 1: a KVM_RUN value in the descriptor's place does not help.
  EXPECT_EQ(RunSyscall(SYS_ioctl, AUDIT_ARCH_X86_64, Arg{0, KVM_RUN}), SECCOMP_RET_KILL_PROCESS);
}

// A check of many values still reaches the rules after it (the skip is not 8 bits wide).
TEST(Seccomp, AnArgumentCheckOfManyValuesKeepsTheRulesAfterIt) {
  std::vector<uint64_t> many;
  for (uint64_t v = 0; v < 300; ++v) many.push_back(v * 7);
  const SyscallAllowance policy[] = {
      {SYS_ioctl, "ioctl", "many requests", ArgOneOf{1, many}},
      {SYS_read, "read", "after the long rule", std::nullopt},
  };
  const auto prog = CompileSeccompFilter(policy);
  auto run = [&](long nr, uint64_t arg1) {
    seccomp_data data{};
    data.nr = static_cast<int>(nr);
    data.arch = AUDIT_ARCH_X86_64;
    data.args[1] = arg1;
    return RunFilter(prog, data);
  };
  EXPECT_EQ(run(SYS_ioctl, 0), SECCOMP_RET_ALLOW);
  EXPECT_EQ(run(SYS_ioctl, 299 * 7), SECCOMP_RET_ALLOW);
  EXPECT_EQ(run(SYS_ioctl, 299 * 7 + 1), SECCOMP_RET_KILL_PROCESS);
  EXPECT_EQ(run(SYS_read, 5), SECCOMP_RET_ALLOW);
  EXPECT_EQ(run(SYS_write, 0), SECCOMP_RET_KILL_PROCESS);
}

TEST(Seccomp, KillsTheProcessForAnythingElse) {
  for (long nr : {SYS_execve,
                  SYS_execveat,
                  SYS_openat,
                  SYS_open,
                  SYS_clone,
                  SYS_clone3,
                  SYS_fork,
                  SYS_ptrace,
                  SYS_mount,
                  SYS_bind,
                  SYS_listen,
                  SYS_rename,
                  SYS_setuid,
                  SYS_prctl,
                  SYS_seccomp,
                  SYS_kill,
                  SYS_process_vm_writev,
                  SYS_unlink,
                  SYS_unlinkat,
                  SYS_rmdir,
                  SYS_symlink,
                  SYS_link,
                  SYS_chmod}) {
    EXPECT_EQ(RunSyscall(nr), SECCOMP_RET_KILL_PROCESS) << nr;
  }
  EXPECT_EQ(RunSyscall(10'000), SECCOMP_RET_KILL_PROCESS);
}

// pwrite64 writes a snapshot's files, which the host hands over open; the disk image is
// open read-only, so a write to it fails whatever the call, and nothing is truncated,
// allocated or opened anew.
TEST(Seccomp, TheDiskImageIsReadButNeverWrittenOrOpenedAgain) {
  EXPECT_EQ(RunSyscall(SYS_pread64), SECCOMP_RET_ALLOW);
  EXPECT_EQ(RunSyscall(SYS_pwrite64), SECCOMP_RET_ALLOW);
  for (long nr : {SYS_pwritev, SYS_pwritev2, SYS_ftruncate, SYS_fallocate, SYS_openat2}) {
    EXPECT_EQ(RunSyscall(nr), SECCOMP_RET_KILL_PROCESS) << nr;
  }
}

TEST(Seccomp, ChecksTheArchitectureAndX32) {
  EXPECT_EQ(RunSyscall(SYS_read, AUDIT_ARCH_I386), SECCOMP_RET_KILL_PROCESS);
  EXPECT_EQ(RunSyscall(SYS_read, 0), SECCOMP_RET_KILL_PROCESS);
  // The x32 ABI reaches the same syscalls with bit 30 set: refused outright.
  EXPECT_EQ(RunSyscall(0x40000000 | SYS_read), SECCOMP_RET_KILL_PROCESS);
}

TEST(Seccomp, EveryAllowanceIsUniqueAndExplained) {
  std::set<long> seen;
  for (const auto& a : VmmSyscallPolicy(kSelf)) {
    EXPECT_TRUE(seen.insert(a.number).second) << a.name << " is listed twice";
    EXPECT_FALSE(a.name.empty());
    EXPECT_GE(a.reason.size(), 8u) << a.name << " needs a reason";
  }
}

TEST(Seccomp, ProgramFitsTheKernelLimitAndEndsInKill) {
  auto prog = CompileSeccompFilter(VmmSyscallPolicy(kSelf));
  EXPECT_LE(prog.size(), 4096u);  // BPF_MAXINSNS
  EXPECT_EQ(prog.back().code, BPF_RET | BPF_K);
  EXPECT_EQ(prog.back().k, SECCOMP_RET_KILL_PROCESS);
  // The first instruction loads the architecture.
  EXPECT_EQ(prog.front().code, BPF_LD | BPF_W | BPF_ABS);
  EXPECT_EQ(prog.front().k, offsetof(seccomp_data, arch));
}

TEST(Seccomp, AnEmptyPolicyKillsEverything) {
  seccomp_data data{};
  data.nr = SYS_read;
  data.arch = AUDIT_ARCH_X86_64;
  EXPECT_EQ(RunFilter(CompileSeccompFilter({}), data), SECCOMP_RET_KILL_PROCESS);
}

}  // namespace
}  // namespace vessel::vmm
