// Simulator: routing, the per-call pipeline (count, match a fault, answer), fault responses and the
// helpers shared by the provider files. The providers live in simulator_meta.cpp,
// simulator_google.cpp (with the generic "oauth2" and "apikey" families) and simulator_tiktok.cpp;
// the admin API in simulator_admin.cpp.
//
// A provider call goes: route (path and method) -> parse its parameters and pick the token that
// names its account (outside the lock) -> under the lock: count it, look the token up, take the
// first matching fault, and answer either with the fault or with the endpoint's normal logic.
// A fault answer changes no grant state; a `delay` fault delivers the normal answer late and a
// `usage` fault only rewrites the Meta usage headers of the normal answer.
//
// Counters: "refreshes" are meta.exchange, instagram.refresh, google.token, tiktok.token,
// tiktok_business.refresh and oauth2.token; "checks" are meta.debug_token, google.tokeninfo,
// google.accounts, tiktok.user_info, tiktok_business.token_info, tiktok_business.business_get,
// oauth2.introspect and apikey.probe. A call whose token is unknown counts only in the totals; a
// client_credentials request counts on the account "oauth2:<client id>" of the client it names.
// The oauth2 and apikey endpoints know only their own family's tokens: another provider's token is
// unknown there. "requests" counts provider calls, not /admin/ calls.
// A refresh is "concurrent" when it arrives (steady clock) before an earlier refresh of the same
// account is due: arrival plus its delay fault, if any. A hung, reset or truncated refresh counts
// as due at arrival, since the client sees its end (or gives up) on its own schedule.
#include "tools/provider-sim/simulator.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <string_view>
#include <utility>
#include <vector>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "http/transport.h"
#include "tools/provider-sim/simulator_state.h"

namespace tw::sim {

struct Simulator::State : detail::Engine {
  using Engine::Engine;
};

Simulator::Simulator(SimOptions options, const Clock& clock)
    : state_(std::make_unique<State>(std::move(options), clock)) {}

Simulator::~Simulator() = default;

Response Simulator::handle(const Request& request) {
  return state_->handle(request);
}

namespace detail {

namespace {

constexpr std::array<EndpointInfo, kEndpointCount> kEndpoints{{
    {"meta.exchange", "meta", "meta", Shape::kMeta, Role::kRefresh},
    {"meta.accounts", "meta", "meta", Shape::kMeta, Role::kOther},
    {"meta.page", "meta", "meta", Shape::kMeta, Role::kOther},
    {"meta.debug_token", "meta", "meta", Shape::kMeta, Role::kCheck},
    {"instagram.refresh", "instagram", "meta", Shape::kMeta, Role::kRefresh},
    {"google.token", "google", "google", Shape::kGoogleOAuth, Role::kRefresh},
    {"google.tokeninfo", "google", "google", Shape::kGoogleOAuth, Role::kCheck},
    {"google.revoke", "google", "google", Shape::kGoogleOAuth, Role::kOther},
    {"google.accounts", "google", "google", Shape::kGoogleApi, Role::kCheck},
    {"tiktok.token", "tiktok", "tiktok", Shape::kTikTokOAuth, Role::kRefresh},
    {"tiktok.user_info", "tiktok", "tiktok", Shape::kTikTokApi, Role::kCheck},
    {"tiktok.revoke", "tiktok", "tiktok", Shape::kTikTokOAuth, Role::kOther},
    {"tiktok_business.refresh", "tiktok_business", "tiktok", Shape::kBusiness, Role::kRefresh},
    {"tiktok_business.token_info", "tiktok_business", "tiktok", Shape::kBusiness, Role::kCheck},
    {"tiktok_business.business_get", "tiktok_business", "tiktok", Shape::kBusiness, Role::kCheck},
    {"oauth2.token", "oauth2", "oauth2", Shape::kOAuth2, Role::kRefresh},
    {"oauth2.introspect", "oauth2", "oauth2", Shape::kOAuth2, Role::kCheck},
    {"oauth2.revoke", "oauth2", "oauth2", Shape::kOAuth2, Role::kOther},
    {"apikey.probe", "apikey", "apikey", Shape::kOAuth2, Role::kCheck},
}};

// Fixed provider paths (Meta's versioned Graph paths are matched by route_meta).
struct FixedRoute {
  std::string_view path;
  std::string_view method;
  Endpoint endpoint;
};
constexpr std::array<FixedRoute, 15> kFixedRoutes{{
    {"/refresh_access_token", "GET", Endpoint::kInstagramRefresh},
    {"/token", "POST", Endpoint::kGoogleToken},
    {"/tokeninfo", "GET", Endpoint::kGoogleTokenInfo},
    {"/revoke", "POST", Endpoint::kGoogleRevoke},
    {"/v1/accounts", "GET", Endpoint::kGoogleAccounts},
    {"/v2/oauth/token/", "POST", Endpoint::kTikTokToken},
    {"/v2/user/info/", "GET", Endpoint::kTikTokUserInfo},
    {"/v2/oauth/revoke/", "POST", Endpoint::kTikTokRevoke},
    {"/open_api/v1.3/tt_user/oauth2/refresh_token/", "POST", Endpoint::kBusinessRefresh},
    {"/open_api/v1.3/tt_user/token_info/get/", "POST", Endpoint::kBusinessTokenInfo},
    {"/open_api/v1.3/business/get/", "GET", Endpoint::kBusinessGet},
    {"/oauth2/token", "POST", Endpoint::kOAuth2Token},
    {"/oauth2/introspect", "POST", Endpoint::kOAuth2Introspect},
    {"/oauth2/revoke", "POST", Endpoint::kOAuth2Revoke},
    {"/apikey/probe", "GET", Endpoint::kApiKeyProbe},
}};

bool is_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "v25.0"
bool is_graph_version(std::string_view s) {
  if (s.size() < 4 || s[0] != 'v') return false;
  const auto dot = s.find('.');
  return dot != std::string_view::npos && is_digits(s.substr(1, dot - 1)) &&
         is_digits(s.substr(dot + 1));
}

struct Route {
  std::optional<Endpoint> endpoint;
  std::string path_id;
  Response error;  // when there is no endpoint: 404 or 405
};

Response not_found(const std::string& path) {
  return json_response(404, {{"error", {{"code", 404}, {"message", "no such endpoint: " + path}}}});
}

Response method_not_allowed(std::string_view allowed) {
  Response r = json_response(405, {{"error", {{"code", 405}, {"message", "method not allowed"}}}});
  r.headers.emplace_back("Allow", std::string(allowed));
  return r;
}

// /{v}/oauth/access_token, /{v}/debug_token, /{v}/{id}/accounts, /{v}/{id}.
std::optional<Route> route_meta(const Request& request) {
  std::string_view path = request.path;
  if (path.size() < 2 || path[0] != '/') return std::nullopt;
  path.remove_prefix(1);
  const auto slash = path.find('/');
  if (slash == std::string_view::npos || !is_graph_version(path.substr(0, slash))) {
    return std::nullopt;
  }
  const std::string_view rest = path.substr(slash + 1);
  Route route;
  if (rest == "oauth/access_token") {
    route.endpoint = Endpoint::kMetaExchange;
  } else if (rest == "debug_token") {
    route.endpoint = Endpoint::kMetaDebugToken;
  } else if (rest.find('/') == std::string_view::npos && !rest.empty()) {
    route.endpoint = Endpoint::kMetaPage;
    route.path_id = std::string(rest);
  } else if (rest.ends_with("/accounts") && rest.size() > 9 &&
             rest.substr(0, rest.size() - 9).find('/') == std::string_view::npos) {
    route.endpoint = Endpoint::kMetaAccounts;
    route.path_id = std::string(rest.substr(0, rest.size() - 9));
  } else {
    return std::nullopt;
  }
  if (request.method != "GET") return Route{std::nullopt, {}, method_not_allowed("GET")};
  return route;
}

Route route(const Request& request) {
  for (const auto& fixed : kFixedRoutes) {
    if (request.path != fixed.path) continue;
    if (request.method == fixed.method) return Route{fixed.endpoint, {}, {}};
    // Google answers GET /revoke with 404 (providers.md).
    if (fixed.endpoint == Endpoint::kGoogleRevoke)
      return Route{std::nullopt, {}, not_found("/revoke")};
    return Route{std::nullopt, {}, method_not_allowed(fixed.method)};
  }
  if (auto meta = route_meta(request)) return std::move(*meta);
  return Route{std::nullopt, {}, not_found(request.path)};
}

bool is_form_post(Endpoint e) {
  return e == Endpoint::kGoogleToken || e == Endpoint::kGoogleRevoke ||
         e == Endpoint::kTikTokToken || e == Endpoint::kTikTokRevoke ||
         e == Endpoint::kOAuth2Token || e == Endpoint::kOAuth2Introspect ||
         e == Endpoint::kOAuth2Revoke;
}

// The oauth2 and apikey endpoints: they know only their own family's tokens.
bool is_generic(Endpoint e) {
  return info(e).shape == Shape::kOAuth2;
}

std::string header_value(const Request& request, const char* name) {
  const auto it = request.headers.find(name);
  return it == request.headers.end() ? std::string() : it->second;
}

std::string json_string(const json& body, const char* key) {
  if (!body.is_object()) return {};
  const auto it = body.find(key);
  return it != body.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// The token that names the call's account.
std::string account_token(const Call& call) {
  switch (call.endpoint) {
    case Endpoint::kMetaExchange:
      return call.param("fb_exchange_token");
    case Endpoint::kMetaDebugToken:
      return call.param("input_token");
    case Endpoint::kMetaAccounts:
    case Endpoint::kMetaPage:
    case Endpoint::kInstagramRefresh:
    case Endpoint::kGoogleTokenInfo:
      return call.param("access_token");
    case Endpoint::kGoogleToken:
    case Endpoint::kTikTokToken:
      return call.param("refresh_token");
    case Endpoint::kGoogleRevoke:
    case Endpoint::kTikTokRevoke:
      return call.param("token");
    case Endpoint::kGoogleAccounts:
    case Endpoint::kTikTokUserInfo:
      return bearer_token(*call.request);
    case Endpoint::kBusinessRefresh:
      return json_string(call.body, "refresh_token");
    case Endpoint::kBusinessTokenInfo:
      return json_string(call.body, "access_token");
    case Endpoint::kBusinessGet:
      return header_value(*call.request, "access-token");
    case Endpoint::kOAuth2Token:
      return call.param("grant_type") == "refresh_token" ? call.param("refresh_token")
                                                         : std::string();
    case Endpoint::kOAuth2Introspect:
    case Endpoint::kOAuth2Revoke:
      return call.param("token");
    case Endpoint::kApiKeyProbe:
      return header_value(*call.request, "x-api-key");
  }
  return {};
}

// The client a client_credentials request names (Basic or client_id), if it is the configured one.
std::string client_credentials_client(const Call& call, const SimOptions& options) {
  if (call.endpoint != Endpoint::kOAuth2Token || call.param("grant_type") != "client_credentials") {
    return {};
  }
  const std::string id = has_basic_auth(*call.request) ? basic_credentials(*call.request).first
                                                       : call.param("client_id");
  return id == options.oauth2_client_id ? id : std::string();
}

// "127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000".
bool is_loopback(std::string_view remote) {
  std::string_view host = remote;
  if (!host.empty() && host.front() == '[') {
    host = host.substr(1, host.find(']') - 1);
  } else if (const auto colon = host.rfind(':'); colon != std::string_view::npos) {
    host = host.substr(0, colon);
  }
  return host.starts_with("127.") || host == "::1" || host.starts_with("::ffff:127.");
}

// --- fault answers -------------------------------------------------------------------------------

const char* meta_rate_limit_message(int code) {
  switch (code) {
    case 4:
      return "(#4) Application request limit reached";
    case 17:
      return "(#17) User request limit reached";
    case 32:
      return "(#32) Page request limit reached";
    case 80001:
      return "(#80001) There have been too many calls to this Page account. Wait a bit and try "
             "again.";
    default:
      return "(#613) Calls to this api have exceeded the rate limit.";
  }
}

std::string google_api_status(int status) {
  switch (status) {
    case 500:
      return "INTERNAL";
    case 502:
    case 503:
      return "UNAVAILABLE";
    case 504:
      return "DEADLINE_EXCEEDED";
    default:
      return "UNKNOWN";
  }
}

// Invalid JSON that starts like a real answer (status 200).
constexpr std::string_view kMalformedBody =
    R"({"access_token":"sim-malformed" "expires_in":3599,"token_type":"Bearer",})";

constexpr std::string_view kHtmlBody =
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><h1>502 Bad "
    "Gateway</h1><p>The server encountered a temporary error and could not complete your "
    "request.</p></body></html>\n";

}  // namespace

const EndpointInfo& info(Endpoint e) {
  return kEndpoints[static_cast<std::size_t>(e)];
}

std::optional<Endpoint> endpoint_named(std::string_view name) {
  for (std::size_t i = 0; i < kEndpoints.size(); ++i) {
    if (kEndpoints[i].name == name) return static_cast<Endpoint>(i);
  }
  return std::nullopt;
}

const std::string& Call::param(const std::string& name) const {
  static const std::string kEmpty;
  const auto it = params->find(name);
  return it == params->end() ? kEmpty : it->second;
}

// --- random strings ------------------------------------------------------------------------------

unsigned char TokenRandom::byte() {
  if (used_ == buffer_.size()) {
    if (RAND_bytes(buffer_.data(), static_cast<int>(buffer_.size())) != 1) {
      die("provider-sim: RAND_bytes failed");
    }
    used_ = 0;
  }
  return buffer_[used_++];
}

std::string TokenRandom::alnum(std::size_t n) {
  static constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string out;
  out.reserve(n);
  while (out.size() < n) {
    const unsigned char b = byte();
    if (b < 248) out.push_back(kAlphabet[b % 62]);  // 248 = 4 * 62: no modulo bias
  }
  return out;
}

std::string TokenRandom::base64url(std::size_t n) {
  static constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out(n, '\0');
  for (char& c : out)
    c = kAlphabet[byte() & 63U];
  return out;
}

std::string TokenRandom::hex(std::size_t n) {
  static constexpr std::string_view kDigits = "0123456789abcdef";
  std::string out(n, '\0');
  for (char& c : out)
    c = kDigits[byte() & 15U];
  return out;
}

std::string TokenRandom::uuid() {
  return hex(8) + "-" + hex(4) + "-" + hex(4) + "-" + hex(4) + "-" + hex(12);
}

// --- engine: shared pieces -----------------------------------------------------------------------

std::int64_t Engine::now() const {
  return to_unix(clock.now()) + clock_offset;
}

std::string Engine::issue(const std::shared_ptr<Grant>& grant, TokenKind kind,
                          std::int64_t issued_at, std::int64_t expires_at) {
  for (;;) {
    std::string text;
    switch (kind) {
      case TokenKind::kMetaUser:
      case TokenKind::kMetaPage:
        text = "EAAB" + random.alnum(100);
        break;
      case TokenKind::kInstagram:
        text = "IGAA" + random.alnum(100);
        break;
      case TokenKind::kGoogleAccess:
        text = "ya29.a0" + random.base64url(100);
        break;
      case TokenKind::kGoogleRefresh:
        text = "1//0" + random.base64url(96);
        break;
      case TokenKind::kTikTokAccess:
      case TokenKind::kBusinessAccess:
        text = "act." + random.alnum(60) + "!" + random.alnum(4) + ".va";
        break;
      case TokenKind::kTikTokRefresh:
      case TokenKind::kBusinessRefresh:
        text = "rft." + random.alnum(60) + "!" + random.alnum(4) + ".va";
        break;
      case TokenKind::kOAuth2Access:
        text = "oa2at_" + random.alnum(64);
        break;
      case TokenKind::kOAuth2Refresh:
        text = "oa2rt_" + random.alnum(64);
        break;
      case TokenKind::kApiKey:
        text = "sk_sim_" + random.alnum(40);
        break;
    }
    Token token;
    token.grant = grant;
    token.kind = kind;
    token.issued_at = issued_at;
    token.expires_at = expires_at;
    token.last_used = issued_at;
    const auto [it, inserted] = tokens.try_emplace(std::move(text), std::move(token));
    if (!inserted) continue;  // a collision of 60+ random characters does not happen; if it did
    grant->issued.push_back(&it->first);
    if (grant->issued.size() == kTokensPerGrant + 1) over_limit.push_back(grant);
    if (options.record_issued) issued_log.push_back(it->first);
    return it->first;
  }
}

void Engine::forget_old_tokens() {
  for (const auto& grant : over_limit) {
    auto& issued = grant->issued;
    std::size_t excess = issued.size() > kTokensPerGrant ? issued.size() - kTokensPerGrant : 0;
    std::erase_if(issued, [&](const std::string* key) {
      if (excess == 0 || *key == grant->access_token || *key == grant->refresh_token) return false;
      --excess;
      tokens.erase(tokens.find(*key));  // by iterator: `key` points into the node
      return true;
    });
  }
  over_limit.clear();
}

void Engine::install(const std::shared_ptr<Grant>& grant) {
  auto& slot = grants[grant->key];
  if (slot) {
    slot->replaced = true;
    forget_tokens(*slot);  // its tokens are now answered as unknown ones
  }
  slot = grant;
}

void Engine::forget_tokens(Grant& grant) {
  for (const std::string* key : grant.issued) {
    if (const auto it = tokens.find(*key); it != tokens.end()) tokens.erase(it);
  }
  grant.issued.clear();
}

Token* Engine::find(const std::string& token) {
  if (token.empty()) return nullptr;
  const auto it = tokens.find(token);
  return it == tokens.end() ? nullptr : &it->second;
}

// TikTok's log_id and request_id look like "20240101120000" + 18 upper-case hex digits.
std::string Engine::log_id(std::int64_t now) {
  const auto two = [](long long v) {
    return std::string{static_cast<char>('0' + v / 10 % 10), static_cast<char>('0' + v % 10)};
  };
  const auto t = from_unix(now);
  const auto day = std::chrono::floor<std::chrono::days>(t);
  const std::chrono::year_month_day ymd{day};
  const std::chrono::hh_mm_ss hms{t - day};
  std::string id = std::to_string(static_cast<int>(ymd.year())) +
                   two(static_cast<unsigned>(ymd.month())) + two(static_cast<unsigned>(ymd.day())) +
                   two(hms.hours().count()) + two(hms.minutes().count()) +
                   two(hms.seconds().count()) + random.hex(18);
  std::transform(id.begin(), id.end(), id.begin(),
                 [](char c) { return c >= 'a' && c <= 'f' ? static_cast<char>(c - 32) : c; });
  return id;
}

void Engine::count_invalid_grant(Call& call) {
  ++totals.invalid_grant;
  if (call.account != nullptr) ++call.account->invalid_grant;
}

void Engine::count_reused(Call& call) {
  ++totals.reused_refresh_tokens;
  if (call.account != nullptr) ++call.account->reused_refresh_tokens;
}

void Engine::add_meta_usage(Response& response, const Call& call,
                            std::optional<std::int64_t> forced, std::int64_t regain_minutes) {
  const auto percent = [](std::int64_t calls, std::int64_t limit) {
    return std::min<std::int64_t>(100, calls * 100 / std::max<std::int64_t>(1, limit));
  };
  const auto usage = [](std::int64_t p) {
    const std::string v = std::to_string(p);
    return "\"call_count\":" + v + ",\"total_cputime\":" + v + ",\"total_time\":" + v;
  };
  const std::int64_t app =
      forced ? *forced : percent(meta_app_usage.count(call.now), options.meta_call_limit);
  response.headers.emplace_back("X-App-Usage", "{" + usage(app) + "}");
  if (call.usage_page.empty()) return;
  const auto& window = meta_page_usage[call.usage_page];
  const std::int64_t page =
      forced ? *forced : percent(window.count(call.now), options.meta_page_call_limit);
  std::int64_t regain = regain_minutes;
  if (!forced) regain = page >= 100 ? (window.seconds_to_drain_oldest(call.now) + 59) / 60 : 0;
  response.headers.emplace_back(
      "X-Business-Use-Case-Usage",
      "{" + json(call.usage_page).dump() + ":[{\"type\":\"pages\"," + usage(page) +
          ",\"estimated_time_to_regain_access\":" + std::to_string(regain) + "}]}");
}

// --- the call pipeline ---------------------------------------------------------------------------

namespace {

bool fault_matches(const Fault& fault, const Call& call) {
  const EndpointInfo& e = info(call.endpoint);
  if (fault.kind == FaultKind::kUsage && e.shape != Shape::kMeta) {
    return false;  // a Meta-only kind never matches (nor uses up) other providers' calls
  }
  if (fault.kind == FaultKind::kTransientCode && e.shape != Shape::kMeta &&
      e.shape != Shape::kOAuth2) {
    return false;  // nor does transient_code, which Meta and the oauth2 families know
  }
  if (fault.endpoint && *fault.endpoint != call.endpoint) return false;
  if (fault.provider && *fault.provider != e.family && *fault.provider != e.provider) return false;
  if (fault.account_id && (call.grant == nullptr || call.grant->account_id != *fault.account_id)) {
    return false;
  }
  return true;
}

// The first matching fault, its count used up by one.
std::optional<Fault> take_fault(std::vector<Fault>& faults, const Call& call) {
  for (auto it = faults.begin(); it != faults.end(); ++it) {
    if (!fault_matches(*it, call)) continue;
    Fault taken = *it;
    if (it->remaining > 0 && --it->remaining == 0) faults.erase(it);
    return taken;
  }
  return std::nullopt;
}

// {"error","error_description"} (RFC 6749 5.2) with the fault's "error" code, else `fallback`.
Response oauth2_fault_body(int status, const Fault& fault, const char* fallback,
                           const char* description) {
  return json_response(status,
                       {{"error", fault.error.empty() ? std::string(fallback) : fault.error},
                        {"error_description", description}});
}

// A provider-shaped error body for a server error with the fault's status.
Response server_error(Engine& engine, const Call& call, const Fault& fault) {
  const int status = fault.status;
  switch (info(call.endpoint).shape) {
    case Shape::kMeta:
      return json_response(status, meta_error_body(2, std::nullopt,
                                                   "An unexpected error has occurred. Please retry "
                                                   "your request later.",
                                                   engine.random.alnum(11)));
    case Shape::kGoogleOAuth:
      return json_response(status,
                           {{"error", "internal_failure"}, {"error_description", "Backend Error"}});
    case Shape::kGoogleApi:
      return json_response(status, {{"error",
                                     {{"code", status},
                                      {"message", "The service is currently unavailable."},
                                      {"status", google_api_status(status)}}}});
    case Shape::kTikTokOAuth:
      return json_response(status, {{"error", "server_error"},
                                    {"error_description", "Internal server error."},
                                    {"log_id", engine.log_id(call.now)}});
    case Shape::kTikTokApi:
      return json_response(status, {{"data", json::object()},
                                    {"error",
                                     {{"code", "internal_error"},
                                      {"message", "Something went wrong. Please try again later."},
                                      {"log_id", engine.log_id(call.now)}}}});
    case Shape::kBusiness:  // unverified: an internal-error envelope with the HTTP status
      return json_response(status, {{"code", 50002},
                                    {"message", "Internal service error, please retry later."},
                                    {"request_id", engine.log_id(call.now)},
                                    {"data", json::object()}});
    case Shape::kOAuth2:
      return oauth2_fault_body(status, fault,
                               status == 503 ? "temporarily_unavailable" : "server_error",
                               "The server encountered an unexpected condition.");
  }
  return json_response(status, json::object());
}

Response rate_limited(Engine& engine, const Call& call, const Fault& fault) {
  Response r;
  switch (info(call.endpoint).shape) {
    case Shape::kMeta: {
      const int code = fault.code != 0 ? fault.code : 613;
      r = engine.meta_fail(code, std::nullopt, meta_rate_limit_message(code));
      engine.add_meta_usage(r, call, 100, fault.regain_minutes);
      return r;
    }
    case Shape::kBusiness:  // HTTP 200 with the configured code (40100 by default; unverified)
      return json_response(200, {{"code", engine.options.tiktok_business_rate_limit_code},
                                 {"message", "Too many requests. Please retry in some time."},
                                 {"request_id", engine.log_id(call.now)},
                                 {"data", json::object()}});
    case Shape::kGoogleOAuth:  // unverified body
      r = json_response(
          429, {{"error", "rate_limit_exceeded"}, {"error_description", "Rate Limit Exceeded"}});
      break;
    case Shape::kGoogleApi:
      r = json_response(429, {{"error",
                               {{"code", 429},
                                {"message", "Quota exceeded for quota metric 'Requests'."},
                                {"status", "RESOURCE_EXHAUSTED"}}}});
      break;
    case Shape::kTikTokOAuth:  // unverified body
      r = json_response(429, {{"error", "rate_limit_exceeded"},
                              {"error_description", "Too many requests."},
                              {"log_id", engine.log_id(call.now)}});
      break;
    case Shape::kTikTokApi:
      r = json_response(429, {{"data", json::object()},
                              {"error",
                               {{"code", "rate_limit_exceeded"},
                                {"message", "API rate limit exceeded."},
                                {"log_id", engine.log_id(call.now)}}}});
      break;
    case Shape::kOAuth2:  // RFC 6749 names no code for it
      r = oauth2_fault_body(429, fault, "rate_limit_exceeded", "Too many requests.");
      break;
  }
  if (fault.retry_after) r.headers.emplace_back("Retry-After", std::to_string(*fault.retry_after));
  return r;
}

// HTTP 200 carrying a provider-shaped error (meanings unverified).
Response error_body(Engine& engine, const Call& call, const Fault& fault) {
  switch (info(call.endpoint).shape) {
    case Shape::kMeta:
      return json_response(200, meta_error_body(1, std::nullopt, "An unknown error occurred",
                                                engine.random.alnum(11)));
    case Shape::kGoogleOAuth:
    case Shape::kGoogleApi:
      return json_response(200, {{"error", "internal_failure"}});
    case Shape::kTikTokOAuth:
    case Shape::kTikTokApi:
      return json_response(200, {{"data", json::object()},
                                 {"error",
                                  {{"code", "internal_error"},
                                   {"message", "Something went wrong. Please try again later."},
                                   {"log_id", engine.log_id(call.now)}}}});
    case Shape::kBusiness:
      return json_response(200, {{"code", 51021},
                                 {"message", "Internal error, please retry later."},
                                 {"request_id", engine.log_id(call.now)},
                                 {"data", json::object()}});
    case Shape::kOAuth2:
      return oauth2_fault_body(200, fault, "server_error",
                               "The server encountered an unexpected condition.");
  }
  return json_response(200, json::object());
}

// A success-looking body with tokens that were never issued, for `truncate`.
Response decoy(Engine& engine, const Call& call) {
  json body = {{"access_token", "sim-decoy-" + engine.random.alnum(60)},
               {"expires_in", 3599},
               {"token_type", "Bearer"},
               {"refresh_token", "sim-decoy-" + engine.random.alnum(60)}};
  if (info(call.endpoint).shape == Shape::kBusiness) {
    body = {{"code", 0},
            {"message", "OK"},
            {"request_id", engine.log_id(call.now)},
            {"data", std::move(body)}};
  }
  return json_response(200, body);
}

Response fault_response(Engine& engine, const Call& call, const Fault& fault) {
  Response r;
  switch (fault.kind) {
    case FaultKind::kStatus:
      return server_error(engine, call, fault);
    case FaultKind::kRateLimit:
      return rate_limited(engine, call, fault);
    case FaultKind::kReset:
      r.delivery = Response::Delivery::kReset;
      return r;
    case FaultKind::kHang:
      r.delivery = Response::Delivery::kHang;
      return r;
    case FaultKind::kTruncate:
      r = decoy(engine, call);
      r.delivery = Response::Delivery::kTruncate;
      return r;
    case FaultKind::kMalformed:
      return text_response(200, std::string(kMalformedBody), "application/json; charset=UTF-8");
    case FaultKind::kHtml:
      return text_response(502, std::string(kHtmlBody), "text/html; charset=UTF-8");
    case FaultKind::kEmpty:
      return text_response(200, "", "application/json; charset=UTF-8");
    case FaultKind::kErrorBody:
      return error_body(engine, call, fault);
    case FaultKind::kTransientCode: {
      if (info(call.endpoint).shape == Shape::kOAuth2) {
        return oauth2_fault_body(fault.status_set ? fault.status : 503, fault,
                                 "temporarily_unavailable",
                                 "The server is temporarily unable to handle the request.");
      }
      const int code = fault.code != 0 ? fault.code : 2;
      r = engine.meta_fail(code, std::nullopt,
                           code == 1 ? "An unknown error occurred"
                                     : "An unexpected error has occurred. Please retry your "
                                       "request later.");
      r.status = fault.status;
      return r;
    }
    case FaultKind::kDelay:
    case FaultKind::kUsage:
      break;  // not answers of their own
  }
  die("provider-sim: fault_response called for a modifier fault");
}

Response dispatch(Engine& engine, Call& call) {
  switch (call.endpoint) {
    case Endpoint::kMetaExchange:
      return engine.meta_exchange(call);
    case Endpoint::kMetaAccounts:
      return engine.meta_accounts(call);
    case Endpoint::kMetaPage:
      return engine.meta_page(call);
    case Endpoint::kMetaDebugToken:
      return engine.meta_debug_token(call);
    case Endpoint::kInstagramRefresh:
      return engine.instagram_refresh(call);
    case Endpoint::kGoogleToken:
      return engine.google_token(call);
    case Endpoint::kGoogleTokenInfo:
      return engine.google_tokeninfo(call);
    case Endpoint::kGoogleRevoke:
      return engine.google_revoke(call);
    case Endpoint::kGoogleAccounts:
      return engine.google_accounts(call);
    case Endpoint::kTikTokToken:
      return engine.tiktok_token(call);
    case Endpoint::kTikTokUserInfo:
      return engine.tiktok_user_info(call);
    case Endpoint::kTikTokRevoke:
      return engine.tiktok_revoke(call);
    case Endpoint::kBusinessRefresh:
      return engine.business_refresh(call);
    case Endpoint::kBusinessTokenInfo:
      return engine.business_token_info(call);
    case Endpoint::kBusinessGet:
      return engine.business_get(call);
    case Endpoint::kOAuth2Token:
      return engine.oauth2_token(call);
    case Endpoint::kOAuth2Introspect:
      return engine.oauth2_introspect(call);
    case Endpoint::kOAuth2Revoke:
      return engine.oauth2_revoke(call);
    case Endpoint::kApiKeyProbe:
      return engine.apikey_probe(call);
  }
  return not_found(call.request->path);
}

// Counts the call as a refresh or a check; a refresh that arrives while another refresh of the
// same account is still due (steady clock) is concurrent.
void count_role(Engine& engine, Call& call, const std::optional<Fault>& fault) {
  const Role role = info(call.endpoint).role;
  if (role == Role::kCheck) {
    ++engine.totals.checks;
    if (call.account != nullptr) ++call.account->checks;
    return;
  }
  if (role != Role::kRefresh) return;
  ++engine.totals.refreshes;
  if (call.account == nullptr) return;
  ++call.account->refreshes;
  const auto arrival = engine.clock.steady_now();
  auto due = arrival;
  if (fault && fault->kind == FaultKind::kDelay) due += std::chrono::milliseconds(fault->delay_ms);
  if (arrival < call.account->refresh_busy_until) {
    ++call.account->concurrent_refreshes;
    ++engine.totals.concurrent_refreshes;
  }
  call.account->refresh_busy_until = std::max(call.account->refresh_busy_until, due);
}

}  // namespace

Response Engine::handle(const Request& request) {
  if (request.path == "/admin" || request.path.starts_with("/admin/")) {
    if (!is_loopback(request.remote)) {
      return json_response(403, {{"error", "the admin API answers loopback peers only"}});
    }
    const std::lock_guard lock(mutex);
    return admin(request);
  }

  Route routed = route(request);
  if (!routed.endpoint) return std::move(routed.error);

  // Parse outside the lock.
  Call call;
  call.endpoint = *routed.endpoint;
  call.request = &request;
  call.path_id = std::move(routed.path_id);
  call.params = &request.query;
  if (is_form_post(call.endpoint)) {
    call.form = form_decode(request.body);
    call.params = &call.form;
  } else if (request.method == "POST") {
    call.body = json::parse(request.body, nullptr, false);
  }
  call.token = account_token(call);

  const std::lock_guard lock(mutex);
  call.now = now();
  ++requests;
  ++by_endpoint[static_cast<std::size_t>(call.endpoint)];
  call.found = find(call.token);
  if (call.found != nullptr && is_generic(call.endpoint) &&
      call.found->grant->provider != info(call.endpoint).provider) {
    call.found = nullptr;
  }
  if (call.found != nullptr) {
    call.grant = call.found->grant.get();
    call.account = &accounts[call.grant->key];
  } else if (const std::string client = client_credentials_client(call, options); !client.empty()) {
    const std::string key = "oauth2:" + client;
    call.account = &accounts[key];  // the client's grant may not exist yet
    if (const auto it = grants.find(key); it != grants.end()) call.grant = it->second.get();
  }
  const bool meta = info(call.endpoint).shape == Shape::kMeta;
  if (meta) {
    meta_app_usage.add(call.now);
    if (call.found != nullptr && call.found->kind == TokenKind::kMetaPage) {
      call.usage_page = call.found->page_id;
    } else if (call.endpoint == Endpoint::kMetaPage) {
      call.usage_page = call.path_id;
    }
    if (!call.usage_page.empty()) meta_page_usage[call.usage_page].add(call.now);
  }

  const std::optional<Fault> fault = take_fault(faults, call);
  count_role(*this, call, fault);

  Response response;
  if (fault && fault->kind != FaultKind::kDelay && fault->kind != FaultKind::kUsage) {
    response = fault_response(*this, call, *fault);
  } else {
    response = dispatch(*this, call);
    if (fault && fault->kind == FaultKind::kDelay) {
      response.delay = std::chrono::milliseconds(fault->delay_ms);
    }
  }
  forget_old_tokens();
  const bool has_usage = std::any_of(response.headers.begin(), response.headers.end(),
                                     [](const auto& h) { return h.first == "X-App-Usage"; });
  if (meta && !has_usage && response.content_type.starts_with("application/json")) {
    if (fault && fault->kind == FaultKind::kUsage) {
      add_meta_usage(response, call, fault->value, fault->regain_minutes);
    } else {
      add_meta_usage(response, call, std::nullopt, 0);
    }
  }
  return response;
}

// --- pure helpers --------------------------------------------------------------------------------

Response json_response(int status, const json& body) {
  Response r;
  r.status = status;
  r.body = body.dump();
  return r;
}

Response text_response(int status, std::string body, std::string content_type) {
  Response r;
  r.status = status;
  r.body = std::move(body);
  r.content_type = std::move(content_type);
  return r;
}

std::string ascii_lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; });
  return s;
}

bool has_basic_auth(const Request& request) {
  const auto it = request.headers.find("authorization");
  return it != request.headers.end() && ascii_lower(it->second.substr(0, 6)) == "basic ";
}

std::pair<std::string, std::string> basic_credentials(const Request& request) {
  if (!has_basic_auth(request)) return {};
  const std::string encoded = request.headers.at("authorization").substr(6);
  std::vector<unsigned char> decoded(encoded.size() / 4 * 3 + 3);
  const int n =
      EVP_DecodeBlock(decoded.data(), reinterpret_cast<const unsigned char*>(encoded.data()),
                      static_cast<int>(encoded.size()));
  if (n < 0) return {};
  std::string text(reinterpret_cast<const char*>(decoded.data()), static_cast<std::size_t>(n));
  while (!text.empty() && text.back() == '\0')
    text.pop_back();  // EVP_DecodeBlock counts the padding bytes
  const auto colon = text.find(':');
  if (colon == std::string::npos) return {};
  return {url_decode(text.substr(0, colon)), url_decode(text.substr(colon + 1))};
}

std::string bearer_token(const Request& request) {
  const auto it = request.headers.find("authorization");
  if (it == request.headers.end()) return {};
  const std::string_view value = it->second;
  if (value.size() < 7) return {};
  std::string scheme(value.substr(0, 7));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; });
  if (scheme != "bearer ") return {};
  return std::string(value.substr(7));
}

}  // namespace detail
}  // namespace tw::sim
