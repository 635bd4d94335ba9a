#include "lorarecycle/util/progress.h"

#include <cstdio>

#include "lorarecycle/util/log.h"

namespace lorarec {
std::string clock_str(double s) {
  if (!(s >= 0) || s > 1e7) return "--:--";
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

Progress::Progress(std::string tag, std::string what, int64_t total, std::string unit, double interval_s)
    : tag_(std::move(tag)),
      what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      interval_(interval_s),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::advance(int64_t n, double scale) {
  done_ += n;
  scale_ = scale;
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_).count() >= interval_) {
    last_ = now;
    print(false);
  }
}

bool Progress::due() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - last_).count() >= interval_;
}

void Progress::note(std::string text) { note_ = std::move(text); }

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  print(true);
}

void Progress::print(bool final) {
  const double t = elapsed_s();
  const double rate = t > 0 ? done_ * scale_ / t : 0.0;
  const double eta = done_ > 0 ? t * double(total_ - done_) / double(done_) : -1;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: %lld/%lld %s (%.0f%%), %.2f %s/s, %s %s", what_.c_str(),
                static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(),
                total_ > 0 ? 100.0 * done_ / total_ : 100.0, rate, unit_.c_str(), final ? "took" : "ETA",
                clock_str(final ? t : eta).c_str());
  LOG_INFO(tag_.c_str(), buf << (note_.empty() ? "" : "; ") << note_);
}

}  // namespace lorarec
