// ReauthNotices: makes sure the operator hears, once, of every token that needs the customer.
//
// The database is the outbox. A token in needs_reauth or revoked carries the state_since of the
// state it was notified of (TokenStore::unnotified_reauth / mark_reauth_notified); this class
// hands each token not yet notified to the Notifier and marks it once the Notifier has finished
// with it (delivered, or given up after its retries: the error is logged, and the token is in the
// status file's needs_reauth list either way). So a notice
//   - survives a restart: what was not finished is sent again (at least once, never lost);
//   - reaches the operator whichever process found the problem: a `tokenwarden check` from the
//     CLI or another host writes the state, and the daemon's next scan notices it.
// Two daemons sharing a database may both send a notice; receivers deduplicate on the webhook's
// X-Tokenwarden-Event-Id (the same for the same token and state).
//
// Scans run at start, every `scan_every`, and soon after poke() (the worker saw a token move to
// needs_reauth or revoked). At most `max_pending` tokens are with the Notifier at once.
//
// Thread-safety: none; used on the daemon's executor, like the Notifier it drives.
#pragma once

#include <cstddef>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include <spdlog/logger.h>

#include "core/time.h"
#include "notify/notifier.h"
#include "scheduler/clock.h"
#include "storage/token_store.h"
#include "worker/wake_timer.h"

namespace tw {

class ReauthNotices {
 public:
  // `store` and `notifier` must outlive this.
  ReauthNotices(TokenStore& store, Notifier& notifier, const Clock& clock,
                std::shared_ptr<spdlog::logger> log, const TimerFactory& timers,
                Seconds scan_every = std::chrono::minutes(1), std::size_t max_pending = 256);
  ~ReauthNotices();
  ReauthNotices(const ReauthNotices&) = delete;
  ReauthNotices& operator=(const ReauthNotices&) = delete;

  // Scans now, then every scan_every.
  void start();
  // No more scans; a notice finishing later is still marked.
  void stop();
  // A token just moved to needs_reauth or revoked: scan soon (calls in one burst share a scan).
  void poke();
  // Tokens with the Notifier now.
  std::size_t pending() const { return state_->pending.size(); }

  // One scan: hands every token not yet notified (and not already pending) to the Notifier.
  // Returns how many it handed over.
  std::size_t scan();

 private:
  // What the Notifier's callbacks need; they hold it weakly and do nothing once it is gone.
  struct State {
    TokenStore& store;
    std::shared_ptr<spdlog::logger> log;
    std::set<std::string> pending;  // token ids with the Notifier
  };

  TokenStore& store_;
  Notifier& notifier_;
  const Clock& clock_;
  std::shared_ptr<spdlog::logger> log_;
  Seconds scan_every_;
  std::size_t max_pending_;
  std::unique_ptr<WakeTimer> periodic_;
  std::unique_ptr<WakeTimer> soon_;
  bool running_ = false;
  std::shared_ptr<State> state_;
};

}  // namespace tw
