// Key rotation online, black-box: a real daemon renews TikTok Business tokens (every renewal
// rotates the refresh token) against the real simulator, every 3 s each, while `tokenwarden rekey
// --new-key` re-encrypts the whole store under it; then the configuration switches to the new key
// and a second rekey takes what the daemon renewed meanwhile. Checked afterwards: the new key alone
// opens every token, every stored refresh token is the simulator's current one (no rotation
// lost), and the simulator saw no reuse of a dead refresh token and no invalid_grant.
//
// TW_REKEY_ONLINE_TOKENS sets the number of tokens (default 2,000 in CI); by hand:
//   TW_REKEY_ONLINE_TOKENS=100000 ./tokenwarden_tests --gtest_filter='RekeyOnline.*'
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include "config/config.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "storage/crypto.h"
#include "storage/open_store.h"
#include "tests/support/child_process.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::ChildProcess;

int token_count() {
  const char* n = std::getenv("TW_REKEY_ONLINE_TOKENS");
  return n != nullptr && std::atoi(n) > 0 ? std::atoi(n) : 2000;
}

class RekeyOnline : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { curl_global_init(CURL_GLOBAL_DEFAULT); }

  void SetUp() override {
    sim_.emplace(TW_SIM_BINARY, std::vector<std::string>{"--port", "0"}, dir_.file("sim.err"));
    auto line = sim_->first_line();
    ASSERT_TRUE(line) << testing::read_file(dir_.file("sim.err"));
    base_ = line->substr(line->find("http://"));
    ASSERT_TRUE(write_new_key_file(old_key()));
    ASSERT_TRUE(write_new_key_file(new_key()));
    setenv("TW_RK_TIKTOK", "sim-tiktok-secret", 1);
  }

  // The configuration every process uses: sealing with `sealing`, opening with `other` too.
  void write_config(const std::string& sealing, const std::string& other) {
    testing::write_file(
        config(), "database: {path: " + dir_.file("tokens.db") + "}\n" + "key: {file: " + sealing +
                      ", previous_files: [" + other + "]}\n" +
                      "providers:\n  tiktok: {open_api_base_url: " + base_ +
                      ", business_api_base_url: " + base_ +
                      ", client_key: sim-tiktok-key, client_secret: {env: TW_RK_TIKTOK}, "
                      "refresh_every: 3s, renew_before: \"off\", check_every: 1h}\n"
                      "scheduler: {lease: 40s, idle_poll: 1s, shutdown_grace: 5s}\n"
                      "log: {summary_every: 1h}\n"
                      "status: {file: " +
                      dir_.file("status.json") + ", write_every: 1s, min_interval: 1s}\n");
  }

  std::string config() const { return dir_.file("tokenwarden.yaml"); }
  std::string old_key() const { return dir_.file("old.key"); }
  std::string new_key() const { return dir_.file("new.key"); }

  json admin(const std::string& method, const std::string& path, const json& body = {}) {
    auto r = testing::http(method, base_ + path, body.is_null() ? "" : body.dump());
    EXPECT_EQ(r.status, 200) << path << " " << r.body;
    return json::parse(r.body, nullptr, false);
  }

  // Runs the CLI to the end; its exit status and stdout (stderr goes to cli.err).
  std::pair<int, std::string> cli(const std::vector<std::string>& args) {
    std::string cmd = std::string(TW_BINARY) + " --config '" + config() + "'";
    for (const std::string& a : args)
      cmd += " '" + a + "'";
    cmd += " >'" + dir_.file("cli.out") + "' 2>'" + dir_.file("cli.err") + "'";
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, testing::read_file(dir_.file("cli.out"))};
  }

  testing::TempDir dir_;
  std::optional<ChildProcess> sim_;
  std::string base_;
};

TEST_F(RekeyOnline, RekeyWhileTheDaemonRotatesTokensLosesNone) {
  const int n = token_count();
  write_config(old_key(), new_key());  // step 1: the new key staged, readable by every process
  {
    auto c = load_config(config());
    ASSERT_TRUE(c) << c.error().message();
    auto store = open_token_store(c->storage, c->database, c->key, "", OpenMode::kCreate);
    ASSERT_TRUE(store) << store.error().message();
    json seeded = admin("POST", "/admin/seed_bulk",
                        {{"provider", "tiktok"},
                         {"api", "business"},
                         {"prefix", "biz-"},
                         {"count", n},
                         {"format", "json"}});
    ASSERT_TRUE(seeded.is_array()) << seeded.dump().substr(0, 200);
    ASSERT_EQ(seeded.size(), static_cast<std::size_t>(n));
    Policy policy(PolicyConfig::from(*c), [] { return 0.0; });
    const SysTime now = SystemClock().now();
    std::vector<TokenImport> batch;
    for (const json& s : seeded) {
      batch.push_back(TokenImport{NewToken{Provider::kTikTok,
                                           TokenKind::kBusinessToken,
                                           "ws",
                                           s["account_id"].get<std::string>(),
                                           "",
                                           {},
                                           {}},
                                  TokenSecrets{Secret(s["access_token"].get<std::string>()),
                                               Secret(s["refresh_token"].get<std::string>())}});
    }
    for (std::size_t i = 0; i < batch.size(); i += 1000) {
      const std::size_t len = std::min<std::size_t>(1000, batch.size() - i);
      ASSERT_TRUE((*store)->upsert_batch(std::span(batch).subspan(i, len), now,
                                         [&](TokenRecord& r) { policy.schedule_new(r, now); }));
    }
  }

  ChildProcess daemon(TW_BINARY, {"--config", config(), "run"}, dir_.file("daemon.err"));
  // Start the rekey in the middle of the daemon's first sweep (every token is due at once), so
  // that the two overlap even when the rekey is short.
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (admin("GET", "/admin/counters")["totals"]["refreshes"].get<int>() < std::min(n / 4, 250)) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline)
        << testing::read_file(dir_.file("daemon.err"));
    std::this_thread::sleep_for(10ms);
  }
  const int before = admin("GET", "/admin/counters")["totals"]["refreshes"].get<int>();
  const auto started = std::chrono::steady_clock::now();
  auto [code, out] = cli({"rekey", "--new-key", new_key(), "--batch", n < 1000 ? "10" : "200"});
  const auto took = std::chrono::steady_clock::now() - started;
  ASSERT_EQ(code, 0) << out << testing::read_file(dir_.file("cli.err"));
  const int during = admin("GET", "/admin/counters")["totals"]["refreshes"].get<int>() - before;
  std::cout << "rekey of " << n << " tokens took "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
            << " ms while the daemon renewed " << during << " of them\n"
            << out;
  EXPECT_GT(during, 0) << "the daemon kept working during the rekey";

  // Step 2: seal with the new key; a second rekey takes what was renewed under the old one.
  EXPECT_EQ(daemon.terminate(SIGTERM, 30s), 0) << testing::read_file(dir_.file("daemon.err"));
  write_config(new_key(), old_key());
  ChildProcess second_daemon(TW_BINARY, {"--config", config(), "run"}, dir_.file("daemon2.err"));
  auto [code2, out2] = cli({"rekey"});
  EXPECT_EQ(code2, 0) << out2 << testing::read_file(dir_.file("cli.err"));
  EXPECT_NE(out2.find("no secret is sealed with another key"), std::string::npos) << out2;
  std::this_thread::sleep_for(2s);  // renewals under the new key alone
  EXPECT_EQ(second_daemon.terminate(SIGTERM, 30s), 0)
      << testing::read_file(dir_.file("daemon2.err"));

  // The new key alone opens every token, and every refresh token is the provider's current one.
  auto ring_key = load_key_file(new_key());
  ASSERT_TRUE(ring_key);
  auto store = SqliteTokenStore::open(dir_.file("tokens.db"), 5s, Cipher(KeyRing(*ring_key)),
                                      OpenMode::kExisting);
  ASSERT_TRUE(store) << store.error().message();
  auto all = (*store)->list({});
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), static_cast<std::size_t>(n));
  EXPECT_EQ(*(*store)->count_sealed_with_old_keys(), 0u);
  int checked = 0;
  for (const TokenRecord& r : *all) {
    auto secrets = (*store)->read_secrets(r);
    ASSERT_TRUE(secrets) << r.id << ": " << secrets.error().message();
    EXPECT_EQ(r.state, TokenState::kActive) << r.id << ": " << r.last_error_message;
    // Every 20th token against the simulator (all of them would take minutes at 100,000).
    if (++checked % 20 != 0 && n > 2000) continue;
    json view = admin("GET", "/admin/account?provider=tiktok&account_id=" + r.account_id);
    EXPECT_EQ(secrets->refresh_token.reveal(), view["refresh_token"].get<std::string>())
        << r.account_id << ": the rotated refresh token was lost";
  }
  json totals = admin("GET", "/admin/counters")["totals"];
  EXPECT_EQ(totals["invalid_grant"], 0);
  EXPECT_EQ(totals["reused_refresh_tokens"], 0);
  EXPECT_EQ(totals["concurrent_refreshes"], 0);
}

}  // namespace
}  // namespace tw
