// Outcome: what one operation (a renewal or a check) on one token came to.
//
// Thread-safety: plain values.
// Providers produce Outcomes; the scheduler turns them into state and due times through the
// policy, and commits them. New secrets ride along in `secrets` and are stored whenever present,
// even on a failure (a multi-step renewal that got a new token before failing must not lose it).
#pragma once

#include <optional>
#include <string>
#include <utility>

#include "core/time.h"
#include "core/token.h"

namespace tw {

struct Failure {
  ErrorClass error_class = ErrorClass::kTransient;
  std::string message;                 // one line, no secret
  std::optional<Seconds> retry_after;  // from a Retry-After header or a provider's hint
  bool cancelled = false;  // the request was abandoned (shutting down): not the token's failure
  // The request may have taken effect at the provider without our learning how: it went out and
  // no complete, readable reply came back (a timeout, a reset, a truncated or unreadable body, a
  // cancel). For a renewal this means the provider may have rotated the refresh token.
  bool in_doubt = false;
};

struct Outcome {
  Operation op = Operation::kCheck;
  bool ok = true;
  Failure failure;  // when !ok
  // What the provider told us. New secrets replace the stored ones; an empty field keeps the
  // stored value (Google rarely returns a refresh token; Meta has none).
  std::optional<TokenSecrets> secrets;
  std::optional<SysTime> expires_at;
  std::optional<SysTime> refresh_expires_at;
  // The new access token's expiry is unknown (no expires_in): the stored expiry, which was the
  // old token's, is cleared instead of kept.
  bool expiry_unknown = false;
  std::optional<std::string> scopes;
  std::string note;  // one line for the log, e.g. "refresh token rotated"
  // The provider asks everyone to slow down for this long (Meta's usage headers near 100%, a
  // rate-limit code): the worker pauses all requests to this provider, not just this token's.
  std::optional<Seconds> throttle;
  // A check whose stored access token was refused: a renewal may cure it. The worker renews,
  // commits, and checks once more; if it already has, `failure` stands.
  bool renew_and_retry = false;

  static Outcome success(Operation op) {
    Outcome o;
    o.op = op;
    return o;
  }
  static Outcome failed(Operation op, ErrorClass c, std::string message,
                        std::optional<Seconds> retry_after = std::nullopt) {
    Outcome o;
    o.op = op;
    o.ok = false;
    o.failure = Failure{c, std::move(message), retry_after};
    return o;
  }
};

}  // namespace tw
