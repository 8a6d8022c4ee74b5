// Black-box tests: the real `tokenwarden` binary with a temporary config, key and database.
#include <filesystem>
#include <set>

#include <SQLiteCpp/SQLiteCpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <sys/wait.h>

#include "config/config.h"
#include "core/time.h"
#include "scheduler/clock.h"
#include "storage/open_store.h"
#include "tests/support/child_process.h"
#include "tests/support/pg_test_db.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using testing::read_file;
using testing::TempDir;
using testing::write_file;

struct CliRun {
  int exit_code;
  std::string out;
  std::string err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s)
    q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    CliRun k = run({"keygen", "--out", key_path()});
    ASSERT_EQ(k.exit_code, 0) << k.err;
    write_file(config_path(),
               "database:\n  path: " + db_path() + "\nkey:\n  file: " + key_path() + "\n");
  }

  // Runs the binary with `args` and `input` on stdin, with the test's config unless overridden.
  CliRun run(const std::vector<std::string>& args, const std::string& input = "",
             bool with_config = true) {
    write_file(dir_.file("stdin"), input);
    std::string cmd = "env -u CREDENTIALS_DIRECTORY -u TOKENWARDEN_CONFIG " + quote(TW_BINARY);
    if (with_config) cmd += " --config " + quote(config_path());
    for (const auto& a : args)
      cmd += " " + quote(a);
    cmd += " <" + quote(dir_.file("stdin")) + " >" + quote(dir_.file("out")) + " 2>" +
           quote(dir_.file("err"));
    int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(dir_.file("out")),
            read_file(dir_.file("err"))};
  }

  CliRun add(const std::string& account, const std::string& input,
             std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"add",    "--provider",     "tiktok",
                                  "--kind", "business_token", "--workspace",
                                  "ws-1",   "--account",      account};
    args.insert(args.end(), extra.begin(), extra.end());
    return run(args, input);
  }

  std::string key_path() const { return dir_.file("tokenwarden.key"); }
  std::string db_path() const { return dir_.file("tokens.db"); }
  std::string config_path() const { return dir_.file("tokenwarden.yaml"); }

  std::size_t token_count() {
    CliRun r = run({"list", "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out).size();
  }

  static std::string id_from(const std::string& out) {
    auto pos = out.find("tok_");
    return pos == std::string::npos ? "" : out.substr(pos, 20);
  }

  TempDir dir_;
};

TEST_F(Cli, HelpDescribesEveryCommandAndTheExitCodes) {
  CliRun r = run({"--help"}, "", false);
  EXPECT_EQ(r.exit_code, 0);
  for (const char* word : {"keygen", "add", "import", "list", "show", "remove", "rekey", "simulate",
                           "run", "refresh", "check", "Exit codes", "78"}) {
    EXPECT_NE(r.out.find(word), std::string::npos) << word << "\n" << r.out;
  }
  for (const char* cmd : {"keygen", "add", "import", "list", "show", "remove", "disable", "enable",
                          "rekey", "migrate", "simulate", "run", "refresh", "check"}) {
    CliRun h = run({cmd, "--help"}, "", false);
    EXPECT_EQ(h.exit_code, 0) << cmd << h.err;
    EXPECT_NE(h.out.find("Usage"), std::string::npos) << cmd;
  }
  CliRun add_help = run({"add", "--help"}, "", false);
  EXPECT_NE(add_help.out.find("stdin"), std::string::npos);
}

TEST_F(Cli, UsageErrorsExitTwo) {
  EXPECT_EQ(run({}, "", false).exit_code, 2);
  EXPECT_EQ(run({"frobnicate"}).exit_code, 2);
  CliRun r = run({"add", "--provider", "meta"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--kind"), std::string::npos) << r.err;
}

TEST_F(Cli, KeygenWritesAPrivateKeyAndNeverOverwrites) {
  struct stat st {};
  ASSERT_EQ(stat(key_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 32);
  std::string before = read_file(key_path());
  CliRun again = run({"keygen", "--out", key_path()}, "", false);
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("refusing to overwrite"), std::string::npos) << again.err;
  EXPECT_EQ(read_file(key_path()), before);
}

// A fleet moves in from another system: one JSON object per line, defaults from the flags, in
// batches; a bad line stops the import, says what was stored, and a rerun reconnects.
TEST_F(Cli, ImportAddsManyTokensInBatchesAndStopsAtABadLine) {
  std::string lines;
  for (int i = 0; i < 5; ++i) {
    lines += R"({"account_id":"biz-)" + std::to_string(i) + R"(","access_token":"act.imp)" +
             std::to_string(i) + R"(","refresh_token":"rft.imp)" + std::to_string(i) +
             R"(","expires_at":1900000000,"open_id":"o"})" + "\n";
  }
  lines +=
      "\n"
      R"({"provider":"meta","kind":"page_token","account_id":"page-1",)"
      R"("access_token":"EAApage","refresh_token":"EAAuser","expires_at":null})"
      "\n";
  CliRun r = run({"import", "--provider", "tiktok", "--kind", "business_token", "--workspace",
                  "ws-9", "--batch", "2", "--check-now"},
                 lines);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("imported 6 tokens (6 added, 0 reconnected) from 7 lines"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.err.find("ignored keys: open_id"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("act.imp"), std::string::npos);
  EXPECT_EQ(r.err.find("act.imp"), std::string::npos);

  CliRun listed = run({"list", "--json"});
  auto rows = nlohmann::json::parse(listed.out);
  ASSERT_EQ(rows.size(), 6u);
  for (const auto& row : rows) {
    EXPECT_EQ(row["workspace_id"], "ws-9");
    if (row["provider"] == "tiktok") {
      EXPECT_EQ(row["expires_at"], "2030-03-17T17:46:40Z");
    }
    // --check-now: every check is due at once, not at the token's slot in the hour.
    const auto due = parse_time(row["next_check_due"].get<std::string>(), SysTime{});
    ASSERT_TRUE(due.ok());
    EXPECT_LE(std::chrono::abs(*due - std::chrono::system_clock::now()), std::chrono::minutes(1))
        << row.dump();
  }

  // Line 3 is bad: lines 1-2 (one batch of 2) were stored, and the message says so.
  std::string bad = lines.substr(0, lines.find('\n', lines.find('\n') + 1) + 1) +
                    R"({"account_id":"biz-x","access_token":"has space"})" + "\n";
  CliRun failed = run({"import", "--provider", "tiktok", "--kind", "business_token", "--workspace",
                       "ws-9", "--batch", "2"},
                      bad);
  EXPECT_EQ(failed.exit_code, 2);
  EXPECT_NE(failed.err.find("line 3: "), std::string::npos) << failed.err;
  EXPECT_NE(failed.err.find("2 tokens from lines before 3 were imported"), std::string::npos)
      << failed.err;
  EXPECT_NE(failed.err.find("tail -n +3"), std::string::npos) << failed.err;
  EXPECT_EQ(failed.err.find("has space"), std::string::npos) << "never echo a secret";
  EXPECT_EQ(token_count(), 6u) << "the good lines were reconnected, not duplicated";

  CliRun missing = run({"import"}, R"({"account_id":"x","access_token":"a"})"
                                   "\n");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("line 1: provider and kind are required"), std::string::npos)
      << missing.err;
  CliRun not_json = run({"import", "--provider", "meta", "--kind", "page_token"}, "{oops\n");
  EXPECT_EQ(not_json.exit_code, 2);
  EXPECT_NE(not_json.err.find("line 1: not a JSON object"), std::string::npos) << not_json.err;
}

TEST_F(Cli, AddListShowReconnectRemove) {
  CliRun added = add("biz-1", "act.SECRET-ACCESS-1\nrft.SECRET-REFRESH-1\n",
                     {"--expires-at", "+30d", "--scopes", "user.info.basic"});
  ASSERT_EQ(added.exit_code, 0) << added.err;
  EXPECT_NE(added.out.find("added tok_"), std::string::npos) << added.out;
  const std::string id = id_from(added.out);

  CliRun list = run({"list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find(id), std::string::npos);
  EXPECT_NE(list.out.find("NEXT REFRESH"), std::string::npos);
  EXPECT_NE(list.out.find("active"), std::string::npos);

  CliRun show = run({"show", id});
  ASSERT_EQ(show.exit_code, 0) << show.err;
  EXPECT_NE(show.out.find("biz-1"), std::string::npos);
  EXPECT_NE(show.out.find("user.info.basic"), std::string::npos);
  EXPECT_NE(show.out.find("access token, refresh token (encrypted)"), std::string::npos);

  CliRun json = run({"show", id, "--json"});
  auto doc = nlohmann::json::parse(json.out);
  EXPECT_EQ(doc["id"], id);
  EXPECT_EQ(doc["state"], "active");
  EXPECT_TRUE(doc["next_refresh_due"].is_string());
  EXPECT_TRUE(doc["has_refresh_token"].get<bool>());

  CliRun again =
      add("biz-1",
          R"({"access_token": "act.SECRET-ACCESS-2", "refresh_token": "rft.SECRET-REFRESH-2"})");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("reconnected " + id), std::string::npos) << again.out;
  EXPECT_EQ(token_count(), 1u);

  for (const CliRun* r : {&added, &list, &show, &json, &again}) {
    EXPECT_EQ(r->out.find("SECRET"), std::string::npos);
    EXPECT_EQ(r->err.find("SECRET"), std::string::npos);
  }
  std::string bytes = read_file(db_path()) + read_file(db_path() + "-wal");
  EXPECT_NE(bytes.find("biz-1"), std::string::npos);
  EXPECT_EQ(bytes.find("SECRET"), std::string::npos) << "no plaintext token in the database or WAL";

  EXPECT_EQ(run({"remove", id}).exit_code, 0);
  EXPECT_EQ(run({"remove", id}).exit_code, 3);
  EXPECT_EQ(run({"show", id}).exit_code, 3);
  EXPECT_EQ(token_count(), 0u);
}

TEST_F(Cli, DisableAndEnableAToken) {
  CliRun added = add("biz-9", "act.9\nrft.9\n", {"--expires-at", "+30d"});
  ASSERT_EQ(added.exit_code, 0) << added.err;
  const std::string id = id_from(added.out);
  EXPECT_NE(added.err.find("warning: provider tiktok is not enabled"), std::string::npos)
      << added.err;

  CliRun off = run({"disable", id});
  ASSERT_EQ(off.exit_code, 0) << off.err;
  EXPECT_NE(off.out.find("disabled " + id +
                         "; next refresh not scheduled, next check not "
                         "scheduled"),
            std::string::npos)
      << off.out;
  auto doc = nlohmann::json::parse(run({"show", id, "--json"}).out);
  EXPECT_EQ(doc["state"], "disabled");
  EXPECT_TRUE(doc["next_check_due"].is_null());
  EXPECT_TRUE(doc["lease_owner"].is_null()) << "the command releases its lease";
  EXPECT_NE(run({"disable", id}).out.find("already disabled"), std::string::npos);

  CliRun on = run({"enable", id});
  ASSERT_EQ(on.exit_code, 0) << on.err;
  doc = nlohmann::json::parse(run({"show", id, "--json"}).out);
  EXPECT_EQ(doc["state"], "active");
  EXPECT_TRUE(doc["next_check_due"].is_string());
  EXPECT_TRUE(doc["next_refresh_due"].is_string());
  EXPECT_EQ(run({"enable", "tok_0000000000000000"}).exit_code, 3);
}

TEST_F(Cli, BadInputIsOneLineExitTwoAndChangesNothing) {
  ASSERT_EQ(add("keep", "act.a\nrft.b\n").exit_code, 0);
  const std::string before = run({"list", "--json"}).out;
  struct Case {
    std::vector<std::string> args;
    std::string input;
    std::string says;
  };
  const std::string big(70'000, 'a');
  const std::vector<Case> cases{
      {{"add", "--provider", "My Space", "--kind", "api_key", "--workspace", "w", "--account",
        "keep"},
       "k\n",
       "unknown provider"},
      {{"add", "--provider", "myspace", "--kind", "api_key", "--workspace", "w", "--account",
        "keep"},
       "k\n",
       "no provider \"myspace\" in "},
      {{"add", "--provider", "google", "--kind", "page_token", "--workspace", "w", "--account",
        "a"},
       "k\n",
       "google has no page_token"},
      {{"add", "--provider", "tiktok", "--kind", "business_token", "--workspace", "w", "--account",
        "a"},
       "",
       "no token on stdin"},
      {{"add", "--provider", "tiktok", "--kind", "business_token", "--workspace", "w", "--account",
        "a"},
       "act.only\n",
       "needs its refresh token"},
      {{"add", "--provider", "tiktok", "--kind", "business_token", "--workspace", "w", "--account",
        "keep", "--expires-at", "next tuesday"},
       "act\nrft\n",
       "--expires-at"},
      {{"add", "--provider", "tiktok", "--kind", "business_token", "--workspace", "w", "--account",
        "a"},
       std::string("act\x01\xff\nrft\n"),
       "non-ASCII"},
      {{"add", "--provider", "tiktok", "--kind", "business_token", "--workspace", "w", "--account",
        "a"},
       big,
       "more than 65536 bytes"},
      {{"add", "--provider", "tiktok", "--kind", "business_token", "--workspace", "w", "--account",
        "a"},
       "a\nb\nc\n",
       "more than two lines"},
      {{"add", "--provider", "tiktok", "--kind", "business_token", "--workspace", "w", "--account",
        "a"},
       "{\"access_token\": 5}",
       "must be a string"},
      {{"add", "--provider", "tiktok", "--kind", "business_token", "--workspace", "", "--account",
        "a"},
       "x\ny\n",
       "--workspace must not be empty"},
      {{"list", "--state", "sleepy"}, "", "unknown state"},
  };
  for (const Case& c : cases) {
    CliRun r = run(c.args, c.input);
    EXPECT_EQ(r.exit_code, 2) << c.says << ": " << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.find("rft"), std::string::npos) << "never echo the input";
  }
  EXPECT_EQ(run({"list", "--json"}).out, before) << "the existing token is untouched";
}

TEST_F(Cli, GenericProvidersTakeTheirOneKindAndAClientCredentialsTokenNeedsNoSecret) {
  setenv("TW_CLI_ACME_SECRET", "cli-acme-secret", 1);
  write_file(config_path(),
             "database:\n  path: " + db_path() + "\nkey:\n  file: " + key_path() +
                 "\nproviders:\n  generic:\n    acme-cc:\n      token_url: http://127.0.0.1:9/t\n"
                 "      client_id: c1\n      client_secret: {env: TW_CLI_ACME_SECRET}\n"
                 "      grant: client_credentials\n"
                 "    keys:\n      type: api_key\n      probe: {url: http://127.0.0.1:9/me}\n");
  CliRun cc = run({"add", "--provider", "acme-cc", "--kind", "client_credentials", "--workspace",
                   "ws", "--account", "c1"});
  ASSERT_EQ(cc.exit_code, 0) << cc.err;
  EXPECT_NE(cc.out.find("added tok_"), std::string::npos) << cc.out;
  EXPECT_EQ(cc.err, "") << "renewable, so no warning";
  CliRun wrong = run({"add", "--provider", "acme-cc", "--kind", "refresh_token", "--workspace",
                      "ws", "--account", "c2"},
                     "a\nr\n");
  EXPECT_EQ(wrong.exit_code, 2);
  EXPECT_NE(wrong.err.find("acme-cc tokens are client_credentials tokens"), std::string::npos)
      << wrong.err;
  CliRun key = run(
      {"add", "--provider", "keys", "--kind", "api_key", "--workspace", "ws", "--account", "k1"},
      "sk_live_123\n");
  ASSERT_EQ(key.exit_code, 0) << key.err;
  auto listed = nlohmann::json::parse(run({"list", "--json"}).out);
  ASSERT_EQ(listed.size(), 2u);
  std::set<std::string> providers;
  for (const auto& t : listed)
    providers.insert(t["provider"].get<std::string>());
  EXPECT_EQ(providers, (std::set<std::string>{"acme-cc", "keys"}));
  const std::string key_id = key.out.substr(key.out.find("tok_"), 20);
  CliRun revoke = run({"remove", "--revoke", key_id});
  EXPECT_EQ(revoke.exit_code, 2) << revoke.err;
  EXPECT_NE(revoke.err.find("no revocation endpoint"), std::string::npos) << revoke.err;
  EXPECT_EQ(token_count(), 2u) << "nothing was removed";
}

// tokenwarden rekey --new-key, killed with SIGKILL in the middle: every token still opens (each
// batch is whole: old envelopes or new ones), and a second run finishes the job.
TEST_F(Cli, RekeyKilledInTheMiddleLosesNothingAndResumes) {
  constexpr int kTokens = 6000;
  std::string lines;
  for (int i = 0; i < kTokens; ++i) {
    lines += R"({"account_id":"acct-)" + std::to_string(i) + R"(","access_token":"act.)" +
             std::to_string(i) + R"(","refresh_token":"rft.)" + std::to_string(i) + "\"}\n";
  }
  CliRun imported = run(
      {"import", "--provider", "tiktok", "--kind", "business_token", "--workspace", "ws"}, lines);
  ASSERT_EQ(imported.exit_code, 0) << imported.err;
  const std::string new_key = dir_.file("new.key");
  ASSERT_EQ(run({"keygen", "--out", new_key}).exit_code, 0);

  // The new key not in the configuration: refused, nothing changed.
  CliRun refused = run({"rekey", "--new-key", new_key});
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("is not in"), std::string::npos) << refused.err;

  // Staged: every process can read the new key; rekey re-encrypts with it.
  write_file(config_path(), "database:\n  path: " + db_path() + "\nkey:\n  file: " + key_path() +
                                "\n  previous_files: [" + new_key + "]\n");
  {
    testing::ChildProcess rekey(
        TW_BINARY, {"--config", config_path(), "rekey", "--new-key", new_key, "--batch", "5"},
        dir_.file("rekey.err"));
    bool mid_way = false;
    while (auto line = rekey.first_line()) {
      if (line->find("re-encrypted (") != std::string::npos &&
          line->find("(100%)") == std::string::npos) {
        mid_way = true;
        break;
      }
    }
    ASSERT_TRUE(mid_way) << "no progress line before the end: "
                         << read_file(dir_.file("rekey.err"));
    EXPECT_EQ(rekey.terminate(SIGKILL), 128 + SIGKILL);
  }
  auto old_key = load_key_file(key_path());
  auto fresh_key = load_key_file(new_key);
  ASSERT_TRUE(old_key && fresh_key);
  auto count_and_check = [&](KeyRing ring) -> std::size_t {
    auto store = SqliteTokenStore::open(db_path(), std::chrono::seconds(5), Cipher(std::move(ring)),
                                        OpenMode::kExisting);
    EXPECT_TRUE(store) << store.error().message();
    auto all = (*store)->list({});
    EXPECT_EQ(all->size(), static_cast<std::size_t>(kTokens));
    for (const TokenRecord& r : *all) {
      auto secrets = (*store)->read_secrets(r);
      EXPECT_TRUE(secrets) << r.id << ": " << secrets.error().message();
      if (!secrets) continue;
      const std::string n = r.account_id.substr(5);
      EXPECT_EQ(secrets->access_token.reveal(), "act." + n);
      EXPECT_EQ(secrets->refresh_token.reveal(), "rft." + n);
    }
    return *(*store)->count_sealed_with_old_keys();
  };
  const std::size_t left = count_and_check(KeyRing(*fresh_key, {*old_key}));
  EXPECT_GT(left, 0u) << "killed before the end";
  EXPECT_LT(left, static_cast<std::size_t>(kTokens)) << "some batches were committed";

  CliRun resumed = run({"rekey", "--new-key", new_key, "--batch", "1000"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("re-encrypted " + std::to_string(left) + " token(s)"),
            std::string::npos)
      << "only what was left: " << resumed.out;
  EXPECT_NE(resumed.out.find("make this key key.file"), std::string::npos) << resumed.out;
  EXPECT_EQ(count_and_check(KeyRing(*fresh_key)), 0u) << "the new key alone opens everything";
}

TEST_F(Cli, AuditShowsEveryActionAndVerifyFindsAnEditedRow) {
  CliRun added = add("acct-1", "act.a\nrft.b\n");
  ASSERT_EQ(added.exit_code, 0) << added.err;
  const std::string id = added.out.substr(added.out.find("tok_"), 20);
  ASSERT_EQ(run({"disable", id}).exit_code, 0);
  ASSERT_EQ(run({"enable", id}).exit_code, 0);
  ASSERT_EQ(add("acct-2", "act.c\nrft.d\n").exit_code, 0);
  CliRun history = run({"audit", "--token", id});
  ASSERT_EQ(history.exit_code, 0) << history.err;
  EXPECT_NE(history.out.find("  add  " + id + "  ok"), std::string::npos) << history.out;
  EXPECT_NE(history.out.find("  disable  " + id + "  active -> disabled"), std::string::npos)
      << history.out;
  EXPECT_NE(history.out.find("  enable  " + id + "  disabled -> active"), std::string::npos)
      << history.out;
  EXPECT_EQ(history.out.find("acct-2"), std::string::npos) << "only this token's rows";
  EXPECT_NE(history.out.find("cli:"), std::string::npos) << "the actor: " << history.out;
  EXPECT_EQ(history.out.find("rft."), std::string::npos) << "never a secret";
  ASSERT_EQ(run({"remove", id}).exit_code, 0);
  auto all = nlohmann::json::parse(run({"audit", "--json"}).out);
  ASSERT_EQ(all.size(), 5u);
  EXPECT_EQ(all[4]["action"], "remove");

  CliRun ok = run({"audit", "verify"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_NE(ok.out.find("audit trail intact: rows 1 to 5 (5 rows); head hash "), std::string::npos)
      << ok.out;
  {
    SQLite::Database db(db_path(), SQLite::OPEN_READWRITE);
    db.exec("DROP TRIGGER audit_append_only");
    db.exec("UPDATE audit SET outcome = 'failed: revoked' WHERE seq = 2");
  }
  CliRun bad = run({"audit", "verify"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("row 2 was changed after it was written"), std::string::npos) << bad.err;
}

TEST_F(Cli, TokenGetPrintsOnlyAUsableAccessToken) {
  CliRun added = add("acct-1", "act.live\nrft.b\n", {"--expires-at", "+1h"});
  ASSERT_EQ(added.exit_code, 0) << added.err;
  const std::string id = added.out.substr(added.out.find("tok_"), 20);
  CliRun got = run({"token", "get", id});
  EXPECT_EQ(got.exit_code, 0) << got.err;
  EXPECT_EQ(got.out, "act.live\n") << "the access token and nothing else";
  EXPECT_EQ(got.err, "");
  EXPECT_NE(run({"audit", "--token", id}).out.find("  read  " + id + "  ok"), std::string::npos);

  CliRun expired = add("acct-2", "act.old\nrft.c\n", {"--expires-at", "2020-01-01T00:00:00Z"});
  const std::string old_id = expired.out.substr(expired.out.find("tok_"), 20);
  CliRun refused = run({"token", "get", old_id});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(refused.out, "");
  EXPECT_NE(refused.err.find("expired at 2020-01-01"), std::string::npos) << refused.err;

  ASSERT_EQ(run({"disable", id}).exit_code, 0);
  CliRun disabled = run({"token", "get", id});
  EXPECT_EQ(disabled.exit_code, 1);
  EXPECT_NE(disabled.err.find("is disabled"), std::string::npos) << disabled.err;
  EXPECT_EQ(run({"token", "get", "tok_0000000000000000"}).exit_code, 3);
}

TEST_F(Cli, ConfigAndKeyProblemsAreNamed) {
  CliRun missing = run({"--config", dir_.file("nope.yaml"), "list"}, "", false);
  EXPECT_EQ(missing.exit_code, 78);
  EXPECT_NE(missing.err.find("nope.yaml"), std::string::npos) << missing.err;

  write_file(dir_.file("bad.yaml"), "database:\n  path: /tmp/x.db\n  busy_timout: 5s\n");
  CliRun bad = run({"--config", dir_.file("bad.yaml"), "list"}, "", false);
  EXPECT_EQ(bad.exit_code, 78);
  EXPECT_NE(bad.err.find("bad.yaml:3"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("busy_timout"), std::string::npos) << bad.err;

  // Read-only commands never create a database; a missing one is an operational failure.
  CliRun no_db = run({"list"});
  EXPECT_EQ(no_db.exit_code, 1) << no_db.err;
  EXPECT_NE(no_db.err.find("no database at " + db_path()), std::string::npos) << no_db.err;
  EXPECT_FALSE(std::filesystem::exists(db_path()));
  ASSERT_EQ(add("a1", "act.1\nrft.1\n").exit_code, 0);

  chmod(key_path().c_str(), 0644);
  CliRun loose = run({"list"});
  EXPECT_EQ(loose.exit_code, 1);
  EXPECT_NE(loose.err.find("0644"), std::string::npos) << loose.err;

  std::filesystem::remove(key_path());
  CliRun no_key = run({"show", "tok_0000000000000000"});
  EXPECT_EQ(no_key.exit_code, 1) << "a missing key file is not a missing token";
  EXPECT_NE(no_key.err.find("does not exist"), std::string::npos) << no_key.err;
}

TEST_F(Cli, RekeyAfterRotatingTheKeyFile) {
  ASSERT_EQ(add("a1", "act.1\nrft.1\n").exit_code, 0);
  ASSERT_EQ(add("a2", "act.2\nrft.2\n").exit_code, 0);
  // Rotate: a new current key, the old one kept as previous until rekey is done.
  ASSERT_EQ(std::rename(key_path().c_str(), dir_.file("old.key").c_str()), 0);
  ASSERT_EQ(run({"keygen", "--out", key_path()}).exit_code, 0);
  write_file(config_path(), "database:\n  path: " + db_path() + "\nkey:\n  file: " + key_path() +
                                "\n  previous_files: [" + dir_.file("old.key") + "]\n");
  CliRun r = run({"rekey"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("re-encrypted 2 token(s)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("can be retired"), std::string::npos) << r.out;
  EXPECT_NE(run({"rekey"}).out.find("re-encrypted 0 token(s)"), std::string::npos);
}

TEST_F(Cli, SimulateRunsAndFindsNoPlaintext) {
  CliRun r = run({"simulate", "--dir", dir_.file("sim"), "--days", "12"}, "", false);
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("renewed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("needs_reauth"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Encryption: 0 of"), std::string::npos) << r.out;
  CliRun list = run({"--config", dir_.file("sim/tokenwarden.yaml"), "list"}, "", false);
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("needs_reauth"), std::string::npos);
  CliRun again = run({"simulate", "--dir", dir_.file("sim")}, "", false);
  EXPECT_EQ(again.exit_code, 2) << "refuses a directory that is not empty";
}

TEST_F(Cli, StatusIsAMonitoringCheck) {
  const std::string path = dir_.file("status.json");
  auto now = [] {
    return format_time(std::chrono::floor<Seconds>(std::chrono::system_clock::now()));
  };
  auto write_status = [&](const std::string& tick, int reauth) {
    nlohmann::json reauth_list = nlohmann::json::array();
    if (reauth > 0) {
      reauth_list.push_back({{"token_id", "tok_dead"},
                             {"provider", "google"},
                             {"workspace_id", "ws-9"},
                             {"account_id", "accounts/9"},
                             {"state", "revoked"},
                             {"since", tick},
                             {"reason", "invalid_grant"}});
    }
    nlohmann::json s = {{"version", "0.1.0"},
                        {"owner", "h:1"},
                        {"started", tick},
                        {"written", tick},
                        {"last_tick", tick},
                        {"tokens",
                         {{"total",
                           {{"active", 3},
                            {"failing", 0},
                            {"needs_reauth", 0},
                            {"revoked", reauth},
                            {"disabled", 0}}},
                          {"by_provider", {{"google", {{"active", 3}, {"revoked", reauth}}}}}}},
                        {"next_due", tick},
                        {"oldest_overdue", nullptr},
                        {"last_hour",
                         {{"refreshes", {{"ok", 2}, {"failed", {{"transient", 1}}}}},
                          {"checks", {{"ok", 5}, {"failed", nlohmann::json::object()}}}}},
                        {"needs_reauth", reauth_list},
                        {"needs_reauth_total", reauth}};
    write_file(path, s.dump());
  };
  write_status(now(), 0);
  CliRun healthy = run({"status", "--file", path});
  EXPECT_EQ(healthy.exit_code, 0) << healthy.err;
  EXPECT_NE(healthy.out.find("3 active"), std::string::npos) << healthy.out;
  EXPECT_NE(healthy.out.find("OK"), std::string::npos);

  write_status(now(), 1);
  CliRun attention = run({"status", "--file", path});
  EXPECT_EQ(attention.exit_code, 1);
  EXPECT_NE(attention.out.find("tok_dead"), std::string::npos) << attention.out;
  EXPECT_NE(attention.out.find("NEEDS ATTENTION"), std::string::npos);
  CliRun json = run({"status", "--file", path, "--json"});
  EXPECT_EQ(json.exit_code, 1);
  EXPECT_EQ(nlohmann::json::parse(json.out)["needs_reauth_total"], 1);

  write_status("2020-01-01T00:00:00Z", 0);
  CliRun stale = run({"status", "--file", path});
  EXPECT_EQ(stale.exit_code, 1) << "a daemon that stopped ticking is not healthy";
  EXPECT_NE(stale.out.find("STALE"), std::string::npos);

  EXPECT_EQ(run({"status", "--file", dir_.file("missing.json")}).exit_code, 2);
  write_file(path, "not json");
  EXPECT_EQ(run({"status", "--file", path}).exit_code, 2);
  write_file(path, R"({"written": "x", "last_tick": 7, "tokens": {"total": [1, "2"]}})");
  CliRun mangled = run({"status", "--file", path});
  EXPECT_EQ(mangled.exit_code, 2) << "wrong types are an error, not a crash";
  EXPECT_NE(mangled.err.find("is not a tokenwarden status file"), std::string::npos);
  write_status(now(), 0);
  EXPECT_EQ(run({"status", "--file", path, "--stale-after", "soon"}).exit_code, 2);
}

using namespace std::chrono_literals;

// Scaling out: the SQLite store copied to PostgreSQL, secrets sealed all the way, and the
// configuration switched over: the same tokens, schedule and state, secrets that open, and a
// second copy into the now non-empty store refused.
TEST_F(Cli, MigratesTheSqliteStoreToPostgresAndOnlyIntoAnEmptyOne) {
  testing::PgTestSchema pg;
  ASSERT_TRUE(pg.ok()) << pg.error();
  ASSERT_EQ(add("biz-1", "act.MIGRATE-ACCESS-1\nrft.MIGRATE-REFRESH-1\n").exit_code, 0);
  const CliRun second = add("biz-2", "act.MIGRATE-ACCESS-2\nrft.MIGRATE-REFRESH-2\n");
  ASSERT_EQ(second.exit_code, 0) << second.err;
  ASSERT_EQ(run({"disable", id_from(second.out)}).exit_code, 0) << "a state worth copying";
  const CliRun before = run({"list", "--json"});

  const CliRun with_password =
      run({"migrate", "--from", "sqlite:", "--to", "postgres:host=/tmp password=hunter2"});
  EXPECT_EQ(with_password.exit_code, 2) << with_password.err;
  EXPECT_NE(with_password.err.find("password"), std::string::npos) << with_password.err;
  EXPECT_EQ(with_password.err.find("hunter2"), std::string::npos) << with_password.err;

  // A token leased by a live process: refused, unless the operator knows that process is dead.
  {
    auto config = load_config(config_path());
    ASSERT_TRUE(config) << config.error().message();
    auto store =
        open_token_store(config->storage, config->database, config->key, "", OpenMode::kExisting);
    ASSERT_TRUE(store) << store.error().message();
    ASSERT_TRUE((*store)->claim(id_from(second.out), SystemClock().now(), "busy-host:42", 5min));
  }
  const CliRun busy = run({"migrate", "--from", "sqlite:", "--to", "postgres:" + pg.dsn()});
  EXPECT_NE(busy.exit_code, 0);
  EXPECT_NE(busy.err.find("is being worked on by busy-host:42"), std::string::npos) << busy.err;
  EXPECT_TRUE(pg.exec("SELECT 1 FROM tokens").empty()) << "nothing copied";

  const CliRun done =
      run({"migrate", "--from", "sqlite:", "--to", "postgres:" + pg.dsn(), "--force"});
  ASSERT_EQ(done.exit_code, 0) << done.err;
  EXPECT_NE(done.out.find("migrated 2 token(s)"), std::string::npos) << done.out;
  EXPECT_NE(done.out.find("2 decrypt with the configured key"), std::string::npos) << done.out;
  EXPECT_EQ((done.out + done.err).find("MIGRATE-"), std::string::npos) << "no secret printed";
  const auto rows = pg.exec("SELECT access_token, refresh_token FROM tokens");
  ASSERT_EQ(rows.size(), 2u);
  for (const auto& row : rows) {
    EXPECT_EQ(std::string(row[0].c_str()).find("MIGRATE"), std::string::npos);
    EXPECT_EQ(std::string(row[1].c_str()).find("MIGRATE"), std::string::npos);
  }

  // The same configuration, pointed at PostgreSQL, sees the same tokens in the same state.
  write_file(config_path(), "storage:\n  backend: postgres\n  postgres: {dsn: \"" + pg.dsn() +
                                "\"}\nkey:\n  file: " + key_path() + "\n");
  const CliRun after = run({"list", "--json"});
  ASSERT_EQ(after.exit_code, 0) << after.err;
  EXPECT_EQ(nlohmann::json::parse(after.out), nlohmann::json::parse(before.out));

  const CliRun again = run({"migrate", "--from", "sqlite:" + db_path(), "--to", "postgres:"});
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.err.find("already holds 2 token(s)"), std::string::npos) << again.err;
  const CliRun same = run({"migrate", "--from", "postgres:", "--to", "postgres:"});
  EXPECT_EQ(same.exit_code, 2) << same.err;
  const CliRun bad = run({"migrate", "--from", "mysql:x", "--to", "postgres:"});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
}

}  // namespace
}  // namespace tw
