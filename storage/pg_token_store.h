// PgTokenStore: the TokenStore on a PostgreSQL database (libpqxx), shared by any number of
// tokenwarden processes on any number of hosts.
//
// Thread-safety: as TokenStore: one instance (one connection) per thread.
//
// Sharing the work needs no coordinator of our own. claim_due() locks due rows with
// SELECT ... FOR UPDATE SKIP LOCKED, so concurrent claimers take disjoint tokens and never wait
// for each other; each claim is a lease (owner, expiry, fencing generation) written in the same
// transaction, and a token whose owner died comes due again at its lease expiry, for anyone.
// Every write of a result is fenced on (owner, generation) in its UPDATE's WHERE clause, so a
// worker whose lease was taken over cannot overwrite the newer owner's work.
//
// Durability: every transaction commits with synchronous_commit on (set for the session unless
// the server's default is on or remote_apply), so a rotated refresh token is on the server's
// disk, and on its synchronous standbys if it has any, before anything uses it. The same schema and
// migrations as SQLite, versioned in the table tokenwarden_schema and applied under an advisory
// lock; a database from a newer tokenwarden is refused. Times are Unix seconds (BIGINT), secrets
// are the same AES-256-GCM envelopes as SQLite's (BYTEA): the server never sees a plaintext secret.
//
// Failures are values, as TokenStore's: a lock or statement timeout, a serialization failure or
// a deadlock is Errc::kBusy (retry later); a lost connection is Errc::kStorage, and the next call
// connects again.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "core/result.h"
#include "core/time.h"
#include "storage/crypto.h"
#include "storage/token_store.h"

namespace tw {

struct PgOptions {
  // A libpq connection string, keyword=value ("host=db1 dbname=tokenwarden sslmode=verify-full")
  // or a URI. TLS and every other libpq option pass through as they are. Never logged.
  std::string dsn;
  Millis lock_timeout = std::chrono::seconds(5);        // wait this long for a row lock
  Millis statement_timeout = std::chrono::seconds(30);  // give up on a statement after this
  // Instances on several hosts compare lease expiries and due times written by each other's
  // clocks: open() refuses a host whose clock differs from the server's by more than this.
  Seconds max_clock_skew = std::chrono::seconds(30);
  // This host's clock (tests inject a skewed one).
  std::function<SysTime()> clock = [] {
    return std::chrono::time_point_cast<Seconds>(std::chrono::system_clock::now());
  };
};

class PgTokenStore final : public TokenStore {
 public:
  static int latest_schema_version();
  // The SQL that migrates a database from `from_version` to the next (for migration tests).
  static std::string_view migration_sql(int from_version);

  // Connects and migrates the schema (creating it when `mode` allows; kExisting fails with
  // Errc::kNotFound on a database without one), then compares this host's clock with the
  // server's (see max_clock_skew). Fails with a message that names the server but never the
  // DSN's password.
  static Result<std::unique_ptr<PgTokenStore>> open(const PgOptions& options, Cipher cipher,
                                                    OpenMode mode = OpenMode::kCreate);
  ~PgTokenStore() override;

  Result<UpsertResult> upsert(const NewToken& token, const TokenSecrets& secrets, SysTime now,
                              const ScheduleFn& schedule) override;
  Result<std::vector<UpsertResult>> upsert_batch(std::span<const TokenImport> tokens, SysTime now,
                                                 const ScheduleFn& schedule) override;
  Result<std::optional<TokenRecord>> find(std::string_view id) override;
  Result<std::vector<TokenRecord>> list(const ListFilter& filter) override;
  Result<bool> remove(std::string_view id) override;
  Result<std::vector<StateCounts>> count_by_state() override;
  Result<std::vector<TokenRecord>> needing_reauth(std::size_t limit) override;
  Result<std::vector<TokenRecord>> unnotified_reauth(std::size_t limit) override;
  Result<bool> mark_reauth_notified(std::string_view id, SysTime state_since) override;
  Result<TokenSecrets> read_secrets(const TokenRecord& record) override;
  Result<std::optional<DueRef>> earliest_due_token(const ProviderSet& providers) override;
  Result<std::vector<DueToken>> claim_due(SysTime now, std::size_t limit, std::string_view owner,
                                          Seconds lease, const ProviderSet& providers) override;
  Result<TokenRecord> claim(std::string_view id, SysTime now, std::string_view owner,
                            Seconds lease) override;
  Result<std::vector<std::string>> extend_leases(const std::vector<LeaseRef>& leases,
                                                 std::string_view owner, SysTime now,
                                                 Seconds lease) override;
  std::vector<Status> write_batch(std::span<const StoreWrite> writes,
                                  std::string_view owner) override;
  Result<std::size_t> pull_in_checks(Provider provider, SysTime now, Seconds period) override;
  Result<std::size_t> rekey(std::size_t batch,
                            const std::function<void(std::size_t)>& progress) override;
  Result<std::size_t> count_sealed_with_old_keys() override;
  Status append_audit(std::span<const AuditEntry> entries) override;
  Result<std::vector<AuditRow>> read_audit(std::int64_t after_seq, std::size_t limit,
                                           std::string_view token_id) override;
  Result<AuditAnchor> audit_anchor() override;
  Result<std::size_t> prune_audit(SysTime before, std::size_t max_rows, SysTime now,
                                  std::string_view actor) override;
  Result<std::vector<SealedToken>> read_sealed(std::string_view after_id,
                                               std::size_t limit) override;
  Status write_sealed(std::span<const SealedToken> tokens) override;
  Result<int> schema_version() override;
  std::string describe() const override;

  // EXPLAIN of the statements behind earliest_due() and claim_due(), so a test can prove that
  // they use the due indexes.
  Result<std::string> explain_schedule_queries();

 private:
  struct Impl;
  explicit PgTokenStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tw
