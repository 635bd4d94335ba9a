// Process runtime: launcher detection, MPI initialisation, rank / world / local rank, the
// per-rank thread settings, and the communicator factory.
//
// Run alone (no launcher variables), the runtime does not touch MPI: world size 1.
// Under mpirun (OMPI_COMM_WORLD_*), srun --mpi=pmix (PMIX_RANK + SLURM_*) or another PMI
// launcher, it initialises MPI (MPI_THREAD_FUNNELED: only the main thread calls MPI) and
// finalises it on destruction. The local rank comes from MPI_Comm_split_type(SHARED).
#pragma once

#include <memory>
#include <string>

#include "lorarecycle/dist/communicator.h"

namespace lorarec::dist {

enum class Launcher { kNone, kMpirun, kSrun, kPmix, kPmi };
const char* launcher_name(Launcher launcher);
// Reads the environment only (no MPI call).
Launcher detect_launcher();

class Runtime {
 public:
  // Initialises MPI when a launcher is detected. Sets one compute thread per rank (LibTorch
  // intra-op threads = 1, OpenBLAS threads = 1 unless OPENBLAS_NUM_THREADS is set) unless
  // `threads` > 0 asks for more.
  Runtime(int* argc, char*** argv, int threads = 0);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  Launcher launcher() const { return launcher_; }
  bool mpi_active() const { return mpi_active_; }
  int threads() const { return threads_; }
  // CPUs this rank can count on: those of its affinity mask when it is bound to fewer than the
  // machine has (mpirun --bind-to), else the machine's CPUs shared by the ranks on this node
  // (at least 1).
  int cpus_for_rank() const;
  // One line for the first log message: launcher, rank/world, local rank, threads.
  std::string describe() const;

  // "auto" (MPI when world > 1, else local), "local", "mpi", "nccl". InputError for a kind that
  // cannot work here (nccl without NCCL support or without a CUDA device).
  std::unique_ptr<Communicator> make_communicator(const std::string& kind = "auto",
                                                  double collective_timeout_s = kDefaultCollectiveTimeout) const;

  // Ends the whole job from any rank: MPI_Abort when MPI is active (never returns), otherwise
  // returns so the caller can exit with `code`.
  void abort(int code) const;

 private:
  int rank_ = 0, world_size_ = 1, local_rank_ = 0, local_size_ = 1, threads_ = 1;
  Launcher launcher_ = Launcher::kNone;
  bool mpi_active_ = false;
};

}  // namespace lorarec::dist
