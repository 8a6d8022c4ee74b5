// Encryption of stored secrets: AES-256-GCM with OpenSSL EVP, and the key files it uses.
//
// Thread-safety: Key, KeyRing and Cipher are immutable after construction; a const Cipher may be
// used from several threads at once.
//
// Envelope (one BLOB per secret field):
//   byte 0       format version, 1
//   bytes 1..8   key id: the first 8 bytes of SHA-256("tokenwarden key id v1" || key)
//   bytes 9..20  nonce: 96 fresh random bits per seal
//   then         ciphertext (as long as the plaintext), then the 16-byte GCM tag
// Associated data: "tokenwarden/v1" NUL token_id NUL field, plus the version byte and key id, so
// a ciphertext copied to another row or another field fails to open.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"
#include "core/secret.h"

namespace tw {

using KeyId = std::array<std::uint8_t, 8>;
using Blob = std::vector<std::uint8_t>;

// A 256-bit key. Its bytes are wiped when it is destroyed.
class Key {
 public:
  static constexpr std::size_t kSize = 32;
  // Fails unless `bytes` is exactly 32 bytes.
  static Result<Key> from_bytes(std::span<const std::uint8_t> bytes);
  // 32 bytes from OpenSSL's CSPRNG.
  static Result<Key> generate();

  Key(const Key&);
  Key& operator=(const Key&);
  ~Key();

  const KeyId& id() const { return id_; }
  std::string id_hex() const;  // 16 hex digits, safe to print
  const std::uint8_t* data() const { return bytes_.data(); }

 private:
  Key() = default;
  std::array<std::uint8_t, kSize> bytes_{};
  KeyId id_{};
};

// The current key, used to seal, and retired keys that may still open old envelopes.
class KeyRing {
 public:
  explicit KeyRing(Key current, std::vector<Key> previous = {});
  const Key& current() const { return current_; }
  const std::vector<Key>& previous() const { return previous_; }
  // The key with this id, or nullptr.
  const Key* find(const KeyId& id) const;

 private:
  Key current_;
  std::vector<Key> previous_;
};

class Cipher {
 public:
  explicit Cipher(KeyRing keys);

  // Encrypts `plaintext` with the current key for (token_id, field). Fails only if OpenSSL does.
  Result<Blob> seal(const Secret& plaintext, std::string_view token_id,
                    std::string_view field) const;
  // Decrypts an envelope sealed for (token_id, field). Fails with Errc::kCorrupt, naming the
  // token and field (never the contents), on a truncated or unknown-version envelope, an unknown
  // key id, a wrong key, tampering, or an envelope sealed for another token or field.
  Result<Secret> open(std::span<const std::uint8_t> blob, std::string_view token_id,
                      std::string_view field) const;
  // True when `blob` was sealed with a key other than the current one (rotation pending).
  bool sealed_with_old_key(std::span<const std::uint8_t> blob) const;

  const KeyRing& keys() const { return keys_; }

 private:
  KeyRing keys_;
};

// Reads a key file: exactly 32 raw bytes, or 64 hex digits with an optional trailing newline.
// Refuses (Errc::kPermission) a file that group or others may read or write, and names the file
// and the mode; fails with Errc::kNotFound / kIo / kInvalidArgument otherwise.
Result<Key> load_key_file(const std::string& path);

// The key ring the daemon and CLI use: the current key from
// $CREDENTIALS_DIRECTORY/tokenwarden.key when `credentials_directory` is non-empty and that file
// exists, else from `key_file`; plus every file in `previous_files`.
Result<KeyRing> load_key_ring(const std::string& key_file,
                              const std::vector<std::string>& previous_files,
                              const std::string& credentials_directory);

// Writes a new random key (32 raw bytes) to `path` with mode 0600, created exclusively
// (Errc::kAlreadyExists if anything is there), fsynced, as is its directory. Returns its id.
Result<std::string> write_new_key_file(const std::string& path);

}  // namespace tw
