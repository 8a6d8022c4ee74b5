#include "core/token.h"

#include <array>
#include <utility>

namespace tw {

namespace {

template <class E, std::size_t N>
std::optional<E> lookup(const std::array<std::pair<E, std::string_view>, N>& table,
                        std::string_view s) {
  for (const auto& [value, name] : table) {
    if (name == s) return value;
  }
  return std::nullopt;
}

template <class E, std::size_t N>
std::string_view name_of(const std::array<std::pair<E, std::string_view>, N>& table, E value) {
  for (const auto& [v, name] : table) {
    if (v == value) return name;
  }
  die("enum value without a name");
}

constexpr std::array<std::pair<TokenKind, std::string_view>, 6> kKinds{{
    {TokenKind::kPageToken, "page_token"},
    {TokenKind::kUserToken, "user_token"},
    {TokenKind::kRefreshToken, "refresh_token"},
    {TokenKind::kBusinessToken, "business_token"},
    {TokenKind::kClientCredentials, "client_credentials"},
    {TokenKind::kApiKey, "api_key"},
}};

constexpr std::array<std::pair<TokenState, std::string_view>, 5> kStateNames{{
    {TokenState::kActive, "active"},
    {TokenState::kFailing, "failing"},
    {TokenState::kNeedsReauth, "needs_reauth"},
    {TokenState::kRevoked, "revoked"},
    {TokenState::kDisabled, "disabled"},
}};

constexpr std::array<std::pair<ErrorClass, std::string_view>, 6> kErrorClasses{{
    {ErrorClass::kNone, "none"},
    {ErrorClass::kTransient, "transient"},
    {ErrorClass::kMalformed, "malformed"},
    {ErrorClass::kPermanent, "permanent"},
    {ErrorClass::kRevoked, "revoked"},
    {ErrorClass::kConfiguration, "configuration"},
}};

constexpr std::array<std::pair<Operation, std::string_view>, 2> kOperations{{
    {Operation::kRefresh, "refresh"},
    {Operation::kCheck, "check"},
}};

}  // namespace

std::string_view to_string(Operation op) {
  return name_of(kOperations, op);
}
std::optional<Operation> parse_operation(std::string_view s) {
  return lookup(kOperations, s);
}
bool Provider::builtin() const {
  return *this == kMeta || *this == kGoogle || *this == kTikTok;
}
std::string_view to_string(const Provider& p) {
  return p.name();
}
std::string_view to_string(TokenKind k) {
  return name_of(kKinds, k);
}
std::string_view to_string(TokenState s) {
  return name_of(kStateNames, s);
}
std::string_view to_string(ErrorClass c) {
  return name_of(kErrorClasses, c);
}
std::optional<Provider> parse_provider(std::string_view s) {
  return Provider::named(s);
}
std::optional<TokenKind> parse_token_kind(std::string_view s) {
  return lookup(kKinds, s);
}
std::optional<TokenState> parse_token_state(std::string_view s) {
  return lookup(kStateNames, s);
}
std::optional<ErrorClass> parse_error_class(std::string_view s) {
  return lookup(kErrorClasses, s);
}

bool kind_allowed(const Provider& provider, TokenKind kind) {
  switch (kind) {
    case TokenKind::kPageToken:
    case TokenKind::kUserToken:
      return provider == Provider::kMeta;
    case TokenKind::kRefreshToken:
      return provider == Provider::kGoogle || provider == Provider::kTikTok;
    case TokenKind::kBusinessToken:
      return provider == Provider::kTikTok;
    case TokenKind::kClientCredentials:
    case TokenKind::kApiKey:
      return true;
  }
  return false;
}

bool kind_renewable(const Provider& provider, TokenKind kind) {
  if (kind == TokenKind::kClientCredentials) return !provider.builtin();
  return kind != TokenKind::kApiKey;
}

bool kind_checkable(const Provider& provider, TokenKind kind) {
  if (provider == Provider::kMeta) {
    // debug_token inspects any token, the app's own client-credentials token included.
    return kind == TokenKind::kPageToken || kind == TokenKind::kUserToken ||
           kind == TokenKind::kClientCredentials;
  }
  if (provider == Provider::kGoogle) return kind == TokenKind::kRefreshToken;
  if (provider == Provider::kTikTok) {
    return kind == TokenKind::kRefreshToken || kind == TokenKind::kBusinessToken;
  }
  return kind == TokenKind::kRefreshToken || kind == TokenKind::kClientCredentials ||
         kind == TokenKind::kApiKey;
}

bool kind_needs_refresh_secret(TokenKind kind) {
  return kind == TokenKind::kRefreshToken || kind == TokenKind::kBusinessToken;
}

}  // namespace tw
