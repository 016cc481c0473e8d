#include "base/subprocess.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/close_range.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "base/io.h"

namespace vessel {
namespace {

// Runs fork jobs on a thread that lives as long as the process.
class Spawner {
 public:
  static Spawner& Get() {
    static Spawner* spawner = new Spawner();  // never destroyed: the thread must not exit
    return *spawner;
  }

  Result<pid_t> Run(std::function<Result<pid_t>()> job) {
    if (std::this_thread::get_id() == thread_id_) return job();
    std::mutex done_mutex;
    std::condition_variable done_cv;
    std::optional<Result<pid_t>> result;
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back([&] {
        auto r = job();
        std::lock_guard done_lock(done_mutex);
        result.emplace(std::move(r));
        done_cv.notify_one();
      });
    }
    cv_.notify_one();
    std::unique_lock done_lock(done_mutex);
    done_cv.wait(done_lock, [&] { return result.has_value(); });
    return std::move(*result);
  }

 private:
  Spawner() {
    std::thread t([this] { Loop(); });
    thread_id_ = t.get_id();
    t.detach();
  }

  void Loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::thread::id thread_id_;
};

// What a child that failed before exec reports on its status pipe, with errno.
constexpr int kStageOutput = 1;
constexpr int kStageExec = 2;
constexpr int kStageLimits = 3;
constexpr int kStageJail = 4;
constexpr int kStageParentGone = 5;
constexpr int kStageCgroup = 6;

// Between fork and exec only async-signal-safe calls are made; everything the child
// needs is prepared before the fork.
Result<pid_t> ForkExec(const SpawnOptions& options) {
  std::vector<char*> argv;
  for (const auto& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const char* output = options.output_path.empty() ? "/dev/null" : options.output_path.c_str();
  int output_flags = options.output_path.empty() ? O_WRONLY : O_WRONLY | O_CREAT | O_APPEND;
  std::optional<JailPlan> jail;
  if (options.jail) {
    auto plan = PlanJail(*options.jail, ProbeHost(*options.jail));
    if (!plan) return Fail(std::move(plan).error());
    jail = std::move(*plan);
  }
  pid_t parent = getpid();
  int status_pipe[2];
  if (pipe2(status_pipe, O_CLOEXEC) != 0) return Fail(Error::HostIo("pipe", errno));

  // A jailed child is cloned into its namespaces: like fork(), it returns twice.
  pid_t pid = jail ? static_cast<pid_t>(syscall(SYS_clone, jail->clone_flags | SIGCHLD, nullptr,
                                                nullptr, nullptr, nullptr))
                   : fork();
  if (pid < 0) {
    int e = errno;
    close(status_pipe[0]);
    close(status_pipe[1]);
    return Fail(Error::HostIo(jail ? "clone into new namespaces" : "fork", e));
  }
  if (pid == 0) {
    close(status_pipe[0]);
    auto fail = [&status_pipe](int stage, int error, int step = 0) {
      int failure[3] = {stage, error, step};
      (void)!write(status_pipe[1], failure, sizeof(failure));
      _exit(127);
    };
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!options.cgroup_procs.empty()) {
      int procs = open(options.cgroup_procs.c_str(), O_WRONLY | O_CLOEXEC);
      if (procs < 0 || write(procs, "0\n", 2) != 2) fail(kStageCgroup, errno);
      close(procs);
    }
    // In a new pid namespace the parent is outside it, and getppid() is 0.
    if (!jail && getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setpgid(0, 0);  // signals aimed at the caller's process group do not reach the child
    int null = open("/dev/null", O_RDONLY);
    int out = open(output, output_flags, 0600);
    if (null < 0 || out < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0) {
      fail(kStageOutput, errno);
    }
    for (const auto& [resource, value] : options.rlimits) {
      rlimit limit{.rlim_cur = value, .rlim_max = value};
      if (setrlimit(resource, &limit) != 0) fail(kStageLimits, errno);
    }
    if (jail) {
      size_t step = 0;
      if (int error = RunJailSteps(*jail, &step); error != 0) {
        fail(kStageJail, error, static_cast<int>(step));
      }
      // A new uid clears the parent-death signal: set it again, then make sure the parent
      // did not die before (its end of the status pipe would be closed).
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      pollfd parent_end{.fd = status_pipe[1], .events = 0, .revents = 0};
      if (poll(&parent_end, 1, 0) > 0 && (parent_end.revents & POLLERR)) {
        fail(kStageParentGone, ESRCH);
      }
    }
    syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
    for (int fd : options.inherit_fds) fcntl(fd, F_SETFD, 0);
    execvp(argv[0], argv.data());
    fail(kStageExec, errno);
  }
  close(status_pipe[1]);
  int failure[3] = {};
  ssize_t n;
  do n = read(status_pipe[0], failure, sizeof(failure));
  while (n < 0 && errno == EINTR);
  close(status_pipe[0]);
  if (n == sizeof(failure)) {
    waitpid(pid, nullptr, 0);
    if (failure[0] == kStageLimits) {
      return Fail(Error::HostIo("set the resource limits of " + options.argv[0], failure[1]));
    }
    if (failure[0] == kStageJail) {
      return Fail(Error::HostIo(
          fmt::format("jail {}: {}", options.argv[0],
                      DescribeJailStep(*jail, static_cast<size_t>(failure[2]))),
          failure[1]));
    }
    if (failure[0] == kStageCgroup) {
      return Fail(Error::HostIo("join the cgroup " + options.cgroup_procs, failure[1]));
    }
    if (failure[0] == kStageOutput) {
      return Fail(Error::HostIo("open the child's output " + std::string(output), failure[1]));
    }
    return Fail(Error::HostIo("exec " + options.argv[0], failure[1]));
  }
  return pid;
}

}  // namespace

std::vector<std::pair<int, uint64_t>> VmmLimits() {
  return {{RLIMIT_CORE, 0}, {RLIMIT_NOFILE, kVmmOpenFiles}};
}

Subprocess& Subprocess::operator=(Subprocess&& other) noexcept {
  if (this != &other) {
    Kill();
    pid_ = std::exchange(other.pid_, -1);
    status_ = other.status_;
  }
  return *this;
}

Result<Subprocess> Subprocess::Spawn(const SpawnOptions& options) {
  if (options.argv.empty()) return Fail(Error::InvalidConfig("argv", "empty"));
  auto pid = Spawner::Get().Run([&] { return ForkExec(options); });
  if (!pid) return Fail(std::move(pid).error());
  return Subprocess(*pid);
}

bool Subprocess::Running() {
  if (pid_ < 0) return false;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_ || (r < 0 && errno == ECHILD)) {
    status_ = status;
    pid_ = -1;
    return false;
  }
  return true;
}

bool Subprocess::WaitFor(std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (Running()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

void Subprocess::Kill() {
  if (pid_ < 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  status_ = status;
  pid_ = -1;
}

Result<std::string> RunForOutput(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout, size_t max_bytes) {
  const char* tmp = std::getenv("TMPDIR");
  std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/vessel-output-XXXXXX";
  int fd = ::mkstemp(path.data());
  if (fd < 0) return Fail(Error::HostIo("create " + path, errno));
  ::close(fd);
  // The child appends to the file by name; it goes once read, whatever happens.
  struct RemoveOnExit {
    std::string path;
    ~RemoveOnExit() { ::unlink(path.c_str()); }
  } remove{path};
  auto process = Subprocess::Spawn({.argv = argv, .output_path = path});
  if (!process) return Fail(std::move(process).error());
  if (!process->WaitFor(timeout)) {
    process->Kill();
    return Fail(Error::Timeout(argv.front() + " did not finish in time"));
  }
  auto status = process->status();
  if (!status || !WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return Fail(Error::Backend(argv.front() + " failed"));
  }
  return ReadFileToString(path, max_bytes);
}

}  // namespace vessel
