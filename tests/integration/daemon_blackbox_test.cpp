// Black-box: the real `tokenwarden run` binary against the real `tokenwarden-sim` binary on
// loopback, with a forced `tokenwarden refresh --all` beside it. The outcome is read from the
// store and from the simulator's counters: no refresh sent twice or concurrently, every stored
// refresh token the newest one the provider issued, no secret in the daemon's log.
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "storage/sqlite_token_store.h"
#include "tests/support/child_process.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::ChildProcess;

const std::vector<std::string> kSecrets = {"TW_BB_META=sim-meta-secret",
                                           "TW_BB_GOOGLE=sim-google-secret",
                                           "TW_BB_TIKTOK=sim-tiktok-secret"};

class DaemonBlackBox : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { curl_global_init(CURL_GLOBAL_DEFAULT); }

  void SetUp() override {
    sim_.emplace(TW_SIM_BINARY, std::vector<std::string>{"--port", "0"}, dir_.file("sim.err"));
    auto line = sim_->first_line();
    ASSERT_TRUE(line) << testing::read_file(dir_.file("sim.err"));
    base_ = line->substr(line->find("http://"));
    ASSERT_TRUE(write_new_key_file(dir_.file("tokenwarden.key")));
    const std::string config =
        "database: {path: " + dir_.file("tokens.db") + "}\n" +
        "key: {file: " + dir_.file("tokenwarden.key") + "}\n" +
        "providers:\n"
        "  meta: {graph_base_url: " +
        base_ +
        ", app_id: sim-meta-app, app_secret: {env: TW_BB_META}, "
        "check_every: 5s}\n"
        "  google: {oauth_base_url: " +
        base_ + ", business_base_url: " + base_ +
        ", client_id: sim-google-client, client_secret: {env: TW_BB_GOOGLE}, "
        "check_every: 5s}\n"
        "  tiktok: {open_api_base_url: " +
        base_ + ", business_api_base_url: " + base_ +
        ", client_key: sim-tiktok-key, client_secret: {env: TW_BB_TIKTOK}, "
        "check_every: 5s}\n"
        "scheduler: {idle_poll: 1s, shutdown_grace: 5s}\n"
        "http: {total_timeout: 5s}\n"
        "retry: {initial_backoff: 1s, max_backoff: 5s}\n"
        "log: {summary_every: 2s, level: debug}\n";
    testing::write_file(dir_.file("tokenwarden.yaml"), config);
  }

  json admin(const std::string& method, const std::string& path, const json& body = {}) {
    auto r = testing::http(method, base_ + path, body.is_null() ? "" : body.dump());
    EXPECT_EQ(r.status, 200) << path << " " << r.body;
    return json::parse(r.body, nullptr, false);
  }

  // Seeds grants in the simulator and adds them to the store, as `tokenwarden add` would.
  void seed(const std::vector<std::tuple<json, Provider, TokenKind>>& grants) {
    auto config = load_config(dir_.file("tokenwarden.yaml"));
    ASSERT_TRUE(config) << config.error().message();
    auto store = open_token_store(config->database, config->key, "", OpenMode::kCreate);
    ASSERT_TRUE(store) << store.error().message();
    Policy policy(PolicyConfig::from(*config), [] { return 0.0; });
    const SysTime now = SystemClock().now();
    for (const auto& [spec, provider, kind] : grants) {
      json s = admin("POST", "/admin/seed", spec);
      NewToken t{provider, kind, "ws", spec["account_id"].get<std::string>(), "", {}, {}};
      if (s["expires_at"].is_number()) t.expires_at = from_unix(s["expires_at"].get<int64_t>());
      if (s.contains("refresh_expires_at") && s["refresh_expires_at"].is_number()) {
        t.refresh_expires_at = from_unix(s["refresh_expires_at"].get<int64_t>());
      }
      TokenSecrets secrets{Secret(s["access_token"].get<std::string>()),
                           Secret(s["refresh_token"].get<std::string>())};
      ASSERT_TRUE(
          (*store)->upsert(t, secrets, now, [&](TokenRecord& r) { policy.schedule_new(r, now); }));
      accounts_.emplace_back(spec["provider"].get<std::string>(),
                             spec["account_id"].get<std::string>());
    }
  }

  std::unique_ptr<SqliteTokenStore> store() {
    auto config = load_config(dir_.file("tokenwarden.yaml"));
    return std::move(*open_token_store(config->database, config->key, "", OpenMode::kExisting));
  }

  testing::TempDir dir_;
  std::optional<ChildProcess> sim_;
  std::string base_;
  std::vector<std::pair<std::string, std::string>> accounts_;
};

TEST_F(DaemonBlackBox, RenewsAndChecksEveryTokenLosingNothingBesideAForcedRefresh) {
  std::vector<std::tuple<json, Provider, TokenKind>> grants;
  for (int i = 0; i < 10; ++i) {  // a day from expiry: renewed at once; rotating
    grants.push_back(
        {{{"provider", "tiktok"}, {"api", "v2"}, {"account_id", "v2-" + std::to_string(i)}},
         Provider::kTikTok,
         TokenKind::kRefreshToken});
  }
  for (int i = 0; i < 5; ++i) {  // two days from expiry: renewed at once; rotating
    grants.push_back({{{"provider", "tiktok"},
                       {"api", "business"},
                       {"expires_in", 172800},
                       {"account_id", "biz-" + std::to_string(i)}},
                      Provider::kTikTok,
                      TokenKind::kBusinessToken});
  }
  for (int i = 0; i < 5; ++i) {
    grants.push_back({{{"provider", "google"}, {"account_id", "accounts/" + std::to_string(i)}},
                      Provider::kGoogle,
                      TokenKind::kRefreshToken});
    grants.push_back(
        {{{"provider", "meta"}, {"kind", "page"}, {"account_id", "page-" + std::to_string(i)}},
         Provider::kMeta,
         TokenKind::kPageToken});
  }
  seed(grants);

  const std::vector<std::string> cfg = {"--config", dir_.file("tokenwarden.yaml")};
  std::vector<std::string> run_args = cfg;
  run_args.push_back("run");
  ChildProcess daemon(TW_BINARY, run_args, dir_.file("daemon.err"), kSecrets);
  // A forced renewal of everything, at the same time: leases keep the two apart.
  std::vector<std::string> refresh_args = cfg;
  refresh_args.insert(refresh_args.end(), {"refresh", "--all"});
  ChildProcess forced(TW_BINARY, refresh_args, dir_.file("forced.err"), kSecrets);
  const int forced_exit = forced.wait(std::chrono::milliseconds(30'000));
  EXPECT_TRUE(forced_exit == 0 || forced_exit == 1) << testing::read_file(dir_.file("forced.err"));

  // Wait until every token was checked at least once (5 s period) and the due ones renewed.
  json totals;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    totals = admin("GET", "/admin/counters")["totals"];
    if (totals["refreshes"].get<int>() >= 15 && totals["checks"].get<int>() >= 30) break;
    std::this_thread::sleep_for(200ms);  // polling an external process, not timing the test
  }
  EXPECT_GE(totals["refreshes"].get<int>(), 15) << totals.dump();
  EXPECT_GE(totals["checks"].get<int>(), 30) << totals.dump();
  EXPECT_EQ(daemon.terminate(SIGTERM, std::chrono::milliseconds(20'000)), 0)
      << testing::read_file(dir_.file("daemon.err"));

  totals = admin("GET", "/admin/counters")["totals"];
  EXPECT_EQ(totals["concurrent_refreshes"], 0) << "no token refreshed twice at once";
  EXPECT_EQ(totals["reused_refresh_tokens"], 0) << "no rotated token ever presented again";
  EXPECT_EQ(totals["invalid_grant"], 0);

  auto s = store();
  const std::string logs =
      testing::read_file(dir_.file("daemon.err")) + testing::read_file(dir_.file("forced.err"));
  EXPECT_NE(logs.find("renewal of tok_"), std::string::npos);
  auto rows = s->list({});
  ASSERT_TRUE(rows);
  ASSERT_EQ(rows->size(), accounts_.size());
  for (const TokenRecord& r : *rows) {
    SCOPED_TRACE(r.id + " " + r.account_id);
    EXPECT_EQ(r.state, TokenState::kActive) << r.last_error_message;
    EXPECT_TRUE(r.lease_owner.empty());
    const std::string provider(to_string(r.provider));
    json view = admin("GET", "/admin/account?provider=" + provider + "&account_id=" + r.account_id);
    auto secrets = s->read_secrets(r);
    ASSERT_TRUE(secrets);
    EXPECT_EQ(secrets->refresh_token.reveal(), view["refresh_token"].get<std::string>())
        << "the stored refresh token is the provider's newest: nothing lost";
    for (const char* k : {"access_token", "refresh_token"}) {
      if (view[k].is_string()) {
        EXPECT_EQ(logs.find(view[k].get<std::string>()), std::string::npos) << k << " in a log";
      }
    }
  }
}

}  // namespace
}  // namespace tw
