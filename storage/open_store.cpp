#include "storage/open_store.h"

#include "storage/pg_token_store.h"

namespace tw {

namespace {

// The PostgreSQL connection string of `postgres`: dsn, or the secret dsn_secret names (which may
// hold a password, and is checked like dsn otherwise).
Result<std::string> postgres_dsn(const PostgresConfig& postgres) {
  if (postgres.dsn_secret.empty()) return postgres.dsn;
  auto secret = postgres.dsn_secret.resolve();
  if (!secret) return secret.error();
  std::string dsn(secret->reveal());
  if (auto bad = check_dsn(dsn, DsnSource::kSecret); !bad.empty()) {
    return Error(Errc::kConfig, "storage.postgres.dsn_secret: " + bad);
  }
  return dsn;
}

}  // namespace

Result<std::unique_ptr<TokenStore>> open_token_store(const StorageConfig& storage,
                                                     const DatabaseConfig& database,
                                                     const KeyConfig& key,
                                                     const std::string& credentials_directory,
                                                     OpenMode mode) {
  auto keys = load_key_ring(key.file, key.previous_files, credentials_directory);
  if (!keys) return keys.error();
  return open_token_store(storage, database, std::move(*keys), mode);
}

Result<std::unique_ptr<TokenStore>> open_token_store(const StorageConfig& storage,
                                                     const DatabaseConfig& database, KeyRing keys,
                                                     OpenMode mode) {
  if (storage.backend == StorageConfig::Backend::kSqlite) {
    auto store =
        SqliteTokenStore::open(database.path, database.busy_timeout, Cipher(std::move(keys)), mode);
    if (!store) return store.error();
    return std::unique_ptr<TokenStore>(std::move(*store));
  }
  auto dsn = postgres_dsn(storage.postgres);
  if (!dsn) return dsn.error();
  PgOptions options;
  options.dsn = std::move(*dsn);
  options.lock_timeout = storage.postgres.lock_timeout;
  options.statement_timeout = storage.postgres.statement_timeout;
  auto store = PgTokenStore::open(options, Cipher(std::move(keys)), mode);
  if (!store) return store.error();
  return std::unique_ptr<TokenStore>(std::move(*store));
}

}  // namespace tw
