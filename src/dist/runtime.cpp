#include "lorarecycle/dist/runtime.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>

#include "dist/mpi_check.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace lorarec::dist {

const char* launcher_name(Launcher l) {
  switch (l) {
    case Launcher::kNone:
      return "none (single process)";
    case Launcher::kMpirun:
      return "mpirun (Open MPI)";
    case Launcher::kSrun:
      return "srun (Slurm, PMIx)";
    case Launcher::kPmix:
      return "PMIx launcher";
    case Launcher::kPmi:
      return "PMI launcher";
  }
  return "?";
}

Launcher detect_launcher() {
  if (env::get(env::kOmpiWorldSize)) return Launcher::kMpirun;
  if (env::get(env::kPmixRank))
    return env::get(env::kSlurmStepId) || env::get(env::kSlurmJobId) ? Launcher::kSrun : Launcher::kPmix;
  if (env::get(env::kPmiRank) && env::get(env::kPmiSize)) return Launcher::kPmi;
  return Launcher::kNone;
}

namespace {
// OpenBLAS reads OPENBLAS_NUM_THREADS when it loads, before main; when the user left it unset,
// set its thread count through its API (found at run time: the BLAS may not be OpenBLAS).
void set_blas_threads(int n) {
  if (env::get(env::kOpenblasThreads)) return;
  using SetThreads = void (*)(int);
  if (auto fn = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(n);
}
}  // namespace

Runtime::Runtime(int* argc, char*** argv, int threads) {
  launcher_ = detect_launcher();
  if (launcher_ != Launcher::kNone) {
    int provided = 0;
    LORAREC_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    mpi_active_ = true;
    LORAREC_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    LORAREC_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    LORAREC_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
    MPI_Comm local = MPI_COMM_NULL;
    LORAREC_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local));
    LORAREC_MPI_CHECK(MPI_Comm_rank(local, &local_rank_));
    LORAREC_MPI_CHECK(MPI_Comm_size(local, &local_size_));
    LORAREC_MPI_CHECK(MPI_Comm_free(&local));
  }
  log::set_rank(rank_);
  threads_ = threads > 0 ? threads : 1;
  at::set_num_threads(threads_);
  set_blas_threads(threads_);
}

int Runtime::cpus_for_rank() const {
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t mask;
  CPU_ZERO(&mask);
  const int bound = sched_getaffinity(0, sizeof(mask), &mask) == 0 ? CPU_COUNT(&mask) : static_cast<int>(online);
  if (online > 0 && bound < online) return std::max(1, bound);
  return std::max(1, bound / std::max(1, local_size_));
}

Runtime::~Runtime() {
  if (!mpi_active_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::string Runtime::describe() const {
  std::ostringstream os;
  os << "launcher: " << launcher_name(launcher_) << "; rank " << rank_ << " of " << world_size_ << "; local rank "
     << local_rank_ << " of " << local_size_ << "; " << threads_ << " compute thread(s) per rank";
  return os.str();
}

std::unique_ptr<Communicator> Runtime::make_communicator(const std::string& kind, double collective_timeout_s) const {
  if (kind == "local" || (kind == "auto" && !mpi_active_)) {
    if (world_size_ != 1)
      throw InputError("communicator 'local' asked for with world size " + std::to_string(world_size_));
    return std::make_unique<LocalCommunicator>();
  }
  if (kind == "mpi" || kind == "auto") {
    if (!mpi_active_) throw InputError("communicator 'mpi' needs an MPI launcher (mpirun or srun --mpi=pmix)");
    return std::make_unique<MpiCommunicator>(collective_timeout_s);
  }
  if (kind == "nccl") {
#ifdef LORAREC_HAVE_NCCL
    if (!mpi_active_) throw InputError("communicator 'nccl' needs an MPI launcher to exchange the NCCL unique id");
    return make_nccl_communicator(local_rank_, local_rank_, local_size_, collective_timeout_s);
#else
    throw InputError("communicator 'nccl' asked for, but this build has no NCCL support (LORAREC_WITH_NCCL)");
#endif
  }
  throw InputError("unknown communicator '" + kind + "' (expected auto, local, mpi or nccl)");
}

void Runtime::abort(int code) const {
  if (mpi_active_ && world_size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace lorarec::dist
