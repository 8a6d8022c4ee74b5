// Black-box tests of the tokenwarden-sim binary: start it on port 0, talk to it over loopback with
// libcurl, stop it with SIGTERM. Waiting is done by poll() on a pipe or a pidfd with a deadline,
// never by sleeping.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <curl/curl.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/support/child_process.h"
#include "tests/test_util.h"

#ifndef TW_SIM_BINARY
#define TW_SIM_BINARY "/tmp/simbuild2/build/tokenwarden-sim"
#endif

namespace tw::sim {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

using testing::kDeadline;

using testing::ChildProcess;
using testing::http;
using testing::HttpResult;
using SimProcess = ChildProcess;

// A running simulator on a free port.
class SimBinaryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { curl_global_init(CURL_GLOBAL_DEFAULT); }

  void start(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--port", "0", "--port-file", dir.file("port")};
    args.insert(args.end(), extra.begin(), extra.end());
    sim.emplace(TW_SIM_BINARY, args, dir.file("stderr"));
    const auto line = sim->first_line();
    ASSERT_TRUE(line.has_value()) << testing::read_file(dir.file("stderr"));
    port = testing::read_file(dir.file("port"));
    ASSERT_FALSE(port.empty());
    ASSERT_EQ(port.back(), '\n');
    port.pop_back();
    const std::string scheme = line->find("https://") != std::string::npos ? "https" : "http";
    base = scheme + "://127.0.0.1:" + port;
    EXPECT_EQ(*line, "listening on " + base);
  }

  json post(const std::string& path, const json& body) {
    const HttpResult r = http("POST", base + path, body.dump(), {}, ca_file);
    EXPECT_EQ(r.code, CURLE_OK) << path;
    EXPECT_EQ(r.status, 200) << path << " " << r.body;
    return json::parse(r.body, nullptr, false);
  }
  HttpResult google_refresh(const std::string& refresh_token) {
    return http("POST", base + "/token",
                "client_id=sim-google-client&client_secret=sim-google-secret&grant_type="
                "refresh_token&refresh_token=" +
                    refresh_token,
                {}, ca_file);
  }
  json counters() {
    return json::parse(http("GET", base + "/admin/counters", {}, {}, ca_file).body);
  }

  testing::TempDir dir;
  std::optional<SimProcess> sim;
  std::string port;
  std::string base;
  std::string ca_file;
};

TEST_F(SimBinaryTest, ServesProvidersAndAdminThenExitsZeroOnSigterm) {
  start();
  const json g = post("/admin/seed", {{"provider", "google"}, {"account_id", "accounts/1"}});
  const HttpResult refreshed = google_refresh(g["refresh_token"]);
  EXPECT_EQ(refreshed.status, 200);
  const std::string access = json::parse(refreshed.body)["access_token"];
  EXPECT_EQ(http("GET", base + "/tokeninfo?access_token=" + access).status, 200);
  EXPECT_EQ(
      http("GET", base + "/v1/accounts?pageSize=1", {}, {"Authorization: Bearer " + access}).status,
      200);
  EXPECT_EQ(http("GET", base + "/revoke").status, 404);
  EXPECT_EQ(counters()["accounts"]["google:accounts/1"]["refreshes"], 1);
  EXPECT_EQ(sim->terminate(), 0);
}

TEST_F(SimBinaryTest, DeliveryFaultsReachTheClient) {
  start();
  const json g = post("/admin/seed", {{"provider", "google"}, {"account_id", "a"}});
  post("/admin/fault", {{"endpoint", "google.token"}, {"kind", "reset"}});
  EXPECT_NE(google_refresh(g["refresh_token"]).code, CURLE_OK);
  post("/admin/fault", {{"endpoint", "google.token"}, {"kind", "truncate"}});
  EXPECT_NE(google_refresh(g["refresh_token"]).code, CURLE_OK);  // fewer bytes than promised
  post("/admin/fault", {{"endpoint", "google.token"}, {"kind", "html"}});
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 502);
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);
  EXPECT_EQ(sim->terminate(), 0);
}

TEST_F(SimBinaryTest, ServesTlsWithTheCertificateFromCaOut) {
  start({"--tls", "--ca-out", dir.file("ca.pem")});
  ASSERT_EQ(base.substr(0, 8), "https://");
  ca_file = dir.file("ca.pem");
  const json t = post("/admin/seed", {{"provider", "tiktok"}, {"account_id", "t1"}});
  const HttpResult r = http("POST", base + "/v2/oauth/token/",
                            "client_key=sim-tiktok-key&client_secret=sim-tiktok-secret&grant_type="
                            "refresh_token&refresh_token=" +
                                t["refresh_token"].get<std::string>(),
                            {}, ca_file);
  EXPECT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(http("GET", base + "/admin/clock").code, CURLE_OK);  // untrusted without the CA file
  EXPECT_EQ(sim->terminate(), 0);
}

TEST_F(SimBinaryTest, VerboseLogNamesRequestsButNoSecrets) {
  start({"--verbose"});
  const json g = post("/admin/seed", {{"provider", "google"}, {"account_id", "a"}});
  const std::string refresh = g["refresh_token"];
  EXPECT_EQ(google_refresh(refresh).status, 200);
  EXPECT_EQ(
      http("GET", base + "/tokeninfo?access_token=" + g["access_token"].get<std::string>()).status,
      200);
  EXPECT_EQ(sim->terminate(), 0);
  const std::string log = testing::read_file(dir.file("stderr"));
  EXPECT_NE(log.find("POST /token 200 "), std::string::npos) << log;
  EXPECT_NE(log.find("GET /tokeninfo 200 "), std::string::npos) << log;
  EXPECT_EQ(log.find(refresh), std::string::npos);
  EXPECT_EQ(log.find(g["access_token"].get<std::string>()), std::string::npos);
  EXPECT_EQ(log.find("sim-google-secret"), std::string::npos);
}

TEST_F(SimBinaryTest, ConcurrentClientsAreAllServed) {
  start({"--threads", "2"});
  constexpr int kThreads = 4;
  constexpr int kPerThread = 50;
  const json seeded =
      post("/admin/seed_bulk",
           {{"provider", "google"}, {"prefix", "c"}, {"count", kThreads}, {"format", "json"}});
  ASSERT_EQ(seeded.size(), static_cast<std::size_t>(kThreads));
  std::vector<int> ok(kThreads, 0);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        if (google_refresh(seeded[static_cast<std::size_t>(t)]["refresh_token"]).status == 200) {
          ++ok[static_cast<std::size_t>(t)];
        }
      }
    });
  }
  for (auto& t : threads)
    t.join();
  for (int t = 0; t < kThreads; ++t)
    EXPECT_EQ(ok[static_cast<std::size_t>(t)], kPerThread);
  EXPECT_EQ(counters()["totals"]["refreshes"], kThreads * kPerThread);
  EXPECT_EQ(sim->terminate(), 0);
}

TEST_F(SimBinaryTest, RefreshDuringADelayedOneIsCountedConcurrent) {
  start();
  const json g = post("/admin/seed", {{"provider", "google"}, {"account_id", "a"}});
  post("/admin/fault", {{"endpoint", "google.token"}, {"kind", "delay"}, {"delay_ms", 3000}});
  std::thread slow([&] { EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200); });
  // Wait (bounded) until the server has the slow refresh, then send a second one.
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  while (counters()["by_endpoint"]["google.token"] != 1 &&
         std::chrono::steady_clock::now() < deadline) {
  }
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);
  slow.join();
  EXPECT_EQ(counters()["accounts"]["google:a"]["concurrent_refreshes"], 1);
  EXPECT_EQ(sim->terminate(), 0);
}

TEST_F(SimBinaryTest, ServesTheGenericOAuth2ServerAndTheApiKeyProbe) {
  start({"--oauth2-access-lifetime", "120", "--oauth2-api-key", "gw-key"});
  // base64("sim-oauth2-client:sim-oauth2-secret"); header names in any case.
  const std::vector<std::string> auth = {
      "Authorization: Basic c2ltLW9hdXRoMi1jbGllbnQ6c2ltLW9hdXRoMi1zZWNyZXQ=", "X-API-Key: gw-key"};
  const json g = post("/admin/seed", {{"provider", "oauth2"}, {"account_id", "u1"}});
  const std::string refresh_token = g["refresh_token"];
  const std::string form = "grant_type=refresh_token&refresh_token=" + refresh_token;
  EXPECT_EQ(http("POST", base + "/oauth2/token", form, {auth[0]}).status, 403);  // no gateway key
  const HttpResult refreshed = http("POST", base + "/oauth2/token", form, auth);
  ASSERT_EQ(refreshed.status, 200) << refreshed.body;
  const json b = json::parse(refreshed.body);
  EXPECT_EQ(b["expires_in"], 120);
  EXPECT_NE(b["refresh_token"], refresh_token);
  EXPECT_EQ(http("POST", base + "/oauth2/token", form, auth).status, 400);  // rotated away

  const std::string access = b["access_token"];
  const HttpResult revoked = http("POST", base + "/oauth2/revoke", "token=" + access, auth);
  EXPECT_EQ(revoked.status, 200);
  EXPECT_TRUE(revoked.body.empty());
  const HttpResult inactive = http("POST", base + "/oauth2/introspect", "token=" + access, auth);
  EXPECT_EQ(inactive.status, 200);
  EXPECT_EQ(json::parse(inactive.body), json({{"active", false}}));

  const json k = post("/admin/seed", {{"provider", "apikey"}, {"account_id", "k1"}});
  const HttpResult probed = http("GET", base + "/apikey/probe", {},
                                 {"X-Api-Key: " + k["access_token"].get<std::string>()});
  EXPECT_EQ(probed.status, 200);
  EXPECT_EQ(json::parse(probed.body), json({{"account_id", "k1"}}));
  EXPECT_EQ(sim->terminate(), 0);
}

TEST(SimBinary, BadFlagsExitWithStatus2) {
  testing::TempDir dir;
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--port", "70000"}, {"--no-such-flag"}, {"--ca-out", "x.pem"}}) {
    SimProcess sim(TW_SIM_BINARY, args, dir.file("stderr"));
    EXPECT_EQ(sim.wait(), 2) << args[0];
  }
}

TEST(SimBinary, BindFailureExitsWithStatus1AndAMessage) {
  testing::TempDir dir;
  SimProcess sim(TW_SIM_BINARY, {"--listen", "192.0.2.1", "--port", "0"},
                 dir.file("stderr"));  // TEST-NET-1
  EXPECT_EQ(sim.wait(), 1);
  const std::string err = testing::read_file(dir.file("stderr"));
  EXPECT_NE(err.find("cannot listen on 192.0.2.1"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1);
}

}  // namespace
}  // namespace tw::sim
