#include "worker/wake_timer.h"

#include <algorithm>

namespace tw {

AsioWakeTimer::AsioWakeTimer(boost::asio::any_io_executor executor, const Clock& clock,
                             Seconds max_sleep)
    : timer_(std::move(executor)), clock_(clock), max_sleep_(max_sleep) {}

void AsioWakeTimer::arm(WallTime at, std::function<void()> fn) {
  at_ = at;
  steady_at_ =
      clock_.steady_now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                std::max(at - clock_.system_now(), WallTime::duration::zero()));
  fn_ = std::move(fn);
  ++arming_;
  sleep();
}

void AsioWakeTimer::cancel() {
  ++arming_;
  fn_ = nullptr;
  timer_.cancel();
}

void AsioWakeTimer::sleep() {
  using SteadyDuration = std::chrono::steady_clock::duration;
  auto delay = std::min(std::chrono::duration_cast<SteadyDuration>(at_ - clock_.system_now()),
                        steady_at_ - clock_.steady_now());
  delay = std::clamp<SteadyDuration>(delay, SteadyDuration::zero(), max_sleep_);
  timer_.expires_after(delay);
  // A completion already queued when the timer is destroyed still runs (with no error): it must
  // not touch `this` then. `alive_` dies with the timer.
  timer_.async_wait([this, alive = std::weak_ptr<char>(alive_),
                     arming = arming_](const boost::system::error_code& ec) {
    if (ec || alive.expired() || arming != arming_) return;
    // Not yet by either clock: a capped sleep.
    if (clock_.system_now() < at_ && clock_.steady_now() < steady_at_) return sleep();
    auto fn = std::move(fn_);
    fn_ = nullptr;
    if (fn) fn();
  });
}

TimerFactory asio_timers(boost::asio::any_io_executor executor, const Clock& clock,
                         Seconds max_sleep) {
  return [executor, &clock, max_sleep] {
    return std::make_unique<AsioWakeTimer>(executor, clock, max_sleep);
  };
}

class ManualTimers::Timer final : public WakeTimer {
 public:
  Timer(std::shared_ptr<std::vector<Timer*>> live, const Clock* clock)
      : live_(std::move(live)), clock_(clock) {
    live_->push_back(this);
  }
  ~Timer() override { std::erase(*live_, this); }
  void arm(WallTime at, std::function<void()> fn) override {
    at_ = at;
    if (clock_ != nullptr) steady_at_ = clock_->steady_now() + (at - clock_->system_now());
    fn_ = std::move(fn);
  }
  void cancel() override {
    at_.reset();
    fn_ = nullptr;
  }
  // When it is due, as a wall-clock instant of the clock's present frame.
  std::optional<WallTime> at() const {
    if (!at_ || clock_ == nullptr) return at_;
    const WallTime by_steady = clock_->system_now() + (steady_at_ - clock_->steady_now());
    return std::min(*at_, by_steady);
  }
  void fire() {
    auto fn = std::move(fn_);
    cancel();
    if (fn) fn();
  }

 private:
  std::shared_ptr<std::vector<Timer*>> live_;
  const Clock* clock_;
  std::optional<WallTime> at_;
  std::chrono::steady_clock::time_point steady_at_{};
  std::function<void()> fn_;
};

TimerFactory ManualTimers::factory() {
  return [live = live_, clock = clock_] { return std::make_unique<Timer>(live, clock); };
}

std::optional<WallTime> ManualTimers::next_due() const {
  std::optional<WallTime> best;
  for (const Timer* t : *live_) {
    if (t->at() && (!best || *t->at() < *best)) best = t->at();
  }
  return best;
}

int ManualTimers::fire_due(WallTime now) {
  int fired = 0;
  for (;;) {
    Timer* earliest = nullptr;
    for (Timer* t : *live_) {
      if (t->at() && *t->at() <= now && (earliest == nullptr || *t->at() < *earliest->at())) {
        earliest = t;
      }
    }
    if (earliest == nullptr) return fired;
    earliest->fire();  // may create, arm or destroy timers: search again
    ++fired;
  }
}

}  // namespace tw
