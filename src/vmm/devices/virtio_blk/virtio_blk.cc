#include "vmm/devices/virtio_blk/virtio_blk.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "base/unique_fd.h"
#include "vmm/devices/virtio/device_queues.h"

namespace vessel::vmm {
namespace {

using blk::kSectorSize;
using virtio::DescriptorChain;
using virtio::Queue;

// Chains served per notification. At most a queue's worth is ever available, and a driver
// notifies after each batch it adds, so every chain is served by some notification.
constexpr size_t kChainsPerTurn = blk::kQueueSize;
static_assert(blk::kMaxSegments + 2 <= blk::kQueueSize,
              "a request of kMaxSegments data segments must fit the queue");
static_assert(blk::kMaxRequestBytes <= virtio::kMaxChainBytes,
              "the queue must not refuse a chain the device accepts");

// struct virtio_blk_config up to the last field offered; the rest reads as zeros.
struct BlkConfig {
  uint64_t capacity;  // in 512-byte sectors, whatever blk_size says
  uint32_t size_max;
  uint32_t seg_max;
};
static_assert(sizeof(BlkConfig) == 16);

class VirtioBlk final : public virtio::VirtioDevice {
 public:
  VirtioBlk(std::string path, UniqueFd file, uint64_t file_bytes)
      : path_(std::move(path)),
        file_(std::move(file)),
        file_bytes_(file_bytes),
        capacity_(file_bytes / kSectorSize + (file_bytes % kSectorSize != 0 ? 1 : 0)) {}

  uint32_t device_type() const override { return blk::kDeviceType; }
  uint64_t features() const override {
    return virtio::kFeatureVersion1 | blk::kFeatureRo | blk::kFeatureSegMax | blk::kFeatureSizeMax;
  }
  size_t num_queues() const override { return blk::kNumQueues; }
  uint16_t max_queue_size() const override { return blk::kQueueSize; }

  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override {
    BlkConfig config{
        .capacity = capacity_, .size_max = blk::kMaxSegmentBytes, .seg_max = blk::kMaxSegments};
    if (offset >= sizeof(config)) return;
    size_t n = std::min<size_t>(data.size(), sizeof(config) - offset);
    std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&config) + offset, n);
  }
  void WriteConfig(uint64_t, std::span<const uint8_t>) override {}  // writeback: not offered

  Result<void> Activate(const GuestMemory&, std::span<Queue* const> queues, uint64_t,
                        virtio::DriverSignal& signal) override {
    std::lock_guard lock(mutex_);
    if (queues.size() != blk::kNumQueues) {
      return Fail(Error::Backend("virtio-blk activated with the wrong number of queues"));
    }
    queues_.Attach(queues, signal);
    active_ = true;
    return {};
  }

  void QueueNotify(size_t index) override {
    std::lock_guard lock(mutex_);
    if (!active_ || index != blk::kRequestQueue) return;
    for (size_t i = 0; i < kChainsPerTurn; ++i) {
      auto chain = queues_.Pop(blk::kRequestQueue);
      if (!chain) break;
      uint32_t written = Serve(*chain);
      queues_.Push(blk::kRequestQueue, chain->head, written);
    }
    queues_.SignalUsed();
  }

  void Reset() override {
    std::lock_guard lock(mutex_);
    active_ = false;
    queues_.Detach();
  }

  std::string DescribeState() override {
    std::lock_guard lock(mutex_);
    return queues_.Describe() +
           fmt::format(
               "  disk: {} ({} sectors), reads={} malformed={} writes_refused={} "
               "unsupported={} read_errors={}\n",
               path_, capacity_, reads_, malformed_, writes_refused_, unsupported_, read_errors_);
  }

 private:
  // Answers one request; returns the bytes written into the chain.
  uint32_t Serve(const DescriptorChain& chain) {
    auto request = blk::ParseRequest(chain, capacity_);
    if (!request) {
      ++malformed_;
      return blk::WriteStatus(chain, blk::kStatusIoErr) ? 1 : 0;
    }
    uint8_t status = blk::kStatusOk;
    // Data bytes written; data_bytes is at most kMaxRequestBytes for a read.
    uint32_t data_written = 0;
    switch (request->type) {
      case blk::kTypeIn:
        ++reads_;
        status = Read(chain, *request);
        data_written = static_cast<uint32_t>(request->data_bytes);
        break;
      case blk::kTypeGetId: {
        std::array<uint8_t, blk::kIdBytes> id{};
        std::memcpy(id.data(), blk::kSerial.data(), blk::kSerial.size());
        size_t n = static_cast<size_t>(std::min<uint64_t>(id.size(), request->data_bytes));
        data_written =
            static_cast<uint32_t>(virtio::CopyToBuffers(chain.writable, 0, std::span(id).first(n)));
        break;
      }
      case blk::kTypeOut:
        // The disk is read-only (RO offered): a write is an I/O error (5.2.6.2).
        ++writes_refused_;
        status = blk::kStatusIoErr;
        break;
      default:
        // Flush, discard, write-zeroes: not offered; anything else: unknown.
        ++unsupported_;
        status = blk::kStatusUnsupported;
        break;
    }
    blk::WriteStatus(chain, status);
    return data_written + 1;
  }

  // Reads the request's sectors into its buffers; zeros beyond the end of the file.
  uint8_t Read(const DescriptorChain& chain, const blk::Request& request) {
    uint64_t offset = request.sector * kSectorSize;  // below capacity_ * 512: no overflow
    for (std::span<uint8_t> buf : blk::InData(chain, request)) {
      size_t done = 0;
      while (done < buf.size()) {
        size_t want = buf.size() - done;
        ssize_t n = 0;
        if (offset < file_bytes_) {
          want = static_cast<size_t>(std::min<uint64_t>(want, file_bytes_ - offset));
          n = ::pread(file_.get(), buf.data() + done, want, static_cast<off_t>(offset));
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) {
            if (read_errors_++ == 0) {
              std::fprintf(stderr, "vessel-vmm: virtio-blk: reading %s: %s\n", path_.c_str(),
                           std::strerror(errno));
            }
            return blk::kStatusIoErr;
          }
        }
        // At or past the end of the file (its last partial sector, or a file that shrank
        // since it was opened): the disk reads zeros there.
        if (n == 0) {
          n = static_cast<ssize_t>(buf.size() - done);
          std::memset(buf.data() + done, 0, static_cast<size_t>(n));
        }
        done += static_cast<size_t>(n);
        offset += static_cast<uint64_t>(n);
      }
    }
    return blk::kStatusOk;
  }

  const std::string path_;
  const UniqueFd file_;
  const uint64_t file_bytes_;
  const uint64_t capacity_;

  std::mutex mutex_;
  bool active_ = false;
  virtio::DeviceQueues queues_{"virtio-blk"};
  uint64_t reads_ = 0;
  uint64_t malformed_ = 0;
  uint64_t writes_refused_ = 0;
  uint64_t unsupported_ = 0;
  uint64_t read_errors_ = 0;
};

}  // namespace

Result<std::unique_ptr<virtio::VirtioDevice>> MakeVirtioBlk(const std::string& path) {
  UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file) return Fail(Error::HostIo(fmt::format("opening the disk {}", path), errno));
  struct stat st;
  if (::fstat(file.get(), &st) != 0) {
    return Fail(Error::HostIo(fmt::format("fstat of the disk {}", path), errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return Fail(Error::InvalidConfig("disk", fmt::format("{} is not a regular file", path)));
  }
  return std::make_unique<VirtioBlk>(path, std::move(file), static_cast<uint64_t>(st.st_size));
}

}  // namespace vessel::vmm
