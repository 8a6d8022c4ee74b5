#include "scheduler/scheduler.h"

namespace tw {

Scheduler::Scheduler(TokenStore& store, const Policy& policy, const Clock& clock,
                     SchedulerConfig config, std::string owner)
    : store_(store), policy_(policy), clock_(clock), config_(config), owner_(std::move(owner)) {}

Result<std::optional<SysTime>> Scheduler::next_wake() {
  return store_.earliest_due();
}

Result<std::vector<Job>> Scheduler::claim_due() {
  auto due = store_.claim_due(clock_.now(), static_cast<std::size_t>(config_.batch_size), owner_,
                              config_.lease);
  if (!due) return due.error();
  std::vector<Job> jobs;
  jobs.reserve(due->size());
  for (DueToken& d : *due)
    jobs.push_back(Job{std::move(d.record), d.refresh_due, d.check_due});
  return jobs;
}

Result<Job> Scheduler::claim(std::string_view id) {
  auto r = store_.claim(id, clock_.now(), owner_, config_.lease);
  if (!r) return r.error();
  const bool renewable = Policy::renewable(*r);
  return Job{std::move(*r), renewable, true};
}

Status Scheduler::record(Job& job, Outcome outcome, bool last) {
  const SysTime now = clock_.now();
  TokenRecord next = job.record;
  const TokenSecrets* secrets = nullptr;
  if (outcome.ok) {
    if (outcome.expires_at) next.expires_at = outcome.expires_at;
    if (outcome.refresh_expires_at) next.refresh_expires_at = outcome.refresh_expires_at;
    if (outcome.scopes) next.scopes = *outcome.scopes;
    if (outcome.secrets) {
      // Keep a stored secret the provider did not send again (Google rarely returns a refresh
      // token; Meta has none).
      auto stored = outcome.secrets->access_token.empty() || outcome.secrets->refresh_token.empty()
                        ? store_.read_secrets(job.record)
                        : Result<TokenSecrets>(TokenSecrets{});
      if (!stored) return stored.error();
      if (outcome.secrets->access_token.empty()) {
        outcome.secrets->access_token = std::move(stored->access_token);
      }
      if (outcome.secrets->refresh_token.empty()) {
        outcome.secrets->refresh_token = std::move(stored->refresh_token);
      }
      next.has_access_token = !outcome.secrets->access_token.empty();
      next.has_refresh_token = !outcome.secrets->refresh_token.empty();
      secrets = &*outcome.secrets;
    }
    if (outcome.op == Operation::kRefresh) {
      policy_.on_refresh_success(next, now);
    } else {
      policy_.on_check_success(next, now);
    }
  } else {
    policy_.on_failure(next, outcome.op, outcome.failure, now);
  }
  if (auto st =
          store_.save(next, secrets, owner_, last ? LeaseAction::kRelease : LeaseAction::kKeep);
      !st) {
    return st;
  }
  job.record = std::move(next);
  return Ok();
}

}  // namespace tw
