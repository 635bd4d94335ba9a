#include "lorarecycle/util/ini.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"

namespace lorarec {

const char* env::get(const char* name) { return std::getenv(name); }

bool env::fault_point(int rank, const char* where) {
  const char* spec_c = get(kFaultInject);
  if (spec_c == nullptr) return false;
  // RANK:WHERE[@N][:ACTION]
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
  if (action == "nan") return true;
  throw RuntimeError(std::string("fault injected at '") + where + "' by " + kFaultInject + "=" + spec);
}

namespace ini {
namespace {
std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}
}  // namespace

std::vector<Entry> parse(const std::string& text, const std::string& origin) {
  std::vector<Entry> out;
  std::istringstream in(text);
  std::string raw, section;
  int line_no = 0;
  while (std::getline(in, raw)) {
    ++line_no;
    const std::string line = trim(raw);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    const std::string where = origin + ":" + std::to_string(line_no);
    if (line.front() == '[') {
      if (line.back() != ']' || line.size() < 3) throw InputError(where + ": malformed section header '" + line + "'");
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos) throw InputError(where + ": expected 'key = value', got '" + line + "'");
    Entry e{section, trim(line.substr(0, eq)), trim(line.substr(eq + 1)), line_no};
    if (e.key.empty()) throw InputError(where + ": empty key");
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<Entry> read(const std::string& path) { return parse(fs::read_text(path), path); }

}  // namespace ini
}  // namespace lorarec
