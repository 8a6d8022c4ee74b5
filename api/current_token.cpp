#include "api/current_token.h"

namespace tw {

Result<CurrentTokenResult> current_token(TokenStore& store, std::string_view id, SysTime now) {
  CurrentTokenResult out;
  auto row = store.find(id);
  if (!row) return row.error();
  if (!*row) {
    out.why = Unusable::kNotFound;
    out.message = "no token " + std::string(id);
    return out;
  }
  const TokenRecord& r = **row;
  if (!state_scheduled(r.state)) {
    out.why = Unusable::kDead;
    out.message = r.id + " is " + std::string(to_string(r.state)) +
                  (r.last_error_message.empty() ? "" : ": " + r.last_error_message);
    return out;
  }
  if (r.expires_at && *r.expires_at <= now) {
    out.why = Unusable::kExpired;
    out.message = r.id + "'s access token expired at " + format_time(*r.expires_at);
    return out;
  }
  auto secrets = store.read_secrets(r);
  if (!secrets) return secrets.error();
  if (secrets->access_token.empty()) {
    out.why = Unusable::kNoToken;
    out.message = r.id + " holds no access token yet";
    return out;
  }
  out.token = CurrentToken{r, std::move(secrets->access_token)};
  return out;
}

}  // namespace tw
