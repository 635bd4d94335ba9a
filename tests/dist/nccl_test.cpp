// The NCCL communicator under mpirun -np 2, one GPU per rank: the collectives the data-parallel
// step uses, on CUDA tensors. Skipped, with the reason, where it cannot run: a build without
// NCCL, a LibTorch without CUDA, or fewer visible GPUs than ranks on the node (ctest reports
// "Skipped" through the test's SKIP_REGULAR_EXPRESSION). bench/gpu_check.sh runs the full step.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "test_runtime.h"

namespace lorarec::dist {
namespace {

// Empty when the NCCL communicator can run here, else why not.
std::string why_not() {
#ifndef LORAREC_HAVE_NCCL
  return "this build has no NCCL communicator (LORAREC_WITH_NCCL=OFF, or CUDA/NCCL not found at configure time)";
#else
  if (!at::hasCUDA()) return "no GPU: LibTorch sees no CUDA device (a CPU-only LibTorch, or no GPU on this machine)";
  const int gpus = static_cast<int>(at::getNumGPUs());
  if (gpus < test::g_runtime->local_size())
    return "needs one GPU per rank: " + std::to_string(gpus) + " visible, " +
           std::to_string(test::g_runtime->local_size()) + " ranks on this node";
  return "";
#endif
}

#define SKIP_UNLESS_NCCL()                 \
  do {                                     \
    const std::string why = why_not();     \
    if (!why.empty()) GTEST_SKIP() << why; \
  } while (0)

TEST(NcclCommunicator, AllReduceBroadcastAndHostGathers) {
  SKIP_UNLESS_NCCL();
  auto comm = test::g_runtime->make_communicator("nccl");
  const int r = comm->rank(), w = comm->size();
  const at::Device dev(at::kCUDA, test::g_runtime->local_rank());
  at::Tensor a = at::full({3, 2}, float(r + 1), at::TensorOptions().device(dev));
  at::Tensor b = (at::arange(5, at::kFloat) * float(r + 1)).to(dev);
  at::Tensor undefined;
  comm->all_reduce_mean({a, undefined, b});
  const float mean = float(w + 1) / 2.0f;
  EXPECT_TRUE(at::equal(a.cpu(), at::full({3, 2}, mean)));
  EXPECT_TRUE(at::equal(b.cpu(), at::arange(5, at::kFloat) * mean));

  at::Tensor s = at::full({1000}, int64_t(r + 1), at::TensorOptions().dtype(at::kLong).device(dev));
  comm->all_reduce_sum(s);
  EXPECT_TRUE(at::equal(s.cpu(), at::full({1000}, int64_t(w * (w + 1) / 2), at::kLong)));

  at::Tensor x = (r == 0 ? at::arange(7, at::kFloat) : at::zeros({7})).to(dev);
  comm->broadcast(x, 0);
  EXPECT_TRUE(at::equal(x.cpu(), at::arange(7, at::kFloat)));

  const auto u = comm->all_gather_u64(100 + r);
  ASSERT_EQ(static_cast<int>(u.size()), w);
  for (int i = 0; i < w; ++i) EXPECT_EQ(u[i], 100u + i);
  EXPECT_EQ(comm->broadcast_string(r == 0 ? "from root" : "", 0), "from root");
  comm->barrier();
}

}  // namespace
}  // namespace lorarec::dist
