#include "storage/sqlite_token_store.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <filesystem>
#include <map>
#include <span>
#include <system_error>
#include <unordered_map>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Exception.h>
#include <SQLiteCpp/Statement.h>
#include <SQLiteCpp/Transaction.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fs.h"
#include "storage/store_common.h"

namespace tw {

using namespace store_detail;

namespace {

// Forward migrations: entry i takes the schema from version i to i + 1. Never edit a shipped
// entry; append a new one.
constexpr std::array<const char*, 7> kMigrations{{
    // 0 -> 1: tokens, with the schedule in two indexed columns.
    R"sql(
CREATE TABLE tokens (
  id                   TEXT PRIMARY KEY,
  provider             TEXT NOT NULL CHECK (provider IN ('meta', 'google', 'tiktok')),
  kind                 TEXT NOT NULL CHECK (kind IN ('page_token', 'user_token', 'refresh_token',
                                          'business_token', 'client_credentials', 'api_key')),
  workspace_id         TEXT NOT NULL,
  account_id           TEXT NOT NULL,
  scopes               TEXT NOT NULL DEFAULT '',
  access_token         BLOB,
  refresh_token        BLOB,
  expires_at           INTEGER,
  refresh_expires_at   INTEGER,
  next_refresh_due     INTEGER,
  next_check_due       INTEGER,
  state                TEXT NOT NULL CHECK (state IN ('active', 'failing', 'needs_reauth',
                                                      'revoked', 'disabled')),
  state_since          INTEGER NOT NULL,
  consecutive_failures INTEGER NOT NULL DEFAULT 0,
  last_error_class     TEXT NOT NULL DEFAULT 'none',
  last_error_operation TEXT NOT NULL DEFAULT '' CHECK (last_error_operation IN ('', 'refresh',
                                                                               'check')),
  last_error_message   TEXT NOT NULL DEFAULT '',
  last_error_at        INTEGER,
  last_refreshed_at    INTEGER,
  last_checked_at      INTEGER,
  connected_at         INTEGER NOT NULL,
  created_at           INTEGER NOT NULL,
  updated_at           INTEGER NOT NULL,
  lease_owner          TEXT,
  lease_until          INTEGER,
  UNIQUE (provider, account_id)
) STRICT;
CREATE INDEX tokens_refresh_due ON tokens (next_refresh_due) WHERE next_refresh_due IS NOT NULL;
CREATE INDEX tokens_check_due ON tokens (next_check_due) WHERE next_check_due IS NOT NULL;
CREATE INDEX tokens_workspace ON tokens (workspace_id);
)sql",
    // 1 -> 2: a fencing token for leases; due indexes per provider, so a worker that serves
    // some providers finds their due tokens without stepping over the others'.
    R"sql(
ALTER TABLE tokens ADD COLUMN lease_generation INTEGER NOT NULL DEFAULT 0;
DROP INDEX tokens_refresh_due;
DROP INDEX tokens_check_due;
CREATE INDEX tokens_refresh_due ON tokens (provider, next_refresh_due)
  WHERE next_refresh_due IS NOT NULL;
CREATE INDEX tokens_check_due ON tokens (provider, next_check_due)
  WHERE next_check_due IS NOT NULL;
)sql",
    // 2 -> 3: which needs_reauth / revoked state the operator was notified of (its
    // state_since), so a notice survives restarts and reaches the operator whichever process
    // found the problem. Tokens already in such a state are notified once after the upgrade.
    R"sql(
ALTER TABLE tokens ADD COLUMN reauth_notified_since INTEGER;
CREATE INDEX tokens_reauth_unnotified ON tokens (state_since)
  WHERE state IN ('needs_reauth', 'revoked');
)sql",
    // 3 -> 4: when a renewal went out whose result is not known yet (TokenRecord::
    // renewal_in_doubt_since): written before the request, so it survives a crash.
    R"sql(
ALTER TABLE tokens ADD COLUMN renewal_in_doubt_since INTEGER;
)sql",
    // 4 -> 5: token counts by provider and state, kept by triggers in the writing transaction,
    // so the status file reads a handful of rows instead of scanning every token (a full scan
    // takes about a second at a million tokens, on the loop thread).
    R"sql(
CREATE TABLE token_counts (
  provider TEXT NOT NULL,
  state    TEXT NOT NULL,
  n        INTEGER NOT NULL,
  PRIMARY KEY (provider, state)
) STRICT, WITHOUT ROWID;
INSERT INTO token_counts SELECT provider, state, COUNT(*) FROM tokens GROUP BY provider, state;
CREATE TRIGGER tokens_count_insert AFTER INSERT ON tokens BEGIN
  INSERT INTO token_counts VALUES (NEW.provider, NEW.state, 1)
    ON CONFLICT (provider, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tokens_count_delete AFTER DELETE ON tokens BEGIN
  UPDATE token_counts SET n = n - 1 WHERE provider = OLD.provider AND state = OLD.state;
END;
CREATE TRIGGER tokens_count_update AFTER UPDATE OF provider, state ON tokens
  WHEN OLD.provider IS NOT NEW.provider OR OLD.state IS NOT NEW.state BEGIN
  UPDATE token_counts SET n = n - 1 WHERE provider = OLD.provider AND state = OLD.state;
  INSERT INTO token_counts VALUES (NEW.provider, NEW.state, 1)
    ON CONFLICT (provider, state) DO UPDATE SET n = n + 1;
END;
)sql",
    // 5 -> 6: providers defined in the configuration: the provider column takes any valid
    // provider name (core/token.h) instead of the three built-in ones. SQLite cannot alter a
    // CHECK constraint, so the table is rebuilt (SQLite's documented 12-step procedure; there
    // are no foreign keys), then its indexes and triggers are made again. The counts table is
    // unchanged: the rows are the same.
    R"sql(
CREATE TABLE tokens_v6 (
  id                   TEXT PRIMARY KEY,
  provider             TEXT NOT NULL CHECK (length(provider) BETWEEN 1 AND 32 AND
                                            provider GLOB '[a-z]*' AND
                                            provider NOT GLOB '*[^a-z0-9_-]*'),
  kind                 TEXT NOT NULL CHECK (kind IN ('page_token', 'user_token', 'refresh_token',
                                          'business_token', 'client_credentials', 'api_key')),
  workspace_id         TEXT NOT NULL,
  account_id           TEXT NOT NULL,
  scopes               TEXT NOT NULL DEFAULT '',
  access_token         BLOB,
  refresh_token        BLOB,
  expires_at           INTEGER,
  refresh_expires_at   INTEGER,
  next_refresh_due     INTEGER,
  next_check_due       INTEGER,
  state                TEXT NOT NULL CHECK (state IN ('active', 'failing', 'needs_reauth',
                                                      'revoked', 'disabled')),
  state_since          INTEGER NOT NULL,
  consecutive_failures INTEGER NOT NULL DEFAULT 0,
  last_error_class     TEXT NOT NULL DEFAULT 'none',
  last_error_operation TEXT NOT NULL DEFAULT '' CHECK (last_error_operation IN ('', 'refresh',
                                                                               'check')),
  last_error_message   TEXT NOT NULL DEFAULT '',
  last_error_at        INTEGER,
  last_refreshed_at    INTEGER,
  last_checked_at      INTEGER,
  connected_at         INTEGER NOT NULL,
  created_at           INTEGER NOT NULL,
  updated_at           INTEGER NOT NULL,
  lease_owner          TEXT,
  lease_until          INTEGER,
  lease_generation     INTEGER NOT NULL DEFAULT 0,
  reauth_notified_since INTEGER,
  renewal_in_doubt_since INTEGER,
  UNIQUE (provider, account_id)
) STRICT;
INSERT INTO tokens_v6 (id, provider, kind, workspace_id, account_id, scopes, access_token,
  refresh_token, expires_at, refresh_expires_at, next_refresh_due, next_check_due, state,
  state_since, consecutive_failures, last_error_class, last_error_operation, last_error_message,
  last_error_at, last_refreshed_at, last_checked_at, connected_at, created_at, updated_at,
  lease_owner, lease_until, lease_generation, reauth_notified_since, renewal_in_doubt_since)
SELECT id, provider, kind, workspace_id, account_id, scopes, access_token,
  refresh_token, expires_at, refresh_expires_at, next_refresh_due, next_check_due, state,
  state_since, consecutive_failures, last_error_class, last_error_operation, last_error_message,
  last_error_at, last_refreshed_at, last_checked_at, connected_at, created_at, updated_at,
  lease_owner, lease_until, lease_generation, reauth_notified_since, renewal_in_doubt_since
FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_v6 RENAME TO tokens;
CREATE INDEX tokens_workspace ON tokens (workspace_id);
CREATE INDEX tokens_refresh_due ON tokens (provider, next_refresh_due)
  WHERE next_refresh_due IS NOT NULL;
CREATE INDEX tokens_check_due ON tokens (provider, next_check_due)
  WHERE next_check_due IS NOT NULL;
CREATE INDEX tokens_reauth_unnotified ON tokens (state_since)
  WHERE state IN ('needs_reauth', 'revoked');
CREATE TRIGGER tokens_count_insert AFTER INSERT ON tokens BEGIN
  INSERT INTO token_counts VALUES (NEW.provider, NEW.state, 1)
    ON CONFLICT (provider, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tokens_count_delete AFTER DELETE ON tokens BEGIN
  UPDATE token_counts SET n = n - 1 WHERE provider = OLD.provider AND state = OLD.state;
END;
CREATE TRIGGER tokens_count_update AFTER UPDATE OF provider, state ON tokens
  WHEN OLD.provider IS NOT NEW.provider OR OLD.state IS NOT NEW.state BEGIN
  UPDATE token_counts SET n = n - 1 WHERE provider = OLD.provider AND state = OLD.state;
  INSERT INTO token_counts VALUES (NEW.provider, NEW.state, 1)
    ON CONFLICT (provider, state) DO UPDATE SET n = n + 1;
END;
)sql",
    // 6 -> 7: the audit trail (storage/audit.h): rows numbered without gaps and hash-chained,
    // never updated (a trigger refuses it); pruning moves the anchor the chain starts from.
    R"sql(
CREATE TABLE audit (
  seq       INTEGER PRIMARY KEY,
  at        INTEGER NOT NULL,
  actor     TEXT NOT NULL,
  action    TEXT NOT NULL,
  token_id  TEXT NOT NULL,
  outcome   TEXT NOT NULL,
  detail    TEXT NOT NULL,
  prev_hash BLOB NOT NULL,
  hash      BLOB NOT NULL
) STRICT;
CREATE INDEX audit_token ON audit (token_id, seq) WHERE token_id != '';
CREATE INDEX audit_at ON audit (at);
CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit BEGIN
  SELECT RAISE(ABORT, 'audit rows are never changed');
END;
CREATE TABLE audit_anchor (
  id   INTEGER PRIMARY KEY CHECK (id = 1),
  seq  INTEGER NOT NULL,
  hash BLOB NOT NULL
) STRICT;
INSERT INTO audit_anchor VALUES (1, 0, zeroblob(32));
)sql",
}};

// The schedule queries: for each provider served and each due column, the earliest rows through
// the (provider, due) partial index, O(log n + limit) each; then merged. ?1 is now, ?2 the limit.
std::string due_query(const ProviderSet& providers, bool earliest_only) {
  std::string sql;
  for (Provider p : providers) {
    for (const char* col : {"next_refresh_due", "next_check_due"}) {
      if (!sql.empty()) sql += " UNION ALL ";
      sql += std::string("SELECT * FROM (SELECT id, ") + col +
             " AS due FROM tokens WHERE provider = '" + std::string(to_string(p)) + "' AND " + col +
             " IS NOT NULL" + (earliest_only ? "" : std::string(" AND ") + col + " <= ?1") +
             " ORDER BY " + col + (earliest_only ? " LIMIT 1)" : " LIMIT ?2)");
    }
  }
  if (sql.empty()) return "SELECT NULL, NULL WHERE 0";
  return "SELECT id, due FROM (" + sql + ") ORDER BY due" + (earliest_only ? " LIMIT 1" : "");
}

void bind_time(SQLite::Statement& q, int index, const std::optional<SysTime>& t) {
  if (t) {
    q.bind(index, static_cast<int64_t>(to_unix(*t)));
  } else {
    q.bind(index);
  }
}

void bind_blob(SQLite::Statement& q, int index, const std::optional<Blob>& blob) {
  if (blob) {
    q.bind(index, blob->data(), static_cast<int>(blob->size()));
  } else {
    q.bind(index);
  }
}

std::string text_of(std::string_view s) {
  return std::string(s);
}

// A row of a SQLite statement, as decode_row() reads it.
struct SqliteRow {
  SQLite::Statement& q;
  bool null(int i) const { return q.getColumn(i).isNull(); }
  std::string text(int i) const { return q.getColumn(i).getString(); }
  std::int64_t int64(int i) const { return q.getColumn(i).getInt64(); }
};

Result<TokenRecord> read_row(SQLite::Statement& q) {
  return decode_row(SqliteRow{q});
}

// Every row `q` yields.
Result<std::vector<TokenRecord>> read_rows(SQLite::Statement& q) {
  std::vector<TokenRecord> out;
  while (q.executeStep()) {
    auto r = read_row(q);
    if (!r) return r.error();
    out.push_back(std::move(*r));
  }
  return out;
}

// Errors of the database as a whole rather than of one statement's data.
bool whole_database_error(int code) {
  switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_NOMEM:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PROTOCOL:
      return true;
    default:
      return false;
  }
}

Error storage_error(std::string_view what, const SQLite::Exception& e) {
  int code = e.getErrorCode();
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED) {
    return Error(Errc::kBusy, std::string(what) + ": database is locked by another process");
  }
  return Error(Errc::kStorage, std::string(what) + ": " + e.what());
}

// Runs `body`, turning the exceptions SQLiteCpp throws into Errors that name the operation.
template <class F>
auto guarded(std::string_view what, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const SQLite::Exception& e) {
    return storage_error(what, e);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    return Error(Errc::kStorage, std::string(what) + ": " + e.what());
  }
}

// Makes sure the database file exists (creating it with mode 0600 before SQLite sees it, so the
// database and its -wal and -shm files are never readable by others, whatever the umask) and that
// an existing one is private too.
Status prepare_file(const std::string& path, OpenMode mode) {
  std::filesystem::path p(path);
  std::error_code ec;
  auto dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
  if (!std::filesystem::is_directory(dir, ec)) {
    return Error(Errc::kNotFound, "database directory " + dir.string() + " does not exist");
  }
  const int flags = O_RDONLY | O_CLOEXEC | (mode == OpenMode::kCreate ? O_CREAT : 0);
  UniqueFd fd(::open(path.c_str(), flags, 0600));
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT) {
      return Error(Errc::kNotFound, "no database at " + path +
                                        " (check database.path; `tokenwarden add` creates it)");
    }
    return Error(Errc::kIo, "cannot open database " + path + ": " + errno_text(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Error(Errc::kIo, "cannot stat database " + path + ": " + errno_text(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return Error(Errc::kInvalidArgument, "database " + path + " is not a regular file");
  }
  return require_private_mode("database", path, st.st_mode);
}

}  // namespace

// A prepared statement from the store's cache, borrowed for one call: its bindings are cleared
// when it is handed out and it is reset when the handle goes, so that it never holds a read
// snapshot open between calls. A statement already borrowed (a nested use of the same SQL) is
// prepared afresh instead.
class Cached {
 public:
  Cached(SQLite::Statement& shared, bool& borrowed) : q_(&shared), borrowed_(&borrowed) {
    borrowed = true;
  }
  explicit Cached(std::unique_ptr<SQLite::Statement> own) : own_(std::move(own)), q_(own_.get()) {}
  Cached(const Cached&) = delete;
  Cached& operator=(const Cached&) = delete;
  ~Cached() {
    if (borrowed_ != nullptr) {
      q_->tryReset();
      *borrowed_ = false;
    }
  }
  SQLite::Statement& operator*() const { return *q_; }

 private:
  std::unique_ptr<SQLite::Statement> own_;
  SQLite::Statement* q_;
  bool* borrowed_ = nullptr;
};

struct SqliteTokenStore::Impl {
  Impl(std::unique_ptr<SQLite::Database> d, Cipher c, std::string p)
      : db(std::move(d)), cipher(std::move(c)), path(std::move(p)) {}

  std::unique_ptr<SQLite::Database> db;
  Cipher cipher;
  std::string path;
  // Prepared statements by their SQL (declared after db: finalized before it closes). Parsing
  // and planning an UPDATE costs more than running it.
  struct CachedEntry {
    std::unique_ptr<SQLite::Statement> statement;
    bool borrowed = false;
  };
  std::unordered_map<std::string, CachedEntry> statements;

  Cached cached(const std::string& sql) {
    CachedEntry& e = statements[sql];
    if (e.borrowed) return Cached(std::make_unique<SQLite::Statement>(*db, sql));
    if (!e.statement) {
      e.statement = std::make_unique<SQLite::Statement>(*db, sql);
    } else {
      e.statement->clearBindings();
    }
    return Cached(*e.statement, e.borrowed);
  }

  Result<UpsertResult> upsert_locked(const NewToken& token, const TokenSecrets& secrets,
                                     SysTime now, const ScheduleFn& schedule);

  Result<SealedPair> seal(const TokenSecrets& s, const std::string& id) {
    return store_detail::seal(cipher, s, id);
  }

  // Decrypts the blob in column `col` of `q` (absent: an empty Secret).
  Result<Secret> open(SQLite::Statement& q, int col, const std::string& id,
                      std::string_view field) {
    SQLite::Column c = q.getColumn(col);
    if (c.isNull()) return Secret();
    const auto* data = static_cast<const std::uint8_t*>(c.getBlob());
    return cipher.open({data, static_cast<std::size_t>(c.getBytes())}, id, field);
  }

  Result<std::optional<TokenRecord>> select_by(const char* where, std::string_view key1,
                                               std::optional<std::string_view> key2 = {}) {
    Cached q_held = cached(std::string("SELECT ") + kColumns + " FROM tokens WHERE " + where);
    SQLite::Statement& q = *q_held;
    q.bind(1, text_of(key1));
    if (key2) q.bind(2, text_of(*key2));
    if (!q.executeStep()) return std::optional<TokenRecord>();
    auto r = read_row(q);
    if (!r) return r.error();
    return std::optional<TokenRecord>(std::move(*r));
  }

  // Runs one cached statement that returns no rows.
  void run(const char* sql) {
    Cached q = cached(sql);
    (*q).exec();
  }

  // One write of write_batch(), inside its transaction; `sealed` holds its new secrets, sealed.
  Status write_one(const StoreWrite& w, const SealedPair& sealed, std::string_view owner) {
    if (w.kind == StoreWrite::Kind::kSave) {
      const TokenRecord& record = *w.record;
      if (auto st = check_lease({record.id, record.lease_generation}, owner); !st) return st;
      write_fields(record, &sealed, w.new_secrets != nullptr ? Secrets::kMerge : Secrets::kKeep,
                   w.lease_action == LeaseAction::kRelease);
      return Ok();
    }
    if (auto st = check_lease(w.lease, owner); !st) return st;
    // An earlier attempt still in doubt keeps its time: that is when the doubt began.
    Cached q_held = cached(
        "UPDATE tokens SET renewal_in_doubt_since = "
        "COALESCE(renewal_in_doubt_since, ?2) WHERE id = ?1");
    SQLite::Statement& q = *q_held;
    q.bind(1, w.lease.id);
    q.bind(2, static_cast<int64_t>(to_unix(w.at)));
    q.exec();
    return Ok();
  }

  // Fails unless `owner` still holds `lease` (same generation): the fence every write of a
  // worker's result goes through. Call inside the write transaction.
  Status check_lease(const LeaseRef& lease, std::string_view owner) {
    Cached q_held = cached("SELECT lease_owner, lease_generation FROM tokens WHERE id = ?1");
    SQLite::Statement& q = *q_held;
    q.bind(1, lease.id);
    if (!q.executeStep()) return Error(Errc::kNotFound, "token " + lease.id + " was removed");
    std::string holder = q.getColumn(0).isNull() ? "" : q.getColumn(0).getString();
    const std::int64_t generation = q.getColumn(1).getInt64();
    if (holder != owner || generation != lease.generation) {
      return lease_lost(lease, owner, holder, generation);
    }
    return Ok();
  }

  // How write_fields() treats the secret columns.
  enum class Secrets {
    kKeep,     // leave both as stored
    kMerge,    // a given blob replaces the stored one; an absent one keeps it
    kReplace,  // write exactly what is given (a reconnect)
  };

  // Writes every mutable column of `r` and, per `mode`, its secrets.
  void write_fields(const TokenRecord& r, const SealedPair* sealed, Secrets mode,
                    bool release_lease) {
    std::string sql =
        "UPDATE tokens SET scopes = ?2, expires_at = ?3, refresh_expires_at = ?4, "
        "next_refresh_due = ?5, next_check_due = ?6, state = ?7, state_since = ?8, "
        "consecutive_failures = ?9, last_error_class = ?10, last_error_message = ?11, "
        "last_error_at = ?12, last_refreshed_at = ?13, last_checked_at = ?14, connected_at = ?15, "
        "updated_at = ?16, last_error_operation = ?19, kind = ?20, workspace_id = ?21, "
        "renewal_in_doubt_since = ?22";
    if (mode == Secrets::kMerge) {
      sql +=
          ", access_token = COALESCE(?17, access_token), "
          "refresh_token = COALESCE(?18, refresh_token)";
    } else if (mode == Secrets::kReplace) {
      sql += ", access_token = ?17, refresh_token = ?18";
    }
    if (release_lease) sql += ", lease_owner = NULL, lease_until = NULL";
    sql += " WHERE id = ?1";
    Cached q_held = cached(sql);
    SQLite::Statement& q = *q_held;
    q.bind(1, r.id);
    q.bind(2, r.scopes);
    bind_time(q, 3, r.expires_at);
    bind_time(q, 4, r.refresh_expires_at);
    bind_time(q, 5, r.next_refresh_due);
    bind_time(q, 6, r.next_check_due);
    q.bind(7, text_of(to_string(r.state)));
    q.bind(8, static_cast<int64_t>(to_unix(r.state_since)));
    q.bind(9, r.consecutive_failures);
    q.bind(10, text_of(to_string(r.last_error_class)));
    q.bind(11, r.last_error_message);
    bind_time(q, 12, r.last_error_at);
    bind_time(q, 13, r.last_refreshed_at);
    bind_time(q, 14, r.last_checked_at);
    q.bind(15, static_cast<int64_t>(to_unix(r.connected_at)));
    q.bind(16, static_cast<int64_t>(to_unix(r.updated_at)));
    q.bind(19, r.last_error_operation ? text_of(to_string(*r.last_error_operation)) : "");
    q.bind(20, text_of(to_string(r.kind)));
    q.bind(21, r.workspace_id);
    bind_time(q, 22, r.renewal_in_doubt_since);
    if (mode != Secrets::kKeep) {
      bind_blob(q, 17, sealed->access);
      bind_blob(q, 18, sealed->refresh);
    }
    q.exec();
  }

  void insert(const TokenRecord& r, const SealedPair& sealed) {
    Cached q_held = cached(
        "INSERT INTO tokens (id, provider, kind, workspace_id, account_id, "
        "state, state_since, connected_at, created_at, updated_at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
    SQLite::Statement& q = *q_held;
    q.bind(1, r.id);
    q.bind(2, text_of(to_string(r.provider)));
    q.bind(3, text_of(to_string(r.kind)));
    q.bind(4, r.workspace_id);
    q.bind(5, r.account_id);
    q.bind(6, text_of(to_string(r.state)));
    q.bind(7, static_cast<int64_t>(to_unix(r.state_since)));
    q.bind(8, static_cast<int64_t>(to_unix(r.connected_at)));
    q.bind(9, static_cast<int64_t>(to_unix(r.created_at)));
    q.bind(10, static_cast<int64_t>(to_unix(r.updated_at)));
    q.exec();
    write_fields(r, &sealed, Secrets::kReplace, true);
  }

  // Leases `r` to `owner` until `until` under the next generation (updating `r` to match), and
  // moves its due times that were reached to the lease expiry: should the owner die, the token
  // comes due again by itself.
  void take_lease(TokenRecord& r, SysTime now, std::string_view owner, SysTime until) {
    Cached q_held = cached(
        "UPDATE tokens SET lease_owner = ?2, lease_until = ?3, "
        "lease_generation = lease_generation + 1, "
        "next_refresh_due = CASE WHEN next_refresh_due <= ?4 THEN ?3 ELSE next_refresh_due END, "
        "next_check_due = CASE WHEN next_check_due <= ?4 THEN ?3 ELSE next_check_due END "
        "WHERE id = ?1");
    SQLite::Statement& q = *q_held;
    q.bind(1, r.id);
    q.bind(2, text_of(owner));
    q.bind(3, static_cast<int64_t>(to_unix(until)));
    q.bind(4, static_cast<int64_t>(to_unix(now)));
    q.exec();
    r.lease_owner = std::string(owner);
    r.lease_until = until;
    r.lease_generation += 1;
  }

  // Decrypts the secrets of token `id`.
  Result<TokenSecrets> read_secrets(const std::string& id) {
    Cached q_held = cached("SELECT access_token, refresh_token FROM tokens WHERE id = ?1");
    SQLite::Statement& q = *q_held;
    q.bind(1, id);
    if (!q.executeStep()) return Error(Errc::kNotFound, "token " + id + " does not exist");
    auto access = open(q, 0, id, kAccessField);
    if (!access) return access.error();
    auto refresh = open(q, 1, id, kRefreshField);
    if (!refresh) return refresh.error();
    return TokenSecrets{std::move(*access), std::move(*refresh)};
  }

  // Moves the due times that were reached by `now` to `until`.
  void defer(const std::string& id, SysTime now, SysTime until) {
    Cached q_held = cached(
        "UPDATE tokens SET "
        "next_refresh_due = CASE WHEN next_refresh_due <= ?2 THEN ?3 "
        "ELSE next_refresh_due END, "
        "next_check_due = CASE WHEN next_check_due <= ?2 THEN ?3 "
        "ELSE next_check_due END WHERE id = ?1");
    SQLite::Statement& q = *q_held;
    q.bind(1, id);
    q.bind(2, static_cast<int64_t>(to_unix(now)));
    q.bind(3, static_cast<int64_t>(to_unix(until)));
    q.exec();
  }

  Result<int> user_version() { return db->execAndGet("PRAGMA user_version").getInt(); }

  // Appends `entries` after the audit chain's head, inside the caller's write transaction.
  void append_audit_rows(std::span<const AuditEntry> entries);

  Status migrate(const std::string& path) {
    int version = db->execAndGet("PRAGMA user_version").getInt();
    int latest = static_cast<int>(kMigrations.size());
    if (version > latest) {
      return Error(Errc::kStorage, "database " + path + " has schema version " +
                                       std::to_string(version) + ", newer than this build's " +
                                       std::to_string(latest) + ": upgrade tokenwarden");
    }
    for (int v = version; v < latest; ++v) {
      SQLite::Transaction tx(*db, SQLite::TransactionBehavior::IMMEDIATE);
      // Another process may have migrated while we waited for the lock.
      if (db->execAndGet("PRAGMA user_version").getInt() != v) continue;
      db->exec(kMigrations[static_cast<std::size_t>(v)]);
      db->exec("PRAGMA user_version = " + std::to_string(v + 1));
      tx.commit();
    }
    return Ok();
  }
};

int SqliteTokenStore::latest_schema_version() {
  return static_cast<int>(kMigrations.size());
}

std::string_view SqliteTokenStore::migration_sql(int from_version) {
  if (from_version < 0 || from_version >= latest_schema_version()) die("no such migration");
  return kMigrations[static_cast<std::size_t>(from_version)];
}

SqliteTokenStore::SqliteTokenStore(std::unique_ptr<SQLite::Database> db, Cipher cipher,
                                   std::string path)
    : impl_(std::make_unique<Impl>(std::move(db), std::move(cipher), std::move(path))) {}

std::string SqliteTokenStore::describe() const {
  return "SQLite database " + impl_->path;
}

SqliteTokenStore::~SqliteTokenStore() = default;

Result<std::unique_ptr<SqliteTokenStore>> SqliteTokenStore::open(const std::string& path,
                                                                 Millis busy_timeout, Cipher cipher,
                                                                 OpenMode mode,
                                                                 const std::string& vfs) {
  if (path != ":memory:") {
    if (auto st = prepare_file(path, mode); !st) return st.error();
  }
  return guarded("opening database " + path, [&]() -> Result<std::unique_ptr<SqliteTokenStore>> {
    auto db = std::make_unique<SQLite::Database>(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE,
                                                 static_cast<int>(busy_timeout.count()), vfs);
    // Reading the header fails here, not later, when the file is not a database.
    db->execAndGet("PRAGMA schema_version");
    std::string mode = db->execAndGet("PRAGMA journal_mode = WAL").getString();
    if (mode != "wal" && path != ":memory:") {
      return Error(Errc::kStorage, "database " + path + " cannot use WAL mode (got " + mode + ")");
    }
    db->exec("PRAGMA synchronous = FULL");
    db->exec("PRAGMA secure_delete = ON");
    db->exec("PRAGMA foreign_keys = ON");
    std::unique_ptr<SqliteTokenStore> store(
        new SqliteTokenStore(std::move(db), std::move(cipher), path));
    if (auto st = store->impl_->migrate(path); !st) return st.error();
    return store;
  });
}

// Adds or reconnects one token; the caller holds the write transaction.
Result<UpsertResult> SqliteTokenStore::Impl::upsert_locked(const NewToken& token,
                                                           const TokenSecrets& secrets, SysTime now,
                                                           const ScheduleFn& schedule) {
  auto existing =
      select_by("provider = ?1 AND account_id = ?2", to_string(token.provider), token.account_id);
  if (!existing) return existing.error();
  auto built = build_upsert(token, secrets, now, *existing, schedule);
  if (!built) return built.error();
  UpsertResult& out = *built;
  const TokenRecord& r = out.record;
  auto sealed = seal(secrets, r.id);
  if (!sealed) return sealed.error();
  if (out.created) {
    insert(r, *sealed);
  } else {
    write_fields(r, &*sealed, Impl::Secrets::kReplace, true);
    Cached fence_held = cached("UPDATE tokens SET lease_generation = ?2 WHERE id = ?1");
    SQLite::Statement& fence = *fence_held;
    fence.bind(1, r.id);
    fence.bind(2, static_cast<int64_t>(r.lease_generation));
    fence.exec();
  }
  return built;
}

Result<UpsertResult> SqliteTokenStore::upsert(const NewToken& token, const TokenSecrets& secrets,
                                              SysTime now, const ScheduleFn& schedule) {
  return guarded("adding token", [&]() -> Result<UpsertResult> {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    auto out = impl_->upsert_locked(token, secrets, now, schedule);
    if (!out) return out.error();
    tx.commit();
    return out;
  });
}

Result<std::vector<UpsertResult>> SqliteTokenStore::upsert_batch(
    std::span<const TokenImport> tokens, SysTime now, const ScheduleFn& schedule) {
  return guarded("adding tokens", [&]() -> Result<std::vector<UpsertResult>> {
    std::vector<UpsertResult> out;
    out.reserve(tokens.size());
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    for (const TokenImport& t : tokens) {
      auto one = impl_->upsert_locked(t.token, t.secrets, now, schedule);
      if (!one) return one.error();
      out.push_back(std::move(*one));
    }
    tx.commit();
    return out;
  });
}

Result<std::optional<TokenRecord>> SqliteTokenStore::find(std::string_view id) {
  return guarded("reading token", [&] { return impl_->select_by("id = ?1", id); });
}

Result<std::vector<TokenRecord>> SqliteTokenStore::list(const ListFilter& filter) {
  return guarded("listing tokens", [&]() -> Result<std::vector<TokenRecord>> {
    std::string sql = std::string("SELECT ") + kColumns +
                      " FROM tokens WHERE (?1 IS NULL OR provider = ?1) AND "
                      "(?2 IS NULL OR state = ?2) AND (?3 IS NULL OR workspace_id = ?3) "
                      "ORDER BY provider, workspace_id, account_id";
    Cached q_held = impl_->cached(sql);
    SQLite::Statement& q = *q_held;
    if (filter.provider) q.bind(1, text_of(to_string(*filter.provider)));
    if (filter.state) q.bind(2, text_of(to_string(*filter.state)));
    if (filter.workspace_id) q.bind(3, *filter.workspace_id);
    return read_rows(q);
  });
}

Result<bool> SqliteTokenStore::remove(std::string_view id) {
  return guarded("removing token", [&]() -> Result<bool> {
    Cached q_held = impl_->cached("DELETE FROM tokens WHERE id = ?1");
    SQLite::Statement& q = *q_held;
    q.bind(1, text_of(id));
    return q.exec() > 0;
  });
}

namespace {

// Tokens in needs_reauth or revoked (optionally only those not yet notified), longest waiting
// first. The WHERE clause repeats the partial index tokens_reauth_unnotified's, so SQLite reads
// that index and never the active tokens.
Result<std::vector<TokenRecord>> select_reauth(SQLite::Database& db, std::size_t limit,
                                               bool unnotified_only) {
  SQLite::Statement q(db,
                      std::string("SELECT ") + kColumns +
                          " FROM tokens WHERE state IN ('needs_reauth', 'revoked')" +
                          (unnotified_only ? " AND reauth_notified_since IS NOT state_since" : "") +
                          " ORDER BY state_since, id LIMIT ?1");
  q.bind(1, static_cast<std::int64_t>(limit));
  return read_rows(q);
}

}  // namespace

Result<std::vector<TokenRecord>> SqliteTokenStore::needing_reauth(std::size_t limit) {
  return guarded("listing tokens that need re-authorisation",
                 [&] { return select_reauth(*impl_->db, limit, /*unnotified_only=*/false); });
}

Result<std::vector<TokenRecord>> SqliteTokenStore::unnotified_reauth(std::size_t limit) {
  return guarded("listing tokens to notify",
                 [&] { return select_reauth(*impl_->db, limit, /*unnotified_only=*/true); });
}

Result<bool> SqliteTokenStore::mark_reauth_notified(std::string_view id, SysTime state_since) {
  return guarded("recording a notice", [&]() -> Result<bool> {
    Cached q_held = impl_->cached(
        "UPDATE tokens SET reauth_notified_since = ?2 WHERE id = ?1 AND "
        "state_since = ?2 AND state IN ('needs_reauth', 'revoked')");
    SQLite::Statement& q = *q_held;
    q.bind(1, text_of(id));
    q.bind(2, static_cast<int64_t>(to_unix(state_since)));
    return q.exec() > 0;
  });
}

Result<std::size_t> SqliteTokenStore::pull_in_checks(Provider provider, SysTime now,
                                                     Seconds period) {
  if (period.count() <= 0) return Error(Errc::kInvalidArgument, "a check period must be positive");
  return guarded("pulling in checks", [&]() -> Result<std::size_t> {
    // due - period * ((due - now - 1) / period) lies in [now + 1, now + period] for every
    // due > now + period (integer division of positive numbers), on the same slot mod period.
    Cached q_held = impl_->cached(
        "UPDATE tokens SET next_check_due = next_check_due - "
        "?3 * ((next_check_due - ?2 - 1) / ?3) "
        "WHERE provider = ?1 AND next_check_due > ?2 + ?3 "
        "AND consecutive_failures = 0");
    SQLite::Statement& q = *q_held;
    q.bind(1, text_of(to_string(provider)));
    q.bind(2, static_cast<int64_t>(to_unix(now)));
    q.bind(3, static_cast<int64_t>(period.count()));
    return static_cast<std::size_t>(q.exec());
  });
}

Result<std::vector<StateCounts>> SqliteTokenStore::count_by_state() {
  return guarded("counting tokens", [&]() -> Result<std::vector<StateCounts>> {
    Cached q_held = impl_->cached(
        "SELECT provider, state, n FROM token_counts WHERE n > 0 ORDER BY provider, state");
    SQLite::Statement& q = *q_held;
    std::vector<StateCounts> out;
    while (q.executeStep()) {
      auto provider = parse_provider(q.getColumn(0).getString());
      auto state = parse_token_state(q.getColumn(1).getString());
      if (!provider || !state)
        return Error(Errc::kCorrupt, "unknown provider or state in database");
      out.push_back({*provider, *state, static_cast<std::size_t>(q.getColumn(2).getInt64())});
    }
    return out;
  });
}

Result<TokenSecrets> SqliteTokenStore::read_secrets(const TokenRecord& record) {
  return guarded("reading secrets", [&] { return impl_->read_secrets(record.id); });
}

Result<std::optional<DueRef>> SqliteTokenStore::earliest_due_token(const ProviderSet& providers) {
  return guarded("finding the next due token", [&]() -> Result<std::optional<DueRef>> {
    Cached q_held = impl_->cached(due_query(providers, /*earliest_only=*/true));
    SQLite::Statement& q = *q_held;
    if (!q.executeStep() || q.getColumn(1).isNull()) return std::optional<DueRef>();
    return std::optional<DueRef>(
        DueRef{q.getColumn(0).getString(), from_unix(q.getColumn(1).getInt64())});
  });
}

Result<std::vector<DueToken>> SqliteTokenStore::claim_due(SysTime now, std::size_t limit,
                                                          std::string_view owner, Seconds lease,
                                                          const ProviderSet& providers) {
  return guarded("claiming due tokens", [&]() -> Result<std::vector<DueToken>> {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    // Up to `limit` rows from each index, merged by due time; a token due on both columns
    // appears twice and is claimed once.
    std::vector<std::string> ids;
    {
      Cached q_held = impl_->cached(due_query(providers, /*earliest_only=*/false));
      SQLite::Statement& q = *q_held;
      q.bind(1, static_cast<int64_t>(to_unix(now)));
      q.bind(2, static_cast<int64_t>(limit));
      while (q.executeStep() && ids.size() < limit) {
        std::string id = q.getColumn(0).getString();
        if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(std::move(id));
      }
    }
    std::vector<DueToken> out;
    out.reserve(ids.size());
    const SysTime until = now + lease;
    for (const std::string& id : ids) {
      auto row = impl_->select_by("id = ?1", id);
      if (!row) return row.error();
      if (!*row) continue;
      DueToken d;
      d.record = std::move(**row);
      if (lease_held(d.record, now)) {
        // Still being worked on (a forced refresh from the CLI, or a request whose lease was
        // extended): due again when that lease ends, and never claimed twice meanwhile.
        impl_->defer(id, now, *d.record.lease_until);
        continue;
      }
      d.refresh_due = d.record.next_refresh_due && *d.record.next_refresh_due <= now;
      d.check_due = d.record.next_check_due && *d.record.next_check_due <= now;
      impl_->take_lease(d.record, now, owner, until);
      if (auto secrets = impl_->read_secrets(id)) d.secrets = std::move(*secrets);
      out.push_back(std::move(d));
    }
    tx.commit();
    return out;
  });
}

Result<TokenRecord> SqliteTokenStore::claim(std::string_view id, SysTime now,
                                            std::string_view owner, Seconds lease) {
  return guarded("claiming token", [&]() -> Result<TokenRecord> {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    auto row = impl_->select_by("id = ?1", id);
    if (!row) return row.error();
    if (!*row) return Error(Errc::kNotFound, "no token " + std::string(id));
    TokenRecord r = std::move(**row);
    if (lease_held(r, now)) {
      return Error(Errc::kLeaseLost, "token " + r.id + " is being worked on by " + r.lease_owner +
                                         " until " + format_time(*r.lease_until));
    }
    impl_->take_lease(r, now, owner, now + lease);
    tx.commit();
    return r;
  });
}

Result<std::vector<std::string>> SqliteTokenStore::extend_leases(
    const std::vector<LeaseRef>& leases, std::string_view owner, SysTime now, Seconds lease) {
  return guarded("extending leases", [&]() -> Result<std::vector<std::string>> {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    const SysTime until = now + lease;
    Cached q_held = impl_->cached(
        "UPDATE tokens SET lease_until = ?4 WHERE id = ?1 AND lease_owner = ?2 "
        "AND lease_generation = ?3");
    SQLite::Statement& q = *q_held;
    std::vector<std::string> lost;
    for (const LeaseRef& l : leases) {
      q.bind(1, l.id);
      q.bind(2, text_of(owner));
      q.bind(3, static_cast<int64_t>(l.generation));
      q.bind(4, static_cast<int64_t>(to_unix(until)));
      if (q.exec() == 1) {
        impl_->defer(l.id, until, until);
      } else {
        lost.push_back(l.id);
      }
      q.reset();
    }
    tx.commit();
    return lost;
  });
}

std::vector<Status> SqliteTokenStore::write_batch(std::span<const StoreWrite> writes,
                                                  std::string_view owner) {
  std::vector<Status> out(writes.size(), Ok());
  // Seal before taking the write lock: the lock is held only for the writes themselves.
  std::vector<SealedPair> sealed(writes.size());
  for (std::size_t i = 0; i < writes.size(); ++i) {
    const StoreWrite& w = writes[i];
    if (w.kind != StoreWrite::Kind::kSave || w.new_secrets == nullptr) continue;
    auto s = impl_->seal(*w.new_secrets, w.record->id);
    if (!s) {
      out[i] = s.error();
    } else {
      sealed[i] = std::move(*s);
    }
  }
  const std::string what = describe_batch(writes);
  Status st = guarded(what, [&]() -> Status {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    for (std::size_t i = 0; i < writes.size(); ++i) {
      if (!out[i]) continue;
      // Each write under its own savepoint: one the database refuses for itself (a constraint)
      // fails alone, as it would on its own, instead of failing every write of the batch again
      // and again. Failures of the database as a whole (busy, I/O, full) fail the batch.
      impl_->run("SAVEPOINT one_write");
      try {
        out[i] = impl_->write_one(writes[i], sealed[i], owner);
      } catch (const SQLite::Exception& e) {
        if (whole_database_error(e.getErrorCode()) ||
            sqlite3_get_autocommit(impl_->db->getHandle()) != 0) {
          throw;
        }
        impl_->run("ROLLBACK TO one_write");
        out[i] = storage_error(what, e);
      }
      impl_->run("RELEASE one_write");
    }
    tx.commit();
    return Ok();
  });
  if (!st) std::fill(out.begin(), out.end(), st);
  return out;
}

namespace {

// A BLOB column, or absent when NULL.
std::optional<Blob> get_blob(const SQLite::Column& c) {
  if (c.isNull()) return std::nullopt;
  const auto* data = static_cast<const std::uint8_t*>(c.getBlob());
  return Blob(data, data + c.getBytes());
}

}  // namespace

Result<std::vector<SealedToken>> SqliteTokenStore::read_sealed(std::string_view after_id,
                                                               std::size_t limit) {
  return guarded("reading tokens", [&]() -> Result<std::vector<SealedToken>> {
    Cached q_held = impl_->cached(std::string("SELECT ") + kColumns +
                                  ", access_token, refresh_token, reauth_notified_since "
                                  "FROM tokens WHERE id > ?1 ORDER BY id LIMIT ?2");
    SQLite::Statement& q = *q_held;
    q.bind(1, text_of(after_id));
    q.bind(2, static_cast<std::int64_t>(limit));
    std::vector<SealedToken> out;
    while (q.executeStep()) {
      auto r = read_row(q);
      if (!r) return r.error();
      SealedToken t;
      t.record = std::move(*r);
      t.access_token = get_blob(q.getColumn(kColumnCount));
      t.refresh_token = get_blob(q.getColumn(kColumnCount + 1));
      const SQLite::Column notified = q.getColumn(kColumnCount + 2);
      if (!notified.isNull()) t.reauth_notified_since = from_unix(notified.getInt64());
      out.push_back(std::move(t));
    }
    return out;
  });
}

Status SqliteTokenStore::write_sealed(std::span<const SealedToken> tokens) {
  return guarded("copying tokens in", [&]() -> Status {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    for (const SealedToken& t : tokens) {
      const TokenRecord& r = t.record;
      Cached clash_held = impl_->cached(
          "SELECT id FROM tokens WHERE id = ?1 OR (provider = ?2 AND account_id = ?3)");
      SQLite::Statement& clash = *clash_held;
      clash.bind(1, r.id);
      clash.bind(2, text_of(to_string(r.provider)));
      clash.bind(3, r.account_id);
      if (clash.executeStep()) {
        return already_stored(r, clash.getColumn(0).getString());
      }
      impl_->insert(r, SealedPair{t.access_token, t.refresh_token});
      Cached q_held = impl_->cached(
          "UPDATE tokens SET lease_generation = ?2, reauth_notified_since = ?3 WHERE id = ?1");
      SQLite::Statement& q = *q_held;
      q.bind(1, r.id);
      q.bind(2, static_cast<std::int64_t>(r.lease_generation));
      bind_time(q, 3, t.reauth_notified_since);
      q.exec();
    }
    tx.commit();
    return Ok();
  });
}

Result<std::size_t> SqliteTokenStore::rekey(std::size_t batch,
                                            const std::function<void(std::size_t)>& progress) {
  return guarded("re-encrypting tokens", [&]() -> Result<std::size_t> {
    std::size_t rewritten = 0;
    batch = std::max<std::size_t>(batch, 1);
    const KeyId& current = impl_->cipher.keys().current().id();
    std::string after;
    for (;;) {
      // One transaction per batch keeps the write lock short for a live daemon. Only rows with
      // an envelope under another key are read (envelope bytes 2..9 are the key id).
      SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
      Cached q_held = impl_->cached(
          "SELECT id, access_token, refresh_token FROM tokens WHERE id > ?1 AND "
          "((access_token IS NOT NULL AND substr(access_token, 2, 8) != ?3) OR "
          "(refresh_token IS NOT NULL AND substr(refresh_token, 2, 8) != ?3)) "
          "ORDER BY id LIMIT ?2");
      SQLite::Statement& q = *q_held;
      q.bind(1, after);
      q.bind(2, static_cast<std::int64_t>(batch));
      q.bind(3, current.data(), static_cast<int>(current.size()));
      std::vector<std::pair<std::string, SealedPair>> updates;
      while (q.executeStep()) {
        after = q.getColumn(0).getString();
        auto access = impl_->open(q, 1, after, kAccessField);
        if (!access) return access.error();
        auto refresh = impl_->open(q, 2, after, kRefreshField);
        if (!refresh) return refresh.error();
        auto sealed = impl_->seal(TokenSecrets{std::move(*access), std::move(*refresh)}, after);
        if (!sealed) return sealed.error();
        updates.emplace_back(after, std::move(*sealed));
      }
      for (auto& [id, sealed] : updates) {
        Cached u_held =
            impl_->cached("UPDATE tokens SET access_token = ?2, refresh_token = ?3 WHERE id = ?1");
        SQLite::Statement& u = *u_held;
        u.bind(1, id);
        bind_blob(u, 2, sealed.access);
        bind_blob(u, 3, sealed.refresh);
        u.exec();
      }
      tx.commit();
      rewritten += updates.size();
      if (progress && !updates.empty()) progress(rewritten);
      if (updates.size() < batch) break;
    }
    return rewritten;
  });
}

namespace {

AuditHash hash_column(const SQLite::Column& c) {
  AuditHash h{};
  if (c.getBytes() == static_cast<int>(h.size())) {
    const auto* data = static_cast<const std::uint8_t*>(c.getBlob());
    std::copy(data, data + h.size(), h.begin());
  }
  return h;
}

}  // namespace

Status SqliteTokenStore::append_audit(std::span<const AuditEntry> entries) {
  if (entries.empty()) return Ok();
  return guarded("writing the audit trail", [&]() -> Status {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    impl_->append_audit_rows(entries);
    tx.commit();
    return Ok();
  });
}

Result<std::vector<AuditRow>> SqliteTokenStore::read_audit(std::int64_t after_seq,
                                                           std::size_t limit,
                                                           std::string_view token_id) {
  return guarded("reading the audit trail", [&]() -> Result<std::vector<AuditRow>> {
    Cached q_held = impl_->cached(
        token_id.empty()
            ? "SELECT * FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            : "SELECT * FROM audit WHERE seq > ?1 AND token_id = ?3 ORDER BY seq LIMIT ?2");
    SQLite::Statement& q = *q_held;
    q.bind(1, after_seq);
    q.bind(2, static_cast<std::int64_t>(limit));
    if (!token_id.empty()) q.bind(3, text_of(token_id));
    std::vector<AuditRow> rows;
    while (q.executeStep()) {
      AuditRow r;
      r.seq = q.getColumn(0).getInt64();
      r.entry.at = from_unix(q.getColumn(1).getInt64());
      r.entry.actor = q.getColumn(2).getString();
      r.entry.action = q.getColumn(3).getString();
      r.entry.token_id = q.getColumn(4).getString();
      r.entry.outcome = q.getColumn(5).getString();
      r.entry.detail = q.getColumn(6).getString();
      r.prev_hash = hash_column(q.getColumn(7));
      r.hash = hash_column(q.getColumn(8));
      rows.push_back(std::move(r));
    }
    return rows;
  });
}

Result<AuditAnchor> SqliteTokenStore::audit_anchor() {
  return guarded("reading the audit trail", [&]() -> Result<AuditAnchor> {
    Cached q_held = impl_->cached("SELECT seq, hash FROM audit_anchor");
    SQLite::Statement& q = *q_held;
    AuditAnchor a;
    if (q.executeStep()) {
      a.seq = q.getColumn(0).getInt64();
      a.hash = hash_column(q.getColumn(1));
    }
    return a;
  });
}

Result<std::size_t> SqliteTokenStore::prune_audit(SysTime before, std::size_t max_rows, SysTime now,
                                                  std::string_view actor) {
  return guarded("pruning the audit trail", [&]() -> Result<std::size_t> {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    // The oldest unbroken run of rows written before `before`, at most max_rows, never the head.
    SQLite::Statement last(*impl_->db,
                           "SELECT seq, hash FROM (SELECT seq, hash, at FROM audit ORDER BY seq "
                           "LIMIT ?2) WHERE seq < (SELECT MAX(seq) FROM audit) AND seq < "
                           "coalesce((SELECT MIN(seq) FROM audit WHERE at >= ?1), 1 << 62) "
                           "ORDER BY seq DESC LIMIT 1");
    last.bind(1, static_cast<std::int64_t>(to_unix(before)));
    last.bind(2, static_cast<std::int64_t>(max_rows));
    if (!last.executeStep()) return std::size_t{0};
    const AuditAnchor anchor{last.getColumn(0).getInt64(), hash_column(last.getColumn(1))};
    last.reset();
    SQLite::Statement del(*impl_->db, "DELETE FROM audit WHERE seq <= ?1");
    del.bind(1, anchor.seq);
    const auto n = static_cast<std::size_t>(del.exec());
    SQLite::Statement move(*impl_->db, "UPDATE audit_anchor SET seq = ?1, hash = ?2");
    move.bind(1, anchor.seq);
    move.bind(2, anchor.hash.data(), static_cast<int>(anchor.hash.size()));
    move.exec();
    const AuditEntry row{
        now, std::string(actor), "prune", "", "ok", audit_prune_detail(n, before, anchor)};
    impl_->append_audit_rows({&row, 1});
    tx.commit();
    return n;
  });
}

void SqliteTokenStore::Impl::append_audit_rows(std::span<const AuditEntry> entries) {
  Impl& impl = *this;
  std::int64_t seq = 0;
  AuditHash prev{};
  {
    Cached h_held = impl.cached(
        "SELECT seq, hash FROM audit UNION ALL SELECT seq, hash FROM audit_anchor "
        "ORDER BY seq DESC LIMIT 1");
    SQLite::Statement& h = *h_held;
    if (h.executeStep()) {
      seq = h.getColumn(0).getInt64();
      prev = hash_column(h.getColumn(1));
    }
  }
  for (const AuditEntry& e : entries) {
    ++seq;
    const AuditHash hash = audit_hash(seq, e, prev);
    Cached q_held = impl.cached("INSERT INTO audit VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
    SQLite::Statement& q = *q_held;
    q.bind(1, seq);
    q.bind(2, static_cast<std::int64_t>(to_unix(e.at)));
    q.bind(3, e.actor);
    q.bind(4, e.action);
    q.bind(5, e.token_id);
    q.bind(6, e.outcome);
    q.bind(7, e.detail);
    q.bind(8, prev.data(), static_cast<int>(prev.size()));
    q.bind(9, hash.data(), static_cast<int>(hash.size()));
    q.exec();
    prev = hash;
  }
}

Result<std::size_t> SqliteTokenStore::count_sealed_with_old_keys() {
  return guarded("counting secrets under old keys", [&]() -> Result<std::size_t> {
    // Envelope bytes 2..9 (1-based) are the key id.
    Cached q_held = impl_->cached(
        "SELECT COUNT(*) FROM tokens WHERE "
        "(access_token IS NOT NULL AND substr(access_token, 2, 8) != ?1) OR "
        "(refresh_token IS NOT NULL AND substr(refresh_token, 2, 8) != ?1)");
    SQLite::Statement& q = *q_held;
    const KeyId& id = impl_->cipher.keys().current().id();
    q.bind(1, id.data(), static_cast<int>(id.size()));
    q.executeStep();
    return static_cast<std::size_t>(q.getColumn(0).getInt64());
  });
}

Result<int> SqliteTokenStore::schema_version() {
  return guarded("reading schema version", [&] { return impl_->user_version(); });
}

Result<std::string> SqliteTokenStore::explain_schedule_queries() {
  return guarded("explaining queries", [&]() -> Result<std::string> {
    std::string out;
    for (bool earliest : {true, false}) {
      SQLite::Statement q(*impl_->db, "EXPLAIN QUERY PLAN " + due_query(kAllProviders, earliest));
      if (!earliest) {
        q.bind(1, static_cast<int64_t>(0));
        q.bind(2, static_cast<int64_t>(1));
      }
      while (q.executeStep()) {
        out += q.getColumn(3).getString();
        out += '\n';
      }
    }
    return out;
  });
}

}  // namespace tw
