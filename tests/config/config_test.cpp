#include "config/config.h"

#include <cstdlib>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include "tests/test_util.h"

#ifndef TW_SOURCE_DIR
#define TW_SOURCE_DIR "/work/main"
#endif

namespace tw {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using tw::testing::ScopedEnv;
using tw::testing::TempDir;
using tw::testing::write_file;

constexpr const char* kSource = "test.yaml";
const std::string kExample = std::string(TW_SOURCE_DIR) + "/config/tokenwarden.example.yaml";

// Parses `yaml`, failing the test on an error.
Config parse_ok(std::string_view yaml) {
  auto r = parse_config(yaml, kSource);
  if (!r.ok()) {
    ADD_FAILURE() << "unexpected error: " << r.error().message() << "\nin:\n" << yaml;
    return Config{};
  }
  return *r;
}

// Parses `yaml`, expecting an error; returns its message, which must be one line.
std::string parse_error(std::string_view yaml) {
  auto r = parse_config(yaml, kSource);
  if (r.ok()) {
    ADD_FAILURE() << "parsed, but an error was expected, in:\n" << yaml;
    return "";
  }
  EXPECT_EQ(r.error().code(), Errc::kConfig);
  EXPECT_EQ(r.error().message().find('\n'), std::string::npos)
      << "not one line: " << r.error().message();
  EXPECT_EQ(r.error().message().find('\r'), std::string::npos);
  return r.error().message();
}

struct Case {
  std::string yaml;
  std::string message;  // the whole expected message
};

void expect_errors(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    SCOPED_TRACE(c.yaml);
    EXPECT_EQ(parse_error(c.yaml), c.message);
  }
}

// Every field of the non-provider sections equals its default.
void expect_default_sections(const Config& c) {
  const Config d;
  EXPECT_EQ(c.storage.backend, StorageConfig::Backend::kSqlite);
  EXPECT_EQ(c.storage.postgres.lock_timeout, 5s);
  EXPECT_EQ(c.storage.postgres.statement_timeout, 30s);
  EXPECT_EQ(c.database.path, "/var/lib/tokenwarden/tokens.db");
  EXPECT_EQ(c.database.busy_timeout, 5s);
  EXPECT_EQ(c.key.file, d.key.file);
  EXPECT_TRUE(c.key.previous_files.empty());
  EXPECT_EQ(c.http.connect_timeout, 10s);
  EXPECT_EQ(c.http.total_timeout, 30s);
  EXPECT_EQ(c.http.max_in_flight, 64);
  EXPECT_EQ(c.http.max_response_bytes, 1u << 20);
  EXPECT_EQ(c.http.ca_file, "");
  EXPECT_EQ(c.http.user_agent, d.http.user_agent);
  EXPECT_EQ(c.retry.initial_backoff, 30s);
  EXPECT_EQ(c.retry.max_backoff, 1h);
  EXPECT_DOUBLE_EQ(c.retry.jitter, 0.2);
  EXPECT_EQ(c.retry.malformed_cap, 5);
  EXPECT_EQ(c.scheduler.lease, 5min);
  EXPECT_EQ(c.scheduler.batch_size, 256);
  EXPECT_EQ(c.status.file, "/var/lib/tokenwarden/status.json");
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.format, "text");
  EXPECT_FALSE(c.notify.enabled());
  EXPECT_EQ(c.notify.command, "");
  EXPECT_EQ(c.notify.command_timeout, 30s);
  EXPECT_EQ(c.notify.webhook_url, "");
  EXPECT_TRUE(c.notify.webhook_secret.empty());
  EXPECT_EQ(c.notify.initial_backoff, 10s);
  EXPECT_EQ(c.notify.max_backoff, 10min);
  EXPECT_EQ(c.notify.max_attempts, 10);
  EXPECT_EQ(c.notify.max_in_flight, 8);
  EXPECT_FALSE(c.debug.core_dumps);
}

void expect_schedule(const ScheduleConfig& s, std::optional<Seconds> refresh_every,
                     std::optional<Seconds> renew_before, Seconds check_every) {
  EXPECT_EQ(s.refresh_every, refresh_every);
  EXPECT_EQ(s.renew_before, renew_before);
  EXPECT_EQ(s.check_every, check_every);
}

// ---------------------------------------------------------------------------------------------
// Defaults and the example file.

TEST(ConfigDefaults, EmptyOrCommentOnlyInputGivesDefaults) {
  for (const char* yaml : {"", "\n\n", "# nothing here\n# at all\n", "~\n", "---\n"}) {
    SCOPED_TRACE(yaml);
    Config c = parse_ok(yaml);
    expect_default_sections(c);
    EXPECT_FALSE(c.providers.meta.enabled);
    EXPECT_FALSE(c.providers.google.enabled);
    EXPECT_FALSE(c.providers.tiktok.enabled);
    EXPECT_EQ(c.providers.meta.graph_base_url, "https://graph.facebook.com");
    EXPECT_EQ(c.providers.meta.api_version, "v25.0");
    expect_schedule(c.providers.meta.schedule, 7 * 24h, 3 * 24h, 1h);
    expect_schedule(c.providers.google.schedule, 30 * 24h, std::nullopt, 1h);
    expect_schedule(c.providers.tiktok.schedule, std::nullopt, 72h, 1h);
    EXPECT_TRUE(c.providers.meta.app_secret.empty());
    EXPECT_EQ(c.source, kSource);
  }
}

TEST(ConfigDefaults, EmptySectionsKeepDefaults) {
  Config c = parse_ok(
      "database:\nkey: {}\nhttp:\nretry: {}\nscheduler:\nstatus:\nlog: {}\nproviders: {}\n");
  expect_default_sections(c);
  EXPECT_FALSE(c.providers.meta.enabled);
}

TEST(ConfigExample, LoadsWithAllProvidersEnabled) {
  auto r = load_config(kExample);
  ASSERT_TRUE(r.ok()) << r.error().message();
  const Config& c = *r;
  EXPECT_EQ(c.source, kExample);
  expect_default_sections(c);

  const MetaConfig& meta = c.providers.meta;
  EXPECT_TRUE(meta.enabled);
  EXPECT_EQ(meta.graph_base_url, MetaConfig{}.graph_base_url);
  EXPECT_EQ(meta.api_version, MetaConfig{}.api_version);
  EXPECT_EQ(meta.instagram_base_url, MetaConfig{}.instagram_base_url);
  EXPECT_EQ(meta.app_id, "123456789012345");
  EXPECT_EQ(meta.app_secret.source, SecretRef::Source::kEnv);
  EXPECT_EQ(meta.app_secret.name, "TW_META_APP_SECRET");
  expect_schedule(meta.schedule, 7 * 24h, 3 * 24h, 1h);

  const GoogleConfig& google = c.providers.google;
  EXPECT_TRUE(google.enabled);
  EXPECT_EQ(google.oauth_base_url, GoogleConfig{}.oauth_base_url);
  EXPECT_EQ(google.business_base_url, GoogleConfig{}.business_base_url);
  EXPECT_EQ(google.client_id, "1234567890-example.apps.googleusercontent.com");
  EXPECT_EQ(google.client_secret.source, SecretRef::Source::kEnv);
  EXPECT_EQ(google.client_secret.name, "TW_GOOGLE_CLIENT_SECRET");
  expect_schedule(google.schedule, 30 * 24h, std::nullopt, 1h);

  const TikTokConfig& tiktok = c.providers.tiktok;
  EXPECT_TRUE(tiktok.enabled);
  EXPECT_EQ(tiktok.open_api_base_url, TikTokConfig{}.open_api_base_url);
  EXPECT_EQ(tiktok.business_api_base_url, TikTokConfig{}.business_api_base_url);
  EXPECT_EQ(tiktok.client_key, "aw0example0key");
  EXPECT_EQ(tiktok.client_secret.source, SecretRef::Source::kEnv);
  EXPECT_EQ(tiktok.client_secret.name, "TW_TIKTOK_CLIENT_SECRET");
  EXPECT_EQ(tiktok.business_app_id, "aw0example0key") << "defaults to client_key";
  EXPECT_EQ(tiktok.business_app_secret.source, SecretRef::Source::kEnv);
  EXPECT_EQ(tiktok.business_app_secret.name, "TW_TIKTOK_CLIENT_SECRET");
  expect_schedule(tiktok.schedule, std::nullopt, 72h, 1h);

  ASSERT_EQ(c.providers.generic.size(), 2u);
  const GenericProviderConfig& acme = c.providers.generic[0];
  EXPECT_EQ(acme.provider, *Provider::named("acme"));
  EXPECT_TRUE(acme.enabled);
  EXPECT_EQ(acme.type, GenericProviderConfig::Type::kOAuth2);
  EXPECT_EQ(acme.token_url, "https://auth.acme.example/oauth2/token");
  EXPECT_EQ(acme.client_auth, GenericProviderConfig::ClientAuth::kBasic);
  EXPECT_EQ(acme.grant, GenericProviderConfig::Grant::kRefreshToken);
  EXPECT_EQ(acme.kind(), TokenKind::kRefreshToken);
  EXPECT_EQ(acme.renew_at_fraction, 0.67);
  ASSERT_EQ(acme.headers.size(), 2u);
  EXPECT_EQ(acme.headers[0].name, "x-api-key");
  EXPECT_EQ(acme.headers[0].secret.name, "TW_ACME_GATEWAY_KEY");
  EXPECT_EQ(acme.headers[1].value, "en");
  EXPECT_TRUE(acme.checkable());
  const GenericProviderConfig& reviews = c.providers.generic[1];
  EXPECT_EQ(reviews.type, GenericProviderConfig::Type::kApiKey);
  EXPECT_EQ(reviews.kind(), TokenKind::kApiKey);
  EXPECT_EQ(reviews.probe.prefix, "Bearer ");
  EXPECT_EQ(reviews.probe.revoked_status, (std::vector<int>{401, 403}));
  EXPECT_TRUE(c.providers.enabled(reviews.provider));
  EXPECT_TRUE(c.providers.allows(reviews.provider, TokenKind::kApiKey));
  EXPECT_FALSE(c.providers.allows(reviews.provider, TokenKind::kRefreshToken));
  EXPECT_FALSE(c.providers.allows(*Provider::named("nosuch"), TokenKind::kApiKey));
}

TEST(ConfigErrors, GenericProvidersNameTheKeyAndLine) {
  const std::string oauth =
      "providers:\n  generic:\n    acme:\n      token_url: http://a.test/token\n"
      "      client_id: x\n      client_secret: {env: X}\n";
  expect_errors({
      {"providers:\n  generic:\n    Acme: {type: api_key}\n",
       "test.yaml:3: providers.generic.Acme: a provider name is 1 to 32 characters of a-z, 0-9, _ "
       "and -, starting with a letter"},
      {"providers:\n  generic:\n    google: {}\n",
       "test.yaml:3: providers.generic.google: is a built-in provider: configure it under "
       "providers.google"},
      {"providers:\n  generic:\n    acme:\n      client_id: x\n      client_secret: {env: X}\n",
       "test.yaml:3: providers.generic.acme.token_url: missing required key (type oauth2)"},
      {"providers:\n  generic:\n    acme:\n      token_url: http://a.test/token\n",
       "test.yaml:3: providers.generic.acme.client_id: missing required key"},
      {oauth + "      grant: password\n",
       "test.yaml:7: providers.generic.acme.grant: expected one of refresh_token, "
       "client_credentials; got \"password\""},
      {oauth + "      renew_at_fraction: 1.5\n",
       "test.yaml:7: providers.generic.acme.renew_at_fraction: must be a number from 0.05 to 0.95; "
       "got \"1.5\""},
      {oauth + "      renew_at_fraction: 0.5\n      renew_before: 1h\n",
       "test.yaml:7: providers.generic.acme.renew_at_fraction: give renew_before or "
       "renew_at_fraction, not both"},
      {oauth + "      headers: {\"bad header\": x}\n",
       "test.yaml:7: providers.generic.acme.headers.bad header: not an HTTP header name"},
      {oauth + "      headers: {Content-Type: text/plain}\n",
       "test.yaml:7: providers.generic.acme.headers.Content-Type: tokenwarden sets this header "
       "itself"},
      {oauth + "      probe: {url: http://a.test/me}\n",
       "test.yaml:7: providers.generic.acme.probe: only for type api_key"},
      {"providers:\n  generic:\n    keys:\n      type: api_key\n",
       "test.yaml:3: providers.generic.keys.probe: missing required key (type api_key: the request "
       "that tests a key)"},
      {"providers:\n  generic:\n    keys:\n      type: api_key\n      renew_before: 1h\n"
       "      probe: {url: http://a.test/me}\n",
       "test.yaml:5: providers.generic.keys.renew_before: only for type oauth2 (API keys are never "
       "renewed)"},
      {"providers:\n  generic:\n    keys:\n      type: api_key\n"
       "      probe: {url: http://a.test/me, valid_status: [200, 401]}\n",
       "test.yaml:5: providers.generic.keys.probe.revoked_status: status 401 is also in "
       "valid_status"},
      {"providers:\n  generic:\n    keys:\n      type: api_key\n"
       "      probe: {url: http://a.test/me, valid_status: [200, abc]}\n",
       "test.yaml:5: providers.generic.keys.probe.valid_status[1]: expected an integer from 100 to "
       "599"},
  });
}

// Every key the parser knows appears in the example, and every key line there has a comment on
// the line above or on the line itself.
TEST(ConfigExample, DocumentsEveryKey) {
  const std::string text = tw::testing::read_file(kExample);
  ASSERT_FALSE(text.empty());
  for (const char* key : {"database:",
                          "path:",
                          "busy_timeout:",
                          "key:",
                          "file:",
                          "previous_files:",
                          "providers:",
                          "meta:",
                          "google:",
                          "tiktok:",
                          "enabled:",
                          "graph_base_url:",
                          "api_version:",
                          "instagram_base_url:",
                          "app_id:",
                          "app_secret:",
                          "oauth_base_url:",
                          "business_base_url:",
                          "client_id:",
                          "client_secret:",
                          "open_api_base_url:",
                          "business_api_base_url:",
                          "client_key:",
                          "business_app_id:",
                          "business_app_secret:",
                          "generic:",
                          "audit:",
                          "api:",
                          "socket:",
                          "allow_uids:",
                          "allow_gids:",
                          "retention:",
                          "type:",
                          "token_url:",
                          "client_auth:",
                          "grant:",
                          "scope:",
                          "introspection_url:",
                          "revocation_url:",
                          "renew_at_fraction:",
                          "headers:",
                          "probe:",
                          "method:",
                          "url:",
                          "header:",
                          "prefix:",
                          "valid_status:",
                          "revoked_status:",
                          "refresh_every:",
                          "renew_before:",
                          "check_every:",
                          "http:",
                          "connect_timeout:",
                          "total_timeout:",
                          "max_in_flight:",
                          "max_response_bytes:",
                          "ca_file:",
                          "user_agent:",
                          "retry:",
                          "initial_backoff:",
                          "max_backoff:",
                          "jitter:",
                          "malformed_cap:",
                          "storage:",
                          "backend:",
                          "postgres:",
                          "dsn:",
                          "dsn_secret:",
                          "lock_timeout:",
                          "statement_timeout:",
                          "scheduler:",
                          "lease:",
                          "batch_size:",
                          "status:",
                          "log:",
                          "level:",
                          "format:",
                          "notify:",
                          "command:",
                          "command_timeout:",
                          "webhook_url:",
                          "webhook_secret:",
                          "max_attempts:",
                          "debug:",
                          "core_dumps:"}) {
    EXPECT_TRUE(std::regex_search(text, std::regex(std::string(R"((^|\n) *(# )?)") + key)))
        << key << " is not in the example";
  }
  std::istringstream in(text);
  std::string line;
  std::string previous;
  int number = 0;
  const std::regex key_line(R"(^\s*[a-z_]+:.*)");
  while (std::getline(in, line)) {
    ++number;
    if (std::regex_match(line, key_line)) {
      const std::size_t indent = previous.find_first_not_of(' ');
      const bool commented = line.find(" #") != std::string::npos ||
                             (indent != std::string::npos && previous[indent] == '#');
      EXPECT_TRUE(commented) << "line " << number << " has no comment: " << line;
    }
    if (!line.empty()) previous = line;
  }
}

// ---------------------------------------------------------------------------------------------
// A full configuration with every value changed.

constexpr std::string_view kFull = R"(database:
  path: /tmp/t.db
  busy_timeout: 250ms
key:
  file: /tmp/k
  previous_files:
    - /tmp/k1
    - /tmp/k2
providers:
  meta:
    graph_base_url: http://127.0.0.1:8080
    api_version: v21.0
    instagram_base_url: http://127.0.0.1:8081
    app_id: "42"
    app_secret: {file: /run/secrets/meta}
    refresh_every: "off"
    renew_before: 1d12h
    check_every: 30m
    requests_per_second: 2.5
    burst: 7
    breaker_failures: 3
    breaker_cooldown: 45s
  google:
    enabled: true
    oauth_base_url: https://oauth.example
    business_base_url: https://biz.example:8443/v1
    client_id: cid
    client_secret: {credential: google-secret}
    refresh_every: 12h
    renew_before: 1h
    check_every: 2h
  tiktok:
    enabled: false
    open_api_base_url: http://localhost:9000
    business_api_base_url: http://localhost:9001
    client_key: ck
    client_secret: {env: TT}
    business_app_id: bid
    business_app_secret: {env: TTB}
    refresh_every: 1w
    renew_before: off
    check_every: 90s
http:
  connect_timeout: 1500ms
  total_timeout: 1m
  max_in_flight: 1
  max_response_bytes: 1024
  ca_file: /tmp/ca.pem
  user_agent: tw-test/1.0
retry:
  initial_backoff: 1s
  max_backoff: 1s
  jitter: 0
  malformed_cap: 1000
scheduler:
  lease: 1m30s
  batch_size: 100000
  idle_poll: 7s
  shutdown_grace: 3s
status:
  file: /tmp/status.json
log:
  level: debug
  format: json
  summary_every: 1m
)";

TEST(ConfigParse, ReadsEveryField) {
  Config c = parse_ok(kFull);
  EXPECT_EQ(c.database.path, "/tmp/t.db");
  EXPECT_EQ(c.database.busy_timeout, 250ms);
  EXPECT_EQ(c.key.file, "/tmp/k");
  EXPECT_EQ(c.key.previous_files, (std::vector<std::string>{"/tmp/k1", "/tmp/k2"}));

  const MetaConfig& meta = c.providers.meta;
  EXPECT_TRUE(meta.enabled);
  EXPECT_EQ(meta.graph_base_url, "http://127.0.0.1:8080");
  EXPECT_EQ(meta.api_version, "v21.0");
  EXPECT_EQ(meta.instagram_base_url, "http://127.0.0.1:8081");
  EXPECT_EQ(meta.app_id, "42");
  EXPECT_EQ(meta.app_secret.source, SecretRef::Source::kFile);
  EXPECT_EQ(meta.app_secret.name, "/run/secrets/meta");
  expect_schedule(meta.schedule, std::nullopt, 36h, 30min);
  EXPECT_DOUBLE_EQ(meta.limits.requests_per_second, 2.5);
  EXPECT_EQ(meta.limits.burst, 7);
  EXPECT_EQ(meta.limits.breaker_failures, 3);
  EXPECT_EQ(meta.limits.breaker_cooldown, 45s);

  const GoogleConfig& google = c.providers.google;
  EXPECT_TRUE(google.enabled);
  EXPECT_EQ(google.oauth_base_url, "https://oauth.example");
  EXPECT_EQ(google.business_base_url, "https://biz.example:8443/v1");
  EXPECT_EQ(google.client_id, "cid");
  EXPECT_EQ(google.client_secret.source, SecretRef::Source::kCredential);
  EXPECT_EQ(google.client_secret.name, "google-secret");
  expect_schedule(google.schedule, 12h, 1h, 2h);

  const TikTokConfig& tiktok = c.providers.tiktok;
  EXPECT_FALSE(tiktok.enabled);
  EXPECT_EQ(tiktok.open_api_base_url, "http://localhost:9000");
  EXPECT_EQ(tiktok.business_api_base_url, "http://localhost:9001");
  EXPECT_EQ(tiktok.client_key, "ck");
  EXPECT_EQ(tiktok.client_secret.name, "TT");
  EXPECT_EQ(tiktok.business_app_id, "bid");
  EXPECT_EQ(tiktok.business_app_secret.source, SecretRef::Source::kEnv);
  EXPECT_EQ(tiktok.business_app_secret.name, "TTB");
  expect_schedule(tiktok.schedule, 7 * 24h, std::nullopt, 90s);

  EXPECT_EQ(c.http.connect_timeout, 1500ms);
  EXPECT_EQ(c.http.total_timeout, 1min);
  EXPECT_EQ(c.http.max_in_flight, 1);
  EXPECT_EQ(c.http.max_response_bytes, 1024u);
  EXPECT_EQ(c.http.ca_file, "/tmp/ca.pem");
  EXPECT_EQ(c.http.user_agent, "tw-test/1.0");
  EXPECT_EQ(c.retry.initial_backoff, 1s);
  EXPECT_EQ(c.retry.max_backoff, 1s);
  EXPECT_DOUBLE_EQ(c.retry.jitter, 0.0);
  EXPECT_EQ(c.retry.malformed_cap, 1000);
  EXPECT_EQ(c.scheduler.lease, 90s);
  EXPECT_EQ(c.scheduler.batch_size, 100000);
  EXPECT_EQ(c.scheduler.idle_poll, 7s);
  EXPECT_EQ(c.scheduler.shutdown_grace, 3s);
  EXPECT_EQ(c.status.file, "/tmp/status.json");
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.format, "json");
  EXPECT_EQ(c.log.summary_every, 1min);
}

TEST(ConfigParse, AcceptsEveryLogLevelAndFormat) {
  for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    EXPECT_EQ(parse_ok(std::string("log: {level: ") + level + "}").log.level, level);
  }
  EXPECT_EQ(parse_ok("log: {format: json}").log.format, "json");
  EXPECT_EQ(parse_ok("log: {format: text}").log.format, "text");
}

TEST(ConfigParse, AcceptsBoundaryValues) {
  Config c = parse_ok(
      "http: {max_in_flight: 100000, max_response_bytes: 1073741824, total_timeout: 500ms}\n"
      "retry: {jitter: 1, malformed_cap: 1}\n"
      "scheduler: {batch_size: 1, lease: 1s}\n");
  EXPECT_EQ(c.http.max_in_flight, 100000);
  EXPECT_EQ(c.http.max_response_bytes, std::size_t{1} << 30);
  EXPECT_DOUBLE_EQ(c.retry.jitter, 1.0);
  EXPECT_EQ(c.retry.malformed_cap, 1);
  EXPECT_EQ(c.scheduler.batch_size, 1);
  EXPECT_EQ(c.scheduler.lease, 1s);
  EXPECT_DOUBLE_EQ(parse_ok("retry: {jitter: 0.35}").retry.jitter, 0.35);
  EXPECT_EQ(parse_ok("database: {busy_timeout: 1ms}").database.busy_timeout, 1ms);
  EXPECT_EQ(parse_ok("database: {busy_timeout: 1h}").database.busy_timeout, 1h);
}

TEST(ConfigErrors, CrossFieldLimits) {
  expect_errors({
      {"database:\n  busy_timeout: 2h\n", "test.yaml:2: database.busy_timeout: must be at most 1h"},
      {"http: {total_timeout: 10m}\n",
       "test.yaml:1: scheduler: lease (5m) must be longer than http.total_timeout (10m): a lease "
       "that ends mid-request would let a second worker in"},
      {"http: {total_timeout: 10m}\nscheduler: {lease: 10m}\n",
       "test.yaml:2: scheduler: lease (10m) must be longer than http.total_timeout (10m): a lease "
       "that ends mid-request would let a second worker in"},
  });
}

TEST(ConfigParse, ParseConfigNamesTheSource) {
  auto r = parse_config("", "<string>");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->source, "<string>");
  auto bad = parse_config("lgo: {}\n", "<string>");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message(), "<string>:1: lgo: unknown key (did you mean \"log\"?)");
}

// ---------------------------------------------------------------------------------------------
// Unknown keys.

TEST(ConfigErrors, UnknownKeyAtTopLevelSuggestsTheClosest) {
  expect_errors({
      {"database: {}\nprovders: {}\n",
       "test.yaml:2: provders: unknown key (did you mean \"providers\"?)"},
      {"# comment\n\nlogs:\n  level: info\n",
       "test.yaml:3: logs: unknown key (did you mean \"log\"?)"},
      {"Database: {}\n", "test.yaml:1: Database: unknown key (did you mean \"database\"?)"},
  });
}

TEST(ConfigErrors, UnknownKeyFarFromAnyListsTheAllowedKeys) {
  expect_errors({
      {"log:\n  level: info\n  colour: red\n",
       "test.yaml:3: log.colour: unknown key (allowed: level, format, summary_every)"},
      {"features: {}\n",
       "test.yaml:1: features: unknown key (allowed: storage, database, key, providers, http, "
       "retry, "
       "scheduler, status, log, notify, api, audit, debug)"},
      {"providers:\n  facebook: {}\n",
       "test.yaml:2: providers.facebook: unknown key (allowed: meta, google, tiktok, generic)"},
  });
}

TEST(ConfigErrors, UnknownNestedKeyHasItsLineAndPath) {
  expect_errors({
      {"providers:\n  meta:\n    app_id: '1'\n    app_secret: {env: S}\n    refesh_every: 7d\n",
       "test.yaml:5: providers.meta.refesh_every: unknown key (did you mean \"refresh_every\"?)"},
      {"http:\n  connect_timeout: 5s\n\n  max_inflight: 3\n",
       "test.yaml:4: http.max_inflight: unknown key (did you mean \"max_in_flight\"?)"},
      {"retry: {jiter: 0.1}\n", "test.yaml:1: retry.jiter: unknown key (did you mean \"jitter\"?)"},
  });
}

// A typo in a required key is reported as the typo, not as the missing key.
TEST(ConfigErrors, TypoInRequiredKeyIsReportedAsUnknown) {
  expect_errors({
      {"providers:\n  google:\n    client_id: x\n    client_secert: {env: S}\n",
       "test.yaml:4: providers.google.client_secert: unknown key (did you mean "
       "\"client_secret\"?)"},
  });
}

TEST(ConfigErrors, DuplicateKey) {
  expect_errors({
      {"log:\n  level: info\n  level: debug\n",
       "test.yaml:3: log.level: duplicate key (first on line 2)"},
  });
}

// ---------------------------------------------------------------------------------------------
// Types.

TEST(ConfigErrors, WrongTypes) {
  expect_errors({
      {"http:\n  max_in_flight: lots\n",
       "test.yaml:2: http.max_in_flight: expected an integer; got \"lots\""},
      {"http:\n  max_in_flight: 1.5\n",
       "test.yaml:2: http.max_in_flight: expected an integer; got \"1.5\""},
      {"http:\n  max_in_flight: [1]\n",
       "test.yaml:2: http.max_in_flight: expected an integer, got a sequence"},
      {"http:\n  max_response_bytes: 1MiB\n",
       "test.yaml:2: http.max_response_bytes: expected an integer; got \"1MiB\""},
      {"database:\n  path: {a: 1}\n", "test.yaml:2: database.path: expected a string, got a map"},
      {"database:\n  path:\n", "test.yaml:2: database.path: expected a string, got nothing"},
      {"database:\n  path: ''\n", "test.yaml:2: database.path: must not be empty"},
      {"database: [a, b]\n", "test.yaml:1: database: expected a map, got a sequence"},
      {"database:\n  - a\n", "test.yaml:1: database: expected a map, got a sequence"},
      {"retry: 5\n", "test.yaml:1: retry: expected a map, got a scalar"},
      {"providers:\n  meta: on\n", "test.yaml:2: providers.meta: expected a map, got a scalar"},
      {"key:\n  previous_files: /x\n",
       "test.yaml:2: key.previous_files: expected a list of strings, got a scalar"},
      {"key:\n  previous_files:\n    - /a\n    - {b: 1}\n",
       "test.yaml:4: key.previous_files[1]: expected a string, got a map"},
      {"providers:\n  meta:\n    enabled: yes\n",
       "test.yaml:3: providers.meta.enabled: expected true or false; got \"yes\""},
      {"retry:\n  jitter: lots\n", "test.yaml:2: retry.jitter: expected a number; got \"lots\""},
      {"retry:\n  jitter: nan\n", "test.yaml:2: retry.jitter: expected a number; got \"nan\""},
      {"log: {level: verbose}\n",
       "test.yaml:1: log.level: expected one of trace, debug, info, warn, error, critical, off; "
       "got \"verbose\""},
      {"log: {format: xml}\n", "test.yaml:1: log.format: expected one of text, json; got \"xml\""},
      {"http: {user_agent: \"a\\r\\nX-Evil: 1\"}\n",
       "test.yaml:1: http.user_agent: must not contain control characters"},
      {"{[a]: 1}\n", "test.yaml:1: (top level): keys must be plain names"},
  });
}

TEST(ConfigErrors, TopLevelMustBeAMap) {
  expect_errors({
      {"- a\n- b\n", "test.yaml:1: (top level): expected a map of sections, got a sequence"},
      {"# comment\njust a string\n",
       "test.yaml:2: (top level): expected a map of sections, got a scalar"},
      {"log: {}\n---\nlog: {}\n",
       "test.yaml:2: (top level): expected one YAML document, found more than one"},
      // yaml-cpp 0.7's LoadAll loops forever on this one (found by fuzz/config_fuzz.cpp).
      {",", "test.yaml:1: (top level): expected one YAML document, found more than one"},
  });
}

TEST(ConfigErrors, IntegerRanges) {
  expect_errors({
      {"http: {max_in_flight: 0}",
       "test.yaml:1: http.max_in_flight: must be from 1 to 100000; got 0"},
      {"http: {max_in_flight: 100001}",
       "test.yaml:1: http.max_in_flight: must be from 1 to 100000; got 100001"},
      {"http: {max_in_flight: -3}",
       "test.yaml:1: http.max_in_flight: must be from 1 to 100000; got -3"},
      {"http: {max_in_flight: 99999999999999999999}",
       "test.yaml:1: http.max_in_flight: expected an integer; got \"99999999999999999999\""},
      {"http: {max_response_bytes: 1023}",
       "test.yaml:1: http.max_response_bytes: must be from 1024 to 1073741824; got 1023"},
      {"http: {max_response_bytes: 1073741825}",
       "test.yaml:1: http.max_response_bytes: must be from 1024 to 1073741824; got 1073741825"},
      {"scheduler: {batch_size: 0}",
       "test.yaml:1: scheduler.batch_size: must be from 1 to 100000; got 0"},
      {"retry: {malformed_cap: 1001}",
       "test.yaml:1: retry.malformed_cap: must be from 1 to 1000; got 1001"},
  });
}

TEST(ConfigErrors, JitterOutOfRange) {
  expect_errors({
      {"retry:\n  jitter: 1.5\n",
       "test.yaml:2: retry.jitter: must be a number from 0 to 1; got \"1.5\""},
      {"retry:\n  jitter: -0.1\n",
       "test.yaml:2: retry.jitter: must be a number from 0 to 1; got \"-0.1\""},
      {"retry:\n  jitter: inf\n", "test.yaml:2: retry.jitter: expected a number; got \"inf\""},
  });
}

TEST(ConfigErrors, Urls) {
  expect_errors({
      {"providers:\n  meta:\n    graph_base_url: ftp://x\n",
       "test.yaml:3: providers.meta.graph_base_url: expected a URL starting with http:// or "
       "https://; got \"ftp://x\""},
      {"providers:\n  meta:\n    graph_base_url: graph.facebook.com\n",
       "test.yaml:3: providers.meta.graph_base_url: expected a URL starting with http:// or "
       "https://; got \"graph.facebook.com\""},
      {"providers:\n  google:\n    oauth_base_url: https://oauth2.googleapis.com/\n",
       "test.yaml:3: providers.google.oauth_base_url: URL must not end with \"/\"; got "
       "\"https://oauth2.googleapis.com/\""},
      {"providers:\n  tiktok:\n    open_api_base_url: https://\n",
       "test.yaml:3: providers.tiktok.open_api_base_url: URL has no host; got \"https://\""},
      {"providers:\n  tiktok:\n    open_api_base_url: http://a b\n",
       "test.yaml:3: providers.tiktok.open_api_base_url: URL must not contain spaces; got "
       "\"http://a b\""},
  });
}

TEST(ConfigErrors, LongAndMultiLineValuesStayOnOneLine) {
  std::string msg = parse_error("database:\n  busy_timeout: |\n    5d\n    x\n");
  EXPECT_EQ(msg,
            "test.yaml:2: database.busy_timeout: expected a duration like 7d, 72h, 90s; "
            "got \"5d\\nx\\n\"");
  msg = parse_error("log: {level: " + std::string(100, 'v') + "}\n");
  EXPECT_THAT(msg, HasSubstr("got \"" + std::string(40, 'v') + "...\""));
  EXPECT_THAT(msg, Not(HasSubstr(std::string(41, 'v'))));
}

// ---------------------------------------------------------------------------------------------
// Durations.

TEST(ConfigErrors, BadDurationsNameKeyAndLine) {
  expect_errors({
      {"database:\n  busy_timeout: -5d\n",
       "test.yaml:2: database.busy_timeout: expected a duration like 7d, 72h, 90s; got \"-5d\""},
      {"database:\n  busy_timeout: soon\n",
       "test.yaml:2: database.busy_timeout: expected a duration like 7d, 72h, 90s; got \"soon\""},
      {"database:\n  busy_timeout: 5\n",
       "test.yaml:2: database.busy_timeout: expected a duration like 7d, 72h, 90s; got \"5\""},
      {"database:\n  busy_timeout: 0s\n",
       "test.yaml:2: database.busy_timeout: must be greater than zero"},
      {"http:\n  total_timeout: 0ms\n",
       "test.yaml:2: http.total_timeout: must be greater than zero"},
      {"database:\n  busy_timeout:\n",
       "test.yaml:2: database.busy_timeout: expected a duration like 7d, 72h, 90s, got nothing"},
      {"database:\n  busy_timeout: [5s]\n",
       "test.yaml:2: database.busy_timeout: expected a duration like 7d, 72h, 90s, got a sequence"},
      {"retry:\n  initial_backoff: 0s\n",
       "test.yaml:2: retry.initial_backoff: must be greater than zero"},
      {"scheduler:\n  lease: -1m\n",
       "test.yaml:2: scheduler.lease: expected a duration like 7d, 72h, 90s; got \"-1m\""},
      {"providers:\n  tiktok: {enabled: false,\n    check_every: 0h}\n",
       "test.yaml:3: providers.tiktok.check_every: must be greater than zero"},
      {"providers:\n  meta:\n    enabled: false\n    renew_before: -3d\n",
       "test.yaml:4: providers.meta.renew_before: expected a duration like 7d, 72h, 90s or off; "
       "got \"-3d\""},
      {"providers:\n  meta:\n    enabled: false\n    refresh_every: 0d\n",
       "test.yaml:4: providers.meta.refresh_every: must be greater than zero"},
  });
}

TEST(ConfigErrors, SecondsFieldsMustBeWholeSeconds) {
  expect_errors({
      {"scheduler:\n  lease: 500ms\n",
       "test.yaml:2: scheduler.lease: must be a whole number of seconds; got 500ms"},
      {"retry:\n  max_backoff: 1500ms\n",
       "test.yaml:2: retry.max_backoff: must be a whole number of seconds; got 1s500ms"},
      {"providers:\n  google:\n    enabled: false\n    check_every: 10ms\n",
       "test.yaml:4: providers.google.check_every: must be a whole number of seconds; got 10ms"},
  });
  // Millisecond fields take milliseconds.
  EXPECT_EQ(parse_ok("http: {connect_timeout: 1500ms}").http.connect_timeout, 1500ms);
}

TEST(ConfigSchedule, OffTurnsRefreshAndRenewOff) {
  Config c = parse_ok(
      "providers:\n"
      "  meta: {app_id: '1', app_secret: {env: S}, refresh_every: off, renew_before: 'off'}\n"
      "  tiktok: {client_key: k, client_secret: {env: S}, refresh_every: 5d}\n");
  expect_schedule(c.providers.meta.schedule, std::nullopt, std::nullopt, 1h);
  expect_schedule(c.providers.tiktok.schedule, 5 * 24h, 72h, 1h);
}

TEST(ConfigSchedule, CheckEveryCannotBeOff) {
  expect_errors({
      {"providers:\n  meta:\n    app_id: '1'\n    app_secret: {env: S}\n    check_every: off\n",
       "test.yaml:5: providers.meta.check_every: cannot be off; expected a duration like 7d, 72h, "
       "90s"},
  });
}

TEST(ConfigErrors, InitialBackoffAboveMaxBackoff) {
  expect_errors({
      {"retry:\n  initial_backoff: 2h\n  max_backoff: 1h\n",
       "test.yaml:3: retry.max_backoff: must be at least initial_backoff (2h)"},
      // max_backoff absent: the default (1h) is too small; the line is the section's.
      {"log: {}\nretry:\n  initial_backoff: 90m\n",
       "test.yaml:2: retry.max_backoff: must be at least initial_backoff (1h30m)"},
  });
  EXPECT_EQ(parse_ok("retry: {initial_backoff: 1h, max_backoff: 1h}").retry.max_backoff, 1h);
}

// ---------------------------------------------------------------------------------------------
// Providers.

TEST(ConfigProviders, SectionPresenceEnables) {
  Config c = parse_ok(
      "providers:\n  google:\n    client_id: x\n    client_secret: {env: G}\n"
      "  tiktok: {enabled: false}\n");
  EXPECT_FALSE(c.providers.meta.enabled);
  EXPECT_TRUE(c.providers.google.enabled);
  EXPECT_FALSE(c.providers.tiktok.enabled) << "enabled: false wins over presence";
  EXPECT_EQ(c.providers.google.client_id, "x");
}

TEST(ConfigProviders, DisabledProviderNeedsNoCredentialsButIsStillChecked) {
  Config c = parse_ok("providers:\n  meta: {enabled: false}\n  google:\n    enabled: false\n");
  EXPECT_FALSE(c.providers.meta.enabled);
  EXPECT_FALSE(c.providers.google.enabled);
  expect_errors({
      {"providers:\n  meta:\n    enabled: false\n    app_idd: 1\n",
       "test.yaml:4: providers.meta.app_idd: unknown key (did you mean \"app_id\"?)"},
  });
}

TEST(ConfigProviders, MissingRequiredCredentials) {
  expect_errors({
      {"providers:\n  meta: {}\n", "test.yaml:2: providers.meta.app_id: missing required key"},
      {"providers:\n  meta:\n", "test.yaml:2: providers.meta.app_id: missing required key"},
      {"providers:\n  meta:\n    app_id: '1'\n",
       "test.yaml:2: providers.meta.app_secret: missing required key"},
      {"# google\nproviders:\n\n  google:\n    client_id: abc\n",
       "test.yaml:4: providers.google.client_secret: missing required key"},
      {"providers:\n  google:\n    enabled: true\n    client_secret: {env: G}\n",
       "test.yaml:2: providers.google.client_id: missing required key"},
      {"providers:\n  tiktok:\n    client_secret: {env: T}\n",
       "test.yaml:2: providers.tiktok.client_key: missing required key"},
      {"providers:\n  tiktok:\n    client_key: k\n",
       "test.yaml:2: providers.tiktok.client_secret: missing required key"},
      {"providers:\n  meta:\n    app_id: ''\n    app_secret: {env: S}\n",
       "test.yaml:3: providers.meta.app_id: must not be empty"},
  });
}

TEST(ConfigProviders, TikTokBusinessAppDefaultsToLoginKitApp) {
  Config c = parse_ok("providers:\n  tiktok: {client_key: ck, client_secret: {file: /s}}\n");
  EXPECT_EQ(c.providers.tiktok.business_app_id, "ck");
  EXPECT_EQ(c.providers.tiktok.business_app_secret.source, SecretRef::Source::kFile);
  EXPECT_EQ(c.providers.tiktok.business_app_secret.name, "/s");

  c = parse_ok(
      "providers:\n  tiktok:\n    client_key: ck\n    client_secret: {file: /s}\n"
      "    business_app_id: b\n    business_app_secret: {credential: tt-biz}\n");
  EXPECT_EQ(c.providers.tiktok.business_app_id, "b");
  EXPECT_EQ(c.providers.tiktok.business_app_secret.source, SecretRef::Source::kCredential);
  EXPECT_EQ(c.providers.tiktok.business_app_secret.name, "tt-biz");
}

TEST(ConfigProviders, TikTokBusinessAppIdAndSecretGoTogether) {
  expect_errors({
      {"providers:\n  tiktok:\n    client_key: ck\n    client_secret: {file: /s}\n"
       "    business_app_id: b\n",
       "test.yaml:2: providers.tiktok.business_app_secret: missing required key "
       "(business_app_id and business_app_secret go together)"},
      {"providers:\n  tiktok:\n    client_key: ck\n    client_secret: {file: /s}\n"
       "    business_app_secret: {env: B}\n",
       "test.yaml:2: providers.tiktok.business_app_id: missing required key "
       "(business_app_id and business_app_secret go together)"},
  });
}

// ---------------------------------------------------------------------------------------------
// Secret references.

TEST(ConfigSecrets, LiteralSecretIsRejectedWithoutShowingIt) {
  const std::string literal = "EAABsbCS1iHgBAKZCZBtopsecretvalue";
  for (const std::string& value :
       {literal, "\"" + literal + "\"", "'" + literal + "'", "[" + literal + "]",
        "{" + literal + "}", "{" + literal + ": x}", "{value: " + literal + "}",
        "{env: " + literal + ", file: " + literal + "}"}) {
    const std::string yaml =
        "providers:\n  meta:\n    app_id: '1'\n    app_secret: " + value + "\n";
    SCOPED_TRACE(yaml);
    const std::string msg = parse_error(yaml);
    EXPECT_THAT(msg, StartsWith("test.yaml:4: providers.meta.app_secret"));
    EXPECT_THAT(msg, HasSubstr("{file: PATH}, {env: NAME} or {credential: NAME}"));
    EXPECT_THAT(msg, Not(HasSubstr("EAAB")));
    EXPECT_THAT(msg, Not(HasSubstr("topsecret")));
  }
  expect_errors({
      {"providers:\n  google:\n    client_id: x\n    client_secret: hunter2\n",
       "test.yaml:4: providers.google.client_secret: got a scalar; secrets must be given as "
       "{file: PATH}, {env: NAME} or {credential: NAME}"},
      {"providers:\n  google:\n    client_id: x\n    client_secret:\n",
       "test.yaml:4: providers.google.client_secret: got nothing; secrets must be given as "
       "{file: PATH}, {env: NAME} or {credential: NAME}"},
  });
}

TEST(ConfigSecrets, ReferenceShapes) {
  expect_errors({
      {"providers:\n  tiktok:\n    client_key: k\n    client_secret: {}\n",
       "test.yaml:4: providers.tiktok.client_secret: give exactly one of file, env, credential; "
       "secrets must be given as {file: PATH}, {env: NAME} or {credential: NAME}"},
      {"providers:\n  tiktok:\n    client_key: k\n    client_secret: {env: A, file: /b}\n",
       "test.yaml:4: providers.tiktok.client_secret: give exactly one of file, env, credential; "
       "secrets must be given as {file: PATH}, {env: NAME} or {credential: NAME}"},
      {"providers:\n  tiktok:\n    client_key: k\n    client_secret: {env: ''}\n",
       "test.yaml:4: providers.tiktok.client_secret.env: must not be empty"},
      {"providers:\n  tiktok:\n    client_key: k\n    client_secret:\n      file: [a]\n",
       "test.yaml:5: providers.tiktok.client_secret.file: expected a string, got a sequence"},
      {"providers:\n  tiktok:\n    client_key: k\n    client_secret: {credential: ../key}\n",
       "test.yaml:4: providers.tiktok.client_secret.credential: must be a file name in "
       "$CREDENTIALS_DIRECTORY, without \"/\""},
      {"providers:\n  tiktok:\n    client_key: k\n    client_secret: {credential: ..}\n",
       "test.yaml:4: providers.tiktok.client_secret.credential: must be a file name in "
       "$CREDENTIALS_DIRECTORY, without \"/\""},
      {"providers:\n  tiktok:\n    client_key: k\n    client_secret:\n      env: A\n"
       "      path: /x\n",
       "test.yaml:6: providers.tiktok.client_secret: unknown key; secrets must be given as "
       "{file: PATH}, {env: NAME} or {credential: NAME}"},
  });
}

TEST(ConfigSecrets, ResolvesFromFileDroppingOneNewline) {
  TempDir dir;
  struct {
    std::string content;
    std::string secret;
  } cases[] = {
      {"s3cret", "s3cret"},           {"s3cret\n", "s3cret"},
      {"s3cret\r\n", "s3cret"},       {"s3cret\n\n", "s3cret\n"},
      {"  spaced  \n", "  spaced  "}, {std::string("bin\0ary", 7), std::string("bin\0ary", 7)}};
  for (const auto& c : cases) {
    write_file(dir.file("s"), c.content);
    SecretRef ref{SecretRef::Source::kFile, dir.file("s")};
    auto r = ref.resolve();
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_EQ(r->reveal(), c.secret);
  }
}

TEST(ConfigSecrets, LargeSecretFileIsReadWhole) {
  TempDir dir;
  const std::string big(200'000, 'k');
  write_file(dir.file("big"), big + "\n");
  auto r = SecretRef{SecretRef::Source::kFile, dir.file("big")}.resolve();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->reveal(), big);
}

TEST(ConfigSecrets, FileErrorsNameThePath) {
  TempDir dir;
  const std::string missing = dir.file("missing");
  auto r = SecretRef{SecretRef::Source::kFile, missing}.resolve();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::kConfig);
  EXPECT_EQ(r.error().message(),
            "secret file " + missing + ": cannot read: No such file or directory");

  write_file(dir.file("empty"), "");
  r = SecretRef{SecretRef::Source::kFile, dir.file("empty")}.resolve();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "secret file " + dir.file("empty") + " is empty");

  write_file(dir.file("newline"), "\n");
  r = SecretRef{SecretRef::Source::kFile, dir.file("newline")}.resolve();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "secret file " + dir.file("newline") + " is empty");

  r = SecretRef{SecretRef::Source::kFile, dir.path()}.resolve();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "secret file " + dir.path() + ": cannot read: Is a directory");

  write_file(dir.file("huge"), std::string((1 << 20) + 1, 'x'));
  r = SecretRef{SecretRef::Source::kFile, dir.file("huge")}.resolve();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message(), HasSubstr(": cannot read: File too large"));
  EXPECT_THAT(r.error().message(), Not(HasSubstr("xxxx")));
}

TEST(ConfigSecrets, ResolvesFromEnvironment) {
  {
    ScopedEnv env("TW_CONFIG_TEST_SECRET", "from-env\n");
    auto r = SecretRef{SecretRef::Source::kEnv, "TW_CONFIG_TEST_SECRET"}.resolve();
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_EQ(r->reveal(), "from-env");
  }
  {
    ScopedEnv env("TW_CONFIG_TEST_SECRET", nullptr);
    auto r = SecretRef{SecretRef::Source::kEnv, "TW_CONFIG_TEST_SECRET"}.resolve();
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), Errc::kConfig);
    EXPECT_EQ(r.error().message(), "environment variable TW_CONFIG_TEST_SECRET is not set");
  }
  {
    ScopedEnv env("TW_CONFIG_TEST_SECRET", "");
    auto r = SecretRef{SecretRef::Source::kEnv, "TW_CONFIG_TEST_SECRET"}.resolve();
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().message(), "environment variable TW_CONFIG_TEST_SECRET is empty");
  }
}

TEST(ConfigSecrets, ResolvesFromSystemdCredential) {
  TempDir dir;
  write_file(dir.file("meta-app-secret"), "cred-value\n");
  {
    ScopedEnv env("CREDENTIALS_DIRECTORY", dir.path().c_str());
    auto r = SecretRef{SecretRef::Source::kCredential, "meta-app-secret"}.resolve();
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_EQ(r->reveal(), "cred-value");

    r = SecretRef{SecretRef::Source::kCredential, "absent"}.resolve();
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), Errc::kConfig);
    EXPECT_EQ(r.error().message(), "credential absent (" + dir.file("absent") +
                                       "): cannot read: No such file or directory");
  }
  {
    ScopedEnv env("CREDENTIALS_DIRECTORY", nullptr);
    auto r = SecretRef{SecretRef::Source::kCredential, "meta-app-secret"}.resolve();
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), Errc::kConfig);
    EXPECT_THAT(r.error().message(), StartsWith("credential meta-app-secret: "));
    EXPECT_THAT(r.error().message(), HasSubstr("$CREDENTIALS_DIRECTORY is not set"));
  }
}

TEST(ConfigSecrets, EmptyReferenceDoesNotResolve) {
  auto r = SecretRef{}.resolve();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::kConfig);
}

TEST(ConfigSecrets, ParsedReferenceResolves) {
  ScopedEnv env("TW_CONFIG_TEST_GOOGLE", "g-secret");
  Config c = parse_ok(
      "providers:\n  google: {client_id: x, client_secret: {env: TW_CONFIG_TEST_GOOGLE}}\n");
  auto r = c.providers.google.client_secret.resolve();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->reveal(), "g-secret");
}

// ---------------------------------------------------------------------------------------------
// YAML syntax and files.

TEST(ConfigErrors, YamlSyntaxErrorHasALine) {
  expect_errors({
      {"log:\n  level: info\n  format: [text\n",
       "test.yaml:4: YAML syntax error: end of sequence flow not found"},
      {"log: {level: info\n", "test.yaml:2: YAML syntax error: end of map flow not found"},
  });
  const std::string msg = parse_error("database:\n  path: /x\n bad: indent\n");
  EXPECT_THAT(msg, StartsWith("test.yaml:3: YAML syntax error: "));
}

TEST(ConfigLoad, MissingFile) {
  TempDir dir;
  const std::string path = dir.file("nope.yaml");
  auto r = load_config(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::kConfig);
  EXPECT_EQ(r.error().message(), path + ": cannot read config file: No such file or directory");

  r = load_config(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), dir.path() + ": cannot read config file: Is a directory");
}

TEST(ConfigLoad, ErrorsNameTheFile) {
  TempDir dir;
  const std::string path = dir.file("tw.yaml");
  write_file(path, "# tokenwarden\nscheduler:\n  batch_size: 0\n");
  auto r = load_config(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(),
            path + ":3: scheduler.batch_size: must be from 1 to 100000; got 0");

  write_file(path, "log: {level: warn}\n");
  auto ok = load_config(path);
  ASSERT_TRUE(ok.ok()) << ok.error().message();
  EXPECT_EQ(ok->source, path);
  EXPECT_EQ(ok->log.level, "warn");
}

// ---------------------------------------------------------------------------------------------
// Notifications.

TEST(ConfigStorage, PostgresFromADsnOrASecret) {
  Config c = parse_ok(
      "storage:\n  backend: postgres\n  postgres:\n"
      "    dsn: \"host=db1 dbname=tw sslmode=verify-full\"\n    lock_timeout: 2s\n");
  EXPECT_EQ(c.storage.backend, StorageConfig::Backend::kPostgres);
  EXPECT_EQ(c.storage.postgres.dsn, "host=db1 dbname=tw sslmode=verify-full");
  EXPECT_EQ(c.storage.postgres.lock_timeout, 2s);
  Config s = parse_ok(
      "storage:\n  backend: postgres\n  postgres:\n    dsn_secret: {credential: tw.pgdsn}\n");
  EXPECT_EQ(s.storage.postgres.dsn_secret.source, SecretRef::Source::kCredential);
  EXPECT_EQ(s.storage.postgres.dsn_secret.name, "tw.pgdsn");
  EXPECT_EQ(parse_ok("storage: {backend: sqlite}").storage.backend,
            StorageConfig::Backend::kSqlite);
}

TEST(ConfigStorage, Errors) {
  expect_errors({
      {"storage: {backend: mysql}",
       "test.yaml:1: storage.backend: expected one of sqlite, postgres; got \"mysql\""},
      {"storage:\n  backend: postgres\n",
       "test.yaml:1: storage.postgres: backend postgres needs postgres.dsn or "
       "postgres.dsn_secret"},
      {"storage:\n  postgres:\n    dsn: \"host=db1\"\n    dsn_secret: {env: X}\n",
       "test.yaml:4: storage.postgres.dsn_secret: give dsn or dsn_secret, not both"},
      // The password is never quoted back.
      {"storage:\n  postgres:\n    dsn: \"host=db1 password=hunter2\"\n",
       "test.yaml:3: storage.postgres.dsn: holds a password; put the connection string in a file "
       "and name it with dsn_secret (e.g. {credential: tokenwarden.pgdsn}), or use libpq's "
       "~/.pgpass"},
      {"storage:\n  postgres:\n    dsn: \"host=db1 sslkey=/k sslpassword=hunter2\"\n",
       "test.yaml:3: storage.postgres.dsn: holds a password; put the connection string in a file "
       "and name it with dsn_secret (e.g. {credential: tokenwarden.pgdsn}), or use libpq's "
       "~/.pgpass"},
      {"storage:\n  postgres:\n    dsn: \"postgresql://tw:hunter2@db1/tw\"\n",
       "test.yaml:3: storage.postgres.dsn: holds a password; put the connection string in a file "
       "and name it with dsn_secret (e.g. {credential: tokenwarden.pgdsn}), or use libpq's "
       "~/.pgpass"},
      {"storage:\n  postgres:\n    dsn: \"host='db1\"\n",
       "test.yaml:3: storage.postgres.dsn: not a valid PostgreSQL connection string (unterminated "
       "quoted string in connection info string)"},
      {"storage:\n  postgres: {dns: x}\n",
       "test.yaml:2: storage.postgres.dns: unknown key (did you mean \"dsn\"?)"},
  });
}

TEST(ConfigNotify, ReadsEveryField) {
  Config c = parse_ok(R"(notify:
  command: /usr/local/bin/reauth-hook
  command_timeout: 1500ms
  webhook_url: https://hooks.example:8443/tw
  webhook_secret: {env: TW_HOOK_KEY}
  initial_backoff: 2s
  max_backoff: 1h
  max_attempts: 1000
  max_in_flight: 1
)");
  const NotifyConfig& n = c.notify;
  EXPECT_TRUE(n.enabled());
  EXPECT_EQ(n.command, "/usr/local/bin/reauth-hook");
  EXPECT_EQ(n.command_timeout, 1500ms);
  EXPECT_EQ(n.webhook_url, "https://hooks.example:8443/tw");
  EXPECT_EQ(n.webhook_secret.source, SecretRef::Source::kEnv);
  EXPECT_EQ(n.webhook_secret.name, "TW_HOOK_KEY");
  EXPECT_EQ(n.initial_backoff, 2s);
  EXPECT_EQ(n.max_backoff, 1h);
  EXPECT_EQ(n.max_attempts, 1000);
  EXPECT_EQ(n.max_in_flight, 1);
}

TEST(ConfigNotify, EitherChannelAloneEnables) {
  EXPECT_FALSE(parse_ok("notify:\n").notify.enabled());
  EXPECT_FALSE(parse_ok("notify: {max_attempts: 3}").notify.enabled());
  EXPECT_TRUE(parse_ok("notify: {command: /bin/true}").notify.enabled());
  Config c = parse_ok("notify: {webhook_url: http://127.0.0.1:9/h, webhook_secret: {file: /k}}");
  EXPECT_TRUE(c.notify.enabled());
  EXPECT_EQ(c.notify.command, "");
  // Receivers such as Zapier's catch hooks end with "/".
  EXPECT_EQ(parse_ok("notify: {webhook_url: 'https://hooks.zapier.com/hooks/catch/1/ab/', "
                     "webhook_secret: {file: /k}}")
                .notify.webhook_url,
            "https://hooks.zapier.com/hooks/catch/1/ab/");
}

TEST(ConfigNotify, Errors) {
  expect_errors({
      {"notify:\n  webhook_url: https://hooks.example/tw\n",
       "test.yaml:1: notify.webhook_secret: missing required key (webhook_url and webhook_secret "
       "go together)"},
      {"notify:\n  webhook_secret: {env: K}\n",
       "test.yaml:1: notify.webhook_url: missing required key (webhook_url and webhook_secret go "
       "together)"},
      {"notify:\n  command: bin/hook\n",
       "test.yaml:2: notify.command: must be an absolute path; got \"bin/hook\""},
      {"notify:\n  command: \"\"\n", "test.yaml:2: notify.command: must not be empty"},
      {"notify:\n  webhook_url: ftp://x\n  webhook_secret: {env: K}\n",
       "test.yaml:2: notify.webhook_url: expected a URL starting with http:// or https://"},
      // The URL's path may be a credential: never quoted back.
      {"notify:\n  webhook_url: https:///hooks/catch/123456/abcSECRETdef/\n"
       "  webhook_secret: {env: K}\n",
       "test.yaml:2: notify.webhook_url: URL has no host"},
      {"notify:\n  webhook_url: \"https://user:pw@hooks.example/a b\"\n"
       "  webhook_secret: {env: K}\n",
       "test.yaml:2: notify.webhook_url: URL must not contain spaces"},
      {"notify:\n  webhook_url: https://x\n  webhook_secret: s3cr3t\n",
       "test.yaml:3: notify.webhook_secret: got a scalar; secrets must be given as {file: PATH}, "
       "{env: NAME} or {credential: NAME}"},
      {"notify: {max_attempts: 0}",
       "test.yaml:1: notify.max_attempts: must be from 1 to 1000; got 0"},
      {"notify: {max_in_flight: 1001}",
       "test.yaml:1: notify.max_in_flight: must be from 1 to 1000; got 1001"},
      {"notify: {command_timeout: 0s}",
       "test.yaml:1: notify.command_timeout: must be greater than zero"},
      {"notify: {initial_backoff: 1m, max_backoff: 30s}",
       "test.yaml:1: notify.max_backoff: must be at least initial_backoff (1m)"},
      {"notify: {comand: /bin/true}",
       "test.yaml:1: notify.comand: unknown key (did you mean \"command\"?)"},
  });
}

}  // namespace
}  // namespace tw
