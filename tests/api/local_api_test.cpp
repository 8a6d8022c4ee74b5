// The local API (api/local_api.h) over a real Unix socket, with the real worker, store, curl
// transport and Google client against the in-process simulator: what GET and POST .../refresh
// answer, that 50 concurrent forced refreshes make one provider request, that a peer outside the
// allow lists is refused, and that a socket handed over (systemd socket activation) is served.
#include "api/local_api.h"

#include <atomic>
#include <thread>
#include <utility>  // before Boost.Asio

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/log.h"
#include "http/curl_transport.h"
#include "providers/provider.h"
#include "scheduler/policy.h"
#include "scheduler/scheduler.h"
#include "storage/sqlite_token_store.h"
#include "tests/support/in_process_sim.h"
#include "tests/test_util.h"
#include "worker/worker.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

struct Reply {
  int status = 0;
  json body;
};

// One request over the socket at `path`, read to the end (the API closes each connection).
Reply call(const std::string& path, const std::string& method, const std::string& target) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return {};
  }
  const std::string req = method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n" +
                          (method == "POST" ? "Content-Length: 0\r\n" : "") + "\r\n";
  (void)!::write(fd, req.data(), req.size());
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  Reply r;
  if (text.size() > 12) r.status = std::stoi(text.substr(9, 3));
  const auto body = text.find("\r\n\r\n");
  if (body != std::string::npos) r.body = json::parse(text.substr(body + 4), nullptr, false);
  return r;
}

class LocalApiTest : public ::testing::Test {
 protected:
  LocalApiTest() : sim_(false, dir_.path()) {
    setenv("TW_API_GOOGLE", "sim-google-secret", 1);
    Config c;
    c.http.total_timeout = 5s;
    c.providers.google.enabled = true;
    c.providers.google.oauth_base_url = sim_.base();
    c.providers.google.business_base_url = sim_.base();
    c.providers.google.client_id = "sim-google-client";
    c.providers.google.client_secret = {SecretRef::Source::kEnv, "TW_API_GOOGLE"};
    store_ = std::move(
        *SqliteTokenStore::open(dir_.file("tokens.db"), 2s, Cipher(KeyRing(*Key::generate()))));
    http_ = std::move(*CurlTransport::create(io_.get_executor(), c.http));
    client_ = std::move(*make_google_client(c.providers.google, *http_, clock_));
    policy_ = std::make_unique<Policy>(PolicyConfig::from(c), [] { return 0.0; });
    scheduler_ = std::make_unique<Scheduler>(*store_, *policy_, clock_, c.scheduler, "api-test");
    LogConfig lc;
    log_ = make_logger("api", lc, logs_);
    worker_ = std::make_unique<Worker>(
        io_.get_executor(), *scheduler_, *store_, std::vector<ProviderClient*>{client_.get()},
        clock_, WorkerOptions{}, log_, asio_timers(io_.get_executor(), clock_, 30s));
  }
  ~LocalApiTest() override {
    if (thread_.joinable()) {
      boost::asio::post(io_, [this] {
        api_.reset();
        guard_.reset();
        http_->shutdown();
        io_.stop();
      });
      thread_.join();
    }
  }

  // Serves on api.sock (or `fd`), allowing `uids`, and runs the loop on a thread of its own.
  void serve(std::vector<uid_t> uids, int fd = -1) {
    LocalApiOptions o;
    o.allow_uids = std::move(uids);
    auto made =
        fd >= 0
            ? LocalApi::adopt(io_.get_executor(), fd, o, *store_, *worker_, clock_, log_)
            : LocalApi::listen(io_.get_executor(), socket(), o, *store_, *worker_, clock_, log_);
    ASSERT_TRUE(made) << made.error().message();
    api_ = std::move(*made);
    thread_ = std::thread([this] { io_.run(); });
  }

  std::string seed(const std::string& account) {
    json s = sim_.admin("POST", "/admin/seed", {{"provider", "google"}, {"account_id", account}});
    NewToken t{Provider::kGoogle, TokenKind::kRefreshToken, "ws", account, "", {}, {}};
    t.expires_at = from_unix(s["expires_at"].get<std::int64_t>());
    auto r = store_->upsert(t,
                            {Secret(s["access_token"].get<std::string>()),
                             Secret(s["refresh_token"].get<std::string>())},
                            clock_.now(),
                            [&](TokenRecord& rec) { policy_->schedule_new(rec, clock_.now()); });
    return r->record.id;
  }

  std::string socket() const { return dir_.file("api.sock"); }

  testing::TempDir dir_;
  testing::Sim sim_;
  SystemClock clock_;
  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard_{
      io_.get_executor()};
  std::unique_ptr<SqliteTokenStore> store_;
  std::unique_ptr<CurlTransport> http_;
  std::unique_ptr<ProviderClient> client_;
  std::unique_ptr<Policy> policy_;
  std::unique_ptr<Scheduler> scheduler_;
  std::ostringstream logs_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<Worker> worker_;
  std::unique_ptr<LocalApi> api_;
  std::thread thread_;
};

TEST_F(LocalApiTest, GetHandsOutTheCurrentTokenAndTheErrorsSayWhy) {
  const std::string id = seed("accounts/1");
  serve({getuid()});
  Reply r = call(socket(), "GET", "/v1/tokens/" + id);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["access_token"], sim_.account("google", "accounts/1")["access_token"]);
  EXPECT_EQ(r.body["id"], id);
  EXPECT_EQ(r.body["provider"], "google");
  EXPECT_EQ(r.body["state"], "active");
  EXPECT_TRUE(r.body["expires_at"].is_string());
  EXPECT_EQ(call(socket(), "GET", "/v1/tokens/tok_0000000000000000").status, 404);
  EXPECT_EQ(call(socket(), "POST", "/v1/tokens/" + id).status, 405);
  EXPECT_EQ(call(socket(), "GET", "/v1/other").status, 404);
  auto rows = store_->read_audit(0, 10, id);
  ASSERT_TRUE(rows);
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].entry.action, "read");
  EXPECT_EQ((*rows)[0].entry.actor.rfind("api:uid=" + std::to_string(getuid()) + ",pid=", 0), 0u);
}

TEST_F(LocalApiTest, FiftyConcurrentForcedRefreshesMakeOneProviderRequest) {
  const std::string id = seed("accounts/2");
  const std::string before = sim_.account("google", "accounts/2")["access_token"];
  // Each renewal takes 3 s at the provider, so all 50 calls arrive while it is under way (under
  // TSan, 50 threads connecting take over a second).
  sim_.fault({{"provider", "google"}, {"kind", "delay"}, {"delay_ms", 3000}, {"count", -1}});
  serve({getuid()});
  std::vector<Reply> replies(50);
  std::vector<std::thread> callers;
  for (std::size_t i = 0; i < replies.size(); ++i) {
    callers.emplace_back(
        [&, i] { replies[i] = call(socket(), "POST", "/v1/tokens/" + id + "/refresh"); });
  }
  for (auto& t : callers)
    t.join();
  const json account = sim_.account("google", "accounts/2");
  for (const Reply& r : replies) {
    ASSERT_EQ(r.status, 200) << r.body.dump();
    EXPECT_EQ(r.body["access_token"], account["access_token"]) << "every caller gets the new one";
  }
  EXPECT_NE(account["access_token"], before);
  auto refreshes = [&] {
    return sim_
        .admin("GET", "/admin/counters?account=google:accounts/2")["accounts"]["google:accounts/2"]
                                                                  ["refreshes"]
        .get<int>();
  };
  EXPECT_EQ(refreshes(), 1) << "50 calls, one provider request";
  // Once it is done, the next call renews again (nothing is left waiting).
  sim_.admin("POST", "/admin/faults/clear");
  Reply again = call(socket(), "POST", "/v1/tokens/" + id + "/refresh");
  EXPECT_EQ(again.status, 200) << again.body.dump();
  EXPECT_EQ(refreshes(), 2);
}

TEST_F(LocalApiTest, APeerOutsideTheAllowListsIsRefused) {
  const std::string id = seed("accounts/3");
  serve({getuid() + 1});  // not us; and no group allowed
  Reply r = call(socket(), "GET", "/v1/tokens/" + id);
  EXPECT_EQ(r.status, 403);
  EXPECT_FALSE(r.body.contains("access_token"));
  EXPECT_EQ(call(socket(), "POST", "/v1/tokens/" + id + "/refresh").status, 403);
  EXPECT_EQ(sim_.totals()["refreshes"], 0) << "a refused peer starts nothing";
  EXPECT_NE(logs_.str().find("refused uid " + std::to_string(getuid())), std::string::npos);
}

TEST_F(LocalApiTest, ASocketHandedOverIsServed) {
  // As systemd's socket activation does: a socket already bound and listening.
  const std::string path = dir_.file("activated.sock");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  const std::string id = seed("accounts/4");
  serve({getuid()}, fd);
  Reply r = call(path, "GET", "/v1/tokens/" + id);
  EXPECT_EQ(r.status, 200) << r.body.dump();
  EXPECT_FALSE(std::filesystem::exists(socket())) << "nothing created at api.socket";
}

}  // namespace
}  // namespace tw
