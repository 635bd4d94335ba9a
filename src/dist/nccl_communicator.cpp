// NCCL communicator: one ncclAllReduce on the flat gradient buffer per step.
// Built only when LORAREC_HAVE_NCCL (CUDA toolkit + NCCL found at configure time).
#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <thread>

// LORAREC_TORCH_HAS_CUDA is defined by CMake when LibTorch was built with CUDA (c10_cuda).
#ifdef LORAREC_TORCH_HAS_CUDA
#include <c10/cuda/CUDAStream.h>
#define LORAREC_TORCH_CUDA_STREAMS 1
#endif

#include "dist/mpi_check.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/util/error.h"

namespace lorarec::dist {
namespace {

#define LORAREC_CUDA_CHECK(expr)                                                                                       \
  do {                                                                                                                 \
    const cudaError_t lorarec_cuda_rc_ = (expr);                                                                       \
    if (lorarec_cuda_rc_ != cudaSuccess)                                                                               \
      throw ::lorarec::RuntimeError(                                                                                   \
          std::string("CUDA call ") + #expr + " failed at " + __FILE__ + ":" + std::to_string(__LINE__) +              \
          " on rank " + std::to_string(detail::world_rank_or_minus1()) + ": " + cudaGetErrorString(lorarec_cuda_rc_)); \
  } while (0)

// Aborts the communicator before throwing, so peers do not hang (STYLE 5).
#define LORAREC_NCCL_CHECK(comm, expr)                                                                   \
  do {                                                                                                   \
    const ncclResult_t lorarec_nccl_rc_ = (expr);                                                        \
    if (lorarec_nccl_rc_ != ncclSuccess) {                                                               \
      const std::string lorarec_nccl_last_ = (comm) != nullptr ? ncclGetLastError(comm) : "";            \
      if ((comm) != nullptr) ncclCommAbort(comm);                                                        \
      (comm) = nullptr;                                                                                  \
      throw ::lorarec::RuntimeError(std::string("NCCL call ") + #expr + " failed at " + __FILE__ + ":" + \
                                    std::to_string(__LINE__) + " on rank " +                             \
                                    std::to_string(detail::world_rank_or_minus1()) + ": " +              \
                                    ncclGetErrorString(lorarec_nccl_rc_) + " " + lorarec_nccl_last_);    \
    }                                                                                                    \
  } while (0)

ncclDataType_t nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kLong:
      return ncclInt64;
    case at::kInt:
      return ncclInt32;
    case at::kByte:
      return ncclUint8;
    default:
      throw RuntimeError(std::string("NCCL communicator: unsupported dtype ") + c10::toString(t));
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int device_index, int local_rank, int local_size, double timeout_s)
      : mpi_(timeout_s), device_(device_index), timeout_s_(timeout_s) {
    int n_dev = 0;
    LORAREC_CUDA_CHECK(cudaGetDeviceCount(&n_dev));
    if (n_dev == 0) throw InputError("communicator 'nccl': no CUDA device visible");
    if (local_size > n_dev)
      throw InputError("communicator 'nccl': " + std::to_string(local_size) + " ranks on this node but only " +
                       std::to_string(n_dev) + " GPU(s); NCCL cannot put two ranks on one GPU");
    device_ = local_rank % n_dev;
    LORAREC_CUDA_CHECK(cudaSetDevice(device_));
    LORAREC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    ncclUniqueId id{};
    if (mpi_.rank() == 0) LORAREC_NCCL_CHECK(comm_, ncclGetUniqueId(&id));
    LORAREC_MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD));
    LORAREC_NCCL_CHECK(comm_, ncclCommInitRank(&comm_, mpi_.size(), id, mpi_.rank()));
  }
  ~NcclCommunicator() override {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return mpi_.rank(); }
  int size() const override { return mpi_.size(); }
  const char* name() const override { return "nccl"; }

  void all_reduce_sum(at::Tensor& flat) override {
    check_cuda(flat);
    const cudaStream_t s = begin();
    LORAREC_NCCL_CHECK(comm_, ncclAllReduce(flat.data_ptr(), flat.data_ptr(), flat.numel(),
                                            nccl_type(flat.scalar_type()), ncclSum, comm_, s));
    finish(s);
  }
  void broadcast(at::Tensor& t, int root) override {
    check_cuda(t);
    const cudaStream_t s = begin();
    LORAREC_NCCL_CHECK(
        comm_, ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), root, comm_, s));
    finish(s);
  }
  void barrier() override { mpi_.barrier(); }
  std::vector<std::uint64_t> all_gather_u64(std::uint64_t v) override { return mpi_.all_gather_u64(v); }
  std::vector<double> all_gather_f64(double v) override { return mpi_.all_gather_f64(v); }
  at::Tensor gather_rows(const at::Tensor& local, int root) override {
    return mpi_.gather_rows(local.to(at::kCPU), root);
  }
  std::string broadcast_string(const std::string& v, int root) override { return mpi_.broadcast_string(v, root); }

 private:
  void check_cuda(const at::Tensor& t) const {
    if (!t.defined() || !t.is_cuda() || !t.is_contiguous() || t.device().index() != device_)
      throw RuntimeError("NCCL communicator needs a contiguous tensor on cuda:" + std::to_string(device_));
  }
  // The stream to enqueue on: LibTorch's current stream when it has CUDA streams, else our own
  // stream after the device has finished the work that produced the buffer.
  cudaStream_t begin() {
#ifdef LORAREC_TORCH_CUDA_STREAMS
    return c10::cuda::getCurrentCUDAStream(device_).stream();
#else
    LORAREC_CUDA_CHECK(cudaDeviceSynchronize());
    return stream_;
#endif
  }
  // Waits for the collective with a timeout; a stuck peer aborts the communicator.
  void finish(cudaStream_t s) {
    const auto start = std::chrono::steady_clock::now();
    while (true) {
      const cudaError_t q = cudaStreamQuery(s);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) LORAREC_CUDA_CHECK(q);
      ncclResult_t async = ncclSuccess;
      LORAREC_NCCL_CHECK(comm_, ncclCommGetAsyncError(comm_, &async));
      LORAREC_NCCL_CHECK(comm_, async);
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (timeout_s_ > 0 && waited > timeout_s_) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        throw RuntimeError("NCCL collective did not complete within " + std::to_string(timeout_s_) + " s on rank " +
                           std::to_string(rank()) + " (a peer is stuck or dead); communicator aborted");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  MpiCommunicator mpi_;
  int device_ = 0;
  double timeout_s_ = kDefaultCollectiveTimeout;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(int device_index, int local_rank, int local_size,
                                                     double timeout_s) {
  return std::make_unique<NcclCommunicator>(device_index, local_rank, local_size, timeout_s);
}

}  // namespace lorarec::dist
