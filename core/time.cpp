#include "core/time.h"

#include <array>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <limits>

namespace tw {

namespace {

struct Unit {
  std::string_view name;
  std::int64_t ms;
};
// Longest names first so "ms" is not read as "m" followed by garbage.
constexpr std::array<Unit, 6> kUnits{{{"ms", 1},
                                      {"s", 1000},
                                      {"m", 60'000},
                                      {"h", 3'600'000},
                                      {"d", 86'400'000},
                                      {"w", 604'800'000}}};

Error bad_duration(std::string_view text, std::string_view why) {
  return Error(Errc::kInvalidArgument, "bad duration \"" + std::string(text) +
                                           "\": " + std::string(why) +
                                           " (write e.g. 7d, 72h, 30m, 90s, 1h30m, 500ms)");
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// Reads `n` digits at `pos` as a number; false on a non-digit.
bool read_fixed(std::string_view s, std::size_t pos, std::size_t n, int& out) {
  if (pos + n > s.size()) return false;
  out = 0;
  for (std::size_t i = pos; i < pos + n; ++i) {
    if (!is_digit(s[i])) return false;
    out = out * 10 + (s[i] - '0');
  }
  return true;
}

Result<SysTime> parse_time_unchecked(std::string_view text, SysTime now);

Error bad_time(std::string_view text) {
  return Error(
      Errc::kInvalidArgument,
      "bad time \"" + std::string(text) +
          "\": write RFC 3339 UTC like 2026-12-31T00:00:00Z, @<unix seconds> or +<duration>");
}

}  // namespace

Result<Millis> parse_duration(std::string_view text) {
  if (text.empty()) return bad_duration(text, "empty");
  std::int64_t total = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    if (!is_digit(text[i])) return bad_duration(text, "expected a number");
    std::int64_t n = 0;
    auto [end, ec] = std::from_chars(text.data() + i, text.data() + text.size(), n);
    if (ec != std::errc()) return bad_duration(text, "number too large");
    i = static_cast<std::size_t>(end - text.data());
    const Unit* unit = nullptr;
    for (const Unit& u : kUnits) {
      if (text.substr(i, u.name.size()) == u.name) {
        unit = &u;
        break;
      }
    }
    if (unit == nullptr) return bad_duration(text, "missing or unknown unit");
    i += unit->name.size();
    constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
    if (n > (kMax - total) / unit->ms) return bad_duration(text, "too large");
    total += n * unit->ms;
  }
  return Millis{total};
}

std::string format_duration(Millis d) {
  std::int64_t ms = d.count();
  if (ms == 0) return "0s";
  std::string out;
  if (ms < 0) {
    out = "-";
    ms = -ms;
  }
  // Weeks are not used in output: "14d" reads better than "2w".
  static constexpr std::array<Unit, 5> kOut{
      {{"d", 86'400'000}, {"h", 3'600'000}, {"m", 60'000}, {"s", 1000}, {"ms", 1}}};
  for (const Unit& u : kOut) {
    if (ms >= u.ms) {
      out += std::to_string(ms / u.ms);
      out += u.name;
      ms %= u.ms;
    }
  }
  return out;
}

std::string format_time(SysTime t) {
  std::time_t tt = static_cast<std::time_t>(to_unix(t));
  std::tm tm{};
  if (gmtime_r(&tt, &tm) == nullptr) {
    std::string out = "@";
    out += std::to_string(to_unix(t));
    return out;
  }
  char buf[64];
  (void)std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

std::string format_time(const std::optional<SysTime>& t) {
  return t ? format_time(*t) : "-";
}

Result<SysTime> parse_time(std::string_view text, SysTime now) {
  auto t = parse_time_unchecked(text, now);
  if (!t) return t;
  // Times must print as RFC 3339 (rule 11) and leave room for arithmetic.
  constexpr std::int64_t kLatest = 253402300799;  // 9999-12-31T23:59:59Z
  if (to_unix(*t) < 0 || to_unix(*t) > kLatest) {
    return Error(Errc::kInvalidArgument,
                 "time \"" + std::string(text) + "\" is outside 1970-01-01 to 9999-12-31");
  }
  return t;
}

namespace {

Result<SysTime> parse_time_unchecked(std::string_view text, SysTime now) {
  if (text.empty()) return bad_time(text);
  if (text[0] == '+') {
    auto d = parse_duration(text.substr(1));
    if (!d) return d.error();
    return now + std::chrono::duration_cast<Seconds>(*d);
  }
  if (text[0] == '@') {
    std::int64_t s = 0;
    auto body = text.substr(1);
    auto [end, ec] = std::from_chars(body.data(), body.data() + body.size(), s);
    if (ec != std::errc() || end != body.data() + body.size()) return bad_time(text);
    return from_unix(s);
  }
  // YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM|-HH:MM)
  int year, mon, day, hour, min, sec;
  if (!read_fixed(text, 0, 4, year) || text.size() < 19 || text[4] != '-' ||
      !read_fixed(text, 5, 2, mon) || text[7] != '-' || !read_fixed(text, 8, 2, day) ||
      (text[10] != 'T' && text[10] != 't' && text[10] != ' ') || !read_fixed(text, 11, 2, hour) ||
      text[13] != ':' || !read_fixed(text, 14, 2, min) || text[16] != ':' ||
      !read_fixed(text, 17, 2, sec)) {
    return bad_time(text);
  }
  std::size_t i = 19;
  if (i < text.size() && text[i] == '.') {
    ++i;
    if (i >= text.size() || !is_digit(text[i])) return bad_time(text);
    while (i < text.size() && is_digit(text[i]))
      ++i;
  }
  int offset_s = 0;
  if (i < text.size() && (text[i] == 'Z' || text[i] == 'z')) {
    ++i;
  } else if (i < text.size() && (text[i] == '+' || text[i] == '-')) {
    int oh, om;
    if (!read_fixed(text, i + 1, 2, oh) || i + 3 >= text.size() || text[i + 3] != ':' ||
        !read_fixed(text, i + 4, 2, om) || oh > 23 || om > 59) {
      return bad_time(text);
    }
    offset_s = (oh * 3600 + om * 60) * (text[i] == '-' ? -1 : 1);
    i += 6;
  } else {
    return bad_time(text);  // a time without a zone is ambiguous
  }
  if (i != text.size()) return bad_time(text);
  if (mon < 1 || mon > 12 || hour > 23 || min > 59 || sec > 60) return bad_time(text);
  using namespace std::chrono;
  year_month_day ymd{std::chrono::year{year}, month{static_cast<unsigned>(mon)},
                     std::chrono::day{static_cast<unsigned>(day)}};
  if (!ymd.ok()) return bad_time(text);
  SysTime t = sys_days{ymd} + hours{hour} + minutes{min} + Seconds{sec};
  return t - Seconds{offset_s};
}

}  // namespace

}  // namespace tw
