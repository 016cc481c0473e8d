// What the guest agent parses from the host: every frame the host may send. The host is
// trusted more than the guest, but the agent must still never crash on its input.
#include "frame_fuzzer.h"

namespace vessel::protocol::fuzz {
namespace {

void DecodeFromHost(const Frame& frame) {
  const uint32_t id = frame.header.request_id;
  const std::span<const uint8_t> payload(frame.payload);
  switch (frame.header.type) {
    case MessageType::kExec:
      CheckReencodes(frame, DecodeExec(payload),
                     [&](const ExecRequest& request) { return EncodeExec(id, request); });
      return;
    case MessageType::kStdin:
      Check(EncodeStdin(id, payload) == WireBytes(frame), "stdin re-encodes");
      return;
    case MessageType::kSignal:
      CheckReencodes(frame, DecodeSignal(payload),
                     [&](int32_t signal) { return EncodeSignal(id, signal); });
      return;
    case MessageType::kCredit:
      CheckReencodes(frame, DecodeCredit(payload),
                     [&](const Credit& credit) { return EncodeCredit(id, credit); });
      return;
    case MessageType::kFileOp:
      CheckReencodes(frame, DecodeFileOp(payload),
                     [&](const FileOp& op) { return EncodeFileOp(id, op); });
      return;
    case MessageType::kFileData:
      Check(EncodeFileData(id, payload) == WireBytes(frame), "file data re-encodes");
      return;
    case MessageType::kPing:
      if (DecodeEmpty(payload, "ping"))
        Check(EncodePing(id) == WireBytes(frame), "ping re-encodes");
      return;
    case MessageType::kQuiesce:
      if (DecodeEmpty(payload, "quiesce"))
        Check(EncodeQuiesce(id) == WireBytes(frame), "quiesce re-encodes");
      return;
    case MessageType::kResume:
      CheckReencodes(frame, DecodeResume(payload),
                     [&](const ResumeRequest& request) { return EncodeResume(id, request); });
      return;
    case MessageType::kResize:
      CheckReencodes(frame, DecodeResize(payload),
                     [&](const TerminalSize& size) { return EncodeResize(id, size); });
      return;
    case MessageType::kNetData:
      Check(EncodeNetData(id, payload) == WireBytes(frame), "net data re-encodes");
      return;
    case MessageType::kNetClose:
      if (DecodeEmpty(payload, "net close"))
        Check(EncodeNetClose(id) == WireBytes(frame), "net close re-encodes");
      return;
    case MessageType::kHello:
    case MessageType::kOutput:
    case MessageType::kExited:
    case MessageType::kError:
    case MessageType::kPong:
    case MessageType::kStarted:
    case MessageType::kFileInfo:
    case MessageType::kDone:
    case MessageType::kNetOpen: return;  // agent -> host only: the agent never decodes them
  }
  Check(false, "DecodeHeader returns only known types");
}

}  // namespace
}  // namespace vessel::protocol::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vessel::protocol::fuzz::FuzzFrames(data, size, vessel::protocol::fuzz::DecodeFromHost);
}
