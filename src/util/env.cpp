#include "lorarecycle/util/env.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "lorarecycle/util/error.h"

namespace lorarec {

const char* env::get(const char* name) { return std::getenv(name); }

bool env::fault_point(int rank, const char* where) {
  const char* spec_c = get(kFaultInject);
  if (spec_c == nullptr) return false;
  // RANK:WHERE[@N[+]][:ACTION]
  const std::string spec = spec_c;
  const auto c1 = spec.find(':');
  if (c1 == std::string::npos || spec.substr(0, c1) != std::to_string(rank)) return false;
  std::string rest = spec.substr(c1 + 1), action = "throw";
  if (const auto c2 = rest.find(':'); c2 != std::string::npos) action = rest.substr(c2 + 1), rest = rest.substr(0, c2);
  long nth = 1;
  bool and_later = false;
  if (const auto at = rest.find('@'); at != std::string::npos) {
    and_later = rest.back() == '+';
    nth = std::strtol(rest.c_str() + at + 1, nullptr, 10), rest = rest.substr(0, at);
  }
  if (rest != where) return false;
  static std::mutex mu;
  static std::map<std::string, long> passes;
  {
    std::lock_guard<std::mutex> lock(mu);
    const long pass = ++passes[rest];
    if (and_later ? pass < nth : pass != nth) return false;
  }
  if (action == "hang") {
    std::fprintf(stderr, "lorarecycle: [rank %d] fault injected: hanging at '%s' (%s)\n", rank, where, spec_c);
    std::fflush(stderr);
    while (true) std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  if (action == "exit") std::_Exit(1);
  if (action == "kill") std::raise(SIGKILL);
  if (action == "corrupt") return true;
  throw RuntimeError(std::string("fault injected at '") + where + "' by " + kFaultInject + "=" + spec);
}

}  // namespace lorarec
