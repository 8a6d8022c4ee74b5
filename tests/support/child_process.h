// ChildProcess: a binary under test as a child process (stdout on a pipe, stderr into a file),
// and a small blocking HTTP client for talking to it. Waiting is done by poll() on a pipe or a
// pidfd with a deadline, never by sleeping.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <curl/curl.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/result.h"

extern char** environ;

namespace tw::testing {

inline constexpr std::chrono::milliseconds kDeadline{10'000};

class ChildProcess {
 public:
  // Starts `binary` with `args`, its stderr into `stderr_file`, and `env` added to this process's
  // environment.
  ChildProcess(const std::string& binary, const std::vector<std::string>& args,
               const std::string& stderr_file, const std::vector<std::string>& env = {}) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) die("pipe2 failed");
    stdout_ = fds[0];
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_file.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0600);
    std::vector<std::string> argv_text = {binary};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;
    argv.reserve(argv_text.size() + 1);
    for (auto& a : argv_text)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (char** e = environ; *e != nullptr; ++e)
      envp.push_back(*e);
    std::vector<std::string> extra_env = env;
    for (auto& e : extra_env)
      envp.push_back(e.data());
    envp.push_back(nullptr);
    if (::posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), envp.data()) != 0) {
      die("posix_spawn failed");
    }
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd_ < 0) die("pidfd_open failed");
  }
  ~ChildProcess() {
    if (exit_status_ < 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(stdout_);
    ::close(pidfd_);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // The first line the process prints, or nothing if it prints none before the deadline.
  std::optional<std::string> first_line() {
    std::string text;
    const auto deadline = std::chrono::steady_clock::now() + kDeadline;
    while (text.find('\n') == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{stdout_, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        return std::nullopt;
      }
      char buffer[256];
      const ssize_t n = ::read(stdout_, buffer, sizeof buffer);
      if (n <= 0) return std::nullopt;
      text.append(buffer, static_cast<std::size_t>(n));
    }
    return text.substr(0, text.find('\n'));
  }

  // Waits for the process to exit; its exit status (128 + the signal if a signal ended it), or -1
  // if it is still running at the deadline.
  int wait(std::chrono::milliseconds deadline = kDeadline) {
    pollfd p{pidfd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(deadline.count())) != 1) {
      return -1;
    }
    int status = 0;
    if (::waitpid(pid_, &status, 0) != pid_) return -1;
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return exit_status_;
  }
  int terminate(int signal = SIGTERM, std::chrono::milliseconds deadline = kDeadline) {
    ::kill(pid_, signal);
    return wait(deadline);
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int stdout_ = -1;
  int pidfd_ = -1;
  int exit_status_ = -1;
};

struct HttpResult {
  CURLcode code = CURLE_OK;
  long status = 0;
  std::string body;
};

inline size_t append_body(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

inline HttpResult http(const std::string& method, const std::string& url,
                       const std::string& body = {}, const std::vector<std::string>& headers = {},
                       const std::string& ca_file = {}) {
  HttpResult result;
  CURL* curl = curl_easy_init();
  curl_slist* list = nullptr;
  for (const auto& h : headers)
    list = curl_slist_append(list, h.c_str());
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method == "POST") curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  if (!ca_file.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, ca_file.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &append_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &result.body);
  result.code = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &result.status);
  curl_slist_free_all(list);
  curl_easy_cleanup(curl);
  return result;
}

}  // namespace tw::testing
