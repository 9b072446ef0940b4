// Parallel-for of the CPU kernels on a persistent pool of std::threads (no OpenMP: PyTorch ships
// its own OpenMP runtime, and two runtimes in one process fight over threads).
//
// The pool's threads are started once, at the first parallel call, and sleep between calls, so a
// call costs a wake-up (microseconds), not a thread start. Tasks are handed out through an atomic
// counter; the result of a task never depends on which thread ran it, so outputs are
// deterministic and independent of the thread count. One parallel call runs at a time; a call
// made while another is running (another Python thread) runs serially in its caller rather than
// wait. After fork() the child starts a fresh pool on its first parallel call.
#pragma once

#include <cstdint>
#include <functional>

namespace coun_fast::cpu {

// Below this many multiply-adds a kernel runs on the calling thread alone: waking the pool costs
// more than it saves.
constexpr int64_t kSerialWork = int64_t{1} << 18;

// The thread count to use for `work` multiply-adds with at most `num_threads` threads.
inline int threads_for(int64_t work, int num_threads) {
  return work < kSerialWork ? 1 : (num_threads < 1 ? 1 : num_threads);
}

// Calls fn(task) for task in [0, num_tasks) on up to num_threads threads (the caller's included).
// An exception thrown by fn stops the remaining tasks and is rethrown in the caller.
void parallel_for(int64_t num_tasks, int num_threads, const std::function<void(int64_t)>& fn);

}  // namespace coun_fast::cpu
