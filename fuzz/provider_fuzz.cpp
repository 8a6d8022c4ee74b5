// libFuzzer target: one provider client's handling of whatever comes back from the network.
// TW_FUZZ_PROVIDER (0 Meta, 1 Google, 2 TikTok) picks the client. The input scripts, for each
// request the client sends (a Meta Page renewal sends two), a transport failure or a reply (a
// status, maybe a Retry-After header, and a body). FuzzedDataProvider takes numbers from the END
// of the input and strings from the front, so an input reads, in file order:
//   body1 ["\ " body2 ...] [per request, last first: retry?, status index, selector] [op, kind,
//   expiry?]
// where the last byte says whether the token has an expiry, the one before it the kind (index
// into the provider's kinds), then the operation (odd: renewal), then per request a selector (0
// mod 16: a transport failure), the status (index into kStatuses), whether a Retry-After header
// follows. "\ " ends one body, so the next request gets the next one. The seeds in
// fuzz/corpus/<provider>/ are laid out so (TW_FUZZ_TRACE=1 prints what each input came to).
// Properties checked beyond "no crash, leak or hang":
//   - every operation completes, exactly once;
//   - a failure's message is one line and never holds a secret the client was given;
//   - a renewal never hands back the client secret as a token.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <fuzzer/FuzzedDataProvider.h>

#include "config/config.h"
#include "http/transport.h"
#include "providers/provider.h"
#include "scheduler/clock.h"

namespace {

constexpr const char* kClientSecret = "fuzz-client-secret-value";
constexpr const char* kAccess = "act.fuzz-access-secret";
constexpr const char* kRefresh = "rft.fuzz-refresh-secret";

// Answers each request from the fuzz input, posted like the real transport.
class FuzzTransport final : public tw::HttpTransport {
 public:
  FuzzTransport(boost::asio::io_context& io, FuzzedDataProvider& in) : io_(io), in_(in) {}

  void send(tw::HttpRequest request, Callback done) override {
    (void)request;
    tw::HttpResponse r;
    if (in_.ConsumeIntegralInRange<int>(0, 15) == 0) {
      r.error = static_cast<tw::TransportError>(in_.ConsumeIntegralInRange<int>(1, 7));
      r.error_message = "fuzz";
    } else {
      static constexpr int kStatuses[] = {200, 200, 200, 400, 401, 403, 404, 429, 500, 503};
      r.status = in_.PickValueInArray(kStatuses);
      if (in_.ConsumeBool()) r.headers["retry-after"] = in_.ConsumeRandomLengthString(40);
      r.body = in_.ConsumeRandomLengthString(8192);
    }
    ++pending_;
    boost::asio::post(io_, [this, done = std::move(done), r = std::move(r)]() mutable {
      --pending_;
      done(std::move(r));
    });
  }
  std::size_t pending() const override { return pending_; }
  void shutdown() override {}

 private:
  boost::asio::io_context& io_;
  FuzzedDataProvider& in_;
  std::size_t pending_ = 0;
};

bool holds_secret(const std::string& text) {
  for (const char* s : {kClientSecret, kAccess, kRefresh}) {
    if (text.find(s) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool env_set = [] {
    setenv("TW_FUZZ_SECRET", kClientSecret, 1);
    return true;
  }();
  (void)env_set;
  FuzzedDataProvider in(data, size);
  boost::asio::io_context io;
  FuzzTransport http(io, in);
  tw::FakeClock clock(tw::from_unix(1'800'000'000));
  const tw::SecretRef secret{tw::SecretRef::Source::kEnv, "TW_FUZZ_SECRET"};

  tw::TokenRecord token;
  token.id = "tok_00112233aabbccdd";
  token.account_id = "acct-1";
  token.workspace_id = "ws";
  token.has_access_token = true;
  token.has_refresh_token = true;
  if (in.ConsumeBool())
    token.expires_at = clock.now() + std::chrono::hours(in.ConsumeIntegralInRange<int>(-48, 48));
  std::unique_ptr<tw::ProviderClient> client;
#if TW_FUZZ_PROVIDER == 0
  tw::MetaConfig c;
  c.enabled = true;
  c.app_id = "fuzz-app";
  c.app_secret = secret;
  token.provider = tw::Provider::kMeta;
  static constexpr tw::TokenKind kKinds[] = {tw::TokenKind::kPageToken, tw::TokenKind::kUserToken,
                                             tw::TokenKind::kClientCredentials};
  auto made = tw::make_meta_client(c, http, clock);
#elif TW_FUZZ_PROVIDER == 1
  tw::GoogleConfig c;
  c.enabled = true;
  c.client_id = "fuzz-client";
  c.client_secret = secret;
  token.provider = tw::Provider::kGoogle;
  static constexpr tw::TokenKind kKinds[] = {tw::TokenKind::kRefreshToken};
  auto made = tw::make_google_client(c, http, clock);
#else
  tw::TikTokConfig c;
  c.enabled = true;
  c.client_key = "fuzz-key";
  c.client_secret = secret;
  c.business_app_id = "fuzz-key";
  c.business_app_secret = secret;
  token.provider = tw::Provider::kTikTok;
  static constexpr tw::TokenKind kKinds[] = {tw::TokenKind::kRefreshToken,
                                             tw::TokenKind::kBusinessToken};
  auto made = tw::make_tiktok_client(c, http, clock);
#endif
  if (!made) std::abort();  // the fixed config above is valid
  client = std::move(*made);
  token.kind = in.PickValueInArray(kKinds);
  const tw::Operation op = in.ConsumeBool() ? tw::Operation::kRefresh : tw::Operation::kCheck;
  const tw::TokenSecrets secrets{tw::Secret(kAccess), tw::Secret(kRefresh)};

  int completions = 0;
  std::optional<tw::Outcome> outcome;
  auto done = [&](tw::Outcome o) {
    ++completions;
    outcome = std::move(o);
  };
  if (op == tw::Operation::kRefresh) {
    client->refresh(token, secrets, done);
  } else {
    client->check(token, secrets, done);
  }
  io.run();
  if (completions != 1 || !outcome) std::abort();
  if (!outcome->ok) {
    const std::string& m = outcome->failure.message;
    if (m.find('\n') != std::string::npos || holds_secret(m)) std::abort();
  }
  if (holds_secret(outcome->note)) std::abort();
  if (outcome->secrets) {
    for (const tw::Secret* s :
         {&outcome->secrets->access_token, &outcome->secrets->refresh_token}) {
      if (s->reveal() == kClientSecret) std::abort();
    }
  }
  if (std::getenv("TW_FUZZ_TRACE") != nullptr) {
    std::fprintf(stderr, "%s %s: %s\n", op == tw::Operation::kRefresh ? "renewal" : "check",
                 outcome->ok ? "ok" : "failed",
                 outcome->ok ? outcome->note.c_str() : outcome->failure.message.c_str());
  }
  return 0;
}
