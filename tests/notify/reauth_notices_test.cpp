// ReauthNotices: the database as the notifier's outbox. A real SqliteTokenStore (in memory), the
// real Notifier with its webhook on a FakeTransport, a FakeClock and ManualTimers.
#include "notify/reauth_notices.h"

#include <sstream>

#include <boost/asio/io_context.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/log.h"
#include "scheduler/policy.h"
#include "storage/sqlite_token_store.h"
#include "tests/support/fake_transport.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

const SysTime kNoticeStart = from_unix(1'800'000'000);

class ReauthNoticesTest : public ::testing::Test {
 protected:
  ReauthNoticesTest()
      : store_(
            std::move(*SqliteTokenStore::open(":memory:", 1s, Cipher(KeyRing(*Key::generate()))))) {
    config_.webhook_url = "https://hooks.example/tw";
    config_.max_attempts = 2;
    config_.initial_backoff = 10s;
    start();
  }

  // A daemon's notifier and its outbox, as after a (re)start.
  void start() {
    notices_.reset();
    notifier_ = std::make_unique<Notifier>(io_.get_executor(), config_, Secret("whsec-k"), http_,
                                           clock_, make_logger("t", LogConfig{}, logs_),
                                           timers_.factory(), [] { return 0.0; });
    notices_ = std::make_unique<ReauthNotices>(
        *store_, *notifier_, clock_, make_logger("t", LogConfig{}, logs_), timers_.factory(), 1min);
  }

  std::string add(const std::string& account) {
    NewToken t{Provider::kGoogle, TokenKind::kRefreshToken, "ws-" + account, account, "", {}, {}};
    auto r = store_->upsert(t, {Secret("act.SECRET"), Secret("rft.SECRET")}, clock_.now(),
                            [&](TokenRecord& rec) { policy_.schedule_new(rec, clock_.now()); });
    EXPECT_TRUE(r) << r.error().message();
    return r->record.id;
  }

  // What a worker (this process's or another's) commits when the provider refuses the grant.
  void fail(const std::string& id, ErrorClass c, const std::string& reason) {
    auto claimed = store_->claim(id, clock_.now(), "other-host:1", 1min);
    ASSERT_TRUE(claimed) << claimed.error().message();
    TokenRecord rec = *claimed;
    policy_.on_failure(rec, Operation::kRefresh, {c, reason, std::nullopt}, clock_.now());
    ASSERT_TRUE(store_->save(rec, nullptr, "other-host:1", LeaseAction::kRelease));
  }

  void accept_all() {
    http_.set_handler([](const HttpRequest&) {
      HttpResponse r;
      r.status = 200;
      return r;
    });
  }

  // Runs what is posted and fires what is due now.
  void settle() {
    for (int i = 0; i < 10; ++i) {
      io_.restart();
      io_.poll();
      if (timers_.fire_due(clock_.system_now()) == 0 && io_.stopped()) break;
    }
  }

  // Token ids the webhook was sent, in order.
  std::vector<std::string> sent() const {
    std::vector<std::string> ids;
    for (const HttpRequest& r : http_.requests()) {
      ids.push_back(nlohmann::json::parse(r.body).at("token_id").get<std::string>());
    }
    return ids;
  }

  std::ostringstream logs_;
  FakeClock clock_{kNoticeStart};
  boost::asio::io_context io_;
  ManualTimers timers_;
  testing::FakeTransport http_{io_.get_executor()};
  Policy policy_{PolicyConfig::from(Config{}), [] { return 0.0; }};
  std::unique_ptr<SqliteTokenStore> store_;
  NotifyConfig config_;
  std::unique_ptr<Notifier> notifier_;
  std::unique_ptr<ReauthNotices> notices_;
};

TEST_F(ReauthNoticesTest, EachTokenThatNeedsTheCustomerIsNotifiedOnce) {
  add("ok");
  const std::string revoked = add("gone");
  const std::string reauth = add("scope");
  fail(revoked, ErrorClass::kRevoked, "invalid_grant: Token has been expired or revoked.");
  fail(reauth, ErrorClass::kPermanent, "missing scope");
  accept_all();

  notices_->start();
  settle();
  EXPECT_THAT(sent(), ::testing::UnorderedElementsAre(revoked, reauth));
  EXPECT_EQ(notices_->pending(), 0u);
  EXPECT_TRUE(store_->unnotified_reauth(10)->empty()) << "both marked done";

  // Later scans, and a restart, send nothing again.
  clock_.advance(1min);
  settle();
  start();
  notices_->start();
  settle();
  EXPECT_EQ(http_.requests().size(), 2u);
}

TEST_F(ReauthNoticesTest, WhatAnotherProcessFoundIsNotifiedByTheNextScan) {
  const std::string id = add("gone");
  accept_all();
  notices_->start();
  settle();
  EXPECT_TRUE(http_.requests().empty());

  fail(id, ErrorClass::kRevoked, "invalid_grant");  // e.g. `tokenwarden check` from the CLI
  settle();
  EXPECT_TRUE(http_.requests().empty()) << "not before the next scan";
  clock_.advance(1min);
  settle();
  EXPECT_EQ(sent(), std::vector<std::string>{id});
}

TEST_F(ReauthNoticesTest, APokeScansAtOnceAndPokesInABurstShareOneScan) {
  const std::string a = add("a");
  const std::string b = add("b");
  accept_all();
  notices_->start();
  settle();
  fail(a, ErrorClass::kRevoked, "invalid_grant");
  fail(b, ErrorClass::kRevoked, "invalid_grant");
  notices_->poke();
  notices_->poke();
  settle();
  EXPECT_THAT(sent(), ::testing::UnorderedElementsAre(a, b));
}

TEST_F(ReauthNoticesTest, ANoticeNotFinishedIsSentAgainAfterARestart) {
  const std::string id = add("gone");
  fail(id, ErrorClass::kRevoked, "invalid_grant");
  http_.push_reply(503, "");
  notices_->start();
  settle();
  ASSERT_EQ(http_.requests().size(), 1u);
  EXPECT_EQ(notices_->pending(), 1u) << "waiting to retry";
  notices_->scan();
  settle();
  EXPECT_EQ(http_.requests().size(), 1u) << "a pending token is not handed over twice";

  notices_->stop();
  notifier_->shutdown();  // SIGTERM before the retry
  http_.push_reply(200, "");
  start();
  notices_->start();
  settle();
  EXPECT_EQ(sent(), (std::vector<std::string>{id, id}));
  EXPECT_TRUE(store_->unnotified_reauth(10)->empty());
}

TEST_F(ReauthNoticesTest, AGivenUpNoticeIsDoneAndLogged) {
  const std::string id = add("gone");
  fail(id, ErrorClass::kRevoked, "invalid_grant");
  http_.push_reply(400, "");
  notices_->start();
  settle();
  EXPECT_EQ(notices_->pending(), 0u);
  EXPECT_TRUE(store_->unnotified_reauth(10)->empty()) << "not retried on every scan forever";
  EXPECT_THAT(logs_.str(), HasSubstr("gave up notifying webhook of token.revoked for " + id));
}

TEST_F(ReauthNoticesTest, ATokenRevokedAgainAfterAReconnectIsNotifiedAgain) {
  const std::string id = add("gone");
  fail(id, ErrorClass::kRevoked, "invalid_grant");
  accept_all();
  notices_->start();
  settle();
  ASSERT_EQ(http_.requests().size(), 1u);

  clock_.advance(1h);
  EXPECT_EQ(add("gone"), id) << "the customer reconnected: the same token, active again";
  EXPECT_TRUE(store_->unnotified_reauth(10)->empty());
  clock_.advance(1h);
  fail(id, ErrorClass::kRevoked, "invalid_grant");
  notices_->poke();
  settle();
  EXPECT_EQ(sent(), (std::vector<std::string>{id, id}));
}

TEST_F(ReauthNoticesTest, AMarkForAStateThatHasMovedOnIsNotWritten) {
  const std::string id = add("gone");
  fail(id, ErrorClass::kRevoked, "invalid_grant");
  const SysTime since = (*store_->find(id))->state_since;
  clock_.advance(1h);
  add("gone");  // reconnected meanwhile
  EXPECT_FALSE(*store_->mark_reauth_notified(id, since));
}

}  // namespace
}  // namespace tw
