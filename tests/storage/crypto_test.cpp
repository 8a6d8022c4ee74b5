#include "storage/crypto.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/test_util.h"

namespace tw {
namespace {

using tw::testing::read_file;
using tw::testing::TempDir;
using tw::testing::write_file;

constexpr std::string_view kToken = "tok_0123456789abcdef";
constexpr std::string_view kField = "refresh_token";

// Envelope layout, restated here so the test pins the documented format.
constexpr std::size_t kKeyIdOffset = 1;
constexpr std::size_t kNonceOffset = 9;
constexpr std::size_t kCiphertextOffset = 21;
constexpr std::size_t kTagSize = 16;
constexpr std::size_t kOverhead = kCiphertextOffset + kTagSize;  // 37

std::vector<std::uint8_t> pattern_bytes(std::size_t n, std::uint8_t seed) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::uint8_t>(seed + 7 * i);
  return v;
}

// The value of a Result that must be ok, taken through an lvalue (see the note on
// Result::value() && in the report: it returns a dangling reference in core/result.h today).
template <class T>
T must(Result<T> r) {
  if (!r.ok()) die(r.error().message());
  return r.value();
}

Key make_key(std::uint8_t seed) {
  return must(Key::from_bytes(pattern_bytes(Key::kSize, seed)));
}

std::string to_hex(std::span<const std::uint8_t> bytes, bool upper = false) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  for (std::uint8_t b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 0x0f];
  }
  return out;
}

std::string as_string(std::span<const std::uint8_t> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

bool contains(std::span<const std::uint8_t> hay, std::string_view needle) {
  std::string h = as_string(hay);
  return h.find(needle) != std::string::npos;
}

// An independent AES-256-GCM decryption with the associated data exactly as crypto.h documents it.
std::optional<std::string> reference_open(const std::vector<std::uint8_t>& key, const Blob& blob,
                                          std::string_view token_id, std::string_view field) {
  if (blob.size() < kOverhead) return std::nullopt;
  std::string aad = "tokenwarden/v1";
  aad += '\0';
  aad += token_id;
  aad += '\0';
  aad += field;
  aad.append(reinterpret_cast<const char*>(blob.data()), 1 + 8);  // version byte and key id
  const std::size_t n = blob.size() - kOverhead;
  std::vector<std::uint8_t> tag(blob.end() - kTagSize, blob.end());
  std::string out(n, '\0');
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int len = 0;
  bool ok =
      EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), blob.data() + kNonceOffset) ==
          1 &&
      EVP_DecryptUpdate(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) == 1;
  if (ok && n > 0) {
    ok = EVP_DecryptUpdate(ctx, reinterpret_cast<unsigned char*>(out.data()), &len,
                           blob.data() + kCiphertextOffset, static_cast<int>(n)) == 1;
  }
  ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag.data()) == 1 &&
       EVP_DecryptFinal_ex(ctx, reinterpret_cast<unsigned char*>(out.data()) + n, &len) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) return std::nullopt;
  return out;
}

void write_key_file(const std::string& path, const std::string& content, mode_t mode = 0600) {
  write_file(path, content);
  ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path;
}

mode_t file_mode(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return static_cast<mode_t>(-1);
  return st.st_mode & 07777;
}

// --- Key ----------------------------------------------------------------------------------------

TEST(Key, FromBytesAcceptsOnly32Bytes) {
  EXPECT_TRUE(Key::from_bytes(pattern_bytes(32, 1)).ok());
  for (std::size_t n : {0u, 1u, 16u, 31u, 33u, 64u}) {
    auto k = Key::from_bytes(pattern_bytes(n, 1));
    ASSERT_FALSE(k.ok()) << n;
    EXPECT_EQ(k.error().code(), Errc::kInvalidArgument) << n;
  }
}

TEST(Key, IdIsTheDocumentedSha256Prefix) {
  auto bytes = pattern_bytes(32, 3);
  std::string input = "tokenwarden key id v1" + as_string(bytes);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  ASSERT_EQ(EVP_Digest(input.data(), input.size(), digest, &len, EVP_sha256(), nullptr), 1);
  Key key = make_key(3);
  EXPECT_TRUE(std::equal(key.id().begin(), key.id().end(), digest));
  EXPECT_EQ(key.id_hex(), to_hex(std::span<const std::uint8_t>(digest, 8)));
}

TEST(Key, IdHexIsSixteenLowercaseHexDigits) {
  for (int i = 0; i < 20; ++i) {
    Key key = must(Key::generate());
    std::string h = key.id_hex();
    ASSERT_EQ(h.size(), 16u);
    EXPECT_TRUE(std::all_of(h.begin(), h.end(), [](char c) {
      return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    })) << h;
  }
}

TEST(Key, GenerateGivesDistinctKeys) {
  Key a = must(Key::generate());
  Key b = must(Key::generate());
  EXPECT_NE(a.id(), b.id());
  EXPECT_NE(std::memcmp(a.data(), b.data(), Key::kSize), 0);
}

TEST(Key, CopiesKeepBytesAndId) {
  Key a = make_key(5);
  Key b = a;
  EXPECT_EQ(b.id(), a.id());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), Key::kSize), 0);
  Key c = make_key(6);
  c = a;
  EXPECT_EQ(c.id(), a.id());
  EXPECT_EQ(std::memcmp(a.data(), c.data(), Key::kSize), 0);
}

TEST(Key, DestructorWipesTheKeyBytes) {
  auto bytes = pattern_bytes(32, 9);
  alignas(Key) unsigned char storage[sizeof(Key)];
  Key* key = new (storage) Key(must(Key::from_bytes(bytes)));
  ASSERT_TRUE(contains(std::span<const std::uint8_t>(storage, sizeof storage), as_string(bytes)));
  key->~Key();
  EXPECT_FALSE(contains(std::span<const std::uint8_t>(storage, sizeof storage), as_string(bytes)));
}

// --- Cipher -------------------------------------------------------------------------------------

class CipherTest : public ::testing::Test {
 protected:
  Key key_ = make_key(11);
  Cipher cipher_{KeyRing(key_)};

  Blob seal(std::string_view plaintext, std::string_view token = kToken,
            std::string_view field = kField) {
    auto blob = cipher_.seal(Secret(plaintext), token, field);
    EXPECT_TRUE(blob.ok());
    return blob.ok() ? *blob : Blob{};
  }
};

TEST_F(CipherTest, RoundTrips) {
  std::string big(10 * 1024, '\0');
  for (std::size_t i = 0; i < big.size(); ++i)
    big[i] = static_cast<char>((i * 131) % 251);
  const std::string binary("\0\x01\xff\0rt\x80\n\0", 10);
  for (const std::string& plain :
       {std::string("rft.refresh-token-value"), std::string(), big, binary, std::string(1, '\0')}) {
    Blob blob = seal(plain);
    EXPECT_EQ(blob.size(), kOverhead + plain.size());
    auto opened = cipher_.open(blob, kToken, kField);
    ASSERT_TRUE(opened.ok()) << opened.error().message();
    EXPECT_EQ(opened->size(), plain.size());
    EXPECT_TRUE(opened->reveal() == plain);
  }
}

TEST_F(CipherTest, EmptySecretRoundTripsToEmpty) {
  Blob blob = seal("");
  ASSERT_EQ(blob.size(), kOverhead);
  auto opened = cipher_.open(blob, kToken, kField);
  ASSERT_TRUE(opened.ok()) << opened.error().message();
  EXPECT_TRUE(opened->empty());
}

TEST_F(CipherTest, EnvelopeHasTheDocumentedLayout) {
  const std::string plain = "EAAB-access-token";
  Blob blob = seal(plain);
  ASSERT_EQ(blob.size(), kOverhead + plain.size());
  EXPECT_EQ(blob[0], 1);
  EXPECT_TRUE(std::equal(key_.id().begin(), key_.id().end(), blob.begin() + kKeyIdOffset));
  // Decrypting it independently, with the associated data as documented, gives the plaintext.
  auto ref = reference_open(pattern_bytes(32, 11), blob, kToken, kField);
  ASSERT_TRUE(ref.has_value());
  EXPECT_EQ(*ref, plain);
  // ...and the associated data really binds the token and the field.
  EXPECT_FALSE(reference_open(pattern_bytes(32, 11), blob, "tok_other", kField).has_value());
  EXPECT_FALSE(reference_open(pattern_bytes(32, 11), blob, kToken, "access_token").has_value());
}

TEST_F(CipherTest, EverySealUsesAFreshNonce) {
  Blob a = seal("same plaintext");
  Blob b = seal("same plaintext");
  EXPECT_NE(a, b);
  EXPECT_FALSE(std::equal(a.begin() + kNonceOffset, a.begin() + kCiphertextOffset,
                          b.begin() + kNonceOffset));
  Blob e1 = seal("");
  Blob e2 = seal("");
  EXPECT_NE(e1, e2);
}

TEST_F(CipherTest, CiphertextDoesNotContainThePlaintext) {
  const std::string plain = "rft.this-refresh-token-must-not-be-visible";
  Blob blob = seal(plain);
  EXPECT_FALSE(contains(blob, plain));
  EXPECT_FALSE(contains(blob, plain.substr(0, 8)));
}

TEST_F(CipherTest, TamperingAnyByteFailsAsCorrupt) {
  const std::string plain = "rft.secret";
  const Blob blob = seal(plain);
  for (std::size_t i = 0; i < blob.size(); ++i) {
    for (std::uint8_t flip : {0x01, 0x80}) {
      Blob bad = blob;
      bad[i] ^= flip;
      auto opened = cipher_.open(bad, kToken, kField);
      ASSERT_FALSE(opened.ok()) << "byte " << i;
      EXPECT_EQ(opened.error().code(), Errc::kCorrupt) << "byte " << i;
    }
  }
}

TEST_F(CipherTest, TamperingEachRegionGivesItsOwnMessage) {
  const Blob blob = seal("rft.secret");
  auto message_after = [&](std::size_t index) {
    Blob bad = blob;
    bad[index] ^= 0x01;
    auto opened = cipher_.open(bad, kToken, kField);
    EXPECT_FALSE(opened.ok()) << index;
    EXPECT_EQ(opened.ok() ? Errc::kInternal : opened.error().code(), Errc::kCorrupt) << index;
    return opened.ok() ? std::string() : opened.error().message();
  };
  EXPECT_NE(message_after(0).find("version"), std::string::npos);
  EXPECT_NE(message_after(kKeyIdOffset + 3).find("unknown key id"), std::string::npos);
  for (std::size_t index : {kNonceOffset, kNonceOffset + 11, kCiphertextOffset,
                            blob.size() - kTagSize, blob.size() - 1}) {
    EXPECT_NE(message_after(index).find("authentication failed"), std::string::npos) << index;
  }
}

TEST_F(CipherTest, TruncatedEnvelopesFail) {
  const Blob blob = seal("rft.secret");
  for (std::size_t n :
       {std::size_t{0}, std::size_t{1}, std::size_t{20}, std::size_t{36}, blob.size() - 1}) {
    std::span<const std::uint8_t> cut(blob.data(), n);
    auto opened = cipher_.open(cut, kToken, kField);
    ASSERT_FALSE(opened.ok()) << n;
    EXPECT_EQ(opened.error().code(), Errc::kCorrupt) << n;
    if (n < kOverhead) {
      EXPECT_NE(opened.error().message().find("too short"), std::string::npos)
          << opened.error().message();
    }
  }
  // Appending a byte is tampering too.
  Blob longer = blob;
  longer.push_back(0);
  EXPECT_FALSE(cipher_.open(longer, kToken, kField).ok());
}

TEST_F(CipherTest, EnvelopeForAnotherTokenFails) {
  Blob blob = seal("rft.secret", "tok_aaaaaaaaaaaaaaaa", kField);
  auto opened = cipher_.open(blob, "tok_bbbbbbbbbbbbbbbb", kField);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().code(), Errc::kCorrupt);
  EXPECT_TRUE(cipher_.open(blob, "tok_aaaaaaaaaaaaaaaa", kField).ok());
}

TEST_F(CipherTest, EnvelopeForAnotherFieldFails) {
  Blob blob = seal("rft.secret", kToken, "refresh_token");
  auto opened = cipher_.open(blob, kToken, "access_token");
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().code(), Errc::kCorrupt);
  EXPECT_TRUE(cipher_.open(blob, kToken, "refresh_token").ok());
}

TEST_F(CipherTest, TokenAndFieldBoundariesMatter) {
  // Moving a character across the token/field boundary changes the associated data.
  Blob blob = seal("rft.secret", "tok_a", "bfield");
  EXPECT_FALSE(cipher_.open(blob, "tok_ab", "field").ok());
}

TEST_F(CipherTest, WrongKeyFails) {
  Blob blob = seal("rft.secret");
  Key other = make_key(99);
  Cipher stranger{KeyRing(other)};
  auto opened = stranger.open(blob, kToken, kField);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().code(), Errc::kCorrupt);
  // The (safe to print) id of the missing key is named.
  EXPECT_NE(opened.error().message().find(key_.id_hex()), std::string::npos)
      << opened.error().message();
}

TEST_F(CipherTest, KeyIdPointingAtAnotherKeyInTheRingFailsAuthentication) {
  Key old = make_key(12);
  Cipher both{KeyRing(key_, {old})};
  Blob blob = seal("rft.secret");
  std::copy(old.id().begin(), old.id().end(), blob.begin() + kKeyIdOffset);
  auto opened = both.open(blob, kToken, kField);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().code(), Errc::kCorrupt);
  EXPECT_NE(opened.error().message().find("authentication failed"), std::string::npos);
}

TEST_F(CipherTest, OldKeyInTheRingStillOpensAndNewSealsUseTheCurrentKey) {
  Blob old_blob = seal("rft.sealed-before-rotation");
  EXPECT_FALSE(cipher_.sealed_with_old_key(old_blob));

  Key fresh = make_key(42);
  Cipher rotated{KeyRing(fresh, {key_})};
  auto opened = rotated.open(old_blob, kToken, kField);
  ASSERT_TRUE(opened.ok()) << opened.error().message();
  EXPECT_EQ(opened->reveal(), "rft.sealed-before-rotation");
  EXPECT_TRUE(rotated.sealed_with_old_key(old_blob));

  auto resealed = rotated.seal(*opened, kToken, kField);
  ASSERT_TRUE(resealed.ok());
  EXPECT_TRUE(std::equal(fresh.id().begin(), fresh.id().end(), resealed->begin() + kKeyIdOffset));
  EXPECT_FALSE(rotated.sealed_with_old_key(*resealed));
  // The old ring cannot open what the new key sealed.
  EXPECT_FALSE(cipher_.open(*resealed, kToken, kField).ok());
}

TEST_F(CipherTest, SealedWithOldKeyNeedsAKeyId) {
  Blob blob = seal("x");
  EXPECT_FALSE(cipher_.sealed_with_old_key({}));
  // Exactly-sized copies, so reading past the end would be caught (by ASan, or as garbage).
  for (std::size_t n = 1; n < 9; ++n) {
    Blob head(blob.begin(), blob.begin() + static_cast<std::ptrdiff_t>(n));
    head[0] ^= 0xff;  // so the head is not accidentally the current key's id either
    EXPECT_FALSE(cipher_.sealed_with_old_key(head)) << n;
  }
  EXPECT_FALSE(cipher_.sealed_with_old_key(Blob(blob.begin(), blob.begin() + 9)));
  Blob other(blob.begin(), blob.begin() + 9);
  other[kKeyIdOffset + 7] ^= 1;
  EXPECT_TRUE(cipher_.sealed_with_old_key(other));
}

TEST_F(CipherTest, ErrorMessagesNameTokenAndFieldButNoSecrets) {
  const std::string plain = "rft.PLAINTEXT-MUST-NOT-LEAK";
  const Blob blob = seal(plain);
  std::vector<Blob> bad;
  bad.emplace_back(blob.begin(), blob.begin() + 20);  // too short
  bad.push_back(blob);
  bad.back()[0] = 2;  // unknown version
  bad.push_back(blob);
  bad.back()[kKeyIdOffset] ^= 1;  // unknown key id
  bad.push_back(blob);
  bad.back()[blob.size() - 1] ^= 1;  // tag
  std::vector<std::string> messages;
  for (const Blob& b : bad) {
    auto opened = cipher_.open(b, kToken, kField);
    ASSERT_FALSE(opened.ok());
    const std::string& m = opened.error().message();
    messages.push_back(m);
    EXPECT_NE(m.find("refresh_token"), std::string::npos) << m;
    EXPECT_NE(m.find(std::string(kToken)), std::string::npos) << m;
    EXPECT_EQ(m.find("PLAINTEXT"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    // No ciphertext, nonce or tag bytes, raw or in hex.
    std::span<const std::uint8_t> body(b.data() + std::min<std::size_t>(b.size(), kNonceOffset),
                                       b.data() + b.size());
    for (std::size_t i = 0; i + 4 <= body.size(); i += 4) {
      EXPECT_EQ(m.find(to_hex(body.subspan(i, 4))), std::string::npos) << m;
    }
  }
  // Each failure says what went wrong in its own words.
  std::sort(messages.begin(), messages.end());
  EXPECT_EQ(std::unique(messages.begin(), messages.end()), messages.end());

  Blob tag_bad = blob;
  tag_bad.back() ^= 1;
  EXPECT_EQ(cipher_.open(tag_bad, kToken, kField).error().message(),
            "cannot decrypt refresh_token of token tok_0123456789abcdef: authentication failed "
            "(wrong key, tampered data, or sealed for another token/field)");
}

TEST_F(CipherTest, AConstCipherIsUsableFromSeveralThreads) {
  const Cipher& shared = cipher_;
  std::vector<std::future<bool>> results;
  for (int t = 0; t < 4; ++t) {
    results.push_back(std::async(std::launch::async, [&shared, t] {
      for (int i = 0; i < 200; ++i) {
        std::string plain = "rft." + std::to_string(t) + "." + std::to_string(i);
        std::string token = "tok_" + std::to_string(t);
        auto blob = shared.seal(Secret(plain), token, kField);
        if (!blob.ok()) return false;
        auto opened = shared.open(*blob, token, kField);
        if (!opened.ok() || opened->reveal() != plain) return false;
      }
      return true;
    }));
  }
  for (auto& r : results)
    EXPECT_TRUE(r.get());
}

// --- key files ----------------------------------------------------------------------------------

class KeyFileTest : public ::testing::Test {
 protected:
  TempDir dir_;
  std::vector<std::uint8_t> raw_ = pattern_bytes(32, 21);
  KeyId expected_id_ = must(Key::from_bytes(raw_)).id();
};

TEST_F(KeyFileTest, Accepts32RawBytes) {
  std::string path = dir_.file("raw.key");
  write_key_file(path, as_string(raw_));
  auto key = load_key_file(path);
  ASSERT_TRUE(key.ok()) << key.error().message();
  EXPECT_EQ(key->id(), expected_id_);
  EXPECT_EQ(std::memcmp(key->data(), raw_.data(), 32), 0);
}

TEST_F(KeyFileTest, AcceptsRawBytesThatLookLikeWhitespace) {
  // A raw key is taken as is, even if it ends with '\n' or contains NULs.
  auto raw = pattern_bytes(32, 0);
  raw[0] = 0;
  raw[31] = '\n';
  std::string path = dir_.file("raw.key");
  write_key_file(path, as_string(raw));
  auto key = load_key_file(path);
  ASSERT_TRUE(key.ok()) << key.error().message();
  EXPECT_EQ(std::memcmp(key->data(), raw.data(), 32), 0);
}

TEST_F(KeyFileTest, Accepts64HexDigitsWithOrWithoutNewline) {
  const std::string lower = to_hex(raw_);
  const std::string upper = to_hex(raw_, /*upper=*/true);
  std::string mixed = lower;
  for (std::size_t i = 0; i < mixed.size(); i += 2)
    mixed[i] = upper[i];
  int n = 0;
  for (const std::string& content :
       {lower, lower + "\n", lower + "\r\n", upper, upper + "\n", mixed}) {
    std::string path = dir_.file("hex" + std::to_string(n++) + ".key");
    write_key_file(path, content);
    auto key = load_key_file(path);
    ASSERT_TRUE(key.ok()) << content << ": " << key.error().message();
    EXPECT_EQ(key->id(), expected_id_) << content;
  }
}

TEST_F(KeyFileTest, RejectsOtherContentWithoutEchoingIt) {
  const std::string hex = to_hex(raw_);
  std::string not_hex = hex;
  not_hex[10] = 'g';
  const std::vector<std::string> bad = {
      std::string(),
      as_string(raw_).substr(0, 31),
      as_string(raw_) + "x",
      as_string(raw_) + "\n",
      hex.substr(0, 63),
      hex.substr(0, 63) + "\n",
      hex + "0",
      hex + "\n\n",
      hex + " ",
      " " + hex,
      hex + "\r",
      not_hex,
      hex + hex,
      std::string(500, 'a'),
  };
  int n = 0;
  for (const std::string& content : bad) {
    std::string path = dir_.file("bad" + std::to_string(n++) + ".key");
    write_key_file(path, content);
    auto key = load_key_file(path);
    ASSERT_FALSE(key.ok()) << "content of " << content.size() << " bytes was accepted";
    EXPECT_EQ(key.error().code(), Errc::kInvalidArgument) << key.error().message();
    const std::string& m = key.error().message();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_NE(m.find("32 raw bytes or 64 hex digits"), std::string::npos) << m;
    EXPECT_EQ(m.find(hex.substr(0, 16)), std::string::npos) << m;
    EXPECT_EQ(m.find("aaaaaaaa"), std::string::npos) << m;
  }
}

TEST_F(KeyFileTest, RefusesFilesGroupOrOthersMayAccess) {
  for (mode_t mode : {0644, 0640, 0604, 0660, 0606, 0620, 0602, 0601, 0610, 0700 | 0004}) {
    std::string path = dir_.file("loose.key");
    ::unlink(path.c_str());
    write_key_file(path, as_string(raw_), mode);
    auto key = load_key_file(path);
    ASSERT_FALSE(key.ok()) << std::oct << mode;
    EXPECT_EQ(key.error().code(), Errc::kPermission) << std::oct << mode;
    char mode_text[8];
    std::snprintf(mode_text, sizeof mode_text, "%04o", static_cast<unsigned>(mode));
    const std::string& m = key.error().message();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_NE(m.find(std::string("mode ") + mode_text), std::string::npos) << m;
    EXPECT_NE(m.find("chmod 600 " + path), std::string::npos) << m;
  }
}

TEST_F(KeyFileTest, TheModeMessageReadsWell) {
  std::string path = dir_.file("y.key");
  write_key_file(path, as_string(raw_), 0644);
  EXPECT_EQ(
      load_key_file(path).error().message(),
      "key file " + path +
          " has mode 0644: it must not be readable or writable by group or others (chmod 600 " +
          path + ")");
}

TEST_F(KeyFileTest, AcceptsOwnerOnlyModes) {
  for (mode_t mode : {0600, 0400, 0700, 0200}) {
    std::string path = dir_.file("tight.key");
    ::unlink(path.c_str());
    write_key_file(path, as_string(raw_), mode);
    auto key = load_key_file(path);
    // Mode 0200 is unreadable for a non-root owner; root reads it anyway.
    if (mode == 0200 && !key.ok()) {
      EXPECT_EQ(key.error().code(), Errc::kPermission);
      continue;
    }
    ASSERT_TRUE(key.ok()) << std::oct << mode << ": " << key.error().message();
    EXPECT_EQ(key->id(), expected_id_);
  }
}

TEST_F(KeyFileTest, MissingFileIsNotFound) {
  std::string path = dir_.file("absent.key");
  auto key = load_key_file(path);
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.error().code(), Errc::kNotFound);
  EXPECT_NE(key.error().message().find(path), std::string::npos);

  auto under_file = load_key_file(dir_.file("absent.key/inner.key"));
  ASSERT_FALSE(under_file.ok());
}

TEST_F(KeyFileTest, RefusesSomethingOtherThanARegularFile) {
  std::string sub = dir_.file("subdir");
  ASSERT_EQ(::mkdir(sub.c_str(), 0700), 0);
  auto key = load_key_file(sub);
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.error().code(), Errc::kInvalidArgument);
  EXPECT_EQ(key.error().message(), "key file " + sub + " is not a regular file");

  // A FIFO must be refused at once, not block waiting for a writer.
  std::string fifo = dir_.file("fifo.key");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto start = std::chrono::steady_clock::now();
  auto from_fifo = load_key_file(fifo);
  ASSERT_FALSE(from_fifo.ok());
  EXPECT_EQ(from_fifo.error().message(), "key file " + fifo + " is not a regular file");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(KeyFileTest, FollowsSymlinksAndChecksTheTargetMode) {
  std::string target = dir_.file("target.key");
  std::string link = dir_.file("link.key");
  write_key_file(target, as_string(raw_), 0600);
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  auto key = load_key_file(link);
  ASSERT_TRUE(key.ok()) << key.error().message();
  EXPECT_EQ(key->id(), expected_id_);

  ASSERT_EQ(::chmod(target.c_str(), 0644), 0);
  auto loose = load_key_file(link);
  ASSERT_FALSE(loose.ok());
  EXPECT_EQ(loose.error().code(), Errc::kPermission);
}

// --- key ring -----------------------------------------------------------------------------------

class KeyRingTest : public ::testing::Test {
 protected:
  TempDir dir_;
  TempDir credentials_;

  std::string key_at(const std::string& path, std::uint8_t seed) {
    write_key_file(path, as_string(pattern_bytes(32, seed)));
    return path;
  }
};

TEST_F(KeyRingTest, FindsCurrentAndPreviousKeys) {
  Key a = make_key(1), b = make_key(2), c = make_key(3);
  KeyRing ring(a, {b});
  ASSERT_NE(ring.find(a.id()), nullptr);
  EXPECT_EQ(ring.find(a.id()), &ring.current());
  ASSERT_NE(ring.find(b.id()), nullptr);
  EXPECT_EQ(ring.find(b.id())->id(), b.id());
  EXPECT_EQ(ring.find(c.id()), nullptr);
}

TEST_F(KeyRingTest, PrefersTheCredentialsDirectory) {
  std::string configured = key_at(dir_.file("configured.key"), 1);
  key_at(credentials_.file("tokenwarden.key"), 2);
  auto ring = load_key_ring(configured, {}, credentials_.path());
  ASSERT_TRUE(ring.ok()) << ring.error().message();
  EXPECT_EQ(ring->current().id(), make_key(2).id());
}

TEST_F(KeyRingTest, FallsBackToTheKeyFile) {
  std::string configured = key_at(dir_.file("configured.key"), 1);
  // Credentials directory set, but it holds no tokenwarden.key.
  key_at(credentials_.file("other.key"), 2);
  auto ring = load_key_ring(configured, {}, credentials_.path());
  ASSERT_TRUE(ring.ok()) << ring.error().message();
  EXPECT_EQ(ring->current().id(), make_key(1).id());
  // No credentials directory at all.
  auto plain = load_key_ring(configured, {}, "");
  ASSERT_TRUE(plain.ok()) << plain.error().message();
  EXPECT_EQ(plain->current().id(), make_key(1).id());
  // A credentials directory that does not exist.
  auto gone = load_key_ring(configured, {}, credentials_.file("nope"));
  ASSERT_TRUE(gone.ok()) << gone.error().message();
  EXPECT_EQ(gone->current().id(), make_key(1).id());
}

TEST_F(KeyRingTest, AnUnsafeCredentialIsReportedNotSkipped) {
  std::string configured = key_at(dir_.file("configured.key"), 1);
  std::string credential = key_at(credentials_.file("tokenwarden.key"), 2);
  ASSERT_EQ(::chmod(credential.c_str(), 0644), 0);
  auto ring = load_key_ring(configured, {}, credentials_.path());
  ASSERT_FALSE(ring.ok());
  EXPECT_EQ(ring.error().code(), Errc::kPermission);
  EXPECT_NE(ring.error().message().find(credential), std::string::npos);
}

TEST_F(KeyRingTest, LoadsPreviousKeys) {
  std::string current = key_at(dir_.file("current.key"), 1);
  std::string old1 = key_at(dir_.file("old1.key"), 2);
  std::string old2 = key_at(dir_.file("old2.key"), 3);
  auto ring = load_key_ring(current, {old1, old2}, "");
  ASSERT_TRUE(ring.ok()) << ring.error().message();
  EXPECT_EQ(ring->current().id(), make_key(1).id());
  EXPECT_NE(ring->find(make_key(2).id()), nullptr);
  EXPECT_NE(ring->find(make_key(3).id()), nullptr);
  EXPECT_EQ(ring->find(make_key(4).id()), nullptr);
}

TEST_F(KeyRingTest, PreviousFilesAreCheckedLikeTheCurrentOne) {
  std::string current = key_at(dir_.file("current.key"), 1);
  std::string missing = dir_.file("missing.key");
  auto ring = load_key_ring(current, {missing}, "");
  ASSERT_FALSE(ring.ok());
  EXPECT_EQ(ring.error().code(), Errc::kNotFound);
  EXPECT_NE(ring.error().message().find(missing), std::string::npos);

  std::string loose = key_at(dir_.file("loose.key"), 2);
  ASSERT_EQ(::chmod(loose.c_str(), 0640), 0);
  auto loose_ring = load_key_ring(current, {loose}, "");
  ASSERT_FALSE(loose_ring.ok());
  EXPECT_EQ(loose_ring.error().code(), Errc::kPermission);
}

TEST_F(KeyRingTest, MissingCurrentKeyIsNotFound) {
  auto ring = load_key_ring(dir_.file("absent.key"), {}, credentials_.path());
  ASSERT_FALSE(ring.ok());
  EXPECT_EQ(ring.error().code(), Errc::kNotFound);
  EXPECT_NE(ring.error().message().find(dir_.file("absent.key")), std::string::npos);
}

TEST_F(KeyRingTest, RejectsTheSameKeyTwice) {
  std::string current = key_at(dir_.file("current.key"), 1);
  std::string copy = dir_.file("copy.key");
  // Same key, different encoding: still the same key.
  write_key_file(copy, to_hex(pattern_bytes(32, 1)) + "\n");
  auto ring = load_key_ring(current, {copy}, "");
  ASSERT_FALSE(ring.ok());
  EXPECT_EQ(ring.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(ring.error().message().find("key file " + copy + " is the same key as " + current),
            std::string::npos)
      << ring.error().message();

  std::string old = key_at(dir_.file("old.key"), 2);
  std::string old_again = key_at(dir_.file("old-again.key"), 2);
  auto twice = load_key_ring(current, {old, old_again}, "");
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(twice.error().message().find("key file " + old_again + " is the same key as " + old),
            std::string::npos)
      << twice.error().message();
}

// --- write_new_key_file -------------------------------------------------------------------------

class WriteKeyTest : public ::testing::Test {
 protected:
  TempDir dir_;
};

TEST_F(WriteKeyTest, CreatesAnOwnerOnly32ByteKeyThatLoads) {
  std::string path = dir_.file("new.key");
  auto id = write_new_key_file(path);
  ASSERT_TRUE(id.ok()) << id.error().message();
  EXPECT_EQ(file_mode(path), 0600u);
  EXPECT_EQ(read_file(path).size(), 32u);
  auto key = load_key_file(path);
  ASSERT_TRUE(key.ok()) << key.error().message();
  EXPECT_EQ(key->id_hex(), *id);
  EXPECT_EQ(id->size(), 16u);
}

TEST_F(WriteKeyTest, ModeIs0600WhateverTheUmask) {
  for (mode_t mask : {0000, 0022, 0077, 0277}) {
    mode_t old = ::umask(mask);
    std::string path = dir_.file("umask" + std::to_string(mask) + ".key");
    auto id = write_new_key_file(path);
    ::umask(old);
    ASSERT_TRUE(id.ok()) << id.error().message();
    EXPECT_EQ(file_mode(path), 0600u) << std::oct << mask;
  }
}

TEST_F(WriteKeyTest, WritesADifferentKeyEachTime) {
  auto a = write_new_key_file(dir_.file("a.key"));
  auto b = write_new_key_file(dir_.file("b.key"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_NE(read_file(dir_.file("a.key")), read_file(dir_.file("b.key")));
}

TEST_F(WriteKeyTest, RefusesToOverwrite) {
  std::string path = dir_.file("existing.key");
  write_key_file(path, "precious contents", 0644);
  auto id = write_new_key_file(path);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.error().code(), Errc::kAlreadyExists);
  EXPECT_EQ(id.error().message(), "refusing to overwrite existing file " + path);
  EXPECT_EQ(read_file(path), "precious contents");
  EXPECT_EQ(file_mode(path), 0644u);

  // Also a key written a moment ago.
  std::string key_path = dir_.file("k.key");
  ASSERT_TRUE(write_new_key_file(key_path).ok());
  std::string before = read_file(key_path);
  EXPECT_EQ(write_new_key_file(key_path).error().code(), Errc::kAlreadyExists);
  EXPECT_EQ(read_file(key_path), before);
}

TEST_F(WriteKeyTest, RefusesToWriteThroughASymlink) {
  std::string target = dir_.file("target");
  std::string link = dir_.file("link.key");
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);  // dangling
  auto id = write_new_key_file(link);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.error().code(), Errc::kAlreadyExists);
  EXPECT_FALSE(std::filesystem::exists(target));
}

TEST_F(WriteKeyTest, MissingDirectoryFailsAndLeavesNothing) {
  std::string path = dir_.file("no/such/dir/new.key");
  auto id = write_new_key_file(path);
  ASSERT_FALSE(id.ok());
  EXPECT_NE(id.error().message().find(path), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(WriteKeyTest, RelativePathInTheCurrentDirectory) {
  auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir_.path());
  auto id = write_new_key_file("relative.key");
  std::filesystem::current_path(cwd);
  ASSERT_TRUE(id.ok()) << id.error().message();
  auto key = load_key_file(dir_.file("relative.key"));
  ASSERT_TRUE(key.ok()) << key.error().message();
  EXPECT_EQ(key->id_hex(), *id);
}

}  // namespace
}  // namespace tw
