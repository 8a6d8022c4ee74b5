#include "storage/crypto.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <system_error>
#include <utility>

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fs.h"
#include "core/text.h"

namespace tw {

namespace {

constexpr std::uint8_t kVersion = 1;
constexpr std::size_t kKeyIdSize = std::tuple_size_v<KeyId>;
constexpr std::size_t kNonceSize = 12;
constexpr std::size_t kTagSize = 16;
constexpr std::size_t kHeaderSize = 1 + kKeyIdSize + kNonceSize;  // version, key id, nonce
constexpr std::size_t kMinEnvelope = kHeaderSize + kTagSize;      // an empty plaintext
constexpr std::string_view kKeyIdLabel = "tokenwarden key id v1";
constexpr std::string_view kAadLabel = "tokenwarden/v1";
// Largest key file worth reading: 64 hex digits and "\r\n" is 66 bytes.
constexpr std::size_t kMaxKeyFileRead = 200;

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

Error corrupt(std::string_view token_id, std::string_view field, std::string_view why) {
  return Error(Errc::kCorrupt, "cannot decrypt " + one_line(field) + " of token " +
                                   one_line(token_id) + ": " + std::string(why));
}

Error openssl_failure(std::string_view what) {
  return Error(Errc::kInternal, "OpenSSL failed while " + std::string(what));
}

// "tokenwarden/v1" NUL token_id NUL field version key_id: binds an envelope to its row and field.
std::string associated_data(std::string_view token_id, std::string_view field,
                            const KeyId& key_id) {
  std::string aad;
  aad.reserve(kAadLabel.size() + token_id.size() + field.size() + 2 + 1 + kKeyIdSize);
  aad += kAadLabel;
  aad += '\0';
  aad += token_id;
  aad += '\0';
  aad += field;
  aad += static_cast<char>(kVersion);
  aad.append(reinterpret_cast<const char*>(key_id.data()), key_id.size());
  return aad;
}

// Parses a key file's contents; `content` is wiped by the caller.
Result<Key> parse_key_file(const std::string& path, std::span<const std::uint8_t> content) {
  if (content.size() == Key::kSize) return Key::from_bytes(content);

  std::size_t digits = content.size();
  if (digits == 2 * Key::kSize + 1 && content[digits - 1] == '\n') {
    digits -= 1;
  } else if (digits == 2 * Key::kSize + 2 && content[digits - 2] == '\r' &&
             content[digits - 1] == '\n') {
    digits -= 2;
  }
  if (digits == 2 * Key::kSize) {
    std::array<std::uint8_t, Key::kSize> raw{};
    bool valid = true;
    for (std::size_t i = 0; i < Key::kSize; ++i) {
      int hi = hex_value(static_cast<char>(content[2 * i]));
      int lo = hex_value(static_cast<char>(content[2 * i + 1]));
      valid = valid && hi >= 0 && lo >= 0;
      raw[i] = static_cast<std::uint8_t>(((hi & 0x0f) << 4) | (lo & 0x0f));
    }
    Result<Key> key = valid
                          ? Key::from_bytes(raw)
                          : Result<Key>(Error(Errc::kInvalidArgument,
                                              "key file " + path +
                                                  " has 64 characters but they are not all hex "
                                                  "digits: expected exactly 32 raw bytes or 64 "
                                                  "hex digits with an optional trailing newline"));
    OPENSSL_cleanse(raw.data(), raw.size());
    return key;
  }
  std::string size = content.size() >= kMaxKeyFileRead
                         ? "at least " + std::to_string(content.size())
                         : std::to_string(content.size());
  return Error(Errc::kInvalidArgument, "key file " + path + " holds " + size +
                                           " bytes: expected exactly 32 raw bytes or 64 hex "
                                           "digits with an optional trailing newline");
}

}  // namespace

// --- Key ----------------------------------------------------------------------------------------

Result<Key> Key::from_bytes(std::span<const std::uint8_t> bytes) {
  if (bytes.size() != kSize) {
    return Error(Errc::kInvalidArgument,
                 "a key must be 32 bytes, not " + std::to_string(bytes.size()));
  }
  Key key;
  std::copy(bytes.begin(), bytes.end(), key.bytes_.begin());

  // id = SHA-256("tokenwarden key id v1" || key)[0..8], without copying the key elsewhere.
  MdCtx md(EVP_MD_CTX_new());
  std::array<std::uint8_t, EVP_MAX_MD_SIZE> digest{};
  unsigned int digest_len = 0;
  bool ok = md != nullptr && EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) == 1 &&
            EVP_DigestUpdate(md.get(), kKeyIdLabel.data(), kKeyIdLabel.size()) == 1 &&
            EVP_DigestUpdate(md.get(), key.bytes_.data(), key.bytes_.size()) == 1 &&
            EVP_DigestFinal_ex(md.get(), digest.data(), &digest_len) == 1 &&
            digest_len >= kKeyIdSize;
  if (ok) std::copy_n(digest.begin(), kKeyIdSize, key.id_.begin());
  OPENSSL_cleanse(digest.data(), digest.size());
  if (!ok) return openssl_failure("computing a key id (SHA-256)");
  return key;
}

Result<Key> Key::generate() {
  std::array<std::uint8_t, kSize> raw{};
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) {
    return openssl_failure("generating a random key (RAND_bytes)");
  }
  Result<Key> key = from_bytes(raw);
  OPENSSL_cleanse(raw.data(), raw.size());
  return key;
}

Key::Key(const Key&) = default;
Key& Key::operator=(const Key&) = default;
Key::~Key() {
  OPENSSL_cleanse(bytes_.data(), bytes_.size());
}

std::string Key::id_hex() const {
  return to_hex(id_);
}

// --- KeyRing ------------------------------------------------------------------------------------

KeyRing::KeyRing(Key current, std::vector<Key> previous)
    : current_(std::move(current)), previous_(std::move(previous)) {}

const Key* KeyRing::find(const KeyId& id) const {
  if (current_.id() == id) return &current_;
  for (const Key& k : previous_) {
    if (k.id() == id) return &k;
  }
  return nullptr;
}

// --- Cipher -------------------------------------------------------------------------------------

Cipher::Cipher(KeyRing keys) : keys_(std::move(keys)) {}

Result<Blob> Cipher::seal(const Secret& plaintext, std::string_view token_id,
                          std::string_view field) const {
  const Key& key = keys_.current();
  const std::string_view pt = plaintext.reveal();
  if (pt.size() > static_cast<std::size_t>(INT_MAX) - kTagSize) {
    return Error(Errc::kInvalidArgument, "cannot encrypt " + one_line(field) + " of token " +
                                             one_line(token_id) + ": the secret is too large");
  }

  Blob out(kHeaderSize + pt.size() + kTagSize);
  out[0] = kVersion;
  std::copy(key.id().begin(), key.id().end(), out.begin() + 1);
  std::uint8_t* nonce = out.data() + 1 + kKeyIdSize;
  if (RAND_bytes(nonce, static_cast<int>(kNonceSize)) != 1) {
    return openssl_failure("generating a nonce (RAND_bytes)");
  }
  const std::string aad = associated_data(token_id, field, key.id());

  CipherCtx ctx(EVP_CIPHER_CTX_new());
  std::uint8_t* ct = out.data() + kHeaderSize;
  int len = 0;
  bool ok = ctx != nullptr &&
            EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(kNonceSize),
                                nullptr) == 1 &&
            EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce) == 1 &&
            EVP_EncryptUpdate(ctx.get(), nullptr, &len,
                              reinterpret_cast<const unsigned char*>(aad.data()),
                              static_cast<int>(aad.size())) == 1;
  int written = 0;
  if (ok && !pt.empty()) {
    ok = EVP_EncryptUpdate(ctx.get(), ct, &len, reinterpret_cast<const unsigned char*>(pt.data()),
                           static_cast<int>(pt.size())) == 1;
    written = len;
  }
  ok = ok && EVP_EncryptFinal_ex(ctx.get(), ct + written, &len) == 1;
  written += ok ? len : 0;
  ok = ok && static_cast<std::size_t>(written) == pt.size() &&
       EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagSize),
                           ct + pt.size()) == 1;
  if (!ok) return openssl_failure("encrypting (AES-256-GCM)");
  return out;
}

Result<Secret> Cipher::open(std::span<const std::uint8_t> blob, std::string_view token_id,
                            std::string_view field) const {
  if (blob.size() < kMinEnvelope) {
    return corrupt(token_id, field,
                   "the stored value is too short to be an encrypted envelope (" +
                       std::to_string(blob.size()) + " bytes, at least " +
                       std::to_string(kMinEnvelope) + " expected)");
  }
  if (blob.size() - kMinEnvelope > static_cast<std::size_t>(INT_MAX)) {
    return corrupt(token_id, field, "the stored value is too large");
  }
  if (blob[0] != kVersion) {
    return corrupt(token_id, field,
                   "unknown envelope version " + std::to_string(blob[0]) + " (expected 1)");
  }
  KeyId id{};
  std::copy_n(blob.begin() + 1, kKeyIdSize, id.begin());
  const Key* key = keys_.find(id);
  if (key == nullptr) {
    return corrupt(token_id, field,
                   "sealed with unknown key id " + to_hex(id) +
                       " (is the key that sealed it missing from key.previous_files?)");
  }

  const std::uint8_t* nonce = blob.data() + 1 + kKeyIdSize;
  const std::uint8_t* ct = blob.data() + kHeaderSize;
  const std::size_t ct_size = blob.size() - kMinEnvelope;
  // GCM tag verification is done by EVP_CIPHER_CTX_ctrl/SET_TAG + DecryptFinal; the API wants a
  // mutable pointer, so copy the tag out.
  std::array<std::uint8_t, kTagSize> tag{};
  std::copy_n(ct + ct_size, kTagSize, tag.begin());
  const std::string aad = associated_data(token_id, field, id);

  // Decrypted bytes land here before the tag is checked: wiped on every path.
  std::string pt(ct_size, '\0');
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  bool setup = ctx != nullptr &&
               EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
               EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(kNonceSize),
                                   nullptr) == 1 &&
               EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key->data(), nonce) == 1 &&
               EVP_DecryptUpdate(ctx.get(), nullptr, &len,
                                 reinterpret_cast<const unsigned char*>(aad.data()),
                                 static_cast<int>(aad.size())) == 1;
  if (!setup) {
    wipe(pt);
    return openssl_failure("setting up decryption (AES-256-GCM)");
  }
  int written = 0;
  bool ok = true;
  if (ct_size > 0) {
    ok = EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(pt.data()), &len, ct,
                           static_cast<int>(ct_size)) == 1;
    written = len;
  }
  ok = ok &&
       EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagSize),
                           tag.data()) == 1 &&
       EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(pt.data()) + written,
                           &len) == 1;
  written += ok ? len : 0;
  if (!ok || static_cast<std::size_t>(written) != ct_size) {
    wipe(pt);
    return corrupt(token_id, field,
                   "authentication failed (wrong key, tampered data, or sealed for another "
                   "token/field)");
  }
  return Secret::take(pt);  // wipes pt
}

bool Cipher::sealed_with_old_key(std::span<const std::uint8_t> blob) const {
  if (blob.size() < 1 + kKeyIdSize) return false;
  const KeyId& current = keys_.current().id();
  return !std::equal(current.begin(), current.end(), blob.begin() + 1);
}

// --- key files ----------------------------------------------------------------------------------

Result<Key> load_key_file(const std::string& path) {
  // O_NONBLOCK: a FIFO put where the key should be must not hang the daemon; it is refused below.
  // Symlinks are followed on purpose (systemd credentials may be links).
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return Error(Errc::kNotFound, "key file " + path + " does not exist");
    }
    Errc code = (err == EACCES || err == EPERM) ? Errc::kPermission : Errc::kIo;
    return Error(code, "cannot open key file " + path + ": " + errno_text(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Error(Errc::kIo, "cannot stat key file " + path + ": " + errno_text(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return Error(Errc::kInvalidArgument, "key file " + path + " is not a regular file");
  }
  if (auto st_mode = require_private_mode("key file", path, st.st_mode); !st_mode) {
    return st_mode.error();
  }

  std::array<std::uint8_t, kMaxKeyFileRead> buf{};
  std::size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd.get(), buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      OPENSSL_cleanse(buf.data(), buf.size());
      return Error(Errc::kIo, "cannot read key file " + path + ": " + errno_text(err));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  Result<Key> key = parse_key_file(path, std::span<const std::uint8_t>(buf.data(), got));
  OPENSSL_cleanse(buf.data(), buf.size());
  return key;
}

Result<KeyRing> load_key_ring(const std::string& key_file,
                              const std::vector<std::string>& previous_files,
                              const std::string& credentials_directory) {
  std::string current_path = key_file;
  if (!credentials_directory.empty()) {
    std::string credential = credentials_directory + "/tokenwarden.key";
    struct stat st {};
    // Anything there but "nothing" (even an unreadable file) is used, so its error is reported.
    if (::stat(credential.c_str(), &st) == 0 || (errno != ENOENT && errno != ENOTDIR)) {
      current_path = std::move(credential);
    }
  }
  if (current_path.empty()) {
    return Error(Errc::kNotFound, credentials_directory.empty()
                                      ? std::string("no key file is configured (key.file)")
                                      : "no key file is configured (key.file) and " +
                                            credentials_directory + " has no tokenwarden.key");
  }

  std::vector<std::string> paths{current_path};
  paths.insert(paths.end(), previous_files.begin(), previous_files.end());
  std::vector<Key> keys;
  keys.reserve(paths.size());
  for (std::size_t i = 0; i < paths.size(); ++i) {
    auto key = load_key_file(paths[i]);
    if (!key) return key.error();
    for (std::size_t j = 0; j < keys.size(); ++j) {
      if (keys[j].id() == key->id()) {
        return Error(Errc::kInvalidArgument,
                     "key file " + paths[i] + " is the same key as " + paths[j] + " (key id " +
                         key->id_hex() + "); list each retired key once and never the current one");
      }
    }
    keys.push_back(std::move(*key));
  }
  Key current = keys.front();
  keys.erase(keys.begin());
  return KeyRing(std::move(current), std::move(keys));
}

Result<std::string> write_new_key_file(const std::string& path) {
  // Generate first, so a CSPRNG failure leaves nothing behind.
  auto key = Key::generate();
  if (!key) return key.error();

  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (fd.get() < 0) {
    int err = errno;
    if (err == EEXIST) {
      return Error(Errc::kAlreadyExists, "refusing to overwrite existing file " + path);
    }
    Errc code = (err == EACCES || err == EPERM) ? Errc::kPermission
                : err == ENOENT                 ? Errc::kNotFound
                                                : Errc::kIo;
    return Error(code, "cannot create key file " + path + ": " + errno_text(err));
  }
  // From here on, any failure removes the file we created.
  auto fail = [&](std::string what, int err) -> Error {
    if (fd.get() >= 0) fd.close();
    ::unlink(path.c_str());
    return Error(Errc::kIo, what + " key file " + path + ": " + errno_text(err));
  };

  if (::fchmod(fd.get(), 0600) != 0) return fail("cannot set mode 0600 on", errno);
  const std::uint8_t* p = key->data();
  std::size_t left = Key::kSize;
  while (left > 0) {
    ssize_t n = ::write(fd.get(), p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("cannot write", n < 0 ? errno : EIO);
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("cannot fsync", errno);
  if (fd.close() != 0) return fail("cannot close", errno);

  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) parent = ".";
  UniqueFd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0 || ::fsync(dir.get()) != 0) {
    return fail("cannot fsync the directory of", errno);
  }
  return key->id_hex();
}

}  // namespace tw
