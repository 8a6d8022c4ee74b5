// TikTok: Login Kit / Open API v2 refresh tokens and API for Business tokens (providers.md 3).
//
// v2 (kind refresh_token): POST {open_api}/v2/oauth/token/ with the refresh token; it ROTATES: the
// previous refresh token stops working once a new one is issued [V], so the worker commits the
// new pair before anything else. The check calls /v2/user/info/ with the stored access token;
// access_token_invalid means "refresh once; if that fails, permanent" [V], which the worker does
// (renew_and_retry). An expired access token is renewed before a check (renew_before_check).
// Business (kind business_token): POST {business_api}/open_api/v1.3/tt_user/oauth2/refresh_token/
// with a JSON body [L]; errors come with HTTP 200 and code != 0 [L]: 40105 the token is incorrect
// or revoked ("permanent, or refresh first"), 40100 rate limiting [U], 40101 a bad app id or
// secret [L]. The check introspects the access token with /tt_user/token_info/get/ [L].
#include <memory>
#include <utility>

#include "providers/common.h"
#include "providers/provider.h"

namespace tw {

namespace {

using providers::Param;

constexpr std::string_view kV2Token = "tiktok token endpoint";
constexpr std::string_view kV2UserInfo = "tiktok user info";
constexpr std::string_view kBizRefresh = "tiktok business token endpoint";
constexpr std::string_view kBizInfo = "tiktok business token_info";
constexpr std::int64_t kBizRevoked = 40105;
constexpr std::int64_t kBizRateLimited = 40100;  // one SDK's reading; other lists disagree [U]
constexpr std::int64_t kBizBadApp = 40101;

// A JSON body whose secret fields are filled in place, so no unwiped temporary copy is left.
class SecretJson {
 public:
  SecretJson& set(const char* key, std::string_view value) {
    body_[key] = std::string();
    body_[key].get_ref<std::string&>().assign(value.data(), value.size());
    secret_keys_.push_back(key);
    return *this;
  }
  SecretJson& plain(const char* key, const std::string& value) {
    body_[key] = value;
    return *this;
  }
  const nlohmann::json& json() const { return body_; }
  ~SecretJson() {
    for (const char* k : secret_keys_)
      providers::take_secret(body_, k);
  }

 private:
  nlohmann::json body_ = nlohmann::json::object();
  std::vector<const char*> secret_keys_;
};

class TikTokClient final : public ProviderClient {
 public:
  TikTokClient(const TikTokConfig& config, Secret client_secret, Secret business_secret,
               HttpTransport& http, const Clock& clock)
      : config_(config),
        client_secret_(std::move(client_secret)),
        business_secret_(std::move(business_secret)),
        http_(http),
        clock_(clock) {}

  Provider provider() const override { return Provider::kTikTok; }

  bool renew_before_check(const TokenRecord& token, const TokenSecrets& secrets) const override {
    if (token.kind != TokenKind::kRefreshToken && token.kind != TokenKind::kBusinessToken) {
      return false;
    }
    return providers::access_token_stale(token, secrets, clock_.now());
  }

  void refresh(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    done = providers::masking(std::move(done), {secrets.access_token, secrets.refresh_token,
                                                client_secret_, business_secret_});
    if (token.kind == TokenKind::kRefreshToken) {
      return send(
          providers::post_form(config_.open_api_base_url + "/v2/oauth/token/",
                               {Param{"client_key", config_.client_key},
                                Param{"client_secret", client_secret_.reveal(), true},
                                Param{"grant_type", "refresh_token"},
                                Param{"refresh_token", secrets.refresh_token.reveal(), true}}),
          secrets.refresh_token, &TikTokClient::read_v2_token, std::move(done));
    }
    if (token.kind == TokenKind::kBusinessToken) {
      SecretJson body;
      body.plain("client_id", config_.business_app_id)
          .set("client_secret", business_secret_.reveal())
          .plain("grant_type", "refresh_token")
          .set("refresh_token", secrets.refresh_token.reveal());
      return send(providers::post_json(business_url("/tt_user/oauth2/refresh_token/"), body.json()),
                  secrets.refresh_token, &TikTokClient::read_business_token, std::move(done));
    }
    done(Outcome::failed(
        Operation::kRefresh, ErrorClass::kConfiguration,
        "tiktok " + std::string(to_string(token.kind)) + " tokens are not renewed"));
  }

  void check(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    done = providers::masking(std::move(done), {secrets.access_token, secrets.refresh_token,
                                                client_secret_, business_secret_});
    if (token.kind == TokenKind::kRefreshToken) {
      HttpRequest req = providers::get(config_.open_api_base_url + "/v2/user/info/",
                                       {Param{"fields", "open_id,display_name"}});
      providers::add_bearer(req, secrets.access_token);
      return send(std::move(req), secrets.access_token, &TikTokClient::read_user_info,
                  std::move(done));
    }
    if (token.kind == TokenKind::kBusinessToken) {
      SecretJson body;
      body.plain("app_id", config_.business_app_id)
          .set("access_token", secrets.access_token.reveal());
      return send(providers::post_json(business_url("/tt_user/token_info/get/"), body.json()),
                  secrets.access_token, &TikTokClient::read_business_info, std::move(done));
    }
    done(Outcome::failed(
        Operation::kCheck, ErrorClass::kConfiguration,
        "no health check for tiktok " + std::string(to_string(token.kind)) + " tokens"));
  }

 private:
  using Reader = Outcome (TikTokClient::*)(HttpResponse&, const Secret&) const;

  // Sends `req`; `read` turns the reply into the outcome; `sent` is the secret the request
  // carried (masked in any message). Renewals rotate the refresh token: never sent twice.
  void send(HttpRequest req, const Secret& sent, Reader read, Done done) {
    req.once = read == &TikTokClient::read_v2_token || read == &TikTokClient::read_business_token;
    http_.send(std::move(req),
               [this, sent = Secret(sent), read, done = std::move(done)](HttpResponse r) {
                 Outcome o = (this->*read)(r, sent);
                 providers::wipe_body(r);
                 done(std::move(o));
               });
  }

  std::string business_url(std::string_view path) const {
    return config_.business_api_base_url + "/open_api/v1.3" + std::string(path);
  }

  // --- Open API v2 ---------------------------------------------------------------------------

  Outcome read_v2_token(HttpResponse& r, const Secret& old) const {
    const SysTime now = clock_.now();
    auto reply = providers::json_reply(r, kV2Token, now);
    if (reply.failure) return providers::failed(Operation::kRefresh, std::move(*reply.failure));
    nlohmann::json& doc = *reply.json;
    // OAuth errors: {"error": "invalid_grant", "error_description": ..}; their HTTP status is [U].
    if (auto error = providers::string_field(doc, "error"); !error.empty()) {
      const std::string why = error + ": " +
                              providers::scrub(providers::string_field(doc, "error_description"),
                                               {&old, &client_secret_});
      if (error == "invalid_grant") {
        // Invalid, expired, revoked or already used [V].
        return Outcome::failed(Operation::kRefresh, ErrorClass::kPermanent, why);
      }
      if (error == "invalid_client" || error == "unauthorized_client" ||
          error == "unsupported_grant_type" || error == "invalid_request" ||
          error == "invalid_scope") {
        return Outcome::failed(Operation::kRefresh, ErrorClass::kConfiguration,
                               std::string(kV2Token) + ": " + why);
      }
      Failure f = providers::http_status_failure(r, kV2Token, now);
      f.message += " (" + why + ")";
      return providers::failed(Operation::kRefresh, std::move(f));
    }
    // The API-style error object {"error": {"code", "message"}} may come here too [U]: anything
    // but "ok" is an error, retried as transient (it says nothing about the grant).
    if (auto it = doc.find("error"); it != doc.end() && it->is_object()) {
      const std::string code = providers::string_field(*it, "code");
      if (!code.empty() && code != "ok") {
        Failure f = providers::http_status_failure(r, kV2Token, now);
        f.message += " (" + code + ": " +
                     providers::scrub(providers::string_field(*it, "message"), {&old}) + ")";
        return providers::failed(Operation::kRefresh, std::move(f));
      }
    }
    if (r.status == 429 || r.status >= 500) {
      return providers::failed(Operation::kRefresh,
                               providers::http_status_failure(r, kV2Token, now));
    }
    return token_pair(r, doc, kV2Token, "refresh_expires_in");
  }

  Outcome read_user_info(HttpResponse& r, const Secret& access) const {
    const SysTime now = clock_.now();
    if (auto f = providers::transport_failure(r, kV2UserInfo)) {
      return providers::failed(Operation::kCheck, std::move(*f));
    }
    auto doc = providers::parse_json(r.body);
    const nlohmann::json error =
        doc && doc->is_object() ? doc->value("error", nlohmann::json()) : nlohmann::json();
    const std::string code = providers::string_field(error, "code");
    if (code == "ok" && r.status == 200) return Outcome::success(Operation::kCheck);
    const std::string why = std::string(kV2UserInfo) + ": " + code + " " +
                            providers::scrub(providers::string_field(error, "message"), {&access});
    if (code == "access_token_invalid") {
      Outcome o = Outcome::failed(Operation::kCheck, ErrorClass::kPermanent, why);
      o.renew_and_retry = true;  // refresh once; if that fails, permanent [V]
      return o;
    }
    if (code == "scope_not_authorized" || code == "scope_permission_missed") {
      return Outcome::failed(Operation::kCheck, ErrorClass::kPermanent, why);
    }
    if (code == "rate_limit_exceeded" || code == "internal_error" || r.status == 429 ||
        r.status >= 500) {
      Failure f = providers::http_status_failure(r, kV2UserInfo, now);
      f.message = why + " (HTTP " + std::to_string(r.status) + ")";
      return providers::failed(Operation::kCheck, std::move(f));
    }
    if (code.empty()) {
      return providers::failed(Operation::kCheck,
                               providers::malformed(r, kV2UserInfo, "no error.code"));
    }
    return Outcome::failed(Operation::kCheck, ErrorClass::kConfiguration, why);  // invalid_params
  }

  // --- API for Business ------------------------------------------------------------------------

  // The {code, message, data} envelope: a Failure for code != 0 (errors arrive with HTTP 200).
  std::optional<Failure> business_error(const HttpResponse& r, const nlohmann::json& doc,
                                        std::string_view endpoint,
                                        std::initializer_list<const Secret*> secrets) const {
    const auto code = providers::int_field(doc, "code");
    if (!code) return providers::malformed(r, endpoint, "no code");
    if (*code == 0) return std::nullopt;
    const std::string why = std::string(endpoint) + ": code " + std::to_string(*code) + " " +
                            providers::scrub(providers::string_field(doc, "message"), secrets);
    if (*code == kBizRevoked) return Failure{ErrorClass::kRevoked, why, std::nullopt};
    if (*code == kBizBadApp) return Failure{ErrorClass::kConfiguration, why, std::nullopt};
    if (*code == kBizRateLimited) return Failure{ErrorClass::kTransient, why, Seconds{60}};
    // 40001, 40104, 51021 and others: meanings unverified [U]; retried as transient.
    return Failure{ErrorClass::kTransient, why + " (unrecognised code)", std::nullopt};
  }

  Outcome read_business_token(HttpResponse& r, const Secret& old) const {
    auto reply = providers::json_reply(r, kBizRefresh, clock_.now());
    if (reply.failure) return providers::failed(Operation::kRefresh, std::move(*reply.failure));
    nlohmann::json& doc = *reply.json;
    if (auto f = business_error(r, doc, kBizRefresh, {&old, &business_secret_})) {
      return providers::failed(Operation::kRefresh, std::move(*f));
    }
    auto it = doc.find("data");
    if (it == doc.end() || !it->is_object()) {
      return providers::failed(Operation::kRefresh,
                               providers::malformed(r, kBizRefresh, "no data"));
    }
    return token_pair(r, *it, kBizRefresh, "refresh_token_expires_in");
  }

  Outcome read_business_info(HttpResponse& r, const Secret& access) const {
    auto reply = providers::json_reply(r, kBizInfo, clock_.now());
    if (reply.failure) return providers::failed(Operation::kCheck, std::move(*reply.failure));
    if (auto f = business_error(r, *reply.json, kBizInfo, {&access, &business_secret_})) {
      Outcome o = providers::failed(Operation::kCheck, std::move(*f));
      // 40105: "permanent, or refresh first" [L]: renew once before believing it.
      o.renew_and_retry = o.failure.error_class == ErrorClass::kRevoked;
      return o;
    }
    return Outcome::success(Operation::kCheck);
  }

  // A new token pair from `data` (the v2 reply, or the Business `data` object), wiping the JSON's
  // copies as it takes them.
  Outcome token_pair(const HttpResponse& r, nlohmann::json& data, std::string_view endpoint,
                     const char* refresh_expiry_field) const {
    const SysTime now = clock_.now();
    TokenSecrets fresh;
    fresh.access_token = providers::take_secret(data, "access_token");
    fresh.refresh_token = providers::take_secret(data, "refresh_token");
    if (fresh.access_token.empty()) {
      // A rotated refresh token alone is still kept: the old one may be dead already.
      Outcome o = providers::failed(Operation::kRefresh,
                                    providers::malformed(r, endpoint, "no access_token"));
      if (!fresh.refresh_token.empty()) o.secrets = std::move(fresh);
      return o;
    }
    Outcome o = Outcome::success(Operation::kRefresh);
    if (!fresh.refresh_token.empty()) o.note = "refresh token rotated";
    if (auto in = providers::int_field(data, "expires_in"); in && *in > 0) {
      o.expires_at = now + Seconds{*in};
    }
    if (auto in = providers::int_field(data, refresh_expiry_field); in && *in > 0) {
      o.refresh_expires_at = now + Seconds{*in};
    }
    if (auto scope = providers::string_field(data, "scope"); !scope.empty()) o.scopes = scope;
    o.secrets = std::move(fresh);
    return o;
  }

  TikTokConfig config_;
  Secret client_secret_;
  Secret business_secret_;
  HttpTransport& http_;
  const Clock& clock_;
};

}  // namespace

Result<std::unique_ptr<ProviderClient>> make_tiktok_client(const TikTokConfig& config,
                                                           HttpTransport& http,
                                                           const Clock& clock) {
  auto secret = providers::resolve_secret(config.client_secret, "providers.tiktok.client_secret");
  if (!secret) return secret.error();
  auto business =
      providers::resolve_secret(config.business_app_secret, "providers.tiktok.business_app_secret");
  if (!business) return business.error();
  return std::unique_ptr<ProviderClient>(std::make_unique<TikTokClient>(
      config, std::move(*secret), std::move(*business), http, clock));
}

}  // namespace tw
