// The worker loop with a fake clock, a hand-fired wake timer, a fake provider and the real
// SQLite store: whole days of the loop in milliseconds, no sleeps.
#include "worker/worker.h"

#include <deque>
#include <map>
#include <sstream>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <gtest/gtest.h>

#include "core/log.h"
#include "storage/sqlite_token_store.h"
#include "tests/support/faulty_store.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using std::chrono::days;

const SysTime kStart = from_unix(1'800'000'000);

// A provider whose replies the test decides. Replies are posted, like a real client's; held
// replies wait until the test releases them.
class FakeProvider final : public ProviderClient {
 public:
  using Reply = std::function<Outcome(Operation, const TokenRecord&, const TokenSecrets&)>;

  FakeProvider(Provider p, boost::asio::io_context& io) : provider_(p), io_(io) {}

  Provider provider() const override { return provider_; }
  void refresh(const TokenRecord& t, const TokenSecrets& s, Done done) override {
    call(Operation::kRefresh, t, s, std::move(done));
  }
  void check(const TokenRecord& t, const TokenSecrets& s, Done done) override {
    call(Operation::kCheck, t, s, std::move(done));
  }

  void set_reply(Reply r) { reply_ = std::move(r); }
  void hold(bool on) { hold_ = on; }
  // Delivers every held reply.
  void release_held() {
    while (!held_.empty()) {
      auto next = std::move(held_.front());
      held_.pop_front();
      boost::asio::post(io_, std::move(next));
    }
  }
  std::size_t held() const { return held_.size(); }
  int calls(Operation op) const { return op == Operation::kRefresh ? refreshes_ : checks_; }
  int max_concurrent() const { return max_concurrent_; }

 private:
  void call(Operation op, const TokenRecord& t, const TokenSecrets& s, Done done) {
    ++(op == Operation::kRefresh ? refreshes_ : checks_);
    max_concurrent_ = std::max(max_concurrent_, ++concurrent_);
    Outcome o = reply_ ? reply_(op, t, s) : Outcome::success(op);
    auto deliver = [this, o = std::move(o), done = std::move(done)]() mutable {
      --concurrent_;
      done(std::move(o));
    };
    if (hold_) {
      held_.push_back(std::move(deliver));
    } else {
      boost::asio::post(io_, std::move(deliver));
    }
  }

  Provider provider_;
  boost::asio::io_context& io_;
  Reply reply_;
  bool hold_ = false;
  std::deque<std::function<void()>> held_;
  int refreshes_ = 0, checks_ = 0, concurrent_ = 0, max_concurrent_ = 0;
};

class WorkerTest : public ::testing::Test {
 protected:
  WorkerTest()
      : store_(
            std::move(*SqliteTokenStore::open(":memory:", 1s, Cipher(KeyRing(*Key::generate()))))),
        faulty_(*store_) {}

  void build(int max_in_flight = 64, ProviderLimits limits = {}) {
    WorkerOptions options;
    options.max_in_flight = max_in_flight;
    options.limits[Provider::kTikTok] = limits;
    auto timer = std::make_unique<ManualWakeTimer>();
    timer_ = timer.get();
    LogConfig lc;
    lc.level = "debug";
    log_ = make_logger("test", lc, log_lines_);
    worker_ = std::make_unique<Worker>(io_.get_executor(), scheduler_, faulty_,
                                       std::vector<ProviderClient*>{&tiktok_}, clock_, options,
                                       log_, std::move(timer));
  }

  std::string add(const std::string& account, std::optional<Seconds> lifetime = 30 * 24h) {
    NewToken t{Provider::kTikTok, TokenKind::kBusinessToken, "ws", account, "", {}, {}};
    if (lifetime) t.expires_at = clock_.now() + *lifetime;
    auto r = store_->upsert(t, TokenSecrets{Secret("act.SECRET-0"), Secret("rft.SECRET-0")},
                            clock_.now(),
                            [&](TokenRecord& rec) { policy_.schedule_new(rec, clock_.now()); });
    return r->record.id;
  }

  // Runs everything ready on the loop.
  void settle() {
    while (io_.poll() > 0) {
    }
  }

  // Fires the wake timer whenever it comes due, moving the fake clock, up to `end` included.
  void run_until(SysTime end) {
    settle();
    while (timer_->armed_at() && *timer_->armed_at() <= end) {
      if (*timer_->armed_at() > clock_.now()) clock_.advance(*timer_->armed_at() - clock_.now());
      timer_->fire();
      settle();
    }
    if (end > clock_.now()) clock_.advance(end - clock_.now());
  }

  TokenRecord get(const std::string& id) { return **store_->find(id); }

  boost::asio::io_context io_;
  FakeClock clock_{kStart};
  Policy policy_{PolicyConfig::from(Config{}), [] { return 0.0; }};
  std::unique_ptr<SqliteTokenStore> store_;
  testing::FaultyStore faulty_;
  Scheduler scheduler_{faulty_,           policy_,    clock_,
                       SchedulerConfig{}, "worker-1", ProviderSet{Provider::kTikTok}};
  FakeProvider tiktok_{Provider::kTikTok, io_};
  std::ostringstream log_lines_;
  std::shared_ptr<spdlog::logger> log_;
  ManualWakeTimer* timer_ = nullptr;
  std::unique_ptr<Worker> worker_;
};

Outcome renewed(Operation op, int n) {
  Outcome o = Outcome::success(op);
  if (op == Operation::kRefresh) {
    o.secrets = TokenSecrets{Secret("act.SECRET-" + std::to_string(n)),
                             Secret("rft.SECRET-" + std::to_string(n))};
    o.note = "refresh token rotated";
  }
  return o;
}

TEST_F(WorkerTest, RenewsAndChecksOnScheduleForDays) {
  build();
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i)
    ids.push_back(add("acct-" + std::to_string(i), 2 * 24h));
  int issued = 0;
  tiktok_.set_reply([&](Operation op, const TokenRecord&, const TokenSecrets&) {
    Outcome o = renewed(op, ++issued);
    if (op == Operation::kRefresh) o.expires_at = clock_.now() + 2 * 24h;
    return o;
  });
  worker_->start();
  run_until(kStart + days(3));
  // 2-day tokens renew at two thirds of their life (32 h): at 32 h and 64 h.
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 40);
  // One check an hour each, for 72 hours (71 or 72 depending on each token's slot).
  EXPECT_GE(tiktok_.calls(Operation::kCheck), 20 * 71);
  EXPECT_LE(tiktok_.calls(Operation::kCheck), 20 * 72);
  for (const auto& id : ids) {
    TokenRecord r = get(id);
    EXPECT_EQ(r.state, TokenState::kActive);
    EXPECT_TRUE(r.lease_owner.empty());
    EXPECT_GT(*r.next_refresh_due, clock_.now());
    EXPECT_GT(*r.next_check_due, clock_.now() - 1h);
  }
  EXPECT_EQ(worker_->stats().refreshes_ok, 40u);
  // The log has one line per operation and never a secret.
  const std::string logs = log_lines_.str();
  EXPECT_NE(logs.find("renewal of tok_"), std::string::npos);
  EXPECT_EQ(logs.find("SECRET"), std::string::npos);
}

TEST_F(WorkerTest, NeverMoreRequestsInFlightThanTheLimit) {
  build(/*max_in_flight=*/3);
  for (int i = 0; i < 12; ++i)
    add("acct-" + std::to_string(i), std::nullopt);  // due at once
  tiktok_.hold(true);
  worker_->start();
  settle();
  EXPECT_EQ(tiktok_.held(), 3u);
  EXPECT_EQ(worker_->in_flight(), 3u);
  for (int round = 0; round < 10 && tiktok_.held() > 0; ++round) {
    tiktok_.release_held();
    settle();
    EXPECT_LE(tiktok_.held(), 3u);
  }
  EXPECT_EQ(tiktok_.max_concurrent(), 3);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 12);
}

TEST_F(WorkerTest, TheTokenBucketPacesRequests) {
  ProviderLimits slow;
  slow.requests_per_second = 1;
  slow.burst = 2;
  build(64, slow);
  for (int i = 0; i < 6; ++i)
    add("acct-" + std::to_string(i), std::nullopt);
  worker_->start();
  settle();
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 2) << "the burst";
  run_until(kStart + 2s);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 4) << "then one a second";
  run_until(kStart + 4s);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 6);
}

TEST_F(WorkerTest, AnOpenBreakerPutsTokensOffWithoutFailingThem) {
  ProviderLimits limits;
  limits.breaker_failures = 3;
  limits.breaker_cooldown = 60s;
  build(/*max_in_flight=*/1, limits);
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i)
    ids.push_back(add("acct-" + std::to_string(i), std::nullopt));
  bool outage = true;
  tiktok_.set_reply([&](Operation op, const TokenRecord&, const TokenSecrets&) {
    return outage ? Outcome::failed(op, ErrorClass::kTransient, "HTTP 503") : Outcome::success(op);
  });
  worker_->start();
  run_until(kStart + 10s);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 3) << "the breaker opened after three";
  int failing = 0, untouched = 0;
  for (const auto& id : ids) {
    TokenRecord r = get(id);
    if (r.consecutive_failures > 0) ++failing;
    if (r.consecutive_failures == 0) ++untouched;
  }
  EXPECT_EQ(failing, 3);
  EXPECT_EQ(untouched, 5) << "the others wait without a failure on their record";
  // The provider recovers; after the cooldown a probe closes the breaker and the rest go through.
  outage = false;
  run_until(kStart + 5min);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 8 + 3);
  for (const auto& id : ids)
    EXPECT_EQ(get(id).state, TokenState::kActive) << id;
}

TEST_F(WorkerTest, ARotatedTokenIsCommittedEvenWhenTheDatabaseIsBusyAtFirst) {
  build();
  const std::string id = add("rot", std::nullopt);
  tiktok_.set_reply(
      [](Operation op, const TokenRecord&, const TokenSecrets&) { return renewed(op, 7); });
  faulty_.fail_saves(2, Errc::kBusy);
  std::optional<std::vector<ForcedResult>> results;
  worker_->run_now({id}, Operation::kRefresh, [&](auto r) { results = std::move(r); });
  // The two retries wait on real timers (100 ms, then 200 ms).
  for (int i = 0; i < 50 && !results; ++i)
    io_.run_for(50ms);
  ASSERT_TRUE(results);
  EXPECT_TRUE((*results)[0].ok) << (*results)[0].message;
  EXPECT_EQ(faulty_.saves_refused(), 2);
  EXPECT_EQ(worker_->stats().commit_retries, 2u);
  EXPECT_EQ(store_->read_secrets(get(id))->refresh_token.reveal(), "rft.SECRET-7");
}

TEST_F(WorkerTest, ForcedWorkReportsEachToken) {
  build();
  const std::string ok = add("ok", 30 * 24h);
  const std::string dead = add("dead", 30 * 24h);
  const std::string off = add("off", 30 * 24h);
  ASSERT_TRUE(store_->claim(off, clock_.now(), "cli", 1min));
  TokenRecord r = **store_->find(off);
  r.state = TokenState::kDisabled;
  ASSERT_TRUE(store_->save(r, nullptr, "cli", LeaseAction::kRelease));
  ASSERT_TRUE(store_->claim(ok, clock_.now(), "someone-else", 5min));  // busy
  tiktok_.set_reply([&](Operation op, const TokenRecord& t, const TokenSecrets&) {
    return t.id == dead ? Outcome::failed(op, ErrorClass::kPermanent, "invalid_grant")
                        : renewed(op, 1);
  });
  std::optional<std::vector<ForcedResult>> results;
  worker_->run_now({ok, dead, off, "tok_nope"}, Operation::kRefresh,
                   [&](auto res) { results = std::move(res); });
  settle();
  ASSERT_TRUE(results);
  ASSERT_EQ(results->size(), 4u);
  EXPECT_FALSE((*results)[0].ok);
  EXPECT_NE((*results)[0].message.find("busy"), std::string::npos) << (*results)[0].message;
  EXPECT_FALSE((*results)[1].ok);
  EXPECT_EQ((*results)[1].state, TokenState::kNeedsReauth);
  EXPECT_NE((*results)[1].message.find("invalid_grant"), std::string::npos);
  EXPECT_FALSE((*results)[2].ok);
  EXPECT_NE((*results)[2].message.find("disabled"), std::string::npos);
  EXPECT_EQ((*results)[3].message, "no such token");
  EXPECT_TRUE(get(off).lease_owner.empty()) << "refused tokens are released";
}

TEST_F(WorkerTest, StopLetsRequestsInFlightFinishAndReleasesTheRest) {
  build(/*max_in_flight=*/2);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i)
    ids.push_back(add("acct-" + std::to_string(i), std::nullopt));
  tiktok_.hold(true);
  worker_->start();
  settle();
  ASSERT_EQ(tiktok_.held(), 2u);
  bool stopped = false;
  worker_->stop(20s, [&] { stopped = true; });
  settle();
  EXPECT_FALSE(stopped) << "two requests are still in flight";
  tiktok_.release_held();
  settle();
  EXPECT_TRUE(stopped);
  int renewed_count = 0, released = 0;
  for (const auto& id : ids) {
    TokenRecord r = get(id);
    EXPECT_TRUE(r.lease_owner.empty()) << id;
    if (r.last_refreshed_at) {
      ++renewed_count;
    } else {
      ++released;
      EXPECT_LE(*r.next_refresh_due, clock_.now()) << "given back still due, for the next run";
    }
  }
  EXPECT_EQ(renewed_count, 2);
  EXPECT_EQ(released, 2);
}

TEST_F(WorkerTest, AThrottleHintPausesTheProvider) {
  build();
  for (int i = 0; i < 3; ++i)
    add("acct-" + std::to_string(i), std::nullopt);
  tiktok_.set_reply([](Operation op, const TokenRecord&, const TokenSecrets&) {
    Outcome o = renewed(op, 1);
    o.throttle = 10min;
    return o;
  });
  ProviderLimits one_at_a_time;
  one_at_a_time.burst = 1;
  one_at_a_time.requests_per_second = 1000;
  worker_.reset();
  build(64, one_at_a_time);
  worker_->start();
  run_until(kStart + 5min);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 1) << "paused for ten minutes after the first";
  run_until(kStart + 21min);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 3);
}

}  // namespace
}  // namespace tw
