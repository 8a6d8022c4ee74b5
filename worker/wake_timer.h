// Timers of the worker, armed for a wall-clock instant and made by a factory, so tests can
// replace every one of them and drive the loop with a fake clock.
//
// Thread-safety: none; used on the worker's executor. A timer may be destroyed at any time on that
// executor, even from another timer's callback due at the same instant: its callback never runs.
// AsioWakeTimer fires at the earlier of two instants: when the wall clock reaches `at`, and when
// the steady clock has run for as long as `at` was ahead of the wall clock at arming. It sleeps on
// a steady_timer but never longer than `max_sleep` at a time, re-reading both clocks when it
// wakes. So a wall clock set forwards fires it early (within max_sleep), and one set backwards
// never holds it back: an hour's step back must not starve systemd's watchdog or the status file.
// Callers that act on wall-clock due times (the worker) re-read the schedule when it fires.
// Tests use ManualTimers: every timer it makes is fired by the test, in time order, after moving
// a FakeClock.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include "core/time.h"
#include "scheduler/clock.h"

namespace tw {

using WallTime = std::chrono::system_clock::time_point;

class WakeTimer {
 public:
  virtual ~WakeTimer() = default;
  // Calls `fn` once, on the executor, when the clock reaches `at` (soon if it has); replaces any
  // earlier arming.
  virtual void arm(WallTime at, std::function<void()> fn) = 0;
  virtual void cancel() = 0;
};

using TimerFactory = std::function<std::unique_ptr<WakeTimer>()>;

class AsioWakeTimer final : public WakeTimer {
 public:
  AsioWakeTimer(boost::asio::any_io_executor executor, const Clock& clock, Seconds max_sleep);
  void arm(WallTime at, std::function<void()> fn) override;
  void cancel() override;

 private:
  void sleep();

  boost::asio::steady_timer timer_;
  const Clock& clock_;
  Seconds max_sleep_;
  WallTime at_{};
  std::chrono::steady_clock::time_point steady_at_{};  // the same instant, on the steady clock
  std::function<void()> fn_;
  std::uint64_t arming_ = 0;  // a cancelled or replaced wait must not fire
  std::shared_ptr<char> alive_ = std::make_shared<char>();  // expires when this is destroyed
};

// A factory of AsioWakeTimers.
TimerFactory asio_timers(boost::asio::any_io_executor executor, const Clock& clock,
                         Seconds max_sleep);

// Timers a test fires by hand: make() hands out timers that only record their arming; the test
// moves its FakeClock to next_due() and calls fire_due(). Given the clock, a timer is due like an
// AsioWakeTimer: at the earlier of its wall-clock instant and the moment the steady clock has run
// as long as that instant was ahead at arming (so a wall clock set back holds nothing back).
class ManualTimers {
 public:
  ManualTimers() = default;
  explicit ManualTimers(const Clock& clock) : clock_(&clock) {}
  TimerFactory factory();
  // The earliest instant any live timer is armed for.
  std::optional<WallTime> next_due() const;
  // Fires every timer armed for `now` or earlier, earliest first; returns how many fired.
  int fire_due(WallTime now);

 private:
  class Timer;
  const Clock* clock_ = nullptr;
  std::shared_ptr<std::vector<Timer*>> live_ = std::make_shared<std::vector<Timer*>>();
};

}  // namespace tw
