// lorarecycle: thin main. Parse the command, start the runtime, dispatch, and turn any exception
// on any rank into one line on stderr + MPI_Abort + a meaningful exit status:
//   0 ok, 1 run-time failure, 2 bad input or options.
#include <c10/util/Exception.h>
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <set>
#include <string>

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace {

using lorarec::kExitInput;
using lorarec::kExitRuntime;

// glibc's malloc serves every block over its dynamic threshold (128 KiB, at most 32 MiB) with a
// fresh mmap and gives it back at free, and trims the heap top: every training step then
// allocates its activations anew and first-touches them page by page. Here (a 2-core VM) that
// cost a meta-training step 0.62 s of user and 0.23 s of system time against 0.22 s and none with
// the blocks reused from the heap, with bit-identical results and peak RSS within 7 %
// (bench/malloc_ab.sh, docs/metatrain.md). LORAREC_MALLOC=system, or any malloc setting of the
// user's own (GLIBC_TUNABLES glibc.malloc.*, MALLOC_*_), keeps glibc's defaults.
void tune_malloc() {
  const char* mode = std::getenv("LORAREC_MALLOC");
  if (mode != nullptr && std::strcmp(mode, "system") == 0) return;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if ((tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) ||
      std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr)
    return;
  constexpr int kKeep = 1 << 30;  // blocks up to 1 GiB come from the heap; up to 1 GiB free is kept
  if (mallopt(M_MMAP_THRESHOLD, kKeep) == 0) (void)mallopt(M_MMAP_THRESHOLD, 32 << 20);  // older glibc's cap
  (void)mallopt(M_TRIM_THRESHOLD, kKeep);
}

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int, char**, lorarec::dist::Runtime&);
};

const Command kTable[] = {
    {"pretrain", "(benchmark) supervised pre-training of the small VFM on the base classes",
     lorarec::cli::run_pretrain},
    {"zoo", "pre-tune K LoRAs (+ heads) on N-way tasks of a dataset, sharded over ranks", lorarec::cli::run_zoo},
    {"invert", "invert every zoo LoRA into surrogate images (HDF5 pool), sharded over ranks", lorarec::cli::run_invert},
    {"metatrain", "meta-train the meta-LoRA on the surrogate pool (episodes, data parallel)",
     lorarec::cli::run_metatrain},
    {"eval", "few-shot evaluation: nn, lora-avg, lora-ft and meta-LoRAs on the same seeded episodes",
     lorarec::cli::run_eval},
    {"predict", "classify query images from a labelled support set in one forward pass (VFM + meta-LoRA)",
     lorarec::cli::run_predict},
    {"embed", "features of every image of an HDF5 image set (VFM [+ LoRA])", lorarec::cli::run_embed},
    {"verify", "check a run's outputs: completeness, integrity and provenance chain (exit 1 on any problem)",
     lorarec::cli::run_verify},
};

// The option names of every command (config files' [common] keys), each command's entry point run
// in the mode where parse() only lists its options.
std::set<std::string> all_option_names(lorarec::dist::Runtime& rt) {
  std::set<std::string> names;
  lorarec::cli::OptionNameCollector collect(&names);
  for (const auto& c : kTable) {
    std::string name = c.name;
    char* argv[] = {name.data(), nullptr};
    c.run(1, argv, rt);
  }
  return names;
}

void usage(std::FILE* out) {
  std::fprintf(out,
               "lorarecycle %s: LoRA Recycle (CVPR 2025) for clusters\n\n"
               "usage: lorarecycle <command> [options]     (lorarecycle <command> --help for its options)\n"
               "       lorarecycle --version\n\ncommands:\n",
               LORAREC_VERSION);
  for (const auto& c : kTable) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out,
               "\nRuns alone (world size 1), under mpirun -np N, or under srun --mpi=pmix.\n"
               "Exit status: 0 ok, 1 run-time failure, 2 bad input or options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  tune_malloc();
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? kExitInput : 0;
  }
  if (std::strcmp(argv[1], "--version") == 0) {
    std::printf("lorarecycle %s\n", LORAREC_VERSION);
    return 0;
  }
  const Command* cmd = nullptr;
  for (const auto& c : kTable)
    if (std::strcmp(argv[1], c.name) == 0) cmd = &c;
  if (cmd == nullptr) {
    std::fprintf(stderr, "lorarecycle: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return kExitInput;
  }

  // A file-size limit (ulimit -f) makes writes fail with EFBIG, reported like any failed write,
  // instead of killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
  std::unique_ptr<lorarec::dist::Runtime> runtime;
  int rank = -1;
  int status = 0;
  try {
    runtime = std::make_unique<lorarec::dist::Runtime>(&argc, &argv);
    rank = runtime->rank();
    lorarec::cli::set_option_names_source([&runtime] { return all_option_names(*runtime); });
    lorarec::env::fault_point(rank, "start");
    status = cmd->run(argc - 1, argv + 1, *runtime);
  } catch (const lorarec::InputError& e) {
    std::fprintf(stderr, "lorarecycle %s: error [rank %d]: %s\n", cmd->name, rank, e.what());
    status = kExitInput;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "lorarecycle %s: error [rank %d]: LibTorch: %s\n", cmd->name, rank,
                 e.what_without_backtrace());
    status = kExitRuntime;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorarecycle %s: error [rank %d]: %s\n", cmd->name, rank, e.what());
    status = kExitRuntime;
  }
  std::fflush(stderr);
  // Errors abort every rank (never a hang). A command's own non-zero status that all ranks agree on
  // (metatrain's 75: stopped with a checkpoint) ends normally, so launchers see a clean exit code.
  if (status != 0 && status != lorarec::kExitCheckpointed && runtime)
    runtime->abort(status);  // never returns when other ranks exist
  return status;
}
