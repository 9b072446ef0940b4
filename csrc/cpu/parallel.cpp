// The persistent thread pool behind cpu::parallel_for (see parallel.h).
#include "parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace coun_fast::cpu {
namespace {

// One parallel call: the function, the task counter, and how many helpers still work on it.
struct Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t num_tasks = 0;
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;

  void work() {
    try {
      for (int64_t t = next++; t < num_tasks; t = next++) (*fn)(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = num_tasks;
    }
  }
};

class Pool {
 public:
  // Runs `job` on the caller and up to `helpers` pool threads; returns when every task is done.
  void run(Job& job, int helpers) {
    ensure_threads(helpers);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      wanted_ = helpers;
      busy_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    job.work();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return busy_ == 0; });
    job_ = nullptr;
  }

  std::mutex& call_mutex() { return call_mutex_; }

 private:
  void ensure_threads(int count) {
    while (static_cast<int>(threads_.size()) < count) {
      const int id = static_cast<int>(threads_.size());
      threads_.emplace_back([this, id] { loop(id); });
      threads_.back().detach();  // the pool lives as long as the process
    }
  }

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      Job* job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= wanted_) continue;  // not needed for this call
        job = job_;
      }
      job->work();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--busy_ == 0) done_.notify_one();
      }
    }
  }

  std::mutex call_mutex_;  // one parallel call at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  int wanted_ = 0;
  int busy_ = 0;
};

// The process's pool. A forked child must not use the parent's (its threads do not exist there):
// the child forgets it (leaking it is the only safe option) and makes its own when needed.
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork_once;

Pool& pool() {
  std::call_once(g_atfork_once, [] {
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
  });
  Pool* current = g_pool.load();
  if (current == nullptr) {
    static std::mutex create_mutex;
    std::lock_guard<std::mutex> lock(create_mutex);
    current = g_pool.load();
    if (current == nullptr) {
      current = new Pool();
      g_pool.store(current);
    }
  }
  return *current;
}

}  // namespace

void parallel_for(int64_t num_tasks, int num_threads, const std::function<void(int64_t)>& fn) {
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(num_threads, num_tasks));
  Job job;
  job.fn = &fn;
  job.num_tasks = num_tasks;
  if (workers <= 1) {
    job.work();
  } else {
    Pool& shared = pool();
    std::unique_lock<std::mutex> call(shared.call_mutex(), std::try_to_lock);
    if (call.owns_lock()) {
      shared.run(job, static_cast<int>(workers - 1));
    } else {
      job.work();  // the pool is busy with another caller's call: run serially
    }
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace coun_fast::cpu
