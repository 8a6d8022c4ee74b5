// `tokenwarden simulate`: the storage and scheduling core at work, without a network.
//
// It makes a key, a database and six tokens in a fresh directory, then lets the real Scheduler,
// Policy and SqliteTokenStore run weeks of schedule under a fake clock. Provider replies are
// simulated in this file (the daemon talks to real endpoints): renewals succeed with each
// provider's usual lifetimes, one TikTok grant is revoked by its customer on day 10, and Google's
// token endpoint answers 503 once, to show backoff.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <ostream>
#include <random>

#include <openssl/rand.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "config/config.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "scheduler/scheduler.h"
#include "storage/crypto.h"
#include "storage/open_store.h"

namespace tw {

namespace {

using std::chrono::days;
using std::chrono::hours;

// What the simulated provider does for one token.
struct Profile {
  NewToken token;
  std::string access_prefix;
  std::string refresh_prefix;  // empty: the token has no refresh secret
  std::optional<Seconds> access_lifetime;
  std::optional<Seconds> refresh_lifetime;
  bool rotates = false;               // a renewal issues a new refresh token
  std::optional<int> revoked_on_day;  // the customer revokes access that day
  bool first_renewal_fails = false;   // the token endpoint answers 503 once
};

std::string random_secret(const std::string& prefix) {
  unsigned char raw[24];
  RAND_bytes(raw, sizeof raw);
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string s = prefix;
  for (unsigned char b : raw)
    s += kAlphabet[b & 63];
  return s;
}

std::vector<Profile> sample_profiles(SysTime now) {
  auto token = [](Provider p, TokenKind k, std::string ws, std::string account,
                  std::string scopes) { return NewToken{p, k, ws, account, scopes, {}, {}}; };
  std::vector<Profile> v;
  v.push_back({token(Provider::kMeta, TokenKind::kPageToken, "ws-acme", "page-104233",
                     "pages_show_list,pages_read_engagement"),
               "EAAB", "EAAL", std::nullopt, days(60), false, std::nullopt, false});
  v.push_back(
      {token(Provider::kMeta, TokenKind::kUserToken, "ws-acme", "user-88213", "pages_show_list"),
       "EAAL", "", days(60), std::nullopt, false, std::nullopt, false});
  v.push_back({token(Provider::kGoogle, TokenKind::kRefreshToken, "ws-bakery", "accounts/5512",
                     "https://www.googleapis.com/auth/business.manage"),
               "ya29.", "1//0g", hours(1), std::nullopt, false, std::nullopt, true});
  v.push_back({token(Provider::kTikTok, TokenKind::kBusinessToken, "ws-bakery", "biz-7001",
                     "user.info.basic,video.list"),
               "act.", "rft.", days(30), days(365), true, std::nullopt, false});
  v.push_back({token(Provider::kTikTok, TokenKind::kRefreshToken, "ws-cafe", "open-3f2a",
                     "user.info.basic"),
               "act.", "rft.", hours(24), days(365), true, 10, false});
  v.push_back({token(Provider::kGoogle, TokenKind::kApiKey, "ws-cafe", "places-key-1", ""), "AIza",
               "", std::nullopt, std::nullopt, false, std::nullopt, false});
  for (Profile& p : v) {
    if (p.access_lifetime) p.token.expires_at = now + *p.access_lifetime;
    if (p.refresh_lifetime && !p.refresh_prefix.empty()) {
      p.token.refresh_expires_at = now + *p.refresh_lifetime;
    }
  }
  return v;
}

// Replies as the providers would, and remembers every plaintext it issued.
class SimulatedProvider {
 public:
  SimulatedProvider(SysTime start, std::vector<std::string>& issued)
      : start_(start), issued_(issued) {}

  Outcome refresh(const Profile& p, SysTime now) {
    if (revoked(p, now)) return revoked_outcome(Operation::kRefresh);
    if (p.first_renewal_fails && !failed_once_[p.token.account_id]) {
      failed_once_[p.token.account_id] = true;
      return Outcome::failed(Operation::kRefresh, ErrorClass::kTransient,
                             "HTTP 503 from token endpoint (simulated)");
    }
    Outcome o = Outcome::success(Operation::kRefresh);
    TokenSecrets s;
    s.access_token = issue(p.access_prefix);
    if (p.rotates) s.refresh_token = issue(p.refresh_prefix);
    o.secrets = std::move(s);
    if (p.access_lifetime) o.expires_at = now + *p.access_lifetime;
    if (p.rotates && p.refresh_lifetime) o.refresh_expires_at = now + *p.refresh_lifetime;
    return o;
  }

  Outcome check(const Profile& p, SysTime now) {
    if (revoked(p, now)) return revoked_outcome(Operation::kCheck);
    return Outcome::success(Operation::kCheck);
  }

  Secret issue(const std::string& prefix) {
    issued_.push_back(random_secret(prefix));
    return Secret(issued_.back());
  }

 private:
  bool revoked(const Profile& p, SysTime now) const {
    return p.revoked_on_day && now >= start_ + days(*p.revoked_on_day);
  }
  static Outcome revoked_outcome(Operation op) {
    return Outcome::failed(op, ErrorClass::kPermanent,
                           "invalid_grant: the customer revoked access (simulated)");
  }

  SysTime start_;
  std::vector<std::string>& issued_;
  std::map<std::string, bool> failed_once_;
};

Status make_dir(std::string& dir) {
  if (dir.empty()) {
    std::string tmpl = "/tmp/tokenwarden-simulate-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      return Error(Errc::kIo, "cannot create a directory in /tmp for the simulation");
    }
    dir = tmpl;
    return Ok();
  }
  std::error_code ec;
  if (std::filesystem::exists(dir, ec) && !std::filesystem::is_empty(dir, ec)) {
    return Error(Errc::kAlreadyExists, "directory " + dir + " is not empty");
  }
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error(Errc::kIo, "cannot create " + dir + ": " + ec.message());
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);
  return Ok();
}

// Counts the issued plaintexts that appear anywhere in the given files.
std::size_t count_plaintext_hits(const std::vector<std::string>& files,
                                 const std::vector<std::string>& plaintexts) {
  std::string all;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    all.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  std::size_t hits = 0;
  for (const auto& p : plaintexts)
    hits += all.find(p) != std::string::npos ? 1 : 0;
  return hits;
}

std::string day_label(SysTime start, SysTime t) {
  const long long s = (t - start).count();
  char buf[48];
  std::snprintf(buf, sizeof buf, "day %2lld %02lld:%02lld:%02lld", s / 86400, s / 3600 % 24,
                s / 60 % 60, s % 60);
  return buf;
}

}  // namespace

int run_simulation(const std::string& requested_dir, int days_to_run, CliEnv& env) {
  std::ostream& out = env.out;
  auto fail = [&env](const Error& e) {
    env.err << "tokenwarden: simulate failed: " << e.message() << "\n";
    return e.code() == Errc::kAlreadyExists ? kExitUsage : kExitFailure;
  };

  std::string dir = requested_dir;
  if (auto st = make_dir(dir); !st) return fail(st.error());
  const std::string key_path = dir + "/tokenwarden.key";
  const std::string db_path = dir + "/tokens.db";
  const std::string config_path = dir + "/tokenwarden.yaml";

  out << "tokenwarden simulate in " << dir << "\n\n1. Key\n";
  auto key_id = write_new_key_file(key_path);
  if (!key_id) return fail(key_id.error());
  out << "   wrote a random 256-bit key, id " << *key_id << ", to " << key_path << " (mode 0600)\n";
  {
    std::ofstream cfg(config_path);
    cfg << "# Written by `tokenwarden simulate`: its database and key.\n"
        << "database:\n  path: " << db_path << "\nkey:\n  file: " << key_path << "\n";
  }
  auto key = load_key_file(key_path);
  if (!key) return fail(key.error());
  auto store = SqliteTokenStore::open(db_path, std::chrono::seconds(5), Cipher(KeyRing(*key)));
  if (!store) return fail(store.error());

  const Config defaults;
  std::mt19937_64 rng(42);
  Policy policy(PolicyConfig::from(defaults),
                [&rng] { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); });
  FakeClock clock(std::chrono::floor<Seconds>(std::chrono::system_clock::now()));
  const SysTime start = clock.now();
  std::vector<std::string> issued;
  SimulatedProvider provider(start, issued);

  out << "\n2. Six tokens added (secrets are random stand-ins, encrypted before they are "
         "written)\n";
  std::vector<Profile> profiles = sample_profiles(start);
  std::map<std::string, const Profile*> by_id;
  for (const Profile& p : profiles) {
    TokenSecrets s;
    s.access_token = provider.issue(p.access_prefix);
    if (!p.refresh_prefix.empty()) s.refresh_token = provider.issue(p.refresh_prefix);
    auto added =
        (*store)->upsert(p.token, s, start, [&](TokenRecord& r) { policy.schedule_new(r, start); });
    if (!added) return fail(added.error());
    by_id[added->record.id] = &p;
  }
  auto print_tokens = [&]() -> Status {
    auto rows = (*store)->list({});
    if (!rows) return rows.error();
    for (const TokenRecord& r : *rows) {
      out << "   " << r.id << "  " << to_string(r.provider) << " " << to_string(r.kind)
          << "  state " << to_string(r.state) << "  next refresh "
          << (r.next_refresh_due ? day_label(start, *r.next_refresh_due) : "never")
          << "  next check " << (r.next_check_due ? day_label(start, *r.next_check_due) : "never")
          << "\n";
    }
    return Ok();
  };
  if (auto st = print_tokens(); !st) return fail(st.error());

  out << "\n3. " << days_to_run
      << " days of schedule under a fake clock (renewals and failures; checks are counted)\n";
  Scheduler scheduler(**store, policy, clock, defaults.scheduler, "simulate");
  const SysTime end = start + days(days_to_run);
  std::map<std::string, int> checks;
  int commits = 0;
  const auto wall_start = std::chrono::steady_clock::now();
  for (;;) {
    auto wake = scheduler.next_wake();
    if (!wake) return fail(wake.error());
    if (!*wake || **wake >= end) break;
    if (**wake > clock.now()) clock.advance(**wake - clock.now());
    auto jobs = scheduler.claim_due();
    if (!jobs) return fail(jobs.error());
    for (Job& job : *jobs) {
      const Profile& p = *by_id.at(job.record.id);
      const std::string who = std::string(to_string(p.token.provider)) + " " +
                              std::string(to_string(p.token.kind)) + " " + job.record.id;
      if (job.refresh_due) {
        Outcome o = provider.refresh(p, clock.now());
        const bool ok = o.ok;
        const std::string why = o.failure.message;
        if (auto st = scheduler.record(job, std::move(o), !job.check_due); !st) {
          return fail(st.error());
        }
        ++commits;
        out << "   " << day_label(start, clock.now()) << "  " << who << ": "
            << (ok ? "renewed" : "renewal failed (" + why + ")") << " -> "
            << to_string(job.record.state) << ", next renewal "
            << (job.record.next_refresh_due ? day_label(start, *job.record.next_refresh_due)
                                            : "none")
            << "\n";
      }
      if (job.check_due && state_scheduled(job.record.state)) {
        Outcome o = provider.check(p, clock.now());
        const bool ok = o.ok;
        const std::string why = o.failure.message;
        if (auto st = scheduler.record(job, std::move(o), true); !st) return fail(st.error());
        ++commits;
        ++checks[job.record.id];
        if (!ok) {
          out << "   " << day_label(start, clock.now()) << "  " << who << ": check failed (" << why
              << ") -> " << to_string(job.record.state) << "\n";
        }
      }
    }
  }

  const auto wall = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - wall_start);
  out << "   " << commits << " outcomes, each its own durable (fsynced) commit, in " << wall.count()
      << " ms of real time\n";

  out << "\n4. After " << days_to_run << " days\n";
  if (auto st = print_tokens(); !st) return fail(st.error());
  out << "   health checks (one an hour while the token is active; " << days_to_run * 24 << " in "
      << days_to_run << " days):\n";
  for (const auto& [id, n] : checks)
    out << "     " << id << "  " << n << "\n";

  store->reset();  // close the database before scanning its files
  std::vector<std::string> files;
  for (const char* suffix : {"", "-wal", "-shm"}) {
    if (std::filesystem::exists(db_path + suffix)) files.push_back(db_path + suffix);
  }
  std::size_t hits = count_plaintext_hits(files, issued);
  out << "\n5. Encryption: " << hits << " of " << issued.size()
      << " plaintext secrets issued in this simulation appear in the database files\n";
  for (auto& s : issued)
    wipe(s);

  out << "\nLook around:\n"
      << "   tokenwarden --config " << config_path << " list\n"
      << "   tokenwarden --config " << config_path << " show <id>\n";
  return hits == 0 ? kExitOk : kExitFailure;
}

}  // namespace tw
