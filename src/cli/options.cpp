#include "cli/options.h"

#include <iostream>
#include <sstream>

#include "cli/config_file.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/model/vit.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"

namespace lorarec::cli {

po::options_description common_options(CommonOptions& o) {
  po::options_description d("Common options");
  // One option per line:
  // clang-format off
  d.add_options()
      ("help,h", "show this help and exit")
      ("config", po::value(&o.configs)->composing(), "INI config file (sections [common] and [<command>], '#' comments); may be given several times, a later file overrides an earlier one, and the command line overrides them all")
      ("log-level", po::value(&o.log_level)->default_value(o.log_level), "debug | info | warn | error (info is printed by rank 0 only)")
      ("device", po::value(&o.device)->default_value(o.device), "auto (CUDA when available, GPU = local rank mod count) | cpu | cuda | cuda:N")
      ("precision", po::value(&o.precision)->default_value(o.precision), "compute precision of the ViT in invert, metatrain, eval, embed and predict: fp32 | bf16 (autocast: matmuls in bf16, norms and softmax in float32; weights, gradients and optimizer state stay float32) | auto (bf16 on a CPU with avx512_bf16 or amx_bf16 and on a GPU of compute capability >= 8, else fp32). The choice and why is logged at the start; bf16 asked for on a CPU without avx512_bf16 or amx_bf16 runs emulated, slower than fp32, and a warning says so. pretrain and zoo always run in fp32")
      ("bf16", po::bool_switch(&o.bf16), "the same as --precision bf16 (older configs)")
      ("tf32", po::value(&o.tf32)->default_value(o.tf32, "on"), "on a GPU: fp32 matmuls and convolutions (fp32 precision, pretrain, zoo) run on TF32 tensor cores (PyTorch's allow_tf32 for cuBLAS and cuDNN; ~10 mantissa bits in the products, fp32 accumulation) | off: full fp32. No effect on CPUs. Logged at the start on a GPU")
      ("comm", po::value(&o.comm)->default_value(o.comm), "communicator: auto (NCCL when the device is CUDA and there are several ranks, else MPI under a launcher, else local) | local | mpi | nccl")
      ("collective-timeout", po::value(&o.collective_timeout)->default_value(o.collective_timeout), "seconds one collective (all-reduce, barrier, gather) may wait for the other ranks before this rank reports a stuck peer and ends the job (exit 1); 0 = wait forever");
  // clang-format on
  return d;
}

namespace {
std::function<std::set<std::string>()> g_names_source;
std::set<std::string>* g_collecting = nullptr;

std::set<std::string> option_names(const po::options_description& desc) {
  std::set<std::string> out;
  for (const auto& o : desc.options()) out.insert(o->long_name());
  return out;
}
}  // namespace

void set_option_names_source(std::function<std::set<std::string>()> source) { g_names_source = std::move(source); }

OptionNameCollector::OptionNameCollector(std::set<std::string>* names) { g_collecting = names; }
OptionNameCollector::~OptionNameCollector() { g_collecting = nullptr; }

bool parse(const std::string& command, const std::string& usage, int argc, char** argv, po::options_description& desc,
           CommonOptions& common, int rank) {
  if (g_collecting != nullptr) {
    const auto names = option_names(desc);
    g_collecting->insert(names.begin(), names.end());
    return false;
  }
  po::variables_map vm;
  try {
    store_tokens(std::vector<std::string>(argv, argv + argc), desc, vm, command + ": ",
                 " (see 'lorarecycle " + command + " --help')");
    if (vm.count("help")) {
      if (rank == 0) std::cout << usage << "\n\n" << desc << std::endl;
      return false;
    }
    if (vm.count("config")) {
      // Every command's option names: a [common] key that another command has is not a typo.
      const std::set<std::string> others = g_names_source ? g_names_source() : std::set<std::string>{};
      std::vector<std::vector<ConfigToken>> layers;
      for (const auto& path : vm["config"].as<std::vector<std::string>>())
        layers.push_back(config_args(fs::read_text(path), path, command, desc, others));
      store_config(layer_configs(layers), desc, vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw InputError(command + ": " + e.what() + " (see 'lorarecycle " + command + " --help')");
  }
  log::set_level(log::parse_level(common.log_level));
  return true;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');)
    if (!t.empty()) out.push_back(t);
  return out;
}

std::vector<model::Module> parse_modules(const std::string& list) {
  std::vector<model::Module> out;
  for (const auto& t : split_list(list)) out.push_back(model::parse_module(t));
  return out;
}

std::vector<int> parse_layers(const std::string& list, const std::string& option) {
  std::vector<int> out;
  for (const auto& t : split_list(list)) {
    if (t.empty() || t.size() > 4 || t.find_first_not_of("0123456789") != std::string::npos)
      throw InputError(option + ": '" + t + "' is not a layer index (comma-separated integers from 0)");
    out.push_back(std::stoi(t));
  }
  return out;
}

RunContext start(const char* tag, dist::Runtime& rt, const CommonOptions& common, bool with_precision) {
  LOG_INFO(tag, rt.describe());
  const c10::Device device = model::select_device(common.device, rt.local_rank());
  std::string comm = common.comm;
#ifdef LORAREC_HAVE_NCCL
  // CUDA tensors travel through NCCL; the MPI communicator takes CPU tensors.
  if (comm == "auto" && device.is_cuda() && rt.world_size() > 1) comm = "nccl";
#endif
  if (common.collective_timeout < 0) throw InputError(std::string(tag) + ": --collective-timeout must be >= 0");
  if (common.bf16 && common.precision != "auto" && common.precision != "bf16")
    throw InputError(std::string(tag) + ": --bf16 and --precision " + common.precision + " contradict each other");
  const model::PrecisionChoice prec = model::resolve_precision(common.bf16 ? "bf16" : common.precision, device);
  RunContext ctx{rt.make_communicator(comm, common.collective_timeout), device, prec.precision};
  std::string precision =
      with_precision ? std::string(", precision ") + model::precision_name(prec.precision) + " (" + prec.reason + ")"
                     : "";
  model::set_tf32(common.tf32);
  if (device.is_cuda()) precision += std::string(", tf32 ") + (common.tf32 ? "on" : "off");
  if (with_precision)
    precision += model::fused_attention_available() ? ", attention fused (scaled_dot_product_attention)"
                                                    : ", attention explicit (LibTorch < 2.0 has no fused kernel)";
  LOG_INFO(tag, "communicator " << ctx.comm->name() << ", device " << device.str() << precision);
  if (with_precision && !prec.warning.empty()) LOG_WARN(tag, "precision bf16: " << prec.warning);
  return ctx;
}

}  // namespace lorarec::cli
