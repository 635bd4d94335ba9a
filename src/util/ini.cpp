#include "lorarecycle/util/ini.h"

#include <sstream>

#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"

namespace lorarec {

namespace ini {
namespace {
std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}
// Drops an inline comment: '#' or ';' at the start of the line or after a blank ("steps = 300  #
// more"); one inside a value ("a#b") stays.
std::string strip_comment(const std::string& s) {
  for (size_t i = 0; i < s.size(); ++i)
    if ((s[i] == '#' || s[i] == ';') && (i == 0 || s[i - 1] == ' ' || s[i - 1] == '\t')) return s.substr(0, i);
  return s;
}
}  // namespace

std::vector<Entry> parse(const std::string& text, const std::string& origin) {
  std::vector<Entry> out;
  std::istringstream in(text);
  std::string raw, section;
  int line_no = 0;
  while (std::getline(in, raw)) {
    ++line_no;
    const std::string line = trim(strip_comment(raw));
    if (line.empty()) continue;
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
