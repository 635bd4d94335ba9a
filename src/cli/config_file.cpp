#include "cli/config_file.h"

#include <map>

#include "lorarecycle/util/error.h"
#include "lorarecycle/util/ini.h"

namespace lorarec::cli {
namespace po = boost::program_options;

namespace {
bool is_command(const std::string& s) {
  for (const char* c : kCommands)
    if (s == c) return true;
  return false;
}
}  // namespace

std::vector<ConfigToken> config_args(const std::string& text, const std::string& origin, const std::string& command,
                                     const po::options_description& desc, const std::set<std::string>& other_keys) {
  struct Chosen {
    ConfigToken token;
    bool own;  // from [<command>], which overrides [common]
    int line;
  };
  std::map<std::string, Chosen> chosen;
  std::vector<std::string> order;
  for (const auto& e : ini::parse(text, origin)) {
    const std::string where = origin + ":" + std::to_string(e.line);
    if (!e.section.empty() && e.section != "common" && !is_command(e.section))
      throw InputError(where + ": unknown section [" + e.section + "] (sections: [common] or a command's name)");
    if (!e.section.empty() && e.section != "common" && e.section != command) continue;
    if (e.key == "config" || e.key == "help")
      throw InputError(where + ": '" + e.key + "' cannot be set in a config file");
    const bool own = e.section == command;
    const po::option_description* od = desc.find_nothrow(e.key, false);
    if (od == nullptr) {
      if (!own && other_keys.count(e.key) != 0) continue;  // a [common] key for the commands that have it
      throw InputError(where + ": unknown key '" + e.key + "' " +
                       (own ? "for command '" + command + "'" : std::string("(no command has it)")) +
                       " (see 'lorarecycle " + command + " --help')");
    }
    std::string token = "--" + e.key + "=" + e.value;
    if (od->semantic()->max_tokens() == 0) {  // a switch: true/false in the file
      const bool on = e.value == "true" || e.value == "1" || e.value == "yes" || e.value == "on";
      if (!on && !(e.value == "false" || e.value == "0" || e.value == "no" || e.value == "off"))
        throw InputError(where + ": '" + e.key + "' takes true or false, got '" + e.value + "'");
      token = on ? "--" + e.key : "";  // off: no token, but it overrides an earlier layer's "on"
    }
    const auto it = chosen.find(e.key);
    if (it == chosen.end()) {
      chosen.emplace(e.key, Chosen{{e.key, token, where}, own, e.line});
      order.push_back(e.key);
    } else if (it->second.own == own) {
      throw InputError(where + ": '" + e.key + "' is set twice in one section (first at line " +
                       std::to_string(it->second.line) + ")");
    } else if (own) {
      it->second = Chosen{{e.key, token, where}, own, e.line};
    }
  }
  std::vector<ConfigToken> out;
  for (const auto& key : order) out.push_back(chosen.at(key).token);
  return out;
}

namespace {
void store_raw(const std::vector<std::string>& args, const po::options_description& desc, po::variables_map& vm) {
  std::vector<std::string> copy = args;
  std::vector<char*> cargs;
  for (auto& a : copy) cargs.push_back(a.data());
  po::store(po::command_line_parser(static_cast<int>(cargs.size()), cargs.data()).options(desc).run(), vm);
}
}  // namespace

void store_tokens(const std::vector<std::string>& args, const po::options_description& desc, po::variables_map& vm,
                  const std::string& prefix, const std::string& suffix) {
  try {
    store_raw(args, desc, vm);
  } catch (const po::error&) {
    // Boost 1.74 builds the message by substituting placeholders such as %value% until none is
    // left, which never ends when a value itself contains "%value%" (found by fuzz_config). The
    // message is taken from a re-parse with every '%' shown as '?'.
    std::vector<std::string> shown = args;
    for (auto& a : shown)
      for (char& c : a)
        if (c == '%') c = '?';
    std::string what = "invalid option or value";
    try {
      po::variables_map scratch;
      store_raw(shown, desc, scratch);
    } catch (const po::error& e) {
      what = e.what();
    }
    throw InputError(prefix + what + suffix);
  }
}

std::vector<ConfigToken> layer_configs(const std::vector<std::vector<ConfigToken>>& files) {
  std::vector<ConfigToken> out;
  std::map<std::string, size_t> at;
  for (const auto& file : files)
    for (const auto& t : file) {
      const auto it = at.find(t.key);
      if (it == at.end()) {
        at.emplace(t.key, out.size());
        out.push_back(t);
      } else {
        out[it->second] = t;
      }
    }
  return out;
}

void store_config(const std::vector<ConfigToken>& tokens, const po::options_description& desc, po::variables_map& vm) {
  for (const auto& t : tokens)
    if (!t.token.empty()) store_tokens({"lorarecycle", t.token}, desc, vm, t.where + ": ", "");
}

}  // namespace lorarec::cli
