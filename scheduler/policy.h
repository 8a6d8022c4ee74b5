// Policy: when each token is next renewed and checked, and what a success or failure does to it.
//
// Thread-safety: const methods only; safe from any thread if the random source is.
// Pure code: no I/O and no clock. Every method takes `now`, so a test drives months of schedule
// with plain numbers.
//
// Renewal (per provider, from config):
//   due = min(anchor + refresh_every,                       when refresh_every is set
//             renew_point(expires_at), renew_point(refresh_expires_at)   when renew_before is set
//             anchor + f * (e - anchor) for e in expires_at, refresh_expires_at   a generic
//             provider's renew_at_fraction f; 2/3 when it has none of the three)
//   anchor = the later of connected_at and last_refreshed_at
//   renew_point(e) = e - renew_before; or, once tokenwarden has renewed the token (so its whole
//   lifetime is known) and that lifetime is shorter than renew_before, last_refreshed_at + 2/3 of
//   it. A token just added may be late in a long life, so it gets no such allowance. A renewable
//   token with no candidate is due at once: renewing tells tokenwarden its lifetime. A due time in
//   the past is written as now.
// Checks: for the kinds a provider can check (kind_checkable), every check_every, at a fixed
// per-token offset within the period (a stable hash of the
// token id), so checks of a million tokens spread evenly instead of bursting on the hour.
// After a successful renewal, a renewal due at once (the provider did not extend the expiry) is
// put off by one check period instead, so a fixed expiry cannot make a renewal loop. Success
// clears failures and brings needs_reauth and revoked back to active (the grant is alive); a
// disabled token stays disabled, unscheduled, whatever a forced operation found.
// Failures: transient and malformed ones retry after initial_backoff * 2^(n-1), capped at
// max_backoff, drawn from [d * (1 - jitter), d], and never sooner than a provider's Retry-After;
// after malformed_cap malformed replies in a row, at max_backoff. Configuration errors (our own
// credentials) retry at max_backoff. Permanent and revoked move the token to needs_reauth or
// revoked, where it is neither renewed nor checked until it is reconnected.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "config/config.h"
#include "core/outcome.h"
#include "core/time.h"
#include "core/token.h"

namespace tw {

// What the policy needs of a generic provider (GenericProviderConfig).
struct GenericSchedule {
  ScheduleConfig schedule;
  // Renew once this fraction of the lifetime has passed; the default when refresh_every and
  // renew_before are both off and none is given: 2/3.
  std::optional<double> renew_at_fraction;
  bool checkable = false;  // it has an introspection endpoint or a probe
};

struct PolicyConfig {
  ScheduleConfig meta;
  ScheduleConfig google;
  ScheduleConfig tiktok;
  RetryConfig retry;
  std::map<Provider, GenericSchedule> generic;

  static PolicyConfig from(const Config& config);
};

class Policy {
 public:
  // `random01` returns numbers in [0, 1) for jitter; tests pass a fixed one.
  Policy(const PolicyConfig& config, std::function<double()> random01);

  // A provider the configuration does not name (a generic one since removed) gets the defaults.
  const ScheduleConfig& schedule_for(const Provider& provider) const;
  // Whether `r` is health-checked: its kind can be checked at its provider (kind_checkable) and,
  // for a generic provider, the configuration gives a way to.
  bool checkable(const TokenRecord& r) const;
  // Takes new schedules and retry settings (a reloaded config); they apply from the next step.
  void reconfigure(const PolicyConfig& config) { config_ = config; }

  // Whether this token is renewed at all: its kind is renewable and it holds what renewal needs.
  static bool renewable(const TokenRecord& r);

  // The next renewal of `r`, or nullopt when it is not renewed (see the file comment).
  std::optional<SysTime> next_refresh(const TokenRecord& r, SysTime now) const;
  // The first check slot of `r` strictly after `now`.
  SysTime next_check(const TokenRecord& r, SysTime now) const;
  // The delay before retry number `failures` (1 for the first retry), with jitter.
  Seconds backoff(int failures) const;

  // Sets both due times of a token just added or reconnected.
  void schedule_new(TokenRecord& r, SysTime now) const;
  // After a successful renewal; the caller has already stored the new expiry times in `r`.
  void on_refresh_success(TokenRecord& r, SysTime now) const;
  // After a successful check.
  void on_check_success(TokenRecord& r, SysTime now) const;
  // After a failed renewal or check. `r.renewal_in_doubt_since` is the doubt from before this
  // attempt: a renewal refused for good while it is set says so in its message ("in doubt: ...")
  // and goes to needs_reauth even if the provider called it a revocation; a renewal that is
  // itself in doubt (Failure::in_doubt) sets it if unset.
  void on_failure(TokenRecord& r, Operation op, const Failure& failure, SysTime now) const;

 private:
  void set_state(TokenRecord& r, TokenState s, SysTime now) const;
  void clear_failures(TokenRecord& r, SysTime now) const;
  void unschedule(TokenRecord& r) const;

  PolicyConfig config_;
  std::function<double()> random01_;
};

}  // namespace tw
