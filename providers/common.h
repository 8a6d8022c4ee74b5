// Pieces every provider client uses: building requests, reading JSON replies and classifying
// what comes back. Internal to providers/.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.h"
#include "core/outcome.h"
#include "core/secret.h"
#include "core/time.h"
#include "http/transport.h"

namespace tw::providers {

// A query or form parameter. A secret one is masked in log_url.
struct Param {
  std::string name;
  std::string_view value;
  bool secret = false;
};

// GET `url` with `params` in the query string; log_url masks the secret ones.
HttpRequest get(const std::string& url, const std::vector<Param>& params);
// POST `params` as application/x-www-form-urlencoded to `url` (which carries no secret).
HttpRequest post_form(const std::string& url, const std::vector<Param>& params);
// POST a JSON body to `url` (which carries no secret).
HttpRequest post_json(const std::string& url, const nlohmann::json& body);
// Adds "Authorization: Bearer <token>".
void add_bearer(HttpRequest& request, const Secret& token);

// A failure for a response that never arrived (timeout, reset, TLS, ...): transient; in doubt
// unless the request never left (refused connection, failed TLS handshake).
std::optional<Failure> transport_failure(const HttpResponse& r, std::string_view endpoint);

// True when the stored access token is missing, has no known expiry, or expires within a minute
// of `now`: a check would fail on it, so it is renewed first.
bool access_token_stale(const TokenRecord& token, const TokenSecrets& secrets, SysTime now);

// Retry-After as seconds from `now` (delta-seconds or an HTTP-date), if present and sane.
std::optional<Seconds> retry_after(const HttpResponse& r, SysTime now);

// A malformed reply: transient with a cap, never revoked, in doubt. The message names the
// endpoint, the status, the body's size and a short SHA-256 of it, never the body (it may hold a
// secret).
Failure malformed(const HttpResponse& r, std::string_view endpoint, std::string_view what);

// 429 and 5xx (and any other status the caller has no rule for): transient, honouring Retry-After.
Failure http_status_failure(const HttpResponse& r, std::string_view endpoint, SysTime now);

// The JSON object of a reply, or the Failure that ends here: a transport failure; a body that is
// not a JSON object (an HTML error page, truncated, empty) is transient on 429/5xx, with
// Retry-After, and malformed otherwise.
struct JsonReply {
  std::optional<nlohmann::json> json;
  std::optional<Failure> failure;
};
JsonReply json_reply(const HttpResponse& r, std::string_view endpoint, SysTime now);

// The body as JSON, or nullopt when it is not JSON (an HTML error page, truncated, empty).
std::optional<nlohmann::json> parse_json(const std::string& body);

// Moves the string field `key` of `obj` into a Secret, wiping the JSON's copy; empty when absent
// or not a string.
Secret take_secret(nlohmann::json& obj, const char* key);

// An integer field given as a number or a numeric string (Google's tokeninfo sends strings).
std::optional<std::int64_t> int_field(const nlohmann::json& obj, const char* key);
// A string field, or "" when absent or not a string.
std::string string_field(const nlohmann::json& obj, const char* key);

// A provider's error text made safe for a log line: one line, at most 200 characters, and every
// occurrence of the given secrets masked (a provider might echo a token back).
std::string scrub(std::string_view text, std::initializer_list<const Secret*> secrets);
std::string scrub(std::string_view text, const std::vector<Secret>& secrets);

// Wraps `done` so that the outcome's failure message and note never hold one of `secrets`: a
// provider may echo a token, or our client secret, back in an error text (found by
// fuzz/provider_fuzz.cpp). Each occurrence becomes "***". Every client wraps every operation's
// `done` so, with the token's secrets and its client secrets.
std::function<void(Outcome)> masking(std::function<void(Outcome)> done,
                                     std::vector<Secret> secrets);

// Resolves a client secret reference at start-up; an error names the config key (`key`).
Result<Secret> resolve_secret(const SecretRef& ref, std::string_view key);

// An outcome that failed with `f` (every field of it kept).
Outcome failed(Operation op, Failure f);

// Wipes a response body that held secrets.
void wipe_body(HttpResponse& r);

// Wipes a response's body when the scope that read it ends.
class WipeBodyOnExit {
 public:
  explicit WipeBodyOnExit(HttpResponse& r) : r_(r) {}
  ~WipeBodyOnExit() { wipe_body(r_); }
  WipeBodyOnExit(const WipeBodyOnExit&) = delete;
  WipeBodyOnExit& operator=(const WipeBodyOnExit&) = delete;

 private:
  HttpResponse& r_;
};

}  // namespace tw::providers
