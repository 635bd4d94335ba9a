// libFuzzer target: an INI config file turned into options (src/cli/config_file) and parsed by
// Boost.Program_options into a description shaped like the commands' (strings, ints, doubles,
// 64-bit seeds, switches). Refusals must be InputErrors.
#include <boost/program_options.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include "cli/config_file.h"
#include "lorarecycle/util/error.h"

namespace po = boost::program_options;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::string s;
  int i = 0;
  double d = 0;
  std::uint64_t u = 0;
  bool b = false;
  po::options_description desc("fuzz");
  desc.add_options()("help,h", "")("config", po::value(&s), "")("log-level", po::value(&s), "")(
      "model", po::value(&s), "")("way", po::value(&i)->default_value(5), "")("lr", po::value(&d), "")(
      "seed", po::value(&u), "")("bf16", po::bool_switch(&b), "")("mask-ratio", po::value(&d), "");
  try {
    po::variables_map vm;
    const auto tokens = lorarec::cli::config_args(text, "fuzz.ini", "eval", desc, {"data", "steps"});
    lorarec::cli::store_config(lorarec::cli::layer_configs({tokens, tokens}), desc, vm);
    po::notify(vm);
  } catch (const lorarec::InputError&) {
  } catch (const po::error&) {  // notify's own checks (e.g. required), also reported as input errors by the CLI
  }
  return 0;
}
