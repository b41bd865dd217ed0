// mock-upstream: a deterministic fake of Z.AI's OpenAI-compatible and Anthropic-compatible APIs,
// used by the integration tests, the e2e SDK tests and the benchmarks. An event-driven server
// (mock_server.hpp): a few epoll loops, no thread per connection, no sleeping. See README.md.

#include <Poco/Exception.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/NetSSL.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <semaphore.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>

#include "mock_handler.hpp"
#include "mock_server.hpp"

namespace {

using glmp::mock::Options;

sem_t g_stop_sem;
volatile sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) {
  g_stop_signal = sig;
  sem_post(&g_stop_sem);  // async-signal-safe
}

void usage(std::FILE* to) {
  std::fputs(
      "usage: mock-upstream [--host 127.0.0.1] [--port 0] [--api-key KEY]\n"
      "                     [--https --cert FILE --key FILE] [--keepalive-timeout-ms 10000]\n"
      "                     [--loops 1] [--fast] [--verbose]\n"
      "                     [--alpn h2,http/1.1] [--max-concurrent-streams 100]\n"
      "                     [--h2-window 65535]\n"
      "Prints 'LISTENING <port>' on stdout once it accepts connections.\n"
      "HTTP/2: h2c with prior knowledge on the plain listener, ALPN h2 with --https.\n"
      "--threads N (the old connection-thread pool) is accepted and ignored.\n",
      to);
}

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "mock-upstream: %s\n", message.c_str());
  usage(stderr);
  std::exit(2);
}

long parse_long(const std::string& flag, const std::string& value, long min, long max) {
  try {
    std::size_t used = 0;
    const long v = std::stol(value, &used);
    if (used != value.size() || v < min || v > max) throw std::out_of_range(flag);
    return v;
  } catch (const std::exception&) {
    die("invalid value for " + flag + ": '" + value + "' (expected " + std::to_string(min) + ".." +
        std::to_string(max) + ")");
  }
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;
    if (arg.rfind("--", 0) == 0) {
      const auto eq = arg.find('=');
      if (eq != std::string::npos) {
        inline_value = arg.substr(eq + 1);
        arg = arg.substr(0, eq);
      }
    }
    const auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) die("missing value for " + arg);
      return argv[++i];
    };
    const auto no_value = [&] {
      if (inline_value) die(arg + " takes no value");
    };
    if (arg == "--host") {
      o.host = value();
    } else if (arg == "--port") {
      o.port = static_cast<std::uint16_t>(parse_long(arg, value(), 0, 65535));
    } else if (arg == "--api-key") {
      o.api_key = value();
    } else if (arg == "--https") {
      no_value();
      o.https = true;
    } else if (arg == "--cert") {
      o.cert_file = value();
    } else if (arg == "--key") {
      o.key_file = value();
    } else if (arg == "--keepalive-timeout-ms") {
      o.keepalive_timeout_ms = parse_long(arg, value(), 1, 86400000);
    } else if (arg == "--loops") {
      o.loops = static_cast<int>(parse_long(arg, value(), 1, 64));
    } else if (arg == "--threads") {
      // The thread-per-connection server's pool size; accepted (and checked) so existing command
      // lines keep working, but unused: connections no longer hold threads.
      (void)parse_long(arg, value(), 1, 100000);
    } else if (arg == "--alpn") {
      o.alpn.clear();
      const std::string list = value();
      std::size_t start = 0;
      while (start <= list.size()) {
        const std::size_t comma = std::min(list.find(',', start), list.size());
        const std::string proto = list.substr(start, comma - start);
        if (proto != "h2" && proto != "http/1.1") {
          die("invalid --alpn protocol '" + proto + "' (expected h2 and/or http/1.1)");
        }
        o.alpn.push_back(proto);
        start = comma + 1;
      }
    } else if (arg == "--max-concurrent-streams") {
      o.max_concurrent_streams =
          static_cast<std::uint32_t>(parse_long(arg, value(), 1, 2147483647));
    } else if (arg == "--h2-window") {
      o.h2_window = static_cast<std::uint32_t>(parse_long(arg, value(), 1, 2147483647));
    } else if (arg == "--fast") {
      no_value();
      o.fast = true;
    } else if (arg == "--verbose" || arg == "-v") {
      no_value();
      o.verbose = true;
    } else if (arg == "--help" || arg == "-h") {
      usage(stdout);
      std::exit(0);
    } else {
      die("unknown argument '" + arg + "'");
    }
  }
  if (o.https && (o.cert_file.empty() || o.key_file.empty())) die("--https needs --cert and --key");
  if (!o.https && (!o.cert_file.empty() || !o.key_file.empty())) die("--cert/--key need --https");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse_args(argc, argv);

  // Writes to a peer that went away must fail with EPIPE, not kill the process (OpenSSL writes
  // without MSG_NOSIGNAL). SIGTERM/SIGINT post a semaphore that main waits on (a handler rather
  // than sigwait, so it works whichever thread the signal lands on).
  ::signal(SIGPIPE, SIG_IGN);
  sem_init(&g_stop_sem, 0, 0);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  glmp::mock::Stats stats;
  int exit_code = 0;
  if (opt.https) Poco::Net::initializeSSL();
  try {
    const Poco::Net::SocketAddress address(opt.host, opt.port);
    constexpr int kBacklog = 1024;
    Poco::Net::ServerSocket socket(address, kBacklog);
    socket.setNoDelay(true);
    const std::uint16_t port = socket.address().port();

    // TLS: Poco's server context (certificate chain, key, cipher list) as before; the loops run
    // OpenSSL on the non-blocking sockets themselves.
    Poco::Net::Context::Ptr context;
    if (opt.https) {
      context = new Poco::Net::Context(Poco::Net::Context::SERVER_USE, opt.key_file, opt.cert_file,
                                       "", Poco::Net::Context::VERIFY_NONE);
    }
    glmp::mock::Server server(opt, stats, socket.impl()->sockfd(),
                              context.isNull() ? nullptr : context->sslContext());
    server.start();

    std::cout << "LISTENING " << port << std::endl;
    if (opt.verbose) {
      std::string alpn;
      for (const auto& proto : opt.alpn) alpn += (alpn.empty() ? "" : ",") + proto;
      std::fprintf(stderr,
                   "mock-upstream: listening on %s:%u (%s, %d event loop%s%s; h2: %s, %u streams, "
                   "window %u)\n",
                   opt.host.c_str(), port, opt.https ? "https" : "http", opt.loops,
                   opt.loops == 1 ? "" : "s", opt.fast ? ", fast" : "",
                   opt.https ? ("ALPN " + alpn).c_str() : "h2c prior knowledge",
                   opt.max_concurrent_streams, opt.h2_window);
    }

    while (sem_wait(&g_stop_sem) != 0) {
    }
    if (opt.verbose) {
      std::fprintf(stderr, "mock-upstream: signal %d, stopping\n", static_cast<int>(g_stop_signal));
    }
    server.stop();  // stop accepting, shut down the open connections, join the loops
  } catch (const Poco::Exception& e) {
    std::fprintf(stderr, "mock-upstream: %s\n", e.displayText().c_str());
    exit_code = 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mock-upstream: %s\n", e.what());
    exit_code = 1;
  }
  if (opt.https) Poco::Net::uninitializeSSL();
  return exit_code;
}
