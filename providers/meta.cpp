// Meta: Facebook Login long-lived tokens and Page tokens (providers.md section 1).
//
// Renewal, weekly: exchange the long-lived user token again (fb_exchange_token), which yields a
// fresh ~60-day user token while the old one is still valid [V]; then, for a Page token, read the
// Page's token with the new user token (GET /{page-id}?fields=access_token [L]). A Page token
// derived from a long-lived user token does not expire [L]. The user token is the Page token's
// refresh secret. When the exchange omits expires_in [L], debug_token tells the expiry.
// Check: debug_token with the app token. A revoked or expired token is HTTP 200 with
// is_valid:false and data.error {code 190, subcode} [U].
// Errors (providers.md): 190 and its subcodes, 102, 10 and 200-299 need re-authorisation (458,
// the app removed by the user, and 492, the Page role lost, are reported as revoked); 1, 2, 4, 17,
// 32, 341, 368, 613 and 80001 are transient; rate limits also slow the whole provider down, as do
// usage headers at 80% or more (X-App-Usage, X-Business-Use-Case-Usage) [L].
#include <algorithm>
#include <memory>
#include <utility>

#include "providers/common.h"
#include "providers/provider.h"

namespace tw {

namespace {

using providers::Param;

constexpr std::string_view kExchange = "meta token exchange";
constexpr std::string_view kPage = "meta page token";
constexpr std::string_view kDebug = "meta debug_token";
// Warn when data access or the token itself ends within this long: the user must log in again.
constexpr Seconds kReauthWarning = std::chrono::days(7);

// The busiest of Meta's usage figures (percent) in a response, and the wait it asks for.
struct Usage {
  int percent = 0;
  std::optional<Seconds> regain;
};

Usage read_usage(const HttpResponse& r) {
  Usage u;
  auto take = [&u](const nlohmann::json& o) {
    for (const char* k : {"call_count", "total_cputime", "total_time"}) {
      if (auto v = providers::int_field(o, k))
        u.percent = std::max(u.percent, static_cast<int>(*v));
    }
    if (auto m = providers::int_field(o, "estimated_time_to_regain_access"); m && *m > 0) {
      u.regain = std::max(u.regain.value_or(Seconds{0}), Seconds{*m * 60});
    }
  };
  if (auto it = r.headers.find("x-app-usage"); it != r.headers.end()) {
    if (auto j = providers::parse_json(it->second)) take(*j);
  }
  if (auto it = r.headers.find("x-business-use-case-usage"); it != r.headers.end()) {
    if (auto j = providers::parse_json(it->second); j && j->is_object()) {
      for (const auto& [id, entries] : j->items()) {
        if (!entries.is_array()) continue;
        for (const auto& e : entries)
          take(e);
      }
    }
  }
  return u;
}

// How long the whole provider should pause, from the usage headers.
std::optional<Seconds> throttle_for(const Usage& u) {
  if (u.regain) return u.regain;
  if (u.percent >= 100) return Seconds{600};
  if (u.percent >= 80) return Seconds{60};  // back off from about 80% [L]
  return std::nullopt;
}

bool rate_limit_code(std::int64_t code) {
  return code == 4 || code == 17 || code == 32 || code == 341 || code == 368 || code == 613 ||
         code == 80001;
}

// Classifies a Meta error object {"message","type","code","error_subcode"}.
Failure classify_error(const nlohmann::json& error, std::string_view endpoint,
                       std::initializer_list<const Secret*> secrets) {
  const std::int64_t code = providers::int_field(error, "code").value_or(0);
  const std::int64_t subcode = providers::int_field(error, "error_subcode")
                                   .value_or(providers::int_field(error, "subcode").value_or(0));
  std::string why = std::string(endpoint) + ": Meta error " + std::to_string(code) +
                    (subcode != 0 ? "/" + std::to_string(subcode) : "") + ": " +
                    providers::scrub(providers::string_field(error, "message"), secrets);
  if (code == 190 || code == 102 || code == 10 || (code >= 200 && code <= 299)) {
    // 458: the user removed the app; 492: the Page role is gone [U]. Both are a revocation.
    const bool revoked = subcode == 458 || subcode == 492;
    return Failure{revoked ? ErrorClass::kRevoked : ErrorClass::kPermanent, why, std::nullopt};
  }
  if (code == 1 || code == 2 || rate_limit_code(code)) {
    return Failure{ErrorClass::kTransient, why, std::nullopt};
  }
  if (code == 101) return Failure{ErrorClass::kConfiguration, why, std::nullopt};  // bad app [U]
  return Failure{ErrorClass::kTransient, why + " (unrecognised code)", std::nullopt};
}

class MetaClient final : public ProviderClient {
 public:
  MetaClient(const MetaConfig& config, Secret app_secret, HttpTransport& http, const Clock& clock)
      : config_(config), app_secret_(std::move(app_secret)), http_(http), clock_(clock) {
    std::string app_token = config_.app_id + "|";
    app_token += app_secret_.reveal();
    app_token_ = Secret::take(app_token);
  }

  Provider provider() const override { return Provider::kMeta; }

  // An exchange issues a new long-lived token; the one sent stays valid until it expires.
  bool renewal_rotates(const TokenRecord&) const override { return false; }

  int requests(Operation op, const TokenRecord& token) const override {
    // A Page renewal exchanges the user token, then reads the Page token.
    return op == Operation::kRefresh && token.kind == TokenKind::kPageToken ? 2 : 1;
  }

  void refresh(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    done = providers::masking(std::move(done),
                              {secrets.access_token, secrets.refresh_token, app_secret_});
    const bool page = token.kind == TokenKind::kPageToken;
    if (!page && token.kind != TokenKind::kUserToken) {
      return done(Outcome::failed(
          Operation::kRefresh, ErrorClass::kConfiguration,
          "meta " + std::string(to_string(token.kind)) + " tokens are not renewed"));
    }
    const Secret& user_token = page ? secrets.refresh_token : secrets.access_token;
    exchange(user_token,
             [this, page, page_id = token.account_id, done = std::move(done)](Outcome o) mutable {
               if (!o.ok || !page) return done(std::move(o));
               // The new user token is kept whatever happens next: it is the Page token's refresh
               // secret.
               TokenSecrets fresh;
               fresh.refresh_token = std::move(o.secrets->access_token);
               o.refresh_expires_at = o.expires_at;
               o.expires_at.reset();
               o.secrets = std::move(fresh);
               page_token(page_id, std::move(o), std::move(done));
             });
  }

  void check(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    done = providers::masking(std::move(done),
                              {secrets.access_token, secrets.refresh_token, app_secret_});
    (void)token;  // debug_token judges any kind of token by itself
    if (secrets.access_token.empty()) {
      return done(Outcome::failed(Operation::kCheck, ErrorClass::kPermanent,
                                  "no access token stored to check"));
    }
    debug_token(secrets.access_token, [done = std::move(done)](Outcome o) mutable {
      o.op = Operation::kCheck;
      done(std::move(o));
    });
  }

 private:
  std::string url(std::string_view path) const {
    return config_.graph_base_url + "/" + config_.api_version + std::string(path);
  }

  // Who a top-level error object speaks about.
  enum class ErrorsAbout { kToken, kApp };

  // Common handling of a Graph reply: transport failures, usage headers, error objects, and the
  // JSON body on success. Returns the body, or sets `failed`. On debug_token, a top-level error
  // is about our app token (the customer's token is judged by data.is_valid): kApp makes it a
  // configuration failure, never the customer's revocation.
  std::optional<nlohmann::json> read(HttpResponse& r, std::string_view endpoint, Outcome& failed,
                                     std::initializer_list<const Secret*> secrets,
                                     ErrorsAbout about = ErrorsAbout::kToken) const {
    failed.throttle = throttle_for(read_usage(r));
    if (auto f = providers::transport_failure(r, endpoint)) {
      failed.ok = false;
      failed.failure = *f;
      return std::nullopt;
    }
    auto doc = providers::parse_json(r.body);
    if (doc && doc->is_object() && doc->contains("error") && (*doc)["error"].is_object()) {
      failed.ok = false;
      failed.failure = classify_error((*doc)["error"], endpoint, secrets);
      if (about == ErrorsAbout::kApp && (failed.failure.error_class == ErrorClass::kPermanent ||
                                         failed.failure.error_class == ErrorClass::kRevoked)) {
        failed.failure.error_class = ErrorClass::kConfiguration;
        failed.failure.message += " (the app token was refused: check app_id and app_secret)";
      }
      if (rate_limit_code(providers::int_field((*doc)["error"], "code").value_or(0)) &&
          !failed.throttle) {
        failed.throttle = Seconds{300};  // a rate limit with no usage hint: pause five minutes
      }
      failed.failure.retry_after = failed.throttle;
      return std::nullopt;
    }
    if (r.status == 429 || r.status >= 500) {
      failed.ok = false;
      failed.failure = providers::http_status_failure(r, endpoint, clock_.now());
      return std::nullopt;
    }
    if (!doc || !doc->is_object() || r.status != 200) {
      failed.ok = false;
      failed.failure = providers::malformed(r, endpoint, "expected a JSON object");
      return std::nullopt;
    }
    return doc;
  }

  // fb_exchange_token: `done` gets a kRefresh outcome whose access_token is the new user token.
  void exchange(const Secret& user_token, Done done) {
    HttpRequest req = providers::get(
        url("/oauth/access_token"),
        {Param{"grant_type", "fb_exchange_token"}, Param{"client_id", config_.app_id},
         Param{"client_secret", app_secret_.reveal(), true},
         Param{"fb_exchange_token", user_token.reveal(), true}});
    req.once = true;  // a renewal
    http_.send(std::move(req), [this, old = Secret(user_token),
                                done = std::move(done)](HttpResponse r) mutable {
      providers::WipeBodyOnExit wipe(r);
      Outcome o = Outcome::success(Operation::kRefresh);
      auto doc = read(r, kExchange, o, {&old, &app_secret_});
      if (!doc) return done(std::move(o));
      Secret fresh = providers::take_secret(*doc, "access_token");
      if (fresh.empty()) {
        o.ok = false;
        o.failure = providers::malformed(r, kExchange, "no access_token");
        return done(std::move(o));
      }
      o.secrets = TokenSecrets{std::move(fresh), Secret()};
      if (auto in = providers::int_field(*doc, "expires_in"); in && *in > 0) {
        o.expires_at = clock_.now() + Seconds{*in};
        return done(std::move(o));
      }
      // No expires_in [L]: ask debug_token about the new token.
      Secret probe = o.secrets->access_token;
      debug_token(probe, [o = std::move(o), done = std::move(done)](Outcome checked) mutable {
        if (checked.ok) o.expires_at = checked.expires_at;
        done(std::move(o));
      });
    });
  }

  // GET /{page-id}?fields=access_token with the (new) user token. `so_far` carries the new user
  // token, which is kept even if this step fails.
  void page_token(const std::string& page_id, Outcome so_far, Done done) {
    const Secret user = so_far.secrets->refresh_token;
    HttpRequest req = providers::get(
        url("/" + providers_url_part(page_id)),
        {Param{"fields", "access_token"}, Param{"access_token", user.reveal(), true}});
    http_.send(std::move(req), [this, user, so_far = std::move(so_far),
                                done = std::move(done)](HttpResponse r) mutable {
      providers::WipeBodyOnExit wipe(r);
      Outcome step = Outcome::success(Operation::kRefresh);
      auto doc = read(r, kPage, step, {&user, &app_secret_});
      if (step.throttle && (!so_far.throttle || *step.throttle > *so_far.throttle)) {
        so_far.throttle = step.throttle;
      }
      if (!doc) {
        so_far.ok = false;
        so_far.failure = std::move(step.failure);
        return done(std::move(so_far));
      }
      Secret page = providers::take_secret(*doc, "access_token");
      if (page.empty()) {
        so_far.ok = false;
        // The Page answered without a token: the user lost the role that grants one [L]. Any
        // other reply without a token (an empty object from a proxy) proves nothing.
        so_far.failure = doc->contains("id")
                             ? Failure{ErrorClass::kPermanent,
                                       std::string(kPage) +
                                           ": the Page gives this user no access_token (is "
                                           "the user still an admin of it?)",
                                       std::nullopt}
                             : providers::malformed(r, kPage, "no id and no access_token");
        return done(std::move(so_far));
      }
      so_far.secrets->access_token = std::move(page);
      done(std::move(so_far));
    });
  }

  // debug_token: `done` gets a kRefresh-labelled outcome (callers relabel) with expires_at set
  // from data.expires_at when non-zero.
  void debug_token(const Secret& input, Done done) {
    HttpRequest req =
        providers::get(url("/debug_token"), {Param{"input_token", input.reveal(), true},
                                             Param{"access_token", app_token_.reveal(), true}});
    http_.send(std::move(req), [this, input = Secret(input),
                                done = std::move(done)](HttpResponse r) mutable {
      providers::WipeBodyOnExit wipe(r);
      Outcome o = Outcome::success(Operation::kRefresh);
      auto doc = read(r, kDebug, o, {&input, &app_secret_}, ErrorsAbout::kApp);
      if (!doc) return done(std::move(o));
      const nlohmann::json& data = doc->value("data", nlohmann::json());
      if (!data.is_object() || !data.contains("is_valid") || !data["is_valid"].is_boolean()) {
        o.ok = false;
        o.failure = providers::malformed(r, kDebug, "no boolean data.is_valid");
        return done(std::move(o));
      }
      if (!data.value("is_valid", false)) {
        const nlohmann::json& error = data.value("error", nlohmann::json::object());
        o.ok = false;
        o.failure = error.is_object() && error.contains("code")
                        ? classify_error(error, kDebug, {&input, &app_secret_})
                        : Failure{ErrorClass::kPermanent, std::string(kDebug) + ": is_valid false",
                                  std::nullopt};
        return done(std::move(o));
      }
      const SysTime now = clock_.now();
      if (auto at = providers::int_field(data, "expires_at"); at && *at > 0) {
        o.expires_at = from_unix(*at);
      }
      auto soon = [&](std::optional<std::int64_t> at) {
        return at && *at > 0 && from_unix(*at) < now + kReauthWarning;
      };
      if (soon(providers::int_field(data, "data_access_expires_at"))) {
        o.note = "needs re-auth soon: data access expires " +
                 format_time(from_unix(*providers::int_field(data, "data_access_expires_at")));
      } else if (o.expires_at && *o.expires_at < now + kReauthWarning) {
        o.note = "needs re-auth soon: the token expires " + format_time(*o.expires_at);
      }
      done(std::move(o));
    });
  }

  // A Page id as a path segment (ids are digits; anything else is encoded).
  static std::string providers_url_part(const std::string& id) { return url_encode(id); }

  MetaConfig config_;
  Secret app_secret_;
  Secret app_token_;  // "{app-id}|{app-secret}"
  HttpTransport& http_;
  const Clock& clock_;
};

}  // namespace

Result<std::unique_ptr<ProviderClient>> make_meta_client(const MetaConfig& config,
                                                         HttpTransport& http, const Clock& clock) {
  auto secret = providers::resolve_secret(config.app_secret, "providers.meta.app_secret");
  if (!secret) return secret.error();
  return std::unique_ptr<ProviderClient>(
      std::make_unique<MetaClient>(config, std::move(*secret), http, clock));
}

}  // namespace tw
