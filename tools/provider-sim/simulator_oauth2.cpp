// Simulated generic providers: "oauth2", a standards-compliant OAuth 2.0 authorization server
// (RFC 6749, 7662, 7009), and "apikey", an API-key probe. tokenwarden's generic provider client
// (providers/generic.cpp) is tested against them.
#include <algorithm>
#include <string>
#include <utility>

#include "tools/provider-sim/simulator_state.h"

namespace tw::sim::detail {

// --- the generic OAuth 2.0 server ("oauth2") and the API-key probe ("apikey") ------------------
//
// One confidential client (SimOptions::oauth2_client_id and _secret), authenticated as RFC 6749
// 2.3.1 says: by HTTP Basic or by client_id and client_secret form fields, not both (400
// invalid_request). A wrong or missing client is 401 invalid_client, with WWW-Authenticate when
// Basic was used (5.2). Before that, every /oauth2/ endpoint wants the gateway key header
// (SimOptions::oauth2_api_key), else 403 access_denied. Errors are RFC 6749 5.2 bodies
// {"error","error_description"}, status 400 unless said otherwise.
//
// POST /oauth2/token, grant_type=refresh_token: the refresh token of a seeded "oauth2" grant gives
//   a new access token (the seed's "access_lifetime", by default
//   SimOptions::oauth2_access_lifetime) and, when the grant rotates (oauth2_rotate_refresh or the
//   seed's "rotate"), a new refresh token; the presented one then answers invalid_grant (within
//   reuse_grace_seconds: the same new pair). A new refresh token keeps the expiry of the one it
//   replaces (the seed's "refresh_expires_in"; none by default). "scope" may narrow the grant's
//   scope for the new access token; asking for more is invalid_scope.
// POST /oauth2/token, grant_type=client_credentials: an access token for the client itself
//   (oauth2_client_credentials_lifetime, no refresh token) on the grant "oauth2:<client id>",
//   created on first use unless seeded. Each new one kills the client's previous access token at
//   once. /admin/revoke of that grant kills its access token, but the client may still ask: it
//   then gets a fresh grant (with the revoked one's scope and lifetime).
// POST /oauth2/introspect (RFC 7662): {"active":true,"scope","client_id","sub","iat","exp"?,
//   "token_type"?} for a usable access or refresh token (token_type "Bearer" and exp only where
//   they apply), {"active":false} for anything else. token_type_hint is accepted and ignored.
// POST /oauth2/revoke (RFC 7009): a refresh token revokes its grant, an access token dies alone;
//   200 with an empty body, for unknown or dead tokens too.
// GET /apikey/probe with header X-API-Key: {"account_id"} for a live seeded key, 401
//   invalid_api_key for an unknown, expired or revoked one, 400 invalid_request without the header.

namespace {

Response oauth2_invalid_grant(Engine& engine, Call& call, const std::string& description) {
  engine.count_invalid_grant(call);
  return oauth_error(400, "invalid_grant", description);
}

Response oauth2_invalid_scope() {
  return oauth_error(400, "invalid_scope",
                     "The requested scope exceeds the scope granted by the resource owner.");
}

// The gateway key check: nullopt when the header carries the key (or none is configured).
std::optional<Response> oauth2_gateway_refusal(const SimOptions& o, const Request& request) {
  if (o.oauth2_api_key.empty()) return std::nullopt;
  const auto it = request.headers.find(ascii_lower(o.oauth2_api_key_header));
  if (it != request.headers.end() && it->second == o.oauth2_api_key) return std::nullopt;
  return oauth_error(403, "access_denied", "missing or wrong " + o.oauth2_api_key_header);
}

// RFC 6749 2.3.1 client authentication: nullopt when the configured client authenticated. A
// client_id form field next to HTTP Basic is identification, allowed when it names the same client.
std::optional<Response> oauth2_client_refusal(const SimOptions& o, const Call& call) {
  const bool basic = has_basic_auth(*call.request);
  std::string id = call.param("client_id");
  std::string secret = call.param("client_secret");
  if (basic) {
    auto [basic_id, basic_secret] = basic_credentials(*call.request);
    if (call.params->count("client_secret") != 0) {
      return oauth_error(400, "invalid_request",
                         "The client used more than one authentication method: HTTP Basic and "
                         "client_secret in the body.");
    }
    if (!id.empty() && !basic_id.empty() && id != basic_id) {
      return oauth_error(400, "invalid_request",
                         "client_id does not match the client of the HTTP Basic credentials.");
    }
    id = std::move(basic_id);
    secret = std::move(basic_secret);
  }
  if (!id.empty() && id == o.oauth2_client_id && secret == o.oauth2_client_secret) {
    return std::nullopt;
  }
  Response r = oauth_error(401, "invalid_client", "Client authentication failed.");
  if (basic) r.headers.emplace_back("WWW-Authenticate", "Basic realm=\"sim\"");
  return r;
}

std::set<std::string> scope_set(const std::string& scope) {
  std::set<std::string> out;
  std::istringstream in(scope);
  for (std::string s; in >> s;)
    out.insert(s);
  return out;
}

// The "scope" form field, when given and not blank.
std::optional<std::string> requested_scope(const Call& call) {
  const std::string& scope = call.param("scope");
  if (scope.find_first_not_of(' ') == std::string::npos) return std::nullopt;
  return scope;
}

// Whether every scope token of `requested` is one of `granted`.
bool scope_within(const std::string& requested, const std::string& granted) {
  const std::set<std::string> allowed = scope_set(granted);
  const std::set<std::string> wanted = scope_set(requested);
  return std::includes(allowed.begin(), allowed.end(), wanted.begin(), wanted.end());
}

// A new access token of `grant` (with `scope` when it narrows the grant's), now its newest.
std::string oauth2_issue_access(Engine& engine, const std::shared_ptr<Grant>& grant,
                                std::int64_t now, const std::optional<std::string>& scope) {
  std::string access =
      engine.issue(grant, TokenKind::kOAuth2Access, now, now + grant->access_lifetime);
  if (scope) engine.tokens.at(access).scope = *scope;
  grant->access_token = access;
  return access;
}

// grant_type=refresh_token.
Response oauth2_refresh(Engine& engine, Call& call) {
  if (call.token.empty()) {
    return oauth_error(400, "invalid_request", "Missing required parameter: refresh_token");
  }
  Token* token = call.found;
  if (token == nullptr || token->kind != TokenKind::kOAuth2Refresh) {
    return oauth2_invalid_grant(engine, call, "The refresh token is invalid.");
  }
  const std::shared_ptr<Grant> grant = token->grant;
  if (token->rotated) {
    engine.count_reused(call);
    const std::int64_t grace = engine.options.reuse_grace_seconds;
    if (grace > 0 && call.now - token->rotated_at <= grace && grant->alive() &&
        token->successor == grant->refresh_token) {
      const Token* access = engine.find(token->successor_access);
      const bool narrowed = access != nullptr && !access->scope.empty();
      return json_response(
          200, {{"access_token", token->successor_access},
                {"token_type", "Bearer"},
                {"expires_in",
                 access != nullptr ? std::max<std::int64_t>(0, access->expires_at - call.now) : 0},
                {"refresh_token", token->successor},
                {"scope", narrowed ? access->scope : grant->scope}});
    }
    return oauth2_invalid_grant(engine, call, "The refresh token was already used.");
  }
  if (!grant->alive() || token->killed) {
    return oauth2_invalid_grant(engine, call, "The refresh token has been revoked.");
  }
  if (token->expired(call.now)) {
    return oauth2_invalid_grant(engine, call, "The refresh token has expired.");
  }
  const std::optional<std::string> scope = requested_scope(call);
  if (scope && !scope_within(*scope, grant->scope)) return oauth2_invalid_scope();

  std::string access = oauth2_issue_access(engine, grant, call.now, scope);
  json body = {{"access_token", access},
               {"token_type", "Bearer"},
               {"expires_in", grant->access_lifetime},
               {"scope", scope.value_or(grant->scope)}};
  if (grant->rotate) {
    std::string fresh = engine.issue(grant, TokenKind::kOAuth2Refresh, call.now, token->expires_at);
    token->rotated = true;
    token->rotated_at = call.now;
    token->successor = fresh;
    token->successor_access = std::move(access);
    grant->refresh_token = fresh;
    body["refresh_token"] = std::move(fresh);
  }
  return json_response(200, body);
}

// The client's own grant "oauth2:<client id>": the live one, else a fresh one (first use, or the
// old one revoked or seeded as another kind), keeping a revoked client grant's scope and lifetime.
std::shared_ptr<Grant> oauth2_client_grant(Engine& engine, std::int64_t now) {
  const std::string& id = engine.options.oauth2_client_id;
  const std::string key = "oauth2:" + id;
  auto grant = std::make_shared<Grant>();
  grant->access_lifetime = engine.options.oauth2_client_credentials_lifetime;
  grant->scope = kOAuth2DefaultScope;
  if (const auto it = engine.grants.find(key); it != engine.grants.end()) {
    const Grant& old = *it->second;
    if (old.api == Api::kOAuth2Client) {
      if (old.alive()) return it->second;
      grant->access_lifetime = old.access_lifetime;
      grant->scope = old.scope;
    }
  }
  grant->api = Api::kOAuth2Client;
  grant->provider = "oauth2";
  grant->account_id = id;
  grant->key = key;
  grant->created_at = now;
  engine.install(grant);
  return grant;
}

// grant_type=client_credentials: asking for a new token ends the old one.
Response oauth2_client_credentials(Engine& engine, Call& call) {
  const std::shared_ptr<Grant> grant = oauth2_client_grant(engine, call.now);
  const std::optional<std::string> scope = requested_scope(call);
  if (scope && !scope_within(*scope, grant->scope)) return oauth2_invalid_scope();
  if (Token* previous = engine.find(grant->access_token)) previous->killed = true;
  std::string access = oauth2_issue_access(engine, grant, call.now, scope);
  return json_response(200, {{"access_token", std::move(access)},
                             {"token_type", "Bearer"},
                             {"expires_in", grant->access_lifetime},
                             {"scope", scope.value_or(grant->scope)}});
}

}  // namespace

// POST /oauth2/token (form: grant_type, refresh_token | scope; client authentication).
Response Engine::oauth2_token(Call& call) {
  Response r = [&] {
    if (auto refusal = oauth2_gateway_refusal(options, *call.request)) return std::move(*refusal);
    if (auto refusal = oauth2_client_refusal(options, call)) return std::move(*refusal);
    const std::string& type = call.param("grant_type");
    if (type == "refresh_token") return oauth2_refresh(*this, call);
    if (type == "client_credentials") return oauth2_client_credentials(*this, call);
    return oauth_error(400, "unsupported_grant_type",
                       type.empty() ? "Missing grant_type." : "Unsupported grant_type: " + type);
  }();
  r.headers.emplace_back("Cache-Control", "no-store");  // RFC 6749 5.1
  r.headers.emplace_back("Pragma", "no-cache");
  return r;
}

// POST /oauth2/introspect (form: token, token_type_hint?; client authentication).
Response Engine::oauth2_introspect(Call& call) {
  if (auto refusal = oauth2_gateway_refusal(options, *call.request)) return std::move(*refusal);
  if (auto refusal = oauth2_client_refusal(options, call)) return std::move(*refusal);
  if (call.token.empty()) {
    return oauth_error(400, "invalid_request", "Missing required parameter: token");
  }
  const Token* token = call.found;
  const bool ours = token != nullptr && (token->kind == TokenKind::kOAuth2Access ||
                                         token->kind == TokenKind::kOAuth2Refresh);
  if (!ours || !token->usable(call.now)) return json_response(200, {{"active", false}});
  const Grant& grant = *token->grant;
  json body = {{"active", true},
               {"scope", token->scope.empty() ? grant.scope : token->scope},
               {"client_id", options.oauth2_client_id},
               {"sub", grant.account_id},
               {"iat", token->issued_at}};
  if (token->kind == TokenKind::kOAuth2Access) body["token_type"] = "Bearer";
  if (token->expires_at != 0) body["exp"] = token->expires_at;
  return json_response(200, body);
}

// POST /oauth2/revoke (form: token, token_type_hint?; client authentication).
Response Engine::oauth2_revoke(Call& call) {
  if (auto refusal = oauth2_gateway_refusal(options, *call.request)) return std::move(*refusal);
  if (auto refusal = oauth2_client_refusal(options, call)) return std::move(*refusal);
  if (call.token.empty()) {
    return oauth_error(400, "invalid_request", "Missing required parameter: token");
  }
  if (Token* token = call.found; token != nullptr) {
    if (token->kind == TokenKind::kOAuth2Refresh && !token->rotated) {
      token->grant->revoked = true;  // RFC 7009 2.1: its access tokens go with it
    } else if (token->kind == TokenKind::kOAuth2Access) {
      token->killed = true;
    }
  }
  return text_response(200, "", "");  // RFC 7009 2.2: no body, and so no Content-Type
}

// GET /apikey/probe with header X-API-Key.
Response Engine::apikey_probe(Call& call) {
  if (call.token.empty()) {
    return oauth_error(400, "invalid_request", "Missing X-API-Key header.");
  }
  const Token* token = call.found;
  if (token == nullptr || token->kind != TokenKind::kApiKey || !token->usable(call.now)) {
    return oauth_error(401, "invalid_api_key", "The API key is unknown, expired or revoked.");
  }
  return json_response(200, {{"account_id", token->grant->account_id}});
}

}  // namespace tw::sim::detail
