/* The threaded runner: replays a captured graph's compiled kernels on a pool of threads.
 *
 * tinygrad 0.14's CPU device runs a kernel's core_id partitions one after another on one thread; this runs them on
 * `n` threads (thread t takes partitions t, t+n, ...). A kernel with one partition runs on thread 0, and consecutive
 * one-partition kernels need no barrier (one thread runs them in order), so threads meet only around the kernels
 * that are split: the matmuls. Built as a shared library with the system clang (runtime/native/runner.py), not by
 * tinygrad: it is the host side, called through ctypes, which releases the GIL for the whole step.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EG_MAX_ARGS 24
#define EG_MAX_THREADS 256

typedef struct {
  void* fn;         /* the kernel's entry point */
  int32_t parts;    /* partitions (launch size) */
  int32_t core_arg; /* index of the core_id argument, or -1 */
  uint64_t args[EG_MAX_ARGS];
} eg_step;

typedef void (*eg_kernel)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                          uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                          uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);

typedef struct {
  int n;
  pthread_t threads[EG_MAX_THREADS];
  pthread_mutex_t lock;
  pthread_cond_t wake;
  int generation, quit;                 /* under lock: a new step list, or exit */
  const eg_step* steps;
  int nsteps;
  atomic_int arrived, sense;            /* the spin barrier */
  int main_sense;                       /* the barrier sense of the calling thread (thread 0) */
} eg_pool;

typedef struct { eg_pool* pool; int tid; } eg_worker_arg;

static inline void eg_relax(int spins) {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
  if (spins > 4096) sched_yield(); /* a shared or oversubscribed machine: let the thread we wait for run */
}

static void eg_barrier(eg_pool* p, int* local) {
  *local = !*local;
  if (atomic_fetch_add(&p->arrived, 1) == p->n - 1) {
    atomic_store(&p->arrived, 0);
    atomic_store(&p->sense, *local);
  } else {
    for (int s = 0; atomic_load(&p->sense) != *local; s++) eg_relax(s);
  }
}

static inline void eg_call(const eg_step* s, int part) {
  uint64_t a[EG_MAX_ARGS];
  memcpy(a, s->args, sizeof a);
  if (s->core_arg >= 0) a[s->core_arg] = (uint64_t)part;
  ((eg_kernel)s->fn)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14],
                     a[15], a[16], a[17], a[18], a[19], a[20], a[21], a[22], a[23]);
}

static void eg_run_steps(eg_pool* p, int tid, int* local) {
  int prev_split = 0;
  for (int i = 0; i < p->nsteps; i++) {
    const eg_step* s = &p->steps[i];
    int split = s->parts > 1;
    if (p->n > 1 && (split || prev_split)) eg_barrier(p, local);
    if (split) { for (int part = tid; part < s->parts; part += p->n) eg_call(s, part); }
    else if (tid == 0) { for (int part = 0; part < s->parts; part++) eg_call(s, part); }
    prev_split = split;
  }
  if (p->n > 1) eg_barrier(p, local);
}

static void* eg_worker(void* v) {
  eg_worker_arg w = *(eg_worker_arg*)v;
  free(v);
  eg_pool* p = w.pool;
  int local = 0, seen = 0;
  for (;;) {
    pthread_mutex_lock(&p->lock);
    while (p->generation == seen && !p->quit) pthread_cond_wait(&p->wake, &p->lock);
    if (p->quit) { pthread_mutex_unlock(&p->lock); return 0; }
    seen = p->generation;
    pthread_mutex_unlock(&p->lock);
    eg_run_steps(p, w.tid, &local);
  }
}

void* eg_pool_create(int n) {
  if (n < 1 || n > EG_MAX_THREADS) return 0;
  eg_pool* p = (eg_pool*)calloc(1, sizeof(eg_pool));
  if (!p) return 0;
  p->n = n;
  pthread_mutex_init(&p->lock, 0);
  pthread_cond_init(&p->wake, 0);
  for (int t = 1; t < n; t++) {
    eg_worker_arg* w = (eg_worker_arg*)malloc(sizeof(eg_worker_arg));
    w->pool = p; w->tid = t;
    if (!w || pthread_create(&p->threads[t], 0, eg_worker, w) != 0) { free(w); p->n = t; break; }
  }
  return p;
}

int eg_pool_threads(void* v) { return ((eg_pool*)v)->n; }

/* Run the steps on every thread of the pool; returns when all are done. */
void eg_run(void* v, const eg_step* steps, int nsteps) {
  eg_pool* p = (eg_pool*)v;
  pthread_mutex_lock(&p->lock);
  p->steps = steps; p->nsteps = nsteps; p->generation++;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->lock);
  eg_run_steps(p, 0, &p->main_sense);
}

void eg_pool_destroy(void* v) {
  eg_pool* p = (eg_pool*)v;
  pthread_mutex_lock(&p->lock);
  p->quit = 1;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->lock);
  for (int t = 1; t < p->n; t++) pthread_join(p->threads[t], 0);
  free(p);
}

int eg_step_size(void) { return (int)sizeof(eg_step); }
int eg_max_args(void) { return EG_MAX_ARGS; }
