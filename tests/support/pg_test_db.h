// PgTestSchema: a fresh, empty PostgreSQL schema on the test cluster for one test, dropped with
// everything in it when the test ends.
//
// The cluster is the one ctest starts (the `pg` fixture: tools/pg-cluster start BUILD/pg), found
// through $TW_TEST_PG_DSN (a connection string) or $TW_TEST_PG_DSN_FILE (a file holding one).
// Without either, dsn() is empty and error() says how to get one: a test then fails, never skips.
#pragma once

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <string>

#include <pqxx/pqxx>
#include <unistd.h>

namespace tw::testing {

// The test cluster's connection string, or empty.
inline std::string pg_test_dsn() {
  if (const char* dsn = std::getenv("TW_TEST_PG_DSN"); dsn != nullptr && *dsn != '\0') return dsn;
  const char* file = std::getenv("TW_TEST_PG_DSN_FILE");
  if (file == nullptr) return {};
  std::ifstream in(file);
  std::string dsn;
  std::getline(in, dsn);
  return dsn;
}

class PgTestSchema {
 public:
  PgTestSchema() {
    base_ = pg_test_dsn();
    if (base_.empty()) {
      error_ =
          "no PostgreSQL test cluster: run the tests with ctest (it starts one), or run "
          "`tools/pg-cluster start build/release/pg` and set "
          "TW_TEST_PG_DSN_FILE=build/release/pg/dsn";
      return;
    }
    static std::atomic<int> counter{0};
    name_ = "tw_test_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
    try {
      pqxx::connection c(base_);
      pqxx::nontransaction t(c);
      t.exec("DROP SCHEMA IF EXISTS " + name_ + " CASCADE");
      t.exec("CREATE SCHEMA " + name_);
    } catch (const std::exception& e) {
      error_ =
          std::string("cannot create a test schema on the PostgreSQL test cluster: ") + e.what();
      base_.clear();
    }
  }
  ~PgTestSchema() {
    if (base_.empty()) return;
    try {
      pqxx::connection c(base_);
      pqxx::nontransaction t(c);
      t.exec("DROP SCHEMA IF EXISTS " + name_ + " CASCADE");
    } catch (const std::exception&) {
      // The cluster is thrown away after the run anyway.
    }
  }
  PgTestSchema(const PgTestSchema&) = delete;
  PgTestSchema& operator=(const PgTestSchema&) = delete;

  bool ok() const { return !base_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& schema() const { return name_; }
  // A connection string whose sessions work in this schema only.
  std::string dsn() const {
    return base_.empty() ? "" : base_ + " options='-c search_path=" + name_ + "'";
  }
  // Runs SQL in the schema, as another client (an operator with psql) would.
  pqxx::result exec(const std::string& sql) const {
    pqxx::connection c(dsn());
    pqxx::nontransaction t(c);
    return t.exec(sql);
  }

 private:
  std::string base_;
  std::string name_;
  std::string error_;
};

}  // namespace tw::testing
