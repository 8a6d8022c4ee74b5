// CurlTransport against the provider simulator's HttpServer on loopback. Each test runs a private
// io_context; timing comes from the server's Response::delay and the transport's own timeouts.
#include "http/curl_transport.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <gtest/gtest.h>

#include "tests/support/run_io.h"
#include "tests/test_util.h"
#include "tools/provider-sim/http_server.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using sim::HttpServer;
using sim::Request;
using sim::Response;

using tw::testing::run_until;

class CurlTransportTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A developer's proxy settings must not reroute loopback requests. No thread runs yet.
    ::setenv("NO_PROXY", "*", 1);  // NOLINT(concurrency-mt-unsafe)
    ::setenv("no_proxy", "*", 1);  // NOLINT(concurrency-mt-unsafe)
  }

  CurlTransportTest() {
    // Generous for requests that should succeed (sanitizer builds are slow); tests of timeouts
    // shorten them.
    config.connect_timeout = 5s;
    config.total_timeout = 10s;
    config.max_in_flight = 8;
  }

  void start_server(sim::Handler handler, std::optional<sim::TlsFiles> tls = std::nullopt) {
    auto started = HttpServer::start(io, "127.0.0.1", 0, std::move(tls), std::move(handler));
    ASSERT_TRUE(started.ok()) << started.error().message();
    server = std::move(started).value();
  }

  std::string url(const std::string& path_and_query) const {
    return std::string(server->tls() ? "https" : "http") +
           "://127.0.0.1:" + std::to_string(server->port()) + path_and_query;
  }

  CurlTransport& transport() {
    if (!http) {
      auto created = CurlTransport::create(io.get_executor(), config);
      if (!created.ok()) die(created.error().message());
      http = std::move(created).value();
    }
    return *http;
  }

  // Sends one request and runs the loop until its callback has run.
  HttpResponse fetch(HttpRequest request) {
    std::optional<HttpResponse> got;
    transport().send(std::move(request), [&](HttpResponse r) { got = std::move(r); });
    EXPECT_FALSE(got.has_value()) << "the callback ran inside send()";
    EXPECT_TRUE(run_until(io, [&] { return got.has_value(); }));
    return got.value_or(HttpResponse{});
  }

  HttpRequest request_to(const std::string& path_and_query) const {
    HttpRequest request;
    request.url = url(path_and_query);
    return request;
  }

  HttpResponse get(const std::string& path_and_query) { return fetch(request_to(path_and_query)); }

  // A port that refuses connections: bound by us, then closed again.
  static std::uint16_t refused_port() {
    boost::asio::io_context scratch;
    boost::asio::ip::tcp::acceptor acceptor(scratch,
                                            {boost::asio::ip::make_address("127.0.0.1"), 0});
    const std::uint16_t port = acceptor.local_endpoint().port();
    acceptor.close();
    return port;
  }

  boost::asio::io_context io;
  HttpConfig config;
  std::unique_ptr<HttpServer> server;
  std::unique_ptr<CurlTransport> http;
};

TEST_F(CurlTransportTest, GetRoundTrip) {
  std::optional<Request> seen;
  start_server([&](const Request& r) {
    seen = r;
    Response response;
    response.status = 200;
    response.body = R"({"ok":true})";
    response.headers = {{"X-Reply", "yes"}, {"X-Dup", "first"}, {"X-Dup", "last"}};
    return response;
  });

  HttpRequest request;
  request.url = url("/v25.0/debug_token?input_token=a%20b&plus=x+y&flag&empty=");
  request.headers = {{"Authorization", "Bearer TOKEN"}, {"X-Custom", "custom value"}};
  const HttpResponse r = fetch(request);

  ASSERT_EQ(r.error, TransportError::kNone) << r.error_message;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"ok":true})");
  EXPECT_EQ(r.headers.at("x-reply"), "yes");
  EXPECT_EQ(r.headers.at("x-dup"), "last");
  EXPECT_EQ(r.headers.at("content-type"), "application/json; charset=UTF-8");
  EXPECT_EQ(r.headers.at("content-length"), "11");
  EXPECT_TRUE(r.error_message.empty());

  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->method, "GET");
  EXPECT_EQ(seen->path, "/v25.0/debug_token");
  EXPECT_EQ(seen->target, "/v25.0/debug_token?input_token=a%20b&plus=x+y&flag&empty=");
  EXPECT_EQ(seen->query,
            (std::map<std::string, std::string>{
                {"input_token", "a b"}, {"plus", "x y"}, {"flag", ""}, {"empty", ""}}));
  EXPECT_EQ(seen->headers.at("authorization"), "Bearer TOKEN");
  EXPECT_EQ(seen->headers.at("x-custom"), "custom value");
  EXPECT_EQ(seen->headers.at("user-agent"), config.user_agent);
  EXPECT_TRUE(seen->body.empty());
  EXPECT_EQ(seen->remote.rfind("127.0.0.1:", 0), 0u) << seen->remote;
}

TEST_F(CurlTransportTest, PostRoundTrip) {
  std::optional<Request> seen;
  start_server([&](const Request& r) {
    seen = r;
    Response response;
    response.status = 201;
    response.body = "created";
    response.content_type = "text/plain";
    return response;
  });

  HttpRequest request;
  request.method = "POST";
  request.url = url("/oauth2/token");
  request.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
  request.body = form_encode({{"grant_type", "refresh_token"}, {"refresh_token", "1//a+b/c"}});
  const HttpResponse r = fetch(request);

  ASSERT_EQ(r.error, TransportError::kNone) << r.error_message;
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.body, "created");
  EXPECT_EQ(r.headers.at("content-type"), "text/plain");
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->method, "POST");
  EXPECT_EQ(seen->path, "/oauth2/token");
  EXPECT_TRUE(seen->query.empty());
  EXPECT_EQ(seen->body, "grant_type=refresh_token&refresh_token=1%2F%2Fa%2Bb%2Fc");
  EXPECT_EQ(seen->headers.at("content-type"), "application/x-www-form-urlencoded");
  EXPECT_EQ(seen->headers.at("content-length"), std::to_string(request.body.size()));
}

TEST_F(CurlTransportTest, NonSuccessStatusIsAResponseNotAnError) {
  start_server([](const Request&) {
    Response response;
    response.status = 503;
    response.body = R"({"error":"backend_error"})";
    return response;
  });
  const HttpResponse r = get("/");
  EXPECT_EQ(r.error, TransportError::kNone) << r.error_message;
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, R"({"error":"backend_error"})");
}

TEST_F(CurlTransportTest, ElapsedCoversTheServerDelay) {
  start_server([](const Request&) {
    Response response;
    response.delay = 100ms;
    return response;
  });
  const HttpResponse r = get("/");
  ASSERT_EQ(r.error, TransportError::kNone) << r.error_message;
  EXPECT_GE(r.elapsed, 100ms);  // a lower bound: the reply cannot come before the delay
}

TEST_F(CurlTransportTest, UnsupportedMethodFailsWithoutCallingBackInsideSend) {
  start_server([](const Request&) { return Response{}; });
  HttpRequest request;
  request.method = "DELETE";
  request.url = url("/");
  const HttpResponse r = fetch(request);
  EXPECT_EQ(r.error, TransportError::kOther);
  EXPECT_EQ(server->stats().requests, 0u);
}

TEST_F(CurlTransportTest, RefusedConnectionIsConnectErrorWithoutTheQuery) {
  HttpRequest request;
  request.url = "http://127.0.0.1:" + std::to_string(refused_port()) +
                "/oauth/access_token?client_id=1&client_secret=SEKRET";
  const HttpResponse r = fetch(request);
  EXPECT_EQ(r.error, TransportError::kConnect) << r.error_message;
  EXPECT_EQ(r.status, 0);
  EXPECT_FALSE(r.error_message.empty());
  EXPECT_EQ(r.error_message.find("SEKRET"), std::string::npos) << r.error_message;
  EXPECT_EQ(r.error_message.find('\n'), std::string::npos) << r.error_message;
}

TEST_F(CurlTransportTest, TotalTimeoutIsTimeoutErrorWithoutTheQuery) {
  config.total_timeout = 300ms;
  start_server([](const Request&) {
    Response response;
    response.delay = 5s;
    return response;
  });
  const HttpResponse r = get("/oauth/access_token?client_secret=SEKRET");
  EXPECT_EQ(r.error, TransportError::kTimeout) << r.error_message;
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.error_message.find("SEKRET"), std::string::npos) << r.error_message;
}

TEST_F(CurlTransportTest, ResetConnectionIsResetError) {
  start_server([](const Request&) {
    Response response;
    response.delivery = Response::Delivery::kReset;
    return response;
  });
  const HttpResponse r = get("/");
  EXPECT_EQ(r.error, TransportError::kReset) << r.error_message;
  EXPECT_EQ(r.status, 0);
}

TEST_F(CurlTransportTest, TruncatedBodyIsResetError) {
  start_server([](const Request&) {
    Response response;
    response.body = std::string(10000, 'x');
    response.delivery = Response::Delivery::kTruncate;
    return response;
  });
  const HttpResponse r = get("/");
  EXPECT_EQ(r.error, TransportError::kReset) << r.error_message;
  EXPECT_EQ(r.status, 0);
  EXPECT_TRUE(r.body.empty());
}

TEST_F(CurlTransportTest, HungServerIsTimeoutError) {
  config.total_timeout = 300ms;
  start_server([](const Request&) {
    Response response;
    response.delivery = Response::Delivery::kHang;
    return response;
  });
  const HttpResponse r = get("/");
  EXPECT_EQ(r.error, TransportError::kTimeout) << r.error_message;
}

TEST_F(CurlTransportTest, BodyOverTheCapIsTooLarge) {
  config.max_response_bytes = 1000;
  start_server([](const Request& r) {
    Response response;
    response.body = std::string(r.path == "/big" ? 5000 : 1000, 'x');
    return response;
  });
  const HttpResponse at_cap = get("/exact");
  EXPECT_EQ(at_cap.error, TransportError::kNone) << at_cap.error_message;
  EXPECT_EQ(at_cap.body.size(), 1000u);

  const HttpResponse over = get("/big");
  EXPECT_EQ(over.error, TransportError::kTooLarge) << over.error_message;
  EXPECT_EQ(over.status, 0);
  EXPECT_TRUE(over.body.empty());
}

TEST_F(CurlTransportTest, TlsVerifiesAgainstTheConfiguredCaFile) {
  const testing::TempDir dir;
  auto files = sim::write_self_signed_certificate(dir.path());
  ASSERT_TRUE(files.ok()) << files.error().message();
  start_server(
      [](const Request& r) {
        Response response;
        response.body = "secure " + r.path;
        return response;
      },
      *files);
  ASSERT_TRUE(server->tls());
  config.ca_file = files->cert_file;

  const HttpResponse r = get("/hello");
  ASSERT_EQ(r.error, TransportError::kNone) << r.error_message;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "secure /hello");
}

TEST_F(CurlTransportTest, TlsFailsWhenTheCertificateIsNotTrusted) {
  const testing::TempDir dir;
  auto files = sim::write_self_signed_certificate(dir.path());
  ASSERT_TRUE(files.ok()) << files.error().message();
  start_server([](const Request&) { return Response{}; }, *files);
  // No ca_file: the system CAs do not know the self-signed certificate.
  const HttpResponse r = get("/?client_secret=SEKRET");
  EXPECT_EQ(r.error, TransportError::kTls) << r.error_message;
  EXPECT_EQ(r.error_message.find("SEKRET"), std::string::npos) << r.error_message;
  EXPECT_EQ(server->stats().requests, 0u);
}

TEST_F(CurlTransportTest, SelfSignedKeyFileIsPrivate) {
  const testing::TempDir dir;
  auto files = sim::write_self_signed_certificate(dir.path());
  ASSERT_TRUE(files.ok()) << files.error().message();
  const auto perms = std::filesystem::status(files->key_file).permissions();
  EXPECT_EQ(perms & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  EXPECT_NE(testing::read_file(files->cert_file).find("BEGIN CERTIFICATE"), std::string::npos);
}

TEST_F(CurlTransportTest, SequentialRequestsReuseOneConnection) {
  start_server([](const Request& r) {
    Response response;
    response.body = r.path;
    return response;
  });
  constexpr int kRequests = 20;
  int completed = 0;
  int ok = 0;
  std::function<void()> next = [&] {
    HttpRequest request;
    request.url = url("/" + std::to_string(completed));
    transport().send(std::move(request), [&](const HttpResponse& r) {
      if (r.error == TransportError::kNone && r.body == "/" + std::to_string(completed)) ++ok;
      if (++completed < kRequests) next();
    });
  };
  next();
  ASSERT_TRUE(run_until(io, [&] { return completed == kRequests; }));
  EXPECT_EQ(ok, kRequests);
  EXPECT_EQ(server->stats().requests, static_cast<std::uint64_t>(kRequests));
  EXPECT_EQ(server->stats().connections, 1u);
}

// The server runs on two threads of its own (so its handler must be thread-safe); the transport
// stays on the test's io_context.
//
// Every response is delayed by kDelay, so a request that reached the server at t is open at the
// server during [t, t + kDelay) at least, and a slot it held can free no earlier than t + kDelay.
// With at most 4 in flight, no instant lies in more than 4 such intervals. (Counting completions
// in the client's callbacks instead would over-count: the next queued request may reach the
// server before the finished one's posted callback has run.)
TEST_F(CurlTransportTest, InFlightRequestsNeverExceedTheLimit) {
  config.max_in_flight = 4;
  constexpr int kRequests = 20;
  constexpr auto kDelay = 100ms;
  std::mutex mutex;
  std::vector<std::chrono::steady_clock::time_point> arrivals;

  boost::asio::io_context server_io;
  auto work = boost::asio::make_work_guard(server_io);
  auto started = HttpServer::start(server_io, "127.0.0.1", 0, std::nullopt, [&](const Request&) {
    {
      const std::lock_guard lock(mutex);
      arrivals.push_back(std::chrono::steady_clock::now());
    }
    Response response;
    response.delay = kDelay;
    return response;
  });
  ASSERT_TRUE(started.ok()) << started.error().message();
  auto concurrent_server = std::move(started).value();
  std::vector<std::thread> threads(2);
  for (auto& t : threads) {
    t = std::thread([&] { server_io.run(); });
  }

  int completed = 0;
  int ok = 0;
  for (int i = 0; i < kRequests; ++i) {
    HttpRequest request;
    request.url = "http://127.0.0.1:" + std::to_string(concurrent_server->port()) + "/";
    transport().send(std::move(request), [&](const HttpResponse& r) {
      ++completed;
      if (r.error == TransportError::kNone && r.status == 200) ++ok;
    });
  }
  EXPECT_EQ(transport().pending(), static_cast<std::size_t>(kRequests));
  const bool finished = run_until(io, [&] { return completed == kRequests; });

  concurrent_server->stop();
  work.reset();
  server_io.stop();
  for (auto& t : threads) {
    t.join();
  }
  concurrent_server.reset();

  ASSERT_TRUE(finished);
  EXPECT_EQ(ok, kRequests);
  EXPECT_EQ(transport().pending(), 0u);
  ASSERT_EQ(arrivals.size(), static_cast<std::size_t>(kRequests));
  std::sort(arrivals.begin(), arrivals.end());
  long most_open = 0;
  for (const auto& t : arrivals) {
    most_open =
        std::max<long>(most_open, std::count_if(arrivals.begin(), arrivals.end(),
                                                [&](auto a) { return a <= t && t < a + kDelay; }));
  }
  EXPECT_LE(most_open, 4);
  EXPECT_GE(most_open, 2) << "requests should run in parallel up to the limit";
}

TEST_F(CurlTransportTest, ShutdownCancelsEveryPendingRequestOnce) {
  config.max_in_flight = 2;
  int arrived = 0;
  start_server([&](const Request&) {
    ++arrived;
    Response response;
    response.delivery = Response::Delivery::kHang;
    return response;
  });

  constexpr int kRequests = 5;
  std::vector<int> calls(kRequests, 0);
  std::vector<TransportError> errors(kRequests, TransportError::kNone);
  for (int i = 0; i < kRequests; ++i) {
    HttpRequest request;
    request.url = url("/" + std::to_string(i));
    transport().send(std::move(request), [&, i](const HttpResponse& r) {
      ++calls[i];
      errors[i] = r.error;
    });
  }
  // Two in flight at the server, three waiting for a slot.
  ASSERT_TRUE(run_until(io, [&] { return arrived == 2; }));
  EXPECT_EQ(transport().pending(), static_cast<std::size_t>(kRequests));

  transport().shutdown();
  EXPECT_EQ(transport().pending(), 0u);
  EXPECT_EQ(calls, std::vector<int>(kRequests, 0)) << "callbacks are posted, not run inline";

  bool late_called = false;
  TransportError late_error = TransportError::kNone;
  transport().send(request_to("/late"), [&](const HttpResponse& r) {
    late_called = true;
    late_error = r.error;
  });
  EXPECT_FALSE(late_called);

  ASSERT_TRUE(run_until(io, [&] {
    return late_called && std::all_of(calls.begin(), calls.end(), [](int c) { return c > 0; });
  }));
  io.poll();  // anything else queued would run now
  EXPECT_EQ(calls, std::vector<int>(kRequests, 1));
  EXPECT_EQ(errors, std::vector<TransportError>(kRequests, TransportError::kCancelled));
  EXPECT_EQ(late_error, TransportError::kCancelled);
  EXPECT_EQ(arrived, 2);
}

TEST_F(CurlTransportTest, DestroyingTheTransportDropsPendingCallbacks) {
  config.max_in_flight = 1;
  int arrived = 0;
  start_server([&](const Request&) {
    ++arrived;
    Response response;
    response.delivery = Response::Delivery::kHang;
    return response;
  });
  int calls = 0;
  for (int i = 0; i < 3; ++i) {
    HttpRequest request;
    request.url = url("/");
    transport().send(std::move(request), [&](const HttpResponse&) { ++calls; });
  }
  ASSERT_TRUE(run_until(io, [&] { return arrived == 1; }));
  http.reset();  // one in flight, two waiting
  io.poll();     // a callback posted by the destructor would run now
  EXPECT_EQ(calls, 0);
}

TEST_F(CurlTransportTest, DestroyingTheTransportDropsPostedCallbacks) {
  start_server([](const Request&) { return Response{}; });
  bool called = false;
  transport().shutdown();
  transport().send(request_to("/"), [&](const HttpResponse&) { called = true; });
  http.reset();
  io.poll();
  EXPECT_FALSE(called);
}

TEST_F(CurlTransportTest, RejectsAZeroInFlightLimit) {
  config.max_in_flight = 0;
  auto created = CurlTransport::create(io.get_executor(), config);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.error().code(), Errc::kConfig);
}

}  // namespace
}  // namespace tw
