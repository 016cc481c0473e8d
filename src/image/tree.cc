#include "image/tree.h"

#include <elf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "base/io.h"
#include "base/subprocess.h"
#include "base/unique_fd.h"

namespace vessel::image {
namespace {

namespace fs = std::filesystem;

std::string MachineName(uint16_t machine) {
  switch (machine) {
    case EM_386: return "i386";
    case EM_ARM: return "arm";
    case EM_AARCH64: return "arm64";
    case EM_RISCV: return "riscv64";
    case EM_PPC64: return "ppc64";
    case EM_S390: return "s390x";
    case EM_MIPS: return "mips";
    default: return fmt::format("ELF machine {}", machine);
  }
}

}  // namespace

Result<uint64_t> TreeSize(const std::string& tree) {
  uint64_t total = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(tree, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec) && !it->is_symlink(ec)) total += it->file_size(ec);
    ec.clear();
  }
  if (ec) return Fail(Error::HostIo("walk " + tree, ec.value()));
  return total;
}

Result<void> CheckArchitecture(const std::string& tree) {
  UniqueFd root(::open(tree.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root) return Fail(Error::HostIo("open " + tree, errno));
  // The shell as the guest finds it: every link, absolute or climbing with "..", resolves
  // with the tree as the root, never into the host's own programs.
  for (const char* path : {"bin/sh", "usr/bin/sh", "bin/busybox", "usr/bin/busybox"}) {
    open_how how{.flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC,
                 .mode = 0,
                 .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    UniqueFd fd(static_cast<int>(::syscall(SYS_openat2, root.get(), path, &how, sizeof(how))));
    if (!fd && errno == ENOSYS) {
      return Fail(Error::UnsupportedPlatform("checking an image's shell needs openat2 (Linux 5.6)"));
    }
    if (!fd) continue;
    Elf64_Ehdr header{};
    ssize_t n = ::pread(fd.get(), &header, sizeof(header), 0);
    if (n < static_cast<ssize_t>(EI_NIDENT + 4) || std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) {
      continue;  // a script or something else: try the next candidate
    }
    if (header.e_ident[EI_CLASS] == ELFCLASS64 && header.e_machine == EM_X86_64) return {};
    return Fail(Error::InvalidConfig(
        "image", fmt::format("the image is built for another architecture: its /{} is a {} "
                             "program; guests here run x86-64 (amd64)",
                             path, MachineName(header.e_machine))));
  }
  return Fail(Error::InvalidConfig(
      "image", "the tree has no shell (/bin/sh): a root image needs one to run commands"));
}

Result<void> PackTree(const std::string& tree, const std::string& erofs, const std::string& seed,
                      const std::string& log, std::chrono::milliseconds timeout, bool all_root) {
  std::string hex = seed + std::string(32, '0');
  std::string uuid = fmt::format("{}-{}-{}-{}-{}", hex.substr(0, 8), hex.substr(8, 4),
                                 hex.substr(12, 4), hex.substr(16, 4), hex.substr(20, 12));
  std::vector<std::string> argv = {"mkfs.erofs", "-zlz4hc", "-T0", "-U" + uuid, "--quiet"};
  if (all_root) argv.push_back("--all-root");
  argv.insert(argv.end(), {erofs, tree});
  auto child = Subprocess::Spawn({.argv = argv, .inherit_fds = {}, .output_path = log});
  if (!child) return Fail(std::move(child).error());
  if (!child->WaitFor(timeout)) {
    child->Kill();
    return Fail(Error::Timeout("mkfs.erofs did not finish in time"));
  }
  if (child->status().value_or(-1) != 0) {
    return Fail(Error::Backend("mkfs.erofs failed").Detail(ReadFileTail(log, 2048)));
  }
  return {};
}

}  // namespace vessel::image
