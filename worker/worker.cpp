#include "worker/worker.h"

#include <algorithm>
#include <deque>

#include <boost/asio/post.hpp>

#include "core/log.h"

namespace tw {

namespace {

// Commit retries: 100 ms doubling to 30 s, for as long as the lease is held.
constexpr std::chrono::milliseconds kFirstCommitRetry{100};
constexpr std::chrono::milliseconds kMaxCommitRetry{30'000};
// A provider paused for longer than this has its queued tokens put off rather than held.
constexpr Seconds kHoldHorizon{60};
// A renewal whose attempt could not be recorded is not sent; it is tried again after this long.
constexpr Seconds kUnrecordedRenewalDelay{10};

struct Forced {
  std::vector<ForcedResult> results;
  std::deque<std::size_t> unclaimed;  // indexes of ids not claimed yet
  std::size_t remaining = 0;          // results not final yet
  std::function<void(std::vector<ForcedResult>)> done;
};

struct ActiveJob {
  explicit ActiveJob(Job j) : job(std::move(j)) {}

  Job job;
  Operation op = Operation::kCheck;  // the step running or being committed
  bool renew_first = false;          // the check asked for a renewal before trying again
  bool renewing_for_check = false;   // the running renewal exists for the check that follows
  bool renewed_for_check = false;    // a renewal was done for this job's check
  bool probe = false;                // its request is the breaker's half-open probe
  bool lost = false;                 // the lease was lost: drop it
  bool busy = false;                 // a request or a commit retry is under way
  TokenState state_before = TokenState::kActive;  // before the step being committed
  SteadyTime started{};
  std::optional<Outcome> uncommitted;  // an outcome whose commit is being retried
  std::chrono::milliseconds retry_delay = kFirstCommitRetry;
  std::unique_ptr<WakeTimer> retry_timer;
  std::shared_ptr<Forced> forced;  // run_now(): where the result goes
  std::size_t forced_index = 0;
};
using JobPtr = std::shared_ptr<ActiveJob>;

// A write waiting for the next flush: a step's outcome, or (no outcome) a renewal attempt whose
// request goes out with `secrets` once the attempt is on disk.
struct PendingWrite {
  JobPtr job;
  std::optional<Outcome> outcome;
  bool last = true;  // the outcome ends the job's lease (no check follows)
  TokenSecrets secrets;
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

// Failures that say something about the provider rather than the token: these feed the breaker.
bool provider_failure(const Outcome& o) {
  if (o.ok || o.failure.cancelled) return false;
  return o.failure.error_class == ErrorClass::kTransient ||
         o.failure.error_class == ErrorClass::kMalformed;
}

// Commit failures worth retrying: the database may take it later.
bool retryable(Errc code) {
  return code == Errc::kBusy || code == Errc::kStorage || code == Errc::kIo;
}

}  // namespace

struct Worker::Impl {
  Impl(Worker& w, boost::asio::any_io_executor ex, Scheduler& s, TokenStore& st,
       std::vector<ProviderClient*> clients, const Clock& c, WorkerOptions opt,
       std::shared_ptr<spdlog::logger> l, TimerFactory t)
      : worker(w),
        executor(std::move(ex)),
        scheduler(s),
        store(st),
        clock(c),
        options(std::move(opt)),
        log(std::move(l)),
        make_timer(std::move(t)),
        wake_timer(make_timer()),
        lease_timer(make_timer()),
        summary_timer(make_timer()),
        grace_timer(make_timer()) {
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
  TimerFactory make_timer;
  std::unique_ptr<WakeTimer> wake_timer;
  std::unique_ptr<WakeTimer> lease_timer;
  std::unique_ptr<WakeTimer> summary_timer;
  std::vector<AuditEntry> audit_pending;  // rows of outcomes committed this flush
  std::optional<SysTime> last_audit_prune;
  std::unique_ptr<WakeTimer> prune_timer;  // the next batch of a large prune
  std::unique_ptr<WakeTimer> grace_timer;

  std::map<Provider, Lane> lanes;
  std::vector<PendingWrite> pending;  // writes for the next flush()
  bool flush_posted = false;
  bool pump_posted = false;
  std::map<std::string, JobPtr> active;  // tokens in hand, by id: queued, in flight, committing
  std::deque<std::shared_ptr<Forced>> forced_batches;  // run_now() ids still to claim
  std::size_t requests = 0;                            // requests in flight
  bool running = false;
  bool stopping = false;
  bool giving_up = false;  // stopping, and past the grace period: last commit attempts
  bool lease_timer_armed = false;
  std::function<void()> on_stopped;
  std::function<void(const StepReport&)> on_step;
  WallTime last_tick{};
  // The wall clock minus the steady clock at the last pump: a change is a step of the wall clock.
  std::optional<Millis> wall_offset;
  bool pull_in_pending = false;  // a step back was seen; its pull-in has not succeeded yet
  std::optional<SteadyTime> pull_in_retry_at;  // after a failed pull-in, not before then
  WorkerStats at_last_summary;

  WorkerStats& stats() { return worker.stats_; }
  WallTime after(std::chrono::milliseconds d) const { return clock.system_now() + d; }

  // --- the loop ---------------------------------------------------------------------------------

  void pump() {
    last_tick = clock.system_now();
    if (stopping) return;
    notice_wall_clock_steps();
    dispatch();
    claim_forced();
    const ProviderSet ready = running ? ready_providers() : ProviderSet{};
    if (claim_room() > 0 && !ready.empty()) {
      auto jobs = scheduler.claim_due(claim_room(), ready);
      if (!jobs) {
        log->error("cannot claim due tokens: {}", jobs.error().message());
        return arm(after(std::chrono::seconds(1)));
      }
      for (Job& j : *jobs) {
        auto job = std::make_shared<ActiveJob>(std::move(j));
        job->state_before = job->job.record.state;
        take(std::move(job));
      }
    }
    dispatch();
    ensure_lease_timer();
    arm_wake(ready);
  }

  // Due times are wall-clock instants. Set forward, work due by the new time is simply done now;
  // set back by D, every due time would wait D longer, so the checks of healthy tokens are pulled
  // into the coming period, in the store and in the jobs in hand (renewals, days apart, and
  // failing tokens' retries keep their times). Small corrections (NTP slews, reading jitter)
  // pass. Only a running daemon looks: a forced run is over in moments. A step while the daemon
  // was down is not seen.
  void notice_wall_clock_steps() {
    if (!running) return;
    constexpr Millis kTolerance{2000};
    const Millis offset =
        std::chrono::duration_cast<Millis>(clock.system_now().time_since_epoch()) -
        std::chrono::duration_cast<Millis>(clock.steady_now().time_since_epoch());
    if (wall_offset && offset - *wall_offset > kTolerance) {
      // The steady clock stops while the machine is suspended: a resume looks the same.
      log->warn(
          "the wall clock moved {} ahead of the steady clock (set forward, or the machine was "
          "suspended): work due by now is done now",
          format_duration(std::chrono::round<Seconds>(offset - *wall_offset)));
    } else if (wall_offset && *wall_offset - offset > kTolerance) {
      log->warn(
          "the wall clock was set back by {}: checks now more than a period ahead are pulled into "
          "the coming period; renewals and retries keep their times",
          format_duration(std::chrono::round<Seconds>(*wall_offset - offset)));
      pull_in_pending = true;
      pull_in_retry_at.reset();
    }
    wall_offset = offset;
    if (!pull_in_pending) return;
    const SteadyTime steady = clock.steady_now();
    if (pull_in_retry_at && steady < *pull_in_retry_at) return;
    // The jobs in hand first: each writes its record back when it ends.
    for (auto& [id, job] : active)
      scheduler.pull_in_check(job->job);
    auto moved = scheduler.pull_in_checks();
    if (!moved) {
      log->error("cannot pull in checks after the wall clock was set back (retried in {}): {}",
                 format_duration(options.scheduler.idle_poll), moved.error().message());
      pull_in_retry_at = steady + options.scheduler.idle_poll;
      return;
    }
    pull_in_pending = false;
    log->info("{} checks pulled into the coming period", *moved);
  }

  std::size_t free_capacity() const {
    const auto limit = static_cast<std::size_t>(options.max_in_flight);
    return active.size() >= limit ? 0 : limit - active.size();
  }

  // How many due tokens to claim now: the free capacity once it is a quarter of max_in_flight
  // (or nothing is in hand). A busy sweep then claims in batches, not one token per finished
  // job: every claim is a durable commit.
  std::size_t claim_room() const {
    const std::size_t free = free_capacity();
    const auto batch = static_cast<std::size_t>(std::max(1, options.max_in_flight / 4));
    return free >= batch || active.empty() ? free : 0;
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
    const WallTime now = clock.system_now();
    const SteadyTime steady = clock.steady_now();
    // While running, look at the store again after idle_poll at the latest; a forced run only
    // waits for its own tokens.
    std::optional<WallTime> wake;
    if (running) wake = now + options.scheduler.idle_poll;
    auto consider = [&wake](WallTime t) { wake = wake ? std::min(*wake, t) : t; };
    if (running && claim_room() > 0 && !ready.empty()) {
      auto due = scheduler.next_wake(ready);
      if (!due) {
        log->error("cannot read the schedule: {}", due.error().message());
        consider(now + Seconds{1});
      } else if (*due) {
        // Still due after a claim below capacity: held by someone else or just released. A
        // second's pause keeps that from becoming a busy loop.
        consider(**due > clock.now() ? WallTime(**due) : now + Seconds{1});
      }
    }
    auto to_wall = [&](SteadyTime t) {
      return now + std::max(t - steady, SteadyTime::duration::zero());
    };
    for (const auto& [provider, lane] : lanes) {
      if (!lane.queue.empty()) {
        const JobPtr& next = lane.queue.front();
        consider(to_wall(lane.bucket.next_available(steady, cost(lane, *next))));
      }
      // An open breaker reopens by itself; while its probe is out, the probe's end pumps.
      if (running && !lane.breaker.would_allow(steady) && !lane.breaker.probing()) {
        consider(to_wall(lane.breaker.reopens_at()));
      }
    }
    if (wake) {
      arm(*wake);
    } else {
      wake_timer->cancel();
    }
  }

  void arm(WallTime at) {
    wake_timer->arm(at, [this] { pump(); });
  }

  static int cost(const Lane& lane, const ActiveJob& job) {
    return lane.client->requests(job.job.refresh_due ? Operation::kRefresh : Operation::kCheck,
                                 job.job.record);
  }

  // A claimed token joins the worker: its lane's queue. This process may already have it in
  // hand, its old lease expired or fenced out, and have claimed it again:
  // - the same grant (the wall clock jumped, an extension failed): the job in hand adopts the
  //   new lease and goes on;
  // - reconnected meanwhile, job waiting: the waiting job takes the fresh claim (new secrets);
  // - reconnected meanwhile, request out: that result is stale, so the new claim is given back
  //   and the token comes due again once the old job is refused at commit.
  void take(JobPtr job) {
    const std::string id = job->job.record.id;
    auto it = active.find(id);
    if (it == active.end()) {
      active.emplace(id, job);
      lanes.at(job->job.record.provider).queue.push_back(std::move(job));
      return;
    }
    ActiveJob& held = *it->second;
    if (held.job.record.connected_at == job->job.record.connected_at) {
      log->warn("{} was claimed again while in hand (its lease had run out); keeping one job", id);
      held.job.record.lease_generation = job->job.record.lease_generation;
      held.job.record.lease_until = job->job.record.lease_until;
      held.lost = false;
    } else if (!held.busy) {
      log->info("{} was reconnected while waiting: working on the new grant", id);
      held.job = std::move(job->job);
      held.lost = false;
      held.renew_first = held.renewing_for_check = held.renewed_for_check = false;
    } else if (auto st = scheduler.release(job->job); !st) {
      log->warn("cannot give back {}: {}", id, st.error().message());
    }
  }

  // Claims run_now() ids, as capacity allows.
  void claim_forced() {
    while (!forced_batches.empty() && free_capacity() > 0) {
      std::shared_ptr<Forced> f = forced_batches.front();
      if (f->unclaimed.empty()) {
        forced_batches.pop_front();
        continue;
      }
      const std::size_t i = f->unclaimed.front();
      f->unclaimed.pop_front();
      claim_one(f, i);
    }
  }

  void claim_one(const std::shared_ptr<Forced>& f, std::size_t i) {
    ForcedResult& res = f->results[i];
    if (active.count(res.id) != 0) {
      return settle_forced(f, i, ForcedResult::Status::kBusy, "busy: already being worked on");
    }
    auto claimed = scheduler.claim(res.id);
    if (!claimed) {
      const Errc code = claimed.error().code();
      return settle_forced(f, i,
                           code == Errc::kNotFound    ? ForcedResult::Status::kNotFound
                           : code == Errc::kLeaseLost ? ForcedResult::Status::kBusy
                                                      : ForcedResult::Status::kFailed,
                           code == Errc::kNotFound    ? "no such token"
                           : code == Errc::kLeaseLost ? "busy: " + claimed.error().message()
                                                      : claimed.error().message());
    }
    auto job = std::make_shared<ActiveJob>(std::move(*claimed));
    job->state_before = job->job.record.state;
    job->forced = f;
    job->forced_index = i;
    job->job.refresh_due = res.op == Operation::kRefresh;
    job->job.check_due = res.op == Operation::kCheck;
    const TokenRecord& r = job->job.record;
    res.state = r.state;
    std::string refusal;
    if (lanes.count(r.provider) == 0) {
      refusal = "provider " + std::string(to_string(r.provider)) + " is not enabled";
    } else if (r.state == TokenState::kDisabled) {
      refusal = "the token is disabled (tokenwarden enable " + r.id + ")";
    } else if (res.op == Operation::kRefresh && !Policy::renewable(r)) {
      refusal = "a " + std::string(to_string(r.kind)) + " token is never renewed";
    }
    if (!refusal.empty()) {
      active.emplace(r.id, job);
      report_forced(*job, ForcedResult::Status::kRefused, refusal);
      return release(job);
    }
    take(job);
  }

  // Starts queued jobs while their provider lets requests through.
  void dispatch() {
    const SteadyTime steady = clock.steady_now();
    for (auto& [provider, lane] : lanes) {
      while (!lane.queue.empty() && !stopping) {
        JobPtr job = lane.queue.front();
        if (job->lost) {
          lane.queue.pop_front();
          drop_lost(job);
          continue;
        }
        if (!lane.breaker.would_allow(steady)) {
          if (!lane.breaker.probing()) put_off(lane, lane.breaker.reopens_at(), "circuit open");
          break;
        }
        if (lane.bucket.next_available(steady) > steady + kHoldHorizon) {
          put_off(lane, lane.bucket.next_available(steady), "throttled");
          break;
        }
        if (!lane.bucket.try_take(steady, cost(lane, *job))) break;
        lane.queue.pop_front();
        job->probe = lane.breaker.probe_next(steady);
        lane.breaker.allow(steady);
        begin(job, lane);
      }
    }
  }

  // The lane cannot send for a while: its queued tokens wait in the store, without a failure.
  void put_off(Lane& lane, SteadyTime until_steady, const char* why) {
    const SysTime until =
        clock.now() + std::chrono::ceil<Seconds>(std::max(until_steady - clock.steady_now(),
                                                          SteadyTime::duration::zero()));
    while (!lane.queue.empty()) {
      JobPtr job = std::move(lane.queue.front());
      lane.queue.pop_front();
      if (job->forced) {
        report_forced(*job, ForcedResult::Status::kFailed,
                      std::string("not attempted: ") + why + " for " +
                          std::string(to_string(job->job.record.provider)));
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

  // --- one job, step by step --------------------------------------------------------------------

  void begin(const JobPtr& job, Lane& lane) {
    const TokenRecord& r = job->job.record;
    job->started = clock.steady_now();
    if (!fresh_lease(job)) {
      settle_probe(lane, *job, nullptr);
      return drop_lost(job);
    }
    // The first step uses the secrets read with the claim; a later one reads them again.
    Result<TokenSecrets> secrets = job->job.secrets
                                       ? Result<TokenSecrets>(std::move(*job->job.secrets))
                                       : store.read_secrets(r);
    job->job.secrets.reset();
    if (!secrets) {
      settle_probe(lane, *job, nullptr);
      // A secret that does not decrypt is the operator's to fix (a key missing from the ring).
      job->op = job->job.refresh_due ? Operation::kRefresh : Operation::kCheck;
      return commit(
          job, Outcome::failed(job->op,
                               secrets.error().code() == Errc::kCorrupt ? ErrorClass::kConfiguration
                                                                        : ErrorClass::kTransient,
                               secrets.error().message()));
    }
    const bool renewable = Policy::renewable(r);
    if (job->job.refresh_due && renewable) {
      job->op = Operation::kRefresh;
    } else if (job->job.check_due) {
      const bool renew_now = renewable && !job->renewed_for_check &&
                             (job->renew_first || lane.client->renew_before_check(r, *secrets));
      job->op = renew_now ? Operation::kRefresh : Operation::kCheck;
      job->renewing_for_check = renew_now;
    } else {
      settle_probe(lane, *job, nullptr);
      return release(job);
    }
    // Crash safety: a renewal goes out only once the attempt is on disk, so that whatever happens
    // to the reply (a crash, a timeout), the next attempt knows the refresh token may have
    // rotated. The attempt is written with the other writes of this turn (flush()).
    if (job->op == Operation::kRefresh && lane.client->renewal_rotates(r)) {
      job->busy = true;
      pending.push_back(PendingWrite{job, std::nullopt, false, std::move(*secrets)});
      return flush_soon();
    }
    send(job, lane, *secrets);
  }

  // After flush(): the renewal attempt is on disk (`st` ok), so the request may go out.
  void renewal_recorded(const JobPtr& job, const TokenSecrets& secrets, const Status& st) {
    job->busy = false;
    Lane& lane = lanes.at(job->job.record.provider);
    const TokenRecord& r = job->job.record;
    if (!st) {
      settle_probe(lane, *job, nullptr);
      const Errc code = st.error().code();
      if (code == Errc::kLeaseLost || code == Errc::kNotFound) return drop_lost(job);
      log->error("renewal of {} not sent: cannot record the attempt first: {}", r.id,
                 st.error().message());
      report_forced(*job, ForcedResult::Status::kFailed,
                    "not sent: cannot record the attempt: " + st.error().message());
      // A forced renewal leaves the schedule as it was; a scheduled one tries again soon.
      if (job->forced) return release(job);
      if (auto p = scheduler.postpone(job->job, clock.now() + kUnrecordedRenewalDelay); !p) {
        log->warn("cannot put off {}: {} (its lease will expire)", r.id, p.error().message());
      }
      return finish(job);
    }
    send(job, lane, secrets);
  }

  void send(const JobPtr& job, Lane& lane, const TokenSecrets& secrets) {
    const TokenRecord& r = job->job.record;
    ++requests;
    job->busy = true;
    auto on_done = [this, job](Outcome o) {
      job->busy = false;
      outcome(job, std::move(o));
    };
    if (job->op == Operation::kRefresh) {
      lane.client->refresh(r, secrets, std::move(on_done));
    } else {
      lane.client->check(r, secrets, std::move(on_done));
    }
  }

  // Makes sure the lease outlasts the request about to go out; false when it is lost.
  bool fresh_lease(const JobPtr& job) {
    TokenRecord& r = job->job.record;
    if (job->lost) return false;
    if (r.lease_until && *r.lease_until - clock.now() >= options.scheduler.lease / 2) return true;
    auto lost = scheduler.extend({{r.id, r.lease_generation}});
    if (!lost) {
      log->warn("cannot extend the lease of {}: {}", r.id, lost.error().message());
      return true;  // the lease timer will try again; the commit is fenced anyway
    }
    if (!lost->empty()) return false;
    r.lease_until = clock.now() + options.scheduler.lease;
    return true;
  }

  // Tells the breaker what the probe came to: `o` null when no request went out.
  void settle_probe(Lane& lane, ActiveJob& job, const Outcome* o) {
    const bool was_probe = job.probe;
    job.probe = false;
    if (o == nullptr || o->failure.cancelled) {
      if (was_probe) lane.breaker.abandon_probe();
      return;
    }
    if (provider_failure(*o)) {
      lane.breaker.on_failure(clock.steady_now());
    } else {
      lane.breaker.on_success();
    }
  }

  void outcome(const JobPtr& job, Outcome o) {
    --requests;
    o.op = job->op;
    Lane& lane = lanes.at(job->job.record.provider);
    // A lost reply cannot have taken a secret that never stops working.
    if (o.op == Operation::kRefresh && !lane.client->renewal_rotates(job->job.record)) {
      o.failure.in_doubt = false;
    }
    settle_probe(lane, *job, &o);
    if (o.throttle) {
      lane.bucket.pause_until(clock.steady_now() + *o.throttle);
      log->warn("{} asks to slow down: pausing it for {}", to_string(job->job.record.provider),
                format_duration(*o.throttle));
    }
    if (o.failure.cancelled && !o.secrets) {
      // Shutting down: not the token's failure. Give it back to be done again.
      report_forced(*job, ForcedResult::Status::kCancelled, "cancelled: shutting down");
      return release(job);
    }
    if (o.op == Operation::kCheck && o.renew_and_retry && !job->renewed_for_check &&
        Policy::renewable(job->job.record) && !stopping) {
      // The stored access token was refused: renew, commit, then check once more.
      log->info("{}: {}; renewing before checking again", job->job.record.id, o.failure.message);
      job->renew_first = true;
      return requeue(job);
    }
    commit(job, std::move(o));
  }

  // Queues `o` for the next flush(); committed() moves the job on once it is written.
  void commit(const JobPtr& job, Outcome o) {
    const bool dead = !o.ok && (o.failure.error_class == ErrorClass::kPermanent ||
                                o.failure.error_class == ErrorClass::kRevoked);
    const bool check_follows =
        job->op == Operation::kRefresh && job->job.check_due && !dead && !stopping;
    job->busy = true;
    pending.push_back(PendingWrite{job, std::move(o), !check_follows, {}});
    flush_soon();
  }

  // Writes everything queued this turn (outcomes and renewal attempts) in one durable commit,
  // then moves each job on. Nothing of a job happens between its queueing and its write: a
  // rotated secret is on disk before anything uses it, and a renewal goes out only once its
  // attempt is. Outcomes of requests that finish together share one fsync.
  void flush() {
    flush_posted = false;
    if (pending.empty()) return;
    std::vector<PendingWrite> batch;
    std::vector<JobPtr> not_sent;
    for (PendingWrite& w : pending) {
      if (stopping && !w.outcome) {
        // Stopping: no new request goes out, so its attempt is not recorded either.
        not_sent.push_back(std::move(w.job));
        continue;
      }
      // Stopping: no further step follows, so the outcome ends the lease.
      if (stopping) w.last = true;
      batch.push_back(std::move(w));
    }
    pending.clear();
    for (const JobPtr& job : not_sent) {
      job->busy = false;
      settle_probe(lanes.at(job->job.record.provider), *job, nullptr);
      report_forced(*job, ForcedResult::Status::kCancelled, "cancelled: shutting down");
      if (giving_up) {
        log->warn("{} still in hand at exit: its lease will expire", job->job.record.id);
        finish(job);
      } else {
        release(job);
      }
    }
    if (batch.empty()) return;
    std::vector<JobWrite> writes;
    writes.reserve(batch.size());
    for (PendingWrite& w : batch)
      writes.push_back(JobWrite{&w.job->job, w.outcome ? &*w.outcome : nullptr, w.last});
    const std::vector<Status> results = scheduler.write_all(writes);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      PendingWrite& w = batch[i];
      if (w.outcome) {
        committed(w.job, std::move(*w.outcome), !w.last, results[i]);
      } else {
        renewal_recorded(w.job, w.secrets, results[i]);
      }
    }
    write_audit();
  }

  // The audit rows of the outcomes just committed, in one transaction of their own. A failure
  // here costs audit rows, never an outcome: it is logged and the work goes on.
  void write_audit() {
    if (audit_pending.empty()) return;
    if (auto st = store.append_audit(audit_pending); !st) {
      log->error("{} audit row(s) not written: {}", audit_pending.size(), st.error().message());
    }
    audit_pending.clear();
  }

  void audit(const ActiveJob& job, const Outcome& o) {
    const TokenRecord& r = job.job.record;
    std::string outcome =
        o.ok ? std::string("ok") : "failed: " + std::string(to_string(o.failure.error_class));
    if (job.state_before != r.state) {
      outcome += std::string(", ") + std::string(to_string(job.state_before)) + " -> " +
                 std::string(to_string(r.state));
    }
    std::string detail = std::string(to_string(r.provider)) + " " + std::string(to_string(r.kind));
    const std::string& said = o.ok ? o.note : o.failure.message;
    if (!said.empty()) detail += ": " + said;
    audit_pending.push_back(AuditEntry{clock.now(), scheduler.owner(), std::string(to_string(o.op)),
                                       r.id, std::move(outcome), std::move(detail)});
  }

  // Prunes audit rows past audit.retention, at most once an hour, 10,000 rows per transaction
  // and per loop turn (a second apart), so that a large backlog never holds up renewals.
  void prune_audit() {
    if (!options.audit_retention) return;
    const SysTime now = clock.now();
    if (last_audit_prune && now - *last_audit_prune < std::chrono::hours(1)) return;
    last_audit_prune = now;
    prune_audit_step(now - *options.audit_retention, 0);
  }

  void prune_audit_step(SysTime before, std::size_t so_far) {
    constexpr std::size_t kBatch = 10000;
    auto n = store.prune_audit(before, kBatch, clock.now(), scheduler.owner());
    if (!n) {
      log->warn("cannot prune the audit trail: {}", n.error().message());
      return;
    }
    so_far += *n;
    if (*n == kBatch && !stopping) {
      prune_timer = make_timer();
      prune_timer->arm(after(std::chrono::seconds(1)),
                       [this, before, so_far] { prune_audit_step(before, so_far); });
      return;
    }
    if (so_far > 0) {
      log->info("pruned {} audit row(s) written before {}", so_far, format_time(before));
    }
  }

  void flush_soon() {
    if (flush_posted) return;
    flush_posted = true;
    boost::asio::post(executor, [this] { flush(); });
  }

  // After flush(): `o` is stored (`st` ok), or is retried while the database refuses it.
  void committed(const JobPtr& job, Outcome o, bool check_follows, const Status& st) {
    if (!st && retryable(st.error().code()) && !giving_up) {
      ++stats().commit_retries;
      log->error("cannot store the outcome for {} yet (retrying in {} ms{}): {}",
                 job->job.record.id, job->retry_delay.count(),
                 o.secrets ? "; it holds renewed secrets" : "", st.error().message());
      job->uncommitted = std::move(o);
      job->busy = true;
      return retry_commit(job);
    }
    job->uncommitted.reset();
    job->busy = false;
    job->retry_delay = kFirstCommitRetry;
    if (!st) {
      ++stats().results_dropped;
      log->error("outcome for {} not stored: {}{}", job->job.record.id, st.error().message(),
                 o.secrets ? " (renewed secrets were issued: if the provider rotates, the token "
                             "may need re-authorisation)"
                           : "");
      report_forced(*job, ForcedResult::Status::kFailed, st.error().message());
      return finish(job);
    }
    if (job->renewing_for_check) {
      job->renewing_for_check = false;
      job->renewed_for_check = true;
      job->renew_first = false;
    }
    log_outcome(*job, o, check_follows);
    audit(*job, o);
    count(o);
    if (on_step) {
      on_step(StepReport{o.op, o.ok, o.ok ? ErrorClass::kNone : o.failure.error_class,
                         o.ok ? std::string() : o.failure.message, job->job.record,
                         job->state_before,
                         std::chrono::duration_cast<std::chrono::milliseconds>(clock.steady_now() -
                                                                               job->started)});
    }
    job->state_before = job->job.record.state;
    if (check_follows) {
      job->job.refresh_due = false;
      return requeue(job);
    }
    report_forced(*job, o.ok ? ForcedResult::Status::kOk : ForcedResult::Status::kFailed,
                  o.ok ? (o.note.empty() ? "ok" : o.note) : describe(o.failure));
    finish(job);
  }

  void retry_commit(const JobPtr& job) {
    job->retry_timer = make_timer();
    job->retry_timer->arm(after(job->retry_delay), [this, job] {
      if (!job->uncommitted) return;
      Outcome o = std::move(*job->uncommitted);
      job->uncommitted.reset();
      commit(job, std::move(o));
    });
    job->retry_delay = std::min(job->retry_delay * 2, kMaxCommitRetry);
  }

  // Back to the front of its lane for its next step.
  void requeue(const JobPtr& job) {
    lanes.at(job->job.record.provider).queue.push_front(job);
    later();
  }

  // Gives a claimed token back unchanged (its original due times, no lease).
  void release(const JobPtr& job) {
    if (auto st = scheduler.release(job->job); !st && st.error().code() != Errc::kLeaseLost) {
      log->warn("cannot release {}: {} (its lease will expire)", job->job.record.id,
                st.error().message());
    }
    finish(job);
  }

  void drop_lost(const JobPtr& job) {
    ++stats().results_dropped;
    log->warn("dropped {}: its lease was lost (reconnected, removed, or taken over)",
              job->job.record.id);
    report_forced(*job, ForcedResult::Status::kBusy, "lease lost");
    finish(job);
  }

  void finish(const JobPtr& job) {
    active.erase(job->job.record.id);
    job->retry_timer.reset();
    if (stopping) return maybe_stopped();
    later();
  }

  // Runs pump() soon, not from inside a callback chain.
  void later() {
    if (pump_posted) return;
    pump_posted = true;
    boost::asio::post(executor, [this] {
      pump_posted = false;
      pump();
    });
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

  void log_outcome(const ActiveJob& job, const Outcome& o, bool check_follows) {
    const TokenRecord& r = job.job.record;
    // A healthy check that changes nothing is the bulk of a sweep (a million an hour): at debug,
    // so that the journal (rate-limited per service) keeps what an operator must see. Renewals,
    // failures and state changes stay at info and above; the summary counts every check.
    const bool routine = o.ok && o.op == Operation::kCheck && job.state_before == r.state;
    if (routine && !log->should_log(spdlog::level::debug)) return;
    const auto latency =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock.steady_now() - job.started)
            .count();
    const std::string who = r.id + " (" + std::string(to_string(r.provider)) + " " +
                            std::string(to_string(r.kind)) + ", workspace " + r.workspace_id + ")";
    const std::string next = check_follows ? std::string("a check follows")
                                           : "next renewal " + when(r.next_refresh_due) +
                                                 ", next check " + when(r.next_check_due);
    const char* verb = o.op == Operation::kRefresh ? "renewal" : "check";
    // Structured: journald fields (journalctl -u tokenwarden TOKEN_ID=...), JSON keys.
    ScopedLogFields fields(
        {{"TOKEN_ID", r.id},
         {"PROVIDER", std::string(to_string(r.provider))},
         {"KIND", std::string(to_string(r.kind))},
         {"WORKSPACE", r.workspace_id},
         {"OPERATION", std::string(to_string(o.op))},
         {"OUTCOME", o.ok ? "ok" : "failed"},
         {"ERROR_CLASS", std::string(to_string(o.ok ? ErrorClass::kNone : o.failure.error_class))},
         {"STATE", std::string(to_string(r.state))},
         {"LATENCY_MS", std::to_string(latency)}});
    if (o.ok) {
      log->log(routine ? spdlog::level::debug : spdlog::level::info, "{} of {} ok in {} ms{}; {}",
               verb, who, latency, o.note.empty() ? "" : " (" + o.note + ")", next);
    } else if (r.state == TokenState::kNeedsReauth || r.state == TokenState::kRevoked) {
      log->error("{} of {} failed in {} ms: {}; the token is {}: the customer must reconnect", verb,
                 who, latency, describe(o.failure), to_string(r.state));
    } else {
      log->warn("{} of {} failed in {} ms: {}; {} failure(s) in a row; {}", verb, who, latency,
                describe(o.failure), r.consecutive_failures, next);
    }
  }

  // --- forced work ------------------------------------------------------------------------------

  void report_forced(const ActiveJob& job, ForcedResult::Status status, std::string message) {
    if (!job.forced) return;
    ForcedResult& res = job.forced->results[job.forced_index];
    res.state = job.job.record.state;
    settle_forced(job.forced, job.forced_index, status, std::move(message));
  }

  void settle_forced(const std::shared_ptr<Forced>& f, std::size_t i, ForcedResult::Status status,
                     std::string message) {
    ForcedResult& res = f->results[i];
    res.status = status;
    res.message = std::move(message);
    if (--f->remaining == 0) {
      boost::asio::post(executor, [f] { f->done(std::move(f->results)); });
    }
  }

  // --- leases, summaries, stopping
  // ----------------------------------------------------------------

  // Keeps the lease timer running while there are tokens in hand.
  void ensure_lease_timer() {
    if (lease_timer_armed || active.empty()) return;
    lease_timer_armed = true;
    const auto period = std::max(options.scheduler.lease / 3, Seconds{1});
    lease_timer->arm(after(period), [this] {
      lease_timer_armed = false;
      extend_leases();
      ensure_lease_timer();
    });
  }

  void extend_leases() {
    std::vector<LeaseRef> refs;
    refs.reserve(active.size());
    for (const auto& [id, j] : active) {
      if (!j->lost) refs.push_back({id, j->job.record.lease_generation});
    }
    if (refs.empty()) return;
    auto lost = scheduler.extend(refs);
    if (!lost) {
      log->error("cannot extend leases: {}", lost.error().message());
      return;
    }
    const SysTime until = clock.now() + options.scheduler.lease;
    for (const auto& [id, j] : active)
      j->job.record.lease_until = until;
    for (const std::string& id : *lost) {
      if (auto it = active.find(id); it != active.end()) it->second->lost = true;
    }
    if (!lost->empty()) {
      log->warn(
          "{} of {} leases were lost (reconnected, removed or taken over); that work is "
          "dropped",
          lost->size(), refs.size());
    }
  }

  void summarise() {
    summary_timer->arm(after(options.summary_every), [this] {
      log->info("summary: {}", summary_line());
      prune_audit();
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
           std::to_string(requests) + " in flight, " + std::to_string(active.size()) + " in hand";
  }

  void begin_stop(Seconds grace, std::function<void()> on_grace_expired,
                  std::function<void()> done) {
    stopping = true;
    running = false;
    on_stopped = std::move(done);
    wake_timer->cancel();
    summary_timer->cancel();
    if (prune_timer) prune_timer->cancel();
    log->info("stopping: {} request(s) in flight, {} token(s) in hand; summary: {}", requests,
              active.size(), summary_line());
    // Tokens still waiting for a slot, or forced ids not claimed yet, go back at once.
    for (auto& [p, lane] : lanes) {
      while (!lane.queue.empty()) {
        JobPtr job = std::move(lane.queue.front());
        lane.queue.pop_front();
        report_forced(*job, ForcedResult::Status::kCancelled, "cancelled: shutting down");
        release(job);
      }
    }
    for (const auto& f : forced_batches) {
      while (!f->unclaimed.empty()) {
        const std::size_t i = f->unclaimed.front();
        f->unclaimed.pop_front();
        settle_forced(f, i, ForcedResult::Status::kCancelled, "cancelled: shutting down");
      }
    }
    forced_batches.clear();
    grace_timer->arm(after(grace), [this, grace, on_grace_expired = std::move(on_grace_expired)] {
      if (!active.empty()) {
        log->warn("{} token(s) still in hand after the grace period: cancelling their requests",
                  active.size());
      }
      if (on_grace_expired) on_grace_expired();
      // Commits still being retried get one more grace period, then a last attempt each.
      grace_timer->arm(after(grace), [this] { give_up(); });
    });
    maybe_stopped();
  }

  // Stops at once (a second signal): outcomes already received, rotated secrets among them, get
  // their last write now; nothing more goes out; the rest is left to its leases.
  void abort() {
    stopping = true;
    running = false;
    wake_timer->cancel();
    summary_timer->cancel();
    if (prune_timer) prune_timer->cancel();
    give_up();
  }

  void give_up() {
    giving_up = true;
    flush();  // writes still queued get their last attempt now
    std::vector<JobPtr> left;
    for (const auto& [id, j] : active)
      left.push_back(j);
    for (const JobPtr& j : left) {
      if (j->uncommitted) {
        Outcome o = std::move(*j->uncommitted);
        j->uncommitted.reset();
        j->retry_timer.reset();
        log->critical("last attempt to store the outcome for {} before exiting", j->job.record.id);
        commit(j, std::move(o));
      } else {
        log->warn("{} still in hand at exit: its lease will expire", j->job.record.id);
        finish(j);
      }
    }
    flush();
    active.clear();
    maybe_stopped();
  }

  void maybe_stopped() {
    if (!stopping || !on_stopped || !active.empty()) return;
    grace_timer->cancel();
    lease_timer->cancel();
    lease_timer_armed = false;
    boost::asio::post(executor, std::move(on_stopped));
    on_stopped = nullptr;
  }
};

Worker::Worker(boost::asio::any_io_executor executor, Scheduler& scheduler, TokenStore& store,
               std::vector<ProviderClient*> clients, const Clock& clock, WorkerOptions options,
               std::shared_ptr<spdlog::logger> log, TimerFactory timers)
    : impl_(std::make_unique<Impl>(*this, std::move(executor), scheduler, store, std::move(clients),
                                   clock, std::move(options), std::move(log), std::move(timers))) {}

Worker::~Worker() = default;

std::size_t Worker::in_flight() const {
  return impl_->requests;
}
std::size_t Worker::in_hand() const {
  return impl_->active.size();
}

void Worker::set_on_step(std::function<void(const StepReport&)> fn) {
  impl_->on_step = std::move(fn);
}

void Worker::set_limits(const std::map<Provider, ProviderLimits>& limits) {
  Impl& w = *impl_;
  for (auto& [provider, lane] : w.lanes) {
    auto it = limits.find(provider);
    if (it == limits.end()) continue;
    const ProviderLimits& now = w.options.limits[provider];
    const ProviderLimits& next = it->second;
    // Only what changed starts afresh: a reload must not close a breaker open in an outage.
    if (next.requests_per_second != now.requests_per_second || next.burst != now.burst) {
      lane.bucket = TokenBucket(next.requests_per_second, next.burst, w.clock.steady_now());
    }
    if (next.breaker_failures != now.breaker_failures ||
        next.breaker_cooldown != now.breaker_cooldown) {
      lane.breaker = CircuitBreaker(next.breaker_failures, next.breaker_cooldown);
    }
    w.options.limits[provider] = next;
  }
}

void Worker::set_summary_every(Seconds every) {
  impl_->options.summary_every = every;
}

WallTime Worker::last_tick() const {
  return impl_->last_tick;
}

void Worker::start() {
  Impl& w = *impl_;
  w.running = true;
  w.last_tick = w.clock.system_now();  // the loop is alive; the first pump follows at once
  std::string providers;
  for (const auto& [p, lane] : w.lanes)
    providers += " " + std::string(to_string(p));
  w.log->info("worker {} started; providers:{}; up to {} requests in flight", w.scheduler.owner(),
              providers.empty() ? " none" : providers, w.options.max_in_flight);
  w.summarise();
  w.later();
}

void Worker::stop(Seconds grace, std::function<void()> on_grace_expired,
                  std::function<void()> done) {
  impl_->begin_stop(grace, std::move(on_grace_expired), std::move(done));
}

void Worker::abort() {
  impl_->abort();
}

void Worker::run_now(std::vector<std::string> ids, Operation op,
                     std::function<void(std::vector<ForcedResult>)> done) {
  Impl& w = *impl_;
  auto f = std::make_shared<Forced>();
  f->done = std::move(done);
  f->results.resize(ids.size());
  f->remaining = ids.size();
  for (std::size_t i = 0; i < ids.size(); ++i) {
    f->results[i].id = ids[i];
    f->results[i].op = op;
    f->unclaimed.push_back(i);
  }
  if (ids.empty()) {
    boost::asio::post(w.executor, [f] { f->done({}); });
    return;
  }
  w.forced_batches.push_back(f);
  w.later();
}

}  // namespace tw
