// The TokenStore contract, run against both backends: SQLite (a file) and PostgreSQL (a fresh
// schema on the test cluster ctest starts). What only one backend has (file modes, the WAL, DSN
// handling) is tested at the end, by backend.
#include <algorithm>
#include <map>
#include <set>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "config/config.h"
#include "scheduler/clock.h"
#include "storage/pg_token_store.h"
#include "storage/sqlite_token_store.h"
#include "tests/support/pg_test_db.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using testing::TempDir;

const SysTime kStoreNow = from_unix(1'800'000'000);

Key make_key() {
  return *Key::generate();
}

NewToken new_token(std::string account, Provider p = Provider::kTikTok,
                   TokenKind k = TokenKind::kBusinessToken) {
  NewToken t;
  t.provider = p;
  t.kind = k;
  t.workspace_id = "ws-1";
  t.account_id = std::move(account);
  t.scopes = "user.info.basic";
  t.expires_at = kStoreNow + 30 * 24h;
  return t;
}

TokenSecrets secrets(std::string access, std::string refresh) {
  return {Secret(access), Secret(refresh)};
}

// Schedules a fixed refresh and check time, so tests control what is due.
ScheduleFn due_at(SysTime refresh, SysTime check) {
  return [=](TokenRecord& r) {
    r.next_refresh_due = refresh;
    r.next_check_due = check;
  };
}

// Adds a token for each account, all due now, and claims them for "daemon".
std::vector<DueToken> add_and_claim(TokenStore& store, const std::vector<std::string>& accounts) {
  for (const std::string& a : accounts) {
    EXPECT_TRUE(
        store.upsert(new_token(a), secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow)));
  }
  auto claimed = store.claim_due(kStoreNow, accounts.size(), "daemon", 1min, kAllProviders);
  EXPECT_TRUE(claimed) << claimed.error().message();
  return claimed ? std::move(*claimed) : std::vector<DueToken>{};
}

enum class Backend { kSqlite, kPostgres };

// A store of either backend, and raw access to its database as another client would have.
class StoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  bool sqlite() const { return GetParam() == Backend::kSqlite; }

  void SetUp() override {
    if (!sqlite()) {
      pg_schema_ = std::make_unique<testing::PgTestSchema>();
      ASSERT_TRUE(pg_schema_->ok()) << pg_schema_->error();
    }
  }

  Result<std::unique_ptr<TokenStore>> try_open(const Key& key, std::vector<Key> old = {},
                                               OpenMode mode = OpenMode::kCreate) {
    Cipher cipher(KeyRing(key, std::move(old)));
    if (sqlite()) {
      auto s = SqliteTokenStore::open(db_path(), 200ms, std::move(cipher), mode);
      if (!s) return s.error();
      return std::unique_ptr<TokenStore>(std::move(*s));
    }
    PgOptions options;
    options.dsn = pg().dsn();
    options.lock_timeout = 200ms;
    auto s = PgTokenStore::open(options, std::move(cipher), mode);
    if (!s) return s.error();
    return std::unique_ptr<TokenStore>(std::move(*s));
  }
  std::unique_ptr<TokenStore> open(const Key& key, std::vector<Key> old = {}) {
    auto s = try_open(key, std::move(old));
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message());
    return s.ok() ? std::move(*s) : nullptr;
  }
  std::string db_path() const { return dir_.file("tokens.db"); }
  int latest_version() const {
    return sqlite() ? SqliteTokenStore::latest_schema_version()
                    : PgTokenStore::latest_schema_version();
  }
  std::string_view migration_sql(int from) const {
    return sqlite() ? SqliteTokenStore::migration_sql(from) : PgTokenStore::migration_sql(from);
  }
  // Sets the schema version the database claims to be at.
  void set_version(int v) {
    if (sqlite()) {
      raw_exec("PRAGMA user_version = " + std::to_string(v));
    } else {
      raw_exec("UPDATE tokenwarden_schema SET version = " + std::to_string(v));
    }
  }

  // Runs SQL on the database directly, as an attacker or a careless operator could.
  void raw_exec(const std::string& sql) {
    if (sqlite()) {
      SQLite::Database db(db_path(), SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
      db.exec(sql);
    } else {
      pg().exec(sql);
    }
  }
  // Runs SQL the database must refuse.
  void raw_exec_expect_failure(const std::string& sql) {
    try {
      raw_exec(sql);
      ADD_FAILURE() << "the database accepted: " << sql;
    } catch (const std::exception&) {
    }
  }
  // The rows of a query, as text.
  std::vector<std::vector<std::string>> raw_query(const std::string& sql) {
    std::vector<std::vector<std::string>> out;
    if (sqlite()) {
      SQLite::Database db(db_path(), SQLite::OPEN_READONLY);
      SQLite::Statement q(db, sql);
      while (q.executeStep()) {
        out.emplace_back();
        for (int i = 0; i < q.getColumnCount(); ++i)
          out.back().push_back(q.getColumn(i).getString());
      }
      return out;
    }
    for (const pqxx::row& row : pg().exec(sql)) {
      out.emplace_back();
      for (const pqxx::field& f : row)
        out.back().push_back(f.c_str());
    }
    return out;
  }
  // A trigger that refuses (raises an error) `event` ("INSERT", "UPDATE OF next_check_due") on
  // rows whose account_id is `account`.
  void refuse(const std::string& name, const std::string& event, const std::string& account) {
    if (sqlite()) {
      raw_exec("CREATE TRIGGER " + name + " BEFORE " + event +
               " ON tokens WHEN NEW.account_id = '" + account +
               "' BEGIN SELECT RAISE(ABORT, 'refused'); END");
      return;
    }
    raw_exec("CREATE FUNCTION " + name +
             "() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$; "
             "CREATE TRIGGER " +
             name + " BEFORE " + event +
             " ON tokens FOR EACH ROW WHEN "
             "(NEW.account_id = '" +
             account + "') EXECUTE FUNCTION " + name + "()");
  }

  TempDir dir_;
  // The PostgreSQL runs' own schema (none for SQLite).
  testing::PgTestSchema& pg() { return *pg_schema_; }
  std::unique_ptr<testing::PgTestSchema> pg_schema_;
  Key key_ = make_key();
};

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kSqlite ? "Sqlite" : "Postgres";
                         });

// What only the SQLite store has: a file.
class SqliteStoreTest : public StoreTest {};
INSTANTIATE_TEST_SUITE_P(Sqlite, SqliteStoreTest, ::testing::Values(Backend::kSqlite));

TEST_P(SqliteStoreTest, CreatesAPrivateWalDatabaseAtTheLatestSchema) {
  auto store = open(key_);
  ASSERT_TRUE(store);
  EXPECT_EQ(*store->schema_version(), latest_version());
  ASSERT_TRUE(store->upsert(new_token("a"), secrets("act.1", "rft.1"), kStoreNow,
                            due_at(kStoreNow, kStoreNow)));
  struct stat st {};
  ASSERT_EQ(stat(db_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat((db_path() + "-wal").c_str(), &st), 0) << "WAL mode writes a -wal file";
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  SQLite::Database db(db_path(), SQLite::OPEN_READONLY);
  EXPECT_EQ(db.execAndGet("PRAGMA journal_mode").getString(), "wal");
}

TEST_P(SqliteStoreTest, MigratesAnEmptyFileAndReopensWithoutChange) {
  testing::write_file(db_path(), "");
  chmod(db_path().c_str(), 0600);
  {
    auto store = open(key_);
    ASSERT_TRUE(store);
    EXPECT_EQ(*store->schema_version(), latest_version());
    ASSERT_TRUE(store->upsert(new_token("a"), secrets("act.1", "rft.1"), kStoreNow,
                              due_at(kStoreNow, kStoreNow)));
  }
  auto again = open(key_);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again->schema_version(), latest_version());
  EXPECT_EQ(again->list({})->size(), 1u);
}

TEST_P(StoreTest, MigratesAVersionOneDatabaseKeepingItsTokens) {
  // A database as the first release wrote it, with one token and a lease.
  if (sqlite()) {
    testing::write_file(db_path(), "");
    chmod(db_path().c_str(), 0600);
    raw_exec(std::string(migration_sql(0)) + "PRAGMA user_version = 1;");
  } else {
    raw_exec(std::string(migration_sql(0)) +
             "CREATE TABLE tokenwarden_schema (version INTEGER NOT NULL); "
             "INSERT INTO tokenwarden_schema VALUES (1);");
  }
  raw_exec(
      "INSERT INTO tokens (id, provider, kind, workspace_id, account_id, state, state_since, "
      "connected_at, created_at, updated_at, lease_owner, lease_until, next_check_due) "
      "VALUES ('tok_00000000000000aa', 'google', 'refresh_token', 'ws', 'acct', 'active', "
      "1, 1, 1, 1, 'old-worker', 5, 7)");
  auto store = open(key_);
  ASSERT_TRUE(store);
  EXPECT_EQ(*store->schema_version(), latest_version());
  auto r = store->find("tok_00000000000000aa");
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->account_id, "acct");
  EXPECT_EQ((*r)->lease_owner, "old-worker");
  EXPECT_EQ((*r)->lease_generation, 0);
  EXPECT_EQ((*r)->next_check_due, from_unix(7));
  EXPECT_FALSE((*r)->renewal_in_doubt_since) << "no renewal of an old database is in doubt";
  // Version 6 takes any provider name: a generic provider's token sits beside the old one.
  const Provider acme = *Provider::named("acme-2");
  ASSERT_TRUE(store->upsert(new_token("a1", acme, TokenKind::kClientCredentials), secrets("a", ""),
                            kStoreNow, due_at(kStoreNow, kStoreNow)));
  EXPECT_EQ(store->list({acme, {}, {}})->size(), 1u);
  auto counts = store->count_by_state();
  ASSERT_TRUE(counts);
  EXPECT_EQ(counts->size(), 2u) << "google active and acme-2 active";
  auto claimed = store->claim_due(kStoreNow, 10, "w", 1min, {acme});
  ASSERT_TRUE(claimed);
  ASSERT_EQ(claimed->size(), 1u) << "claimed by its name alone";
  EXPECT_EQ((*claimed)[0].record.provider, acme);
  EXPECT_EQ((*claimed)[0].record.account_id, "a1");
}

// The audit trail: numbered and chained rows, a token's history, pruning that keeps the chain
// verifiable, and every kind of tampering found.
TEST_P(StoreTest, AuditTrailIsChainedPrunedAndTamperingIsFound) {
  auto store = open(key_);
  ASSERT_TRUE(store);
  auto verify = [&]() {
    auto anchor = store->audit_anchor();
    EXPECT_TRUE(anchor);
    AuditVerifier v(*anchor);
    auto rows = store->read_audit(0, 1000, "");
    EXPECT_TRUE(rows);
    const std::vector<AuditRow> list = rows ? std::move(*rows) : std::vector<AuditRow>{};
    for (const AuditRow& r : list)
      v.add(r);
    v.finish();
    return v.problem();
  };
  std::vector<AuditEntry> entries;
  for (int i = 0; i < 10; ++i) {
    entries.push_back(AuditEntry{kStoreNow + std::chrono::hours(i), "daemon:h:1",
                                 i % 2 == 0 ? "refresh" : "check",
                                 i % 3 == 0 ? "tok_00000000000000a1" : "tok_00000000000000b2", "ok",
                                 "tiktok business_token"});
  }
  ASSERT_TRUE(store->append_audit({entries.data(), 6}));
  ASSERT_TRUE(store->append_audit(std::span(entries).subspan(6)));
  auto all = store->read_audit(0, 100, "");
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 10u);
  EXPECT_EQ(all->front().seq, 1);
  EXPECT_EQ(all->back().seq, 10);
  EXPECT_EQ(all->back().entry, entries.back());
  EXPECT_EQ((*all)[6].prev_hash, (*all)[5].hash) << "the second append continues the chain";
  EXPECT_EQ(store->read_audit(0, 100, "tok_00000000000000a1")->size(), 4u);
  EXPECT_EQ(store->read_audit(8, 100, "")->size(), 2u);
  EXPECT_EQ(verify(), "");

  // Pruning keeps the chain verifiable from its anchor and says so, in the same transaction, in a
  // row of its own. In batches; only the oldest rows; never past a row that is not old enough.
  const SysTime cut = kStoreNow + std::chrono::hours(4);
  EXPECT_EQ(*store->prune_audit(cut, 3, kStoreNow + 10h, "daemon:h:1"), 3u);
  EXPECT_EQ(*store->prune_audit(cut, 3, kStoreNow + 10h, "daemon:h:1"), 1u);
  EXPECT_EQ(*store->prune_audit(cut, 3, kStoreNow + 10h, "daemon:h:1"), 0u);
  EXPECT_EQ(store->audit_anchor()->seq, 4);
  auto after_prune = *store->read_audit(0, 100, "");
  EXPECT_EQ(after_prune.front().seq, 5);
  EXPECT_EQ(after_prune.back().entry.action, "prune");
  EXPECT_NE(after_prune.back().entry.detail.find("the chain now starts after row 4 (hash "),
            std::string::npos)
      << after_prune.back().entry.detail;
  EXPECT_EQ(verify(), "");
  // A cut far in the future still keeps the newest row, the chain's head.
  const std::int64_t head = after_prune.back().seq;
  EXPECT_EQ(*store->prune_audit(kStoreNow + 1000h, 1000, kStoreNow + 11h, "daemon:h:1"),
            static_cast<std::size_t>(head - 5));
  EXPECT_EQ(store->read_audit(0, 100, "")->size(), 2u) << "the old head and the new prune row";
  EXPECT_EQ(verify(), "");

  // Rows are never updated: the database refuses it.
  const std::size_t kept = store->read_audit(0, 100, "")->size();
  ASSERT_TRUE(store->append_audit(entries));
  const std::int64_t first = head;  // the oldest row left
  auto seq = [&](int k) { return std::to_string(first + k); };
  ASSERT_EQ(store->read_audit(0, 100, "")->size(), kept + entries.size());
  raw_exec_expect_failure("UPDATE audit SET detail = 'x' WHERE seq = " + seq(3));
  // Someone who drops that guard and edits a row, or deletes one, is found.
  raw_exec(sqlite() ? "DROP TRIGGER audit_append_only" : "DROP TRIGGER audit_append_only ON audit");
  raw_exec("UPDATE audit SET outcome = 'failed: revoked' WHERE seq = " + seq(3));
  EXPECT_EQ(verify(), "row " + seq(3) + " was changed after it was written");
  raw_exec("UPDATE audit SET outcome = 'ok' WHERE seq = " + seq(3));
  EXPECT_EQ(verify(), "");
  // Deleting the oldest rows is found; so is moving the anchor by hand to hide it, since the last
  // prune row named another starting point.
  AuditHash hash1{};
  const std::vector<AuditRow> before_delete = *store->read_audit(0, 100, "");
  for (const AuditRow& r : before_delete) {
    if (std::to_string(r.seq) == seq(1)) hash1 = r.hash;
  }
  raw_exec("DELETE FROM audit WHERE seq <= " + seq(1));
  EXPECT_EQ(verify(), "rows " + seq(0) + " to " + seq(1) + " are missing (deleted)");
  const std::string literal =
      sqlite() ? "X'" + audit_hash_hex(hash1) + "'" : "'\\x" + audit_hash_hex(hash1) + "'::bytea";
  raw_exec("UPDATE audit_anchor SET seq = " + seq(1) + ", hash = " + literal);
  EXPECT_NE(verify().find("is not the one the last prune recorded"), std::string::npos) << verify();
  raw_exec("DELETE FROM audit WHERE seq = " + seq(5));
  EXPECT_EQ(verify(), "row " + seq(5) + " is missing (deleted)");
  raw_exec("DELETE FROM audit");
  EXPECT_NE(verify().find("every row was deleted"), std::string::npos) << verify();
}

TEST_P(StoreTest, RefusesADatabaseFromANewerVersion) {
  { ASSERT_TRUE(open(key_)); }
  set_version(99);
  auto s = try_open(key_);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("schema version 99"), std::string::npos)
      << s.error().message();
  EXPECT_NE(s.error().message().find(sqlite() ? db_path() : "dbname="), std::string::npos)
      << "names the database: " << s.error().message();
}

TEST_P(SqliteStoreTest, RefusesADatabaseOthersCanRead) {
  { ASSERT_TRUE(open(key_)); }
  chmod(db_path().c_str(), 0640);
  auto s = SqliteTokenStore::open(db_path(), 200ms, Cipher(KeyRing(key_)));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), Errc::kPermission);
  EXPECT_NE(s.error().message().find("0640"), std::string::npos) << s.error().message();
}

TEST_P(StoreTest, OpeningAnExistingDatabaseNeverCreatesOne) {
  auto s = try_open(key_, {}, OpenMode::kExisting);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), Errc::kNotFound);
  if (sqlite()) {
    EXPECT_NE(s.error().message().find("no database at " + db_path()), std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(db_path()));
  } else {
    EXPECT_NE(s.error().message().find("no tokenwarden schema"), std::string::npos)
        << s.error().message();
    EXPECT_TRUE(raw_query("SELECT 1 FROM pg_tables WHERE schemaname = current_schema()").empty())
        << "nothing was created";
  }
}

TEST_P(SqliteStoreTest, RefusesAFileThatIsNotADatabase) {
  testing::write_file(db_path(), std::string(4096, 'x'));
  chmod(db_path().c_str(), 0600);
  auto s = SqliteTokenStore::open(db_path(), 200ms, Cipher(KeyRing(key_)));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find(db_path()), std::string::npos) << s.error().message();
}

TEST_P(SqliteStoreTest, NamesAMissingDirectory) {
  auto s = SqliteTokenStore::open(dir_.file("no/such/dir/t.db"), 200ms, Cipher(KeyRing(key_)));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), Errc::kNotFound);
  EXPECT_NE(s.error().message().find("no/such/dir"), std::string::npos);
}

TEST_P(StoreTest, AddReadAndReconnect) {
  auto store = open(key_);
  auto added = store->upsert(new_token("acct-1"), secrets("act.first", "rft.first"), kStoreNow,
                             due_at(kStoreNow + 1h, kStoreNow + 2h));
  ASSERT_TRUE(added) << added.error().message();
  EXPECT_TRUE(added->created);
  const std::string id = added->record.id;
  EXPECT_EQ(id.rfind("tok_", 0), 0u);
  EXPECT_EQ(id.size(), 20u);

  auto found = store->find(id);
  ASSERT_TRUE(found && *found);
  const TokenRecord& r = **found;
  EXPECT_EQ(r.provider, Provider::kTikTok);
  EXPECT_EQ(r.kind, TokenKind::kBusinessToken);
  EXPECT_EQ(r.account_id, "acct-1");
  EXPECT_EQ(r.state, TokenState::kActive);
  EXPECT_EQ(r.expires_at, kStoreNow + 30 * 24h);
  EXPECT_EQ(r.next_refresh_due, kStoreNow + 1h);
  EXPECT_EQ(r.next_check_due, kStoreNow + 2h);
  EXPECT_TRUE(r.has_access_token);
  EXPECT_TRUE(r.has_refresh_token);
  auto s = store->read_secrets(r);
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(s->access_token.reveal(), "act.first");
  EXPECT_EQ(s->refresh_token.reveal(), "rft.first");

  // The customer's grant dies, then they reconnect: same row, new secrets, clean state.
  auto claimed = store->claim(id, kStoreNow, "worker-a", 5min);
  ASSERT_TRUE(claimed);
  EXPECT_EQ(claimed->lease_generation, r.lease_generation + 1);
  TokenRecord dead = *claimed;
  dead.state = TokenState::kNeedsReauth;
  dead.consecutive_failures = 3;
  dead.last_error_class = ErrorClass::kPermanent;
  dead.last_error_message = "invalid_grant";
  dead.next_refresh_due.reset();
  dead.next_check_due.reset();
  ASSERT_TRUE(store->save(dead, nullptr, "worker-a", LeaseAction::kKeep));
  EXPECT_EQ((*store->find(id))->state, TokenState::kNeedsReauth);

  auto again = store->upsert(new_token("acct-1"), secrets("act.second", ""), kStoreNow + 1h,
                             due_at(kStoreNow + 3h, kStoreNow + 4h));
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->record.id, id);
  auto after = **store->find(id);
  EXPECT_EQ(after.state, TokenState::kActive);
  EXPECT_EQ(after.consecutive_failures, 0);
  EXPECT_EQ(after.last_error_class, ErrorClass::kNone);
  EXPECT_EQ(after.created_at, kStoreNow);
  EXPECT_EQ(after.connected_at, kStoreNow + 1h);
  EXPECT_EQ(after.next_refresh_due, kStoreNow + 3h);
  EXPECT_TRUE(after.lease_owner.empty()) << "a reconnect takes the lease away";
  EXPECT_FALSE(after.has_refresh_token);
  auto s2 = store->read_secrets(after);
  EXPECT_EQ(s2->access_token.reveal(), "act.second");
  EXPECT_TRUE(s2->refresh_token.empty());

  // A reconnect may change the kind and the workspace too.
  NewToken moved = new_token("acct-1", Provider::kTikTok, TokenKind::kRefreshToken);
  moved.workspace_id = "ws-2";
  ASSERT_TRUE(store->upsert(moved, secrets("act.third", "rft.third"), kStoreNow + 2h,
                            due_at(kStoreNow + 3h, kStoreNow + 4h)));
  auto changed = **store->find(id);
  EXPECT_EQ(changed.kind, TokenKind::kRefreshToken);
  EXPECT_EQ(changed.workspace_id, "ws-2");

  // The worker that held the lease can no longer write its stale result.
  auto stale = store->save(dead, nullptr, "worker-a", LeaseAction::kRelease);
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.error().code(), Errc::kLeaseLost);
  EXPECT_EQ((*store->find(id))->state, TokenState::kActive);
}

TEST_P(StoreTest, ListFiltersCountsAndRemoves) {
  auto store = open(key_);
  ASSERT_TRUE(
      store->upsert(new_token("t1"), secrets("a", "r"), kStoreNow, due_at(kStoreNow, kStoreNow)));
  ASSERT_TRUE(store->upsert(new_token("g1", Provider::kGoogle, TokenKind::kRefreshToken),
                            secrets("", "1//r"), kStoreNow, due_at(kStoreNow, kStoreNow)));
  NewToken other = new_token("g2", Provider::kGoogle, TokenKind::kRefreshToken);
  other.workspace_id = "ws-2";
  ASSERT_TRUE(store->upsert(other, secrets("", "1//s"), kStoreNow, due_at(kStoreNow, kStoreNow)));

  EXPECT_EQ(store->list({})->size(), 3u);
  EXPECT_EQ(store->list({Provider::kGoogle, {}, {}})->size(), 2u);
  EXPECT_EQ(store->list({{}, {}, std::string("ws-2")})->size(), 1u);
  EXPECT_EQ(store->list({{}, TokenState::kRevoked, {}})->size(), 0u);
  auto listed = *store->list({});
  EXPECT_EQ(listed[0].provider, Provider::kGoogle) << "ordered by provider, workspace, account";
  EXPECT_FALSE(listed[0].has_access_token);

  auto counts = *store->count_by_state();
  ASSERT_EQ(counts.size(), 2u);
  EXPECT_EQ(counts[0].provider, Provider::kGoogle);
  EXPECT_EQ(counts[0].count, 2u);

  EXPECT_TRUE(*store->remove(listed[0].id));
  EXPECT_FALSE(*store->remove(listed[0].id));
  EXPECT_FALSE(store->find(listed[0].id)->has_value());
  EXPECT_EQ(store->list({})->size(), 2u);
}

// The counts come from a table the triggers keep, not a scan: they must match a scan after
// adds, reconnects, state changes, removals and a migration.
TEST_P(StoreTest, CountsKeptByTriggersMatchAScan) {
  auto store = open(key_);
  auto scan = [&] {
    std::map<std::pair<std::string, std::string>, std::size_t> out;
    for (const auto& row : raw_query("SELECT provider, state, COUNT(*) FROM tokens GROUP BY 1, 2"))
      out[{row[0], row[1]}] = std::stoul(row[2]);
    return out;
  };
  auto counted = [&] {
    std::map<std::pair<std::string, std::string>, std::size_t> out;
    const auto counts = store->count_by_state();
    for (const StateCounts& c : *counts)
      out[{std::string(to_string(c.provider)), std::string(to_string(c.state))}] = c.count;
    return out;
  };
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    ids.push_back(
        store
            ->upsert(
                new_token("a" + std::to_string(i), i % 2 != 0 ? Provider::kMeta : Provider::kTikTok,
                          i % 2 != 0 ? TokenKind::kPageToken : TokenKind::kBusinessToken),
                secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow))
            ->record.id);
  }
  EXPECT_EQ(counted(), scan());
  auto claimed = store->claim_due(kStoreNow, 6, "w", 1min, kAllProviders);
  ASSERT_EQ(claimed->size(), 6u);
  // All are due at once: claims of equal due times come in no particular order.
  std::sort(claimed->begin(), claimed->end(), [](const DueToken& a, const DueToken& b) {
    return a.record.account_id < b.record.account_id;
  });
  for (std::size_t i = 0; i < 4; ++i) {
    TokenRecord r = (*claimed)[i].record;
    r.state = i == 0 ? TokenState::kRevoked : TokenState::kFailing;
    ASSERT_TRUE(store->save(r, nullptr, "w", LeaseAction::kRelease));
  }
  EXPECT_EQ(counted(), scan());
  ASSERT_TRUE(store->upsert(new_token("a0"), secrets("x2", "y2"), kStoreNow,
                            due_at(kStoreNow, kStoreNow)));  // reconnected: active again
  ASSERT_TRUE(*store->remove(ids[3]));
  EXPECT_EQ(counted(), scan());
  EXPECT_EQ(scan().size(), 4u) << "tiktok active (a0 again, a4), tiktok failing (a2), meta failing "
                                  "(a1), meta active (a5)";

  // A database from before the counts table gets its counts from the migration.
  if (sqlite()) {
    raw_exec(
        "DROP TRIGGER tokens_count_insert; DROP TRIGGER tokens_count_delete; "
        "DROP TRIGGER tokens_count_update; DROP TABLE token_counts; DROP TABLE audit; "
        "DROP TABLE audit_anchor; PRAGMA user_version = 4;");
  } else {
    raw_exec(
        "DROP TABLE token_counts; DROP FUNCTION tokens_count() CASCADE; DROP TABLE audit; "
        "DROP TABLE audit_anchor; DROP FUNCTION audit_append_only() CASCADE; "
        "UPDATE tokenwarden_schema SET version = 4;");
  }
  store.reset();
  store = open(key_);
  EXPECT_EQ(counted(), scan());
}

TEST_P(SqliteStoreTest, NoPlaintextSecretInTheDatabaseOrWal) {
  std::vector<std::string> plain;
  {
    auto store = open(key_);
    for (int i = 0; i < 50; ++i) {
      plain.push_back("act.PLAINTEXT-ACCESS-" + std::to_string(i) + "-zq9");
      plain.push_back("rft.PLAINTEXT-REFRESH-" + std::to_string(i) + "-zq9");
      ASSERT_TRUE(store->upsert(new_token("acct-" + std::to_string(i)),
                                secrets(plain[plain.size() - 2], plain.back()), kStoreNow,
                                due_at(kStoreNow, kStoreNow)));
    }
    // Rewrite some secrets too, so old ciphertext pages exist.
    auto jobs = store->claim_due(kStoreNow, 10, "w", 5min, kAllProviders);
    ASSERT_TRUE(jobs);
    for (auto& d : *jobs) {
      plain.push_back("rft.PLAINTEXT-ROTATED-" + d.record.id);
      TokenSecrets s{Secret("act.x"), Secret(plain.back())};
      ASSERT_TRUE(store->save(d.record, &s, "w", LeaseAction::kRelease));
    }
    // Read the files while the store is open: the WAL holds the recent writes.
    std::string bytes = testing::read_file(db_path()) + testing::read_file(db_path() + "-wal");
    ASSERT_NE(bytes.find("acct-49"), std::string::npos) << "the scan sees non-secret columns";
    for (const auto& p : plain)
      EXPECT_EQ(bytes.find(p), std::string::npos) << p;
    EXPECT_EQ(bytes.find("PLAINTEXT"), std::string::npos);
  }
  std::string bytes = testing::read_file(db_path()) + testing::read_file(db_path() + "-wal");
  EXPECT_EQ(bytes.find("PLAINTEXT"), std::string::npos);
}

TEST_P(StoreTest, SwappedCiphertextFailsToDecryptAndNamesTheToken) {
  auto store = open(key_);
  auto a = store->upsert(new_token("a"), secrets("act.A", "rft.A"), kStoreNow,
                         due_at(kStoreNow, kStoreNow));
  auto b = store->upsert(new_token("b"), secrets("act.B", "rft.B"), kStoreNow,
                         due_at(kStoreNow, kStoreNow));
  ASSERT_TRUE(a && b);
  // Another row's ciphertext:
  raw_exec(
      "UPDATE tokens SET access_token = (SELECT access_token FROM tokens WHERE account_id = "
      "'a') WHERE account_id = 'b'");
  auto rb = store->read_secrets(**store->find(b->record.id));
  ASSERT_FALSE(rb.ok());
  EXPECT_EQ(rb.error().code(), Errc::kCorrupt);
  EXPECT_NE(rb.error().message().find(b->record.id), std::string::npos) << rb.error().message();
  EXPECT_NE(rb.error().message().find("access_token"), std::string::npos);
  EXPECT_EQ(rb.error().message().find("act.A"), std::string::npos);
  // Another field's ciphertext in the same row:
  raw_exec("UPDATE tokens SET access_token = refresh_token WHERE account_id = 'a'");
  auto ra = store->read_secrets(**store->find(a->record.id));
  ASSERT_FALSE(ra.ok());
  EXPECT_EQ(ra.error().code(), Errc::kCorrupt);
  // A flipped byte:
  auto c = store->upsert(new_token("c"), secrets("act.C", "rft.C"), kStoreNow,
                         due_at(kStoreNow, kStoreNow));
  if (sqlite()) {
    SQLite::Database db(db_path(), SQLite::OPEN_READWRITE);
    SQLite::Statement get(db, "SELECT refresh_token FROM tokens WHERE account_id = 'c'");
    ASSERT_TRUE(get.executeStep());
    std::string blob(static_cast<const char*>(get.getColumn(0).getBlob()),
                     static_cast<std::size_t>(get.getColumn(0).getBytes()));
    get.reset();
    blob[30] ^= 0x01;
    SQLite::Statement put(db, "UPDATE tokens SET refresh_token = ?1 WHERE account_id = 'c'");
    put.bind(1, blob.data(), static_cast<int>(blob.size()));
    put.exec();
  } else {
    raw_exec(
        "UPDATE tokens SET refresh_token = set_byte(refresh_token, 30, "
        "get_byte(refresh_token, 30) # 1) WHERE account_id = 'c'");
  }
  EXPECT_EQ(store->read_secrets(**store->find(c->record.id)).error().code(), Errc::kCorrupt);
}

TEST_P(StoreTest, WrongKeyFailsToDecryptButMetadataStillReads) {
  std::string id;
  {
    auto store = open(key_);
    id = store
             ->upsert(new_token("a"), secrets("act.A", "rft.A"), kStoreNow,
                      due_at(kStoreNow, kStoreNow))
             ->record.id;
  }
  auto other = open(make_key());
  auto r = other->find(id);
  ASSERT_TRUE(r && *r);
  auto s = other->read_secrets(**r);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), Errc::kCorrupt);
  EXPECT_NE(s.error().message().find(id), std::string::npos);
}

TEST_P(StoreTest, RekeyMovesEverySecretToTheCurrentKey) {
  std::vector<std::string> ids;
  {
    auto store = open(key_);
    for (int i = 0; i < 1203; ++i) {  // more than one rekey batch
      ids.push_back(store
                        ->upsert(new_token("a" + std::to_string(i)),
                                 secrets("act." + std::to_string(i), i % 2 ? "rft.x" : ""),
                                 kStoreNow, due_at(kStoreNow, kStoreNow))
                        ->record.id);
    }
  }
  Key next = make_key();
  {
    auto rotating = open(next, {key_});
    EXPECT_EQ(rotating->read_secrets(**rotating->find(ids[5]))->access_token.reveal(), "act.5")
        << "old key still opens old secrets";
    EXPECT_EQ(*rotating->count_sealed_with_old_keys(), ids.size());
    EXPECT_EQ(*rotating->rekey(), ids.size());
    EXPECT_EQ(*rotating->rekey(), 0u) << "nothing left to do";
    EXPECT_EQ(*rotating->count_sealed_with_old_keys(), 0u);
  }
  auto rotated = open(next);
  for (std::size_t i = 0; i < ids.size(); i += 97) {
    auto s = rotated->read_secrets(**rotated->find(ids[i]));
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ(s->access_token.reveal(), "act." + std::to_string(i));
  }
}

TEST_P(StoreTest, ClaimsDueTokensEarliestFirstAndHidesThemUntilTheLeaseEnds) {
  auto store = open(key_);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    // Token i: refresh due at now + i minutes, check due in a day.
    ids.push_back(store
                      ->upsert(new_token("a" + std::to_string(i)), secrets("x", "y"), kStoreNow,
                               due_at(kStoreNow + std::chrono::minutes(i), kStoreNow + 24h))
                      ->record.id);
  }
  EXPECT_EQ(**store->earliest_due(kAllProviders), kStoreNow);

  auto first = store->claim_due(kStoreNow + 3min, 2, "w1", 10min, kAllProviders);
  ASSERT_TRUE(first);
  ASSERT_EQ(first->size(), 2u);
  EXPECT_EQ((*first)[0].record.id, ids[0]);
  EXPECT_EQ((*first)[1].record.id, ids[1]);
  EXPECT_TRUE((*first)[0].refresh_due);
  EXPECT_FALSE((*first)[0].check_due);
  EXPECT_EQ((*first)[0].record.next_refresh_due, kStoreNow) << "the claim reports the original due";

  // Claimed tokens are hidden from the next claim, by this worker or another.
  auto second = store->claim_due(kStoreNow + 3min, 10, "w2", 10min, kAllProviders);
  ASSERT_EQ(second->size(), 2u);
  EXPECT_EQ((*second)[0].record.id, ids[2]);
  EXPECT_EQ((*second)[1].record.id, ids[3]);
  // Everything due is claimed; the next wake-up is token 4, not the claimed ones.
  EXPECT_EQ(**store->earliest_due(kAllProviders), kStoreNow + 4min);
  EXPECT_EQ(store->claim_due(kStoreNow + 3min, 10, "w2", 10min, kAllProviders)->size(), 0u);

  // w1 finishes token 0; w1 dies holding token 1, which comes due again when its lease ends.
  TokenRecord done = (*first)[0].record;
  done.next_refresh_due = kStoreNow + 7 * 24h;
  done.next_check_due = kStoreNow + 24h;
  ASSERT_TRUE(store->save(done, nullptr, "w1", LeaseAction::kRelease));
  auto later = store->claim_due(kStoreNow + 13min, 10, "w3", 10min, kAllProviders);
  ASSERT_TRUE(later);
  std::vector<std::string> got;
  for (auto& d : *later)
    got.push_back(d.record.id);
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0], ids[4]) << "due at +4min, before the expired leases at +13min";
  std::sort(got.begin(), got.end());
  std::vector<std::string> want{ids[1], ids[2], ids[3], ids[4]};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  auto saved = **store->find(ids[0]);
  EXPECT_TRUE(saved.lease_owner.empty());
  EXPECT_EQ(saved.next_refresh_due, kStoreNow + 7 * 24h);
  // The dead worker's late save is refused: w3 owns token 1 now.
  auto late = store->save((*first)[1].record, nullptr, "w1", LeaseAction::kRelease);
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code(), Errc::kLeaseLost);
}

// The claim reads the secrets in its own transaction (the first step needs no read); one that
// does not decrypt leaves them out, and read_secrets() reports it.
TEST_P(StoreTest, AClaimCarriesTheSecretsOrNoneWhenTheyDoNotDecrypt) {
  auto store = open(key_);
  for (const char* a : {"a", "b"}) {
    ASSERT_TRUE(store->upsert(new_token(a), secrets(std::string("act.") + a, "rft"), kStoreNow,
                              due_at(kStoreNow, kStoreNow)));
  }
  raw_exec(
      "UPDATE tokens SET access_token = (SELECT access_token FROM tokens "
      "WHERE account_id = 'a') WHERE account_id = 'b'");
  auto claimed = store->claim_due(kStoreNow, 2, "daemon", 1min, kAllProviders);
  ASSERT_TRUE(claimed) << claimed.error().message();
  ASSERT_EQ(claimed->size(), 2u);
  for (const DueToken& d : *claimed) {
    if (d.record.account_id == "a") {
      ASSERT_TRUE(d.secrets);
      EXPECT_EQ(d.secrets->access_token.reveal(), "act.a");
      EXPECT_EQ(d.secrets->refresh_token.reveal(), "rft");
    } else {
      EXPECT_FALSE(d.secrets) << "sealed for another token: does not decrypt";
      auto read = store->read_secrets(d.record);
      ASSERT_FALSE(read.ok());
      EXPECT_EQ(read.error().code(), Errc::kCorrupt);
    }
  }
}

TEST_P(StoreTest, AStaleGenerationIsFencedOutEvenForTheSameOwner) {
  auto store = open(key_);
  auto id =
      store->upsert(new_token("a"), secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow))
          ->record.id;
  auto first = store->claim_due(kStoreNow, 1, "daemon", 1min, kAllProviders);
  ASSERT_EQ(first->size(), 1u);
  // The lease runs out while the request hangs; the same daemon claims the token again.
  auto second = store->claim_due(kStoreNow + 2min, 1, "daemon", 1min, kAllProviders);
  ASSERT_EQ(second->size(), 1u);
  EXPECT_EQ((*second)[0].record.lease_generation, (*first)[0].record.lease_generation + 1);
  auto stale = store->save((*first)[0].record, nullptr, "daemon", LeaseAction::kRelease);
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.error().code(), Errc::kLeaseLost);
  EXPECT_NE(stale.error().message().find("stale"), std::string::npos) << stale.error().message();
  EXPECT_TRUE(store->save((*second)[0].record, nullptr, "daemon", LeaseAction::kRelease));
  (void)id;
}

// The attempt is on disk before the request goes out, fenced like any write, and it survives
// until save() writes the record's view back.
TEST_P(StoreTest, ARenewalAttemptIsRecordedUnderTheLeaseAndClearedBySave) {
  auto store = open(key_);
  ASSERT_TRUE(
      store->upsert(new_token("a"), secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow)));
  auto claimed = store->claim_due(kStoreNow, 1, "daemon", 1min, kAllProviders);
  ASSERT_EQ(claimed->size(), 1u);
  const TokenRecord r = (*claimed)[0].record;
  const LeaseRef lease{r.id, r.lease_generation};
  auto wrong = store->begin_renewal(lease, "someone-else", kStoreNow);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().code(), Errc::kLeaseLost);
  EXPECT_FALSE((*store->find(r.id))->renewal_in_doubt_since) << "a refused attempt wrote nothing";

  ASSERT_TRUE(store->begin_renewal(lease, "daemon", kStoreNow + 1s));
  EXPECT_EQ((*store->find(r.id))->renewal_in_doubt_since, kStoreNow + 1s);
  // A process dies here; the token is claimed again once the lease runs out.
  auto again = store->claim_due(kStoreNow + 2min, 1, "daemon-2", 1min, kAllProviders);
  ASSERT_EQ(again->size(), 1u);
  TokenRecord next = (*again)[0].record;
  EXPECT_EQ(next.renewal_in_doubt_since, kStoreNow + 1s) << "the next worker sees the doubt";
  ASSERT_TRUE(store->begin_renewal({next.id, next.lease_generation}, "daemon-2", kStoreNow + 2min));
  EXPECT_EQ((*store->find(r.id))->renewal_in_doubt_since, kStoreNow + 1s)
      << "a second attempt keeps the time the doubt began";
  EXPECT_FALSE(store->begin_renewal(lease, "daemon", kStoreNow + 2min).ok()) << "the old lease";
  next.renewal_in_doubt_since.reset();  // the renewal worked
  ASSERT_TRUE(store->save(next, nullptr, "daemon-2", LeaseAction::kRelease));
  EXPECT_FALSE((*store->find(r.id))->renewal_in_doubt_since);
  // A reconnect (new secrets from the customer) ends any doubt.
  auto claimed3 = store->claim_due(kStoreNow + 10min, 1, "daemon", 1min, kAllProviders);
  ASSERT_EQ(claimed3->size(), 1u);
  ASSERT_TRUE(store->begin_renewal({r.id, (*claimed3)[0].record.lease_generation}, "daemon",
                                   kStoreNow + 10min));
  auto reconnected = store->upsert(new_token("a"), secrets("x2", "y2"), kStoreNow + 11min,
                                   due_at(kStoreNow + 1h, kStoreNow + 1h));
  ASSERT_TRUE(reconnected);
  EXPECT_FALSE((*store->find(r.id))->renewal_in_doubt_since);
}

// One transaction for a sweep's writes: each write is fenced on its own, so a lost lease fails
// only its write, and the others are all stored.
TEST_P(StoreTest, AWriteBatchFencesEachWriteAlone) {
  auto store = open(key_);
  const std::vector<DueToken> claimed = add_and_claim(*store, {"a", "b", "c"});
  ASSERT_EQ(claimed.size(), 3u);
  TokenRecord checked = claimed[0].record;
  checked.next_check_due = kStoreNow + 1h;
  TokenRecord stale = claimed[1].record;
  stale.lease_generation -= 1;  // as if fenced out by a newer claim
  const TokenRecord renewing = claimed[2].record;
  const TokenSecrets rotated = secrets("act.new", "rft.new");

  std::vector<StoreWrite> writes(3);
  writes[0].record = &checked;
  writes[0].new_secrets = &rotated;
  writes[1].record = &stale;
  writes[2].kind = StoreWrite::Kind::kBeginRenewal;
  writes[2].lease = {renewing.id, renewing.lease_generation};
  writes[2].at = kStoreNow + 1s;
  const std::vector<Status> out = store->write_batch(writes, "daemon");
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(out[0].ok());
  ASSERT_FALSE(out[1].ok());
  EXPECT_EQ(out[1].error().code(), Errc::kLeaseLost);
  EXPECT_TRUE(out[2].ok());

  const TokenRecord a = **store->find(checked.id);
  EXPECT_EQ(a.next_check_due, kStoreNow + 1h);
  EXPECT_TRUE(a.lease_owner.empty()) << "kRelease is the default";
  EXPECT_EQ(store->read_secrets(a)->refresh_token.reveal(), "rft.new");
  EXPECT_EQ((*store->find(stale.id))->lease_owner, "daemon") << "the fenced write wrote nothing";
  EXPECT_EQ((*store->find(renewing.id))->renewal_in_doubt_since, kStoreNow + 1s);
}

// A write the database refuses for itself (here a trigger standing in for a constraint) fails
// alone: the batch's other writes are stored, so one bad record cannot block every commit.
TEST_P(StoreTest, AWriteRefusedForItselfFailsAloneInItsBatch) {
  auto store = open(key_);
  const std::vector<DueToken> claimed = add_and_claim(*store, {"a", "b", "c"});
  ASSERT_EQ(claimed.size(), 3u);
  refuse("refuse_b", "UPDATE OF next_check_due", "b");
  std::vector<TokenRecord> records;
  for (const DueToken& d : claimed) {
    records.push_back(d.record);
    records.back().next_check_due = kStoreNow + 1h;
  }
  std::vector<StoreWrite> writes(3);
  for (std::size_t i = 0; i < 3; ++i)
    writes[i].record = &records[i];
  const std::vector<Status> out = store->write_batch(writes, "daemon");
  for (std::size_t i = 0; i < 3; ++i) {
    const bool is_b = records[i].account_id == "b";
    EXPECT_EQ(out[i].ok(), !is_b) << records[i].account_id << ": "
                                  << (out[i].ok() ? "" : out[i].error().message());
    const TokenRecord stored = **store->find(records[i].id);
    EXPECT_EQ(stored.next_check_due == kStoreNow + 1h, !is_b) << records[i].account_id;
    EXPECT_EQ(stored.lease_owner.empty(), !is_b) << "b keeps its lease, written nothing";
  }
}

// Statements are prepared once and reused; a reused statement must never pin an old read
// snapshot, or this connection would stop seeing other processes' writes.
TEST_P(StoreTest, ReusedStatementsSeeOtherConnectionsWrites) {
  auto store = open(key_);
  auto other = open(key_);
  const std::string id =
      store->upsert(new_token("a"), secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow))
          ->record.id;
  for (int i = 1; i <= 3; ++i) {
    ASSERT_TRUE(store->find(id)->has_value());
    ASSERT_EQ(store->list({})->size(), static_cast<std::size_t>(i));
    ASSERT_TRUE(other->upsert(new_token("other-" + std::to_string(i)), secrets("x", "y"), kStoreNow,
                              due_at(kStoreNow, kStoreNow)));
    EXPECT_EQ(store->list({})->size(), static_cast<std::size_t>(i + 1)) << i;
  }
  EXPECT_EQ(store->claim_due(kStoreNow, 10, "daemon", 1min, kAllProviders)->size(), 4u);
  ASSERT_TRUE(other->remove(id));
  EXPECT_FALSE(store->find(id)->has_value());
}

TEST_P(StoreTest, ABatchUpsertIsAllOrNothing) {
  auto store = open(key_);
  std::vector<TokenImport> batch;
  for (const char* a : {"a", "b", "a"})
    batch.push_back({new_token(a), secrets(std::string("act.") + a, "rft")});
  batch[2].secrets = secrets("act.a2", "rft.a2");
  auto done = store->upsert_batch(batch, kStoreNow, due_at(kStoreNow + 1h, kStoreNow + 2h));
  ASSERT_TRUE(done) << done.error().message();
  ASSERT_EQ(done->size(), 3u);
  EXPECT_TRUE((*done)[0].created);
  EXPECT_TRUE((*done)[1].created);
  EXPECT_FALSE((*done)[2].created) << "a repeat in the batch reconnects the first";
  EXPECT_EQ((*done)[2].record.id, (*done)[0].record.id);
  EXPECT_EQ(store->list({})->size(), 2u);
  EXPECT_EQ(store->read_secrets((*done)[2].record)->access_token.reveal(), "act.a2");

  // A batch the database refuses stores none of its tokens.
  refuse("refuse_c", "INSERT", "c");
  std::vector<TokenImport> refused;
  for (const char* a : {"b2", "c"})
    refused.push_back({new_token(a), secrets("x", "y")});
  EXPECT_FALSE(store->upsert_batch(refused, kStoreNow, due_at(kStoreNow, kStoreNow)).ok());
  EXPECT_EQ(store->list({})->size(), 2u) << "b2 was rolled back with c";
}

TEST_P(StoreTest, ExtendedLeasesKeepOtherWorkersOut) {
  auto store = open(key_);
  auto id =
      store->upsert(new_token("a"), secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow))
          ->record.id;
  auto job = store->claim_due(kStoreNow, 1, "slow", 1min, kAllProviders);
  ASSERT_EQ(job->size(), 1u);
  const TokenRecord held = (*job)[0].record;
  // Extended every 50 s while the provider is slow: nobody else gets in for five minutes.
  for (int i = 1; i <= 6; ++i) {
    EXPECT_TRUE(
        store->extend_leases({{id, held.lease_generation}}, "slow", kStoreNow + i * 50s, 1min)
            ->empty());
    EXPECT_EQ(store->claim_due(kStoreNow + i * 50s + 5s, 10, "other", 1min, kAllProviders)->size(),
              0u)
        << i;
  }
  EXPECT_GT(**store->earliest_due(kAllProviders), kStoreNow + 300s)
      << "no busy loop on a held token";
  EXPECT_EQ(*store->extend_leases({{id, held.lease_generation + 7}}, "slow", kStoreNow, 1min),
            std::vector<std::string>{id})
      << "a lease held at another generation is not extended: reported lost";
  EXPECT_EQ(*store->extend_leases({{id, held.lease_generation}}, "other", kStoreNow, 1min),
            std::vector<std::string>{id});
  EXPECT_TRUE(store->save(held, nullptr, "slow", LeaseAction::kRelease));
}

TEST_P(StoreTest, ForcedClaimBlocksScheduledClaimsWithoutBusyLooping) {
  auto store = open(key_);
  auto id =
      store->upsert(new_token("a"), secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow))
          ->record.id;
  ASSERT_TRUE(store->claim(id, kStoreNow, "cli", 2min));
  auto other = store->claim(id, kStoreNow, "daemon", 5min);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code(), Errc::kLeaseLost);
  EXPECT_EQ(store->claim_due(kStoreNow, 10, "daemon", 5min, kAllProviders)->size(), 0u);
  // The daemon's next wake-up is the end of the CLI's lease, not "now" again and again.
  EXPECT_EQ(**store->earliest_due(kAllProviders), kStoreNow + 2min);
  EXPECT_EQ(store->claim_due(kStoreNow + 2min, 10, "daemon", 5min, kAllProviders)->size(), 1u);
}

TEST_P(StoreTest, SaveKeepsOrReleasesTheLeaseAndReplacesSecrets) {
  auto store = open(key_);
  auto id = store
                ->upsert(new_token("a"), secrets("act.1", "rft.1"), kStoreNow,
                         due_at(kStoreNow, kStoreNow))
                ->record.id;
  auto job = store->claim_due(kStoreNow, 1, "w", 5min, kAllProviders);
  ASSERT_EQ(job->size(), 1u);
  TokenRecord r = (*job)[0].record;
  TokenSecrets rotated{Secret("act.2"), Secret("rft.2")};
  r.expires_at = kStoreNow + 60 * 24h;
  ASSERT_TRUE(store->save(r, &rotated, "w", LeaseAction::kKeep));
  EXPECT_EQ((*store->find(id))->lease_owner, "w");
  EXPECT_EQ(store->read_secrets(r)->refresh_token.reveal(), "rft.2");
  ASSERT_TRUE(store->save(r, nullptr, "w", LeaseAction::kRelease));
  auto after = **store->find(id);
  EXPECT_TRUE(after.lease_owner.empty());
  EXPECT_FALSE(after.lease_until.has_value());
  EXPECT_EQ(after.expires_at, kStoreNow + 60 * 24h);
  EXPECT_EQ(store->read_secrets(after)->refresh_token.reveal(), "rft.2");
  EXPECT_EQ(store->save(r, nullptr, "w", LeaseAction::kRelease).error().code(), Errc::kLeaseLost);
}

// What `tokenwarden migrate` does: rows copied with their secrets still sealed, into a store of
// the same kind here (the CLI test copies SQLite to PostgreSQL). Everything but the lease
// survives, the secrets open with the same key, and a copy that clashes writes nothing.
TEST_P(StoreTest, ASealedCopyKeepsEveryFieldAndOpensWithTheSameKey) {
  auto store = open(key_);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(store
                      ->upsert(new_token("a" + std::to_string(i)),
                               secrets("act." + std::to_string(i), i == 2 ? "" : "rft"), kStoreNow,
                               due_at(kStoreNow + std::chrono::minutes(i), kStoreNow + 1h))
                      ->record.id);
  }
  auto claimed = store->claim(ids[1], kStoreNow, "w", 1min);
  ASSERT_TRUE(claimed);
  TokenRecord dead = *claimed;
  dead.state = TokenState::kNeedsReauth;
  dead.last_error_class = ErrorClass::kPermanent;
  dead.last_error_message = "invalid_grant";
  ASSERT_TRUE(store->save(dead, nullptr, "w", LeaseAction::kRelease));
  ASSERT_TRUE(*store->mark_reauth_notified(ids[1], kStoreNow));
  ASSERT_TRUE(store->claim(ids[3], kStoreNow, "w", 1min)) << "a lease is not copied";

  // The copy's store: another file, or another schema.
  testing::PgTestSchema other_pg;
  std::unique_ptr<TokenStore> copy;
  if (sqlite()) {
    copy = std::move(*SqliteTokenStore::open(dir_.file("copy.db"), 200ms, Cipher(KeyRing(key_))));
  } else {
    ASSERT_TRUE(other_pg.ok()) << other_pg.error();
    PgOptions options;
    options.dsn = other_pg.dsn();
    copy = std::move(*PgTokenStore::open(options, Cipher(KeyRing(key_))));
  }
  std::vector<SealedToken> all;
  for (std::string after;;) {
    auto batch = store->read_sealed(after, 2);
    ASSERT_TRUE(batch) << batch.error().message();
    all.insert(all.end(), batch->begin(), batch->end());
    if (batch->size() < 2) break;
    after = batch->back().record.id;
  }
  ASSERT_EQ(all.size(), 5u);
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return a.record.id < b.record.id;
  }));
  ASSERT_TRUE(copy->write_sealed(all));
  for (const std::string& id : ids) {
    SCOPED_TRACE(id);
    TokenRecord was = **store->find(id);
    const TokenRecord now = **copy->find(id);
    EXPECT_TRUE(now.lease_owner.empty());
    was.lease_owner.clear();
    was.lease_until.reset();
    EXPECT_EQ(now, was);
    const auto a = store->read_secrets(was);
    const auto b = copy->read_secrets(now);
    ASSERT_TRUE(b) << b.error().message();
    EXPECT_EQ(b->access_token.reveal(), a->access_token.reveal());
    EXPECT_EQ(b->refresh_token.reveal(), a->refresh_token.reveal());
  }
  EXPECT_TRUE(copy->unnotified_reauth(10)->empty()) << "the notice sent is not sent again";
  EXPECT_EQ(copy->needing_reauth(10)->size(), 1u);

  // A clash (here the same rows again, one new one first) writes nothing at all.
  SealedToken fresh = all.front();
  fresh.record.id = "tok_00000000000000ff";
  fresh.record.account_id = "fresh";
  std::vector<SealedToken> clashing{fresh, all.back()};
  auto refused = copy->write_sealed(clashing);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), Errc::kAlreadyExists) << refused.error().message();
  EXPECT_FALSE(copy->find(fresh.record.id)->has_value());
}

TEST_P(SqliteStoreTest, ScheduleQueriesUseTheDueIndexes) {
  auto opened = SqliteTokenStore::open(db_path(), 200ms, Cipher(KeyRing(key_)));
  ASSERT_TRUE(opened);
  auto plan = (*opened)->explain_schedule_queries();
  ASSERT_TRUE(plan) << plan.error().message();
  // Every read of the table is an index range search on (provider, due): O(log n + limit). The
  // merge then sorts at most `limit` rows per provider and column, never the table.
  std::size_t searches = 0;
  for (std::size_t pos = 0; pos < plan->size();) {
    std::size_t end = plan->find('\n', pos);
    std::string line = plan->substr(pos, end - pos);
    pos = end + 1;
    if (line.find("tokens") == std::string::npos) continue;
    ++searches;
    const bool indexed =
        line.rfind("SEARCH tokens USING INDEX tokens_refresh_due (provider=?", 0) == 0 ||
        line.rfind("SEARCH tokens USING INDEX tokens_check_due (provider=?", 0) == 0;
    EXPECT_TRUE(indexed) << line << "\n" << *plan;
  }
  // earliest_due and claim_due, each over 3 providers and 2 columns.
  EXPECT_EQ(searches, 12u) << *plan;
}

// After the wall clock is set back, checks lying beyond one period are pulled into the coming
// period on their own slot; nothing else moves, and a second call finds nothing to do.
TEST_P(StoreTest, PullInChecksMovesOnlyChecksBeyondOnePeriodKeepingTheirSlot) {
  auto store = open(key_);
  ASSERT_TRUE(store);
  const SysTime refresh = kStoreNow + 7 * 24h;
  struct Case {
    std::string account;
    SysTime check;
    SysTime expected;
    Provider provider = Provider::kTikTok;
    bool failing = false;  // backing off: keeps its time
  };
  const std::vector<Case> cases = {
      {"within", kStoreNow + 30min, kStoreNow + 30min},
      {"edge", kStoreNow + 1h, kStoreNow + 1h},
      {"just-beyond", kStoreNow + 1h + 1s, kStoreNow + 1s},
      {"far", kStoreNow + 7h + 20min, kStoreNow + 20min},
      {"far-exact", kStoreNow + 6h, kStoreNow + 1h},
      {"other-provider", kStoreNow + 7h + 20min, kStoreNow + 7h + 20min, Provider::kGoogle},
      {"failing", kStoreNow + 3h, kStoreNow + 3h, Provider::kTikTok, true},
  };
  std::map<std::string, std::string> ids;
  for (const Case& c : cases) {
    auto r = store->upsert(new_token(c.account, c.provider), secrets("act.1", "rft.1"), kStoreNow,
                           [&](TokenRecord& rec) {
                             due_at(refresh, c.check)(rec);
                             if (c.failing) {
                               rec.state = TokenState::kFailing;
                               rec.consecutive_failures = 3;
                             }
                           });
    ASSERT_TRUE(r.ok()) << r.error().message();
    ids[c.account] = r->record.id;
  }
  auto moved = store->pull_in_checks(Provider::kTikTok, kStoreNow, 1h);
  ASSERT_TRUE(moved.ok()) << moved.error().message();
  EXPECT_EQ(*moved, 3u);
  for (const Case& c : cases) {
    const TokenRecord r = **store->find(ids[c.account]);
    EXPECT_EQ(r.next_check_due, c.expected) << c.account;
    EXPECT_EQ(r.next_refresh_due, refresh) << c.account;
  }
  EXPECT_EQ(*store->pull_in_checks(Provider::kTikTok, kStoreNow, 1h), 0u) << "idempotent";
  EXPECT_FALSE(store->pull_in_checks(Provider::kTikTok, kStoreNow, 0s).ok());
}

TEST_P(SqliteStoreTest, ALockedDatabaseIsBusyNotAnError) {
  { ASSERT_TRUE(open(key_)); }
  auto opened = SqliteTokenStore::open(db_path(), 1ms, Cipher(KeyRing(key_)));
  ASSERT_TRUE(opened);
  auto& store = *opened;
  SQLite::Database other(db_path(), SQLite::OPEN_READWRITE);
  other.exec("BEGIN IMMEDIATE");
  auto r =
      store->upsert(new_token("a"), secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::kBusy) << r.error().message();
  other.exec("ROLLBACK");
  EXPECT_TRUE(
      store->upsert(new_token("a"), secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow))
          .ok());
}

// What only the PostgreSQL store has: a server, shared by claimers that must not wait for
// each other.
class PgStoreTest : public StoreTest {};
INSTANTIATE_TEST_SUITE_P(Postgres, PgStoreTest, ::testing::Values(Backend::kPostgres));

// A row locked by another client past lock_timeout is "busy, retry", never a failure.
TEST_P(PgStoreTest, ALockedRowIsBusyNotAnError) {
  auto store = open(key_);
  const std::string id =
      store->upsert(new_token("a"), secrets("x", "y"), kStoreNow, due_at(kStoreNow, kStoreNow))
          ->record.id;
  pqxx::connection other(pg().dsn());
  pqxx::work holding(other);
  holding.exec("SELECT 1 FROM tokens WHERE id = '" + id + "' FOR UPDATE");
  auto r = store->claim(id, kStoreNow, "cli", 1min);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::kBusy) << r.error().message();
  // A scheduled claim skips the locked row instead of waiting for it.
  auto due = store->claim_due(kStoreNow, 10, "daemon", 1min, kAllProviders);
  ASSERT_TRUE(due) << due.error().message();
  EXPECT_EQ(due->size(), 0u);
  holding.abort();
  EXPECT_EQ(store->claim_due(kStoreNow, 10, "daemon", 1min, kAllProviders)->size(), 1u);
}

// Two claimers at once take disjoint tokens, and between them all the due ones.
TEST_P(PgStoreTest, ConcurrentClaimersTakeDisjointTokens) {
  auto setup = open(key_);
  std::vector<TokenImport> batch;
  for (int i = 0; i < 200; ++i)
    batch.push_back({new_token("a" + std::to_string(i)), secrets("x", "y")});
  ASSERT_TRUE(setup->upsert_batch(batch, kStoreNow, due_at(kStoreNow, kStoreNow)));
  auto a = open(key_);
  auto b = open(key_);
  // One claimer holds its claim transaction open: the other skips its rows.
  pqxx::connection held_conn(pg().dsn());
  pqxx::work held(held_conn);
  const auto locked = held.exec(
      "SELECT id FROM tokens ORDER BY next_refresh_due, id LIMIT 50 FOR UPDATE SKIP LOCKED");
  ASSERT_EQ(locked.size(), 50u);
  std::set<std::string> seen;
  std::size_t total = 0;
  for (int round = 0; round < 10; ++round) {
    for (TokenStore* s : {a.get(), b.get()}) {
      auto got = s->claim_due(kStoreNow, 20, s == a.get() ? "a" : "b", 1min, kAllProviders);
      ASSERT_TRUE(got) << got.error().message();
      for (const DueToken& d : *got) {
        EXPECT_TRUE(seen.insert(d.record.id).second) << d.record.id << " claimed twice";
        for (const pqxx::row& row : locked)
          EXPECT_NE(d.record.id, row[0].c_str());
      }
      total += got->size();
    }
  }
  EXPECT_EQ(total, 150u) << "every due token not locked by the third claimer";
  held.abort();
  EXPECT_EQ(a->claim_due(kStoreNow, 100, "a", 1min, kAllProviders)->size(), 50u);
}

TEST_P(PgStoreTest, ScheduleQueriesUseTheDueIndexes) {
  PgOptions options;
  options.dsn = pg().dsn();
  auto opened = PgTokenStore::open(options, Cipher(KeyRing(key_)));
  ASSERT_TRUE(opened) << opened.error().message();
  // Enough rows that a sequential scan is not the cheapest plan.
  std::vector<TokenImport> batch;
  for (int i = 0; i < 2000; ++i)
    batch.push_back({new_token("a" + std::to_string(i)), secrets("x", "y")});
  ASSERT_TRUE((*opened)->upsert_batch(batch, kStoreNow, due_at(kStoreNow + 1h, kStoreNow + 2h)));
  raw_exec("ANALYZE tokens");
  auto plan = (*opened)->explain_schedule_queries();
  ASSERT_TRUE(plan) << plan.error().message();
  EXPECT_EQ(plan->find("Seq Scan"), std::string::npos) << *plan;
  EXPECT_NE(plan->find("tokens_refresh_due"), std::string::npos) << *plan;
  EXPECT_NE(plan->find("tokens_check_due"), std::string::npos) << *plan;
}

// Leases and due times written on one host are compared on another: a host whose clock is off
// would take over a token another host is still working on. It is refused at start-up.
TEST_P(PgStoreTest, AHostWhoseClockDisagreesWithTheServerIsRefused) {
  PgOptions options;
  options.dsn = pg().dsn();
  options.clock = [] { return SystemClock().now() + 5min; };
  auto s = PgTokenStore::open(options, Cipher(KeyRing(key_)));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("s ahead of the clock of PostgreSQL"), std::string::npos)
      << s.error().message();
  EXPECT_NE(s.error().message().find("NTP"), std::string::npos) << s.error().message();
  options.clock = [] { return SystemClock().now() - 10s; };
  EXPECT_TRUE(PgTokenStore::open(options, Cipher(KeyRing(key_))).ok()) << "within 30 s";
}

// The connection string in the config file must not carry a password; a secret may.
TEST(PgDsnTest, AConfigFileDsnWithAPasswordIsRefusedWithoutQuotingIt) {
  EXPECT_EQ(check_dsn("host=db1 dbname=tw user=tw sslmode=verify-full", DsnSource::kConfigFile),
            "");
  const std::string bad = check_dsn("host=db1 password=hunter2", DsnSource::kConfigFile);
  EXPECT_NE(bad.find("password"), std::string::npos) << bad;
  EXPECT_EQ(bad.find("hunter2"), std::string::npos) << bad;
  EXPECT_NE(check_dsn("postgresql://tw:hunter2@db1/tw", DsnSource::kConfigFile), "");
  EXPECT_EQ(check_dsn("postgresql://tw:hunter2@db1/tw", DsnSource::kSecret), "");
  const std::string garbled = check_dsn("host=db1 password='hunter2", DsnSource::kSecret);
  EXPECT_NE(garbled, "");
  EXPECT_EQ(garbled.find("hunter2"), std::string::npos) << garbled;
}

// A server that is not there is a storage error naming where, never the password.
TEST(PgDsnTest, AnUnreachableServerIsAClearErrorWithoutThePassword) {
  PgOptions options;
  options.dsn = "host=/nonexistent/socket/dir port=1 dbname=tw user=tw password=hunter2";
  auto s = PgTokenStore::open(options, Cipher(KeyRing(make_key())));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), Errc::kStorage);
  EXPECT_NE(s.error().message().find("host=/nonexistent/socket/dir"), std::string::npos)
      << s.error().message();
  EXPECT_EQ(s.error().message().find("hunter2"), std::string::npos) << s.error().message();
}

}  // namespace
}  // namespace tw
