// tokenwarden-crash-harness: kill -9 a working daemon again and again, then prove that no
// rotated refresh token was lost.
//
// A commented pipeline:
//   1. start tokenwarden-sim on loopback; every refresh token it issues is one-time-use (TikTok
//      v2 and API for Business, Google seeded with rotation), with --reuse-grace as given;
//   2. seed --tokens grants there and add them to a fresh encrypted store (a SQLite file, or with
//      --postgres a fresh schema on the PostgreSQL test cluster); the config renews
//      every token every 2 s, so requests are always in flight;
//   3. --kills times: start `tokenwarden run` (and, every third round, a forced
//      `tokenwarden refresh --all` beside it), wait a random 50-1500 ms, SIGKILL them; then look
//      at every token that needs re-authorisation: one whose reason is "in doubt" and whose
//      renewal_in_doubt_since falls within a round that ended in a kill is *in doubt* (a kill
//      landed after the provider rotated and before the daemon committed the reply: no client
//      can know the new token); the customer "reconnects" it (a fresh grant, `add`), so every
//      round keeps exercising every token. Anything else is *lost*. A daemon log saying that
//      renewed secrets were not stored is a loss too;
//   4. run the daemon once more until every token has been renewed since the last kill, then
//      stop it with SIGTERM;
//   5. for every token compare what the store holds with what the provider considers current:
//        ok       active, and its stored refresh token is the provider's newest;
//        in doubt as in 3, within a killed round;
//        lost     anything else: a rotated token the daemon received and then lost, a refusal
//                 not explained by a killed renewal, a concurrent refresh.
// It prints kills, refreshes, tokens in doubt and tokens lost, and exits 0 only when nothing was
// lost (and, with --expect-no-doubt, nothing is in doubt either: a reuse grace lets the daemon
// retry with the old token), 1 otherwise, 2 on bad usage.
//
// ctest runs it with a small count; by hand: tokenwarden-crash-harness --kills 1000.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "storage/crypto.h"
#include "storage/open_store.h"
#include "tests/support/child_process.h"
#include "tests/support/pg_test_db.h"
#include "tests/test_util.h"

namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using tw::testing::ChildProcess;

struct Flags {
  int kills = 20;
  int tokens = 60;
  int reuse_grace = 0;
  unsigned seed = std::random_device{}();
  bool expect_no_doubt = false;
  bool postgres = false;
  bool keep = false;
  std::string tokenwarden = TW_BINARY;
  std::string sim = TW_SIM_BINARY;
};

const std::vector<std::string> kEnv = {"TW_CH_GOOGLE=sim-google-secret",
                                       "TW_CH_TIKTOK=sim-tiktok-secret"};

class Harness {
 public:
  explicit Harness(Flags flags) : flags_(std::move(flags)), random_(flags_.seed) {}

  int run() {
    if (flags_.postgres) {
      pg_.emplace();
      if (!pg_->ok()) {
        std::cerr << "crash harness: " << pg_->error() << "\n";
        return 1;
      }
    }
    if (!start_simulator() || !write_config() || !seed()) return 1;
    kill_repeatedly();
    if (!settle()) return 1;
    return verify();
  }

 private:
  // 1.
  bool start_simulator() {
    sim_.emplace(flags_.sim,
                 std::vector<std::string>{"--port", "0", "--threads", "2", "--reuse-grace",
                                          std::to_string(flags_.reuse_grace)},
                 dir_.file("sim.err"));
    auto line = sim_->first_line();
    if (!line || line->find("http://") == std::string::npos) {
      std::cerr << "crash harness: the simulator did not start: "
                << tw::testing::read_file(dir_.file("sim.err")) << "\n";
      return false;
    }
    base_ = line->substr(line->find("http://"));
    return true;
  }

  bool write_config() {
    if (auto k = tw::write_new_key_file(dir_.file("tokenwarden.key")); !k) {
      std::cerr << "crash harness: " << k.error().message() << "\n";
      return false;
    }
    // Renewals every 2 s keep requests in flight whenever a kill lands; the lease (3 s) lets a
    // restarted daemon take over a killed one's tokens quickly.
    tw::testing::write_file(
        dir_.file("tokenwarden.yaml"),
        (pg_ ? "storage:\n  backend: postgres\n  postgres: {dsn: \"" + pg_->dsn() + "\"}\n"
             : "database: {path: " + dir_.file("tokens.db") + "}\n") +
            "key: {file: " + dir_.file("tokenwarden.key") + "}\n" +
            "providers:\n"
            "  google: {oauth_base_url: " +
            base_ + ", business_base_url: " + base_ +
            ", client_id: sim-google-client, client_secret: {env: TW_CH_GOOGLE}, "
            "refresh_every: 2s, check_every: 30s}\n"
            "  tiktok: {open_api_base_url: " +
            base_ + ", business_api_base_url: " + base_ +
            ", client_key: sim-tiktok-key, client_secret: {env: TW_CH_TIKTOK}, "
            "refresh_every: 2s, check_every: 30s}\n"
            "scheduler: {lease: 3s, idle_poll: 1s, shutdown_grace: 2s}\n"
            "http: {total_timeout: 2s, connect_timeout: 1s}\n"
            "retry: {initial_backoff: 1s, max_backoff: 2s}\n"
            "log: {summary_every: 1h}\n"
            "status: {file: " +
            dir_.file("status.json") + "}\n");
    auto config = tw::load_config(dir_.file("tokenwarden.yaml"));
    if (!config) {
      std::cerr << "crash harness: " << config.error().message() << "\n";
      return false;
    }
    config_ = std::move(*config);
    return true;
  }

  // 2.
  bool seed() {
    auto store = open_store(tw::OpenMode::kCreate);
    if (!store) return false;
    for (int i = 0; i < flags_.tokens; ++i) {
      json spec;
      tw::Provider provider = tw::Provider::kTikTok;
      tw::TokenKind kind = tw::TokenKind::kRefreshToken;
      switch (i % 3) {
        case 0:
          spec = {{"provider", "tiktok"}, {"api", "v2"}};
          break;
        case 1:
          spec = {{"provider", "tiktok"}, {"api", "business"}};
          kind = tw::TokenKind::kBusinessToken;
          break;
        default:
          spec = {{"provider", "google"}, {"rotate", true}};
          provider = tw::Provider::kGoogle;
          break;
      }
      const std::string account = "acct-" + std::to_string(i);
      spec["account_id"] = account;
      grants_[account] = {spec, provider, kind};
      if (!connect(*store, account)) return false;
    }
    return true;
  }

  // Seeds (or re-seeds: a reconnecting customer) the grant in the simulator and adds its tokens
  // to the store, as `tokenwarden add` would.
  bool connect(tw::TokenStore& store, const std::string& account) {
    const Grant& g = grants_.at(account);
    auto reply = admin("POST", "/admin/seed", g.spec);
    if (!reply) return false;
    tw::NewToken t{g.provider, g.kind, "ws-crash", account, "", {}, {}};
    if ((*reply)["expires_at"].is_number()) {
      t.expires_at = tw::from_unix((*reply)["expires_at"].get<std::int64_t>());
    }
    tw::TokenSecrets secrets{tw::Secret((*reply)["access_token"].get<std::string>()),
                             tw::Secret((*reply)["refresh_token"].get<std::string>())};
    tw::Policy policy(tw::PolicyConfig::from(config_), [] { return 0.0; });
    const tw::SysTime now = tw::SystemClock().now();
    auto added =
        store.upsert(t, secrets, now, [&](tw::TokenRecord& r) { policy.schedule_new(r, now); });
    if (!added) {
      std::cerr << "crash harness: " << added.error().message() << "\n";
      return false;
    }
    return true;
  }

  // Whether `t` falls within a round that ended in a kill (whole seconds, so one either side).
  bool in_a_killed_round(tw::SysTime t) const {
    return std::any_of(killed_rounds_.begin(), killed_rounds_.end(), [&](const auto& round) {
      return t >= round.first - std::chrono::seconds(1) &&
             t <= round.second + std::chrono::seconds(1);
    });
  }

  // Sorts the tokens that need re-authorisation now: in doubt within a killed round (counted, and
  // reconnected by the "customer"), or lost.
  bool sort_reauth() {
    auto store = open_store(tw::OpenMode::kExisting);
    if (!store) return false;
    auto rows = store->needing_reauth(1'000'000);
    if (!rows) {
      std::cerr << "crash harness: " << rows.error().message() << "\n";
      return false;
    }
    for (const tw::TokenRecord& r : *rows) {
      const std::string who =
          r.id + " (" + std::string(tw::to_string(r.provider)) + " " + r.account_id + ")";
      if (r.last_error_message.starts_with("in doubt: ") && r.renewal_in_doubt_since &&
          in_a_killed_round(*r.renewal_in_doubt_since)) {
        ++in_doubt_;
        if (flags_.expect_no_doubt) std::cerr << "  in doubt: " << who << "\n";
        if (!connect(*store, r.account_id)) return false;
        continue;
      }
      if (lost_ids_.insert(r.id).second) {
        std::cerr << "  LOST: " << who << " is " << tw::to_string(r.state) << ": "
                  << r.last_error_message << "\n";
      }
    }
    return true;
  }

  // A process that could not store renewed secrets says so in its log: that is a lost token.
  void scan_log(const std::string& file) {
    const std::string log = tw::testing::read_file(dir_.file(file));
    for (std::size_t at = log.find("renewed secrets were issued"); at != std::string::npos;
         at = log.find("renewed secrets were issued", at + 1)) {
      ++dropped_secrets_;
    }
  }

  // 3.
  void kill_repeatedly() {
    std::uniform_int_distribution<int> delay_ms(50, 1500);
    const std::vector<std::string> run = {"--config", dir_.file("tokenwarden.yaml"), "run"};
    const std::vector<std::string> forced = {"--config", dir_.file("tokenwarden.yaml"), "refresh",
                                             "--all"};
    for (int round = 1; round <= flags_.kills; ++round) {
      const tw::SysTime round_start = tw::SystemClock().now();
      {
        ChildProcess daemon(flags_.tokenwarden, run, dir_.file("daemon.err"), kEnv);
        std::optional<ChildProcess> refresh;
        if (round % 3 == 0) {
          refresh.emplace(flags_.tokenwarden, forced, dir_.file("forced.err"), kEnv);
        }
        // A wait, not a measurement: the kill must land at a random moment of the work.
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(random_)));
        if (daemon.terminate(SIGKILL) == 128 + SIGKILL) ++kills_;
        if (refresh) {
          if (refresh->terminate(SIGKILL) == 128 + SIGKILL) ++forced_kills_;
          scan_log("forced.err");
        }
      }
      killed_rounds_.emplace_back(round_start, tw::SystemClock().now());
      scan_log("daemon.err");
      if (!sort_reauth()) return;
      if (round % 100 == 0) std::cerr << "crash harness: " << round << " rounds\n";
    }
  }

  // 4.
  bool settle() {
    const auto settle_start = tw::SystemClock().now();
    ChildProcess daemon(flags_.tokenwarden, {"--config", dir_.file("tokenwarden.yaml"), "run"},
                        dir_.file("settle.err"), kEnv);
    // Leases of the last killed daemon expire after 3 s; then every token is renewed within 2 s.
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    bool all_renewed = false;
    while (!all_renewed && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(500ms);  // polling the store of an external process
      auto store = open_store(tw::OpenMode::kExisting);
      if (!store) return false;
      auto rows = store->list({});
      if (!rows) continue;
      all_renewed = std::all_of(rows->begin(), rows->end(), [&](const tw::TokenRecord& r) {
        return r.state != tw::TokenState::kActive ||
               r.last_refreshed_at.value_or(tw::SysTime{}) > settle_start;
      });
    }
    const int code = daemon.terminate(SIGTERM, 20s);
    scan_log("settle.err");
    if (code != 0) {
      std::cerr << "crash harness: the final daemon exited " << code << ":\n"
                << tw::testing::read_file(dir_.file("settle.err")) << "\n";
      return false;
    }
    if (!all_renewed) {
      std::cerr << "crash harness: not every active token was renewed after the last kill\n";
    }
    settled_ = all_renewed;
    return true;
  }

  // 5.
  int verify() {
    // Tokens refused since the last round: in doubt only within a killed round.
    if (!sort_reauth()) return 1;
    auto store = open_store(tw::OpenMode::kExisting);
    if (!store) return 1;
    auto rows = store->list({});
    if (!rows) {
      std::cerr << "crash harness: " << rows.error().message() << "\n";
      return 1;
    }
    int ok = 0;
    for (const tw::TokenRecord& r : *rows) {
      const std::string who =
          r.id + " (" + std::string(tw::to_string(r.provider)) + " " + r.account_id + ")";
      if (lost_ids_.count(r.id) != 0) continue;  // counted already
      auto view = admin("GET", "/admin/account?provider=" + std::string(tw::to_string(r.provider)) +
                                   "&account_id=" + r.account_id);
      auto secrets = store->read_secrets(r);
      if (!view || !secrets) {
        lost_ids_.insert(r.id);
        std::cerr << "  LOST: " << who << ": cannot read it back\n";
        continue;
      }
      if (r.state != tw::TokenState::kActive ||
          (*view)["refresh_token"] != secrets->refresh_token.reveal()) {
        lost_ids_.insert(r.id);
        std::cerr << "  LOST: " << who << " (" << tw::to_string(r.state)
                  << ") holds a refresh token the provider no longer honours\n";
        continue;
      }
      ++ok;
    }
    const int lost = static_cast<int>(lost_ids_.size()) + dropped_secrets_;
    const int in_doubt = in_doubt_;
    auto counters = admin("GET", "/admin/counters");
    const json totals = counters ? (*counters)["totals"] : json::object();
    const auto count = [&](const char* key) { return totals.value(key, std::int64_t{-1}); };
    std::cout << "crash harness: " << kills_ << " kills of the daemon (and " << forced_kills_
              << " of a forced refresh beside it), " << rows->size() << " tokens, reuse grace "
              << flags_.reuse_grace << " s, seed " << flags_.seed << "\n"
              << "  refreshes at the providers: " << count("refreshes")
              << "; reused refresh tokens: " << count("reused_refresh_tokens")
              << "; concurrent refreshes: " << count("concurrent_refreshes") << "\n"
              << "  tokens ok at the end: " << ok << " of " << rows->size() << "\n"
              << "  renewals in doubt (killed after the provider rotated, before the commit; "
                 "each customer reconnected): "
              << in_doubt << "\n"
              << "  tokens lost: " << lost << " (of which renewed secrets a process said it "
              << "could not store: " << dropped_secrets_ << ")\n";
    const bool pass = lost == 0 && count("concurrent_refreshes") == 0 && settled_ &&
                      (!flags_.expect_no_doubt || in_doubt == 0) && kills_ == flags_.kills;
    std::cout << "crash harness: " << (pass ? "PASS" : "FAIL") << "\n";
    if (!pass && kills_ != flags_.kills) {
      std::cout << "  (" << flags_.kills - kills_ << " daemon(s) had exited before the kill: see "
                << dir_.file("daemon.err") << ")\n";
    }
    if (!pass || flags_.keep) keep_ = true;
    return pass ? 0 : 1;
  }

  std::unique_ptr<tw::TokenStore> open_store(tw::OpenMode mode) {
    auto store = tw::open_token_store(config_.storage, config_.database, config_.key, "", mode);
    if (!store) {
      std::cerr << "crash harness: " << store.error().message() << "\n";
      return nullptr;
    }
    return std::move(*store);
  }

  std::optional<json> admin(const std::string& method, const std::string& path,
                            const json& body = {}) {
    auto r = tw::testing::http(method, base_ + path, body.is_null() ? "" : body.dump());
    if (r.status != 200) {
      std::cerr << "crash harness: " << method << " " << path << ": " << r.status << " " << r.body
                << "\n";
      return std::nullopt;
    }
    return json::parse(r.body, nullptr, false);
  }

 public:
  ~Harness() {
    if (!keep_) return;
    std::cerr << "crash harness: kept " << dir_.path() << "\n";
    dir_.keep();
  }

 private:
  Flags flags_;
  std::mt19937 random_;
  tw::testing::TempDir dir_;
  std::optional<tw::testing::PgTestSchema> pg_;  // with --postgres: the store's schema
  std::optional<ChildProcess> sim_;
  std::string base_;
  tw::Config config_;
  struct Grant {
    json spec;
    tw::Provider provider = tw::Provider::kTikTok;
    tw::TokenKind kind = tw::TokenKind::kRefreshToken;
  };
  std::map<std::string, Grant> grants_;                             // by account id
  std::vector<std::pair<tw::SysTime, tw::SysTime>> killed_rounds_;  // start, kill
  std::set<std::string> lost_ids_;
  int in_doubt_ = 0;
  int dropped_secrets_ = 0;
  int kills_ = 0;
  int forced_kills_ = 0;
  bool settled_ = false;
  bool keep_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app(
      "Kills a working tokenwarden daemon with SIGKILL again and again, then checks that no "
      "rotated refresh token was lost. Exit 0 when none was, 1 otherwise.");
  app.add_option("--kills", flags.kills, "How many times to kill the daemon")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--tokens", flags.tokens, "Tokens to seed (TikTok v2, Business, Google)")
      ->check(CLI::Range(3, 100000))
      ->capture_default_str();
  app.add_option("--reuse-grace", flags.reuse_grace,
                 "Seconds the simulated providers accept a just-rotated refresh token again")
      ->check(CLI::Range(0, 3600))
      ->capture_default_str();
  app.add_option("--seed", flags.seed, "Random seed for the kill times (printed)");
  app.add_flag("--expect-no-doubt", flags.expect_no_doubt,
               "Fail if any token ends in doubt (use with a reuse grace)");
  app.add_flag("--postgres", flags.postgres,
               "Keep the tokens in a fresh schema on the PostgreSQL test cluster "
               "($TW_TEST_PG_DSN or $TW_TEST_PG_DSN_FILE) instead of a SQLite file");
  app.add_flag("--keep", flags.keep, "Keep the working folder (always kept on failure)");
  app.add_option("--tokenwarden", flags.tokenwarden, "The tokenwarden binary")
      ->capture_default_str();
  app.add_option("--sim", flags.sim, "The tokenwarden-sim binary")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  Harness harness(flags);
  return harness.run();
}
