// INI config files for the CLI: "[common]" and "[<command>]" sections whose keys are the
// command's long option names. Kept apart from options.cpp (no LibTorch) so that the fuzzer
// (tests/fuzz/fuzz_config.cpp) can drive it alone.
#pragma once

#include <boost/program_options.hpp>

#include <set>
#include <string>
#include <vector>

namespace lorarec::cli {

inline const char* kCommands[] = {"pretrain", "zoo", "invert", "metatrain", "eval", "predict", "embed"};

// One key of a config file as a command-line token ("--key=value", "--switch", or "" for a switch
// set false), and where it was written ("file.ini:12").
struct ConfigToken {
  std::string key;
  std::string token;
  std::string where;
};

// The tokens that the config text means for `command`. Keys before any section or under
// [common] apply to every command that has them: one this command lacks is skipped when it is in
// `other_keys` (the option names of the other commands) and refused otherwise (a typo). Keys under
// [<command>] override [common] ones in the same file. InputError naming origin:line for a
// malformed line, an unknown section or key, a key set twice in one section, a switch that is not
// true/false, or a key that cannot be set in a file.
std::vector<ConfigToken> config_args(const std::string& text, const std::string& origin, const std::string& command,
                                     const boost::program_options::options_description& desc,
                                     const std::set<std::string>& other_keys = {});

// po::store of command-line tokens (args[0] is the program name); a po error becomes
// InputError(prefix + message + suffix), safe for any token (see config_file.cpp).
void store_tokens(const std::vector<std::string>& args, const boost::program_options::options_description& desc,
                  boost::program_options::variables_map& vm, const std::string& prefix, const std::string& suffix);
// Later files override earlier ones: the tokens of several config files, in the order given,
// merged into one list (one token per key).
std::vector<ConfigToken> layer_configs(const std::vector<std::vector<ConfigToken>>& files);
// Stores the tokens into vm one at a time (po::store: a key already in vm keeps its value), so an
// invalid value is an InputError naming its file:line.
void store_config(const std::vector<ConfigToken>& tokens, const boost::program_options::options_description& desc,
                  boost::program_options::variables_map& vm);

}  // namespace lorarec::cli
