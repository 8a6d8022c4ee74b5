// Simulated Google endpoints: OAuth token refresh, tokeninfo, revoke, and the Business Profile
// accounts list. Facts: providers.md section 2.
//
// Refresh tokens do not rotate unless the grant was seeded with "rotate": then every refresh
// returns a new refresh token and the old one dies. A refresh token dies when its grant is
// revoked, after 180 idle days, 7 days after consent for a Testing-mode app, or when its Google
// user gets a 101st live refresh token (the oldest dies). Access tokens live
// SimOptions::google_access_lifetime; older ones stay valid until they expire.
#include <algorithm>
#include <set>
#include <sstream>
#include <string>

#include "tools/provider-sim/simulator_state.h"

namespace tw::sim::detail {

Response oauth_error(int status, const std::string& error, const std::string& description) {
  return json_response(status, {{"error", error}, {"error_description", description}});
}

namespace {

constexpr std::int64_t kGoogleIdleLimit = 180 * kDay;
constexpr std::int64_t kGoogleTestingLifetime = 7 * kDay;
constexpr const char* kBusinessScope = "https://www.googleapis.com/auth/business.manage";

Response invalid_grant() {
  return oauth_error(400, "invalid_grant", "Token has been expired or revoked.");
}

Response unauthenticated() {
  Response r = json_response(
      401, {{"error",
             {{"code", 401},
              {"message",
               "Request had invalid authentication credentials. Expected OAuth 2 access token, "
               "login cookie or other valid authentication credential. See "
               "https://developers.google.com/identity/sign-in/web/devconsole-project."},
              {"status", "UNAUTHENTICATED"}}}});
  r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"https://accounts.google.com/\"");
  return r;
}

}  // namespace

void Engine::register_google_refresh(const std::shared_ptr<Grant>& grant,
                                     const std::string& token) {
  auto& live = google_refresh_by_user[grant->google_user];
  std::erase_if(live, [this](const std::string& t) {
    const Token* found = find(t);
    return found == nullptr || !found->grant->alive() || found->killed || found->rotated;
  });
  live.push_back(token);
  while (static_cast<std::int64_t>(live.size()) > options.google_max_refresh_tokens) {
    if (Token* oldest = find(live.front())) oldest->killed = true;  // silently, as Google does
    live.pop_front();
  }
}

// POST /token (form: client_id, client_secret, grant_type=refresh_token, refresh_token)
Response Engine::google_token(Call& call) {
  std::string client_id = call.param("client_id");
  std::string client_secret = call.param("client_secret");
  // HTTP Basic: unverified that Google accepts it for the token endpoint; the documented way is
  // the form body.
  if (client_id.empty()) std::tie(client_id, client_secret) = basic_credentials(*call.request);
  if (client_id != options.google_client_id || client_secret != options.google_client_secret) {
    return oauth_error(401, "invalid_client", "The OAuth client was not found.");
  }
  if (call.param("grant_type") != "refresh_token") {
    return oauth_error(400, "unsupported_grant_type",
                       "Invalid grant_type: " + call.param("grant_type"));
  }
  if (call.token.empty()) {
    return oauth_error(400, "invalid_request", "Missing required parameter: refresh_token");
  }
  Token* token = call.found;
  if (token == nullptr || token->kind != TokenKind::kGoogleRefresh) {
    count_invalid_grant(call);
    return oauth_error(400, "invalid_grant", "Bad Request");
  }
  const std::shared_ptr<Grant> grant = token->grant;
  if (token->rotated) {
    count_reused(call);
    const std::int64_t grace = options.reuse_grace_seconds;
    if (grace > 0 && call.now - token->rotated_at <= grace && grant->alive() &&
        token->successor == grant->refresh_token) {
      const Token* access = find(token->successor_access);
      return json_response(200,
                           {{"access_token", token->successor_access},
                            {"expires_in", access != nullptr ? access->expires_at - call.now : 0},
                            {"refresh_token", token->successor},
                            {"scope", kBusinessScope},
                            {"token_type", "Bearer"}});
    }
    count_invalid_grant(call);
    return invalid_grant();
  }
  if (grant->alive() && grant->unauthorized_client) {
    return oauth_error(400, "unauthorized_client", "Unauthorized");
  }
  if (!grant->alive() || token->killed) {
    count_invalid_grant(call);
    return invalid_grant();
  }
  if (call.now - token->last_used >= kGoogleIdleLimit ||
      (grant->testing && call.now - grant->created_at >= kGoogleTestingLifetime)) {
    token->killed = true;
    count_invalid_grant(call);
    return invalid_grant();
  }

  token->last_used = call.now;
  const std::int64_t lifetime = options.google_access_lifetime;
  std::string access = issue(grant, TokenKind::kGoogleAccess, call.now, call.now + lifetime);
  grant->access_token = access;
  json body = {{"access_token", access},
               {"expires_in", lifetime},
               {"scope", kBusinessScope},
               {"token_type", "Bearer"}};
  if (grant->rotate) {
    std::string fresh = issue(grant, TokenKind::kGoogleRefresh, call.now, 0);
    token->rotated = true;
    token->rotated_at = call.now;
    token->successor = fresh;
    token->successor_access = access;
    grant->refresh_token = fresh;
    register_google_refresh(grant, fresh);
    body["refresh_token"] = std::move(fresh);
  }
  return json_response(200, body);
}

// GET /tokeninfo?access_token=: string-valued fields, or 400 invalid_token.
Response Engine::google_tokeninfo(Call& call) {
  const Token* token = call.found;
  if (token == nullptr || token->kind != TokenKind::kGoogleAccess || !token->usable(call.now)) {
    return oauth_error(400, "invalid_token", "Invalid Value");
  }
  return json_response(200, {{"azp", options.google_client_id},
                             {"aud", options.google_client_id},
                             {"sub", token->grant->google_user},
                             {"scope", kBusinessScope},
                             {"exp", std::to_string(token->expires_at)},
                             {"expires_in", std::to_string(token->expires_at - call.now)},
                             {"access_type", "offline"}});
}

// POST /revoke (form: token): revoking either token of a grant revokes the grant.
Response Engine::google_revoke(Call& call) {
  const Token* token = call.found;
  const bool google = token != nullptr && (token->kind == TokenKind::kGoogleAccess ||
                                           token->kind == TokenKind::kGoogleRefresh);
  if (!google || !token->usable(call.now)) {  // unverified body
    return oauth_error(400, "invalid_token", "Token expired or revoked");
  }
  token->grant->revoked = true;
  return json_response(200, json::object());
}

// GET /v1/accounts?pageSize=1 with a Bearer access token.
Response Engine::google_accounts(Call& call) {
  const Token* token = call.found;
  if (token == nullptr || token->kind != TokenKind::kGoogleAccess || !token->usable(call.now)) {
    return unauthenticated();
  }
  const Grant& grant = *token->grant;
  if (grant.no_permission) {
    return json_response(403, {{"error",
                                {{"code", 403},
                                 {"message", "The caller does not have permission"},
                                 {"status", "PERMISSION_DENIED"}}}});
  }
  const std::string name =
      grant.account_id.starts_with("accounts/") ? grant.account_id : "accounts/" + grant.account_id;
  return json_response(200, {{"accounts", json::array({{{"name", name},
                                                        {"accountName", "Sim " + grant.account_id},
                                                        {"type", "PERSONAL"}}})}});
}

}  // namespace tw::sim::detail
