#include "sandbox/process.h"

#include <fmt/format.h>

#include <thread>

namespace vessel::sandbox {

namespace proto = vessel::protocol;

Result<proto::ExecRequest> MakeExecRequest(const Command& command, const ExecOptions& options) {
  if (command.argv.empty()) return Fail(Error::InvalidConfig("command", "argv is empty"));
  if (command.argv[0].empty())
    return Fail(Error::InvalidConfig("command", "the program name is empty"));
  if (command.argv.size() > proto::kMaxArgs) {
    return Fail(
        Error::InvalidConfig("command", fmt::format("more than {} arguments", proto::kMaxArgs)));
  }
  for (const auto& arg : command.argv) {
    if (arg.size() > proto::kMaxStringSize) {
      return Fail(Error::InvalidConfig("command", fmt::format("an argument of {} bytes exceeds {}",
                                                              arg.size(), proto::kMaxStringSize)));
    }
    if (arg.find('\0') != std::string::npos) {
      return Fail(Error::InvalidConfig("command", "an argument contains a NUL byte"));
    }
  }
  if (options.env.size() > proto::kMaxEnv) {
    return Fail(Error::InvalidConfig("env", fmt::format("more than {} entries", proto::kMaxEnv)));
  }
  for (const auto& entry : options.env) {
    auto eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Fail(
          Error::InvalidConfig("env", "entry \"" + entry.substr(0, 64) + "\" is not KEY=VALUE"));
    }
    if (entry.size() > proto::kMaxStringSize || entry.find('\0') != std::string::npos) {
      return Fail(Error::InvalidConfig("env", "an entry is too long or contains a NUL byte"));
    }
  }
  if (options.cwd.size() > proto::kMaxPathSize || options.cwd.find('\0') != std::string::npos) {
    return Fail(Error::InvalidConfig("cwd", "too long or contains a NUL byte"));
  }
  if (options.timeout.count() < 0 || options.timeout.count() > UINT32_MAX) {
    return Fail(Error::InvalidConfig("timeout", "must be between 0 and 2^32-1 ms"));
  }
  if (options.terminal) {
    if (auto size = WireTerminalSize(*options.terminal); !size)
      return Fail(std::move(size).error());
  }
  // The encoded size, summed before anything is copied: every string is a u32 length and
  // its bytes; then the counts, timeout, output cap, flags and window.
  size_t payload = 4 + 4 + 4 + options.cwd.size() + 4 + 8 + 1 + 4 + (options.terminal ? 4 : 0);
  for (const auto& arg : command.argv) payload += 4 + arg.size();
  for (const auto& entry : options.env) payload += 4 + entry.size();
  if (payload > proto::kMaxPayload) {
    return Fail(Error::InvalidConfig(
        "command", fmt::format("argv, env and cwd together exceed {} bytes", proto::kMaxPayload)));
  }
  proto::ExecRequest request;
  request.argv = command.argv;
  request.env = options.env;
  request.cwd = options.cwd;
  request.timeout_ms = static_cast<uint32_t>(options.timeout.count());
  request.output_cap = options.output_cap;
  request.stdin_pipe = options.stdin_data.has_value();
  request.window = kStreamWindow;
  if (options.terminal) request.terminal = *WireTerminalSize(*options.terminal);
  return request;
}

Result<proto::TerminalSize> WireTerminalSize(TerminalSize size) {
  if (size.rows < 1 || size.rows > proto::kMaxTerminalSide || size.cols < 1 ||
      size.cols > proto::kMaxTerminalSide) {
    return Fail(Error::InvalidConfig(
        "terminal", fmt::format("{} rows by {} columns: each must be between 1 and {}", size.rows,
                                size.cols, proto::kMaxTerminalSide)));
  }
  return proto::TerminalSize{size.rows, size.cols};
}

Error ErrorFromAgent(std::span<const uint8_t> payload, std::string_view what) {
  auto error = proto::DecodeError(payload);
  if (!error) return std::move(error).error();
  if (!error->path.empty())
    return Error::GuestFile(error->path, error->errno_value, error->message);
  return Error::Backend(fmt::format("{}: the guest agent failed: {}", what, error->message));
}

namespace {

class ProcessImpl final : public Process {
 public:
  ProcessImpl(std::shared_ptr<Connection> connection, std::shared_ptr<Mailbox> mailbox,
              const proto::ExecRequest& request, int pid)
      : connection_(std::move(connection)),
        mailbox_(std::move(mailbox)),
        window_(request.window),
        cap_(request.output_cap),
        timeout_(request.timeout_ms),
        stdin_open_(request.stdin_pipe),
        terminal_(request.terminal.has_value()),
        pid_(pid) {}

  // A command still running when its handle goes is killed: nobody could read it.
  ~ProcessImpl() override {
    if (!finished_ && !mailbox_->ended()) {
      (void)Kill();
      // Nobody reads the rest: let the agent drain the pipes and finish the request.
      for (auto stream : {proto::Stream::kStdout, proto::Stream::kStderr}) {
        (void)connection_->Send(proto::EncodeCredit(mailbox_->id(), {stream, window_}));
      }
    }
    mailbox_->Cancel(Error::Lifecycle({LifecycleError::Other{"the process handle was closed"}}));
    if (feeder_.joinable()) feeder_.join();
    connection_->EndRequest(mailbox_->id());
  }

  // Writes `data` to stdin on a thread of its own, so a command that writes output
  // before it reads its input cannot deadlock against the caller; then closes stdin if
  // asked. Later WriteStdin() calls queue behind it.
  void FeedStdin(std::string data, bool close_after) {
    feeder_ = std::thread([this, data = std::move(data), close_after] {
      std::lock_guard lock(stdin_mutex_);
      if (!data.empty() && !WriteStdinLocked(data)) return;
      if (close_after) (void)CloseStdinLocked();
    });
  }

  int pid() const override { return pid_; }

  Result<std::optional<ProcessEvent>> NextEvent(
      std::optional<std::chrono::milliseconds> timeout) override {
    if (finished_) return std::nullopt;
    auto frame = mailbox_->Next(timeout ? Deadline::After(*timeout) : Deadline::Never());
    if (!frame) return Fail(std::move(frame).error());
    switch (frame->header.type) {
      case proto::MessageType::kOutput: return OnOutput(*frame);
      case proto::MessageType::kExited: {
        finished_ = true;
        auto exited = proto::DecodeExited(frame->payload);
        if (!exited) return Fail(std::move(exited).error());
        ProcessEvent event;
        event.code = exited->code;
        event.kind = exited->how == proto::ExitHow::kExited     ? ProcessEvent::Kind::kExited
                     : exited->how == proto::ExitHow::kSignaled ? ProcessEvent::Kind::kSignaled
                                                                : ProcessEvent::Kind::kTimedOut;
        event.stdout_truncated = exited->stdout_truncated;
        event.stderr_truncated = exited->stderr_truncated;
        return event;
      }
      case proto::MessageType::kError:
        finished_ = true;
        return Fail(ErrorFromAgent(frame->payload, "running the command"));
      default:
        finished_ = true;
        return Fail(Error::Backend(
            fmt::format("unexpected frame type {} from the guest agent for a command",
                        static_cast<int>(frame->header.type))));
    }
  }

  Result<void> WriteStdin(std::string_view data) override {
    std::lock_guard lock(stdin_mutex_);
    return WriteStdinLocked(data);
  }

  Result<void> CloseStdin() override {
    std::lock_guard lock(stdin_mutex_);
    return CloseStdinLocked();
  }

  Result<void> WriteStdinLocked(std::string_view data) {
    if (!stdin_open_) return Fail(Error::InvalidConfig("stdin", "stdin is not open"));
    while (!data.empty()) {
      auto chunk = data.substr(0, std::min<size_t>({data.size(), proto::kMaxPayload, window_}));
      auto credit = mailbox_->AcquireStdinCredit(static_cast<uint32_t>(chunk.size()), window_,
                                                 Deadline::Never());
      if (!credit) return credit;
      auto sent = connection_->Send(proto::EncodeStdin(
          mailbox_->id(), {reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size()}));
      if (!sent) return sent;
      data.remove_prefix(chunk.size());
    }
    return {};
  }

  Result<void> CloseStdinLocked() {
    if (!stdin_open_) return Fail(Error::InvalidConfig("stdin", "stdin is not open"));
    stdin_open_ = false;
    if (mailbox_->ended()) return {};
    return connection_->Send(proto::EncodeStdin(mailbox_->id(), {}));
  }

  Result<void> Signal(int signal) override {
    if (signal < 1 || signal > 64)
      return Fail(Error::InvalidConfig("signal", fmt::format("{} is not a signal", signal)));
    if (mailbox_->ended()) return {};
    return connection_->Send(proto::EncodeSignal(mailbox_->id(), signal));
  }

  Result<void> Kill() override { return Signal(9); }

  Result<void> Resize(TerminalSize size) override {
    if (!terminal_) return Fail(Error::InvalidConfig("terminal", "the command has no terminal"));
    auto wire = WireTerminalSize(size);
    if (!wire) return Fail(std::move(wire).error());
    if (mailbox_->ended()) return {};
    return connection_->Send(proto::EncodeResize(mailbox_->id(), *wire));
  }

  Result<ExecResult> Wait() override {
    ExecResult result;
    auto started = Deadline::Clock::now();
    // The agent enforces the command's timeout; the host only guards against an agent
    // that stopped answering.
    std::optional<std::chrono::milliseconds> guard;
    if (timeout_.count() > 0) guard = timeout_ + kAgentGrace;
    for (;;) {
      auto event = NextEvent(guard);
      if (!event) return Fail(std::move(event).error());
      if (!*event) return result;
      switch ((*event)->kind) {
        case ProcessEvent::Kind::kStdout: result.stdout_data += (*event)->data; continue;
        case ProcessEvent::Kind::kStderr: result.stderr_data += (*event)->data; continue;
        case ProcessEvent::Kind::kExited:
          result.outcome = ExecResult::Outcome::kExited;
          result.exit_code = (*event)->code;
          break;
        case ProcessEvent::Kind::kSignaled:
          result.outcome = ExecResult::Outcome::kSignaled;
          result.signal = (*event)->code;
          break;
        case ProcessEvent::Kind::kTimedOut:
          result.outcome = ExecResult::Outcome::kTimedOut;
          result.signal = (*event)->code;
          break;
      }
      result.stdout_truncated = (*event)->stdout_truncated;
      result.stderr_truncated = (*event)->stderr_truncated;
      result.duration =
          std::chrono::duration_cast<std::chrono::microseconds>(Deadline::Clock::now() - started);
      return result;
    }
  }

 private:
  struct StreamState {
    uint64_t received = 0;     // total, checked against the cap
    uint64_t outstanding = 0;  // handed out, not yet credited back
  };

  Result<std::optional<ProcessEvent>> OnOutput(const proto::Frame& frame) {
    auto output = proto::DecodeOutput(frame.payload);
    if (!output) return Fail(std::move(output).error());
    bool is_stdout = output->stream == proto::Stream::kStdout;
    StreamState& s = is_stdout ? stdout_ : stderr_;
    uint64_t n = output->data.size();
    if (s.received + n > cap_) {
      finished_ = true;
      return Fail(Error::Backend("the guest agent sent more output than the cap allows"));
    }
    s.received += n;
    s.outstanding += n;
    // The bytes are handed out now: let the agent send more once a quarter window is due.
    if (s.outstanding >= window_ / 4) {
      mailbox_->Granted(output->stream, static_cast<uint32_t>(s.outstanding));
      auto credit = connection_->Send(proto::EncodeCredit(
          mailbox_->id(), {output->stream, static_cast<uint32_t>(s.outstanding)}));
      if (!credit) return Fail(std::move(credit).error());
      s.outstanding = 0;
    }
    ProcessEvent event;
    event.kind = is_stdout ? ProcessEvent::Kind::kStdout : ProcessEvent::Kind::kStderr;
    event.data.assign(output->data.begin(), output->data.end());
    return event;
  }

  std::shared_ptr<Connection> connection_;
  std::shared_ptr<Mailbox> mailbox_;
  const uint32_t window_;
  const uint64_t cap_;
  const std::chrono::milliseconds timeout_;
  std::mutex stdin_mutex_;  // orders stdin writes; guards stdin_open_
  bool stdin_open_;
  const bool terminal_;
  std::thread feeder_;
  const int pid_;
  bool finished_ = false;
  StreamState stdout_;
  StreamState stderr_;
};

}  // namespace

Result<std::unique_ptr<Process>> StartProcess(std::shared_ptr<Connection> connection,
                                              const Command& command, const ExecOptions& options,
                                              bool close_stdin) {
  auto request = MakeExecRequest(command, options);
  if (!request) return Fail(std::move(request).error());
  auto mailbox = connection->NewRequest(RequestKind::kProcess);
  mailbox->LimitInbound(request->window);
  auto sent = connection->Send(proto::EncodeExec(mailbox->id(), *request));
  if (!sent) {
    connection->EndRequest(mailbox->id());
    return Fail(std::move(sent).error());
  }
  // Starting takes a fork and an exec in the guest: the grace period is plenty.
  auto frame = mailbox->Next(Deadline::After(kAgentGrace));
  if (!frame) {
    connection->EndRequest(mailbox->id());
    return Fail(std::move(frame).error().Context("starting the command"));
  }
  if (frame->header.type == proto::MessageType::kError) {
    return Fail(ErrorFromAgent(frame->payload, "starting the command"));
  }
  if (frame->header.type != proto::MessageType::kStarted) {
    connection->EndRequest(mailbox->id());
    return Fail(Error::Backend("the guest agent did not confirm the command's start"));
  }
  auto started = proto::DecodeStarted(frame->payload);
  if (!started) {
    connection->EndRequest(mailbox->id());
    return Fail(std::move(started).error());
  }
  auto process = std::make_unique<ProcessImpl>(connection, mailbox, *request, started->pid);
  if (options.stdin_data && (!options.stdin_data->empty() || close_stdin)) {
    process->FeedStdin(*options.stdin_data, close_stdin);
  }
  return process;
}

}  // namespace vessel::sandbox
