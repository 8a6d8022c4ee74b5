#include "worker/worker.h"

#include <set>

#include <boost/asio/post.hpp>

namespace tw {

namespace {

using SteadyClock = std::chrono::steady_clock;

// Commit retries: 100 ms doubling to 30 s, for as long as it takes while the lease is held.
constexpr std::chrono::milliseconds kFirstCommitRetry{100};
constexpr std::chrono::milliseconds kMaxCommitRetry{30'000};

struct ActiveJob {
  explicit ActiveJob(Job j) : job(std::move(j)) {}

  Job job;
  Operation op = Operation::kCheck;    // the operation running or being committed
  SteadyTime started{};                // when its request went out
  std::optional<Outcome> uncommitted;  // an outcome whose commit is being retried
  std::chrono::milliseconds retry_delay = kFirstCommitRetry;
  std::unique_ptr<boost::asio::steady_timer> retry_timer;
  // For run_now(): where the result goes.
  struct Forced* forced = nullptr;
  std::size_t forced_index = 0;
};
using JobPtr = std::shared_ptr<ActiveJob>;

struct Forced {
  std::vector<ForcedResult> results;
  std::size_t remaining = 0;
  std::function<void(std::vector<ForcedResult>)> done;
};

// One provider's client and its protections.
struct Lane {
  ProviderClient* client = nullptr;
  TokenBucket bucket;
  CircuitBreaker breaker;
  std::deque<JobPtr> queue;  // claimed, waiting for the bucket
};

std::string when(const std::optional<SysTime>& t) {
  return t ? format_time(*t) : "none";
}

// Failures that say something about the provider rather than the token.
bool provider_failure(const Outcome& o) {
  if (o.ok || o.failure.cancelled) return false;
  const ErrorClass c = o.failure.error_class;
  return c == ErrorClass::kTransient || c == ErrorClass::kMalformed ||
         c == ErrorClass::kConfiguration;
}

}  // namespace

struct Worker::Impl {
  Impl(Worker& w, boost::asio::any_io_executor ex, Scheduler& s, TokenStore& st,
       std::vector<ProviderClient*> clients, const Clock& c, WorkerOptions opt,
       std::shared_ptr<spdlog::logger> l, std::unique_ptr<WakeTimer> t)
      : worker(w),
        executor(std::move(ex)),
        scheduler(s),
        store(st),
        clock(c),
        options(std::move(opt)),
        log(std::move(l)),
        timer(std::move(t)),
        lease_timer(executor),
        summary_timer(executor),
        grace_timer(executor) {
    for (ProviderClient* client : clients) {
      const ProviderLimits limits = options.limits.count(client->provider()) != 0
                                        ? options.limits.at(client->provider())
                                        : ProviderLimits{};
      lanes.emplace(client->provider(),
                    Lane{client,
                         TokenBucket(limits.requests_per_second, limits.burst, clock.steady_now()),
                         CircuitBreaker(limits.breaker_failures, limits.breaker_cooldown),
                         {}});
    }
  }

  Worker& worker;
  boost::asio::any_io_executor executor;
  Scheduler& scheduler;
  TokenStore& store;
  const Clock& clock;
  WorkerOptions options;
  std::shared_ptr<spdlog::logger> log;
  std::unique_ptr<WakeTimer> timer;
  boost::asio::steady_timer lease_timer;
  boost::asio::steady_timer summary_timer;
  boost::asio::steady_timer grace_timer;

  std::map<Provider, Lane> lanes;
  std::set<JobPtr> active;   // claimed and not finished: queued, in flight or committing
  std::size_t requests = 0;  // requests in flight
  bool running = false;
  bool stopping = false;
  std::function<void()> on_stopped;
  WorkerStats at_last_summary;

  WorkerStats& stats() { return worker.stats_; }

  // --- the loop ---------------------------------------------------------------------------------

  void pump() {
    dispatch();
    if (stopping) return;
    const SysTime now = clock.now();
    const ProviderSet ready = running ? ready_providers() : ProviderSet{};
    std::size_t capacity = free_capacity();
    if (capacity > 0 && !ready.empty()) {
      auto jobs = scheduler.claim_due(capacity, ready);
      if (!jobs) {
        log->error("cannot claim due tokens: {}", jobs.error().message());
        return arm(now + Seconds{1});
      }
      for (Job& j : *jobs)
        enqueue(std::make_shared<ActiveJob>(std::move(j)));
      dispatch();
    }
    arm_wake(ready);
  }

  std::size_t free_capacity() const {
    const auto limit = static_cast<std::size_t>(options.max_in_flight);
    return active.size() >= limit ? 0 : limit - active.size();
  }

  // Providers whose breaker lets requests through and that no throttle holds back for long.
  ProviderSet ready_providers() const {
    const SteadyTime steady = clock.steady_now();
    ProviderSet ready;
    for (const auto& [provider, lane] : lanes) {
      if (!lane.breaker.would_allow(steady)) continue;
      if (lane.bucket.next_available(steady) > steady + Seconds{1}) continue;
      ready.push_back(provider);
    }
    return ready;
  }

  void arm_wake(const ProviderSet& ready) {
    const SysTime now = clock.now();
    const SteadyTime steady = clock.steady_now();
    // While running, look at the store again after idle_poll at the latest; a forced run only
    // waits for its queued jobs.
    std::optional<SysTime> wake;
    if (running) wake = now + options.scheduler.idle_poll;
    auto consider = [&wake](SysTime t) { wake = wake ? std::min(*wake, t) : t; };
    if (running && free_capacity() > 0 && !ready.empty()) {
      auto due = scheduler.next_wake(ready);
      if (!due) {
        log->error("cannot read the schedule: {}", due.error().message());
        consider(now + Seconds{1});
      } else if (*due) {
        // Still due after a claim below capacity: held by someone else or just released. A
        // second's pause keeps that from becoming a busy loop.
        consider(**due > now ? **due : now + Seconds{1});
      }
    }
    auto to_sys = [&](SteadyTime t) {
      return now + std::chrono::ceil<Seconds>(std::max(t - steady, SteadyTime::duration::zero()));
    };
    for (const auto& [provider, lane] : lanes) {
      if (!lane.queue.empty()) consider(to_sys(lane.bucket.next_available(steady)));
      if (running && !lane.breaker.would_allow(steady)) consider(to_sys(lane.breaker.reopens_at()));
    }
    if (wake) {
      arm(*wake);
    } else {
      timer->cancel();
    }
  }

  void arm(SysTime at) {
    timer->arm(at, [this] { pump(); });
  }

  void enqueue(JobPtr job) {
    active.insert(job);
    lanes.at(job->job.record.provider).queue.push_back(std::move(job));
  }

  // Starts queued jobs while their provider lets requests through.
  void dispatch() {
    const SteadyTime steady = clock.steady_now();
    for (auto& [provider, lane] : lanes) {
      while (!lane.queue.empty() && !stopping) {
        if (!lane.breaker.would_allow(steady)) {
          postpone_all(lane);
          break;
        }
        if (!lane.bucket.try_take(steady)) break;
        JobPtr job = std::move(lane.queue.front());
        lane.queue.pop_front();
        lane.breaker.allow(steady);
        begin(job, lane);
      }
    }
  }

  // The breaker is open: its queued tokens wait for it without counting a failure.
  void postpone_all(Lane& lane) {
    const SysTime until =
        clock.now() + std::chrono::ceil<Seconds>(lane.breaker.reopens_at() - clock.steady_now());
    while (!lane.queue.empty()) {
      JobPtr job = std::move(lane.queue.front());
      lane.queue.pop_front();
      if (job->forced != nullptr) {
        report_forced(*job, false,
                      "not attempted: the circuit breaker for " +
                          std::string(to_string(job->job.record.provider)) +
                          " is open after repeated failures");
        release(job);
        continue;
      }
      if (auto st = scheduler.postpone(job->job, until); !st) {
        log->warn("cannot put off {}: {}", job->job.record.id, st.error().message());
      }
      ++stats().postponed;
      finish(job);
    }
  }

  // --- one job ----------------------------------------------------------------------------------

  void begin(const JobPtr& job, Lane& lane) {
    const TokenRecord& r = job->job.record;
    if (job->job.refresh_due && Policy::renewable(r)) {
      job->op = Operation::kRefresh;
    } else if (job->job.check_due) {
      job->op = Operation::kCheck;
    } else {
      return release(job);
    }
    job->started = clock.steady_now();
    auto secrets = store.read_secrets(r);
    if (!secrets) {
      // A secret that does not decrypt is the operator's to fix (a key missing from the ring).
      Outcome o =
          Outcome::failed(job->op,
                          secrets.error().code() == Errc::kCorrupt ? ErrorClass::kConfiguration
                                                                   : ErrorClass::kTransient,
                          secrets.error().message());
      return commit(job, std::move(o));
    }
    ++requests;
    auto on_done = [this, job](Outcome o) { outcome(job, std::move(o)); };
    if (job->op == Operation::kRefresh) {
      lane.client->refresh(r, *secrets, std::move(on_done));
    } else {
      lane.client->check(r, *secrets, std::move(on_done));
    }
  }

  void outcome(const JobPtr& job, Outcome o) {
    --requests;
    o.op = job->op;
    Lane& lane = lanes.at(job->job.record.provider);
    const SteadyTime steady = clock.steady_now();
    if (provider_failure(o)) {
      lane.breaker.on_failure(steady);
    } else if (!o.failure.cancelled) {
      lane.breaker.on_success();
    }
    if (o.throttle) {
      lane.bucket.pause_until(steady + *o.throttle);
      log->warn("{} asks to slow down: pausing it for {}", to_string(job->job.record.provider),
                format_duration(*o.throttle));
    }
    if (o.failure.cancelled && !o.secrets) {
      // Shutting down: not the token's failure. Give it back to be done again.
      if (job->forced != nullptr) report_forced(*job, false, "cancelled: shutting down");
      return release(job);
    }
    commit(job, std::move(o));
  }

  // Commits `o`, retrying while the database refuses, then moves the job on.
  void commit(const JobPtr& job, Outcome o) {
    // A failed renewal that killed the grant leaves nothing to check; otherwise the lease is kept
    // for the check that follows a renewal.
    const bool dead = !o.ok && (o.failure.error_class == ErrorClass::kPermanent ||
                                o.failure.error_class == ErrorClass::kRevoked);
    const bool more =
        job->op == Operation::kRefresh && job->job.check_due && !dead && job->forced == nullptr;
    auto st = scheduler.record(job->job, o, !more);
    if (!st && st.error().code() != Errc::kLeaseLost) {
      ++stats().commit_retries;
      log->error("cannot store the outcome for {} yet (retrying in {} ms{}): {}",
                 job->job.record.id, job->retry_delay.count(),
                 o.secrets ? ", it holds renewed secrets" : "", st.error().message());
      job->uncommitted = std::move(o);
      return retry_commit(job);
    }
    job->uncommitted.reset();
    job->retry_delay = kFirstCommitRetry;
    if (!st) {
      ++stats().results_dropped;
      log->error("outcome for {} not stored: {}{}", job->job.record.id, st.error().message(),
                 o.secrets ? " (renewed secrets were issued: if the provider rotates, the token "
                             "may need re-authorisation)"
                           : "");
      if (job->forced != nullptr) report_forced(*job, false, st.error().message());
      return finish(job);
    }
    log_outcome(*job, o);
    count(o);
    if (job->forced != nullptr) {
      report_forced(*job, o.ok, o.ok ? (o.note.empty() ? "ok" : o.note) : describe(o.failure));
    }
    if (more) {
      job->job.refresh_due = false;
      Lane& lane = lanes.at(job->job.record.provider);
      lane.queue.push_front(job);
      return dispatch_later();
    }
    finish(job);
  }

  void retry_commit(const JobPtr& job) {
    job->retry_timer = std::make_unique<boost::asio::steady_timer>(executor);
    job->retry_timer->expires_after(job->retry_delay);
    job->retry_delay = std::min(job->retry_delay * 2, kMaxCommitRetry);
    job->retry_timer->async_wait([this, job](const boost::system::error_code& ec) {
      if (ec || !job->uncommitted) return;
      Outcome o = std::move(*job->uncommitted);
      job->uncommitted.reset();
      commit(job, std::move(o));
    });
  }

  // Gives a claimed token back unchanged (its original due times, no lease).
  void release(const JobPtr& job) {
    if (auto st = scheduler.release(job->job); !st && st.error().code() != Errc::kLeaseLost) {
      log->warn("cannot release {}: {} (its lease will expire)", job->job.record.id,
                st.error().message());
    }
    finish(job);
  }

  void finish(const JobPtr& job) {
    active.erase(job);
    if (job->forced != nullptr) {
      Forced* f = job->forced;
      job->forced = nullptr;
      if (--f->remaining == 0) complete_forced(f);
    }
    if (stopping) return maybe_stopped();
    dispatch_later();
  }

  // Runs pump() soon, not from inside a callback chain.
  void dispatch_later() {
    boost::asio::post(executor, [this] { pump(); });
  }

  void count(const Outcome& o) {
    if (o.ok) {
      ++(o.op == Operation::kRefresh ? stats().refreshes_ok : stats().checks_ok);
    } else {
      ++(o.op == Operation::kRefresh ? stats().refresh_failures
                                     : stats().check_failures)[o.failure.error_class];
    }
  }

  static std::string describe(const Failure& f) {
    return std::string(to_string(f.error_class)) + ": " + f.message;
  }

  void log_outcome(const ActiveJob& job, const Outcome& o) {
    const TokenRecord& r = job.job.record;
    const auto latency =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock.steady_now() - job.started)
            .count();
    const std::string who = r.id + " (" + std::string(to_string(r.provider)) + " " +
                            std::string(to_string(r.kind)) + ", workspace " + r.workspace_id + ")";
    const std::string next =
        "next renewal " + when(r.next_refresh_due) + ", next check " + when(r.next_check_due);
    const char* verb = o.op == Operation::kRefresh ? "renewal" : "check";
    if (o.ok) {
      log->info("{} of {} ok in {} ms{}; {}", verb, who, latency,
                o.note.empty() ? "" : " (" + o.note + ")", next);
    } else if (r.state == TokenState::kNeedsReauth || r.state == TokenState::kRevoked) {
      log->error("{} of {} failed in {} ms: {}; the token is {}: the customer must reconnect", verb,
                 who, latency, describe(o.failure), to_string(r.state));
    } else {
      log->warn("{} of {} failed in {} ms: {}; {} failure(s) in a row; {}", verb, who, latency,
                describe(o.failure), r.consecutive_failures, next);
    }
  }

  // --- forced work ------------------------------------------------------------------------------

  void report_forced(const ActiveJob& job, bool ok, std::string message) {
    Forced* f = job.forced;
    if (f == nullptr) return;
    ForcedResult& res = f->results[job.forced_index];
    res.ok = ok;
    res.message = std::move(message);
    res.state = job.job.record.state;
  }

  void complete_forced(Forced* f) {
    std::unique_ptr<Forced> owned(f);
    boost::asio::post(
        executor, [done = std::move(owned->done), results = std::move(owned->results)]() mutable {
          done(std::move(results));
        });
  }

  // --- leases, summaries, stopping
  // ----------------------------------------------------------------

  void extend_leases() {
    lease_timer.expires_after(std::chrono::duration_cast<SteadyClock::duration>(
        std::max(options.scheduler.lease / 3, Seconds{1})));
    lease_timer.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      std::vector<LeaseRef> refs;
      refs.reserve(active.size());
      for (const JobPtr& j : active) {
        refs.push_back({j->job.record.id, j->job.record.lease_generation});
      }
      if (!refs.empty()) {
        auto held = scheduler.extend(refs);
        if (!held) {
          log->error("cannot extend leases: {}", held.error().message());
        } else if (*held < refs.size()) {
          log->warn(
              "{} of {} leases were lost (reconnected or taken over); their results will "
              "be dropped",
              refs.size() - *held, refs.size());
        }
      }
      extend_leases();
    });
  }

  void summarise() {
    summary_timer.expires_after(
        std::chrono::duration_cast<SteadyClock::duration>(options.summary_every));
    summary_timer.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      log->info("summary: {}", summary_line());
      at_last_summary = stats();
      summarise();
    });
  }

  std::string summary_line() const {
    const WorkerStats& now = worker.stats_;
    const WorkerStats& then = at_last_summary;
    auto failures = [](const std::map<ErrorClass, std::uint64_t>& a,
                       const std::map<ErrorClass, std::uint64_t>& b) {
      std::string out;
      for (const auto& [c, n] : a) {
        const std::uint64_t before = b.count(c) != 0 ? b.at(c) : 0;
        if (n > before) out += " " + std::string(to_string(c)) + "=" + std::to_string(n - before);
      }
      return out.empty() ? std::string(" none") : out;
    };
    return std::to_string(now.refreshes_ok - then.refreshes_ok) + " renewed, " +
           std::to_string(now.checks_ok - then.checks_ok) +
           " checked; renewal failures:" + failures(now.refresh_failures, then.refresh_failures) +
           "; check failures:" + failures(now.check_failures, then.check_failures) + "; " +
           std::to_string(requests) + " in flight, " + std::to_string(active.size()) + " claimed";
  }

  void maybe_stopped() {
    if (!stopping || !on_stopped) return;
    if (!active.empty()) return;
    grace_timer.cancel();
    boost::asio::post(executor, std::move(on_stopped));
    on_stopped = nullptr;
  }
};

Worker::Worker(boost::asio::any_io_executor executor, Scheduler& scheduler, TokenStore& store,
               std::vector<ProviderClient*> clients, const Clock& clock, WorkerOptions options,
               std::shared_ptr<spdlog::logger> log, std::unique_ptr<WakeTimer> timer)
    : impl_(std::make_unique<Impl>(*this, std::move(executor), scheduler, store, std::move(clients),
                                   clock, std::move(options), std::move(log), std::move(timer))) {}

Worker::~Worker() = default;

std::size_t Worker::in_flight() const {
  return impl_->requests;
}

void Worker::start() {
  Impl& w = *impl_;
  w.running = true;
  std::string providers;
  for (const auto& [p, lane] : w.lanes)
    providers += " " + std::string(to_string(p));
  w.log->info("worker {} started; providers:{}; up to {} requests in flight", w.scheduler.owner(),
              providers.empty() ? " none" : providers, w.options.max_in_flight);
  w.extend_leases();
  w.summarise();
  w.dispatch_later();
}

void Worker::stop(Seconds grace, std::function<void()> done) {
  Impl& w = *impl_;
  w.stopping = true;
  w.running = false;
  w.timer->cancel();
  w.summary_timer.cancel();
  w.on_stopped = std::move(done);
  w.log->info("stopping: {} request(s) in flight, {} token(s) claimed; summary: {}", w.requests,
              w.active.size(), w.summary_line());
  // Jobs still waiting for a slot go back at once.
  for (auto& [p, lane] : w.lanes) {
    while (!lane.queue.empty()) {
      JobPtr job = std::move(lane.queue.front());
      lane.queue.pop_front();
      if (job->forced != nullptr) w.report_forced(*job, false, "cancelled: shutting down");
      w.release(job);
    }
  }
  if (!w.active.empty()) {
    w.grace_timer.expires_after(std::chrono::duration_cast<SteadyClock::duration>(grace));
    w.grace_timer.async_wait([&w](const boost::system::error_code& ec) {
      if (ec || !w.on_stopped) return;
      w.log->warn("{} token(s) still in flight after the grace period; they will be released",
                  w.active.size());
      w.lease_timer.cancel();
      boost::asio::post(w.executor, std::move(w.on_stopped));
      w.on_stopped = nullptr;
    });
  } else {
    w.lease_timer.cancel();
  }
  w.maybe_stopped();
}

void Worker::run_now(std::vector<std::string> ids, Operation op,
                     std::function<void(std::vector<ForcedResult>)> done) {
  Impl& w = *impl_;
  auto* forced = new Forced{};
  forced->done = std::move(done);
  forced->results.resize(ids.size());
  forced->remaining = ids.size() + 1;  // +1 until every job is queued
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ForcedResult& res = forced->results[i];
    res.id = ids[i];
    res.op = op;
    auto claimed = w.scheduler.claim(ids[i]);
    if (!claimed) {
      res.message = claimed.error().code() == Errc::kNotFound ? "no such token"
                    : claimed.error().code() == Errc::kLeaseLost
                        ? "busy: " + claimed.error().message()
                        : claimed.error().message();
      --forced->remaining;
      continue;
    }
    res.state = claimed->record.state;
    auto job = std::make_shared<ActiveJob>(std::move(*claimed));
    job->forced = forced;
    job->forced_index = i;
    job->job.refresh_due = op == Operation::kRefresh;
    job->job.check_due = op == Operation::kCheck;
    const TokenRecord& r = job->job.record;
    std::string refusal;
    if (w.lanes.count(r.provider) == 0) {
      refusal = "provider " + std::string(to_string(r.provider)) + " is not enabled";
    } else if (r.state == TokenState::kDisabled) {
      refusal = "the token is disabled (tokenwarden enable " + r.id + ")";
    } else if (op == Operation::kRefresh && !Policy::renewable(r)) {
      refusal = "a " + std::string(to_string(r.kind)) + " token is never renewed";
    }
    if (!refusal.empty()) {
      w.active.insert(job);
      w.report_forced(*job, false, refusal);
      w.release(job);
      continue;
    }
    w.enqueue(job);
  }
  if (--forced->remaining == 0) {
    w.complete_forced(forced);
    return;
  }
  w.dispatch_later();
}

}  // namespace tw
