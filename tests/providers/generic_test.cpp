// The generic provider client (providers/generic.cpp) against a fake transport: what it sends for
// each grant and client authentication, and how it reads RFC 6749, 7662 and probe replies.
#include "tests/providers/provider_test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using testing::field;
using testing::header;

class GenericTest : public testing::ProviderTest {
 protected:
  GenericTest() {
    setenv("TW_TEST_GENERIC_SECRET", "generic-client-secret", 1);
    setenv("TW_TEST_GATEWAY_KEY", "gateway-key-value", 1);
    config_.provider = *Provider::named("acme");
    config_.enabled = true;
    config_.token_url = "http://auth.test/oauth2/token";
    config_.introspection_url = "http://auth.test/oauth2/introspect";
    config_.client_id = "client:1";
    config_.client_secret = SecretRef{SecretRef::Source::kEnv, "TW_TEST_GENERIC_SECRET"};
    config_.headers = {
        HeaderConfig{"x-api-key", "", {SecretRef::Source::kEnv, "TW_TEST_GATEWAY_KEY"}},
        HeaderConfig{"x-tenant", "eu", {}}};
    token_.id = "tok_acme";
    token_.provider = config_.provider;
    token_.kind = TokenKind::kRefreshToken;
    token_.account_id = "user-1";
  }

  ProviderClient& client() {
    client_ = std::move(*make_generic_client(config_, http_, clock_));
    return *client_;
  }
  TokenSecrets secrets() const { return {Secret("access-old-1234"), Secret("refresh-old-1234")}; }

  GenericProviderConfig config_;
  std::unique_ptr<ProviderClient> client_;
  TokenRecord token_;
};

TEST_F(GenericTest, RefreshTokenGrantWithBasicAuthAndExtraHeaders) {
  http_.push_reply(200, R"({"access_token":"access-new","token_type":"Bearer","expires_in":3600,
      "refresh_token":"refresh-new","scope":"reviews"})");
  Outcome o = run(client(), Operation::kRefresh, token_, secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  EXPECT_EQ(o.secrets->access_token.reveal(), "access-new");
  EXPECT_EQ(o.secrets->refresh_token.reveal(), "refresh-new");
  EXPECT_EQ(o.expires_at, testing::kNow + 3600s);
  EXPECT_EQ(o.scopes, "reviews");
  EXPECT_EQ(o.note, "refresh token rotated");
  EXPECT_TRUE(client_->renewal_rotates(token_));

  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.url, "http://auth.test/oauth2/token");
  EXPECT_TRUE(r.once);
  EXPECT_EQ(field(r.body, "grant_type"), "refresh_token");
  EXPECT_EQ(field(r.body, "refresh_token"), "refresh-old-1234");
  EXPECT_FALSE(field(r.body, "client_secret")) << "basic: the secret is not in the form";
  // base64("client%3A1:generic-client-secret"): the id is form-urlencoded first (RFC 6749 2.3.1).
  EXPECT_EQ(header(r, "Authorization"), "Basic Y2xpZW50JTNBMTpnZW5lcmljLWNsaWVudC1zZWNyZXQ=");
  EXPECT_EQ(header(r, "x-api-key"), "gateway-key-value");
  EXPECT_EQ(header(r, "x-tenant"), "eu");
  expect_clean_log_urls({"generic-client-secret", "refresh-old", "gateway-key"});
}

TEST_F(GenericTest, ClientSecretPostPutsTheCredentialsInTheForm) {
  config_.client_auth = GenericProviderConfig::ClientAuth::kPost;
  http_.push_reply(200, R"({"access_token":"access-new","token_type":"Bearer"})");
  Outcome o = run(client(), Operation::kRefresh, token_, secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  EXPECT_FALSE(o.expires_at) << "no expires_in: the expiry is unknown";
  EXPECT_TRUE(o.expiry_unknown) << "and the old token's expiry is not kept";
  EXPECT_TRUE(o.secrets->refresh_token.empty()) << "not rotated: the stored one is kept";
  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(field(r.body, "client_id"), "client%3A1");
  EXPECT_EQ(field(r.body, "client_secret"), "generic-client-secret");
  EXPECT_EQ(header(r, "Authorization"), "");
}

TEST_F(GenericTest, ClientCredentialsGrantAsksForANewTokenAndNeverKeepsARefreshToken) {
  config_.grant = GenericProviderConfig::Grant::kClientCredentials;
  config_.scope = "reviews.read";
  token_.kind = TokenKind::kClientCredentials;
  http_.push_reply(200, R"({"access_token":"cc-new","token_type":"Bearer","expires_in":28800,
      "refresh_token":"should-not-be-kept"})");
  Outcome o = run(client(), Operation::kRefresh, token_, {Secret("cc-old-12345678"), Secret()});
  ASSERT_TRUE(o.ok) << o.failure.message;
  EXPECT_EQ(o.secrets->access_token.reveal(), "cc-new");
  EXPECT_TRUE(o.secrets->refresh_token.empty());
  EXPECT_EQ(o.expires_at, testing::kNow + 8h);
  EXPECT_FALSE(client_->renewal_rotates(token_)) << "no grant to lose: never in doubt";
  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(field(r.body, "grant_type"), "client_credentials");
  EXPECT_EQ(field(r.body, "scope"), "reviews.read");
  EXPECT_FALSE(field(r.body, "refresh_token"));
  EXPECT_TRUE(r.once) << "a second copy would end the token the first one got";
}

TEST_F(GenericTest, Rfc6749ErrorsAreClassified) {
  struct Case {
    int status;
    const char* body;
    ErrorClass expected;
  };
  const Case cases[] = {
      {400, R"({"error":"invalid_grant","error_description":"refresh token revoked"})",
       ErrorClass::kPermanent},
      {401, R"({"error":"invalid_client"})", ErrorClass::kConfiguration},
      {400, R"({"error":"unauthorized_client"})", ErrorClass::kConfiguration},
      {400, R"({"error":"unsupported_grant_type"})", ErrorClass::kConfiguration},
      {400, R"({"error":"invalid_scope"})", ErrorClass::kConfiguration},
      {400, R"({"error":"invalid_request"})", ErrorClass::kConfiguration},
      {503, R"({"error":"temporarily_unavailable"})", ErrorClass::kTransient},
      {500, R"({"error":"server_error"})", ErrorClass::kTransient},
      {429, R"({"error":"slow_down"})", ErrorClass::kTransient},
      {400, R"({"error":"something_new"})", ErrorClass::kMalformed},
      {200, R"({"token_type":"Bearer"})", ErrorClass::kMalformed},
      {502, "<html>bad gateway</html>", ErrorClass::kTransient},
  };
  for (const Case& c : cases) {
    http_.push_reply(c.status, c.body, {{"retry-after", "120"}});
    Outcome o = run(client(), Operation::kRefresh, token_, secrets());
    ASSERT_FALSE(o.ok) << c.body;
    EXPECT_EQ(o.failure.error_class, c.expected) << c.body << ": " << o.failure.message;
    if (c.expected == ErrorClass::kTransient) {
      EXPECT_EQ(o.failure.retry_after, 120s) << c.body;
    }
  }
  http_.push_reply(400, R"({"error":"invalid_grant","error_description":"refresh token revoked"})");
  EXPECT_EQ(run(client(), Operation::kRefresh, token_, secrets()).failure.message,
            "acme token endpoint: HTTP 400 invalid_grant: refresh token revoked");
}

TEST_F(GenericTest, AnErrorTextEchoingASecretIsMasked) {
  http_.push_reply(400, R"({"error":"invalid_grant",
      "error_description":"token refresh-old-1234 with key gateway-key-value"})");
  Outcome o = run(client(), Operation::kRefresh, token_, secrets());
  EXPECT_EQ(o.failure.message.find("refresh-old-1234"), std::string::npos) << o.failure.message;
  EXPECT_EQ(o.failure.message.find("gateway-key-value"), std::string::npos) << o.failure.message;
}

TEST_F(GenericTest, IntrospectionOfARefreshTokenGrant) {
  http_.push_reply(200, R"({"active":true,"scope":"reviews","exp":1900000000})");
  Outcome ok = run(client(), Operation::kCheck, token_, secrets());
  EXPECT_TRUE(ok.ok) << ok.failure.message;
  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(r.url, "http://auth.test/oauth2/introspect");
  EXPECT_EQ(field(r.body, "token"), "refresh-old-1234") << "the refresh token is the grant";
  EXPECT_EQ(field(r.body, "token_type_hint"), "refresh_token");
  EXPECT_NE(header(r, "Authorization"), "");

  http_.push_reply(200, R"({"active":false})");
  Outcome revoked = run(client(), Operation::kCheck, token_, secrets());
  ASSERT_FALSE(revoked.ok);
  EXPECT_EQ(revoked.failure.error_class, ErrorClass::kRevoked);
  EXPECT_TRUE(revoked.renew_and_retry) << "a renewal confirms it first";

  http_.push_reply(200, R"({"scope":"x"})");
  EXPECT_EQ(run(client(), Operation::kCheck, token_, secrets()).failure.error_class,
            ErrorClass::kMalformed);
  http_.push_reply(401, R"({"error":"invalid_client"})");
  EXPECT_EQ(run(client(), Operation::kCheck, token_, secrets()).failure.error_class,
            ErrorClass::kConfiguration);
}

TEST_F(GenericTest, AnInactiveClientCredentialsTokenIsRenewedAndCheckedAgain) {
  config_.grant = GenericProviderConfig::Grant::kClientCredentials;
  token_.kind = TokenKind::kClientCredentials;
  token_.expires_at = testing::kNow + 1h;
  http_.push_reply(200, R"({"active":false})");
  Outcome o = run(client(), Operation::kCheck, token_, {Secret("cc-old-12345678"), Secret()});
  ASSERT_FALSE(o.ok);
  EXPECT_TRUE(o.renew_and_retry);
  EXPECT_EQ(field(http_.requests().at(0).body, "token"), "cc-old-12345678");
  EXPECT_EQ(field(http_.requests().at(0).body, "token_type_hint"), "access_token");
  // An expired (or missing) access token is renewed before a check, not introspected.
  token_.expires_at = testing::kNow - 1s;
  EXPECT_TRUE(client_->renew_before_check(token_, {Secret("cc-old-12345678"), Secret()}));
}

TEST_F(GenericTest, WithoutAnIntrospectionEndpointThereIsNoCheck) {
  config_.introspection_url.clear();
  Outcome o = run(client(), Operation::kCheck, token_, secrets());
  ASSERT_FALSE(o.ok);
  EXPECT_EQ(o.failure.error_class, ErrorClass::kConfiguration);
  EXPECT_TRUE(http_.requests().empty());
}

TEST_F(GenericTest, ApiKeyProbeStatusesDecide) {
  config_.type = GenericProviderConfig::Type::kApiKey;
  config_.probe.url = "http://api.test/v1/me";
  config_.probe.header = "Authorization";
  config_.probe.prefix = "Key ";
  config_.probe.valid_status = {200, 204};
  config_.probe.revoked_status = {401};
  token_.kind = TokenKind::kApiKey;
  const TokenSecrets key{Secret("api-key-123456"), Secret()};
  http_.push_reply(204, "");
  Outcome ok = run(client(), Operation::kCheck, token_, key);
  EXPECT_TRUE(ok.ok) << ok.failure.message;
  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.url, "http://api.test/v1/me");
  EXPECT_EQ(header(r, "Authorization"), "Key api-key-123456");
  EXPECT_EQ(header(r, "x-api-key"), "gateway-key-value");

  http_.push_reply(401, "");
  EXPECT_EQ(run(client(), Operation::kCheck, token_, key).failure.error_class,
            ErrorClass::kRevoked);
  http_.push_reply(503, "", {{"retry-after", "60"}});
  Outcome busy = run(client(), Operation::kCheck, token_, key);
  EXPECT_EQ(busy.failure.error_class, ErrorClass::kTransient);
  EXPECT_EQ(busy.failure.retry_after, 60s);
  http_.push_reply(403, "");
  EXPECT_EQ(run(client(), Operation::kCheck, token_, key).failure.error_class,
            ErrorClass::kMalformed)
      << "403 is not in this probe's lists";
  http_.push_failure(TransportError::kConnect);
  EXPECT_EQ(run(client(), Operation::kCheck, token_, key).failure.error_class,
            ErrorClass::kTransient);

  Outcome renew = run(client(), Operation::kRefresh, token_, key);
  EXPECT_EQ(renew.failure.error_class, ErrorClass::kConfiguration) << "API keys are never renewed";
}

TEST_F(GenericTest, RevokeSendsTheRefreshTokenAndMasksEverySecretInAnError) {
  config_.revocation_url = "http://auth.test/oauth2/revoke";
  http_.push_reply(400, R"({"error":"unsupported_token_type","error_description":"token )"
                        R"(refresh-old-1234 via gateway-key-value and access-old-1234"})");
  std::optional<Status> done;
  ASSERT_TRUE(client().can_revoke());
  client_->revoke(token_, secrets(), [&](Status st) { done = std::move(st); });
  io_.run();
  ASSERT_TRUE(done);
  ASSERT_FALSE(*done);
  const std::string& m = done->error().message();
  EXPECT_EQ(done->error().code(), Errc::kConfig);
  for (const char* secret : {"refresh-old-1234", "gateway-key-value", "access-old-1234"}) {
    EXPECT_EQ(m.find(secret), std::string::npos) << m;
  }
  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(r.url, "http://auth.test/oauth2/revoke");
  EXPECT_EQ(field(r.body, "token"), "refresh-old-1234");
  EXPECT_EQ(field(r.body, "token_type_hint"), "refresh_token");
  http_.push_reply(503, "");
  done.reset();
  client_->revoke(token_, secrets(), [&](Status st) { done = std::move(st); });
  io_.restart();
  io_.run();
  EXPECT_EQ(done->error().code(), Errc::kIo) << "worth retrying later";
}

TEST_F(GenericTest, AMissingSecretFailsAtStartNamingTheKey) {
  config_.headers = {HeaderConfig{"x-api-key", "", {SecretRef::Source::kEnv, "TW_TEST_UNSET_VAR"}}};
  unsetenv("TW_TEST_UNSET_VAR");
  auto c = make_generic_client(config_, http_, clock_);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("providers.generic.acme.headers.x-api-key"), std::string::npos)
      << c.error().message();
}

}  // namespace
}  // namespace tw
