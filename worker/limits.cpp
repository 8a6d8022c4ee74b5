#include "worker/limits.h"

#include <algorithm>

namespace tw {

TokenBucket::TokenBucket(double rate_per_second, double burst, SteadyTime now)
    : rate_(rate_per_second), burst_(burst), tokens_(burst), last_(now) {}

void TokenBucket::refill(SteadyTime now) {
  if (now <= last_) return;
  const double elapsed = std::chrono::duration<double>(now - last_).count();
  tokens_ = std::min(burst_, tokens_ + elapsed * rate_);
  last_ = now;
}

bool TokenBucket::try_take(SteadyTime now, int n) {
  if (now < paused_until_) return false;
  refill(now);
  // An operation costing more than the whole bucket may go when the bucket is full.
  const double need = std::min(static_cast<double>(n), burst_);
  if (tokens_ < need) return false;
  tokens_ -= need;
  return true;
}

SteadyTime TokenBucket::next_available(SteadyTime now, int n) const {
  SteadyTime at = now;
  const double elapsed = now > last_ ? std::chrono::duration<double>(now - last_).count() : 0.0;
  const double have = std::min(burst_, tokens_ + elapsed * rate_);
  const double need = std::min(static_cast<double>(n), burst_);
  if (have < need) {
    at = now + std::chrono::ceil<SteadyTime::duration>(
                   std::chrono::duration<double>((need - have) / rate_));
  }
  return std::max(at, paused_until_);
}

void TokenBucket::pause_until(SteadyTime until) {
  paused_until_ = std::max(paused_until_, until);
}

CircuitBreaker::CircuitBreaker(int threshold, Seconds cooldown)
    : threshold_(threshold), cooldown_(cooldown) {}

bool CircuitBreaker::would_allow(SteadyTime now) const {
  if (!open_) return true;
  return now >= open_until_ && !probing_;
}

bool CircuitBreaker::allow(SteadyTime now) {
  if (!open_) return true;
  if (now < open_until_ || probing_) return false;
  probing_ = true;  // the one probe of the half-open state
  return true;
}

void CircuitBreaker::on_success() {
  failures_ = 0;
  open_ = false;
  probing_ = false;
}

void CircuitBreaker::on_failure(SteadyTime now) {
  ++failures_;
  if (probing_ || failures_ >= threshold_) {
    open_ = true;
    probing_ = false;
    open_until_ = now + cooldown_;
  }
}

CircuitBreaker::State CircuitBreaker::state(SteadyTime now) const {
  if (!open_) return State::kClosed;
  return now >= open_until_ ? State::kHalfOpen : State::kOpen;
}

}  // namespace tw
