#include "worker/service.h"

#include <cstdlib>

#include <systemd/sd-daemon.h>

#include "core/text.h"

namespace tw {

namespace {

void send(const std::string& message) {
  // A failure to notify is not the daemon's failure: systemd will notice what it misses.
  (void)sd_notify(0, message.c_str());
}

}  // namespace

ServiceNotifier::ServiceNotifier(const Clock& clock, const TimerFactory& timers)
    : clock_(clock), watchdog_(timers()) {}

bool ServiceNotifier::under_systemd() {
  return std::getenv("NOTIFY_SOCKET") != nullptr;  // NOLINT(concurrency-mt-unsafe): read-only
}

void ServiceNotifier::ready(std::string_view status) {
  send("READY=1\nSTATUS=" + one_line(status));
}

void ServiceNotifier::status(std::string_view status) {
  send("STATUS=" + one_line(status));
}

void ServiceNotifier::reloading() {
  send("RELOADING=1\nSTATUS=reloading the configuration");
}

void ServiceNotifier::stopping() {
  send("STOPPING=1\nSTATUS=stopping");
}

std::chrono::microseconds ServiceNotifier::start_watchdog() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return period_ = {};
  period_ = std::chrono::microseconds(usec);
  ping();
  return period_;
}

void ServiceNotifier::stop_watchdog() {
  watchdog_->cancel();
}

void ServiceNotifier::ping() {
  send("WATCHDOG=1");
  watchdog_->arm(clock_.system_now() + period_ / 2, [this] { ping(); });
}

}  // namespace tw
