// ProviderClient: one provider's renewal and health check over HTTP.
//
// Thread-safety: a client belongs to the event loop's single-threaded executor, like the
// HttpTransport it uses; its callbacks run there. It must outlive its operations in flight.
//
// refresh() renews a token; check() asks the provider whether it is still valid, with the stored
// access token. A client never uses a renewed secret for a further request itself: when a check
// needs a fresh access token first (renew_before_check), or the provider refused the stored one
// (Outcome::renew_and_retry), the worker renews, commits the new secrets, and only then checks.
// (Meta's Page renewal is two requests in one operation; the user token it holds in between is
// not rotated: the old one stays valid [V].) Each operation calls `done` exactly once with an
// Outcome: new secrets and expiry on success, or a Failure classified
// as permanent (the grant is dead: invalid_grant, Meta code 190...), revoked, transient (network,
// timeouts, 5xx, 429 and rate-limit codes, with Retry-After), malformed (an unexpected body: logged
// by a hash of the body, never as revoked) or configuration (our app credentials are wrong). A
// 200 response carrying an error is an error; a 2xx response without an access token is a
// failure. Provider facts follow /work/shared/providers.md; where it marks a fact unverified, the
// code says so.
//
// Secrets travel in request bodies, headers or (Meta) query strings, never in HttpRequest::log_url,
// and never in an Outcome's messages.
#pragma once

#include <functional>
#include <memory>

#include "config/config.h"
#include "core/outcome.h"
#include "core/result.h"
#include "core/token.h"
#include "http/transport.h"
#include "scheduler/clock.h"

namespace tw {

class ProviderClient {
 public:
  using Done = std::function<void(Outcome)>;

  virtual ~ProviderClient() = default;
  virtual Provider provider() const = 0;

  virtual void refresh(const TokenRecord& token, const TokenSecrets& secrets, Done done) = 0;
  virtual void check(const TokenRecord& token, const TokenSecrets& secrets, Done done) = 0;

  // Whether a check of `token` needs a renewal first (its access token expired, or there is none).
  virtual bool renew_before_check(const TokenRecord& token, const TokenSecrets& secrets) const {
    (void)token;
    (void)secrets;
    return false;
  }
  // Whether renewing `token` can invalidate the refresh secret it is sent with (a rotation): then
  // a renewal whose reply is lost leaves the token in doubt. Meta's old tokens stay valid.
  virtual bool renewal_rotates(const TokenRecord& token) const {
    (void)token;
    return true;
  }
  // Whether revoke() can do anything (a generic provider with a revocation_url).
  virtual bool can_revoke() const { return false; }
  // Revokes `token` at the provider (RFC 7009: its refresh token, which ends the grant, or its
  // access token when it has none). `done` gets Ok, or an error (Errc::kIo for a
  // network or server failure worth retrying later, kConfig otherwise) whose message holds no
  // secret.
  virtual void revoke(const TokenRecord& token, const TokenSecrets& secrets,
                      std::function<void(Status)> done) {
    (void)token;
    (void)secrets;
    done(Error(Errc::kConfig, "this provider has no revocation endpoint"));
  }
  // How many requests `op` on `token` sends: its cost in the provider's rate budget.
  virtual int requests(Operation op, const TokenRecord& token) const {
    (void)op;
    (void)token;
    return 1;
  }
};

// The clients for the enabled providers. Resolves each client secret reference now, so a missing
// secret file or variable fails at start-up, naming it (Errc::kConfig). `http` and `clock` must
// outlive the clients.
Result<std::unique_ptr<ProviderClient>> make_meta_client(const MetaConfig& config,
                                                         HttpTransport& http, const Clock& clock);
Result<std::unique_ptr<ProviderClient>> make_google_client(const GoogleConfig& config,
                                                           HttpTransport& http, const Clock& clock);
Result<std::unique_ptr<ProviderClient>> make_tiktok_client(const TikTokConfig& config,
                                                           HttpTransport& http, const Clock& clock);
// A provider defined in the configuration (providers/generic.cpp): OAuth 2.0 or API keys. Also
// resolves its header secrets now.
Result<std::unique_ptr<ProviderClient>> make_generic_client(const GenericProviderConfig& config,
                                                            HttpTransport& http,
                                                            const Clock& clock);

}  // namespace tw
