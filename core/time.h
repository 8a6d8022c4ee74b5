// Times and durations as tokenwarden reads and writes them.
//
// Thread-safety: pure functions.
// Token times are whole seconds since the Unix epoch (UTC): that is what providers send, what the
// database stores and what an operator reads. Durations in config are written `7d`, `72h`, `90s`,
// `1h30m`, `500ms`; times on the command line are RFC 3339 UTC (`2026-12-31T00:00:00Z`) or
// relative to now (`+60d`).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/result.h"

namespace tw {

using SysTime = std::chrono::sys_seconds;
using Seconds = std::chrono::seconds;
using Millis = std::chrono::milliseconds;

inline std::int64_t to_unix(SysTime t) {
  return t.time_since_epoch().count();
}
inline SysTime from_unix(std::int64_t s) {
  return SysTime{Seconds{s}};
}

// Parses one or more <integer><unit> parts, units ms, s, m, h, d, w: "7d", "1h30m", "250ms".
// Fails on an empty string, a missing unit, a sign, or an overflow.
Result<Millis> parse_duration(std::string_view text);

// The shortest exact form: 604800s -> "7d", 5400s -> "1h30m", 0 -> "0s".
std::string format_duration(Millis d);

// RFC 3339 in UTC with a `Z`: "2026-11-25T12:00:00Z".
std::string format_time(SysTime t);
// format_time, or "-" when absent: for tables.
std::string format_time(const std::optional<SysTime>& t);

// Accepts RFC 3339 (`Z` or a numeric offset, optional fractional seconds which are dropped),
// `@<unix seconds>`, or `+<duration>` relative to `now`.
Result<SysTime> parse_time(std::string_view text, SysTime now);

}  // namespace tw
