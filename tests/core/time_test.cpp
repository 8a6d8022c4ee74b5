#include "core/time.h"

#include <gtest/gtest.h>

namespace tw {
namespace {

using namespace std::chrono_literals;

TEST(Duration, ParsesUnitsAndCompounds) {
  EXPECT_EQ(*parse_duration("7d"), 7 * 24h);
  EXPECT_EQ(*parse_duration("30d"), 30 * 24h);
  EXPECT_EQ(*parse_duration("72h"), 72h);
  EXPECT_EQ(*parse_duration("1h"), 1h);
  EXPECT_EQ(*parse_duration("90s"), 90s);
  EXPECT_EQ(*parse_duration("1h30m"), 90min);
  EXPECT_EQ(*parse_duration("250ms"), 250ms);
  EXPECT_EQ(*parse_duration("2w"), 14 * 24h);
  EXPECT_EQ(*parse_duration("0s"), 0ms);
}

TEST(Duration, RejectsGarbage) {
  for (const char* bad : {"", "7", "-5d", "+5d", "d", "5x", "5 d", "1h 30m", "1.5h", "h1",
                          "99999999999999999999d", "9223372036854775807d"}) {
    auto r = parse_duration(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code(), Errc::kInvalidArgument);
    EXPECT_NE(r.error().message().find("7d"), std::string::npos) << "message shows an example";
  }
}

TEST(Duration, FormatsShortestExactForm) {
  EXPECT_EQ(format_duration(7 * 24h), "7d");
  EXPECT_EQ(format_duration(90min), "1h30m");
  EXPECT_EQ(format_duration(90s), "1m30s");
  EXPECT_EQ(format_duration(1500ms), "1s500ms");
  EXPECT_EQ(format_duration(0ms), "0s");
  EXPECT_EQ(format_duration(-2h), "-2h");
}

TEST(Time, FormatsRfc3339Utc) {
  EXPECT_EQ(format_time(from_unix(0)), "1970-01-01T00:00:00Z");
  EXPECT_EQ(format_time(from_unix(1798675200)), "2026-12-31T00:00:00Z");
  EXPECT_EQ(format_time(std::optional<SysTime>()), "-");
}

TEST(Time, ParsesRfc3339UnixAndRelative) {
  const SysTime now = from_unix(1'800'000'000);
  EXPECT_EQ(to_unix(*parse_time("2026-12-31T00:00:00Z", now)), 1798675200);
  EXPECT_EQ(to_unix(*parse_time("2026-12-31T02:00:00+02:00", now)), 1798675200);
  EXPECT_EQ(to_unix(*parse_time("2026-12-30T22:30:00-01:30", now)), 1798675200);
  EXPECT_EQ(to_unix(*parse_time("2026-12-31T00:00:00.123Z", now)), 1798675200);
  EXPECT_EQ(to_unix(*parse_time("@1798675200", now)), 1798675200);
  EXPECT_EQ(*parse_time("+60d", now), now + 60 * 24h);
  auto t = from_unix(1798675200);
  EXPECT_EQ(*parse_time(format_time(t), now), t);
}

TEST(Time, RejectsBadTimes) {
  const SysTime now = from_unix(0);
  for (const char* bad : {"", "2026-12-31", "2026-12-31T00:00:00", "2026-13-01T00:00:00Z",
                          "2026-02-30T00:00:00Z", "2026-12-31T24:00:00Z", "@", "@12x", "+", "+5",
                          "tomorrow", "2026-12-31T00:00:00Zjunk", "2026-12-31T00:00:00+2"}) {
    auto r = parse_time(bad, now);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code(), Errc::kInvalidArgument);
  }
}

}  // namespace
}  // namespace tw
