#include "sandbox/files.h"

#include <fmt/format.h>

#include "sandbox/process.h"

namespace vessel::sandbox {

namespace proto = vessel::protocol;

namespace {

Result<void> CheckPath(const std::string& path, const char* field) {
  if (path.empty() || path[0] != '/')
    return Fail(Error::InvalidConfig(field, "\"" + path + "\" is not an absolute path"));
  if (path.size() > proto::kMaxPathSize) return Fail(Error::InvalidConfig(field, "path too long"));
  if (path.find('\0') != std::string::npos)
    return Fail(Error::InvalidConfig(field, "path contains a NUL byte"));
  return {};
}

FileInfo FromWire(const proto::FileInfo& info) {
  FileInfo out;
  out.name = info.name;
  out.mode = info.mode;
  out.size = info.size;
  out.mtime = info.mtime;
  switch (info.type) {
    case proto::FileType::kRegular: out.type = FileType::kRegular; break;
    case proto::FileType::kDirectory: out.type = FileType::kDirectory; break;
    case proto::FileType::kSymlink: out.type = FileType::kSymlink; break;
    case proto::FileType::kOther: out.type = FileType::kOther; break;
  }
  return out;
}

// One request from FileOp to Done: every FileInfo frame goes to `on_info`, every FileData
// frame to `on_data`. Frames of any other type, or in the wrong operation, are protocol
// violations.
class FileRequest {
 public:
  FileRequest(Connection& connection, const proto::FileOp& op)
      : connection_(connection), op_(op), mailbox_(connection.NewRequest(RequestKind::kFile)) {
    mailbox_->LimitInbound(op_.window);
  }
  ~FileRequest() { connection_.EndRequest(mailbox_->id()); }

  Result<void> Send() { return connection_.Send(proto::EncodeFileOp(mailbox_->id(), op_)); }
  Result<void> SendData(std::span<const uint8_t> data) {
    return connection_.Send(proto::EncodeFileData(mailbox_->id(), data));
  }
  bool ended() const { return mailbox_->ended(); }

  template <typename OnInfo, typename OnData>
  Result<void> Finish(OnInfo on_info, OnData on_data) {
    for (;;) {
      auto frame = mailbox_->Next(Deadline::Never());
      if (!frame) return Fail(std::move(frame).error());
      switch (frame->header.type) {
        case proto::MessageType::kDone: {
          if (auto empty = proto::DecodeEmpty(frame->payload, "done"); !empty) return empty;
          return {};
        }
        case proto::MessageType::kError: return Fail(ErrorFromAgent(frame->payload, op_.path));
        case proto::MessageType::kFileInfo: {
          auto info = proto::DecodeFileInfo(frame->payload);
          if (!info) return Fail(std::move(info).error());
          if (auto r = on_info(FromWire(*info)); !r) return r;
          break;
        }
        case proto::MessageType::kFileData:
          if (auto r = on_data(std::span<const uint8_t>(frame->payload)); !r) return r;
          break;
        default:
          return Fail(
              Error::Backend(fmt::format("unexpected frame type {} from the guest agent for {}",
                                         static_cast<int>(frame->header.type), op_.path)));
      }
    }
  }

  // A Signal frame on a file write abandons it: the agent removes its temporary file and
  // answers with an Error.
  Result<void> Abort() {
    if (auto sent = connection_.Send(proto::EncodeSignal(mailbox_->id(), 15)); !sent) return sent;
    return Finish([](const FileInfo&) -> Result<void> { return {}; },
                  [](std::span<const uint8_t>) -> Result<void> { return {}; });
  }

  Result<void> GrantCredit(uint32_t bytes) {
    mailbox_->Granted(proto::Stream::kFile, bytes);
    return connection_.Send(proto::EncodeCredit(mailbox_->id(), {proto::Stream::kFile, bytes}));
  }

 private:
  Connection& connection_;
  proto::FileOp op_;
  std::shared_ptr<Mailbox> mailbox_;
};

Result<void> Unexpected(const char* what, const std::string& path) {
  return Fail(Error::Backend(fmt::format("the guest agent sent {} for {}", what, path)));
}

Result<void> SimpleOp(Connection& connection, const proto::FileOp& op) {
  FileRequest request(connection, op);
  if (auto sent = request.Send(); !sent) return sent;
  return request.Finish([&](const FileInfo&) { return Unexpected("file info", op.path); },
                        [&](std::span<const uint8_t>) { return Unexpected("file data", op.path); });
}

}  // namespace

Result<FileInfo> StatFile(Connection& connection, const std::string& path) {
  if (auto ok = CheckPath(path, "path"); !ok) return Fail(std::move(ok).error());
  proto::FileOp op{.kind = proto::FileOpKind::kStat, .path = path};
  FileRequest request(connection, op);
  if (auto sent = request.Send(); !sent) return Fail(std::move(sent).error());
  std::optional<FileInfo> info;
  auto done = request.Finish(
      [&](const FileInfo& i) -> Result<void> {
        if (info) return Unexpected("a second file info", path);
        info = i;
        return {};
      },
      [&](std::span<const uint8_t>) { return Unexpected("file data", path); });
  if (!done) return Fail(std::move(done).error());
  if (!info) return Fail(Error::Backend("the guest agent sent no file info for " + path));
  return *info;
}

Result<std::vector<FileInfo>> ListDirectory(Connection& connection, const std::string& path) {
  if (auto ok = CheckPath(path, "path"); !ok) return Fail(std::move(ok).error());
  proto::FileOp op{.kind = proto::FileOpKind::kListDir, .path = path};
  FileRequest request(connection, op);
  if (auto sent = request.Send(); !sent) return Fail(std::move(sent).error());
  std::vector<FileInfo> entries;
  size_t bytes = 0;
  auto done = request.Finish(
      [&](const FileInfo& i) -> Result<void> {
        if (entries.size() >= kMaxDirEntries) {
          return Fail(
              Error::Backend(fmt::format("{} has more than {} entries", path, kMaxDirEntries)));
        }
        bytes += i.name.size() + kListEntryBytes;
        if (bytes > kMaxListingBytes) {
          return Fail(Error::Backend(fmt::format("the listing of {} is larger than {} MiB", path,
                                                 kMaxListingBytes >> 20)));
        }
        if (i.name.empty() || i.name == "." || i.name == "..")
          return Unexpected("a nameless entry", path);
        entries.push_back(i);
        return {};
      },
      [&](std::span<const uint8_t>) { return Unexpected("file data", path); });
  if (!done) return Fail(std::move(done).error());
  return entries;
}

Result<void> MakeDirectory(Connection& connection, const std::string& path, bool parents,
                           uint32_t mode) {
  if (auto ok = CheckPath(path, "path"); !ok) return ok;
  if (mode > 07777) return Fail(Error::InvalidConfig("mode", "out of range"));
  return SimpleOp(connection, {.kind = proto::FileOpKind::kMakeDir,
                               .path = path,
                               .mode = mode,
                               .flags = static_cast<uint8_t>(parents ? proto::kFlagParents : 0)});
}

Result<void> RemovePath(Connection& connection, const std::string& path, bool recursive) {
  if (auto ok = CheckPath(path, "path"); !ok) return ok;
  if (path == "/") return Fail(Error::InvalidConfig("path", "refusing to remove /"));
  return SimpleOp(connection,
                  {.kind = proto::FileOpKind::kRemove,
                   .path = path,
                   .flags = static_cast<uint8_t>(recursive ? proto::kFlagRecursive : 0)});
}

Result<void> RenamePath(Connection& connection, const std::string& from, const std::string& to) {
  if (auto ok = CheckPath(from, "from"); !ok) return ok;
  if (auto ok = CheckPath(to, "to"); !ok) return ok;
  return SimpleOp(connection, {.kind = proto::FileOpKind::kRename, .path = from, .target = to});
}

Result<FileInfo> ReadFileChunks(Connection& connection, const std::string& path,
                                const ChunkSink& sink) {
  if (auto ok = CheckPath(path, "path"); !ok) return Fail(std::move(ok).error());
  proto::FileOp op{.kind = proto::FileOpKind::kReadFile, .path = path, .window = kFileWindow};
  FileRequest request(connection, op);
  if (auto sent = request.Send(); !sent) return Fail(std::move(sent).error());
  std::optional<FileInfo> info;
  uint64_t received = 0;
  uint64_t outstanding = 0;
  auto done = request.Finish(
      [&](const FileInfo& i) -> Result<void> {
        if (info) return Unexpected("a second file info", path);
        info = i;
        return {};
      },
      [&](std::span<const uint8_t> data) -> Result<void> {
        if (!info) return Unexpected("file data before file info", path);
        outstanding += data.size();
        received += data.size();
        if (auto r = sink(data); !r) return r;
        if (outstanding >= kFileWindow / 4) {
          if (auto r = request.GrantCredit(static_cast<uint32_t>(outstanding)); !r) return r;
          outstanding = 0;
        }
        return {};
      });
  if (!done) return Fail(std::move(done).error());
  if (!info) return Fail(Error::Backend("the guest agent sent no file info for " + path));
  info->size = received;
  return *info;
}

Result<void> WriteFileChunks(Connection& connection, const std::string& path,
                             const ChunkSource& source, uint32_t mode) {
  if (auto ok = CheckPath(path, "path"); !ok) return ok;
  if (mode > 07777) return Fail(Error::InvalidConfig("mode", "out of range"));
  proto::FileOp op{.kind = proto::FileOpKind::kWriteFile, .path = path, .mode = mode};
  FileRequest request(connection, op);
  if (auto sent = request.Send(); !sent) return sent;
  std::vector<uint8_t> buf(proto::kMaxFileChunk);
  // The agent answers early only with an error; stop sending data once it did.
  while (!request.ended()) {
    auto n = source(buf);
    if (!n) {
      // Abandon the transfer: the agent drops its temporary file and `path` stays as it was.
      (void)request.Abort();
      return Fail(std::move(n).error());
    }
    if (*n == 0) break;
    if (auto sent = request.SendData({buf.data(), *n}); !sent) return sent;
  }
  if (!request.ended()) {
    if (auto sent = request.SendData({}); !sent) return sent;
  }
  return request.Finish([&](const FileInfo&) { return Unexpected("file info", path); },
                        [&](std::span<const uint8_t>) { return Unexpected("file data", path); });
}

}  // namespace vessel::sandbox
