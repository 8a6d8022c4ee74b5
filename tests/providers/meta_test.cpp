#include "tests/providers/provider_test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using testing::field;
using testing::query_of;

class MetaTest : public testing::ProviderTest {
 protected:
  MetaTest() {
    setenv("TW_TEST_META_SECRET", "meta-app-secret-value", 1);
    config_.enabled = true;
    config_.app_id = "1234";
    config_.app_secret = SecretRef{SecretRef::Source::kEnv, "TW_TEST_META_SECRET"};
    config_.graph_base_url = "http://graph.test";
    config_.api_version = "v25.0";
    client_ = std::move(*make_meta_client(config_, http_, clock_));
    page_.id = "tok_p";
    page_.provider = Provider::kMeta;
    page_.kind = TokenKind::kPageToken;
    page_.account_id = "104233";
  }

  TokenSecrets page_secrets() const {
    return {Secret("EAAB-page-token-old"), Secret("EAAL-user-token-old")};
  }

  MetaConfig config_;
  std::unique_ptr<ProviderClient> client_;
  TokenRecord page_;
};

TEST_F(MetaTest, PageRenewalExchangesTheUserTokenThenReadsThePageToken) {
  http_.push_reply(
      200, R"({"access_token":"EAAL-user-new","token_type":"bearer","expires_in":5183944})");
  http_.push_reply(200, R"({"id":"104233","access_token":"EAAB-page-new"})");
  Outcome o = run(*client_, Operation::kRefresh, page_, page_secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  EXPECT_EQ(o.secrets->access_token.reveal(), "EAAB-page-new");
  EXPECT_EQ(o.secrets->refresh_token.reveal(), "EAAL-user-new");
  EXPECT_EQ(o.refresh_expires_at, testing::kNow + 5183944s) << "the user token's ~60 days";
  EXPECT_FALSE(o.expires_at) << "a Page token from a long-lived user token does not expire";

  const auto& reqs = http_.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].method, "GET");
  EXPECT_EQ(reqs[0].url.substr(0, reqs[0].url.find('?')),
            "http://graph.test/v25.0/oauth/access_token");
  const std::string q = query_of(reqs[0].url);
  EXPECT_EQ(field(q, "grant_type"), "fb_exchange_token");
  EXPECT_EQ(field(q, "client_id"), "1234");
  EXPECT_EQ(field(q, "client_secret"), "meta-app-secret-value");
  EXPECT_EQ(field(q, "fb_exchange_token"), "EAAL-user-token-old");
  EXPECT_EQ(field(query_of(reqs[0].log_url), "client_secret"), "***");
  EXPECT_EQ(reqs[1].url.substr(0, reqs[1].url.find('?')), "http://graph.test/v25.0/104233");
  EXPECT_EQ(field(query_of(reqs[1].url), "fields"), "access_token");
  EXPECT_EQ(field(query_of(reqs[1].url), "access_token"), "EAAL-user-new");
  expect_clean_log_urls({"meta-app-secret-value", "EAAL-user-token-old", "EAAL-user-new"});
}

TEST_F(MetaTest, WithoutExpiresInDebugTokenTellsTheExpiry) {
  TokenRecord user = page_;
  user.kind = TokenKind::kUserToken;
  http_.push_reply(200, R"({"access_token":"EAAL-user-new","token_type":"bearer"})");
  http_.push_reply(200, R"({"data":{"app_id":"1234","type":"USER","is_valid":true,
      "expires_at":1805000000,"data_access_expires_at":1807000000,"user_id":"88"}})");
  Outcome o = run(*client_, Operation::kRefresh, user, {Secret("EAAL-old"), Secret()});
  ASSERT_TRUE(o.ok) << o.failure.message;
  EXPECT_EQ(o.secrets->access_token.reveal(), "EAAL-user-new");
  EXPECT_EQ(o.expires_at, from_unix(1805000000));
  const HttpRequest& debug = http_.requests().at(1);
  EXPECT_EQ(field(query_of(debug.url), "input_token"), "EAAL-user-new");
  EXPECT_EQ(field(query_of(debug.url), "access_token"), "1234%7Cmeta-app-secret-value");
}

TEST_F(MetaTest, AFailedPageStepKeepsTheNewUserToken) {
  http_.push_reply(200, R"({"access_token":"EAAL-user-new","expires_in":5183944})");
  http_.push_reply(503, "");
  Outcome o = run(*client_, Operation::kRefresh, page_, page_secrets());
  ASSERT_FALSE(o.ok);
  EXPECT_EQ(o.failure.error_class, ErrorClass::kTransient);
  ASSERT_TRUE(o.secrets);
  EXPECT_EQ(o.secrets->refresh_token.reveal(), "EAAL-user-new");
  EXPECT_TRUE(o.secrets->access_token.empty()) << "the stored Page token is kept";
}

TEST_F(MetaTest, Code190IsPermanentAnd458IsRevoked) {
  http_.push_reply(
      400,
      R"({"error":{"message":"Error validating access token: The session has been invalidated because the user changed their password.","type":"OAuthException","code":190,"error_subcode":460,"fbtrace_id":"x"}})");
  Outcome o = run(*client_, Operation::kRefresh, page_, page_secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kPermanent);
  EXPECT_NE(o.failure.message.find("Meta error 190/460"), std::string::npos) << o.failure.message;
  http_.push_reply(
      400,
      R"({"error":{"message":"app not installed","type":"OAuthException","code":190,"error_subcode":458}})");
  EXPECT_EQ(run(*client_, Operation::kRefresh, page_, page_secrets()).failure.error_class,
            ErrorClass::kRevoked);
}

TEST_F(MetaTest, RateLimitCodesAreTransientAndThrottleTheProvider) {
  http_.push_reply(
      400,
      R"({"error":{"message":"Calls to this api have exceeded the rate limit.","type":"OAuthException","code":613}})",
      {{"x-business-use-case-usage",
        R"({"104233":[{"type":"pages","call_count":100,"total_cputime":40,"total_time":40,"estimated_time_to_regain_access":12}]})"}});
  Outcome o = run(*client_, Operation::kRefresh, page_, page_secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kTransient);
  EXPECT_EQ(o.throttle, 12min);
  EXPECT_EQ(o.failure.retry_after, 12min);
  for (int code : {1, 2, 4, 17, 32, 80001}) {
    http_.push_reply(400, R"({"error":{"message":"x","type":"OAuthException","code":)" +
                              std::to_string(code) + "}}");
    EXPECT_EQ(run(*client_, Operation::kRefresh, page_, page_secrets()).failure.error_class,
              ErrorClass::kTransient)
        << code;
  }
}

TEST_F(MetaTest, HighUsageOnASuccessSlowsTheProviderDown) {
  http_.push_reply(200, R"({"access_token":"EAAL-user-new","expires_in":5183944})",
                   {{"x-app-usage", R"({"call_count":85,"total_cputime":10,"total_time":12})"}});
  http_.push_reply(200, R"({"id":"104233","access_token":"EAAB-page-new"})");
  Outcome o = run(*client_, Operation::kRefresh, page_, page_secrets());
  ASSERT_TRUE(o.ok);
  EXPECT_EQ(o.throttle, 60s);
}

TEST_F(MetaTest, CheckUsesDebugTokenWithTheAppToken) {
  http_.push_reply(200, R"({"data":{"app_id":"1234","type":"PAGE","is_valid":true,"expires_at":0,
      "data_access_expires_at":1807000000,"scopes":["pages_show_list"]}})");
  Outcome o = run(*client_, Operation::kCheck, page_, page_secrets());
  ASSERT_TRUE(o.ok) << o.failure.message;
  EXPECT_EQ(o.op, Operation::kCheck);
  EXPECT_FALSE(o.expires_at);
  EXPECT_TRUE(o.note.empty());
  const std::string q = query_of(http_.requests().at(0).url);
  EXPECT_EQ(field(q, "input_token"), "EAAB-page-token-old");
  expect_clean_log_urls({"EAAB-page-token-old", "meta-app-secret-value"});
}

TEST_F(MetaTest, CheckOfARevokedTokenIs200WithAnError) {
  http_.push_reply(200, R"({"data":{"app_id":"1234","is_valid":false,
      "error":{"code":190,"message":"Error validating access token: The user has not authorized application 1234.","subcode":458}}})");
  Outcome o = run(*client_, Operation::kCheck, page_, page_secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kRevoked);
}

TEST_F(MetaTest, DataAccessEndingSoonIsReported) {
  const auto soon = to_unix(testing::kNow + 3 * 24h);
  http_.push_reply(200, R"({"data":{"is_valid":true,"expires_at":0,"data_access_expires_at":)" +
                            std::to_string(soon) + "}}");
  Outcome o = run(*client_, Operation::kCheck, page_, page_secrets());
  ASSERT_TRUE(o.ok);
  EXPECT_NE(o.note.find("needs re-auth soon"), std::string::npos) << o.note;
}

TEST_F(MetaTest, UnexpectedBodiesAreMalformed) {
  http_.push_reply(502, "<html><body>Bad Gateway</body></html>");
  EXPECT_EQ(run(*client_, Operation::kCheck, page_, page_secrets()).failure.error_class,
            ErrorClass::kTransient);
  http_.push_reply(200, "");
  EXPECT_EQ(run(*client_, Operation::kCheck, page_, page_secrets()).failure.error_class,
            ErrorClass::kMalformed);
  http_.push_reply(200, R"({"data":{}})");
  EXPECT_EQ(run(*client_, Operation::kCheck, page_, page_secrets()).failure.error_class,
            ErrorClass::kMalformed);
}

TEST_F(MetaTest, ErrorMessagesNeverEchoASecret) {
  http_.push_reply(
      400,
      R"({"error":{"message":"Invalid token EAAL-user-token-old for app","type":"OAuthException","code":190}})");
  Outcome o = run(*client_, Operation::kRefresh, page_, page_secrets());
  EXPECT_EQ(o.failure.message.find("EAAL-user-token-old"), std::string::npos) << o.failure.message;
  EXPECT_NE(o.failure.message.find("***"), std::string::npos);
}

TEST_F(MetaTest, ATopLevelErrorOnDebugTokenIsAboutOurAppNotTheCustomer) {
  http_.push_reply(
      400,
      R"({"error":{"message":"Invalid OAuth access token signature.","type":"OAuthException","code":190}})");
  Outcome o = run(*client_, Operation::kCheck, page_, page_secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kConfiguration)
      << "a wrong app secret must not send every customer to needs_reauth";
  EXPECT_NE(o.failure.message.find("app token"), std::string::npos) << o.failure.message;
}

TEST_F(MetaTest, APageReplyWithoutATokenIsMalformedUnlessThePageAnswered) {
  http_.push_reply(200, R"({"access_token":"EAAL-user-new","expires_in":5183944})");
  http_.push_reply(200, "{}");
  Outcome o = run(*client_, Operation::kRefresh, page_, page_secrets());
  EXPECT_EQ(o.failure.error_class, ErrorClass::kMalformed) << "an empty object proves nothing";
  EXPECT_EQ(o.secrets->refresh_token.reveal(), "EAAL-user-new");
  http_.push_reply(200, R"({"access_token":"EAAL-user-new2","expires_in":5183944})");
  http_.push_reply(200, R"({"id":"104233"})");
  EXPECT_EQ(run(*client_, Operation::kRefresh, page_, page_secrets()).failure.error_class,
            ErrorClass::kPermanent)
      << "the Page answered without a token: the user lost the role";
}

TEST_F(MetaTest, APageRenewalCostsTwoRequests) {
  EXPECT_EQ(client_->requests(Operation::kRefresh, page_), 2);
  EXPECT_EQ(client_->requests(Operation::kCheck, page_), 1);
  EXPECT_FALSE(client_->renew_before_check(page_, page_secrets()));
}

}  // namespace
}  // namespace tw
