// TokenStore: the tokens, their encrypted secrets, and the schedule.
//
// Thread-safety: an instance belongs to one thread (the event loop, or one CLI command). Several
// processes may open the same database at once; every write is one transaction, and the lease
// columns keep one refresh per token at a time across them.
//
// The database is the schedule: each token carries next_refresh_due and next_check_due, both
// indexed, so "when is the next thing due" and "what is due now" cost O(log n). A token whose
// state is not scheduled (needs_reauth, revoked, disabled) has neither.
//
// Secrets are sealed by the store's Cipher bound to (token id, field) and are decrypted only by
// read_secrets(); every other call sees TokenRecords, which hold nothing secret.
//
// Failures are values: Errc::kBusy when the database stayed locked past the busy timeout (retry
// later), Errc::kCorrupt when a secret does not decrypt (naming the token), Errc::kLeaseLost when
// another worker owns the token, Errc::kStorage for anything else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"
#include "core/time.h"
#include "core/token.h"
#include "storage/audit.h"
#include "storage/crypto.h"

namespace tw {

// What `add` knows about a token. Everything else is the store's or the scheduler's.
struct NewToken {
  Provider provider = Provider::kMeta;
  TokenKind kind = TokenKind::kPageToken;
  std::string workspace_id;
  std::string account_id;
  std::string scopes;
  std::optional<SysTime> expires_at;
  std::optional<SysTime> refresh_expires_at;
};

// One token of a batch import: what `add` knows, with its secrets.
struct TokenImport {
  NewToken token;
  TokenSecrets secrets;
};

struct UpsertResult {
  TokenRecord record;
  bool created = false;  // false: an existing (provider, account) token was reconnected
};

struct ListFilter {
  std::optional<Provider> provider;
  std::optional<TokenState> state;
  std::optional<std::string> workspace_id;
};

// A token claimed by claim_due(), with what was due.
struct DueToken {
  TokenRecord record;  // as it was before the claim (its due times are the original ones)
  bool refresh_due = false;
  bool check_due = false;
  // Its secrets, read in the claim's transaction, so the first step needs no read of its own;
  // absent when one does not decrypt (read_secrets() then says why).
  std::optional<TokenSecrets> secrets;
};

struct StateCounts {
  Provider provider;
  TokenState state;
  std::size_t count;
};

// Which providers a worker serves.
using ProviderSet = std::vector<Provider>;
// The built-in providers (a daemon serves these and the generic ones it is configured with).
inline const ProviderSet kAllProviders{Provider::kMeta, Provider::kGoogle, Provider::kTikTok};

// A token's earliest due time.
struct DueRef {
  std::string id;
  SysTime due{};
};

// A lease as its holder knows it.
struct LeaseRef {
  std::string id;
  std::int64_t generation = 0;
};

// Whether save() ends the lease or keeps it for a further operation on the same token.
enum class LeaseAction { kKeep, kRelease };

// One write of a batch (TokenStore::write_batch): a save() or a begin_renewal(). Pointers are
// borrowed for the call.
struct StoreWrite {
  enum class Kind { kSave, kBeginRenewal };
  Kind kind = Kind::kSave;
  const TokenRecord* record = nullptr;               // kSave: what to write, under record's lease
  const TokenSecrets* new_secrets = nullptr;         // kSave: as save()'s
  LeaseAction lease_action = LeaseAction::kRelease;  // kSave
  LeaseRef lease;                                    // kBeginRenewal: the lease held
  SysTime at{};                                      // kBeginRenewal: when it goes out
};

// A token as stored, secrets still sealed: what `tokenwarden migrate` copies from one store to
// another without ever decrypting (the envelopes are bound to the token id and field, which the
// copy keeps, not to the store).
struct SealedToken {
  TokenRecord record;
  std::optional<Blob> access_token;
  std::optional<Blob> refresh_token;
  std::optional<SysTime> reauth_notified_since;
};

// Whether opening a store may create it (its file, or its schema).
enum class OpenMode {
  kCreate,    // create it if missing (adding tokens, the daemon)
  kExisting,  // fail when missing (commands that only read or change existing tokens)
};

// Sets the due times of a record that is about to be written.
using ScheduleFn = std::function<void(TokenRecord&)>;

class TokenStore {
 public:
  virtual ~TokenStore() = default;

  // Adds a token, or reconnects the existing token with the same (provider, account_id): its
  // secrets, kind, workspace and expiry are replaced, its failure state cleared and its state set
  // to active (a disabled token stays disabled), and any lease on it is fenced out.
  // `schedule` sees the complete record (id assigned) and sets its due times; all of it is
  // committed in one transaction. A secret that is empty is stored as absent.
  virtual Result<UpsertResult> upsert(const NewToken& token, const TokenSecrets& secrets,
                                      SysTime now, const ScheduleFn& schedule) = 0;
  // upsert() of every token in `tokens`, in order, in one transaction and one durable commit:
  // all of them are stored or, on failure, none. A later entry for the same (provider,
  // account_id) reconnects the earlier one. Results are in the order of `tokens`.
  virtual Result<std::vector<UpsertResult>> upsert_batch(std::span<const TokenImport> tokens,
                                                         SysTime now,
                                                         const ScheduleFn& schedule) = 0;

  // The token with this id, or nullopt.
  virtual Result<std::optional<TokenRecord>> find(std::string_view id) = 0;
  // Tokens matching `filter`, ordered by provider, workspace, account.
  virtual Result<std::vector<TokenRecord>> list(const ListFilter& filter) = 0;
  // Deletes a token; false when there was none.
  virtual Result<bool> remove(std::string_view id) = 0;
  // Token counts by provider and state (states with no tokens are absent).
  virtual Result<std::vector<StateCounts>> count_by_state() = 0;

  // Tokens in needs_reauth or revoked, longest waiting first, at most `limit` (read through an
  // index on those states only: cheap however many tokens are active).
  virtual Result<std::vector<TokenRecord>> needing_reauth(std::size_t limit) = 0;
  // The same, restricted to those whose current state the operator has not been notified of.
  virtual Result<std::vector<TokenRecord>> unnotified_reauth(std::size_t limit) = 0;
  // Records that the notice for `id` in its state since `state_since` is done. False when the
  // token has moved on since (reconnected, removed, or another state): nothing is written.
  virtual Result<bool> mark_reauth_notified(std::string_view id, SysTime state_since) = 0;

  // Decrypts the token's secrets. Errc::kCorrupt names the token when one does not decrypt.
  virtual Result<TokenSecrets> read_secrets(const TokenRecord& record) = 0;

  // The earliest next_refresh_due or next_check_due over the tokens of `providers`, or nullopt
  // when nothing is scheduled. Claimed tokens count at their lease expiry.
  // (By default, earliest_due_token()'s time.)
  virtual Result<std::optional<SysTime>> earliest_due(const ProviderSet& providers) {
    auto due = earliest_due_token(providers);
    if (!due) return due.error();
    return *due ? std::optional<SysTime>((*due)->due) : std::nullopt;
  }
  // The same, with the token it belongs to.
  virtual Result<std::optional<DueRef>> earliest_due_token(const ProviderSet& providers) = 0;

  // Claims up to `limit` tokens of `providers` whose refresh or check is due at `now`, earliest
  // first, for `owner` until now + lease, each under a new lease generation. A claimed token's due
  // times that were reached move to the lease expiry, so no other worker sees it due, and it comes
  // due again by itself if the owner dies. A token under anyone's unexpired lease is not claimed;
  // its due times move to that lease's expiry.
  virtual Result<std::vector<DueToken>> claim_due(SysTime now, std::size_t limit,
                                                  std::string_view owner, Seconds lease,
                                                  const ProviderSet& providers) = 0;

  // Claims one token for `owner` whatever its due times (a forced refresh or check from the CLI).
  // Fails with Errc::kLeaseLost while anyone holds an unexpired lease on it. Every claim
  // increments the token's lease generation (its fencing token).
  virtual Result<TokenRecord> claim(std::string_view id, SysTime now, std::string_view owner,
                                    Seconds lease) = 0;

  // Extends the leases `owner` still holds at these generations to now + lease, so a slow
  // provider never lets a second worker in. Returns the ids whose lease was lost (reconnected,
  // removed, or taken over after it expired): their work must be dropped.
  virtual Result<std::vector<std::string>> extend_leases(const std::vector<LeaseRef>& leases,
                                                         std::string_view owner, SysTime now,
                                                         Seconds lease) = 0;

  // Writes the record's kind, workspace, scopes, expiry, state, schedule, error and timestamp
  // fields, and, when `new_secrets` is given, its non-empty secrets (an empty one never overwrites
  // a stored secret); then releases the lease or keeps it: one durable transaction. Fails with
  // Errc::kLeaseLost, writing nothing, unless `owner` holds the lease at record.lease_generation (a
  // newer claim or a reconnect by `add` fences it out).
  // (By default, a write_batch() of this one write.)
  virtual Status save(const TokenRecord& record, const TokenSecrets* new_secrets,
                      std::string_view owner, LeaseAction lease) {
    StoreWrite w;
    w.record = &record;
    w.new_secrets = new_secrets;
    w.lease_action = lease;
    return std::move(write_batch({&w, 1}, owner).front());
  }
  // Durably records, before a renewal request goes out, that its result is not known yet: sets
  // renewal_in_doubt_since to `at` unless an earlier attempt is still in doubt (then it keeps that
  // time). save() writes the field back from the record once the result is known. Fails with
  // Errc::kLeaseLost, writing nothing, unless `owner` holds `lease`; the request must then not go
  // out, nor on any other failure.
  // (By default, a write_batch() of this one write.)
  virtual Status begin_renewal(const LeaseRef& lease, std::string_view owner, SysTime at) {
    StoreWrite w;
    w.kind = StoreWrite::Kind::kBeginRenewal;
    w.lease = lease;
    w.at = at;
    return std::move(write_batch({&w, 1}, owner).front());
  }

  // Each write as save() or begin_renewal() would do it, all in one transaction and one durable
  // commit (a sweep of many tokens costs one fsync per batch, not per token). Returns one Status
  // per write, in order. A write whose lease is lost fails alone (Errc::kLeaseLost, or kNotFound
  // when the token was removed), writing nothing; when the transaction itself fails (busy, I/O,
  // disk full), every write fails with that error and nothing is stored.
  virtual std::vector<Status> write_batch(std::span<const StoreWrite> writes,
                                          std::string_view owner) = 0;

  // After the wall clock stepped back: moves the check of every healthy token of `provider` (no
  // failure on record) due later than now + `period` back by whole periods into
  // (now, now + period], keeping its time slot, so no check waits out the step. A failing
  // token keeps its backoff or Retry-After. Idempotent (every process that sees the step may
  // call it); leases and renewal times are left alone. Returns how many tokens moved.
  virtual Result<std::size_t> pull_in_checks(Provider provider, SysTime now, Seconds period) = 0;

  // Re-encrypts every secret sealed with a key other than the current one, with the current key,
  // `batch` tokens per transaction (short locks: live daemons keep working), in id order; after
  // each batch, calls `progress` (if set) with the tokens rewritten so far. Returns how many were
  // rewritten. Resumable: a crash loses at most the batch in flight, whose rows keep their old,
  // still readable envelopes, and the next run skips every row already under the current key.
  // Stops at the first secret that does not decrypt.
  virtual Result<std::size_t> rekey(std::size_t batch = 500,
                                    const std::function<void(std::size_t)>& progress = {}) = 0;
  // Tokens with a secret still sealed with a key other than the current one: 0 means an old key
  // can be retired.
  virtual Result<std::size_t> count_sealed_with_old_keys() = 0;

  // Up to `limit` tokens with ids greater than `after_id`, in id order, secrets sealed as stored.
  virtual Result<std::vector<SealedToken>> read_sealed(std::string_view after_id,
                                                       std::size_t limit) = 0;
  // Inserts `tokens` exactly as given (ids, schedule, state, sealed secrets; leases left out), in
  // one transaction: all or, when any id or (provider, account_id) is already stored, none.
  virtual Status write_sealed(std::span<const SealedToken> tokens) = 0;

  // The audit trail (storage/audit.h). Appends `entries` in order, numbered and chained after
  // the last row, in one transaction of their own (all or none). Concurrent appenders, in this
  // or other processes, are serialised.
  virtual Status append_audit(std::span<const AuditEntry> entries) = 0;
  // Up to `limit` rows with seq > `after_seq`, in seq order; only `token_id`'s when non-empty.
  virtual Result<std::vector<AuditRow>> read_audit(std::int64_t after_seq, std::size_t limit,
                                                   std::string_view token_id) = 0;
  // Where the chain starts (the last pruned row).
  virtual Result<AuditAnchor> audit_anchor() = 0;
  // Deletes, in one transaction, up to `max_rows` of the oldest rows, stopping at the first row
  // written at or after `before` (so a clock that ran behind never deletes newer rows) and never
  // deleting the newest row; moves the anchor to the last one deleted; and appends a "prune" row
  // by `actor` at `now` that names the new anchor (audit_prune_detail). Returns how many rows
  // were deleted; fewer than `max_rows` means nothing more is old enough.
  virtual Result<std::size_t> prune_audit(SysTime before, std::size_t max_rows, SysTime now,
                                          std::string_view actor) = 0;

  // The schema version of the database.
  virtual Result<int> schema_version() = 0;
  // Where the tokens are, for messages and logs: "SQLite database PATH" or "PostgreSQL host=...
  // dbname=..." (never a password).
  virtual std::string describe() const = 0;
};

}  // namespace tw
