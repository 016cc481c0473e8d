// The on-disk snapshot format: a directory holding manifest.json, the engine's device
// state and the guest's RAM image. docs/snapshot-format.md specifies it; this module is
// the only code that reads or writes a manifest.
//
// Every function here is thread safe. None of them locks a snapshot directory: the
// caller makes sure nobody writes a directory that is being written or read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "base/unique_fd.h"
#include "snapshot/host_key.h"
#include "vessel/error.h"
#include "vessel/sandbox.h"

namespace vessel::snapshot {

// Format 2 is format 1 plus the root image (Manifest::image_digest), which an older
// reader must not ignore. Format 3, the one written, digests the memory file page by page
// (MemorySha256), with the image optional; 1 and 2 are still read.
inline constexpr uint32_t kFormatVersion = 3;
inline constexpr uint32_t kFormatVersionWithImage = 2;
inline constexpr uint32_t kFormatVersionWithoutImage = 1;
// The unit of the memory digest in format 3.
inline constexpr uint64_t kMemoryDigestPage = 4096;
inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kStateFile = "state";
inline constexpr const char* kMemoryFile = "memory";

// A manifest is a few hundred bytes and an allowlist of at most kMaxNetworkRules host
// names; a larger file is not one, and is not parsed.
inline constexpr size_t kMaxManifestSize = 1024 * 1024;
inline constexpr uint32_t kMaxVcpus = 64;

struct FileDigest {
  uint64_t size = 0;
  std::string sha256;  // lowercase hex
};

// Which file this host sealed as the memory: a restore that opens the same file, not
// written since, takes the memory's SHA-256 as checked instead of reading gigabytes.
struct FileSeal {
  uint64_t device = 0;
  uint64_t inode = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileSeal&) const = default;
};

struct Manifest {
  uint32_t format_version = kFormatVersion;
  std::string engine;          // engine name, e.g. "qemu-tcg"; a restore needs the same
  std::string engine_version;  // e.g. "QEMU emulator version 7.2.22"
  std::string vessel_version;  // e.g. "0.1.0"
  // The sandbox config the snapshot was taken with.
  uint32_t vcpus = 0;
  uint32_t memory_mib = 0;
  std::string name;
  std::string kernel_path;
  std::string kernel_sha256;
  std::string initramfs_path;
  std::string initramfs_sha256;
  // The root image the VM runs on (src/image): "sha256:<64 hex>" and the name it had;
  // both empty for a VM without one.
  std::string image_digest;
  std::string image_name;
  int64_t created_unix_ms = 0;
  FileDigest state;
  FileDigest memory;
  // Written by WriteManifest; absent in snapshots of older Vessels.
  std::optional<FileSeal> memory_seal;
  // The egress policy in force when the snapshot was taken, which a restore keeps unless
  // told otherwise. Absent in snapshots of older Vessels: no egress. The rules are only
  // checked for shape here (strings, at most egress::kMaxRules); a restore checks them as
  // it checks a SandboxConfig's.
  NetworkPolicy network;
};

// SHA-256 of a whole regular file, lowercase hex. Holes of sparse files are hashed as the
// zeros they read as, without reading them. kHostIo when the file cannot be read, is not
// a regular file, or changes while being hashed.
[[nodiscard]] Result<std::string> FileSha256(const std::string& path);

// The memory file's digest in format 3: the SHA-256 of the SHA-256s of its 4 KiB pages, in
// order (a short last page is hashed as it is). A page in a hole, or of zeros, is not
// hashed: its digest is the zero page's. So the work is in proportion to the data, and a
// sparse file and a dense copy of it have the same digest. The pages are digested on up to
// 8 threads. Errors as FileSha256.
[[nodiscard]] Result<std::string> MemorySha256(const std::string& path);

// FileSha256, memoised per path while the file keeps its device, inode, size, mtime and
// ctime: the guest kernel and initramfs are hashed on every snapshot and restore. A file
// rewritten in place with the same size within one timestamp tick goes unnoticed.
[[nodiscard]] Result<std::string> AssetSha256(const std::string& path);

// Makes `dir` a fresh snapshot directory of mode 0700: creates it (its parent must
// exist), or takes an existing empty directory of the caller's own and chmods it.
// kInvalidConfig with subject "snapshot directory" when the parent is missing, or `dir`
// is not empty, is not a directory, is a symbolic link or belongs to another user.
[[nodiscard]] Result<void> PrepareDirectory(const std::string& dir);

// Seals a snapshot whose `state` and `memory` files the engine has written into `dir`:
// chmods both 0600, fsyncs them, records their sizes and SHA-256 (and the memory file's
// seal) in `manifest` (the caller's values for those are ignored), signs it with `key`,
// then writes dir/manifest.json (mode 0600) via a temporary file that is fsynced and
// renamed, and fsyncs `dir`. So a manifest on disk always describes data that is on disk.
//
// `manifest` must pass the checks Open() makes (kSnapshotFormat otherwise, nothing is
// written), except that format_version is written as given. A text field that is not
// valid UTF-8 is kInvalidConfig. The memory file is digested as format_version says
// (MemorySha256 from format 3 on, else FileSha256), reading only its data.
[[nodiscard]] Result<void> WriteManifest(const std::string& dir, Manifest manifest,
                                         const HostKey& key);

enum class Depth {
  // Everything but the memory file's SHA-256 when the file is the one sealed: fast enough
  // for every restore. A memory file written or replaced since is hashed in full.
  kRestore,
  kFull,  // also the memory file's SHA-256, always (`vessel snapshot verify`)
};

// A checked snapshot, and its data files as they were checked: a restore loads these
// descriptors, so the files checked are the files loaded.
struct Opened {
  Manifest manifest;
  UniqueFd state;
  UniqueFd memory;
};

// Reads and checks the snapshot in `dir`; never modifies it. The manifest must carry an
// HMAC under `key`, the one this host signs with. Any problem with the snapshot itself (a
// missing, truncated, corrupt, foreign or unsigned file) is kSnapshotFormat with a message
// that starts with the file's name within `dir`: "manifest.json: checksum mismatch ...",
// "manifest.json: not signed by this host's key ...", "state: size 1234, manifest says
// 5678", "memory: missing". Callers add `dir` as context. kHostIo when a file exists but
// cannot be read.
[[nodiscard]] Result<Opened> Open(const std::string& dir, Depth depth, const HostKey& key);

// Makes a snapshot from elsewhere (another host, an older Vessel) this host's: checks it
// as Open(kFull) does, except for its signature, then signs it with `key`. For a snapshot
// whose files the caller trusts; anyone can compute a checksum.
[[nodiscard]] Result<Manifest> Import(const std::string& dir, const HostKey& key);

// Whether a VM restored from `manifest` may run on this engine with these guest assets:
// the engine's name must be the one that took the snapshot, and the kernel and initramfs
// (at whatever path they are now) must have the digests recorded in the manifest.
// kSnapshotFormat when not; errors hashing an asset are passed on with context.
[[nodiscard]] Result<void> CheckCompatible(const Manifest& manifest, const std::string& engine_name,
                                           const std::string& kernel_path,
                                           const std::string& initramfs_path);

}  // namespace vessel::snapshot
