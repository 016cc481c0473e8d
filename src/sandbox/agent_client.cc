#include "sandbox/agent_client.h"

#include <fmt/format.h>

#include "base/io.h"

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
  // The encoded size, summed before anything is copied: every string is a u32 length and
  // its bytes; then the counts, timeout, output cap, flags and window.
  size_t payload = 4 + 4 + 4 + options.cwd.size() + 4 + 8 + 1 + 4;
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
  return request;
}

Result<proto::Frame> AgentClient::ReadFrame(Deadline deadline) {
  for (;;) {
    auto frame = reader_.Next();
    if (!frame) return Fail(std::move(frame).error().Context("from the guest agent"));
    if (*frame) return std::move(**frame);
    uint8_t buf[64 * 1024];
    auto n = ReadSome(fd_, buf, deadline, "waiting for the guest agent");
    if (!n) return Fail(std::move(n).error());
    if (*n == 0) {
      return Fail(Error::Backend(reader_.buffered() ? "the guest agent's channel closed mid-frame"
                                                    : "the guest agent's channel closed"));
    }
    reader_.Feed({buf, *n});
  }
}

Result<proto::Hello> AgentClient::AwaitHello(Deadline deadline) {
  auto frame = ReadFrame(deadline);
  if (!frame) return Fail(std::move(frame).error());
  if (frame->header.type != proto::MessageType::kHello) {
    return Fail(Error::Backend("the guest agent sent something other than hello first"));
  }
  auto hello = proto::DecodeHello(frame->payload);
  if (!hello) return hello;
  if (hello->version != proto::kVersion) {
    return Fail(
        Error::Backend(fmt::format("the guest agent speaks protocol version {}, the host {}",
                                   hello->version, proto::kVersion)));
  }
  return hello;
}

Result<ExecResult> AgentClient::Execute(const proto::ExecRequest& request, Deadline deadline) {
  uint32_t id = next_request_id_++;
  auto started = Deadline::Clock::now();
  auto frame_bytes = proto::EncodeExec(id, request);
  if (auto r = WriteAll(fd_, frame_bytes, deadline, "sending a command to the guest agent"); !r) {
    return Fail(std::move(r).error());
  }
  ExecResult result;
  for (;;) {
    auto frame = ReadFrame(deadline);
    if (!frame) return Fail(std::move(frame).error());
    const auto& header = frame->header;
    if (header.type == proto::MessageType::kHello) continue;  // the agent reconnected
    if (header.request_id != id) {
      return Fail(Error::Backend(fmt::format(
          "the guest agent answered request {} while {} was in flight", header.request_id, id)));
    }
    switch (header.type) {
      case proto::MessageType::kOutput: {
        auto output = proto::DecodeOutput(frame->payload);
        if (!output) return Fail(std::move(output).error());
        std::string& sink =
            output->stream == proto::Stream::kStdout ? result.stdout_data : result.stderr_data;
        if (sink.size() + output->data.size() > request.output_cap) {
          return Fail(Error::Backend("the guest agent sent more output than the cap allows"));
        }
        sink.append(output->data.begin(), output->data.end());
        break;
      }
      case proto::MessageType::kExited: {
        auto exited = proto::DecodeExited(frame->payload);
        if (!exited) return Fail(std::move(exited).error());
        switch (exited->how) {
          case proto::ExitHow::kExited:
            result.outcome = ExecResult::Outcome::kExited;
            result.exit_code = exited->code;
            break;
          case proto::ExitHow::kSignaled:
            result.outcome = ExecResult::Outcome::kSignaled;
            result.signal = exited->code;
            break;
          case proto::ExitHow::kTimedOut:
            result.outcome = ExecResult::Outcome::kTimedOut;
            result.signal = exited->code;
            break;
        }
        result.stdout_truncated = exited->stdout_truncated;
        result.stderr_truncated = exited->stderr_truncated;
        result.duration =
            std::chrono::duration_cast<std::chrono::microseconds>(Deadline::Clock::now() - started);
        return result;
      }
      case proto::MessageType::kError: {
        auto error = proto::DecodeError(frame->payload);
        if (!error) return Fail(std::move(error).error());
        if (!error->path.empty()) return Fail(Error::GuestFile(error->path, error->message));
        return Fail(Error::Backend("the guest agent failed the command: " + error->message));
      }
      default:
        return Fail(Error::Backend(fmt::format("unexpected frame type {} from the guest agent",
                                               static_cast<int>(header.type))));
    }
  }
}

}  // namespace vessel::sandbox
