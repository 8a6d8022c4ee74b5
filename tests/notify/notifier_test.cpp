// Notifier: the command as a real child process (tiny /bin/sh scripts in a temporary folder), the
// webhook through FakeTransport and once through CurlTransport to a local HttpServer. Retries and
// timeouts are driven by ManualTimers and a FakeClock; the only real waiting is for child
// processes, by running the io_context in small steps up to a hard deadline (a guard against a
// hung test, never a timing assertion).
#include "notify/notifier.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <signal.h>
#include <stdlib.h>

#include "core/log.h"
#include "http/curl_transport.h"
#include "tests/support/fake_transport.h"
#include "tests/support/run_io.h"
#include "tests/test_util.h"
#include "tools/provider-sim/http_server.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;
using tw::testing::FakeTransport;
using tw::testing::ScopedEnv;
using tw::testing::TempDir;

constexpr std::string_view kKey = "whsec-test-key-7f3a9c51";
constexpr std::string_view kSecretUrlPath = "/hooks/T00000/B00000/s3cr3t-path-credential";
constexpr std::string_view kEnvSecret = "hunter2-env-secret-must-not-leak";
const SysTime kNotifierStart = from_unix(1'790'000'000);  // 2026-09-21T14:13:20Z

using tw::testing::run_until;

// Runs `io` until it has no work left (every child reaped); false if `limit` passes first.
bool run_until_idle(boost::asio::io_context& io, std::chrono::milliseconds limit = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    io.restart();
    io.run_for(5ms);
    if (io.stopped()) return true;  // run_for returned because nothing was left to wait for
    if (std::chrono::steady_clock::now() >= deadline) return false;
  }
}

// HMAC-SHA256 as lowercase hex, through OpenSSL's EVP_Q_mac (not the code under test).
std::string hmac_sha256_hex(std::string_view key, std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  std::size_t len = 0;
  if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac.data(),
                mac.size(), &len) == nullptr) {
    ADD_FAILURE() << "EVP_Q_mac failed";
    return "";
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < len; ++i) {
    out += kHex[mac[i] >> 4];
    out += kHex[mac[i] & 0xf];
  }
  return out;
}

TEST(HmacHelper, MatchesRfc4231TestCase2) {
  EXPECT_EQ(hmac_sha256_hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

std::map<std::string, std::string> headers_of(const HttpRequest& r) {
  std::map<std::string, std::string> out;
  for (const auto& [name, value] : r.headers)
    out[name] = value;
  return out;
}

int count_lines(const std::string& path) {
  const std::string text = tw::testing::read_file(path);
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// Whether `pid` is gone or a zombie (dead, waiting for its parent or init to reap it).
bool dead(int pid) {
  const std::string stat = tw::testing::read_file("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  const std::size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

class NotifierTest : public ::testing::Test {
 protected:
  NotifierTest() {
    config.command_timeout = 30s;
    config.initial_backoff = 10s;
    config.max_backoff = 10min;
    config.max_attempts = 3;
    config.max_in_flight = 8;
  }

  Notifier& notifier(HttpTransport& transport) {
    n = std::make_unique<Notifier>(io.get_executor(), config,
                                   config.webhook_url.empty() ? Secret() : Secret(kKey), transport,
                                   clock, make_logger("notify-test", LogConfig{}, log_text),
                                   timers.factory(), [this] { return jitter; });
    return *n;
  }
  Notifier& notifier() { return notifier(http); }

  static ReauthEvent event(std::string id = "tok_0123456789abcdef") {
    ReauthEvent e;
    e.token_id = std::move(id);
    e.provider = Provider::kGoogle;
    e.kind = TokenKind::kRefreshToken;
    e.workspace_id = "ws-42";
    e.account_id = "acct-7001";
    e.state = TokenState::kNeedsReauth;
    e.reason = "invalid_grant: Token has been expired or revoked.";
    e.at = kNotifierStart - 60s;
    return e;
  }

  // An executable /bin/sh script in the temporary folder.
  std::string script(const std::string& name, const std::string& body) const {
    std::string path = dir.file(name);
    tw::testing::write_file(path, "#!/bin/sh\n" + body);
    std::filesystem::permissions(path, std::filesystem::perms::owner_all);
    return path;
  }

  // Moves the clock to the earliest armed timer and fires what is due.
  void fire_next() {
    const auto at = timers.next_due();
    ASSERT_TRUE(at.has_value()) << "no timer is armed";
    if (*at > clock.system_now()) clock.advance(*at - clock.system_now());
    timers.fire_due(clock.system_now());
  }

  // The delay until the earliest armed timer, if any.
  std::optional<std::chrono::system_clock::duration> next_in() const {
    const auto at = timers.next_due();
    if (!at) return std::nullopt;
    return *at - clock.system_now();
  }

  std::string logs() const { return log_text.str(); }

  std::ostringstream log_text;  // first: it outlives the logger
  boost::asio::io_context io;
  FakeClock clock{kNotifierStart};
  ManualTimers timers;
  FakeTransport http{io.get_executor()};
  NotifyConfig config;
  double jitter = 0;  // what the random source returns: 0 waits the full backoff
  TempDir dir;
  std::unique_ptr<Notifier> n;  // last: destroyed first
};

// ---------------------------------------------------------------------------------------------
// The command.

TEST_F(NotifierTest, CommandGetsExactlyTheEventInItsEnvironment) {
  const ScopedEnv secret("TW_TEST_SECRET_ENV", kEnvSecret);
  const std::string out = dir.file("env.txt");
  config.command = script("hook.sh", "env > '" + out + "'\n");
  notifier().notify(event());
  EXPECT_EQ(n->pending(), 1u);
  EXPECT_EQ(n->in_flight(), 0u) << "notify() must only queue";
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));

  std::map<std::string, std::string> env;
  std::istringstream lines(tw::testing::read_file(out));
  for (std::string line; std::getline(lines, line);) {
    const std::size_t eq = line.find('=');
    ASSERT_NE(eq, std::string::npos) << line;
    env[line.substr(0, eq)] = line.substr(eq + 1);
  }
  const std::map<std::string, std::string> expected{
      {"PATH", "/usr/sbin:/usr/bin:/sbin:/bin"},
      {"LANG", "C.UTF-8"},
      {"TW_TOKEN_ID", "tok_0123456789abcdef"},
      {"TW_PROVIDER", "google"},
      {"TW_KIND", "refresh_token"},
      {"TW_WORKSPACE", "ws-42"},
      {"TW_ACCOUNT", "acct-7001"},
      {"TW_STATE", "needs_reauth"},
      {"TW_REASON", "invalid_grant: Token has been expired or revoked."},
      {"TW_AT", "2026-09-21T14:12:20Z"},
  };
  for (const auto& [name, value] : expected) {
    EXPECT_EQ(env[name], value) << name;
  }
  // The shell adds PWD (the command runs in "/"); nothing else may be there.
  EXPECT_EQ(env["PWD"], "/");
  for (const auto& [name, value] : env) {
    EXPECT_TRUE(expected.contains(name) || name == "PWD") << "unexpected variable " << name;
  }
  EXPECT_FALSE(env.contains("TW_TEST_SECRET_ENV"));
  EXPECT_FALSE(env.contains("HOME"));
  EXPECT_THAT(tw::testing::read_file(out), Not(HasSubstr(kEnvSecret)));
  EXPECT_THAT(logs(), HasSubstr("notified command of token.needs_reauth for tok_0123456789abcdef "
                                "(google, workspace ws-42) on attempt 1"));
}

TEST_F(NotifierTest, FailingCommandIsRetriedWithBackoffThenGivenUp) {
  const std::string runs = dir.file("runs");
  config.command = script("fail.sh", "echo run >> '" + runs + "'\nexit 3\n");
  config.max_attempts = 3;
  notifier().notify(event());

  ASSERT_TRUE(run_until(io, [&] { return count_lines(runs) == 1 && n->in_flight() == 0; }));
  EXPECT_EQ(next_in(), std::chrono::system_clock::duration(10s));
  EXPECT_EQ(n->pending(), 1u) << "waiting to retry";
  fire_next();
  ASSERT_TRUE(run_until(io, [&] { return count_lines(runs) == 2 && n->in_flight() == 0; }));
  EXPECT_EQ(next_in(), std::chrono::system_clock::duration(20s)) << "the backoff doubles";
  fire_next();
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));

  EXPECT_EQ(count_lines(runs), 3);
  EXPECT_FALSE(timers.next_due().has_value()) << "no retry after max_attempts";
  const std::string text = logs();
  EXPECT_THAT(text, HasSubstr("failed on attempt 1 of 3: exited with status 3; retrying in 10s"));
  EXPECT_THAT(text, HasSubstr("failed on attempt 2 of 3: exited with status 3; retrying in 20s"));
  EXPECT_THAT(text, HasSubstr("gave up notifying command of token.needs_reauth for "
                              "tok_0123456789abcdef (google, workspace ws-42) after 3 "
                              "attempt(s): exited with status 3"));
  EXPECT_THAT(text, Not(HasSubstr("notified")));
}

TEST_F(NotifierTest, MissingCommandIsAFailedAttempt) {
  config.command = dir.file("no-such-hook");
  config.max_attempts = 1;
  notifier().notify(event());
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));
  EXPECT_THAT(logs(), HasSubstr("after 1 attempt(s): cannot start it: No such file or directory"));
}

TEST_F(NotifierTest, HangingCommandIsKilledWithWhatItStartedAtTimeout) {
  const std::string grandchild = dir.file("grandchild");
  config.command = script("hang.sh", "sleep 600 &\necho $! > '" + grandchild + ".tmp'\nmv '" +
                                         grandchild + ".tmp' '" + grandchild + "'\nwait\n");
  config.command_timeout = 45s;
  config.max_attempts = 1;
  notifier().notify(event());
  ASSERT_TRUE(run_until(io, [&] { return std::filesystem::exists(grandchild); }));
  const int sleeper = std::stoi(tw::testing::read_file(grandchild));
  EXPECT_EQ(n->in_flight(), 1u);
  EXPECT_EQ(next_in(), std::chrono::system_clock::duration(45s)) << "the command's deadline";

  fire_next();
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));
  EXPECT_THAT(logs(), HasSubstr("after 1 attempt(s): timed out after 45s and was killed"));
  // The whole process group went, not only the shell.
  EXPECT_TRUE(run_until(io, [&] { return dead(sleeper); })) << "pid " << sleeper << " survived";
}

// ---------------------------------------------------------------------------------------------
// The webhook.

class WebhookTest : public NotifierTest {
 protected:
  WebhookTest() { config.webhook_url = "https://hooks.example" + std::string(kSecretUrlPath); }
};

TEST_F(WebhookTest, PostsSignedCompactJson) {
  http.push_reply(204, "");
  ReauthEvent e = event();
  e.state = TokenState::kRevoked;
  e.provider = Provider::kTikTok;
  e.kind = TokenKind::kBusinessToken;
  notifier().notify(e);
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));

  ASSERT_EQ(http.requests().size(), 1u);
  const HttpRequest& r = http.requests()[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.url, config.webhook_url);
  EXPECT_EQ(r.log_url, "https://hooks.example") << "the path may be a credential";
  auto headers = headers_of(r);
  EXPECT_EQ(headers["Content-Type"], "application/json");
  EXPECT_EQ(headers["X-Tokenwarden-Timestamp"], "1790000000");
  EXPECT_EQ(headers["X-Tokenwarden-Event-Id"], "tok_0123456789abcdef-1789999940");
  EXPECT_EQ(headers["X-Tokenwarden-Signature"],
            "sha256=" + hmac_sha256_hex(kKey, headers["X-Tokenwarden-Timestamp"] + "." + r.body));

  const auto body = nlohmann::json::parse(r.body);
  EXPECT_EQ(body, (nlohmann::json{{"event", "token.revoked"},
                                  {"token_id", "tok_0123456789abcdef"},
                                  {"provider", "tiktok"},
                                  {"kind", "business_token"},
                                  {"workspace_id", "ws-42"},
                                  {"account_id", "acct-7001"},
                                  {"state", "revoked"},
                                  {"reason", "invalid_grant: Token has been expired or revoked."},
                                  {"at", "2026-09-21T14:12:20Z"}}));
  EXPECT_EQ(r.body, body.dump()) << "compact";
  EXPECT_THAT(logs(), HasSubstr("notified webhook of token.revoked for tok_0123456789abcdef "
                                "(tiktok, workspace ws-42) on attempt 1"));
}

TEST_F(WebhookTest, RetriesServerErrorsRateLimitsAndNetworkFailures) {
  config.max_attempts = 5;
  http.push_reply(503, "");
  http.push_reply(429, "", {{"retry-after", "42"}});
  http.push_failure(TransportError::kConnect, "Connection refused");
  http.push_reply(200, "ok");
  notifier().notify(event());

  const auto attempt_done = [&](std::size_t k) {
    return [&, k] { return http.requests().size() == k && n->in_flight() == 0; };
  };
  ASSERT_TRUE(run_until(io, attempt_done(1)));
  EXPECT_EQ(next_in(), std::chrono::system_clock::duration(10s));
  fire_next();
  ASSERT_TRUE(run_until(io, attempt_done(2)));
  EXPECT_EQ(next_in(), std::chrono::system_clock::duration(42s)) << "Retry-After";
  fire_next();
  ASSERT_TRUE(run_until(io, attempt_done(3)));
  EXPECT_EQ(next_in(), std::chrono::system_clock::duration(40s)) << "10s * 2^2";
  fire_next();
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));

  ASSERT_EQ(http.requests().size(), 4u);
  // Each attempt is signed with its own timestamp.
  auto last = headers_of(http.requests()[3]);
  EXPECT_EQ(last["X-Tokenwarden-Timestamp"], "1790000092");
  EXPECT_EQ(last["X-Tokenwarden-Signature"],
            "sha256=" + hmac_sha256_hex(kKey, "1790000092." + http.requests()[3].body));
  EXPECT_EQ(last["X-Tokenwarden-Event-Id"], "tok_0123456789abcdef-1789999940") << "stable";
  const std::string text = logs();
  EXPECT_THAT(text, HasSubstr("attempt 1 of 5: HTTP 503; retrying in 10s"));
  EXPECT_THAT(text, HasSubstr("attempt 2 of 5: HTTP 429; retrying in 42s"));
  EXPECT_THAT(text, HasSubstr("attempt 3 of 5: connect: Connection refused; retrying in 40s"));
  EXPECT_THAT(text, HasSubstr("notified webhook of token.needs_reauth for tok_0123456789abcdef "
                              "(google, workspace ws-42) on attempt 4"));
}

TEST_F(WebhookTest, BackoffIsCappedAndJitteredAndALongRetryAfterIsIgnored) {
  config.initial_backoff = 10s;
  config.max_backoff = 25s;
  config.max_attempts = 5;
  jitter = 1.0;                                         // the shortest wait: 80% of the backoff
  http.push_reply(500, "", {{"retry-after", "3600"}});  // beyond max_backoff
  for (int i = 0; i < 4; ++i)
    http.push_reply(502, "");
  notifier().notify(event());

  std::vector<std::chrono::system_clock::duration> waits;
  for (std::size_t k = 1; k <= 4; ++k) {
    ASSERT_TRUE(run_until(io, [&] { return http.requests().size() == k && n->in_flight() == 0; }));
    waits.push_back(next_in().value_or(0s));
    fire_next();
  }
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));
  EXPECT_EQ(waits, (std::vector<std::chrono::system_clock::duration>{8s, 16s, 20s, 20s}));
  EXPECT_EQ(http.requests().size(), 5u);
  EXPECT_THAT(logs(), HasSubstr("after 5 attempt(s): HTTP 502"));
}

TEST_F(WebhookTest, ClientErrorsAreNotRetried) {
  http.push_reply(400, "bad");
  http.push_reply(410, "gone");
  notifier().notify(event("tok_00000000000000a1"));
  n->notify(event("tok_00000000000000a2"));
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));
  EXPECT_EQ(http.requests().size(), 2u);
  EXPECT_FALSE(timers.next_due().has_value());
  EXPECT_THAT(logs(), HasSubstr("for tok_00000000000000a1 (google, workspace ws-42) after 1 "
                                "attempt(s): HTTP 400 (the receiver refuses it; not retried)"));
  EXPECT_THAT(logs(), HasSubstr("tok_00000000000000a2 (google, workspace ws-42) after 1 "
                                "attempt(s): HTTP 410"));
}

TEST_F(WebhookTest, AtMostMaxInFlightAtOnce) {
  config.max_in_flight = 2;
  std::size_t most = 0;
  http.set_handler([&](const HttpRequest&) {
    most = std::max(most, http.pending() + 1);  // the fake counts this one after the handler
    return FakeTransport::reply(200, "");
  });
  notifier();
  for (int i = 0; i < 7; ++i)
    n->notify(event("tok_000000000000000" + std::to_string(i)));
  EXPECT_EQ(n->pending(), 7u);
  io.poll_one();  // the pump: it starts what the limit allows, and no reply has arrived yet
  EXPECT_EQ(n->in_flight(), 2u);
  EXPECT_EQ(http.requests().size(), 2u);
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));
  EXPECT_EQ(http.requests().size(), 7u);
  EXPECT_EQ(most, 2u);
}

TEST_F(WebhookTest, CommandAndWebhookAreDeliveredIndependently) {
  config.command = script("fail.sh", "exit 1\n");
  config.max_attempts = 2;
  http.push_reply(200, "");
  notifier().notify(event());
  ASSERT_TRUE(run_until(io, [&] { return n->in_flight() == 0 && n->pending() == 1; }));
  EXPECT_THAT(logs(), HasSubstr("notified webhook of token.needs_reauth"));
  EXPECT_THAT(logs(), HasSubstr("notifying command of token.needs_reauth for tok_0123456789abcdef "
                                "(google, workspace ws-42) failed on attempt 1 of 2"));
  EXPECT_EQ(http.requests().size(), 1u) << "the command's failure does not resend the webhook";
}

TEST_F(WebhookTest, DoneRunsOnceEveryDeliveryHasFinished) {
  config.command = script("fail.sh", "exit 1\n");
  config.max_attempts = 1;
  http.push_reply(200, "");
  http.push_reply(200, "");
  std::vector<bool> done;
  notifier().notify(event(), [&](bool all) { done.push_back(all); });
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));
  EXPECT_EQ(done, std::vector<bool>{false}) << "once; the command was given up";

  config.command.clear();
  done.clear();
  notifier().notify(event("tok_00000000000000c2"), [&](bool all) { done.push_back(all); });
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));
  EXPECT_EQ(done, std::vector<bool>{true});
}

TEST_F(WebhookTest, DoneIsNotCalledForWhatShutdownAbandons) {
  http.push_reply(503, "");
  bool called = false;
  notifier().notify(event(), [&](bool) { called = true; });
  ASSERT_TRUE(run_until(io, [&] { return http.requests().size() == 1 && n->in_flight() == 0; }));
  n->shutdown();
  ASSERT_TRUE(run_until_idle(io));
  EXPECT_FALSE(called) << "an abandoned notice is not done: it is sent again after a restart";
}

TEST_F(WebhookTest, ShutdownAbandonsRetriesAndKillsRunningCommands) {
  const std::string pid_file = dir.file("pid");
  config.command = script("hang.sh", "echo $$ > '" + pid_file + ".tmp'\nmv '" + pid_file +
                                         ".tmp' '" + pid_file + "'\nexec sleep 600\n");
  config.max_attempts = 5;
  http.push_reply(503, "");
  notifier().notify(event());
  ASSERT_TRUE(run_until(io, [&] {
    return std::filesystem::exists(pid_file) && http.requests().size() == 1 &&
           n->in_flight() == 1;  // the command runs; the webhook waits to retry
  }));
  const int pid = std::stoi(tw::testing::read_file(pid_file));
  EXPECT_EQ(n->pending(), 2u);

  n->shutdown();
  EXPECT_EQ(n->pending(), 0u);
  EXPECT_EQ(n->in_flight(), 0u);
  EXPECT_FALSE(timers.next_due().has_value()) << "no retry and no deadline left armed";
  EXPECT_THAT(logs(), HasSubstr("shutting down; 2 delivery(ies) not done are abandoned"));
  // The killed command is reaped on the loop, which then runs out of work.
  ASSERT_TRUE(run_until_idle(io));
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);

  n->notify(event("tok_00000000000000b1"));
  EXPECT_EQ(n->pending(), 0u);
  ASSERT_TRUE(run_until_idle(io));
  EXPECT_EQ(http.requests().size(), 1u);
  EXPECT_THAT(logs(), HasSubstr("tok_00000000000000b1 arrived after shutdown: not sent"));
}

TEST_F(WebhookTest, AResultArrivingAfterShutdownIsIgnored) {
  http.push_reply(200, "");
  notifier().notify(event());
  io.poll_one();  // the pump: the request is sent and its reply posted, not yet delivered
  ASSERT_EQ(http.requests().size(), 1u);
  n->shutdown();
  ASSERT_TRUE(run_until_idle(io));
  EXPECT_THAT(logs(), HasSubstr("1 delivery(ies) not done are abandoned"));
  EXPECT_THAT(logs(), Not(HasSubstr("notified")));
}

TEST_F(WebhookTest, LogsNameTheTokenAndNoSecret) {
  const ScopedEnv secret("TW_TEST_SECRET_ENV", kEnvSecret);
  config.command = script("ok.sh", "echo \"$TW_TOKEN_ID\" >&2\nexit 0\n");
  http.push_reply(503, "");
  http.push_reply(200, "");
  notifier().notify(event());
  ASSERT_TRUE(run_until(io, [&] { return n->in_flight() == 0 && n->pending() == 1; }));
  fire_next();
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));
  n->shutdown();

  const std::string text = logs();
  EXPECT_THAT(text, HasSubstr("tok_0123456789abcdef"));
  EXPECT_THAT(text, HasSubstr("workspace ws-42"));
  EXPECT_THAT(text, Not(HasSubstr(kKey)));
  EXPECT_THAT(text, Not(HasSubstr("s3cr3t-path-credential")));
  EXPECT_THAT(text, Not(HasSubstr(kEnvSecret)));
  EXPECT_THAT(text, Not(HasSubstr("hooks.example")));
  std::istringstream lines(text);
  int count = 0;
  for (std::string line; std::getline(lines, line);)
    ++count;
  EXPECT_EQ(count, 4) << "one line per outcome (command ok, webhook retry, webhook ok) and the "
                         "shutdown:\n"
                      << text;
}

// The real transport against a local receiver: a 503, a retry, then the signed event.
TEST_F(NotifierTest, WebhookThroughCurlReachesALocalReceiver) {
  const ScopedEnv no_proxy("NO_PROXY", "*");
  const ScopedEnv no_proxy_lower("no_proxy", "*");
  std::vector<sim::Request> received;
  auto started =
      sim::HttpServer::start(io, "127.0.0.1", 0, std::nullopt, [&](const sim::Request& r) {
        received.push_back(r);
        sim::Response response;
        response.status = received.size() == 1 ? 503 : 202;
        return response;
      });
  ASSERT_TRUE(started.ok()) << started.error().message();
  const auto server = std::move(started).value();
  HttpConfig http_config;
  http_config.connect_timeout = 5s;
  http_config.total_timeout = 10s;
  auto created = CurlTransport::create(io.get_executor(), http_config);
  ASSERT_TRUE(created.ok()) << created.error().message();
  const auto curl = std::move(created).value();

  config.webhook_url = "http://127.0.0.1:" + std::to_string(server->port()) + "/hooks/tw";
  notifier(*curl).notify(event());
  ASSERT_TRUE(run_until(io, [&] { return received.size() == 1 && n->in_flight() == 0; }));
  EXPECT_EQ(next_in(), std::chrono::system_clock::duration(10s));
  fire_next();
  ASSERT_TRUE(run_until(io, [&] { return n->pending() == 0; }));
  n.reset();  // before the transport it uses

  ASSERT_EQ(received.size(), 2u);
  const sim::Request& r = received[1];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.path, "/hooks/tw");
  EXPECT_EQ(r.headers.at("content-type"), "application/json");
  EXPECT_EQ(r.headers.at("x-tokenwarden-timestamp"), "1790000010");
  EXPECT_EQ(r.headers.at("x-tokenwarden-signature"),
            "sha256=" + hmac_sha256_hex(kKey, "1790000010." + r.body));
  EXPECT_EQ(r.headers.at("x-tokenwarden-event-id"), "tok_0123456789abcdef-1789999940");
  const auto body = nlohmann::json::parse(r.body);
  EXPECT_EQ(body.at("event"), "token.needs_reauth");
  EXPECT_EQ(body.at("token_id"), "tok_0123456789abcdef");
  EXPECT_EQ(body.at("reason"), "invalid_grant: Token has been expired or revoked.");
  EXPECT_EQ(received[0].body, r.body) << "the same event on every attempt";
  EXPECT_THAT(logs(), HasSubstr("attempt 1 of 3: HTTP 503; retrying in 10s"));
  EXPECT_THAT(logs(), HasSubstr("notified webhook of token.needs_reauth for tok_0123456789abcdef "
                                "(google, workspace ws-42) on attempt 2"));
}

}  // namespace
}  // namespace tw
