#include "storage/sqlite_token_store.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <filesystem>
#include <map>
#include <span>
#include <system_error>
#include <tuple>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Exception.h>
#include <SQLiteCpp/Statement.h>
#include <SQLiteCpp/Transaction.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <unistd.h>

namespace tw {

namespace {

// Forward migrations: entry i takes the schema from version i to i + 1. Never edit a shipped
// entry; append a new one.
constexpr std::array<const char*, 1> kMigrations{{
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
}};

constexpr const char* kColumns =
    "id, provider, kind, workspace_id, account_id, scopes, expires_at, refresh_expires_at, "
    "next_refresh_due, next_check_due, state, state_since, consecutive_failures, "
    "last_error_class, last_error_message, last_error_at, last_refreshed_at, last_checked_at, "
    "connected_at, created_at, updated_at, lease_owner, lease_until, "
    "access_token IS NOT NULL, refresh_token IS NOT NULL, last_error_operation";

constexpr std::string_view kAccessField = "access_token";
constexpr std::string_view kRefreshField = "refresh_token";

// Earliest due first, through the partial indexes; one query per column, each O(log n + limit).
constexpr const char* kEarliestRefresh =
    "SELECT next_refresh_due FROM tokens WHERE next_refresh_due IS NOT NULL "
    "ORDER BY next_refresh_due LIMIT 1";
constexpr const char* kEarliestCheck =
    "SELECT next_check_due FROM tokens WHERE next_check_due IS NOT NULL "
    "ORDER BY next_check_due LIMIT 1";
constexpr const char* kDueRefresh =
    "SELECT id, next_refresh_due FROM tokens WHERE next_refresh_due IS NOT NULL "
    "AND next_refresh_due <= ?1 ORDER BY next_refresh_due LIMIT ?2";
constexpr const char* kDueCheck =
    "SELECT id, next_check_due FROM tokens WHERE next_check_due IS NOT NULL "
    "AND next_check_due <= ?1 ORDER BY next_check_due LIMIT ?2";

std::optional<SysTime> get_time(const SQLite::Column& c) {
  if (c.isNull()) return std::nullopt;
  return from_unix(c.getInt64());
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

// Decodes a row selected with kColumns. Values the CHECK constraints allow always parse; anything
// else means the file was edited by hand, which is reported, not trusted.
Result<TokenRecord> read_row(SQLite::Statement& q) {
  TokenRecord r;
  r.id = q.getColumn(0).getString();
  auto provider = parse_provider(q.getColumn(1).getString());
  auto kind = parse_token_kind(q.getColumn(2).getString());
  auto state = parse_token_state(q.getColumn(10).getString());
  auto error_class = parse_error_class(q.getColumn(13).getString());
  if (!provider || !kind || !state || !error_class) {
    return Error(Errc::kCorrupt, "token " + r.id +
                                     " has an unknown provider, kind, state or "
                                     "error class in the database");
  }
  r.provider = *provider;
  r.kind = *kind;
  r.workspace_id = q.getColumn(3).getString();
  r.account_id = q.getColumn(4).getString();
  r.scopes = q.getColumn(5).getString();
  r.expires_at = get_time(q.getColumn(6));
  r.refresh_expires_at = get_time(q.getColumn(7));
  r.next_refresh_due = get_time(q.getColumn(8));
  r.next_check_due = get_time(q.getColumn(9));
  r.state = *state;
  r.state_since = from_unix(q.getColumn(11).getInt64());
  r.consecutive_failures = q.getColumn(12).getInt();
  r.last_error_class = *error_class;
  r.last_error_message = q.getColumn(14).getString();
  r.last_error_at = get_time(q.getColumn(15));
  r.last_refreshed_at = get_time(q.getColumn(16));
  r.last_checked_at = get_time(q.getColumn(17));
  r.connected_at = from_unix(q.getColumn(18).getInt64());
  r.created_at = from_unix(q.getColumn(19).getInt64());
  r.updated_at = from_unix(q.getColumn(20).getInt64());
  r.lease_owner = q.getColumn(21).isNull() ? "" : q.getColumn(21).getString();
  r.lease_until = get_time(q.getColumn(22));
  r.has_access_token = q.getColumn(23).getInt() != 0;
  r.has_refresh_token = q.getColumn(24).getInt() != 0;
  if (std::string op = q.getColumn(25).getString(); !op.empty()) {
    r.last_error_operation = parse_operation(op);
    if (!r.last_error_operation) {
      return Error(Errc::kCorrupt, "token " + r.id + " has an unknown last_error_operation");
    }
  }
  return r;
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

Result<std::string> new_token_id() {
  std::array<unsigned char, 8> raw{};
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) {
    return Error(Errc::kInternal, "cannot generate a token id: RAND_bytes failed");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "tok_";
  for (unsigned char b : raw) {
    id += kHex[b >> 4];
    id += kHex[b & 0xf];
  }
  return id;
}

// Creates the file with mode 0600 before SQLite sees it, so the database and its -wal and -shm
// files are never readable by others, whatever the umask.
Status create_private_file(const std::string& path) {
  std::filesystem::path p(path);
  std::error_code ec;
  auto dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
  if (!std::filesystem::is_directory(dir, ec)) {
    return Error(Errc::kNotFound, "database directory " + dir.string() + " does not exist");
  }
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return Error(Errc::kIo,
                 "cannot create database " + path + ": " + std::generic_category().message(errno));
  }
  ::close(fd);
  return Ok();
}

}  // namespace

struct SqliteTokenStore::Impl {
  Impl(std::unique_ptr<SQLite::Database> d, Cipher c) : db(std::move(d)), cipher(std::move(c)) {}

  std::unique_ptr<SQLite::Database> db;
  Cipher cipher;

  Result<std::optional<Blob>> seal(const Secret& s, const std::string& id, std::string_view field) {
    if (s.empty()) return std::optional<Blob>();
    auto blob = cipher.seal(s, id, field);
    if (!blob) return blob.error();
    return std::optional<Blob>(std::move(*blob));
  }

  Result<std::optional<TokenRecord>> select_by(const char* where, std::string_view key1,
                                               std::optional<std::string_view> key2 = {}) {
    SQLite::Statement q(*db, std::string("SELECT ") + kColumns + " FROM tokens WHERE " + where);
    q.bind(1, text_of(key1));
    if (key2) q.bind(2, text_of(*key2));
    if (!q.executeStep()) return std::optional<TokenRecord>();
    auto r = read_row(q);
    if (!r) return r.error();
    return std::optional<TokenRecord>(std::move(*r));
  }

  // Writes every mutable column of `r`; secrets only when given.
  void write_fields(const TokenRecord& r, const std::optional<Blob>* access,
                    const std::optional<Blob>* refresh, bool release_lease) {
    std::string sql =
        "UPDATE tokens SET scopes = ?2, expires_at = ?3, refresh_expires_at = ?4, "
        "next_refresh_due = ?5, next_check_due = ?6, state = ?7, state_since = ?8, "
        "consecutive_failures = ?9, last_error_class = ?10, last_error_message = ?11, "
        "last_error_at = ?12, last_refreshed_at = ?13, last_checked_at = ?14, connected_at = ?15, "
        "updated_at = ?16, last_error_operation = ?19";
    if (access != nullptr) sql += ", access_token = ?17, refresh_token = ?18";
    if (release_lease) sql += ", lease_owner = NULL, lease_until = NULL";
    sql += " WHERE id = ?1";
    SQLite::Statement q(*db, sql);
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
    if (access != nullptr) {
      bind_blob(q, 17, *access);
      bind_blob(q, 18, *refresh);
    }
    q.exec();
  }

  void insert(const TokenRecord& r, const std::optional<Blob>& access,
              const std::optional<Blob>& refresh) {
    SQLite::Statement q(*db,
                        "INSERT INTO tokens (id, provider, kind, workspace_id, account_id, "
                        "state, state_since, connected_at, created_at, updated_at) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
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
    write_fields(r, &access, &refresh, true);
  }

  // Sets the lease and moves the due times that were reached to the lease expiry.
  void take_lease(const std::string& id, SysTime now, std::string_view owner, SysTime until) {
    SQLite::Statement q(*db, "UPDATE tokens SET lease_owner = ?2, lease_until = ?3 WHERE id = ?1");
    q.bind(1, id);
    q.bind(2, text_of(owner));
    q.bind(3, static_cast<int64_t>(to_unix(until)));
    q.exec();
    defer(id, now, until);
  }

  // Moves the due times that were reached by `now` to `until`.
  void defer(const std::string& id, SysTime now, SysTime until) {
    SQLite::Statement q(*db,
                        "UPDATE tokens SET "
                        "next_refresh_due = CASE WHEN next_refresh_due <= ?2 THEN ?3 "
                        "ELSE next_refresh_due END, "
                        "next_check_due = CASE WHEN next_check_due <= ?2 THEN ?3 "
                        "ELSE next_check_due END WHERE id = ?1");
    q.bind(1, id);
    q.bind(2, static_cast<int64_t>(to_unix(now)));
    q.bind(3, static_cast<int64_t>(to_unix(until)));
    q.exec();
  }

  Result<int> user_version() { return db->execAndGet("PRAGMA user_version").getInt(); }

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

SqliteTokenStore::SqliteTokenStore(std::unique_ptr<SQLite::Database> db, Cipher cipher)
    : impl_(std::make_unique<Impl>(std::move(db), std::move(cipher))) {}

SqliteTokenStore::~SqliteTokenStore() = default;

Result<std::unique_ptr<SqliteTokenStore>> SqliteTokenStore::open(const std::string& path,
                                                                 Millis busy_timeout,
                                                                 Cipher cipher) {
  if (path != ":memory:") {
    if (auto st = create_private_file(path); !st) return st.error();
  }
  return guarded("opening database " + path, [&]() -> Result<std::unique_ptr<SqliteTokenStore>> {
    auto db = std::make_unique<SQLite::Database>(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE,
                                                 static_cast<int>(busy_timeout.count()));
    // Reading the header fails here, not later, when the file is not a database.
    db->execAndGet("PRAGMA schema_version");
    std::string mode = db->execAndGet("PRAGMA journal_mode = WAL").getString();
    if (mode != "wal" && path != ":memory:") {
      return Error(Errc::kStorage, "database " + path + " cannot use WAL mode (got " + mode + ")");
    }
    db->exec("PRAGMA synchronous = FULL");
    db->exec("PRAGMA secure_delete = ON");
    db->exec("PRAGMA foreign_keys = ON");
    std::unique_ptr<SqliteTokenStore> store(new SqliteTokenStore(std::move(db), std::move(cipher)));
    if (auto st = store->impl_->migrate(path); !st) return st.error();
    return store;
  });
}

Result<UpsertResult> SqliteTokenStore::upsert(const NewToken& token, const TokenSecrets& secrets,
                                              SysTime now, const ScheduleFn& schedule) {
  return guarded("adding token", [&]() -> Result<UpsertResult> {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    auto existing = impl_->select_by("provider = ?1 AND account_id = ?2", to_string(token.provider),
                                     token.account_id);
    if (!existing) return existing.error();
    UpsertResult out;
    TokenRecord& r = out.record;
    out.created = !existing->has_value();
    if (out.created) {
      auto id = new_token_id();
      if (!id) return id.error();
      r.id = std::move(*id);
      r.created_at = now;
    } else {
      // A reconnect: the same row, fresh secrets, a clean slate. Dropping the lease makes a
      // worker that is mid-refresh with the old secrets fail its save instead of overwriting.
      r.id = (*existing)->id;
      r.created_at = (*existing)->created_at;
      r.last_checked_at = (*existing)->last_checked_at;
    }
    r.provider = token.provider;
    r.kind = token.kind;
    r.workspace_id = token.workspace_id;
    r.account_id = token.account_id;
    r.scopes = token.scopes;
    r.expires_at = token.expires_at;
    r.refresh_expires_at = token.refresh_expires_at;
    r.state = TokenState::kActive;
    r.state_since = now;
    r.connected_at = now;
    r.updated_at = now;
    r.has_access_token = !secrets.access_token.empty();
    r.has_refresh_token = !secrets.refresh_token.empty();
    schedule(r);

    auto access = impl_->seal(secrets.access_token, r.id, kAccessField);
    if (!access) return access.error();
    auto refresh = impl_->seal(secrets.refresh_token, r.id, kRefreshField);
    if (!refresh) return refresh.error();
    if (out.created) {
      impl_->insert(r, *access, *refresh);
    } else {
      impl_->write_fields(r, &*access, &*refresh, true);
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
    SQLite::Statement q(*impl_->db, sql);
    if (filter.provider) q.bind(1, text_of(to_string(*filter.provider)));
    if (filter.state) q.bind(2, text_of(to_string(*filter.state)));
    if (filter.workspace_id) q.bind(3, *filter.workspace_id);
    std::vector<TokenRecord> out;
    while (q.executeStep()) {
      auto r = read_row(q);
      if (!r) return r.error();
      out.push_back(std::move(*r));
    }
    return out;
  });
}

Result<bool> SqliteTokenStore::remove(std::string_view id) {
  return guarded("removing token", [&]() -> Result<bool> {
    SQLite::Statement q(*impl_->db, "DELETE FROM tokens WHERE id = ?1");
    q.bind(1, text_of(id));
    return q.exec() > 0;
  });
}

Result<std::vector<StateCounts>> SqliteTokenStore::count_by_state() {
  return guarded("counting tokens", [&]() -> Result<std::vector<StateCounts>> {
    SQLite::Statement q(*impl_->db,
                        "SELECT provider, state, COUNT(*) FROM tokens GROUP BY provider, state "
                        "ORDER BY provider, state");
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
  return guarded("reading secrets", [&]() -> Result<TokenSecrets> {
    SQLite::Statement q(*impl_->db, "SELECT access_token, refresh_token FROM tokens WHERE id = ?1");
    q.bind(1, record.id);
    if (!q.executeStep()) return Error(Errc::kNotFound, "token " + record.id + " does not exist");
    TokenSecrets out;
    const std::pair<int, std::string_view> fields[] = {{0, kAccessField}, {1, kRefreshField}};
    for (const auto& [col, field] : fields) {
      SQLite::Column c = q.getColumn(col);
      if (c.isNull()) continue;
      const auto* data = static_cast<const std::uint8_t*>(c.getBlob());
      auto secret =
          impl_->cipher.open({data, static_cast<std::size_t>(c.getBytes())}, record.id, field);
      if (!secret) return secret.error();
      (col == 0 ? out.access_token : out.refresh_token) = std::move(*secret);
    }
    return out;
  });
}

Result<std::optional<SysTime>> SqliteTokenStore::earliest_due() {
  return guarded("finding the next due token", [&]() -> Result<std::optional<SysTime>> {
    std::optional<SysTime> best;
    for (const char* sql : {kEarliestRefresh, kEarliestCheck}) {
      SQLite::Statement q(*impl_->db, sql);
      if (q.executeStep()) {
        SysTime t = from_unix(q.getColumn(0).getInt64());
        if (!best || t < *best) best = t;
      }
    }
    return best;
  });
}

Result<std::vector<DueToken>> SqliteTokenStore::claim_due(SysTime now, std::size_t limit,
                                                          std::string_view owner, Seconds lease) {
  return guarded("claiming due tokens", [&]() -> Result<std::vector<DueToken>> {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    // Up to `limit` from each index, merged by due time.
    std::map<std::string, SysTime> earliest;
    for (const char* sql : {kDueRefresh, kDueCheck}) {
      SQLite::Statement q(*impl_->db, sql);
      q.bind(1, static_cast<int64_t>(to_unix(now)));
      q.bind(2, static_cast<int64_t>(limit));
      while (q.executeStep()) {
        SysTime due = from_unix(q.getColumn(1).getInt64());
        auto [it, inserted] = earliest.emplace(q.getColumn(0).getString(), due);
        if (!inserted) it->second = std::min(it->second, due);
      }
    }
    std::vector<std::pair<SysTime, std::string>> order;
    order.reserve(earliest.size());
    for (auto& [id, due] : earliest)
      order.emplace_back(due, id);
    std::sort(order.begin(), order.end());
    if (order.size() > limit) order.resize(limit);

    std::vector<DueToken> out;
    out.reserve(order.size());
    SysTime until = now + lease;
    for (const auto& [due, id] : order) {
      auto row = impl_->select_by("id = ?1", id);
      if (!row) return row.error();
      if (!*row) continue;
      DueToken d;
      d.record = std::move(**row);
      const TokenRecord& r = d.record;
      if (!r.lease_owner.empty() && r.lease_owner != owner && r.lease_until &&
          *r.lease_until > now) {
        // Held by another worker (a forced refresh from the CLI): due again when its lease ends.
        impl_->defer(id, now, *r.lease_until);
        continue;
      }
      d.refresh_due = d.record.next_refresh_due && *d.record.next_refresh_due <= now;
      d.check_due = d.record.next_check_due && *d.record.next_check_due <= now;
      impl_->take_lease(id, now, owner, until);
      d.record.lease_owner = std::string(owner);
      d.record.lease_until = until;
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
    if (!r.lease_owner.empty() && r.lease_owner != owner && r.lease_until && *r.lease_until > now) {
      return Error(Errc::kLeaseLost, "token " + r.id + " is being worked on by " + r.lease_owner +
                                         " until " + format_time(*r.lease_until));
    }
    SQLite::Statement q(*impl_->db,
                        "UPDATE tokens SET lease_owner = ?2, lease_until = ?3 WHERE id = ?1");
    q.bind(1, r.id);
    q.bind(2, text_of(owner));
    q.bind(3, static_cast<int64_t>(to_unix(now + lease)));
    q.exec();
    tx.commit();
    r.lease_owner = std::string(owner);
    r.lease_until = now + lease;
    return r;
  });
}

Status SqliteTokenStore::save(const TokenRecord& record, const TokenSecrets* new_secrets,
                              std::string_view owner, LeaseAction lease) {
  // Seal before taking the write lock: the lock is held only for the write itself.
  std::optional<Blob> access, refresh;
  if (new_secrets != nullptr) {
    auto a = impl_->seal(new_secrets->access_token, record.id, kAccessField);
    if (!a) return a.error();
    auto r = impl_->seal(new_secrets->refresh_token, record.id, kRefreshField);
    if (!r) return r.error();
    access = std::move(*a);
    refresh = std::move(*r);
  }
  return guarded("saving token " + record.id, [&]() -> Status {
    SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
    SQLite::Statement q(*impl_->db, "SELECT lease_owner FROM tokens WHERE id = ?1");
    q.bind(1, record.id);
    if (!q.executeStep()) return Error(Errc::kNotFound, "token " + record.id + " was removed");
    std::string holder = q.getColumn(0).isNull() ? "" : q.getColumn(0).getString();
    if (holder != owner) {
      return Error(
          Errc::kLeaseLost,
          "token " + record.id + " is no longer leased by " + std::string(owner) +
              (holder.empty() ? " (it was reconnected or released)" : " (now " + holder + ")"));
    }
    impl_->write_fields(record, new_secrets ? &access : nullptr, new_secrets ? &refresh : nullptr,
                        lease == LeaseAction::kRelease);
    tx.commit();
    return Ok();
  });
}

Result<std::size_t> SqliteTokenStore::rekey() {
  return guarded("re-encrypting tokens", [&]() -> Result<std::size_t> {
    std::size_t rewritten = 0;
    // One transaction per batch keeps the write lock short for a live daemon.
    constexpr int kBatch = 500;
    std::string after;
    for (;;) {
      SQLite::Transaction tx(*impl_->db, SQLite::TransactionBehavior::IMMEDIATE);
      SQLite::Statement q(*impl_->db,
                          "SELECT id, access_token, refresh_token FROM tokens WHERE id > ?1 "
                          "ORDER BY id LIMIT ?2");
      q.bind(1, after);
      q.bind(2, kBatch);
      int seen = 0;
      std::vector<std::tuple<std::string, std::optional<Blob>, std::optional<Blob>>> updates;
      while (q.executeStep()) {
        ++seen;
        after = q.getColumn(0).getString();
        bool stale = false;
        std::array<std::optional<Blob>, 2> blobs;
        const std::string_view fields[] = {kAccessField, kRefreshField};
        for (int col = 1; col <= 2; ++col) {
          SQLite::Column c = q.getColumn(col);
          if (c.isNull()) continue;
          const auto* data = static_cast<const std::uint8_t*>(c.getBlob());
          std::span<const std::uint8_t> blob{data, static_cast<std::size_t>(c.getBytes())};
          auto& slot = blobs[static_cast<std::size_t>(col - 1)];
          slot = Blob(blob.begin(), blob.end());
          if (!impl_->cipher.sealed_with_old_key(blob)) continue;
          auto secret = impl_->cipher.open(blob, after, fields[col - 1]);
          if (!secret) return secret.error();
          auto sealed = impl_->cipher.seal(*secret, after, fields[col - 1]);
          if (!sealed) return sealed.error();
          slot = std::move(*sealed);
          stale = true;
        }
        if (stale) updates.emplace_back(after, std::move(blobs[0]), std::move(blobs[1]));
      }
      for (auto& [id, access, refresh] : updates) {
        SQLite::Statement u(
            *impl_->db, "UPDATE tokens SET access_token = ?2, refresh_token = ?3 WHERE id = ?1");
        u.bind(1, id);
        bind_blob(u, 2, access);
        bind_blob(u, 3, refresh);
        u.exec();
        ++rewritten;
      }
      tx.commit();
      if (seen < kBatch) break;
    }
    return rewritten;
  });
}

Result<int> SqliteTokenStore::schema_version() {
  return guarded("reading schema version", [&] { return impl_->user_version(); });
}

Result<std::string> SqliteTokenStore::explain_schedule_queries() {
  return guarded("explaining queries", [&]() -> Result<std::string> {
    std::string out;
    const std::pair<const char*, bool> queries[] = {
        {kEarliestRefresh, false}, {kEarliestCheck, false}, {kDueRefresh, true}, {kDueCheck, true}};
    for (const auto& [sql, has_params] : queries) {
      SQLite::Statement q(*impl_->db, std::string("EXPLAIN QUERY PLAN ") + sql);
      if (has_params) {
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

Result<std::unique_ptr<SqliteTokenStore>> open_token_store(
    const DatabaseConfig& database, const KeyConfig& key,
    const std::string& credentials_directory) {
  auto keys = load_key_ring(key.file, key.previous_files, credentials_directory);
  if (!keys) return keys.error();
  return SqliteTokenStore::open(database.path, database.busy_timeout, Cipher(std::move(*keys)));
}

}  // namespace tw
