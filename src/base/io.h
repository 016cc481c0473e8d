// Blocking I/O on file descriptors with deadlines. errno becomes an Error here and
// nowhere else.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "base/deadline.h"
#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel {

// Writes all of `data`, waiting for the fd to become writable up to the deadline.
[[nodiscard]] Result<void> WriteAll(int fd, std::span<const uint8_t> data, Deadline deadline,
                                    const char* what);
// Reads at least one byte when available before the deadline. Returns 0 at end of file.
// A deadline that passes is Error::Timeout "<what>: timed out".
[[nodiscard]] Result<size_t> ReadSome(int fd, std::span<uint8_t> buffer, Deadline deadline,
                                      const char* what);

// Writes all of `data` to a file at `offset` (pwrite). `what` names the file in errors.
[[nodiscard]] Result<void> WriteAllAt(int fd, std::span<const uint8_t> data, off_t offset,
                                      const char* what);
// Reads exactly `buffer.size()` bytes of a file at `offset` (pread); a file that ends
// before is kHostIo "read <what>: the file ended early".
[[nodiscard]] Result<void> ReadExactlyAt(int fd, std::span<uint8_t> buffer, off_t offset,
                                         const char* what);
// The whole file `fd`, from offset 0 (pread: a description shared with others keeps its
// offset); kSnapshotFormat when it holds more than `max_bytes`.
[[nodiscard]] Result<std::vector<uint8_t>> ReadAllAt(int fd, size_t max_bytes, const char* what);

[[nodiscard]] Result<std::string> ReadFileToString(const std::string& path, size_t max_bytes);
[[nodiscard]] Result<void> WriteStringToFile(const std::string& path, std::string_view data);
// The last `max_bytes` of a file, for diagnostics: empty when it cannot be read.
std::string ReadFileTail(const std::string& path, size_t max_bytes);
// Removes a directory tree; missing is fine.
[[nodiscard]] Result<void> RemoveTree(const std::string& path);
[[nodiscard]] bool IsReadableFile(const std::string& path);
// Whether every byte of `data` is zero (true when it is empty).
[[nodiscard]] bool IsZeros(std::span<const uint8_t> data);
// Calls `visit(begin, end)` for each range of the first `size` bytes of `fd` that may hold
// data, in order (SEEK_DATA, SEEK_HOLE), stopping at the first error it returns; the bytes
// between the ranges are holes and read as zeros. Where the file system cannot tell, the
// whole file is one range.
[[nodiscard]] Result<void> ForEachDataExtent(
    int fd, uint64_t size, const std::function<Result<void>(uint64_t, uint64_t)>& visit);
// Copies the first `size` bytes of the file `in` to the same offsets of `out`, skipping
// the holes of `in` (SEEK_DATA, SEEK_HOLE) and its 4 KiB pages of zeros, so that `out`,
// sized beforehand, is at least as sparse as `in` and reads the same.
[[nodiscard]] Result<void> CopyDataSkippingZeros(int in, int out, off_t size);

}  // namespace vessel
