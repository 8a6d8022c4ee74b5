// WakeTimer: the one timer of the scheduling loop, armed for a wall-clock time.
//
// Thread-safety: none; used on the worker's executor.
// AsioWakeTimer sleeps on a steady_timer but never longer than `max_sleep` at a time, re-reading
// the clock when it wakes, so a wall clock set forwards or backwards delays nothing for long.
// Tests use ManualWakeTimer and fire it themselves after moving a FakeClock.
#pragma once

#include <functional>
#include <optional>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include "core/time.h"
#include "scheduler/clock.h"

namespace tw {

class WakeTimer {
 public:
  virtual ~WakeTimer() = default;
  // Calls `fn` once, on the executor, when the clock reaches `at` (at once if it has); replaces any
  // earlier arming.
  virtual void arm(SysTime at, std::function<void()> fn) = 0;
  virtual void cancel() = 0;
};

class AsioWakeTimer final : public WakeTimer {
 public:
  AsioWakeTimer(boost::asio::any_io_executor executor, const Clock& clock, Seconds max_sleep);
  void arm(SysTime at, std::function<void()> fn) override;
  void cancel() override;

 private:
  void sleep();

  boost::asio::steady_timer timer_;
  const Clock& clock_;
  Seconds max_sleep_;
  SysTime at_{};
  std::function<void()> fn_;
  std::uint64_t arming_ = 0;  // a cancelled or replaced wait must not fire
};

// A timer a test fires by hand.
class ManualWakeTimer final : public WakeTimer {
 public:
  void arm(SysTime at, std::function<void()> fn) override {
    at_ = at;
    fn_ = std::move(fn);
  }
  void cancel() override {
    at_.reset();
    fn_ = nullptr;
  }
  // When it is armed for, if it is.
  std::optional<SysTime> armed_at() const { return at_; }
  // Fires it (the test has moved the clock to armed_at() or past).
  void fire() {
    auto fn = std::move(fn_);
    cancel();
    if (fn) fn();
  }

 private:
  std::optional<SysTime> at_;
  std::function<void()> fn_;
};

}  // namespace tw
