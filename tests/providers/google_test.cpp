#include "tests/providers/provider_test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using testing::field;
using testing::header;

class GoogleTest : public testing::ProviderTest {
 protected:
  GoogleTest() {
    setenv("TW_TEST_GOOGLE_SECRET", "google-client-secret-value", 1);
    config_.enabled = true;
    config_.client_id = "cid.apps.googleusercontent.com";
    config_.client_secret = SecretRef{SecretRef::Source::kEnv, "TW_TEST_GOOGLE_SECRET"};
    config_.oauth_base_url = "http://oauth.test";
    config_.business_base_url = "http://gbp.test";
    client_ = std::move(*make_google_client(config_, http_, clock_));
    token_.id = "tok_g";
    token_.provider = Provider::kGoogle;
    token_.kind = TokenKind::kRefreshToken;
    token_.account_id = "accounts/1";
  }

  TokenSecrets secrets() const { return {Secret("ya29.old-access"), Secret("1//refresh-old")}; }

  GoogleConfig config_;
  std::unique_ptr<ProviderClient> client_;
  TokenRecord token_;
};

TEST_F(GoogleTest, RefreshPostsTheGrantAndReturnsTheNewAccessToken) {
  http_.push_reply(200, R"({"access_token":"ya29.new","expires_in":3599,
      "scope":"https://www.googleapis.com/auth/business.manage","token_type":"Bearer"})");
  Outcome o = run(*client_, Operation::kRefresh, token_, secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  ASSERT_TRUE(o.secrets);
  EXPECT_EQ(o.secrets->access_token.reveal(), "ya29.new");
  EXPECT_TRUE(o.secrets->refresh_token.empty()) << "no rotation: the stored one is kept";
  EXPECT_EQ(o.expires_at, testing::kNow + 3599s);
  EXPECT_EQ(o.scopes, "https://www.googleapis.com/auth/business.manage");

  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.url, "http://oauth.test/token");
  EXPECT_EQ(header(r, "Content-Type"), "application/x-www-form-urlencoded");
  EXPECT_EQ(field(r.body, "grant_type"), "refresh_token");
  EXPECT_EQ(field(r.body, "client_id"), "cid.apps.googleusercontent.com");
  EXPECT_EQ(field(r.body, "client_secret"), "google-client-secret-value");
  EXPECT_EQ(field(r.body, "refresh_token"), "1%2F%2Frefresh-old");
  expect_clean_log_urls({"google-client-secret-value", "refresh-old"});
}

TEST_F(GoogleTest, AReturnedRefreshTokenReplacesTheOldOne) {
  http_.push_reply(200, R"({"access_token":"ya29.new","expires_in":3599,"refresh_token":"1//r2"})");
  Outcome o = run(*client_, Operation::kRefresh, token_, secrets());
  ASSERT_TRUE(o.ok);
  EXPECT_EQ(o.secrets->refresh_token.reveal(), "1//r2");
  EXPECT_EQ(o.note, "refresh token rotated");
}

TEST_F(GoogleTest, InvalidGrantMeansRevoked) {
  http_.push_reply(
      400, R"({"error":"invalid_grant","error_description":"Token has been expired or revoked."})");
  Outcome o = run(*client_, Operation::kRefresh, token_, secrets());
  ASSERT_FALSE(o.ok);
  EXPECT_EQ(o.failure.error_class, ErrorClass::kRevoked);
  EXPECT_EQ(o.failure.message, "invalid_grant: Token has been expired or revoked.");
}

TEST_F(GoogleTest, ClientErrorsAreConfiguration) {
  http_.push_reply(
      401, R"({"error":"invalid_client","error_description":"The OAuth client was not found."})");
  EXPECT_EQ(run(*client_, Operation::kRefresh, token_, secrets()).failure.error_class,
            ErrorClass::kConfiguration);
  http_.push_reply(400, R"({"error":"unauthorized_client"})");
  EXPECT_EQ(run(*client_, Operation::kRefresh, token_, secrets()).failure.error_class,
            ErrorClass::kConfiguration);
}

TEST_F(GoogleTest, TransientFailuresHonourRetryAfter) {
  http_.push_reply(503, "<html>Service Unavailable</html>", {{"retry-after", "120"}});
  Outcome o = run(*client_, Operation::kRefresh, token_, secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kTransient);
  EXPECT_EQ(o.failure.retry_after, 120s);
  http_.push_reply(429, R"({"error":"rate_limit_exceeded"})",
                   {{"retry-after", "Wed, 15 Jan 2027 08:01:00 GMT"}});
  Outcome o2 = run(*client_, Operation::kRefresh, token_, secrets());
  EXPECT_EQ(o2.failure.error_class, ErrorClass::kTransient);
  EXPECT_EQ(o2.failure.retry_after, 60s) << "an HTTP-date, 60 s after the fake now";
  http_.push_failure(TransportError::kTimeout, "Timeout was reached");
  EXPECT_EQ(run(*client_, Operation::kRefresh, token_, secrets()).failure.error_class,
            ErrorClass::kTransient);
}

TEST_F(GoogleTest, A200WithoutAnAccessTokenIsMalformedNotRevoked) {
  http_.push_reply(200, R"({"token_type":"Bearer"})");
  Outcome o = run(*client_, Operation::kRefresh, token_, secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kMalformed);
  EXPECT_NE(o.failure.message.find("sha256"), std::string::npos) << o.failure.message;
  http_.push_reply(200, "{\"access_token\": \"ya29.trunc");
  EXPECT_EQ(run(*client_, Operation::kRefresh, token_, secrets()).failure.error_class,
            ErrorClass::kMalformed);
  http_.push_reply(200, R"({"error":"internal_failure"})");
  EXPECT_EQ(run(*client_, Operation::kRefresh, token_, secrets()).failure.error_class,
            ErrorClass::kTransient)
      << "an error in a 200 body is an error";
}

TEST_F(GoogleTest, CheckWithAFreshAccessTokenCallsTheAccountsList) {
  token_.expires_at = testing::kNow + 30min;
  http_.push_reply(200, R"({"accounts":[{"name":"accounts/1","type":"PERSONAL"}]})");
  Outcome o = run(*client_, Operation::kCheck, token_, secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  EXPECT_FALSE(o.secrets) << "nothing renewed";
  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(r.url, "http://gbp.test/v1/accounts?pageSize=1");
  EXPECT_EQ(header(r, "Authorization"), "Bearer ya29.old-access");
}

TEST_F(GoogleTest, AnExpiredOrMissingAccessTokenIsRenewedBeforeACheck) {
  token_.expires_at = testing::kNow + 30min;
  EXPECT_FALSE(client_->renew_before_check(token_, secrets()));
  token_.expires_at = testing::kNow + 30s;
  EXPECT_TRUE(client_->renew_before_check(token_, secrets())) << "within a minute of expiry";
  token_.expires_at.reset();
  EXPECT_TRUE(client_->renew_before_check(token_, secrets())) << "unknown expiry";
  token_.expires_at = testing::kNow + 30min;
  EXPECT_TRUE(client_->renew_before_check(token_, {Secret(), Secret("1//r")})) << "no access token";
  EXPECT_EQ(http_.requests().size(), 0u) << "deciding costs no request";
}

TEST_F(GoogleTest, A401AsksForARenewalAndIsRevokedIfItStands) {
  token_.expires_at = testing::kNow + 30min;
  http_.push_reply(
      401,
      R"({"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}})");
  Outcome o = run(*client_, Operation::kCheck, token_, secrets());
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.failure.error_class, ErrorClass::kRevoked);
  EXPECT_TRUE(o.renew_and_retry) << "the worker renews and checks once more first";
  EXPECT_FALSE(o.secrets) << "the client itself renews nothing";
  EXPECT_EQ(http_.requests().size(), 1u);
}

TEST_F(GoogleTest, A403IsOurConfigurationNotTheCustomersRevocation) {
  token_.expires_at = testing::kNow + 30min;
  http_.push_reply(
      403,
      R"({"error":{"code":403,"message":"My Business Account Management API has not been used in project 123 before or it is disabled.","status":"PERMISSION_DENIED"}})");
  Outcome o = run(*client_, Operation::kCheck, token_, secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kConfiguration);
  EXPECT_NE(o.failure.message.find("PERMISSION_DENIED"), std::string::npos) << o.failure.message;
  http_.push_reply(503, "");
  EXPECT_EQ(run(*client_, Operation::kCheck, token_, secrets()).failure.error_class,
            ErrorClass::kTransient);
}

TEST_F(GoogleTest, FailureMessagesNeverEchoASecret) {
  http_.push_reply(
      400,
      R"({"error":"invalid_grant","error_description":"Bad refresh token 1//refresh-old for client google-client-secret-value"})");
  Outcome o = run(*client_, Operation::kRefresh, token_, secrets());
  EXPECT_EQ(o.failure.message.find("refresh-old"), std::string::npos) << o.failure.message;
  EXPECT_EQ(o.failure.message.find("google-client-secret-value"), std::string::npos);
  token_.expires_at = testing::kNow + 30min;
  http_.push_reply(
      403,
      R"({"error":{"status":"PERMISSION_DENIED","message":"token ya29.old-access is not allowed"}})");
  Outcome c = run(*client_, Operation::kCheck, token_, secrets());
  EXPECT_EQ(c.failure.message.find("ya29.old-access"), std::string::npos) << c.failure.message;
}

TEST_F(GoogleTest, AMissingClientSecretFailsAtStartNamingTheKey) {
  GoogleConfig c = config_;
  c.client_secret = SecretRef{SecretRef::Source::kEnv, "TW_TEST_NO_SUCH_VARIABLE"};
  auto client = make_google_client(c, http_, clock_);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.error().code(), Errc::kConfig);
  EXPECT_NE(client.error().message().find("providers.google.client_secret"), std::string::npos);
}

}  // namespace
}  // namespace tw
