// StatusReporter: the daemon's status file (JSON), its Prometheus textfile, and the one-line
// summary systemd shows.
//
// Thread-safety: none; lives on the worker's executor.
//
// The status file is rewritten atomically (a temporary file, fsync, rename, fsync of the
// directory) after work, at most every status.min_interval, and at least every
// status.write_every. It holds, and never a secret:
//   version, pid, owner, started, written, last_tick (when the loop last ran);
//   tokens by provider and state, and totals; next_due; the oldest overdue token;
//   renewals and checks of the last hour, ok and failed by error class;
//   the tokens that need re-authorisation (needs_reauth or revoked): id, provider, kind,
//   workspace, account, state, since, reason (the 1,000 waiting longest, and their total).
// `tokenwarden status` reads it. With status.prometheus_file, the same figures are written in the
// Prometheus text format for node_exporter's textfile collector, with the last tick and the
// write time as unix timestamps (alert when they grow old: the file outlives a dead daemon).
// Intervals (min_interval) are measured on the steady clock.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20

#include <nlohmann/json.hpp>
#include <spdlog/logger.h>

#include "config/config.h"
#include "core/result.h"
#include "scheduler/clock.h"
#include "storage/token_store.h"
#include "worker/wake_timer.h"
#include "worker/worker.h"

namespace tw {

// Renewals and checks of the last hour, in one-minute buckets, with their latencies.
class OutcomeWindow {
 public:
  void record(Operation op, bool ok, ErrorClass error_class, std::chrono::milliseconds latency,
              WallTime now);
  // {"refreshes": {"ok": n, "failed": {"transient": n, ...},
  //                "latency_ms": {"p50": x, "p99": y, "max": z} (absent with no step)},
  //  "checks": {...}}. Latencies are upper bounds of log-spaced slots (within 19 %).
  nlohmann::json last_hour(WallTime now) const;

  // Latency slots: slot i holds latencies below kSlotBound(i) ms, four slots per doubling.
  static constexpr std::size_t kLatencySlots = 72;

 private:
  struct Bucket {
    std::int64_t minute = -1;
    std::map<std::pair<Operation, ErrorClass>, std::uint64_t> counts;   // kNone = ok
    std::array<std::array<std::uint32_t, kLatencySlots>, 2> latency{};  // by Operation
  };
  std::array<Bucket, 60> buckets_;
};

class StatusReporter {
 public:
  // `worker` and `store` must outlive the reporter.
  StatusReporter(TokenStore& store, const Worker& worker, const Clock& clock, StatusConfig config,
                 std::string owner, ProviderSet providers, std::shared_ptr<spdlog::logger> log,
                 const TimerFactory& timers);

  // Writes now and then at least every write_every.
  void start();
  void stop();
  // A committed step: counted, and the file rewritten soon (at most every min_interval).
  void on_step(const StepReport& step);
  // Rewrites the file(s) now.
  Status write_now();
  // The status as JSON (what write_now() writes).
  Result<nlohmann::json> snapshot();
  // "12 active, 1 failing, 2 need re-auth; next due 2026-11-25T12:00:00Z", for systemd's STATUS=.
  const std::string& summary() const { return summary_; }
  void reconfigure(const StatusConfig& config) { config_ = config; }

  // Called after each write with the new summary (the daemon passes it on to systemd).
  std::function<void(const std::string&)> on_written;

 private:
  void schedule_periodic();

  TokenStore& store_;
  const Worker& worker_;
  const Clock& clock_;
  StatusConfig config_;
  std::string owner_;
  ProviderSet providers_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<WakeTimer> periodic_;
  std::unique_ptr<WakeTimer> soon_;
  bool soon_armed_ = false;
  WallTime started_;
  std::chrono::steady_clock::time_point last_write_{};
  OutcomeWindow window_;
  std::string summary_;
};

// The Prometheus text exposition of a status snapshot.
std::string prometheus_text(const nlohmann::json& status);

// Writes `content` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
// directory; mode 0644 (nothing in it is secret).
Status write_file_atomically(const std::string& path, const std::string& content);

}  // namespace tw
