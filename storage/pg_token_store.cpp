#include "storage/pg_token_store.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <functional>
#include <set>
#include <unordered_map>

#include <libpq-fe.h>
#include <pqxx/pqxx>

#include "core/fs.h"
#include "storage/store_common.h"

namespace tw {

using namespace store_detail;

namespace {

// Forward migrations, one per SQLite migration and with the same meaning: entry i takes the
// schema from version i to i + 1. Never edit a shipped entry; append a new one (to both stores).
constexpr std::array<const char*, 7> kPgMigrations{{
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
  access_token         BYTEA,
  refresh_token        BYTEA,
  expires_at           BIGINT,
  refresh_expires_at   BIGINT,
  next_refresh_due     BIGINT,
  next_check_due       BIGINT,
  state                TEXT NOT NULL CHECK (state IN ('active', 'failing', 'needs_reauth',
                                                      'revoked', 'disabled')),
  state_since          BIGINT NOT NULL,
  consecutive_failures INTEGER NOT NULL DEFAULT 0,
  last_error_class     TEXT NOT NULL DEFAULT 'none',
  last_error_operation TEXT NOT NULL DEFAULT '' CHECK (last_error_operation IN ('', 'refresh',
                                                                               'check')),
  last_error_message   TEXT NOT NULL DEFAULT '',
  last_error_at        BIGINT,
  last_refreshed_at    BIGINT,
  last_checked_at      BIGINT,
  connected_at         BIGINT NOT NULL,
  created_at           BIGINT NOT NULL,
  updated_at           BIGINT NOT NULL,
  lease_owner          TEXT,
  lease_until          BIGINT,
  UNIQUE (provider, account_id)
);
CREATE INDEX tokens_refresh_due ON tokens (next_refresh_due) WHERE next_refresh_due IS NOT NULL;
CREATE INDEX tokens_check_due ON tokens (next_check_due) WHERE next_check_due IS NOT NULL;
CREATE INDEX tokens_workspace ON tokens (workspace_id);
)sql",
    // 1 -> 2: a fencing token for leases; due indexes per provider.
    R"sql(
ALTER TABLE tokens ADD COLUMN lease_generation BIGINT NOT NULL DEFAULT 0;
DROP INDEX tokens_refresh_due;
DROP INDEX tokens_check_due;
CREATE INDEX tokens_refresh_due ON tokens (provider, next_refresh_due)
  WHERE next_refresh_due IS NOT NULL;
CREATE INDEX tokens_check_due ON tokens (provider, next_check_due)
  WHERE next_check_due IS NOT NULL;
)sql",
    // 2 -> 3: which needs_reauth / revoked state the operator was notified of.
    R"sql(
ALTER TABLE tokens ADD COLUMN reauth_notified_since BIGINT;
CREATE INDEX tokens_reauth_unnotified ON tokens (state_since)
  WHERE state IN ('needs_reauth', 'revoked');
)sql",
    // 3 -> 4: when a renewal went out whose result is not known yet.
    R"sql(
ALTER TABLE tokens ADD COLUMN renewal_in_doubt_since BIGINT;
)sql",
    // 4 -> 5: token counts by provider and state, kept by triggers in the writing transaction.
    // One statement-level change per (provider, state), applied in key order: transactions that
    // change counts at once (many instances, an outage turning tokens to failing) take the count
    // rows' locks in the same order, so they may wait for each other but never deadlock; and a
    // statement that changes no state touches no count row.
    R"sql(
CREATE TABLE token_counts (
  provider TEXT NOT NULL,
  state    TEXT NOT NULL,
  n        BIGINT NOT NULL,
  PRIMARY KEY (provider, state)
);
INSERT INTO token_counts SELECT provider, state, COUNT(*) FROM tokens GROUP BY provider, state;
CREATE FUNCTION tokens_count() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO token_counts AS c
      SELECT provider, state, COUNT(*) FROM new_rows GROUP BY provider, state
      ORDER BY provider, state
      ON CONFLICT (provider, state) DO UPDATE SET n = c.n + EXCLUDED.n;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO token_counts AS c
      SELECT provider, state, -COUNT(*) FROM old_rows GROUP BY provider, state
      ORDER BY provider, state
      ON CONFLICT (provider, state) DO UPDATE SET n = c.n + EXCLUDED.n;
  ELSE
    INSERT INTO token_counts AS c
      SELECT provider, state, SUM(d) FROM (
        SELECT provider, state, -1 AS d FROM old_rows
        UNION ALL SELECT provider, state, 1 FROM new_rows) changes
      GROUP BY provider, state HAVING SUM(d) <> 0 ORDER BY provider, state
      ON CONFLICT (provider, state) DO UPDATE SET n = c.n + EXCLUDED.n;
  END IF;
  RETURN NULL;
END
$fn$;
CREATE TRIGGER tokens_count_insert AFTER INSERT ON tokens REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tokens_count();
CREATE TRIGGER tokens_count_update AFTER UPDATE ON tokens
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tokens_count();
CREATE TRIGGER tokens_count_delete AFTER DELETE ON tokens REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tokens_count();
)sql",
    // 5 -> 6: providers defined in the configuration: any valid provider name (core/token.h).
    R"sql(
ALTER TABLE tokens DROP CONSTRAINT IF EXISTS tokens_provider_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_provider_check
  CHECK (provider ~ '^[a-z][a-z0-9_-]{0,31}$') NOT VALID;
ALTER TABLE tokens VALIDATE CONSTRAINT tokens_provider_check;
)sql",
    // 6 -> 7: the audit trail (storage/audit.h): rows numbered without gaps and hash-chained,
    // never updated (a trigger refuses it); pruning moves the anchor the chain starts from.
    R"sql(
CREATE TABLE audit (
  seq       BIGINT PRIMARY KEY,
  at        BIGINT NOT NULL,
  actor     TEXT NOT NULL,
  action    TEXT NOT NULL,
  token_id  TEXT NOT NULL,
  outcome   TEXT NOT NULL,
  detail    TEXT NOT NULL,
  prev_hash BYTEA NOT NULL,
  hash      BYTEA NOT NULL
);
CREATE INDEX audit_token ON audit (token_id, seq) WHERE token_id <> '';
CREATE INDEX audit_at ON audit (at);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION 'audit rows are never changed';
END
$fn$;
CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
  FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TABLE audit_anchor (
  id   INTEGER PRIMARY KEY CHECK (id = 1),
  seq  BIGINT NOT NULL,
  hash BYTEA NOT NULL
);
INSERT INTO audit_anchor VALUES (1, 0, decode(repeat('00', 32), 'hex'));
)sql",
}};

// Serialises migrations across processes (pg_advisory_xact_lock key: "tokenwar" in ASCII).
constexpr const char* kMigrationLock = "SELECT pg_advisory_xact_lock(8390891584140551538)";
// Serialises audit appends across processes: each reads the chain's head and extends it.
constexpr const char* kAuditLock = "SELECT pg_advisory_xact_lock(8390891584140551539)";

// Statement parameters, all passed as text (or NULL) and typed by the server from their context
// or an explicit cast: one way to pass every kind of value, including NULLs, to a statement
// whose shape is built at run time.
class Params {
 public:
  Params& text(std::string_view s) {
    v_.emplace_back(std::string(s));
    return *this;
  }
  Params& int64(std::int64_t n) {
    v_.emplace_back(std::to_string(n));
    return *this;
  }
  Params& time(const std::optional<SysTime>& t) {
    if (t) return int64(to_unix(*t));
    v_.emplace_back(std::nullopt);
    return *this;
  }
  Params& time(SysTime t) { return int64(to_unix(t)); }
  // BYTEA in its hex text form.
  Params& blob(const std::optional<Blob>& b) {
    if (!b) {
      v_.emplace_back(std::nullopt);
      return *this;
    }
    v_.emplace_back("\\x" + to_hex(*b));
    return *this;
  }
  Params& value(std::optional<std::string> v) {
    v_.push_back(std::move(v));
    return *this;
  }
  Params& null() {
    v_.emplace_back(std::nullopt);
    return *this;
  }
  // An array literal of text-form values (NULL where absent), for a text[], bigint[], bytea[]
  // or boolean[] parameter.
  Params& array(const std::vector<std::optional<std::string>>& items) {
    std::string a = "{";
    for (const auto& item : items) {
      if (a.size() > 1) a += ',';
      if (!item) {
        a += "NULL";
        continue;
      }
      a += '"';
      for (char c : *item) {
        if (c == '"' || c == '\\') a += '\\';
        a += c;
      }
      a += '"';
    }
    v_.emplace_back(a + "}");
    return *this;
  }
  Params& text_array(const std::vector<std::string>& items) {
    return array({items.begin(), items.end()});
  }
  // The placeholder of the next parameter: "$n".
  std::string next() const { return "$" + std::to_string(v_.size() + 1); }
  const std::vector<std::optional<std::string>>& values() const { return v_; }

 private:
  std::vector<std::optional<std::string>> v_;
};

// A row of a libpqxx result, as decode_row() reads it.
struct PgRow {
  const pqxx::row& row;
  bool null(int i) const { return row[i].is_null(); }
  std::string text(int i) const { return row[i].c_str(); }
  std::int64_t int64(int i) const { return row[i].as<std::int64_t>(); }
};

Result<std::vector<TokenRecord>> decode_rows(const pqxx::result& rows) {
  std::vector<TokenRecord> out;
  out.reserve(rows.size());
  for (const pqxx::row& row : rows) {
    auto r = decode_row(PgRow{row});
    if (!r) return r.error();
    out.push_back(std::move(*r));
  }
  return out;
}

// SQLSTATE classes of an error in one statement's data (22 data exception, 23 integrity
// constraint, P0 raised by a trigger): it fails that write alone, not the batch.
bool data_error(const pqxx::sql_error& e) {
  const std::string& s = e.sqlstate();
  return s.rfind("22", 0) == 0 || s.rfind("23", 0) == 0 || s.rfind("P0", 0) == 0;
}

// Whether a server error means "busy, retry later": a lock or statement timeout, a
// serialization failure, a deadlock.
bool busy_error(const pqxx::sql_error& e) {
  const std::string& s = e.sqlstate();
  return s == "55P03" || s == "57014" || s == "40001" || s == "40P01";
}

// One line of a libpq message (they end in newlines and sometimes carry a DETAIL line).
std::string first_line(std::string_view s) {
  std::string out(s.substr(0, s.find('\n')));
  while (!out.empty() && (out.back() == ' ' || out.back() == '\r'))
    out.pop_back();
  return out;
}

// Where a DSN points, without its password: "host H port P dbname D user U".
std::string dsn_target(const std::string& dsn) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(dsn.c_str(), &err);
  if (opts == nullptr) {
    std::string why = err != nullptr ? first_line(err) : "cannot parse";
    PQfreemem(err);
    return "(an unparsable connection string: " + why + ")";
  }
  std::string out;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    const std::string_view k = o->keyword;
    if (o->val == nullptr || *o->val == '\0') continue;
    if (k == "host" || k == "hostaddr" || k == "port" || k == "dbname" || k == "user") {
      out += (out.empty() ? "" : " ") + std::string(k) + "=" + o->val;
    }
  }
  PQconninfoFree(opts);
  return out.empty() ? "(libpq defaults)" : out;
}

// Whole seconds or milliseconds, as a PostgreSQL setting value.
std::string setting_ms(Millis m) {
  return std::to_string(m.count()) + "ms";
}

// A column of a token's row: its name, its SQL type, and its value, as a parameter's text, from
// a record and its sealed secrets. The id, the lease generation, then every field a save writes.
struct RecordColumn {
  const char* name;
  const char* type;
  std::optional<std::string> (*value)(const TokenRecord&, const SealedPair&);
};

std::optional<std::string> num(std::int64_t v) {
  return std::to_string(v);
}
std::optional<std::string> at(const std::optional<SysTime>& t) {
  return t ? num(to_unix(*t)) : std::nullopt;
}
std::optional<std::string> blob(const std::optional<Blob>& b) {
  return b ? std::optional<std::string>("\\x" + to_hex(*b)) : std::nullopt;
}

const std::vector<RecordColumn>& record_columns() {
  using R = const TokenRecord&;
  using S = const SealedPair&;
  static const std::vector<RecordColumn> columns = {
      {"id", "text", [](R r, S) -> std::optional<std::string> { return r.id; }},
      {"lease_generation", "bigint", [](R r, S) { return num(r.lease_generation); }},
      {"scopes", "text", [](R r, S) -> std::optional<std::string> { return r.scopes; }},
      {"expires_at", "bigint", [](R r, S) { return at(r.expires_at); }},
      {"refresh_expires_at", "bigint", [](R r, S) { return at(r.refresh_expires_at); }},
      {"next_refresh_due", "bigint", [](R r, S) { return at(r.next_refresh_due); }},
      {"next_check_due", "bigint", [](R r, S) { return at(r.next_check_due); }},
      {"state", "text",
       [](R r, S) -> std::optional<std::string> { return std::string(to_string(r.state)); }},
      {"state_since", "bigint", [](R r, S) { return at(r.state_since); }},
      {"consecutive_failures", "bigint", [](R r, S) { return num(r.consecutive_failures); }},
      {"last_error_class", "text",
       [](R r, S) -> std::optional<std::string> {
         return std::string(to_string(r.last_error_class));
       }},
      {"last_error_message", "text",
       [](R r, S) -> std::optional<std::string> { return r.last_error_message; }},
      {"last_error_at", "bigint", [](R r, S) { return at(r.last_error_at); }},
      {"last_refreshed_at", "bigint", [](R r, S) { return at(r.last_refreshed_at); }},
      {"last_checked_at", "bigint", [](R r, S) { return at(r.last_checked_at); }},
      {"connected_at", "bigint", [](R r, S) { return at(r.connected_at); }},
      {"updated_at", "bigint", [](R r, S) { return at(r.updated_at); }},
      {"last_error_operation", "text",
       [](R r, S) -> std::optional<std::string> {
         return std::string(r.last_error_operation ? to_string(*r.last_error_operation) : "");
       }},
      {"kind", "text",
       [](R r, S) -> std::optional<std::string> { return std::string(to_string(r.kind)); }},
      {"workspace_id", "text", [](R r, S) -> std::optional<std::string> { return r.workspace_id; }},
      {"renewal_in_doubt_since", "bigint", [](R r, S) { return at(r.renewal_in_doubt_since); }},
      {"access_token", "bytea", [](R, S s) { return blob(s.access); }},
      {"refresh_token", "bytea", [](R, S s) { return blob(s.refresh); }},
  };
  return columns;
}

}  // namespace

struct PgTokenStore::Impl {
  Impl(PgOptions o, Cipher c) : options(std::move(o)), cipher(std::move(c)) {
    target = "PostgreSQL " + dsn_target(options.dsn);
  }

  PgOptions options;
  Cipher cipher;
  std::string target;  // for messages: where, never the password
  std::unique_ptr<pqxx::connection> conn;
  // Prepared statement names by their SQL, for the current connection.
  std::unordered_map<std::string, std::string> prepared;

  // The open connection, connecting (and setting the session up) when there is none.
  pqxx::connection& connection() {
    if (conn && conn->is_open()) return *conn;
    conn.reset();
    prepared.clear();
    auto c = std::make_unique<pqxx::connection>(options.dsn);
    // Set through libpqxx, which sets them again should it ever reconnect this connection.
    c->set_variable("lock_timeout", "'" + setting_ms(options.lock_timeout) + "'");
    c->set_variable("statement_timeout", "'" + setting_ms(options.statement_timeout) + "'");
    // Durable commits: flushed on the server and on its synchronous standbys before COMMIT
    // returns. Anything weaker (off, local, remote_write) could let a crash lose a rotated
    // refresh token the provider has already retired; remote_apply, stronger, is kept.
    if (const std::string sc = c->get_variable("synchronous_commit");
        sc != "on" && sc != "remote_apply") {
      c->set_variable("synchronous_commit", "on");
    }
    conn = std::move(c);
    return *conn;
  }

  // Appends audit rows after the chain's head, in `t` (pg_token_store.cpp, with the others).
  void append_audit_rows(pqxx::work& t, std::span<const AuditEntry> entries);

  // Runs `sql` with `params` in `t` as a prepared statement (prepared on first use).
  pqxx::result exec(pqxx::transaction_base& t, const std::string& sql, const Params& params = {}) {
    auto it = prepared.find(sql);
    if (it == prepared.end()) {
      std::string name = "tw" + std::to_string(prepared.size() + 1);
      conn->prepare(name, sql);
      it = prepared.emplace(sql, std::move(name)).first;
    }
    return t.exec_prepared(it->second, pqxx::prepare::make_dynamic_params(params.values()));
  }

  // Runs `body` with a connection, turning libpqxx's exceptions into Errors that name the
  // operation. A lost connection is dropped, so the next call connects again.
  template <class F>
  auto guarded(std::string_view what, F&& body) -> decltype(body()) {
    const std::string where = std::string(what) + " in " + target;
    try {
      connection();
      return body();
    } catch (const pqxx::broken_connection& e) {
      conn.reset();
      return Error(Errc::kStorage, where + ": connection lost or refused: " + first_line(e.what()));
    } catch (const pqxx::in_doubt_error& e) {
      conn.reset();
      return Error(Errc::kStorage,
                   where +
                       ": the connection broke during COMMIT; the transaction may or may "
                       "not have been stored: " +
                       first_line(e.what()));
    } catch (const pqxx::sql_error& e) {
      if (busy_error(e)) {
        return Error(Errc::kBusy, where + ": busy (" + e.sqlstate() + "): " + first_line(e.what()));
      }
      return Error(Errc::kStorage, where + ": " + first_line(e.what()));
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      if (conn && !conn->is_open()) conn.reset();
      return Error(Errc::kStorage, where + ": " + first_line(e.what()));
    }
  }

  Result<std::optional<TokenRecord>> select_one(pqxx::transaction_base& t, const std::string& where,
                                                const Params& params) {
    auto rows = decode_rows(
        exec(t, std::string("SELECT ") + kColumns + " FROM tokens WHERE " + where, params));
    if (!rows) return rows.error();
    if (rows->empty()) return std::optional<TokenRecord>();
    return std::optional<TokenRecord>(std::move(rows->front()));
  }

  // A reconnect by `add`: every column of `r`, its secrets exactly as given (an absent one is
  // removed), the lease released and its generation set to r's, which fences out a worker still
  // busy with the old secrets.
  void reconnect(pqxx::transaction_base& t, const TokenRecord& r, const SealedPair& sealed) {
    Params p;
    std::string set;
    for (const RecordColumn& c : record_columns()) {
      if (std::string_view(c.name) == "id") continue;
      set += (set.empty() ? "" : ", ") + std::string(c.name) + " = " + p.next() + "::" + c.type;
      p.value(c.value(r, sealed));
    }
    const std::string sql = "UPDATE tokens SET " + set +
                            ", lease_owner = NULL, lease_until = NULL WHERE id = " + p.next();
    p.text(r.id);
    exec(t, sql, p);
  }

  // Why a fenced write of `lease` by `owner` wrote nothing.
  Error fenced_out(pqxx::transaction_base& t, const LeaseRef& lease, std::string_view owner) {
    auto rows = exec(t, "SELECT lease_owner, lease_generation FROM tokens WHERE id = $1",
                     Params().text(lease.id));
    if (rows.empty()) return Error(Errc::kNotFound, "token " + lease.id + " was removed");
    return lease_lost(lease, owner, rows[0][0].is_null() ? "" : rows[0][0].c_str(),
                      rows[0][1].as<std::int64_t>());
  }

  // One write of write_batch(), inside its transaction.
  Status write_one(pqxx::transaction_base& t, const StoreWrite& w, const SealedPair& sealed,
                   std::string_view owner) {
    std::vector<Status> out{Ok()};
    write_many(t, {&w, 1}, {sealed}, out, owner);
    return std::move(out.front());
  }

  // Every write of a batch in two statements, one for the saves and one for the renewal
  // attempts, each row fenced in the WHERE clause as write_one() fences it; a write whose row was
  // not updated then learns why from fenced_out(). The same effect as write_one() on each write,
  // in two round trips instead of one per write. Each token may appear once in `writes`.
  void write_many(pqxx::transaction_base& t, std::span<const StoreWrite> writes,
                  const std::vector<SealedPair>& sealed, std::vector<Status>& out,
                  std::string_view owner) {
    using Value = std::optional<std::string>;
    const std::vector<RecordColumn>& columns = record_columns();
    std::vector<std::vector<Value>> saves(columns.size() + 1);  // and whether to release
    std::vector<std::vector<Value>> renewals(3);
    std::vector<std::size_t> pending;
    for (std::size_t i = 0; i < writes.size(); ++i) {
      if (!out[i]) continue;
      const StoreWrite& w = writes[i];
      pending.push_back(i);
      if (w.kind == StoreWrite::Kind::kSave) {
        for (std::size_t c = 0; c < columns.size(); ++c) {
          saves[c].push_back(columns[c].value(*w.record, sealed[i]));
        }
        saves.back().push_back(w.lease_action == LeaseAction::kRelease ? "t" : "f");
      } else {
        renewals[0].push_back(w.lease.id);
        renewals[1].push_back(std::to_string(w.lease.generation));
        renewals[2].push_back(std::to_string(to_unix(w.at)));
      }
    }
    std::set<std::string> written;
    if (!saves[0].empty()) {
      Params p;
      std::string set, from, names;
      for (std::size_t c = 0; c <= columns.size(); ++c) {
        const bool release = c == columns.size();
        const std::string name = release ? "release" : columns[c].name;
        from += (c == 0 ? "" : ", ") + p.next() +
                "::" + (release ? std::string("boolean") : columns[c].type) + "[]";
        names += (c == 0 ? "" : ", ") + name;
        p.array(saves[c]);
        if (release || name == "id" || name == "lease_generation") continue;
        set += set.empty() ? "" : ", ";
        // An absent secret keeps the stored one, as save() without new_secrets does.
        set += name == "access_token" || name == "refresh_token"
                   ? name + " = COALESCE(v." + name + ", t." + name + ")"
                   : name + " = v." + name;
      }
      set +=
          ", lease_owner = CASE WHEN v.release THEN NULL ELSE t.lease_owner END, "
          "lease_until = CASE WHEN v.release THEN NULL ELSE t.lease_until END";
      const std::string sql = "UPDATE tokens AS t SET " + set + " FROM unnest(" + from +
                              ") AS v (" + names +
                              ") WHERE t.id = v.id AND t.lease_owner = " + p.next() +
                              " AND t.lease_generation = v.lease_generation RETURNING t.id";
      p.text(owner);
      for (const pqxx::row& row : exec(t, sql, p))
        written.insert(row[0].c_str());
    }
    if (!renewals[0].empty()) {
      // An earlier attempt still in doubt keeps its time: that is when the doubt began.
      const pqxx::result rows =
          exec(t,
               "UPDATE tokens AS t SET renewal_in_doubt_since = "
               "COALESCE(t.renewal_in_doubt_since, v.at) "
               "FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS v (id, generation, at) "
               "WHERE t.id = v.id AND t.lease_owner = $4 AND t.lease_generation = v.generation "
               "RETURNING t.id",
               Params().array(renewals[0]).array(renewals[1]).array(renewals[2]).text(owner));
      for (const pqxx::row& row : rows)
        written.insert(row[0].c_str());
    }
    for (std::size_t i : pending) {
      const StoreWrite& w = writes[i];
      const LeaseRef lease = w.kind == StoreWrite::Kind::kSave
                                 ? LeaseRef{w.record->id, w.record->lease_generation}
                                 : w.lease;
      if (!written.contains(lease.id)) out[i] = fenced_out(t, lease, owner);
    }
  }

  // Inserts a new token; false when another process inserted the same (provider, account_id)
  // first (then nothing was written).
  bool insert(pqxx::transaction_base& t, const TokenRecord& r, const SealedPair& sealed) {
    Params p;
    std::string names = "provider, account_id, created_at";
    std::string values = p.next();
    p.text(to_string(r.provider));
    values += ", " + p.next();
    p.text(r.account_id);
    values += ", " + p.next() + "::bigint";
    p.time(r.created_at);
    for (const RecordColumn& c : record_columns()) {
      names += ", " + std::string(c.name);
      values += ", " + p.next() + "::" + c.type;
      p.value(c.value(r, sealed));
    }
    return exec(t,
                "INSERT INTO tokens (" + names + ") VALUES (" + values +
                    ") ON CONFLICT (provider, account_id) DO NOTHING",
                p)
               .affected_rows() == 1;
  }

  // Adds or reconnects one token inside `t`.
  Result<UpsertResult> upsert_in(pqxx::transaction_base& t, const NewToken& token,
                                 const TokenSecrets& secrets, SysTime now,
                                 const ScheduleFn& schedule) {
    // Twice at most: a concurrent add of the same account can win the insert, and is then a
    // reconnect of the row it committed.
    for (int attempt = 0;; ++attempt) {
      auto existing = select_one(t, "provider = $1 AND account_id = $2 FOR UPDATE",
                                 Params().text(to_string(token.provider)).text(token.account_id));
      if (!existing) return existing.error();
      auto built = build_upsert(token, secrets, now, *existing, schedule);
      if (!built) return built.error();
      auto sealed = seal(cipher, secrets, built->record.id);
      if (!sealed) return sealed.error();
      if (!built->created) {
        reconnect(t, built->record, *sealed);
        return built;
      }
      if (insert(t, built->record, *sealed)) return built;
      if (attempt > 0) {
        return Error(Errc::kBusy, "token " + token.account_id + " is being added elsewhere");
      }
    }
  }

  // Leases the tokens `ids` to `owner` until `until`, each under its next generation, and moves
  // their due times reached by `now` to `until`.
  void take_leases(pqxx::transaction_base& t, const std::vector<std::string>& ids, SysTime now,
                   std::string_view owner, SysTime until) {
    exec(t,
         "UPDATE tokens SET lease_owner = $2, lease_until = $3::bigint, "
         "lease_generation = lease_generation + 1, "
         "next_refresh_due = CASE WHEN next_refresh_due <= $4::bigint THEN $3::bigint "
         "ELSE next_refresh_due END, "
         "next_check_due = CASE WHEN next_check_due <= $4::bigint THEN $3::bigint "
         "ELSE next_check_due END WHERE id = ANY ($1::text[])",
         Params().text_array(ids).text(owner).time(until).time(now));
  }

  // Moves the due times of `id` reached by `now` to `until`.
  void defer(pqxx::transaction_base& t, const std::string& id, SysTime now, SysTime until) {
    exec(t,
         "UPDATE tokens SET "
         "next_refresh_due = CASE WHEN next_refresh_due <= $2::bigint THEN $3::bigint "
         "ELSE next_refresh_due END, "
         "next_check_due = CASE WHEN next_check_due <= $2::bigint THEN $3::bigint "
         "ELSE next_check_due END WHERE id = $1",
         Params().text(id).time(now).time(until));
  }

  // Decrypts the secret in field `col` of `row` (NULL: an empty Secret).
  Result<Secret> open_secret(const pqxx::field& f, const std::string& id, std::string_view name) {
    if (f.is_null()) return Secret();
    pqxx::binarystring b(f);
    return cipher.open({b.data(), b.size()}, id, name);
  }

  Result<TokenSecrets> open_secrets(const pqxx::field& access, const pqxx::field& refresh,
                                    const std::string& id) {
    auto a = open_secret(access, id, kAccessField);
    if (!a) return a.error();
    auto r = open_secret(refresh, id, kRefreshField);
    if (!r) return r.error();
    return TokenSecrets{std::move(*a), std::move(*r)};
  }

  // The schema version, or -1 when the database has no tokenwarden schema.
  int read_version(pqxx::transaction_base& t) {
    if (exec(t, "SELECT to_regclass('tokenwarden_schema') IS NULL")[0][0].as<bool>()) return -1;
    auto rows = exec(t, "SELECT version FROM tokenwarden_schema");
    return rows.empty() ? 0 : rows[0][0].as<int>();
  }

  Status migrate(OpenMode mode) {
    const int latest = static_cast<int>(kPgMigrations.size());
    for (;;) {
      pqxx::work t(*conn);
      t.exec(kMigrationLock);
      int version = read_version(t);
      if (version < 0) {
        if (mode == OpenMode::kExisting) {
          return Error(Errc::kNotFound,
                       "no tokenwarden schema in " + target +
                           " (check storage.postgres; `tokenwarden add` creates it)");
        }
        t.exec("CREATE TABLE tokenwarden_schema (version INTEGER NOT NULL)");
        t.exec("INSERT INTO tokenwarden_schema VALUES (0)");
        version = 0;
      }
      if (version > latest) {
        return Error(Errc::kStorage, target + " has schema version " + std::to_string(version) +
                                         ", newer than this build's " + std::to_string(latest) +
                                         ": upgrade tokenwarden");
      }
      if (version == latest) {
        t.commit();
        return Ok();
      }
      t.exec(kPgMigrations[static_cast<std::size_t>(version)]);
      t.exec("UPDATE tokenwarden_schema SET version = " + std::to_string(version + 1));
      t.commit();
    }
  }

  // The statements behind earliest_due_token() and claim_due(): for each provider served and each
  // due column, the earliest rows through the (provider, due) partial index, O(log n + limit)
  // each; then merged. claim_due's locks the rows it reads, skipping those another claimer has
  // locked. $1 is now, $2 the limit.
  static std::string due_sql(const ProviderSet& providers, bool earliest_only) {
    std::string parts, ctes;
    int n = 0;
    for (Provider p : providers) {
      for (const char* col : {"next_refresh_due", "next_check_due"}) {
        const std::string where =
            std::string(" FROM tokens WHERE provider = '") + std::string(to_string(p)) + "' AND " +
            col + (earliest_only ? " IS NOT NULL" : " <= $1::bigint") + " ORDER BY " + col;
        if (!parts.empty()) parts += " UNION ALL ";
        if (earliest_only) {
          parts += std::string("(SELECT id, ") + col + " AS due" + where + " LIMIT 1)";
        } else {
          // The whole row, as locked: a row changed since the statement began is re-read and
          // re-checked by the lock, and only what the lock read may decide the claim.
          const std::string name = "c" + std::to_string(n++);
          ctes += (ctes.empty() ? "WITH " : ", ") + name + " AS (SELECT " + kColumns +
                  ", access_token, refresh_token, " + col + " AS due" + where +
                  " LIMIT $2::bigint FOR UPDATE SKIP LOCKED)";
          parts += "SELECT * FROM " + name;
        }
      }
    }
    if (earliest_only) return "SELECT id, due FROM (" + parts + ") u ORDER BY due LIMIT 1";
    // A token due on both columns comes twice (the same locked version): kept once, at its
    // earlier due time.
    return ctes + ", u AS (" + parts +
           ") SELECT * FROM (SELECT DISTINCT ON (id) * FROM u ORDER BY id, due) d "
           "ORDER BY due LIMIT $2::bigint";
  }
};

int PgTokenStore::latest_schema_version() {
  return static_cast<int>(kPgMigrations.size());
}

std::string_view PgTokenStore::migration_sql(int from_version) {
  if (from_version < 0 || from_version >= latest_schema_version()) die("no such migration");
  return kPgMigrations[static_cast<std::size_t>(from_version)];
}

PgTokenStore::PgTokenStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PgTokenStore::~PgTokenStore() = default;

Result<std::unique_ptr<PgTokenStore>> PgTokenStore::open(const PgOptions& options, Cipher cipher,
                                                         OpenMode mode) {
  auto impl = std::make_unique<Impl>(options, std::move(cipher));
  Impl& i = *impl;
  auto st = i.guarded("opening the token store", [&]() -> Status {
    if (auto migrated = i.migrate(mode); !migrated) return migrated;
    pqxx::nontransaction t(*i.conn);
    const auto server = t.exec("SELECT floor(extract(epoch FROM clock_timestamp()))::bigint")[0][0]
                            .as<std::int64_t>();
    const std::int64_t skew = to_unix(options.clock()) - server;
    if (std::abs(skew) > options.max_clock_skew.count()) {
      return Error(Errc::kStorage,
                   "this host's clock is " + std::to_string(std::abs(skew)) + " s " +
                       (skew > 0 ? "ahead of" : "behind") + " the clock of " + i.target +
                       ": instances on several hosts compare each other's lease expiries and "
                       "due times, so their clocks must agree within " +
                       std::to_string(options.max_clock_skew.count()) +
                       " s; synchronise them (NTP, e.g. systemd-timesyncd)");
    }
    return Ok();
  });
  if (!st) return st.error();
  return std::unique_ptr<PgTokenStore>(new PgTokenStore(std::move(impl)));
}

std::string PgTokenStore::describe() const {
  return impl_->target;
}

Result<int> PgTokenStore::schema_version() {
  return impl_->guarded("reading the schema version", [&]() -> Result<int> {
    pqxx::read_transaction t(*impl_->conn);
    return std::max(impl_->read_version(t), 0);
  });
}

Result<UpsertResult> PgTokenStore::upsert(const NewToken& token, const TokenSecrets& secrets,
                                          SysTime now, const ScheduleFn& schedule) {
  return impl_->guarded("adding token", [&]() -> Result<UpsertResult> {
    pqxx::work t(*impl_->conn);
    auto out = impl_->upsert_in(t, token, secrets, now, schedule);
    if (!out) return out.error();
    t.commit();
    return out;
  });
}

Result<std::vector<UpsertResult>> PgTokenStore::upsert_batch(std::span<const TokenImport> tokens,
                                                             SysTime now,
                                                             const ScheduleFn& schedule) {
  return impl_->guarded("adding tokens", [&]() -> Result<std::vector<UpsertResult>> {
    std::vector<UpsertResult> out;
    out.reserve(tokens.size());
    pqxx::work t(*impl_->conn);
    for (const TokenImport& one : tokens) {
      auto r = impl_->upsert_in(t, one.token, one.secrets, now, schedule);
      if (!r) return r.error();
      out.push_back(std::move(*r));
    }
    t.commit();
    return out;
  });
}

Result<std::optional<TokenRecord>> PgTokenStore::find(std::string_view id) {
  return impl_->guarded("reading token", [&]() -> Result<std::optional<TokenRecord>> {
    pqxx::read_transaction t(*impl_->conn);
    return impl_->select_one(t, "id = $1", Params().text(id));
  });
}

Result<std::vector<TokenRecord>> PgTokenStore::list(const ListFilter& filter) {
  return impl_->guarded("listing tokens", [&]() -> Result<std::vector<TokenRecord>> {
    pqxx::read_transaction t(*impl_->conn);
    Params p;
    filter.provider ? p.text(to_string(*filter.provider)) : p.null();
    filter.state ? p.text(to_string(*filter.state)) : p.null();
    filter.workspace_id ? p.text(*filter.workspace_id) : p.null();
    return decode_rows(impl_->exec(t,
                                   std::string("SELECT ") + kColumns +
                                       " FROM tokens WHERE ($1::text IS NULL OR provider = $1) "
                                       "AND ($2::text IS NULL OR state = $2) "
                                       "AND ($3::text IS NULL OR workspace_id = $3) "
                                       "ORDER BY provider, workspace_id, account_id",
                                   p));
  });
}

Result<bool> PgTokenStore::remove(std::string_view id) {
  return impl_->guarded("removing token", [&]() -> Result<bool> {
    pqxx::work t(*impl_->conn);
    const bool removed =
        impl_->exec(t, "DELETE FROM tokens WHERE id = $1", Params().text(id)).affected_rows() > 0;
    t.commit();
    return removed;
  });
}

Result<std::vector<StateCounts>> PgTokenStore::count_by_state() {
  return impl_->guarded("counting tokens", [&]() -> Result<std::vector<StateCounts>> {
    pqxx::read_transaction t(*impl_->conn);
    std::vector<StateCounts> out;
    for (const pqxx::row& row : impl_->exec(
             t,
             "SELECT provider, state, n FROM token_counts WHERE n > 0 ORDER BY provider, state")) {
      auto provider = parse_provider(row[0].c_str());
      auto state = parse_token_state(row[1].c_str());
      if (!provider || !state)
        return Error(Errc::kCorrupt, "unknown provider or state in database");
      out.push_back({*provider, *state, row[2].as<std::size_t>()});
    }
    return out;
  });
}

Result<std::vector<TokenRecord>> PgTokenStore::needing_reauth(std::size_t limit) {
  return impl_->guarded(
      "listing tokens that need re-authorisation", [&]() -> Result<std::vector<TokenRecord>> {
        pqxx::read_transaction t(*impl_->conn);
        return decode_rows(
            impl_->exec(t,
                        std::string("SELECT ") + kColumns +
                            " FROM tokens WHERE state IN ('needs_reauth', 'revoked') "
                            "ORDER BY state_since, id LIMIT $1::bigint",
                        Params().int64(static_cast<std::int64_t>(limit))));
      });
}

Result<std::vector<TokenRecord>> PgTokenStore::unnotified_reauth(std::size_t limit) {
  return impl_->guarded("listing tokens to notify", [&]() -> Result<std::vector<TokenRecord>> {
    pqxx::read_transaction t(*impl_->conn);
    return decode_rows(impl_->exec(t,
                                   std::string("SELECT ") + kColumns +
                                       " FROM tokens WHERE state IN ('needs_reauth', 'revoked') "
                                       "AND reauth_notified_since IS DISTINCT FROM state_since "
                                       "ORDER BY state_since, id LIMIT $1::bigint",
                                   Params().int64(static_cast<std::int64_t>(limit))));
  });
}

Result<bool> PgTokenStore::mark_reauth_notified(std::string_view id, SysTime state_since) {
  return impl_->guarded("recording a notice", [&]() -> Result<bool> {
    pqxx::work t(*impl_->conn);
    const bool marked =
        impl_
            ->exec(t,
                   "UPDATE tokens SET reauth_notified_since = $2::bigint WHERE id = $1 AND "
                   "state_since = $2::bigint AND state IN ('needs_reauth', 'revoked')",
                   Params().text(id).time(state_since))
            .affected_rows() > 0;
    t.commit();
    return marked;
  });
}

Result<TokenSecrets> PgTokenStore::read_secrets(const TokenRecord& record) {
  return impl_->guarded("reading secrets", [&]() -> Result<TokenSecrets> {
    pqxx::read_transaction t(*impl_->conn);
    auto rows = impl_->exec(t, "SELECT access_token, refresh_token FROM tokens WHERE id = $1",
                            Params().text(record.id));
    if (rows.empty()) return Error(Errc::kNotFound, "token " + record.id + " does not exist");
    return impl_->open_secrets(rows[0][0], rows[0][1], record.id);
  });
}

Result<std::optional<DueRef>> PgTokenStore::earliest_due_token(const ProviderSet& providers) {
  if (providers.empty()) return std::optional<DueRef>();
  return impl_->guarded("finding the next due token", [&]() -> Result<std::optional<DueRef>> {
    pqxx::read_transaction t(*impl_->conn);
    auto rows = impl_->exec(t, Impl::due_sql(providers, /*earliest_only=*/true));
    if (rows.empty() || rows[0][1].is_null()) return std::optional<DueRef>();
    return std::optional<DueRef>(
        DueRef{rows[0][0].c_str(), from_unix(rows[0][1].as<std::int64_t>())});
  });
}

Result<std::vector<DueToken>> PgTokenStore::claim_due(SysTime now, std::size_t limit,
                                                      std::string_view owner, Seconds lease,
                                                      const ProviderSet& providers) {
  if (providers.empty() || limit == 0) return std::vector<DueToken>();
  return impl_->guarded("claiming due tokens", [&]() -> Result<std::vector<DueToken>> {
    pqxx::work t(*impl_->conn);
    const pqxx::result rows =
        impl_->exec(t, Impl::due_sql(providers, /*earliest_only=*/false),
                    Params().time(now).int64(static_cast<std::int64_t>(limit)));
    std::vector<DueToken> out;
    out.reserve(rows.size());
    std::vector<std::string> ids;
    const SysTime until = now + lease;
    for (const pqxx::row& row : rows) {
      auto record = decode_row(PgRow{row});
      if (!record) return record.error();
      DueToken d;
      d.record = std::move(*record);
      if (lease_held(d.record, now)) {
        // Still being worked on (a forced refresh from the CLI, or a request whose lease was
        // extended): due again when that lease ends, and never claimed twice meanwhile.
        impl_->defer(t, d.record.id, now, *d.record.lease_until);
        continue;
      }
      d.refresh_due = d.record.next_refresh_due && *d.record.next_refresh_due <= now;
      d.check_due = d.record.next_check_due && *d.record.next_check_due <= now;
      d.record.lease_owner = std::string(owner);
      d.record.lease_until = until;
      d.record.lease_generation += 1;
      const int secrets_col = kColumnCount;
      if (auto s = impl_->open_secrets(row[secrets_col], row[secrets_col + 1], d.record.id)) {
        d.secrets = std::move(*s);
      }
      ids.push_back(d.record.id);
      out.push_back(std::move(d));
    }
    if (!ids.empty()) impl_->take_leases(t, ids, now, owner, until);
    t.commit();
    return out;
  });
}

Result<TokenRecord> PgTokenStore::claim(std::string_view id, SysTime now, std::string_view owner,
                                        Seconds lease) {
  return impl_->guarded("claiming token", [&]() -> Result<TokenRecord> {
    pqxx::work t(*impl_->conn);
    auto row = impl_->select_one(t, "id = $1 FOR UPDATE", Params().text(id));
    if (!row) return row.error();
    if (!*row) return Error(Errc::kNotFound, "no token " + std::string(id));
    TokenRecord r = std::move(**row);
    if (lease_held(r, now)) {
      return Error(Errc::kLeaseLost, "token " + r.id + " is being worked on by " + r.lease_owner +
                                         " until " + format_time(*r.lease_until));
    }
    impl_->take_leases(t, {r.id}, now, owner, now + lease);
    t.commit();
    r.lease_owner = std::string(owner);
    r.lease_until = now + lease;
    r.lease_generation += 1;
    return r;
  });
}

Result<std::vector<std::string>> PgTokenStore::extend_leases(const std::vector<LeaseRef>& leases,
                                                             std::string_view owner, SysTime now,
                                                             Seconds lease) {
  if (leases.empty()) return std::vector<std::string>();
  return impl_->guarded("extending leases", [&]() -> Result<std::vector<std::string>> {
    pqxx::work t(*impl_->conn);
    std::vector<std::string> ids, generations;
    for (const LeaseRef& l : leases) {
      ids.push_back(l.id);
      generations.push_back(std::to_string(l.generation));
    }
    // The due times move with the lease, as claim_due() set them.
    const pqxx::result kept =
        impl_->exec(t,
                    "UPDATE tokens SET lease_until = $3::bigint, "
                    "next_refresh_due = CASE WHEN next_refresh_due <= $3::bigint THEN $3::bigint "
                    "ELSE next_refresh_due END, "
                    "next_check_due = CASE WHEN next_check_due <= $3::bigint THEN $3::bigint "
                    "ELSE next_check_due END "
                    "FROM unnest($1::text[], $2::bigint[]) AS l (id, generation) "
                    "WHERE tokens.id = l.id AND tokens.lease_owner = $4 "
                    "AND tokens.lease_generation = l.generation RETURNING tokens.id",
                    Params().text_array(ids).text_array(generations).time(now + lease).text(owner));
    t.commit();
    std::vector<std::string> lost;
    for (const LeaseRef& l : leases) {
      const bool found = std::any_of(kept.begin(), kept.end(),
                                     [&](const pqxx::row& row) { return l.id == row[0].c_str(); });
      if (!found) lost.push_back(l.id);
    }
    return lost;
  });
}

std::vector<Status> PgTokenStore::write_batch(std::span<const StoreWrite> writes,
                                              std::string_view owner) {
  std::vector<Status> out(writes.size(), Ok());
  std::vector<SealedPair> sealed(writes.size());
  for (std::size_t i = 0; i < writes.size(); ++i) {
    const StoreWrite& w = writes[i];
    if (w.kind != StoreWrite::Kind::kSave || w.new_secrets == nullptr) continue;
    auto s = seal(impl_->cipher, *w.new_secrets, w.record->id);
    if (!s) {
      out[i] = s.error();
    } else {
      sealed[i] = std::move(*s);
    }
  }
  const std::string what = describe_batch(writes);
  const std::vector<Status> sealing = out;
  // First every write in one plain transaction: in two statements for the whole batch, or one
  // by one when a token appears twice (the order of its writes then matters). Should the server
  // refuse one write for itself (a constraint; in PostgreSQL that aborts the whole transaction),
  // the batch runs again with each write under its own savepoint, so that write fails alone and
  // the others are stored.
  std::set<std::string> ids;
  for (const StoreWrite& w : writes) {
    ids.insert(w.kind == StoreWrite::Kind::kSave ? w.record->id : w.lease.id);
  }
  const bool all_at_once = ids.size() == writes.size();
  for (bool savepoints : {false, true}) {
    out = sealing;
    bool refused = false;
    Status st = impl_->guarded(what, [&]() -> Status {
      pqxx::work t(*impl_->conn);
      if (!savepoints && all_at_once) {
        try {
          impl_->write_many(t, writes, sealed, out, owner);
        } catch (const pqxx::sql_error& e) {
          if (!data_error(e)) throw;
          refused = true;
          return Ok();
        }
        t.commit();
        return Ok();
      }
      for (std::size_t i = 0; i < writes.size(); ++i) {
        if (!out[i]) continue;
        if (!savepoints) {
          try {
            out[i] = impl_->write_one(t, writes[i], sealed[i], owner);
          } catch (const pqxx::sql_error& e) {
            if (!data_error(e)) throw;
            refused = true;
            return Ok();
          }
          continue;
        }
        t.exec("SAVEPOINT one_write");
        try {
          out[i] = impl_->write_one(t, writes[i], sealed[i], owner);
        } catch (const pqxx::sql_error& e) {
          if (!data_error(e)) throw;
          t.exec("ROLLBACK TO SAVEPOINT one_write");
          out[i] =
              Error(Errc::kStorage, what + " in " + impl_->target + ": " + first_line(e.what()));
        }
        t.exec("RELEASE SAVEPOINT one_write");
      }
      t.commit();
      return Ok();
    });
    if (!st) {
      std::fill(out.begin(), out.end(), st);
      return out;
    }
    if (!refused) return out;
  }
  return out;
}

Result<std::size_t> PgTokenStore::pull_in_checks(Provider provider, SysTime now, Seconds period) {
  if (period.count() <= 0) return Error(Errc::kInvalidArgument, "a check period must be positive");
  return impl_->guarded("pulling in checks", [&]() -> Result<std::size_t> {
    pqxx::work t(*impl_->conn);
    // As SQLite's: due - period * ((due - now - 1) / period) lies in (now, now + period].
    const std::size_t moved =
        impl_
            ->exec(t,
                   "UPDATE tokens SET next_check_due = next_check_due - "
                   "$3::bigint * ((next_check_due - $2::bigint - 1) / $3::bigint) "
                   "WHERE provider = $1 AND next_check_due > $2::bigint + $3::bigint "
                   "AND consecutive_failures = 0",
                   Params().text(to_string(provider)).time(now).int64(period.count()))
            .affected_rows();
    t.commit();
    return moved;
  });
}

namespace {

// A BYTEA field, or absent when NULL.
std::optional<Blob> get_blob(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  pqxx::binarystring b(f);
  return Blob(b.data(), b.data() + b.size());
}

}  // namespace

Result<std::vector<SealedToken>> PgTokenStore::read_sealed(std::string_view after_id,
                                                           std::size_t limit) {
  return impl_->guarded("reading tokens", [&]() -> Result<std::vector<SealedToken>> {
    pqxx::read_transaction t(*impl_->conn);
    const pqxx::result rows =
        impl_->exec(t,
                    std::string("SELECT ") + kColumns +
                        ", access_token, refresh_token, reauth_notified_since FROM tokens "
                        "WHERE id > $1 ORDER BY id LIMIT $2::bigint",
                    Params().text(after_id).int64(static_cast<std::int64_t>(limit)));
    std::vector<SealedToken> out;
    out.reserve(rows.size());
    for (const pqxx::row& row : rows) {
      auto r = decode_row(PgRow{row});
      if (!r) return r.error();
      SealedToken tok;
      tok.record = std::move(*r);
      tok.access_token = get_blob(row[kColumnCount]);
      tok.refresh_token = get_blob(row[kColumnCount + 1]);
      if (!row[kColumnCount + 2].is_null()) {
        tok.reauth_notified_since = from_unix(row[kColumnCount + 2].as<std::int64_t>());
      }
      out.push_back(std::move(tok));
    }
    return out;
  });
}

Status PgTokenStore::write_sealed(std::span<const SealedToken> tokens) {
  return impl_->guarded("copying tokens in", [&]() -> Status {
    pqxx::work t(*impl_->conn);
    for (const SealedToken& tok : tokens) {
      const TokenRecord& r = tok.record;
      const pqxx::result clash = impl_->exec(
          t, "SELECT id FROM tokens WHERE id = $1 OR (provider = $2 AND account_id = $3)",
          Params().text(r.id).text(to_string(r.provider)).text(r.account_id));
      if (!clash.empty() || !impl_->insert(t, r, SealedPair{tok.access_token, tok.refresh_token})) {
        return already_stored(r, clash.empty() ? "" : clash[0][0].c_str());
      }
      impl_->exec(t, "UPDATE tokens SET reauth_notified_since = $2::bigint WHERE id = $1",
                  Params().text(r.id).time(tok.reauth_notified_since));
    }
    t.commit();
    return Ok();
  });
}

Result<std::size_t> PgTokenStore::rekey(std::size_t batch,
                                        const std::function<void(std::size_t)>& progress) {
  return impl_->guarded("re-encrypting tokens", [&]() -> Result<std::size_t> {
    std::size_t rewritten = 0;
    batch = std::max<std::size_t>(batch, 1);
    const KeyId& id = impl_->cipher.keys().current().id();
    const Blob current(id.begin(), id.end());
    std::string after;
    for (;;) {
      // One transaction per batch keeps row locks short for live daemons; a row a daemon holds
      // locked is waited for (lock_timeout), never skipped. Only rows with an envelope under
      // another key are read (envelope bytes 2..9 are the key id).
      pqxx::work t(*impl_->conn);
      const pqxx::result rows = impl_->exec(
          t,
          "SELECT id, access_token, refresh_token FROM tokens WHERE id > $1 AND "
          "((access_token IS NOT NULL AND substring(access_token FROM 2 FOR 8) <> $3::bytea) OR "
          "(refresh_token IS NOT NULL AND substring(refresh_token FROM 2 FOR 8) <> $3::bytea)) "
          "ORDER BY id LIMIT $2::bigint FOR UPDATE",
          Params().text(after).int64(static_cast<std::int64_t>(batch)).blob(current));
      for (const pqxx::row& row : rows) {
        after = row[0].c_str();
        auto secrets = impl_->open_secrets(row[1], row[2], after);
        if (!secrets) return secrets.error();
        auto s = seal(impl_->cipher, *secrets, after);
        if (!s) return s.error();
        impl_->exec(t,
                    "UPDATE tokens SET access_token = $2::bytea, refresh_token = $3::bytea "
                    "WHERE id = $1",
                    Params().text(after).blob(s->access).blob(s->refresh));
      }
      t.commit();
      rewritten += rows.size();
      if (progress && !rows.empty()) progress(rewritten);
      if (rows.size() < batch) break;
    }
    return rewritten;
  });
}

namespace {

AuditHash hash_field(const pqxx::field& f) {
  AuditHash h{};
  pqxx::binarystring b(f);
  if (b.size() == h.size()) std::copy(b.data(), b.data() + h.size(), h.begin());
  return h;
}

Blob blob_of(const AuditHash& h) {
  return Blob(h.begin(), h.end());
}

}  // namespace

// Appends `entries` after the audit chain's head, inside `t`, under the audit lock (taken here).
void PgTokenStore::Impl::append_audit_rows(pqxx::work& t, std::span<const AuditEntry> entries) {
  t.exec(kAuditLock);
  const pqxx::result head =
      exec(t,
           "SELECT seq, hash FROM (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1) h "
           "UNION ALL SELECT seq, hash FROM audit_anchor ORDER BY seq DESC LIMIT 1");
  std::int64_t seq = head.empty() ? 0 : head[0][0].as<std::int64_t>();
  AuditHash prev = head.empty() ? AuditHash{} : hash_field(head[0][1]);
  for (const AuditEntry& e : entries) {
    ++seq;
    const AuditHash hash = audit_hash(seq, e, prev);
    exec(t,
         "INSERT INTO audit VALUES ($1::bigint, $2::bigint, $3, $4, $5, $6, $7, $8::bytea, "
         "$9::bytea)",
         Params()
             .int64(seq)
             .int64(to_unix(e.at))
             .text(e.actor)
             .text(e.action)
             .text(e.token_id)
             .text(e.outcome)
             .text(e.detail)
             .blob(blob_of(prev))
             .blob(blob_of(hash)));
    prev = hash;
  }
}

Status PgTokenStore::append_audit(std::span<const AuditEntry> entries) {
  if (entries.empty()) return Ok();
  return impl_->guarded("writing the audit trail", [&]() -> Status {
    pqxx::work t(*impl_->conn);
    impl_->append_audit_rows(t, entries);
    t.commit();
    return Ok();
  });
}

Result<std::vector<AuditRow>> PgTokenStore::read_audit(std::int64_t after_seq, std::size_t limit,
                                                       std::string_view token_id) {
  return impl_->guarded("reading the audit trail", [&]() -> Result<std::vector<AuditRow>> {
    pqxx::read_transaction t(*impl_->conn);
    Params p;
    p.int64(after_seq).int64(static_cast<std::int64_t>(limit));
    if (!token_id.empty()) p.text(token_id);
    const pqxx::result rows = impl_->exec(
        t,
        token_id.empty()
            ? "SELECT * FROM audit WHERE seq > $1::bigint ORDER BY seq LIMIT $2::bigint"
            : "SELECT * FROM audit WHERE seq > $1::bigint AND token_id = $3 ORDER BY seq "
              "LIMIT $2::bigint",
        p);
    std::vector<AuditRow> out;
    for (const pqxx::row& row : rows) {
      AuditRow r;
      r.seq = row[0].as<std::int64_t>();
      r.entry.at = from_unix(row[1].as<std::int64_t>());
      r.entry.actor = row[2].c_str();
      r.entry.action = row[3].c_str();
      r.entry.token_id = row[4].c_str();
      r.entry.outcome = row[5].c_str();
      r.entry.detail = row[6].c_str();
      r.prev_hash = hash_field(row[7]);
      r.hash = hash_field(row[8]);
      out.push_back(std::move(r));
    }
    return out;
  });
}

Result<AuditAnchor> PgTokenStore::audit_anchor() {
  return impl_->guarded("reading the audit trail", [&]() -> Result<AuditAnchor> {
    pqxx::read_transaction t(*impl_->conn);
    const pqxx::result r = impl_->exec(t, "SELECT seq, hash FROM audit_anchor", Params());
    AuditAnchor a;
    if (!r.empty()) {
      a.seq = r[0][0].as<std::int64_t>();
      a.hash = hash_field(r[0][1]);
    }
    return a;
  });
}

Result<std::size_t> PgTokenStore::prune_audit(SysTime before, std::size_t max_rows, SysTime now,
                                              std::string_view actor) {
  return impl_->guarded("pruning the audit trail", [&]() -> Result<std::size_t> {
    pqxx::work t(*impl_->conn);
    t.exec(kAuditLock);
    // The oldest unbroken run of rows written before `before`, at most max_rows, never the head.
    const pqxx::result last = impl_->exec(
        t,
        "SELECT seq, hash FROM (SELECT seq, hash FROM audit ORDER BY seq LIMIT $2::bigint) o "
        "WHERE seq < (SELECT MAX(seq) FROM audit) AND seq < "
        "coalesce((SELECT MIN(seq) FROM audit WHERE at >= $1::bigint), 4611686018427387904) "
        "ORDER BY seq DESC LIMIT 1",
        Params().int64(to_unix(before)).int64(static_cast<std::int64_t>(max_rows)));
    if (last.empty()) return std::size_t{0};
    const AuditAnchor anchor{last[0][0].as<std::int64_t>(), hash_field(last[0][1])};
    const pqxx::result del =
        impl_->exec(t, "DELETE FROM audit WHERE seq <= $1::bigint", Params().int64(anchor.seq));
    const auto n = static_cast<std::size_t>(del.affected_rows());
    impl_->exec(t, "UPDATE audit_anchor SET seq = $1::bigint, hash = $2::bytea",
                Params().int64(anchor.seq).blob(blob_of(anchor.hash)));
    const AuditEntry row{
        now, std::string(actor), "prune", "", "ok", audit_prune_detail(n, before, anchor)};
    impl_->append_audit_rows(t, {&row, 1});
    t.commit();
    return n;
  });
}

Result<std::size_t> PgTokenStore::count_sealed_with_old_keys() {
  return impl_->guarded("counting secrets under old keys", [&]() -> Result<std::size_t> {
    pqxx::read_transaction t(*impl_->conn);
    const KeyId& id = impl_->cipher.keys().current().id();
    // Envelope bytes 2..9 (1-based) are the key id.
    return impl_
        ->exec(t,
               "SELECT COUNT(*) FROM tokens WHERE "
               "(access_token IS NOT NULL AND substring(access_token FROM 2 FOR 8) <> $1::bytea) "
               "OR (refresh_token IS NOT NULL AND "
               "substring(refresh_token FROM 2 FOR 8) <> $1::bytea)",
               Params().blob(Blob(id.begin(), id.end())))[0][0]
        .as<std::size_t>();
  });
}

Result<std::string> PgTokenStore::explain_schedule_queries() {
  return impl_->guarded("explaining queries", [&]() -> Result<std::string> {
    pqxx::work t(*impl_->conn);
    std::string out;
    for (bool earliest : {true, false}) {
      const std::string sql = "EXPLAIN " + Impl::due_sql(kAllProviders, earliest);
      Params p;
      if (!earliest) p.int64(0).int64(1);
      for (const pqxx::row& row : impl_->exec(t, sql, p)) {
        out += row[0].c_str();
        out += '\n';
      }
    }
    return out;
  });
}

}  // namespace tw
