/* A static aarch64 Linux program that runs kernel images under qemu-aarch64 for tests/native (no libc needed).
 *
 * Each image is what tinygrad's CPU device would execute: the kernel's object file laid out and relocated by
 * tinygrad's jit_loader, entry point at offset 0. The harness maps it executable and calls it once per core_id
 * partition, as tinygrad does. Standard input, all little-endian uint64 unless said otherwise:
 *   jobs; then per job: image_len, inputs, parts, out_len, in_len[inputs], the image, then each input's bytes.
 * Standard output: per job, the out_len bytes of its output buffer. Exit status 0, or 2 (short input), 3 (mmap
 * failed), 4 (bad header). The kernel is called as f(out, in0, ..., core_id): arguments go in x0..x7, so passing
 * them all as 64-bit words is the same call for any kernel of up to seven buffers. qemu keeps the instruction cache
 * coherent; on a real aarch64 machine an image written by read() would need a cache flush first. */
#include <stdint.h>

#define EG_SYS_READ 63
#define EG_SYS_WRITE 64
#define EG_SYS_EXIT_GROUP 94
#define EG_SYS_MMAP 222
#define EG_MAX_INPUTS 6

typedef uint64_t u64;
typedef void (*eg_entry)(u64, u64, u64, u64, u64, u64, u64, u64);

static long eg_syscall6(long n, long a, long b, long c, long d, long e, long f) {
  register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b, x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d, x4 __asm__("x4") = e, x5 __asm__("x5") = f;
  __asm__ __volatile__("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
  return x0;
}

static __attribute__((noreturn)) void eg_exit(int code) {
  for (;;) eg_syscall6(EG_SYS_EXIT_GROUP, code, 0, 0, 0, 0, 0);
}

static void eg_read(void* dst, u64 n) {
  uint8_t* p = (uint8_t*)dst;
  while (n) {
    long r = eg_syscall6(EG_SYS_READ, 0, (long)p, (long)n, 0, 0, 0);
    if (r <= 0) eg_exit(2);
    p += r; n -= (u64)r;
  }
}

static void eg_write(const void* src, u64 n) {
  const uint8_t* p = (const uint8_t*)src;
  while (n) {
    long r = eg_syscall6(EG_SYS_WRITE, 1, (long)p, (long)n, 0, 0, 0);
    if (r <= 0) eg_exit(2);
    p += r; n -= (u64)r;
  }
}

/* Fresh zeroed pages (PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS): aligned for any kernel. */
static void* eg_pages(u64 n) {
  long r = eg_syscall6(EG_SYS_MMAP, 0, (long)(n ? n : 1), 7, 0x22, -1, 0);
  if (r < 0 && r > -4096) eg_exit(3);
  return (void*)r;
}

static u64 eg_word(void) { u64 v; eg_read(&v, sizeof v); return v; }

void _start(void) {
  u64 jobs = eg_word();
  for (u64 j = 0; j < jobs; j++) {
    u64 image_len = eg_word(), inputs = eg_word(), parts = eg_word(), out_len = eg_word(), in_len[EG_MAX_INPUTS];
    if (inputs > EG_MAX_INPUTS || parts == 0 || image_len == 0) eg_exit(4);
    for (u64 i = 0; i < inputs; i++) in_len[i] = eg_word();
    void* image = eg_pages(image_len);
    eg_read(image, image_len);
    u64 args[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    args[0] = (u64)eg_pages(out_len);
    for (u64 i = 0; i < inputs; i++) { args[1 + i] = (u64)eg_pages(in_len[i]); eg_read((void*)args[1 + i], in_len[i]); }
    for (u64 core = 0; core < parts; core++) {
      args[1 + inputs] = core;
      ((eg_entry)image)(args[0], args[1], args[2], args[3], args[4], args[5], args[6], args[7]);
    }
    eg_write((const void*)args[0], out_len);
  }
  eg_exit(0);
}
