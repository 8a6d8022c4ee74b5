// AsioWakeTimer on a real io_context: it fires at its wall-clock instant, and a wall clock stepped
// back or forward neither holds it back nor loses it. The waits are real but short (tens of ms):
// this is the adapter between the injected clock and Asio's steady timer, which only real time
// drives.
#include "worker/wake_timer.h"

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

namespace tw {
namespace {

using namespace std::chrono_literals;

// Real time, with a wall clock the test can step as NTP or an operator would.
class SteppedClock final : public Clock {
 public:
  std::chrono::system_clock::time_point system_now() const override {
    return std::chrono::system_clock::now() + offset_;
  }
  std::chrono::steady_clock::time_point steady_now() const override {
    return std::chrono::steady_clock::now();
  }
  void step(std::chrono::system_clock::duration d) { offset_ += d; }

 private:
  std::chrono::system_clock::duration offset_{};
};

struct Fired {
  int count = 0;
  std::chrono::steady_clock::time_point at{};
};

TEST(AsioWakeTimer, FiresAtItsInstant) {
  boost::asio::io_context io;
  SteppedClock clock;
  AsioWakeTimer timer(io.get_executor(), clock, 30s);
  Fired fired;
  const auto start = std::chrono::steady_clock::now();
  timer.arm(clock.system_now() + 50ms, [&] {
    ++fired.count;
    fired.at = std::chrono::steady_clock::now();
  });
  io.run_for(5s);
  EXPECT_EQ(fired.count, 1);
  EXPECT_GE(fired.at - start, 50ms);
}

TEST(AsioWakeTimer, AWallClockSteppedBackDoesNotHoldItBack) {
  boost::asio::io_context io;
  SteppedClock clock;
  AsioWakeTimer timer(io.get_executor(), clock, 30s);
  Fired fired;
  const auto start = std::chrono::steady_clock::now();
  timer.arm(clock.system_now() + 50ms, [&] {
    ++fired.count;
    fired.at = std::chrono::steady_clock::now();
  });
  clock.step(-1h);  // before it fires: by the wall clock it is now an hour and 50 ms away
  io.run_for(5s);
  EXPECT_EQ(fired.count, 1) << "held back by the step";
  EXPECT_LT(fired.at - start, 5s);
}

TEST(AsioWakeTimer, AWallClockSteppedForwardFiresItWithinMaxSleep) {
  boost::asio::io_context io;
  SteppedClock clock;
  AsioWakeTimer timer(io.get_executor(), clock, 1s);
  Fired fired;
  timer.arm(clock.system_now() + 1h, [&] { ++fired.count; });
  clock.step(2h);
  io.run_for(5s);
  EXPECT_EQ(fired.count, 1) << "the instant passed by the wall clock";
}

TEST(AsioWakeTimer, CancelAndReArmReplaceTheEarlierArming) {
  boost::asio::io_context io;
  SteppedClock clock;
  AsioWakeTimer timer(io.get_executor(), clock, 30s);
  int first = 0, second = 0;
  timer.arm(clock.system_now() + 20ms, [&] { ++first; });
  timer.arm(clock.system_now() + 40ms, [&] { ++second; });
  io.run_for(500ms);
  EXPECT_EQ(first, 0);
  EXPECT_EQ(second, 1);
  timer.arm(clock.system_now() + 20ms, [&] { ++first; });
  timer.cancel();
  io.restart();
  io.run_for(200ms);
  EXPECT_EQ(first, 0);
}

// Two timers due at the same instant, the first one's callback destroying the second, whose
// completion is then usually queued already: it must not run, nor touch the destroyed timer (ASan
// sees that). Which of the two Asio runs first is not fixed; the check holds either way.
TEST(AsioWakeTimer, ATimerDestroyedByAnotherDueAtTheSameInstantNeverFires) {
  boost::asio::io_context io;
  SteppedClock clock;
  for (int round = 0; round < 20; ++round) {
    auto first = std::make_unique<AsioWakeTimer>(io.get_executor(), clock, 30s);
    auto second = std::make_unique<AsioWakeTimer>(io.get_executor(), clock, 30s);
    bool destroyed = false;
    const auto at = clock.system_now() + 5ms;
    first->arm(at, [&] {
      destroyed = true;
      second.reset();
    });
    second->arm(at, [&] { EXPECT_FALSE(destroyed) << "fired after it was destroyed"; });
    io.restart();
    io.run_for(200ms);
    EXPECT_TRUE(destroyed);
  }
}

}  // namespace
}  // namespace tw
