#include "scheduler/scheduler.h"

namespace tw {

Scheduler::Scheduler(TokenStore& store, const Policy& policy, const Clock& clock,
                     SchedulerConfig config, std::string owner, ProviderSet providers)
    : store_(store),
      policy_(policy),
      clock_(clock),
      config_(config),
      owner_(std::move(owner)),
      providers_(std::move(providers)) {}

Result<std::optional<SysTime>> Scheduler::next_wake() {
  return store_.earliest_due(providers_);
}

Result<std::size_t> Scheduler::pull_in_checks() {
  std::size_t moved = 0;
  for (Provider p : providers_) {
    auto n = store_.pull_in_checks(p, clock_.now(), policy_.schedule_for(p).check_every);
    if (!n) return n.error();
    moved += *n;
  }
  return moved;
}

void Scheduler::pull_in_check(Job& job) const {
  TokenRecord& r = job.record;
  if (!r.next_check_due || r.consecutive_failures != 0) return;
  const std::int64_t period = policy_.schedule_for(r.provider).check_every.count();
  const std::int64_t now = to_unix(clock_.now());
  const std::int64_t due = to_unix(*r.next_check_due);
  if (period <= 0 || due <= now + period) return;
  // As in TokenStore::pull_in_checks: back by whole periods into (now, now + period].
  r.next_check_due = from_unix(due - period * ((due - now - 1) / period));
}

Result<std::vector<Job>> Scheduler::claim_due() {
  return claim_due(static_cast<std::size_t>(config_.batch_size));
}

Result<std::optional<SysTime>> Scheduler::next_wake(const ProviderSet& providers) {
  return store_.earliest_due(providers);
}

Result<std::vector<Job>> Scheduler::claim_due(std::size_t limit) {
  return claim_due(limit, providers_);
}

Result<std::vector<Job>> Scheduler::claim_due(std::size_t limit, const ProviderSet& providers) {
  auto due = store_.claim_due(clock_.now(), limit, owner_, config_.lease, providers);
  if (!due) return due.error();
  std::vector<Job> jobs;
  jobs.reserve(due->size());
  for (DueToken& d : *due)
    jobs.push_back(
        Job{std::move(d.record), d.refresh_due, d.check_due, std::nullopt, std::move(d.secrets)});
  return jobs;
}

Result<Job> Scheduler::claim(std::string_view id) {
  auto r = store_.claim(id, clock_.now(), owner_, config_.lease);
  if (!r) return r.error();
  const bool renewable = Policy::renewable(*r);
  return Job{std::move(*r), renewable, true, std::nullopt, std::nullopt};
}

TokenRecord Scheduler::recorded(const Job& job, const Outcome& outcome, bool last,
                                SysTime now) const {
  TokenRecord next = job.record;
  const bool renewal = outcome.op == Operation::kRefresh;
  // New secrets are stored whatever the outcome; the store keeps a stored secret wherever the
  // provider sent none (Google rarely returns a refresh token; Meta has none).
  const TokenSecrets* secrets = outcome.secrets ? &*outcome.secrets : nullptr;
  if (secrets != nullptr) {
    next.has_access_token = next.has_access_token || !secrets->access_token.empty();
    next.has_refresh_token = next.has_refresh_token || !secrets->refresh_token.empty();
  }
  if (outcome.ok || secrets != nullptr) {
    // What the provider said about the token holds whenever it came with new secrets, even if a
    // later step failed: the stored expiry must match the stored secret.
    if (outcome.expires_at) next.expires_at = outcome.expires_at;
    if (outcome.expiry_unknown) next.expires_at.reset();
    if (outcome.refresh_expires_at) next.refresh_expires_at = outcome.refresh_expires_at;
    if (outcome.scopes) next.scopes = *outcome.scopes;
  }
  if (outcome.ok) {
    if (outcome.op == Operation::kRefresh) {
      policy_.on_refresh_success(next, now);
    } else {
      // A check that had to renew an expired access token on the way renewed the token too.
      if (outcome.secrets) policy_.on_refresh_success(next, now);
      policy_.on_check_success(next, now);
    }
  } else if (secrets != nullptr && renewal) {
    // New secrets came back before a later step failed (a Meta Page after its user token): the
    // rotation's result is stored, so nothing is in doubt, before or now.
    next.renewal_in_doubt_since.reset();
    Failure settled = outcome.failure;
    settled.in_doubt = false;
    policy_.on_failure(next, outcome.op, settled, now);
  } else {
    const bool was_in_doubt = next.renewal_in_doubt_since.has_value();
    policy_.on_failure(next, outcome.op, outcome.failure, now);
    // The doubt began when the request left, not when its failure came back.
    if (!was_in_doubt && next.renewal_in_doubt_since && job.renewal_sent_at) {
      next.renewal_in_doubt_since = job.renewal_sent_at;
    }
  }
  if (!last && job.record.lease_until) {
    // The job keeps its lease for its next operation: keep that operation out of sight of
    // claim_due until the lease ends, as the claim left it.
    if (next.next_refresh_due && *next.next_refresh_due <= now) {
      next.next_refresh_due = job.record.lease_until;
    }
    if (next.next_check_due && *next.next_check_due <= now) {
      next.next_check_due = job.record.lease_until;
    }
  }
  return next;
}

Status Scheduler::record(Job& job, const Outcome& outcome, bool last) {
  const JobWrite w{&job, &outcome, last};
  return std::move(write_all({&w, 1}).front());
}

std::vector<Status> Scheduler::write_all(std::span<const JobWrite> writes) {
  const SysTime now = clock_.now();
  std::vector<TokenRecord> next(writes.size());
  std::vector<StoreWrite> store_writes(writes.size());
  for (std::size_t i = 0; i < writes.size(); ++i) {
    const JobWrite& w = writes[i];
    StoreWrite& sw = store_writes[i];
    if (w.outcome == nullptr) {
      sw.kind = StoreWrite::Kind::kBeginRenewal;
      sw.lease = {w.job->record.id, w.job->record.lease_generation};
      sw.at = now;
      continue;
    }
    next[i] = recorded(*w.job, *w.outcome, w.last, now);
    sw.record = &next[i];
    sw.new_secrets = w.outcome->secrets ? &*w.outcome->secrets : nullptr;
    sw.lease_action = w.last ? LeaseAction::kRelease : LeaseAction::kKeep;
  }
  std::vector<Status> out = store_.write_batch(store_writes, owner_);
  for (std::size_t i = 0; i < writes.size(); ++i) {
    if (!out[i]) continue;
    Job& job = *writes[i].job;
    if (writes[i].outcome == nullptr) {
      if (!job.renewal_sent_at) job.renewal_sent_at = now;
      continue;
    }
    job.record = std::move(next[i]);
    // A renewal's result is recorded now.
    if (writes[i].outcome->op == Operation::kRefresh) job.renewal_sent_at.reset();
  }
  return out;
}

namespace {

// The record as a write that is not a renewal's outcome must leave it: still in doubt if a
// renewal went out whose result was never recorded (the database holds that already).
TokenRecord keeping_doubt(const Job& job) {
  TokenRecord r = job.record;
  if (!r.renewal_in_doubt_since) r.renewal_in_doubt_since = job.renewal_sent_at;
  return r;
}

}  // namespace

Status Scheduler::begin_renewal(Job& job) {
  const JobWrite w{&job, nullptr, false};
  return std::move(write_all({&w, 1}).front());
}

Status Scheduler::postpone(Job& job, SysTime until) {
  TokenRecord next = keeping_doubt(job);
  if (job.refresh_due && next.next_refresh_due) next.next_refresh_due = until;
  if (job.check_due && next.next_check_due) next.next_check_due = until;
  next.updated_at = clock_.now();
  if (auto st = store_.save(next, nullptr, owner_, LeaseAction::kRelease); !st) return st;
  job.record = std::move(next);
  return Ok();
}

Status Scheduler::release(Job& job) {
  return store_.save(keeping_doubt(job), nullptr, owner_, LeaseAction::kRelease);
}

Result<std::vector<std::string>> Scheduler::extend(const std::vector<LeaseRef>& leases) {
  return store_.extend_leases(leases, owner_, clock_.now(), config_.lease);
}

}  // namespace tw
