// Storage faults below SQLite: the real store on a VFS that fails writes (a full disk) or fsyncs
// (an I/O error) on demand. A commit that fails shows nothing of itself to the running processes,
// says so as Errc::kStorage (which the worker retries, holding the secrets), is whole or absent
// after a crash, and the same save goes through once the disk is back.
#include <filesystem>

#include <SQLiteCpp/Database.h>
#include <gtest/gtest.h>

#include "storage/sqlite_token_store.h"
#include "tests/support/faulty_vfs.h"
#include "tests/test_util.h"

namespace tw {
namespace {

using namespace std::chrono_literals;
using testing::FaultyVfs;

const SysTime kFaultNow = from_unix(1'800'000'000);

class StorageFaults : public ::testing::TestWithParam<FaultyVfs::Fault> {
 protected:
  void SetUp() override { FaultyVfs::install(); }
  void TearDown() override { FaultyVfs::set(FaultyVfs::Fault::kNone); }

  std::unique_ptr<SqliteTokenStore> open(const std::string& vfs) {
    auto s = SqliteTokenStore::open(dir_.file("tokens.db"), 200ms, Cipher(KeyRing(key_)),
                                    OpenMode::kCreate, vfs);
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message());
    return s.ok() ? std::move(*s) : nullptr;
  }

  // Runs `op` with the fault on; expects it to fail as a storage error the disk caused.
  template <class Op>
  void expect_fails_under_fault(Op op, const char* what) {
    FaultyVfs::reset_failures();
    FaultyVfs::set(GetParam());
    Status st = op();
    FaultyVfs::set(FaultyVfs::Fault::kNone);
    ASSERT_FALSE(st.ok()) << what << " succeeded on a failing disk";
    EXPECT_EQ(st.error().code(), Errc::kStorage) << st.error().message();
    EXPECT_GT(FaultyVfs::failures(), 0) << what << " never reached the disk";
  }

  testing::TempDir dir_;
  Key key_ = *Key::generate();
};

TEST_P(StorageFaults, AFailedCommitIsUnseenUntilRetriedAndWholeOrAbsentAfterACrash) {
  auto store = open(FaultyVfs::kName);
  ASSERT_TRUE(store);
  NewToken t{Provider::kTikTok, TokenKind::kRefreshToken, "ws", "acct", "", {}, {}};
  auto added = store->upsert(t, TokenSecrets{Secret("act.1"), Secret("rft.1")}, kFaultNow,
                             [](TokenRecord& r) {
                               r.next_refresh_due = kFaultNow;
                               r.next_check_due = kFaultNow + 1h;
                             });
  ASSERT_TRUE(added.ok()) << added.error().message();
  const std::string id = added->record.id;
  auto claimed = store->claim_due(kFaultNow, 1, "daemon", 5min, kAllProviders);
  ASSERT_TRUE(claimed.ok() && claimed->size() == 1u);
  const TokenRecord held = (*claimed)[0].record;

  // The attempt cannot be recorded: the request must not go out, and nothing was written.
  ASSERT_NO_FATAL_FAILURE(expect_fails_under_fault(
      [&] {
        return store->begin_renewal({id, held.lease_generation}, "daemon", kFaultNow);
      },
      "begin_renewal"));
  EXPECT_FALSE((*store->find(id))->renewal_in_doubt_since);
  ASSERT_TRUE(store->begin_renewal({id, held.lease_generation}, "daemon", kFaultNow));

  // The renewal came back with a rotated pair; the disk fails at its commit.
  TokenRecord renewed = held;
  renewed.last_refreshed_at = kFaultNow;
  renewed.next_refresh_due = kFaultNow + 7 * 24h;
  renewed.renewal_in_doubt_since.reset();
  const TokenSecrets fresh{Secret("act.2"), Secret("rft.2")};
  const TokenRecord before = **store->find(id);
  ASSERT_NO_FATAL_FAILURE(expect_fails_under_fault(
      [&] { return store->save(renewed, &fresh, "daemon", LeaseAction::kRelease); }, "save"));

  // Nothing of it is visible: the old secrets, the lease still held, the attempt still in doubt.
  const TokenRecord after = **store->find(id);
  EXPECT_EQ(after.lease_owner, "daemon");
  EXPECT_EQ(after.lease_generation, held.lease_generation);
  EXPECT_EQ(after.renewal_in_doubt_since, kFaultNow);
  EXPECT_EQ(after.next_refresh_due, before.next_refresh_due);
  EXPECT_NE(after.next_refresh_due, renewed.next_refresh_due);
  EXPECT_FALSE(after.last_refreshed_at);
  EXPECT_EQ(store->read_secrets(after)->refresh_token.reveal(), "rft.1");
  {
    // Nor to another process now.
    auto other = open("");
    ASSERT_TRUE(other);
    const TokenRecord seen = **other->find(id);
    EXPECT_EQ(seen.lease_owner, "daemon");
    EXPECT_EQ(other->read_secrets(seen)->refresh_token.reveal(), "rft.1");
  }
  {
    // Were the process to crash now, recovery from the file and its WAL (a copy without the
    // shared-memory index, so recovery runs) finds the commit whole or not at all: a full disk
    // wrote nothing; a failed fsync may have left every frame of it, commit mark included.
    // Either way is safe: the old pair with the attempt in doubt, or the new pair.
    const std::string crashed = dir_.file("crashed");
    std::filesystem::create_directory(crashed);
    for (const char* suffix : {"", "-wal"}) {
      std::filesystem::copy_file(dir_.file("tokens.db") + suffix, crashed + "/tokens.db" + suffix);
      std::filesystem::permissions(
          crashed + "/tokens.db" + suffix,
          std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    }
    auto recovered = SqliteTokenStore::open(crashed + "/tokens.db", 200ms, Cipher(KeyRing(key_)));
    ASSERT_TRUE(recovered.ok()) << recovered.error().message();
    const TokenRecord r = **(*recovered)->find(id);
    const std::string refresh((*recovered)->read_secrets(r)->refresh_token.reveal());
    if (refresh == "rft.1") {
      EXPECT_EQ(r.lease_owner, "daemon");
      EXPECT_EQ(r.renewal_in_doubt_since, kFaultNow);
      EXPECT_FALSE(r.last_refreshed_at);
    } else {
      EXPECT_EQ(refresh, "rft.2");
      EXPECT_TRUE(r.lease_owner.empty());
      EXPECT_FALSE(r.renewal_in_doubt_since);
      EXPECT_EQ(r.last_refreshed_at, kFaultNow);
    }
    if (GetParam() == FaultyVfs::Fault::kDiskFull) {
      EXPECT_EQ(refresh, "rft.1") << "a full disk wrote nothing";
    }
  }

  // The worker retries the same save, still holding the lease and the secrets: it goes through.
  ASSERT_TRUE(store->save(renewed, &fresh, "daemon", LeaseAction::kRelease));
  EXPECT_EQ(store->read_secrets(**store->find(id))->refresh_token.reveal(), "rft.2");

  // A fresh process on the default VFS finds the renewal and an intact file.
  store.reset();
  auto reopened = open("");
  ASSERT_TRUE(reopened);
  const TokenRecord last = **reopened->find(id);
  EXPECT_TRUE(last.lease_owner.empty());
  EXPECT_FALSE(last.renewal_in_doubt_since);
  EXPECT_EQ(reopened->read_secrets(last)->refresh_token.reveal(), "rft.2");
  reopened.reset();
  SQLite::Database raw(dir_.file("tokens.db"), SQLite::OPEN_READONLY);
  EXPECT_EQ(raw.execAndGet("PRAGMA integrity_check").getString(), "ok");
}

INSTANTIATE_TEST_SUITE_P(DiskFullAndFsyncError, StorageFaults,
                         ::testing::Values(FaultyVfs::Fault::kDiskFull,
                                           FaultyVfs::Fault::kFsyncError),
                         [](const ::testing::TestParamInfo<FaultyVfs::Fault>& info) {
                           return info.param == FaultyVfs::Fault::kDiskFull ? "DiskFull"
                                                                            : "FsyncError";
                         });

}  // namespace
}  // namespace tw
