#include "http/transport.h"

#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20
#include <vector>

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "tests/support/fake_transport.h"

namespace tw {
namespace {

TEST(UrlEncode, UnreservedCharactersPassThrough) {
  EXPECT_EQ(url_encode("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(url_encode(""), "");
}

TEST(UrlEncode, EverythingElseIsPercentEncodedInUpperCaseHex) {
  EXPECT_EQ(url_encode(" "), "%20");  // not '+': valid in a query and in a form body alike
  EXPECT_EQ(url_encode("a+b&c=d/e?f#g%"), "a%2Bb%26c%3Dd%2Fe%3Ff%23g%25");
  EXPECT_EQ(url_encode("é"), "%C3%A9");  // UTF-8 bytes, one escape each
  EXPECT_EQ(url_encode(std::string("\0\xff", 2)), "%00%FF");
}

TEST(FormEncode, JoinsEncodedPairs) {
  EXPECT_EQ(form_encode({}), "");
  EXPECT_EQ(form_encode({{"grant_type", "refresh_token"}}), "grant_type=refresh_token");
  EXPECT_EQ(form_encode(
                {{"grant_type", "refresh_token"}, {"refresh_token", "1//0g+a/b=="}, {"empty", ""}}),
            "grant_type=refresh_token&refresh_token=1%2F%2F0g%2Ba%2Fb%3D%3D&empty=");
}

TEST(FormEncode, EncodesNamesToo) {
  EXPECT_EQ(form_encode({{"a b", "c"}}), "a%20b=c");
}

TEST(TransportError, HasStableNames) {
  EXPECT_EQ(to_string(TransportError::kNone), "none");
  EXPECT_EQ(to_string(TransportError::kConnect), "connect");
  EXPECT_EQ(to_string(TransportError::kTimeout), "timeout");
  EXPECT_EQ(to_string(TransportError::kTls), "tls");
  EXPECT_EQ(to_string(TransportError::kReset), "reset");
  EXPECT_EQ(to_string(TransportError::kTooLarge), "too_large");
  EXPECT_EQ(to_string(TransportError::kCancelled), "cancelled");
  EXPECT_EQ(to_string(TransportError::kOther), "other");
}

// The fake other modules' tests use behaves like the real transport where it matters.
TEST(FakeTransport, AnswersFromTheScriptThenTheHandlerAndRecordsRequests) {
  boost::asio::io_context io;
  testing::FakeTransport http(io.get_executor());
  http.push_reply(200, "first", {{"x-a", "1"}});
  http.push_failure(TransportError::kTimeout);
  http.set_handler([](const HttpRequest& r) { return testing::FakeTransport::reply(404, r.url); });

  std::vector<HttpResponse> got;
  for (const char* url : {"http://a/1", "http://a/2", "http://a/3"}) {
    HttpRequest request;
    request.url = url;
    http.send(request, [&](HttpResponse r) { got.push_back(std::move(r)); });
  }
  EXPECT_TRUE(got.empty()) << "never inside send()";
  EXPECT_EQ(http.pending(), 3u);
  io.run();

  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].status, 200);
  EXPECT_EQ(got[0].body, "first");
  EXPECT_EQ(got[0].headers.at("x-a"), "1");
  EXPECT_EQ(got[1].error, TransportError::kTimeout);
  EXPECT_EQ(got[2].status, 404);
  EXPECT_EQ(got[2].body, "http://a/3");
  ASSERT_EQ(http.requests().size(), 3u);
  EXPECT_EQ(http.requests()[1].url, "http://a/2");
  EXPECT_EQ(http.pending(), 0u);
}

TEST(FakeTransport, ShutdownCancelsUndeliveredAndLaterRequests) {
  boost::asio::io_context io;
  testing::FakeTransport http(io.get_executor());
  http.push_reply(200, "never seen");
  std::vector<TransportError> errors;
  http.send({}, [&](const HttpResponse& r) { errors.push_back(r.error); });
  http.shutdown();
  http.send({}, [&](const HttpResponse& r) { errors.push_back(r.error); });
  EXPECT_EQ(http.pending(), 0u);
  io.run();
  EXPECT_EQ(errors, (std::vector{TransportError::kCancelled, TransportError::kCancelled}));
}

TEST(FakeTransport, DestroyingItDropsCallbacksNotYetRun) {
  boost::asio::io_context io;
  bool called = false;
  {
    testing::FakeTransport http(io.get_executor());
    http.push_reply(200, "");
    http.send({}, [&](const HttpResponse&) { called = true; });
  }
  io.run();
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace tw
