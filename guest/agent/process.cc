#include "process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "log.h"

namespace vessel::agent {
namespace {

namespace proto = vessel::protocol;

// Largest read from a command's pipe, hence the largest Output chunk the agent sends.
constexpr size_t kReadChunk = 64 * 1024;
// What the agent reads from a terminal at most once its command has exited.
constexpr size_t kTerminalDrainBudget = 256 * 1024;

struct Pipe {
  UniqueFd read;
  UniqueFd write;
};

std::optional<Pipe> MakePipe() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return std::nullopt;
  return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// A new pseudo-terminal of `size`: its master side and the path of its slave side.
struct Terminal {
  UniqueFd master;
  std::string slave;
};

std::optional<Terminal> OpenTerminal(const proto::TerminalSize& size) {
  UniqueFd master(posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
  char name[64];
  if (!master || grantpt(master.get()) != 0 || unlockpt(master.get()) != 0 ||
      ptsname_r(master.get(), name, sizeof(name)) != 0) {
    return std::nullopt;
  }
  winsize ws{.ws_row = size.rows, .ws_col = size.cols, .ws_xpixel = 0, .ws_ypixel = 0};
  if (ioctl(master.get(), TIOCSWINSZ, &ws) != 0) return std::nullopt;
  return Terminal{std::move(master), name};
}

// The descriptor limit commands start with: the agent's own, before it raised it.
std::optional<rlimit> command_descriptor_limit;

// What failed in the child before exec, as it reports it.
enum ChildStep : int { kStepCwd = 0, kStepExec = 1, kStepTerminal = 2 };

// Runs in the forked child: never returns. A failure before exec is reported through
// `status_fd` (close-on-exec): which step failed and the errno. With a `terminal` (the slave
// side's path) the child makes it its controlling terminal and its stdin, stdout and
// stderr; the fds are then unused.
[[noreturn]] void ExecChild(const char* cwd, char** argv, char** envp, const char* terminal,
                            int stdin_fd, int stdout_fd, int stderr_fd, int status_fd) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  // The agent ignores SIGPIPE, and ignored signals survive exec.
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &default_action, nullptr);
  setsid();
  if (command_descriptor_limit) setrlimit(RLIMIT_NOFILE, &*command_descriptor_limit);
  int step = kStepTerminal;
  if (terminal != nullptr) {
    int fd = open(terminal, O_RDWR);
    if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) != 0) goto failed;
    stdin_fd = stdout_fd = stderr_fd = fd;
  }
  if (stdin_fd < 0) stdin_fd = open("/dev/null", O_RDONLY);
  dup2(stdin_fd, 0);
  dup2(stdout_fd, 1);
  dup2(stderr_fd, 2);
  step = kStepCwd;
  if (chdir(cwd) == 0) {
    step = kStepExec;
    environ = envp;
    execvp(argv[0], argv);
  }
failed:
  int report[2] = {step, errno};
  (void)!write(status_fd, report, sizeof(report));
  _exit(127);
}

// "KEY=VALUE" entries a command gets when its own environment lacks KEY.
std::vector<std::string>& DefaultEnvironment() {
  static std::vector<std::string> defaults = {std::string("PATH=") + kDefaultPath};
  return defaults;
}

// A command on a terminal whose environment names no terminal type gets this one.
std::string kDefaultTerm = "TERM=xterm-256color";

}  // namespace

void ByteQueue::Append(std::span<const uint8_t> bytes) {
  // Drop what was consumed once it is most of the buffer: amortised O(1) per byte.
  if (head_ > 0 && head_ >= bytes_.size() / 2) {
    bytes_.erase(bytes_.begin(), bytes_.begin() + static_cast<std::ptrdiff_t>(head_));
    head_ = 0;
  }
  bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
}

void ByteQueue::Consume(size_t n) {
  head_ += n;
  if (head_ == bytes_.size()) Clear();
}

void ByteQueue::Clear() {
  bytes_.clear();
  head_ = 0;
}

std::optional<Process> Process::Start(uint32_t request_id, const proto::ExecRequest& request,
                                      Port& port) {
  auto fail = [&](const char* what, int error) {
    port.Send(proto::EncodeError(request_id,
                                 {error, "", fmt::format("{}: {}", what, std::strerror(error))}));
    return std::nullopt;
  };
  std::optional<Terminal> terminal;
  std::optional<Pipe> out, err, in;
  if (request.terminal) {
    terminal = OpenTerminal(*request.terminal);
    if (!terminal) return fail("terminal", errno);
  } else {
    out = MakePipe();
    if (!out) return fail("pipe", errno);
    err = MakePipe();
    if (!err) return fail("pipe", errno);
    if (request.stdin_pipe) {
      in = MakePipe();
      if (!in) return fail("pipe", errno);
    }
  }
  auto status = MakePipe();
  if (!status) return fail("pipe", errno);

  std::vector<char*> argv, envp;
  for (const auto& a : request.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : request.env) envp.push_back(const_cast<char*>(e.c_str()));
  std::vector<std::string*> fallbacks;
  for (std::string& fallback : DefaultEnvironment()) fallbacks.push_back(&fallback);
  if (terminal) fallbacks.push_back(&kDefaultTerm);
  for (std::string* fallback : fallbacks) {
    std::string_view key(fallback->data(), fallback->find('=') + 1);
    bool given = false;
    for (const auto& e : request.env) given |= e.starts_with(key);
    if (!given) envp.push_back(fallback->data());
  }
  envp.push_back(nullptr);
  const char* cwd = request.cwd.empty() ? "/" : request.cwd.c_str();

  pid_t pid = fork();
  if (pid == 0) {
    ExecChild(cwd, argv.data(), envp.data(), terminal ? terminal->slave.c_str() : nullptr,
              in ? in->read.get() : -1, out ? out->write.get() : -1, err ? err->write.get() : -1,
              status->write.get());
  }
  int fork_errno = errno;
  if (out) out->write.Reset();
  if (err) err->write.Reset();
  status->write.Reset();
  if (in) in->read.Reset();
  if (pid < 0) return fail("fork", fork_errno);

  // Wait for exec (the status pipe closes) or its failure (a report), so a command that
  // cannot start is one Error frame and nothing else.
  int report[2];
  ssize_t n;
  do n = read(status->read.get(), report, sizeof(report));
  while (n < 0 && errno == EINTR);
  if (n == sizeof(report)) {
    waitpid(pid, nullptr, 0);
    const char* what = report[0] == kStepCwd    ? "working directory"
                       : report[0] == kStepExec ? "command"
                                                : "terminal";
    std::string path = report[0] == kStepCwd    ? cwd
                       : report[0] == kStepExec ? request.argv[0]
                                                : terminal->slave;
    port.Send(proto::EncodeError(
        request_id, {report[1], path, fmt::format("{}: {}", what, std::strerror(report[1]))}));
    return std::nullopt;
  }

  Process p;
  p.request_id_ = request_id;
  p.pid_ = pid;
  p.output_cap_ = request.output_cap;
  p.window_ = request.window;
  if (terminal) {
    SetNonBlocking(terminal->master.get());
    p.stdout_.fd = UniqueFd(fcntl(terminal->master.get(), F_DUPFD_CLOEXEC, 0));
    if (request.stdin_pipe) p.stdin_ = UniqueFd(fcntl(terminal->master.get(), F_DUPFD_CLOEXEC, 0));
    p.terminal_ = std::move(terminal->master);
  } else {
    p.stdout_.fd = std::move(out->read);
    p.stderr_.fd = std::move(err->read);
    if (in) p.stdin_ = std::move(in->write);
  }
  for (auto* output : {&p.stdout_, &p.stderr_}) {
    if (output->fd) SetNonBlocking(output->fd.get());
    output->credit = request.window;
  }
  if (p.stdin_) SetNonBlocking(p.stdin_.get());
  if (request.timeout_ms > 0) {
    p.deadline_ = Clock::now() + std::chrono::milliseconds(request.timeout_ms);
  }
  port.Send(proto::EncodeStarted(request_id, {pid}));
  return p;
}

bool Process::MayRead(const OutputPipe& p) const {
  // Bytes beyond the cap are dropped, so they need no credit: the pipe keeps draining.
  return p.fd && (p.credit > 0 || p.forwarded >= output_cap_);
}

pollfd Process::PollOutput(proto::Stream stream, const Port& port) const {
  const OutputPipe& p = pipe(stream);
  if (exited() || !MayRead(p) || !port.HasRoom()) return {-1, 0, 0};
  return {p.fd.get(), POLLIN, 0};
}

pollfd Process::PollStdin() const {
  if (!stdin_ || stdin_pending_.empty()) return {-1, 0, 0};
  return {stdin_.get(), POLLOUT, 0};
}

void Process::ReadOutput(proto::Stream stream, Port& port) {
  if (MayRead(pipe(stream))) ReadOnce(stream, port);
}

Process::ReadResult Process::ReadOnce(proto::Stream stream, Port& port) {
  static uint8_t buf[kReadChunk];
  OutputPipe& p = pipe(stream);
  uint64_t want =
      p.forwarded >= output_cap_ ? kReadChunk : std::min<uint64_t>(p.credit, kReadChunk);
  if (exited()) want = std::min(want, p.drain_budget);
  ssize_t n;
  do n = read(p.fd.get(), buf, want);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return ReadResult::kEmpty;
  if (n <= 0) {
    p.fd.Reset();
    return ReadResult::kClosed;
  }
  // A terminal hands out at most its line discipline's 4 KiB per read: gather what is
  // there into one frame. An end found here is found again by the next read.
  if (terminal_) {
    for (ssize_t more = 1; more > 0 && static_cast<uint64_t>(n) < want; n += more) {
      more = std::max<ssize_t>(0, read(p.fd.get(), buf + n, want - static_cast<uint64_t>(n)));
    }
  }
  auto got = static_cast<uint64_t>(n);
  uint64_t keep = std::min(got, output_cap_ - std::min(output_cap_, p.forwarded));
  if (keep < got) p.truncated = true;
  if (keep > 0) {
    port.Send(proto::EncodeOutput(request_id_, stream, {buf, keep}));
    p.forwarded += keep;
    p.credit -= keep;
  }
  if (exited()) p.drain_budget -= got;
  return ReadResult::kForwarded;
}

void Process::WriteStdin(Port& port) {
  if (!stdin_ || stdin_pending_.empty()) return;
  auto bytes = stdin_pending_.front();
  ssize_t n = write(stdin_.get(), bytes.data(), bytes.size());
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    // EPIPE: nobody reads stdin any more.
    DiscardStdin(port);
    return;
  }
  stdin_pending_.Consume(static_cast<size_t>(n));
  CreditStdin(static_cast<size_t>(n), port);
  if (stdin_pending_.empty() && stdin_eof_) stdin_.Reset();
}

bool Process::OnStdin(std::span<const uint8_t> data, Port& port) {
  if (data.empty()) {
    stdin_eof_ = true;
    if (stdin_pending_.empty()) stdin_.Reset();
    return true;
  }
  if (stdin_pending_.size() + data.size() > window_) return false;
  if (!stdin_ || stdin_eof_) {
    // Nothing will read these bytes; acknowledging them keeps the host's window open.
    CreditStdin(data.size(), port);
    return true;
  }
  stdin_pending_.Append(data);
  return true;
}

void Process::CreditStdin(size_t bytes, Port& port) {
  // Never more than a window (at most kMaxWindow), so it fits.
  port.Send(
      proto::EncodeCredit(request_id_, {proto::Stream::kStdin, static_cast<uint32_t>(bytes)}));
}

void Process::DiscardStdin(Port& port) {
  if (!stdin_pending_.empty()) CreditStdin(stdin_pending_.size(), port);
  stdin_pending_.Clear();
  stdin_.Reset();
}

void Process::OnCredit(const proto::Credit& credit) {
  if (credit.stream != proto::Stream::kStdout && credit.stream != proto::Stream::kStderr) return;
  OutputPipe& p = pipe(credit.stream);
  p.credit = std::min<uint64_t>(window_, p.credit + credit.bytes);
}

void Process::Signal(int number) const { kill(-pid_, number); }

bool Process::Resize(const proto::TerminalSize& size) const {
  if (!terminal_) return false;
  winsize ws{.ws_row = size.rows, .ws_col = size.cols, .ws_xpixel = 0, .ws_ypixel = 0};
  // Fails only once the terminal is gone, when there is nobody left to tell.
  (void)ioctl(terminal_.get(), TIOCSWINSZ, &ws);
  return true;
}

void Process::OnExit(int status, Port& port) {
  exit_status_ = status;
  DiscardStdin(port);
  for (auto* p : {&stdout_, &stderr_}) {
    if (!p->fd) continue;
    int size = fcntl(p->fd.get(), F_GETPIPE_SZ);
    p->drain_budget = size > 0 ? static_cast<uint64_t>(size) : kReadChunk;
  }
  // A terminal holds what the line discipline and the pty's buffers have room for: under
  // 80 KiB on Linux.
  if (terminal_) stdout_.drain_budget = kTerminalDrainBudget;
}

bool Process::FinishAfterExit(Port& port) {
  for (auto stream : {proto::Stream::kStdout, proto::Stream::kStderr}) {
    OutputPipe& p = pipe(stream);
    if (p.fd && p.drain_budget == 0) p.fd.Reset();
    // Empty right now: whatever a background process writes later is not collected.
    if (MayRead(p) && port.HasRoom() && ReadOnce(stream, port) == ReadResult::kEmpty) {
      p.fd.Reset();
    }
  }
  if (stdout_.fd || stderr_.fd) return false;

  int status = *exit_status_;
  proto::Exited e;
  if (timed_out_) {
    e.how = proto::ExitHow::kTimedOut;
    e.code = WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    e.how = proto::ExitHow::kSignaled;
    e.code = WTERMSIG(status);
  } else {
    e.code = WEXITSTATUS(status);
  }
  e.stdout_truncated = stdout_.truncated;
  e.stderr_truncated = stderr_.truncated;
  port.Send(proto::EncodeExited(request_id_, e));
  return true;
}

bool Process::CanFinishNow(const Port& port) const {
  if (!exited()) return false;
  if (!stdout_.fd && !stderr_.fd) return true;
  auto progress = [&](const OutputPipe& p) {
    return p.fd && (p.drain_budget == 0 || (MayRead(p) && port.HasRoom()));
  };
  return progress(stdout_) || progress(stderr_);
}

std::optional<Clock::time_point> Process::PendingDeadline() const {
  if (timed_out_ || exited()) return std::nullopt;
  return deadline_;
}

std::vector<std::string> Process::Describe() const {
  auto output = [](const char* name, const OutputPipe& p) {
    return fmt::format("{}: {} credit={} forwarded={}{}", name, p.fd ? "open" : "closed",
                       p.credit, p.forwarded, p.truncated ? " truncated" : "");
  };
  return {fmt::format("pid {} {}", pid_,
                      exit_status_ ? fmt::format("exited (status {:#x})", *exit_status_)
                                   : "running"),
          output("stdout", stdout_), output("stderr", stderr_),
          fmt::format("stdin: {} pending={}{}", stdin_ ? "open" : "closed",
                      stdin_pending_.size(), stdin_eof_ ? " eof" : "")};
}

void Process::CheckDeadline(Clock::time_point now) {
  auto deadline = PendingDeadline();
  if (deadline && now >= *deadline) {
    timed_out_ = true;
    kill(-pid_, SIGKILL);
  }
}

void SetImageEnvironment() {
  DefaultEnvironment().insert(DefaultEnvironment().end(), {"HOME=/root", "LANG=C.UTF-8"});
}

void SetProxyEnvironment(uint16_t proxy_port) {
  std::string proxy = fmt::format("http://127.0.0.1:{}", proxy_port);
  for (const char* key : {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}) {
    DefaultEnvironment().push_back(fmt::format("{}={}", key, proxy));
  }
  for (const char* key : {"NO_PROXY", "no_proxy"}) {
    DefaultEnvironment().push_back(fmt::format("{}=localhost,127.0.0.1", key));
  }
}

void RaiseDescriptorLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  rlimit raised = limit;
  raised.rlim_cur = limit.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &raised) != 0) {
    Log("cannot raise the descriptor limit to {}: {}", limit.rlim_max, std::strerror(errno));
    return;
  }
  command_descriptor_limit = limit;
}

}  // namespace vessel::agent
