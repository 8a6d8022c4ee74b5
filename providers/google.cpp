// Google OAuth 2.0 and Business Profile (providers.md section 2).
//
// Renewal: the refresh_token grant at {oauth_base_url}/token. Google normally returns no new
// refresh token and the old one stays valid [L]; one that does come back replaces it.
// Check: tokeninfo cannot see a revoked refresh token, so the worker renews the one-hour access
// token when it has expired (renew_before_check: that renewal is what proves the grant alive),
// then the check calls the Business Profile accounts list with it. invalid_grant, or 401 with a
// token just issued, means revoked; a 401 with an older token asks for one renewal and a retry.
#include <memory>
#include <utility>

#include "providers/common.h"
#include "providers/provider.h"

namespace tw {

namespace {

using providers::Param;

constexpr std::string_view kTokenEndpoint = "google token endpoint";
constexpr std::string_view kAccountsEndpoint = "google accounts API";

class GoogleClient final : public ProviderClient {
 public:
  GoogleClient(const GoogleConfig& config, Secret client_secret, HttpTransport& http,
               const Clock& clock)
      : config_(config), client_secret_(std::move(client_secret)), http_(http), clock_(clock) {}

  Provider provider() const override { return Provider::kGoogle; }

  bool renew_before_check(const TokenRecord& token, const TokenSecrets& secrets) const override {
    return token.kind == TokenKind::kRefreshToken &&
           providers::access_token_stale(token, secrets, clock_.now());
  }

  void refresh(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    done = providers::masking(std::move(done),
                              {secrets.access_token, secrets.refresh_token, client_secret_});
    if (token.kind != TokenKind::kRefreshToken) {
      return done(Outcome::failed(
          Operation::kRefresh, ErrorClass::kConfiguration,
          "google " + std::string(to_string(token.kind)) + " tokens are not renewed"));
    }
    HttpRequest req =
        providers::post_form(config_.oauth_base_url + "/token",
                             {Param{"client_id", config_.client_id},
                              Param{"client_secret", client_secret_.reveal(), true},
                              Param{"grant_type", "refresh_token"},
                              Param{"refresh_token", secrets.refresh_token.reveal(), true}});
    req.once = true;  // a returned refresh token replaces the old one: never sent twice
    http_.send(std::move(req),
               [this, old = Secret(secrets.refresh_token), done = std::move(done)](HttpResponse r) {
                 Outcome o = read_grant(r, old);
                 providers::wipe_body(r);
                 done(std::move(o));
               });
  }

  void check(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    done = providers::masking(std::move(done),
                              {secrets.access_token, secrets.refresh_token, client_secret_});
    if (token.kind != TokenKind::kRefreshToken) {
      return done(Outcome::failed(
          Operation::kCheck, ErrorClass::kConfiguration,
          "no health check for google " + std::string(to_string(token.kind)) + " tokens"));
    }
    HttpRequest req =
        providers::get(config_.business_base_url + "/v1/accounts", {Param{"pageSize", "1"}});
    providers::add_bearer(req, secrets.access_token);
    http_.send(std::move(req), [this, access = Secret(secrets.access_token),
                                done = std::move(done)](HttpResponse r) {
      Outcome o = read_accounts(r, access);
      providers::wipe_body(r);
      done(std::move(o));
    });
  }

 private:
  Outcome read_grant(HttpResponse& r, const Secret& refresh) const {
    const SysTime now = clock_.now();
    auto reply = providers::json_reply(r, kTokenEndpoint, now);
    if (reply.failure) return providers::failed(Operation::kRefresh, std::move(*reply.failure));
    nlohmann::json& doc = *reply.json;
    if (doc.contains("error")) {
      const std::string error = providers::string_field(doc, "error");
      const std::string why = error + ": " +
                              providers::scrub(providers::string_field(doc, "error_description"),
                                               {&refresh, &client_secret_});
      if (error == "invalid_grant") {
        // Revoked, unused for six months, a Testing app past 7 days, or displaced [V].
        return Outcome::failed(Operation::kRefresh, ErrorClass::kRevoked, why);
      }
      if (error == "invalid_client" || error == "unauthorized_client") {
        return Outcome::failed(Operation::kRefresh, ErrorClass::kConfiguration,
                               std::string(kTokenEndpoint) + ": " + why);
      }
      if (r.status == 429 || r.status >= 500 || r.status == 200) {
        // Transient errors come as 429/5xx [U]; an error in a 200 body is treated the same.
        Failure f = providers::http_status_failure(r, kTokenEndpoint, now);
        f.message += " (" + why + ")";
        return providers::failed(Operation::kRefresh, std::move(f));
      }
      return Outcome::failed(
          Operation::kRefresh, ErrorClass::kConfiguration,
          std::string(kTokenEndpoint) + ": HTTP " + std::to_string(r.status) + " " + why);
    }
    if (r.status != 200) {
      return providers::failed(Operation::kRefresh,
                               providers::malformed(r, kTokenEndpoint, "no error field"));
    }
    TokenSecrets fresh;
    fresh.access_token = providers::take_secret(doc, "access_token");
    fresh.refresh_token = providers::take_secret(doc, "refresh_token");
    if (fresh.access_token.empty()) {
      Outcome o = providers::failed(Operation::kRefresh,
                                    providers::malformed(r, kTokenEndpoint, "no access_token"));
      if (!fresh.refresh_token.empty()) o.secrets = std::move(fresh);  // never drop a new one
      return o;
    }
    Outcome o = Outcome::success(Operation::kRefresh);
    if (!fresh.refresh_token.empty()) o.note = "refresh token rotated";
    // The access token lasts about an hour [V]; without expires_in, assume that.
    o.expires_at = now + Seconds{providers::int_field(doc, "expires_in").value_or(3600)};
    if (auto scope = providers::string_field(doc, "scope"); !scope.empty()) o.scopes = scope;
    o.secrets = std::move(fresh);
    return o;
  }

  Outcome read_accounts(HttpResponse& r, const Secret& access) const {
    const SysTime now = clock_.now();
    if (auto f = providers::transport_failure(r, kAccountsEndpoint)) {
      return providers::failed(Operation::kCheck, std::move(*f));
    }
    auto doc = providers::parse_json(r.body);
    const nlohmann::json error =
        doc && doc->is_object() ? doc->value("error", nlohmann::json()) : nlohmann::json();
    const std::string why = std::string(kAccountsEndpoint) + ": HTTP " + std::to_string(r.status) +
                            " " + providers::string_field(error, "status") + " " +
                            providers::scrub(providers::string_field(error, "message"), {&access});
    if (r.status == 401) {
      // UNAUTHENTICATED: revoked, unless a fresh access token fixes it [V].
      Outcome o = Outcome::failed(Operation::kCheck, ErrorClass::kRevoked, why);
      o.renew_and_retry = true;
      return o;
    }
    if (r.status == 403) {
      // PERMISSION_DENIED is [U]: Google also answers 403 for problems on our side (an API not
      // enabled, billing), so it is not taken as the customer's revocation.
      return Outcome::failed(Operation::kCheck, ErrorClass::kConfiguration, why);
    }
    if (r.status == 429 || r.status >= 500) {
      return providers::failed(Operation::kCheck,
                               providers::http_status_failure(r, kAccountsEndpoint, now));
    }
    if (r.status != 200 || !doc || !doc->is_object() || doc->contains("error")) {
      return providers::failed(
          Operation::kCheck,
          providers::malformed(r, kAccountsEndpoint, "expected an accounts list"));
    }
    return Outcome::success(Operation::kCheck);
  }

  GoogleConfig config_;
  Secret client_secret_;
  HttpTransport& http_;
  const Clock& clock_;
};

}  // namespace

Result<std::unique_ptr<ProviderClient>> make_google_client(const GoogleConfig& config,
                                                           HttpTransport& http,
                                                           const Clock& clock) {
  auto secret = providers::resolve_secret(config.client_secret, "providers.google.client_secret");
  if (!secret) return secret.error();
  return std::unique_ptr<ProviderClient>(
      std::make_unique<GoogleClient>(config, std::move(*secret), http, clock));
}

}  // namespace tw
