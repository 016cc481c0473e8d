// What the host parses from a hostile guest: every frame the agent may send.
#include "frame_fuzzer.h"

namespace vessel::protocol::fuzz {
namespace {

void DecodeFromAgent(const Frame& frame) {
  const uint32_t id = frame.header.request_id;
  const std::span<const uint8_t> payload(frame.payload);
  switch (frame.header.type) {
    case MessageType::kHello:
      // Request id 0 when unsolicited, a Resume's when it answers one.
      CheckReencodes(frame, DecodeHello(payload),
                     [&](const Hello& hello) { return EncodeHello(id, hello); });
      return;
    case MessageType::kOutput:
      CheckReencodes(frame, DecodeOutput(payload),
                     [&](const Output& out) { return EncodeOutput(id, out.stream, out.data); });
      return;
    case MessageType::kExited:
      CheckReencodes(frame, DecodeExited(payload),
                     [&](const Exited& exited) { return EncodeExited(id, exited); });
      return;
    case MessageType::kError:
      CheckReencodes(frame, DecodeError(payload),
                     [&](const ErrorReply& error) { return EncodeError(id, error); });
      return;
    case MessageType::kStarted:
      CheckReencodes(frame, DecodeStarted(payload),
                     [&](const Started& started) { return EncodeStarted(id, started); });
      return;
    case MessageType::kCredit:
      CheckReencodes(frame, DecodeCredit(payload),
                     [&](const Credit& credit) { return EncodeCredit(id, credit); });
      return;
    case MessageType::kFileData:
      Check(EncodeFileData(id, payload) == WireBytes(frame), "file data re-encodes");
      return;
    case MessageType::kFileInfo:
      CheckReencodes(frame, DecodeFileInfo(payload),
                     [&](const FileInfo& info) { return EncodeFileInfo(id, info); });
      return;
    case MessageType::kDone:
      if (DecodeEmpty(payload, "done"))
        Check(EncodeDone(id) == WireBytes(frame), "done re-encodes");
      return;
    case MessageType::kPong:
      if (DecodeEmpty(payload, "pong"))
        Check(EncodePong(id) == WireBytes(frame), "pong re-encodes");
      return;
    case MessageType::kNetOpen:
      if (DecodeEmpty(payload, "net open"))
        Check(EncodeNetOpen(id) == WireBytes(frame), "net open re-encodes");
      return;
    case MessageType::kNetData:
      Check(EncodeNetData(id, payload) == WireBytes(frame), "net data re-encodes");
      return;
    case MessageType::kNetClose:
      if (DecodeEmpty(payload, "net close"))
        Check(EncodeNetClose(id) == WireBytes(frame), "net close re-encodes");
      return;
    case MessageType::kExec:
    case MessageType::kPing:
    case MessageType::kStdin:
    case MessageType::kSignal:
    case MessageType::kFileOp:
    case MessageType::kQuiesce:
    case MessageType::kResume:
    case MessageType::kResize: return;  // host -> agent only: the host never decodes them
  }
  Check(false, "DecodeHeader returns only known types");
}

}  // namespace
}  // namespace vessel::protocol::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vessel::protocol::fuzz::FuzzFrames(data, size, vessel::protocol::fuzz::DecodeFromAgent);
}
