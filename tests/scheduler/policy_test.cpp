#include "scheduler/policy.h"

#include <algorithm>
#include <random>

#include <gtest/gtest.h>

namespace tw {
namespace {

using namespace std::chrono_literals;
using std::chrono::days;

const SysTime kPolicyNow = from_unix(1'800'000'000);

PolicyConfig defaults() {
  return PolicyConfig::from(Config{});
}

TokenRecord token(Provider p, TokenKind k, bool refresh_secret = true) {
  TokenRecord r;
  r.id = "tok_00112233aabbccdd";
  r.provider = p;
  r.kind = k;
  r.connected_at = kPolicyNow;
  r.created_at = kPolicyNow;
  r.state_since = kPolicyNow;
  r.has_access_token = true;
  r.has_refresh_token = refresh_secret;
  return r;
}

class PolicyTest : public ::testing::Test {
 protected:
  double draw_ = 0.0;  // what the random source returns: 0 means "no jitter"
  Policy policy_{defaults(), [this] { return draw_; }};
};

TEST_F(PolicyTest, MetaRenewsWeeklyAndEarlierWhenTheUserTokenIsAboutToExpire) {
  TokenRecord r = token(Provider::kMeta, TokenKind::kPageToken);
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow), kPolicyNow + days(7));
  r.last_refreshed_at = kPolicyNow + days(7);
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow + days(7)), kPolicyNow + days(14));
  // A user token 60 days from expiry changes nothing; two days from expiry, it comes first.
  TokenRecord u = token(Provider::kMeta, TokenKind::kUserToken, false);
  u.expires_at = kPolicyNow + days(60);
  EXPECT_EQ(policy_.next_refresh(u, kPolicyNow), kPolicyNow + days(7));
  u.expires_at = kPolicyNow + days(2);
  EXPECT_EQ(policy_.next_refresh(u, kPolicyNow), kPolicyNow)
      << "added two days from expiry: renewed at once";
  u.last_refreshed_at = kPolicyNow;  // renewed by us, and the provider gave it only two days
  EXPECT_EQ(policy_.next_refresh(u, kPolicyNow), kPolicyNow + 32h)
      << "two thirds of a known 2-day lifetime";
}

// A generic provider: renewed at a fraction of the lifetime (2/3 by default), or renew_before
// ahead of expiry; checked only when its configuration gives a way to.
TEST(GenericPolicy, RenewsAtAFractionOfTheLifetimeOrBeforeExpiry) {
  const Provider acme = *Provider::named("acme");
  PolicyConfig config = defaults();
  config.generic[acme] =
      GenericSchedule{ScheduleConfig{std::nullopt, std::nullopt, 1h}, std::nullopt, false};
  Policy policy(config, [] { return 0.0; });
  TokenRecord cc = token(acme, TokenKind::kClientCredentials, false);
  EXPECT_TRUE(Policy::renewable(cc)) << "a generic client-credentials token is renewed";
  EXPECT_EQ(policy.next_refresh(cc, kPolicyNow), kPolicyNow) << "no expiry known: at once";
  cc.expires_at = kPolicyNow + 8h;
  EXPECT_EQ(policy.next_refresh(cc, kPolicyNow), kPolicyNow + 320min) << "default 2/3";
  cc.last_refreshed_at = kPolicyNow + 6h;
  cc.expires_at = kPolicyNow + 14h;
  EXPECT_EQ(policy.next_refresh(cc, kPolicyNow + 6h), kPolicyNow + 6h + 320min);
  EXPECT_FALSE(policy.checkable(cc)) << "no introspection configured";
  policy.schedule_new(cc, kPolicyNow);
  EXPECT_FALSE(cc.next_check_due);

  config.generic[acme] = GenericSchedule{ScheduleConfig{std::nullopt, std::nullopt, 1h}, 0.5, true};
  policy.reconfigure(config);
  TokenRecord rt = token(acme, TokenKind::kRefreshToken);
  rt.expires_at = kPolicyNow + 10h;
  rt.refresh_expires_at = kPolicyNow + days(30);
  EXPECT_EQ(policy.next_refresh(rt, kPolicyNow), kPolicyNow + 5h) << "the earlier of the two";
  EXPECT_TRUE(policy.checkable(rt));
  policy.schedule_new(rt, kPolicyNow);
  EXPECT_TRUE(rt.next_check_due);

  config.generic[acme] = GenericSchedule{ScheduleConfig{std::nullopt, 2h, 1h}, std::nullopt, true};
  policy.reconfigure(config);
  EXPECT_EQ(policy.next_refresh(rt, kPolicyNow), kPolicyNow + 8h) << "renew_before wins alone";

  // An API key is never renewed; a Meta client-credentials (app) token is only checked.
  EXPECT_FALSE(Policy::renewable(token(acme, TokenKind::kApiKey, false)));
  EXPECT_FALSE(Policy::renewable(token(Provider::kMeta, TokenKind::kClientCredentials, false)));
  // A provider the configuration no longer names gets defaults, not a crash, and no checks.
  TokenRecord gone = token(*Provider::named("gone"), TokenKind::kRefreshToken);
  EXPECT_FALSE(policy.checkable(gone));
  EXPECT_EQ(policy.schedule_for(gone.provider).check_every, ScheduleConfig{}.check_every);
}

TEST_F(PolicyTest, GoogleRenewsEveryThirtyDaysWhateverTheAccessTokenExpiry) {
  TokenRecord r = token(Provider::kGoogle, TokenKind::kRefreshToken);
  r.expires_at = kPolicyNow + 1h;  // the access token: refreshed on demand, not scheduled
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow), kPolicyNow + days(30));
}

TEST_F(PolicyTest, TikTokRenewsThreeDaysBeforeExpiry) {
  TokenRecord r = token(Provider::kTikTok, TokenKind::kBusinessToken);
  r.expires_at = kPolicyNow + days(30);
  r.refresh_expires_at = kPolicyNow + days(365);
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow), kPolicyNow + days(27));
  // A refresh token close to its own end is renewed 3 days before that instead.
  r.refresh_expires_at = kPolicyNow + days(10);
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow), kPolicyNow + days(7));
}

TEST_F(PolicyTest, TikTokLifetimeShorterThanRenewBeforeRenewsAtTwoThirds) {
  TokenRecord r = token(Provider::kTikTok, TokenKind::kRefreshToken);
  r.expires_at = kPolicyNow + 24h;
  r.refresh_expires_at = kPolicyNow + days(365);
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow), kPolicyNow)
      << "just added: its whole lifetime is unknown, so renew now to learn it";
  r.last_refreshed_at = kPolicyNow;
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow), kPolicyNow + 16h);
  r.expires_at = kPolicyNow + 2h;
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow), kPolicyNow + 80min);
}

TEST_F(PolicyTest, UnknownExpiryOrPastDueMeansNow) {
  TokenRecord r = token(Provider::kTikTok, TokenKind::kBusinessToken);
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow + 5min), kPolicyNow + 5min)
      << "renewing reveals the lifetime";
  r.expires_at = kPolicyNow - 1h;
  EXPECT_EQ(policy_.next_refresh(r, kPolicyNow), kPolicyNow);
  TokenRecord m = token(Provider::kMeta, TokenKind::kPageToken);
  EXPECT_EQ(policy_.next_refresh(m, kPolicyNow + days(9)), kPolicyNow + days(9))
      << "overdue is due now";
}

TEST_F(PolicyTest, SomeTokensAreNeverRenewed) {
  EXPECT_EQ(policy_.next_refresh(token(Provider::kGoogle, TokenKind::kApiKey), kPolicyNow),
            std::nullopt);
  EXPECT_EQ(policy_.next_refresh(token(Provider::kMeta, TokenKind::kClientCredentials), kPolicyNow),
            std::nullopt);
  EXPECT_EQ(policy_.next_refresh(token(Provider::kMeta, TokenKind::kPageToken, false), kPolicyNow),
            std::nullopt)
      << "a Page token without its user token cannot be re-derived";
  for (TokenState s : {TokenState::kNeedsReauth, TokenState::kRevoked, TokenState::kDisabled}) {
    TokenRecord r = token(Provider::kMeta, TokenKind::kPageToken);
    r.state = s;
    EXPECT_EQ(policy_.next_refresh(r, kPolicyNow), std::nullopt) << to_string(s);
  }
}

TEST_F(PolicyTest, RefreshEveryOffAndRenewBeforeOffFollowConfig) {
  PolicyConfig c = defaults();
  c.meta.refresh_every.reset();
  c.google.renew_before = 10min;
  Policy p(c, [] { return 0.0; });
  TokenRecord m = token(Provider::kMeta, TokenKind::kUserToken);
  m.expires_at = kPolicyNow + days(60);
  EXPECT_EQ(p.next_refresh(m, kPolicyNow), kPolicyNow + days(57));
  TokenRecord g = token(Provider::kGoogle, TokenKind::kRefreshToken);
  g.expires_at = kPolicyNow + 1h;
  EXPECT_EQ(p.next_refresh(g, kPolicyNow), kPolicyNow + 50min);
}

TEST_F(PolicyTest, ChecksComeAtAFixedSlotEveryPeriod) {
  TokenRecord r = token(Provider::kGoogle, TokenKind::kRefreshToken);
  SysTime first = policy_.next_check(r, kPolicyNow);
  EXPECT_GT(first, kPolicyNow);
  EXPECT_LE(first, kPolicyNow + 1h);
  EXPECT_EQ(policy_.next_check(r, first - 1s), first);
  EXPECT_EQ(policy_.next_check(r, first), first + 1h) << "strictly after now";
  EXPECT_EQ(policy_.next_check(r, first + 59min), first + 1h) << "a late check keeps its slot";
  EXPECT_EQ(policy_.next_check(r, first + 3h + 1s), first + 4h);
  EXPECT_EQ(to_unix(policy_.next_check(r, from_unix(-10))) % 3600, to_unix(first) % 3600)
      << "slots hold before the epoch too";
}

TEST_F(PolicyTest, ChecksOfManyTokensSpreadEvenlyOverTheHour) {
  std::mt19937_64 rng(7);
  std::vector<int> per_minute(60, 0);
  constexpr int kTokens = 60'000;
  for (int i = 0; i < kTokens; ++i) {
    TokenRecord r = token(Provider::kMeta, TokenKind::kPageToken);
    char id[32];
    std::snprintf(id, sizeof id, "tok_%016llx", static_cast<unsigned long long>(rng()));
    r.id = id;
    auto t = to_unix(policy_.next_check(r, kPolicyNow)) - to_unix(kPolicyNow);
    per_minute[static_cast<std::size_t>((t - 1) / 60)]++;
  }
  auto [lo, hi] = std::minmax_element(per_minute.begin(), per_minute.end());
  // 1,000 a minute on average; a burst would put thousands into one minute.
  EXPECT_GT(*lo, 850);
  EXPECT_LT(*hi, 1150);
}

TEST_F(PolicyTest, BackoffDoublesToTheCapWithJitterBelowTheNominalDelay) {
  EXPECT_EQ(policy_.backoff(1), 30s);
  EXPECT_EQ(policy_.backoff(2), 60s);
  EXPECT_EQ(policy_.backoff(3), 120s);
  EXPECT_EQ(policy_.backoff(7), 1920s);
  EXPECT_EQ(policy_.backoff(8), 3600s);
  EXPECT_EQ(policy_.backoff(1000), 3600s);
  draw_ = 0.999;
  EXPECT_EQ(policy_.backoff(1), 24s) << "jitter 0.2 takes up to a fifth off";
  EXPECT_EQ(policy_.backoff(8), 2881s);
  draw_ = 0.5;
  EXPECT_EQ(policy_.backoff(2), 54s);
}

TEST_F(PolicyTest, TransientFailureBacksOffAndHonoursRetryAfter) {
  TokenRecord r = token(Provider::kTikTok, TokenKind::kBusinessToken);
  r.expires_at = kPolicyNow + days(30);
  policy_.schedule_new(r, kPolicyNow);
  const auto check = r.next_check_due;
  policy_.on_failure(r, Operation::kRefresh, {ErrorClass::kTransient, "HTTP 503", {}}, kPolicyNow);
  EXPECT_EQ(r.state, TokenState::kFailing);
  EXPECT_EQ(r.state_since, kPolicyNow);
  EXPECT_EQ(r.consecutive_failures, 1);
  EXPECT_EQ(r.last_error_class, ErrorClass::kTransient);
  EXPECT_EQ(r.last_error_operation, Operation::kRefresh);
  EXPECT_EQ(r.last_error_message, "HTTP 503");
  EXPECT_EQ(r.next_refresh_due, kPolicyNow + 30s);
  EXPECT_EQ(r.next_check_due, check) << "checks go on";
  policy_.on_failure(r, Operation::kRefresh, {ErrorClass::kTransient, "429", 600s},
                     kPolicyNow + 30s);
  EXPECT_EQ(r.consecutive_failures, 2);
  EXPECT_EQ(r.state_since, kPolicyNow) << "still failing since the first failure";
  EXPECT_EQ(r.next_refresh_due, kPolicyNow + 30s + 600s) << "Retry-After beats a shorter backoff";
}

TEST_F(PolicyTest, PermanentAndRevokedStopAllWork) {
  TokenRecord r = token(Provider::kGoogle, TokenKind::kRefreshToken);
  policy_.schedule_new(r, kPolicyNow);
  policy_.on_failure(r, Operation::kRefresh, {ErrorClass::kPermanent, "invalid_grant", {}},
                     kPolicyNow);
  EXPECT_EQ(r.state, TokenState::kNeedsReauth);
  EXPECT_FALSE(r.next_refresh_due);
  EXPECT_FALSE(r.next_check_due);
  TokenRecord m = token(Provider::kMeta, TokenKind::kPageToken);
  policy_.schedule_new(m, kPolicyNow);
  policy_.on_failure(m, Operation::kCheck, {ErrorClass::kRevoked, "code 190/458", {}}, kPolicyNow);
  EXPECT_EQ(m.state, TokenState::kRevoked);
  EXPECT_EQ(m.last_checked_at, kPolicyNow);
  EXPECT_FALSE(m.next_refresh_due);
  EXPECT_FALSE(m.next_check_due);
}

TEST_F(PolicyTest, ConfigurationErrorsAndRepeatedMalformedRepliesWaitTheMaximum) {
  TokenRecord r = token(Provider::kGoogle, TokenKind::kRefreshToken);
  policy_.on_failure(r, Operation::kRefresh, {ErrorClass::kConfiguration, "invalid_client", {}},
                     kPolicyNow);
  EXPECT_EQ(r.next_refresh_due, kPolicyNow + 1h);
  EXPECT_EQ(r.state, TokenState::kFailing);
  TokenRecord m = token(Provider::kMeta, TokenKind::kPageToken);
  for (int i = 1; i <= 5; ++i) {
    policy_.on_failure(m, Operation::kCheck, {ErrorClass::kMalformed, "body hash ab12", {}},
                       kPolicyNow);
    EXPECT_EQ(m.state, TokenState::kFailing) << "malformed is never revoked";
    if (i < 5) {
      EXPECT_EQ(m.next_check_due, kPolicyNow + policy_.backoff(i)) << i;
    }
  }
  EXPECT_EQ(m.next_check_due, kPolicyNow + 1h) << "capped after malformed_cap in a row";
}

TEST_F(PolicyTest, ACheckDoesNotClearAFailingRenewalButARenewalClearsEverything) {
  TokenRecord r = token(Provider::kTikTok, TokenKind::kBusinessToken);
  r.expires_at = kPolicyNow + days(30);
  policy_.schedule_new(r, kPolicyNow);
  policy_.on_failure(r, Operation::kRefresh, {ErrorClass::kTransient, "timeout", {}}, kPolicyNow);
  policy_.on_failure(r, Operation::kRefresh, {ErrorClass::kTransient, "timeout", {}},
                     kPolicyNow + 1min);
  const auto retry = r.next_refresh_due;
  policy_.on_check_success(r, kPolicyNow + 2min);
  EXPECT_EQ(r.state, TokenState::kFailing);
  EXPECT_EQ(r.consecutive_failures, 2);
  EXPECT_EQ(r.next_refresh_due, retry);
  EXPECT_EQ(r.last_checked_at, kPolicyNow + 2min);

  r.expires_at = kPolicyNow + days(31);
  policy_.on_refresh_success(r, kPolicyNow + 3min);
  EXPECT_EQ(r.state, TokenState::kActive);
  EXPECT_EQ(r.state_since, kPolicyNow + 3min);
  EXPECT_EQ(r.consecutive_failures, 0);
  EXPECT_FALSE(r.last_error_operation);
  EXPECT_EQ(r.last_error_class, ErrorClass::kTransient) << "the last error stays on record";
  EXPECT_EQ(r.last_refreshed_at, kPolicyNow + 3min);
  EXPECT_EQ(r.next_refresh_due, kPolicyNow + days(28));

  // A failing check is cleared by the next good check.
  policy_.on_failure(r, Operation::kCheck, {ErrorClass::kTransient, "reset", {}}, kPolicyNow + 1h);
  EXPECT_EQ(r.state, TokenState::kFailing);
  policy_.on_check_success(r, kPolicyNow + 2h);
  EXPECT_EQ(r.state, TokenState::kActive);
  EXPECT_EQ(r.consecutive_failures, 0);
}

TEST_F(PolicyTest, ARenewalThatDoesNotExtendTheExpiryDoesNotLoop) {
  // A Page token whose user token has a fixed expiry five days out: re-deriving does not move it.
  TokenRecord r = token(Provider::kMeta, TokenKind::kPageToken);
  r.refresh_expires_at = kPolicyNow + days(5);
  r.expires_at = kPolicyNow + days(5);
  policy_.schedule_new(r, kPolicyNow);
  EXPECT_EQ(r.next_refresh_due, kPolicyNow + days(2)) << "3 days before the expiry";
  SysTime now = kPolicyNow + days(2);
  policy_.on_refresh_success(r, now);  // the provider sent the same expiry back
  EXPECT_EQ(r.next_refresh_due, now + 1h) << "one check period later, not at once";
  // From then on each renewal comes at two thirds of what is left: a handful, never a loop.
  int renewals = 1;
  while (*r.next_refresh_due < *r.expires_at) {
    ASSERT_GT(*r.next_refresh_due, now);
    now = *r.next_refresh_due;
    policy_.on_refresh_success(r, now);
    ASSERT_LT(++renewals, 20);
  }
}

TEST_F(PolicyTest, DisabledStaysDisabledAndSuccessRevivesADeadGrant) {
  TokenRecord r = token(Provider::kTikTok, TokenKind::kBusinessToken);
  r.expires_at = kPolicyNow + days(30);
  r.state = TokenState::kDisabled;
  r.next_check_due = kPolicyNow;  // as if left over
  policy_.on_refresh_success(r, kPolicyNow);
  EXPECT_EQ(r.state, TokenState::kDisabled);
  EXPECT_FALSE(r.next_refresh_due);
  EXPECT_FALSE(r.next_check_due);
  EXPECT_EQ(r.last_refreshed_at, kPolicyNow);
  policy_.on_failure(r, Operation::kCheck, {ErrorClass::kTransient, "503", {}}, kPolicyNow);
  EXPECT_EQ(r.state, TokenState::kDisabled);
  EXPECT_FALSE(r.next_check_due);

  TokenRecord dead = token(Provider::kMeta, TokenKind::kPageToken);
  policy_.on_failure(dead, Operation::kRefresh, {ErrorClass::kPermanent, "190/460", {}},
                     kPolicyNow);
  ASSERT_EQ(dead.state, TokenState::kNeedsReauth);
  policy_.on_check_success(dead, kPolicyNow + 1h);  // a forced check finds it valid after all
  EXPECT_EQ(dead.state, TokenState::kActive);
  EXPECT_TRUE(dead.next_check_due);
  EXPECT_TRUE(dead.next_refresh_due) << "an active renewable token is scheduled again";
}

// A renewal whose reply was lost leaves the token "in doubt": the provider may have rotated the
// refresh token. The doubt lasts until a renewal's result is known.
TEST_F(PolicyTest, ARenewalInDoubtIsRememberedUntilAResultIsKnown) {
  TokenRecord r = token(Provider::kTikTok, TokenKind::kRefreshToken);
  Failure timeout{ErrorClass::kTransient, "tiktok token endpoint: timeout", std::nullopt};
  timeout.in_doubt = true;
  policy_.on_failure(r, Operation::kRefresh, timeout, kPolicyNow);
  EXPECT_EQ(r.renewal_in_doubt_since, kPolicyNow);
  EXPECT_EQ(r.state, TokenState::kFailing);
  // A second lost reply keeps the time the doubt began; a check changes nothing.
  policy_.on_failure(r, Operation::kRefresh, timeout, kPolicyNow + 1min);
  policy_.on_failure(r, Operation::kCheck, timeout, kPolicyNow + 2min);
  EXPECT_EQ(r.renewal_in_doubt_since, kPolicyNow);
  // A definite refusal of a later attempt does not end the earlier doubt: a 503 says nothing
  // about what the lost reply carried.
  policy_.on_failure(r, Operation::kRefresh,
                     Failure{ErrorClass::kTransient, "HTTP 503", std::nullopt}, kPolicyNow + 3min);
  EXPECT_EQ(r.renewal_in_doubt_since, kPolicyNow);
  policy_.on_refresh_success(r, kPolicyNow + 4min);
  EXPECT_FALSE(r.renewal_in_doubt_since) << "the stored secret works: nothing is in doubt";
}

TEST_F(PolicyTest, ARefusalAfterALostReplySaysTheTokenIsInDoubtNotRevoked) {
  TokenRecord r = token(Provider::kTikTok, TokenKind::kRefreshToken);
  r.renewal_in_doubt_since = kPolicyNow - 5min;
  policy_.on_failure(
      r, Operation::kRefresh,
      Failure{ErrorClass::kPermanent, "invalid_grant: refresh token reused", std::nullopt},
      kPolicyNow);
  EXPECT_EQ(r.state, TokenState::kNeedsReauth);
  EXPECT_EQ(r.last_error_message,
            "in doubt: a renewal sent at " + format_time(kPolicyNow - 5min) +
                " got no usable reply, so the provider may have rotated the refresh token then; "
                "now: invalid_grant: refresh token reused");
  EXPECT_EQ(r.renewal_in_doubt_since, kPolicyNow - 5min) << "kept: `show` and the harness see it";
  // TikTok's API for Business answers a reused refresh token as a revocation (40105).
  TokenRecord biz = token(Provider::kTikTok, TokenKind::kBusinessToken);
  biz.renewal_in_doubt_since = kPolicyNow - 5min;
  policy_.on_failure(biz, Operation::kRefresh,
                     Failure{ErrorClass::kRevoked, "40105: access revoked", std::nullopt},
                     kPolicyNow);
  EXPECT_EQ(biz.state, TokenState::kNeedsReauth) << "our lost reply, not the customer's doing";

  TokenRecord clean = token(Provider::kTikTok, TokenKind::kRefreshToken);
  policy_.on_failure(clean, Operation::kRefresh,
                     Failure{ErrorClass::kPermanent, "invalid_grant", std::nullopt}, kPolicyNow);
  EXPECT_EQ(clean.last_error_message, "invalid_grant") << "no doubt: the plain reason";
  EXPECT_FALSE(clean.renewal_in_doubt_since);
}

}  // namespace
}  // namespace tw
