// Black-box: the real `tokenwarden run` binary against the real `tokenwarden-sim` binary on
// loopback, two daemons with two forced `tokenwarden refresh --all` beside them. The outcome is
// read from the store and from the simulator's counters: no refresh sent twice or concurrently,
// every stored refresh token the newest one the provider issued, no secret in the daemon's log.
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "storage/open_store.h"
#include "tests/support/child_process.h"
#include "tests/support/notify_socket.h"
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
    // --record-issued: every token it hands out can be searched for afterwards.
    sim_.emplace(TW_SIM_BINARY, std::vector<std::string>{"--port", "0", "--record-issued"},
                 dir_.file("sim.err"));
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
        "log: {summary_every: 2s, level: debug}\n" +
        // Never the default /var/lib/tokenwarden/status.json of the host running the tests.
        "status: {file: " + dir_.file("status.json") +
        ", prometheus_file: " + dir_.file("tokenwarden.prom") +
        ", write_every: 2s, min_interval: 1s}\n";
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
    auto store =
        open_token_store(config->storage, config->database, config->key, "", OpenMode::kCreate);
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

  std::unique_ptr<TokenStore> store() {
    auto config = load_config(dir_.file("tokenwarden.yaml"));
    return std::move(
        *open_token_store(config->storage, config->database, config->key, "", OpenMode::kExisting));
  }

  testing::TempDir dir_;
  std::optional<ChildProcess> sim_;
  std::string base_;
  std::vector<std::pair<std::string, std::string>> accounts_;
};

TEST_F(DaemonBlackBox, FourProcessesOnOneDatabaseRenewEveryTokenOnceLosingNothing) {
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
  // Four processes on one database file over the same due tokens: two daemons and two forced
  // renewals of everything, at the same time. Leases keep them apart.
  ChildProcess daemon(TW_BINARY, run_args, dir_.file("daemon.err"), kSecrets);
  ChildProcess daemon2(TW_BINARY, run_args, dir_.file("daemon2.err"), kSecrets);
  std::vector<std::string> refresh_args = cfg;
  refresh_args.insert(refresh_args.end(), {"refresh", "--all"});
  ChildProcess forced(TW_BINARY, refresh_args, dir_.file("forced.err"), kSecrets);
  ChildProcess forced2(TW_BINARY, refresh_args, dir_.file("forced2.err"), kSecrets);
  for (ChildProcess* f : {&forced, &forced2}) {
    // 1: some tokens were busy with another process (reported, not failed).
    const int code = f->wait(std::chrono::milliseconds(30'000));
    EXPECT_TRUE(code == 0 || code == 1) << testing::read_file(dir_.file("forced.err"))
                                        << testing::read_file(dir_.file("forced2.err"));
  }

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
  EXPECT_EQ(daemon2.terminate(SIGTERM, std::chrono::milliseconds(20'000)), 0)
      << testing::read_file(dir_.file("daemon2.err"));

  totals = admin("GET", "/admin/counters")["totals"];
  EXPECT_EQ(totals["concurrent_refreshes"], 0) << "no token refreshed twice at once";
  EXPECT_EQ(totals["reused_refresh_tokens"], 0) << "no rotated token ever presented again";
  EXPECT_EQ(totals["invalid_grant"], 0);

  auto s = store();
  std::string logs;
  for (const char* f : {"daemon.err", "daemon2.err", "forced.err", "forced2.err"})
    logs += testing::read_file(dir_.file(f));
  EXPECT_NE(logs.find(" of tok_"), std::string::npos) << "a line per renewal or check";
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

// Run as systemd would: a notify socket, a watchdog, SIGHUP reloads, then SIGTERM. The status
// file and `tokenwarden status` tell what happened; no log line holds a secret.
TEST_F(DaemonBlackBox, SpeaksToSystemdWritesItsStatusAndReloads) {
  seed({{{{"provider", "google"}, {"account_id", "accounts/ok"}},
         Provider::kGoogle,
         TokenKind::kRefreshToken},
        {{{"provider", "google"}, {"account_id", "accounts/gone"}},
         Provider::kGoogle,
         TokenKind::kRefreshToken},
        {{{"provider", "tiktok"}, {"api", "v2"}, {"account_id", "open-1"}},
         Provider::kTikTok,
         TokenKind::kRefreshToken}});
  admin("POST", "/admin/revoke", {{"provider", "google"}, {"account_id", "accounts/gone"}});
  std::string config = testing::read_file(dir_.file("tokenwarden.yaml"));
  // The operator's hook: records the event and its whole environment.
  const std::string hook = dir_.file("on-reauth.sh");
  testing::write_file(hook, "#!/bin/sh\necho \"$TW_TOKEN_ID $TW_STATE $TW_WORKSPACE\" >> '" +
                                dir_.file("notices") + "'\nenv > '" + dir_.file("hook.env") +
                                "'\n");
  std::filesystem::permissions(hook, std::filesystem::perms::owner_all);
  config += "notify: {command: " + hook + "}\n";
  testing::write_file(dir_.file("tokenwarden.yaml"), config);

  testing::FakeNotifySocket notify(dir_.file("notify"), /*export_env=*/false);
  std::vector<std::string> env = kSecrets;
  env.push_back("NOTIFY_SOCKET=" + dir_.file("notify"));
  env.push_back("WATCHDOG_USEC=2000000");
  ChildProcess daemon(TW_BINARY, {"--config", dir_.file("tokenwarden.yaml"), "run"},
                      dir_.file("daemon.err"), env);
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::milliseconds(10'000)))
      << testing::read_file(dir_.file("daemon.err"));
  EXPECT_TRUE(notify.wait_for("WATCHDOG=1", std::chrono::milliseconds(5'000)));

  // Within a check period (5 s) every token is checked and the revoked grant found.
  nlohmann::json status;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    status = json::parse(testing::read_file(dir_.file("status.json")), nullptr, false);
    if (status.is_object() && status["needs_reauth_total"] == 1 &&
        status["last_hour"]["checks"]["ok"].get<int>() >= 2) {
      break;
    }
    std::this_thread::sleep_for(200ms);  // polling an external process, not timing the test
  }
  ASSERT_TRUE(status.is_object()) << testing::read_file(dir_.file("daemon.err"));
  EXPECT_EQ(status["needs_reauth_total"], 1) << status.dump(2);
  EXPECT_EQ(status["needs_reauth"][0]["workspace_id"], "ws");
  EXPECT_EQ(status["needs_reauth"][0]["state"], "revoked");
  EXPECT_EQ(status["tokens"]["total"]["revoked"], 1);
  EXPECT_EQ(status["pid"], daemon.pid());
  // What the running daemon shows the rest of the host: its argv and environment (scanned for
  // secrets at the end), and that it cannot dump core.
  const std::string proc = "/proc/" + std::to_string(daemon.pid());
  const std::string cmdline = testing::read_file(proc + "/cmdline");
  const std::string environ_text = testing::read_file(proc + "/environ");
  EXPECT_NE(cmdline.find("run"), std::string::npos) << "read the daemon's /proc entries";
  if (geteuid() == 0) {
    EXPECT_NE(environ_text.find("TW_BB_"), std::string::npos) << "root reads it: scanned below";
  } else {
    // The daemon is not dumpable: its environment is root's to read, not its own user's.
    EXPECT_EQ(environ_text, "") << "another process of the same user read the environment";
  }
  const std::string limits = testing::read_file(proc + "/limits");
  EXPECT_NE(limits.find("Max core file size        0"), std::string::npos) << limits;
  EXPECT_NE(
      testing::read_file(dir_.file("tokenwarden.prom")).find("tokenwarden_needs_reauth_tokens 1"),
      std::string::npos);
  EXPECT_TRUE(notify.wait_for("STATUS=", std::chrono::milliseconds(5'000)));

  // The hook ran once for the revoked token, with nothing secret in its environment.
  const std::string revoked_id = status["needs_reauth"][0]["token_id"].get<std::string>();
  std::string notices;
  for (int i = 0; i < 100 && notices.empty(); ++i) {
    notices = testing::read_file(dir_.file("notices"));
    std::this_thread::sleep_for(100ms);  // polling an external process
  }
  EXPECT_EQ(notices, revoked_id + " revoked ws\n");
  const std::string hook_env = testing::read_file(dir_.file("hook.env"));
  EXPECT_NE(hook_env.find("TW_PROVIDER=google"), std::string::npos) << hook_env;
  for (const char* secret : {"sim-meta-secret", "sim-google-secret", "sim-tiktok-secret"}) {
    EXPECT_EQ(hook_env.find(secret), std::string::npos) << hook_env;
  }

  // `tokenwarden status` as a monitoring check: a token needs re-auth, so exit 1.
  ChildProcess check(TW_BINARY, {"--config", dir_.file("tokenwarden.yaml"), "status"},
                     dir_.file("status.err"));
  EXPECT_EQ(check.wait(), 1);

  // SIGHUP with a good change, then with a broken file: the daemon keeps running either way.
  const std::string retry = "retry: {initial_backoff: 1s, max_backoff: 5s}";
  auto with_retry = [&](const std::string& replacement) {
    std::string changed = config;
    const size_t at = changed.find(retry);
    EXPECT_NE(at, std::string::npos);
    return changed.replace(at, retry.size(), replacement);
  };
  // A retry change applies at once; an HTTP timeout needs a restart, and the log says so.
  std::string changed = with_retry("retry: {initial_backoff: 2s, max_backoff: 10s}");
  const std::string http = "http: {total_timeout: 5s}";
  ASSERT_NE(changed.find(http), std::string::npos);
  changed.replace(changed.find(http), http.size(), "http: {total_timeout: 6s}");
  testing::write_file(dir_.file("tokenwarden.yaml"), changed);
  auto wait_for_log = [&](const std::string& text) {
    const auto until = std::chrono::steady_clock::now() + 10s;
    std::string log;
    while (std::chrono::steady_clock::now() < until) {
      log = testing::read_file(dir_.file("daemon.err"));
      if (log.find(text) != std::string::npos) break;
      std::this_thread::sleep_for(100ms);  // polling an external process
    }
    return log;
  };
  kill(daemon.pid(), SIGHUP);
  EXPECT_TRUE(notify.wait_for("RELOADING=1", std::chrono::milliseconds(5'000)));
  EXPECT_NE(wait_for_log("configuration reloaded").find("changed but needing a restart: http\n"),
            std::string::npos);
  testing::write_file(dir_.file("tokenwarden.yaml"), with_retry("retry: [broken"));
  kill(daemon.pid(), SIGHUP);
  std::string log = wait_for_log("reload failed");
  EXPECT_NE(log.find("configuration reloaded"), std::string::npos) << log;
  EXPECT_NE(log.find("reload failed, keeping the running configuration"), std::string::npos) << log;

  EXPECT_EQ(daemon.terminate(SIGTERM, std::chrono::milliseconds(20'000)), 0) << log;
  EXPECT_TRUE(notify.wait_for("STOPPING=1", std::chrono::milliseconds(1'000)));
  EXPECT_EQ(testing::read_file(dir_.file("notices")), revoked_id + " revoked ws\n")
      << "notified once, not on every scan";
  // No token the simulator issued (seeded or renewed) is anywhere the daemon wrote or showed:
  // every log line, the status file and metrics, the notification hook's environment, the
  // database with its WAL and journal, and the daemon's argv and environment.
  const std::vector<std::pair<std::string, std::string>> places = {
      {"every log line", testing::read_file(dir_.file("daemon.err"))},
      {"the status file", testing::read_file(dir_.file("status.json"))},
      {"the metrics", testing::read_file(dir_.file("tokenwarden.prom"))},
      {"the hook's environment", hook_env},
      {"the database", testing::read_file(dir_.file("tokens.db"))},
      {"its WAL", testing::read_file(dir_.file("tokens.db-wal"))},
      {"its journal", testing::read_file(dir_.file("tokens.db-journal"))},
      {"/proc/PID/cmdline", cmdline},
      {"/proc/PID/environ", environ_text}};
  const auto issued = admin("GET", "/admin/issued")["tokens"].get<std::vector<std::string>>();
  EXPECT_GE(issued.size(), 6u) << "seeded and renewed tokens";
  for (const std::string& token : issued) {
    for (const auto& [where, text] : places)
      EXPECT_EQ(text.find(token), std::string::npos) << "a token in " << where;
  }
  for (const char* secret : {"sim-meta-secret", "sim-google-secret", "sim-tiktok-secret"}) {
    for (const auto& [where, text] : places) {
      if (where != "/proc/PID/environ") {  // {env: NAME} client secrets live there, by design
        EXPECT_EQ(text.find(secret), std::string::npos) << "a client secret in " << where;
      }
    }
  }
}

// `tokenwarden check` and `refresh` build the daemon's pipeline but are not the daemon: they must
// not write its status file (a dead daemon would look alive to `tokenwarden status`).
TEST_F(DaemonBlackBox, ForcedCommandsLeaveTheStatusFileAlone) {
  seed({{{{"provider", "google"}, {"account_id", "accounts/1"}},
         Provider::kGoogle,
         TokenKind::kRefreshToken},
        {{{"provider", "meta"}, {"kind", "page"}, {"account_id", "page-1"}},
         Provider::kMeta,
         TokenKind::kPageToken}});
  for (const char* command : {"check", "refresh"}) {
    ChildProcess forced(TW_BINARY, {"--config", dir_.file("tokenwarden.yaml"), command, "--all"},
                        dir_.file("forced.err"), kSecrets);
    EXPECT_EQ(forced.wait(std::chrono::milliseconds(30'000)), 0)
        << testing::read_file(dir_.file("forced.err"));
  }
  EXPECT_GE(admin("GET", "/admin/counters")["totals"]["checks"].get<int>(), 1)
      << "checks were sent";
  EXPECT_FALSE(std::filesystem::exists(dir_.file("status.json")));
  EXPECT_FALSE(std::filesystem::exists(dir_.file("tokenwarden.prom")));
}

}  // namespace
}  // namespace tw
