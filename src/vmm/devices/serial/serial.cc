#include "vmm/devices/serial/serial.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string_view>

#include "vmm/core/state_codec.h"

namespace vessel::vmm {
namespace {

// Register offsets; 0 and 1 are the divisor latch while LCR.DLAB is set.
constexpr uint16_t kData = 0;  // RBR on read, THR on write
constexpr uint16_t kIer = 1;
constexpr uint16_t kIir = 2;  // FCR on write
constexpr uint16_t kLcr = 3;
constexpr uint16_t kMcr = 4;
constexpr uint16_t kLsr = 5;
constexpr uint16_t kMsr = 6;
constexpr uint16_t kScr = 7;

constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kIerRdi = 0x01;
constexpr uint8_t kIerThri = 0x02;
constexpr uint8_t kIirNoInterrupt = 0x01;
constexpr uint8_t kIirThri = 0x02;
constexpr uint8_t kIirRdi = 0x04;
constexpr uint8_t kLsrDataReady = 0x01;
constexpr uint8_t kLsrThre = 0x20;
constexpr uint8_t kLsrTemt = 0x40;
constexpr uint8_t kMcrLoop = 0x10;
// The bits of IER and MCR the device keeps.
constexpr uint8_t kIerMask = 0x0f;
constexpr uint8_t kMcrMask = 0x1f;
// Carrier, data set ready and clear to send: a terminal is attached and ready.
constexpr uint8_t kMsrConnected = 0x80 | 0x20 | 0x10;

constexpr size_t kFlushThreshold = 4096;
constexpr size_t kMaxLineTracked = 256;
constexpr std::string_view kPanicMarker = "Kernel panic - not syncing";
constexpr std::string_view kTruncatedNote = "\n[vessel-vmm: console log limit reached]\n";

}  // namespace

Serial::Serial(UniqueFd log, std::shared_ptr<Interrupt> interrupt)
    : log_(std::move(log)), interrupt_(std::move(interrupt)) {}

Serial::~Serial() { Flush(); }

void Serial::PioRead(uint16_t offset, std::span<uint8_t> data) {
  if (data.empty()) return;
  std::lock_guard lock(mutex_);
  uint8_t value = 0;
  switch (offset) {
    case kData:
      if (lcr_ & kLcrDlab) {
        value = dll_;
      } else if (!received_.empty()) {
        value = static_cast<uint8_t>(received_.front());
        received_.erase(0, 1);
      }
      break;
    case kIer: value = (lcr_ & kLcrDlab) ? dlm_ : ier_; break;
    case kIir:
      if (!received_.empty() && (ier_ & kIerRdi)) {
        value = kIirRdi;  // cleared by reading the data
      } else if (thr_interrupt_pending_ && (ier_ & kIerThri)) {
        value = kIirThri;
        thr_interrupt_pending_ = false;  // reading IIR acknowledges THRE
      } else {
        value = kIirNoInterrupt;
      }
      break;
    case kLcr: value = lcr_; break;
    case kMcr: value = mcr_; break;
    case kLsr: value = kLsrThre | kLsrTemt | (received_.empty() ? 0 : kLsrDataReady); break;
    case kMsr:
      // In loopback the modem inputs follow the outputs (RTS->CTS, DTR->DSR, OUT1->RI,
      // OUT2->DCD), which the kernel's probe checks.
      if (mcr_ & kMcrLoop) {
        value = static_cast<uint8_t>(((mcr_ & 0x02) << 3) | ((mcr_ & 0x01) << 5) |
                                     ((mcr_ & 0x04) << 4) | ((mcr_ & 0x08) << 4));
      } else {
        value = kMsrConnected;
      }
      break;
    case kScr: value = scr_; break;
    default: break;
  }
  data[0] = value;
  for (size_t i = 1; i < data.size(); ++i) data[i] = 0;
}

void Serial::PioWrite(uint16_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  uint8_t value = data[0];
  std::lock_guard lock(mutex_);
  switch (offset) {
    case kData:
      if (lcr_ & kLcrDlab) {
        dll_ = value;
      } else {
        if (!(mcr_ & kMcrLoop)) Transmit(value);
        // The byte left at once: the holding register is empty again.
        thr_interrupt_pending_ = true;
        UpdateInterruptLocked();
      }
      break;
    case kIer:
      if (lcr_ & kLcrDlab) {
        dlm_ = value;
      } else {
        bool enabling_thri = !(ier_ & kIerThri) && (value & kIerThri);
        bool enabling_rdi = !(ier_ & kIerRdi) && (value & kIerRdi);
        ier_ = value & kIerMask;
        // The transmitter is always empty, so enabling its interrupt raises it now.
        if (enabling_thri) thr_interrupt_pending_ = true;
        if (enabling_thri || (enabling_rdi && !received_.empty())) UpdateInterruptLocked();
      }
      break;
    case kLcr: lcr_ = value; break;
    case kMcr: mcr_ = value & kMcrMask; break;
    case kScr: scr_ = value; break;
    default: break;  // FCR, LSR and MSR writes have no effect here
  }
}

// version u32, IER, LCR, MCR, SCR, DLL, DLM u8, THRE interrupt pending u8 (0 or 1),
// unread input: length u16 (at most kMaxSerialReceiveBytes), bytes.
std::vector<uint8_t> Serial::SaveState() {
  std::lock_guard lock(mutex_);
  StateWriter out;
  out.Put(kSerialStateVersion);
  for (uint8_t reg : {ier_, lcr_, mcr_, scr_, dll_, dlm_}) out.Put(reg);
  out.Put(static_cast<uint8_t>(thr_interrupt_pending_));
  out.Put(static_cast<uint16_t>(received_.size()));
  out.Bytes({reinterpret_cast<const uint8_t*>(received_.data()), received_.size()});
  return out.Take();
}

Result<void> Serial::LoadState(std::span<const uint8_t> bytes) {
  StateReader in(bytes, "serial state");
  if (auto version = in.Version(kSerialStateVersion); !version) return version;
  auto ier = in.Read<uint8_t>("IER");
  auto lcr = in.Read<uint8_t>("LCR");
  auto mcr = in.Read<uint8_t>("MCR");
  auto scr = in.Read<uint8_t>("SCR");
  auto dll = in.Read<uint8_t>("DLL");
  auto dlm = in.Read<uint8_t>("DLM");
  bool thr_pending = in.ReadBool("the THRE interrupt");
  auto received_bytes = in.Read<uint16_t>("the input's length");
  if (received_bytes > kMaxSerialReceiveBytes) {
    return Fail(in.Malformed(std::to_string(received_bytes) + " bytes of input (at most " +
                             std::to_string(kMaxSerialReceiveBytes) + ")"));
  }
  auto received = in.ReadBytes(received_bytes, "the input");
  if (auto finished = in.Finish(); !finished) return finished;
  if ((ier & ~kIerMask) || (mcr & ~kMcrMask)) {
    return Fail(in.Malformed("IER or MCR has bits the device never sets"));
  }
  std::lock_guard lock(mutex_);
  ier_ = ier;
  lcr_ = lcr;
  mcr_ = mcr;
  scr_ = scr;
  dll_ = dll;
  dlm_ = dlm;
  thr_interrupt_pending_ = thr_pending;
  received_.assign(received.begin(), received.end());
  return {};
}

void Serial::UpdateInterruptLocked() {
  bool pending =
      (thr_interrupt_pending_ && (ier_ & kIerThri)) || (!received_.empty() && (ier_ & kIerRdi));
  if (pending && interrupt_) interrupt_->Trigger();
}

void Serial::Receive(std::string_view bytes) {
  std::lock_guard lock(mutex_);
  size_t room = kMaxSerialReceiveBytes - std::min(received_.size(), kMaxSerialReceiveBytes);
  received_.append(bytes.substr(0, room));
  UpdateInterruptLocked();
}

void Serial::Transmit(uint8_t byte) {
  if (line_.size() < kMaxLineTracked) line_.push_back(static_cast<char>(byte));
  if (byte == '\n') {
    if (line_.find(kPanicMarker) != std::string::npos) saw_panic_ = true;
    line_.clear();
  }
  if (truncated_) return;
  if (logged_ + pending_.size() >= kMaxConsoleLogBytes) {
    pending_ += kTruncatedNote;
    truncated_ = true;
    FlushLocked();
    return;
  }
  pending_.push_back(static_cast<char>(byte));
  if (byte == '\n' || pending_.size() >= kFlushThreshold) FlushLocked();
}

void Serial::FlushLocked() {
  if (log_) {
    size_t done = 0;
    while (done < pending_.size()) {
      ssize_t n = ::write(log_.get(), pending_.data() + done, pending_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // the log is best effort: a full disk must not stop the guest
      done += static_cast<size_t>(n);
    }
  }
  logged_ += pending_.size();
  pending_.clear();
}

void Serial::Flush() {
  std::lock_guard lock(mutex_);
  FlushLocked();
}

bool Serial::saw_panic() const {
  std::lock_guard lock(mutex_);
  return saw_panic_;
}

uint64_t Serial::bytes_logged() const {
  std::lock_guard lock(mutex_);
  return logged_ + pending_.size();
}

}  // namespace vessel::vmm
