// The simulator's admin API: JSON in, JSON out, under /admin/, loopback peers only (checked by
// Engine::handle). The caller holds the mutex. Every request is validated in full before anything
// changes; an unknown field is an error, so that a typo does not silently seed the wrong thing.
//
//   POST /admin/seed        {"provider":"meta","kind":"page"|"user"|"instagram","account_id",
//                            "user_id"?, "expires_in"?, "omit_expires_in"?}
//                           {"provider":"google","account_id","user"?,"rotate"?,"testing"?,
//                            "no_permission"?,"unauthorized_client"?}
//                           {"provider":"tiktok","api":"v2"|"business","account_id","profile"?,
//                            "rotate"?,"expires_in"?,"refresh_expires_in"?,"scope_not_authorized"?,
//                            "scope"?}
//                           {"provider":"oauth2","api":"oauth2"?,"account_id","scope"?,
//                            "access_lifetime"?,"refresh_expires_in"?,"rotate"?}
//                           {"provider":"oauth2","api":"oauth2_client","account_id"?,"scope"?,
//                            "access_lifetime"?}: the client's client_credentials grant (account_id
//                            must be, and defaults to, SimOptions::oauth2_client_id), with a live
//                            access token as if the client had asked once
//                           {"provider":"apikey","account_id","expires_in"?}: one API key
//                           ("provider" may be left out when "api" is "oauth2", "oauth2_client" or
//                            "apikey")
//                           ->
//                           {"access_token","refresh_token","expires_at","refresh_expires_at",...}
//                           (oauth2: also "scope"; an API key comes as "access_token"; absent
//                            expiries are null)
//   POST /admin/seed_bulk   the same fields but account_id, plus "prefix","count","start"?,
//                           "format"?: "ndjson" (default, one object per line) or "json" (array);
//                           not for "oauth2_client" (there is one client)
//   POST /admin/revoke      {"provider","account_id","subcode"?} -> {}
//   POST /admin/fault       {"provider"?,"endpoint"?,"account_id"?,"kind","count"?,...} -> {"id"}
//                           "provider" is a provider or family: meta, instagram, google, tiktok,
//                           tiktok_business, oauth2, apikey. On the oauth2 and apikey endpoints
//                           "error"? names the RFC 6749 error code of the body (status,
//                           rate_limit, error_body, transient_code); transient_code there is 503
//                           {"error":"temporarily_unavailable"} unless "status" says otherwise
//   GET  /admin/faults      -> {"faults":[...]}          POST /admin/faults/clear -> {}
//   GET  /admin/counters[?account=<provider>:<id>]
//   GET  /admin/account?provider=&account_id=
//   GET  /admin/issued      -> {"tokens":[every token string issued, oldest first]}; 409 unless
//                           the simulator runs with --record-issued
//   GET  /admin/clock, POST /admin/clock {"advance":seconds} -> {"now"}
//   POST /admin/reset       clears grants, tokens, faults, counters and the clock offset
#include <algorithm>
#include <set>
#include <string>
#include <utility>

#include "tools/provider-sim/simulator_state.h"

namespace tw::sim::detail {

namespace {

Response bad_request(const std::string& message) {
  return json_response(400, {{"error", message}});
}

Response method_not_allowed_admin(const char* allowed) {
  Response r = json_response(405, {{"error", "method not allowed"}});
  r.headers.emplace_back("Allow", allowed);
  return r;
}

// Reads typed fields of a JSON object, remembering the first error and every name asked for.
class Fields {
 public:
  explicit Fields(const json& body) : body_(body) {}

  std::optional<std::string> string(const char* key) {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) return fail(key, "a string");
    return v->get<std::string>();
  }
  std::optional<std::int64_t> integer(const char* key) {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number_integer()) return fail(key, "an integer");
    return v->get<std::int64_t>();
  }
  std::optional<bool> boolean(const char* key) {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean()) return fail(key, "true or false");
    return v->get<bool>();
  }
  void error(const std::string& message) {
    if (error_.empty()) error_ = message;
  }
  // The first error; checks for fields nobody asked for first.
  const std::string& finish() {
    for (const auto& [key, value] : body_.items()) {
      if (seen_.count(key) == 0) error("unknown field \"" + key + "\"");
    }
    return error_;
  }

 private:
  const json* get(const char* key) {
    seen_.insert(key);
    const auto it = body_.find(key);
    return it == body_.end() || it->is_null() ? nullptr : &*it;
  }
  std::nullopt_t fail(const char* key, const char* what) {
    error(std::string("field \"") + key + "\" must be " + what);
    return std::nullopt;
  }

  const json& body_;
  std::set<std::string> seen_;
  std::string error_;
};

struct SeedSpec {
  Api api = Api::kGoogle;
  std::string provider;
  std::optional<std::string> user_id;  // Meta
  std::optional<std::int64_t> expires_in;
  bool omit_expires_in = false;
  std::optional<std::string> google_user;
  bool rotate = false;
  bool testing = false;
  bool no_permission = false;
  bool unauthorized_client = false;
  std::int64_t access_lifetime = 0;  // TikTok profile; oauth2
  std::int64_t refresh_lifetime = 0;
  std::optional<std::int64_t> refresh_expires_in;
  bool scope_not_authorized = false;
  std::optional<std::string> scope;  // TikTok, oauth2
};

struct Profile {
  const char* name;
  std::int64_t access;
  std::int64_t refresh;
};
constexpr Profile kProfiles[] = {
    {"24h365d", kDay, 365 * kDay},
    {"2h180d", kDay / 12, 180 * kDay},
    {"business30", 30 * kDay, 365 * kDay},
};

void parse_meta(Fields& f, SeedSpec& spec) {
  const auto kind = f.string("kind");
  if (kind == "page") {
    spec.api = Api::kMetaPage;
  } else if (kind == "user") {
    spec.api = Api::kMetaUser;
  } else if (kind == "instagram") {
    spec.api = Api::kInstagram;
  } else {
    f.error("meta seeds need \"kind\": \"page\", \"user\" or \"instagram\"");
  }
  spec.user_id = f.string("user_id");
  spec.expires_in = f.integer("expires_in");
  spec.omit_expires_in = f.boolean("omit_expires_in").value_or(false);
}

void parse_google(Fields& f, SeedSpec& spec) {
  spec.api = Api::kGoogle;
  spec.google_user = f.string("user");
  spec.rotate = f.boolean("rotate").value_or(false);
  spec.testing = f.boolean("testing").value_or(false);
  spec.no_permission = f.boolean("no_permission").value_or(false);
  spec.unauthorized_client = f.boolean("unauthorized_client").value_or(false);
}

void parse_tiktok(Fields& f, SeedSpec& spec) {
  const std::string api = f.string("api").value_or("v2");
  if (api != "v2" && api != "business") f.error("\"api\" must be \"v2\" or \"business\"");
  spec.api = api == "business" ? Api::kBusiness : Api::kTikTokV2;
  const std::string profile =
      f.string("profile").value_or(api == "business" ? "business30" : "24h365d");
  bool known = false;
  for (const auto& p : kProfiles) {
    if (profile != p.name) continue;
    known = true;
    spec.access_lifetime = p.access;
    spec.refresh_lifetime = p.refresh;
  }
  if (!known) f.error("\"profile\" must be \"24h365d\", \"2h180d\" or \"business30\"");
  spec.rotate = f.boolean("rotate").value_or(true);
  if (!spec.rotate && spec.api == Api::kTikTokV2) {
    f.error(
        "TikTok v2 refresh tokens always rotate: \"rotate\": false is for \"api\": \"business\"");
  }
  spec.expires_in = f.integer("expires_in");
  spec.refresh_expires_in = f.integer("refresh_expires_in");
  spec.scope_not_authorized = f.boolean("scope_not_authorized").value_or(false);
  spec.scope = f.string("scope");
}

// The generic OAuth 2.0 server: a user's grant, or ("api":"oauth2_client") the client's own.
void parse_oauth2(Fields& f, SeedSpec& spec, const SimOptions& o) {
  const std::string api = f.string("api").value_or("oauth2");
  if (api != "oauth2" && api != "oauth2_client") {
    f.error("\"api\" must be \"oauth2\" or \"oauth2_client\"");
  }
  const bool client = api == "oauth2_client";
  spec.api = client ? Api::kOAuth2Client : Api::kOAuth2;
  spec.scope = f.string("scope");
  if (spec.scope && spec.scope->find_first_not_of(' ') == std::string::npos) {
    f.error("\"scope\" must not be blank");
  }
  spec.access_lifetime =
      f.integer("access_lifetime")
          .value_or(client ? o.oauth2_client_credentials_lifetime : o.oauth2_access_lifetime);
  if (spec.access_lifetime <= 0) f.error("\"access_lifetime\" must be positive");
  if (client) return;  // no refresh token: "rotate" and "refresh_expires_in" are unknown fields
  spec.rotate = f.boolean("rotate").value_or(o.oauth2_rotate_refresh);
  spec.refresh_expires_in = f.integer("refresh_expires_in");
}

void parse_apikey(Fields& f, SeedSpec& spec) {
  if (f.string("api").value_or("apikey") != "apikey") f.error("\"api\" must be \"apikey\"");
  spec.api = Api::kApiKey;
  spec.expires_in = f.integer("expires_in");
}

// Reads the fields common to seed and seed_bulk (all but account_id / prefix and count).
SeedSpec parse_seed(Fields& f, const SimOptions& options) {
  SeedSpec spec;
  spec.provider = f.string("provider").value_or("");
  if (spec.provider.empty()) {  // the generic families may be named by "api" alone
    const std::string api = f.string("api").value_or("");
    if (api == "oauth2" || api == "oauth2_client") spec.provider = "oauth2";
    if (api == "apikey") spec.provider = "apikey";
  }
  if (spec.provider == "meta") {
    parse_meta(f, spec);
  } else if (spec.provider == "google") {
    parse_google(f, spec);
  } else if (spec.provider == "tiktok") {
    parse_tiktok(f, spec);
  } else if (spec.provider == "oauth2") {
    parse_oauth2(f, spec, options);
  } else if (spec.provider == "apikey") {
    parse_apikey(f, spec);
  } else {
    f.error("\"provider\" must be \"meta\", \"google\", \"tiktok\", \"oauth2\" or \"apikey\"");
  }
  if (spec.expires_in && *spec.expires_in <= 0) f.error("\"expires_in\" must be positive");
  if (spec.refresh_expires_in && *spec.refresh_expires_in <= 0) {
    f.error("\"refresh_expires_in\" must be positive");
  }
  return spec;
}

bool valid_subcode(std::int64_t s) {
  return s == 458 || s == 459 || s == 460 || s == 463 || s == 464 || s == 467 || s == 492;
}

json or_null(const std::string& s) {
  return s.empty() ? json(nullptr) : json(s);
}

json counters_json(const Counters& c) {
  return {{"refreshes", c.refreshes},
          {"checks", c.checks},
          {"concurrent_refreshes", c.concurrent_refreshes},
          {"reused_refresh_tokens", c.reused_refresh_tokens},
          {"invalid_grant", c.invalid_grant}};
}

constexpr std::pair<const char*, FaultKind> kFaultKinds[] = {
    {"status", FaultKind::kStatus},
    {"rate_limit", FaultKind::kRateLimit},
    {"delay", FaultKind::kDelay},
    {"reset", FaultKind::kReset},
    {"truncate", FaultKind::kTruncate},
    {"hang", FaultKind::kHang},
    {"malformed", FaultKind::kMalformed},
    {"html", FaultKind::kHtml},
    {"empty", FaultKind::kEmpty},
    {"error_body", FaultKind::kErrorBody},
    {"transient_code", FaultKind::kTransientCode},
    {"usage", FaultKind::kUsage},
};

std::optional<FaultKind> fault_kind_named(const std::string& name) {
  for (const auto& [n, kind] : kFaultKinds) {
    if (name == n) return kind;
  }
  return std::nullopt;
}

const char* fault_kind_name(FaultKind kind) {
  for (const auto& [n, k] : kFaultKinds) {
    if (k == kind) return n;
  }
  return "?";
}

// One grant for `account_id` as `spec` says; replaces an existing grant of that account.
json seed_one(Engine& engine, const SeedSpec& spec, const std::string& account_id,
              std::int64_t now) {
  auto grant = std::make_shared<Grant>();
  grant->api = spec.api;
  grant->provider = spec.provider;
  grant->account_id = account_id;
  grant->key = spec.provider + ":" + account_id;
  grant->created_at = now;
  engine.install(grant);

  json out;
  const auto& o = engine.options;
  switch (spec.api) {
    case Api::kMetaUser:
    case Api::kInstagram: {
      grant->user_id = spec.user_id.value_or(account_id);
      grant->omit_expires_in = spec.omit_expires_in;
      const std::int64_t expires_at = now + spec.expires_in.value_or(o.meta_user_token_lifetime);
      const TokenKind kind =
          spec.api == Api::kInstagram ? TokenKind::kInstagram : TokenKind::kMetaUser;
      grant->access_token = engine.issue(grant, kind, now, expires_at);
      engine.meta_record_activity(*grant, now);
      out = {{"access_token", grant->access_token}, {"expires_at", expires_at}};
      break;
    }
    case Api::kMetaPage: {
      grant->user_id = spec.user_id.value_or("user-" + account_id);
      grant->omit_expires_in = spec.omit_expires_in;
      const std::int64_t user_expires = now + spec.expires_in.value_or(o.meta_user_token_lifetime);
      grant->refresh_token = engine.issue(grant, TokenKind::kMetaUser, now, user_expires);
      grant->access_token = engine.issue(grant, TokenKind::kMetaPage, now, 0);
      engine.tokens.at(grant->access_token).page_id = account_id;
      engine.register_meta_page(grant);
      engine.meta_record_activity(*grant, now);
      out = {{"access_token", grant->access_token},
             {"refresh_token", grant->refresh_token},
             {"expires_at", nullptr},
             {"refresh_expires_at", user_expires},
             {"user_id", grant->user_id}};
      break;
    }
    case Api::kGoogle: {
      grant->google_user = spec.google_user.value_or(account_id);
      grant->rotate = spec.rotate;
      grant->testing = spec.testing;
      grant->no_permission = spec.no_permission;
      grant->unauthorized_client = spec.unauthorized_client;
      const std::int64_t expires_at = now + o.google_access_lifetime;
      grant->access_token = engine.issue(grant, TokenKind::kGoogleAccess, now, expires_at);
      grant->refresh_token = engine.issue(grant, TokenKind::kGoogleRefresh, now, 0);
      engine.register_google_refresh(grant, grant->refresh_token);
      out = {{"access_token", grant->access_token},
             {"refresh_token", grant->refresh_token},
             {"expires_at", expires_at}};
      break;
    }
    case Api::kTikTokV2:
    case Api::kBusiness: {
      const bool business = spec.api == Api::kBusiness;
      grant->rotate = spec.rotate;
      grant->access_lifetime = spec.access_lifetime;
      grant->refresh_lifetime = spec.refresh_lifetime;
      grant->scope_not_authorized = spec.scope_not_authorized;
      grant->open_id = engine.random.uuid();
      grant->display_name = "Sim " + account_id;
      grant->scope =
          spec.scope.value_or(business ? "user.info.basic,user.info.username,user.info.stats"
                                       : "user.info.basic,video.list");
      const std::int64_t expires_at = now + spec.expires_in.value_or(spec.access_lifetime);
      const std::int64_t refresh_expires_at =
          now + spec.refresh_expires_in.value_or(spec.refresh_lifetime);
      grant->access_token = engine.issue(
          grant, business ? TokenKind::kBusinessAccess : TokenKind::kTikTokAccess, now, expires_at);
      grant->refresh_token =
          engine.issue(grant, business ? TokenKind::kBusinessRefresh : TokenKind::kTikTokRefresh,
                       now, refresh_expires_at);
      out = {{"access_token", grant->access_token},
             {"refresh_token", grant->refresh_token},
             {"expires_at", expires_at},
             {"refresh_expires_at", refresh_expires_at},
             {"open_id", grant->open_id}};
      break;
    }
    case Api::kOAuth2:
    case Api::kOAuth2Client: {
      grant->rotate = spec.rotate;
      grant->access_lifetime = spec.access_lifetime;
      grant->scope = spec.scope.value_or(kOAuth2DefaultScope);
      const std::int64_t expires_at = now + spec.access_lifetime;
      grant->access_token = engine.issue(grant, TokenKind::kOAuth2Access, now, expires_at);
      out = {{"access_token", grant->access_token},
             {"expires_at", expires_at},
             {"scope", grant->scope}};
      if (spec.api == Api::kOAuth2Client) break;
      const std::int64_t refresh_expires_at =
          spec.refresh_expires_in ? now + *spec.refresh_expires_in : 0;
      grant->refresh_token =
          engine.issue(grant, TokenKind::kOAuth2Refresh, now, refresh_expires_at);
      out["refresh_token"] = grant->refresh_token;
      out["refresh_expires_at"] =
          refresh_expires_at != 0 ? json(refresh_expires_at) : json(nullptr);
      break;
    }
    case Api::kApiKey: {
      const std::int64_t expires_at = spec.expires_in ? now + *spec.expires_in : 0;
      grant->access_token = engine.issue(grant, TokenKind::kApiKey, now, expires_at);
      out = {{"access_token", grant->access_token},
             {"expires_at", expires_at != 0 ? json(expires_at) : json(nullptr)}};
      break;
    }
  }
  return out;
}

}  // namespace

Response Engine::admin_seed(const json& body) {
  Fields f(body);
  const SeedSpec spec = parse_seed(f, options);
  const bool client = spec.api == Api::kOAuth2Client;
  const std::string account_id =
      f.string("account_id").value_or(client ? options.oauth2_client_id : "");
  if (account_id.empty()) f.error("\"account_id\" is required");
  if (client && account_id != options.oauth2_client_id) {
    f.error("an \"oauth2_client\" grant's \"account_id\" is the client id, \"" +
            options.oauth2_client_id + "\"");
  }
  if (const std::string& e = f.finish(); !e.empty()) return bad_request(e);
  return json_response(200, seed_one(*this, spec, account_id, now()));
}

Response Engine::admin_seed_bulk(const json& body) {
  constexpr std::int64_t kMaxCount = 1000000;
  Fields f(body);
  const SeedSpec spec = parse_seed(f, options);
  if (spec.api == Api::kOAuth2Client) f.error("seed_bulk cannot seed \"oauth2_client\" grants");
  const std::string prefix = f.string("prefix").value_or("");
  const auto count = f.integer("count");
  const std::int64_t start = f.integer("start").value_or(0);
  const std::string format = f.string("format").value_or("ndjson");
  if (!count || *count < 1 || *count > kMaxCount) f.error("\"count\" must be 1 to 1000000");
  if (start < 0) f.error("\"start\" must not be negative");
  if (format != "ndjson" && format != "json") f.error("\"format\" must be \"ndjson\" or \"json\"");
  if (const std::string& e = f.finish(); !e.empty()) return bad_request(e);

  const std::int64_t t = now();
  Response r;
  r.body.reserve(static_cast<std::size_t>(*count) * 400);
  if (format == "json") r.body.push_back('[');
  for (std::int64_t i = start; i < start + *count; ++i) {
    std::string account_id = prefix + std::to_string(i);
    json line = seed_one(*this, spec, account_id, t);
    line["account_id"] = std::move(account_id);
    if (format == "json" && i != start) r.body.push_back(',');
    r.body += line.dump();
    if (format == "ndjson") r.body.push_back('\n');
  }
  if (format == "json") {
    r.body.push_back(']');
  } else {
    r.content_type = "application/x-ndjson";
  }
  return r;
}

Response Engine::admin_revoke(const json& body) {
  Fields f(body);
  const std::string provider = f.string("provider").value_or("");
  const std::string account_id = f.string("account_id").value_or("");
  const std::int64_t subcode = f.integer("subcode").value_or(460);
  if (provider.empty() || account_id.empty())
    f.error("\"provider\" and \"account_id\" are required");
  if (!valid_subcode(subcode)) f.error("\"subcode\" must be 458, 459, 460, 463, 464, 467 or 492");
  if (const std::string& e = f.finish(); !e.empty()) return bad_request(e);
  const auto it = grants.find(provider + ":" + account_id);
  if (it == grants.end()) {
    return json_response(404, {{"error", "no such account: " + provider + ":" + account_id}});
  }
  it->second->revoked = true;
  it->second->revoke_subcode = static_cast<int>(subcode);
  return json_response(200, json::object());
}

Response Engine::admin_fault(const json& body) {
  Fields f(body);
  Fault fault;
  fault.provider = f.string("provider");
  const auto endpoint = f.string("endpoint");
  fault.account_id = f.string("account_id");
  const auto kind = fault_kind_named(f.string("kind").value_or(""));
  fault.remaining = f.integer("count").value_or(1);
  const auto status = f.integer("status");
  fault.retry_after = f.integer("retry_after");
  const auto code = f.integer("code");
  fault.delay_ms = f.integer("delay_ms").value_or(1000);
  fault.value = f.integer("value").value_or(100);
  fault.regain_minutes = f.integer("regain_minutes").value_or(0);
  fault.status_set = status.has_value();
  const auto error_code = f.string("error");
  fault.error = error_code.value_or("");

  static const std::set<std::string> kProviders = {
      "meta", "instagram", "google", "tiktok", "tiktok_business", "oauth2", "apikey"};
  if (fault.provider && kProviders.count(*fault.provider) == 0) {
    f.error(
        "\"provider\" must be meta, instagram, google, tiktok, tiktok_business, oauth2 or apikey");
  }
  if (endpoint) {
    fault.endpoint = endpoint_named(*endpoint);
    if (!fault.endpoint) f.error("unknown endpoint \"" + *endpoint + "\"");
  }
  if (error_code) {
    const bool generic_target = (fault.endpoint && info(*fault.endpoint).shape == Shape::kOAuth2) ||
                                (!fault.endpoint && fault.provider &&
                                 (*fault.provider == "oauth2" || *fault.provider == "apikey"));
    // RFC 6749 A.7: error = 1*( %x20-21 / %x23-5B / %x5D-7E )
    const bool valid_code =
        !fault.error.empty() && std::all_of(fault.error.begin(), fault.error.end(), [](char c) {
          return c >= 0x20 && c <= 0x7E && c != '"' && c != '\\';
        });
    if (!generic_target) f.error("\"error\" is for faults on the oauth2 and apikey endpoints");
    if (!valid_code) f.error("\"error\" must be an RFC 6749 error code, e.g. \"invalid_grant\"");
  }
  if (!kind) {
    f.error(
        "\"kind\" must be status, rate_limit, delay, reset, truncate, hang, malformed, html, "
        "empty, error_body, transient_code or usage");
  } else {
    fault.kind = *kind;
  }
  if (fault.remaining == 0 || fault.remaining < -1) f.error("\"count\" must be positive or -1");
  fault.status =
      static_cast<int>(status.value_or(fault.kind == FaultKind::kTransientCode ? 500 : 503));
  if (fault.status < 400 || fault.status > 599) f.error("\"status\" must be 400 to 599");
  if (fault.retry_after && *fault.retry_after < 0) f.error("\"retry_after\" must not be negative");
  if (fault.delay_ms < 0 || fault.delay_ms > 3600000) f.error("\"delay_ms\" must be 0 to 3600000");
  if (fault.value < 0 || fault.value > 100) f.error("\"value\" must be 0 to 100");
  if (fault.regain_minutes < 0) f.error("\"regain_minutes\" must not be negative");
  if (code) {
    const bool rate = fault.kind == FaultKind::kRateLimit &&
                      (*code == 4 || *code == 17 || *code == 32 || *code == 613 || *code == 80001);
    const bool transient = fault.kind == FaultKind::kTransientCode && (*code == 1 || *code == 2);
    if (!rate && !transient) {
      f.error("\"code\" is 4, 17, 32, 613 or 80001 for rate_limit, 1 or 2 for transient_code");
    }
    fault.code = static_cast<int>(*code);
  }
  if (const std::string& e = f.finish(); !e.empty()) return bad_request(e);
  fault.id = next_fault_id++;
  faults.push_back(fault);
  return json_response(200, {{"id", fault.id}});
}

Response Engine::admin_faults_list() {
  json list = json::array();
  for (const auto& fault : faults) {
    json item = {
        {"id", fault.id}, {"kind", fault_kind_name(fault.kind)}, {"remaining", fault.remaining}};
    if (fault.provider) item["provider"] = *fault.provider;
    if (fault.endpoint) item["endpoint"] = info(*fault.endpoint).name;
    if (fault.account_id) item["account_id"] = *fault.account_id;
    list.push_back(std::move(item));
  }
  return json_response(200, {{"faults", std::move(list)}});
}

Response Engine::admin_counters(const Request& request) {
  json by_endpoint = json::object();
  for (std::size_t i = 0; i < kEndpointCount; ++i) {
    by_endpoint[info(static_cast<Endpoint>(i)).name] = this->by_endpoint[i];
  }
  json per_account = json::object();
  if (const auto it = request.query.find("account"); it != request.query.end()) {
    const auto found = accounts.find(it->second);
    per_account[it->second] = counters_json(found == accounts.end() ? Counters{} : found->second);
  } else {
    for (const auto& [key, c] : accounts)
      per_account[key] = counters_json(c);
  }
  return json_response(200, {{"requests", requests},
                             {"by_endpoint", std::move(by_endpoint)},
                             {"accounts", std::move(per_account)},
                             {"totals", counters_json(totals)}});
}

Response Engine::admin_account(const Request& request) {
  const auto param = [&](const char* name) {
    const auto it = request.query.find(name);
    return it == request.query.end() ? std::string() : it->second;
  };
  const std::string key = param("provider") + ":" + param("account_id");
  const auto it = grants.find(key);
  if (it == grants.end()) return json_response(404, {{"error", "no such account: " + key}});
  const Grant& grant = *it->second;
  const auto expiry = [this](const std::string& token) {
    const Token* t = find(token);
    return t == nullptr || t->expires_at == 0 ? json(nullptr) : json(t->expires_at);
  };
  json out = {{"provider", grant.provider},
              {"account_id", grant.account_id},
              {"access_token", or_null(grant.access_token)},
              {"refresh_token", or_null(grant.refresh_token)},
              {"expires_at", expiry(grant.access_token)},
              {"refresh_expires_at", expiry(grant.refresh_token)},
              {"revoked", grant.revoked}};
  if (grant.provider == "meta") {
    out["user_id"] = grant.user_id;
    out["data_access_expires_at"] = meta_data_access_expires_at(grant);
  }
  if (!grant.open_id.empty()) out["open_id"] = grant.open_id;
  if (grant.provider == "oauth2") out["scope"] = grant.scope;
  return json_response(200, out);
}

Response Engine::admin_issued() const {
  if (!options.record_issued) {
    return json_response(409,
                         {{"error", "not recording: start the simulator with --record-issued"}});
  }
  return json_response(200, {{"tokens", issued_log}});
}

Response Engine::admin_clock(const Request& request) {
  if (request.method == "POST") {
    const json body = json::parse(request.body, nullptr, false);
    if (!body.is_object()) return bad_request("the body must be a JSON object");
    Fields f(body);
    const auto advance = f.integer("advance");
    if (!advance || *advance < 0) f.error("\"advance\" must be a non-negative number of seconds");
    if (const std::string& e = f.finish(); !e.empty()) return bad_request(e);
    clock_offset += *advance;
  }
  return json_response(200, {{"now", now()}});
}

void Engine::reset() {
  clock_offset = 0;
  grants.clear();
  tokens.clear();
  pages_by_user.clear();
  google_refresh_by_user.clear();
  meta_user_activity.clear();
  meta_app_usage = {};
  meta_page_usage.clear();
  faults.clear();
  next_fault_id = 1;
  requests = 0;
  by_endpoint = {};
  accounts.clear();
  totals = {};
  issued_log.clear();
}

Response Engine::admin(const Request& request) {
  const std::string& path = request.path;
  const bool get = request.method == "GET";
  const bool post = request.method == "POST";
  if (path == "/admin/clock") {
    return get || post ? admin_clock(request) : method_not_allowed_admin("GET, POST");
  }
  if (path == "/admin/counters" || path == "/admin/account" || path == "/admin/faults" ||
      path == "/admin/issued") {
    if (!get) return method_not_allowed_admin("GET");
    if (path == "/admin/counters") return admin_counters(request);
    if (path == "/admin/account") return admin_account(request);
    if (path == "/admin/issued") return admin_issued();
    return admin_faults_list();
  }
  using PostHandler = Response (Engine::*)(const json&);
  static const std::pair<const char*, PostHandler> kPosts[] = {
      {"/admin/seed", &Engine::admin_seed},
      {"/admin/seed_bulk", &Engine::admin_seed_bulk},
      {"/admin/revoke", &Engine::admin_revoke},
      {"/admin/fault", &Engine::admin_fault},
  };
  if (path == "/admin/faults/clear" || path == "/admin/reset") {
    if (!post) return method_not_allowed_admin("POST");
    if (path == "/admin/reset") {
      reset();
    } else {
      faults.clear();
    }
    return json_response(200, json::object());
  }
  for (const auto& [name, handler] : kPosts) {
    if (path != name) continue;
    if (!post) return method_not_allowed_admin("POST");
    const json body = json::parse(request.body, nullptr, false);
    if (!body.is_object()) return bad_request("the body must be a JSON object");
    return (this->*handler)(body);
  }
  return json_response(404, {{"error", "no such admin endpoint: " + path}});
}

}  // namespace tw::sim::detail
