// Progress of a long loop: "tag: done/total unit (pct) rate unit/s, ETA mm:ss", logged at info
// (so by rank 0 only) at most every `interval` seconds and once at the end.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace lorarec {

// Seconds as "mm:ss" or "h:mm:ss" ("--:--" when unknown or negative).
std::string clock_str(double seconds);

class Progress {
 public:
  Progress(std::string tag, std::string what, int64_t total, std::string unit, double interval_s = 5.0);
  // Adds n finished units (rate and ETA use `scale` x the local count, e.g. the world size when
  // every rank does the same share).
  void advance(int64_t n = 1, double scale = 1.0);
  void finish();
  // True when the next advance() will print (the interval has passed): compute an expensive
  // note() only then.
  bool due() const;
  // Text appended to the following lines ("loss 0.84, accuracy 71%").
  void note(std::string text);
  double elapsed_s() const;

 private:
  void print(bool final);
  std::string tag_, what_, unit_, note_;
  int64_t total_, done_ = 0;
  double scale_ = 1.0, interval_;
  std::chrono::steady_clock::time_point start_, last_;
  bool finished_ = false;
};

}  // namespace lorarec
