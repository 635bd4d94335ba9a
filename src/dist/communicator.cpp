#include "lorarecycle/dist/communicator.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <thread>

#include "dist/mpi_check.h"
#include "lorarecycle/util/error.h"

namespace lorarec::dist {
namespace {

MPI_Datatype mpi_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kLong:
      return MPI_INT64_T;
    case at::kInt:
      return MPI_INT32_T;
    case at::kByte:
      return MPI_UINT8_T;
    default:
      throw RuntimeError(std::string("MPI communicator: unsupported dtype ") + c10::toString(t));
  }
}

void check_cpu_contiguous(const at::Tensor& t, const char* what) {
  if (!t.defined() || !t.device().is_cpu() || !t.is_contiguous())
    throw RuntimeError(std::string("MPI communicator: ") + what + " needs a defined, contiguous CPU tensor");
}

// MPI counts are int: move large buffers in chunks.
constexpr int64_t kChunk = INT_MAX / 16;

}  // namespace

void Communicator::all_reduce_mean(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> parts;
  for (const auto& t : tensors)
    if (t.defined()) parts.push_back(t);
  if (parts.empty() || size() == 1) return;
  const auto dtype = parts[0].scalar_type();
  const auto device = parts[0].device();
  std::vector<at::Tensor> flat_parts;
  for (const auto& t : parts) {
    if (t.scalar_type() != dtype || t.device() != device)
      throw RuntimeError("all_reduce_mean: tensors differ in dtype or device");
    flat_parts.push_back(t.detach().reshape({-1}));
  }
  at::Tensor flat = at::cat(flat_parts);  // the one flat buffer
  all_reduce_sum(flat);
  flat.div_(static_cast<double>(size()));
  int64_t off = 0;
  for (auto& t : parts) {
    const int64_t n = t.numel();
    at::NoGradGuard no_grad;
    t.detach().view_as(t).copy_(flat.narrow(0, off, n).view(t.sizes()));
    off += n;
  }
}

at::Tensor LocalCommunicator::gather_rows(const at::Tensor& local, int) { return local.to(at::kCPU).contiguous(); }

// ---- watchdog ----
struct CollectiveWatchdog::State {
  int rank = 0;
  std::string comm;
  std::atomic<const char*> what{nullptr};
  std::atomic<int64_t> since_ms{0};  // steady clock; valid while what != nullptr
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::thread thread;
};

namespace {
int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
std::atomic<int64_t> g_stop_signal_ms{0};
static_assert(std::atomic<int64_t>::is_always_lock_free, "signal handlers need a lock-free atomic");
}  // namespace

void note_stop_signal() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);  // async-signal-safe; the same clock as steady_clock on Linux
  g_stop_signal_ms.store(int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000);
}

CollectiveWatchdog::CollectiveWatchdog(double timeout_s, int rank, const char* comm_name)
    : timeout_s_(timeout_s), state_(std::make_unique<State>()) {
  if (!(timeout_s_ > 0)) return;
  State* st = state_.get();
  st->rank = rank;
  st->comm = comm_name;
  const auto limit_ms = static_cast<int64_t>(timeout_s_ * 1000.0);
  const auto poll = std::chrono::milliseconds(std::clamp<int64_t>(limit_ms / 10, 10, 1000));
  st->thread = std::thread([st, limit_ms, poll, timeout = timeout_s_] {
    std::unique_lock<std::mutex> lock(st->mu);
    while (!st->cv.wait_for(lock, poll, [st] { return st->stop; })) {
      const char* what = st->what.load();
      if (what == nullptr) continue;
      const int64_t stop_ms = g_stop_signal_ms.load();
      if (stop_ms != 0 && now_ms() - stop_ms > static_cast<int64_t>(kStopGraceSeconds * 1000) &&
          st->what.load() == what) {
        std::fprintf(stderr,
                     "lorarecycle: error [rank %d]: stop signal received while %s %s still waits for a peer after "
                     "%g s (a peer is gone); exiting\n",
                     st->rank, st->comm.c_str(), what, kStopGraceSeconds);
        std::fflush(stderr);
        std::_Exit(1);
      }
      const int64_t waited = now_ms() - st->since_ms.load();
      if (waited < limit_ms || st->what.load() != what) continue;
      std::fprintf(stderr,
                   "lorarecycle: error [rank %d]: %s %s did not complete within %g s (a peer is stuck or dead; "
                   "--collective-timeout); aborting\n",
                   st->rank, st->comm.c_str(), what, timeout);
      std::fflush(stderr);
      std::_Exit(1);  // the launcher sees a failed rank and ends the others
    }
  });
}

CollectiveWatchdog::~CollectiveWatchdog() {
  if (!state_ || !state_->thread.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
  }
  state_->cv.notify_all();
  state_->thread.join();
}

CollectiveWatchdog::Scope::Scope(CollectiveWatchdog* w, const char* what) : w_(w) {
  if (w_ == nullptr || !(w_->timeout_s_ > 0)) {
    w_ = nullptr;
    return;
  }
  w_->state_->since_ms.store(now_ms());
  w_->state_->what.store(what);
}

CollectiveWatchdog::Scope::~Scope() {
  if (w_ != nullptr) w_->state_->what.store(nullptr);
}

MpiCommunicator::MpiCommunicator(double timeout_s) {
  LORAREC_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  LORAREC_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  if (timeout_s > 0 && size_ > 1) watchdog_ = std::make_unique<CollectiveWatchdog>(timeout_s, rank_, "MPI");
}

MpiCommunicator::~MpiCommunicator() = default;

void MpiCommunicator::all_reduce_sum(at::Tensor& flat) {
  check_cpu_contiguous(flat, "all_reduce_sum");
  CollectiveWatchdog::Scope watch(watchdog_.get(), "all_reduce_sum");
  const MPI_Datatype type = mpi_type(flat.scalar_type());
  auto* base = static_cast<char*>(flat.data_ptr());
  for (int64_t off = 0; off < flat.numel(); off += kChunk) {
    const int n = static_cast<int>(std::min<int64_t>(kChunk, flat.numel() - off));
    LORAREC_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, base + off * flat.element_size(), n, type, MPI_SUM, MPI_COMM_WORLD));
  }
}

void MpiCommunicator::broadcast(at::Tensor& tensor, int root) {
  check_cpu_contiguous(tensor, "broadcast");
  CollectiveWatchdog::Scope watch(watchdog_.get(), "broadcast");
  auto* base = static_cast<char*>(tensor.data_ptr());
  const int64_t bytes = tensor.numel() * tensor.element_size();
  for (int64_t off = 0; off < bytes; off += kChunk) {
    const int n = static_cast<int>(std::min<int64_t>(kChunk, bytes - off));
    LORAREC_MPI_CHECK(MPI_Bcast(base + off, n, MPI_BYTE, root, MPI_COMM_WORLD));
  }
}

void MpiCommunicator::barrier() {
  CollectiveWatchdog::Scope watch(watchdog_.get(), "barrier");
  LORAREC_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
}

std::vector<std::uint64_t> MpiCommunicator::all_gather_u64(std::uint64_t value) {
  std::vector<std::uint64_t> out(size_);
  CollectiveWatchdog::Scope watch(watchdog_.get(), "all_gather");
  LORAREC_MPI_CHECK(MPI_Allgather(&value, 1, MPI_UINT64_T, out.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD));
  return out;
}

std::vector<double> MpiCommunicator::all_gather_f64(double value) {
  std::vector<double> out(size_);
  CollectiveWatchdog::Scope watch(watchdog_.get(), "all_gather");
  LORAREC_MPI_CHECK(MPI_Allgather(&value, 1, MPI_DOUBLE, out.data(), 1, MPI_DOUBLE, MPI_COMM_WORLD));
  return out;
}

at::Tensor MpiCommunicator::gather_rows(const at::Tensor& local_in, int root) {
  const at::Tensor local = local_in.to(at::kCPU).contiguous();
  if (local.dim() < 1) throw RuntimeError("gather_rows needs a tensor with at least one dimension");
  const int64_t row_bytes = local.numel() == 0 ? 0 : local.numel() / local.size(0) * local.element_size();
  // Agree on the trailing shape: every rank's row size must match root's.
  const auto row_sizes = all_gather_u64(static_cast<std::uint64_t>(row_bytes));
  const auto rows = all_gather_u64(static_cast<std::uint64_t>(local.size(0)));
  std::uint64_t ref = 0;
  for (int r = 0; r < size_; ++r)
    if (rows[r] > 0) ref = row_sizes[r];
  for (int r = 0; r < size_; ++r)
    if (rows[r] > 0 && row_sizes[r] != ref) throw RuntimeError("gather_rows: ranks disagree on the row size");
  std::vector<int> counts(size_), displs(size_);
  int64_t total_rows = 0, off = 0;
  for (int r = 0; r < size_; ++r) {
    const int64_t bytes = static_cast<int64_t>(rows[r] * ref);
    if (bytes > INT_MAX) throw RuntimeError("gather_rows: more than 2 GiB from one rank");
    counts[r] = static_cast<int>(bytes);
    displs[r] = static_cast<int>(off);
    off += bytes;
    if (off > INT_MAX) throw RuntimeError("gather_rows: more than 2 GiB in all");
    total_rows += static_cast<int64_t>(rows[r]);
  }
  at::Tensor out;
  if (rank_ == root) {
    std::vector<int64_t> shape = local.sizes().vec();
    shape[0] = total_rows;
    out = at::empty(shape, local.options());
  }
  CollectiveWatchdog::Scope watch(watchdog_.get(), "gather_rows");
  LORAREC_MPI_CHECK(MPI_Gatherv(local.data_ptr(), counts[rank_], MPI_BYTE, rank_ == root ? out.data_ptr() : nullptr,
                                counts.data(), displs.data(), MPI_BYTE, root, MPI_COMM_WORLD));
  return out;
}

std::string MpiCommunicator::broadcast_string(const std::string& value, int root) {
  std::uint64_t n = value.size();
  CollectiveWatchdog::Scope watch(watchdog_.get(), "broadcast_string");
  LORAREC_MPI_CHECK(MPI_Bcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD));
  std::string out = rank_ == root ? value : std::string(n, '\0');
  if (n > INT_MAX) throw RuntimeError("broadcast_string: string too long");
  if (n > 0) LORAREC_MPI_CHECK(MPI_Bcast(out.data(), static_cast<int>(n), MPI_CHAR, root, MPI_COMM_WORLD));
  return out;
}

std::uint64_t fnv1a64(const void* data, std::size_t n, std::uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

std::uint64_t hash_tensors(const std::vector<at::Tensor>& tensors) {
  std::uint64_t h = kFnvOffset;
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    const at::Tensor c = t.detach().to(at::kCPU).contiguous();
    h = fnv1a64(c.data_ptr(), static_cast<std::size_t>(c.numel() * c.element_size()), h);
  }
  return h;
}

}  // namespace lorarec::dist
