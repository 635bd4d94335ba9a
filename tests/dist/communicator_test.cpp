// Runs as a single process (Local communicator) and under mpirun -np 2 (Mpi communicator):
// the same assertions hold for any world size.
#include "lorarecycle/dist/communicator.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/model/vit.h"
#include "test_runtime.h"
#include "test_util.h"

namespace lorarec::dist {
namespace {

std::unique_ptr<Communicator> make_comm() {
  if (test::g_runtime != nullptr) return test::g_runtime->make_communicator("auto");
  return std::make_unique<LocalCommunicator>();
}

TEST(Communicator, AllReduceMeanOfSeveralTensorsIsExact) {
  auto comm = make_comm();
  const int r = comm->rank(), w = comm->size();
  // Small integers: sums are exact in float32.
  at::Tensor a = at::full({3, 2}, float(r + 1));
  at::Tensor b = at::arange(5, at::kFloat) * float(r + 1);
  at::Tensor undefined;
  comm->all_reduce_mean({a, undefined, b});
  const float mean = float(w + 1) / 2.0f;  // mean of 1..w
  EXPECT_TRUE(at::equal(a, at::full({3, 2}, mean)));
  EXPECT_TRUE(at::equal(b, at::arange(5, at::kFloat) * mean));
}

TEST(Communicator, AllReduceSumBroadcastGather) {
  auto comm = make_comm();
  const int r = comm->rank(), w = comm->size();
  at::Tensor s = at::full({1000}, int64_t(r + 1), at::kLong);
  comm->all_reduce_sum(s);
  EXPECT_TRUE(at::equal(s, at::full({1000}, int64_t(w * (w + 1) / 2), at::kLong)));

  at::Tensor x = r == 0 ? at::arange(7, at::kFloat) : at::zeros({7});
  comm->broadcast(x, 0);
  EXPECT_TRUE(at::equal(x, at::arange(7, at::kFloat)));

  const auto u = comm->all_gather_u64(100 + r);
  ASSERT_EQ(static_cast<int>(u.size()), w);
  for (int i = 0; i < w; ++i) EXPECT_EQ(u[i], 100u + i);
  EXPECT_EQ(comm->all_gather_f64(0.5 * r).back(), 0.5 * (w - 1));

  // Rank i contributes i + 1 rows holding i.
  const at::Tensor rows = at::full({r + 1, 3}, float(r));
  const at::Tensor g = comm->gather_rows(rows, 0);
  if (r == 0) {
    ASSERT_EQ(g.size(0), w * (w + 1) / 2);
    int64_t row = 0;
    for (int i = 0; i < w; ++i)
      for (int j = 0; j <= i; ++j, ++row) EXPECT_TRUE(at::equal(g[row], at::full({3}, float(i))));
  } else {
    EXPECT_FALSE(g.defined());
  }
  EXPECT_EQ(comm->broadcast_string(r == 0 ? "from root" : "", 0), "from root");
  comm->barrier();
}

// Gradient of a LoRA + head on the data of `rank` (deterministic per rank).
std::vector<at::Tensor> grads_for(const model::ClipVision& vit, model::Lora& lora, int rank) {
  for (auto& p : lora.parameters(true)) p.mutable_grad() = at::Tensor();
  at::manual_seed(1000 + rank);
  const at::Tensor x = at::randn({2, 3, 16, 16});
  const at::Tensor y = at::randint(0, 3, {2}, at::kLong);
  at::cross_entropy_loss(lora.head(vit.forward(x, {}, &lora).feature), y).backward();
  std::vector<at::Tensor> g;
  for (auto& p : lora.parameters(true)) g.push_back(p.grad().clone());
  return g;
}

TEST(Communicator, DataParallelStepMatchesSingleProcessAndReplicasAreIdentical) {
  auto comm = make_comm();
  const int r = comm->rank(), w = comm->size();
  const model::ClipVision vit = model::ClipVision::random(test::tiny_config(), 3);
  model::Lora lora(vit.config(), model::LoraConfig{}, 7);  // same seed on every rank
  lora.init_head(3, 8);
  at::manual_seed(77);  // same B on every rank
  for (const auto& [key, ad] : lora.adapters())
    lora.find(key.first, static_cast<model::Module>(key.second))->b.normal_(0, 0.1);  // B != 0: A gets gradients too
  lora.set_requires_grad(true, true);

  // Reference: the mean of every rank's gradient, computed here alone.
  std::vector<at::Tensor> reference;
  for (int i = 0; i < w; ++i) {
    const auto g = grads_for(vit, lora, i);
    if (reference.empty())
      reference = g;
    else
      for (size_t k = 0; k < g.size(); ++k) reference[k] += g[k];
  }
  for (auto& t : reference) t /= double(w);

  // Distributed: own gradient, all-reduced through one flat buffer.
  std::vector<at::Tensor> mine = grads_for(vit, lora, r);
  comm->all_reduce_mean(mine);
  for (size_t k = 0; k < mine.size(); ++k) EXPECT_LT(test::rel_error(mine[k], reference[k]), 1e-5) << k;

  // Every rank takes the same SGD-with-momentum-free step: replicas stay bit-identical.
  {
    at::NoGradGuard ng;
    auto params = lora.parameters(true);
    for (size_t k = 0; k < params.size(); ++k) params[k].sub_(1e-2 * mine[k]);
  }
  const auto hashes = comm->all_gather_u64(hash_tensors(lora.parameters(true)));
  for (const auto h : hashes) EXPECT_EQ(h, hashes[0]) << "replicas diverged";
}

TEST(Communicator, HashSeesEveryBit) {
  at::Tensor a = at::zeros({4});
  const auto h0 = hash_tensors({a});
  a[2] = 1e-30f;
  EXPECT_NE(hash_tensors({a}), h0);
}

}  // namespace
}  // namespace lorarec::dist
