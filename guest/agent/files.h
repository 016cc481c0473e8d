// File operations for the host. Each ends with Done, or with an Error that carries the
// errno and the guest path that failed.
#pragma once

#include <poll.h>

#include <cstdint>
#include <span>
#include <string>

#include "base/unique_fd.h"
#include "port.h"
#include "protocol/wire.h"

namespace vessel::agent {

// Runs an operation that completes at once (kStat, kListDir, kMakeDir, kRemove, kRename)
// and sends all its frames.
void RunFileOp(uint32_t request_id, const protocol::FileOp& op, Port& port);

// kReadFile: streams a file within the host's credit, one chunk per turn of the event
// loop, so a large file never sits in memory nor holds up other requests.
class ReadFileTransfer {
 public:
  ReadFileTransfer(uint32_t request_id, const protocol::FileOp& op)
      : request_id_(request_id), path_(op.path), window_(op.window), credit_(op.window) {}
  ReadFileTransfer(const ReadFileTransfer&) = delete;
  ReadFileTransfer& operator=(const ReadFileTransfer&) = delete;

  // Opens the file and sends its FileInfo. False when that failed and the Error was sent.
  [[nodiscard]] bool Open(Port& port);
  // fd -1 while waiting for credit or for room in the port.
  [[nodiscard]] pollfd PollEvents(const Port& port) const;
  // Sends the next chunk, or Done at the end of the file. True when the transfer ended.
  [[nodiscard]] bool SendChunk(Port& port);
  void OnCredit(uint32_t bytes);
  // Ends the transfer with an Error.
  void Abort(Port& port, int error, const char* what);

 private:
  uint32_t request_id_;
  std::string path_;
  uint64_t window_;
  uint64_t credit_;
  UniqueFd fd_;
};

// kWriteFile: writes the host's FileData frames into a temporary file beside the target
// and renames it into place on the empty FileData that ends them, so the target is never
// seen half written.
class WriteFileTransfer {
 public:
  WriteFileTransfer(uint32_t request_id, const protocol::FileOp& op)
      : request_id_(request_id), path_(op.path), mode_(op.mode) {}
  WriteFileTransfer(const WriteFileTransfer&) = delete;
  WriteFileTransfer& operator=(const WriteFileTransfer&) = delete;
  // Removes a temporary file that was not renamed into place.
  ~WriteFileTransfer();

  // Creates the temporary file. False when that failed and the Error was sent.
  [[nodiscard]] bool Open(Port& port);
  // A FileData frame; empty commits. True when the transfer ended: Done, or an Error after
  // which the host's remaining FileData frames fall on an unknown id and are ignored.
  [[nodiscard]] bool OnData(std::span<const uint8_t> data, Port& port);
  // Ends the transfer with an Error; the temporary file is removed.
  void Abort(Port& port, int error, const char* what);

 private:
  void Commit(Port& port);

  uint32_t request_id_;
  std::string path_;
  uint32_t mode_;
  std::string temp_path_;  // empty once renamed or removed
  UniqueFd fd_;
};

}  // namespace vessel::agent
