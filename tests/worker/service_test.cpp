#include "worker/service.h"

#include <cstdlib>

#include <gtest/gtest.h>
#include <unistd.h>

#include "tests/support/notify_socket.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;

using testing::FakeNotifySocket;

TEST(ServiceNotifier, SpeaksSystemdsNotifyProtocol) {
  testing::TempDir dir;
  FakeNotifySocket socket(dir.file("notify"));
  FakeClock clock(from_unix(1'800'000'000));
  ManualTimers timers;
  ServiceNotifier n(clock, timers.factory());
  EXPECT_TRUE(ServiceNotifier::under_systemd());
  n.ready("3 active, 0 failing, 0 need re-auth;\nnext due soon");
  n.status("4 active");
  n.reloading();
  n.stopping();
  auto got = socket.drain();
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0], "READY=1\nSTATUS=3 active, 0 failing, 0 need re-auth;\\nnext due soon")
      << "STATUS stays on one line";
  EXPECT_EQ(got[1], "STATUS=4 active");
  EXPECT_EQ(got[2].rfind("RELOADING=1", 0), 0u);
  EXPECT_EQ(got[3].rfind("STOPPING=1", 0), 0u);
}

TEST(ServiceNotifier, FeedsTheWatchdogFromTheLoopAtHalfThePeriod) {
  testing::TempDir dir;
  FakeNotifySocket socket(dir.file("notify"));
  setenv("WATCHDOG_USEC", "20000000", 1);  // 20 s
  setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
  FakeClock clock(from_unix(1'800'000'000));
  ManualTimers timers;
  ServiceNotifier n(clock, timers.factory());
  EXPECT_EQ(n.start_watchdog(), 20s);
  int pings = 0;
  for (const auto& m : socket.drain())
    pings += m == "WATCHDOG=1";
  EXPECT_EQ(pings, 1);
  for (int i = 0; i < 6; ++i) {
    clock.advance(10s);
    timers.fire_due(clock.system_now());
  }
  for (const auto& m : socket.drain())
    pings += m == "WATCHDOG=1";
  EXPECT_EQ(pings, 7);
  n.stop_watchdog();
  clock.advance(10s);
  EXPECT_EQ(timers.fire_due(clock.system_now()), 0);
}

TEST(ServiceNotifier, OutsideSystemdItDoesNothing) {
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  FakeClock clock(from_unix(1'800'000'000));
  ManualTimers timers;
  ServiceNotifier n(clock, timers.factory());
  EXPECT_FALSE(ServiceNotifier::under_systemd());
  n.ready("x");
  EXPECT_EQ(n.start_watchdog(), 0s);
  EXPECT_FALSE(timers.next_due());
}

}  // namespace
}  // namespace tw
