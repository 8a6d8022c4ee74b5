// Worker: the daemon's loop. It renews and checks due tokens through the provider clients.
//
// Thread-safety: none. A Worker lives on one single-threaded executor with the transport and the
// provider clients; every method is called there and every callback runs there.
//
// The loop: one wake timer armed for the earliest due time of the providers that may be called
// now (read from the store, which is the schedule). When it fires, the worker claims due tokens
// up to its free capacity (max in flight), each under a lease, and works on each in steps, one
// request at a time: renew when renewal is due, or when a check needs a fresh access token first;
// then check when a check is due. Every step's outcome is committed through the Scheduler before
// the next step, so a rotated secret is durable before anything uses it; the outcomes (and the
// renewal attempts, recorded before their requests go out) of one loop turn share one
// transaction and one fsync (Scheduler::write_all), which is what lets a sweep run at thousands
// of tokens a second. Claims wait until a quarter of max_in_flight is free, for the same reason. A
// commit the database refuses for now (busy, I/O, disk full) is retried with backoff while the
// lease is held, so a rotated secret is never dropped. Leases of every token in hand are extended
// every lease/3, so a slow provider never lets a second worker in; a token whose lease is lost is
// dropped.
//
// Per provider: a token bucket (requests_per_second, burst) paces requests, charged per HTTP
// request; a circuit breaker opens after breaker_failures transient failures in a row, and its
// tokens are then put off, not failed, until a single probe succeeds; a provider's throttle hint
// (Meta's usage headers) pauses it, and a long pause puts its queued tokens off too.
//
// Logs: one line per step (token, provider, kind, workspace, outcome, latency, next due times)
// and a summary every summary_every. Never a secret.
//
// stop(): no new claims or steps; tokens waiting for a slot are released at once; requests in
// flight may finish until the grace period ends, when `on_grace_expired` runs (the owner cancels
// the transport: those tokens are released, not failed); commits still being retried get one
// more grace period; then `done` runs.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <spdlog/logger.h>

#include "config/config.h"
#include "core/outcome.h"
#include "providers/provider.h"
#include "scheduler/clock.h"
#include "scheduler/scheduler.h"
#include "storage/token_store.h"
#include "worker/limits.h"
#include "worker/wake_timer.h"

namespace tw {

struct WorkerOptions {
  SchedulerConfig scheduler;
  int max_in_flight = 64;
  std::map<Provider, ProviderLimits> limits;  // for each provider with a client
  Seconds summary_every = std::chrono::minutes(5);
  // Audit rows older than this are pruned (at most hourly, at a summary); nullopt: kept forever.
  std::optional<Seconds> audit_retention;
};

// What the worker has done since it started.
struct WorkerStats {
  std::uint64_t refreshes_ok = 0;
  std::uint64_t checks_ok = 0;
  std::map<ErrorClass, std::uint64_t> refresh_failures;
  std::map<ErrorClass, std::uint64_t> check_failures;
  std::uint64_t postponed = 0;        // put off by an open breaker or a long throttle
  std::uint64_t commit_retries = 0;   // commits retried after busy or I/O errors
  std::uint64_t results_dropped = 0;  // outcomes not stored: the lease was lost or the token gone
};

// One committed step, for the status file, notifications and metrics.
struct StepReport {
  Operation op = Operation::kCheck;
  bool ok = true;
  ErrorClass error_class = ErrorClass::kNone;
  std::string message;                      // the failure, one line, no secret
  TokenRecord record;                       // as committed
  TokenState before = TokenState::kActive;  // the state before this step
  std::chrono::milliseconds latency{0};
};

// The result of one forced operation (tokenwarden refresh / check).
struct ForcedResult {
  enum class Status { kOk, kFailed, kNotFound, kBusy, kRefused, kCancelled };
  std::string id;
  Operation op = Operation::kCheck;
  Status status = Status::kCancelled;
  std::string message;  // what happened, one line
  TokenState state = TokenState::kActive;
};

class Worker {
 public:
  // `clients` holds the enabled providers; tokens of other providers are left alone. The store,
  // scheduler, clients and clock must outlive the worker.
  Worker(boost::asio::any_io_executor executor, Scheduler& scheduler, TokenStore& store,
         std::vector<ProviderClient*> clients, const Clock& clock, WorkerOptions options,
         std::shared_ptr<spdlog::logger> log, TimerFactory timers);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Starts the loop.
  void start();
  // See the file comment.
  void stop(Seconds grace, std::function<void()> on_grace_expired, std::function<void()> done);
  // Stops at once, without a grace period: outcomes already received (rotated secrets among
  // them) are written now, nothing more is sent or retried, and tokens still in hand are left to
  // their leases. For a second stop signal, before the executor is stopped.
  void abort();

  // Runs `op` now on each token, whatever its due times (a check renews first when the access
  // token has expired), at most max_in_flight at a time, then calls `done` with one result per
  // id, in order. A token leased by someone else is reported busy. Does not need start().
  void run_now(std::vector<std::string> ids, Operation op,
               std::function<void(std::vector<ForcedResult>)> done);

  // Called after every committed step (not for steps whose outcome was dropped).
  void set_on_step(std::function<void(const StepReport&)> fn);
  // Replaces the per-provider limits (a reloaded config). A lane whose rate or burst changed gets
  // a new, full token bucket; one whose breaker settings changed gets a new, closed breaker;
  // unchanged ones keep their state (an open breaker stays open).
  void set_limits(const std::map<Provider, ProviderLimits>& limits);
  // The summary line's period (a reloaded config), from the next summary on.
  void set_summary_every(Seconds every);
  // When the loop last ran: a stale tick means a stuck loop.
  WallTime last_tick() const;

  const WorkerStats& stats() const { return stats_; }
  // Requests in flight, and tokens in hand (queued, in flight or committing).
  std::size_t in_flight() const;
  std::size_t in_hand() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  WorkerStats stats_;
};

}  // namespace tw
