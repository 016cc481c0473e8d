// Root images on real VMs: the python image (built once per run by the image_python ctest
// fixture, cached by recipe), and what a damaged or missing image does to a create.
#include "image/image.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "base/subprocess.h"
#include "snapshot/snapshot.h"
#include "vessel/pool.h"
#include "vm_test_env.h"

namespace vessel {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// This host's snapshot key, as the library uses it.
const snapshot::HostKey& HostKey() {
  static const snapshot::HostKey key = snapshot::ThisHostKey().value();
  return key;
}

constexpr const char* kPython = "python";

// A directory removed with the test.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/vessel-image-test-XXXXXX";
    path_ = ::mkdtemp(pattern);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Points Store::Default() (and so every sandbox) at `dir` while it lives.
class ScopedImageStore {
 public:
  explicit ScopedImageStore(const std::string& cache_dir) {
    if (const char* old = std::getenv("VESSEL_CACHE_DIR")) old_ = old;
    ::setenv("VESSEL_CACHE_DIR", cache_dir.c_str(), 1);
  }
  ~ScopedImageStore() {
    if (old_) {
      ::setenv("VESSEL_CACHE_DIR", old_->c_str(), 1);
    } else {
      ::unsetenv("VESSEL_CACHE_DIR");
    }
  }

 private:
  std::optional<std::string> old_;
};

SandboxConfig PythonConfig() {
  SandboxConfig config = testing::TestConfig();
  config.image = kPython;
  config.memory_mib = 512;
  return config;
}

std::string Sh(Sandbox& sandbox, const std::string& script,
               std::chrono::milliseconds timeout = 120s) {
  ExecOptions options;
  options.timeout = timeout;
  auto result = sandbox.Execute(Command::Shell(script), options);
  EXPECT_TRUE(result.has_value()) << result.error().ToString();
  if (!result) return {};
  EXPECT_TRUE(result->ok()) << script << "\nstdout: " << result->stdout_data
                            << "\nstderr: " << result->stderr_data;
  return result->stdout_data;
}

class PythonImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto found = image::Store::Default().Find(kPython);
    ASSERT_TRUE(found.has_value())
        << "the python image is missing: `build/vessel image build python` (ctest's "
           "image_python fixture) makes it\n"
        << found.error().ToString();
    digest_ = found->digest;
    blob_ = image::Store::Default().BlobPath(digest_);
  }
  std::string digest_;
  std::string blob_;  // the python image's file
};

TEST_F(PythonImageTest, RunsPythonWithNumpyAndRequests) {
  auto sandbox = testing::MustCreate(PythonConfig());
  ASSERT_TRUE(sandbox);
  EXPECT_EQ(Sh(*sandbox, "python3 -c 'import numpy, requests; print(numpy.arange(3).sum(), "
                         "requests.__name__)'"),
            "3 requests\n");
  // The image's userland and environment, not the initramfs's busybox.
  EXPECT_EQ(Sh(*sandbox, "echo $HOME $LANG; test -f /etc/debian_version && echo debian"),
            "/root C.UTF-8\ndebian\n");
  // The root is writable (the overlay), the disk under it is not.
  EXPECT_EQ(Sh(*sandbox, "echo hi > /usr/local/written && cat /usr/local/written"), "hi\n");
  EXPECT_EQ(Sh(*sandbox, "cat /sys/block/vda/ro"), "1\n");
  auto write_disk = sandbox->Execute(Command::Shell("echo x | dd of=/dev/vda 2>&1"));
  ASSERT_TRUE(write_disk.has_value()) << write_disk.error().ToString();
  EXPECT_FALSE(write_disk->ok()) << write_disk->stdout_data;
}

// An HTTPS origin on the host's 127.0.0.1 with a certificate of a test CA made for the
// test: the openssl tool makes the keys, the host's python3 serves `dir`.
class HttpsOrigin {
 public:
  explicit HttpsOrigin(const std::string& dir) : dir_(dir) {
    std::string script = fmt::format(
        "set -e; cd {0}; exec >openssl.log 2>&1\n"
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
        "-subj '/CN=Vessel test CA' -keyout ca.key -out ca.pem\n"
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-subj '/CN=127.0.0.1' -keyout origin.key -out origin.csr\n"
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > origin.ext\n"
        "openssl x509 -req -in origin.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
        "-extfile origin.ext -out origin.pem\n"
        "mkdir www; echo 'hello over TLS' > www/hello.txt\n",
        dir);
    EXPECT_EQ(std::system(script.c_str()), 0) << ReadAll(dir + "/openssl.log");
    std::ofstream(dir + "/serve.py") << R"(import http.server, ssl, sys
httpd = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1] + '/origin.pem', sys.argv[1] + '/origin.key')
httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
)";
    auto spawned = Subprocess::Spawn(
        {.argv = {"/bin/sh", "-c", fmt::format("cd {0}/www && exec python3 ../serve.py {0}", dir)},
         .output_path = dir + "/serve.log"});
    EXPECT_TRUE(spawned.has_value()) << spawned.error().ToString();
    if (spawned) server_ = std::move(*spawned);
    for (int i = 0; i < 200 && port_ == 0; ++i) {
      std::string log = ReadAll(dir + "/serve.log");
      if (log.find('\n') != std::string::npos) port_ = std::atoi(log.c_str());
      std::this_thread::sleep_for(50ms);
    }
    EXPECT_NE(port_, 0) << ReadAll(dir + "/serve.log");
  }

  [[nodiscard]] std::string host() const { return fmt::format("127.0.0.1:{}", port_); }
  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] std::string ca() const { return ReadAll(dir_ + "/ca.pem"); }
  [[nodiscard]] std::string log() const { return ReadAll(dir_ + "/serve.log"); }

 private:
  static std::string ReadAll(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  std::string dir_;
  Subprocess server_;
  int port_ = 0;
};

// HTTPS is tunnelled, never intercepted: the guest's Python checks the origin's
// certificate against the CA store it is given, through the host's CONNECT proxy.
TEST_F(PythonImageTest, HttpsGoesThroughTheProxyAndTheGuestChecksTheOrigin) {
  TempDir dir;
  HttpsOrigin origin(dir.path());
  SandboxConfig config = PythonConfig();
  config.network.allow = {origin.host()};
  auto sandbox = testing::MustCreate(config);
  ASSERT_TRUE(sandbox);
  ASSERT_TRUE(sandbox->WriteFile("/tmp/test-ca.pem", origin.ca()).has_value());
  // The guest's own 127.0.0.1 is in NO_PROXY; this origin is the host's, so the scripts
  // clear it to go through the proxy as any other host would.
  std::string fetch = fmt::format(
      "NO_PROXY= no_proxy= python3 - <<'EOF'\n"
      "import ssl, urllib.error, urllib.request\n"
      "try:\n"
      "    print(urllib.request.urlopen('https://{}/hello.txt', timeout=30).read().decode(), "
      "end='')\n"
      "except urllib.error.URLError as e:\n"
      "    print('failed:', e.reason)\n"
      "EOF",
      origin.host());
  EXPECT_EQ(Sh(*sandbox, "SSL_CERT_FILE=/tmp/test-ca.pem " + fetch), "hello over TLS\n")
      << origin.log();
  // requests too, with its own CA setting.
  EXPECT_EQ(Sh(*sandbox, fmt::format("NO_PROXY= no_proxy= REQUESTS_CA_BUNDLE=/tmp/test-ca.pem "
                                     "python3 -c \"import requests; "
                                     "print(requests.get('https://{}/hello.txt').text, end='')\"",
                                     origin.host())),
            "hello over TLS\n");
  // Without the test CA the guest refuses the origin's certificate itself.
  EXPECT_NE(Sh(*sandbox, fetch).find("CERTIFICATE_VERIFY_FAILED"), std::string::npos);
  // A host not in the allowlist gets no tunnel.
  ASSERT_TRUE(sandbox->SetNetwork({}).has_value());
  EXPECT_NE(Sh(*sandbox, "SSL_CERT_FILE=/tmp/test-ca.pem " + fetch).find("403"), std::string::npos);
  NetworkStats stats = sandbox->network_stats();
  EXPECT_EQ(stats.allowed, 3u);
  EXPECT_GE(stats.refused, 1u);
  EXPECT_GT(stats.bytes_received, 0u);

  // A tunnel to an allowed name carries a ClientHello for that name, and no other.
  // (localhost resolves to the host's 127.0.0.1, which a rule must allow as an address.)
  ASSERT_TRUE(
      sandbox->SetNetwork({.allow = {fmt::format("localhost:{}", origin.port()), origin.host()}})
          .has_value());
  std::string tunnel = fmt::format(R"(python3 - <<'EOF'
import socket, ssl
def tunnel(server_name):
    s = socket.create_connection(('127.0.0.1', 3128))
    s.sendall(b'CONNECT localhost:{0} HTTP/1.1\r\nHost: localhost:{0}\r\n\r\n')
    head = b''
    while b'\r\n\r\n' not in head and (byte := s.recv(1)):
        head += byte
    status = head.split(b'\r\n')[0].decode()
    context = ssl.create_default_context(cafile='/tmp/test-ca.pem')
    context.check_hostname = False
    try:
        t = context.wrap_socket(s, server_hostname=server_name)
        t.sendall(b'GET /hello.txt HTTP/1.0\r\nHost: localhost\r\n\r\n')
        answer = b''
        while chunk := t.recv(4096):
            answer += chunk
        return status + ' | ' + answer.split(b'\r\n\r\n', 1)[1].decode().strip()
    except OSError as e:
        return status + ' | ' + type(e).__name__
print(tunnel('localhost'))
print(tunnel('other.example'))
EOF)",
                                   origin.port());
  std::string lines = Sh(*sandbox, tunnel);
  EXPECT_EQ(lines.substr(0, lines.find('\n') + 1),
            "HTTP/1.1 200 Connection established | hello over TLS\n")
      << lines;
  EXPECT_EQ(lines.find("hello over TLS", lines.find('\n')), std::string::npos) << lines;
  EXPECT_NE(lines.find("\nHTTP/1.1 200 Connection established | "), std::string::npos) << lines;
  stats = sandbox->network_stats();
  ASSERT_FALSE(stats.recent_refusals.empty());
  EXPECT_EQ(stats.recent_refusals.back(),
            "cut localhost: its TLS ClientHello asks for another server, other.example");
}

TEST_F(PythonImageTest, PipInstallsALocalWheelIntoAVenvWithoutNetwork) {
  auto sandbox = testing::MustCreate(PythonConfig());
  ASSERT_TRUE(sandbox);
  // A wheel made in the guest: one module and the metadata pip needs.
  Sh(*sandbox, R"(cd /tmp && python3 - <<'EOF'
import base64, hashlib, zipfile
files = {
  "hello_vessel.py": "ANSWER = 42\n",
  "hello_vessel-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: hello-vessel\nVersion: 1.0\n",
  "hello_vessel-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile("hello_vessel-1.0-py3-none-any.whl", "w") as wheel:
  for name, text in files.items():
    wheel.writestr(name, text)
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(text)}")
  record.append("hello_vessel-1.0.dist-info/RECORD,,")
  wheel.writestr("hello_vessel-1.0.dist-info/RECORD", "\n".join(record) + "\n")
EOF
)");
  Sh(*sandbox,
     "python3 -m venv /tmp/venv && /tmp/venv/bin/pip install --no-index --no-cache-dir -q "
     "/tmp/hello_vessel-1.0-py3-none-any.whl",
     240s);
  EXPECT_EQ(Sh(*sandbox, "/tmp/venv/bin/python -c 'import hello_vessel; print(hello_vessel.ANSWER)'"),
            "42\n");
}

TEST_F(PythonImageTest, OverlayWritesSurviveSnapshotsAndDivergeAcrossForks) {
  TempDir snapshots;
  auto sandbox = testing::MustCreate(PythonConfig());
  ASSERT_TRUE(sandbox);
  Sh(*sandbox, "echo before > /opt/state");
  std::string dir = snapshots.path() + "/snap";
  ASSERT_TRUE(sandbox->Snapshot(dir).has_value());
  auto manifest = snapshot::Open(dir, snapshot::Depth::kRestore, HostKey());
  ASSERT_TRUE(manifest.has_value()) << manifest.error().ToString();
  EXPECT_EQ(manifest->manifest.image_digest, digest_);
  EXPECT_EQ(manifest->manifest.image_name, kPython);

  auto restored = Sandbox::Restore(dir);
  ASSERT_TRUE(restored.has_value()) << restored.error().ToString();
  EXPECT_EQ(Sh(**restored, "cat /opt/state"), "before\n");
  EXPECT_EQ(Sh(**restored, "python3 -c 'print(2**10)'"), "1024\n");

  auto forks = sandbox->Fork(2);
  ASSERT_TRUE(forks.has_value()) << forks.error().ToString();
  Sh(*(*forks)[0], "echo first > /opt/state");
  Sh(*(*forks)[1], "echo second > /opt/state");
  EXPECT_EQ(Sh(*(*forks)[0], "cat /opt/state"), "first\n");
  EXPECT_EQ(Sh(*(*forks)[1], "cat /opt/state"), "second\n");
  EXPECT_EQ(Sh(*sandbox, "cat /opt/state"), "before\n");

  // The image itself is what it was: every write went to guest RAM.
  auto record = image::Store::Default().Find(kPython);
  ASSERT_TRUE(record.has_value());
  auto now = snapshot::FileSha256(image::Store::Default().BlobPath(digest_));
  ASSERT_TRUE(now.has_value());
  EXPECT_EQ("sha256:" + *now, digest_);
}

TEST_F(PythonImageTest, RemovingAnImageInUseIsRefused) {
  // A second name on the same image, so that removing it would delete nothing else's.
  TempDir cache;
  ScopedImageStore scoped(cache.path());
  image::Store store = image::Store::Default();
  std::string copy = cache.path() + "/copy.erofs";
  fs::copy_file(blob_, copy);
  ASSERT_TRUE(fs::exists(copy));
  image::ImageRecord record;
  record.name = "inuse";
  auto added = store.Add(copy, record);
  ASSERT_TRUE(added.has_value()) << added.error().ToString();

  SandboxConfig config = PythonConfig();
  config.image = "inuse";
  auto sandbox = testing::MustCreate(config);
  ASSERT_TRUE(sandbox);
  auto refused = store.Remove("inuse");
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(refused.error().message().find("in use by a running sandbox"), std::string::npos)
      << refused.error().message();
  EXPECT_EQ(Sh(*sandbox, "python3 -c 'print(1)'"), "1\n");
  sandbox.reset();
  EXPECT_TRUE(store.Remove("inuse").has_value());
  EXPECT_FALSE(fs::exists(store.BlobPath(added->digest)));
}

TEST_F(PythonImageTest, APoolHandsOutIsolatedVms) {
  PoolConfig config;
  config.vm_template = PythonConfig();
  config.min_idle = 1;
  config.max_idle = 1;
  config.max_total = 2;
  auto pool = VmPool::Create(config);
  ASSERT_TRUE(pool.has_value()) << pool.error().ToString();
  {
    auto first = (*pool)->Acquire();
    ASSERT_TRUE(first.has_value()) << first.error().ToString();
    auto wrote = (*first)->Execute(Command::Shell("echo secret > /root/holder1 && python3 -c 'print(7)'"));
    ASSERT_TRUE(wrote.has_value()) << wrote.error().ToString();
    EXPECT_EQ(wrote->stdout_data, "7\n");
  }
  auto second = (*pool)->Acquire();
  ASSERT_TRUE(second.has_value()) << second.error().ToString();
  auto looked = (*second)->Execute(Command::Shell("ls /root; cat /root/holder1 2>&1; true"));
  ASSERT_TRUE(looked.has_value()) << looked.error().ToString();
  EXPECT_EQ(looked->stdout_data.find("secret"), std::string::npos) << looked->stdout_data;
  EXPECT_NE(looked->stdout_data.find("No such file"), std::string::npos) << looked->stdout_data;
}

// What `cmd` prints on stdout, and its exit status.
std::pair<int, std::string> Shell(const std::string& cmd) {
  TempDir dir;
  std::string out = dir.path() + "/out";
  int status = std::system((cmd + " >" + out).c_str());
  std::ifstream in(out);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
}

TEST_F(PythonImageTest, TheCliRunsAndCreatesSandboxesOnAnImage) {
  std::string cli = fmt::format("{} ", VESSEL_CLI);
  std::string engine = fmt::format(" --engine {} ", testing::TestEngineName());
  auto run = Shell(cli + "run" + engine + "--memory 512 --image python -- python3 -c 'print(6*7)'");
  EXPECT_EQ(run, std::make_pair(0, std::string("42\n")));

  auto created = Shell(cli + "create" + engine + "--memory 512 --image python --overlay 64 --name pybox");
  ASSERT_EQ(created.first, 0);
  auto df = Shell(cli + "exec --no-stdin pybox -- sh -c \"df -m / | tail -1 | awk '{print \\$2}'\"");
  EXPECT_EQ(df, std::make_pair(0, std::string("64\n")));
  auto python = Shell(cli + "exec --no-stdin pybox -- python3 -c 'import numpy; print(numpy.__name__)'");
  EXPECT_EQ(python, std::make_pair(0, std::string("numpy\n")));
  EXPECT_EQ(Shell(cli + "rm pybox").first, 0);

  auto listed = Shell(cli + "image ls --json");
  ASSERT_EQ(listed.first, 0);
  EXPECT_NE(listed.second.find("\"digest\": \"" + digest_ + "\""), std::string::npos) << listed.second;
  testing::ExpectNothingLeft();
}

TEST(ImageBadInputTest, AnUnknownImageListsTheOnesThatExist) {
  TempDir cache;
  ScopedImageStore scoped(cache.path());
  SandboxConfig config = testing::TestConfig();
  config.image = "nosuchimage";
  auto created = Sandbox::Create(config);
  ASSERT_FALSE(created.has_value());
  EXPECT_EQ(created.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(created.error().subject(), "image");
  EXPECT_NE(created.error().message().find("no image named 'nosuchimage'"), std::string::npos)
      << created.error().message();
  testing::ExpectNothingLeft();
}

TEST(ImageBadInputTest, AnOverlayWithoutAnImageIsRefused) {
  SandboxConfig config = testing::TestConfig();
  config.overlay_mib = 64;
  auto created = Sandbox::Create(config);
  ASSERT_FALSE(created.has_value());
  EXPECT_EQ(created.error().subject(), "overlay_mib");
}

// An image whose bytes are no erofs (garbage, or a real image cut short): the guest's
// mount fails, and the create reports the guest's message at once, not a boot timeout.
TEST(ImageBadInputTest, ACorruptOrTruncatedImageFailsWithTheGuestsMessage) {
  TempDir cache;
  ScopedImageStore scoped(cache.path());
  image::Store store = image::Store::Default();
  struct Case {
    const char* name;
    std::function<void(const std::string&)> make;
  };
  std::vector<Case> cases = {
      {"garbage",
       [](const std::string& path) {
         std::ofstream out(path, std::ios::binary);
         for (int i = 0; i < 1 << 20; ++i) out.put(static_cast<char>((i * 7919) & 0xff));
       }},
      {"truncated",
       [](const std::string& path) {
         // A real image cut inside its first block: the superblock is there, the rest not.
         TempDir tree;
         fs::create_directories(tree.path() + "/bin");
         fs::copy_file("/bin/busybox", tree.path() + "/bin/busybox");
         fs::create_symlink("busybox", tree.path() + "/bin/sh");
         std::string full = path + ".full";
         ASSERT_EQ(std::system(fmt::format("mkfs.erofs --quiet {} {}", full, tree.path()).c_str()), 0);
         fs::resize_file(full, 2048);
         fs::rename(full, path);
       }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string file = cache.path() + "/" + c.name + ".erofs";
    c.make(file);
    image::ImageRecord record;
    record.name = c.name;
    ASSERT_TRUE(store.Add(file, record).has_value());
    SandboxConfig config = testing::TestConfig();
    config.image = c.name;
    auto started = std::chrono::steady_clock::now();
    auto created = Sandbox::Create(config);
    auto took = std::chrono::steady_clock::now() - started;
    ASSERT_FALSE(created.has_value());
    EXPECT_FALSE(created.error().timed_out()) << created.error().ToString();
    EXPECT_NE(created.error().message().find("cannot boot the root image: "), std::string::npos)
        << created.error().message();
    EXPECT_LT(took, config.boot_timeout);
  }
  testing::ExpectNothingLeft();
}

// `image build` through the CLI: an unknown Debian package fails naming it and leaves
// nothing behind; two concurrent builds of one recipe build once.
TEST(ImageBuildTest, UnknownPackagesFailAndConcurrentBuildsBuildOnce) {
  TempDir cache;
  ScopedImageStore scoped(cache.path());
  image::Store store = image::Store::Default();
  auto missing = image::Build(store, "broken", image::Recipe{.packages = {"no-such-package-vessel"}},
                              {});
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kInvalidConfig) << missing.error().ToString();
  EXPECT_NE(missing.error().message().find("no-such-package-vessel"), std::string::npos)
      << missing.error().message();
  EXPECT_TRUE(store.List().value_or(std::vector<image::ImageRecord>{{}}).empty());
  EXPECT_TRUE(fs::is_empty(store.root() + "/tmp"));
  EXPECT_TRUE(fs::is_empty(store.root() + "/blobs"));

  Result<image::BuildResult> results[2] = {Fail(Error::Backend("not run")),
                                           Fail(Error::Backend("not run"))};
  std::thread builders[2];
  for (int i = 0; i < 2; ++i) {
    builders[i] = std::thread([&, i] {
      results[i] = image::Build(store, fmt::format("base{}", i), *image::BuiltinRecipe("debian"), {});
    });
  }
  for (auto& b : builders) b.join();
  ASSERT_TRUE(results[0].has_value()) << results[0].error().ToString();
  ASSERT_TRUE(results[1].has_value()) << results[1].error().ToString();
  EXPECT_NE(results[0]->cached, results[1]->cached);
  EXPECT_EQ(results[0]->record.digest, results[1]->record.digest);
  EXPECT_EQ(store.List()->size(), 2u);
  // One image file for both names.
  size_t blobs = 0;
  for (const auto& e : fs::directory_iterator(store.root() + "/blobs")) {
    blobs += e.path().extension() == ".erofs";
  }
  EXPECT_EQ(blobs, 1u);

  // And it boots: the essential set has a shell.
  SandboxConfig config = testing::TestConfig();
  config.image = "base0";
  auto sandbox = testing::MustCreate(config);
  ASSERT_TRUE(sandbox);
  EXPECT_EQ(Sh(*sandbox, "cat /etc/debian_version | cut -c1-2"), "12\n");
}

}  // namespace
}  // namespace vessel
