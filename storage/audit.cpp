#include "storage/audit.h"

#include <openssl/evp.h>

#include "core/result.h"

namespace tw {

namespace {

void put_u64(EVP_MD_CTX* ctx, std::uint64_t v) {
  std::uint8_t bytes[8];
  for (int i = 0; i < 8; ++i)
    bytes[i] = static_cast<std::uint8_t>(v >> (56 - 8 * i));
  EVP_DigestUpdate(ctx, bytes, sizeof bytes);
}

void put_text(EVP_MD_CTX* ctx, std::string_view s) {
  put_u64(ctx, s.size());
  EVP_DigestUpdate(ctx, s.data(), s.size());
}

}  // namespace

AuditHash audit_hash(std::int64_t seq, const AuditEntry& e, const AuditHash& prev) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1) {
    die("SHA-256 is not available");
  }
  put_text(ctx, "tokenwarden audit v1");
  put_u64(ctx, static_cast<std::uint64_t>(seq));
  put_u64(ctx, static_cast<std::uint64_t>(to_unix(e.at)));
  put_text(ctx, e.actor);
  put_text(ctx, e.action);
  put_text(ctx, e.token_id);
  put_text(ctx, e.outcome);
  put_text(ctx, e.detail);
  EVP_DigestUpdate(ctx, prev.data(), prev.size());
  AuditHash out{};
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, out.data(), &len);
  EVP_MD_CTX_free(ctx);
  return out;
}

std::string audit_hash_hex(const AuditHash& h) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::uint8_t b : h) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

std::string audit_prune_detail(std::size_t deleted, SysTime before, const AuditAnchor& anchor) {
  return "deleted " + std::to_string(deleted) + " audit rows older than " + format_time(before) +
         "; the chain now starts after row " + std::to_string(anchor.seq) + " (hash " +
         audit_hash_hex(anchor.hash) + ")";
}

namespace {

// The anchor a prune row's detail names, if it names one.
std::optional<AuditAnchor> anchor_named(const std::string& detail) {
  const std::string_view after = "after row ";
  const auto at = detail.find(after);
  const auto hash_at = detail.find("(hash ", at);
  if (at == std::string::npos || hash_at == std::string::npos) return std::nullopt;
  AuditAnchor a;
  try {
    a.seq = std::stoll(detail.substr(at + after.size()));
  } catch (const std::exception&) {
    return std::nullopt;
  }
  const std::string hex = detail.substr(hash_at + 6, 64);
  if (hex.size() != 64) return std::nullopt;
  for (std::size_t i = 0; i < a.hash.size(); ++i) {
    try {
      a.hash[i] = static_cast<std::uint8_t>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  return a;
}

}  // namespace

void AuditVerifier::finish() {
  if (!problem_.empty() || anchor_.seq == 0) return;
  if (rows_ == 0) {
    problem_ = "every row was deleted (rows 1 to " + std::to_string(anchor_.seq) +
               " are recorded as pruned, and pruning always keeps the newest)";
  } else if (!named_by_prune_ || named_by_prune_->seq != anchor_.seq ||
             named_by_prune_->hash != anchor_.hash) {
    problem_ = "the chain's starting point (after row " + std::to_string(anchor_.seq) +
               ") is not the one the last prune recorded: rows were deleted by hand";
  }
}

void AuditVerifier::add(const AuditRow& row) {
  if (!problem_.empty()) return;
  if (rows_ == 0) first_seq_ = row.seq;
  ++rows_;
  const std::string which = "row " + std::to_string(row.seq);
  if (row.seq < expected_seq_) {
    problem_ = which + " is out of place (expected row " + std::to_string(expected_seq_) + ")";
  } else if (row.seq > expected_seq_) {
    problem_ = "row" +
               (row.seq - expected_seq_ > 1 ? "s " + std::to_string(expected_seq_) + " to " +
                                                  std::to_string(row.seq - 1) + " are"
                                            : " " + std::to_string(expected_seq_) + " is") +
               " missing (deleted)";
  } else if (row.prev_hash != prev_) {
    problem_ = which + " does not follow the row before it (a row before it was replaced)";
  } else if (audit_hash(row.seq, row.entry, row.prev_hash) != row.hash) {
    problem_ = which + " was changed after it was written";
  }
  if (!problem_.empty()) return;
  prev_ = row.hash;
  expected_seq_ = row.seq + 1;
  if (row.entry.action == "prune") named_by_prune_ = anchor_named(row.entry.detail);
}

}  // namespace tw
