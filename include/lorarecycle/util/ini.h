// A strict INI reader for config files: "[section]" headers, "key = value" lines,
// "#" or ";" comments, whole-line or after a blank at the end of a line ("lr = 1e-3  # paper").
// Keys before the first section belong to section "".
#pragma once

#include <string>
#include <vector>

namespace lorarec::ini {

struct Entry {
  std::string section;  // "" for keys before any section header
  std::string key;
  std::string value;
  int line = 0;  // 1-based line number, for error messages
};

// Parses the file; InputError naming file:line for a malformed line.
std::vector<Entry> read(const std::string& path);
std::vector<Entry> parse(const std::string& text, const std::string& origin);

}  // namespace lorarec::ini
