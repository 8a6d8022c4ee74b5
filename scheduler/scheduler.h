// Scheduler: turns the store's due times into claimed jobs and their outcomes back into due times.
//
// Thread-safety: one thread (the event loop); several processes may run schedulers on one store.
// The scheduler holds no schedule of its own: the store is the schedule. The event loop asks
// next_wake() for one timer, claims a batch when it fires, runs each job's operations, and reports
// each outcome with record(). Outcomes are committed one at a time, before anything else is done
// with the token, so a renewed (rotated) secret is durable before the next request goes out.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/outcome.h"
#include "core/result.h"
#include "core/token.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "storage/token_store.h"

namespace tw {

// A claimed token and what is due on it. The worker runs the due operations, in the order
// refresh then check, reporting each with Scheduler::record().
struct Job {
  TokenRecord record;
  bool refresh_due = false;
  bool check_due = false;
  // When begin_renewal() recorded a renewal whose result has not been recorded yet: every write
  // of this job keeps the token in doubt from then on (a release at shutdown too).
  std::optional<SysTime> renewal_sent_at;
  // The secrets read with the claim (DueToken::secrets), for the job's first step only: a later
  // step reads them again, since a renewal may have replaced them.
  std::optional<TokenSecrets> secrets;
};

// One write of a batch (Scheduler::write_all): the outcome of a job's step, as record() writes
// it, or, with no outcome, the start of the job's renewal, as begin_renewal() writes it.
struct JobWrite {
  Job* job = nullptr;
  const Outcome* outcome = nullptr;
  bool last = true;  // record(): whether the lease is released
};

class Scheduler {
 public:
  // `owner` names this worker in leases, e.g. "host:pid"; it serves the tokens of `providers`.
  Scheduler(TokenStore& store, const Policy& policy, const Clock& clock, SchedulerConfig config,
            std::string owner, ProviderSet providers = kAllProviders);

  const std::string& owner() const { return owner_; }

  // When the next job is due (possibly in the past), or nullopt when nothing is scheduled; for
  // this scheduler's providers, or only `providers`.
  Result<std::optional<SysTime>> next_wake();
  Result<std::optional<SysTime>> next_wake(const ProviderSet& providers);
  // Claims up to batch_size (or `limit`) jobs due now, of this scheduler's providers or only
  // `providers`.
  Result<std::vector<Job>> claim_due();
  Result<std::vector<Job>> claim_due(std::size_t limit);
  Result<std::vector<Job>> claim_due(std::size_t limit, const ProviderSet& providers);
  // Claims one token now, for a forced operation; both operations are marked due.
  Result<Job> claim(std::string_view id);

  // Applies `outcome` to the job's record through the policy and commits it, with any new secrets
  // (also on a failed outcome), in one durable write. A renewal's outcome settles the doubt its
  // sending opened: new secrets end any doubt; a failure that may have taken effect keeps the
  // token in doubt since the renewal was sent. `last` releases the lease; otherwise the job
  // keeps it for its next operation. On failure (busy, lease lost) nothing of this outcome is
  // stored, the job's record is unchanged, and the caller still holds the outcome: on kBusy it
  // retries while the lease is held, so a rotated secret is never dropped.
  Status record(Job& job, const Outcome& outcome, bool last);
  // Records durably that the job's renewal is about to go out (TokenStore::begin_renewal), and
  // remembers when in job.renewal_sent_at. The job's record is left as it was: it still tells
  // whether an earlier attempt was in doubt.
  Status begin_renewal(Job& job);
  // record() and begin_renewal() of several jobs in one durable commit (TokenStore::write_batch):
  // one Status per write, in order, with each write's meaning as above. A job changes only when
  // its own write succeeded. A job must appear at most once.
  std::vector<Status> write_all(std::span<const JobWrite> writes);
  // Puts the job's due operations off until `until` without counting a failure (the provider's
  // circuit is open, or the provider is not configured), and releases the lease.
  Status postpone(Job& job, SysTime until);
  // Gives a claimed token back unchanged: its original due times, no lease.
  Status release(Job& job);
  // The wall clock stepped back: pulls every check of this scheduler's providers that now lies
  // more than one check period ahead into the coming period (TokenStore::pull_in_checks), so
  // revocations are still noticed within a period. Renewals, days apart, keep their times (a
  // step back of D delays them by D). Returns how many tokens moved.
  Result<std::size_t> pull_in_checks();
  // The same, on a job in hand (its record is written back when the job ends).
  void pull_in_check(Job& job) const;
  // Extends the leases of jobs still in hand; returns the ids whose lease was lost.
  Result<std::vector<std::string>> extend(const std::vector<LeaseRef>& leases);

 private:
  // The record `outcome` leaves the job's token with (record()'s policy), due times included.
  TokenRecord recorded(const Job& job, const Outcome& outcome, bool last, SysTime now) const;

  TokenStore& store_;
  const Policy& policy_;
  const Clock& clock_;
  SchedulerConfig config_;
  std::string owner_;
  ProviderSet providers_;
};

}  // namespace tw
