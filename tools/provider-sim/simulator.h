// Simulator: the request -> response logic of tokenwarden-sim, a local imitation of the Meta
// (Graph and Instagram), Google (OAuth and Business Profile) and TikTok (Open API v2 and API for
// Business) endpoints that tokenwarden talks to. Provider facts: /work/shared/providers.md.
// Besides them, two generic families for tokenwarden's generic provider: "oauth2", a standard
// OAuth 2.0 authorization server (RFC 6749 token endpoint with the refresh_token and
// client_credentials grants, RFC 7662 introspection, RFC 7009 revocation) under /oauth2/, and
// "apikey", an API-key "whoami" probe at GET /apikey/probe. See simulator_google.cpp.
//
// Thread-safety: handle() may be called from any number of threads at once; one mutex guards all
// state. The Clock must be safe to read from those threads (SystemClock is; a FakeClock is only
// when the test drives it from the thread that calls handle()).
//
// No networking here: HttpServer (http_server.h) calls handle(), and unit tests call it directly.
// Every answer is a Response value; faults injected through the admin API come back as a status,
// a body, a delay or a Delivery (reset, truncate, hang) for the server to act out.
//
// Time: the simulator's clock is clock.now() plus an offset that POST /admin/clock advances; every
// expiry, idle limit, usage window and rate-limit window is measured on it. Refresh concurrency
// (two refreshes of one account in flight) is measured on clock.steady_now(), since it is about
// real in-flight requests.
//
// Memory: each grant remembers its current tokens and at most 16 tokens in all; older superseded
// ones (still-valid old access tokens, rotated-away refresh tokens) are then answered as unknown.
// Memory so stays flat under a refresh benchmark. Re-seeding an account forgets the old grant's
// tokens.
//
// Admin API (JSON, under /admin/, loopback peers only): seed, seed_bulk, revoke, fault,
// faults/clear, counters, account, clock, reset. See simulator_admin.cpp for the request shapes;
// simulator_state.h has the internal model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "scheduler/clock.h"
#include "tools/provider-sim/http_server.h"

namespace tw::sim {

struct SimOptions {
  // Credentials the simulated providers accept.
  std::string meta_app_id = "sim-meta-app";
  std::string meta_app_secret = "sim-meta-secret";
  std::string meta_app_name = "tokenwarden-sim";  // debug_token's "application"
  std::string google_client_id = "sim-google-client";
  std::string google_client_secret = "sim-google-secret";
  std::string tiktok_client_key = "sim-tiktok-key";
  std::string tiktok_client_secret = "sim-tiktok-secret";
  std::string tiktok_business_app_id = "sim-tiktok-key";
  std::string tiktok_business_app_secret = "sim-tiktok-secret";
  // The one client of the generic OAuth 2.0 server (family "oauth2"), authenticated by HTTP Basic
  // (client_secret_basic) or by client_id and client_secret form fields (client_secret_post).
  std::string oauth2_client_id = "sim-oauth2-client";
  std::string oauth2_client_secret = "sim-oauth2-secret";
  // An API-gateway key that /oauth2/token, /oauth2/introspect and /oauth2/revoke also require:
  // header `oauth2_api_key_header` (any case) must carry `oauth2_api_key`, or the answer is 403
  // access_denied. An empty oauth2_api_key requires no header.
  std::string oauth2_api_key_header = "x-api-key";
  std::string oauth2_api_key = "sim-oauth2-gateway-key";
  // Lifetime of the access tokens of the refresh_token grant (and of seeded "oauth2" grants,
  // unless seeded with "access_lifetime"), and of client_credentials access tokens (8 hours).
  std::int64_t oauth2_access_lifetime = 3600;
  std::int64_t oauth2_client_credentials_lifetime = 28800;
  // Whether the refresh_token grant returns a new refresh token, the presented one then dying
  // (after reuse_grace_seconds, if any). Seeds may override it with "rotate".
  bool oauth2_rotate_refresh = true;

  // HTTP status of TikTok v2 OAuth errors (invalid_grant, invalid_client, ...). Unverified.
  int tiktok_oauth_error_status = 400;
  // A rotated refresh token presented again within this many seconds of its rotation gets the
  // same new pair instead of invalid_grant (Google, TikTok and oauth2 alike). 0 = no grace, as the
  // providers document none.
  std::int64_t reuse_grace_seconds = 0;
  // Meta calls per hour (for the one simulated app) that put X-App-Usage at 100%.
  std::int64_t meta_call_limit = 100000;
  // Meta calls per hour for one Page that put X-Business-Use-Case-Usage at 100%. Unverified; the
  // documented Page limit is about 4,800 calls x engaged users per 24 h.
  std::int64_t meta_page_call_limit = 200;
  // Lifetime of a long-lived Meta user token and of an Instagram token (about 60 days).
  std::int64_t meta_user_token_lifetime = 5183944;
  // Google access-token lifetime, and live refresh tokens per Google user before the oldest dies.
  std::int64_t google_access_lifetime = 3599;
  std::int64_t google_max_refresh_tokens = 100;
  // TikTok Business error code for rate limiting (one SDK says 40100; unverified).
  int tiktok_business_rate_limit_code = 40100;
  // TikTok v2 /user/info/ requests per minute per grant before 429 (sliding window).
  std::int64_t tiktok_user_info_limit = 600;
  // Whether a rotated TikTok refresh token gets a fresh full lifetime (true) or keeps the expiry
  // of the token it replaces (false). Unverified either way.
  bool tiktok_refresh_restarts_lifetime = true;
  // Remember every token string ever issued, for GET /admin/issued (tests scan a daemon's files
  // and logs for each one). Off by default: memory grows with every refresh.
  bool record_issued = false;
};

class Simulator {
 public:
  // `clock` must outlive the Simulator.
  explicit Simulator(SimOptions options, const Clock& clock);
  ~Simulator();
  Simulator(const Simulator&) = delete;
  Simulator& operator=(const Simulator&) = delete;

  // Answers one request: a provider endpoint, an /admin/ call, 404 for an unknown path or 405 for
  // a wrong method. Never throws but std::bad_alloc.
  Response handle(const Request& request);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace tw::sim
