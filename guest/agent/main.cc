// vessel-agent: PID 1 of a Vessel guest.
//
// Mounts the basic filesystems, opens the dedicated virtio-serial port (never the
// console), says hello, and runs commands for the host: each in its own session and
// process group, with stdout and stderr on separate pipes, an optional deadline and a
// per-stream output cap. As PID 1 it also reaps every orphan.
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.h"
#include "protocol/wire.h"

namespace vessel::agent {
namespace {

namespace proto = vessel::protocol;
using Clock = std::chrono::steady_clock;

constexpr const char* kPortName = "org.vessel.agent";
constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
constexpr const char* kAgentVersion = "vessel-agent 0.1.0";
constexpr size_t kReadChunk = 64 * 1024;
// How long to wait for the virtio port to appear before giving up on the boot.
constexpr auto kPortWait = std::chrono::seconds(10);

template <typename... Args>
void Log(fmt::format_string<Args...> format, Args&&... args) {
  fmt::print(stderr, "vessel-agent: {}\n", fmt::format(format, std::forward<Args>(args)...));
}

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
  char buf[256];
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

// Writes a whole frame to the non-blocking port. False when the host went away: the
// port then reports POLLHUP instead of POLLOUT.
bool WriteAll(int fd, std::span<const uint8_t> data) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{fd, POLLOUT, 0};
        if (poll(&p, 1, 1000) > 0 && (p.revents & POLLHUP) && !(p.revents & POLLOUT)) return false;
        continue;
      }
      return false;
    }
    data = data.subspan(static_cast<size_t>(n));
  }
  return true;
}

struct Process {
  uint32_t request_id = 0;
  pid_t pid = -1;
  UniqueFd out;
  UniqueFd err;
  uint64_t cap = 0;
  uint64_t out_sent = 0;
  uint64_t err_sent = 0;
  bool out_truncated = false;
  bool err_truncated = false;
  bool timed_out = false;
  std::optional<Clock::time_point> deadline;
};

class Agent {
 public:
  explicit Agent(UniqueFd channel) : channel_(std::move(channel)) {}

  [[noreturn]] void Run() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    sigchld_ = UniqueFd(signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
    SendHello();
    for (;;) Poll();
  }

 private:
  // Frames for a host that is not connected are dropped: the requests they answer died
  // with that connection.
  void Send(const std::vector<uint8_t>& frame) {
    if (host_connected_ && !WriteAll(channel_.get(), frame)) host_connected_ = false;
  }

  void SendHello() { Send(proto::EncodeHello({proto::kVersion, kAgentVersion})); }

  void Poll() {
    std::vector<pollfd> fds;
    fds.push_back({sigchld_.get(), POLLIN, 0});
    fds.push_back({channel_.get(), static_cast<short>(host_connected_ ? POLLIN : 0), 0});
    std::vector<std::pair<Process*, proto::Stream>> owners;
    for (auto& [id, p] : processes_) {
      if (p.out) {
        fds.push_back({p.out.get(), POLLIN, 0});
        owners.emplace_back(&p, proto::Stream::kStdout);
      }
      if (p.err) {
        fds.push_back({p.err.get(), POLLIN, 0});
        owners.emplace_back(&p, proto::Stream::kStderr);
      }
    }
    int timeout = NextTimeoutMs();
    // While the host is away the port reports POLLHUP at once; poll it on a slow tick.
    if (!host_connected_ && (timeout < 0 || timeout > 50)) timeout = 50;
    int n = poll(fds.data(), fds.size(), timeout);
    if (n < 0 && errno != EINTR) Log("poll: {}", std::strerror(errno));

    for (size_t i = 2; i < fds.size(); ++i) {
      if (fds[i].revents) Drain(*owners[i - 2].first, owners[i - 2].second);
    }
    if (fds[0].revents & POLLIN) Reap();
    CheckDeadlines();
    if (host_connected_) {
      if (fds[1].revents & POLLIN)
        ReadChannel();
      else if (fds[1].revents & (POLLHUP | POLLERR))
        host_connected_ = false;
    } else {
      pollfd p{channel_.get(), POLLIN, 0};
      if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP)) {
        host_connected_ = true;
        reader_ = {};
        SendHello();
      }
    }
  }

  int NextTimeoutMs() const {
    std::optional<Clock::time_point> next;
    for (const auto& [id, p] : processes_) {
      if (p.deadline && !p.timed_out && (!next || *p.deadline < *next)) next = p.deadline;
    }
    if (!next) return -1;
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(*next - Clock::now()).count();
    return ms < 0 ? 0 : static_cast<int>(std::min<long>(ms, 60'000));
  }

  void ReadChannel() {
    uint8_t buf[kReadChunk];
    ssize_t n = read(channel_.get(), buf, sizeof(buf));
    if (n == 0) {
      host_connected_ = false;
      return;
    }
    if (n < 0) {
      if (errno != EINTR && errno != EAGAIN) host_connected_ = false;
      return;
    }
    reader_.Feed({buf, static_cast<size_t>(n)});
    for (;;) {
      auto frame = reader_.Next();
      if (!frame) {
        // The stream cannot be resynchronised: report, drop what was buffered, go on.
        Send(proto::EncodeError(0, {EPROTO, "", frame.error().message()}));
        reader_ = {};
        return;
      }
      if (!*frame) return;
      Handle(**frame);
    }
  }

  void Handle(const proto::Frame& frame) {
    uint32_t id = frame.header.request_id;
    switch (frame.header.type) {
      case proto::MessageType::kPing: Send(proto::EncodePong(id)); return;
      case proto::MessageType::kExec: {
        auto request = proto::DecodeExec(frame.payload);
        if (!request) {
          Send(proto::EncodeError(id, {EPROTO, "", request.error().message()}));
          return;
        }
        if (processes_.contains(id)) {
          Send(proto::EncodeError(id, {EEXIST, "", "request id already in use"}));
          return;
        }
        Start(id, *request);
        return;
      }
      default: Send(proto::EncodeError(id, {EPROTO, "", "unexpected frame type from host"}));
    }
  }

  // The child reports a failure before exec through a close-on-exec pipe: which step
  // failed (0 cwd, 1 exec) and the errno.
  void Start(uint32_t id, const proto::ExecRequest& req) {
    int out[2], err[2], status[2];
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0 || pipe2(status, O_CLOEXEC) != 0) {
      Send(proto::EncodeError(id, {errno, "", std::string("pipe: ") + std::strerror(errno)}));
      return;
    }
    std::vector<char*> argv, envp;
    for (const auto& a : req.argv) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    bool has_path = false;
    for (const auto& e : req.env) {
      envp.push_back(const_cast<char*>(e.c_str()));
      has_path |= e.starts_with("PATH=");
    }
    std::string default_path = std::string("PATH=") + kDefaultPath;
    if (!has_path) envp.push_back(default_path.data());
    envp.push_back(nullptr);
    const char* cwd = req.cwd.empty() ? "/" : req.cwd.c_str();

    pid_t pid = fork();
    if (pid == 0) {
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      setsid();
      int null = open("/dev/null", O_RDONLY);
      dup2(null, 0);
      dup2(out[1], 1);
      dup2(err[1], 2);
      int step = 0;
      if (chdir(cwd) == 0) {
        step = 1;
        environ = envp.data();
        execvp(argv[0], argv.data());
      }
      int report[2] = {step, errno};
      (void)!write(status[1], report, sizeof(report));
      _exit(127);
    }
    close(out[1]);
    close(err[1]);
    close(status[1]);
    UniqueFd status_read(status[0]);
    if (pid < 0) {
      close(out[0]);
      close(err[0]);
      Send(proto::EncodeError(id, {errno, "", std::string("fork: ") + std::strerror(errno)}));
      return;
    }
    int report[2];
    ssize_t n;
    do n = read(status_read.get(), report, sizeof(report));
    while (n < 0 && errno == EINTR);
    if (n == sizeof(report)) {
      close(out[0]);
      close(err[0]);
      waitpid(pid, nullptr, 0);
      const char* what = report[0] == 0 ? "working directory" : "command";
      std::string path = report[0] == 0 ? cwd : req.argv[0];
      Send(proto::EncodeError(
          id, {report[1], path, std::string(what) + ": " + std::strerror(report[1])}));
      return;
    }
    Process p;
    p.request_id = id;
    p.pid = pid;
    p.out = UniqueFd(out[0]);
    p.err = UniqueFd(err[0]);
    fcntl(p.out.get(), F_SETFL, O_NONBLOCK);
    fcntl(p.err.get(), F_SETFL, O_NONBLOCK);
    p.cap = req.output_cap;
    if (req.timeout_ms > 0) p.deadline = Clock::now() + std::chrono::milliseconds(req.timeout_ms);
    processes_.emplace(id, std::move(p));
  }

  // Reads what the pipe holds now; forwards it up to the cap and drops the rest.
  void Drain(Process& p, proto::Stream stream) {
    UniqueFd& fd = stream == proto::Stream::kStdout ? p.out : p.err;
    uint64_t& sent = stream == proto::Stream::kStdout ? p.out_sent : p.err_sent;
    bool& truncated = stream == proto::Stream::kStdout ? p.out_truncated : p.err_truncated;
    static uint8_t buf[kReadChunk];
    for (int round = 0; round < 16 && fd; ++round) {
      ssize_t n = read(fd.get(), buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return;
      if (n <= 0) {
        fd.Reset();
        return;
      }
      uint64_t keep = std::min<uint64_t>(static_cast<uint64_t>(n), p.cap - std::min(p.cap, sent));
      if (keep < static_cast<uint64_t>(n)) truncated = true;
      if (keep > 0) Send(proto::EncodeOutput(p.request_id, stream, {buf, keep}));
      sent += keep;
    }
  }

  void Reap() {
    signalfd_siginfo info;
    while (read(sigchld_.get(), &info, sizeof(info)) > 0) {
    }
    for (;;) {
      int status = 0;
      pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) return;
      for (auto it = processes_.begin(); it != processes_.end(); ++it) {
        if (it->second.pid == pid) {
          Finish(it->second, status);
          processes_.erase(it);
          break;
        }
      }
    }
  }

  // The command's main process is gone: forward what its pipes still hold, then the
  // status. Processes it left in the background keep running; their later output is
  // not collected.
  void Finish(Process& p, int status) {
    for (auto stream : {proto::Stream::kStdout, proto::Stream::kStderr}) {
      UniqueFd& fd = stream == proto::Stream::kStdout ? p.out : p.err;
      while (fd) {
        pollfd pf{fd.get(), POLLIN, 0};
        if (poll(&pf, 1, 0) <= 0) break;
        Drain(p, stream);
      }
    }
    proto::Exited e;
    if (p.timed_out) {
      e.how = proto::ExitHow::kTimedOut;
      e.code = WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      e.how = proto::ExitHow::kSignaled;
      e.code = WTERMSIG(status);
    } else {
      e.code = WEXITSTATUS(status);
    }
    e.stdout_truncated = p.out_truncated;
    e.stderr_truncated = p.err_truncated;
    Send(proto::EncodeExited(p.request_id, e));
  }

  void CheckDeadlines() {
    auto now = Clock::now();
    for (auto& [id, p] : processes_) {
      if (p.deadline && !p.timed_out && now >= *p.deadline) {
        p.timed_out = true;
        kill(-p.pid, SIGKILL);
      }
    }
  }

  UniqueFd channel_;
  UniqueFd sigchld_;
  bool host_connected_ = true;
  proto::FrameReader reader_;
  std::map<uint32_t, Process> processes_;
};

}  // namespace
}  // namespace vessel::agent

int main() {
  using namespace vessel::agent;
  vessel::agent::MountBasics();
  LoopbackUp();
  setenv("PATH", kDefaultPath, 1);

  std::string port;
  auto give_up = Clock::now() + kPortWait;
  while ((port = FindPort()).empty() && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  vessel::UniqueFd channel;
  if (!port.empty()) channel = vessel::UniqueFd(open(port.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!channel) {
    Log("no virtio port named {}: {}", kPortName,
        port.empty() ? "not found" : std::strerror(errno));
    reboot(RB_AUTOBOOT);  // with reboot=t and QEMU's -no-reboot, the VM ends
    return 1;
  }
  Agent(std::move(channel)).Run();
}
