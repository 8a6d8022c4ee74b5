// Driving an io_context from a test until something has happened.
#pragma once

#include <chrono>
#include <utility>  // before Asio: Boost 1.74's Asio under C++20 with g++ 12 needs it

#include <boost/asio/io_context.hpp>

namespace tw::testing {

// Runs `io` in steps of at most 5 ms until `done()` holds; false if `limit` passes first (a guard
// against a hung test, not a timing assertion). Restarts `io` when it runs out of work, so work
// posted from another thread or a child process's exit is still seen.
template <class Pred>
bool run_until(boost::asio::io_context& io, Pred done,
               std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    io.restart();
    io.run_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace tw::testing
