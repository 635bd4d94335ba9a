#include "cli/config_file.h"

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

std::vector<std::string> config_args(const std::string& text, const std::string& origin, const std::string& command,
                                     const po::options_description& desc) {
  std::vector<std::string> args{"lorarecycle"};
  for (const auto& e : ini::parse(text, origin)) {
    const std::string where = origin + ":" + std::to_string(e.line);
    if (!e.section.empty() && e.section != "common" && !is_command(e.section))
      throw InputError(where + ": unknown section [" + e.section + "]");
    if (!e.section.empty() && e.section != "common" && e.section != command) continue;
    if (e.key == "config" || e.key == "help") throw InputError(where + ": '" + e.key + "' cannot be set in a config file");
    const po::option_description* od = desc.find_nothrow(e.key, false);
    if (od == nullptr) throw InputError(where + ": unknown key '" + e.key + "' for command '" + command + "'");
    if (od->semantic()->max_tokens() == 0) {  // a switch: true/false in the file
      if (e.value == "true" || e.value == "1" || e.value == "yes" || e.value == "on")
        args.push_back("--" + e.key);
      else if (!(e.value == "false" || e.value == "0" || e.value == "no" || e.value == "off"))
        throw InputError(where + ": '" + e.key + "' takes true or false, got '" + e.value + "'");
      continue;
    }
    args.push_back("--" + e.key + "=" + e.value);
  }
  return args;
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

void store_config(const std::vector<std::string>& args, const std::string& origin, const po::options_description& desc,
                  po::variables_map& vm) {
  store_tokens(args, desc, vm, origin + ": ", "");
}

}  // namespace lorarec::cli
