// The audit trail: one append-only row per renewal, check, state change and CLI action, each
// carrying the hash of the row before it, so `tokenwarden audit verify` finds a row that was
// edited, deleted or inserted after the fact.
//
// Thread-safety: plain values and pure functions; AuditVerifier is used by one thread.
//
// A row never holds a secret: actions, outcomes and the same one-line messages the log carries.
// Chain: row n's hash = SHA-256 over (n, at, actor, action, token_id, outcome, detail, the hash
// of row n - 1), each field length-prefixed. Row 1 follows 32 zero bytes. Pruning (audit.retention)
// deletes the oldest rows and records the last deleted row's number and hash as the anchor the
// chain continues from; the prune is itself a row. The chain proves that nothing was changed by
// someone who does not also recompute every later hash: record the head hash `audit verify`
// prints somewhere else (a ticket, a log shipper) to pin it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/time.h"

namespace tw {

using AuditHash = std::array<std::uint8_t, 32>;

// What a caller appends; the store numbers and chains it.
struct AuditEntry {
  SysTime at{};
  std::string actor;     // "daemon:HOST:PID", "cli:USER@HOST:PID"
  std::string action;    // refresh, check, add, reconnect, import, remove, revoke, disable, ...
  std::string token_id;  // empty for an action on no one token (rekey, prune)
  std::string outcome;   // "ok", "failed: transient", "active -> needs_reauth", ...
  std::string detail;    // one line, never a secret

  bool operator==(const AuditEntry&) const = default;
};

struct AuditRow {
  std::int64_t seq = 0;  // 1, 2, 3, ... without gaps
  AuditEntry entry;
  AuditHash prev_hash{};
  AuditHash hash{};
};

// Where the chain starts: the last pruned row (seq 0 and zeros when nothing was pruned).
struct AuditAnchor {
  std::int64_t seq = 0;
  AuditHash hash{};
};

// The detail of a "prune" row: how many rows went, and the anchor the chain now starts from,
// which `audit verify` compares with the stored anchor (moving it by hand is then found).
std::string audit_prune_detail(std::size_t deleted, SysTime before, const AuditAnchor& anchor);

// The hash row `seq` must carry.
AuditHash audit_hash(std::int64_t seq, const AuditEntry& e, const AuditHash& prev);
std::string audit_hash_hex(const AuditHash& h);

// Checks rows fed in seq order against the chain from `anchor`. The first break is kept.
class AuditVerifier {
 public:
  explicit AuditVerifier(AuditAnchor anchor)
      : anchor_(anchor), expected_seq_(anchor.seq + 1), prev_(anchor.hash) {}
  void add(const AuditRow& row);
  // After the last row: checks the anchor against the newest prune row, and that an anchor past
  // row 0 left rows behind (pruning never deletes the newest one).
  void finish();
  // Empty while intact; else what broke first ("row 17 was changed", ...).
  const std::string& problem() const { return problem_; }
  std::int64_t rows() const { return rows_; }
  std::int64_t first_seq() const { return first_seq_; }
  const AuditHash& head() const { return prev_; }

 private:
  AuditAnchor anchor_;
  std::optional<AuditAnchor> named_by_prune_;  // by the newest prune row seen
  std::int64_t expected_seq_;
  AuditHash prev_;
  std::int64_t rows_ = 0;
  std::int64_t first_seq_ = 0;
  std::string problem_;
};

}  // namespace tw
