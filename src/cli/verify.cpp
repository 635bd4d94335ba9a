// lorarecycle verify RUN_DIR: completeness, integrity and the provenance chain of a run's outputs
// (lorarecycle/verify/verify.h). One line per output; exit 0 when all is well, 1 on any problem.
#include "lorarecycle/verify/verify.h"

#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/util/error.h"

namespace lorarec::cli {

int run_verify(int argc, char** argv, dist::Runtime& rt) {
  // RUN_DIR may be given as the first argument or as --run.
  std::vector<std::string> args(argv, argv + argc);
  if (args.size() > 1 && !args[1].empty() && args[1][0] != '-') args.insert(args.begin() + 1, "--run");
  std::vector<char*> av;
  for (auto& a : args) av.push_back(a.data());
  av.push_back(nullptr);

  std::string run_dir;
  bool quiet = false;
  CommonOptions common;
  po::options_description desc = common_options(common);
  po::options_description own("Verify options");
  // One option per line:
  // clang-format off
  own.add_options()
      ("run", po::value(&run_dir), "the run directory to check (also the first argument): every output directory under it (up to 3 levels down) that carries a .lorarecycle.json marker, or an output of an older version")
      ("quiet", po::bool_switch(&quiet), "print only the problems and the summary line");
  // clang-format on
  desc.add(own);
  if (!parse(
          "verify",
          "usage: lorarecycle verify RUN_DIR [--quiet]\n\n"
          "Checks a run's outputs (pre-trained models, zoo, pool, meta-LoRAs, their work directories, evaluations):\n"
          "completeness (everything the zoo manifest, the pool index and the results name is there and finished),\n"
          "integrity (every safetensors file's content digest, every pool file's data digest) and the provenance\n"
          "chain (each output's inputs, recorded by content digest, found in the run or at their recorded paths\n"
          "and unchanged since). Paths recorded relative are read from the current directory: run it where the\n"
          "pipeline ran. Exit status: 0 all well, 1 a problem found (each one line), 2 bad options.",
          static_cast<int>(av.size()) - 1, av.data(), desc, common, rt.rank()))
    return 0;
  if (run_dir.empty()) throw InputError("verify: RUN_DIR is required (lorarecycle verify RUN_DIR)");
  const verify::Report report = verify::verify_run(run_dir);
  if (rt.rank() == 0) {
    for (const auto& f : report.findings) {
      if (quiet && !f.problem) continue;
      std::printf("%-8s %-15s %s%s%s\n", f.problem ? "PROBLEM" : "ok", f.kind.c_str(), f.path.c_str(),
                  f.text.empty() ? "" : ": ", f.text.c_str());
    }
    std::printf("verify %s: %d output%s, %d problem%s\n", run_dir.c_str(), report.outputs,
                report.outputs == 1 ? "" : "s", report.problems, report.problems == 1 ? "" : "s");
    std::fflush(stdout);
  }
  return report.problems == 0 ? 0 : 1;
}

}  // namespace lorarec::cli
