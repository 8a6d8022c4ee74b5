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

// A provider: one of the three built-in platforms, or a generic OAuth 2.0 or API-key provider
// defined in the configuration (providers.generic). A small value holding the name, 1 to 32
// characters of [a-z0-9_-] starting with a letter: safe to print and to quote in SQL.
class Provider {
 public:
  static constexpr std::size_t kMaxName = 32;
  static const Provider kMeta;
  static const Provider kGoogle;
  static const Provider kTikTok;

  // The provider with this name, or nullopt when the name is not valid (see above).
  static constexpr std::optional<Provider> named(std::string_view name) {
    if (name.empty() || name.size() > kMaxName || name[0] < 'a' || name[0] > 'z') {
      return std::nullopt;
    }
    Provider p;
    for (char c : name) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
      if (!ok) return std::nullopt;
      p.chars_[p.size_++] = c;
    }
    return p;
  }

  // The name; it lives as long as this object.
  constexpr std::string_view name() const { return {chars_.data(), size_}; }
  // Meta, Google or TikTok: a provider with its own client; false for a generic one.
  bool builtin() const;

  constexpr bool operator==(const Provider&) const = default;
  constexpr auto operator<=>(const Provider&) const = default;

 private:
  constexpr Provider() = default;
  std::array<char, kMaxName> chars_{};
  std::uint8_t size_ = 0;
};

inline constexpr Provider Provider::kMeta = *Provider::named("meta");
inline constexpr Provider Provider::kGoogle = *Provider::named("google");
inline constexpr Provider Provider::kTikTok = *Provider::named("tiktok");

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
// The provider's name, valid as long as `p` is.
std::string_view to_string(const Provider& p);
std::string_view to_string(TokenKind k);
std::string_view to_string(TokenState s);
std::string_view to_string(ErrorClass c);
// Any valid provider name (see Provider); whether it is configured is the caller's question.
std::optional<Provider> parse_provider(std::string_view s);
std::optional<TokenKind> parse_token_kind(std::string_view s);
std::optional<TokenState> parse_token_state(std::string_view s);
std::optional<ErrorClass> parse_error_class(std::string_view s);
std::optional<Operation> parse_operation(std::string_view s);

// Whether `kind` makes sense for a built-in `provider`; the CLI refuses other pairs. (For a
// generic provider the configuration decides: ProvidersConfig::allows.)
bool kind_allowed(const Provider& provider, TokenKind kind);
// Whether tokenwarden renews tokens of this kind at this provider (false: only health-checked).
// A generic provider renews its client-credentials tokens (by asking for a new one); Meta's app
// token is only checked.
bool kind_renewable(const Provider& provider, TokenKind kind);
// Whether tokenwarden can health-check tokens of this kind at this provider. For a generic
// provider, whether its configuration has a way to (introspection, a probe): Policy decides.
bool kind_checkable(const Provider& provider, TokenKind kind);
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
