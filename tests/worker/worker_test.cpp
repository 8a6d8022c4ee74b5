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

const SysTime kWorkerStart = from_unix(1'800'000'000);

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

  bool renew_before_check(const TokenRecord&, const TokenSecrets&) const override {
    return renew_before;
  }

  void set_reply(Reply r) { reply_ = std::move(r); }
  const std::vector<std::string>& ids_seen() const { return ids_seen_; }
  bool renew_before = false;  // what renew_before_check() answers
  void hold(bool on) { hold_ = on; }
  // Delivers every held reply.
  void release_held() {
    while (!held_.empty()) {
      auto next = std::move(held_.front().second);
      held_.pop_front();
      boost::asio::post(io_, std::move(next));
    }
  }
  std::size_t held() const { return held_.size(); }
  bool holding(const std::string& id) const {
    for (const auto& [held_id, fn] : held_) {
      if (held_id == id) return true;
    }
    return false;
  }
  int calls(Operation op) const { return op == Operation::kRefresh ? refreshes_ : checks_; }
  int max_concurrent() const { return max_concurrent_; }

 private:
  void call(Operation op, const TokenRecord& t, const TokenSecrets& s, Done done) {
    ++(op == Operation::kRefresh ? refreshes_ : checks_);
    ids_seen_.push_back(t.id);
    max_concurrent_ = std::max(max_concurrent_, ++concurrent_);
    Outcome o = reply_ ? reply_(op, t, s) : Outcome::success(op);
    auto deliver = [this, o = std::move(o), done = std::move(done)]() mutable {
      --concurrent_;
      done(std::move(o));
    };
    if (hold_) {
      held_.emplace_back(t.id, std::move(deliver));
    } else {
      boost::asio::post(io_, std::move(deliver));
    }
  }

  Provider provider_;
  boost::asio::io_context& io_;
  Reply reply_;
  bool hold_ = false;
  std::deque<std::pair<std::string, std::function<void()>>> held_;
  std::vector<std::string> ids_seen_;
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
    LogConfig lc;
    lc.level = "debug";
    log_ = make_logger("test", lc, log_lines_);
    worker_ = std::make_unique<Worker>(io_.get_executor(), scheduler_, faulty_,
                                       std::vector<ProviderClient*>{&tiktok_}, clock_, options,
                                       log_, timers_.factory());
  }

  std::string add(const std::string& account, std::optional<Seconds> lifetime = 30 * 24h) {
    NewToken t{Provider::kTikTok, TokenKind::kBusinessToken, "ws", account, "", {}, {}};
    if (lifetime) t.expires_at = clock_.now() + *lifetime;
    auto r = store_->upsert(t, TokenSecrets{Secret("act.SECRET-0"), Secret("rft.SECRET-0")},
                            clock_.now(),
                            [&](TokenRecord& rec) { policy_.schedule_new(rec, clock_.now()); });
    return r->record.id;
  }

  // Runs everything ready on the loop. (An io_context that runs out of work stops itself:
  // restart() makes later posts run.)
  void settle() {
    io_.restart();
    while (io_.poll() > 0) {
    }
  }

  // Fires the worker's timers as they come due, moving the fake clock, up to `end` included.
  // Returns how many fired.
  int run_until(SysTime end) {
    settle();
    int fired = 0;
    while (auto next = timers_.next_due()) {
      if (*next > WallTime(end)) break;
      if (*next > clock_.system_now()) clock_.advance(*next - clock_.system_now());
      fired += timers_.fire_due(clock_.system_now());
      settle();
      if (fired > 100'000) {
        ADD_FAILURE() << "the loop keeps waking: a busy loop";
        break;
      }
    }
    if (end > clock_.now()) clock_.advance(end - clock_.now());
    return fired;
  }

  TokenRecord get(const std::string& id) { return **store_->find(id); }

  // Makes the token's renewal and check both due now (written under a lease, as any writer).
  void make_both_due(const std::string& id) {
    ASSERT_TRUE(store_->claim(id, clock_.now(), "setup", 1s));
    TokenRecord r = get(id);
    r.next_refresh_due = clock_.now();
    r.next_check_due = clock_.now();
    ASSERT_TRUE(store_->save(r, nullptr, "setup", LeaseAction::kRelease));
  }

  boost::asio::io_context io_;
  FakeClock clock_{kWorkerStart};
  Policy policy_{PolicyConfig::from(Config{}), [] { return 0.0; }};
  std::unique_ptr<SqliteTokenStore> store_;
  testing::FaultyStore faulty_;
  Scheduler scheduler_{faulty_,           policy_,    clock_,
                       SchedulerConfig{}, "worker-1", ProviderSet{Provider::kTikTok}};
  FakeProvider tiktok_{Provider::kTikTok, io_};
  std::ostringstream log_lines_;
  std::shared_ptr<spdlog::logger> log_;
  ManualTimers timers_{clock_};  // due like AsioWakeTimers: on the wall or the steady clock
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
  run_until(kWorkerStart + days(3));
  // Added two days from expiry (inside renew_before): renewed at once; then at two thirds of
  // their known 2-day lifetime: at 0, 32 h and 64 h.
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 60);
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
  EXPECT_EQ(worker_->stats().refreshes_ok, 60u);
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

// A sweep costs one durable commit per batch of replies, not per token: replies that arrive
// together are written in one transaction, and due tokens are claimed a batch at a time.
TEST_F(WorkerTest, ASweepCommitsRepliesTogetherAndClaimsInBatches) {
  build(/*max_in_flight=*/8);
  std::vector<std::string> ids;
  for (int i = 0; i < 40; ++i) {
    NewToken t{Provider::kTikTok,
               TokenKind::kBusinessToken,
               "ws",
               "acct-" + std::to_string(i),
               "",
               clock_.now() + 30 * 24h,
               {}};
    auto r = store_->upsert(t, TokenSecrets{Secret("act.SECRET-0"), Secret("rft.SECRET-0")},
                            clock_.now(), [&](TokenRecord& rec) {
                              rec.next_refresh_due = clock_.now() + 10 * 24h;
                              rec.next_check_due = clock_.now();
                            });
    ids.push_back(r->record.id);
  }
  worker_->start();
  settle();
  EXPECT_EQ(tiktok_.calls(Operation::kCheck), 40);
  EXPECT_EQ(worker_->stats().checks_ok, 40u);
  EXPECT_LE(faulty_.write_batches(), 40 / 4) << "8 replies at a time, one commit each";
  EXPECT_LE(faulty_.claims(), 40 / 4 + 1);
  for (const auto& id : ids) {
    const TokenRecord r = get(id);
    EXPECT_EQ(r.last_checked_at, clock_.now()) << id;
    EXPECT_TRUE(r.lease_owner.empty()) << id;
    EXPECT_GT(*r.next_check_due, clock_.now()) << id;
  }
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
  run_until(kWorkerStart + 2s);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 4) << "then one a second";
  run_until(kWorkerStart + 4s);
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
  run_until(kWorkerStart + 10s);
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
  run_until(kWorkerStart + 5min);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 8 + 3);
  for (const auto& id : ids)
    EXPECT_EQ(get(id).state, TokenState::kActive) << id;
}

// A reload (SIGHUP) re-applies the limits: an unchanged breaker stays open through it, and a
// changed rate does not close it either.
TEST_F(WorkerTest, AReloadDoesNotCloseABreakerOpenInAnOutage) {
  ProviderLimits limits;
  limits.breaker_failures = 3;
  limits.breaker_cooldown = 60s;
  build(/*max_in_flight=*/1, limits);
  for (int i = 0; i < 8; ++i)
    add("acct-" + std::to_string(i), std::nullopt);
  tiktok_.set_reply([&](Operation op, const TokenRecord&, const TokenSecrets&) {
    return Outcome::failed(op, ErrorClass::kTransient, "HTTP 503");
  });
  worker_->start();
  run_until(kWorkerStart + 10s);
  ASSERT_EQ(tiktok_.calls(Operation::kRefresh), 3) << "the breaker opened after three";
  worker_->set_limits({{Provider::kTikTok, limits}});
  ProviderLimits faster = limits;
  faster.requests_per_second *= 2;
  worker_->set_limits({{Provider::kTikTok, faster}});
  add("added-after-the-reload", std::nullopt);  // due now: would go out through a closed breaker
  run_until(kWorkerStart + 40s);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 3) << "still open: nothing sent in the outage";
}

// The renewal attempt is on disk before the request leaves; a lost reply leaves the token in
// doubt, and a refusal of the next renewal then says so instead of blaming the customer.
TEST_F(WorkerTest, ARenewalWhoseReplyIsLostLeavesTheTokenInDoubt) {
  build();
  const std::string id = add("rot", std::nullopt);
  std::optional<SysTime> recorded_before_send;
  int attempt = 0;
  tiktok_.set_reply([&](Operation op, const TokenRecord& r, const TokenSecrets&) {
    recorded_before_send = (*store_->find(r.id))->renewal_in_doubt_since;
    if (op != Operation::kRefresh) return Outcome::success(op);
    if (++attempt == 1) {
      Outcome o = Outcome::failed(op, ErrorClass::kTransient, "tiktok token endpoint: timeout");
      o.failure.in_doubt = true;
      return o;
    }
    return Outcome::failed(op, ErrorClass::kPermanent, "invalid_grant: refresh token reused");
  });
  worker_->start();
  run_until(kWorkerStart + 1s);
  ASSERT_EQ(attempt, 1);
  EXPECT_EQ(recorded_before_send, kWorkerStart) << "written before the request went out";
  EXPECT_EQ(get(id).renewal_in_doubt_since, kWorkerStart);
  EXPECT_EQ(get(id).state, TokenState::kFailing);
  run_until(kWorkerStart + 10min);  // the retry
  ASSERT_EQ(attempt, 2);
  const TokenRecord r = get(id);
  EXPECT_EQ(r.state, TokenState::kNeedsReauth);
  EXPECT_EQ(
      r.last_error_message.rfind("in doubt: a renewal sent at " + format_time(kWorkerStart), 0), 0u)
      << r.last_error_message;
}

// Shutting down past the grace period cancels a renewal on the wire: given back for the next run,
// but still in doubt, for the provider may have rotated it.
TEST_F(WorkerTest, ARenewalCancelledAtShutdownStaysInDoubt) {
  build();
  const std::string id = add("rot", std::nullopt);
  tiktok_.set_reply([](Operation op, const TokenRecord&, const TokenSecrets&) {
    Outcome o = Outcome::failed(op, ErrorClass::kTransient, "tiktok token endpoint: cancelled");
    o.failure.cancelled = true;
    o.failure.in_doubt = true;
    return o;
  });
  tiktok_.hold(true);
  worker_->start();
  settle();
  ASSERT_EQ(tiktok_.held(), 1u);
  bool stopped = false;
  worker_->stop(1s, nullptr, [&] { stopped = true; });
  tiktok_.release_held();  // the transport's cancellation arrives
  run_until(kWorkerStart + 5s);
  ASSERT_TRUE(stopped);
  const TokenRecord r = get(id);
  EXPECT_TRUE(r.lease_owner.empty()) << "given back";
  EXPECT_EQ(r.consecutive_failures, 0) << "not the token's failure";
  EXPECT_EQ(r.renewal_in_doubt_since, kWorkerStart) << "the request was on the wire";
}

// New secrets stored by a renewal that failed at a later step settle any doubt.
TEST_F(WorkerTest, NewSecretsFromAFailedRenewalEndTheDoubt) {
  build();
  const std::string id = add("rot", std::nullopt);
  int attempt = 0;
  tiktok_.set_reply([&](Operation op, const TokenRecord&, const TokenSecrets&) {
    if (op != Operation::kRefresh) return Outcome::success(op);
    Outcome o = Outcome::failed(op, ErrorClass::kMalformed, "page step: unexpected reply");
    o.failure.in_doubt = true;
    if (++attempt == 2) o.secrets = TokenSecrets{Secret("act.NEW"), Secret("rft.NEW")};
    return o;
  });
  worker_->start();
  run_until(kWorkerStart + 1s);
  ASSERT_EQ(attempt, 1);
  EXPECT_EQ(get(id).renewal_in_doubt_since, kWorkerStart);
  while (attempt < 2 && clock_.now() < kWorkerStart + 10min)
    run_until(clock_.now() + 1s);  // to the retry, and no further
  ASSERT_EQ(attempt, 2);
  EXPECT_FALSE(get(id).renewal_in_doubt_since) << "the new refresh token is stored";
  EXPECT_EQ(store_->read_secrets(get(id))->refresh_token.reveal(), "rft.NEW");
}

TEST_F(WorkerTest, ARenewalWhoseAttemptCannotBeRecordedIsNotSent) {
  build();
  const std::string id = add("rot", std::nullopt);
  tiktok_.set_reply(
      [](Operation op, const TokenRecord&, const TokenSecrets&) { return renewed(op, 3); });
  faulty_.fail_renewal_starts(1, Errc::kStorage);  // a full disk, say
  worker_->start();
  run_until(kWorkerStart + 5s);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 0) << "never sent without the record";
  EXPECT_NE(log_lines_.str().find("renewal of " + id + " not sent: cannot record the attempt"),
            std::string::npos)
      << log_lines_.str();
  EXPECT_EQ(get(id).consecutive_failures, 0) << "not the token's failure";
  run_until(kWorkerStart + 1min);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 1) << "sent once the disk takes the record";
  EXPECT_EQ(store_->read_secrets(get(id))->refresh_token.reveal(), "rft.SECRET-3");
  EXPECT_FALSE(get(id).renewal_in_doubt_since);
}

TEST_F(WorkerTest, ARotatedTokenIsCommittedEvenWhenTheDatabaseIsBusyAtFirst) {
  build();
  const std::string id = add("rot", std::nullopt);
  tiktok_.set_reply(
      [](Operation op, const TokenRecord&, const TokenSecrets&) { return renewed(op, 7); });
  faulty_.fail_saves(2, Errc::kBusy);
  std::optional<std::vector<ForcedResult>> results;
  worker_->run_now({id}, Operation::kRefresh, [&](auto r) { results = std::move(r); });
  run_until(clock_.now() + 1s);  // retries after 100 ms, then 200 ms (fake time)
  ASSERT_TRUE(results);
  EXPECT_EQ((*results)[0].status, ForcedResult::Status::kOk) << (*results)[0].message;
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
  EXPECT_EQ((*results)[0].status, ForcedResult::Status::kBusy);
  EXPECT_NE((*results)[0].message.find("busy"), std::string::npos) << (*results)[0].message;
  EXPECT_EQ((*results)[1].status, ForcedResult::Status::kFailed);
  EXPECT_EQ((*results)[1].state, TokenState::kNeedsReauth);
  EXPECT_NE((*results)[1].message.find("invalid_grant"), std::string::npos);
  EXPECT_EQ((*results)[2].status, ForcedResult::Status::kRefused);
  EXPECT_NE((*results)[2].message.find("disabled"), std::string::npos);
  EXPECT_EQ((*results)[3].status, ForcedResult::Status::kNotFound);
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
  worker_->stop(20s, nullptr, [&] { stopped = true; });
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
  build(/*max_in_flight=*/1, one_at_a_time);
  worker_->start();
  run_until(kWorkerStart + 5min);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 1) << "paused for ten minutes after the first";
  run_until(kWorkerStart + 21min);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 3);
}

TEST_F(WorkerTest, AHalfOpenProbeInFlightDoesNotSpinTheLoop) {
  ProviderLimits limits;
  limits.breaker_failures = 1;
  limits.breaker_cooldown = 30s;
  build(/*max_in_flight=*/1, limits);
  for (int i = 0; i < 4; ++i)
    add("acct-" + std::to_string(i), std::nullopt);
  tiktok_.set_reply([](Operation op, const TokenRecord&, const TokenSecrets&) {
    return Outcome::failed(op, ErrorClass::kTransient, "HTTP 503");
  });
  worker_->start();
  run_until(kWorkerStart + 1s);  // the first failure opens the breaker; the rest are put off
  ASSERT_EQ(tiktok_.calls(Operation::kRefresh), 1);
  tiktok_.hold(true);
  run_until(kWorkerStart + 40s);  // the probe goes out after the cooldown... and hangs
  EXPECT_EQ(tiktok_.held(), 1u);
  const int fired = run_until(kWorkerStart + 2min);
  EXPECT_LT(fired, 20) << "waiting for the probe must not wake the loop over and over";
  tiktok_.set_reply(
      [](Operation op, const TokenRecord&, const TokenSecrets&) { return Outcome::success(op); });
  tiktok_.release_held();
  tiktok_.hold(false);
  run_until(kWorkerStart + 10min);
  EXPECT_GE(tiktok_.calls(Operation::kRefresh), 4) << "after the probe the rest go through";
}

TEST_F(WorkerTest, AProbeThatNeverWentOutDoesNotStallTheProvider) {
  ProviderLimits limits;
  limits.breaker_failures = 1;
  limits.breaker_cooldown = 30s;
  build(/*max_in_flight=*/1, limits);
  const std::string bad = add("bad-secret", std::nullopt);
  const std::string good = add("good", std::nullopt);
  // One token's secrets no longer decrypt: if it is picked as the half-open probe, no request
  // goes out for it. The provider must not stay shut because of that.
  faulty_.fail_reads_for(bad);
  tiktok_.set_reply([](Operation op, const TokenRecord&, const TokenSecrets&) {
    return Outcome::failed(op, ErrorClass::kTransient, "HTTP 503");
  });
  worker_->start();
  run_until(kWorkerStart + 1s);
  ASSERT_EQ(tiktok_.calls(Operation::kRefresh), 1) << "the breaker opened after one failure";
  tiktok_.set_reply(
      [](Operation op, const TokenRecord&, const TokenSecrets&) { return Outcome::success(op); });
  run_until(kWorkerStart + 1h);
  EXPECT_TRUE(get(good).last_refreshed_at) << "the good token got through after the cooldown";
  EXPECT_EQ(get(good).state, TokenState::kActive);
  EXPECT_EQ(get(bad).last_error_class, ErrorClass::kConfiguration);
}

TEST_F(WorkerTest, ACheckThatNeedsAFreshAccessTokenRenewsAndCommitsFirst) {
  build();
  const std::string id = add("acct", 3 * 24h);
  tiktok_.renew_before = true;  // the stored access token has expired
  std::string stored_at_check;
  tiktok_.set_reply([&](Operation op, const TokenRecord& t, const TokenSecrets& sent) {
    if (op == Operation::kRefresh) {
      tiktok_.renew_before = false;
      return renewed(op, 41);
    }
    // By the time the check goes out, the rotated pair is in the store, and it is what was sent.
    stored_at_check = std::string(store_->read_secrets(t)->refresh_token.reveal());
    EXPECT_EQ(sent.access_token.reveal(), "act.SECRET-41");
    return Outcome::success(op);
  });
  std::optional<std::vector<ForcedResult>> results;
  worker_->run_now({id}, Operation::kCheck, [&](auto r) { results = std::move(r); });
  settle();
  ASSERT_TRUE(results);
  EXPECT_EQ((*results)[0].status, ForcedResult::Status::kOk) << (*results)[0].message;
  EXPECT_EQ(stored_at_check, "rft.SECRET-41");
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 1);
  EXPECT_EQ(tiktok_.calls(Operation::kCheck), 1);
}

TEST_F(WorkerTest, ARefusedAccessTokenIsRenewedAndTheCheckTriedOnceMore) {
  build();
  const std::string id = add("acct", 3 * 24h);
  std::string stored_at_check;
  int checks = 0;
  tiktok_.set_reply([&](Operation op, const TokenRecord& t, const TokenSecrets& sent) {
    if (op == Operation::kRefresh) return renewed(op, 42);
    ++checks;
    stored_at_check = std::string(store_->read_secrets(t)->refresh_token.reveal());
    if (sent.access_token.reveal() == "act.SECRET-0") {
      Outcome o = Outcome::failed(op, ErrorClass::kPermanent, "access_token_invalid");
      o.renew_and_retry = true;
      return o;
    }
    return Outcome::success(op);
  });
  std::optional<std::vector<ForcedResult>> results;
  worker_->run_now({id}, Operation::kCheck, [&](auto r) { results = std::move(r); });
  settle();
  ASSERT_TRUE(results);
  EXPECT_EQ((*results)[0].status, ForcedResult::Status::kOk) << (*results)[0].message;
  EXPECT_EQ(checks, 2);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 1);
  EXPECT_EQ(stored_at_check, "rft.SECRET-42") << "committed before the second check went out";
  EXPECT_EQ(get(id).state, TokenState::kActive);
}

TEST_F(WorkerTest, ACheckRefusedAgainAfterARenewalStands) {
  build();
  const std::string id = add("acct", 3 * 24h);
  tiktok_.set_reply([](Operation op, const TokenRecord&, const TokenSecrets&) {
    if (op == Operation::kRefresh) return renewed(op, 5);
    Outcome o = Outcome::failed(op, ErrorClass::kPermanent, "access_token_invalid");
    o.renew_and_retry = true;
    return o;
  });
  std::optional<std::vector<ForcedResult>> results;
  worker_->run_now({id}, Operation::kCheck, [&](auto r) { results = std::move(r); });
  settle();
  ASSERT_TRUE(results);
  EXPECT_EQ((*results)[0].status, ForcedResult::Status::kFailed);
  EXPECT_EQ(tiktok_.calls(Operation::kRefresh), 1) << "renewed once, not in a loop";
  EXPECT_EQ(tiktok_.calls(Operation::kCheck), 2);
  EXPECT_EQ(get(id).state, TokenState::kNeedsReauth);
  EXPECT_EQ(store_->read_secrets(get(id))->refresh_token.reveal(), "rft.SECRET-5");
}

TEST_F(WorkerTest, ForcedWorkOnMoreTokensThanSlotsKeepsEveryLease) {
  SchedulerConfig short_lease;
  short_lease.lease = 30s;
  Scheduler scheduler(faulty_, policy_, clock_, short_lease, "cli:1",
                      ProviderSet{Provider::kTikTok});
  WorkerOptions options;
  options.max_in_flight = 2;
  options.scheduler = short_lease;
  LogConfig lc;
  auto log = make_logger("test", lc, log_lines_);
  Worker worker(io_.get_executor(), scheduler, faulty_, {&tiktok_}, clock_, options, log,
                timers_.factory());
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i)
    ids.push_back(add("acct-" + std::to_string(i), 30 * 24h));
  tiktok_.hold(true);
  std::optional<std::vector<ForcedResult>> results;
  worker.run_now(ids, Operation::kRefresh, [&](auto r) { results = std::move(r); });
  settle();
  EXPECT_EQ(worker.in_hand(), 2u) << "claimed as slots allow, not all at once";
  // The provider is slow: two minutes per reply, four times the lease.
  for (int round = 0; round < 5; ++round) {
    run_until(clock_.now() + 2min);
    // A daemon beside it may take tokens the forced run has not claimed yet, never one in hand.
    auto taken = store_->claim_due(clock_.now() + 1s, 100, "daemon", 5min, kAllProviders);
    for (const DueToken& d : *taken) {
      EXPECT_FALSE(tiktok_.holding(d.record.id)) << d.record.id << " is in flight";
      ASSERT_TRUE(store_->save(d.record, nullptr, "daemon", LeaseAction::kRelease));
    }
    tiktok_.release_held();
    settle();
  }
  run_until(clock_.now() + 1s);
  ASSERT_TRUE(results);
  for (const auto& r : *results)
    EXPECT_EQ(r.status, ForcedResult::Status::kOk) << r.message;
}

TEST_F(WorkerTest, StopWaitsForARetriedCommitOfRotatedSecrets) {
  build();
  const std::string id = add("rot", std::nullopt);
  tiktok_.set_reply(
      [](Operation op, const TokenRecord&, const TokenSecrets&) { return renewed(op, 9); });
  faulty_.fail_saves(1000, Errc::kStorage);  // the disk is full
  worker_->start();
  run_until(kWorkerStart + 1s);
  EXPECT_GT(faulty_.saves_refused(), 0);
  bool stopped = false;
  worker_->stop(5s, nullptr, [&] { stopped = true; });
  run_until(kWorkerStart + 3s);
  EXPECT_FALSE(stopped) << "renewed secrets are still waiting to be stored";
  faulty_.fail_saves(0);  // space freed
  run_until(kWorkerStart + 40s);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(store_->read_secrets(get(id))->refresh_token.reveal(), "rft.SECRET-9");
}

// Writes wait for the end of the loop turn. A stop in between: a renewal whose attempt was not
// written yet is not sent, and a renewal's outcome written after the stop ends the lease rather
// than keeping it for a check that will not run.
TEST_F(WorkerTest, AStopBeforeTheTurnsWritesSendsNothingNewAndKeepsNoLease) {
  for (int step = 0; step < 2; ++step) {
    build();
    const std::string id = add("stop-" + std::to_string(step), std::nullopt);
    ASSERT_NO_FATAL_FAILURE(make_both_due(id));
    const int refreshes = tiktok_.calls(Operation::kRefresh);
    worker_->start();
    io_.restart();
    ASSERT_EQ(io_.poll_one(), 1u);  // pump: claims, queues the renewal attempt
    if (step == 1) {
      ASSERT_EQ(io_.poll_one(), 1u);  // flush: the attempt is written; the request goes out
      ASSERT_EQ(io_.poll_one(), 1u);  // the reply: its outcome is queued
      ASSERT_EQ(tiktok_.calls(Operation::kRefresh), refreshes + 1);
    }
    bool stopped = false;
    worker_->stop(20s, nullptr, [&] { stopped = true; });
    settle();
    EXPECT_TRUE(stopped) << step;
    EXPECT_EQ(tiktok_.calls(Operation::kRefresh), refreshes + step) << step;
    EXPECT_EQ(tiktok_.calls(Operation::kCheck), 0) << step;
    const TokenRecord after = get(id);
    EXPECT_TRUE(after.lease_owner.empty()) << step;
    EXPECT_FALSE(after.renewal_in_doubt_since) << step;
    if (step == 1) {
      EXPECT_TRUE(after.last_refreshed_at) << "the renewal's outcome was written";
    } else {
      EXPECT_FALSE(after.last_refreshed_at);
    }
    ASSERT_TRUE(*store_->remove(id));  // still due: out of the next step's way
  }
}

TEST_F(WorkerTest, StopDoesNotWaitForAQueuedCheck) {
  build();
  const std::string id = add("both", std::nullopt);
  ASSERT_NO_FATAL_FAILURE(make_both_due(id));
  tiktok_.hold(true);
  worker_->start();
  settle();
  ASSERT_EQ(tiktok_.held(), 1u);  // the renewal; its check would follow
  bool stopped = false;
  worker_->stop(20s, nullptr, [&] { stopped = true; });
  tiktok_.release_held();
  settle();
  EXPECT_TRUE(stopped) << "no new step starts while stopping";
  EXPECT_EQ(tiktok_.calls(Operation::kCheck), 0);
  EXPECT_TRUE(get(id).lease_owner.empty());
  EXPECT_LE(*get(id).next_check_due, clock_.now()) << "the check is still due, for the next run";
}

TEST_F(WorkerTest, ATokenRemovedMidFlightIsDroppedNotRetriedForever) {
  build();
  const std::string id = add("gone", std::nullopt);
  tiktok_.hold(true);
  worker_->start();
  settle();
  ASSERT_TRUE(*store_->remove(id));
  tiktok_.release_held();
  run_until(kWorkerStart + 10min);
  EXPECT_EQ(worker_->in_hand(), 0u);
  EXPECT_EQ(worker_->stats().commit_retries, 0u);
  EXPECT_EQ(worker_->stats().results_dropped, 1u);
}

// A worker with a slow bucket, so that a second token waits in hand while the first is out.
struct SlowLane {
  SlowLane(WorkerTest& t, testing::FaultyStore& store, const Policy& policy, const Clock& clock,
           FakeProvider& provider, std::ostringstream& lines, ManualTimers& timers,
           boost::asio::io_context& io) {
    sc.lease = 30s;
    scheduler =
        std::make_unique<Scheduler>(store, policy, clock, sc, "w", ProviderSet{Provider::kTikTok});
    WorkerOptions options;
    options.scheduler = sc;
    ProviderLimits slow;
    slow.requests_per_second = 0.05;  // one request per 20 s
    slow.burst = 1;
    options.limits[Provider::kTikTok] = slow;
    worker = std::make_unique<Worker>(io.get_executor(), *scheduler, store,
                                      std::vector<ProviderClient*>{&provider}, clock, options,
                                      make_logger("test", LogConfig{}, lines), timers.factory());
    (void)t;
  }
  SchedulerConfig sc;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<Worker> worker;
};

TEST_F(WorkerTest, AQueuedTokenTakenOverByAnotherWorkerIsDropped) {
  SlowLane lane(*this, faulty_, policy_, clock_, tiktok_, log_lines_, timers_, io_);
  const std::string a = add("a", std::nullopt);
  const std::string b = add("b", std::nullopt);
  tiktok_.hold(true);
  lane.worker->start();
  settle();
  ASSERT_EQ(tiktok_.ids_seen().size(), 1u);
  ASSERT_EQ(lane.worker->in_hand(), 2u) << "one in flight, one waiting for the bucket";
  const std::string waiting = tiktok_.ids_seen()[0] == a ? b : a;
  // The waiting token's customer reconnects and another host claims it at once.
  add(waiting == a ? "a" : "b", std::nullopt);
  ASSERT_TRUE(store_->claim(waiting, clock_.now(), "other-host", 5min));
  run_until(clock_.now() + 15s);  // the lease timer finds out at 10 s
  run_until(clock_.now() + 10s);  // the bucket refills at 20 s: the lost job is dropped, not sent
  EXPECT_EQ(tiktok_.ids_seen().size(), 1u) << "nothing was sent for the lost token";
  EXPECT_EQ(lane.worker->stats().results_dropped, 1u);
  tiktok_.release_held();
  settle();
}

TEST_F(WorkerTest, AWaitingTokenReconnectedMeanwhileIsWorkedOnWithTheNewGrant) {
  SlowLane lane(*this, faulty_, policy_, clock_, tiktok_, log_lines_, timers_, io_);
  const std::string a = add("a", std::nullopt);
  const std::string b = add("b", std::nullopt);
  tiktok_.hold(true);
  lane.worker->start();
  settle();
  ASSERT_EQ(lane.worker->in_hand(), 2u);
  const std::string waiting = tiktok_.ids_seen()[0] == a ? b : a;
  NewToken t{
      Provider::kTikTok, TokenKind::kBusinessToken, "ws", waiting == a ? "a" : "b", "", {}, {}};
  ASSERT_TRUE(store_->upsert(t, TokenSecrets{Secret("act.NEW"), Secret("rft.NEW")}, clock_.now(),
                             [&](TokenRecord& r) { policy_.schedule_new(r, clock_.now()); }));
  std::string sent;
  tiktok_.hold(false);
  tiktok_.set_reply([&](Operation op, const TokenRecord& tr, const TokenSecrets& s) {
    if (tr.id == waiting) sent = std::string(s.refresh_token.reveal());
    return renewed(op, 3);
  });
  run_until(clock_.now() + 30s);
  EXPECT_EQ(sent, "rft.NEW") << "the request used the reconnected secrets";
  EXPECT_EQ(store_->read_secrets(get(waiting))->refresh_token.reveal(), "rft.SECRET-3");
  tiktok_.release_held();
  settle();
}

TEST_F(WorkerTest, AReclaimedTokenAlreadyInHandIsNotWorkedTwice) {
  SchedulerConfig sc;
  sc.lease = 30s;
  Scheduler scheduler(faulty_, policy_, clock_, sc, "w", ProviderSet{Provider::kTikTok});
  WorkerOptions options;
  options.scheduler = sc;
  LogConfig lc;
  auto log = make_logger("test", lc, log_lines_);
  Worker worker(io_.get_executor(), scheduler, faulty_, {&tiktok_}, clock_, options, log,
                timers_.factory());
  const std::string id = add("slow", std::nullopt);
  tiktok_.hold(true);
  worker.start();
  settle();
  ASSERT_EQ(tiktok_.held(), 1u);
  // The wall clock jumps an hour ahead: the lease has expired and the token is due again.
  clock_.set_system(clock_.system_now() + 1h);
  run_until(clock_.now() + 1s);
  EXPECT_EQ(tiktok_.held(), 1u) << "still one request for the token";
  tiktok_.release_held();
  settle();
  EXPECT_TRUE(get(id).last_refreshed_at) << "and its outcome is stored";
  EXPECT_EQ(worker.stats().results_dropped, 0u);
}

// The wall clock set back six hours, then forward a day, under a running worker. Checks go on
// every hour through both: those the step back put six hours ahead are pulled in, in the store
// and in the job in hand (a renewal on the wire at the step). Failing tokens keep their backoff
// and Retry-After, and no token is failed for the clock.
TEST_F(WorkerTest, TheWallClockSetBackThenForwardNeverStallsChecksNorFailsAToken) {
  build();
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i)
    ids.push_back(add("acct-" + std::to_string(i)));
  const std::string flaky = add("flaky");          // 503s: backs off
  const std::string throttled = add("throttled");  // 429 with Retry-After: 3 hours
  std::map<std::string, int> checks;
  std::vector<SysTime> flaky_attempts, throttled_attempts;
  tiktok_.set_reply([&](Operation op, const TokenRecord& r, const TokenSecrets&) {
    if (r.id == flaky) {
      flaky_attempts.push_back(clock_.now());
      return Outcome::failed(op, ErrorClass::kTransient, "HTTP 503");
    }
    if (r.id == throttled) {
      throttled_attempts.push_back(clock_.now());
      Outcome o = Outcome::failed(op, ErrorClass::kTransient, "HTTP 429");
      o.failure.retry_after = Seconds{3 * 3600};
      return o;
    }
    if (op == Operation::kCheck) ++checks[r.id];
    return renewed(op, 1);
  });
  worker_->start();
  run_until(kWorkerStart + 3h);
  for (const auto& id : ids)
    ASSERT_GE(checks[id], 2) << id;
  ASSERT_GE(flaky_attempts.size(), 4u);
  for (std::size_t i = 2; i < 4; ++i) {
    EXPECT_GT(flaky_attempts[i] - flaky_attempts[i - 1],
              flaky_attempts[i - 1] - flaky_attempts[i - 2])
        << "backing off";
  }
  ASSERT_EQ(throttled_attempts.size(), 1u) << "waits out its Retry-After";

  // A renewal goes out and is on the wire when the wall clock is set back six hours.
  tiktok_.hold(true);
  const std::string renewing = add("renewing", std::nullopt);  // no known expiry: renewed now
  run_until(clock_.now() + 1min);
  ASSERT_TRUE(tiktok_.holding(renewing));
  std::map<std::string, int> before = checks;
  const std::size_t throttled_before = throttled_attempts.size();
  clock_.set_system(clock_.system_now() - 6h);
  run_until(clock_.now() + 1min);  // the worker wakes on the steady clock and sees the step
  EXPECT_NE(log_lines_.str().find("the wall clock was set back by 6h"), std::string::npos);
  tiktok_.hold(false);
  tiktok_.release_held();
  run_until(clock_.now() + 2h);
  for (const auto& id : ids) {
    EXPECT_GE(checks[id] - before[id], 2) << id << ": checked every hour after the step back";
    EXPECT_EQ(get(id).state, TokenState::kActive) << id;
  }
  EXPECT_GE(checks[renewing], 1) << "the job in hand at the step was pulled in too";
  EXPECT_EQ(throttled_attempts.size(), throttled_before) << "its Retry-After is not cut short";

  // Forward a day: what came due is done now, and the hourly checks go on.
  before = checks;
  clock_.set_system(clock_.system_now() + 24h);
  run_until(clock_.now() + 2h);
  for (const auto& id : ids) {
    EXPECT_GE(checks[id] - before[id], 2) << id << ": checked every hour after the step forward";
    EXPECT_EQ(get(id).state, TokenState::kActive) << id;
  }
  EXPECT_NE(log_lines_.str().find("the wall clock moved 1d ahead of the steady clock"),
            std::string::npos);
  EXPECT_GT(throttled_attempts.size(), throttled_before) << "retried once due";

  // The failing tokens were only ever failing.
  for (const std::string& id : {flaky, throttled}) {
    EXPECT_EQ(get(id).state, TokenState::kFailing) << id;
  }
  EXPECT_EQ(worker_->stats().results_dropped, 0u);
}

}  // namespace
}  // namespace tw
