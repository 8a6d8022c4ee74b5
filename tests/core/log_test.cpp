#include "core/log.h"

#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

namespace tw {
namespace {

TEST(Log, JournalLinesCarryTheFieldsOfTheScope) {
  std::vector<std::vector<std::string>> sent;
  auto log = make_journal_logger("t", LogConfig{}, [&](const iovec* iov, int n) {
    std::vector<std::string> parts;
    for (int i = 0; i < n; ++i)
      parts.emplace_back(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    sent.push_back(parts);
    return 0;
  });
  {
    ScopedLogFields f({{"TOKEN_ID", "tok_1"}, {"PROVIDER", "google"}, {"OUTCOME", "failed"}});
    log->warn("renewal of tok_1 failed");
  }
  log->info("no fields now");
  ASSERT_EQ(sent.size(), 2u);
  auto has = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  EXPECT_TRUE(has(sent[0], "MESSAGE=renewal of tok_1 failed"));
  EXPECT_TRUE(has(sent[0], "PRIORITY=4"));
  EXPECT_TRUE(has(sent[0], "SYSLOG_IDENTIFIER=tokenwarden"));
  EXPECT_TRUE(has(sent[0], "TOKEN_ID=tok_1"));
  EXPECT_TRUE(has(sent[0], "PROVIDER=google"));
  EXPECT_TRUE(has(sent[0], "OUTCOME=failed"));
  EXPECT_FALSE(has(sent[1], "TOKEN_ID=tok_1")) << "fields end with their scope";
  EXPECT_TRUE(has(sent[1], "PRIORITY=6"));
}

TEST(Log, JsonLinesHoldFieldsAndEscapeTheMessage) {
  std::ostringstream out;
  LogConfig c;
  c.format = "json";
  auto log = make_logger("t", c, out);
  {
    ScopedLogFields f({{"TOKEN_ID", "tok_2"}, {"LATENCY_MS", "12"}});
    log->info("quote \" and newline \n inside");
  }
  auto line = nlohmann::json::parse(out.str());
  EXPECT_EQ(line["message"], "quote \" and newline \n inside");
  EXPECT_EQ(line["level"], "info");
  EXPECT_EQ(line["token_id"], "tok_2");
  EXPECT_EQ(line["latency_ms"], "12");
  const std::string text = out.str();
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
}

TEST(Log, TextLinesAreUtcAndLevelled) {
  std::ostringstream out;
  LogConfig c;
  c.level = "warn";
  auto log = make_logger("t", c, out);
  log->info("hidden");
  log->warn("shown");
  EXPECT_EQ(out.str().find("hidden"), std::string::npos);
  EXPECT_NE(out.str().find("Z warning shown"), std::string::npos) << out.str();
  c.level = "info";
  reconfigure_logger(*log, c);
  log->info("now shown");
  EXPECT_NE(out.str().find("now shown"), std::string::npos);
}

TEST(Log, StderrIsTheJournalOnlyWhenJournalStreamNamesIt) {
  unsetenv("JOURNAL_STREAM");
  EXPECT_FALSE(stderr_is_journal());
  setenv("JOURNAL_STREAM", "1:2", 1);
  EXPECT_FALSE(stderr_is_journal());
  // What systemd sets when stderr is its journal stream: stderr's device and inode.
  struct stat st {};
  ASSERT_EQ(fstat(STDERR_FILENO, &st), 0);
  const std::string mine = std::to_string(static_cast<unsigned long long>(st.st_dev)) + ":" +
                           std::to_string(static_cast<unsigned long long>(st.st_ino));
  setenv("JOURNAL_STREAM", mine.c_str(), 1);
  EXPECT_TRUE(stderr_is_journal());
  // stdout's stream, inherited by a child whose stderr goes elsewhere, does not count.
  setenv("JOURNAL_STREAM", (mine + "0").c_str(), 1);
  EXPECT_FALSE(stderr_is_journal());
  unsetenv("JOURNAL_STREAM");
}

}  // namespace
}  // namespace tw
