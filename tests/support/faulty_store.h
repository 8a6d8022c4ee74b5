// FaultyStore: a TokenStore that forwards to a real one and fails on demand, for tests of what the
// worker does when the database is busy or the disk is full.
#pragma once

#include <algorithm>
#include <vector>

#include "storage/token_store.h"

namespace tw::testing {

class FaultyStore final : public TokenStore {
 public:
  explicit FaultyStore(TokenStore& inner) : inner_(inner) {}

  // The next `n` save() calls fail with `code` (kBusy: locked; kStorage: disk full, I/O error).
  void fail_saves(int n, Errc code = Errc::kBusy) {
    save_failures_ = n;
    save_code_ = code;
  }
  int saves_refused() const { return saves_refused_; }
  // Transactions of writes (write_batch) and claims (claim_due) seen so far.
  int write_batches() const { return write_batches_; }
  int claims() const { return claims_; }
  // The next `n` begin_renewal() calls fail with `code`.
  void fail_renewal_starts(int n, Errc code = Errc::kStorage) {
    renewal_start_failures_ = n;
    renewal_start_code_ = code;
  }
  // read_secrets() of this token fails as if its ciphertext did not decrypt.
  void fail_reads_for(std::string id) { unreadable_ = std::move(id); }

  Result<UpsertResult> upsert(const NewToken& t, const TokenSecrets& s, SysTime now,
                              const ScheduleFn& f) override {
    return inner_.upsert(t, s, now, f);
  }
  Result<std::vector<UpsertResult>> upsert_batch(std::span<const TokenImport> t, SysTime now,
                                                 const ScheduleFn& f) override {
    return inner_.upsert_batch(t, now, f);
  }
  Result<std::optional<TokenRecord>> find(std::string_view id) override { return inner_.find(id); }
  Result<std::vector<TokenRecord>> list(const ListFilter& f) override { return inner_.list(f); }
  Result<bool> remove(std::string_view id) override { return inner_.remove(id); }
  Result<int> schema_version() override { return inner_.schema_version(); }
  Result<std::vector<SealedToken>> read_sealed(std::string_view after, std::size_t n) override {
    return inner_.read_sealed(after, n);
  }
  Status write_sealed(std::span<const SealedToken> tokens) override {
    return inner_.write_sealed(tokens);
  }
  std::string describe() const override { return inner_.describe(); }
  Result<std::vector<StateCounts>> count_by_state() override { return inner_.count_by_state(); }
  Result<TokenSecrets> read_secrets(const TokenRecord& r) override {
    if (r.id == unreadable_) {
      return Error(Errc::kCorrupt, "cannot decrypt access_token of token " + r.id + " (injected)");
    }
    return inner_.read_secrets(r);
  }
  Result<std::optional<SysTime>> earliest_due(const ProviderSet& p) override {
    return inner_.earliest_due(p);
  }
  Status begin_renewal(const LeaseRef& lease, std::string_view owner, SysTime at) override {
    if (renewal_start_failures_ > 0) {
      --renewal_start_failures_;
      return Error(renewal_start_code_, "injected failure");
    }
    return inner_.begin_renewal(lease, owner, at);
  }
  Result<std::vector<TokenRecord>> needing_reauth(std::size_t limit) override {
    return inner_.needing_reauth(limit);
  }
  Result<std::vector<TokenRecord>> unnotified_reauth(std::size_t limit) override {
    return inner_.unnotified_reauth(limit);
  }
  Result<bool> mark_reauth_notified(std::string_view id, SysTime state_since) override {
    return inner_.mark_reauth_notified(id, state_since);
  }
  Result<std::optional<DueRef>> earliest_due_token(const ProviderSet& p) override {
    return inner_.earliest_due_token(p);
  }
  Result<std::vector<DueToken>> claim_due(SysTime now, std::size_t limit, std::string_view owner,
                                          Seconds lease, const ProviderSet& p) override {
    ++claims_;
    auto due = inner_.claim_due(now, limit, owner, lease, p);
    // As a real claim does with secrets that do not decrypt: they are left for read_secrets().
    if (due) {
      for (DueToken& d : *due) {
        if (d.record.id == unreadable_) d.secrets.reset();
      }
    }
    return due;
  }
  Result<TokenRecord> claim(std::string_view id, SysTime now, std::string_view owner,
                            Seconds lease) override {
    return inner_.claim(id, now, owner, lease);
  }
  Result<std::vector<std::string>> extend_leases(const std::vector<LeaseRef>& l,
                                                 std::string_view owner, SysTime now,
                                                 Seconds lease) override {
    return inner_.extend_leases(l, owner, now, lease);
  }
  Status save(const TokenRecord& r, const TokenSecrets* s, std::string_view owner,
              LeaseAction lease) override {
    if (save_failures_ > 0) {
      --save_failures_;
      ++saves_refused_;
      return Error(save_code_, "injected failure");
    }
    return inner_.save(r, s, owner, lease);
  }
  // A batch holding a save fails whole while saves are to fail, as a refused commit does; one
  // holding a renewal start, while renewal starts are.
  std::vector<Status> write_batch(std::span<const StoreWrite> writes,
                                  std::string_view owner) override {
    ++write_batches_;
    auto holds = [&](StoreWrite::Kind kind) {
      return std::any_of(writes.begin(), writes.end(),
                         [kind](const StoreWrite& w) { return w.kind == kind; });
    };
    if (holds(StoreWrite::Kind::kSave) && save_failures_ > 0) {
      --save_failures_;
      ++saves_refused_;
      return std::vector<Status>(writes.size(), Error(save_code_, "injected failure"));
    }
    if (holds(StoreWrite::Kind::kBeginRenewal) && renewal_start_failures_ > 0) {
      --renewal_start_failures_;
      return std::vector<Status>(writes.size(), Error(renewal_start_code_, "injected failure"));
    }
    return inner_.write_batch(writes, owner);
  }
  Result<std::size_t> pull_in_checks(Provider p, SysTime now, Seconds period) override {
    return inner_.pull_in_checks(p, now, period);
  }
  Result<std::size_t> rekey(std::size_t batch,
                            const std::function<void(std::size_t)>& progress) override {
    return inner_.rekey(batch, progress);
  }
  Result<std::size_t> count_sealed_with_old_keys() override {
    return inner_.count_sealed_with_old_keys();
  }
  Status append_audit(std::span<const AuditEntry> entries) override {
    return inner_.append_audit(entries);
  }
  Result<std::vector<AuditRow>> read_audit(std::int64_t after_seq, std::size_t limit,
                                           std::string_view token_id) override {
    return inner_.read_audit(after_seq, limit, token_id);
  }
  Result<AuditAnchor> audit_anchor() override { return inner_.audit_anchor(); }
  Result<std::size_t> prune_audit(SysTime before, std::size_t max_rows, SysTime now,
                                  std::string_view actor) override {
    return inner_.prune_audit(before, max_rows, now, actor);
  }

 private:
  TokenStore& inner_;
  int save_failures_ = 0;
  Errc save_code_ = Errc::kBusy;
  int saves_refused_ = 0;
  int write_batches_ = 0;
  int claims_ = 0;
  int renewal_start_failures_ = 0;
  Errc renewal_start_code_ = Errc::kStorage;
  std::string unreadable_;
};

}  // namespace tw::testing
