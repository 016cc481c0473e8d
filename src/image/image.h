// Guest images: read-only erofs root file systems, built from Debian packages or imported
// from a tarball, kept in a content-addressed store and shared by every VM that uses them.
//
// The store is a directory (Store::Default(): $VESSEL_CACHE_DIR/images, else
// ~/.cache/vessel/images):
//   blobs/<hex>.erofs   an image, named by the SHA-256 of its bytes, mode 0444
//   blobs/<hex>.json    what was checked about it (size, mtime, inode), to notice changes
//   names/<name>.json   an ImageRecord: a name pointing at a digest
//   recipes/<hash>      the digest a build recipe produced, so a second build is a no-op
//   refs/<hex>/<hash>   the snapshot directories that need the image
//   locks/              flock files: one per recipe (concurrent builds), one for the store
//
// A VM that uses an image holds a shared flock on its blob for its whole life (Use), so
// removing an image a running sandbox uses is refused, as is removing one that a
// snapshot on disk still needs. docs/images.md has the user's view.
//
// Thread safety: a Store is immutable; its methods may run concurrently, also in several
// processes (mutations take the store's lock).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel::image {

// The guest architecture every engine runs.
inline constexpr std::string_view kArchitecture = "amd64";
// Longest image name: [a-z0-9][a-z0-9._-]*.
inline constexpr size_t kMaxNameLength = 64;

struct ImageRecord {
  std::string name;
  std::string digest;  // "sha256:<64 hex>" of the erofs file
  uint64_t size = 0;       // bytes of the erofs file
  uint64_t tree_size = 0;  // bytes of the unpacked tree it was made from
  std::string source;      // "debian" (built) or "import"
  std::string suite;       // Debian suite of a build, e.g. "bookworm"
  std::string mirror;      // Debian mirror of a build
  std::vector<std::string> packages;  // what a build asked for
  uint64_t installed_packages = 0;    // how many Debian packages the image holds
  std::string recipe;                 // recipe hash of a build
  std::string architecture{kArchitecture};
  int64_t created_unix_ms = 0;
};

// Kinds of error: kInvalidConfig (subject "image") for a bad or unknown name, a build or
// import that fails because of its input (an unknown package, a refused tarball);
// kHostIo for the store's own files; kBackend when a build tool fails for another reason;
// kUnsupportedPlatform when a build tool is missing.

// Whether `name` may name an image; the message says why not.
[[nodiscard]] Result<void> CheckName(std::string_view name);

// A VM's hold on an image: the blob's path, open read-only with a shared lock that keeps
// `image rm` from removing it. Release by destruction.
struct ImageUse {
  ImageRecord record;
  std::string path;
  UniqueFd lock;
};

class Store {
 public:
  explicit Store(std::string root) : root_(std::move(root)) {}
  // $VESSEL_CACHE_DIR/images, else $XDG_CACHE_HOME/vessel/images, else
  // ~/.cache/vessel/images.
  [[nodiscard]] static Store Default();

  [[nodiscard]] const std::string& root() const { return root_; }
  [[nodiscard]] std::string BlobPath(std::string_view digest) const;

  // Every named image, by name.
  [[nodiscard]] Result<std::vector<ImageRecord>> List() const;
  // By name or by digest ("sha256:<hex>"). kInvalidConfig (subject "image") for one that
  // does not exist, listing the names that do.
  [[nodiscard]] Result<ImageRecord> Find(std::string_view name_or_digest) const;
  // The image for a VM: found, checked unchanged since it was stored (its digest is
  // recomputed when its size, mtime or inode moved), and locked shared.
  [[nodiscard]] Result<ImageUse> Use(std::string_view name_or_digest) const;
  // The image with `digest` for a VM restored from a snapshot: kSnapshotFormat naming
  // the digest (and `name`, as the snapshot recorded it) when it is missing or changed.
  [[nodiscard]] Result<ImageUse> UseForSnapshot(std::string_view digest,
                                                std::string_view name) const;

  // Moves the finished erofs file `erofs` into the store as `record.name`, computing its
  // digest and size (the caller's values are ignored), and returns the stored record. An
  // existing image of that name is replaced (its blob is kept while other names, users
  // or snapshots need it).
  [[nodiscard]] Result<ImageRecord> Add(const std::string& erofs, ImageRecord record) const;
  // Points `name` at the image a recipe built earlier, if its blob is still stored.
  [[nodiscard]] Result<std::optional<ImageRecord>> FromRecipe(std::string_view recipe,
                                                              std::string_view name) const;

  // Removes the name. Refused (kInvalidConfig, subject "image", saying who) while a
  // running sandbox uses the image or a snapshot on disk needs it and no other name
  // keeps it; the blob goes with its last name.
  [[nodiscard]] Result<void> Remove(std::string_view name) const;

  // Records that the snapshot in `snapshot_dir` needs the image with `digest`, so that
  // Remove refuses while that snapshot exists.
  [[nodiscard]] Result<void> AddSnapshotRef(std::string_view digest,
                                            const std::string& snapshot_dir) const;

  // An exclusive lock on `name` (a recipe hash) among every process using this store;
  // waits for it. For builds: one builds, the others wait and then reuse its result.
  [[nodiscard]] Result<UniqueFd> LockRecipe(std::string_view recipe) const;
  // A new empty directory for a build's scratch files, on the store's file system.
  [[nodiscard]] Result<std::string> ScratchDir() const;

 private:
  [[nodiscard]] Result<UniqueFd> LockStore() const;
  [[nodiscard]] Result<ImageUse> Open(const ImageRecord& record) const;
  std::string root_;
};

// What `vessel image build` makes: Debian `suite` from `mirror` with `packages` (and
// their dependencies) on top of the essential set.
struct Recipe {
  std::string suite = "bookworm";
  std::string mirror = "http://deb.debian.org/debian";
  std::vector<std::string> packages;

  // The hash a build is cached by: the recipe's own version, suite, mirror, the sorted
  // package set and the architecture.
  [[nodiscard]] std::string Hash() const;
};

// The recipes `vessel image build NAME` knows without --packages: "python" (python3 with
// pip, venv, numpy, requests, git, curl, ca-certificates) and "debian" (the essential set
// only). nullopt for other names.
[[nodiscard]] std::optional<Recipe> BuiltinRecipe(std::string_view name);

// A line of progress for people: "resolving packages", "unpacking 112 packages", ...
using Progress = std::function<void(std::string_view line)>;

// Builds (or, when the recipe was built before and its image is stored, reuses) the image
// `name` from `recipe` with mmdebstrap and mkfs.erofs. A package Debian does not have is
// kInvalidConfig naming it; nothing half-built is left in the store. Concurrent builds of
// one recipe: one builds, the others wait for it and reuse its image. `cached` says
// whether the image was reused.
struct BuildResult {
  ImageRecord record;
  bool cached = false;
};
[[nodiscard]] Result<BuildResult> Build(const Store& store, std::string_view name,
                                        const Recipe& recipe, const Progress& progress);

// What an import did to a tarball's entries to make them safe.
struct ImportReport {
  ImageRecord record;
  uint64_t entries = 0;
  uint64_t dropped_devices = 0;   // device nodes, FIFOs and sockets: left out
  uint64_t cleared_setid = 0;     // setuid/setgid bits: cleared
  uint64_t made_relative = 0;     // absolute paths: taken as relative to the root
};
// Imports a root file system from a tar archive (any compression libarchive reads).
// Refused with kInvalidConfig naming the entry: a path with a `..` component, a hard
// link leading outside the tree, a file type that is not a file, directory or link once
// devices are dropped, and a tree whose /bin/sh (or /usr/bin/sh) is not an x86-64 ELF
// program ("built for another architecture"). Neutralised and counted: absolute paths,
// device nodes, setuid/setgid bits. Every file is owned by root in the image.
[[nodiscard]] Result<ImportReport> Import(const Store& store, std::string_view name,
                                          const std::string& tarball, const Progress& progress);

// Which image tools are present: "mmdebstrap", "mkfs.erofs"; empty when all are.
[[nodiscard]] std::vector<std::string> MissingTools();

}  // namespace vessel::image
