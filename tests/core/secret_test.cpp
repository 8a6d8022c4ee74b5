#include "core/secret.h"

#include <sstream>
#include <type_traits>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace tw {
namespace {

template <class T, class = void>
struct Streamable : std::false_type {};
template <class T>
struct Streamable<T,
                  std::void_t<decltype(std::declval<std::ostream&>() << std::declval<const T&>())>>
    : std::true_type {};

// Keeping secrets out of logs by construction: neither iostreams nor fmt (and so spdlog) accept
// one.
static_assert(!Streamable<Secret>::value, "a Secret must not be streamable");
static_assert(!fmt::is_formattable<Secret>::value, "a Secret must not be formattable");
static_assert(Streamable<std::string>::value, "the detector itself works");

TEST(Secret, HoldsAndRevealsBytes) {
  Secret s("EAAB-secret");
  EXPECT_EQ(s.reveal(), "EAAB-secret");
  EXPECT_EQ(s.size(), 11u);
  EXPECT_FALSE(s.empty());
  EXPECT_TRUE(Secret().empty());
}

TEST(Secret, TakeWipesTheSource) {
  std::string plain = "rft.one-time-refresh-token-value";
  Secret s = Secret::take(plain);
  EXPECT_EQ(s.reveal(), "rft.one-time-refresh-token-value");
  EXPECT_TRUE(plain.empty());
}

TEST(Secret, WipeZeroesTheWholeBuffer) {
  std::string plain = "a-fairly-long-plaintext-beyond-small-string-size";
  const char* data = plain.data();
  std::size_t n = plain.size();
  wipe(plain);
  EXPECT_TRUE(plain.empty());
  // The heap buffer is still owned by `plain` (clear keeps capacity); its bytes are zero now.
  for (std::size_t i = 0; i < n; ++i)
    ASSERT_EQ(data[i], '\0') << i;
}

TEST(Secret, CopyAndMoveKeepValueAndEmptyTheSource) {
  Secret a("value-1");
  Secret b = a;
  EXPECT_EQ(a, b);
  Secret c = std::move(a);
  EXPECT_EQ(c.reveal(), "value-1");
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): moved-from is defined as empty
  b = Secret("other");
  EXPECT_EQ(b.reveal(), "other");
  b.clear();
  EXPECT_TRUE(b.empty());
}

TEST(Secret, ComparesContents) {
  EXPECT_EQ(Secret("x"), Secret("x"));
  EXPECT_FALSE(Secret("x") == Secret("y"));
  EXPECT_FALSE(Secret("x") == Secret("xx"));
  EXPECT_EQ(Secret(), Secret());
}

}  // namespace
}  // namespace tw
