#include "worker/status.h"

#include <sstream>

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "core/log.h"
#include "storage/sqlite_token_store.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;

const SysTime kStatusStart = from_unix(1'800'000'000);

class StatusTest : public ::testing::Test {
 protected:
  StatusTest()
      : store_(
            std::move(*SqliteTokenStore::open(":memory:", 1s, Cipher(KeyRing(*Key::generate()))))),
        worker_(io_.get_executor(), scheduler_, *store_, {}, clock_, WorkerOptions{},
                make_logger("t", LogConfig{}, logs_), timers_.factory()) {
    config_.file = dir_.file("status.json");
    config_.prometheus_file = dir_.file("tokenwarden.prom");
  }

  std::string add(Provider p, TokenKind k, const std::string& account, TokenState state,
                  std::string reason = "") {
    NewToken t{p, k, "ws-" + account, account, "", {}, {}};
    auto r = store_->upsert(t, {Secret("act.SECRET"), Secret("rft.SECRET")}, clock_.now(),
                            [&](TokenRecord& rec) { policy_.schedule_new(rec, clock_.now()); });
    if (state != TokenState::kActive) {
      auto claimed = store_->claim(r->record.id, clock_.now(), "t", 1min);
      TokenRecord rec = *claimed;
      policy_.on_failure(rec, Operation::kRefresh,
                         {state == TokenState::kRevoked   ? ErrorClass::kRevoked
                          : state == TokenState::kFailing ? ErrorClass::kTransient
                                                          : ErrorClass::kPermanent,
                          reason, std::nullopt},
                         clock_.now());
      EXPECT_TRUE(store_->save(rec, nullptr, "t", LeaseAction::kRelease));
    }
    return r->record.id;
  }

  StatusReporter reporter() {
    return StatusReporter(*store_, worker_, clock_, config_, "host:1", kAllProviders,
                          make_logger("t", LogConfig{}, logs_), timers_.factory());
  }

  testing::TempDir dir_;
  FakeClock clock_{kStatusStart};
  boost::asio::io_context io_;
  Policy policy_{PolicyConfig::from(Config{}), [] { return 0.0; }};
  std::unique_ptr<SqliteTokenStore> store_;
  Scheduler scheduler_{*store_, policy_, clock_, SchedulerConfig{}, "t"};
  ManualTimers timers_;
  std::ostringstream logs_;
  Worker worker_;
  StatusConfig config_;
};

TEST_F(StatusTest, TheFileCountsTokensAndListsThoseThatNeedReauth) {
  add(Provider::kMeta, TokenKind::kPageToken, "p1", TokenState::kActive);
  add(Provider::kGoogle, TokenKind::kRefreshToken, "g1", TokenState::kFailing, "HTTP 503");
  const std::string dead = add(Provider::kGoogle, TokenKind::kRefreshToken, "g2",
                               TokenState::kRevoked, "invalid_grant: Token has been revoked.");
  add(Provider::kTikTok, TokenKind::kBusinessToken, "t1", TokenState::kNeedsReauth, "40105");
  StatusReporter r = reporter();
  ASSERT_TRUE(r.write_now());
  auto s = nlohmann::json::parse(testing::read_file(config_.file));
  EXPECT_EQ(s["version"], TW_VERSION);
  EXPECT_EQ(s["owner"], "host:1");
  EXPECT_EQ(s["tokens"]["total"]["active"], 1);
  EXPECT_EQ(s["tokens"]["total"]["failing"], 1);
  EXPECT_EQ(s["tokens"]["total"]["revoked"], 1);
  EXPECT_EQ(s["tokens"]["total"]["needs_reauth"], 1);
  EXPECT_EQ(s["tokens"]["by_provider"]["google"]["revoked"], 1);
  EXPECT_EQ(s["needs_reauth_total"], 2);
  ASSERT_EQ(s["needs_reauth"].size(), 2u);
  bool found = false;
  for (const auto& t : s["needs_reauth"]) {
    if (t["token_id"] != dead) continue;
    found = true;
    EXPECT_EQ(t["workspace_id"], "ws-g2");
    EXPECT_EQ(t["state"], "revoked");
    EXPECT_EQ(t["since"], format_time(kStatusStart));
    EXPECT_EQ(t["reason"], "invalid_grant: Token has been revoked.");
  }
  EXPECT_TRUE(found);
  EXPECT_TRUE(s["next_due"].is_string());
  EXPECT_EQ(r.summary().rfind("1 active, 1 failing, 2 need re-auth; next due ", 0), 0u)
      << r.summary();
  const std::string all =
      testing::read_file(config_.file) + testing::read_file(config_.prometheus_file);
  EXPECT_EQ(all.find("SECRET"), std::string::npos);
  const std::string prom = testing::read_file(config_.prometheus_file);
  EXPECT_NE(prom.find("tokenwarden_tokens{provider=\"google\",state=\"revoked\"} 1"),
            std::string::npos)
      << prom;
  EXPECT_NE(prom.find("tokenwarden_needs_reauth_tokens 2"), std::string::npos);
}

// p50 and p99 of the last hour's steps, per operation, from log-spaced slots: each figure is
// the slot's upper bound, at most 19 % above the true value.
TEST_F(StatusTest, TheLastHourReportsLatencyPercentiles) {
  StatusReporter r = reporter();
  for (int i = 1; i <= 100; ++i) {
    r.on_step(StepReport{Operation::kCheck,
                         true,
                         ErrorClass::kNone,
                         "",
                         {},
                         TokenState::kActive,
                         std::chrono::milliseconds(i <= 98 ? 10 : 900)});
  }
  r.on_step(
      StepReport{Operation::kRefresh, true, ErrorClass::kNone, "", {}, TokenState::kActive, 0ms});
  auto s = *r.snapshot();
  const auto& checks = s["last_hour"]["checks"]["latency_ms"];
  EXPECT_GE(checks["p50"].get<double>(), 10.0);
  EXPECT_LE(checks["p50"].get<double>(), 10.0 * 1.19);
  EXPECT_GE(checks["p99"].get<double>(), 900.0) << "two of a hundred took 900 ms";
  EXPECT_LE(checks["p99"].get<double>(), 900.0 * 1.19);
  EXPECT_EQ(checks["max"], checks["p99"]);
  EXPECT_EQ(s["last_hour"]["refreshes"]["latency_ms"]["p50"], 0.0);
  clock_.advance(61min);
  s = *r.snapshot();
  EXPECT_FALSE(s["last_hour"]["checks"].contains("latency_ms")) << "no step in the last hour";
}

TEST_F(StatusTest, TheLastHourCountsOutcomesByClassAndForgetsOlderOnes) {
  StatusReporter r = reporter();
  StepReport ok{Operation::kRefresh, true, ErrorClass::kNone, "", {}, TokenState::kActive, 5ms};
  StepReport failed{Operation::kCheck,   false, ErrorClass::kTransient, "503", {},
                    TokenState::kActive, 5ms};
  r.on_step(ok);
  r.on_step(ok);
  r.on_step(failed);
  clock_.advance(30min);
  r.on_step(failed);
  auto s = *r.snapshot();
  EXPECT_EQ(s["last_hour"]["refreshes"]["ok"], 2);
  EXPECT_EQ(s["last_hour"]["checks"]["failed"]["transient"], 2);
  clock_.advance(45min);  // the first three are now older than an hour
  s = *r.snapshot();
  EXPECT_EQ(s["last_hour"]["refreshes"]["ok"], 0);
  EXPECT_EQ(s["last_hour"]["checks"]["failed"]["transient"], 1);
}

TEST_F(StatusTest, WorkRewritesTheFileSoonButNotOftenerThanTheMinimumInterval) {
  config_.min_interval = 10s;
  config_.write_every = 1min;
  StatusReporter r = reporter();
  int writes = 0;
  r.on_written = [&](const std::string&) { ++writes; };
  r.start();
  EXPECT_EQ(writes, 1);
  StepReport ok{Operation::kCheck, true, ErrorClass::kNone, "", {}, TokenState::kActive, 1ms};
  r.on_step(ok);
  r.on_step(ok);
  auto due = timers_.next_due();
  ASSERT_TRUE(due);
  EXPECT_EQ(*due, clock_.system_now() + 10s) << "not sooner than min_interval after the last";
  clock_.advance(10s);
  timers_.fire_due(clock_.system_now());
  EXPECT_EQ(writes, 2) << "the two steps caused one write";
  clock_.advance(50s);
  timers_.fire_due(clock_.system_now());
  EXPECT_EQ(writes, 3) << "and at least once a minute anyway";
}

TEST_F(StatusTest, TheOldestOverdueTokenIsNamed) {
  const std::string id =
      add(Provider::kTikTok, TokenKind::kBusinessToken, "late", TokenState::kActive);
  clock_.advance(2h);  // its renewal (due at once) and its check are overdue
  auto s = *reporter().snapshot();
  ASSERT_TRUE(s["oldest_overdue"].is_object());
  EXPECT_EQ(s["oldest_overdue"]["token_id"], id);
  EXPECT_EQ(s["oldest_overdue"]["overdue_seconds"], 7200);
}

TEST(StatusFile, WritesAtomicallyAndNamesTheProblem) {
  testing::TempDir dir;
  ASSERT_TRUE(write_file_atomically(dir.file("s.json"), "{\"a\":1}\n"));
  EXPECT_EQ(testing::read_file(dir.file("s.json")), "{\"a\":1}\n");
  ASSERT_TRUE(write_file_atomically(dir.file("s.json"), "{}\n"));
  EXPECT_EQ(testing::read_file(dir.file("s.json")), "{}\n");
  int leftovers = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    if (e.path().filename() != "s.json") ++leftovers;
  }
  EXPECT_EQ(leftovers, 0) << "no temporary file left behind";
  auto bad = write_file_atomically(dir.file("no/such/dir/s.json"), "{}");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("no/such/dir/s.json"), std::string::npos);
}

}  // namespace
}  // namespace tw
