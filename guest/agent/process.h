// A command started by an Exec request, from fork to its Exited frame.
//
// Output is flow controlled per stream: the agent forwards at most the credit the host
// granted (a window to start with, more with Credit frames) and reads a pipe only while it
// may forward, so a host that reads one command slowly stalls only that command. Stdin
// bytes from the host wait in a buffer bounded by the same window until the pipe takes
// them; each write is acknowledged with a Credit frame.
//
// A command with a terminal runs as a session leader on a new pseudo-terminal, which is its
// stdin, stdout and stderr. The master side then stands in for the pipes: what the command
// writes is read from it as stdout, stdin bytes are written to it (and the line discipline
// turns ^C into SIGINT for the foreground job), and Resize sets its window size.
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "base/unique_fd.h"
#include "port.h"
#include "protocol/wire.h"

namespace vessel::agent {

using Clock = std::chrono::steady_clock;

// PATH of the agent, and of commands whose environment has none.
inline constexpr const char* kDefaultPath =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// From now on, commands whose environment lacks HOME or LANG get a root image's usual
// ones (HOME=/root, LANG=C.UTF-8), as a login would give them. Call before serving.
void SetImageEnvironment();

// From now on, commands whose environment lacks any of HTTP_PROXY, HTTPS_PROXY, NO_PROXY
// (or their lower-case forms) get it, pointing at the agent's proxy on `proxy_port` of
// 127.0.0.1 and exempting localhost. Call before serving.
void SetProxyEnvironment(uint16_t proxy_port);

// Raises the agent's soft limit on open descriptors to its hard limit: the commands, file
// transfers and proxied connections open at once need more than the usual 1024. Commands
// still start with the limit the agent was started with. Call before serving.
void RaiseDescriptorLimit();

// Bytes waiting to be written, taken from the front.
class ByteQueue {
 public:
  void Append(std::span<const uint8_t> bytes);
  [[nodiscard]] std::span<const uint8_t> front() const {
    return {bytes_.data() + head_, bytes_.size() - head_};
  }
  void Consume(size_t n);
  void Clear();
  [[nodiscard]] size_t size() const { return bytes_.size() - head_; }
  [[nodiscard]] bool empty() const { return size() == 0; }

 private:
  std::vector<uint8_t> bytes_;
  size_t head_ = 0;
};

class Process {
 public:
  // Forks and execs the command. On success sends Started; on failure sends the Error that
  // ends the request and returns nullopt.
  [[nodiscard]] static std::optional<Process> Start(uint32_t request_id,
                                                    const protocol::ExecRequest& request,
                                                    Port& port);

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool exited() const { return exit_status_.has_value(); }

  // What to poll while the main process runs; fd -1 when there is nothing to wait for (the
  // stream is closed or out of credit, or the port has no room).
  [[nodiscard]] pollfd PollOutput(protocol::Stream stream, const Port& port) const;
  [[nodiscard]] pollfd PollStdin() const;
  // Act on poll(): one read of a stdout/stderr pipe, one write to the stdin pipe.
  void ReadOutput(protocol::Stream stream, Port& port);
  void WriteStdin(Port& port);

  // Frames from the host for this request. OnStdin returns false when the bytes would
  // exceed the window: the host broke the protocol and the request must fail.
  [[nodiscard]] bool OnStdin(std::span<const uint8_t> data, Port& port);
  void OnCredit(const protocol::Credit& credit);
  void Signal(int number) const;
  // Sets the terminal's size (the foreground job gets SIGWINCH). False when the command
  // has no terminal.
  [[nodiscard]] bool Resize(const protocol::TerminalSize& size) const;

  // The main process was reaped with this wait status.
  void OnExit(int status, Port& port);
  // After the exit: forwards what the pipes hold now, within the credit. True once Exited
  // was sent and the process can be forgotten.
  [[nodiscard]] bool FinishAfterExit(Port& port);
  // Whether FinishAfterExit can make progress without waiting for an event.
  [[nodiscard]] bool CanFinishNow(const Port& port) const;

  // The deadline still to enforce, if any.
  [[nodiscard]] std::optional<Clock::time_point> PendingDeadline() const;
  void CheckDeadline(Clock::time_point now);

  // A line per stream (stdout, stderr, stdin) for a state dump.
  [[nodiscard]] std::vector<std::string> Describe() const;

 private:
  struct OutputPipe {
    UniqueFd fd;
    uint64_t credit = 0;     // bytes the host will accept now
    uint64_t forwarded = 0;  // bytes sent, counted against the output cap
    bool truncated = false;
    // After the exit: bytes still to read at most, so a background writer cannot hold the
    // Exited back forever. The pipe's size covers all that it held at the exit.
    uint64_t drain_budget = 0;
  };
  enum class ReadResult { kForwarded, kEmpty, kClosed };

  OutputPipe& pipe(protocol::Stream stream) {
    return stream == protocol::Stream::kStdout ? stdout_ : stderr_;
  }
  const OutputPipe& pipe(protocol::Stream stream) const {
    return stream == protocol::Stream::kStdout ? stdout_ : stderr_;
  }
  [[nodiscard]] bool MayRead(const OutputPipe& p) const;
  ReadResult ReadOnce(protocol::Stream stream, Port& port);
  void CreditStdin(size_t bytes, Port& port);
  void DiscardStdin(Port& port);

  uint32_t request_id_ = 0;
  pid_t pid_ = -1;
  uint64_t output_cap_ = 0;
  uint32_t window_ = 0;
  OutputPipe stdout_;
  OutputPipe stderr_;
  UniqueFd stdin_;
  // The terminal's master side (stdout_ and stdin_ hold duplicates of it), else invalid.
  UniqueFd terminal_;
  ByteQueue stdin_pending_;
  bool stdin_eof_ = false;  // the host sent its empty Stdin frame
  std::optional<Clock::time_point> deadline_;
  bool timed_out_ = false;
  std::optional<int> exit_status_;
};

}  // namespace vessel::agent
