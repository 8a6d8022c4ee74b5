// Secret: a plaintext credential that cannot reach a log by accident.
//
// Thread-safety: a value type; distinct objects may be used from different threads.
// A Secret owns one heap buffer and wipes it (OPENSSL_cleanse) on destruction, on assignment and
// when moved from. It has no operator<< and no fmt formatter, so streaming it or passing it to
// spdlog fails to compile. The only way to the bytes is reveal(), which is easy to grep for.
#pragma once

#include <cstddef>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

namespace tw {

class Secret {
 public:
  Secret() = default;
  // Copies `plaintext`; the caller remains responsible for wiping its own copy.
  explicit Secret(std::string_view plaintext);
  // Takes the bytes of `plaintext` and wipes the string it came from.
  static Secret take(std::string& plaintext);

  Secret(const Secret& other);
  Secret& operator=(const Secret& other);
  Secret(Secret&& other) noexcept;
  Secret& operator=(Secret&& other) noexcept;
  ~Secret();

  // The plaintext. Valid until this Secret is changed or destroyed. Never log it.
  std::string_view reveal() const { return {bytes_.data(), bytes_.size()}; }
  bool empty() const { return bytes_.empty(); }
  std::size_t size() const { return bytes_.size(); }
  // Wipes and empties.
  void clear();

  // Constant-time comparison of the contents (lengths may leak).
  friend bool operator==(const Secret& a, const Secret& b);

  // Deliberately not printable.
  friend std::ostream& operator<<(std::ostream&, const Secret&) = delete;

 private:
  std::vector<char> bytes_;
};

// Wipes a plain string in place (for buffers that held plaintext before it became a Secret).
void wipe(std::string& s);

}  // namespace tw
