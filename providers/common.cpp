#include "providers/common.h"

#include <algorithm>
#include <charconv>
#include <ctime>

#include <openssl/evp.h>

#include "core/fs.h"
#include "core/text.h"

namespace tw::providers {

namespace {

std::string with_query(const std::string& url, const std::vector<Param>& params, bool mask) {
  std::string out = url;
  char sep = url.find('?') == std::string::npos ? '?' : '&';
  for (const Param& p : params) {
    out += sep;
    out += url_encode(p.name);
    out += '=';
    out += (mask && p.secret) ? std::string("***") : url_encode(p.value);
    sep = '&';
  }
  return out;
}

std::string short_sha256(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr) != 1) return "?";
  return to_hex(std::span<const unsigned char>(digest, std::min(len, 6u)));
}

// Replaces every occurrence of `secret` in `text` with "***".
void mask_secret(std::string& text, const Secret& secret) {
  if (secret.empty()) return;
  for (std::size_t pos; (pos = text.find(secret.reveal())) != std::string::npos;) {
    text.replace(pos, secret.size(), "***");
  }
}

// Masks every one of `secrets` in `text` before it is cut to one line of 200 characters (a cut
// secret could no longer be found).
std::string scrub_all(std::string_view text, const std::vector<const Secret*>& secrets) {
  std::string out(text);
  for (const Secret* s : secrets) {
    if (s != nullptr && s->size() >= 8) mask_secret(out, *s);
  }
  out = one_line(out);
  constexpr std::size_t kMax = 200;
  if (out.size() > kMax) out = out.substr(0, kMax - 3) + "...";
  return out;
}

}  // namespace

HttpRequest get(const std::string& url, const std::vector<Param>& params) {
  HttpRequest r;
  r.method = "GET";
  r.url = with_query(url, params, false);
  r.log_url = with_query(url, params, true);
  return r;
}

HttpRequest post_form(const std::string& url, const std::vector<Param>& params) {
  HttpRequest r;
  r.method = "POST";
  r.url = url;
  r.log_url = url;
  r.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  std::vector<std::pair<std::string, std::string>> fields;
  fields.reserve(params.size());
  for (const Param& p : params)
    fields.emplace_back(p.name, std::string(p.value));
  r.body = form_encode(fields);
  for (auto& [name, value] : fields)
    wipe(value);
  return r;
}

HttpRequest post_json(const std::string& url, const nlohmann::json& body) {
  HttpRequest r;
  r.method = "POST";
  r.url = url;
  r.log_url = url;
  r.headers.emplace_back("Content-Type", "application/json");
  r.body = body.dump();
  return r;
}

void add_bearer(HttpRequest& request, const Secret& token) {
  std::string value = "Bearer ";
  value += token.reveal();
  request.headers.emplace_back("Authorization", std::move(value));
}

std::optional<Failure> transport_failure(const HttpResponse& r, std::string_view endpoint) {
  if (r.error == TransportError::kNone) return std::nullopt;
  Failure f{ErrorClass::kTransient,
            std::string(endpoint) + ": " + std::string(to_string(r.error)) +
                (r.error_message.empty() ? "" : " (" + r.error_message + ")"),
            std::nullopt};
  f.cancelled = r.error == TransportError::kCancelled;
  // Refused connections and failed handshakes never delivered the request; anything else may have.
  f.in_doubt = r.error != TransportError::kConnect && r.error != TransportError::kTls;
  return f;
}

std::optional<Seconds> retry_after(const HttpResponse& r, SysTime now) {
  auto it = r.headers.find("retry-after");
  if (it == r.headers.end()) return std::nullopt;
  std::string_view v = it->second;
  while (!v.empty() && v.front() == ' ')
    v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\r'))
    v.remove_suffix(1);
  constexpr std::int64_t kMaxSeconds =
      std::int64_t{7} * 24 * 3600;  // anything longer is not a retry hint
  std::int64_t s = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), s);
  if (ec == std::errc() && end == v.data() + v.size()) {
    if (s < 0 || s > kMaxSeconds) return std::nullopt;
    return Seconds{s};
  }
  // An HTTP-date: "Wed, 21 Oct 2015 07:28:00 GMT".
  std::tm tm{};
  std::string text(v);
  if (strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) == nullptr) return std::nullopt;
  const std::int64_t at = timegm(&tm);
  const std::int64_t delta = at - to_unix(now);
  if (delta > kMaxSeconds) return std::nullopt;
  return Seconds{std::max<std::int64_t>(0, delta)};
}

Failure malformed(const HttpResponse& r, std::string_view endpoint, std::string_view what) {
  Failure f{ErrorClass::kMalformed,
            std::string(endpoint) + ": unexpected reply (" + std::string(what) + "; HTTP " +
                std::to_string(r.status) + ", " + std::to_string(r.body.size()) +
                " bytes, sha256 " + short_sha256(r.body) + ")",
            std::nullopt};
  f.in_doubt = true;  // a reply we cannot read may have carried a new token
  return f;
}

Failure http_status_failure(const HttpResponse& r, std::string_view endpoint, SysTime now) {
  Failure f{ErrorClass::kTransient, std::string(endpoint) + ": HTTP " + std::to_string(r.status),
            retry_after(r, now)};
  // A gateway that gave up on the provider (bad gateway, gateway timeout) may have passed the
  // request on: the provider may have acted on it.
  f.in_doubt = r.status == 502 || r.status == 504;
  return f;
}

JsonReply json_reply(const HttpResponse& r, std::string_view endpoint, SysTime now) {
  if (auto f = transport_failure(r, endpoint)) return {std::nullopt, std::move(f)};
  auto doc = parse_json(r.body);
  if (doc && doc->is_object()) return {std::move(doc), std::nullopt};
  if (r.status == 429 || r.status >= 500) {
    return {std::nullopt, http_status_failure(r, endpoint, now)};
  }
  return {std::nullopt, malformed(r, endpoint, "not a JSON object")};
}

std::optional<nlohmann::json> parse_json(const std::string& body) {
  auto doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return std::nullopt;
  return doc;
}

Secret take_secret(nlohmann::json& obj, const char* key) {
  if (!obj.is_object()) return {};
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) return {};
  return Secret::take(it->get_ref<std::string&>());
}

std::optional<std::int64_t> int_field(const nlohmann::json& obj, const char* key) {
  if (!obj.is_object()) return std::nullopt;
  auto it = obj.find(key);
  if (it == obj.end()) return std::nullopt;
  if (it->is_number_integer()) return it->get<std::int64_t>();
  if (it->is_number_unsigned()) return static_cast<std::int64_t>(it->get<std::uint64_t>());
  if (it->is_string()) {
    const std::string& s = it->get_ref<const std::string&>();
    std::int64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec == std::errc() && end == s.data() + s.size()) return v;
  }
  return std::nullopt;
}

std::string string_field(const nlohmann::json& obj, const char* key) {
  if (!obj.is_object()) return "";
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : "";
}

bool access_token_stale(const TokenRecord& token, const TokenSecrets& secrets, SysTime now) {
  constexpr Seconds kExpirySlack{60};
  return secrets.access_token.empty() || !token.expires_at ||
         *token.expires_at <= now + kExpirySlack;
}

std::string scrub(std::string_view text, const std::vector<Secret>& secrets) {
  std::vector<const Secret*> all;
  for (const Secret& s : secrets)
    all.push_back(&s);
  return scrub_all(text, all);
}

std::string scrub(std::string_view text, std::initializer_list<const Secret*> secrets) {
  return scrub_all(text, std::vector<const Secret*>(secrets));
}

std::function<void(Outcome)> masking(std::function<void(Outcome)> done,
                                     std::vector<Secret> secrets) {
  return [done = std::move(done), secrets = std::move(secrets)](Outcome o) {
    for (const Secret& s : secrets) {
      mask_secret(o.failure.message, s);
      mask_secret(o.note, s);
    }
    done(std::move(o));
  };
}

Result<Secret> resolve_secret(const SecretRef& ref, std::string_view key) {
  auto secret = ref.resolve();
  if (!secret) return Error(Errc::kConfig, std::string(key) + ": " + secret.error().message());
  return secret;
}

Outcome failed(Operation op, Failure f) {
  Outcome o = Outcome::success(op);
  o.ok = false;
  o.failure = std::move(f);
  return o;
}

void wipe_body(HttpResponse& r) {
  wipe(r.body);
}

}  // namespace tw::providers
