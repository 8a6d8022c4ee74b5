// TikTok: Login Kit / Open API v2 refresh tokens and API for Business tokens (providers.md 3).
//
// v2 (kind refresh_token): POST {open_api}/v2/oauth/token/ with the refresh token; it ROTATES: the
// previous refresh token stops working once a new one is issued [V], so the new pair must be
// committed before anything else. The check calls /v2/user/info/; access_token_invalid means
// "refresh once; if that fails, permanent" [V]; an expired access token is renewed first.
// Business (kind business_token): POST {business_api}/open_api/v1.3/tt_user/oauth2/refresh_token/
// with a JSON body [L]; errors come with HTTP 200 and code != 0 [L]: 40105 the token is revoked,
// 40100 rate limiting [U], 40101 a bad app id or secret [L]. The check introspects the token with
// /tt_user/token_info/get/ [L].
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
constexpr Seconds kExpirySlack{60};
constexpr std::int64_t kBizRevoked = 40105;
constexpr std::int64_t kBizRateLimited = 40100;  // one SDK's reading; other lists disagree [U]
constexpr std::int64_t kBizBadApp = 40101;

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

  void refresh(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    if (token.kind == TokenKind::kRefreshToken)
      return v2_refresh(secrets.refresh_token, std::move(done));
    if (token.kind == TokenKind::kBusinessToken) {
      return business_refresh(secrets.refresh_token, std::move(done));
    }
    done(Outcome::failed(
        Operation::kRefresh, ErrorClass::kConfiguration,
        "tiktok " + std::string(to_string(token.kind)) + " tokens are not renewed"));
  }

  void check(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    if (token.kind == TokenKind::kBusinessToken) {
      return business_info(secrets.access_token, std::move(done));
    }
    if (token.kind != TokenKind::kRefreshToken) {
      return done(Outcome::failed(
          Operation::kCheck, ErrorClass::kConfiguration,
          "no health check for tiktok " + std::string(to_string(token.kind)) + " tokens yet"));
    }
    const bool expired = secrets.access_token.empty() || !token.expires_at ||
                         *token.expires_at <= clock_.now() + kExpirySlack;
    if (expired) return renew_then_user_info(secrets.refresh_token, std::move(done));
    user_info(secrets.access_token, /*fresh=*/false, secrets.refresh_token,
              Outcome::success(Operation::kCheck), std::move(done));
  }

 private:
  // --- Open API v2 -------------------------------------------------------------------------------

  void v2_refresh(const Secret& refresh_token, Done done) {
    HttpRequest req = providers::post_form(config_.open_api_base_url + "/v2/oauth/token/",
                                           {Param{"client_key", config_.client_key},
                                            Param{"client_secret", client_secret_.reveal(), true},
                                            Param{"grant_type", "refresh_token"},
                                            Param{"refresh_token", refresh_token.reveal(), true}});
    http_.send(std::move(req),
               [this, old = Secret(refresh_token), done = std::move(done)](HttpResponse r) {
                 Outcome o = read_v2_token(r, old);
                 providers::wipe_body(r);
                 done(std::move(o));
               });
  }

  Outcome read_v2_token(HttpResponse& r, const Secret& old) const {
    const SysTime now = clock_.now();
    if (auto f = providers::transport_failure(r, kV2Token))
      return providers::failed(Operation::kRefresh, *f);
    auto doc = providers::parse_json(r.body);
    if (!doc || !doc->is_object()) {
      if (r.status == 429 || r.status >= 500) {
        return providers::failed(Operation::kRefresh,
                                 providers::http_status_failure(r, kV2Token, now));
      }
      return providers::failed(Operation::kRefresh,
                               providers::malformed(r, kV2Token, "not a JSON object"));
    }
    // OAuth errors: {"error": "invalid_grant", "error_description": ..}; their HTTP status is [U].
    if (auto error = providers::string_field(*doc, "error"); !error.empty()) {
      const std::string why = error + ": " +
                              providers::scrub(providers::string_field(*doc, "error_description"),
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
    if (r.status == 429 || r.status >= 500) {
      return providers::failed(Operation::kRefresh,
                               providers::http_status_failure(r, kV2Token, now));
    }
    return token_pair(r, *doc, kV2Token, "refresh_expires_in");
  }

  // A new token pair from `data` (v2 reply or Business `data`).
  Outcome token_pair(const HttpResponse& r, nlohmann::json& data, std::string_view endpoint,
                     const char* refresh_expiry_field) const {
    const SysTime now = clock_.now();
    TokenSecrets fresh;
    fresh.access_token = providers::take_secret(data, "access_token");
    fresh.refresh_token = providers::take_secret(data, "refresh_token");
    if (fresh.access_token.empty()) {
      // A rotated refresh token alone is still worth keeping: the old one may be dead already.
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

  void renew_then_user_info(const Secret& refresh_token, Done done) {
    v2_refresh(refresh_token, [this, done = std::move(done)](Outcome renewed) mutable {
      renewed.op = Operation::kCheck;
      if (!renewed.ok) return done(std::move(renewed));
      const Secret access = renewed.secrets->access_token;
      const Secret refresh = renewed.secrets->refresh_token;
      user_info(access, /*fresh=*/true, refresh, std::move(renewed), std::move(done));
    });
  }

  // GET /v2/user/info/. `so_far` may carry renewed secrets, kept whatever this call says.
  void user_info(const Secret& access, bool fresh, const Secret& refresh, Outcome so_far,
                 Done done) {
    HttpRequest req = providers::get(config_.open_api_base_url + "/v2/user/info/",
                                     {Param{"fields", "open_id,display_name"}});
    providers::add_bearer(req, access);
    http_.send(std::move(req), [this, fresh, access = Secret(access), refresh = Secret(refresh),
                                so_far = std::move(so_far),
                                done = std::move(done)](HttpResponse r) mutable {
      const SysTime now = clock_.now();
      auto fail = [&so_far](Failure f) {
        so_far.ok = false;
        so_far.failure = std::move(f);
        return std::move(so_far);
      };
      if (auto f = providers::transport_failure(r, kV2UserInfo)) return done(fail(*f));
      auto doc = providers::parse_json(r.body);
      providers::wipe_body(r);
      const nlohmann::json error =
          doc && doc->is_object() ? doc->value("error", nlohmann::json()) : nlohmann::json();
      const std::string code = providers::string_field(error, "code");
      if (code == "ok" && r.status == 200) {
        so_far.ok = true;
        return done(std::move(so_far));
      }
      const std::string why =
          std::string(kV2UserInfo) + ": " + code + " " +
          providers::scrub(providers::string_field(error, "message"), {&access, &refresh});
      if (code == "access_token_invalid") {
        if (fresh) return done(fail(Failure{ErrorClass::kPermanent, why, std::nullopt}));
        return renew_then_user_info(refresh, std::move(done));  // refresh once [V]
      }
      if (code == "scope_not_authorized" || code == "scope_permission_missed") {
        return done(fail(Failure{ErrorClass::kPermanent, why, std::nullopt}));
      }
      if (code == "rate_limit_exceeded" || code == "internal_error" || r.status == 429 ||
          r.status >= 500) {
        Failure f = providers::http_status_failure(r, kV2UserInfo, now);
        f.message = why + " (HTTP " + std::to_string(r.status) + ")";
        return done(fail(std::move(f)));
      }
      if (code.empty()) return done(fail(providers::malformed(r, kV2UserInfo, "no error.code")));
      done(fail(Failure{ErrorClass::kConfiguration, why, std::nullopt}));  // invalid_params etc.
    });
  }

  // --- API for Business ------------------------------------------------------------------------

  std::string business_url(std::string_view path) const {
    return config_.business_api_base_url + "/open_api/v1.3" + std::string(path);
  }

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

  void business_refresh(const Secret& refresh_token, Done done) {
    nlohmann::json body{{"client_id", config_.business_app_id},
                        {"client_secret", std::string(business_secret_.reveal())},
                        {"grant_type", "refresh_token"},
                        {"refresh_token", std::string(refresh_token.reveal())}};
    HttpRequest req = providers::post_json(business_url("/tt_user/oauth2/refresh_token/"), body);
    providers::take_secret(body, "client_secret");
    providers::take_secret(body, "refresh_token");
    http_.send(std::move(req),
               [this, old = Secret(refresh_token), done = std::move(done)](HttpResponse r) {
                 Outcome o = read_business_token(r, old);
                 providers::wipe_body(r);
                 done(std::move(o));
               });
  }

  Outcome read_business_token(HttpResponse& r, const Secret& old) const {
    if (auto f = providers::transport_failure(r, kBizRefresh)) {
      return providers::failed(Operation::kRefresh, *f);
    }
    auto doc = providers::parse_json(r.body);
    if (!doc || !doc->is_object()) {
      if (r.status == 429 || r.status >= 500) {
        return providers::failed(Operation::kRefresh,
                                 providers::http_status_failure(r, kBizRefresh, clock_.now()));
      }
      return providers::failed(Operation::kRefresh,
                               providers::malformed(r, kBizRefresh, "not a JSON object"));
    }
    if (auto f = business_error(r, *doc, kBizRefresh, {&old, &business_secret_})) {
      return providers::failed(Operation::kRefresh, *f);
    }
    auto data = doc->value("data", nlohmann::json());
    if (!data.is_object()) {
      return providers::failed(Operation::kRefresh,
                               providers::malformed(r, kBizRefresh, "no data"));
    }
    Outcome o = token_pair(r, data, kBizRefresh, "refresh_token_expires_in");
    providers::take_secret((*doc)["data"], "access_token");
    providers::take_secret((*doc)["data"], "refresh_token");
    return o;
  }

  void business_info(const Secret& access, Done done) {
    nlohmann::json body{{"app_id", config_.business_app_id},
                        {"access_token", std::string(access.reveal())}};
    HttpRequest req = providers::post_json(business_url("/tt_user/token_info/get/"), body);
    providers::take_secret(body, "access_token");
    http_.send(
        std::move(req), [this, access = Secret(access), done = std::move(done)](HttpResponse r) {
          Outcome o = Outcome::success(Operation::kCheck);
          auto doc = providers::parse_json(r.body);
          if (auto f = providers::transport_failure(r, kBizInfo)) {
            o = providers::failed(Operation::kCheck, *f);
          } else if (!doc || !doc->is_object()) {
            o = providers::failed(Operation::kCheck,
                                  r.status == 429 || r.status >= 500
                                      ? providers::http_status_failure(r, kBizInfo, clock_.now())
                                      : providers::malformed(r, kBizInfo, "not a JSON object"));
          } else if (auto f = business_error(r, *doc, kBizInfo, {&access, &business_secret_})) {
            o = providers::failed(Operation::kCheck, *f);
          }
          providers::wipe_body(r);
          done(std::move(o));
        });
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
  auto secret = config.client_secret.resolve();
  if (!secret) {
    return Error(Errc::kConfig, "providers.tiktok.client_secret: " + secret.error().message());
  }
  auto business = config.business_app_secret.resolve();
  if (!business) {
    return Error(Errc::kConfig,
                 "providers.tiktok.business_app_secret: " + business.error().message());
  }
  return std::unique_ptr<ProviderClient>(std::make_unique<TikTokClient>(
      config, std::move(*secret), std::move(*business), http, clock));
}

}  // namespace tw
