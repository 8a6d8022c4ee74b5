#include "scheduler/policy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include <endian.h>

namespace tw {

namespace {

// A token's place in the check period. Stable across builds and platforms, unlike std::hash, so a
// token keeps its slot across restarts and hosts. Eight bytes a step (little-endian by
// construction), each mixed with a multiply-xorshift: this runs once per check, the hottest path.
std::uint64_t stable_hash(std::string_view s) {
  constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15ULL;
  std::uint64_t h = 0x243F6A8885A308D3ULL ^ s.size();
  std::size_t i = 0;
  auto mix = [&h](std::uint64_t chunk) {
    h = (h ^ chunk) * kMul;
    h ^= h >> 29;
  };
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t chunk;
    std::memcpy(&chunk, s.data() + i, 8);
    mix(le64toh(chunk));
  }
  std::uint64_t tail = 0;
  for (std::size_t b = 0; i + b < s.size(); ++b) {
    tail |= std::uint64_t{static_cast<unsigned char>(s[i + b])} << (8 * b);
  }
  mix(tail);
  h *= kMul;
  return h ^ (h >> 32);
}

// When to renew something that expires at `expiry`. `issued` is when tokenwarden last renewed
// it: then its whole lifetime is known, and one shorter than renew_before is renewed at two thirds
// of it. A token never renewed by us (just added) may be late in a long life, so it is renewed
// renew_before ahead of its expiry, at once if that has passed.
SysTime renew_point(std::optional<SysTime> issued, SysTime expiry, Seconds renew_before) {
  if (issued && *issued < expiry && expiry - *issued < renew_before) {
    return *issued + (expiry - *issued) * 2 / 3;
  }
  return expiry - renew_before;
}

}  // namespace

PolicyConfig PolicyConfig::from(const Config& config) {
  PolicyConfig p{config.providers.meta.schedule,
                 config.providers.google.schedule,
                 config.providers.tiktok.schedule,
                 config.retry,
                 {}};
  for (const GenericProviderConfig& g : config.providers.generic) {
    p.generic[g.provider] = GenericSchedule{g.schedule, g.renew_at_fraction, g.checkable()};
  }
  return p;
}

Policy::Policy(const PolicyConfig& config, std::function<double()> random01)
    : config_(config), random01_(std::move(random01)) {}

const ScheduleConfig& Policy::schedule_for(const Provider& provider) const {
  static const ScheduleConfig kDefaults;
  if (provider == Provider::kMeta) return config_.meta;
  if (provider == Provider::kGoogle) return config_.google;
  if (provider == Provider::kTikTok) return config_.tiktok;
  auto it = config_.generic.find(provider);
  return it != config_.generic.end() ? it->second.schedule : kDefaults;
}

bool Policy::checkable(const TokenRecord& r) const {
  if (!kind_checkable(r.provider, r.kind)) return false;
  if (r.provider.builtin()) return true;
  auto it = config_.generic.find(r.provider);
  return it != config_.generic.end() && it->second.checkable;
}

bool Policy::renewable(const TokenRecord& r) {
  if (!kind_renewable(r.provider, r.kind)) return false;
  // A Meta Page token is re-derived from the long-lived user token stored as its refresh secret;
  // a refresh-token grant needs its refresh token.
  if (r.kind == TokenKind::kPageToken || kind_needs_refresh_secret(r.kind)) {
    return r.has_refresh_token;
  }
  return true;
}

std::optional<SysTime> Policy::next_refresh(const TokenRecord& r, SysTime now) const {
  if (!state_scheduled(r.state) || !renewable(r)) return std::nullopt;
  const ScheduleConfig& s = schedule_for(r.provider);
  SysTime anchor = std::max(r.connected_at, r.last_refreshed_at.value_or(r.connected_at));
  std::optional<SysTime> due;
  auto consider = [&due](SysTime t) { due = due ? std::min(*due, t) : t; };
  if (s.refresh_every) consider(anchor + *s.refresh_every);
  if (s.renew_before) {
    if (r.expires_at) consider(renew_point(r.last_refreshed_at, *r.expires_at, *s.renew_before));
    if (r.refresh_expires_at) {
      consider(renew_point(r.last_refreshed_at, *r.refresh_expires_at, *s.renew_before));
    }
  }
  if (auto g = config_.generic.find(r.provider); g != config_.generic.end()) {
    std::optional<double> fraction = g->second.renew_at_fraction;
    if (!fraction && !s.refresh_every && !s.renew_before) fraction = 2.0 / 3.0;
    if (fraction) {
      for (const std::optional<SysTime>& e : {r.expires_at, r.refresh_expires_at}) {
        if (!e) continue;
        const auto life = std::chrono::duration<double>(*e - anchor);
        consider(*e > anchor ? anchor + std::chrono::duration_cast<Seconds>(life * *fraction) : *e);
      }
    }
  }
  return std::max(due.value_or(now), now);
}

SysTime Policy::next_check(const TokenRecord& r, SysTime now) const {
  const std::int64_t period = schedule_for(r.provider).check_every.count();
  // Maps the hash onto [0, period) by a 128-bit multiply (uniform, and no division).
  __extension__ using u128 = unsigned __int128;
  const auto offset = static_cast<std::int64_t>(
      (static_cast<u128>(stable_hash(r.id)) * static_cast<std::uint64_t>(period)) >> 64);
  // The first t > now with t = offset (mod period); floor division keeps it right before 1970.
  std::int64_t k = to_unix(now) - offset;
  std::int64_t slot = (k >= 0 ? k / period : -((-k + period - 1) / period)) + 1;
  return from_unix(offset + slot * period);
}

Seconds Policy::backoff(int failures) const {
  const RetryConfig& rc = config_.retry;
  double d = static_cast<double>(rc.initial_backoff.count());
  const double cap = static_cast<double>(rc.max_backoff.count());
  for (int i = 1; i < failures && d < cap; ++i)
    d *= 2;
  d = std::min(d, cap);
  d *= 1.0 - rc.jitter * random01_();
  return Seconds{std::max<std::int64_t>(1, std::llround(d))};
}

void Policy::schedule_new(TokenRecord& r, SysTime now) const {
  r.next_refresh_due = next_refresh(r, now);
  r.next_check_due =
      state_scheduled(r.state) && checkable(r) ? std::optional(next_check(r, now)) : std::nullopt;
}

void Policy::set_state(TokenRecord& r, TokenState s, SysTime now) const {
  if (r.state != s) {
    r.state = s;
    r.state_since = now;
  }
}

void Policy::clear_failures(TokenRecord& r, SysTime now) const {
  r.consecutive_failures = 0;
  r.last_error_operation.reset();
  set_state(r, TokenState::kActive, now);
}

void Policy::on_refresh_success(TokenRecord& r, SysTime now) const {
  r.last_refreshed_at = now;
  r.updated_at = now;
  r.renewal_in_doubt_since.reset();  // whatever happened before, the stored secret works
  if (r.state == TokenState::kDisabled) return unschedule(r);
  // A renewal that worked proves the grant is alive, whatever failed before (even a forced
  // renewal of a token marked needs_reauth).
  clear_failures(r, now);
  auto due = next_refresh(r, now);
  if (due && *due <= now) {
    // The renewal did not move the expiry beyond renew_before (the provider sent the same expiry,
    // or none): renewing again at once would loop. Try again one check period later.
    due = now + schedule_for(r.provider).check_every;
  }
  r.next_refresh_due = due;
  if (!r.next_check_due && checkable(r)) r.next_check_due = next_check(r, now);
}

void Policy::on_check_success(TokenRecord& r, SysTime now) const {
  r.last_checked_at = now;
  r.updated_at = now;
  if (r.state == TokenState::kDisabled) return unschedule(r);
  // A passing check does not excuse a renewal that keeps failing: that stays in backoff.
  const bool renewal_failing =
      r.state == TokenState::kFailing && r.last_error_operation == Operation::kRefresh;
  if (!renewal_failing) clear_failures(r, now);
  r.next_check_due = checkable(r) ? std::optional(next_check(r, now)) : std::nullopt;
  if (!r.next_refresh_due) r.next_refresh_due = next_refresh(r, now);
}

void Policy::unschedule(TokenRecord& r) const {
  r.next_refresh_due.reset();
  r.next_check_due.reset();
}

void Policy::on_failure(TokenRecord& r, Operation op, const Failure& failure, SysTime now) const {
  r.updated_at = now;
  r.consecutive_failures += 1;
  r.last_error_class = failure.error_class;
  r.last_error_operation = op;
  r.last_error_message = failure.message;
  bool in_doubt_refusal = false;
  if (op == Operation::kRefresh) {
    // `r` holds the doubt from before this attempt. A refusal now may be the provider rejecting
    // a refresh token it rotated on that earlier attempt, whose reply we never read: say so, so
    // the operator does not blame the customer. An attempt that may have reached the provider
    // is itself in doubt.
    const bool dead = failure.error_class == ErrorClass::kPermanent ||
                      failure.error_class == ErrorClass::kRevoked;
    in_doubt_refusal = dead && r.renewal_in_doubt_since;
    if (in_doubt_refusal) {
      r.last_error_message = "in doubt: a renewal sent at " +
                             format_time(*r.renewal_in_doubt_since) +
                             " got no usable reply, so the provider may have rotated the refresh "
                             "token then; now: " +
                             failure.message;
    } else if (failure.in_doubt && !r.renewal_in_doubt_since) {
      r.renewal_in_doubt_since = now;
    }
  }
  r.last_error_at = now;
  if (op == Operation::kCheck) r.last_checked_at = now;
  // An operator's `disable` stands whatever a forced operation found.
  if (r.state == TokenState::kDisabled) return unschedule(r);

  switch (failure.error_class) {
    case ErrorClass::kPermanent:
    case ErrorClass::kRevoked:
      // A provider that reports a reused refresh token as a revocation (TikTok's API for
      // Business) does not mean the customer revoked anything when our own lost reply explains it.
      set_state(r,
                failure.error_class == ErrorClass::kRevoked && !in_doubt_refusal
                    ? TokenState::kRevoked
                    : TokenState::kNeedsReauth,
                now);
      return unschedule(r);
    case ErrorClass::kNone:
    case ErrorClass::kTransient:
    case ErrorClass::kMalformed:
    case ErrorClass::kConfiguration:
      break;
  }

  set_state(r, TokenState::kFailing, now);
  const RetryConfig& rc = config_.retry;
  Seconds delay = backoff(r.consecutive_failures);
  if (failure.error_class == ErrorClass::kConfiguration ||
      (failure.error_class == ErrorClass::kMalformed &&
       r.consecutive_failures >= rc.malformed_cap)) {
    delay = rc.max_backoff;
  }
  if (failure.retry_after) delay = std::max(delay, *failure.retry_after);
  (op == Operation::kRefresh ? r.next_refresh_due : r.next_check_due) = now + delay;
}

}  // namespace tw
