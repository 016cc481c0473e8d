// COM1: an 8250 UART at ports 0x3f8..0x3ff, enough for the Linux serial console. What the
// guest transmits is appended to the console log, up to kMaxConsoleLogBytes so a chatty
// guest cannot fill the host's disk. The host can put a few bytes on the receive line
// (Receive), which is how it asks the guest agent for its state dump.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/console_log.h"
#include "base/unique_fd.h"
#include "vmm/core/device.h"

namespace vessel::vmm {

inline constexpr uint16_t kCom1Port = 0x3f8;
inline constexpr uint16_t kCom1PortCount = 8;
inline constexpr uint32_t kCom1Irq = 4;
// Bytes the receive line holds until the guest reads them; more are dropped.
inline constexpr size_t kMaxSerialReceiveBytes = 256;

// Its saved state (version kSerialStateVersion) is the registers, the pending transmit
// interrupt and the unread input; not the log, whose file a restored VM opens anew.
inline constexpr uint32_t kSerialStateVersion = 1;

class Serial : public PioDevice, public StatefulDevice {
 public:
  // Writes to `log` (owned; may be invalid to discard output) and raises `interrupt`.
  Serial(UniqueFd log, std::shared_ptr<Interrupt> interrupt);
  ~Serial() override;

  void PioRead(uint16_t offset, std::span<uint8_t> data) override;
  void PioWrite(uint16_t offset, std::span<const uint8_t> data) override;
  [[nodiscard]] std::vector<uint8_t> SaveState() override;
  [[nodiscard]] Result<void> LoadState(std::span<const uint8_t> bytes) override;

  // Queues `bytes` for the guest to read, as far as kMaxSerialReceiveBytes allows.
  void Receive(std::string_view bytes);
  // Writes out what is buffered (output is flushed at each newline otherwise).
  void Flush();
  // True once the guest printed a kernel panic message.
  [[nodiscard]] bool saw_panic() const;
  [[nodiscard]] uint64_t bytes_logged() const;

 private:
  void Transmit(uint8_t byte);
  void FlushLocked();
  void UpdateInterruptLocked();

  UniqueFd log_;
  std::shared_ptr<Interrupt> interrupt_;

  mutable std::mutex mutex_;
  uint8_t ier_ = 0;
  uint8_t lcr_ = 0;
  uint8_t mcr_ = 0;
  uint8_t scr_ = 0;
  uint8_t dll_ = 0x0c;  // 9600 baud
  uint8_t dlm_ = 0;
  bool thr_interrupt_pending_ = false;
  std::string received_;  // input the guest has not read yet
  std::string pending_;   // output not yet written to the log
  std::string line_;      // the current line, to spot a panic
  uint64_t logged_ = 0;
  bool truncated_ = false;
  bool saw_panic_ = false;
};

}  // namespace vessel::vmm
