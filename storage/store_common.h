// What the SQLite and PostgreSQL stores share: the columns a TokenRecord is read from and how a
// row of them is decoded, how secrets are sealed, how an add or a reconnect builds its record,
// and the words of a lease-lost error. Internal to storage/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/result.h"
#include "core/time.h"
#include "core/token.h"
#include "storage/crypto.h"
#include "storage/token_store.h"

namespace tw::store_detail {

// The columns behind a TokenRecord, in the order decode_row() reads them. Valid SQL for both
// engines.
inline constexpr const char* kColumns =
    "id, provider, kind, workspace_id, account_id, scopes, expires_at, refresh_expires_at, "
    "next_refresh_due, next_check_due, state, state_since, consecutive_failures, "
    "last_error_class, last_error_message, last_error_at, last_refreshed_at, last_checked_at, "
    "connected_at, created_at, updated_at, lease_owner, lease_until, "
    "CASE WHEN access_token IS NULL THEN 0 ELSE 1 END AS has_access_token, "
    "CASE WHEN refresh_token IS NULL THEN 0 ELSE 1 END AS has_refresh_token, last_error_operation, "
    "lease_generation, renewal_in_doubt_since";
inline constexpr int kColumnCount = 28;

// The field names secrets are sealed under (part of the ciphertext's associated data).
inline constexpr std::string_view kAccessField = "access_token";
inline constexpr std::string_view kRefreshField = "refresh_token";

// Decodes a row selected with kColumns. `row` answers null(i), text(i) and int64(i) for column i.
// Values the CHECK constraints allow always parse; anything else means the database was edited
// by hand, which is reported (Errc::kCorrupt, naming the token), not trusted.
template <class Row>
Result<TokenRecord> decode_row(const Row& row) {
  auto time = [&](int i) -> std::optional<SysTime> {
    if (row.null(i)) return std::nullopt;
    return from_unix(row.int64(i));
  };
  TokenRecord r;
  r.id = row.text(0);
  auto provider = parse_provider(row.text(1));
  auto kind = parse_token_kind(row.text(2));
  auto state = parse_token_state(row.text(10));
  auto error_class = parse_error_class(row.text(13));
  if (!provider || !kind || !state || !error_class) {
    return Error(Errc::kCorrupt, "token " + r.id +
                                     " has an unknown provider, kind, state or "
                                     "error class in the database");
  }
  r.provider = *provider;
  r.kind = *kind;
  r.workspace_id = row.text(3);
  r.account_id = row.text(4);
  r.scopes = row.text(5);
  r.expires_at = time(6);
  r.refresh_expires_at = time(7);
  r.next_refresh_due = time(8);
  r.next_check_due = time(9);
  r.state = *state;
  r.state_since = from_unix(row.int64(11));
  r.consecutive_failures = static_cast<int>(row.int64(12));
  r.last_error_class = *error_class;
  r.last_error_message = row.text(14);
  r.last_error_at = time(15);
  r.last_refreshed_at = time(16);
  r.last_checked_at = time(17);
  r.connected_at = from_unix(row.int64(18));
  r.created_at = from_unix(row.int64(19));
  r.updated_at = from_unix(row.int64(20));
  r.lease_owner = row.null(21) ? "" : row.text(21);
  r.lease_until = time(22);
  r.has_access_token = row.int64(23) != 0;
  r.has_refresh_token = row.int64(24) != 0;
  r.lease_generation = row.int64(26);
  r.renewal_in_doubt_since = time(27);
  if (std::string op = row.text(25); !op.empty()) {
    r.last_error_operation = parse_operation(op);
    if (!r.last_error_operation) {
      return Error(Errc::kCorrupt, "token " + r.id + " has an unknown last_error_operation");
    }
  }
  return r;
}

// A fresh random token id ("tok_" and 16 hex digits).
Result<std::string> new_token_id();

// Whether someone (anyone, the caller included) holds an unexpired lease on `r`.
bool lease_held(const TokenRecord& r, SysTime now);

// A token's two secrets, sealed; absent ones are not stored.
struct SealedPair {
  std::optional<Blob> access;
  std::optional<Blob> refresh;
};

// Both secrets sealed for token `id`; an empty secret becomes an absent blob.
Result<SealedPair> seal(const Cipher& cipher, const TokenSecrets& s, const std::string& id);

// The record upsert() writes: a new token (`existing` empty; its id is drawn here) or a reconnect
// of `existing` (the same row and id, fresh secrets, a clean slate, the next lease generation so
// a worker mid-refresh with the old secrets is fenced out; an operator's `disable` stands).
// `schedule` sets its due times.
Result<UpsertResult> build_upsert(const NewToken& token, const TokenSecrets& secrets, SysTime now,
                                  const std::optional<TokenRecord>& existing,
                                  const ScheduleFn& schedule);

// Errc::kLeaseLost for a write under `lease` by `owner` when the row says `holder` (empty: none)
// at `generation`.
Error lease_lost(const LeaseRef& lease, std::string_view owner, const std::string& holder,
                 std::int64_t generation);

// Errc::kAlreadyExists for a copied-in token (write_sealed) that clashes with the stored token
// `stored_as` (empty when not known) by id or by (provider, account_id).
Error already_stored(const TokenRecord& r, const std::string& stored_as);

// "saving token X", "recording a renewal attempt on X" or "saving N tokens": what a write batch
// is, for its error messages.
std::string describe_batch(std::span<const StoreWrite> writes);

}  // namespace tw::store_detail
