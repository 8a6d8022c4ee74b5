#include "storage/store_common.h"

#include <array>

#include <openssl/rand.h>

#include "core/fs.h"

namespace tw::store_detail {

Result<std::string> new_token_id() {
  std::array<unsigned char, 8> raw{};
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) {
    return Error(Errc::kInternal, "cannot generate a token id: RAND_bytes failed");
  }
  return "tok_" + to_hex(raw);
}

bool lease_held(const TokenRecord& r, SysTime now) {
  return !r.lease_owner.empty() && r.lease_until && *r.lease_until > now;
}

Result<SealedPair> seal(const Cipher& cipher, const TokenSecrets& s, const std::string& id) {
  SealedPair out;
  const std::pair<const Secret*, std::optional<Blob>*> fields[] = {
      {&s.access_token, &out.access}, {&s.refresh_token, &out.refresh}};
  std::string_view name = kAccessField;
  for (const auto& [secret, slot] : fields) {
    if (!secret->empty()) {
      auto blob = cipher.seal(*secret, id, name);
      if (!blob) return blob.error();
      *slot = std::move(*blob);
    }
    name = kRefreshField;
  }
  return out;
}

Result<UpsertResult> build_upsert(const NewToken& token, const TokenSecrets& secrets, SysTime now,
                                  const std::optional<TokenRecord>& existing,
                                  const ScheduleFn& schedule) {
  UpsertResult out;
  TokenRecord& r = out.record;
  out.created = !existing.has_value();
  r.state = TokenState::kActive;
  if (out.created) {
    auto id = new_token_id();
    if (!id) return id.error();
    r.id = std::move(*id);
    r.created_at = now;
  } else {
    const TokenRecord& old = *existing;
    r.id = old.id;
    r.created_at = old.created_at;
    r.last_checked_at = old.last_checked_at;
    r.lease_generation = old.lease_generation + 1;
    if (old.state == TokenState::kDisabled) r.state = TokenState::kDisabled;
  }
  r.provider = token.provider;
  r.kind = token.kind;
  r.workspace_id = token.workspace_id;
  r.account_id = token.account_id;
  r.scopes = token.scopes;
  r.expires_at = token.expires_at;
  r.refresh_expires_at = token.refresh_expires_at;
  r.state_since = now;
  r.connected_at = now;
  r.updated_at = now;
  r.has_access_token = !secrets.access_token.empty();
  r.has_refresh_token = !secrets.refresh_token.empty();
  schedule(r);
  return out;
}

Error lease_lost(const LeaseRef& lease, std::string_view owner, const std::string& holder,
                 std::int64_t generation) {
  return Error(Errc::kLeaseLost,
               "token " + lease.id + " is no longer leased by " + std::string(owner) +
                   " with generation " + std::to_string(lease.generation) +
                   (holder.empty()
                        ? " (it was reconnected or released)"
                        : " (now " + holder + ", generation " + std::to_string(generation) + ")") +
                   ": this result is stale and was not stored");
}

Error already_stored(const TokenRecord& r, const std::string& stored_as) {
  return Error(Errc::kAlreadyExists, "token " + r.id + " (" + std::string(to_string(r.provider)) +
                                         " account " + r.account_id + ") is already stored here" +
                                         (stored_as.empty() ? "" : " as " + stored_as));
}

std::string describe_batch(std::span<const StoreWrite> writes) {
  if (writes.size() != 1) return "saving " + std::to_string(writes.size()) + " tokens";
  return writes[0].kind == StoreWrite::Kind::kSave
             ? "saving token " + writes[0].record->id
             : "recording a renewal attempt on " + writes[0].lease.id;
}

}  // namespace tw::store_detail
