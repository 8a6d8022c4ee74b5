// libFuzzer target: the YAML config parser. Any input either parses into a Config or fails with
// one line naming the source ("fuzz.yaml:<line>: ..."); it never crashes, hangs or leaks.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = tw::parse_config(text, "fuzz.yaml");
  if (!config) {
    const std::string& m = config.error().message();
    // The contract: one line, naming the source.
    if (!m.starts_with("fuzz.yaml") || m.find('\n') != std::string::npos) std::abort();
  }
  return 0;
}
