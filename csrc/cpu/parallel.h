// A minimal parallel-for on std::thread (no OpenMP: PyTorch ships its own OpenMP runtime, and two
// runtimes in one process fight over threads). Tasks are handed out through an atomic counter; the
// result of a task never depends on which thread ran it, so outputs are deterministic.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace coun_fast::cpu {

// Calls fn(task) for task in [0, num_tasks) on up to num_threads threads (the caller's included).
template <typename Fn>
void parallel_for(int64_t num_tasks, int num_threads, Fn&& fn) {
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(num_threads, num_tasks));
  if (workers == 1) {
    for (int64_t t = 0; t < num_tasks; ++t) fn(t);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    try {
      for (int64_t t = next++; t < num_tasks; t = next++) fn(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = num_tasks;
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int64_t w = 1; w < workers; ++w) threads.emplace_back(work);
  work();
  for (auto& thread : threads) thread.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace coun_fast::cpu
