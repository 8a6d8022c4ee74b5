// A provider defined in the configuration (providers.generic.NAME).
//
// type oauth2, a standards-compliant OAuth 2.0 server:
//   Renewal: the token endpoint (RFC 6749 section 6 refresh_token grant, or section 4.4
//   client_credentials grant), the client authenticated by client_secret_basic (HTTP Basic over
//   the form-urlencoded id and secret, section 2.3.1) or client_secret_post (both in the form).
//   Errors follow section 5.2: invalid_grant is the customer's grant gone (needs re-authorisation);
//   invalid_client, unauthorized_client, unsupported_grant_type, invalid_scope and invalid_request
//   are our configuration; temporarily_unavailable, server_error, 429 and 5xx are transient.
//   A client-credentials renewal may end the token it replaces: the worker commits the new one
//   before anything else and never sends the old one again. Such a renewal never leaves the token
//   "in doubt" (there is no grant to lose: asking again always works).
//   Check: RFC 7662 introspection, when introspection_url is set. For a refresh-token grant the
//   refresh token is introspected (it is the grant: an expired access token says nothing); for a
//   client-credentials token, the access token. "active": false is never taken on its own: the
//   worker renews and checks once more. A dead grant fails that renewal (invalid_grant: needs
//   re-authorisation); a token still inactive after a renewal that worked is reported revoked
//   (refresh grant) or a configuration problem (client credentials).
// type api_key: never renewed; checked with the configured probe request, the key in the
//   configured header. Its status decides: valid_status, revoked_status, 429/5xx transient, any
//   other malformed.
// Secrets (the client secret, keys, tokens, secret headers) go only in request bodies and
// headers; a provider's error text is scrubbed of every one of them.
#include <memory>
#include <utility>

#include <openssl/evp.h>

#include "providers/common.h"
#include "providers/provider.h"

namespace tw {

namespace {

using providers::Param;
using G = GenericProviderConfig;

// Standard base64 of `in` (for HTTP Basic).
std::string base64(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

struct Header {
  std::string name;
  Secret value;
};

class GenericClient final : public ProviderClient {
 public:
  GenericClient(const GenericProviderConfig& config, Secret client_secret,
                std::vector<Header> headers, HttpTransport& http, const Clock& clock)
      : config_(config),
        name_(std::string(to_string(config.provider))),
        client_secret_(std::move(client_secret)),
        headers_(std::move(headers)),
        http_(http),
        clock_(clock) {}

  Provider provider() const override { return config_.provider; }

  bool renew_before_check(const TokenRecord& token, const TokenSecrets& secrets) const override {
    return token.kind == TokenKind::kClientCredentials &&
           providers::access_token_stale(token, secrets, clock_.now());
  }

  bool renewal_rotates(const TokenRecord& token) const override {
    return token.kind == TokenKind::kRefreshToken;
  }

  void refresh(const TokenRecord& token, const TokenSecrets& secrets, Done done) override {
    done = masking(std::move(done), secrets);
    if (config_.type != G::Type::kOAuth2 || token.kind != config_.kind()) {
      return done(Outcome::failed(
          Operation::kRefresh, ErrorClass::kConfiguration,
          name_ + " " + std::string(to_string(token.kind)) + " tokens are not renewed"));
    }
    std::vector<Param> form;
    if (config_.grant == G::Grant::kRefreshToken) {
      form = {Param{"grant_type", "refresh_token"},
              Param{"refresh_token", secrets.refresh_token.reveal(), true}};
    } else {
      form = {Param{"grant_type", "client_credentials"}};
      if (!config_.scope.empty()) form.push_back(Param{"scope", config_.scope});
    }
    HttpRequest req = oauth_request(config_.token_url, std::move(form));
    // A refresh token may rotate and a client-credentials request may end the token before it:
    // never sent twice.
    req.once = true;
    const bool refresh_grant = config_.grant == G::Grant::kRefreshToken;
    http_.send(std::move(req), [this, refresh_grant, hide = all_secrets(secrets),
                                done = std::move(done)](HttpResponse r) {
      Outcome o = read_token(r, refresh_grant, hide);
      providers::wipe_body(r);
      done(std::move(o));
    });
  }

  void check(const TokenRecord& /*token*/, const TokenSecrets& secrets, Done done) override {
    done = masking(std::move(done), secrets);
    if (config_.type == G::Type::kApiKey) return probe(secrets, std::move(done));
    if (config_.introspection_url.empty()) {
      return done(
          Outcome::failed(Operation::kCheck, ErrorClass::kConfiguration,
                          "no introspection_url for " + name_ + ": tokens are not checked"));
    }
    const bool refresh_grant = config_.grant == G::Grant::kRefreshToken;
    const Secret& subject = refresh_grant ? secrets.refresh_token : secrets.access_token;
    HttpRequest req =
        oauth_request(config_.introspection_url,
                      {Param{"token", subject.reveal(), true},
                       Param{"token_type_hint", refresh_grant ? "refresh_token" : "access_token"}});
    http_.send(std::move(req), [this, refresh_grant, hide = all_secrets(secrets),
                                done = std::move(done)](HttpResponse r) {
      Outcome o = read_introspection(r, refresh_grant, hide);
      providers::wipe_body(r);
      done(std::move(o));
    });
  }

  bool can_revoke() const override {
    return config_.type == G::Type::kOAuth2 && !config_.revocation_url.empty();
  }

  void revoke(const TokenRecord& token, const TokenSecrets& secrets,
              std::function<void(Status)> done) override {
    if (!can_revoke()) {
      return done(Error(Errc::kConfig, "no revocation_url for " + name_));
    }
    // The refresh token ends the whole grant (RFC 7009 2.1); a client-credentials token has none.
    const bool by_refresh = !secrets.refresh_token.empty();
    const Secret& subject = by_refresh ? secrets.refresh_token : secrets.access_token;
    if (subject.empty()) return done(Error(Errc::kConfig, token.id + " holds no token to revoke"));
    HttpRequest req =
        oauth_request(config_.revocation_url,
                      {Param{"token", subject.reveal(), true},
                       Param{"token_type_hint", by_refresh ? "refresh_token" : "access_token"}});
    http_.send(std::move(req), [this, hide = all_secrets(secrets),
                                done = std::move(done)](HttpResponse r) {
      const std::string where = endpoint("revocation endpoint");
      Status result = Ok();
      if (auto f = providers::transport_failure(r, where)) {
        result = Error(Errc::kIo, f->message);
      } else if (r.status != 200) {
        // RFC 7009 2.2.1: an error body as in RFC 6749 5.2; 503 means try again later.
        auto doc = providers::parse_json(r.body);
        std::string why = where + ": HTTP " + std::to_string(r.status);
        if (doc && doc->is_object()) {
          why += " " + providers::string_field(*doc, "error") + " " +
                 providers::string_field(*doc, "error_description");
        }
        why = providers::scrub(why, hide);
        result = Error(r.status == 429 || r.status >= 500 ? Errc::kIo : Errc::kConfig, why);
      }
      providers::wipe_body(r);
      done(std::move(result));
    });
  }

 private:
  std::string endpoint(std::string_view what) const { return name_ + " " + std::string(what); }

  // Every secret a reply could echo back: the token's, the client secret, the header values.
  std::vector<Secret> all_secrets(const TokenSecrets& secrets) const {
    std::vector<Secret> hide{secrets.access_token, secrets.refresh_token, client_secret_};
    for (const Header& h : headers_)
      hide.push_back(h.value);
    return hide;
  }

  Done masking(Done done, const TokenSecrets& secrets) const {
    return providers::masking(std::move(done), all_secrets(secrets));
  }

  void add_headers(HttpRequest& req) const {
    for (const Header& h : headers_)
      req.headers.emplace_back(h.name, std::string(h.value.reveal()));
  }

  // A form POST to an OAuth endpoint, with client authentication and the configured headers.
  HttpRequest oauth_request(const std::string& url, std::vector<Param> form) const {
    if (config_.client_auth == G::ClientAuth::kPost) {
      form.push_back(Param{"client_id", config_.client_id});
      form.push_back(Param{"client_secret", client_secret_.reveal(), true});
    }
    HttpRequest req = providers::post_form(url, form);
    if (config_.client_auth == G::ClientAuth::kBasic) {
      // RFC 6749 2.3.1: both are form-urlencoded before they are joined and encoded.
      std::string pair = url_encode(config_.client_id);
      pair += ':';
      std::string secret = url_encode(client_secret_.reveal());
      pair += secret;
      wipe(secret);
      std::string value = "Basic " + base64(pair);
      wipe(pair);
      req.headers.emplace_back("Authorization", std::move(value));
    }
    req.headers.emplace_back("Accept", "application/json");
    add_headers(req);
    return req;
  }

  // An RFC 6749 5.2 error reply (or an error field in any reply), classified.
  Outcome oauth_error(const HttpResponse& r, Operation op, const nlohmann::json& doc,
                      std::string_view where, bool refresh_grant,
                      const std::vector<Secret>& hide) const {
    const SysTime now = clock_.now();
    const std::string error = providers::string_field(doc, "error");
    const std::string why =
        endpoint(where) + ": HTTP " + std::to_string(r.status) + " " + error + ": " +
        providers::scrub(providers::string_field(doc, "error_description"), hide);
    if (error == "invalid_grant") {
      // The refresh token is invalid, expired or revoked; a client-credentials request has no
      // grant to lose, so there it is our configuration.
      return Outcome::failed(
          op, refresh_grant ? ErrorClass::kPermanent : ErrorClass::kConfiguration, why);
    }
    if (error == "invalid_client" || error == "unauthorized_client" ||
        error == "unsupported_grant_type" || error == "invalid_scope" ||
        error == "invalid_request") {
      return Outcome::failed(op, ErrorClass::kConfiguration, why);
    }
    if (error == "temporarily_unavailable" || error == "server_error" || r.status == 429 ||
        r.status >= 500) {
      Failure f = providers::http_status_failure(r, endpoint(where), now);
      f.message = why;
      return providers::failed(op, std::move(f));
    }
    return providers::failed(op,
                             providers::malformed(r, endpoint(where), "unknown error " + error));
  }

  Outcome read_token(HttpResponse& r, bool refresh_grant, const std::vector<Secret>& hide) const {
    const SysTime now = clock_.now();
    const std::string where = endpoint("token endpoint");
    auto reply = providers::json_reply(r, where, now);
    if (reply.failure) return providers::failed(Operation::kRefresh, std::move(*reply.failure));
    nlohmann::json& doc = *reply.json;
    if (doc.contains("error")) {
      return oauth_error(r, Operation::kRefresh, doc, "token endpoint", refresh_grant, hide);
    }
    if (r.status != 200) {
      return providers::failed(Operation::kRefresh,
                               providers::malformed(r, where, "no error field"));
    }
    TokenSecrets fresh;
    fresh.access_token = providers::take_secret(doc, "access_token");
    // RFC 6749 4.4.3: no refresh token with client credentials; one sent anyway is not kept.
    Secret rotated = providers::take_secret(doc, "refresh_token");
    if (refresh_grant) fresh.refresh_token = std::move(rotated);
    if (fresh.access_token.empty()) {
      Outcome o =
          providers::failed(Operation::kRefresh, providers::malformed(r, where, "no access_token"));
      if (!fresh.refresh_token.empty()) o.secrets = std::move(fresh);  // never drop a new one
      return o;
    }
    Outcome o = Outcome::success(Operation::kRefresh);
    if (!fresh.refresh_token.empty()) o.note = "refresh token rotated";
    if (!refresh_grant) o.note = "new client-credentials token";
    if (auto in = providers::int_field(doc, "expires_in"); in && *in > 0) {
      o.expires_at = now + Seconds{*in};
    } else {
      o.expiry_unknown = true;  // the old token's expiry says nothing about the new one
    }
    if (auto scope = providers::string_field(doc, "scope"); !scope.empty()) o.scopes = scope;
    o.secrets = std::move(fresh);
    return o;
  }

  Outcome read_introspection(HttpResponse& r, bool refresh_grant,
                             const std::vector<Secret>& hide) const {
    const SysTime now = clock_.now();
    const std::string where = endpoint("introspection endpoint");
    auto reply = providers::json_reply(r, where, now);
    if (reply.failure) return providers::failed(Operation::kCheck, std::move(*reply.failure));
    const nlohmann::json& doc = *reply.json;
    if (doc.contains("error")) {
      return oauth_error(r, Operation::kCheck, doc, "introspection endpoint", refresh_grant, hide);
    }
    if (r.status != 200 || !doc.contains("active") || !doc["active"].is_boolean()) {
      return providers::failed(Operation::kCheck,
                               providers::malformed(r, where, "no boolean \"active\""));
    }
    if (doc["active"].get<bool>()) return Outcome::success(Operation::kCheck);
    // Either way a renewal decides, so the server's word alone never files a customer's grant as
    // dead (RFC 7662 lets a server call any token it will not describe to us inactive): a dead
    // grant then fails the renewal with invalid_grant, which the policy reads (in doubt or not).
    // This failure stands only when the token is still inactive after a renewal that worked.
    Outcome o = refresh_grant ? Outcome::failed(Operation::kCheck, ErrorClass::kRevoked,
                                                where +
                                                    ": the refresh token is not active (revoked or "
                                                    "expired), even after a renewal")
                              : Outcome::failed(Operation::kCheck, ErrorClass::kConfiguration,
                                                where +
                                                    ": the client-credentials token is not active, "
                                                    "even one just issued");
    o.renew_and_retry = true;
    return o;
  }

  void probe(const TokenSecrets& secrets, Done done) {
    const ProbeConfig& p = config_.probe;
    HttpRequest req;
    req.method = p.method;
    req.url = p.url;
    req.log_url = p.url;
    std::string value = p.prefix;
    value += secrets.access_token.reveal();
    req.headers.emplace_back(p.header, std::move(value));
    add_headers(req);
    http_.send(std::move(req), [this, done = std::move(done)](HttpResponse r) {
      Outcome o = read_probe(r);
      providers::wipe_body(r);
      done(std::move(o));
    });
  }

  Outcome read_probe(const HttpResponse& r) const {
    const ProbeConfig& p = config_.probe;
    const std::string where = endpoint("API key probe");
    if (auto f = providers::transport_failure(r, where)) {
      return providers::failed(Operation::kCheck, std::move(*f));
    }
    auto in = [&](const std::vector<int>& list) {
      return std::find(list.begin(), list.end(), r.status) != list.end();
    };
    if (in(p.valid_status)) return Outcome::success(Operation::kCheck);
    if (in(p.revoked_status)) {
      return Outcome::failed(
          Operation::kCheck, ErrorClass::kRevoked,
          where + ": HTTP " + std::to_string(r.status) + ": the key was refused");
    }
    if (r.status == 429 || r.status >= 500) {
      return providers::failed(Operation::kCheck,
                               providers::http_status_failure(r, where, clock_.now()));
    }
    return providers::failed(Operation::kCheck,
                             providers::malformed(r, where, "a status the probe does not list"));
  }

  GenericProviderConfig config_;
  std::string name_;
  Secret client_secret_;
  std::vector<Header> headers_;
  HttpTransport& http_;
  const Clock& clock_;
};

}  // namespace

Result<std::unique_ptr<ProviderClient>> make_generic_client(const GenericProviderConfig& config,
                                                            HttpTransport& http,
                                                            const Clock& clock) {
  const std::string key = "providers.generic." + std::string(to_string(config.provider));
  Secret client_secret;
  if (config.type == G::Type::kOAuth2) {
    auto secret = providers::resolve_secret(config.client_secret, key + ".client_secret");
    if (!secret) return secret.error();
    client_secret = std::move(*secret);
  }
  std::vector<Header> headers;
  for (const HeaderConfig& h : config.headers) {
    if (h.secret.empty()) {
      headers.push_back(Header{h.name, Secret(h.value)});
      continue;
    }
    auto value = providers::resolve_secret(h.secret, key + ".headers." + h.name);
    if (!value) return value.error();
    if (value->reveal().find_first_of("\r\n") != std::string_view::npos) {
      return Error(Errc::kConfig, key + ".headers." + h.name + ": the secret holds a line break");
    }
    headers.push_back(Header{h.name, std::move(*value)});
  }
  return std::unique_ptr<ProviderClient>(std::make_unique<GenericClient>(
      config, std::move(client_secret), std::move(headers), http, clock));
}

}  // namespace tw
