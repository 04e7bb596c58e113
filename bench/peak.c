/* peak.c - the measured fp32 FMA peak of this machine: the physical limit every speed figure in
   bench/RESULTS.md is stated beside. Each thread runs 24 independent FMA chains on the widest
   vectors the build has (AVX-512: 16 floats in 24 chains, AVX2: 8 floats in 12 chains), enough to
   cover the FMA latency times the number of FMA units while every chain stays in a register;
   best of 5 runs, 1 thread then 2.
   Usage: bench_peak [--threads-max N]      (make bench-gemm, bench/speed.sh) */
#define _POSIX_C_SOURCE 200809L
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ITERS 20000000L

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#if defined(__AVX512F__)
#define LANES 16
#define CHAINS 24
typedef __m512 vec;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define SUM _mm512_reduce_add_ps
#elif defined(__AVX2__) && defined(__FMA__)
#define LANES 8
#define CHAINS 12
typedef __m256 vec;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float SUM(__m256 v) {
    float t[8];
    int i;
    float s = 0;
    _mm256_storeu_ps(t, v);
    for (i = 0; i < 8; i++) s += t[i];
    return s;
}
#else
#error "bench_peak needs AVX2+FMA or AVX-512"
#endif

static void *chains(void *out) {
    vec acc[CHAINS], a = SET1(0.999999f), b = SET1(1e-7f), s;
    long it;
    int c;
    for (c = 0; c < CHAINS; c++) acc[c] = SET1((float)c);
    for (it = 0; it < ITERS; it++) { /* written out: a loop over acc[] would live in memory */
#define F4(i) acc[i] = FMA(acc[i], a, b); acc[i + 1] = FMA(acc[i + 1], a, b); \
              acc[i + 2] = FMA(acc[i + 2], a, b); acc[i + 3] = FMA(acc[i + 3], a, b);
        F4(0) F4(4) F4(8)
#if CHAINS == 24
        F4(12) F4(16) F4(20)
#endif
    }
    s = acc[0];
    for (c = 1; c < CHAINS; c++) s = ADD(s, acc[c]);
    *(float *)out = SUM(s); /* keeps the loop alive */
    return NULL;
}

int main(int argc, char **argv) {
    int tmax = 2, nt, rep;
    if (argc == 3 && !strcmp(argv[1], "--threads-max")) tmax = atoi(argv[2]);
    if (tmax < 1 || tmax > 64) { fprintf(stderr, "usage: bench_peak [--threads-max N]\n"); return 2; }
    for (nt = 1; nt <= tmax; nt++) {
        double best = 1e30;
        float sink[64];
        for (rep = 0; rep < 5; rep++) {
            pthread_t th[64];
            double t0 = now();
            int i;
            for (i = 1; i < nt; i++) pthread_create(&th[i], NULL, chains, &sink[i]);
            chains(&sink[0]);
            for (i = 1; i < nt; i++) pthread_join(th[i], NULL);
            t0 = now() - t0;
            if (t0 < best) best = t0;
        }
        printf("peak_summary: threads=%d gflops=%.1f vector_floats=%d (%.4g)\n", nt,
               2.0 * LANES * CHAINS * (double)ITERS * nt / best * 1e-9, LANES, (double)sink[0]);
    }
    return 0;
}
