// Google OAuth 2.0 and Business Profile (providers.md section 2).
//
// Renewal: the refresh_token grant at {oauth_base_url}/token. Google normally returns no new
// refresh token and the old one stays valid [L]; one that does come back replaces it.
// Check: tokeninfo cannot see a revoked refresh token, so the check renews the one-hour access
// token when it has expired (which is what proves the grant alive) and then calls the Business
// Profile accounts list: invalid_grant, or 401 right after a renewal, means revoked.
#include <memory>
#include <utility>

#include "providers/common.h"
#include "providers/provider.h"

namespace tw {

namespace {

using providers::Param;

constexpr std::string_view kTokenEndpoint = "google token endpoint";
constexpr std::string_view kAccountsEndpoint = "google accounts API";
// An access token this close to its expiry is renewed before a check uses it.
constexpr Seconds kExpirySlack{60};

class GoogleClient final : public ProviderClient {
 public:
  GoogleClient(const GoogleConfig& config, Secret client_secret, HttpTransport& http,
               const Clock& clock)
      : config_(config), client_secret_(std::move(client_secret)), http_(http), clock_(clock) {}

  Provider provider() const override { return Provider::kGoogle; }

  void refresh(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    if (token.kind != TokenKind::kRefreshToken) {
      return done(Outcome::failed(
          Operation::kRefresh, ErrorClass::kConfiguration,
          "google " + std::string(to_string(token.kind)) + " tokens are not renewed"));
    }
    grant(secrets.refresh_token, std::move(done));
  }

  void check(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    if (token.kind != TokenKind::kRefreshToken) {
      return done(Outcome::failed(
          Operation::kCheck, ErrorClass::kConfiguration,
          "no health check for google " + std::string(to_string(token.kind)) + " tokens yet"));
    }
    const bool expired = !token.expires_at || *token.expires_at <= clock_.now() + kExpirySlack ||
                         secrets.access_token.empty();
    if (!expired) {
      return list_accounts(secrets.access_token, /*fresh=*/false, secrets.refresh_token,
                           Outcome::success(Operation::kCheck), std::move(done));
    }
    renew_then_list(secrets.refresh_token, std::move(done));
  }

 private:
  // The refresh_token grant; `done` gets a kRefresh outcome.
  void grant(const Secret& refresh_token, Done done) {
    HttpRequest req = providers::post_form(config_.oauth_base_url + "/token",
                                           {Param{"client_id", config_.client_id},
                                            Param{"client_secret", client_secret_.reveal(), true},
                                            Param{"grant_type", "refresh_token"},
                                            Param{"refresh_token", refresh_token.reveal(), true}});
    http_.send(std::move(req),
               [this, refresh = Secret(refresh_token), done = std::move(done)](HttpResponse r) {
                 Outcome o = read_grant(r, refresh);
                 providers::wipe_body(r);
                 done(std::move(o));
               });
  }

  Outcome read_grant(HttpResponse& r, const Secret& refresh) const {
    const SysTime now = clock_.now();
    auto fail = [](Failure f) { return providers::failed(Operation::kRefresh, std::move(f)); };
    if (auto f = providers::transport_failure(r, kTokenEndpoint)) return fail(*f);
    auto doc = providers::parse_json(r.body);
    if (!doc || !doc->is_object()) {
      if (r.status == 429 || r.status >= 500) {
        return fail(providers::http_status_failure(r, kTokenEndpoint, now));
      }
      return fail(providers::malformed(r, kTokenEndpoint, "not a JSON object"));
    }
    if (doc->contains("error")) {
      const std::string error = providers::string_field(*doc, "error");
      const std::string why = error + ": " +
                              providers::scrub(providers::string_field(*doc, "error_description"),
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
        return fail(std::move(f));
      }
      return Outcome::failed(
          Operation::kRefresh, ErrorClass::kConfiguration,
          std::string(kTokenEndpoint) + ": HTTP " + std::to_string(r.status) + " " + why);
    }
    if (r.status != 200) return fail(providers::malformed(r, kTokenEndpoint, "no error field"));
    Secret access = providers::take_secret(*doc, "access_token");
    if (access.empty()) return fail(providers::malformed(r, kTokenEndpoint, "no access_token"));
    Outcome o = Outcome::success(Operation::kRefresh);
    TokenSecrets fresh;
    fresh.access_token = std::move(access);
    fresh.refresh_token = providers::take_secret(*doc, "refresh_token");
    if (!fresh.refresh_token.empty()) o.note = "refresh token rotated";
    // The access token lasts about an hour [V]; without expires_in, assume that.
    o.expires_at = now + Seconds{providers::int_field(*doc, "expires_in").value_or(3600)};
    if (auto scope = providers::string_field(*doc, "scope"); !scope.empty()) o.scopes = scope;
    o.secrets = std::move(fresh);
    return o;
  }

  // Renews the access token, then checks with it. The check's outcome carries the new secrets.
  void renew_then_list(const Secret& refresh_token, Done done) {
    grant(refresh_token,
          [this, refresh = Secret(refresh_token), done = std::move(done)](Outcome renewed) mutable {
            renewed.op = Operation::kCheck;
            if (!renewed.ok) return done(std::move(renewed));
            Secret access = renewed.secrets->access_token;
            list_accounts(access, /*fresh=*/true, refresh, std::move(renewed), std::move(done));
          });
  }

  // GET /v1/accounts?pageSize=1. `so_far` is the check outcome built up to here (it may carry
  // renewed secrets, which must be kept whatever the accounts call says).
  void list_accounts(const Secret& access, bool fresh, const Secret& refresh, Outcome so_far,
                     Done done) {
    HttpRequest req =
        providers::get(config_.business_base_url + "/v1/accounts", {Param{"pageSize", "1"}});
    providers::add_bearer(req, access);
    http_.send(std::move(req), [this, fresh, refresh = Secret(refresh), so_far = std::move(so_far),
                                done = std::move(done)](HttpResponse r) mutable {
      const SysTime now = clock_.now();
      auto keep = [&so_far](Failure f) {
        so_far.ok = false;
        so_far.failure = std::move(f);
        return std::move(so_far);
      };
      if (auto f = providers::transport_failure(r, kAccountsEndpoint)) return done(keep(*f));
      if (r.status == 401) {
        providers::wipe_body(r);
        if (fresh) {
          return done(keep(Failure{ErrorClass::kRevoked,
                                   "google accounts API: UNAUTHENTICATED with a token just issued",
                                   std::nullopt}));
        }
        // The stored access token was refused: renew it once and ask again.
        return renew_then_list(refresh, std::move(done));
      }
      if (r.status == 403) {
        auto doc = providers::parse_json(r.body);
        std::string why =
            doc ? providers::scrub(providers::string_field(
                                       doc->value("error", nlohmann::json::object()), "message"),
                                   {&refresh})
                : "";
        return done(keep(Failure{ErrorClass::kPermanent,
                                 "google accounts API: PERMISSION_DENIED " + why, std::nullopt}));
      }
      if (r.status == 429 || r.status >= 500) {
        return done(keep(providers::http_status_failure(r, kAccountsEndpoint, now)));
      }
      auto doc = providers::parse_json(r.body);
      if (r.status != 200 || !doc || !doc->is_object() || doc->contains("error")) {
        return done(keep(providers::malformed(r, kAccountsEndpoint, "expected an accounts list")));
      }
      so_far.ok = true;
      done(std::move(so_far));
    });
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
  auto secret = config.client_secret.resolve();
  if (!secret) {
    return Error(Errc::kConfig, "providers.google.client_secret: " + secret.error().message());
  }
  return std::unique_ptr<ProviderClient>(
      std::make_unique<GoogleClient>(config, std::move(*secret), http, clock));
}

}  // namespace tw
