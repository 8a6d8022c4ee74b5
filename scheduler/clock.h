// Clock: the only source of time in tokenwarden.
//
// Thread-safety: SystemClock is safe from any thread. FakeClock is not synchronised: a test
// advances it from the thread that runs the code under test.
// System time is for what is persisted and shown (due times, expiries); steady time is for
// intervals and deadlines, which must not jump when the wall clock is set.
#pragma once

#include <chrono>

#include "core/time.h"

namespace tw {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::chrono::system_clock::time_point system_now() const = 0;
  virtual std::chrono::steady_clock::time_point steady_now() const = 0;

  // System time truncated to whole seconds, the unit of every stored time.
  SysTime now() const { return std::chrono::floor<Seconds>(system_now()); }
};

class SystemClock final : public Clock {
 public:
  std::chrono::system_clock::time_point system_now() const override {
    return std::chrono::system_clock::now();
  }
  std::chrono::steady_clock::time_point steady_now() const override {
    return std::chrono::steady_clock::now();
  }
};

// A clock that moves only when told to.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(SysTime start) : system_(start) {}

  std::chrono::system_clock::time_point system_now() const override { return system_; }
  std::chrono::steady_clock::time_point steady_now() const override { return steady_; }

  // Moves both clocks forward by `d`.
  template <class Rep, class Period>
  void advance(std::chrono::duration<Rep, Period> d) {
    system_ += std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
    steady_ += std::chrono::duration_cast<std::chrono::steady_clock::duration>(d);
  }
  // Sets the wall clock only, as an operator or NTP would; steady time does not move.
  void set_system(std::chrono::system_clock::time_point t) { system_ = t; }

 private:
  std::chrono::system_clock::time_point system_;
  std::chrono::steady_clock::time_point steady_{};
};

}  // namespace tw
