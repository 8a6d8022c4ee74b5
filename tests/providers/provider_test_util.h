// Shared set-up for the provider client tests: a private io_context, a FakeTransport and a
// FakeClock, and a helper that runs one operation to its Outcome.
#pragma once

#include <optional>
#include <string>
#include <utility>  // before Boost.Asio

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "providers/provider.h"
#include "scheduler/clock.h"
#include "tests/support/fake_transport.h"

namespace tw::testing {

inline const SysTime kNow = from_unix(1'800'000'000);

// The value of `name` in a query string or form body ("a=1&b=2"), percent-decoding left out.
inline std::optional<std::string> field(const std::string& encoded, const std::string& name) {
  std::size_t pos = 0;
  while (pos <= encoded.size()) {
    std::size_t end = encoded.find('&', pos);
    if (end == std::string::npos) end = encoded.size();
    std::string pair = encoded.substr(pos, end - pos);
    if (pair.rfind(name + "=", 0) == 0) return pair.substr(name.size() + 1);
    pos = end + 1;
  }
  return std::nullopt;
}

inline std::string query_of(const std::string& url) {
  auto q = url.find('?');
  return q == std::string::npos ? "" : url.substr(q + 1);
}

inline std::string header(const HttpRequest& r, const std::string& name) {
  for (const auto& [n, v] : r.headers) {
    if (n == name) return v;
  }
  return "";
}

class ProviderTest : public ::testing::Test {
 protected:
  Outcome run(ProviderClient& client, Operation op, const TokenRecord& token,
              const TokenSecrets& secrets) {
    std::optional<Outcome> out;
    auto done = [&out](Outcome o) { out = std::move(o); };
    if (op == Operation::kRefresh) {
      client.refresh(token, secrets, done);
    } else {
      client.check(token, secrets, done);
    }
    io_.run();
    io_.restart();
    EXPECT_TRUE(out.has_value()) << "the operation never completed";
    EXPECT_EQ(http_.scripted(), 0u) << "scripted responses left unused";
    return out ? std::move(*out) : Outcome::failed(op, ErrorClass::kNone, "no outcome");
  }

  // Every request: no secret in its log_url.
  void expect_clean_log_urls(std::initializer_list<std::string_view> secrets) {
    for (const HttpRequest& r : http_.requests()) {
      for (std::string_view s : secrets) {
        EXPECT_EQ(r.log_url.find(s), std::string::npos) << r.log_url;
      }
    }
  }

  boost::asio::io_context io_;
  FakeTransport http_{io_.get_executor()};
  FakeClock clock_{kNow};
};

}  // namespace tw::testing
