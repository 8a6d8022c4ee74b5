// FaultyVfs: an SQLite VFS that forwards every call to the default one and, on demand, fails
// writes with SQLITE_FULL (a full disk) or fsyncs with SQLITE_IOERR_FSYNC, below SQLite itself.
// Open a store through it with SqliteTokenStore::open(..., FaultyVfs::kName).
//
// Thread-safety: the fault switch and the counter are atomic; install() is safe to call again.
#pragma once

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include <sqlite3.h>

namespace tw::testing {

class FaultyVfs {
 public:
  static constexpr const char* kName = "tw-faulty";
  enum class Fault { kNone, kDiskFull, kFsyncError };

  // Registers the VFS (idempotent).
  static void install() {
    static const bool done = [] {
      sqlite3_vfs* real = sqlite3_vfs_find(nullptr);
      static sqlite3_vfs vfs = *real;
      vfs.zName = kName;
      vfs.pAppData = real;
      vfs.szOsFile = static_cast<int>(sizeof(File)) + real->szOsFile;
      vfs.xOpen = &open;
      vfs.pNext = nullptr;
      return sqlite3_vfs_register(&vfs, 0) == SQLITE_OK;
    }();
    (void)done;
  }

  static void set(Fault f) { fault().store(f); }
  // How many writes and fsyncs were failed since the last reset.
  static int failures() { return failed().load(); }
  static void reset_failures() { failed().store(0); }

 private:
  struct File {
    sqlite3_file base;
    sqlite3_file* real;
  };

  static std::atomic<Fault>& fault() {
    static std::atomic<Fault> f{Fault::kNone};
    return f;
  }
  static std::atomic<int>& failed() {
    static std::atomic<int> n{0};
    return n;
  }
  static sqlite3_file* real(sqlite3_file* f) { return reinterpret_cast<File*>(f)->real; }

  static int open(sqlite3_vfs* vfs, sqlite3_filename name, sqlite3_file* file, int flags,
                  int* out_flags) {
    auto* real_vfs = static_cast<sqlite3_vfs*>(vfs->pAppData);
    auto* shim = reinterpret_cast<File*>(file);
    shim->base.pMethods = nullptr;
    shim->real =
        reinterpret_cast<sqlite3_file*>(reinterpret_cast<unsigned char*>(file) + sizeof(File));
    const int rc = real_vfs->xOpen(real_vfs, name, shim->real, flags, out_flags);
    if (shim->real->pMethods != nullptr) shim->base.pMethods = methods(shim->real->pMethods);
    return rc;
  }

  // The real file's methods with every call unwrapped, and xWrite/xSync able to fail: one table
  // per distinct real table (the unix VFS has one per locking style and file kind).
  static const sqlite3_io_methods* methods(const sqlite3_io_methods* real_methods) {
    struct Slot {
      const sqlite3_io_methods* real = nullptr;
      sqlite3_io_methods table{};
    };
    static Slot slots[8];
    static std::mutex mutex;
    const std::lock_guard<std::mutex> lock(mutex);
    Slot* slot = nullptr;
    for (Slot& candidate : slots) {
      if (candidate.real == real_methods) return &candidate.table;
      if (candidate.real == nullptr) {
        slot = &candidate;
        break;
      }
    }
    if (slot == nullptr) {
      std::fputs("FaultyVfs: more than 8 sqlite3_io_methods tables\n", stderr);
      std::abort();
    }
    slot->real = real_methods;
    sqlite3_io_methods& table = slot->table;
    table = *real_methods;
    table.xClose = [](sqlite3_file* f) { return real(f)->pMethods->xClose(real(f)); };
    table.xRead = [](sqlite3_file* f, void* buf, int n, sqlite3_int64 off) {
      return real(f)->pMethods->xRead(real(f), buf, n, off);
    };
    table.xWrite = [](sqlite3_file* f, const void* buf, int n, sqlite3_int64 off) {
      if (fault().load() == Fault::kDiskFull) {
        ++failed();
        return SQLITE_FULL;
      }
      return real(f)->pMethods->xWrite(real(f), buf, n, off);
    };
    table.xTruncate = [](sqlite3_file* f, sqlite3_int64 size) {
      return real(f)->pMethods->xTruncate(real(f), size);
    };
    table.xSync = [](sqlite3_file* f, int flags) {
      if (fault().load() == Fault::kFsyncError) {
        ++failed();
        return SQLITE_IOERR_FSYNC;
      }
      return real(f)->pMethods->xSync(real(f), flags);
    };
    table.xFileSize = [](sqlite3_file* f, sqlite3_int64* size) {
      return real(f)->pMethods->xFileSize(real(f), size);
    };
    table.xLock = [](sqlite3_file* f, int l) { return real(f)->pMethods->xLock(real(f), l); };
    table.xUnlock = [](sqlite3_file* f, int l) { return real(f)->pMethods->xUnlock(real(f), l); };
    table.xCheckReservedLock = [](sqlite3_file* f, int* out) {
      return real(f)->pMethods->xCheckReservedLock(real(f), out);
    };
    table.xFileControl = [](sqlite3_file* f, int op, void* arg) {
      return real(f)->pMethods->xFileControl(real(f), op, arg);
    };
    table.xSectorSize = [](sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); };
    table.xDeviceCharacteristics = [](sqlite3_file* f) {
      return real(f)->pMethods->xDeviceCharacteristics(real(f));
    };
    // Optional methods stay absent where the real table has none (a file without shared memory
    // must not look WAL-capable).
    if (table.iVersion >= 2 && table.xShmMap != nullptr) {
      table.xShmMap = [](sqlite3_file* f, int region, int size, int extend, void volatile** out) {
        return real(f)->pMethods->xShmMap(real(f), region, size, extend, out);
      };
      table.xShmLock = [](sqlite3_file* f, int offset, int n, int flags) {
        return real(f)->pMethods->xShmLock(real(f), offset, n, flags);
      };
      table.xShmBarrier = [](sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); };
      table.xShmUnmap = [](sqlite3_file* f, int del) {
        return real(f)->pMethods->xShmUnmap(real(f), del);
      };
    }
    if (table.iVersion >= 3 && table.xFetch != nullptr) {
      table.xFetch = [](sqlite3_file* f, sqlite3_int64 off, int n, void** out) {
        return real(f)->pMethods->xFetch(real(f), off, n, out);
      };
      table.xUnfetch = [](sqlite3_file* f, sqlite3_int64 off, void* p) {
        return real(f)->pMethods->xUnfetch(real(f), off, p);
      };
    }
    return &table;
  }
};

}  // namespace tw::testing
