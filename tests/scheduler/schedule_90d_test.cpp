// Ninety days of schedule for 10,000 tokens under a fake clock.
//
// The policy decides every due time; this test plays the event loop and the providers. Events
// run in time order from a calendar of one-minute buckets (the store's due indexes in the daemon),
// so 21.6 million checks take well under a second in an optimised build. It asserts that every
// token was renewed exactly when its provider's rule says, never after anything expired, and
// checked once in every hour: no more, no less.
#include <algorithm>
#include <random>

#include <gtest/gtest.h>

#include "scheduler/clock.h"
#include "scheduler/policy.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using std::chrono::days;

enum class Profile { kMetaPage, kMetaUser, kGoogle, kTikTokBusiness, kTikTokV2, kAppToken };
constexpr int kProfiles = 6;

struct Tracked {
  TokenRecord record;
  Profile profile;
  SysTime start;
  // Observations.
  int refreshes = 0;
  int checks = 0;
  std::optional<SysTime> first_check;
  std::optional<SysTime> last_check;
  std::optional<SysTime> last_refresh;
  int bad_check_gaps = 0;
  int bad_refresh_times = 0;
  int expired_before_renewal = 0;
  int scheduled_into_the_past = 0;
};

TokenRecord make_record(Profile p, const std::string& id, SysTime start) {
  TokenRecord r;
  r.id = id;
  r.connected_at = r.created_at = r.state_since = start;
  r.has_access_token = true;
  r.has_refresh_token = true;
  switch (p) {
    case Profile::kMetaPage:
      r.provider = Provider::kMeta;
      r.kind = TokenKind::kPageToken;  // never expires; re-derived weekly
      break;
    case Profile::kMetaUser:
      r.provider = Provider::kMeta;
      r.kind = TokenKind::kUserToken;
      r.has_refresh_token = false;
      r.expires_at = start + days(60);
      break;
    case Profile::kGoogle:
      r.provider = Provider::kGoogle;
      r.kind = TokenKind::kRefreshToken;
      r.expires_at = start + 1h;  // the access token
      break;
    case Profile::kTikTokBusiness:
      r.provider = Provider::kTikTok;
      r.kind = TokenKind::kBusinessToken;
      r.expires_at = start + days(30);
      r.refresh_expires_at = start + days(365);
      break;
    case Profile::kTikTokV2:
      r.provider = Provider::kTikTok;
      r.kind = TokenKind::kRefreshToken;
      r.expires_at = start + 24h;
      r.refresh_expires_at = start + days(365);
      break;
    case Profile::kAppToken:
      r.provider = Provider::kMeta;  // an app's own token: checked, never renewed
      r.kind = TokenKind::kClientCredentials;
      r.has_refresh_token = false;
      break;
  }
  return r;
}

// When the provider's rule says a token renewed (or connected, `first`) at `anchor` is next
// renewed.
std::optional<SysTime> expected_renewal(Profile p, SysTime anchor, bool first) {
  switch (p) {
    case Profile::kMetaPage:
    case Profile::kMetaUser:
      return anchor + days(7);
    case Profile::kGoogle:
      return anchor + days(30);
    case Profile::kTikTokBusiness:
      return anchor + days(27);  // 3 days before a 30-day expiry
    case Profile::kTikTokV2:
      // Added 24 h from expiry, inside renew_before: at once. Then its known 24 h lifetime is
      // under 72 h: at two thirds.
      return first ? anchor : anchor + 16h;
    case Profile::kAppToken:
      return std::nullopt;
  }
  return std::nullopt;
}

// What the provider returns on a renewal at `now`.
void provider_renews(TokenRecord& r, Profile p, SysTime now) {
  switch (p) {
    case Profile::kMetaPage:
      break;
    case Profile::kMetaUser:
      r.expires_at = now + days(60);
      break;
    case Profile::kGoogle:
      r.expires_at = now + 1h;
      break;
    case Profile::kTikTokBusiness:
      r.expires_at = now + days(30);
      r.refresh_expires_at = now + days(365);
      break;
    case Profile::kTikTokV2:
      r.expires_at = now + 24h;
      r.refresh_expires_at = now + days(365);
      break;
    case Profile::kAppToken:
      break;
  }
}

SysTime next_event(const TokenRecord& r) {
  SysTime t = *r.next_check_due;
  if (r.next_refresh_due) t = std::min(t, *r.next_refresh_due);
  return t;
}

TEST(Schedule90Days, TenThousandTokensRenewedOnTimeAndCheckedEveryHour) {
  // Under a sanitizer (unoptimised, every access checked) a tenth of them: the same rules are
  // checked on every token, and the full count stays in the optimised build.
#ifdef TW_SANITIZED
  constexpr int kTokens = 1'000;
#else
  constexpr int kTokens = 10'000;
#endif
  const SysTime t0 = from_unix(1'800'000'000);
  const SysTime end = t0 + days(90);
  FakeClock clock(t0);
  Policy policy(PolicyConfig::from(Config{}), [] { return 0.5; });

  std::mt19937_64 rng(2026);
  std::vector<Tracked> sims(kTokens);
  for (int i = 0; i < kTokens; ++i) {
    char id[32];
    std::snprintf(id, sizeof id, "tok_%016llx", static_cast<unsigned long long>(rng()));
    Tracked& s = sims[static_cast<std::size_t>(i)];
    s.profile = static_cast<Profile>(i % kProfiles);
    s.start = t0 + Seconds(i % 3600);  // connected during the first hour
    s.record = make_record(s.profile, id, s.start);
    policy.schedule_new(s.record, s.start);
  }

  // Hourly checks visit tokens in slot order: lay them out in that order (ids re-allocated too),
  // so the simulation walks memory instead of missing the cache on every event.
  std::sort(sims.begin(), sims.end(), [](const Tracked& a, const Tracked& b) {
    return to_unix(*a.record.next_check_due) % 3600 < to_unix(*b.record.next_check_due) % 3600;
  });
  for (Tracked& s : sims)
    s.record.id = std::string(s.record.id.data(), s.record.id.size());

  // The calendar: one bucket of token indexes per minute; when its minute comes, a bucket is
  // spread over sixty one-second slots, which are then run in order.
  const std::int64_t base = to_unix(t0);
  const auto minutes = static_cast<std::size_t>((end - t0) / 1min) + 2;
  std::vector<std::vector<int>> buckets(minutes);
  auto bucket_of = [&](std::int64_t t) { return static_cast<std::size_t>((t - base) / 60); };
  for (int i = 0; i < kTokens; ++i) {
    buckets[bucket_of(to_unix(next_event(sims[static_cast<std::size_t>(i)].record)))].push_back(i);
  }

  std::int64_t events = 0;
  std::array<std::vector<int>, 60> seconds;
  for (std::size_t b = 0; b < minutes; ++b) {
    const std::int64_t minute_start = base + static_cast<std::int64_t>(b) * 60;
    for (int i : buckets[b]) {
      auto t = to_unix(next_event(sims[static_cast<std::size_t>(i)].record));
      seconds[static_cast<std::size_t>(t - minute_start)].push_back(i);
    }
    std::vector<int>().swap(buckets[b]);
    for (std::size_t sec = 0; sec < 60; ++sec) {
      const std::int64_t t = minute_start + static_cast<std::int64_t>(sec);
      // Index loop: a token may be rescheduled into a later second of this same minute.
      for (std::size_t k = 0; k < seconds[sec].size(); ++k) {
        const int i = seconds[sec][k];
        if (t >= to_unix(end)) continue;
        ++events;
        const SysTime now = from_unix(t);
        clock.advance(now - clock.now());
        Tracked& s = sims[static_cast<std::size_t>(i)];
        TokenRecord& r = s.record;
        if (r.next_refresh_due && *r.next_refresh_due <= now) {
          const SysTime anchor = s.last_refresh.value_or(s.start);
          if (now != expected_renewal(s.profile, anchor, !s.last_refresh)) ++s.bad_refresh_times;
          // Renewing after the access token (non-Google) or the refresh token expired is late.
          if ((s.profile != Profile::kGoogle && r.expires_at && *r.expires_at <= now) ||
              (r.refresh_expires_at && *r.refresh_expires_at <= now)) {
            ++s.expired_before_renewal;
          }
          provider_renews(r, s.profile, now);
          policy.on_refresh_success(r, now);
          s.last_refresh = now;
          ++s.refreshes;
        }
        if (*r.next_check_due <= now) {
          if (s.last_check ? now - *s.last_check != 1h : now - s.start > 1h || now <= s.start) {
            ++s.bad_check_gaps;
          }
          policy.on_check_success(r, now);
          if (!s.first_check) s.first_check = now;
          s.last_check = now;
          ++s.checks;
        }
        const std::int64_t next = to_unix(next_event(r));
        if (next <= t) {
          ++s.scheduled_into_the_past;
        } else if (bucket_of(next) == b) {
          seconds[static_cast<std::size_t>(next - minute_start)].push_back(i);
        } else if (bucket_of(next) < minutes) {
          buckets[bucket_of(next)].push_back(i);
        }
      }
      seconds[sec].clear();
    }
  }

  std::array<int, kProfiles> refreshes_seen{};
  for (const Tracked& s : sims) {
    SCOPED_TRACE(s.record.id);
    ASSERT_EQ(s.bad_check_gaps, 0);
    ASSERT_EQ(s.bad_refresh_times, 0);
    ASSERT_EQ(s.expired_before_renewal, 0);
    ASSERT_EQ(s.scheduled_into_the_past, 0);
    ASSERT_EQ(s.record.state, TokenState::kActive);
    // No more, no less: the first check within an hour of connecting, one every hour since,
    // and the last within the final hour.
    ASSERT_TRUE(s.first_check && s.last_check);
    ASSERT_GT(*s.first_check, s.start);
    ASSERT_LE(*s.first_check, s.start + 1h);
    ASSERT_GE(*s.last_check, end - 1h);
    ASSERT_EQ(s.checks, (*s.last_check - *s.first_check) / 1h + 1);
    // Renewals: every one that fell due before the end, none missed.
    int expected = 0;
    SysTime anchor = s.start;
    for (auto due = expected_renewal(s.profile, anchor, true); due && *due < end;
         due = expected_renewal(s.profile, anchor, false)) {
      ++expected;
      anchor = *due;
    }
    ASSERT_EQ(s.refreshes, expected);
    refreshes_seen[static_cast<std::size_t>(s.profile)] = s.refreshes;
  }
  // The rules in numbers (the same for every start within the first hour).
  EXPECT_EQ(refreshes_seen[static_cast<int>(Profile::kMetaPage)], 12);       // weekly: days 7..84
  EXPECT_EQ(refreshes_seen[static_cast<int>(Profile::kGoogle)], 2);          // days 30, 60
  EXPECT_EQ(refreshes_seen[static_cast<int>(Profile::kTikTokBusiness)], 3);  // days 27, 54, 81
  EXPECT_EQ(refreshes_seen[static_cast<int>(Profile::kTikTokV2)], 135);  // at once, then every 16 h
  EXPECT_EQ(refreshes_seen[static_cast<int>(Profile::kAppToken)], 0);
  EXPECT_GE(events, std::int64_t{kTokens} * 24 * 90 - kTokens);
}

}  // namespace
}  // namespace tw
