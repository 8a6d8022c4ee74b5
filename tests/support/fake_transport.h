// FakeTransport: an HttpTransport for unit tests, with no network.
//
// It records every request it is given (requests()) and answers each one, in order, from a queue
// of scripted responses (push(), push_reply(), push_failure()); when the queue is empty it asks the
// handler (set_handler()), and when there is none either the request fails with kOther and the
// test fails (ADD_FAILURE). Answers are computed when send() is called and delivered like the real
// transport's: posted to the executor given at construction, never inside send(), each callback
// exactly once. pending() counts answers not yet delivered; shutdown() turns them, and every later
// request, into kCancelled. Destroying the fake drops callbacks not yet run (as CurlTransport
// does).
//
// Thread-safety: none; use it on one single-threaded executor, as the real transport.
//
//   boost::asio::io_context io;
//   tw::testing::FakeTransport http(io.get_executor());
//   http.push_reply(200, R"({"access_token":"new"})");
//   http.push_failure(tw::TransportError::kTimeout);
//   run_the_code_under_test(http);
//   io.run();
//   EXPECT_EQ(http.requests().at(0).method, "POST");
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <gtest/gtest.h>

#include "http/transport.h"

namespace tw::testing {

class FakeTransport final : public HttpTransport {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  explicit FakeTransport(boost::asio::any_io_executor executor)
      : executor_(std::move(executor)), state_(std::make_shared<State>()) {}

  // A complete response.
  static HttpResponse reply(int status, std::string body,
                            std::map<std::string, std::string> headers = {}) {
    HttpResponse r;
    r.status = status;
    r.body = std::move(body);
    r.headers = std::move(headers);
    return r;
  }
  // A transport failure (status 0).
  static HttpResponse failure(TransportError error, std::string message = "simulated failure") {
    HttpResponse r;
    r.error = error;
    r.error_message = std::move(message);
    return r;
  }

  // Queues the answer to a future request (first pushed, first used).
  void push(HttpResponse response) { script_.push_back(std::move(response)); }
  void push_reply(int status, std::string body, std::map<std::string, std::string> headers = {}) {
    push(reply(status, std::move(body), std::move(headers)));
  }
  void push_failure(TransportError error, std::string message = "simulated failure") {
    push(failure(error, std::move(message)));
  }
  // Answers requests when the script is empty.
  void set_handler(Handler handler) { handler_ = std::move(handler); }

  // Every request given to send(), in order, including refused ones.
  const std::vector<HttpRequest>& requests() const { return requests_; }
  // Scripted responses not used yet.
  std::size_t scripted() const { return script_.size(); }

  void send(HttpRequest request, Callback done) override {
    requests_.push_back(request);
    HttpResponse response;
    if (state_->shut_down) {
      response = failure(TransportError::kCancelled, "the transport has shut down");
    } else if (!script_.empty()) {
      response = std::move(script_.front());
      script_.pop_front();
    } else if (handler_) {
      response = handler_(request);
    } else {
      ADD_FAILURE() << "FakeTransport: no scripted response for " << request.method << " "
                    << request.log_url;
      response = failure(TransportError::kOther, "FakeTransport: no scripted response");
    }
    ++state_->pending;
    boost::asio::post(executor_, [weak = std::weak_ptr<State>(state_), done = std::move(done),
                                  response = std::move(response)]() mutable {
      const auto state = weak.lock();
      if (!state) return;  // the fake was destroyed: drop the callback
      --state->pending;
      if (state->shut_down && response.error != TransportError::kCancelled) {
        response = failure(TransportError::kCancelled, "the transport has shut down");
      }
      done(std::move(response));
    });
  }

  std::size_t pending() const override { return state_->shut_down ? 0 : state_->pending; }

  void shutdown() override { state_->shut_down = true; }

 private:
  struct State {
    std::size_t pending = 0;
    bool shut_down = false;
  };

  boost::asio::any_io_executor executor_;
  std::shared_ptr<State> state_;
  std::deque<HttpResponse> script_;
  Handler handler_;
  std::vector<HttpRequest> requests_;
};

}  // namespace tw::testing
