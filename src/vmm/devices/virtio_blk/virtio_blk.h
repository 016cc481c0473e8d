// virtio-blk (virtio 1.x, 5.2), read-only: one request queue and a disk backed by a file
// the device opens O_RDONLY and never writes, so any number of VMs share one image. It
// offers RO, SEG_MAX and SIZE_MAX (the limits in blk_request.h). Reads (pread straight
// into the guest's buffers) and GET_ID are served; a write is IOERR; flush, discard,
// write-zeroes and unknown types, none of them offered, are UNSUPP. A malformed request
// (blk_request.h says which) is IOERR when it has a status byte and returned with nothing
// written when it has none; the device goes on either way.
//
// A file whose size is not a multiple of 512 bytes ends in a partial sector, which the
// disk rounds up: the guest reads zeros after the end of the file, as QEMU shows a raw
// image, and every byte of the file is visible.
//
// Requests are served on the vCPU thread that notified the queue, under the device's lock,
// as virtio-console serves its queues: a read of a shared image mostly comes from the page
// cache, and kMaxRequestBytes bounds one request.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "vessel/error.h"
#include "vmm/devices/virtio/virtio_device.h"
// The request format and its limits, which callers and tests see here too.
#include "vmm/devices/virtio_blk/blk_request.h"

namespace vessel::vmm {

namespace blk {
inline constexpr uint32_t kDeviceType = 2;
inline constexpr uint64_t kFeatureSizeMax = 1ULL << 1;
inline constexpr uint64_t kFeatureSegMax = 1ULL << 2;
inline constexpr uint64_t kFeatureRo = 1ULL << 5;
inline constexpr size_t kRequestQueue = 0;
inline constexpr size_t kNumQueues = 1;
inline constexpr uint16_t kQueueSize = 256;
// What GET_ID answers: the guest sees it as /sys/block/vda/serial.
inline constexpr std::string_view kSerial = "vessel-root";
static_assert(kSerial.size() <= kIdBytes);
}  // namespace blk

// Opens the disk image at `path` read-only. Fails, naming the path, when it cannot be
// opened (kHostIo) or is not a regular file (kInvalidConfig "disk").
[[nodiscard]] Result<std::unique_ptr<virtio::VirtioDevice>> MakeVirtioBlk(const std::string& path);

}  // namespace vessel::vmm
