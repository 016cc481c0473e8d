// File operations against a hostile fake guest agent: the FileOp on the wire, replies,
// streaming reads with credits, streaming writes and their abort.
#include "sandbox/files.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "fake_agent.h"

namespace vessel::sandbox {
namespace {

using namespace test;

proto::FileInfo WireInfo(proto::FileType type, std::string name = "", uint64_t size = 0) {
  return {
      .type = type, .mode = 0640, .size = size, .mtime = 1'700'000'000, .name = std::move(name)};
}

// What the agent saw of one file operation.
struct ReceivedOp {
  uint32_t id = 0;
  proto::FileOp op;
};

std::optional<ReceivedOp> ReceiveFileOp(FakeAgent& agent) {
  auto frame = agent.Receive(proto::MessageType::kFileOp);
  if (!frame) return std::nullopt;
  auto op = proto::DecodeFileOp(frame->payload);
  if (!op) return std::nullopt;
  return ReceivedOp{frame->header.request_id, std::move(*op)};
}

// An agent that answers one file operation with `replies(id)`, recording the op.
std::function<void(FakeAgent&)> AnswerOnce(std::optional<ReceivedOp>& received,
                                           std::function<std::vector<Bytes>(uint32_t)> replies) {
  return [&received, replies = std::move(replies)](FakeAgent& agent) {
    received = ReceiveFileOp(agent);
    for (const Bytes& reply : replies(received ? received->id : 0)) agent.Send(reply);
    agent.DrainUntilClose();
  };
}

Bytes Pattern(size_t size, size_t seed) {
  Bytes b(size);
  for (size_t i = 0; i < size; ++i) b[i] = static_cast<uint8_t>((i + seed) * 131);
  return b;
}

class FilesTest : public AgentChannelTest {
 protected:
  void SetUp() override {
    AgentChannelTest::SetUp();
    StartConnection();
  }
};

// Stat and ListDir.

TEST_F(FilesTest, StatSendsTheOpAndMapsTheInfo) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{
        proto::EncodeFileInfo(id, WireInfo(proto::FileType::kDirectory, "", 4096)),
        proto::EncodeDone(id)};
  }));
  auto info = StatFile(*connection_, "/etc");
  JoinAgent();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->op.kind, proto::FileOpKind::kStat);
  EXPECT_EQ(received->op.path, "/etc");
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_EQ(info->type, FileType::kDirectory);
  EXPECT_EQ(info->mode, 0640u);
  EXPECT_EQ(info->size, 4096u);
  EXPECT_EQ(info->mtime, 1'700'000'000);
  EXPECT_EQ(info->name, "");
}

TEST_F(FilesTest, StatWithoutInfoIsABackendError) {
  std::optional<ReceivedOp> received;
  RunAgent(
      AnswerOnce(received, [](uint32_t id) { return std::vector<Bytes>{proto::EncodeDone(id)}; }));
  auto info = StatFile(*connection_, "/etc");
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  ExpectBackend(info.error(), "no file info");
}

TEST_F(FilesTest, StatWithTwoInfosIsABackendError) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular)),
                              proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular)),
                              proto::EncodeDone(id)};
  }));
  auto info = StatFile(*connection_, "/etc/passwd");
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  ExpectBackend(info.error(), "a second file info");
}

struct GuestErrnoCase {
  int guest_errno;
  GuestFileErrorKind kind;
};

class FilesGuestErrorTest : public FilesTest,
                            public ::testing::WithParamInterface<GuestErrnoCase> {};

TEST_P(FilesGuestErrorTest, ErrorWithAPathIsAGuestFileError) {
  std::optional<ReceivedOp> received;
  int guest_errno = GetParam().guest_errno;
  RunAgent(AnswerOnce(received, [guest_errno](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeError(id, {guest_errno, "/a/b", "it failed"})};
  }));
  auto info = StatFile(*connection_, "/a/b");
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  EXPECT_EQ(info.error().kind(), ErrorKind::kGuestFile) << info.error().ToString();
  EXPECT_EQ(info.error().subject(), "/a/b");
  EXPECT_EQ(info.error().errno_value(), guest_errno);
  EXPECT_EQ(info.error().guest_file_kind(), GetParam().kind);
}

INSTANTIATE_TEST_SUITE_P(Errnos, FilesGuestErrorTest,
                         ::testing::Values(GuestErrnoCase{ENOENT, GuestFileErrorKind::kNotFound},
                                           GuestErrnoCase{EPERM,
                                                          GuestFileErrorKind::kPermissionDenied},
                                           GuestErrnoCase{ENOSPC, GuestFileErrorKind::kNoSpace},
                                           GuestErrnoCase{EISDIR, GuestFileErrorKind::kIsDirectory},
                                           GuestErrnoCase{ENOTEMPTY, GuestFileErrorKind::kNotEmpty},
                                           GuestErrnoCase{EXDEV, GuestFileErrorKind::kIo}));

TEST_F(FilesTest, ErrorWithoutAPathIsABackendError) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeError(id, {ENOMEM, "", "out of memory"})};
  }));
  auto info = StatFile(*connection_, "/a");
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  ExpectBackend(info.error(), "out of memory");
}

TEST_F(FilesTest, ListDirCollectsTheEntries) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{
        proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular, "a.txt", 3)),
        proto::EncodeFileInfo(id, WireInfo(proto::FileType::kDirectory, "sub")),
        proto::EncodeFileInfo(id, WireInfo(proto::FileType::kSymlink, "link")),
        proto::EncodeFileInfo(id, WireInfo(proto::FileType::kOther, "fifo")),
        proto::EncodeDone(id)};
  }));
  auto entries = ListDirectory(*connection_, "/data");
  JoinAgent();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->op.kind, proto::FileOpKind::kListDir);
  EXPECT_EQ(received->op.path, "/data");
  ASSERT_TRUE(entries.has_value()) << entries.error().ToString();
  ASSERT_EQ(entries->size(), 4u);
  EXPECT_EQ((*entries)[0].name, "a.txt");
  EXPECT_EQ((*entries)[0].type, FileType::kRegular);
  EXPECT_EQ((*entries)[0].size, 3u);
  EXPECT_EQ((*entries)[1].type, FileType::kDirectory);
  EXPECT_EQ((*entries)[2].type, FileType::kSymlink);
  EXPECT_EQ((*entries)[3].name, "fifo");
  EXPECT_EQ((*entries)[3].type, FileType::kOther);
}

TEST_F(FilesTest, ListDirOfAnEmptyDirectory) {
  std::optional<ReceivedOp> received;
  RunAgent(
      AnswerOnce(received, [](uint32_t id) { return std::vector<Bytes>{proto::EncodeDone(id)}; }));
  auto entries = ListDirectory(*connection_, "/empty");
  JoinAgent();
  ASSERT_TRUE(entries.has_value()) << entries.error().ToString();
  EXPECT_TRUE(entries->empty());
}

class FilesBadEntryTest : public FilesTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(FilesBadEntryTest, ListDirRejectsANamelessEntry) {
  std::optional<ReceivedOp> received;
  std::string name = GetParam();
  RunAgent(AnswerOnce(received, [name](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular, "ok")),
                              proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular, name)),
                              proto::EncodeDone(id)};
  }));
  auto entries = ListDirectory(*connection_, "/data");
  JoinAgent();
  ASSERT_FALSE(entries.has_value());
  ExpectBackend(entries.error(), "nameless entry");
}

INSTANTIATE_TEST_SUITE_P(Names, FilesBadEntryTest, ::testing::Values("", ".", ".."));

// A guest that lists more than the host collects: long names past the byte budget fail
// the listing, well before the entry cap.
TEST_F(FilesTest, ListDirStopsAtItsByteBudget) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    std::vector<Bytes> frames;
    const size_t per_entry = 4000 + kListEntryBytes;
    for (size_t i = 0; i <= kMaxListingBytes / per_entry; ++i) {
      std::string name = std::to_string(i) + std::string(4000 - std::to_string(i).size(), 'n');
      frames.push_back(proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular, name)));
    }
    frames.push_back(proto::EncodeDone(id));
    return frames;
  }));
  auto entries = ListDirectory(*connection_, "/data");
  JoinAgent();
  ASSERT_FALSE(entries.has_value());
  ExpectBackend(entries.error(), "larger than 16 MiB");
}

TEST_F(FilesTest, ListDirRejectsFileData) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeFileData(id, ToBytes("x")), proto::EncodeDone(id)};
  }));
  auto entries = ListDirectory(*connection_, "/data");
  JoinAgent();
  ASSERT_FALSE(entries.has_value());
  ExpectBackend(entries.error(), "file data");
}

TEST_F(FilesTest, UnexpectedFrameType) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) { return std::vector<Bytes>{ExitedWith(id, 0)}; }));
  auto info = StatFile(*connection_, "/a");
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  ExpectBackend(info.error(), "unexpected frame type 4");
}

TEST_F(FilesTest, MalformedDone) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{
        Join(HeaderBytes(1, static_cast<uint8_t>(proto::MessageType::kDone), id), Bytes{0})};
  }));
  auto made = MakeDirectory(*connection_, "/a", false, 0755);
  JoinAgent();
  ASSERT_FALSE(made.has_value());
  EXPECT_EQ(made.error().kind(), ErrorKind::kBackend) << made.error().ToString();
}

TEST_F(FilesTest, PeerClosesDuringAnOperation) {
  RunAgent([](FakeAgent& agent) { (void)ReceiveFileOp(agent); });
  auto info = StatFile(*connection_, "/a");
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  ExpectBackend(info.error(), "channel closed");
}

// MakeDir, Remove, Rename.

TEST_F(FilesTest, SimpleOperationsSendTheirOps) {
  std::vector<ReceivedOp> ops;
  RunAgent([&ops](FakeAgent& agent) {
    while (auto received = ReceiveFileOp(agent)) {
      ops.push_back(*received);
      agent.Send(proto::EncodeDone(received->id));
    }
  });
  auto made = MakeDirectory(*connection_, "/a/b", /*parents=*/true, 0700);
  auto made_plain = MakeDirectory(*connection_, "/c", /*parents=*/false, 0755);
  auto removed = RemovePath(*connection_, "/a", /*recursive=*/true);
  auto removed_plain = RemovePath(*connection_, "/c", /*recursive=*/false);
  auto renamed = RenamePath(*connection_, "/x", "/y z");
  JoinAgent();
  for (const auto* result : {&made, &made_plain, &removed, &removed_plain, &renamed}) {
    EXPECT_TRUE(result->has_value()) << result->error().ToString();
  }
  ASSERT_EQ(ops.size(), 5u);
  EXPECT_EQ(ops[0].op.kind, proto::FileOpKind::kMakeDir);
  EXPECT_EQ(ops[0].op.path, "/a/b");
  EXPECT_EQ(ops[0].op.mode, 0700u);
  EXPECT_EQ(ops[0].op.flags, proto::kFlagParents);
  EXPECT_EQ(ops[1].op.flags, 0);
  EXPECT_EQ(ops[1].op.mode, 0755u);
  EXPECT_EQ(ops[2].op.kind, proto::FileOpKind::kRemove);
  EXPECT_EQ(ops[2].op.path, "/a");
  EXPECT_EQ(ops[2].op.flags, proto::kFlagRecursive);
  EXPECT_EQ(ops[3].op.flags, 0);
  EXPECT_EQ(ops[4].op.kind, proto::FileOpKind::kRename);
  EXPECT_EQ(ops[4].op.path, "/x");
  EXPECT_EQ(ops[4].op.target, "/y z");
  // Every operation is a request of its own.
  for (size_t i = 1; i < ops.size(); ++i) EXPECT_GT(ops[i].id, ops[i - 1].id);
}

TEST_F(FilesTest, SimpleOperationRejectsFileInfo) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular)),
                              proto::EncodeDone(id)};
  }));
  auto removed = RemovePath(*connection_, "/a", false);
  JoinAgent();
  ASSERT_FALSE(removed.has_value());
  ExpectBackend(removed.error(), "file info");
}

// Arguments are checked before anything is sent.

TEST_F(FilesTest, InvalidArgumentsAreRejectedBeforeAnythingIsSent) {
  std::vector<proto::Frame> sent;
  RunAgent([&sent](FakeAgent& agent) { sent = agent.DrainUntilClose(); });
  auto no_data = [](std::span<uint8_t>) -> Result<size_t> { return 0; };
  auto sink = [](std::span<const uint8_t>) -> Result<void> { return {}; };
  const std::string nul_path("/a\0b", 4);
  const std::string long_path = "/" + std::string(proto::kMaxPathSize, 'p');
  std::vector<std::pair<Error, std::string>> errors;
  auto expect_invalid = [&](auto result, std::string field) {
    ASSERT_FALSE(result.has_value()) << field;
    errors.emplace_back(result.error(), std::move(field));
  };
  for (const std::string& bad :
       {std::string(""), std::string("relative"), std::string("./a"), nul_path, long_path}) {
    SCOPED_TRACE(bad.substr(0, 16));
    expect_invalid(StatFile(*connection_, bad), "path");
    expect_invalid(ListDirectory(*connection_, bad), "path");
    expect_invalid(MakeDirectory(*connection_, bad, false, 0755), "path");
    expect_invalid(RemovePath(*connection_, bad, false), "path");
    expect_invalid(RenamePath(*connection_, bad, "/ok"), "from");
    expect_invalid(RenamePath(*connection_, "/ok", bad), "to");
    expect_invalid(ReadFileChunks(*connection_, bad, sink), "path");
    expect_invalid(WriteFileChunks(*connection_, bad, no_data, 0644), "path");
  }
  expect_invalid(RemovePath(*connection_, "/", true), "path");
  expect_invalid(MakeDirectory(*connection_, "/a", false, 010000), "mode");
  expect_invalid(WriteFileChunks(*connection_, "/a", no_data, 010000), "mode");
  JoinAgent();
  for (const auto& [error, field] : errors) {
    EXPECT_EQ(error.kind(), ErrorKind::kInvalidConfig) << error.ToString();
    EXPECT_EQ(error.subject(), field) << error.ToString();
  }
  EXPECT_EQ(errors.size(), 5u * 8u + 3u);
  EXPECT_TRUE(sent.empty()) << sent.size() << " frames went out";
}

// Reading.

TEST_F(FilesTest, ReadFileStreamsChunksAndGrantsCredit) {
  constexpr size_t kQuarter = kFileWindow / 4;
  constexpr size_t kChunk = proto::kMaxFileChunk;
  constexpr size_t kChunksPerQuarter = kQuarter / kChunk;
  std::optional<ReceivedOp> received;
  std::vector<proto::Frame> credits;
  Bytes content;
  RunAgent([&](FakeAgent& agent) {
    received = ReceiveFileOp(agent);
    uint32_t id = received ? received->id : 0;
    // The size in the info is what stat said; the host counts what arrives.
    agent.Send(proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular, "", 123)));
    size_t seed = 0;
    auto send_chunk = [&](size_t size) {
      Bytes chunk = Pattern(size, seed++);
      content.insert(content.end(), chunk.begin(), chunk.end());
      agent.Send(proto::EncodeFileData(id, chunk));
    };
    // A quarter window, then wait until the host grants it back.
    for (size_t i = 0; i < kChunksPerQuarter; ++i) send_chunk(kChunk);
    if (auto credit = agent.Receive(proto::MessageType::kCredit)) credits.push_back(*credit);
    send_chunk(kChunk);
    send_chunk(1000);
    send_chunk(1);
    agent.Send(proto::EncodeDone(id));
    agent.DrainUntilClose();
  });
  Bytes sunk;
  size_t calls = 0;
  auto info = ReadFileChunks(*connection_, "/big.bin", [&](std::span<const uint8_t> chunk) {
    ++calls;
    sunk.insert(sunk.end(), chunk.begin(), chunk.end());
    return Result<void>{};
  });
  JoinAgent();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->op.kind, proto::FileOpKind::kReadFile);
  EXPECT_EQ(received->op.path, "/big.bin");
  EXPECT_EQ(received->op.window, kFileWindow);
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_EQ(info->size, content.size());
  EXPECT_EQ(info->type, FileType::kRegular);
  EXPECT_EQ(sunk, content);
  EXPECT_EQ(calls, kChunksPerQuarter + 3);
  ASSERT_EQ(credits.size(), 1u);
  EXPECT_EQ(credits[0].header.request_id, received->id);
  auto credit = proto::DecodeCredit(credits[0].payload);
  ASSERT_TRUE(credit.has_value()) << credit.error().ToString();
  EXPECT_EQ(credit->stream, proto::Stream::kFile);
  EXPECT_EQ(credit->bytes, kQuarter);
}

TEST_F(FilesTest, ReadOfAnEmptyFile) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular, "", 0)),
                              proto::EncodeDone(id)};
  }));
  size_t calls = 0;
  auto info = ReadFileChunks(*connection_, "/empty", [&](std::span<const uint8_t>) {
    ++calls;
    return Result<void>{};
  });
  JoinAgent();
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_EQ(info->size, 0u);
  EXPECT_EQ(calls, 0u);
}

TEST_F(FilesTest, ReadRejectsDataBeforeTheInfo) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeFileData(id, ToBytes("early")),
                              proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular)),
                              proto::EncodeDone(id)};
  }));
  size_t calls = 0;
  auto info = ReadFileChunks(*connection_, "/f", [&](std::span<const uint8_t>) {
    ++calls;
    return Result<void>{};
  });
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  ExpectBackend(info.error(), "file data before file info");
  EXPECT_EQ(calls, 0u);
}

TEST_F(FilesTest, ReadWithoutInfoIsABackendError) {
  std::optional<ReceivedOp> received;
  RunAgent(
      AnswerOnce(received, [](uint32_t id) { return std::vector<Bytes>{proto::EncodeDone(id)}; }));
  auto info =
      ReadFileChunks(*connection_, "/f", [](std::span<const uint8_t>) { return Result<void>{}; });
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  ExpectBackend(info.error(), "no file info");
}

TEST_F(FilesTest, ReadErrorIsAGuestFileError) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeError(id, {EISDIR, "/etc", "Is a directory"})};
  }));
  auto info =
      ReadFileChunks(*connection_, "/etc", [](std::span<const uint8_t>) { return Result<void>{}; });
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  EXPECT_EQ(info.error().kind(), ErrorKind::kGuestFile);
  EXPECT_EQ(info.error().guest_file_kind(), GuestFileErrorKind::kIsDirectory);
}

TEST_F(FilesTest, ASinkErrorStopsTheRead) {
  std::optional<ReceivedOp> received;
  RunAgent(AnswerOnce(received, [](uint32_t id) {
    return std::vector<Bytes>{proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular)),
                              proto::EncodeFileData(id, ToBytes("one")),
                              proto::EncodeFileData(id, ToBytes("two")), proto::EncodeDone(id)};
  }));
  size_t calls = 0;
  auto info = ReadFileChunks(*connection_, "/f", [&](std::span<const uint8_t>) -> Result<void> {
    ++calls;
    return Fail(Error::HostIo("write local copy", ENOSPC));
  });
  JoinAgent();
  ASSERT_FALSE(info.has_value());
  EXPECT_EQ(info.error().kind(), ErrorKind::kHostIo) << info.error().ToString();
  EXPECT_EQ(info.error().errno_value(), ENOSPC);
  EXPECT_EQ(calls, 1u);
}

TEST_F(FilesTest, ReadBeyondTheWindowWithoutCredit) {
  // A request of its own marks when the agent's frames have all been routed.
  auto marker = connection_->NewRequest(RequestKind::kFile);
  constexpr size_t kChunks = kFileWindow / proto::kMaxFileChunk + 1;
  RunAgent([marker_id = marker->id()](FakeAgent& agent) {
    auto received = ReceiveFileOp(agent);
    uint32_t id = received ? received->id : 0;
    agent.Send(proto::EncodeFileInfo(id, WireInfo(proto::FileType::kRegular)));
    for (size_t i = 0; i < kChunks; ++i) {
      agent.Send(proto::EncodeFileData(id, Bytes(proto::kMaxFileChunk, 'f')));
    }
    agent.Send(proto::EncodeDone(marker_id));
    agent.Send(proto::EncodeDone(id));
    agent.DrainUntilClose();
  });
  uint64_t sunk = 0;
  auto info = ReadFileChunks(*connection_, "/f", [&](std::span<const uint8_t> chunk) {
    // Nothing is taken, so no credit goes out, until every frame has arrived.
    if (sunk == 0) (void)marker->Next(Deadline::After(kAgentPatience));
    sunk += chunk.size();
    return Result<void>{};
  });
  JoinAgent();
  ASSERT_FALSE(info.has_value()) << "took " << sunk << " bytes beyond the window";
  ExpectBackend(info.error(), "window");
  EXPECT_LE(sunk, kFileWindow);
}

// Writing.

TEST_F(FilesTest, WriteSendsTheOpTheChunksAndAnEmptyEnd) {
  const Bytes content = Pattern(2 * proto::kMaxFileChunk + 12345, 3);
  std::optional<ReceivedOp> received;
  std::vector<proto::Frame> data_frames;
  RunAgent([&](FakeAgent& agent) {
    received = ReceiveFileOp(agent);
    while (auto frame = agent.Receive(proto::MessageType::kFileData)) {
      data_frames.push_back(*frame);
      if (frame->payload.empty()) break;
    }
    agent.Send(proto::EncodeDone(received ? received->id : 0));
    agent.DrainUntilClose();
  });
  size_t offset = 0;
  auto written = WriteFileChunks(
      *connection_, "/out.bin",
      [&](std::span<uint8_t> buf) -> Result<size_t> {
        size_t n = std::min(buf.size(), content.size() - offset);
        std::copy_n(content.begin() + static_cast<std::ptrdiff_t>(offset), n, buf.begin());
        offset += n;
        return n;
      },
      0600);
  JoinAgent();
  ASSERT_TRUE(written.has_value()) << written.error().ToString();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->op.kind, proto::FileOpKind::kWriteFile);
  EXPECT_EQ(received->op.path, "/out.bin");
  EXPECT_EQ(received->op.mode, 0600u);
  ASSERT_EQ(data_frames.size(), 4u);
  Bytes joined;
  for (const auto& frame : data_frames) {
    EXPECT_EQ(frame.header.request_id, received->id);
    EXPECT_LE(frame.payload.size(), proto::kMaxFileChunk);
    joined.insert(joined.end(), frame.payload.begin(), frame.payload.end());
  }
  EXPECT_TRUE(data_frames.back().payload.empty());
  EXPECT_EQ(joined, content);
}

TEST_F(FilesTest, WriteOfAnEmptyFileSendsOnlyTheEnd) {
  std::vector<proto::Frame> data_frames;
  RunAgent([&](FakeAgent& agent) {
    auto received = ReceiveFileOp(agent);
    if (auto frame = agent.Receive(proto::MessageType::kFileData)) data_frames.push_back(*frame);
    agent.Send(proto::EncodeDone(received ? received->id : 0));
    agent.DrainUntilClose();
  });
  auto written = WriteFileChunks(
      *connection_, "/empty", [](std::span<uint8_t>) -> Result<size_t> { return 0; }, 0644);
  JoinAgent();
  ASSERT_TRUE(written.has_value()) << written.error().ToString();
  ASSERT_EQ(data_frames.size(), 1u);
  EXPECT_TRUE(data_frames[0].payload.empty());
}

TEST_F(FilesTest, AnErrorReplyMidWriteStopsSending) {
  constexpr size_t kMaxCalls = 1000;
  std::vector<proto::Frame> after_error;
  RunAgent([&](FakeAgent& agent) {
    auto received = ReceiveFileOp(agent);
    uint32_t id = received ? received->id : 0;
    (void)agent.Receive(proto::MessageType::kFileData);
    agent.Send(proto::EncodeError(id, {ENOSPC, "/full/f", "No space left on device"}));
    after_error = agent.DrainUntilClose();
  });
  size_t calls = 0;
  // An endless source: only the agent's error can stop the write.
  auto written = WriteFileChunks(
      *connection_, "/full/f",
      [&](std::span<uint8_t> buf) -> Result<size_t> {
        if (++calls > kMaxCalls) return 0;
        std::fill(buf.begin(), buf.end(), uint8_t{'w'});
        return buf.size();
      },
      0644);
  JoinAgent();
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().kind(), ErrorKind::kGuestFile) << written.error().ToString();
  EXPECT_EQ(written.error().guest_file_kind(), GuestFileErrorKind::kNoSpace);
  EXPECT_LE(calls, kMaxCalls);
  for (const auto& frame : after_error) {
    EXPECT_EQ(frame.header.type, proto::MessageType::kFileData);
    EXPECT_FALSE(frame.payload.empty()) << "the end of the file was sent after the error";
  }
}

TEST_F(FilesTest, ASourceErrorAbortsTheWrite) {
  std::vector<proto::Frame> frames;
  RunAgent([&](FakeAgent& agent) {
    auto received = ReceiveFileOp(agent);
    uint32_t id = received ? received->id : 0;
    while (auto frame = agent.Receive()) {
      frames.push_back(*frame);
      if (frame->header.type == proto::MessageType::kSignal) break;
    }
    // As the agent does: drop the temporary file and fail the request.
    agent.Send(proto::EncodeError(id, {ECANCELED, "/f", "the transfer was abandoned"}));
    agent.DrainUntilClose();
  });
  size_t calls = 0;
  auto written = WriteFileChunks(
      *connection_, "/f",
      [&](std::span<uint8_t> buf) -> Result<size_t> {
        if (++calls == 1) {
          std::fill_n(buf.begin(), 5, uint8_t{'a'});
          return 5;
        }
        return Fail(Error::HostIo("read local file", EIO));
      },
      0644);
  JoinAgent();
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().kind(), ErrorKind::kHostIo) << written.error().ToString();
  EXPECT_EQ(written.error().errno_value(), EIO);
  EXPECT_EQ(calls, 2u);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].header.type, proto::MessageType::kFileData);
  EXPECT_EQ(frames[0].payload.size(), 5u);
  EXPECT_EQ(frames[1].header.type, proto::MessageType::kSignal);
  auto signal = proto::DecodeSignal(frames[1].payload);
  ASSERT_TRUE(signal.has_value());
  EXPECT_EQ(*signal, 15);
}

}  // namespace
}  // namespace vessel::sandbox
