// uaf_guard.c: a use-after-free trap for one range of allocation sizes, preloaded into a process
// (docs/reliability.md "Teardown": hunting the store that corrupted the heap in the OpenVINO teardown crash).
//
// malloc / calloc of GUARD_MIN..GUARD_MAX bytes (default 400..1024; glibc's corrupted chunk was a 528-byte one) get a
// 4 KiB page of their own from a reserved pool; free() hands the page back to the kernel and makes it inaccessible,
// never to be reused. A later load or store into the freed object faults at the very instruction, and the SIGSEGV
// handler prints the address, the object's size, the stacks that allocated and freed it (raw return addresses), the
// faulting stack and /proc/self/maps (to turn addresses into library + offset). Other sizes go to glibc.
//
//   gcc -O2 -fPIC -shared -o uaf_guard.so benchmarks/uaf_guard.c -ldl
//   GUARD_MIN=256 GUARD_MAX=2048 LD_PRELOAD=./uaf_guard.so python ...
//   python benchmarks/ov_teardown.py --core per-cycle --exit-wait off --runner base --wrap "env LD_PRELOAD=$PWD/uaf_guard.so"
//
// About 2.5x slower per teardown cycle; with more freed pages than vm.max_map_count allows, later frees stay readable
// (it says so once on stderr).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

#define PAGE 4096UL
#define POOL_PAGES (4UL << 20) /* 16 GiB of address space */
#define FRAMES 12

static char *pool;
static uint32_t *sizes;
static void **alloc_bt, **free_bt;
static atomic_ulong next_page;
static size_t gmin = 400, gmax = 1024;
static int ready;

static void wr(const char *s) { (void)!write(2, s, strlen(s)); }
static void wrhex(const char *label, uintptr_t v) {
    char b[64];
    int n = snprintf(b, sizeof b, "%s0x%lx\n", label, (unsigned long)v);
    (void)!write(2, b, n);
}
static void dump_bt(void **bt) {
    for (int i = 0; i < FRAMES && bt[i]; i++) wrhex("    ", (uintptr_t)bt[i]);
}

static void on_segv(int sig, siginfo_t *si, void *uc_) {
    ucontext_t *uc = uc_;
    uintptr_t a = (uintptr_t)si->si_addr;
    wr("\n=== guard: SIGSEGV ===\n");
    wrhex("fault address: ", a);
    wrhex("fault pc: ", (uintptr_t)uc->uc_mcontext.gregs[REG_RIP]);
    if (pool && a >= (uintptr_t)pool && a < (uintptr_t)pool + POOL_PAGES * PAGE) {
        size_t pg = (a - (uintptr_t)pool) / PAGE;
        wrhex("in a freed guarded object, offset ", a - ((uintptr_t)pool + pg * PAGE));
        wrhex("object size ", sizes[pg]);
        wr("allocated at:\n");
        dump_bt(alloc_bt + pg * FRAMES);
        wr("freed at:\n");
        dump_bt(free_bt + pg * FRAMES);
    }
    wr("faulting stack:\n");
    void *bt[32];
    int n = backtrace(bt, 32);
    backtrace_symbols_fd(bt, n, 2);
    wr("maps:\n");
    int fd = open("/proc/self/maps", O_RDONLY);
    char buf[4096];
    ssize_t k;
    while (fd >= 0 && (k = read(fd, buf, sizeof buf)) > 0) (void)!write(2, buf, k);
    signal(sig, SIG_DFL);
    raise(sig);
}

__attribute__((constructor)) static void init(void) {
    const char *e;
    if ((e = getenv("GUARD_MIN"))) gmin = strtoul(e, 0, 10);
    if ((e = getenv("GUARD_MAX"))) gmax = strtoul(e, 0, 10);
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    pool = mmap(0, POOL_PAGES * PAGE, PROT_READ | PROT_WRITE, flags, -1, 0);
    sizes = mmap(0, POOL_PAGES * sizeof(uint32_t), PROT_READ | PROT_WRITE, flags, -1, 0);
    alloc_bt = mmap(0, POOL_PAGES * FRAMES * sizeof(void *), PROT_READ | PROT_WRITE, flags, -1, 0);
    free_bt = mmap(0, POOL_PAGES * FRAMES * sizeof(void *), PROT_READ | PROT_WRITE, flags, -1, 0);
    if (pool == MAP_FAILED || sizes == MAP_FAILED || alloc_bt == MAP_FAILED || free_bt == MAP_FAILED) {
        wr("guard: mmap failed, not guarding\n");
        pool = 0;
        return;
    }
    void *warm[4];
    backtrace(warm, 4); /* loads the unwinder now, not inside malloc */
    struct sigaction sa = {0};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, 0);
    ready = 1;
}

static int in_pool(void *p) {
    return pool && (char *)p >= pool && (char *)p < pool + POOL_PAGES * PAGE;
}

static void *guarded(size_t n) {
    unsigned long pg = atomic_fetch_add(&next_page, 1);
    if (pg >= POOL_PAGES) return 0;
    sizes[pg] = (uint32_t)n;
    backtrace(alloc_bt + pg * FRAMES, FRAMES);
    return pool + pg * PAGE;
}

void *malloc(size_t n) {
    if (ready && n >= gmin && n <= gmax) {
        void *p = guarded(n);
        if (p) return p;
    }
    return __libc_malloc(n);
}

void *calloc(size_t a, size_t b) {
    size_t n = a * b;
    if (ready && b && n / b == a && n >= gmin && n <= gmax) {
        void *p = guarded(n); /* fresh pages are zero */
        if (p) return p;
    }
    return __libc_calloc(a, b);
}

void free(void *p) {
    if (!in_pool(p)) {
        __libc_free(p);
        return;
    }
    size_t pg = ((char *)p - pool) / PAGE;
    if (!sizes[pg]) {
        wrhex("guard: double free of ", (uintptr_t)p);
        abort();
    }
    backtrace(free_bt + pg * FRAMES, FRAMES);
    sizes[pg] = sizes[pg] | 0x80000000u; /* keep the size, mark freed */
    madvise(pool + pg * PAGE, PAGE, MADV_DONTNEED);
    if (mprotect(pool + pg * PAGE, PAGE, PROT_NONE) != 0 && errno == ENOMEM) {
        static int said;
        if (!said++) wr("guard: out of mappings, freed pages stay accessible from now on\n");
    }
}

void *realloc(void *p, size_t n) {
    if (!in_pool(p)) return __libc_realloc(p, n);
    size_t pg = ((char *)p - pool) / PAGE;
    size_t old = sizes[pg] & 0x7fffffffu;
    void *q = malloc(n);
    if (!q) return 0;
    memcpy(q, p, old < n ? old : n);
    free(p);
    return q;
}

size_t malloc_usable_size(void *p) {
    static size_t (*next)(void *);
    if (in_pool(p)) return sizes[((char *)p - pool) / PAGE] & 0x7fffffffu;
    if (!next) next = (size_t(*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    return next(p);
}
