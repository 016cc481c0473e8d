#include "vmm/devices/i8042/i8042.h"

#include <string>

#include "vmm/core/state_codec.h"

namespace vessel::vmm {
namespace {

constexpr uint8_t kStatusOutputFull = 0x01;
constexpr uint8_t kStatusSystemFlag = 0x04;  // set once the controller passed its self test
constexpr uint8_t kStatusLastWasCommand = 0x08;
constexpr uint8_t kStatusNotInhibited = 0x10;  // the keyboard lock switch is off

constexpr uint8_t kCmdReadCommandByte = 0x20;
constexpr uint8_t kCmdWriteCommandByte = 0x60;
constexpr uint8_t kCmdDisableAux = 0xa7;
constexpr uint8_t kCmdEnableAux = 0xa8;
constexpr uint8_t kCmdTestAux = 0xa9;
constexpr uint8_t kCmdSelfTest = 0xaa;
constexpr uint8_t kCmdTestKeyboard = 0xab;
constexpr uint8_t kCmdDisableKeyboard = 0xad;
constexpr uint8_t kCmdEnableKeyboard = 0xae;
constexpr uint8_t kCmdReadOutputPort = 0xd0;
constexpr uint8_t kCmdWriteAuxOutput = 0xd3;
constexpr uint8_t kCmdWriteOutputPort = 0xd1;
constexpr uint8_t kCmdWriteAux = 0xd4;
constexpr uint8_t kCmdPulseReset = 0xfe;

constexpr uint8_t kSelfTestPassed = 0x55;
constexpr uint8_t kInterfaceTestPassed = 0x00;
// "Clock line stuck low": how a controller says no mouse port is wired.
constexpr uint8_t kInterfaceClockLow = 0x01;
// An output buffer deeper than a few replies means a guest is spamming commands.
constexpr size_t kMaxOutput = 16;

bool TakesDataByte(uint8_t command) {
  return command == kCmdWriteCommandByte || command == kCmdWriteOutputPort ||
         command == kCmdWriteAux || command == kCmdWriteAuxOutput;
}

}  // namespace

// version u32, command byte u8, output port u8, command awaiting data u8 (0 or one that
// takes a data byte), output: count u8 (at most kMaxOutput), bytes.
std::vector<uint8_t> I8042::SaveState() {
  std::lock_guard lock(mutex_);
  StateWriter out;
  out.Put(kI8042StateVersion);
  out.Put(command_byte_);
  out.Put(output_port_);
  out.Put(pending_command_);
  out.Put(static_cast<uint8_t>(output_.size()));
  for (uint8_t byte : output_) out.Put(byte);
  return out.Take();
}

Result<void> I8042::LoadState(std::span<const uint8_t> bytes) {
  StateReader in(bytes, "i8042 state");
  if (auto version = in.Version(kI8042StateVersion); !version) return version;
  auto command_byte = in.Read<uint8_t>("the command byte");
  auto output_port = in.Read<uint8_t>("the output port");
  auto pending_command = in.Read<uint8_t>("the pending command");
  auto output_bytes = in.Read<uint8_t>("the output's length");
  if (output_bytes > kMaxOutput) {
    return Fail(in.Malformed(std::to_string(output_bytes) + " bytes of output (at most " +
                             std::to_string(kMaxOutput) + ")"));
  }
  auto output = in.ReadBytes(output_bytes, "the output");
  if (auto finished = in.Finish(); !finished) return finished;
  if (pending_command != 0 && !TakesDataByte(pending_command)) {
    return Fail(in.Malformed("a pending command " + std::to_string(pending_command) +
                             " that takes no data byte"));
  }
  std::lock_guard lock(mutex_);
  command_byte_ = command_byte;
  output_port_ = output_port;
  pending_command_ = pending_command;
  output_.assign(output.begin(), output.end());
  return {};
}

void I8042::Push(uint8_t byte) {
  if (output_.size() < kMaxOutput) output_.push_back(byte);
}

void I8042::PioRead(uint16_t offset, std::span<uint8_t> data) {
  if (data.empty()) return;
  std::lock_guard lock(mutex_);
  uint8_t value = 0xff;
  if (offset == 0) {
    value = 0;
    if (!output_.empty()) {
      value = output_.front();
      output_.pop_front();
    }
  } else if (offset == kI8042CommandOffset) {
    value = kStatusSystemFlag | kStatusNotInhibited | (output_.empty() ? 0 : kStatusOutputFull) |
            (pending_command_ ? kStatusLastWasCommand : 0);
  }
  data[0] = value;
  for (size_t i = 1; i < data.size(); ++i) data[i] = 0xff;
}

void I8042::PioWrite(uint16_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  uint8_t value = data[0];
  bool reset = false;
  {
    std::lock_guard lock(mutex_);
    if (offset == kI8042CommandOffset) {
      pending_command_ = 0;
      switch (value) {
        case kCmdReadCommandByte: Push(command_byte_); break;
        case kCmdWriteCommandByte:
        case kCmdWriteOutputPort:
        case kCmdWriteAux:
        case kCmdWriteAuxOutput: pending_command_ = value; break;
        case kCmdSelfTest: Push(kSelfTestPassed); break;
        case kCmdTestKeyboard: Push(kInterfaceTestPassed); break;
        case kCmdTestAux: Push(kInterfaceClockLow); break;
        case kCmdReadOutputPort: Push(output_port_); break;
        case kCmdDisableAux: command_byte_ |= 0x20; break;
        case kCmdEnableAux: command_byte_ = static_cast<uint8_t>(command_byte_ & ~0x20); break;
        case kCmdDisableKeyboard: command_byte_ |= 0x10; break;
        case kCmdEnableKeyboard: command_byte_ = static_cast<uint8_t>(command_byte_ & ~0x10); break;
        case kCmdPulseReset: reset = true; break;
        default: break;
      }
    } else if (offset == 0) {
      switch (pending_command_) {
        case kCmdWriteCommandByte: command_byte_ = value; break;
        case kCmdWriteOutputPort:
          output_port_ = value;
          reset = (value & 0x01) == 0;  // bit 0 low holds the CPU in reset
          break;
        case kCmdWriteAuxOutput:
          // Echoed without the "from the mouse" status bit, so the kernel's AUX loop test
          // fails at once instead of timing out.
          Push(value);
          break;
        default: break;  // bytes for the (absent) keyboard or mouse go nowhere
      }
      pending_command_ = 0;
    }
  }
  if (reset && reset_) reset_();
}

}  // namespace vessel::vmm
