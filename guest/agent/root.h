// The guest's root file system when the host attaches an image (src/image): a read-only
// erofs disk as the lower layer of an overlay whose upper layer is a tmpfs in guest RAM.
// The agent moves itself and its mounts into that overlay, so every command and file
// operation sees the image and everything a sandbox writes lives in guest memory (which
// is what snapshots and forks save and share).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace vessel::agent {

// What the kernel command line asks for: `vessel.image=<device> vessel.overlay_mib=<n>`.
struct RootImage {
  std::string device;        // "/dev/vda"
  uint64_t overlay_mib = 0;  // 0: the tmpfs default, half of guest RAM
};

// The root image named on `cmdline`, if any. A malformed value is a message.
struct RootImageRequest {
  std::optional<RootImage> image;
  std::string error;
};
[[nodiscard]] RootImageRequest ParseRootImage(std::string_view cmdline);

// Mounts the image and the overlay and switches the agent's root to it, with /proc,
// /sys, /dev, /run and /tmp moved along. Returns an empty string on success, else what
// failed ("mount /dev/vda as erofs: Invalid argument"), having changed nothing the
// guest can use: the caller reports it and ends the boot.
[[nodiscard]] std::string EnterRootImage(const RootImage& image);

}  // namespace vessel::agent
