// Per-provider protection: a token bucket (rate budget) and a circuit breaker.
//
// Thread-safety: none; owned by the worker on its executor.
// Both are pure state machines driven by the steady time they are given, so tests step them
// with plain numbers.
#pragma once

#include <chrono>
#include <optional>

#include "core/time.h"

namespace tw {

using SteadyTime = std::chrono::steady_clock::time_point;

// Lets `rate` requests a second through on average and up to `burst` at once.
class TokenBucket {
 public:
  TokenBucket(double rate_per_second, double burst, SteadyTime now);

  // Takes `n` tokens if there are that many.
  bool try_take(SteadyTime now, int n = 1);
  // When `n` tokens are available (`now` if they are).
  SteadyTime next_available(SteadyTime now, int n = 1) const;
  // No tokens before `until` (a provider asked everyone to slow down).
  void pause_until(SteadyTime until);

 private:
  void refill(SteadyTime now);

  double rate_;
  double burst_;
  double tokens_;
  SteadyTime last_;
  SteadyTime paused_until_{};
};

// Opens after `threshold` provider failures in a row; while open, nothing goes to the provider;
// after `cooldown` it lets one probe through (half-open): success closes it, failure reopens it.
class CircuitBreaker {
 public:
  enum class State { kClosed, kOpen, kHalfOpen };

  CircuitBreaker(int threshold, Seconds cooldown);

  // Whether a request may go now; in half-open state, true once (the probe).
  bool allow(SteadyTime now);
  // Whether allow() could say yes now, without taking the probe.
  bool would_allow(SteadyTime now) const;
  // Whether the next allow() hands out the half-open probe.
  bool probe_next(SteadyTime now) const { return open_ && now >= open_until_ && !probing_; }
  // Whether the probe is out.
  bool probing() const { return probing_; }
  void on_success();
  void on_failure(SteadyTime now);
  // The probe was not sent after all (or its answer says nothing about the provider): the next
  // allow() may hand out another.
  void abandon_probe() { probing_ = false; }

  State state(SteadyTime now) const;
  // When an open breaker lets its probe through.
  SteadyTime reopens_at() const { return open_until_; }
  int consecutive_failures() const { return failures_; }

 private:
  int threshold_;
  Seconds cooldown_;
  int failures_ = 0;
  bool open_ = false;
  bool probing_ = false;
  SteadyTime open_until_{};
};

}  // namespace tw
