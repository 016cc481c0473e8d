#include "root.h"

#include <fmt/format.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>

namespace vessel::agent {
namespace {

constexpr const char* kLower = "/vessel/lower";
constexpr const char* kWritable = "/vessel/rw";
constexpr const char* kRoot = "/vessel/root";
// Mounts of the initramfs that the new root takes along (MS_MOVE keeps their submounts).
constexpr const char* kMoved[] = {"/proc", "/sys", "/dev", "/run", "/tmp"};

// The value of `key` (which ends in '=') as a whole word of `cmdline`.
std::optional<std::string_view> Word(std::string_view cmdline, std::string_view key) {
  size_t at = 0;
  while ((at = cmdline.find(key, at)) != std::string_view::npos) {
    if (at == 0 || cmdline[at - 1] == ' ') {
      std::string_view rest = cmdline.substr(at + key.size());
      return rest.substr(0, rest.find(' '));
    }
    at += key.size();
  }
  return std::nullopt;
}

std::string Failed(std::string_view what) { return fmt::format("{}: {}", what, std::strerror(errno)); }

}  // namespace

RootImageRequest ParseRootImage(std::string_view cmdline) {
  RootImageRequest request;
  auto device = Word(cmdline, "vessel.image=");
  if (!device) return request;
  if (!device->starts_with("/dev/") || device->size() > 64 ||
      device->find("..") != std::string_view::npos) {
    request.error = fmt::format("vessel.image={} is not a device under /dev", *device);
    return request;
  }
  RootImage image{.device = std::string(*device)};
  if (auto mib = Word(cmdline, "vessel.overlay_mib=")) {
    auto [end, ec] = std::from_chars(mib->data(), mib->data() + mib->size(), image.overlay_mib);
    if (ec != std::errc() || end != mib->data() + mib->size() || image.overlay_mib > (1u << 20)) {
      request.error = fmt::format("vessel.overlay_mib={} is not a size in MiB", *mib);
      return request;
    }
  }
  request.image = std::move(image);
  return request;
}

std::string EnterRootImage(const RootImage& image) {
  for (const char* dir : {"/vessel", kLower, kWritable, kRoot}) mkdir(dir, 0755);
  if (mount(image.device.c_str(), kLower, "erofs", MS_RDONLY | MS_NODEV, nullptr) != 0) {
    return Failed(fmt::format("mount the root image {} (erofs)", image.device));
  }
  std::string size = image.overlay_mib ? fmt::format("size={}m,", image.overlay_mib) : "";
  std::string tmpfs_options = size + "mode=0755";
  if (mount("overlay-rw", kWritable, "tmpfs", MS_NODEV, tmpfs_options.c_str()) != 0) {
    return Failed("mount the overlay's tmpfs");
  }
  if (mkdir("/vessel/rw/upper", 0755) != 0 || mkdir("/vessel/rw/work", 0755) != 0) {
    return Failed("make the overlay's directories");
  }
  std::string overlay_options = fmt::format(
      "lowerdir={},upperdir=/vessel/rw/upper,workdir=/vessel/rw/work", kLower);
  if (mount("overlay", kRoot, "overlay", 0, overlay_options.c_str()) != 0) {
    return Failed("mount the overlay");
  }
  for (const char* dir : kMoved) {
    std::string target = std::string(kRoot) + dir;
    mkdir(target.c_str(), 0755);
    if (mount(dir, target.c_str(), nullptr, MS_MOVE, nullptr) != 0) {
      return Failed(fmt::format("move {} into the root image", dir));
    }
  }
  // As switch_root does: the initramfs stays underneath, unreachable.
  if (chdir(kRoot) != 0) return Failed("chdir to the root image");
  if (mount(".", "/", nullptr, MS_MOVE, nullptr) != 0) return Failed("move the root image to /");
  if (chroot(".") != 0 || chdir("/") != 0) return Failed("chroot into the root image");
  // A damaged image may mount and still fail every read: try the shell's first bytes.
  int shell = open("/bin/sh", O_RDONLY | O_CLOEXEC);
  if (shell < 0) return Failed("open /bin/sh in the root image");
  char head[64];
  ssize_t n = read(shell, head, sizeof(head));
  int read_errno = errno;
  close(shell);
  errno = read_errno;
  if (n <= 0) return n == 0 ? std::string("/bin/sh in the root image is empty")
                            : Failed("read /bin/sh in the root image");
  return {};
}

}  // namespace vessel::agent
