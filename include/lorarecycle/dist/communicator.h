// Communication behind one interface (STYLE 7): Local (world size 1, no MPI), Mpi (CPU tensors),
// Nccl (CUDA tensors; built when LORAREC_HAVE_NCCL).
//
// Every method marked "collective" must be called by all ranks in the same order.
// A failure throws RuntimeError naming the call, the rank and the library's error string.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lorarec::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* name() const = 0;

  // Collective. Averages the tensors over ranks, in place, through ONE flat buffer (one
  // message per call: the gradients of a LoRA are small and latency-bound). All tensors must
  // share dtype and device. Undefined tensors are skipped (on every rank alike).
  void all_reduce_mean(const std::vector<at::Tensor>& tensors);

  // Collective. Sums a contiguous tensor over ranks, in place.
  virtual void all_reduce_sum(at::Tensor& flat) = 0;
  // Collective. Copies root's contiguous tensor into everyone's (same shape and dtype).
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;
  // Collective. Small host values from every rank, in rank order.
  virtual std::vector<std::uint64_t> all_gather_u64(std::uint64_t value) = 0;
  virtual std::vector<double> all_gather_f64(double value) = 0;
  // Collective. Concatenates every rank's rows (dim 0; same trailing shape and dtype, any row
  // count) on `root` in rank order; other ranks get an undefined tensor. CPU result.
  virtual at::Tensor gather_rows(const at::Tensor& local, int root) = 0;
  // Collective. Every rank gets root's string.
  virtual std::string broadcast_string(const std::string& value, int root) = 0;
};

// World size 1: every collective is the identity.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* name() const override { return "local"; }
  void all_reduce_sum(at::Tensor&) override {}
  void broadcast(at::Tensor&, int) override {}
  void barrier() override {}
  std::vector<std::uint64_t> all_gather_u64(std::uint64_t v) override { return {v}; }
  std::vector<double> all_gather_f64(double v) override { return {v}; }
  at::Tensor gather_rows(const at::Tensor& local, int) override;
  std::string broadcast_string(const std::string& v, int) override { return v; }
};

// Bounds how long a rank may wait in one collective: a watchdog thread that, when a collective has
// been running for `timeout_s` seconds (a peer stuck or dead without the launcher noticing), prints
// one line naming this rank and the collective and ends the process with status 1, which makes the
// launcher (mpirun, srun --kill-on-bad-exit) end every rank. 0 disables it.
class CollectiveWatchdog {
 public:
  CollectiveWatchdog(double timeout_s, int rank, const char* comm_name);
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;
  // RAII: a collective is running while a Scope lives.
  class Scope {
   public:
    Scope(CollectiveWatchdog* w, const char* what);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    CollectiveWatchdog* w_;
  };

 private:
  struct State;
  double timeout_s_;
  std::unique_ptr<State> state_;
};

// Async-signal-safe: SIGTERM arrived (a launcher ending the job, e.g. srun after another task
// died). A rank waiting in a collective cannot act on it; when it is still waiting
// kStopGraceSeconds later (the peer it waits for is gone), the watchdog ends the process with a
// message instead of leaving it to the launcher's SIGKILL (Slurm's KillWait, 30 s by default).
// Longer than any step, so a graceful stop (all ranks signalled together) is never cut short.
void note_stop_signal();
inline constexpr double kStopGraceSeconds = 20.0;

inline constexpr double kDefaultCollectiveTimeout = 1800.0;  // seconds (PyTorch's default for NCCL)

// MPI_COMM_WORLD (MPI must be initialised: see Runtime). CPU tensors. Every collective is
// bounded by the watchdog (timeout_s, 0 = unbounded).
class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_s = 0);
  ~MpiCommunicator() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "mpi"; }
  void all_reduce_sum(at::Tensor& flat) override;
  void broadcast(at::Tensor& tensor, int root) override;
  void barrier() override;
  std::vector<std::uint64_t> all_gather_u64(std::uint64_t value) override;
  std::vector<double> all_gather_f64(double value) override;
  at::Tensor gather_rows(const at::Tensor& local, int root) override;
  std::string broadcast_string(const std::string& value, int root) override;

 private:
  int rank_ = 0, size_ = 1;
  std::unique_ptr<CollectiveWatchdog> watchdog_;
};

#ifdef LORAREC_HAVE_NCCL
// NCCL over CUDA tensors on one device per rank; the unique id travels over MPI. Host-side
// gathers go through MPI. Defined in nccl_communicator.cpp.
// A collective that does not complete within timeout_s aborts the NCCL communicator and throws.
std::unique_ptr<Communicator> make_nccl_communicator(int device_index, int local_rank, int local_size,
                                                     double timeout_s = kDefaultCollectiveTimeout);
#endif

// FNV-1a 64 over the bytes of the tensors (moved to CPU, contiguous): replicas that agree
// bit for bit have equal hashes.
std::uint64_t hash_tensors(const std::vector<at::Tensor>& tensors);
// FNV-1a 64 of n bytes, continuing from h (hash_tensors chains it over the tensors).
inline constexpr std::uint64_t kFnvOffset = 1469598103934665603ull;
std::uint64_t fnv1a64(const void* data, std::size_t n, std::uint64_t h = kFnvOffset);

}  // namespace lorarec::dist
