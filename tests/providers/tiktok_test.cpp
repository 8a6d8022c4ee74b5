#include <nlohmann/json.hpp>

#include "tests/providers/provider_test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using testing::field;
using testing::header;

class TikTokTest : public testing::ProviderTest {
 protected:
  TikTokTest() {
    setenv("TW_TEST_TIKTOK_SECRET", "tiktok-client-secret-value", 1);
    config_.enabled = true;
    config_.client_key = "ckey";
    config_.client_secret = SecretRef{SecretRef::Source::kEnv, "TW_TEST_TIKTOK_SECRET"};
    config_.business_app_id = "ckey";
    config_.business_app_secret = config_.client_secret;
    config_.open_api_base_url = "http://open.test";
    config_.business_api_base_url = "http://biz.test";
    client_ = std::move(*make_tiktok_client(config_, http_, clock_));
    v2_.id = "tok_v2";
    v2_.provider = Provider::kTikTok;
    v2_.kind = TokenKind::kRefreshToken;
    v2_.account_id = "open-1";
    v2_.expires_at = testing::kNow + 10h;
    biz_ = v2_;
    biz_.id = "tok_biz";
    biz_.kind = TokenKind::kBusinessToken;
  }

  TokenSecrets secrets() const { return {Secret("act.old-access"), Secret("rft.old-refresh")}; }

  TikTokConfig config_;
  std::unique_ptr<ProviderClient> client_;
  TokenRecord v2_, biz_;
};

TEST_F(TikTokTest, V2RenewalRotatesTheRefreshToken) {
  http_.push_reply(200, R"({"access_token":"act.new","expires_in":86400,"open_id":"open-1",
      "refresh_expires_in":31536000,"refresh_token":"rft.new","scope":"user.info.basic","token_type":"Bearer"})");
  Outcome o = run(*client_, Operation::kRefresh, v2_, secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  EXPECT_EQ(o.secrets->access_token.reveal(), "act.new");
  EXPECT_EQ(o.secrets->refresh_token.reveal(), "rft.new");
  EXPECT_EQ(o.expires_at, testing::kNow + 86400s);
  EXPECT_EQ(o.refresh_expires_at, testing::kNow + 31536000s);
  EXPECT_EQ(o.scopes, "user.info.basic");
  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(r.url, "http://open.test/v2/oauth/token/");
  EXPECT_EQ(field(r.body, "client_key"), "ckey");
  EXPECT_EQ(field(r.body, "grant_type"), "refresh_token");
  EXPECT_EQ(field(r.body, "refresh_token"), "rft.old-refresh");
}

TEST_F(TikTokTest, V2InvalidGrantIsPermanentWhateverItsStatus) {
  for (int status : {400, 200}) {
    http_.push_reply(
        status,
        R"({"error":"invalid_grant","error_description":"Refresh token is invalid or expired.","log_id":"x"})");
    Outcome o = run(*client_, Operation::kRefresh, v2_, secrets());
    EXPECT_EQ(o.failure.error_class, ErrorClass::kPermanent) << status;
  }
  http_.push_reply(400, R"({"error":"invalid_client","error_description":"x"})");
  EXPECT_EQ(run(*client_, Operation::kRefresh, v2_, secrets()).failure.error_class,
            ErrorClass::kConfiguration);
}

// Whether the renewal may have rotated the refresh token without our learning the new one.
TEST_F(TikTokTest, ARenewalIsInDoubtUnlessItNeverLeftOrWasPlainlyRefused) {
  struct Case {
    std::optional<TransportError> error;
    int status;
    const char* body;
    bool in_doubt;
  };
  const Case cases[] = {
      {TransportError::kTimeout, 0, "", true},
      {TransportError::kReset, 0, "", true},
      {TransportError::kTooLarge, 0, "", true},
      {TransportError::kCancelled, 0, "", true},
      {TransportError::kConnect, 0, "", false},                                // never sent
      {TransportError::kTls, 0, "", false},                                    // never sent
      {std::nullopt, 200, R"({"access_token":"act.new","refresh_tok)", true},  // truncated 200
      {std::nullopt, 200, R"({"data":{}})", true},  // a 200 we cannot use
      {std::nullopt, 503, "<html>busy</html>", false},
      {std::nullopt, 504, "<html>gateway timeout</html>", true},
      {std::nullopt, 400, R"({"error":"invalid_grant","error_description":"x"})", false},
  };
  for (const Case& c : cases) {
    if (c.error) {
      http_.push_failure(*c.error, "injected");
    } else {
      http_.push_reply(c.status, c.body);
    }
    Outcome o = run(*client_, Operation::kRefresh, v2_, secrets());
    ASSERT_FALSE(o.ok);
    EXPECT_EQ(o.failure.in_doubt, c.in_doubt)
        << (c.error ? std::string(to_string(*c.error)) : std::to_string(c.status) + " " + c.body);
  }
}

TEST_F(TikTokTest, ARotatedRefreshTokenWithoutAnAccessTokenIsStillKept) {
  http_.push_reply(200, R"({"refresh_token":"rft.new","refresh_expires_in":31536000})");
  Outcome o = run(*client_, Operation::kRefresh, v2_, secrets());
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.failure.error_class, ErrorClass::kMalformed);
  ASSERT_TRUE(o.secrets) << "the old refresh token may be dead already";
  EXPECT_EQ(o.secrets->refresh_token.reveal(), "rft.new");
}

TEST_F(TikTokTest, V2CheckCallsUserInfoWithTheBearerToken) {
  http_.push_reply(
      200,
      R"({"data":{"user":{"open_id":"open-1","display_name":"x"}},"error":{"code":"ok","message":"","log_id":"y"}})");
  Outcome o = run(*client_, Operation::kCheck, v2_, secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(r.url, "http://open.test/v2/user/info/?fields=open_id%2Cdisplay_name");
  EXPECT_EQ(header(r, "Authorization"), "Bearer act.old-access");
}

TEST_F(TikTokTest, AccessTokenInvalidAsksForOneRenewal) {
  http_.push_reply(
      401,
      R"({"data":{},"error":{"code":"access_token_invalid","message":"The access token is invalid or not found in the request.","log_id":"z"}})");
  Outcome o = run(*client_, Operation::kCheck, v2_, secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kPermanent);
  EXPECT_TRUE(o.renew_and_retry) << "refresh once; if that fails, permanent";
  EXPECT_FALSE(o.secrets);
  EXPECT_EQ(http_.requests().size(), 1u);
}

TEST_F(TikTokTest, AnExpiredAccessTokenIsRenewedBeforeACheck) {
  EXPECT_FALSE(client_->renew_before_check(v2_, secrets()));
  v2_.expires_at = testing::kNow - 1s;
  EXPECT_TRUE(client_->renew_before_check(v2_, secrets()));
  biz_.expires_at = testing::kNow + 30s;
  EXPECT_TRUE(client_->renew_before_check(biz_, secrets())) << "business tokens too";
  EXPECT_EQ(http_.requests().size(), 0u);
}

TEST_F(TikTokTest, UserInfoRateLimitIsTransientWithRetryAfter) {
  http_.push_reply(429,
                   R"({"data":{},"error":{"code":"rate_limit_exceeded","message":"slow down"}})",
                   {{"retry-after", "30"}});
  Outcome o = run(*client_, Operation::kCheck, v2_, secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kTransient);
  EXPECT_EQ(o.failure.retry_after, 30s);
  http_.push_reply(401, R"({"error":{"code":"scope_not_authorized","message":"x"}})");
  EXPECT_EQ(run(*client_, Operation::kCheck, v2_, secrets()).failure.error_class,
            ErrorClass::kPermanent);
}

TEST_F(TikTokTest, BusinessRenewalPostsJsonAndReadsTheEnvelope) {
  http_.push_reply(
      200, R"({"code":0,"message":"OK","request_id":"r","data":{"access_token":"act.biz-new",
      "expires_in":2592000,"refresh_token":"rft.biz-new","refresh_token_expires_in":31536000,"open_id":"open-1"}})");
  Outcome o = run(*client_, Operation::kRefresh, biz_, secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  EXPECT_EQ(o.secrets->access_token.reveal(), "act.biz-new");
  EXPECT_EQ(o.secrets->refresh_token.reveal(), "rft.biz-new");
  EXPECT_EQ(o.expires_at, testing::kNow + 2592000s);
  EXPECT_EQ(o.refresh_expires_at, testing::kNow + 31536000s);
  const HttpRequest& r = http_.requests().at(0);
  EXPECT_EQ(r.url, "http://biz.test/open_api/v1.3/tt_user/oauth2/refresh_token/");
  EXPECT_EQ(header(r, "Content-Type"), "application/json");
  auto body = nlohmann::json::parse(r.body);
  EXPECT_EQ(body["client_id"], "ckey");
  EXPECT_EQ(body["grant_type"], "refresh_token");
  EXPECT_EQ(body["refresh_token"], "rft.old-refresh");
}

TEST_F(TikTokTest, BusinessErrorsComeWithHttp200) {
  http_.push_reply(
      200,
      R"({"code":40105,"message":"Access token is incorrect or has been revoked.","data":{}})");
  EXPECT_EQ(run(*client_, Operation::kRefresh, biz_, secrets()).failure.error_class,
            ErrorClass::kRevoked);
  http_.push_reply(200, R"({"code":40100,"message":"Too many requests","data":{}})");
  Outcome limited = run(*client_, Operation::kRefresh, biz_, secrets());
  EXPECT_EQ(limited.failure.error_class, ErrorClass::kTransient);
  EXPECT_TRUE(limited.failure.retry_after);
  http_.push_reply(200, R"({"code":40101,"message":"app_id or secret is invalid"})");
  EXPECT_EQ(run(*client_, Operation::kRefresh, biz_, secrets()).failure.error_class,
            ErrorClass::kConfiguration);
  http_.push_reply(200, R"({"code":51021,"message":"?"})");
  EXPECT_EQ(run(*client_, Operation::kRefresh, biz_, secrets()).failure.error_class,
            ErrorClass::kTransient);
}

TEST_F(TikTokTest, BusinessCheckIntrospectsTheToken) {
  http_.push_reply(
      200, R"({"code":0,"message":"OK","data":{"scope":"user.info.basic","expires_in":100}})");
  Outcome o = run(*client_, Operation::kCheck, biz_, secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  auto body = nlohmann::json::parse(http_.requests().at(0).body);
  EXPECT_EQ(body["app_id"], "ckey");
  EXPECT_EQ(body["access_token"], "act.old-access");
  http_.push_reply(200,
                   R"({"code":40105,"message":"Access token is incorrect or has been revoked."})");
  Outcome revoked = run(*client_, Operation::kCheck, biz_, secrets());
  EXPECT_EQ(revoked.failure.error_class, ErrorClass::kRevoked);
  EXPECT_TRUE(revoked.renew_and_retry) << "40105: permanent, or refresh first";
}

TEST_F(TikTokTest, FailureMessagesNeverEchoASecret) {
  http_.push_reply(
      400,
      R"({"error":"invalid_grant","error_description":"refresh token rft.old-refresh was already used","log_id":"x"})");
  Outcome o = run(*client_, Operation::kRefresh, v2_, secrets());
  EXPECT_EQ(o.failure.message.find("rft.old-refresh"), std::string::npos) << o.failure.message;
  http_.push_reply(200, R"({"code":40101,"message":"secret tiktok-client-secret-value is wrong"})");
  Outcome b = run(*client_, Operation::kRefresh, biz_, secrets());
  EXPECT_EQ(b.failure.message.find("tiktok-client-secret-value"), std::string::npos)
      << b.failure.message;
  // Found by fuzz/provider_fuzz.cpp: the other token of the pair, echoed in a refusal of a
  // renewal, and any of them in an error text the client passes on verbatim.
  http_.push_reply(
      400,
      R"({"error":"invalid_grent","error_description":"bad act.old-access and rft.old-refresh"})");
  Outcome c = run(*client_, Operation::kRefresh, v2_, secrets());
  for (const char* s : {"act.old-access", "rft.old-refresh"})
    EXPECT_EQ(c.failure.message.find(s), std::string::npos) << c.failure.message;
}

}  // namespace
}  // namespace tw
