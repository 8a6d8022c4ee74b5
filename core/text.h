// Small text helpers shared by messages, logs and the status line.
#pragma once

#include <string>
#include <string_view>

namespace tw {

// `s` with every control character escaped (\n, \t, \xHH), so that a value taken from a file, a
// database or a provider's reply cannot break a message or a log record into two lines.
std::string one_line(std::string_view s);

// The value of one hex digit (either case), or -1 when `c` is not one.
int hex_value(char c);

}  // namespace tw
