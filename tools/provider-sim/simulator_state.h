// Internal to the simulator (simulator*.cpp): the state behind Simulator and the helpers that the
// per-provider files share. Not a public interface; include simulator.h instead.
//
// Thread-safety: everything here is used under Engine::mutex, except the pure helpers at the end
// (parse_form, response builders), which touch no state.
//
// Model: a Grant is one seeded account ("<provider>:<account_id>"; the providers are "meta",
// "google", "tiktok", "oauth2" and "apikey"); every token string maps to a Token that points at its
// Grant. A token works while its grant is neither revoked nor replaced, it was not rotated away or
// killed, and it has not expired on the sim clock.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "http/transport.h"
#include "tools/provider-sim/simulator.h"

namespace tw::sim::detail {

using nlohmann::json;
using Params = std::map<std::string, std::string>;

constexpr std::int64_t kDay = 24 * 60 * 60;

// The provider endpoints, named as in the admin API's fault "endpoint" field.
enum class Endpoint : std::uint8_t {
  kMetaExchange,
  kMetaAccounts,
  kMetaPage,
  kMetaDebugToken,
  kInstagramRefresh,
  kGoogleToken,
  kGoogleTokenInfo,
  kGoogleRevoke,
  kGoogleAccounts,
  kTikTokToken,
  kTikTokUserInfo,
  kTikTokRevoke,
  kBusinessRefresh,
  kBusinessTokenInfo,
  kBusinessGet,
  kOAuth2Token,
  kOAuth2Introspect,
  kOAuth2Revoke,
  kApiKeyProbe,
};
constexpr std::size_t kEndpointCount = 19;

// The error-body family of an endpoint: what a provider-shaped error looks like there.
enum class Shape : std::uint8_t {
  kMeta,
  kGoogleOAuth,
  kGoogleApi,
  kTikTokOAuth,
  kTikTokApi,
  kBusiness,
  kOAuth2,  // flat RFC 6749 5.2 bodies {"error","error_description"}; the API-key probe too
};
// What a call counts as in /admin/counters.
enum class Role : std::uint8_t { kRefresh, kCheck, kOther };

struct EndpointInfo {
  const char* name;      // "google.token"
  const char* family;    // "google", "instagram", "tiktok_business", "oauth2", "apikey", ...
  const char* provider;  // the account namespace: "meta", "google", "tiktok", "oauth2", "apikey"
  Shape shape;
  Role role;
};
const EndpointInfo& info(Endpoint e);
std::optional<Endpoint> endpoint_named(std::string_view name);

// The kind of grant a seed creates. kOAuth2: a user's grant of the generic OAuth 2.0 server (an
// access and a refresh token); kOAuth2Client: its client's own client_credentials grant (account
// id = the client id; access tokens only); kApiKey: one API key.
enum class Api : std::uint8_t {
  kMetaUser,
  kMetaPage,
  kInstagram,
  kGoogle,
  kTikTokV2,
  kBusiness,
  kOAuth2,
  kOAuth2Client,
  kApiKey,
};

// The scope of "oauth2" grants (and of the client's grant) not seeded with one.
constexpr const char* kOAuth2DefaultScope = "read write";

enum class TokenKind : std::uint8_t {
  kMetaUser,
  kMetaPage,
  kInstagram,
  kGoogleAccess,
  kGoogleRefresh,
  kTikTokAccess,
  kTikTokRefresh,
  kBusinessAccess,
  kBusinessRefresh,
  kOAuth2Access,
  kOAuth2Refresh,
  kApiKey,
};

struct Grant {
  Api api = Api::kGoogle;
  std::string provider;    // "meta", "google", "tiktok", "oauth2", "apikey"
  std::string account_id;  // as seeded
  std::string key;         // "<provider>:<account_id>", the counters key
  std::int64_t created_at = 0;
  bool revoked = false;
  bool replaced = false;  // a later seed of the same account replaced this grant
  int revoke_subcode = 460;

  // The newest tokens, as /admin/account reports them.
  std::string access_token;
  std::string refresh_token;  // Meta page grants: the long-lived user token

  // Meta and Instagram.
  std::string user_id;           // the Facebook user (pages are listed per user)
  bool omit_expires_in = false;  // exchange responses leave out expires_in

  // Google.
  std::string google_user;  // the Google account: at most N live refresh tokens per user
  // Google: return a new refresh token; Business (default true) and oauth2: rotate.
  bool rotate = false;
  bool testing = false;  // Testing-mode app: refresh tokens die 7 days after consent
  bool no_permission = false;
  bool unauthorized_client = false;

  // TikTok (v2 and Business); access_lifetime and scope also oauth2.
  std::int64_t access_lifetime = 0;
  std::int64_t refresh_lifetime = 0;
  bool scope_not_authorized = false;
  std::string open_id;
  std::string scope;
  std::string display_name;

  // Every token of this grant still remembered, oldest first (keys of Engine::tokens). At most
  // kTokensPerGrant outlive a call; see Engine::forget_old_tokens.
  std::vector<const std::string*> issued;

  bool alive() const { return !revoked && !replaced; }
};

// How many tokens one grant keeps: its current access and refresh tokens always, and the newest
// superseded ones (still valid until they expire, or remembered as rotated away) up to this many.
// Older ones are forgotten and then answered as unknown tokens: memory stays flat however many
// refreshes a benchmark sends. A sim limit, not a provider fact.
constexpr std::size_t kTokensPerGrant = 16;

struct Token {
  std::shared_ptr<Grant> grant;
  TokenKind kind = TokenKind::kGoogleAccess;
  std::int64_t issued_at = 0;
  std::int64_t expires_at = 0;  // 0 = never
  bool killed = false;          // this token alone died (Google: displaced or idle)
  // Rotating refresh tokens: rotated away at `rotated_at` in favour of `successor`; the access
  // token issued with the successor is `successor_access` (the pair a grace reuse returns).
  bool rotated = false;
  std::int64_t rotated_at = 0;
  std::string successor;
  std::string successor_access;
  std::int64_t last_used = 0;  // Google refresh tokens: idle for 180 days = dead
  std::string page_id;         // Meta page tokens
  std::string scope;           // oauth2 access tokens: a narrower scope than the grant's, if any
  // TikTok v2 access tokens: /user/info/ call times in the last 60 s. Allocated on first use: an
  // empty std::deque costs about 600 bytes in libstdc++.
  std::unique_ptr<std::deque<std::int64_t>> recent_calls;

  bool expired(std::int64_t now) const { return expires_at != 0 && now >= expires_at; }
  // Usable for a call now: grant alive, not rotated or killed, not expired.
  bool usable(std::int64_t now) const {
    return grant->alive() && !killed && !rotated && !expired(now);
  }
};

// Calls in the last hour, in buckets of 3600/N seconds (sliding window, bucket precision).
template <std::size_t N>
class HourWindow {
 public:
  void add(std::int64_t now) {
    const std::int64_t slot = now / kWidth;
    auto& bucket = buckets_[static_cast<std::size_t>(slot % static_cast<std::int64_t>(N))];
    if (bucket.slot != slot) bucket = {slot, 0};
    ++bucket.count;
  }
  std::int64_t count(std::int64_t now) const {
    const std::int64_t slot = now / kWidth;
    std::int64_t total = 0;
    for (const auto& b : buckets_) {
      if (b.slot > slot - static_cast<std::int64_t>(N) && b.slot <= slot) total += b.count;
    }
    return total;
  }
  // Seconds until the oldest counted bucket leaves the window (0 when empty).
  std::int64_t seconds_to_drain_oldest(std::int64_t now) const {
    const std::int64_t slot = now / kWidth;
    std::int64_t oldest = slot + 1;
    for (const auto& b : buckets_) {
      if (b.count > 0 && b.slot > slot - static_cast<std::int64_t>(N) && b.slot < oldest) {
        oldest = b.slot;
      }
    }
    if (oldest > slot) return 0;
    return (oldest + static_cast<std::int64_t>(N)) * kWidth - now;
  }

 private:
  static constexpr std::int64_t kWidth = 3600 / static_cast<std::int64_t>(N);
  struct Bucket {
    std::int64_t slot = -1;
    std::int64_t count = 0;
  };
  std::array<Bucket, N> buckets_{};
};

struct Counters {
  std::uint64_t refreshes = 0;
  std::uint64_t checks = 0;
  std::uint64_t concurrent_refreshes = 0;
  std::uint64_t reused_refresh_tokens = 0;
  std::uint64_t invalid_grant = 0;
};

struct AccountCounters : Counters {
  // Until when (steady clock) a refresh of this account is still in progress.
  std::chrono::steady_clock::time_point refresh_busy_until{};
};

enum class FaultKind : std::uint8_t {
  kStatus,
  kRateLimit,
  kDelay,
  kReset,
  kTruncate,
  kHang,
  kMalformed,
  kHtml,
  kEmpty,
  kErrorBody,
  kTransientCode,
  kUsage,
};

struct Fault {
  std::uint64_t id = 0;
  std::optional<std::string> provider;  // a provider or family name
  std::optional<Endpoint> endpoint;
  std::optional<std::string> account_id;
  FaultKind kind = FaultKind::kStatus;
  std::int64_t remaining = 1;               // -1: until cleared
  int status = 0;                           // kStatus, kTransientCode: the HTTP status
  std::optional<std::int64_t> retry_after;  // kRateLimit: Retry-After seconds
  int code = 0;                     // kRateLimit (Meta), kTransientCode: the Meta error code
  std::int64_t delay_ms = 0;        // kDelay
  std::int64_t value = 100;         // kUsage: percent
  std::int64_t regain_minutes = 0;  // kUsage, kRateLimit (Meta)
  bool status_set = false;          // "status" was given (transient_code: oauth2 defaults to 503)
  std::string error;  // Shape::kOAuth2: the body's "error" code (empty: the kind's default)
};

// Unguessable random strings from OpenSSL's CSPRNG, drawn in blocks.
class TokenRandom {
 public:
  std::string alnum(std::size_t n);      // [A-Za-z0-9]
  std::string base64url(std::size_t n);  // [A-Za-z0-9_-]
  std::string hex(std::size_t n);        // [0-9a-f]
  std::string uuid();                    // 8-4-4-4-12 hex

 private:
  unsigned char byte();
  std::array<unsigned char, 4096> buffer_{};
  std::size_t used_ = buffer_.size();
};

// One provider call being answered: what the router parsed, what the lookup found.
struct Call {
  Endpoint endpoint;
  const Request* request = nullptr;
  const Params* params = nullptr;  // the query (GET) or the form body (POST)
  Params form;                     // storage for a parsed form body
  json body;                       // a parsed JSON body (TikTok Business POSTs); discarded if bad
  std::string path_id;             // Meta: the user or page id in the path
  std::string token;               // the token that names the account, if any
  std::int64_t now = 0;            // sim clock, unix seconds
  Token* found = nullptr;          // `token` looked up; null when unknown
  Grant* grant = nullptr;          // found->grant
  AccountCounters* account = nullptr;  // the grant's counters
  std::string usage_page;              // Meta: the Page whose usage header this call carries

  const std::string& param(const std::string& name) const;
};

// All simulator state and logic; Simulator::State is this.
struct Engine {
  Engine(SimOptions o, const Clock& c) : options(std::move(o)), clock(c) {}

  // The entry point: an /admin/ call or a provider call (simulator.cpp).
  Response handle(const Request& request);

  const SimOptions options;
  const Clock& clock;

  std::mutex mutex;  // guards everything below
  std::int64_t clock_offset = 0;
  TokenRandom random;
  std::unordered_map<std::string, std::shared_ptr<Grant>> grants;  // by Grant::key
  std::unordered_map<std::string, Token> tokens;
  std::vector<std::shared_ptr<Grant>> over_limit;  // grants issued past kTokensPerGrant
  // Meta page grants per Facebook user, for /me/accounts.
  std::unordered_map<std::string, std::vector<std::shared_ptr<Grant>>> pages_by_user;
  // Google refresh tokens per Google user, oldest first (dead ones are dropped lazily).
  std::unordered_map<std::string, std::deque<std::string>> google_refresh_by_user;
  // Meta: the last activity (seed or exchange) per user; data access lasts 90 days from it.
  std::unordered_map<std::string, std::int64_t> meta_user_activity;
  // Meta usage: all calls of the app, and calls per Page.
  HourWindow<60> meta_app_usage;
  std::unordered_map<std::string, HourWindow<12>> meta_page_usage;

  std::vector<Fault> faults;
  std::uint64_t next_fault_id = 1;

  // Every token issued, oldest first, when options.record_issued (never forgotten).
  std::vector<std::string> issued_log;

  std::uint64_t requests = 0;
  std::array<std::uint64_t, kEndpointCount> by_endpoint{};
  std::unordered_map<std::string, AccountCounters> accounts;
  Counters totals;

  std::int64_t now() const;  // sim clock, unix seconds; needs no lock but the offset does

  // Creates `kind` token string with the realistic prefix and registers it for `grant`.
  std::string issue(const std::shared_ptr<Grant>& grant, TokenKind kind, std::int64_t issued_at,
                    std::int64_t expires_at);
  Token* find(const std::string& token);
  // Forgets the oldest superseded tokens of grants that hold more than kTokensPerGrant. Runs at
  // the end of a call, when no Token* of the call is in use any more.
  void forget_old_tokens();
  // Forgets every token of `grant` (a replaced grant).
  void forget_tokens(Grant& grant);
  // Makes `grant` its account's grant; a grant already there is replaced and its tokens forgotten.
  void install(const std::shared_ptr<Grant>& grant);
  std::string log_id(std::int64_t now);  // TikTok log_id / request_id: time + hex

  // Counting on the call's account (when known) and in the totals.
  void count_invalid_grant(Call& call);
  void count_reused(Call& call);

  // Provider endpoints (simulator_meta.cpp, simulator_google.cpp, simulator_tiktok.cpp).
  Response meta_exchange(Call& call);
  Response meta_accounts(Call& call);
  Response meta_page(Call& call);
  Response meta_debug_token(Call& call);
  Response instagram_refresh(Call& call);
  Response google_token(Call& call);
  Response google_tokeninfo(Call& call);
  Response google_revoke(Call& call);
  Response google_accounts(Call& call);
  Response tiktok_token(Call& call);
  Response tiktok_user_info(Call& call);
  Response tiktok_revoke(Call& call);
  Response business_refresh(Call& call);
  Response business_token_info(Call& call);
  Response business_get(Call& call);
  Response oauth2_token(Call& call);
  Response oauth2_introspect(Call& call);
  Response oauth2_revoke(Call& call);
  Response apikey_probe(Call& call);

  // Seeding (simulator_admin.cpp uses these; the per-provider files define them).
  void register_meta_page(const std::shared_ptr<Grant>& grant);
  void register_google_refresh(const std::shared_ptr<Grant>& grant, const std::string& token);

  // Meta: the user of `grant` was active (seeded or exchanged) at `now`.
  void meta_record_activity(const Grant& grant, std::int64_t now);
  // Meta: data access lasts 90 days from the user's last activity (0 when unknown).
  std::int64_t meta_data_access_expires_at(const Grant& grant) const;
  // Meta error 190 (code, optional subcode, message) for a token that cannot be used: unknown (no
  // subcode), revoked (the grant's subcode), replaced (467), expired or data access over (463).
  struct MetaTokenError {
    int code = 190;
    std::optional<int> subcode;
    std::string message;
  };
  // Empty when `token` is usable, its data access included.
  std::optional<MetaTokenError> meta_token_problem(const Token* token, std::int64_t now) const;
  Response meta_fail(const MetaTokenError& e);
  Response meta_fail(int code, std::optional<int> subcode, const std::string& message);
  // Meta usage headers for `call`, with an optional forced percent / regain time.
  void add_meta_usage(Response& response, const Call& call, std::optional<std::int64_t> forced,
                      std::int64_t regain_minutes);

  // Admin API (simulator_admin.cpp). Callers hold the mutex.
  Response admin(const Request& request);
  Response admin_seed(const json& body);
  Response admin_seed_bulk(const json& body);
  Response admin_revoke(const json& body);
  Response admin_fault(const json& body);
  Response admin_faults_list();
  Response admin_counters(const Request& request);
  Response admin_account(const Request& request);
  Response admin_issued() const;
  Response admin_clock(const Request& request);
  void reset();
};

// --- pure helpers ------------------------------------------------------------------------------

Response json_response(int status, const json& body);
Response text_response(int status, std::string body, std::string content_type);

// Meta: {"error":{"message","type":"OAuthException","code","error_subcode","fbtrace_id"}}.
json meta_error_body(int code, std::optional<int> subcode, const std::string& message,
                     const std::string& fbtrace_id);
// The Meta revocation message for a subcode.
std::string meta_subcode_message(int subcode);

std::string ascii_lower(std::string s);  // A-Z to a-z, nothing else
std::string bearer_token(const Request& request);
// Whether the Authorization header uses the Basic scheme (any case), well-formed or not.
bool has_basic_auth(const Request& request);
// HTTP Basic credentials ("id:secret", base64, each form-urlencoded): {} when absent or malformed.
std::pair<std::string, std::string> basic_credentials(const Request& request);
// An RFC 6749 5.2 error body {"error","error_description"} with this status.
Response oauth_error(int status, const std::string& error, const std::string& description);

}  // namespace tw::sim::detail
