// The runtime of a multi-rank test binary (set in main_mpi.cpp; nullptr in single-process
// binaries, where tests make their own world-size-1 runtime).
#pragma once

namespace lorarec::dist {
class Runtime;
}

namespace lorarec::test {
extern dist::Runtime* g_runtime;
}
