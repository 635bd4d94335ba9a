#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "test_runtime.h"

namespace lorarec::test {
dist::Runtime* g_runtime = nullptr;
}

int main(int argc, char** argv) {
  at::set_num_threads(1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
