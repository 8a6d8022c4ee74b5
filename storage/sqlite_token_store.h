// SqliteTokenStore: the TokenStore on one SQLite file (SQLiteCpp).
//
// Thread-safety: as TokenStore: one instance per thread; many processes may share the file.
// The file is created with mode 0600 (SQLite gives its -wal and -shm files the same mode), opened
// in WAL mode with synchronous=FULL, so a committed transaction survives a power cut, and
// secure_delete, so overwritten ciphertext does not linger in free pages. Writers take the lock
// up front (BEGIN IMMEDIATE) and wait up to the busy timeout for each other.
// The schema is versioned with PRAGMA user_version and migrated forward on open; a database from
// a newer tokenwarden is refused rather than touched.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "config/config.h"
#include "core/result.h"
#include "core/time.h"
#include "storage/crypto.h"
#include "storage/token_store.h"

namespace SQLite {
class Database;
}

namespace tw {

class SqliteTokenStore final : public TokenStore {
 public:
  // The schema version this build writes.
  static int latest_schema_version();
  // The SQL that migrates a database from `from_version` to the next (for migration tests).
  static std::string_view migration_sql(int from_version);

  // Opens and migrates the database at `path`, creating it (mode 0600) when `mode` allows. Fails
  // with a message naming the path when the directory or (kExisting) the file is missing, the
  // file is readable by group or others, is not a database, or its schema is newer than this
  // build's. `vfs` names a registered SQLite VFS (tests inject storage faults through one);
  // empty is SQLite's default.
  static Result<std::unique_ptr<SqliteTokenStore>> open(const std::string& path,
                                                        Millis busy_timeout, Cipher cipher,
                                                        OpenMode mode = OpenMode::kCreate,
                                                        const std::string& vfs = {});
  ~SqliteTokenStore() override;

  Result<UpsertResult> upsert(const NewToken& token, const TokenSecrets& secrets, SysTime now,
                              const ScheduleFn& schedule) override;
  Result<std::vector<UpsertResult>> upsert_batch(std::span<const TokenImport> tokens, SysTime now,
                                                 const ScheduleFn& schedule) override;
  Result<std::optional<TokenRecord>> find(std::string_view id) override;
  Result<std::vector<TokenRecord>> list(const ListFilter& filter) override;
  Result<bool> remove(std::string_view id) override;
  Result<std::vector<StateCounts>> count_by_state() override;
  Result<std::vector<TokenRecord>> needing_reauth(std::size_t limit) override;
  std::vector<Status> write_batch(std::span<const StoreWrite> writes,
                                  std::string_view owner) override;
  Result<std::vector<TokenRecord>> unnotified_reauth(std::size_t limit) override;
  Result<bool> mark_reauth_notified(std::string_view id, SysTime state_since) override;
  Result<std::size_t> pull_in_checks(Provider provider, SysTime now, Seconds period) override;
  Result<TokenSecrets> read_secrets(const TokenRecord& record) override;
  Result<std::optional<DueRef>> earliest_due_token(const ProviderSet& providers) override;
  Result<std::vector<DueToken>> claim_due(SysTime now, std::size_t limit, std::string_view owner,
                                          Seconds lease, const ProviderSet& providers) override;
  Result<TokenRecord> claim(std::string_view id, SysTime now, std::string_view owner,
                            Seconds lease) override;
  Result<std::vector<std::string>> extend_leases(const std::vector<LeaseRef>& leases,
                                                 std::string_view owner, SysTime now,
                                                 Seconds lease) override;
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
  // EXPLAIN QUERY PLAN of the statements behind earliest_due() and claim_due(), one line per
  // step, so a test can prove they use the indexes.
  Result<std::string> explain_schedule_queries();

 private:
  SqliteTokenStore(std::unique_ptr<SQLite::Database> db, Cipher cipher, std::string path);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tw
