// Private to the CLI: option groups and the parse step shared by every subcommand.
//
// Precedence: command line > config files (--config A.ini --config B.ini: B over A) > defaults. A
// config file holds "key = value" lines; keys before any section or under [common] apply to every
// command that has them, keys under [<command>] to that command only (and over [common]),
// sections of other commands are skipped. Unknown keys, unknown sections and invalid values are
// rejected with file:line.
#pragma once

#include <boost/program_options.hpp>
#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cli/config_file.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/model/vit.h"

namespace lorarec::dist {
class Communicator;
class Runtime;
}  // namespace lorarec::dist

namespace lorarec::cli {

namespace po = boost::program_options;

// Options every command has.
struct CommonOptions {
  std::vector<std::string> configs;  // INI files merged under the command line, later over earlier
  std::string log_level = "info";
  std::string device = "auto";     // auto | cpu | cuda | cuda:N
  std::string precision = "auto";  // fp32 | bf16 | auto (model::resolve_precision)
  bool bf16 = false;               // --bf16: the same as --precision bf16 (kept for older configs)
  bool tf32 = true;                // CUDA: fp32 matmuls and convolutions on TF32 tensor cores (--tf32 on|off)
  std::string comm = "auto";       // communicator: auto | local | mpi | nccl
  double collective_timeout = dist::kDefaultCollectiveTimeout;  // seconds; 0 = unbounded
};

po::options_description common_options(CommonOptions& opts);

// "a,b,,c" -> {"a", "b", "c"} (empty items dropped).
std::vector<std::string> split_list(const std::string& s);
// "q_proj,v_proj" -> modules (InputError for an unknown name).
std::vector<model::Module> parse_modules(const std::string& list);
// "2,3" -> {2, 3}; "" -> {} (InputError naming `option` for an item that is not a non-negative integer).
std::vector<int> parse_layers(const std::string& list, const std::string& option);

// Parses argv (argv[0] = the command name) with `desc` (which must include common_options) and
// the INI file named by --config. Returns false when --help was asked for (help printed on
// rank 0). Throws InputError for bad options.
bool parse(const std::string& command, const std::string& usage, int argc, char** argv, po::options_description& desc,
           CommonOptions& common, int rank);

// Every command's option names, so that a config file's [common] keys can be told from typos.
// main() installs the source (it knows the commands); parse() calls it when --config is given.
void set_option_names_source(std::function<std::set<std::string>()> source);
// True while the source runs: parse() then records the names of the description it is given into
// *names and returns false at once (as after --help), so each command's entry point lists its
// options without doing anything else.
struct OptionNameCollector {
  explicit OptionNameCollector(std::set<std::string>* names);
  ~OptionNameCollector();
  OptionNameCollector(const OptionNameCollector&) = delete;
  OptionNameCollector& operator=(const OptionNameCollector&) = delete;
};

// What a command needs once its options are valid: logs the runtime line (launcher, ranks),
// makes the communicator of --comm and picks the device of --device.
struct RunContext {
  std::unique_ptr<dist::Communicator> comm;
  c10::Device device;
  model::Precision precision = model::Precision::kFp32;  // of the ViT's forward passes
};
// Picks the device, the communicator and (for commands that run the ViT in the chosen
// precision: with_precision) the precision, and logs them on one line.
RunContext start(const char* tag, dist::Runtime& rt, const CommonOptions& common, bool with_precision = false);

}  // namespace lorarec::cli
