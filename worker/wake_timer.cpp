#include "worker/wake_timer.h"

#include <algorithm>

namespace tw {

AsioWakeTimer::AsioWakeTimer(boost::asio::any_io_executor executor, const Clock& clock,
                             Seconds max_sleep)
    : timer_(std::move(executor)), clock_(clock), max_sleep_(max_sleep) {}

void AsioWakeTimer::arm(SysTime at, std::function<void()> fn) {
  at_ = at;
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
  const auto now = clock_.system_now();
  const auto wanted = std::chrono::time_point_cast<std::chrono::system_clock::duration>(at_);
  auto delay = std::max(wanted - now, std::chrono::system_clock::duration::zero());
  delay = std::min<std::chrono::system_clock::duration>(delay, max_sleep_);
  timer_.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(delay));
  timer_.async_wait([this, arming = arming_](const boost::system::error_code& ec) {
    if (ec || arming != arming_) return;
    if (clock_.system_now() <
        std::chrono::time_point_cast<std::chrono::system_clock::duration>(at_)) {
      return sleep();  // woke early: a capped sleep, or the wall clock moved back
    }
    auto fn = std::move(fn_);
    fn_ = nullptr;
    if (fn) fn();
  });
}

}  // namespace tw
