// vessel-agent: PID 1 of a Vessel guest.
//
// Mounts the basic filesystems, opens the dedicated channel to the host (never the
// console) and hands it to the Agent (agent.h), which serves the host's commands and file
// operations, pipes the guest's proxied connections to the host (net.h) and, as PID 1
// must, reaps every orphan. The channel is a vsock port when the kernel command line says
// vessel.channel=vsock:<port>, else the virtio-serial port named org.vessel.agent. With
// vessel.image=<device> the agent first moves into the root image on that disk (root.h).
#include <dirent.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "agent.h"
#include "base/unique_fd.h"
#include "log.h"
#include "root.h"

namespace vessel::agent {
namespace {

constexpr const char* kPortName = "org.vessel.agent";
// How long to wait for the virtio port to appear before giving up on the boot.
constexpr auto kPortWait = std::chrono::seconds(10);

void MountBasics() {
  struct M {
    const char* source;
    const char* target;
    const char* type;
    unsigned long flags;
    const char* options;
  };
  const M mounts[] = {
      {"proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr},
      {"sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr},
      {"devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"},
      {"devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666"},
      {"tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"},
      {"tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"},
      {"tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"},
  };
  for (const auto& m : mounts) {
    mkdir(m.target, 0755);
    if (mount(m.source, m.target, m.type, m.flags, m.options) != 0 && errno != EBUSY) {
      Log("mount {}: {}", m.target, std::strerror(errno));
    }
  }
}

void LoopbackUp() {
  UniqueFd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return;
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(s.get(), SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP;
    ioctl(s.get(), SIOCSIFFLAGS, &ifr);
  }
}

std::string ReadSmallFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return {};
  // The kernel command line is at most 2048 bytes on x86.
  char buf[4096];
  ssize_t n = read(fd.get(), buf, sizeof(buf));
  if (n <= 0) return {};
  std::string s(buf, static_cast<size_t>(n));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s;
}

// The port's /dev node, found by name: there is no udev to make /dev/virtio-ports links.
std::string FindPort() {
  DIR* dir = opendir("/sys/class/virtio-ports");
  if (!dir) return {};
  std::string found;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::string name = ReadSmallFile(std::string("/sys/class/virtio-ports/") + e->d_name + "/name");
    if (name == kPortName) {
      found = std::string("/dev/") + e->d_name;
      break;
    }
  }
  closedir(dir);
  return found;
}

// The vsock port from vessel.channel=vsock:<port> on the kernel command line.
std::optional<uint32_t> VsockPortFromCmdline() {
  std::string cmdline = ReadSmallFile("/proc/cmdline");
  constexpr std::string_view kKey = "vessel.channel=vsock:";
  size_t at = 0;
  while ((at = cmdline.find(kKey, at)) != std::string::npos) {
    if (at == 0 || cmdline[at - 1] == ' ') break;
    at += kKey.size();
  }
  if (at == std::string::npos) return std::nullopt;
  const char* begin = cmdline.data() + at + kKey.size();
  const char* end = cmdline.data() + cmdline.size();
  uint32_t port = 0;
  auto [stop, ec] = std::from_chars(begin, end, port);
  if (ec != std::errc() || (stop != end && *stop != ' ')) return std::nullopt;
  return port;
}

// A non-blocking vsock socket listening on `port` for the host.
vessel::UniqueFd ListenVsock(uint32_t port) {
  vessel::UniqueFd fd(socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return fd;
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = VMADDR_CID_ANY;
  addr.svm_port = port;
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(fd.get(), 1) != 0) {
    return vessel::UniqueFd();
  }
  return fd;
}

// The virtio-serial port, which may take a moment to appear.
vessel::UniqueFd OpenSerialPort() {
  std::string port;
  auto give_up = Clock::now() + kPortWait;
  while ((port = FindPort()).empty() && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  vessel::UniqueFd channel;
  if (!port.empty())
    channel = vessel::UniqueFd(open(port.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!channel) {
    Log("no virtio port named {}: {}", kPortName,
        port.empty() ? "not found" : std::strerror(errno));
  }
  return channel;
}

// The serial console's input, for the host's dump requests (Agent's kDumpRequest), read a
// line at a time and not echoed; invalid where the console has no input.
vessel::UniqueFd OpenDumpRequests() {
  vessel::UniqueFd fd(open("/dev/ttyS0", O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  termios mode{};
  if (fd && tcgetattr(fd.get(), &mode) == 0) {
    mode.c_lflag |= ICANON;
    mode.c_lflag &= ~static_cast<tcflag_t>(ECHO | ECHONL);
    tcsetattr(fd.get(), TCSANOW, &mode);
  }
  return fd;
}

}  // namespace
}  // namespace vessel::agent

int main() {
  using namespace vessel::agent;
  vessel::agent::MountBasics();
  LoopbackUp();
  setenv("PATH", kDefaultPath, 1);
  RaiseDescriptorLimit();

  RootImageRequest root = ParseRootImage(ReadSmallFile("/proc/cmdline"));
  if (root.error.empty() && root.image) root.error = EnterRootImage(*root.image);
  if (!root.error.empty()) {
    // The console tail is what the host reports when the VM stops during boot.
    Log("cannot boot the root image: {}", root.error);
    reboot(RB_AUTOBOOT);
    return 1;
  }
  if (root.image) SetImageEnvironment();

  if (auto vsock_port = VsockPortFromCmdline()) {
    vessel::UniqueFd listener = ListenVsock(*vsock_port);
    if (listener) Agent(Port::Listening(std::move(listener)), OpenDumpRequests()).Run();
    Log("cannot listen on vsock port {}: {}", *vsock_port, std::strerror(errno));
  } else if (vessel::UniqueFd channel = OpenSerialPort()) {
    Agent(Port::Serial(std::move(channel)), OpenDumpRequests()).Run();
  }
  reboot(RB_AUTOBOOT);  // with reboot=t the VM ends
  return 1;
}
