// Simulated Meta endpoints: the Graph API token exchange, Page tokens, debug_token, and Instagram's
// refresh_access_token. Facts: providers.md section 1.
//
// User tokens last SimOptions::meta_user_token_lifetime and are not rotated: an exchange issues a
// new token and the old one stays valid until it expires. Page tokens derived from a long-lived
// user token never expire; /accounts issues a new one per call and older ones keep working. Data
// access lasts 90 days from the user's last activity (a seed or an exchange); after it, every call
// with the user's tokens fails with 190/463 (unverified: the subcode is our choice).
#include <algorithm>
#include <string>

#include "tools/provider-sim/simulator_state.h"

namespace tw::sim::detail {

namespace {

constexpr std::int64_t kMetaDataAccessLifetime = 90 * kDay;
// Instagram refuses to refresh a token younger than 24 hours.
constexpr std::int64_t kInstagramMinAge = kDay;

json scopes_of(TokenKind kind) {
  if (kind == TokenKind::kInstagram) {
    return json::array({"instagram_business_basic", "instagram_business_content_publish"});
  }
  return json::array({"pages_show_list", "pages_read_engagement", "pages_manage_metadata"});
}

// The key of meta_user_activity: Instagram users live apart from Facebook users.
std::string activity_key(const Grant& grant) {
  return (grant.api == Api::kInstagram ? "ig:" : "fb:") + grant.user_id;
}

std::string page_name(const std::string& page_id) {
  return "Sim Page " + page_id;
}

}  // namespace

std::string meta_subcode_message(int subcode) {
  switch (subcode) {
    case 458:
      return "Error validating access token: The user has not authorized the application.";
    case 459:
      return "Error validating access token: You cannot access the app till you log in to "
             "www.facebook.com and follow the instructions given.";
    case 460:
      return "Error validating access token: The session has been invalidated because the user "
             "changed their password or Facebook has changed the session for security reasons.";
    case 463:
      return "Error validating access token: Session has expired.";
    case 464:
      return "Error validating access token: Sessions for the user are not allowed because the "
             "user is not a confirmed user.";
    case 467:
      return "Error validating access token: The session is invalid because the user logged out.";
    case 492:  // unverified wording: "invalid session", e.g. the Page role was lost
      return "Error validating access token: The session is invalid because the user is no longer "
             "an admin of the Page.";
    default:
      return "Error validating access token.";
  }
}

json meta_error_body(int code, std::optional<int> subcode, const std::string& message,
                     const std::string& fbtrace_id) {
  json error = {{"message", message}, {"type", "OAuthException"}, {"code", code}};
  if (subcode) error["error_subcode"] = *subcode;
  error["fbtrace_id"] = fbtrace_id;
  return {{"error", std::move(error)}};
}

Response Engine::meta_fail(int code, std::optional<int> subcode, const std::string& message) {
  return json_response(400, meta_error_body(code, subcode, message, random.alnum(11)));
}

Response Engine::meta_fail(const MetaTokenError& e) {
  return meta_fail(e.code, e.subcode, e.message);
}

void Engine::meta_record_activity(const Grant& grant, std::int64_t now) {
  meta_user_activity[activity_key(grant)] = now;
}

std::int64_t Engine::meta_data_access_expires_at(const Grant& grant) const {
  const auto it = meta_user_activity.find(activity_key(grant));
  return it == meta_user_activity.end() ? 0 : it->second + kMetaDataAccessLifetime;
}

std::optional<Engine::MetaTokenError> Engine::meta_token_problem(const Token* token,
                                                                 std::int64_t now) const {
  if (token == nullptr) {
    return MetaTokenError{190, std::nullopt,
                          "Invalid OAuth access token - Cannot parse access token"};
  }
  const Grant& grant = *token->grant;
  if (grant.revoked) {
    return MetaTokenError{190, grant.revoke_subcode, meta_subcode_message(grant.revoke_subcode)};
  }
  if (grant.replaced || token->killed || token->rotated) {
    return MetaTokenError{190, 467, meta_subcode_message(467)};
  }
  if (token->expired(now)) return MetaTokenError{190, 463, meta_subcode_message(463)};
  if (grant.api != Api::kInstagram && now >= meta_data_access_expires_at(grant)) {
    return MetaTokenError{190, 463, "Error validating access token: Data access has expired."};
  }
  return std::nullopt;
}

void Engine::register_meta_page(const std::shared_ptr<Grant>& grant) {
  auto& pages = pages_by_user[grant->user_id];
  std::erase_if(pages, [](const auto& g) { return !g->alive(); });
  pages.push_back(grant);
}

// GET
// /{v}/oauth/access_token?grant_type=fb_exchange_token&client_id&client_secret&fb_exchange_token
Response Engine::meta_exchange(Call& call) {
  if (call.param("grant_type") != "fb_exchange_token") {
    return meta_fail(100, std::nullopt, "(#100) Invalid grant_type: expected fb_exchange_token");
  }
  // Unverified: Meta's code for a wrong client_id is 101; we use it for a wrong secret too.
  if (call.param("client_id") != options.meta_app_id) {
    return meta_fail(101, std::nullopt, "Error validating application. Invalid application ID.");
  }
  if (call.param("client_secret") != options.meta_app_secret) {
    return meta_fail(101, std::nullopt, "Error validating client secret.");
  }
  if (call.token.empty()) {
    return meta_fail(100, std::nullopt, "(#100) Missing parameter fb_exchange_token");
  }
  auto problem = meta_token_problem(call.found, call.now);
  if (!problem && call.found->kind != TokenKind::kMetaUser) {
    problem = MetaTokenError{190, std::nullopt, "Invalid OAuth access token - not a user token"};
  }
  if (problem) {
    count_invalid_grant(call);
    return meta_fail(*problem);
  }
  const std::shared_ptr<Grant> grant = call.found->grant;  // copy: issue() may rehash `tokens`
  const std::int64_t lifetime = options.meta_user_token_lifetime;
  std::string token = issue(grant, TokenKind::kMetaUser, call.now, call.now + lifetime);
  meta_record_activity(*grant, call.now);
  (grant->api == Api::kMetaPage ? grant->refresh_token : grant->access_token) = token;
  json body = {{"access_token", std::move(token)}, {"token_type", "bearer"}};
  if (!grant->omit_expires_in) body["expires_in"] = lifetime;
  return json_response(200, body);
}

// GET /{v}/me/accounts or /{v}/{user-id}/accounts?access_token=<user token>: a new Page token for
// every live Page of the user.
Response Engine::meta_accounts(Call& call) {
  if (call.token.empty()) {
    return meta_fail(2500, std::nullopt,
                     "An active access token must be used to query information about the "
                     "current user.");
  }
  if (auto problem = meta_token_problem(call.found, call.now)) return meta_fail(*problem);
  const std::shared_ptr<Grant> owner = call.found->grant;
  if (call.found->kind != TokenKind::kMetaUser ||
      (call.path_id != "me" && call.path_id != owner->user_id)) {
    return meta_fail(100, 33,
                     "Unsupported get request. Object with ID '" + call.path_id +
                         "' does not exist, cannot be loaded due to missing permissions, or does "
                         "not support this operation.");
  }
  json data = json::array();
  const auto it = pages_by_user.find(owner->user_id);
  if (it != pages_by_user.end()) {
    for (const auto& page : it->second) {
      if (!page->alive()) continue;
      std::string token = issue(page, TokenKind::kMetaPage, call.now, 0);
      tokens.at(token).page_id = page->account_id;
      page->access_token = token;
      data.push_back({{"id", page->account_id},
                      {"name", page_name(page->account_id)},
                      {"access_token", std::move(token)},
                      {"tasks", json::array({"MANAGE"})}});
    }
  }
  return json_response(200, {{"data", std::move(data)}});
}

// GET /{v}/{page-id}?fields=access_token&access_token=<user or page token>: the Page's current
// token (not a new one).
Response Engine::meta_page(Call& call) {
  if (call.token.empty()) {
    return meta_fail(104, std::nullopt, "An access token is required to request this resource.");
  }
  if (auto problem = meta_token_problem(call.found, call.now)) return meta_fail(*problem);
  const Token& token = *call.found;
  const Grant* page = nullptr;
  if (token.kind == TokenKind::kMetaPage && token.page_id == call.path_id) {
    page = token.grant.get();
  } else if (token.kind == TokenKind::kMetaUser) {
    const auto it = pages_by_user.find(token.grant->user_id);
    if (it != pages_by_user.end()) {
      for (const auto& g : it->second) {
        if (g->alive() && g->account_id == call.path_id) page = g.get();
      }
    }
  }
  if (page == nullptr) {
    return meta_fail(100, 33,
                     "Unsupported get request. Object with ID '" + call.path_id +
                         "' does not exist, cannot be loaded due to missing permissions, or does "
                         "not support this operation.");
  }
  json body = {{"id", page->account_id}};
  if (call.param("fields").find("access_token") != std::string::npos) {
    body["access_token"] = token.kind == TokenKind::kMetaPage ? call.token : page->access_token;
  } else {
    body["name"] = page_name(page->account_id);
  }
  return json_response(200, body);
}

// GET /{v}/debug_token?input_token=<t>&access_token=<app_id>|<app_secret>
Response Engine::meta_debug_token(Call& call) {
  if (call.param("access_token") != options.meta_app_id + "|" + options.meta_app_secret) {
    return meta_fail(190, std::nullopt, "Invalid OAuth access token signature.");
  }
  if (call.token.empty()) {
    return meta_fail(100, std::nullopt, "(#100) The parameter input_token is required");
  }
  const auto problem = meta_token_problem(call.found, call.now);
  json data;
  if (call.found == nullptr) {
    data = {{"is_valid", false}, {"scopes", json::array()}};
  } else {
    const Token& token = *call.found;
    const Grant& grant = *token.grant;
    const bool page = token.kind == TokenKind::kMetaPage;
    data = {{"app_id", options.meta_app_id},
            {"type", page ? "PAGE" : "USER"},
            {"application", options.meta_app_name},
            {"data_access_expires_at", meta_data_access_expires_at(grant)},
            {"expires_at", token.expires_at},
            {"is_valid", !problem},
            {"issued_at", token.issued_at},
            {"scopes", scopes_of(token.kind)},
            {"user_id", grant.user_id}};
    if (page) data["profile_id"] = token.page_id;
  }
  if (problem) {
    json error = {{"code", problem->code}, {"message", problem->message}};
    if (problem->subcode) error["subcode"] = *problem->subcode;
    data["error"] = std::move(error);
  }
  return json_response(200, {{"data", std::move(data)}});
}

// GET /refresh_access_token?grant_type=ig_refresh_token&access_token=<instagram token>
Response Engine::instagram_refresh(Call& call) {
  if (call.param("grant_type") != "ig_refresh_token") {
    return meta_fail(100, std::nullopt, "(#100) Invalid grant_type: expected ig_refresh_token");
  }
  if (call.token.empty()) {
    return meta_fail(100, std::nullopt, "(#100) Missing parameter access_token");
  }
  auto problem = meta_token_problem(call.found, call.now);
  if (!problem && call.found->kind != TokenKind::kInstagram) {
    problem =
        MetaTokenError{190, std::nullopt, "Invalid OAuth access token - not an Instagram token"};
  }
  if (problem) {  // unverified: 190 for an expired or revoked token
    count_invalid_grant(call);
    return meta_fail(*problem);
  }
  if (call.now - call.found->issued_at < kInstagramMinAge) {  // unverified: code 10
    return meta_fail(10, std::nullopt,
                     "(#10) The access token is too new to be refreshed: it must be at least 24 "
                     "hours old.");
  }
  const std::shared_ptr<Grant> grant = call.found->grant;
  const std::int64_t lifetime = options.meta_user_token_lifetime;
  std::string token = issue(grant, TokenKind::kInstagram, call.now, call.now + lifetime);
  grant->access_token = token;
  meta_record_activity(*grant, call.now);
  return json_response(
      200,
      {{"access_token", std::move(token)}, {"token_type", "bearer"}, {"expires_in", lifetime}});
}

}  // namespace tw::sim::detail
