// The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command), enough for
// the kernel's probe and for the CPU reset command (0xFE), which is how a guest asks to be
// rebooted. No keyboard or mouse is attached.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <vector>

#include "vmm/core/device.h"

namespace vessel::vmm {

inline constexpr uint16_t kI8042DataPort = 0x60;
inline constexpr uint16_t kI8042CommandPort = 0x64;
// The device sees ports as offsets from kI8042DataPort.
inline constexpr uint16_t kI8042CommandOffset = kI8042CommandPort - kI8042DataPort;

// Its saved state (version kI8042StateVersion) is the command byte, the output port, a
// command awaiting its data byte and the unread output.
inline constexpr uint32_t kI8042StateVersion = 1;

class I8042 : public PioDevice, public StatefulDevice {
 public:
  // `reset` runs on the vCPU thread that wrote the reset command.
  explicit I8042(std::function<void()> reset) : reset_(std::move(reset)) {}

  void PioRead(uint16_t offset, std::span<uint8_t> data) override;
  void PioWrite(uint16_t offset, std::span<const uint8_t> data) override;
  [[nodiscard]] std::vector<uint8_t> SaveState() override;
  [[nodiscard]] Result<void> LoadState(std::span<const uint8_t> bytes) override;

 private:
  void Push(uint8_t byte);

  std::function<void()> reset_;
  std::mutex mutex_;
  std::deque<uint8_t> output_;
  uint8_t command_byte_ = 0x30;  // both ports disabled, no interrupts
  uint8_t output_port_ = 0x01;   // the reset line is not asserted
  uint8_t pending_command_ = 0;  // a command that awaits its data byte
};

}  // namespace vessel::vmm
