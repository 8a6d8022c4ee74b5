// Notifier: tells the operator's systems that a customer must reconnect a token.
//
// Thread-safety: none. A Notifier belongs to one single-threaded executor (the daemon's
// io_context): construct it, call every method and destroy it there. Its callbacks run there.
//
// What it does: each notify() makes up to two deliveries, independent of each other:
//   - command (NotifyConfig::command): the executable runs without a shell (argv = {command}), in
//     "/", in its own process group, stdin/stdout/stderr on /dev/null, with an environment of only
//     PATH=/usr/sbin:/usr/bin:/sbin:/bin, LANG=C.UTF-8 and TW_TOKEN_ID, TW_PROVIDER, TW_KIND,
//     TW_WORKSPACE, TW_ACCOUNT, TW_STATE, TW_REASON, TW_AT (RFC 3339 UTC). Never the daemon's own
//     environment, which may hold client secrets. Exit status 0 is success. Its exit is awaited on
//     a pidfd (Linux 5.3+), never by blocking; past command_timeout its process group is killed
//     (SIGKILL) and the attempt fails.
//   - webhook (NotifyConfig::webhook_url): POST of a compact JSON object {"event":
//     "token.<state>", "token_id", "provider", "kind", "workspace_id", "account_id", "state",
//     "reason", "at"} with headers X-Tokenwarden-Timestamp (unix seconds, per attempt),
//     X-Tokenwarden-Signature ("sha256=" + lowercase hex HMAC-SHA256(key, timestamp + "." +
//     body)) and X-Tokenwarden-Event-Id (token_id + "-" + unix `at`, the same on every retry, for
//     idempotent receivers). 2xx is success; 408, 429, 5xx and transport errors are retried
//     (Retry-After in seconds is honoured when at most max_backoff); any other status is a
//     refusal, given up at once.
//
// Retries: per delivery, at most max_attempts attempts; after the n-th failure the next attempt
// waits min(initial_backoff * 2^(n-1), max_backoff) times a jitter factor in [0.8, 1.0]. One
// WakeTimer (from the TimerFactory) waits for the earliest retry; each running command has one
// more for its timeout. At most max_in_flight attempts (commands and requests together) run at
// once; the rest wait in FIFO order. Deliveries live in memory only: a restart loses those not
// yet done.
//
// Logs: one line per attempt outcome (info delivered, warn retrying, error "gave up notifying ...
// after N attempt(s)"), naming the channel, event, token id, provider and workspace. Never a
// secret: not the webhook key, nor the webhook URL (its path may be a credential), nor the
// command's output (discarded).
//
// Ownership: the Notifier keeps references to `http`, `clock` and the executor's io_context,
// which must outlive it; it owns its copy of the config, the key and its timers. Commands still
// running when it is shut down or destroyed are killed (SIGKILL) and reaped when the executor next
// runs; a transport callback arriving after that is ignored.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20

#include <boost/asio/any_io_executor.hpp>
#include <spdlog/logger.h>

#include "config/config.h"
#include "core/secret.h"
#include "core/time.h"
#include "core/token.h"
#include "http/transport.h"
#include "scheduler/clock.h"
#include "worker/wake_timer.h"

namespace tw {

// A token that needs the customer: everything in it is safe to log and to send.
struct ReauthEvent {
  std::string token_id;
  Provider provider = Provider::kMeta;
  TokenKind kind = TokenKind::kPageToken;
  std::string workspace_id;
  std::string account_id;
  TokenState state = TokenState::kNeedsReauth;  // needs_reauth or revoked
  std::string reason;                           // one line, no secret (last_error_message)
  SysTime at{};                                 // when the token moved to `state`
};

class Notifier {
 public:
  // Numbers drawn uniformly from [0, 1], for the jitter: 0 waits the full backoff, 1 waits 80%.
  using Random = std::function<double()>;

  // `config` is the notify: section; `webhook_key` is its resolved webhook_secret (empty when
  // there is no webhook; a webhook_url without a key is a broken invariant and aborts). `random`
  // defaults to a std::mt19937_64 seeded from std::random_device.
  Notifier(boost::asio::any_io_executor executor, const NotifyConfig& config, Secret webhook_key,
           HttpTransport& http, const Clock& clock, std::shared_ptr<spdlog::logger> log,
           TimerFactory timers, Random random = {});
  // Kills running commands (reaped later on the executor) and drops the rest, without logging.
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  // Called once every delivery of an event has finished: true when all were delivered, false
  // when one was given up. Never called for deliveries abandoned by shutdown().
  using Done = std::function<void(bool all_delivered)>;

  // Queues the event for the command and/or the webhook and returns at once; the work starts on
  // the executor; `done` (optional) runs on the executor when it is finished. Ignored (with a
  // warning, `done` never called) after shutdown().
  void notify(const ReauthEvent& event, Done done = {});
  // Deliveries not yet done: queued, running, or waiting to retry. 0 after shutdown().
  std::size_t pending() const;
  // Attempts running now (commands and webhook requests), at most max_in_flight.
  std::size_t in_flight() const;
  // Stops: no further attempts or retries; running commands are killed; logs how many deliveries
  // are abandoned. Results arriving later are ignored. Idempotent.
  void shutdown();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tw
