// `vessel exec` and `vessel cp`: work inside a sandbox made by `create`, through its
// supervisor's control socket. The socket speaks the agent protocol, so the host
// library's own process and file functions run over it unchanged.
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <limits>
#include <optional>
#include <thread>

#include "base/io.h"
#include "cli/cli.h"
#include "sandbox/connection.h"
#include "sandbox/files.h"
#include "sandbox/process.h"
#include "supervisor/client.h"
#include "supervisor/state.h"

namespace vessel::cli {
namespace {

constexpr size_t kStdinChunk = 64 * 1024;

struct RemoteSandbox {
  supervisor::SandboxRecord record;
  std::shared_ptr<sandbox::Connection> connection;
};

Result<RemoteSandbox> Connect(const std::string& id_or_name) {
  auto record = supervisor::Resolve(id_or_name);
  if (!record) return Fail(std::move(record).error());
  auto connection = supervisor::ConnectAgent(*record);
  if (!connection) return Fail(std::move(connection).error());
  return RemoteSandbox{std::move(*record), std::move(*connection)};
}

// The write end of the pipe the signal handler reports to; -1 when none.
std::atomic<int> signal_pipe_write{-1};

void OnForwardedSignal(int signal) {
  int fd = signal_pipe_write.load();
  auto byte = static_cast<unsigned char>(signal);
  if (fd >= 0) (void)!::write(fd, &byte, 1);
}

// The size of the terminal our stdout (else stdin) is, if either is one.
std::optional<TerminalSize> HostTerminalSize() {
  for (int fd : {STDOUT_FILENO, STDIN_FILENO}) {
    winsize ws{};
    if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
      return TerminalSize{ws.ws_row, ws.ws_col};
    }
  }
  return std::nullopt;
}

// Our terminal in raw mode for as long as this lives: keys go to the command as they are
// typed, ^C and ^Z included, and nothing is echoed twice. Restored on every way out of
// Exec, a lost VM included; only SIGKILL leaves it raw (`reset` mends it).
class RawTerminal {
 public:
  RawTerminal() {
    if (!::isatty(STDIN_FILENO) || ::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    active_ = ::tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) == 0;
  }
  ~RawTerminal() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_);
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};

// Passes what the user sends the CLI on to the remote command, each on a thread of its
// own: stdin (until EOF, then closes the command's stdin), and SIGINT, SIGTERM and
// SIGHUP; with a terminal, SIGWINCH as the terminal's new size. Stops when destroyed.
class InputForwarder {
 public:
  InputForwarder(Process& process, bool forward_stdin, bool terminal)
      : process_(process), terminal_(terminal) {
    int stop[2], signals[2];
    if (::pipe2(stop, O_CLOEXEC) != 0 || ::pipe2(signals, O_CLOEXEC | O_NONBLOCK) != 0) return;
    stop_read_.Reset(stop[0]);
    stop_write_.Reset(stop[1]);
    signal_read_.Reset(signals[0]);
    signal_write_.Reset(signals[1]);
    signal_pipe_write = signal_write_.get();
    struct sigaction action {};
    action.sa_handler = OnForwardedSignal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    for (int s : kForwarded) ::sigaction(s, &action, nullptr);
    signal_thread_ = std::thread([this] { ForwardSignals(); });
    if (forward_stdin) stdin_thread_ = std::thread([this] { ForwardStdin(); });
  }

  // The process's stdin must be able to fail by now (the process ended or its
  // connection was shut down), or this waits for the next input.
  ~InputForwarder() {
    for (int s : kForwarded) ::signal(s, SIG_DFL);
    signal_pipe_write = -1;
    stop_write_.Reset();  // both threads see the hangup
    if (signal_thread_.joinable()) signal_thread_.join();
    if (stdin_thread_.joinable()) stdin_thread_.join();
  }

 private:
  static constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGWINCH};

  // Waits for `fd` or the stop pipe; false once stopping.
  bool WaitFor(int fd) {
    for (;;) {
      pollfd fds[2] = {{fd, POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      if (fds[1].revents) return false;
      return true;
    }
  }

  void ForwardSignals() {
    while (WaitFor(signal_read_.get())) {
      unsigned char signal = 0;
      while (::read(signal_read_.get(), &signal, 1) == 1) {
        if (signal != SIGWINCH) {
          (void)process_.Signal(signal);
        } else if (auto size = HostTerminalSize(); size && terminal_) {
          (void)process_.Resize(*size);
        }
      }
    }
  }

  void ForwardStdin() {
    std::vector<char> buf(kStdinChunk);
    while (WaitFor(STDIN_FILENO)) {
      ssize_t n = ::read(STDIN_FILENO, buf.data(), buf.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        (void)process_.CloseStdin();
        return;
      }
      if (!process_.WriteStdin({buf.data(), static_cast<size_t>(n)})) return;
    }
  }

  Process& process_;
  const bool terminal_;
  UniqueFd stop_read_, stop_write_, signal_read_, signal_write_;
  std::thread signal_thread_;
  std::thread stdin_thread_;
};

// Streams the command's output to ours as it comes; returns the exit status `run` would.
int StreamUntilExit(Process& process, const ExecOptions& options) {
  for (;;) {
    auto event = process.NextEvent();
    if (!event) return Failure(event.error());
    if (!*event) return Failure("the command ended without an exit status");
    const ProcessEvent& e = **event;
    switch (e.kind) {
      case ProcessEvent::Kind::kStdout:
      case ProcessEvent::Kind::kStderr:
        if (!WriteAll(e.kind == ProcessEvent::Kind::kStdout ? STDOUT_FILENO : STDERR_FILENO,
                      AsBytes(e.data), Deadline::Never(), "writing the command's output")) {
          // Whoever reads our output stopped (`| head`): stop the command too, quietly.
          (void)process.Kill();
          return 128 + SIGPIPE;
        }
        continue;
      default: break;
    }
    if (e.stdout_truncated)
      PrintError(fmt::format("stdout truncated at {} bytes", options.output_cap));
    if (e.stderr_truncated)
      PrintError(fmt::format("stderr truncated at {} bytes", options.output_cap));
    switch (e.kind) {
      case ProcessEvent::Kind::kExited: return e.code;
      case ProcessEvent::Kind::kSignaled: return 128 + e.code;
      case ProcessEvent::Kind::kTimedOut:
        PrintError("the command timed out and was killed");
        return kExitTimedOut;
      default: return kExitVesselError;
    }
  }
}

// "ID:/path" names a file in a sandbox; anything else (also "./a:b") a local file.
struct Location {
  std::string sandbox;  // empty: local
  std::string path;
};

Location ParseLocation(const std::string& arg) {
  auto colon = arg.find(':');
  if (colon != std::string::npos && colon > 0 && arg.find('/') > colon) {
    return {arg.substr(0, colon), arg.substr(colon + 1)};
  }
  return {"", arg};
}

std::string Basename(const std::string& path) {
  return std::filesystem::path(path).filename().string();
}

// The signal that asked a copy to stop, or 0. A copy checks it between chunks, so it
// can leave nothing half-written behind; the handler is reset after one signal, so a
// second one ends a copy that is stuck.
volatile sig_atomic_t copy_interrupted = 0;

void OnCopyInterrupted(int signal) { copy_interrupted = signal; }

Result<void> CheckNotInterrupted() {
  if (copy_interrupted) return Fail(Error::HostIo("copying", EINTR));
  return {};
}

Result<void> Upload(sandbox::Connection& connection, const std::string& local, std::string remote) {
  UniqueFd fd(::open(local.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Fail(Error::HostIo("open " + local, errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Fail(Error::HostIo("stat " + local, errno));
  if (S_ISDIR(st.st_mode)) return Fail(Error::HostIo(local + " (cp copies one file)", EISDIR));
  // Into a directory: keep the file's name, as cp(1) does.
  if (remote.ends_with('/')) {
    remote += Basename(local);
  } else if (auto info = sandbox::StatFile(connection, remote);
             info && info->type == FileType::kDirectory) {
    remote += "/" + Basename(local);
  }
  auto source = [&](std::span<uint8_t> buf) -> Result<size_t> {
    if (auto go_on = CheckNotInterrupted(); !go_on) return Fail(std::move(go_on).error());
    for (;;) {
      ssize_t n = ::read(fd.get(), buf.data(), buf.size());
      if (n >= 0) return static_cast<size_t>(n);
      if (errno != EINTR) return Fail(Error::HostIo("read " + local, errno));
    }
  };
  return sandbox::WriteFileChunks(connection, remote, source, st.st_mode & 07777);
}

Result<void> Download(sandbox::Connection& connection, const std::string& remote,
                      std::string local) {
  struct stat st {};
  if (::stat(local.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    local += "/" + Basename(remote);
  } else if (local.ends_with('/')) {
    return Fail(Error::HostIo("open directory " + local, ENOENT));
  }
  // Written beside the destination and renamed over it: a failed copy leaves the
  // destination as it was.
  std::string temporary = local + ".vessel-XXXXXX";
  UniqueFd fd(::mkostemp(temporary.data(), O_CLOEXEC));
  if (!fd) return Fail(Error::HostIo("create a temporary file beside " + local, errno));
  auto sink = [&](std::span<const uint8_t> chunk) -> Result<void> {
    if (auto go_on = CheckNotInterrupted(); !go_on) return go_on;
    return WriteAll(fd.get(), chunk, Deadline::Never(), temporary.c_str());
  };
  auto info = sandbox::ReadFileChunks(connection, remote, sink);
  Result<void> done;
  if (!info) {
    done = Fail(std::move(info).error());
  } else {
    mode_t mask = ::umask(0);
    ::umask(mask);
    if (::fchmod(fd.get(), info->mode & 0777 & ~mask) != 0) {
      done = Fail(Error::HostIo("chmod " + temporary, errno));
    } else if (::rename(temporary.c_str(), local.c_str()) != 0) {
      done = Fail(Error::HostIo("rename " + temporary + " to " + local, errno));
    }
  }
  if (!done) ::unlink(temporary.c_str());
  return done;
}

}  // namespace

int Exec(const ExecArgs& args) {
  ExecOptions options = args.options;
  if (options.terminal) {
    options.terminal = HostTerminalSize().value_or(*options.terminal);
    const char* term = ::getenv("TERM");
    bool given = false;
    for (const auto& entry : options.env) given |= entry.starts_with("TERM=");
    if (term != nullptr && *term != '\0' && !given)
      options.env.push_back(std::string("TERM=") + term);
  }
  // A reader of our output that goes away is noticed as a failed write, not a signal.
  ::signal(SIGPIPE, SIG_IGN);
  auto remote = Connect(args.target);
  if (!remote) return Failure(remote.error());
  auto process = sandbox::StartProcess(remote->connection, Command::Argv(args.command), options,
                                       /*close_stdin=*/false);
  if (!process) return Failure(process.error());
  int status;
  {
    std::optional<RawTerminal> raw;
    if (options.terminal && options.stdin_data) raw.emplace();
    InputForwarder forwarder(**process, options.stdin_data.has_value(),
                             options.terminal.has_value());
    status = StreamUntilExit(**process, options);
    // Whatever ended the stream, the forwarder's threads must not wait on it any more.
    remote->connection->Shutdown(Error::Backend("vessel exec is done"));
  }
  return status;
}

int Copy(const CopyArgs& args) {
  Location from = ParseLocation(args.from);
  Location to = ParseLocation(args.to);
  if (from.sandbox.empty() == to.sandbox.empty()) {
    return Failure("cp copies between this host and a sandbox: exactly one side is ID:/path");
  }
  auto remote = Connect(from.sandbox.empty() ? to.sandbox : from.sandbox);
  if (!remote) return Failure(remote.error());
  struct sigaction action {};
  action.sa_handler = OnCopyInterrupted;
  action.sa_flags = static_cast<int>(SA_RESTART | SA_RESETHAND);
  sigemptyset(&action.sa_mask);
  for (int signal : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(signal, &action, nullptr);
  auto copied = from.sandbox.empty() ? Upload(*remote->connection, from.path, to.path)
                                     : Download(*remote->connection, from.path, to.path);
  if (copied) return 0;
  if (copy_interrupted) {
    PrintError(fmt::format("cp interrupted: {} was left as it was", to.path));
    return 128 + copy_interrupted;
  }
  return Failure(copied.error());
}

}  // namespace vessel::cli
