// Scheduler: turns the store's due times into claimed jobs and their outcomes back into due times.
//
// Thread-safety: one thread (the event loop); several processes may run schedulers on one store.
// The scheduler holds no schedule of its own: the store is the schedule. The event loop asks
// next_wake() for one timer, claims a batch when it fires, runs each job's operations, and reports
// each outcome with record(). Outcomes are committed one at a time, before anything else is done
// with the token, so a renewed (rotated) secret is durable before the next request goes out.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/result.h"
#include "core/token.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "storage/token_store.h"

namespace tw {

// What an operation on a token came to.
struct Outcome {
  Operation op = Operation::kCheck;
  bool ok = true;
  Failure failure;  // when !ok
  // When ok: what the provider told us. New secrets (a renewal, or a check that had to refresh an
  // expired access token) replace the stored ones; empty fields keep the stored value.
  std::optional<TokenSecrets> secrets;
  std::optional<SysTime> expires_at;
  std::optional<SysTime> refresh_expires_at;
  std::optional<std::string> scopes;

  static Outcome success(Operation op) { return Outcome{op, true, {}, {}, {}, {}, {}}; }
  static Outcome failed(Operation op, ErrorClass c, std::string message,
                        std::optional<Seconds> retry_after = std::nullopt) {
    return Outcome{op, false, Failure{c, std::move(message), retry_after}, {}, {}, {}, {}};
  }
};

// A claimed token and what is due on it. The worker runs the due operations, in the order
// refresh then check, reporting each with Scheduler::record().
struct Job {
  TokenRecord record;
  bool refresh_due = false;
  bool check_due = false;
};

class Scheduler {
 public:
  // `owner` names this worker in leases, e.g. "host:pid".
  Scheduler(TokenStore& store, const Policy& policy, const Clock& clock, SchedulerConfig config,
            std::string owner);

  const std::string& owner() const { return owner_; }

  // When the next job is due (possibly in the past), or nullopt when nothing is scheduled.
  Result<std::optional<SysTime>> next_wake();
  // Claims up to batch_size jobs due now.
  Result<std::vector<Job>> claim_due();
  // Claims one token now, for a forced operation; both operations are marked due.
  Result<Job> claim(std::string_view id);

  // Applies `outcome` to the job's record through the policy and commits it, with any new secrets,
  // in one durable write. `last` releases the lease; otherwise the job keeps it for its next
  // operation. On failure (busy, lease lost) nothing of this outcome is stored.
  Status record(Job& job, Outcome outcome, bool last);

 private:
  TokenStore& store_;
  const Policy& policy_;
  const Clock& clock_;
  SchedulerConfig config_;
  std::string owner_;
};

}  // namespace tw
