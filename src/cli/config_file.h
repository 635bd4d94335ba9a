// INI config files for the CLI: "[common]" and "[<command>]" sections whose keys are the
// command's long option names. Kept apart from options.cpp (no LibTorch) so that the fuzzer
// (tests/fuzz/fuzz_config.cpp) can drive it alone.
#pragma once

#include <boost/program_options.hpp>

#include <string>
#include <vector>

namespace lorarec::cli {

inline const char* kCommands[] = {"pretrain", "zoo", "invert", "metatrain", "eval", "predict", "embed"};

// The command-line tokens ("--key=value", "--switch") that the config text means for `command`,
// after a leading "lorarecycle". InputError naming origin:line for a malformed line, an unknown
// section or key, a switch that is not true/false, or a key that cannot be set in a file.
std::vector<std::string> config_args(const std::string& text, const std::string& origin, const std::string& command,
                                     const boost::program_options::options_description& desc);

// po::store of command-line tokens (args[0] is the program name); a po error becomes
// InputError(prefix + message + suffix), safe for any token (see config_file.cpp).
void store_tokens(const std::vector<std::string>& args, const boost::program_options::options_description& desc,
                  boost::program_options::variables_map& vm, const std::string& prefix, const std::string& suffix);
// Parses the tokens into vm (po::store); po errors become InputError naming origin.
void store_config(const std::vector<std::string>& args, const std::string& origin,
                  const boost::program_options::options_description& desc, boost::program_options::variables_map& vm);

}  // namespace lorarec::cli
