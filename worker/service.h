// ServiceNotifier: the daemon's side of systemd's notify protocol (sd_notify).
//
// Thread-safety: none; lives on the event loop's executor.
// READY=1 once the config and the store are loaded; STATUS= a one-line summary whenever the
// status file is rewritten; RELOADING=1 then READY=1 around a SIGHUP reload; STOPPING=1 on
// shutdown. When systemd asks for a watchdog ($WATCHDOG_USEC, for this pid), WATCHDOG=1 is sent
// from a timer on the event loop every half period: a stuck loop stops sending and systemd
// restarts the service. Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "scheduler/clock.h"
#include "worker/wake_timer.h"

namespace tw {

class ServiceNotifier {
 public:
  ServiceNotifier(const Clock& clock, const TimerFactory& timers);

  void ready(std::string_view status);
  void status(std::string_view status);
  void reloading();
  void stopping();
  // Starts the watchdog pings if systemd asked for them; returns the period (0 when off).
  std::chrono::microseconds start_watchdog();
  void stop_watchdog();
  // Whether the messages reach systemd ($NOTIFY_SOCKET is set).
  static bool under_systemd();

 private:
  void ping();

  const Clock& clock_;
  std::unique_ptr<WakeTimer> watchdog_;
  std::chrono::microseconds period_{0};
};

}  // namespace tw
