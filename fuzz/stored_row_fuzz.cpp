// libFuzzer target: the stored-row decoder. A database file is someone else's input once it is on
// disk (a restored backup, a hand edit, a disk error): every column of a token row comes from the
// fuzz input, written straight into a real store's file, then read back through the store as the
// daemon reads it (list, find, read_secrets). Half the time the secret columns are genuine
// envelopes with fuzzed bytes flipped, so decryption is reached past the format checks. Properties:
// no crash, leak or hang; a secret that does not decrypt is an error naming the token on one
// line, never garbage returned as a secret.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>
#include <fuzzer/FuzzedDataProvider.h>
#include <unistd.h>

#include "storage/crypto.h"
#include "storage/sqlite_token_store.h"

namespace {

constexpr const char* kId = "tok_00112233aabbccdd";
constexpr const char* kAccess = "act.genuine-access-secret";

struct World {
  std::string path;
  std::unique_ptr<tw::SqliteTokenStore> store;
  std::unique_ptr<SQLite::Database> raw;  // the "someone else" writing the file
  tw::Cipher cipher;
  std::vector<std::uint8_t> genuine;  // a real envelope of kAccess for (kId, access_token)
};

World& world() {
  static World* w = [] {
    std::string dir = std::filesystem::temp_directory_path() / "tw-fuzz-XXXXXX";
    if (mkdtemp(dir.data()) == nullptr) std::abort();
    auto key = tw::Key::generate();
    if (!key) std::abort();
    tw::Cipher cipher{tw::KeyRing(*key)};
    auto* out = new World{dir + "/tokens.db", nullptr, nullptr, cipher, {}};
    auto store = tw::SqliteTokenStore::open(out->path, std::chrono::milliseconds(100), cipher);
    if (!store) std::abort();
    out->store = std::move(*store);
    out->raw = std::make_unique<SQLite::Database>(out->path, SQLite::OPEN_READWRITE);
    out->raw->exec("PRAGMA synchronous = OFF");
    auto blob = cipher.seal(tw::Secret(kAccess), kId, "access_token");
    if (!blob) std::abort();
    out->genuine.assign(blob->begin(), blob->end());
    static std::string to_remove = dir;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(to_remove, ec);
    });
    return out;
  }();
  return *w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  World& w = world();
  FuzzedDataProvider in(data, size);
  w.raw->exec("DELETE FROM tokens");
  // Text columns: mostly valid values, sometimes anything (the CHECK constraints may refuse it).
  auto text = [&](std::initializer_list<const char*> valid) {
    if (in.ConsumeIntegralInRange<int>(0, 7) == 0) return in.ConsumeRandomLengthString(32);
    const std::vector<const char*> v(valid);
    return std::string(v[in.ConsumeIntegralInRange<std::size_t>(0, v.size() - 1)]);
  };
  auto blob = [&]() -> std::vector<std::uint8_t> {
    if (in.ConsumeBool()) {
      std::vector<std::uint8_t> b = w.genuine;
      const int flips = in.ConsumeIntegralInRange<int>(0, 3);
      for (int i = 0; i < flips && !b.empty(); ++i) {
        b[in.ConsumeIntegralInRange<std::size_t>(0, b.size() - 1)] ^=
            in.ConsumeIntegral<std::uint8_t>();
      }
      if (in.ConsumeBool()) b.resize(in.ConsumeIntegralInRange<std::size_t>(0, b.size()));
      return b;
    }
    return in.ConsumeBytes<std::uint8_t>(in.ConsumeIntegralInRange<std::size_t>(0, 200));
  };
  auto number = [&]() -> std::int64_t {
    return in.ConsumeBool() ? in.ConsumeIntegralInRange<std::int64_t>(0, 4'000'000'000)
                            : in.ConsumeIntegral<std::int64_t>();
  };
  try {
    SQLite::Statement q(
        *w.raw,
        "INSERT INTO tokens (id, provider, kind, workspace_id, account_id, scopes, access_token, "
        "refresh_token, expires_at, refresh_expires_at, next_refresh_due, next_check_due, state, "
        "state_since, consecutive_failures, last_error_class, last_error_operation, "
        "last_error_message, connected_at, created_at, updated_at, lease_owner, lease_until, "
        "lease_generation, renewal_in_doubt_since) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
        "?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)");
    q.bind(1, in.ConsumeBool() ? std::string(kId) : in.ConsumeRandomLengthString(24));
    q.bind(2, text({"meta", "google", "tiktok"}));
    q.bind(3, text({"page_token", "user_token", "refresh_token", "business_token",
                    "client_credentials", "api_key"}));
    q.bind(4, in.ConsumeRandomLengthString(16));
    q.bind(5, in.ConsumeRandomLengthString(16));
    q.bind(6, in.ConsumeRandomLengthString(16));
    for (int col : {7, 8}) {
      if (in.ConsumeBool()) {
        const auto b = blob();
        q.bind(col, b.data(), static_cast<int>(b.size()));
      } else {
        q.bind(col);
      }
    }
    for (int col : {9, 10, 11, 12}) {
      if (in.ConsumeBool()) {
        q.bind(col, static_cast<int64_t>(number()));
      } else {
        q.bind(col);
      }
    }
    q.bind(13, text({"active", "failing", "needs_reauth", "revoked", "disabled"}));
    q.bind(14, static_cast<int64_t>(number()));
    q.bind(15, static_cast<int>(in.ConsumeIntegral<std::int32_t>()));
    q.bind(16, text({"none", "transient", "malformed", "permanent", "revoked", "configuration"}));
    q.bind(17, text({"", "refresh", "check"}));
    q.bind(18, in.ConsumeRandomLengthString(64));
    q.bind(19, static_cast<int64_t>(number()));
    q.bind(20, static_cast<int64_t>(number()));
    q.bind(21, static_cast<int64_t>(number()));
    if (in.ConsumeBool()) q.bind(22, in.ConsumeRandomLengthString(16));
    if (in.ConsumeBool()) q.bind(23, static_cast<int64_t>(number()));
    q.bind(24, static_cast<int64_t>(number()));
    if (in.ConsumeBool()) q.bind(25, static_cast<int64_t>(number()));
    q.exec();
  } catch (const SQLite::Exception&) {
    return 0;  // refused by the schema's constraints: nothing to read back
  }
  auto rows = w.store->list({});
  if (!rows) return 0;  // reported as an error (kCorrupt or kStorage): fine
  for (const tw::TokenRecord& r : *rows) {
    auto found = w.store->find(r.id);
    if (!found || !*found) std::abort();  // listed but not found
    auto secrets = w.store->read_secrets(r);
    if (!secrets) {
      // It names the token (control characters made safe for a log line), on one line.
      const std::string& m = secrets.error().message();
      if (m.find("of token ") == std::string::npos || m.find('\n') != std::string::npos) {
        std::abort();
      }
      continue;
    }
    // A secret that decrypts is the genuine one, or the row holds none.
    const std::string_view access = secrets->access_token.reveal();
    if (!access.empty() && access != kAccess) std::abort();
    if (!secrets->refresh_token.empty()) std::abort();  // only an access envelope is genuine
  }
  return 0;
}
