// Scale-out, black-box: three real `tokenwarden run` processes on one PostgreSQL database (a
// fresh schema on the test cluster) and one real simulator. Every provider request takes 1.5 s
// (a delay fault), so each daemon always holds leases; one daemon is killed with SIGKILL mid-run.
// The test prints the take-over time (kill to the last of the dead daemon's tokens claimed by a
// survivor) and checks, from the simulator's counters and the store:
//   - no token was refreshed twice at once, and none more often than once per period;
//   - every token kept being renewed (none starved), and all three daemons did work (16
//     requests in flight each, so none can take every due token alone);
//   - the dead daemon's tokens were taken over within one lease period (plus one idle poll, the
//     most a survivor sleeps before it looks at the schedule again).
#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "storage/open_store.h"
#include "tests/support/child_process.h"
#include "tests/support/pg_test_db.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::ChildProcess;
using Steady = std::chrono::steady_clock;

const std::vector<std::string> kScaleSecrets = {"TW_SO_GOOGLE=sim-google-secret"};
constexpr int kScaleTokens = 60;
constexpr auto kRefreshEvery = 4s;
constexpr auto kLease = 3s;
constexpr auto kIdlePoll = 1s;
constexpr auto kRequestDelay = 1500ms;

class ScaleOut : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { curl_global_init(CURL_GLOBAL_DEFAULT); }

  void SetUp() override {
    ASSERT_TRUE(pg_.ok()) << pg_.error();
    sim_.emplace(TW_SIM_BINARY, std::vector<std::string>{"--port", "0"}, dir_.file("sim.err"));
    auto line = sim_->first_line();
    ASSERT_TRUE(line) << testing::read_file(dir_.file("sim.err"));
    base_ = line->substr(line->find("http://"));
    ASSERT_TRUE(write_new_key_file(dir_.file("tokenwarden.key")));
    for (int i = 0; i < 3; ++i) {
      // The same store and schedule; each daemon its own status file.
      testing::write_file(
          config(i), "storage:\n  backend: postgres\n  postgres: {dsn: \"" + pg_.dsn() + "\"}\n" +
                         "key: {file: " + dir_.file("tokenwarden.key") + "}\n" +
                         "providers:\n  google: {oauth_base_url: " + base_ +
                         ", business_base_url: " + base_ +
                         ", client_id: sim-google-client, client_secret: {env: TW_SO_GOOGLE}, "
                         "refresh_every: 4s, check_every: 1h}\n"
                         "scheduler: {lease: 3s, idle_poll: 1s, shutdown_grace: 5s}\n"
                         // 16 requests in flight each: no daemon can take every due token alone.
                         "http: {total_timeout: 2s, max_in_flight: 16}\n"
                         "retry: {initial_backoff: 1s, max_backoff: 2s}\n"
                         "log: {summary_every: 1h}\n"
                         "status: {file: " +
                         dir_.file("status" + std::to_string(i) + ".json") +
                         ", write_every: 1s, min_interval: 1s}\n");
    }
  }

  std::string config(int i) const { return dir_.file("tokenwarden" + std::to_string(i) + ".yaml"); }

  json admin(const std::string& method, const std::string& path, const json& body = {}) {
    auto r = testing::http(method, base_ + path, body.is_null() ? "" : body.dump());
    EXPECT_EQ(r.status, 200) << path << " " << r.body;
    return json::parse(r.body, nullptr, false);
  }

  std::unique_ptr<TokenStore> store(OpenMode mode = OpenMode::kExisting) {
    auto c = load_config(config(0));
    EXPECT_TRUE(c) << c.error().message();
    auto s = open_token_store(c->storage, c->database, c->key, "", mode);
    EXPECT_TRUE(s) << s.error().message();
    return s ? std::move(*s) : nullptr;
  }

  testing::TempDir dir_;
  testing::PgTestSchema pg_;
  std::optional<ChildProcess> sim_;
  std::string base_;
};

TEST_F(ScaleOut, ThreeDaemonsOnOnePostgresShareTheWorkAndTakeOverADeadOnesTokens) {
  {
    auto c = load_config(config(0));
    ASSERT_TRUE(c) << c.error().message();
    auto s = store(OpenMode::kCreate);
    ASSERT_TRUE(s);
    Policy policy(PolicyConfig::from(*c), [] { return 0.0; });
    const SysTime now = SystemClock().now();
    for (int i = 0; i < kScaleTokens; ++i) {
      const std::string account = "accounts/" + std::to_string(i);
      json seeded = admin("POST", "/admin/seed", {{"provider", "google"}, {"account_id", account}});
      NewToken t{Provider::kGoogle, TokenKind::kRefreshToken, "ws", account, "", {}, {}};
      TokenSecrets secrets{Secret(seeded["access_token"].get<std::string>()),
                           Secret(seeded["refresh_token"].get<std::string>())};
      ASSERT_TRUE(s->upsert(t, secrets, now, [&](TokenRecord& r) { policy.schedule_new(r, now); }));
    }
  }
  admin("POST", "/admin/fault",
        {{"provider", "google"},
         {"kind", "delay"},
         {"delay_ms", std::chrono::milliseconds(kRequestDelay).count()},
         {"count", -1}});

  std::vector<std::unique_ptr<ChildProcess>> daemons;
  for (int i = 0; i < 3; ++i) {
    daemons.push_back(std::make_unique<ChildProcess>(
        TW_BINARY, std::vector<std::string>{"--config", config(i), "run"},
        dir_.file("daemon" + std::to_string(i) + ".err"), kScaleSecrets));
  }
  const auto started = Steady::now();
  std::this_thread::sleep_for(kRefreshEvery);  // the daemons run on their own meanwhile

  // Kill daemon 0 while it holds leases: as soon as the store shows it working on some tokens
  // (each request is in flight for 1.5 s).
  auto s = store();
  ASSERT_TRUE(s);
  const std::string dead_owner = ":" + std::to_string(daemons[0]->pid());
  auto leased_by_dead = [&](const std::vector<TokenRecord>& rows, SysTime now) {
    std::map<std::string, std::int64_t> out;  // its tokens, at their lease generation
    for (const TokenRecord& r : rows) {
      if (r.lease_owner.ends_with(dead_owner) && r.lease_until && *r.lease_until > now) {
        out[r.id] = r.lease_generation;
      }
    }
    return out;
  };
  std::map<std::string, std::int64_t> held;
  while (held.empty() && Steady::now() - started < 4 * kRefreshEvery) {
    const auto rows = s->list({});
    ASSERT_TRUE(rows) << rows.error().message();
    held = leased_by_dead(*rows, SystemClock().now());
    if (held.empty()) std::this_thread::sleep_for(20ms);
  }
  daemons[0]->terminate(SIGKILL);
  const auto killed = Steady::now();
  const SysTime killed_wall = SystemClock().now();
  // What it held when it died (a claim may have landed since the look above).
  const auto at_kill = s->list({});
  ASSERT_TRUE(at_kill) << at_kill.error().message();
  for (const auto& [id, generation] : leased_by_dead(*at_kill, killed_wall - 1s)) {
    held[id] = generation;
  }
  ASSERT_FALSE(held.empty()) << "daemon 0 held no lease when killed: nothing to take over\n"
                             << testing::read_file(dir_.file("daemon0.err"));

  // Poll (an external process: not timing the test) until a survivor claimed each of them.
  std::optional<Steady::duration> takeover;
  while (Steady::now() - killed < 4 * kLease) {
    const auto rows = s->list({});
    ASSERT_TRUE(rows) << rows.error().message();
    const bool all_taken = std::all_of(held.begin(), held.end(), [&](const auto& h) {
      const auto r = std::find_if(rows->begin(), rows->end(),
                                  [&](const TokenRecord& t) { return t.id == h.first; });
      return r != rows->end() && r->lease_generation > h.second;
    });
    if (all_taken) {
      takeover = Steady::now() - killed;
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(takeover) << "the dead daemon's tokens were not taken over";
  const auto takeover_ms = std::chrono::duration_cast<std::chrono::milliseconds>(*takeover);
  std::cout << "take-over: " << held.size() << " tokens held by the killed daemon, all claimed "
            << "by survivors " << takeover_ms.count() << " ms after the kill (lease "
            << std::chrono::milliseconds(kLease).count() << " ms, idle poll "
            << std::chrono::milliseconds(kIdlePoll).count() << " ms)\n";
  RecordProperty("takeover_ms", static_cast<int>(takeover_ms.count()));
  EXPECT_LE(*takeover, kLease + kIdlePoll);

  std::this_thread::sleep_for(2 * kRefreshEvery);
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(daemons[static_cast<std::size_t>(i)]->terminate(SIGTERM, 20s), 0)
        << testing::read_file(dir_.file("daemon" + std::to_string(i) + ".err"));
  }
  const auto ran = Steady::now() - started;

  const json counters = admin("GET", "/admin/counters");
  const json& totals = counters["totals"];
  EXPECT_EQ(totals["concurrent_refreshes"], 0) << "no token refreshed twice at once";
  EXPECT_EQ(totals["invalid_grant"], 0);
  // A period is the renewal interval plus the request's own 1.5 s; a token handled by two
  // daemons in one period would show about twice as many refreshes.
  const auto most = static_cast<int>(ran / kRefreshEvery) + 1;
  for (const auto& [account, c] : counters["accounts"].items()) {
    SCOPED_TRACE(account);
    EXPECT_GE(c["refreshes"].get<int>(), 2) << "renewed again and again, never starved";
    EXPECT_LE(c["refreshes"].get<int>(), most) << "at most once per period";
  }
  EXPECT_EQ(counters["accounts"].size(), static_cast<std::size_t>(kScaleTokens));

  const auto rows = s->list({});
  ASSERT_TRUE(rows);
  for (const TokenRecord& r : *rows) {
    EXPECT_EQ(r.state, TokenState::kActive) << r.id << " " << r.last_error_message;
    EXPECT_TRUE(r.last_refreshed_at && *r.last_refreshed_at > killed_wall)
        << r.id << " renewed after the kill too";
  }
  // All three shared the work: daemon 0 held leases when it died; the survivors' final status
  // files count their renewals.
  for (int i = 1; i < 3; ++i) {
    const json st = json::parse(
        testing::read_file(dir_.file("status" + std::to_string(i) + ".json")), nullptr, false);
    ASSERT_TRUE(st.is_object()) << i;
    EXPECT_GT(st["last_hour"]["refreshes"]["ok"].get<int>(), 0) << "daemon " << i << " did work";
  }
}

}  // namespace
}  // namespace tw
