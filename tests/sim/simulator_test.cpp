// Simulator::handle with hand-built requests and a FakeClock: each provider's success, rotation,
// revocation, expiry and error shapes, the fault kinds, the counters and the admin API.
#include "tools/provider-sim/simulator.h"

#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "scheduler/clock.h"

namespace tw::sim {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using Params = std::map<std::string, std::string>;

constexpr std::int64_t kSimStart = 1767225600;  // 2026-01-01T00:00:00Z
constexpr std::int64_t kDay = 86400;
const std::string kBusinessRefreshPath = "/open_api/v1.3/tt_user/oauth2/refresh_token/";

std::string url_encode(const std::string& s) {
  std::string out;
  for (const unsigned char c : s) {
    if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char kHex[] = "0123456789ABCDEF";
      out += {'%', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

std::string form(const Params& fields) {
  std::string out;
  for (const auto& [k, v] : fields)
    out += (out.empty() ? "" : "&") + url_encode(k) + "=" + url_encode(v);
  return out;
}

json body_of(const Response& r) {
  return json::parse(r.body);
}

std::string header(const Response& r, const std::string& name) {
  for (const auto& [n, v] : r.headers) {
    if (n == name) return v;
  }
  return {};
}

class SimTest : public ::testing::Test {
 protected:
  SimTest() { restart(); }

  void restart() { sim = std::make_unique<Simulator>(options, clock); }

  Response send(const std::string& method, const std::string& path, Params query = {},
                std::string body = {}, std::map<std::string, std::string> headers = {}) {
    Request r;
    r.method = method;
    r.path = path;
    r.target = path + (query.empty() ? "" : "?" + form(query));
    r.query = std::move(query);
    r.body = std::move(body);
    r.headers = std::move(headers);
    r.remote = "127.0.0.1:40000";
    return sim->handle(r);
  }
  Response get(const std::string& path, Params query = {},
               std::map<std::string, std::string> headers = {}) {
    return send("GET", path, std::move(query), {}, std::move(headers));
  }
  Response post_form(const std::string& path, const Params& fields) {
    return send("POST", path, {}, form(fields));
  }
  Response post_json(const std::string& path, const json& body) {
    return send("POST", path, {}, body.dump());
  }
  json admin(const std::string& path, const json& body, int status = 200) {
    const Response r = post_json(path, body);
    EXPECT_EQ(r.status, status) << path << " " << r.body;
    return body_of(r);
  }
  json seed(const json& body) { return admin("/admin/seed", body); }
  std::int64_t fault(const json& body) {
    return admin("/admin/fault", body)["id"].get<std::int64_t>();
  }
  json counters(const std::string& account) {
    return body_of(get("/admin/counters", {{"account", account}}))["accounts"][account];
  }
  json account(const std::string& provider, const std::string& id) {
    return body_of(get("/admin/account", {{"provider", provider}, {"account_id", id}}));
  }
  void advance(std::chrono::seconds d) { clock.advance(d); }

  // --- provider calls ---
  Response google_refresh(const std::string& refresh_token) {
    return post_form("/token", {{"client_id", options.google_client_id},
                                {"client_secret", options.google_client_secret},
                                {"grant_type", "refresh_token"},
                                {"refresh_token", refresh_token}});
  }
  Response google_accounts(const std::string& access_token) {
    return get("/v1/accounts", {{"pageSize", "1"}}, {{"authorization", "Bearer " + access_token}});
  }
  Response meta_exchange(const std::string& user_token) {
    return get("/v25.0/oauth/access_token", {{"grant_type", "fb_exchange_token"},
                                             {"client_id", options.meta_app_id},
                                             {"client_secret", options.meta_app_secret},
                                             {"fb_exchange_token", user_token}});
  }
  Response meta_debug(const std::string& token) {
    return get("/v25.0/debug_token",
               {{"input_token", token},
                {"access_token", options.meta_app_id + "|" + options.meta_app_secret}});
  }
  Response instagram_refresh(const std::string& token) {
    return get("/refresh_access_token",
               {{"grant_type", "ig_refresh_token"}, {"access_token", token}});
  }
  Response tiktok_refresh(const std::string& refresh_token) {
    return post_form("/v2/oauth/token/", {{"client_key", options.tiktok_client_key},
                                          {"client_secret", options.tiktok_client_secret},
                                          {"grant_type", "refresh_token"},
                                          {"refresh_token", refresh_token}});
  }
  Response tiktok_user_info(const std::string& access_token) {
    return get("/v2/user/info/", {{"fields", "open_id,display_name"}},
               {{"authorization", "Bearer " + access_token}});
  }
  Response business_refresh(const std::string& refresh_token) {
    return post_json(kBusinessRefreshPath, {{"client_id", options.tiktok_business_app_id},
                                            {"client_secret", options.tiktok_business_app_secret},
                                            {"grant_type", "refresh_token"},
                                            {"refresh_token", refresh_token}});
  }

  json seed_google(const std::string& id, json extra = json::object()) {
    extra["provider"] = "google";
    extra["account_id"] = id;
    return seed(extra);
  }
  json seed_tiktok(const std::string& id, json extra = json::object()) {
    extra["provider"] = "tiktok";
    extra["account_id"] = id;
    return seed(extra);
  }
  json seed_business(const std::string& id, json extra = json::object()) {
    extra["api"] = "business";
    return seed_tiktok(id, std::move(extra));
  }
  json seed_meta_page(const std::string& page, const std::string& user) {
    return seed({{"provider", "meta"}, {"kind", "page"}, {"account_id", page}, {"user_id", user}});
  }

  FakeClock clock{from_unix(kSimStart)};
  SimOptions options;
  std::unique_ptr<Simulator> sim;
};

// --- routing and admin ---------------------------------------------------------------------------

TEST_F(SimTest, UnknownPathIs404WithJsonError) {
  const Response r = get("/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(body_of(r).contains("error"));
}

TEST_F(SimTest, WrongMethodIs405) {
  EXPECT_EQ(get("/token").status, 405);
  EXPECT_EQ(post_json("/v25.0/debug_token", json::object()).status, 405);
  EXPECT_EQ(get("/admin/seed").status, 405);
}

TEST_F(SimTest, GetRevokeIs404) {
  EXPECT_EQ(get("/revoke", {{"token", "x"}}).status, 404);
}

TEST_F(SimTest, AdminRefusesNonLoopbackPeers) {
  Request r;
  r.method = "GET";
  r.path = r.target = "/admin/clock";
  r.remote = "10.1.2.3:5000";
  EXPECT_EQ(sim->handle(r).status, 403);
  r.remote = "[::1]:5000";
  EXPECT_EQ(sim->handle(r).status, 200);
}

TEST_F(SimTest, MalformedAdminJsonIs400WithMessage) {
  const Response r = send("POST", "/admin/seed", {}, "{not json");
  EXPECT_EQ(r.status, 400);
  EXPECT_FALSE(body_of(r)["error"].get<std::string>().empty());
}

TEST_F(SimTest, SeedRejectsBadFieldsAndChangesNothing) {
  admin("/admin/seed", {{"provider", "google"}, {"account_id", "a"}, {"rotates", true}}, 400);
  admin("/admin/seed", {{"provider", "google"}, {"account_id", "a"}, {"rotate", "yes"}}, 400);
  admin("/admin/seed", {{"provider", "tiktok"}, {"account_id", "a"}, {"rotate", false}}, 400);
  admin("/admin/seed", {{"provider", "myspace"}, {"account_id", "a"}}, 400);
  EXPECT_EQ(get("/admin/account", {{"provider", "google"}, {"account_id", "a"}}).status, 404);
}

TEST_F(SimTest, ClockAdvanceMovesSimClock) {
  EXPECT_EQ(body_of(get("/admin/clock"))["now"], kSimStart);
  EXPECT_EQ(admin("/admin/clock", {{"advance", 3600}})["now"], kSimStart + 3600);
  clock.advance(10s);
  EXPECT_EQ(body_of(get("/admin/clock"))["now"], kSimStart + 3610);
  admin("/admin/clock", {{"advance", -1}}, 400);
}

TEST_F(SimTest, ResetClearsGrantsFaultsCountersAndClock) {
  const json g = seed_google("a");
  fault({{"kind", "status"}, {"count", -1}});
  admin("/admin/clock", {{"advance", 100}});
  admin("/admin/reset", json::object());
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 400);  // unknown now, and no fault
  EXPECT_EQ(body_of(get("/admin/clock"))["now"], kSimStart);
  EXPECT_EQ(body_of(get("/admin/counters"))["totals"]["refreshes"], 1);  // only the one above
}

TEST_F(SimTest, SeedingAgainReplacesTheGrant) {
  const json first = seed_google("a");
  const json second = seed_google("a");
  EXPECT_EQ(google_refresh(first["refresh_token"]).status, 400);
  EXPECT_EQ(google_refresh(second["refresh_token"]).status, 200);
}

TEST_F(SimTest, AccountViewShowsNewestTokens) {
  const json t = seed_tiktok("t1");
  const json fresh = body_of(tiktok_refresh(t["refresh_token"]));
  const json view = account("tiktok", "t1");
  EXPECT_EQ(view["access_token"], fresh["access_token"]);
  EXPECT_EQ(view["refresh_token"], fresh["refresh_token"]);
  EXPECT_EQ(view["expires_at"], kSimStart + kDay);
  EXPECT_EQ(view["refresh_expires_at"], kSimStart + 365 * kDay);
  EXPECT_EQ(view["revoked"], false);
  admin("/admin/revoke", {{"provider", "tiktok"}, {"account_id", "t1"}});
  EXPECT_EQ(account("tiktok", "t1")["revoked"], true);
}

// 100,000 accounts; TW_SIM_BULK_ACCOUNTS sets fewer (the sanitizer runs, to keep CI short).
TEST_F(SimTest, SeedBulkCreatesManyWorkingAccountsAsNdjson) {
  const char* env = std::getenv("TW_SIM_BULK_ACCOUNTS");
  const int count = env != nullptr && std::atoi(env) > 0 ? std::atoi(env) : 100000;
  const Response r = post_json("/admin/seed_bulk",
                               {{"provider", "google"}, {"prefix", "acct-"}, {"count", count}});
  ASSERT_EQ(r.status, 200);
  std::istringstream lines(r.body);
  std::string line;
  std::string last;
  int n = 0;
  while (std::getline(lines, line)) {
    ++n;
    last = line;
  }
  EXPECT_EQ(n, count);
  const json item = json::parse(last);
  EXPECT_EQ(item["account_id"], "acct-" + std::to_string(count - 1));
  EXPECT_EQ(google_refresh(item["refresh_token"]).status, 200);
}

TEST_F(SimTest, SeedBulkCanAnswerAJsonArray) {
  const json list = admin("/admin/seed_bulk", {{"provider", "tiktok"},
                                               {"api", "business"},
                                               {"prefix", "b"},
                                               {"count", 3},
                                               {"format", "json"}});
  ASSERT_EQ(list.size(), 3U);
  EXPECT_EQ(list[2]["account_id"], "b2");
  EXPECT_TRUE(list[2].contains("open_id"));
}

// --- Google --------------------------------------------------------------------------------------

TEST_F(SimTest, GoogleRefreshReturnsAccessTokenWithoutRotation) {
  const json g = seed_google("accounts/1");
  const Response r = google_refresh(g["refresh_token"]);
  ASSERT_EQ(r.status, 200);
  const json b = body_of(r);
  EXPECT_TRUE(b["access_token"].get<std::string>().starts_with("ya29."));
  EXPECT_EQ(b["expires_in"], 3599);
  EXPECT_EQ(b["scope"], "https://www.googleapis.com/auth/business.manage");
  EXPECT_EQ(b["token_type"], "Bearer");
  EXPECT_FALSE(b.contains("refresh_token"));
  EXPECT_TRUE(g["refresh_token"].get<std::string>().starts_with("1//"));
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);  // the old one still works
  EXPECT_EQ(counters("google:accounts/1")["refreshes"], 2);
}

TEST_F(SimTest, GoogleWrongClientIsInvalidClient401) {
  const json g = seed_google("a");
  const Response r = post_form("/token", {{"client_id", "other"},
                                          {"client_secret", options.google_client_secret},
                                          {"grant_type", "refresh_token"},
                                          {"refresh_token", g["refresh_token"]}});
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(body_of(r), json({{"error", "invalid_client"},
                              {"error_description", "The OAuth client was not found."}}));
}

TEST_F(SimTest, GoogleAcceptsHttpBasicClientCredentials) {
  const json g = seed_google("a");
  // base64("sim-google-client:sim-google-secret")
  const Response r =
      send("POST", "/token", {},
           form({{"grant_type", "refresh_token"}, {"refresh_token", g["refresh_token"]}}),
           {{"authorization", "Basic c2ltLWdvb2dsZS1jbGllbnQ6c2ltLWdvb2dsZS1zZWNyZXQ="}});
  EXPECT_EQ(r.status, 200) << r.body;
}

TEST_F(SimTest, GoogleRotatingGrantKillsOldRefreshTokenAndCountsReuse) {
  const json g = seed_google("a", {{"rotate", true}});
  const json fresh = body_of(google_refresh(g["refresh_token"]));
  ASSERT_TRUE(fresh.contains("refresh_token"));
  const Response reused = google_refresh(g["refresh_token"]);
  EXPECT_EQ(reused.status, 400);
  EXPECT_EQ(body_of(reused)["error"], "invalid_grant");
  EXPECT_EQ(google_refresh(fresh["refresh_token"]).status, 200);
  EXPECT_EQ(counters("google:a")["reused_refresh_tokens"], 1);
  EXPECT_EQ(counters("google:a")["invalid_grant"], 1);
}

TEST_F(SimTest, GoogleTokenInfoReturnsStringFields) {
  const json g = seed_google("a");
  const Response r = get("/tokeninfo", {{"access_token", g["access_token"]}});
  ASSERT_EQ(r.status, 200);
  const json b = body_of(r);
  for (const char* f : {"azp", "aud", "sub", "scope", "exp", "expires_in", "access_type"}) {
    EXPECT_TRUE(b[f].is_string()) << f;
  }
  EXPECT_EQ(b["exp"], std::to_string(kSimStart + 3599));
  EXPECT_EQ(b["access_type"], "offline");
}

TEST_F(SimTest, GoogleAccessTokenExpiresOnSimClock) {
  const json g = seed_google("a");
  EXPECT_EQ(google_accounts(g["access_token"]).status, 200);
  admin("/admin/clock", {{"advance", 3599}});
  const Response info = get("/tokeninfo", {{"access_token", g["access_token"]}});
  EXPECT_EQ(info.status, 400);
  EXPECT_EQ(body_of(info),
            json({{"error", "invalid_token"}, {"error_description", "Invalid Value"}}));
  const Response accounts = google_accounts(g["access_token"]);
  EXPECT_EQ(accounts.status, 401);
  EXPECT_EQ(body_of(accounts)["error"]["status"], "UNAUTHENTICATED");
}

TEST_F(SimTest, GoogleRevokedGrantGivesInvalidGrantAndUnauthenticated) {
  const json g = seed_google("a");
  admin("/admin/revoke", {{"provider", "google"}, {"account_id", "a"}});
  const Response r = google_refresh(g["refresh_token"]);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r), json({{"error", "invalid_grant"},
                              {"error_description", "Token has been expired or revoked."}}));
  EXPECT_EQ(google_accounts(g["access_token"]).status, 401);
}

TEST_F(SimTest, GoogleRevokingAnAccessTokenKillsItsRefreshToken) {
  const json g = seed_google("a");
  EXPECT_EQ(post_form("/revoke", {{"token", g["access_token"]}}).body, "{}");
  EXPECT_EQ(body_of(google_refresh(g["refresh_token"]))["error"], "invalid_grant");
  EXPECT_EQ(post_form("/revoke", {{"token", g["access_token"]}}).status, 400);
}

TEST_F(SimTest, GoogleRefreshTokenDiesAfter180IdleDays) {
  const json g = seed_google("a");
  admin("/admin/clock", {{"advance", 179 * kDay}});
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);  // use restarts the idle time
  admin("/admin/clock", {{"advance", 179 * kDay}});
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);
  admin("/admin/clock", {{"advance", 180 * kDay}});
  EXPECT_EQ(body_of(google_refresh(g["refresh_token"]))["error"], "invalid_grant");
}

TEST_F(SimTest, GoogleTestingAppTokensDieAfter7Days) {
  const json g = seed_google("a", {{"testing", true}});
  admin("/admin/clock", {{"advance", 7 * kDay - 1}});
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);
  admin("/admin/clock", {{"advance", 1}});
  EXPECT_EQ(body_of(google_refresh(g["refresh_token"]))["error"], "invalid_grant");
}

TEST_F(SimTest, Google101stLiveRefreshTokenDisplacesTheOldest) {
  const json first = seed_google("a0", {{"user", "u@x"}});
  for (int i = 1; i < 100; ++i)
    seed_google("a" + std::to_string(i), {{"user", "u@x"}});
  EXPECT_EQ(google_refresh(first["refresh_token"]).status, 200);  // 100 live: fine
  seed_google("a100", {{"user", "u@x"}});
  EXPECT_EQ(body_of(google_refresh(first["refresh_token"]))["error"], "invalid_grant");
  EXPECT_EQ(google_refresh(account("google", "a1")["refresh_token"]).status, 200);
}

TEST_F(SimTest, GoogleNoPermissionGrantGets403) {
  const json g = seed_google("a", {{"no_permission", true}});
  const Response r = google_accounts(g["access_token"]);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(body_of(r)["error"]["status"], "PERMISSION_DENIED");
}

TEST_F(SimTest, GoogleUnauthorizedClientSeedFlag) {
  const json g = seed_google("a", {{"unauthorized_client", true}});
  const Response r = google_refresh(g["refresh_token"]);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "unauthorized_client");
}

TEST_F(SimTest, GoogleAccountsListsTheAccount) {
  const json g = seed_google("accounts/7");
  const json b = body_of(google_accounts(g["access_token"]));
  EXPECT_EQ(b["accounts"][0]["name"], "accounts/7");
  EXPECT_EQ(b["accounts"][0]["type"], "PERSONAL");
}

TEST_F(SimTest, AGrantRemembersItsNewestSixteenTokens) {
  const json g = seed_google("a");
  std::string newest;
  for (int i = 0; i < 20; ++i)
    newest = body_of(google_refresh(g["refresh_token"]))["access_token"];
  EXPECT_EQ(get("/tokeninfo", {{"access_token", g["access_token"]}}).status, 400);  // forgotten
  EXPECT_EQ(get("/tokeninfo", {{"access_token", newest}}).status, 200);
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);  // the current one is always kept
}

TEST_F(SimTest, IssuedListsEveryTokenEverIssuedWhenRecording) {
  EXPECT_EQ(get("/admin/issued").status, 409) << "off unless asked for";
  options.record_issued = true;
  restart();
  const json g = seed_google("a");
  std::vector<std::string> expected{g["access_token"].get<std::string>(),
                                    g["refresh_token"].get<std::string>()};
  for (int i = 0; i < 20; ++i) {
    expected.push_back(
        body_of(google_refresh(g["refresh_token"]))["access_token"].get<std::string>());
  }
  const json t = seed_tiktok("t1");
  const json fresh = body_of(tiktok_refresh(t["refresh_token"]));
  for (const char* k : {"access_token", "refresh_token"})
    expected.push_back(t[k].get<std::string>());
  for (const char* k : {"access_token", "refresh_token"})
    expected.push_back(fresh[k].get<std::string>());
  const json issued = body_of(get("/admin/issued"));
  EXPECT_EQ(issued["tokens"].get<std::vector<std::string>>(), expected)
      << "tokens a grant has forgotten are still listed, oldest first";
  EXPECT_EQ(send("POST", "/admin/issued").status, 405);
  admin("/admin/reset", json::object());
  EXPECT_TRUE(body_of(get("/admin/issued"))["tokens"].empty());
}
// --- Meta ----------------------------------------------------------------------------------------

TEST_F(SimTest, MetaExchangeIssuesANewUserTokenAndTheOldOneStaysValid) {
  const json p = seed_meta_page("P1", "U1");
  const Response r = meta_exchange(p["refresh_token"]);
  ASSERT_EQ(r.status, 200) << r.body;
  const json b = body_of(r);
  EXPECT_TRUE(b["access_token"].get<std::string>().starts_with("EAAB"));
  EXPECT_NE(b["access_token"], p["refresh_token"]);
  EXPECT_EQ(b["expires_in"], options.meta_user_token_lifetime);
  EXPECT_EQ(b["token_type"], "bearer");
  EXPECT_EQ(meta_exchange(p["refresh_token"]).status, 200);
  EXPECT_EQ(account("meta", "P1")["refresh_token"],
            body_of(meta_exchange(b["access_token"]))["access_token"]);
  EXPECT_EQ(p["expires_at"], nullptr);
}

TEST_F(SimTest, MetaExchangeOmitsExpiresInWhenSeededSo) {
  const json u = seed(
      {{"provider", "meta"}, {"kind", "user"}, {"account_id", "U1"}, {"omit_expires_in", true}});
  EXPECT_FALSE(body_of(meta_exchange(u["access_token"])).contains("expires_in"));
}

TEST_F(SimTest, MetaExchangeWithWrongAppIsCode101) {
  const json u = seed({{"provider", "meta"}, {"kind", "user"}, {"account_id", "U1"}});
  const Response r = get("/v25.0/oauth/access_token", {{"grant_type", "fb_exchange_token"},
                                                       {"client_id", "other"},
                                                       {"client_secret", options.meta_app_secret},
                                                       {"fb_exchange_token", u["access_token"]}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"]["code"], 101);
  EXPECT_EQ(body_of(r)["error"]["type"], "OAuthException");
}

TEST_F(SimTest, MetaExpiredUserTokenCannotBeExchanged) {
  const json u =
      seed({{"provider", "meta"}, {"kind", "user"}, {"account_id", "U1"}, {"expires_in", 100}});
  admin("/admin/clock", {{"advance", 100}});
  const json e = body_of(meta_exchange(u["access_token"]))["error"];
  EXPECT_EQ(e["code"], 190);
  EXPECT_EQ(e["error_subcode"], 463);
  EXPECT_TRUE(e["fbtrace_id"].is_string());
  EXPECT_EQ(counters("meta:U1")["invalid_grant"], 1);
}

TEST_F(SimTest, MetaRevocationGives190WithTheSeededSubcode) {
  for (const int subcode : {458, 459, 460, 463, 464, 467, 492}) {
    const json p = seed_meta_page("P1", "U1");
    admin("/admin/revoke", {{"provider", "meta"}, {"account_id", "P1"}, {"subcode", subcode}});
    const Response r = meta_exchange(p["refresh_token"]);
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(body_of(r)["error"]["code"], 190);
    EXPECT_EQ(body_of(r)["error"]["error_subcode"], subcode);
    const json d = body_of(meta_debug(p["access_token"]))["data"];
    EXPECT_EQ(d["is_valid"], false);
    EXPECT_EQ(d["error"]["code"], 190);
    EXPECT_EQ(d["error"]["subcode"], subcode);
  }
  admin("/admin/revoke", {{"provider", "meta"}, {"account_id", "P1"}, {"subcode", 999}}, 400);
}

TEST_F(SimTest, MetaAccountsIssuesANewPageTokenEachCallAndOldOnesStayValid) {
  const json p = seed_meta_page("P1", "U1");
  seed_meta_page("P2", "U1");
  const json first = body_of(get("/v25.0/me/accounts", {{"access_token", p["refresh_token"]}}));
  ASSERT_EQ(first["data"].size(), 2U);
  EXPECT_EQ(first["data"][0]["id"], "P1");
  EXPECT_EQ(first["data"][0]["tasks"], json::array({"MANAGE"}));
  const json second = body_of(get("/v25.0/U1/accounts", {{"access_token", p["refresh_token"]}}));
  EXPECT_NE(second["data"][0]["access_token"], first["data"][0]["access_token"]);
  EXPECT_EQ(account("meta", "P1")["access_token"], second["data"][0]["access_token"]);
  for (const json& t : {p["access_token"], first["data"][0]["access_token"]}) {
    EXPECT_EQ(body_of(meta_debug(t))["data"]["is_valid"], true);
  }
  EXPECT_EQ(get("/v25.0/U2/accounts", {{"access_token", p["refresh_token"]}}).status, 400);
}

TEST_F(SimTest, MetaPageFieldsAccessTokenReturnsThePageToken) {
  const json p = seed_meta_page("P1", "U1");
  const Response r =
      get("/v25.0/P1", {{"fields", "access_token"}, {"access_token", p["refresh_token"]}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body_of(r), json({{"id", "P1"}, {"access_token", p["access_token"]}}));
  EXPECT_EQ(
      get("/v25.0/P9", {{"fields", "access_token"}, {"access_token", p["refresh_token"]}}).status,
      400);
}

TEST_F(SimTest, MetaDebugTokenDescribesAPageToken) {
  const json p = seed_meta_page("P1", "U1");
  const Response r = meta_debug(p["access_token"]);
  ASSERT_EQ(r.status, 200);
  const json d = body_of(r)["data"];
  EXPECT_EQ(d["type"], "PAGE");
  EXPECT_EQ(d["app_id"], options.meta_app_id);
  EXPECT_EQ(d["application"], options.meta_app_name);
  EXPECT_EQ(d["expires_at"], 0);
  EXPECT_EQ(d["is_valid"], true);
  EXPECT_EQ(d["issued_at"], kSimStart);
  EXPECT_EQ(d["data_access_expires_at"], kSimStart + 90 * kDay);
  EXPECT_EQ(d["user_id"], "U1");
  EXPECT_TRUE(d["scopes"].is_array());
}

TEST_F(SimTest, MetaDebugTokenOfUnknownTokenIsInvalidWithHttp200) {
  const Response r = meta_debug("EAABnope");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(body_of(r)["data"]["is_valid"], false);
  EXPECT_EQ(body_of(r)["data"]["error"]["code"], 190);
  EXPECT_EQ(get("/v25.0/debug_token", {{"input_token", "x"}, {"access_token", "bad|pair"}}).status,
            400);
}

TEST_F(SimTest, MetaDataAccessEnds90DaysAfterLastActivity) {
  const json p = seed_meta_page("P1", "U1");
  admin("/admin/clock", {{"advance", 50 * kDay}});
  const std::string user = body_of(meta_exchange(p["refresh_token"]))["access_token"];
  EXPECT_EQ(body_of(meta_debug(p["access_token"]))["data"]["data_access_expires_at"],
            kSimStart + 140 * kDay);
  admin("/admin/clock", {{"advance", 90 * kDay}});
  const json d = body_of(meta_debug(p["access_token"]))["data"];
  EXPECT_EQ(d["is_valid"], false);
  EXPECT_EQ(d["error"]["code"], 190);
  EXPECT_EQ(body_of(meta_exchange(user))["error"]["code"], 190);
}

TEST_F(SimTest, MetaUsageHeaderCountsCallsInTheLastHour) {
  options.meta_call_limit = 10;
  restart();
  const json u = seed({{"provider", "meta"}, {"kind", "user"}, {"account_id", "U1"}});
  Response r;
  for (int i = 0; i < 5; ++i)
    r = meta_debug(u["access_token"]);
  EXPECT_EQ(header(r, "X-App-Usage"), R"({"call_count":50,"total_cputime":50,"total_time":50})");
  for (int i = 0; i < 10; ++i)
    r = meta_debug(u["access_token"]);
  EXPECT_EQ(json::parse(header(r, "X-App-Usage"))["call_count"], 100);  // capped
  EXPECT_TRUE(header(r, "X-Business-Use-Case-Usage").empty());          // not a Page call
  admin("/admin/clock", {{"advance", 3600}});
  EXPECT_EQ(json::parse(header(meta_debug(u["access_token"]), "X-App-Usage"))["call_count"], 10);
}

TEST_F(SimTest, MetaPageCallsCarryBusinessUseCaseUsage) {
  options.meta_page_call_limit = 4;
  restart();
  const json p = seed_meta_page("P1", "U1");
  Response r;
  for (int i = 0; i < 4; ++i)
    r = meta_debug(p["access_token"]);
  const json buc = json::parse(header(r, "X-Business-Use-Case-Usage"));
  EXPECT_EQ(buc["P1"][0]["type"], "pages");
  EXPECT_EQ(buc["P1"][0]["call_count"], 100);
  EXPECT_EQ(buc["P1"][0]["estimated_time_to_regain_access"], 60);
}

TEST_F(SimTest, InstagramRefreshUnder24HoursOldIsRefused) {
  const json ig = seed({{"provider", "meta"}, {"kind", "instagram"}, {"account_id", "IG1"}});
  const Response r = instagram_refresh(ig["access_token"]);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"]["code"], 10);
  EXPECT_EQ(body_of(r)["error"]["type"], "OAuthException");
}

TEST_F(SimTest, InstagramRefreshAfter24HoursGives60Days) {
  const json ig = seed({{"provider", "meta"}, {"kind", "instagram"}, {"account_id", "IG1"}});
  admin("/admin/clock", {{"advance", kDay}});
  const Response r = instagram_refresh(ig["access_token"]);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body_of(r)["expires_in"], 5183944);
  EXPECT_EQ(account("meta", "IG1")["expires_at"], kSimStart + kDay + 5183944);
  EXPECT_EQ(counters("meta:IG1")["refreshes"], 1);
}

TEST_F(SimTest, InstagramExpiredTokenIs190) {
  const json ig = seed({{"provider", "meta"},
                        {"kind", "instagram"},
                        {"account_id", "IG1"},
                        {"expires_in", 2 * kDay}});
  admin("/admin/clock", {{"advance", 2 * kDay}});
  EXPECT_EQ(body_of(instagram_refresh(ig["access_token"]))["error"]["code"], 190);
}

// --- TikTok v2 -----------------------------------------------------------------------------------

TEST_F(SimTest, TikTokRefreshRotatesWithTheFullResponse) {
  const json t = seed_tiktok("t1");
  EXPECT_TRUE(t["access_token"].get<std::string>().starts_with("act."));
  EXPECT_TRUE(t["refresh_token"].get<std::string>().starts_with("rft."));
  const Response r = tiktok_refresh(t["refresh_token"]);
  ASSERT_EQ(r.status, 200) << r.body;
  const json b = body_of(r);
  EXPECT_NE(b["refresh_token"], t["refresh_token"]);
  EXPECT_EQ(b["expires_in"], kDay);
  EXPECT_EQ(b["refresh_expires_in"], 365 * kDay);
  EXPECT_EQ(b["open_id"], t["open_id"]);
  EXPECT_EQ(b["token_type"], "Bearer");
  EXPECT_TRUE(b["scope"].is_string());
}

TEST_F(SimTest, TikTokOldRefreshTokenIsInvalidGrantAndCountedAsReused) {
  options.tiktok_oauth_error_status = 401;
  restart();
  const json t = seed_tiktok("t1");
  ASSERT_EQ(tiktok_refresh(t["refresh_token"]).status, 200);
  const Response r = tiktok_refresh(t["refresh_token"]);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(body_of(r)["error"], "invalid_grant");
  EXPECT_TRUE(body_of(r)["log_id"].is_string());
  EXPECT_EQ(counters("tiktok:t1")["reused_refresh_tokens"], 1);
  EXPECT_EQ(counters("tiktok:t1")["invalid_grant"], 1);
}

TEST_F(SimTest, TikTokReuseWithinGraceReturnsTheSameNewPair) {
  options.reuse_grace_seconds = 30;
  restart();
  const json t = seed_tiktok("t1");
  const json first = body_of(tiktok_refresh(t["refresh_token"]));
  admin("/admin/clock", {{"advance", 30}});
  const json again = body_of(tiktok_refresh(t["refresh_token"]));
  EXPECT_EQ(again["access_token"], first["access_token"]);
  EXPECT_EQ(again["refresh_token"], first["refresh_token"]);
  EXPECT_EQ(counters("tiktok:t1")["reused_refresh_tokens"], 1);
  admin("/admin/clock", {{"advance", 1}});
  EXPECT_EQ(body_of(tiktok_refresh(t["refresh_token"]))["error"], "invalid_grant");
}

TEST_F(SimTest, TikTokTwoHourProfile) {
  const json t = seed_tiktok("t1", {{"profile", "2h180d"}});
  EXPECT_EQ(t["expires_at"], kSimStart + 7200);
  EXPECT_EQ(t["refresh_expires_at"], kSimStart + 180 * kDay);
  EXPECT_EQ(body_of(tiktok_refresh(t["refresh_token"]))["expires_in"], 7200);
}

TEST_F(SimTest, TikTokExpiredRefreshTokenIsInvalidGrant) {
  const json t = seed_tiktok("t1", {{"refresh_expires_in", 100}});
  admin("/admin/clock", {{"advance", 100}});
  EXPECT_EQ(body_of(tiktok_refresh(t["refresh_token"]))["error"], "invalid_grant");
}

TEST_F(SimTest, TikTokUserInfoReturnsTheUser) {
  const json t = seed_tiktok("t1");
  const Response r = tiktok_user_info(t["access_token"]);
  ASSERT_EQ(r.status, 200);
  const json b = body_of(r);
  EXPECT_EQ(b["data"]["user"]["open_id"], t["open_id"]);
  EXPECT_TRUE(b["data"]["user"]["display_name"].is_string());
  EXPECT_EQ(b["error"]["code"], "ok");
  EXPECT_EQ(b["error"]["message"], "");
}

TEST_F(SimTest, TikTokExpiredAccessTokenIsAccessTokenInvalid) {
  const json t = seed_tiktok("t1", {{"expires_in", 60}});
  admin("/admin/clock", {{"advance", 60}});
  const Response r = tiktok_user_info(t["access_token"]);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(body_of(r)["error"]["code"], "access_token_invalid");
}

TEST_F(SimTest, TikTokScopeNotAuthorizedSeedFlag) {
  const json t = seed_tiktok("t1", {{"scope_not_authorized", true}});
  const Response r = tiktok_user_info(t["access_token"]);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(body_of(r)["error"]["code"], "scope_not_authorized");
}

TEST_F(SimTest, TikTokUserInfoAllows600PerMinuteSlidingWindow) {
  const json t = seed_tiktok("t1");
  for (int i = 0; i < 600; ++i)
    ASSERT_EQ(tiktok_user_info(t["access_token"]).status, 200) << i;
  const Response r = tiktok_user_info(t["access_token"]);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(body_of(r)["error"]["code"], "rate_limit_exceeded");
  advance(59s);
  EXPECT_EQ(tiktok_user_info(t["access_token"]).status, 429);
  advance(1s);
  EXPECT_EQ(tiktok_user_info(t["access_token"]).status, 200);
}

TEST_F(SimTest, TikTokRevokeKillsTheGrant) {
  const json t = seed_tiktok("t1");
  const Response r =
      post_form("/v2/oauth/revoke/", {{"client_key", options.tiktok_client_key},
                                      {"client_secret", options.tiktok_client_secret},
                                      {"token", t["access_token"]}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{}");
  EXPECT_EQ(tiktok_user_info(t["access_token"]).status, 401);
  EXPECT_EQ(body_of(tiktok_refresh(t["refresh_token"]))["error"], "invalid_grant");
}

// --- TikTok Business -----------------------------------------------------------------------------

TEST_F(SimTest, BusinessRefreshDefaultsTo30DaysAndRotates) {
  const json b = seed_business("b1");
  EXPECT_EQ(b["expires_at"], kSimStart + 30 * kDay);
  const Response r = business_refresh(b["refresh_token"]);
  ASSERT_EQ(r.status, 200);
  const json env = body_of(r);
  EXPECT_EQ(env["code"], 0);
  EXPECT_EQ(env["message"], "OK");
  EXPECT_TRUE(env["request_id"].is_string());
  EXPECT_EQ(env["data"]["expires_in"], 30 * kDay);
  EXPECT_EQ(env["data"]["refresh_token_expires_in"], 365 * kDay);
  EXPECT_EQ(env["data"]["open_id"], b["open_id"]);
  EXPECT_NE(env["data"]["refresh_token"], b["refresh_token"]);
  const Response reused = business_refresh(b["refresh_token"]);
  EXPECT_EQ(reused.status, 200);
  EXPECT_EQ(body_of(reused)["code"], 40105);
  EXPECT_EQ(counters("tiktok:b1")["reused_refresh_tokens"], 1);
}

TEST_F(SimTest, BusinessWithoutRotationKeepsTheRefreshToken) {
  const json b = seed_business("b1", {{"rotate", false}, {"profile", "24h365d"}});
  const json data = body_of(business_refresh(b["refresh_token"]))["data"];
  EXPECT_EQ(data["refresh_token"], b["refresh_token"]);
  EXPECT_EQ(data["expires_in"], kDay);
  EXPECT_EQ(body_of(business_refresh(b["refresh_token"]))["code"], 0);
}

TEST_F(SimTest, BusinessRevokedIs40105WithHttp200) {
  const json b = seed_business("b1");
  admin("/admin/revoke", {{"provider", "tiktok"}, {"account_id", "b1"}});
  for (const Response& r : {business_refresh(b["refresh_token"]),
                            post_json("/open_api/v1.3/tt_user/token_info/get/",
                                      {{"app_id", options.tiktok_business_app_id},
                                       {"access_token", b["access_token"]}}),
                            get("/open_api/v1.3/business/get/", {{"business_id", b["open_id"]}},
                                {{"access-token", b["access_token"]}})}) {
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(body_of(r)["code"], 40105);
    EXPECT_EQ(body_of(r)["message"], "Access token is incorrect or has been revoked.");
  }
}

TEST_F(SimTest, BusinessWrongAppIs40101) {
  const json b = seed_business("b1");
  const Response r = post_json(kBusinessRefreshPath, {{"client_id", "other"},
                                                      {"client_secret", "x"},
                                                      {"grant_type", "refresh_token"},
                                                      {"refresh_token", b["refresh_token"]}});
  EXPECT_EQ(body_of(r)["code"], 40101);
}

TEST_F(SimTest, BusinessTokenInfoAndBusinessGet) {
  const json b = seed_business("b1");
  const json info = body_of(
      post_json("/open_api/v1.3/tt_user/token_info/get/",
                {{"app_id", options.tiktok_business_app_id}, {"access_token", b["access_token"]}}));
  EXPECT_EQ(info["code"], 0);
  EXPECT_EQ(info["data"]["open_id"], b["open_id"]);
  EXPECT_EQ(info["data"]["expires_in"], 30 * kDay);
  const Response got = get("/open_api/v1.3/business/get/",
                           {{"business_id", b["open_id"]}, {"fields", R"(["display_name"])"}},
                           {{"access-token", b["access_token"]}});
  EXPECT_EQ(body_of(got)["code"], 0);
  EXPECT_TRUE(body_of(got)["data"]["display_name"].is_string());
  // A Bearer header is not the Access-Token header.
  EXPECT_EQ(
      body_of(get("/open_api/v1.3/business/get/", {{"business_id", b["open_id"]}},
                  {{"authorization", "Bearer " + b["access_token"].get<std::string>()}}))["code"],
      40105);
}

// --- faults --------------------------------------------------------------------------------------

TEST_F(SimTest, StatusFaultIsProviderShapedAndDoesNotRotate) {
  const json t = seed_tiktok("t1");
  fault({{"endpoint", "tiktok.token"}, {"kind", "status"}, {"status", 502}});
  const Response r = tiktok_refresh(t["refresh_token"]);
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(body_of(r)["error"], "server_error");
  EXPECT_EQ(tiktok_refresh(t["refresh_token"]).status, 200);  // not rotated by the fault
}

TEST_F(SimTest, StatusFaultShapesPerProvider) {
  const json g = seed_google("a");
  const json p = seed_meta_page("P1", "U1");
  fault({{"kind", "status"}, {"status", 500}, {"count", -1}});
  EXPECT_EQ(body_of(google_refresh(g["refresh_token"]))["error"], "internal_failure");
  EXPECT_EQ(body_of(google_accounts(g["access_token"]))["error"]["status"], "INTERNAL");
  const Response meta = meta_exchange(p["refresh_token"]);
  EXPECT_EQ(meta.status, 500);
  EXPECT_EQ(body_of(meta)["error"]["type"], "OAuthException");
  EXPECT_FALSE(header(meta, "X-App-Usage").empty());
}

TEST_F(SimTest, RateLimitFaultGoogleIs429WithRetryAfter) {
  const json g = seed_google("a");
  fault({{"provider", "google"}, {"kind", "rate_limit"}, {"retry_after", 30}, {"count", 2}});
  const Response r = google_refresh(g["refresh_token"]);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(header(r, "Retry-After"), "30");
  const Response api = google_accounts(g["access_token"]);
  EXPECT_EQ(api.status, 429);
  EXPECT_EQ(body_of(api)["error"]["status"], "RESOURCE_EXHAUSTED");
}

TEST_F(SimTest, RateLimitFaultTikTokUserInfoIs429) {
  const json t = seed_tiktok("t1");
  fault({{"endpoint", "tiktok.user_info"}, {"kind", "rate_limit"}});
  const Response r = tiktok_user_info(t["access_token"]);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(body_of(r)["error"]["code"], "rate_limit_exceeded");
  EXPECT_TRUE(header(r, "Retry-After").empty());
}

TEST_F(SimTest, RateLimitFaultMetaUsesTheCodeAndFullUsageHeaders) {
  const json p = seed_meta_page("P1", "U1");
  fault({{"provider", "meta"}, {"kind", "rate_limit"}, {"code", 32}, {"regain_minutes", 15}});
  const Response r = meta_debug(p["access_token"]);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"]["code"], 32);
  EXPECT_EQ(json::parse(header(r, "X-App-Usage"))["call_count"], 100);
  const json buc = json::parse(header(r, "X-Business-Use-Case-Usage"))["P1"][0];
  EXPECT_EQ(buc["call_count"], 100);
  EXPECT_EQ(buc["estimated_time_to_regain_access"], 15);
  fault({{"provider", "meta"}, {"kind", "rate_limit"}});
  EXPECT_EQ(body_of(meta_debug(p["access_token"]))["error"]["code"], 613);
}

TEST_F(SimTest, RateLimitFaultBusinessIsHttp200WithTheConfiguredCode) {
  options.tiktok_business_rate_limit_code = 40133;
  restart();
  const json b = seed_business("b1");
  fault({{"provider", "tiktok_business"}, {"kind", "rate_limit"}});
  const Response r = business_refresh(b["refresh_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(body_of(r)["code"], 40133);
}

TEST_F(SimTest, DelayFaultDeliversTheNormalStateChangingResponseLate) {
  const json t = seed_tiktok("t1");
  fault({{"kind", "delay"}, {"delay_ms", 1500}});
  const Response r = tiktok_refresh(t["refresh_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.delay, 1500ms);
  EXPECT_EQ(account("tiktok", "t1")["refresh_token"], body_of(r)["refresh_token"]);
}

TEST_F(SimTest, DeliveryFaultsResetTruncateHang) {
  const json g = seed_google("a");
  const std::pair<const char*, Response::Delivery> cases[] = {
      {"reset", Response::Delivery::kReset},
      {"truncate", Response::Delivery::kTruncate},
      {"hang", Response::Delivery::kHang},
  };
  for (const auto& [kind, delivery] : cases) {
    fault({{"kind", kind}});
    const Response r = google_refresh(g["refresh_token"]);
    EXPECT_EQ(r.delivery, delivery) << kind;
    if (delivery == Response::Delivery::kTruncate) {
      EXPECT_TRUE(json::accept(r.body));  // the server sends half of it
      EXPECT_NE(r.body.find("access_token"), std::string::npos);
    }
  }
  EXPECT_EQ(google_refresh(g["refresh_token"]).delivery, Response::Delivery::kNormal);
}

TEST_F(SimTest, MalformedHtmlAndEmptyFaults) {
  const json g = seed_google("a");
  fault({{"kind", "malformed"}});
  Response r = google_refresh(g["refresh_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_FALSE(json::accept(r.body));
  fault({{"kind", "html"}});
  r = google_refresh(g["refresh_token"]);
  EXPECT_EQ(r.status, 502);
  EXPECT_TRUE(r.content_type.starts_with("text/html"));
  EXPECT_NE(r.body.find("<html>"), std::string::npos);
  fault({{"kind", "empty"}});
  r = google_refresh(g["refresh_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.empty());
}

TEST_F(SimTest, ErrorBodyFaultIsHttp200WithAProviderError) {
  const json g = seed_google("a");
  const json t = seed_tiktok("t1");
  const json b = seed_business("b1");
  const json u = seed({{"provider", "meta"}, {"kind", "user"}, {"account_id", "U1"}});
  fault({{"kind", "error_body"}, {"count", 4}});
  Response r = google_refresh(g["refresh_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(body_of(r), json({{"error", "internal_failure"}}));
  r = tiktok_user_info(t["access_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(body_of(r)["error"]["code"], "ok");
  r = business_refresh(b["refresh_token"]);
  EXPECT_EQ(body_of(r)["code"], 51021);
  r = meta_exchange(u["access_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(body_of(r)["error"].contains("code"));
}

TEST_F(SimTest, TransientCodeFaultIsMetaOnly) {
  const json g = seed_google("a");
  const json u = seed({{"provider", "meta"}, {"kind", "user"}, {"account_id", "U1"}});
  fault({{"kind", "transient_code"}, {"code", 1}});
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);  // does not match, nor use it up
  const Response r = meta_exchange(u["access_token"]);
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(body_of(r)["error"]["code"], 1);
}

TEST_F(SimTest, UsageFaultForcesMetaHeadersOnANormalResponse) {
  const json p = seed_meta_page("P1", "U1");
  fault({{"kind", "usage"}, {"value", 85}, {"regain_minutes", 7}});
  const Response r = meta_debug(p["access_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(body_of(r)["data"]["is_valid"], true);
  EXPECT_EQ(json::parse(header(r, "X-App-Usage"))["total_time"], 85);
  const json buc = json::parse(header(r, "X-Business-Use-Case-Usage"))["P1"][0];
  EXPECT_EQ(buc["total_cputime"], 85);
  EXPECT_EQ(buc["estimated_time_to_regain_access"], 7);
}

TEST_F(SimTest, FaultCountAppliesToTheNextNMatchingRequests) {
  const json g = seed_google("a");
  fault({{"endpoint", "google.token"}, {"kind", "status"}, {"count", 2}});
  EXPECT_EQ(google_accounts(g["access_token"]).status, 200);  // other endpoint: untouched
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 503);
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 503);
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);
}

TEST_F(SimTest, FaultCountMinusOneLastsUntilCleared) {
  const json g = seed_google("a");
  fault({{"kind", "status"}, {"count", -1}});
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(google_refresh(g["refresh_token"]).status, 503);
  EXPECT_EQ(body_of(get("/admin/faults"))["faults"].size(), 1U);
  admin("/admin/faults/clear", json::object());
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);
}

TEST_F(SimTest, FaultMatchesTheAccountResolvedFromTheToken) {
  const json a = seed_google("a");
  const json b = seed_google("b");
  fault({{"provider", "google"}, {"account_id", "b"}, {"kind", "status"}});
  EXPECT_EQ(google_refresh(a["refresh_token"]).status, 200);
  EXPECT_EQ(google_accounts(b["access_token"]).status, 503);
  EXPECT_EQ(google_refresh(b["refresh_token"]).status, 200);
}

TEST_F(SimTest, FaultMatchesByProviderFamily) {
  const json t = seed_tiktok("t1");
  const json b = seed_business("b1");
  fault({{"provider", "tiktok_business"}, {"kind", "status"}});
  EXPECT_EQ(tiktok_refresh(t["refresh_token"]).status, 200);
  EXPECT_EQ(business_refresh(b["refresh_token"]).status, 503);
}

TEST_F(SimTest, FaultWithUnknownEndpointOrKindIs400) {
  admin("/admin/fault", {{"endpoint", "google.nope"}, {"kind", "status"}}, 400);
  admin("/admin/fault", {{"kind", "explode"}}, 400);
  admin("/admin/fault", {{"kind", "status"}, {"count", 0}}, 400);
  EXPECT_EQ(body_of(get("/admin/faults"))["faults"].size(), 0U);
}

// --- counters ------------------------------------------------------------------------------------

TEST_F(SimTest, RefreshDuringADelayedRefreshIsConcurrent) {
  const json g = seed_google("a");
  fault({{"kind", "delay"}, {"delay_ms", 1000}});
  EXPECT_EQ(google_refresh(g["refresh_token"]).delay, 1000ms);
  clock.advance(500ms);
  google_refresh(g["refresh_token"]);  // the first one is still due
  clock.advance(600ms);
  google_refresh(g["refresh_token"]);  // the first one was delivered
  EXPECT_EQ(counters("google:a")["refreshes"], 3);
  EXPECT_EQ(counters("google:a")["concurrent_refreshes"], 1);
  EXPECT_EQ(body_of(get("/admin/counters"))["totals"]["concurrent_refreshes"], 1);
}

TEST_F(SimTest, BackToBackRefreshesWithoutDelayAreNotConcurrent) {
  const json g = seed_google("a");
  google_refresh(g["refresh_token"]);
  google_refresh(g["refresh_token"]);
  EXPECT_EQ(counters("google:a")["concurrent_refreshes"], 0);
}

TEST_F(SimTest, CountersCountRequestsEndpointsAndChecks) {
  const json g = seed_google("a");
  const json t = seed_tiktok("t1");
  google_refresh(g["refresh_token"]);
  get("/tokeninfo", {{"access_token", g["access_token"]}});
  tiktok_user_info(t["access_token"]);
  get("/nope");  // not a provider endpoint
  const json c = body_of(get("/admin/counters"));
  EXPECT_EQ(c["requests"], 3);
  EXPECT_EQ(c["by_endpoint"]["google.token"], 1);
  EXPECT_EQ(c["by_endpoint"]["google.tokeninfo"], 1);
  EXPECT_EQ(c["accounts"]["google:a"]["checks"], 1);
  EXPECT_EQ(c["accounts"]["tiktok:t1"]["checks"], 1);
  EXPECT_EQ(c["totals"]["checks"], 2);
  EXPECT_EQ(c["totals"]["refreshes"], 1);
  const json one = body_of(get("/admin/counters", {{"account", "google:a"}}));
  EXPECT_EQ(one["accounts"].size(), 1U);
}

// --- the generic OAuth 2.0 server ("oauth2") and the API-key probe ("apikey") ------------------

std::string base64(const std::string& in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned v = static_cast<unsigned char>(in[i]) << 16U |
                       static_cast<unsigned char>(in[i + 1]) << 8U |
                       static_cast<unsigned char>(in[i + 2]);
    out += {kAlphabet[v >> 18U], kAlphabet[v >> 12U & 63U], kAlphabet[v >> 6U & 63U],
            kAlphabet[v & 63U]};
  }
  if (i + 1 == in.size()) {
    const unsigned v = static_cast<unsigned char>(in[i]) << 16U;
    out += {kAlphabet[v >> 18U], kAlphabet[v >> 12U & 63U], '=', '='};
  } else if (i + 2 == in.size()) {
    const unsigned v =
        static_cast<unsigned char>(in[i]) << 16U | static_cast<unsigned char>(in[i + 1]) << 8U;
    out += {kAlphabet[v >> 18U], kAlphabet[v >> 12U & 63U], kAlphabet[v >> 6U & 63U], '='};
  }
  return out;
}

TEST(SimBase64, MatchesKnownEncodings) {
  EXPECT_EQ(base64("sim-google-client:sim-google-secret"),
            "c2ltLWdvb2dsZS1jbGllbnQ6c2ltLWdvb2dsZS1zZWNyZXQ=");
  EXPECT_EQ(base64("ab"), "YWI=");
  EXPECT_EQ(base64("abc"), "YWJj");
}

class SimOAuth2Test : public SimTest {
 protected:
  using Headers = std::map<std::string, std::string>;

  // The gateway key header, as HttpServer hands it over (names lower-cased).
  Headers gateway() const { return {{"x-api-key", options.oauth2_api_key}}; }
  Headers basic(const std::string& id, const std::string& secret) const {
    Headers h = gateway();
    h["authorization"] = "Basic " + base64(id + ":" + secret);
    return h;
  }
  Headers client_basic() const {
    return basic(options.oauth2_client_id, options.oauth2_client_secret);
  }
  // client_secret_post: the client's fields added to `fields`.
  Params with_client(Params fields) const {
    fields["client_id"] = options.oauth2_client_id;
    fields["client_secret"] = options.oauth2_client_secret;
    return fields;
  }
  Response post(const std::string& path, const Params& fields, const Headers& headers) {
    return send("POST", path, {}, form(fields), headers);
  }

  Response refresh_post(const std::string& refresh_token, Params extra = {}) {
    extra["grant_type"] = "refresh_token";
    extra["refresh_token"] = refresh_token;
    return post("/oauth2/token", with_client(std::move(extra)), gateway());
  }
  Response refresh_basic(const std::string& refresh_token) {
    return post("/oauth2/token",
                {{"grant_type", "refresh_token"}, {"refresh_token", refresh_token}},
                client_basic());
  }
  Response client_credentials(Params extra = {}) {
    extra["grant_type"] = "client_credentials";
    return post("/oauth2/token", extra, client_basic());
  }
  json introspect(const std::string& token) {
    const Response r = post("/oauth2/introspect", with_client({{"token", token}}), gateway());
    EXPECT_EQ(r.status, 200) << r.body;
    return body_of(r);
  }
  Response revoke(const std::string& token, const std::string& hint = {}) {
    Params fields = {{"token", token}};
    if (!hint.empty()) fields["token_type_hint"] = hint;
    return post("/oauth2/revoke", fields, client_basic());
  }
  Response probe(const std::string& key) { return get("/apikey/probe", {}, {{"x-api-key", key}}); }

  json seed_oauth2(const std::string& id, json extra = json::object()) {
    extra["provider"] = "oauth2";
    extra["account_id"] = id;
    return seed(extra);
  }
};

TEST_F(SimOAuth2Test, SeedReturnsAGrantWithAccessAndRefreshTokens) {
  const json g = seed_oauth2("u1");
  EXPECT_TRUE(g["access_token"].get<std::string>().starts_with("oa2at_"));
  EXPECT_TRUE(g["refresh_token"].get<std::string>().starts_with("oa2rt_"));
  EXPECT_EQ(g["expires_at"], kSimStart + 3600);
  EXPECT_TRUE(g["refresh_expires_at"].is_null());
  EXPECT_EQ(g["scope"], "read write");
  const json view = account("oauth2", "u1");
  EXPECT_EQ(view["provider"], "oauth2");
  EXPECT_EQ(view["access_token"], g["access_token"]);
  EXPECT_EQ(view["refresh_token"], g["refresh_token"]);
  EXPECT_EQ(view["scope"], "read write");
  EXPECT_EQ(view["revoked"], false);
  // "api" alone names the family; a seed's own scope and access lifetime.
  const json h = seed(
      {{"api", "oauth2"}, {"account_id", "u2"}, {"scope", "files.read"}, {"access_lifetime", 60}});
  EXPECT_EQ(h["expires_at"], kSimStart + 60);
  EXPECT_EQ(h["scope"], "files.read");
  EXPECT_EQ(account("oauth2", "u2")["scope"], "files.read");
}

TEST_F(SimOAuth2Test, SeedRejectsBadOAuth2AndApiKeyFields) {
  admin("/admin/seed", {{"provider", "oauth2"}, {"account_id", "u"}, {"api", "v2"}}, 400);
  admin("/admin/seed", {{"provider", "oauth2"}, {"account_id", "u"}, {"access_lifetime", 0}}, 400);
  admin("/admin/seed", {{"provider", "oauth2"}, {"account_id", "u"}, {"scope", " "}}, 400);
  admin("/admin/seed", {{"api", "oauth2_client"}, {"account_id", "someone-else"}}, 400);
  admin("/admin/seed", {{"api", "oauth2_client"}, {"rotate", true}}, 400);  // no refresh token
  admin("/admin/seed", {{"provider", "apikey"}, {"account_id", "k"}, {"scope", "x"}}, 400);
  admin("/admin/seed_bulk", {{"api", "oauth2_client"}, {"prefix", "c"}, {"count", 2}}, 400);
  EXPECT_EQ(get("/admin/account", {{"provider", "oauth2"}, {"account_id", "u"}}).status, 404);
  EXPECT_EQ(get("/admin/account", {{"provider", "apikey"}, {"account_id", "k"}}).status, 404);
}

TEST_F(SimOAuth2Test, RefreshWithClientSecretPostRotatesAndTheOldTokenIsInvalidGrant) {
  const json g = seed_oauth2("u1");
  const Response r = refresh_post(g["refresh_token"]);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(r.content_type.starts_with("application/json"));
  EXPECT_EQ(header(r, "Cache-Control"), "no-store");
  EXPECT_EQ(header(r, "Pragma"), "no-cache");
  const json b = body_of(r);
  EXPECT_TRUE(b["access_token"].get<std::string>().starts_with("oa2at_"));
  EXPECT_NE(b["access_token"], g["access_token"]);
  EXPECT_EQ(b["token_type"], "Bearer");
  EXPECT_EQ(b["expires_in"], 3600);
  EXPECT_EQ(b["scope"], "read write");
  ASSERT_TRUE(b.contains("refresh_token"));
  EXPECT_NE(b["refresh_token"], g["refresh_token"]);

  const Response reused = refresh_post(g["refresh_token"]);
  EXPECT_EQ(reused.status, 400);
  EXPECT_EQ(body_of(reused)["error"], "invalid_grant");
  EXPECT_FALSE(body_of(reused)["error_description"].get<std::string>().empty());
  EXPECT_EQ(header(reused, "Cache-Control"), "no-store");

  EXPECT_EQ(refresh_post(b["refresh_token"]).status, 200);
  const json c = counters("oauth2:u1");
  EXPECT_EQ(c["refreshes"], 3);
  EXPECT_EQ(c["reused_refresh_tokens"], 1);
  EXPECT_EQ(c["invalid_grant"], 1);
  EXPECT_EQ(body_of(get("/admin/counters"))["by_endpoint"]["oauth2.token"], 3);
}

TEST_F(SimOAuth2Test, RefreshWithClientSecretBasicRotatesAndTheOldTokenIsInvalidGrant) {
  const json g = seed_oauth2("u1");
  const Response r = refresh_basic(g["refresh_token"]);
  ASSERT_EQ(r.status, 200) << r.body;
  const json b = body_of(r);
  EXPECT_EQ(b["expires_in"], 3600);
  EXPECT_EQ(account("oauth2", "u1")["access_token"], b["access_token"]);
  EXPECT_EQ(account("oauth2", "u1")["refresh_token"], b["refresh_token"]);
  const Response reused = refresh_basic(g["refresh_token"]);
  EXPECT_EQ(reused.status, 400);
  EXPECT_EQ(body_of(reused)["error"], "invalid_grant");
  EXPECT_EQ(refresh_basic(b["refresh_token"]).status, 200);
  EXPECT_EQ(counters("oauth2:u1")["invalid_grant"], 1);
}

TEST_F(SimOAuth2Test, RefreshHonoursTheLifetimeOptionAndTheSeedsRotateFalse) {
  options.oauth2_access_lifetime = 900;
  restart();
  const json g = seed_oauth2("u1", {{"rotate", false}});
  EXPECT_EQ(g["expires_at"], kSimStart + 900);
  const json b = body_of(refresh_post(g["refresh_token"]));
  EXPECT_EQ(b["expires_in"], 900);
  EXPECT_FALSE(b.contains("refresh_token"));
  EXPECT_EQ(refresh_post(g["refresh_token"]).status, 200);  // not rotated: still good
}

TEST_F(SimOAuth2Test, RotationOffByOption) {
  options.oauth2_rotate_refresh = false;
  restart();
  const json g = seed_oauth2("u1");
  EXPECT_FALSE(body_of(refresh_post(g["refresh_token"])).contains("refresh_token"));
  EXPECT_EQ(refresh_post(g["refresh_token"]).status, 200);
}

TEST_F(SimOAuth2Test, ReuseWithinGraceReturnsTheSameNewPair) {
  options.reuse_grace_seconds = 30;
  restart();
  const json g = seed_oauth2("u1");
  const json first = body_of(refresh_post(g["refresh_token"]));
  advance(10s);
  const Response again = refresh_post(g["refresh_token"]);
  ASSERT_EQ(again.status, 200);
  EXPECT_EQ(body_of(again)["access_token"], first["access_token"]);
  EXPECT_EQ(body_of(again)["refresh_token"], first["refresh_token"]);
  EXPECT_EQ(body_of(again)["expires_in"], 3590);
  advance(30s);
  EXPECT_EQ(body_of(refresh_post(g["refresh_token"]))["error"], "invalid_grant");
  EXPECT_EQ(counters("oauth2:u1")["reused_refresh_tokens"], 2);
}

TEST_F(SimOAuth2Test, ExpiredAndRevokedRefreshTokensAreInvalidGrant) {
  const json g = seed_oauth2("u1", {{"refresh_expires_in", 7 * kDay}});
  EXPECT_EQ(g["refresh_expires_at"], kSimStart + 7 * kDay);
  const json fresh = body_of(refresh_post(g["refresh_token"]));
  EXPECT_EQ(account("oauth2", "u1")["refresh_expires_at"], kSimStart + 7 * kDay);  // kept
  advance(std::chrono::seconds(7 * kDay));
  const Response expired = refresh_post(fresh["refresh_token"]);
  EXPECT_EQ(expired.status, 400);
  EXPECT_EQ(body_of(expired)["error"], "invalid_grant");
  EXPECT_EQ(body_of(expired)["error_description"], "The refresh token has expired.");

  const json h = seed_oauth2("u2");
  admin("/admin/revoke", {{"provider", "oauth2"}, {"account_id", "u2"}});
  const Response revoked = refresh_post(h["refresh_token"]);
  EXPECT_EQ(revoked.status, 400);
  EXPECT_EQ(body_of(revoked)["error_description"], "The refresh token has been revoked.");
  EXPECT_EQ(counters("oauth2:u2")["invalid_grant"], 1);

  const Response unknown = refresh_post("oa2rt_nope");
  EXPECT_EQ(unknown.status, 400);
  EXPECT_EQ(body_of(unknown)["error"], "invalid_grant");
  EXPECT_EQ(body_of(get("/admin/counters"))["totals"]["invalid_grant"], 3);
}

TEST_F(SimOAuth2Test, ScopeMayNarrowButNotWiden) {
  const json g = seed_oauth2("u1", {{"rotate", false}});
  const json narrow = body_of(refresh_post(g["refresh_token"], {{"scope", "read"}}));
  EXPECT_EQ(narrow["scope"], "read");
  EXPECT_EQ(introspect(narrow["access_token"])["scope"], "read");
  const Response wide = refresh_post(g["refresh_token"], {{"scope", "read admin"}});
  EXPECT_EQ(wide.status, 400);
  EXPECT_EQ(body_of(wide)["error"], "invalid_scope");
  EXPECT_EQ(body_of(refresh_post(g["refresh_token"]))["scope"], "read write");
}

TEST_F(SimOAuth2Test, WrongClientIs401InvalidClientWithWwwAuthenticateForBasic) {
  const json g = seed_oauth2("u1");
  const Params grant = {{"grant_type", "refresh_token"}, {"refresh_token", g["refresh_token"]}};
  Response r = post("/oauth2/token", grant, basic(options.oauth2_client_id, "wrong"));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(body_of(r)["error"], "invalid_client");
  EXPECT_EQ(header(r, "WWW-Authenticate"), "Basic realm=\"sim\"");

  r = post("/oauth2/token", grant, basic("other-client", options.oauth2_client_secret));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(header(r, "WWW-Authenticate"), "Basic realm=\"sim\"");

  Headers garbled = gateway();
  garbled["authorization"] = "Basic !!!";
  r = post("/oauth2/token", grant, garbled);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(header(r, "WWW-Authenticate"), "Basic realm=\"sim\"");

  Params wrong_post = grant;
  wrong_post["client_id"] = options.oauth2_client_id;
  wrong_post["client_secret"] = "wrong";
  r = post("/oauth2/token", wrong_post, gateway());
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(body_of(r)["error"], "invalid_client");
  EXPECT_TRUE(header(r, "WWW-Authenticate").empty());

  r = post("/oauth2/token", grant, gateway());  // no client authentication at all
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(body_of(r)["error"], "invalid_client");

  EXPECT_EQ(refresh_basic(g["refresh_token"]).status, 200);  // nothing was rotated
}

TEST_F(SimOAuth2Test, BothClientAuthenticationMethodsAtOnceIsInvalidRequest) {
  const json g = seed_oauth2("u1");
  const Response r =
      post("/oauth2/token",
           with_client({{"grant_type", "refresh_token"}, {"refresh_token", g["refresh_token"]}}),
           client_basic());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "invalid_request");
  // A client_id field naming the Basic client is identification, not a second method.
  const Response ok = post("/oauth2/token",
                           {{"grant_type", "refresh_token"},
                            {"refresh_token", g["refresh_token"]},
                            {"client_id", options.oauth2_client_id}},
                           client_basic());
  EXPECT_EQ(ok.status, 200) << ok.body;
}

TEST_F(SimOAuth2Test, MissingOrWrongGatewayKeyIs403) {
  const json g = seed_oauth2("u1");
  const Params fields =
      with_client({{"grant_type", "refresh_token"}, {"refresh_token", g["refresh_token"]}});
  const json denied = {{"error", "access_denied"},
                       {"error_description", "missing or wrong x-api-key"}};
  Response r = post("/oauth2/token", fields, {});
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(body_of(r), denied);
  r = post("/oauth2/token", fields, {{"x-api-key", "not-the-key"}});
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(body_of(r), denied);
  r = post("/oauth2/introspect", with_client({{"token", g["access_token"]}}), {});
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(body_of(r), denied);
  r = post("/oauth2/revoke", with_client({{"token", g["access_token"]}}), {});
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(introspect(g["access_token"])["active"], true);  // the 403 revoked nothing
  EXPECT_EQ(refresh_post(g["refresh_token"]).status, 200);   // nor rotated anything
}

TEST_F(SimOAuth2Test, GatewayHeaderNameAndKeyAreOptions) {
  options.oauth2_api_key_header = "X-Gateway-Key";
  options.oauth2_api_key = "k-123";
  restart();
  const Params fields = with_client({{"grant_type", "client_credentials"}});
  EXPECT_EQ(post("/oauth2/token", fields, {{"x-gateway-key", "k-123"}}).status, 200);
  const Response r = post("/oauth2/token", fields, {{"x-api-key", "k-123"}});
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(body_of(r)["error_description"], "missing or wrong X-Gateway-Key");
  options.oauth2_api_key = "";  // none required
  restart();
  EXPECT_EQ(post("/oauth2/token", fields, {}).status, 200);
}

TEST_F(SimOAuth2Test, GrantTypeAndParameterErrors) {
  Response r = post("/oauth2/token", with_client({}), gateway());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "unsupported_grant_type");
  r = post("/oauth2/token", with_client({{"grant_type", "password"}}), gateway());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "unsupported_grant_type");
  r = post("/oauth2/token", with_client({{"grant_type", "refresh_token"}}), gateway());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "invalid_request");
  r = post("/oauth2/introspect", with_client({}), gateway());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "invalid_request");
  r = post("/oauth2/revoke", with_client({}), gateway());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "invalid_request");
  EXPECT_EQ(get("/oauth2/token").status, 405);
  EXPECT_EQ(post_json("/apikey/probe", json::object()).status, 405);
}

TEST_F(SimOAuth2Test, ClientCredentialsIssuesAnEightHourTokenAndANewOneEndsTheOld) {
  const Response r1 = client_credentials();
  ASSERT_EQ(r1.status, 200) << r1.body;
  EXPECT_EQ(header(r1, "Cache-Control"), "no-store");
  const json first = body_of(r1);
  EXPECT_EQ(first["expires_in"], 28800);
  EXPECT_EQ(first["token_type"], "Bearer");
  EXPECT_EQ(first["scope"], "read write");
  EXPECT_FALSE(first.contains("refresh_token"));
  const json active = introspect(first["access_token"]);
  EXPECT_EQ(active["active"], true);
  EXPECT_EQ(active["sub"], options.oauth2_client_id);
  EXPECT_EQ(active["client_id"], options.oauth2_client_id);
  EXPECT_EQ(active["exp"], kSimStart + 28800);
  EXPECT_EQ(active["iat"], kSimStart);

  advance(60s);
  const json second = body_of(
      post("/oauth2/token", with_client({{"grant_type", "client_credentials"}}), gateway()));
  EXPECT_NE(second["access_token"], first["access_token"]);
  EXPECT_EQ(introspect(first["access_token"]), json({{"active", false}}));
  const json now_active = introspect(second["access_token"]);
  EXPECT_EQ(now_active["active"], true);
  EXPECT_EQ(now_active["exp"], kSimStart + 60 + 28800);

  const json view = account("oauth2", options.oauth2_client_id);
  EXPECT_EQ(view["access_token"], second["access_token"]);
  EXPECT_TRUE(view["refresh_token"].is_null());
  const json c = counters("oauth2:" + options.oauth2_client_id);
  EXPECT_EQ(c["refreshes"], 2);
  EXPECT_EQ(c["checks"], 3);
}

TEST_F(SimOAuth2Test, ClientCredentialsTokenExpiresAfterEightHours) {
  const json t = body_of(client_credentials());
  advance(std::chrono::seconds(28799));
  EXPECT_EQ(introspect(t["access_token"])["active"], true);
  advance(1s);
  EXPECT_EQ(introspect(t["access_token"]), json({{"active", false}}));
}

TEST_F(SimOAuth2Test, ClientCredentialsAfterAdminRevokeStillSucceed) {
  const json seeded =
      seed({{"api", "oauth2_client"}, {"scope", "reports"}, {"access_lifetime", 1200}});
  EXPECT_EQ(seeded["expires_at"], kSimStart + 1200);
  EXPECT_EQ(introspect(seeded["access_token"])["scope"], "reports");
  admin("/admin/revoke", {{"provider", "oauth2"}, {"account_id", options.oauth2_client_id}});
  EXPECT_EQ(introspect(seeded["access_token"]), json({{"active", false}}));
  EXPECT_EQ(account("oauth2", options.oauth2_client_id)["revoked"], true);

  const Response r = client_credentials();
  ASSERT_EQ(r.status, 200) << r.body;
  const json fresh = body_of(r);
  EXPECT_EQ(fresh["expires_in"], 1200);  // the revoked grant's lifetime and scope carry over
  EXPECT_EQ(fresh["scope"], "reports");
  EXPECT_EQ(introspect(fresh["access_token"])["active"], true);
  EXPECT_EQ(account("oauth2", options.oauth2_client_id)["revoked"], false);
  const Response wider = client_credentials({{"scope", "reports admin"}});
  EXPECT_EQ(wider.status, 400);
  EXPECT_EQ(body_of(wider)["error"], "invalid_scope");
}

TEST_F(SimOAuth2Test, IntrospectionDescribesUsableTokensAndTurnsInactive) {
  const json g = seed_oauth2("u1", {{"access_lifetime", 600}});
  const json access = introspect(g["access_token"]);
  EXPECT_EQ(access, json({{"active", true},
                          {"scope", "read write"},
                          {"client_id", options.oauth2_client_id},
                          {"token_type", "Bearer"},
                          {"exp", kSimStart + 600},
                          {"iat", kSimStart},
                          {"sub", "u1"}}));
  const json refresh = introspect(g["refresh_token"]);
  EXPECT_EQ(refresh["active"], true);
  EXPECT_EQ(refresh["sub"], "u1");
  EXPECT_FALSE(refresh.contains("exp"));  // a refresh token without expiry

  advance(601s);
  EXPECT_EQ(introspect(g["access_token"]), json({{"active", false}}));
  EXPECT_EQ(introspect(g["refresh_token"])["active"], true);

  admin("/admin/revoke", {{"provider", "oauth2"}, {"account_id", "u1"}});
  EXPECT_EQ(introspect(g["refresh_token"]), json({{"active", false}}));
  EXPECT_EQ(introspect("oa2at_unknown"), json({{"active", false}}));
  const json google = seed_google("a");  // another provider's token is unknown here
  EXPECT_EQ(introspect(google["access_token"]), json({{"active", false}}));

  EXPECT_EQ(counters("oauth2:u1")["checks"], 5);
  EXPECT_EQ(counters("google:a")["checks"], 0);
}

TEST_F(SimOAuth2Test, IntrospectionOfARotatedRefreshTokenIsInactive) {
  const json g = seed_oauth2("u1");
  const json fresh = body_of(refresh_basic(g["refresh_token"]));
  EXPECT_EQ(introspect(g["refresh_token"]), json({{"active", false}}));
  EXPECT_EQ(introspect(fresh["refresh_token"])["active"], true);
  EXPECT_EQ(introspect(g["access_token"])["active"], true);  // not expired, not revoked
}

TEST_F(SimOAuth2Test, RevokeEndpointKillsAnAccessTokenOrTheWholeGrant) {
  const json g = seed_oauth2("u1");
  Response r = revoke(g["access_token"], "access_token");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.empty());
  EXPECT_TRUE(r.content_type.empty());
  EXPECT_EQ(introspect(g["access_token"]), json({{"active", false}}));
  const json fresh = body_of(refresh_post(g["refresh_token"]));  // the grant lives on
  ASSERT_TRUE(fresh.contains("access_token"));

  r = revoke(fresh["refresh_token"]);  // no hint
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.empty());
  EXPECT_EQ(introspect(fresh["access_token"]), json({{"active", false}}));
  EXPECT_EQ(body_of(refresh_post(fresh["refresh_token"]))["error"], "invalid_grant");
  EXPECT_EQ(account("oauth2", "u1")["revoked"], true);

  r = revoke("oa2rt_never_issued", "refresh_token");  // RFC 7009 2.2: 200 all the same
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.empty());
  r = post("/oauth2/revoke", {{"token", "x"}}, basic(options.oauth2_client_id, "wrong"));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(body_of(r)["error"], "invalid_client");
  EXPECT_EQ(body_of(get("/admin/counters"))["by_endpoint"]["oauth2.revoke"], 4);
}

TEST_F(SimOAuth2Test, ApiKeyProbeAnswersTheAccountThen401AfterRevoke) {
  const json k = seed({{"provider", "apikey"}, {"account_id", "k1"}});
  const std::string key = k["access_token"];
  EXPECT_TRUE(key.starts_with("sk_sim_"));
  EXPECT_TRUE(k["expires_at"].is_null());
  EXPECT_EQ(account("apikey", "k1")["access_token"], key);

  Response r = probe(key);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.content_type.starts_with("application/json"));
  EXPECT_EQ(body_of(r), json({{"account_id", "k1"}}));

  admin("/admin/revoke", {{"provider", "apikey"}, {"account_id", "k1"}});
  r = probe(key);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(body_of(r)["error"], "invalid_api_key");

  r = get("/apikey/probe");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "invalid_request");
  EXPECT_EQ(probe("sk_sim_unknown").status, 401);
  const json g = seed_oauth2("u1");  // an OAuth token is no API key
  EXPECT_EQ(probe(g["access_token"]).status, 401);

  EXPECT_EQ(counters("apikey:k1")["checks"], 2);
  EXPECT_EQ(counters("oauth2:u1")["checks"], 0);
}

TEST_F(SimOAuth2Test, ApiKeysCanExpireAndBeSeededInBulk) {
  const json k = seed({{"api", "apikey"}, {"account_id", "k1"}, {"expires_in", 100}});
  EXPECT_EQ(k["expires_at"], kSimStart + 100);
  EXPECT_EQ(probe(k["access_token"]).status, 200);
  advance(100s);
  EXPECT_EQ(probe(k["access_token"]).status, 401);

  const json keys =
      admin("/admin/seed_bulk",
            {{"provider", "apikey"}, {"prefix", "key-"}, {"count", 3}, {"format", "json"}});
  ASSERT_EQ(keys.size(), 3U);
  EXPECT_EQ(body_of(probe(keys[2]["access_token"]))["account_id"], "key-2");
  const json grants =
      admin("/admin/seed_bulk",
            {{"provider", "oauth2"}, {"prefix", "u-"}, {"count", 2}, {"format", "json"}});
  ASSERT_EQ(grants.size(), 2U);
  EXPECT_EQ(refresh_post(grants[1]["refresh_token"]).status, 200);
  EXPECT_EQ(counters("oauth2:u-1")["refreshes"], 1);
}

TEST_F(SimOAuth2Test, Injected503OnTheTokenEndpointIsRfcShapedAndChangesNothing) {
  const json g = seed_oauth2("u1");
  fault({{"endpoint", "oauth2.token"}, {"kind", "status"}, {"status", 503}});
  const Response r = refresh_post(g["refresh_token"]);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(body_of(r)["error"], "temporarily_unavailable");
  EXPECT_FALSE(body_of(r)["error_description"].get<std::string>().empty());
  EXPECT_EQ(counters("oauth2:u1")["refreshes"], 1);         // counted as a refresh all the same
  EXPECT_EQ(refresh_post(g["refresh_token"]).status, 200);  // not rotated by the fault

  fault({{"endpoint", "oauth2.token"}, {"kind", "status"}, {"status", 500}});
  EXPECT_EQ(body_of(client_credentials())["error"], "server_error");
}

TEST_F(SimOAuth2Test, FaultKindsOnTheGenericFamilies) {
  const json g = seed_oauth2("u1");
  const json k = seed({{"provider", "apikey"}, {"account_id", "k1"}});

  fault({{"provider", "oauth2"}, {"kind", "rate_limit"}, {"retry_after", 20}});
  Response r = refresh_post(g["refresh_token"]);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(header(r, "Retry-After"), "20");
  EXPECT_EQ(body_of(r)["error"], "rate_limit_exceeded");

  fault({{"provider", "apikey"}, {"kind", "transient_code"}});
  r = probe(k["access_token"]);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(body_of(r)["error"], "temporarily_unavailable");

  fault({{"endpoint", "oauth2.introspect"}, {"kind", "transient_code"}, {"status", 502}});
  r = post("/oauth2/introspect", with_client({{"token", g["access_token"]}}), gateway());
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(body_of(r)["error"], "temporarily_unavailable");

  fault({{"endpoint", "oauth2.token"}, {"kind", "error_body"}, {"error", "invalid_grant"}});
  r = refresh_post(g["refresh_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(body_of(r)["error"], "invalid_grant");

  fault({{"endpoint", "oauth2.token"},
         {"kind", "status"},
         {"status", 400},
         {"error", "invalid_grant"},
         {"account_id", "u1"}});
  r = refresh_post(g["refresh_token"]);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "invalid_grant");

  fault({{"provider", "oauth2"}, {"kind", "html"}});
  r = post("/oauth2/revoke", with_client({{"token", g["access_token"]}}), gateway());
  EXPECT_EQ(r.status, 502);
  EXPECT_TRUE(r.content_type.starts_with("text/html"));

  fault({{"endpoint", "apikey.probe"}, {"kind", "delay"}, {"delay_ms", 250}});
  r = probe(k["access_token"]);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.delay, 250ms);

  EXPECT_EQ(refresh_post(g["refresh_token"]).status, 200);  // no fault left
  EXPECT_EQ(body_of(get("/admin/faults"))["faults"].size(), 0U);
}

TEST_F(SimOAuth2Test, FaultErrorFieldIsValidated) {
  admin("/admin/fault", {{"endpoint", "google.token"}, {"kind", "status"}, {"error", "x"}}, 400);
  admin("/admin/fault", {{"kind", "status"}, {"error", "x"}}, 400);  // must target oauth2/apikey
  admin("/admin/fault", {{"provider", "oauth2"}, {"kind", "status"}, {"error", "a\"b"}}, 400);
  admin("/admin/fault", {{"provider", "oauth2"}, {"kind", "status"}, {"error", ""}}, 400);
  admin("/admin/fault", {{"provider", "myspace"}, {"kind", "status"}}, 400);
  EXPECT_EQ(body_of(get("/admin/faults"))["faults"].size(), 0U);
  fault({{"provider", "apikey"}, {"kind", "status"}, {"error", "invalid_api_key"}});
  EXPECT_EQ(body_of(get("/admin/faults"))["faults"][0]["provider"], "apikey");
}

TEST_F(SimOAuth2Test, TransientCodeFaultOnOAuth2DoesNotTouchGoogle) {
  const json g = seed_google("a");
  const json o = seed_oauth2("u1");
  fault({{"kind", "transient_code"}});
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);  // neither matched nor used up
  EXPECT_EQ(refresh_post(o["refresh_token"]).status, 503);
}

TEST_F(SimOAuth2Test, OtherProvidersTokensAreUnknownToTheTokenEndpoint) {
  const json g = seed_google("a");
  const Response r = refresh_post(g["refresh_token"]);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(body_of(r)["error"], "invalid_grant");
  EXPECT_EQ(counters("google:a")["refreshes"], 0);
  EXPECT_EQ(counters("google:a")["invalid_grant"], 0);
  EXPECT_EQ(google_refresh(g["refresh_token"]).status, 200);
}

}  // namespace
}  // namespace tw::sim
