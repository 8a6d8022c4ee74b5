// open_token_store: the TokenStore the configuration names, SQLite or PostgreSQL.
#pragma once

#include <memory>
#include <string>

#include "config/config.h"
#include "core/result.h"
#include "storage/crypto.h"
#include "storage/sqlite_token_store.h"
#include "storage/token_store.h"

namespace tw {

// Loads the key ring (see load_key_ring; `credentials_directory` is $CREDENTIALS_DIRECTORY or
// empty) and opens the store of `storage.backend`: the SQLite file of `database`, or the
// PostgreSQL database of `storage.postgres` (its DSN read from dsn_secret when given). Fails with
// a message naming the database, never a password.
Result<std::unique_ptr<TokenStore>> open_token_store(const StorageConfig& storage,
                                                     const DatabaseConfig& database,
                                                     const KeyConfig& key,
                                                     const std::string& credentials_directory,
                                                     OpenMode mode);
// The same with a key ring given by the caller (`tokenwarden rekey --new-key`).
Result<std::unique_ptr<TokenStore>> open_token_store(const StorageConfig& storage,
                                                     const DatabaseConfig& database, KeyRing keys,
                                                     OpenMode mode);

}  // namespace tw
