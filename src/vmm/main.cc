// vessel-vmm: one process per VM, on the raw KVM API. Driven by the host library over the
// control socket it inherits (docs/vmm-protocol.md); see docs/vmm.md for its insides.
// SIGUSR2 makes it write a dump of the VM's state to stderr (Vm::DumpState).
#include <fmt/format.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/control.h"
#include "vmm/seccomp.h"
#include "vmm/vm.h"

namespace vessel::vmm {
namespace {

using protocol::vmm_control::kMaxMessage;
using protocol::vmm_control::Reply;

constexpr std::string_view kUsage =
    "usage: vessel-vmm --control-fd N [--unsafe-no-seccomp]\n"
    "  --control-fd N        an inherited AF_UNIX SOCK_SEQPACKET socket to serve\n"
    "  --unsafe-no-seccomp   do not confine the process (debugging only)\n";

template <typename... Args>
void Log(fmt::format_string<Args...> format, Args&&... args) {
  std::string line = "vessel-vmm: " + fmt::format(format, std::forward<Args>(args)...) + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
}

// Owns the VM once configured; the control session drives it.
class VmHost : public VmController {
 public:
  explicit VmHost(bool seccomp) : seccomp_(seccomp) {}

  Result<void> Configure(const VmConfig& config, UniqueFd memory_file) override {
    auto vm = Vm::Create(config, std::move(memory_file));
    if (!vm) return Fail(std::move(vm).error());
    vm_ = std::move(*vm);
    return {};
  }

  Result<void> Start() override {
    if (!seccomp_) {
      Log("running without seccomp (--unsafe-no-seccomp)");
      return vm_->Start();
    }
    // Every thread exists when the filter goes on, so it reaches them all; the guest's
    // first instruction runs after it.
    return vm_->Start(
        [] { return InstallSeccompFilter(CompileSeccompFilter(VmmSyscallPolicy(::getpid()))); });
  }

  Result<void> Restore(int state_file) override {
    if (auto r = vm_->Restore(state_file); !r) return r;
    return Start();
  }

  Result<void> Pause() override { return vm_->Pause(); }
  Result<void> Resume() override { return vm_->Resume(); }
  Result<void> Save(SaveMemory memory, int state_file, int memory_file) override {
    return vm_->Save(state_file, memory, memory_file);
  }
  VmState state() const override { return vm_ ? vm_->state() : VmState::kConfigured; }

  [[nodiscard]] Vm* vm() { return vm_.get(); }
  void Destroy() { vm_.reset(); }

 private:
  bool seccomp_;
  std::unique_ptr<Vm> vm_;
};

// One request into `buffer` and the descriptors that came with it into `fds`: the length of
// the message (more than the buffer when it was truncated), 0 at the end, -1 with errno.
// Descriptors past kMaxDescriptors are closed by the kernel (MSG_CTRUNC) and the request
// gets an error reply for the ones it lacks.
ssize_t ReceiveRequest(int control_fd, std::string& buffer, std::vector<UniqueFd>& fds) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * protocol::vmm_control::kMaxDescriptors)];
  iovec iov{.iov_base = buffer.data(), .iov_len = buffer.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = ::recvmsg(control_fd, &msg, MSG_TRUNC | MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);
    }
  }
  return n;
}

// `dump_fd` is a signalfd for SIGUSR2.
int Serve(int control_fd, int dump_fd, bool seccomp) {
  VmHost host(seccomp);
  ControlSession session(host);
  std::string buffer(kMaxMessage + 1, '\0');
  for (;;) {
    pollfd fds[3] = {
        {.fd = control_fd, .events = POLLIN, .revents = 0},
        {.fd = host.vm() ? host.vm()->stopped_fd() : -1, .events = POLLIN, .revents = 0},
        {.fd = dump_fd, .events = POLLIN, .revents = 0}};
    if (::poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      Log("poll: {}", std::strerror(errno));
      return 1;
    }
    if (fds[2].revents & POLLIN) {
      signalfd_siginfo info;
      if (::read(dump_fd, &info, sizeof(info)) == sizeof(info)) {
        Log("{}", host.vm() ? host.vm()->DumpState() : "state dump: no VM configured yet\n");
      }
    }
    if (fds[1].revents & POLLIN) {
      Log("the VM stopped: {} ({} port and {} MMIO accesses reached no device)",
          host.vm()->stop_reason(), host.vm()->unclaimed_pio(), host.vm()->unclaimed_mmio());
      host.Destroy();
      return 0;
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;

    std::vector<UniqueFd> received;
    ssize_t n = ReceiveRequest(control_fd, buffer, received);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      Log("control socket: {}", std::strerror(errno));
      return 1;
    }
    if (n == 0) {
      Log("the control socket closed: stopping the VM");
      host.Destroy();
      return 0;
    }
    std::string reply;
    if (static_cast<size_t>(n) > kMaxMessage) {
      reply = EncodeReply(Reply::Failed(fmt::format("message exceeds {} bytes", kMaxMessage)));
    } else {
      reply = session.Handle(std::string_view(buffer.data(), static_cast<size_t>(n)),
                             std::move(received));
    }
    if (::send(control_fd, reply.data(), reply.size(), MSG_NOSIGNAL) < 0) {
      Log("control socket: {}", std::strerror(errno));
      host.Destroy();
      return 1;
    }
    if (session.shutdown_requested()) {
      Log("shutdown requested by the host");
      host.Destroy();
      return 0;
    }
  }
}

}  // namespace
}  // namespace vessel::vmm

int main(int argc, char** argv) {
  using vessel::vmm::kUsage;
  int control_fd = -1;
  bool seccomp = true;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--control-fd" && i + 1 < argc) {
      std::string_view value = argv[++i];
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), control_fd);
      if (ec != std::errc() || end != value.data() + value.size() || control_fd < 0) {
        std::fputs("vessel-vmm: --control-fd needs a descriptor number\n", stderr);
        return 2;
      }
    } else if (arg == "--unsafe-no-seccomp") {
      seccomp = false;
    } else if (arg == "--version") {
      std::printf("%s\n", std::string(vessel::vmm::kVmmVersion).c_str());
      return 0;
    } else {
      std::fputs(kUsage.data(), arg == "--help" ? stdout : stderr);
      return arg == "--help" ? 0 : 2;
    }
  }
  if (control_fd < 0) {
    std::fputs(kUsage.data(), stderr);
    return 2;
  }
  int type = 0;
  socklen_t len = sizeof(type);
  if (getsockopt(control_fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_SEQPACKET) {
    std::fputs("vessel-vmm: --control-fd is not a SOCK_SEQPACKET socket\n", stderr);
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  // Blocked before any thread starts, so every thread inherits the mask and the signal
  // waits for the signalfd.
  sigset_t dump_signal;
  sigemptyset(&dump_signal);
  sigaddset(&dump_signal, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &dump_signal, nullptr);
  int dump_fd = signalfd(-1, &dump_signal, SFD_CLOEXEC | SFD_NONBLOCK);
  if (dump_fd < 0) {
    std::perror("vessel-vmm: signalfd");
    return 1;
  }
  return vessel::vmm::Serve(control_fd, dump_fd, seccomp);
}
