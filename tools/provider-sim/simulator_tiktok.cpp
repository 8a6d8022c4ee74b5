// Simulated TikTok endpoints: Open API v2 (token refresh, user info, revoke) and API for Business
// (tt_user refresh, token_info, business/get). Facts: providers.md section 3.
//
// v2 refresh tokens always rotate: the presented token dies when a new one is issued, and
// presenting it again gives invalid_grant (within SimOptions::reuse_grace_seconds it gives the same
// new pair instead, as long as that pair is still the newest). Business grants rotate unless
// seeded with "rotate":false. Whether a rotated refresh token gets a fresh lifetime is
// SimOptions::tiktok_refresh_restarts_lifetime (unverified).
#include <string>

#include "tools/provider-sim/simulator_state.h"

namespace tw::sim::detail {

namespace {

constexpr const char* kBusinessRevoked = "Access token is incorrect or has been revoked.";

std::int64_t remaining(const Token* token, std::int64_t now) {
  return token == nullptr ? 0 : std::max<std::int64_t>(0, token->expires_at - now);
}

// The outcome of presenting a refresh token, shared by v2 and Business.
enum class RefreshCheck { kOk, kGrace, kRejected };

// Whether `token` (of `kind`) may be refreshed now; counts reuse and rejections.
RefreshCheck check_refresh(Engine& engine, Call& call, TokenKind kind) {
  Token* token = call.found;
  if (token == nullptr || token->kind != kind) {
    engine.count_invalid_grant(call);
    return RefreshCheck::kRejected;
  }
  if (token->rotated) {
    engine.count_reused(call);
    const Grant& grant = *token->grant;
    const std::int64_t grace = engine.options.reuse_grace_seconds;
    if (grace > 0 && call.now - token->rotated_at <= grace && grant.alive() &&
        token->successor == grant.refresh_token) {
      return RefreshCheck::kGrace;
    }
    engine.count_invalid_grant(call);
    return RefreshCheck::kRejected;
  }
  if (!token->usable(call.now)) {
    engine.count_invalid_grant(call);
    return RefreshCheck::kRejected;
  }
  return RefreshCheck::kOk;
}

// A new access token and, when `rotate`, a new refresh token replacing the presented one.
// Returns {access, refresh}.
std::pair<std::string, std::string> renew(Engine& engine, Call& call, TokenKind access_kind,
                                          TokenKind refresh_kind, bool rotate) {
  Token* old = call.found;
  const std::shared_ptr<Grant> grant = old->grant;
  std::string access =
      engine.issue(grant, access_kind, call.now, call.now + grant->access_lifetime);
  grant->access_token = access;
  if (!rotate) return {std::move(access), call.token};
  const std::int64_t refresh_expires = engine.options.tiktok_refresh_restarts_lifetime
                                           ? call.now + grant->refresh_lifetime
                                           : old->expires_at;
  std::string refresh = engine.issue(grant, refresh_kind, call.now, refresh_expires);
  old->rotated = true;
  old->rotated_at = call.now;
  old->successor = refresh;
  old->successor_access = access;
  grant->refresh_token = refresh;
  return {std::move(access), std::move(refresh)};
}

// --- Open API v2 helpers -------------------------------------------------------------------------

Response oauth_error(Engine& engine, const Call& call, const std::string& error,
                     const std::string& description) {
  return json_response(
      engine.options.tiktok_oauth_error_status,
      {{"error", error}, {"error_description", description}, {"log_id", engine.log_id(call.now)}});
}

Response api_error(Engine& engine, const Call& call, int status, const std::string& code,
                   const std::string& message) {
  return json_response(
      status,
      {{"data", json::object()},
       {"error", {{"code", code}, {"message", message}, {"log_id", engine.log_id(call.now)}}}});
}

bool v2_client_ok(const Engine& engine, const Call& call) {
  return call.param("client_key") == engine.options.tiktok_client_key &&
         call.param("client_secret") == engine.options.tiktok_client_secret;
}

}  // namespace

// POST /v2/oauth/token/ (form: client_key, client_secret, grant_type=refresh_token, refresh_token)
Response Engine::tiktok_token(Call& call) {
  if (!v2_client_ok(*this, call)) {
    return oauth_error(*this, call, "invalid_client", "Client key or secret is incorrect.");
  }
  if (call.param("grant_type") != "refresh_token") {
    return oauth_error(*this, call, "unsupported_grant_type", "The grant type is not supported.");
  }
  if (call.token.empty()) {
    return oauth_error(*this, call, "invalid_request", "Missing parameter: refresh_token.");
  }
  const RefreshCheck check = check_refresh(*this, call, TokenKind::kTikTokRefresh);
  if (check == RefreshCheck::kRejected) {
    return oauth_error(*this, call, "invalid_grant",
                       "Refresh token is invalid, expired, revoked or already used.");
  }
  std::string access;
  std::string refresh;
  if (check == RefreshCheck::kGrace) {
    access = call.found->successor_access;
    refresh = call.found->successor;
  } else {
    std::tie(access, refresh) =
        renew(*this, call, TokenKind::kTikTokAccess, TokenKind::kTikTokRefresh, true);
  }
  const Grant& grant = *call.found->grant;
  const std::int64_t expires_in = remaining(find(access), call.now);
  const std::int64_t refresh_expires_in = remaining(find(refresh), call.now);
  return json_response(200, {{"access_token", std::move(access)},
                             {"expires_in", expires_in},
                             {"open_id", grant.open_id},
                             {"refresh_expires_in", refresh_expires_in},
                             {"refresh_token", std::move(refresh)},
                             {"scope", grant.scope},
                             {"token_type", "Bearer"}});
}

// GET /v2/user/info/?fields=open_id,display_name with a Bearer access token.
Response Engine::tiktok_user_info(Call& call) {
  Token* token = call.found;
  if (token == nullptr || token->kind != TokenKind::kTikTokAccess || !token->usable(call.now)) {
    return api_error(*this, call, 401, "access_token_invalid",
                     "The access token is invalid or not found in the request.");
  }
  // Sliding one-minute window per access token, on the sim clock.
  if (!token->recent_calls) token->recent_calls = std::make_unique<std::deque<std::int64_t>>();
  auto& recent = *token->recent_calls;
  while (!recent.empty() && recent.front() <= call.now - 60)
    recent.pop_front();
  if (static_cast<std::int64_t>(recent.size()) >= options.tiktok_user_info_limit) {
    return api_error(*this, call, 429, "rate_limit_exceeded",
                     "The API rate limit was exceeded. Please try again later.");
  }
  recent.push_back(call.now);
  const Grant& grant = *token->grant;
  if (grant.scope_not_authorized) {
    return api_error(*this, call, 401, "scope_not_authorized",
                     "The user did not authorize the scope required for completing this request.");
  }
  const std::string& fields = call.param("fields");
  if (fields.empty()) {
    return api_error(*this, call, 400, "invalid_params", "The fields parameter is required.");
  }
  json user = json::object();
  if (fields.find("open_id") != std::string::npos) user["open_id"] = grant.open_id;
  if (fields.find("display_name") != std::string::npos) user["display_name"] = grant.display_name;
  return json_response(
      200, {{"data", {{"user", std::move(user)}}},
            {"error", {{"code", "ok"}, {"message", ""}, {"log_id", log_id(call.now)}}}});
}

// POST /v2/oauth/revoke/ (form: client_key, client_secret, token): revokes the grant. An unknown
// token also gets {} (unverified; RFC 7009 behaviour).
Response Engine::tiktok_revoke(Call& call) {
  if (!v2_client_ok(*this, call)) {
    return oauth_error(*this, call, "invalid_client", "Client key or secret is incorrect.");
  }
  if (call.found != nullptr && (call.found->kind == TokenKind::kTikTokAccess ||
                                call.found->kind == TokenKind::kTikTokRefresh)) {
    call.found->grant->revoked = true;
  }
  return json_response(200, json::object());
}

// --- API for Business ----------------------------------------------------------------------------

namespace {

Response envelope(Engine& engine, const Call& call, int code, const std::string& message,
                  json data = json::object()) {
  return json_response(200, {{"code", code},
                             {"message", message},
                             {"request_id", engine.log_id(call.now)},
                             {"data", std::move(data)}});
}

const json* field(const Call& call, const char* name) {
  if (!call.body.is_object()) return nullptr;
  const auto it = call.body.find(name);
  return it == call.body.end() || !it->is_string() ? nullptr : &*it;
}

bool field_is(const Call& call, const char* name, const std::string& value) {
  const json* f = field(call, name);
  return f != nullptr && f->get_ref<const std::string&>() == value;
}

}  // namespace

// POST /open_api/v1.3/tt_user/oauth2/refresh_token/ (JSON body)
Response Engine::business_refresh(Call& call) {
  if (!call.body.is_object())
    return envelope(*this, call, 40002, "Invalid JSON body.");  // unverified
  if (!field_is(call, "client_id", options.tiktok_business_app_id) ||
      !field_is(call, "client_secret", options.tiktok_business_app_secret)) {
    return envelope(*this, call, 40101, "The app_id or secret is invalid.");
  }
  if (!field_is(call, "grant_type", "refresh_token") || call.token.empty()) {  // unverified code
    return envelope(*this, call, 40002,
                    "Invalid parameters: grant_type must be refresh_token and refresh_token is "
                    "required.");
  }
  const RefreshCheck check = check_refresh(*this, call, TokenKind::kBusinessRefresh);
  if (check == RefreshCheck::kRejected) return envelope(*this, call, 40105, kBusinessRevoked);
  std::string access;
  std::string refresh;
  if (check == RefreshCheck::kGrace) {
    access = call.found->successor_access;
    refresh = call.found->successor;
  } else {
    const bool rotate = call.found->grant->rotate;
    std::tie(access, refresh) =
        renew(*this, call, TokenKind::kBusinessAccess, TokenKind::kBusinessRefresh, rotate);
  }
  const Grant& grant = *call.found->grant;
  const std::int64_t expires_in = remaining(find(access), call.now);
  const std::int64_t refresh_expires_in = remaining(find(refresh), call.now);
  return envelope(*this, call, 0, "OK",
                  {{"access_token", std::move(access)},
                   {"expires_in", expires_in},
                   {"refresh_token", std::move(refresh)},
                   {"refresh_token_expires_in", refresh_expires_in},
                   {"open_id", grant.open_id},
                   {"scope", grant.scope},
                   {"token_type", "Bearer"}});
}

// POST /open_api/v1.3/tt_user/token_info/get/ (JSON body: app_id, access_token)
Response Engine::business_token_info(Call& call) {
  if (!field_is(call, "app_id", options.tiktok_business_app_id)) {
    return envelope(*this, call, 40101, "The app_id is invalid.");
  }
  const Token* token = call.found;
  if (token == nullptr || token->kind != TokenKind::kBusinessAccess || !token->usable(call.now)) {
    return envelope(*this, call, 40105, kBusinessRevoked);
  }
  const Grant& grant = *token->grant;
  return envelope(*this, call, 0, "OK",
                  {{"app_id", options.tiktok_business_app_id},
                   {"creator_id", grant.open_id},
                   {"open_id", grant.open_id},
                   {"scope", grant.scope},
                   {"expires_in", remaining(token, call.now)}});
}

// GET /open_api/v1.3/business/get/?business_id=<open_id>&fields=[...] with header Access-Token.
Response Engine::business_get(Call& call) {
  const Token* token = call.found;
  if (token == nullptr || token->kind != TokenKind::kBusinessAccess || !token->usable(call.now)) {
    return envelope(*this, call, 40105, kBusinessRevoked);
  }
  const Grant& grant = *token->grant;
  if (call.param("business_id") != grant.open_id) {  // unverified code
    return envelope(*this, call, 40002,
                    "Invalid parameters: business_id does not match the token.");
  }
  return envelope(*this, call, 0, "OK",
                  {{"display_name", grant.display_name},
                   {"username", "sim_" + grant.account_id},
                   {"profile_image", ""},
                   {"followers_count", 0},
                   {"is_business_account", true}});
}

}  // namespace tw::sim::detail
