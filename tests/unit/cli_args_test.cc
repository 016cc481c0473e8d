// The CLI's command line, parsed without running anything.
#include <gtest/gtest.h>

#include "cli/args.h"

namespace vessel::cli {
namespace {

using Args = std::vector<std::string>;

template <typename T>
T Parsed(const Args& args) {
  auto parsed = ParseArgs(args);
  if (auto* usage = std::get_if<UsageError>(&parsed)) {
    ADD_FAILURE() << usage->message;
    return {};
  }
  auto& invocation = std::get<Invocation>(parsed);
  EXPECT_TRUE(std::holds_alternative<T>(invocation));
  return std::holds_alternative<T>(invocation) ? std::get<T>(invocation) : T{};
}

std::string UsageMessage(const Args& args) {
  auto parsed = ParseArgs(args);
  auto* usage = std::get_if<UsageError>(&parsed);
  if (!usage) return "(parsed)";
  EXPECT_NE(usage->usage.find("usage"), std::string::npos);
  return usage->message;
}

TEST(CliArgsTest, RunTakesMachineAndExecOptionsThenTheCommand) {
  auto run = Parsed<RunArgs>({"run", "--memory", "512", "--vcpus", "2", "--timeout", "1.5", "--env",
                              "A=1", "--env", "B=2", "--cwd", "/tmp", "--engine", "qemu", "--",
                              "sh", "-c", "echo -- $A"});
  EXPECT_EQ(run.config.memory_mib, 512u);
  EXPECT_EQ(run.config.vcpus, 2u);
  EXPECT_EQ(run.config.engine, EngineKind::kQemu);
  EXPECT_EQ(run.options.timeout, std::chrono::milliseconds(1500));
  EXPECT_EQ(run.options.env, (std::vector<std::string>{"A=1", "B=2"}));
  EXPECT_EQ(run.options.cwd, "/tmp");
  EXPECT_EQ(run.command, (Args{"sh", "-c", "echo -- $A"}));
  // Without "--" the command starts at the first argument that is no option.
  EXPECT_EQ(Parsed<RunArgs>({"run", "uname", "-a"}).command, (Args{"uname", "-a"}));
  EXPECT_EQ(Parsed<RunArgs>({"run", "sh", "--", "x"}).command, (Args{"sh", "--", "x"}));
}

TEST(CliArgsTest, ExecTakesOptionsBeforeAndAfterTheSandbox) {
  auto exec = Parsed<ExecArgs>({"exec", "--env", "A=1", "box", "--timeout", "1", "--", "true"});
  EXPECT_EQ(exec.target, "box");
  EXPECT_EQ(exec.options.env, (Args{"A=1"}));
  EXPECT_EQ(exec.command, (Args{"true"}));
  EXPECT_TRUE(exec.options.stdin_data.has_value());
  EXPECT_FALSE(Parsed<ExecArgs>({"exec", "--no-stdin", "box", "true"}).options.stdin_data);
}

TEST(CliArgsTest, BadNumbersAreUsageErrorsThatSayWhatIsWanted) {
  EXPECT_EQ(UsageMessage({"run", "--memory", "lots", "--", "true"}),
            "--memory wants a number of MiB, not lots");
  EXPECT_EQ(UsageMessage({"run", "--vcpus", "-1", "--", "true"}), "--vcpus wants a number, not -1");
  EXPECT_EQ(UsageMessage({"exec", "box", "--timeout", "0", "--", "true"}),
            "--timeout wants a positive number of seconds, not 0");
  EXPECT_EQ(UsageMessage({"create", "--memory", "12x"}), "--memory wants a number of MiB, not 12x");
  EXPECT_EQ(UsageMessage({"run", "--engine", "bochs", "--", "true"}),
            "--engine wants qemu, kvm or auto, not bochs");
}

TEST(CliArgsTest, UnknownOptionsCommandsAndMissingArgumentsAreUsageErrors) {
  EXPECT_EQ(UsageMessage({"run", "--frob", "3", "--", "true"}), "unknown option --frob");
  EXPECT_EQ(UsageMessage({"frobnicate"}), "unknown command frobnicate");
  EXPECT_NE(UsageMessage({"ls", "--frob"}).find("--frob"), std::string::npos);
  EXPECT_EQ(UsageMessage({"run"}), "run needs a command");
  EXPECT_EQ(UsageMessage({"exec", "box"}), "exec needs a command");
  EXPECT_NE(UsageMessage({"cp", "a"}), "(parsed)");
  EXPECT_NE(UsageMessage({"rm"}), "(parsed)");
  EXPECT_NE(UsageMessage({"snapshot", "verify"}), "(parsed)");
  EXPECT_NE(UsageMessage({"fork"}), "(parsed)");
  EXPECT_NE(UsageMessage({}), "(parsed)");
}

TEST(CliArgsTest, SnapshotVerifyRestoreAndForkParse) {
  auto snapshot = Parsed<SnapshotArgs>({"snapshot", "box", "dir"});
  EXPECT_EQ(snapshot.target, "box");
  EXPECT_EQ(Parsed<VerifyArgs>({"snapshot", "verify", "dir"}).dir, "dir");
  auto restore = Parsed<RestoreArgs>({"restore", "dir", "--name", "n", "--engine", "kvm"});
  EXPECT_EQ(restore.dir, "dir");
  EXPECT_EQ(restore.name, "n");
  EXPECT_EQ(restore.engine, EngineKind::kKvm);
  // The count is checked by the command, against the library's limit.
  EXPECT_EQ(Parsed<ForkArgs>({"fork", "box", "-n", "abc"}).count, "abc");
  EXPECT_EQ(Parsed<ForkArgs>({"fork", "box"}).count, "1");
  EXPECT_TRUE(Parsed<ListArgs>({"ls", "--json"}).json);
  EXPECT_EQ(Parsed<RemoveArgs>({"rm", "a", "b"}).targets, (Args{"a", "b"}));
  // The last of an option given twice wins.
  EXPECT_EQ(Parsed<CreateArgs>({"create", "--engine", "qemu", "--engine", "kvm"}).config.engine,
            EngineKind::kKvm);
  EXPECT_NE(Parsed<HelpArgs>({"--help"}).text.find("usage"), std::string::npos);
}

TEST(CliArgsTest, AllowNetTakesCommaSeparatedAndRepeatedRules) {
  auto create = Parsed<CreateArgs>(
      {"create", "--allow-net", "example.com,*.example.org:8080", "--allow-net", "127.0.0.1:80"});
  EXPECT_EQ(create.config.network.allow,
            (Args{"example.com", "*.example.org:8080", "127.0.0.1:80"}));
  EXPECT_TRUE(Parsed<RunArgs>({"run", "true"}).config.network.allow.empty());
  EXPECT_EQ(UsageMessage({"create", "--allow-net", "a.example,,b.example"}),
            "--allow-net has an empty rule in 'a.example,,b.example'");
}

TEST(CliArgsTest, RestoreKeepsOrReplacesTheSnapshotsAllowlist) {
  EXPECT_FALSE(Parsed<RestoreArgs>({"restore", "dir"}).allow_net.has_value());
  auto replaced = Parsed<RestoreArgs>(
      {"restore", "dir", "--allow-net", "a.example,b.example:8443", "--allow-net", "c.example"});
  EXPECT_EQ(replaced.allow_net, (Args{"a.example", "b.example:8443", "c.example"}));
  EXPECT_EQ(Parsed<RestoreArgs>({"restore", "dir", "--no-net"}).allow_net, Args{});
  EXPECT_NE(
      UsageMessage({"restore", "dir", "--no-net", "--allow-net", "a.example"}).find("excludes"),
      std::string::npos);
}

TEST(CliArgsTest, NetShowsAllowsAndDeniesRules) {
  auto show = Parsed<NetArgs>({"net", "box"});
  EXPECT_EQ(show.target, "box");
  EXPECT_TRUE(show.allow.empty());
  EXPECT_TRUE(show.deny.empty());
  EXPECT_FALSE(show.json);
  EXPECT_TRUE(Parsed<NetArgs>({"net", "box", "--json"}).json);
  EXPECT_TRUE(Parsed<NetArgs>({"net", "--json", "box"}).json);

  // Rules come one per argument, comma-separated, or both.
  auto allow = Parsed<NetArgs>({"net", "allow", "box", "example.com,*.example.org", "[::1]:3000"});
  EXPECT_EQ(allow.target, "box");
  EXPECT_EQ(allow.allow, (Args{"example.com", "*.example.org", "[::1]:3000"}));
  EXPECT_TRUE(allow.deny.empty());
  auto deny = Parsed<NetArgs>({"net", "deny", "--json", "box", "127.0.0.1:8080"});
  EXPECT_EQ(deny.target, "box");
  EXPECT_EQ(deny.deny, (Args{"127.0.0.1:8080"}));
  EXPECT_TRUE(deny.allow.empty());
  EXPECT_TRUE(deny.json);
  EXPECT_TRUE(Parsed<NetArgs>({"net", "allow", "box", "example.com", "--json"}).json);

  EXPECT_EQ(UsageMessage({"net"}), "net wants a sandbox id or name");
  EXPECT_NE(UsageMessage({"net", "allow", "box"}), "(parsed)");
  EXPECT_NE(UsageMessage({"net", "deny"}), "(parsed)");
  EXPECT_EQ(UsageMessage({"net", "deny", "box", "a.example,"}),
            "net deny has an empty rule in 'a.example,'");
  EXPECT_NE(UsageMessage({"net", "box", "--frob"}).find("--frob"), std::string::npos);
}

}  // namespace
}  // namespace vessel::cli
