// main for suites that run under mpirun: the runtime starts MPI; every rank runs every test.
#include <gtest/gtest.h>

#include "lorarecycle/dist/runtime.h"
#include "test_runtime.h"

namespace lorarec::test {
dist::Runtime* g_runtime = nullptr;
}

int main(int argc, char** argv) {
  lorarec::dist::Runtime runtime(&argc, &argv);
  lorarec::test::g_runtime = &runtime;
  ::testing::InitGoogleTest(&argc, argv);
  if (runtime.rank() != 0) {  // one report, from rank 0; failures on other ranks still fail
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  return rc;
}
