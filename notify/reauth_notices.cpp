#include "notify/reauth_notices.h"

#include <vector>

namespace tw {

ReauthNotices::ReauthNotices(TokenStore& store, Notifier& notifier, const Clock& clock,
                             std::shared_ptr<spdlog::logger> log, const TimerFactory& timers,
                             Seconds scan_every, std::size_t max_pending)
    : store_(store),
      notifier_(notifier),
      clock_(clock),
      log_(log),
      scan_every_(scan_every),
      max_pending_(max_pending),
      periodic_(timers()),
      soon_(timers()),
      state_(std::make_shared<State>(State{store, std::move(log), {}})) {}

ReauthNotices::~ReauthNotices() = default;

void ReauthNotices::start() {
  running_ = true;
  scan();
  periodic_->arm(clock_.system_now() + scan_every_, [this] { start(); });
}

void ReauthNotices::stop() {
  running_ = false;
  periodic_->cancel();
  soon_->cancel();
}

void ReauthNotices::poke() {
  if (!running_) return;
  // Armed for now: it fires on the next turn of the loop, after the step that poked has
  // committed; pokes before then re-arm the same timer, so they share one scan.
  soon_->arm(clock_.system_now(), [this] { scan(); });
}

std::size_t ReauthNotices::scan() {
  State& st = *state_;
  if (st.pending.size() >= max_pending_) return 0;
  // Pending tokens come back from the query too: ask for enough to fill every free slot.
  auto rows = store_.unnotified_reauth(max_pending_);
  if (!rows) {
    log_->warn("notify: cannot list tokens to notify: {}; trying again in {}",
               rows.error().message(), format_duration(scan_every_));
    return 0;
  }
  std::size_t handed = 0;
  for (const TokenRecord& r : *rows) {
    if (st.pending.size() >= max_pending_) break;
    if (!st.pending.insert(r.id).second) continue;  // already with the Notifier
    ReauthEvent e;
    e.token_id = r.id;
    e.provider = r.provider;
    e.kind = r.kind;
    e.workspace_id = r.workspace_id;
    e.account_id = r.account_id;
    e.state = r.state;
    e.reason = r.last_error_message;
    e.at = r.state_since;
    ++handed;
    notifier_.notify(e, [weak = std::weak_ptr<State>(state_), id = r.id,
                         since = r.state_since](bool /*all_delivered*/) {
      auto state = weak.lock();
      if (!state) return;
      state->pending.erase(id);
      // Given up or not, the notice is done: retrying forever would flood the receiver, and the
      // token stays in the status file's needs_reauth list for the operator to see.
      auto marked = state->store.mark_reauth_notified(id, since);
      if (!marked) {
        state->log->warn("notify: cannot record that {} was notified: {}; it may be sent again", id,
                         marked.error().message());
      } else if (!*marked) {
        state->log->debug("notify: {} moved on while being notified", id);
      }
    });
  }
  return handed;
}

}  // namespace tw
