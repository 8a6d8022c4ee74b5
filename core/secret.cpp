#include "core/secret.h"

#include <openssl/crypto.h>

namespace tw {

namespace {
void cleanse(std::vector<char>& v) {
  if (!v.empty()) OPENSSL_cleanse(v.data(), v.size());
  v.clear();
}
}  // namespace

Secret::Secret(std::string_view plaintext) : bytes_(plaintext.begin(), plaintext.end()) {}

Secret Secret::take(std::string& plaintext) {
  Secret s(plaintext);
  wipe(plaintext);
  return s;
}

Secret::Secret(const Secret& other) : bytes_(other.bytes_) {}

Secret& Secret::operator=(const Secret& other) {
  if (this != &other) {
    cleanse(bytes_);
    bytes_ = other.bytes_;
  }
  return *this;
}

Secret::Secret(Secret&& other) noexcept : bytes_(std::move(other.bytes_)) {
  other.bytes_.clear();
}

Secret& Secret::operator=(Secret&& other) noexcept {
  if (this != &other) {
    cleanse(bytes_);
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

Secret::~Secret() {
  cleanse(bytes_);
}

void Secret::clear() {
  cleanse(bytes_);
}

bool operator==(const Secret& a, const Secret& b) {
  if (a.bytes_.size() != b.bytes_.size()) return false;
  if (a.bytes_.empty()) return true;
  return CRYPTO_memcmp(a.bytes_.data(), b.bytes_.data(), a.bytes_.size()) == 0;
}

void wipe(std::string& s) {
  // Wipe the whole capacity: a shorter string may have left old bytes past size().
  if (s.capacity() > 0) {
    s.resize(s.capacity());
    OPENSSL_cleanse(s.data(), s.size());
  }
  s.clear();
}

}  // namespace tw
