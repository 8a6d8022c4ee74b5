// The token model shared by storage, scheduler, providers and the CLI.
//
// Thread-safety: plain values.
// A TokenRecord is everything tokenwarden knows about a token except its secrets, which live
// encrypted in the store and are read only when a refresh or check needs them (TokenSecrets).
// Every field of a TokenRecord is safe to print.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/secret.h"
#include "core/time.h"

namespace tw {

enum class Provider { kMeta, kGoogle, kTikTok };

enum class TokenKind {
  kPageToken,          // Meta Page token; its refresh secret is the long-lived user token
  kUserToken,          // Meta long-lived user token or Instagram token (about 60 days)
  kRefreshToken,       // an OAuth refresh token (Google, TikTok Login Kit)
  kBusinessToken,      // TikTok API for Business token pair
  kClientCredentials,  // an app's own credentials: checked, never refreshed
  kApiKey,             // a static API key: checked, never refreshed
};

enum class TokenState {
  kActive,       // renewing and checking normally
  kFailing,      // the last attempt failed transiently; retrying with backoff
  kNeedsReauth,  // a provider said the grant is dead: the customer must reconnect
  kRevoked,      // the customer revoked access: the customer must reconnect
  kDisabled,     // an operator switched it off
};

// Every state, in the order the status file and `list` report them.
inline constexpr std::array<TokenState, 5> kTokenStates{
    TokenState::kActive, TokenState::kFailing, TokenState::kNeedsReauth, TokenState::kRevoked,
    TokenState::kDisabled};

enum class ErrorClass {
  kNone,
  kTransient,      // network, timeout, 5xx, 429, rate-limit codes: retry with backoff
  kMalformed,      // an unexpected body: retried like transient, with a cap
  kPermanent,      // invalid_grant, Meta 190 and friends: needs re-authorisation
  kRevoked,        // the provider reports the grant revoked
  kConfiguration,  // our own credentials are wrong (invalid_client): the operator must act
};

// The two things tokenwarden does to a token.
enum class Operation { kRefresh, kCheck };

std::string_view to_string(Operation op);
std::string_view to_string(Provider p);
std::string_view to_string(TokenKind k);
std::string_view to_string(TokenState s);
std::string_view to_string(ErrorClass c);
std::optional<Provider> parse_provider(std::string_view s);
std::optional<TokenKind> parse_token_kind(std::string_view s);
std::optional<TokenState> parse_token_state(std::string_view s);
std::optional<ErrorClass> parse_error_class(std::string_view s);
std::optional<Operation> parse_operation(std::string_view s);

// Whether `kind` makes sense for `provider`; the CLI refuses other pairs.
bool kind_allowed(Provider provider, TokenKind kind);
// Whether tokenwarden renews tokens of this kind (false: only health-checked).
bool kind_renewable(TokenKind kind);
// Whether tokenwarden can health-check tokens of this kind at this provider.
bool kind_checkable(Provider provider, TokenKind kind);
// Whether a token of this kind must carry a refresh secret to be renewed.
bool kind_needs_refresh_secret(TokenKind kind);

// True while tokenwarden keeps refreshing and checking the token.
inline bool state_scheduled(TokenState s) {
  return s == TokenState::kActive || s == TokenState::kFailing;
}

struct TokenRecord {
  std::string id;  // "tok_" + 16 hex digits, assigned by the store
  Provider provider = Provider::kMeta;
  TokenKind kind = TokenKind::kPageToken;
  std::string workspace_id;  // the customer's workspace on our platform
  std::string account_id;    // the provider's account, page or business id
  std::string scopes;        // as granted, comma- or space-separated as the provider sent them

  std::optional<SysTime> expires_at;          // of the access token; absent: never or unknown
  std::optional<SysTime> refresh_expires_at;  // of the refresh secret, where the provider says
  std::optional<SysTime> next_refresh_due;    // absent: not renewed
  std::optional<SysTime> next_check_due;      // absent: not checked

  TokenState state = TokenState::kActive;
  SysTime state_since{};
  int consecutive_failures = 0;
  ErrorClass last_error_class = ErrorClass::kNone;
  std::optional<Operation> last_error_operation;  // which operation failed last
  std::string last_error_message;                 // one line, no secret
  std::optional<SysTime> last_error_at;

  std::optional<SysTime> last_refreshed_at;
  std::optional<SysTime> last_checked_at;
  SysTime connected_at{};  // when the secrets were last supplied by `add` (a reconnect resets it)
  SysTime created_at{};
  SysTime updated_at{};

  std::string lease_owner;  // empty: not leased
  std::optional<SysTime> lease_until;
  // Fencing token: incremented by every claim and reconnect. A write carrying an older
  // generation is refused, so a worker that lost its lease can never overwrite newer state.
  std::int64_t lease_generation = 0;

  bool has_access_token = false;
  bool has_refresh_token = false;

  // Set (durably) just before a renewal request goes out, cleared when its result is known: still
  // set after a crash, a lost reply or a timeout. The provider may then have rotated the refresh
  // token and told nobody, so if the next renewal is refused the token is "in doubt", not revoked.
  std::optional<SysTime> renewal_in_doubt_since;

  bool operator==(const TokenRecord&) const = default;
};

struct TokenSecrets {
  Secret access_token;   // may be empty for a refresh_token kind
  Secret refresh_token;  // may be empty for kinds that have none
};

}  // namespace tw
