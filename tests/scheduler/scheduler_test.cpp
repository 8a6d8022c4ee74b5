#include "scheduler/scheduler.h"

#include <map>
#include <set>

#include <gtest/gtest.h>

#include "storage/sqlite_token_store.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using std::chrono::days;

const SysTime kSchedulerStart = from_unix(1'800'000'000);

std::unique_ptr<SqliteTokenStore> open_store(const std::string& path, const Key& key) {
  auto s = SqliteTokenStore::open(path, 2s, Cipher(KeyRing(key)));
  if (!s) die(s.error().message());
  return std::move(*s);
}

class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest() : store_(open_store(":memory:", key_)) {}

  std::string add(Provider p, TokenKind k, std::string account, std::optional<Seconds> lifetime,
                  const std::string& refresh = "rft.0") {
    NewToken t{p, k, "ws", std::move(account), "", {}, {}};
    if (lifetime) t.expires_at = clock_.now() + *lifetime;
    TokenSecrets s{Secret("act.0"), Secret(refresh)};
    auto r = store_->upsert(t, s, clock_.now(),
                            [&](TokenRecord& rec) { policy_.schedule_new(rec, clock_.now()); });
    if (!r) die(r.error().message());
    return r->record.id;
  }

  // Advances the clock to the next due time (if before `end`) and returns the claimed jobs.
  std::optional<std::vector<Job>> step(SysTime end) {
    auto wake = scheduler_.next_wake();
    EXPECT_TRUE(wake);
    if (!*wake || **wake >= end) return std::nullopt;
    if (**wake > clock_.now()) clock_.advance(**wake - clock_.now());
    auto jobs = scheduler_.claim_due();
    EXPECT_TRUE(jobs) << jobs.error().message();
    return std::move(*jobs);
  }

  Key key_ = *Key::generate();
  FakeClock clock_{kSchedulerStart};
  Policy policy_{PolicyConfig::from(Config{}), [] { return 0.0; }};
  std::unique_ptr<SqliteTokenStore> store_;
  Scheduler scheduler_{*store_, policy_, clock_, SchedulerConfig{}, "test-worker"};
};

TEST_F(SchedulerTest, ThreeDaysOfRotationsAndChecksThroughTheStore) {
  std::set<std::string> v2;
  for (int i = 0; i < 40; ++i) {
    v2.insert(add(Provider::kTikTok, TokenKind::kRefreshToken, "v2-" + std::to_string(i), 24h));
    add(Provider::kMeta, TokenKind::kPageToken, "page-" + std::to_string(i), std::nullopt);
    clock_.advance(45s);  // connected over half an hour
  }
  std::map<std::string, std::vector<SysTime>> checks, refreshes;
  std::map<std::string, std::string> newest_refresh_token;
  int rotation = 0;
  const SysTime end = kSchedulerStart + days(3);
  while (auto jobs = step(end)) {
    ASSERT_FALSE(jobs->empty()) << "woken with nothing to claim";
    for (Job& job : *jobs) {
      const std::string id = job.record.id;
      if (job.refresh_due) {
        Outcome o = Outcome::success(Operation::kRefresh);
        std::string fresh = "rft." + std::to_string(++rotation);
        o.secrets = TokenSecrets{Secret("act." + std::to_string(rotation)), Secret(fresh)};
        o.expires_at = clock_.now() + 24h;
        ASSERT_TRUE(scheduler_.record(job, std::move(o), !job.check_due));
        newest_refresh_token[id] = fresh;
        refreshes[id].push_back(clock_.now());
        // Committed before anything else happens: the store already has the rotated token.
        ASSERT_EQ(store_->read_secrets(job.record)->refresh_token.reveal(), fresh);
      }
      if (job.check_due) {
        ASSERT_TRUE(scheduler_.record(job, Outcome::success(Operation::kCheck), true));
        checks[id].push_back(clock_.now());
      }
    }
  }
  ASSERT_EQ(checks.size(), 80u);
  for (const auto& [id, times] : checks) {
    SCOPED_TRACE(id);
    ASSERT_GE(times.size(), 71u);
    ASSERT_LE(times.size(), 72u);
    // Checks whose slot passed while tokens were still being added run at once, then on slot.
    ASSERT_LE(times[1] - times[0], 1h);
    for (std::size_t i = 2; i < times.size(); ++i)
      ASSERT_EQ(times[i] - times[i - 1], 1h);
  }
  ASSERT_EQ(refreshes.size(), 40u) << "only the TikTok tokens renew within 3 days";
  for (const auto& [id, times] : refreshes) {
    SCOPED_TRACE(id);
    ASSERT_TRUE(v2.count(id));
    ASSERT_EQ(times.size(), 5u) << "at once (added a day from expiry), then every 16 hours";
    for (std::size_t i = 1; i < times.size(); ++i)
      ASSERT_EQ(times[i] - times[i - 1], 16h);
    auto rec = **store_->find(id);
    EXPECT_EQ(store_->read_secrets(rec)->refresh_token.reveal(), newest_refresh_token[id]);
    EXPECT_TRUE(rec.lease_owner.empty());
    EXPECT_EQ(rec.state, TokenState::kActive);
  }
}

TEST_F(SchedulerTest, FailuresBackOffAndPermanentOnesStopTheToken) {
  const std::string flaky = add(Provider::kTikTok, TokenKind::kBusinessToken, "flaky", 1h);
  const std::string dead = add(Provider::kGoogle, TokenKind::kRefreshToken, "dead", std::nullopt);

  // A forced refresh of the Google token finds the grant revoked.
  auto forced = scheduler_.claim(dead);
  ASSERT_TRUE(forced) << forced.error().message();
  EXPECT_TRUE(forced->refresh_due);
  ASSERT_TRUE(
      scheduler_.record(*forced,
                        Outcome::failed(Operation::kRefresh, ErrorClass::kPermanent,
                                        "invalid_grant: Token has been expired or revoked."),
                        true));
  auto gone = **store_->find(dead);
  EXPECT_EQ(gone.state, TokenState::kNeedsReauth);
  EXPECT_FALSE(gone.next_refresh_due);
  EXPECT_FALSE(gone.next_check_due);

  clock_.advance(40min);  // flaky is due (2/3 of its hour)
  auto jobs = scheduler_.claim_due();
  ASSERT_TRUE(jobs);
  bool saw_flaky = false;
  for (Job& job : *jobs) {
    EXPECT_NE(job.record.id, dead);
    if (job.record.id != flaky || !job.refresh_due) continue;
    saw_flaky = true;
    ASSERT_TRUE(scheduler_.record(
        job, Outcome::failed(Operation::kRefresh, ErrorClass::kTransient, "HTTP 503"), true));
    EXPECT_EQ(job.record.state, TokenState::kFailing);
    EXPECT_EQ(job.record.next_refresh_due, clock_.now() + 30s);
  }
  ASSERT_TRUE(saw_flaky);
  auto stored = **store_->find(flaky);
  EXPECT_EQ(stored.state, TokenState::kFailing);
  EXPECT_EQ(stored.last_error_message, "HTTP 503");

  // Months later the dead token has still not been touched again.
  clock_.advance(days(90));
  auto later = scheduler_.claim_due();
  for (const Job& job : *later)
    EXPECT_NE(job.record.id, dead);
}

TEST_F(SchedulerTest, ARenewalWithoutANewRefreshTokenKeepsTheStoredOne) {
  const std::string id =
      add(Provider::kGoogle, TokenKind::kRefreshToken, "g", std::nullopt, "1//google-refresh");
  auto job = scheduler_.claim(id);
  ASSERT_TRUE(job);
  Outcome o = Outcome::success(Operation::kRefresh);
  o.secrets = TokenSecrets{Secret("ya29.new-access"), Secret()};  // Google rarely rotates
  o.expires_at = clock_.now() + 1h;
  ASSERT_TRUE(scheduler_.record(*job, std::move(o), true));
  auto s = store_->read_secrets(**store_->find(id));
  ASSERT_TRUE(s);
  EXPECT_EQ(s->access_token.reveal(), "ya29.new-access");
  EXPECT_EQ(s->refresh_token.reveal(), "1//google-refresh");
  EXPECT_EQ((*store_->find(id))->next_refresh_due, clock_.now() + days(30));
}

TEST_F(SchedulerTest, AnOutcomeForALostLeaseIsNotStored) {
  const std::string id = add(Provider::kTikTok, TokenKind::kBusinessToken, "t", days(30));
  auto job = scheduler_.claim(id);
  ASSERT_TRUE(job);
  // The customer reconnects while the refresh is in flight.
  add(Provider::kTikTok, TokenKind::kBusinessToken, "t", days(30), "rft.reconnected");
  Outcome o = Outcome::success(Operation::kRefresh);
  o.secrets = TokenSecrets{Secret("act.stale"), Secret("rft.stale")};
  auto st = scheduler_.record(*job, std::move(o), true);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), Errc::kLeaseLost);
  EXPECT_EQ(store_->read_secrets(**store_->find(id))->refresh_token.reveal(), "rft.reconnected");
}

TEST(SchedulerConcurrency, TwoWorkersOnOneFileNeverClaimTheSameToken) {
  testing::TempDir dir;
  Key key = *Key::generate();
  auto a = open_store(dir.file("t.db"), key);
  auto b = open_store(dir.file("t.db"), key);
  FakeClock clock(kSchedulerStart);
  Policy policy(PolicyConfig::from(Config{}), [] { return 0.0; });
  for (int i = 0; i < 300; ++i) {
    NewToken t{Provider::kMeta, TokenKind::kPageToken, "ws", "p" + std::to_string(i), "", {}, {}};
    ASSERT_TRUE(a->upsert(t, TokenSecrets{Secret("EAAB"), Secret("EAAL")}, kSchedulerStart,
                          [&](TokenRecord& r) { r.next_check_due = kSchedulerStart; }));
  }
  SchedulerConfig small;
  small.batch_size = 64;
  Scheduler wa(*a, policy, clock, small, "host-a:1");
  Scheduler wb(*b, policy, clock, small, "host-b:2");
  std::set<std::string> seen;
  int claimed = 0;
  for (int round = 0; round < 10; ++round) {
    for (Scheduler* w : {&wa, &wb}) {
      auto jobs = w->claim_due();
      ASSERT_TRUE(jobs) << jobs.error().message();
      for (const Job& j : *jobs) {
        ++claimed;
        EXPECT_TRUE(seen.insert(j.record.id).second) << "claimed twice: " << j.record.id;
      }
    }
  }
  EXPECT_EQ(claimed, 300);
}

}  // namespace
}  // namespace tw
