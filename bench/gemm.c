/* gemm.c - GFLOP/s of resbm_gemm against cblas_sgemm (OpenBLAS) on the GEMM shapes of one training
   step of d=256, L=8, f=688, V=256, T=128, batch 8 (N = 1024 tokens), at 1 and 2 threads.
   Both are timed in the same run, in alternating phases, best of several repetitions. Before any
   timing, each shape's result from both libraries is checked against the double-precision
   reference (a kernel that computes wrong results is reported and fails the run, not timed), and
   the OpenBLAS kernel in use is printed. Run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset
   (make bench-gemm does) so OpenBLAS picks its best kernel for this processor.
   --cold writes through 64 MiB before every timed call, so the operands come from memory as
   they do inside a training step (where the step's other kernels have evicted them).
   Usage: bench_gemm_blas [--reps R] [--tokens N] [--cold]        (make bench-gemm) */
#define _POSIX_C_SOURCE 200809L
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef BENCH_WITH_CBLAS
#include <cblas.h>
void openblas_set_num_threads(int);
char *openblas_get_corename(void);
#endif

/* max |x - ref| / max |ref| */
static double rel_err(const float *x, const float *ref, size_t n) {
    double e = 0, m = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        double d = x[i] > ref[i] ? x[i] - ref[i] : ref[i] - x[i], a = ref[i] < 0 ? -ref[i] : ref[i];
        if (!(d <= e)) e = d; /* NaN counts as the largest error */
        if (a > m) m = a;
    }
    return m > 0 ? e / m : e;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct { const char *what; int form; size_t M, N, K; int per_step; } shape;

static float *evict_buf; /* --cold: more than any last-level cache here */
#define EVICT_FLOATS ((size_t)16 << 20)
static void evict(void) {
    size_t i;
    if (!evict_buf) return;
    for (i = 0; i < EVICT_FLOATS; i += 16) evict_buf[i] += 1.0f;
}

#ifdef BENCH_WITH_CBLAS
static void blas(int form, float *C, const float *A, const float *B, size_t M, size_t N, size_t K) {
    cblas_sgemm(CblasRowMajor, form == RESBM_GEMM_TN ? CblasTrans : CblasNoTrans,
                form == RESBM_GEMM_NT ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, A,
                form == RESBM_GEMM_TN ? (int)M : (int)K, B, form == RESBM_GEMM_NT ? (int)K : (int)N,
                0.0f, C, (int)N);
}
#endif

int main(int argc, char **argv) {
    size_t T = 1024, i;
    int reps = 20, nt, s, r;
    for (i = 1; i < (size_t)argc; i++) {
        if (!strcmp(argv[i], "--cold")) evict_buf = (float *)calloc(EVICT_FLOATS, sizeof(float));
        if (i + 1 == (size_t)argc) break;
        if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--tokens")) T = (size_t)atol(argv[i + 1]);
    }
    {
        /* per_step: how many times one step (L = 8 blocks + head) runs the shape */
        shape sh[] = {
            {"fwd q,k,v,o   x W^T", RESBM_GEMM_NT, T, 256, 256, 8 * 4},
            {"fwd w1,w3     x W^T", RESBM_GEMM_NT, T, 688, 256, 8 * 2},
            {"fwd w2        g W^T", RESBM_GEMM_NT, T, 256, 688, 8},
            {"fwd lm_head   x W^T", RESBM_GEMM_NT, T, 256, 256, 1},
            {"bwd dx d*d    dy W ", RESBM_GEMM_NN, T, 256, 256, 8 * 4 + 1},
            {"bwd dgate     dy W2", RESBM_GEMM_NN, T, 688, 256, 8},
            {"bwd db        dh W1", RESBM_GEMM_NN, T, 256, 688, 8 * 2},
            {"bwd dW d*d  dy^T x ", RESBM_GEMM_TN, 256, 256, T, 8 * 4 + 1},
            {"bwd dW1,dW3 dh^T b ", RESBM_GEMM_TN, 688, 256, T, 8 * 2},
            {"bwd dW2     dy^T g ", RESBM_GEMM_TN, 256, 688, T, 8},
        };
        int ns = (int)(sizeof(sh) / sizeof(sh[0]));
        size_t big = T * 1024;
        float *A = (float *)malloc(big * 4), *B = (float *)malloc(big * 4), *C = (float *)malloc(big * 4);
        resbm_rng rng;
        resbm_rng_seed(&rng, 1, 1);
        for (i = 0; i < big; i++) { A[i] = resbm_rng_uniform(&rng) - 0.5f; B[i] = resbm_rng_uniform(&rng) - 0.5f; }
        printf("resbm_gemm vs cblas_sgemm, best of %d, tokens %zu, %s\n", reps, T,
               evict_buf ? "cold (64 MiB written before each call)" : "warm (operands in cache)");
#ifdef BENCH_WITH_CBLAS
        printf("OpenBLAS kernel: %s (OPENBLAS_CORETYPE=%s)\n", openblas_get_corename(),
               getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset");
#endif
        { /* correctness first: every shape, both libraries, against the double reference */
            float *R = (float *)malloc(big * 4);
            int bad = 0;
            resbm_pool *pool;
            resbm_pool_init(2, &pool);
            for (s = 0; s < ns; s++) {
                double eo, eb = 0;
                size_t n = sh[s].M * sh[s].N;
                resbm_gemm_ref(sh[s].form, 0, R, A, B, sh[s].M, sh[s].N, sh[s].K);
                resbm_gemm(pool, sh[s].form, 0, C, A, B, sh[s].M, sh[s].N, sh[s].K);
                eo = rel_err(C, R, n);
#ifdef BENCH_WITH_CBLAS
                blas(sh[s].form, C, A, B, sh[s].M, sh[s].N, sh[s].K);
                eb = rel_err(C, R, n);
#endif
                if (!(eo < 1e-5) || !(eb < 1e-5)) {
                    printf("WRONG RESULTS %s: relative error resbm %.3g, BLAS %.3g\n", sh[s].what, eo, eb);
                    bad = 1;
                }
            }
            resbm_pool_free(pool);
            free(R);
            if (bad) return 1;
            printf("results checked: every shape within 1e-5 of the double reference, both libraries\n");
        }
        for (nt = 1; nt <= 2; nt++) {
            resbm_pool *pool;
            double step_ours = 0, step_blas = 0, step_flops = 0, best_o[16], best_b[16];
            int round;
            resbm_pool_init(nt, &pool);
#ifdef BENCH_WITH_CBLAS
            openblas_set_num_threads(nt);
#endif
            printf("\nthreads %d\n%-22s %5s %5s %5s %10s %10s %7s\n", nt, "shape", "M", "N", "K",
                   "resbm GF/s", "BLAS GF/s", "ratio");
            /* Phases, not interleaved calls: an idle BLAS thread that still spins (OpenMP does)
               would otherwise steal the core from the other library's run. Two rounds, best of. */
            for (s = 0; s < ns; s++) best_o[s] = best_b[s] = 1e9;
            for (round = 0; round < 2; round++) {
                for (s = 0; s < ns; s++)
                    for (r = 0; r < reps; r++) {
                        double t0;
                        evict();
                        t0 = now();
                        resbm_gemm(pool, sh[s].form, 0, C, A, B, sh[s].M, sh[s].N, sh[s].K);
                        t0 = now() - t0;
                        best_o[s] = t0 < best_o[s] ? t0 : best_o[s];
                    }
#ifdef BENCH_WITH_CBLAS
                for (s = 0; s < ns; s++)
                    for (r = 0; r < reps; r++) {
                        double t0;
                        evict();
                        t0 = now();
                        blas(sh[s].form, C, A, B, sh[s].M, sh[s].N, sh[s].K);
                        t0 = now() - t0;
                        best_b[s] = t0 < best_b[s] ? t0 : best_b[s];
                    }
#endif
            }
            for (s = 0; s < ns; s++) {
                double fl = 2.0 * (double)sh[s].M * sh[s].N * sh[s].K;
                step_ours += best_o[s] * sh[s].per_step;
                step_blas += best_b[s] * sh[s].per_step;
                step_flops += fl * sh[s].per_step;
                printf("%-22s %5zu %5zu %5zu %10.1f %10.1f %7.2f\n", sh[s].what, sh[s].M, sh[s].N,
                       sh[s].K, fl / best_o[s] * 1e-9, fl / best_b[s] * 1e-9, best_b[s] / best_o[s]);
            }
            printf("%-22s %17s %10.1f %10.1f %7.2f\n", "one step's GEMMs", "", step_flops / step_ours * 1e-9,
                   step_flops / step_blas * 1e-9, step_blas / step_ours);
            printf("gemm_summary: threads=%d cold=%d resbm_gflops=%.1f blas_gflops=%.1f ratio=%.3f\n", nt,
                   evict_buf != NULL, step_flops / step_ours * 1e-9, step_flops / step_blas * 1e-9, step_blas / step_ours);
            resbm_pool_free(pool);
        }
        free(A); free(B); free(C);
    }
    return 0;
}
