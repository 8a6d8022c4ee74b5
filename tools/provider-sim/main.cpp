// tokenwarden-sim: the provider simulator as a program. A commented pipeline:
// flags -> TLS files -> listen -> tell the world (--ca-out, --port-file, stdout) -> serve on N
// threads until SIGINT/SIGTERM -> clean up.
//
// Exit status: 0 after a signal, 1 when the server cannot start (bind, TLS), 2 on bad flags.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <unistd.h>

#include "scheduler/clock.h"
#include "tools/provider-sim/http_server.h"
#include "tools/provider-sim/simulator.h"

namespace {

namespace fs = std::filesystem;

struct Flags {
  std::string listen = "127.0.0.1";
  int port = 0;
  std::string port_file;
  bool tls = false;
  std::string tls_dir;
  std::string ca_out;
  int threads = 2;
  bool verbose = false;
  tw::sim::SimOptions sim;
};

void define_flags(CLI::App& app, Flags& f) {
  app.add_option("--listen", f.listen, "IP address to listen on")->capture_default_str();
  app.add_option("--port", f.port, "TCP port; 0 picks a free one")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app.add_option("--port-file", f.port_file, "write the bound port to FILE (atomically)");
  auto* tls = app.add_flag("--tls", f.tls, "serve HTTPS with a fresh self-signed certificate");
  app.add_option("--tls-dir", f.tls_dir,
                 "where to write cert.pem and key.pem (default: a temp dir)")
      ->needs(tls);
  app.add_option("--ca-out", f.ca_out, "copy the certificate here, for clients' ca_file")
      ->needs(tls);
  app.add_option("--threads", f.threads, "threads serving requests")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_flag("--verbose", f.verbose, "one stderr line per request (no secrets)");
  app.add_flag("--record-issued", f.sim.record_issued,
               "remember every token issued, for GET /admin/issued (tests scan for leaks)");

  auto& s = f.sim;
  app.add_option("--meta-app-id", s.meta_app_id)->capture_default_str();
  app.add_option("--meta-app-secret", s.meta_app_secret)->capture_default_str();
  app.add_option("--google-client-id", s.google_client_id)->capture_default_str();
  app.add_option("--google-client-secret", s.google_client_secret)->capture_default_str();
  app.add_option("--tiktok-client-key", s.tiktok_client_key)->capture_default_str();
  app.add_option("--tiktok-client-secret", s.tiktok_client_secret)->capture_default_str();
  app.add_option("--tiktok-business-app-id", s.tiktok_business_app_id)->capture_default_str();
  app.add_option("--tiktok-business-app-secret", s.tiktok_business_app_secret)
      ->capture_default_str();
  app.add_option("--tiktok-oauth-error-status", s.tiktok_oauth_error_status,
                 "HTTP status of TikTok v2 OAuth errors (unverified)")
      ->check(CLI::Range(400, 599))
      ->capture_default_str();
  app.add_option("--reuse-grace", s.reuse_grace_seconds,
                 "seconds a rotated refresh token still returns the same new pair")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--meta-call-limit", s.meta_call_limit, "Meta calls per hour = 100% app usage")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--oauth2-client-id", s.oauth2_client_id)->capture_default_str();
  app.add_option("--oauth2-client-secret", s.oauth2_client_secret)->capture_default_str();
  app.add_option("--oauth2-api-key-header", s.oauth2_api_key_header,
                 "header the /oauth2/ endpoints want the gateway key in")
      ->capture_default_str();
  app.add_option("--oauth2-api-key", s.oauth2_api_key, "the gateway key; empty: none required")
      ->capture_default_str();
  app.add_option("--oauth2-access-lifetime", s.oauth2_access_lifetime,
                 "seconds: access tokens of the refresh_token grant")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--oauth2-client-credentials-lifetime", s.oauth2_client_credentials_lifetime,
                 "seconds: access tokens of the client_credentials grant")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--oauth2-rotate-refresh", s.oauth2_rotate_refresh,
                 "whether the refresh_token grant rotates the refresh token (true or false)")
      ->capture_default_str();
}

// Writes `text` to `path` via a temporary file and rename(), so readers never see half of it.
bool write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return false;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fs::remove(tmp, ec);
  return !ec;
}

// Logs one line per request: method, path without the query, status, time in the handler, and any
// injected delay or delivery. Never the query, headers or bodies: they carry the secrets.
tw::sim::Handler with_log(tw::sim::Handler inner) {
  return [inner = std::move(inner)](const tw::sim::Request& request) {
    const auto start = std::chrono::steady_clock::now();
    tw::sim::Response response = inner(request);
    const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - start;
    static constexpr const char* kDelivery[] = {"", " reset", " truncate", " hang"};
    const std::string delay = response.delay.count() > 0
                                  ? " +delay " + std::to_string(response.delay.count()) + "ms"
                                  : "";
    // One fprintf per line keeps lines from two threads apart; if stderr is gone, so be it.
    static_cast<void>(std::fprintf(stderr, "%s %s %d %.3fms%s%s\n", request.method.c_str(),
                                   request.path.c_str(), response.status, took.count(),
                                   delay.c_str(), kDelivery[static_cast<int>(response.delivery)]));
    return response;
  };
}

int fail(const std::string& message, int status) {
  static_cast<void>(std::fprintf(stderr, "tokenwarden-sim: %s\n", message.c_str()));
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  // 1. Flags.
  CLI::App app{
      "tokenwarden-sim: a local imitation of the Meta, Google and TikTok token endpoints, and of "
      "a generic OAuth 2.0 server and API-key probe"};
  Flags flags;
  define_flags(app, flags);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }

  // 2. TLS files: a fresh self-signed certificate in --tls-dir or a private temp dir.
  std::optional<tw::sim::TlsFiles> tls;
  std::string temp_dir;
  if (flags.tls) {
    std::string dir = flags.tls_dir;
    if (dir.empty()) {
      std::string tmpl = (fs::temp_directory_path() / "tokenwarden-sim-XXXXXX").string();
      if (::mkdtemp(tmpl.data()) == nullptr) return fail("cannot create a temporary directory", 1);
      dir = temp_dir = tmpl;
    }
    auto files = tw::sim::write_self_signed_certificate(dir);
    if (!files) return fail(files.error().message(), 1);
    tls = *files;
  }
  const auto cleanup = [&] {
    std::error_code ec;
    if (!temp_dir.empty()) fs::remove_all(temp_dir, ec);
  };

  // 3. Listen.
  tw::SystemClock clock;
  tw::sim::Simulator simulator(flags.sim, clock);
  tw::sim::Handler handler = [&simulator](const tw::sim::Request& r) {
    return simulator.handle(r);
  };
  if (flags.verbose) handler = with_log(std::move(handler));
  boost::asio::io_context io(flags.threads);
  auto server = tw::sim::HttpServer::start(io, flags.listen, static_cast<std::uint16_t>(flags.port),
                                           tls, std::move(handler));
  if (!server) {
    cleanup();
    return fail(server.error().message(), 1);
  }
  const std::uint16_t port = (*server)->port();

  // 4. Tell the world: the CA copy and the port file first, so that the stdout line means ready.
  if (!flags.ca_out.empty()) {
    std::error_code ec;
    fs::copy_file(tls->cert_file, flags.ca_out, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      cleanup();
      return fail("cannot write --ca-out " + flags.ca_out + ": " + ec.message(), 1);
    }
  }
  if (!flags.port_file.empty() && !write_atomically(flags.port_file, std::to_string(port) + "\n")) {
    cleanup();
    return fail("cannot write --port-file " + flags.port_file, 1);
  }
  const bool v6 = flags.listen.find(':') != std::string::npos;
  // The readiness signal: a launcher that cannot read it would wait forever, so failing is better.
  if (std::printf("listening on %s://%s%s%s:%u\n", tls ? "https" : "http", v6 ? "[" : "",
                  flags.listen.c_str(), v6 ? "]" : "", static_cast<unsigned>(port)) < 0 ||
      std::fflush(stdout) != 0) {
    cleanup();
    return fail("cannot write to stdout", 1);
  }

  // 5. Serve until SIGINT or SIGTERM.
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (ec) return;
    (*server)->stop();
    io.stop();
  });
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(flags.threads));
  for (int i = 0; i < flags.threads; ++i)
    threads.emplace_back([&io] { io.run(); });
  for (auto& t : threads)
    t.join();

  // 6. Clean up: the private key of a temp dir goes with it.
  cleanup();
  return 0;
}
