// Hot reload under load with an SDK plugin (sdk/examples/header_stamp), SDK failure isolation,
// and a blocking hook, through the real binary (tests/plugins/sdk/ holds the sdk_hooks plugin).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "harness.hpp"

using namespace glmp::test;

namespace {

namespace fs = std::filesystem;

const std::string kTestPlugins = GLMP_TEST_PLUGIN_DIR;
// The in-tree SDK examples land in <build>/plugins; the proxy is <build>/bin/glm-proxy.
const std::string kSdkPlugins = (fs::path(GLMP_PROXY_BIN).parent_path().parent_path() / "plugins").string();

std::string plugin_entry(const std::string& name, const std::string& path, const std::string& settings = "") {
  return "\n[[plugins]]\nname = \"" + name + "\"\npath = \"" + path + "\"\n" +
         (settings.empty() ? "" : "[plugins.settings]\n" + settings + "\n");
}

const std::string kAdmin = "\n[admin]\ntoken = \"s3cret-admin\"\n";
const std::map<std::string, std::string> kAdminHeader{{"Authorization", "Bearer s3cret-admin"}};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Distinct runtime copies of `plugin` that are mapped but no longer on disk ("<dir>/<plugin>-<pid>-<n>-<sha>.so (deleted)").
std::set<std::string> deleted_copies(int pid, const std::string& plugin) {
  std::set<std::string> out;
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/maps"));
  std::string line;
  while (std::getline(in, line)) {
    const auto deleted = line.find(" (deleted)");
    const auto slash = line.find('/');
    if (deleted == std::string::npos || slash == std::string::npos || slash > deleted) continue;
    const std::string path = line.substr(slash, deleted - slash);
    if (fs::path(path).filename().string().rfind(plugin + "-", 0) == 0) out.insert(path);
  }
  return out;
}

class Reload : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;

  void start(const std::string& extra) {
    mock = std::make_unique<Mock>(dir);
    ProxyOptions opts;
    opts.extra_toml = extra;
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  }
  // Atomically replaces `live` with a copy of `src` (as a build system writing a new .so would).
  static void swap_plugin(const std::string& src, const std::string& live) {
    fs::copy_file(src, live + ".tmp", fs::copy_options::overwrite_existing);
    fs::rename(live + ".tmp", live);
  }
};

// Four clients keep sending requests (mostly plain, some ~1.5 s streams) while the header_stamp
// plugin is swapped between its "a" and "b" builds and reloaded 50 times. Nothing may fail, every
// response carries exactly one build's stamp, and nothing accumulates (fds, RSS, mapped copies).
TEST_F(Reload, ReloadUnderLoad) {
  const std::string live = dir.file("stamp.so");
  const std::string build_a = kSdkPlugins + "/header_stamp.so";
  const std::string build_b = kSdkPlugins + "/header_stamp_b.so";
  ASSERT_TRUE(fs::exists(build_a)) << build_a;
  ASSERT_TRUE(fs::exists(build_b)) << build_b;
  fs::copy_file(build_a, live);
  const std::string runtime = dir.file("runtime");
  start(kAdmin + "\n[loader]\nruntime_dir = \"" + runtime + "\"\n" + plugin_entry("header_stamp", live));
  const uint16_t port = proxy->port();
  const int pid = proxy->process().pid();

  std::mutex mu;
  std::vector<std::string> failures;  // first few only
  std::atomic<long> failed{0}, plain_ok{0}, streams_ok{0}, seen_a{0}, seen_b{0};
  auto check = [&](const std::string& what, int status, const std::string& error, const std::string& stamp,
                   bool body_ok) {
    const bool stamp_ok = stamp == "v1-a" || stamp == "v1-b";
    if (status == 200 && error.empty() && stamp_ok && body_ok) {
      (stamp == "v1-a" ? seen_a : seen_b).fetch_add(1);
      return true;
    }
    failed.fetch_add(1);
    std::lock_guard lock(mu);
    if (failures.size() < 10)
      failures.push_back(what + ": status " + std::to_string(status) + " error '" + error + "' stamp '" + stamp +
                         "' body_ok " + (body_ok ? "1" : "0"));
    return false;
  };

  std::atomic<bool> stop{false};
  auto client = [&](int id) {
    for (long n = 0; !stop.load(); ++n) {
      if ((n + 3 * id) % 12 == 0) {  // 1 in 12 is a ~1.5 s stream, staggered across clients
        StreamedResponse s = http_stream(port, "POST", "/v1/chat/completions", openai_body(true),
                                         {{"x-mock-chunks", "10"}, {"x-mock-delay-ms", "150"}});
        const std::string stamp = s.headers.count("x-plugin-version") ? s.headers.at("x-plugin-version") : "";
        if (check("stream", s.status, s.error, stamp, s.body().find("[DONE]") != std::string::npos)) streams_ok++;
      } else {
        Response r = (n % 2) ? http(port, "POST", "/v1/chat/completions", openai_body(false))
                             : http(port, "POST", "/v1/messages", anthropic_body(false));
        if (check("plain", r.status, r.error, r.header("x-plugin-version"), !r.body.empty())) plain_ok++;
      }
      std::this_thread::sleep_for(15ms);
    }
  };
  auto run_clients = [&] {
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) threads.emplace_back(client, i);
    return threads;
  };
  auto stop_clients = [&](std::vector<std::thread>& threads) {
    stop = true;
    for (auto& t : threads) t.join();
    stop = false;
  };

  long generation = 1;
  bool to_b = true;
  size_t max_copies = 0;  // old chains kept alive by the streams in flight
  std::vector<std::string> reload_failures;
  auto reload_once = [&] {
    swap_plugin(to_b ? build_b : build_a, live);
    const std::string want = to_b ? "v1-b" : "v1-a";
    to_b = !to_b;
    Response r = http(port, "POST", "/admin/reload", "", kAdminHeader);
    if (r.status != 200 || json_get(r.body, "status") != "reloaded" ||
        json_get(r.body, "generation") != std::to_string(generation + 1)) {
      reload_failures.push_back(std::to_string(r.status) + " " + r.body + " " + r.error);
      return;
    }
    ++generation;
    max_copies = std::max(max_copies, deleted_copies(pid, "header_stamp").size());
    // A request started after the reload sees the new build.
    Response after = http(port, "POST", "/v1/chat/completions", openai_body(false));
    if (after.status != 200 || after.header("x-plugin-version") != want)
      reload_failures.push_back("after reload to " + want + ": " + std::to_string(after.status) + " stamp '" +
                                after.header("x-plugin-version") + "'");
  };

  // Warm-up: the same load and a couple of reloads, so thread pools, upstream connections and
  // allocator arenas reach their working size before the baseline is taken.
  {
    auto threads = run_clients();
    std::this_thread::sleep_for(1000ms);
    reload_once();
    reload_once();
    std::this_thread::sleep_for(1000ms);
    stop_clients(threads);
  }
  ASSERT_TRUE(reload_failures.empty()) << reload_failures.front();
  const int fds_before = proxy->process().fd_count();
  const long rss_before = proxy->process().rss_kib();
  ASSERT_GT(fds_before, 0);
  ASSERT_GT(rss_before, 0);

  {
    auto threads = run_clients();
    for (int i = 0; i < 50; ++i) {
      reload_once();
      std::this_thread::sleep_for(40ms);
    }
    // Let the last chains see some traffic (and streams started on them), then drain.
    std::this_thread::sleep_for(500ms);
    stop_clients(threads);
  }

  EXPECT_TRUE(reload_failures.empty()) << reload_failures.size() << " reload problem(s), first: " << reload_failures.front();
  EXPECT_EQ(generation, 53);
  EXPECT_EQ(failed.load(), 0) << [&] {
    std::string s;
    for (const auto& f : failures) s += f + "\n";
    return s;
  }();
  EXPECT_GT(plain_ok.load(), 40);  // sanity: the load really ran
  EXPECT_GT(streams_ok.load(), 4);
  EXPECT_GT(seen_a.load(), 0);
  EXPECT_GT(seen_b.load(), 0);

  // Requests in flight kept their chains (so the check below is not vacuous)...
  EXPECT_GT(max_copies, 1u);
  // ...and every old chain is gone once its last request ended: only the live chain's copy stays mapped.
  std::set<std::string> copies;
  for (int i = 0; i < 100; ++i) {
    copies = deleted_copies(pid, "header_stamp");
    if (copies.size() <= 1) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(copies.size(), 1u) << [&] {
    std::string s;
    for (const auto& c : copies) s += c + "\n";
    return s;
  }();
  // The runtime copies are unlinked right after dlopen: nothing accumulates on disk either.
  if (fs::exists(runtime)) {
    EXPECT_TRUE(fs::is_empty(runtime));
  }

  const int fds_after = proxy->process().fd_count();
  const long rss_after = proxy->process().rss_kib();
  EXPECT_LE(fds_after, fds_before + 10) << "fds " << fds_before << " -> " << fds_after;
#ifdef GLMP_SANITIZED
  constexpr long kRssSlackKib = 160 * 1024;  // ASan/TSan shadow memory grows with every allocation
#else
  constexpr long kRssSlackKib = 20 * 1024;
#endif
  EXPECT_LE(rss_after, rss_before + kRssSlackKib) << "RSS KiB " << rss_before << " -> " << rss_after;

  // Still healthy and serving the last build ("a": 52 swaps after the first load).
  EXPECT_EQ(json_get(health(port), "status"), "ok");
  EXPECT_EQ(http(port, "POST", "/v1/chat/completions", openai_body(false)).header("x-plugin-version"), "v1-a");
}

TEST_F(Reload, SdkPluginThrowingInOnRequestGives500NamingIt) {
  start(kAdmin + plugin_entry("sdk_hooks", kTestPlugins + "/sdk_hooks.so"));
  Response ok = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(ok.header("x-sdk-hooks"), "1");

  Response f = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false), {{"X-Sdk-Throw", "1"}});
  EXPECT_EQ(f.status, 500) << f.body;
  EXPECT_NE(json_get(f.body, "error.message").find("sdk_hooks"), std::string::npos) << f.body;
  Response fa = http(proxy->port(), "POST", "/v1/messages", anthropic_body(false), {{"X-Sdk-Throw", "1"}});
  EXPECT_EQ(fa.status, 500) << fa.body;
  EXPECT_EQ(json_get(fa.body, "type"), "error") << fa.body;  // the caller's flavour
  EXPECT_NE(json_get(fa.body, "error.message").find("sdk_hooks"), std::string::npos) << fa.body;
  const std::string line = proxy->wait_log({"sdk_hooks", "\"status\":500"});
  EXPECT_NE(line.find("sdk_hooks"), std::string::npos);

  // The exception did not take anything down: the next requests are served normally.
  Response again = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.header("x-sdk-hooks"), "1");
  EXPECT_EQ(json_get(health(proxy->port()), "status"), "ok");
}

TEST_F(Reload, SdkPluginThrowingInConfigIsRefused) {
  const std::string so = kTestPlugins + "/sdk_hooks.so";
  const std::string bad_entry = plugin_entry("sdk_hooks", so, "throw_in_config = \"no way jose\"");
  mock = std::make_unique<Mock>(dir);

  // At startup: exit 1, naming the plugin and carrying the exception's message.
  {
    const std::string cfg = dir.file("bad.toml");
    // Its own store: the default data/glm-proxy.db would be shared with tests running in parallel.
    write_file(cfg, "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"" + dir.file("state.db") + "\"\n[upstreams.openai]\nbase_url = \"" + mock->base_url() +
                        "\"\nmin_connections = 0\n[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"openai\"\n" +
                        bad_entry);
    Child child({GLMP_PROXY_BIN, "--config", cfg}, dir.file("b.out"), dir.file("b.err"));
    EXPECT_EQ(child.wait(10s), 1);
    EXPECT_FALSE(sanitizer_report(child.err())) << child.err();
    EXPECT_NE(child.err().find("plugin 'sdk_hooks'"), std::string::npos) << child.err();
    EXPECT_NE(child.err().find("refused its settings"), std::string::npos) << child.err();
    EXPECT_NE(child.err().find("no way jose"), std::string::npos) << child.err();
  }

  // On reload: 500 naming it, and the running chain keeps serving.
  const std::string good_entry = plugin_entry("sdk_hooks", so);
  ProxyOptions opts;
  opts.extra_toml = kAdmin + good_entry;
  proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).header("x-sdk-hooks"), "1");
  const std::string good = read_file(proxy->config_path());
  const auto at = good.rfind(good_entry);
  ASSERT_NE(at, std::string::npos);
  write_file(proxy->config_path(), good.substr(0, at) + bad_entry + good.substr(at + good_entry.size()));

  Response bad = http(proxy->port(), "POST", "/admin/reload", "", kAdminHeader);
  EXPECT_EQ(bad.status, 500) << bad.body;
  EXPECT_EQ(json_get(bad.body, "status"), "failed") << bad.body;
  EXPECT_EQ(json_get(bad.body, "generation"), "1") << bad.body;
  EXPECT_NE(json_get(bad.body, "message").find("plugin 'sdk_hooks'"), std::string::npos) << bad.body;
  EXPECT_NE(json_get(bad.body, "message").find("no way jose"), std::string::npos) << bad.body;
  for (int i = 0; i < 3; ++i) {
    Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("x-sdk-hooks"), "1");
  }
  Response plugins = http(proxy->port(), "GET", "/admin/plugins", "", kAdminHeader);
  EXPECT_EQ(json_get(plugins.body, "plugins.0.name"), "sdk_hooks") << plugins.body;

  // Fixing the config makes the next reload succeed.
  write_file(proxy->config_path(), good);
  Response fixed = http(proxy->port(), "POST", "/admin/reload", "", kAdminHeader);
  EXPECT_EQ(fixed.status, 200) << fixed.body;
  EXPECT_EQ(json_get(fixed.body, "generation"), "2") << fixed.body;
}

// A hook that blocks (until its bounded "timeout") holds only its own request: others that go
// through the same plugin meanwhile complete promptly, and the blocked one finishes afterwards.
TEST_F(Reload, BlockingHookDoesNotStallOthers) {
  start(kAdmin + plugin_entry("sdk_hooks", kTestPlugins + "/sdk_hooks.so", "max_block_ms = 2500"));
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);

  constexpr double kBlockMs = 2000;
  std::atomic<bool> blocked_done{false};
  Response blocked;
  double blocked_ms = 0;
  std::thread t([&] {
    const auto t0 = std::chrono::steady_clock::now();
    blocked = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false), {{"X-Sdk-Block-Ms", "2000"}});
    blocked_ms = ms_since(t0);
    blocked_done = true;
  });
  // Give the blocked request time to reach the hook.
  std::this_thread::sleep_for(250ms);

  std::vector<double> took;
  bool overtook = false;  // a later request finished while the blocked one was still in its hook
  for (int i = 0; i < 4; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    Response r = (i % 2) ? http(proxy->port(), "POST", "/v1/messages", anthropic_body(false))
                         : http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
    took.push_back(ms_since(t0));
    if (!blocked_done) overtook = true;
    EXPECT_EQ(r.status, 200) << r.body << r.error;
    EXPECT_EQ(r.header("x-sdk-hooks"), "1");
    EXPECT_LT(took.back(), 1000.0) << "request " << i << " waited behind the blocked hook";
  }
  EXPECT_TRUE(overtook) << "no request completed while the hook was blocked";
  t.join();
  EXPECT_EQ(blocked.status, 200) << blocked.body << blocked.error;
  EXPECT_EQ(blocked.header("x-sdk-hooks"), "1");
  EXPECT_GE(blocked_ms, kBlockMs - 100) << "the hook did not block";
  EXPECT_EQ(json_get(health(proxy->port()), "status"), "ok");
}

}  // namespace
