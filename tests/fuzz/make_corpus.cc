// Writes the seed corpora of the fuzz targets with the real encoders, so the seeds follow
// the wire format when it changes. Usage: make_corpus DIR (DIR is tests/fuzz/corpus).
//
// A seed is one split byte (see frame_fuzzer.h) and a stream of frames: a typical
// conversation, so the fuzzer starts from well-formed frames of every type.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "protocol/wire.h"

namespace vessel::protocol {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes Seed(uint8_t split, std::initializer_list<Bytes> frames) {
  Bytes seed = {split};
  for (const Bytes& frame : frames) seed.insert(seed.end(), frame.begin(), frame.end());
  return seed;
}

Bytes Text(std::string_view s) { return Bytes(s.begin(), s.end()); }

// Header bytes the reader must reject: an unknown type, an oversize payload.
Bytes BadHeader(uint8_t type, uint32_t payload_size) {
  Bytes b(kHeaderSize, 0);
  for (size_t i = 0; i < 4; ++i) b[i] = static_cast<uint8_t>(payload_size >> (8 * i));
  b[4] = type;
  return b;
}

ExecRequest Exec(std::vector<std::string> argv, bool stdin_pipe) {
  ExecRequest req;
  req.argv = std::move(argv);
  req.env = {"PATH=/usr/bin:/bin", "HOME=/root"};
  req.cwd = "/tmp";
  req.timeout_ms = 5000;
  req.output_cap = 1 << 20;
  req.stdin_pipe = stdin_pipe;
  req.window = 65536;
  return req;
}

FileOp Op(FileOpKind kind, std::string path, std::string target = {}) {
  FileOp op;
  op.kind = kind;
  op.path = std::move(path);
  op.target = std::move(target);
  return op;
}

std::vector<std::pair<std::string, Bytes>> HostSeeds() {
  Bytes out = Text("hello\n");
  return {
      {"hello", Seed(0, {EncodeHello({kVersion, "vessel-agent 0.1.0"})})},
      {"exec_output", Seed(0, {EncodeStarted(1, {42}), EncodeOutput(1, Stream::kStdout, out),
                               EncodeOutput(1, Stream::kStderr, Text("warning\n")),
                               EncodeExited(1, {ExitHow::kExited, 0, false, false})})},
      {"exec_output_split", Seed(7, {EncodeStarted(1, {42}), EncodeOutput(1, Stream::kStdout, out),
                                     EncodeExited(1, {ExitHow::kExited, 3, false, false})})},
      {"exec_signaled",
       Seed(3, {EncodeStarted(2, {100}), EncodeExited(2, {ExitHow::kSignaled, 9, true, true})})},
      {"exec_timed_out", Seed(0, {EncodeExited(3, {ExitHow::kTimedOut, 9, false, true})})},
      {"exec_stdin_credit", Seed(5, {EncodeStarted(4, {7}), EncodeCredit(4, {Stream::kStdin, 4096}),
                                     EncodeOutput(4, Stream::kStdout, out), EncodeExited(4, {})})},
      {"error", Seed(0, {EncodeError(5, {2, "/no/such", "command: No such file or directory"})})},
      {"error_protocol", Seed(1, {EncodeError(0, {71, "", "malformed exec request: truncated"})})},
      {"stat",
       Seed(0, {EncodeFileInfo(6, {FileType::kRegular, 0644, 12, 1700000000, ""}), EncodeDone(6)})},
      {"list_dir",
       Seed(2, {EncodeFileInfo(7, {FileType::kDirectory, 0755, 4096, 1700000000, "etc"}),
                EncodeFileInfo(7, {FileType::kSymlink, 0777, 7, -1, "bin"}),
                EncodeFileInfo(7, {FileType::kOther, 0600, 0, 0, "null"}), EncodeDone(7)})},
      {"read_file", Seed(9, {EncodeFileInfo(8, {FileType::kRegular, 0600, 11, 5, ""}),
                             EncodeFileData(8, Text("hello ")), EncodeFileData(8, Text("world")),
                             EncodeDone(8)})},
      {"write_file", Seed(0, {EncodeCredit(9, {Stream::kFile, 65536}), EncodeDone(9)})},
      {"pong", Seed(0, {EncodePong(10)})},
      {"quiesce_resume", Seed(2, {EncodeOutput(1, Stream::kStdout, out), EncodeDone(13),
                                  EncodeHello(14, {kVersion, "vessel-agent 0.1.0"}),
                                  EncodeExited(1, {ExitHow::kExited, 0, false, false})})},
      {"bad_type", Seed(0, {EncodePong(11), BadHeader(kLastMessageType + 1, 0)})},
      {"bad_size", Seed(4, {EncodeDone(12), BadHeader(3, kMaxPayload + 1)})},
      {"truncated", Seed(0, {EncodeHello({kVersion, "vessel-agent"}), Bytes{40, 0, 0, 0, 3}})},
  };
}

std::vector<std::pair<std::string, Bytes>> AgentSeeds() {
  return {
      {"exec", Seed(0, {EncodeExec(1, Exec({"uname", "-a"}, false))})},
      {"exec_split", Seed(11, {EncodeExec(1, Exec({"/bin/sh", "-c", "echo hi >&2"}, false))})},
      {"exec_stdin",
       Seed(6, {EncodeExec(2, Exec({"cat"}, true)), EncodeStdin(2, Text("line one\n")),
                EncodeStdin(2, Text("line two\n")), EncodeStdin(2, {})})},
      {"exec_credit_signal",
       Seed(0, {EncodeExec(3, Exec({"yes"}, false)), EncodeCredit(3, {Stream::kStdout, 65536}),
                EncodeCredit(3, {Stream::kStderr, 1}), EncodeSignal(3, 15)})},
      {"ping", Seed(0, {EncodePing(4)})},
      {"stat", Seed(0, {EncodeFileOp(5, Op(FileOpKind::kStat, "/etc/hostname"))})},
      {"list_dir", Seed(1, {EncodeFileOp(6, Op(FileOpKind::kListDir, "/etc"))})},
      {"make_dir", Seed(0, {EncodeFileOp(7,
                                         [] {
                                           FileOp op = Op(FileOpKind::kMakeDir, "/tmp/a/b/c");
                                           op.mode = 0700;
                                           op.flags = kFlagParents;
                                           return op;
                                         }())})},
      {"remove", Seed(2, {EncodeFileOp(8,
                                       [] {
                                         FileOp op = Op(FileOpKind::kRemove, "/tmp/a");
                                         op.flags = kFlagRecursive;
                                         return op;
                                       }())})},
      {"rename", Seed(0, {EncodeFileOp(9, Op(FileOpKind::kRename, "/tmp/x", "/tmp/y"))})},
      {"read_file", Seed(3, {EncodeFileOp(10, Op(FileOpKind::kReadFile, "/etc/os-release")),
                             EncodeCredit(10, {Stream::kFile, 65536})})},
      {"write_file", Seed(8, {EncodeFileOp(11, Op(FileOpKind::kWriteFile, "/tmp/out.txt")),
                              EncodeFileData(11, Text("contents\n")), EncodeFileData(11, {})})},
      {"quiesce_resume",
       Seed(4, {EncodeQuiesce(14),
                EncodeResume(15, {true, 1'700'000'000'123'456'789, Bytes(64, 0xa5)})})},
      {"resume_parent", Seed(0, {EncodeQuiesce(16), EncodeResume(17, {false, 42, {}})})},
      {"bad_type", Seed(0, {EncodePing(12), BadHeader(0, 0)})},
      {"truncated", Seed(5, {EncodePing(13), Bytes{9, 0, 0, 0, 2, 0, 0}})},
  };
}

bool WriteAll(const std::filesystem::path& dir,
              const std::vector<std::pair<std::string, Bytes>>& seeds) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    std::fprintf(stderr, "make_corpus: %s: %s\n", dir.c_str(), ec.message().c_str());
    return false;
  }
  for (const auto& [name, bytes] : seeds) {
    std::ofstream file(dir / name, std::ios::binary | std::ios::trunc);
    file.write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    if (!file) {
      std::fprintf(stderr, "make_corpus: cannot write %s\n", (dir / name).c_str());
      return false;
    }
  }
  return true;
}

}  // namespace
}  // namespace vessel::protocol

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus DIR\n");
    return 2;
  }
  std::filesystem::path dir = argv[1];
  bool ok = vessel::protocol::WriteAll(dir / "fuzz_host_frames", vessel::protocol::HostSeeds()) &&
            vessel::protocol::WriteAll(dir / "fuzz_agent_frames", vessel::protocol::AgentSeeds());
  return ok ? 0 : 1;
}
