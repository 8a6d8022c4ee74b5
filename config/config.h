// Config: the one typed configuration, parsed once from YAML.
//
// Thread-safety: parse once at start-up (or on reload) and pass each module only its own section,
// by const reference or copy.
// Every field has a default, written next to it; config/tokenwarden.example.yaml documents every
// key and is loaded by a test. Parsing fails, with one line naming the file, the line and the key,
// on: an unknown key (a typo), a wrong type, a zero or negative period, a missing required key.
// URLs must start with http:// or https:// and must not end with "/". An empty (null) section
// reads as `{}`; a provider section that is present enables the provider unless `enabled: false`.
// Secrets are never in the file itself: a SecretRef names a file, an environment variable or a
// systemd credential, and is resolved only when the secret is needed.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "core/result.h"
#include "core/secret.h"
#include "core/time.h"
#include "core/token.h"

namespace tw {

// Where a secret comes from. In YAML: `{file: /path}`, `{env: NAME}` or `{credential: NAME}`
// (a file in $CREDENTIALS_DIRECTORY, as systemd's LoadCredential= provides).
struct SecretRef {
  enum class Source { kNone, kFile, kEnv, kCredential };
  Source source = Source::kNone;
  std::string name;  // the path, variable or credential name: never the secret itself

  bool empty() const { return source == Source::kNone; }
  // Reads the secret; one trailing newline is dropped. Fails, naming the source but never the
  // value, when the file or variable is missing or empty.
  Result<Secret> resolve() const;

  bool operator==(const SecretRef&) const = default;
};

struct DatabaseConfig {
  std::string path = "/var/lib/tokenwarden/tokens.db";  // SQLite file; its WAL sits beside it
  Millis busy_timeout = std::chrono::seconds(5);        // wait this long for another writer

  bool operator==(const DatabaseConfig&) const = default;
};

// PostgreSQL, when several instances share one schedule (storage.backend: postgres).
struct PostgresConfig {
  // A libpq connection string (keyword=value or a postgresql:// URI), TLS options included. It
  // must not hold a password: use dsn_secret for a DSN that does, or libpq's ~/.pgpass.
  std::string dsn;
  // Instead of dsn: a secret reference to a file holding the DSN (e.g. a systemd credential).
  SecretRef dsn_secret;
  Millis lock_timeout = std::chrono::seconds(5);        // wait this long for a row lock: "busy"
  Millis statement_timeout = std::chrono::seconds(30);  // cancel a statement after this long

  bool operator==(const PostgresConfig&) const = default;
};

// Which database holds the tokens and the schedule.
struct StorageConfig {
  enum class Backend { kSqlite, kPostgres };
  Backend backend = Backend::kSqlite;  // sqlite: the `database` section; postgres: `postgres`
  PostgresConfig postgres;

  bool operator==(const StorageConfig&) const = default;
};

struct KeyConfig {
  // 32 random bytes (raw, or 64 hex digits), mode 0600 or stricter. When $CREDENTIALS_DIRECTORY
  // holds `tokenwarden.key` (systemd LoadCredential=), that file is used instead.
  std::string file = "/etc/tokenwarden/tokenwarden.key";
  // Keys retired by a rotation: still accepted for decryption until `tokenwarden rekey` has
  // re-encrypted every token with the current key.
  std::vector<std::string> previous_files;

  bool operator==(const KeyConfig&) const = default;
};

// When tokens of one provider are renewed and checked. An absent optional means "off".
struct ScheduleConfig {
  std::optional<Seconds> refresh_every;  // renew this long after the last renewal
  std::optional<Seconds> renew_before;   // renew this long before expires_at / refresh_expires_at
  Seconds check_every = std::chrono::hours(1);  // health check period, spread over the period

  bool operator==(const ScheduleConfig&) const = default;
};

// How hard tokenwarden may press one provider's endpoints.
struct ProviderLimits {
  double requests_per_second = 200;  // token-bucket rate, renewals and checks together
  int burst = 400;                   // token-bucket size
  int breaker_failures = 20;         // transient failures in a row that open the circuit breaker
  Seconds breaker_cooldown = std::chrono::minutes(1);  // how long it stays open before a probe

  bool operator==(const ProviderLimits&) const = default;
};

struct MetaConfig {
  bool enabled = false;  // true when the `meta` section is present, unless `enabled: false`
  std::string graph_base_url = "https://graph.facebook.com";
  std::string api_version = "v25.0";
  std::string instagram_base_url = "https://graph.instagram.com";
  std::string app_id;    // required when enabled
  SecretRef app_secret;  // required when enabled
  ScheduleConfig schedule{std::chrono::days(7), std::chrono::days(3), std::chrono::hours(1)};
  ProviderLimits limits;

  bool operator==(const MetaConfig&) const = default;
};

struct GoogleConfig {
  bool enabled = false;
  std::string oauth_base_url = "https://oauth2.googleapis.com";
  std::string business_base_url = "https://mybusinessaccountmanagement.googleapis.com";
  std::string client_id;    // required when enabled
  SecretRef client_secret;  // required when enabled
  // renew_before is off: Google's expires_at is the one-hour access token, refreshed on demand.
  ScheduleConfig schedule{std::chrono::days(30), std::nullopt, std::chrono::hours(1)};
  ProviderLimits limits;

  bool operator==(const GoogleConfig&) const = default;
};

struct TikTokConfig {
  bool enabled = false;
  std::string open_api_base_url = "https://open.tiktokapis.com";
  std::string business_api_base_url = "https://business-api.tiktok.com";
  std::string client_key;   // required when enabled (Login Kit / API v2)
  SecretRef client_secret;  // required when enabled
  // The API for Business app: give both or neither; when absent they are filled in from
  // client_key and client_secret.
  std::string business_app_id;
  SecretRef business_app_secret;
  ScheduleConfig schedule{std::nullopt, std::chrono::hours(72), std::chrono::hours(1)};
  ProviderLimits limits;

  bool operator==(const TikTokConfig&) const = default;
};

// An HTTP header a generic provider sends with every request (an API gateway key, ...): a plain
// value, or a secret reference for a value that is a credential.
struct HeaderConfig {
  std::string name;
  std::string value;  // when `secret` is empty
  SecretRef secret;

  bool operator==(const HeaderConfig&) const = default;
};

// The request that tells whether an API key still works (type api_key).
struct ProbeConfig {
  std::string method = "GET";                 // GET, HEAD or POST (an empty body)
  std::string url;                            // required
  std::string header = "Authorization";       // the header that carries the key
  std::string prefix;                         // put before the key, e.g. "Bearer "
  std::vector<int> valid_status{200};         // statuses that mean the key works
  std::vector<int> revoked_status{401, 403};  // statuses that mean it was revoked
  // Any other status: 429 and 5xx are transient (Retry-After honoured), the rest malformed.

  bool operator==(const ProbeConfig&) const = default;
};

// A provider defined entirely in the configuration (providers.generic.NAME): a standards-
// compliant OAuth 2.0 server (RFC 6749, with RFC 7662 introspection and RFC 7009 revocation), or
// a service with static API keys.
struct GenericProviderConfig {
  enum class Type { kOAuth2, kApiKey };
  enum class ClientAuth { kBasic, kPost };  // client_secret_basic, client_secret_post
  enum class Grant { kRefreshToken, kClientCredentials };

  Provider provider = Provider::kMeta;  // from the section's name: what tokens are filed under
  bool enabled = false;
  Type type = Type::kOAuth2;
  // type oauth2:
  std::string token_url;    // required
  std::string client_id;    // required
  SecretRef client_secret;  // required
  ClientAuth client_auth = ClientAuth::kBasic;
  Grant grant = Grant::kRefreshToken;
  std::string scope;              // sent with the client_credentials grant; empty: none
  std::string introspection_url;  // RFC 7662: health checks; empty: tokens are not checked
  std::string revocation_url;     // RFC 7009: `tokenwarden remove --revoke`; empty: none
  // Renew once this fraction of a token's lifetime (expires_at - its last renewal) has passed;
  // used when renew_before is off. The default, when neither is set, is 2/3.
  std::optional<double> renew_at_fraction;
  // type api_key:
  ProbeConfig probe;
  // Both types:
  std::vector<HeaderConfig> headers;  // sent with every request to this provider
  ScheduleConfig schedule{std::nullopt, std::nullopt, std::chrono::hours(1)};
  ProviderLimits limits;

  // Whether tokenwarden can health-check this provider's tokens.
  bool checkable() const { return type == Type::kApiKey || !introspection_url.empty(); }
  // The one token kind this provider's tokens have.
  TokenKind kind() const;

  bool operator==(const GenericProviderConfig&) const = default;
};

struct ProvidersConfig {
  MetaConfig meta;
  GoogleConfig google;
  TikTokConfig tiktok;
  std::vector<GenericProviderConfig> generic;  // in file order

  // What the sections have in common, by provider. An unknown provider is not enabled.
  bool enabled(const Provider& p) const;
  const ProviderLimits& limits(const Provider& p) const;  // an unknown provider: defaults
  // The generic provider named `p`, or nullptr.
  const GenericProviderConfig* generic_named(const Provider& p) const;
  // Whether tokens of `kind` belong at `p`: kind_allowed() for the built-in ones, the
  // configured type and grant for a generic one (false when it is not configured).
  bool allows(const Provider& p, TokenKind kind) const;
  // Meta, Google, TikTok, then every generic provider (enabled or not).
  std::vector<Provider> all() const;

  bool operator==(const ProvidersConfig&) const = default;
};

struct HttpConfig {
  Millis connect_timeout = std::chrono::seconds(10);
  Millis total_timeout = std::chrono::seconds(30);  // whole request, including the body
  int max_in_flight = 64;                           // requests in flight at once, all providers
  std::size_t max_response_bytes = 1 << 20;         // larger bodies are cut off and fail
  std::string ca_file;                              // extra CA bundle (tests); empty: system CAs
  std::string user_agent = "tokenwarden/0.1";

  bool operator==(const HttpConfig&) const = default;
};

struct RetryConfig {
  Seconds initial_backoff = std::chrono::seconds(30);  // first retry after a transient failure
  Seconds max_backoff = std::chrono::hours(1);         // backoff doubles up to this cap
  double jitter = 0.2;    // each delay is drawn from [d * (1 - jitter), d]; 0 <= jitter <= 1
  int malformed_cap = 5;  // after this many malformed replies in a row, retry at max_backoff

  bool operator==(const RetryConfig&) const = default;
};

struct SchedulerConfig {
  Seconds lease = std::chrono::minutes(5);  // how long a worker owns a token it is working on
  int batch_size = 256;                     // tokens claimed from the store per wake-up
  // With nothing due, look at the store again after this long anyway (tokens added by the CLI or
  // another host, a wall clock that jumped).
  Seconds idle_poll = std::chrono::seconds(30);
  Seconds shutdown_grace = std::chrono::seconds(20);  // on SIGTERM, wait this long for requests

  bool operator==(const SchedulerConfig&) const = default;
};

struct StatusConfig {
  std::string file = "/var/lib/tokenwarden/status.json";  // JSON, rewritten atomically
  std::string prometheus_file;  // also node_exporter textfile metrics here; empty: off
  Seconds write_every = std::chrono::minutes(1);    // at least this often
  Seconds min_interval = std::chrono::seconds(10);  // after work, at most this often

  bool operator==(const StatusConfig&) const = default;
};

struct LogConfig {
  std::string level = "info";   // trace, debug, info, warn, error, critical, off
  std::string format = "text";  // text or json
  Seconds summary_every = std::chrono::minutes(5);  // a summary line this often

  bool operator==(const LogConfig&) const = default;
};

// Notifications when a token moves to needs_reauth or revoked. No command and no webhook_url (the
// default, or no `notify` section): none are sent.
struct NotifyConfig {
  std::string command;  // absolute path of an executable, run without a shell; empty: none
  Millis command_timeout = std::chrono::seconds(30);  // then it is killed: a failed attempt
  std::string webhook_url;   // http(s) URL to POST a signed JSON event to; empty: none
  SecretRef webhook_secret;  // HMAC-SHA256 key for the signature; required with webhook_url
  Seconds initial_backoff = std::chrono::seconds(10);  // first retry after a failed delivery
  Seconds max_backoff = std::chrono::minutes(10);      // backoff doubles up to this cap
  int max_attempts = 10;  // per delivery (command and webhook each), then it is given up
  int max_in_flight = 8;  // commands and webhook requests running at once

  bool enabled() const { return !command.empty() || !webhook_url.empty(); }

  bool operator==(const NotifyConfig&) const = default;
};

// The local API for applications on this host (api/local_api.h): HTTP over a Unix socket.
struct ApiConfig {
  // Where to create the socket; empty: no API, unless systemd passes a socket (socket
  // activation, systemd/tokenwarden-api.socket), which is then used instead.
  std::string socket;
  std::vector<int> allow_uids;  // peers (SO_PEERCRED) allowed by user id
  std::vector<int> allow_gids;  // ... or by primary group id; one of the two is required

  bool operator==(const ApiConfig&) const = default;
};

// The audit trail (tokenwarden audit): one row per renewal, check, state change and CLI action.
struct AuditConfig {
  // Rows older than this are deleted (the chain stays verifiable); nullopt (`off`): kept forever.
  std::optional<Seconds> retention = std::chrono::days(90);

  bool operator==(const AuditConfig&) const = default;
};

// For developers only.
struct DebugConfig {
  // Let the process dump core (it is kept from doing so otherwise): a core file holds decrypted
  // tokens and the key, so never on a production host.
  bool core_dumps = false;

  bool operator==(const DebugConfig&) const = default;
};

struct Config {
  StorageConfig storage;
  DatabaseConfig database;
  KeyConfig key;
  ProvidersConfig providers;
  HttpConfig http;
  RetryConfig retry;
  SchedulerConfig scheduler;
  StatusConfig status;
  LogConfig log;
  NotifyConfig notify;
  ApiConfig api;
  AuditConfig audit;
  DebugConfig debug;

  std::string source;  // the file it came from, for messages
};

// Where a PostgreSQL connection string came from: the config file, which must not hold a
// password, or a secret reference.
enum class DsnSource { kConfigFile, kSecret };
// Empty when `dsn` is a connection string libpq accepts (and, from the config file, holds no
// password); otherwise why not, never quoting the string.
std::string check_dsn(const std::string& dsn, DsnSource source);

// Parses YAML text. `source` names it in error messages (a path or "<string>").
// On failure the Error (Errc::kConfig) message is one line: "<source>:<line>: <key.path>: <why>".
Result<Config> parse_config(std::string_view yaml, std::string_view source);
// Reads and parses a file; a missing or unreadable file is an Errc::kConfig error naming it.
Result<Config> load_config(const std::string& path);

}  // namespace tw
