// File operations inside the guest, over the agent connection.
#pragma once

#include "sandbox/connection.h"
#include "vessel/sandbox.h"

namespace vessel::sandbox {

// Caps on what one ListDir collects, so a hostile guest cannot make the host hold more:
// entries, and bytes, each entry counted as its name plus kListEntryBytes.
inline constexpr size_t kMaxDirEntries = 100'000;
inline constexpr size_t kListEntryBytes = 64;
inline constexpr size_t kMaxListingBytes = 16 * 1024 * 1024;
// The most Sandbox::ReadFile holds in memory; ReadFileStream reads files of any size.
inline constexpr uint64_t kMaxWholeFileBytes = 256 * 1024 * 1024;
// File data in flight from the guest before the host grants more.
inline constexpr uint32_t kFileWindow = 4 * 1024 * 1024;

[[nodiscard]] Result<FileInfo> StatFile(Connection& connection, const std::string& path);
[[nodiscard]] Result<std::vector<FileInfo>> ListDirectory(Connection& connection,
                                                          const std::string& path);
[[nodiscard]] Result<void> MakeDirectory(Connection& connection, const std::string& path,
                                         bool parents, uint32_t mode);
[[nodiscard]] Result<void> RemovePath(Connection& connection, const std::string& path,
                                      bool recursive);
[[nodiscard]] Result<void> RenamePath(Connection& connection, const std::string& from,
                                      const std::string& to);
[[nodiscard]] Result<FileInfo> ReadFileChunks(Connection& connection, const std::string& path,
                                              const ChunkSink& sink);
[[nodiscard]] Result<void> WriteFileChunks(Connection& connection, const std::string& path,
                                           const ChunkSource& source, uint32_t mode);

}  // namespace vessel::sandbox
