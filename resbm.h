/* resbm.h - v0.3 - residual bottleneck pipeline training for transformers - MIT license (end of file)

   A single-header C library for training a transformer split into pipeline stages that talk over
   slow links. Between two stages sits a residual bottleneck (ResBM, arXiv 2604.11947): the sender
   compresses the d-wide residual stream to r channels, the receiver expands it back, both halves are
   trainable, and an explicit identity path carries r channels through untouched.

   USE
       Do this in exactly one C or C++ file:
           #define RESBM_IMPLEMENTATION
           #include "resbm.h"
       Everywhere else just #include "resbm.h". Link with -lm -pthread.

   OPTIONS (define before the implementing include)
       RESBM_STATIC          all functions static (private copy per translation unit)
       RESBMDEF              linkage of the public functions (default extern)
       RESBM_MALLOC(sz,u)    allocator with a user pointer (define both or neither);
       RESBM_FREE(p,u)         u is the model or stage config's `alloc_user` for what a model or
                             stage holds and its generate's buffer; NULL for everything else
                             (pools, a model's own pool too, hubs, shapers, safetensors files,
                             checkpoints, kernels' scratch)
       RESBM_ASSERT(x)       internal invariants only (never arguments or wire data)
       RESBM_USE_CBLAS       resbm_gemm calls cblas_sgemm (link -lopenblas); results then depend
                             on the BLAS's own threading and are not bit-identical across threads
       RESBM_NO_THREADS      no pthreads: pools run every task on the calling thread
       RESBM_I8_LEVELS       an experiment (default 127, the wire contract): the i8 encoder's
                             grid, values -L..L; bench/compress.sh's q4 rows build with 7

   EXAMPLE: one training step on one machine
       resbm_model_config mc = resbm_model_config_default();   // d=256, 8 layers, seq 128
       resbm_opt_config oc = resbm_opt_config_default();       // AdamW, lr 2e-3, warmup+cosine
       resbm_model *m;
       int rc = resbm_model_init(&mc, &oc, &m);
       if (rc) { fprintf(stderr, "%s\n", resbm_strerror(rc)); return 1; }
       float loss;
       for (int step = 0; step < 100; step++) {
           next_batch(tokens, targets);           // int32 [batch*seq] each, values < vocab
           rc = resbm_model_train_step(m, tokens, targets, mc.batch, 4, &loss);  // 4 microbatches
           if (rc) break;
       }
       resbm_model_free(m);

   EXAMPLE: drop the boundary into your own engine, over your own send/recv
       // Stage s, after its last layer (h [N,d] is your residual stream):
       resbm_boundary_config bc = resbm_boundary_config_default();
       bc.side = RESBM_ENCODER; bc.index = s; bc.d = d; bc.r = r; bc.max_tokens = N;
       resbm_boundary *enc;
       if ((rc = resbm_boundary_init(&bc, &oc, &enc))) return rc;
       resbm_boundary_forward(enc, 0, N, h, z);            // z [N,r]
       resbm_frame_info f = {RESBM_KIND_ACT, RESBM_WIRE_BF16, s, s + 1, step, micro, N, r};
       resbm_frame_encode(buf, cap, &len, &f, z);          // 40-byte header + N*r bf16 values
       my_send(s + 1, buf, len);                           // your socket, MPI, RDMA, pigeon...
       len = my_recv(s + 1, buf, cap);                     // dL/dz [N,r] comes back
       f.kind = RESBM_KIND_GRAD; f.from_stage = s + 1; f.to_stage = s;
       if ((rc = resbm_frame_decode(dz, N * r, buf, len, &f))) return rc;  // drop the step
       resbm_boundary_backward(enc, 0, dz, dh);            // dh = dL/dh: your backward goes on
       resbm_boundary_update(enc, clip_scale);             // its AdamW/Muon; _save/_load too
       // Stage s+1: the same with bc.side = RESBM_DECODER: forward z -> x [N,d] before your
       // first layer, backward dx -> dz, sent back as a RESBM_KIND_GRAD frame.

   EXAMPLE: or let resbm_stage run your layers (examples/gpt2.c is the whole case)
       resbm_layers L = {me, "mynet d=512 L=12", my_params, n_params, my_fwd, my_bwd, my_release};
       resbm_stage_config sc = resbm_stage_config_default();
       sc.model.host = &L; sc.model.d = 512; sc.model.stages = S; sc.model.stage = s;
       sc.model.r = 4; sc.n_micro = 8; sc.transport = my_transport;  // two callbacks
       resbm_stage *st;
       if ((rc = resbm_stage_init(&sc, &st))) return rc;
       rc = resbm_stage_step(st, tokens, targets, rows, &loss);  // decoder, your layers, encoder,
                                                                 // wire, 1F1B, clip, update

   MAP (search for "---- " and the name; declarations first, then the same order inside
   RESBM_IMPLEMENTATION, each layer's forward beside its backward)
       status codes, sizes, random numbers, arena, tensors      the basics
       thread pool, GEMM                                         what every kernel runs on
       layers                 embedding, rmsnorm, linear, RoPE, attention, SwiGLU, cross-entropy
       the residual bottleneck                                   the four kernels, grouped args
       parameters, host layers                                   resbm_param, resbm_layers
       the model              one stage: decoder, layers (built-in or the host's), encoder, loss
       optimizers             AdamW, Muon, SGD; all-or-nothing updates, rollback
       the boundary as an object                                 resbm_boundary
       wire format / codec, transport(s), transport conformance  frames, inproc, shaper, check
       stage runtime          job agreement, 1F1B, norm exchange, commit, abort, the async
                              schedule (weight versions, prediction, flush), eval, generate
       safetensors, checkpoints

   CONVENTIONS
       Row-major float32, one row per token. Dimension legend used in every shape comment:
         N tokens in a call (rows*seq), T sequence length, d model width, H heads, hd = d/H,
         f MLP hidden width, V vocabulary, r bottleneck width, m bottleneck hidden width.
       Layer kernels take outputs first, then inputs, then weights, then dimensions; the
       bottleneck kernels take their groups (shape, weights, grads, saved, scratch), then inputs,
       then the output. A `_backward` accumulates (+=) into parameter gradients and into dx where
       noted; zeroing is its own call. The pool argument may be NULL everywhere.
       Every public function returns RESBM_OK (0) or a negative RESBM_E* code (resbm_strerror
       explains it) and leaves its outputs untouched when it fails on validation.
       The library never prints, never exits and never aborts. No global mutable state.

   DETERMINISM
       One seed reproduces a run bit for bit on one machine and build. Parameter i is initialised
       from a PCG32 stream seeded by (seed, FNV-1a of its name), so a parameter gets the same
       values whichever stage owns it. Every parallel kernel gives each output element one owner
       and a fixed summation order, so results are bit-identical whatever the thread count.

   CHANGES
       0.4  the async schedule (resbm_stage_config.schedule, .predict, .async_warmup;
            resbm_stage_flush; stats.loss_step): overlapping steps, one step stale, weight
            versions and prediction, even in-flight depths, exact warm-up steps; exact mode
            unchanged, bit for bit
       0.3  host layers in resbm_model/resbm_stage (resbm_layers), resbm_boundary, grouped bottleneck
            kernels, a NULL pool everywhere; job agreement, abort frames, all-or-nothing steps with
            rollback and retry in place, the transport contract and resbm_transport_check.
       0.2  residual bottleneck (encoder/decoder with identity path), wire codec (f32, bf16, f16,
            i8; CRC32C), transports (in-process, shaping wrapper), stage runtime with 1F1B.
       0.1  tensors, arena, thread pool, GEMM (AVX-512/AVX2/scalar), transformer layers with
            backward, whole-model forward/backward, AdamW, Muon, SGD, safetensors writer.
*/
/* The implementation uses POSIX clocks, sleeps and files. Ask libc for them on every include,
   the plain one too (a host's own header often includes this one before the implementing include
   comes), and with _DEFAULT_SOURCE, which only adds to what a host gets by default (M_PI, strdup
   and the rest stay visible), never hides. A host that chose its feature macros keeps its own. It
   works when this header comes before any libc header of the file; otherwise see the #error in
   the implementation. */
#if !defined(_POSIX_C_SOURCE) && !defined(_XOPEN_SOURCE) && !defined(_GNU_SOURCE) && \
    !defined(_DEFAULT_SOURCE) && !defined(_BSD_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#ifndef RESBM_H
#define RESBM_H

#include <stddef.h>
#include <stdint.h>

#define RESBM_VERSION_MAJOR 0
#define RESBM_VERSION_MINOR 4

#ifndef RESBMDEF
#ifdef RESBM_STATIC
#if defined(__GNUC__) || defined(__clang__)
#define RESBMDEF static __attribute__((unused))
#else
#define RESBMDEF static
#endif
#else
#define RESBMDEF extern
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes: 0 success, negative failure, grouped by area ---------------------------- */
enum {
    RESBM_OK = 0,
    /* arguments and state */
    RESBM_EINVAL = -1,     /* an argument is NULL, zero, out of range or inconsistent */
    RESBM_ESTATE = -2,     /* the object is not in a state that allows this call */
    RESBM_ERANGE = -3,     /* a token id, index or value is outside its range */
    RESBM_ENONFINITE = -4, /* a NaN or Inf where finite values are required */
    RESBM_ENOSPACE = -5,   /* an output buffer is smaller than the result needs */
    RESBM_ENOTSUP = -6,    /* a mode this build does not have (bf16 GEMMs without AVX512_BF16) */
    /* memory */
    RESBM_ENOMEM = -10,    /* an allocation failed */
    RESBM_EOVERFLOW = -11, /* a size computation overflowed */
    /* threads */
    RESBM_ETHREAD = -20,   /* a thread, mutex or condition variable could not be created */
    /* files */
    RESBM_EIO = -30,       /* a file could not be opened, written, synced or renamed */
    RESBM_EFORMAT = -31,   /* a file is malformed */
    /* wire frames */
    RESBM_ETRUNC = -40,    /* frame shorter than its header says */
    RESBM_EMAGIC = -41,    /* frame does not start with "RBM1" */
    RESBM_EVERSION = -42,  /* frame version not supported */
    RESBM_EKIND = -43,     /* frame kind unknown or not the one expected */
    RESBM_EDTYPE = -44,    /* frame dtype unknown or not the one expected */
    RESBM_ESTAGE = -45,    /* frame from or to the wrong stage */
    RESBM_ESTEP = -46,     /* frame for another step */
    RESBM_EMICRO = -47,    /* frame for another microbatch */
    RESBM_ESHAPE = -48,    /* frame rows or cols not the ones expected */
    RESBM_ESIZE = -49,     /* frame payload size inconsistent with its shape and dtype */
    RESBM_ECRC = -50,      /* frame checksum mismatch */
    /* transport */
    RESBM_ETIMEDOUT = -60, /* no message within the timeout */
    RESBM_ECLOSED = -61,   /* the peer closed or is gone */
    RESBM_ETRANSPORT = -62, /* the transport failed to send or receive */
    RESBM_EMSGSIZE = -63,  /* a message larger than the receive buffer (it stays queued) */
    /* the pipeline */
    RESBM_EPEER = -70,     /* another stage failed this step (resbm_stage_why says which and why) */
    RESBM_EJOB = -71,      /* the neighbouring stage runs a different job (resbm_stage_why: the field) */
    /* host layers */
    RESBM_EHOST = -80      /* a resbm_layers callback failed with a code not its to give (unknown, or the runtime's own) */
};

RESBMDEF const char *resbm_strerror(int code);

/* ---- sizes: overflow-checked arithmetic (0 on success, RESBM_EOVERFLOW otherwise) --------------- */
RESBMDEF int resbm_size_mul(size_t *out, size_t a, size_t b);
RESBMDEF int resbm_size_add(size_t *out, size_t a, size_t b);

/* ---- random numbers: PCG32 (O'Neill, XSH-RR output), explicit state ------------------------------ */
typedef struct resbm_rng {
    uint64_t state;
    uint64_t inc; /* stream selector, always odd */
} resbm_rng;

RESBMDEF void resbm_rng_seed(resbm_rng *rng, uint64_t seed, uint64_t stream);
RESBMDEF uint32_t resbm_rng_u32(resbm_rng *rng);
RESBMDEF float resbm_rng_uniform(resbm_rng *rng); /* [0, 1), 24 random bits */
RESBMDEF float resbm_rng_normal(resbm_rng *rng);  /* N(0, 1), Box-Muller in double */
/* (with rng NULL: seed does nothing, the draws return 0) */

/* ---- arena: size first (base == NULL counts), then allocate once and carve ---------------------- */
typedef struct resbm_arena {
    unsigned char *base; /* NULL in the sizing pass */
    size_t cap;
    size_t used;
    int overflow; /* set when a request overflowed size_t or exceeded cap */
} resbm_arena;

/* Returns a slice of n elements of `elem` bytes at a multiple of 64 bytes from base (so 64-byte
   aligned when base is, as the sizing pass assumes); NULL in the sizing pass. */
RESBMDEF void *resbm_arena_push(resbm_arena *a, size_t n, size_t elem);

/* ---- tensors: a view, never an owner ----------------------------------------------------------- */
typedef struct resbm_tensor {
    float *data;
    int ndim;     /* 1 or 2 */
    size_t ne[2]; /* ne[0] rows, ne[1] columns (1 for a vector) */
} resbm_tensor;

/* ---- thread pool: workers start once and run every kernel call ----------------------------------- */
typedef struct resbm_pool resbm_pool;
typedef void (*resbm_task_fn)(void *ctx, size_t task, int thread);

/* nthreads >= 1 counts the caller: nthreads - 1 workers are started. */
RESBMDEF int resbm_pool_init(int nthreads, resbm_pool **out);
RESBMDEF void resbm_pool_free(resbm_pool *pool);
RESBMDEF int resbm_pool_threads(const resbm_pool *pool);
/* Makes sure every thread has at least this many floats of kernel scratch (grows, never
   shrinks; not while the pool runs). Attention takes its fast blocked path when
   RESBM_ATTENTION_WORK(T) floats are reserved. */
RESBMDEF int resbm_pool_reserve(resbm_pool *pool, size_t floats_per_thread);
/* Runs fn(ctx, task, thread) for task in [0, ntasks) and returns when all are done. Tasks are
   taken in any order by any thread; a task must write only what it owns. A pool takes one
   calling thread at a time: a call while another thread's call runs returns RESBM_ESTATE (so
   does every kernel given that pool) instead of racing on its buffers. */
RESBMDEF int resbm_pool_run(resbm_pool *pool, resbm_task_fn fn, void *ctx, size_t ntasks);
/* The precision of resbm_gemm on this pool (every layer and model GEMM given it; attention's
   products and Muon stay f32). RESBM_PRECISION_BF16, an opt-in: A and B are rounded to bf16
   (nearest even) inside the GEMM and their products summed in f32 (AVX512_BF16 dot products,
   or AMX tiles where there are), C stays f32; about 3 significant digits per operand. Still
   bit-identical across thread counts. RESBM_ENOTSUP in builds without it (the pool keeps f32);
   not while the pool runs. */
enum { RESBM_PRECISION_F32 = 0, RESBM_PRECISION_BF16 = 1 };
RESBMDEF int resbm_pool_set_precision(resbm_pool *pool, int precision);
RESBMDEF int resbm_pool_precision(const resbm_pool *pool); /* F32 for a NULL pool */
/* What runs this pool's GEMMs, for logs and benchmarks: "f32 avx512", "f32 avx2", "f32 scalar",
   "f32 cblas", "bf16 avx512" (AVX512_BF16 dot products) or "bf16 amx" (AMX tiles, where the
   build targets them and the OS grants them; RESBM_NO_AMX leaves them out). */
RESBMDEF const char *resbm_pool_kernel(const resbm_pool *pool);

/* ---- GEMM: C[M,N] (+)= op(A) op(B), row-major, contiguous --------------------------------------- */
enum {
    RESBM_GEMM_NT = 0, /* C = A[M,K] . B[N,K]^T   (y = x W^T)      */
    RESBM_GEMM_NN = 1, /* C = A[M,K] . B[K,N]     (dx = dy W)      */
    RESBM_GEMM_TN = 2  /* C = A[K,M]^T . B[K,N]   (dW = dy^T x)    */
};
/* accumulate = 0 overwrites C, 1 adds to it. Bit-identical for every thread count of `pool`. */
RESBMDEF int resbm_gemm(resbm_pool *pool, int form, int accumulate, float *C, const float *A,
                        const float *B, size_t M, size_t N, size_t K);
/* The naive triple loop (double accumulator): the reference the tests compare against. */
RESBMDEF int resbm_gemm_ref(int form, int accumulate, float *C, const float *A, const float *B,
                            size_t M, size_t N, size_t K);

/* ---- layers: each a forward/backward pair; pool may be NULL (the calling thread) ----------------- */
/* x[n] = emb[tok[n]]. Token ids out of range -> RESBM_ERANGE, out untouched. */
RESBMDEF int resbm_embedding_forward(float *out /*[N,d]*/, const int32_t *tok /*[N]*/,
                                     const float *emb /*[V,d]*/, size_t N, size_t d, size_t V);
RESBMDEF int resbm_embedding_backward(float *demb /*[V,d] +=*/, const float *dout /*[N,d]*/,
                                      const int32_t *tok, size_t N, size_t d, size_t V);

/* out = x / sqrt(mean(x^2) + 1e-5) * g; rstd saved for backward. pool may be NULL. */
RESBMDEF int resbm_rmsnorm_forward(resbm_pool *pool, float *out /*[N,d]*/, float *rstd /*[N]*/,
                                   const float *x /*[N,d]*/, const float *g /*[d]*/, size_t N,
                                   size_t d);
/* dx += d(out)/dx . dout, dg += d(out)/dg . dout. */
RESBMDEF int resbm_rmsnorm_backward(resbm_pool *pool, float *dx /*[N,d] +=*/, float *dg /*[d] +=*/,
                                    const float *dout, const float *x, const float *g,
                                    const float *rstd, size_t N, size_t d);

/* out = x w^T. */
RESBMDEF int resbm_linear_forward(resbm_pool *pool, float *out /*[N,o]*/, const float *x /*[N,i]*/,
                                  const float *w /*[o,i]*/, size_t N, size_t in, size_t o);
/* dx (+)= dout w (accumulate_dx 0 or 1; dx may be NULL), dw += dout^T x. */
RESBMDEF int resbm_linear_backward(resbm_pool *pool, float *dx /*[N,i]*/, float *dw /*[o,i] +=*/,
                                   const float *dout /*[N,o]*/, const float *x, const float *w,
                                   size_t N, size_t in, size_t o, int accumulate_dx);

/* RoPE tables: cos/sin [T, hd/2], angle = pos * theta^(-2j/hd). */
RESBMDEF int resbm_rope_tables(float *cos_t /*[T,hd/2]*/, float *sin_t, size_t T, size_t hd,
                               double theta);
/* In place on x [N,d] = rows of T tokens (position = n mod T), H heads of width hd = d/H,
   rotate-half pairs (j, j + hd/2). backward applies the inverse rotation to dx in place. */
RESBMDEF int resbm_rope_forward(resbm_pool *pool, float *x, const float *cos_t, const float *sin_t,
                                size_t N, size_t T, size_t d, size_t H);
RESBMDEF int resbm_rope_backward(resbm_pool *pool, float *dx, const float *cos_t,
                                 const float *sin_t, size_t N, size_t T, size_t d, size_t H);

/* Causal multi-head attention over rows of T tokens: out = softmax(q k^T / sqrt(hd)) v per head.
   lse [N,H] keeps each row's log-sum-exp so backward recomputes probabilities without any
   O(T^2) buffer. hd <= RESBM_MAX_HEAD_DIM. */
#define RESBM_MAX_HEAD_DIM 512
#define RESBM_ATTENTION_WORK(T) ((size_t)128 * (size_t)(T)) /* floats per pool thread */
RESBMDEF int resbm_attention_forward(resbm_pool *pool, float *out /*[N,d]*/, float *lse /*[N,H]*/,
                                     const float *q /*[N,d]*/, const float *k, const float *v,
                                     size_t N, size_t T, size_t d, size_t H);
/* dq, dk, dv += gradients. */
RESBMDEF int resbm_attention_backward(resbm_pool *pool, float *dq /*[N,d] +=*/, float *dk,
                                      float *dv, const float *dout /*[N,d]*/, const float *q,
                                      const float *k, const float *v, const float *out,
                                      const float *lse, size_t N, size_t T, size_t d, size_t H);

/* SwiGLU gate: out = silu(h1) * h3 elementwise over n values. */
RESBMDEF int resbm_swiglu_forward(resbm_pool *pool, float *out, const float *h1, const float *h3,
                                  size_t n);
RESBMDEF int resbm_swiglu_backward(resbm_pool *pool, float *dh1 /*+=*/, float *dh3 /*+=*/,
                                   const float *dout, const float *h1, const float *h3, size_t n);

/* Softmax cross-entropy: probs = softmax(logits) (may alias logits), losses[n] = -log p[target].
   Targets outside [0, V) -> RESBM_ERANGE. */
RESBMDEF int resbm_xent_forward(resbm_pool *pool, float *probs /*[N,V]*/, float *losses /*[N]*/,
                                const float *logits /*[N,V]*/, const int32_t *targets, size_t N,
                                size_t V);
/* dlogits = (probs - onehot(target)) * scale (overwrites). */
RESBMDEF int resbm_xent_backward(resbm_pool *pool, float *dlogits /*[N,V]*/, const float *probs,
                                 const int32_t *targets, size_t N, size_t V, float scale);

/* ---- the residual bottleneck between stage s and s+1 (docs/design.md §4) ------------------------
   Sender, end of stage s:   u = rmsnorm(h) * norm;  z = silu(u w1^T) w2^T + h[:, 0:r]
   Receiver, start of s+1:   x = silu(z w1^T) w2^T;  x[:, 0:r] += z
   (identity = 0 drops both "+" terms.) Only z [N,r] and dL/dz [N,r] cross the link.
   Two ways in: resbm_boundary, an object per side that owns everything (below), or these four
   kernels for a host that keeps every buffer itself. Their arguments come in groups, one struct
   type each, so a swapped group does not compile. */
typedef struct resbm_bottleneck_shape {
    size_t tokens;  /* N rows */
    size_t d, r, m; /* residual width, wire width (1 <= r <= d), hidden width */
    int identity;   /* 1: the identity path (the default), 0: the ablation */
} resbm_bottleneck_shape;
typedef struct resbm_encoder_weights { const float *norm /*[d]*/, *w1 /*[m,d]*/, *w2 /*[r,m]*/; } resbm_encoder_weights;
typedef struct resbm_encoder_grads { float *norm, *w1, *w2; /* += */ } resbm_encoder_grads;
typedef struct resbm_encoder_saved { float *rstd /*[N]*/, *u /*[N,d]*/, *a /*[N,m]*/; } resbm_encoder_saved;
typedef struct resbm_decoder_weights { const float *w1 /*[m,r]*/, *w2 /*[d,m]*/; } resbm_decoder_weights;
typedef struct resbm_decoder_grads { float *w1, *w2; /* += */ } resbm_decoder_grads;
typedef struct resbm_decoder_saved { float *a /*[N,m]*/; } resbm_decoder_saved;
/* Work space of one call, free again when it returns: s, ds [N,m]; du [N,d] (encoder backward). */
typedef struct resbm_bottleneck_scratch { float *s, *ds, *du; } resbm_bottleneck_scratch;

/* Each microbatch in flight needs its own `saved` (forward writes it, backward reads it).
   pool may be NULL (the calling thread does the work) here as in every kernel. */
RESBMDEF int resbm_encoder_forward(resbm_pool *pool, const resbm_bottleneck_shape *shape,
                                   const resbm_encoder_weights *w, const resbm_encoder_saved *saved,
                                   const resbm_bottleneck_scratch *scratch, const float *h /*[N,d]*/,
                                   float *z /*[N,r]*/);
/* dh += dL/dh (into the host's own residual gradient); grads +=. */
RESBMDEF int resbm_encoder_backward(resbm_pool *pool, const resbm_bottleneck_shape *shape,
                                    const resbm_encoder_weights *w, const resbm_encoder_grads *g,
                                    const resbm_encoder_saved *saved,
                                    const resbm_bottleneck_scratch *scratch, const float *h,
                                    const float *dz /*[N,r]*/, float *dh /*[N,d] +=*/);
RESBMDEF int resbm_decoder_forward(resbm_pool *pool, const resbm_bottleneck_shape *shape,
                                   const resbm_decoder_weights *w, const resbm_decoder_saved *saved,
                                   const resbm_bottleneck_scratch *scratch, const float *z /*[N,r]*/,
                                   float *x /*[N,d]*/);
/* dz = dL/dz (overwritten); grads +=. */
RESBMDEF int resbm_decoder_backward(resbm_pool *pool, const resbm_bottleneck_shape *shape,
                                    const resbm_decoder_weights *w, const resbm_decoder_grads *g,
                                    const resbm_decoder_saved *saved,
                                    const resbm_bottleneck_scratch *scratch, const float *z,
                                    const float *dx /*[N,d]*/, float *dz /*[N,r]*/);

/* ---- parameters: the library's optimizers, clipping and checkpoints work on these -------------- */
/* Where a parameter lives in the model; decides its optimizer and weight decay: NORM (and any
   bias) AdamW without decay; EMBED and HEAD AdamW with decay; HIDDEN (2-D weights) Muon under
   --opt muon, else AdamW with decay. */
enum { RESBM_PARAM_NORM = 0, RESBM_PARAM_EMBED = 1, RESBM_PARAM_HEAD = 2, RESBM_PARAM_HIDDEN = 3 };

#define RESBM_NAME_MAX 48
typedef struct resbm_param {
    char name[RESBM_NAME_MAX]; /* design names: "tok_emb", "blocks.3.wq", "final_norm", ... */
    int kind;                  /* RESBM_PARAM_* */
    resbm_tensor value;
    resbm_tensor grad;
    float *m, *v;              /* optimizer state: AdamW moments, Muon momentum in m */
} resbm_param;

/* ---- host layers: the stage runtime drives the host's own model through these ------------------
   One stage's layers between the boundaries: stage 0 starts from token ids, the others from the
   decoded residual x [N,d] (N = rows * T); the last stage ends in logits [N,vocab], the others in
   the residual h [N,d] that the encoder compresses. The library does the rest: decoder before,
   encoder after, the wire, 1F1B, the loss (softmax cross-entropy of the logits), clipping, the
   optimizer, checkpoints, eval and generate. `slot` in [0, act_slots) names a forward in flight
   (resbm_stage_slots tells how many); keep what its backward needs per slot. */
typedef struct resbm_layers {
    void *user;
    /* The whole job's architecture in one line, the same on every stage ("gpt2 d=256 L=8 ..."):
       neighbours refuse each other when it differs (RESBM_EJOB), checkpoints record its hash. */
    const char *arch;
    /* This stage's parameters: name (unique, not "bottleneck.*", "opt.*" or "__metadata__",
       which checkpoints use), kind, value and grad (1-D with ne[1] 0 or 1, or 2-D; finite at
       init; no two values or gradients overlapping) in the host's memory; m and v are ignored
       (the library's). Copied at init; the memory they point to must outlive the model (to move
       it, write the new pointers through resbm_model_params_mut between calls). */
    const resbm_param *params;
    size_t n_params;
    /* Forward of `rows` sequences into `slot`: tokens [N] on stage 0, else x [N,d] (the library's,
       unchanged until the slot's backward or release). Writes out: h [N,d], or logits [N,vocab]
       on the last stage. out is the library's too; leave it alone until the slot is done. */
    int (*forward)(void *user, int slot, size_t rows, const int32_t *tokens, const float *x,
                   float *out);
    /* Backward of `slot`: dout = dL/dout (scratch for the layers afterwards); dx = dL/dx [N,d],
       overwritten (NULL on stage 0; it may be dout itself). Parameter gradients accumulate.
       forward and backward return 0 or a RESBM_E* code, which fails the call (the step, eval or
       generate) with nothing applied; the runtime's own codes (RESBM_EPEER, RESBM_EJOB,
       RESBM_EMSGSIZE, the frame codes) and codes that are not RESBM_E* ones become
       RESBM_EHOST. Non-finite values in out are RESBM_ENONFINITE. */
    int (*backward)(void *user, int slot, float *dout, float *dx);
    /* The slot's forward is dropped without a backward (eval, generate, a failed step or
       backward, the model freed): called once for each forward call, failed ones included, that
       gets no finished backward, before the failing call returns; never for a slot no forward was
       called on. May be NULL. */
    void (*release)(void *user, int slot);
} resbm_layers;

/* ---- the model (one pipeline stage; stages == 1 is the whole model) -------------------------------- */
typedef struct resbm_model_config {
    int vocab;          /* V, default 256 (bytes) */
    int d;              /* model width, default 256 */
    int layers;         /* L blocks in the whole model, default 8 */
    int heads;          /* H, default 4 */
    int ff;             /* f, default 8d/3 rounded up to a multiple of 16 */
    int seq;            /* T, default 128 */
    int batch;          /* most rows per forward call (sizes the activations), default 8 */
    int stages;         /* S stages the model is split into, default 1 */
    int stage;          /* which one this object holds, default 0 */
    int act_slots;      /* activation sets kept for backward, default 1 */
    int r;              /* bottleneck width between stages, default d (no bottleneck) */
    int m;              /* bottleneck hidden width, default max(1, d/4) (see bench/RESULTS.md) */
    int no_identity;    /* 1 = ablation without the identity path */
    int threads;        /* kernel threads (own pool) when pool is NULL, default 1 */
    int gemm_bf16;      /* 1 = opt-in bf16 GEMMs (RESBM_ENOTSUP in builds without them), default
                           0; with a shared pool, must match resbm_pool_precision (RESBM_EINVAL) */
    uint64_t seed;      /* default 1337 */
    float init_std;     /* default 0.02 */
    resbm_pool *pool;   /* optional shared pool; not owned */
    void *alloc_user;   /* passed to RESBM_MALLOC/RESBM_FREE */
    /* NULL: the built-in model (docs/design.md §4). Else the host's layers (copied at init): vocab,
       d, seq, batch, stages, stage, r, m and no_identity keep their meaning; layers counts the
       host's blocks (only for stages <= layers); heads and ff are the host's business (but
       neighbours compare them with the rest of the job: set them alike on every stage). */
    const resbm_layers *host;
} resbm_model_config;

enum { RESBM_OPT_ADAMW = 0, RESBM_OPT_MUON = 1, RESBM_OPT_SGD = 2 };

/* Start from resbm_opt_config_default(). At init a 0 in lr, beta1, beta2, eps, muon_lr,
   muon_momentum, muon_ns_steps or bottleneck_lr_scale takes that default (so none of these can be
   asked to be 0: for no momentum or a frozen bottleneck pass a tiny value); a 0 in the other
   fields means 0. resbm_model_get_opt shows what was resolved. */
typedef struct resbm_opt_config {
    int kind;          /* RESBM_OPT_*, default AdamW */
    float lr;          /* peak learning rate (AdamW part and SGD), default 2e-3 */
    float min_lr_frac; /* cosine floor as a fraction of lr, default 0.1 */
    int warmup;        /* linear warm-up steps, default 100 (0 is allowed) */
    int total_steps;   /* schedule length, at least warmup; 0 = constant lr after warm-up */
    float beta1, beta2, eps, weight_decay; /* AdamW: .9 .95 1e-8 .1 (decay on 2-D weights only) */
    float clip;        /* global gradient-norm clip, default 1.0; 0 disables */
    float muon_lr;     /* Muon learning rate, default 0.02 */
    float muon_momentum; /* default 0.95 (Nesterov) */
    int muon_ns_steps; /* Newton-Schulz iterations, default 5 */
    float bottleneck_lr_scale; /* multiplies every learning rate of `bottleneck.*`, default 1 */
} resbm_opt_config;

typedef struct resbm_model resbm_model;

RESBMDEF resbm_model_config resbm_model_config_default(void);
RESBMDEF resbm_opt_config resbm_opt_config_default(void);
/* Creates a model from configs (zero fields of cfg mean defaults; opt: see above). One allocation
   holds everything. */
RESBMDEF int resbm_model_init(const resbm_model_config *cfg, const resbm_opt_config *opt,
                              resbm_model **out);
RESBMDEF void resbm_model_free(resbm_model *m);
/* The resolved configs (defaults filled in). */
RESBMDEF const resbm_model_config *resbm_model_get_config(const resbm_model *m);
RESBMDEF const resbm_opt_config *resbm_model_get_opt(const resbm_model *m);
RESBMDEF const resbm_param *resbm_model_params(const resbm_model *m, size_t *count);
RESBMDEF resbm_param *resbm_model_params_mut(resbm_model *m, size_t *count);
RESBMDEF size_t resbm_model_num_floats(const resbm_model *m); /* parameters on this stage */
RESBMDEF size_t resbm_model_bytes(const resbm_model *m);      /* all memory the model holds */
RESBMDEF long resbm_model_step_count(const resbm_model *m);   /* optimizer updates applied */

/* The calls below (and checkpoint save and load) take the model for their duration: one made
   while another runs on it (from a host layer's or transport's callback, or from another thread
   while its stage steps) is refused with RESBM_ESTATE and changes nothing. */

/* Forward of `rows` sequences into activation slot `slot`. Rows between stages are w = r wide
   (the bottleneck's z; w = d and the raw residual stream when r == d).
   First stage: tokens [rows*T]; other stages: x_in [rows*T, w].
   Last stage: targets [rows*T], *loss = mean token loss; other stages: h_out [rows*T, w]. */
RESBMDEF int resbm_model_forward(resbm_model *m, int slot, const int32_t *tokens,
                                 const float *x_in, const int32_t *targets, size_t rows,
                                 float *h_out, float *loss);
/* Backward of the forward held in `slot`. Last stage: the gradient of loss_weight * (that
   forward's mean loss); other stages: dh_out [rows*T, w] is dL/dh_out. Not first stage: dx_in
   receives dL/dx_in (overwritten). Parameter gradients accumulate. When host layers fail it
   (their code, or a non-finite dL/dx from them: RESBM_ENONFINITE) the slot is dropped and the
   library's gradients are as they were; the host's own are the host's. A failure before the
   layers' backward (a refused pool) keeps the slot, for a retry. A non-finite dL/dx from the
   built-in layers (an overflow) has reached their gradients: zero them before going on
   (resbm_model_update refuses non-finite ones). */
RESBMDEF int resbm_model_backward(resbm_model *m, int slot, const float *dh_out, float *dx_in,
                                  float loss_weight);
/* Drops the forward held in `slot` without its backward (evaluation, sampling). */
RESBMDEF int resbm_model_release(resbm_model *m, int slot);
/* Last stage: the softmax probabilities [rows*T, V] of the forward held in `slot`, or NULL. */
RESBMDEF const float *resbm_model_probs(const resbm_model *m, int slot);
RESBMDEF int resbm_model_zero_grad(resbm_model *m);
/* Sum of squared gradients of this stage's parameters (double, fixed order). */
RESBMDEF int resbm_model_grad_sqnorm(resbm_model *m, double *out);
/* Learning-rate multiplier of the schedule at `step` (warm-up then cosine to min_lr_frac); NaN
   (which every update refuses) for a NULL opt, a negative step, or a warm-up, total or floor
   that resbm_model_init would refuse. */
RESBMDEF float resbm_lr_factor(const resbm_opt_config *opt, long step);
/* Applies one optimizer update with gradients multiplied by grad_scale (clipping), at the
   schedule position of the model's step counter; then increments it. All or nothing: an update
   that would leave a parameter or optimizer value NaN or Inf is undone (RESBM_ENONFINITE, the
   model exactly as before). The state before the last update is kept (one copy of parameters
   and optimizer state), so resbm_model_rollback can undo it once. An update refused as
   non-finite overwrote that copy with its own before-state, so after one there is nothing to
   undo (RESBM_ESTATE); one refused before it began (arguments, a busy model or pool) keeps it. */
RESBMDEF int resbm_model_update(resbm_model *m, float grad_scale);
/* Undoes the last resbm_model_update (RESBM_ESTATE when there is none to undo). */
RESBMDEF int resbm_model_rollback(resbm_model *m);
/* zero_grad, n_micro forward/backward pairs over equal microbatches, clip, update.
   tokens/targets [rows*T]; rows % n_micro == 0. *loss = mean over all rows*T tokens. */
RESBMDEF int resbm_model_train_step(resbm_model *m, const int32_t *tokens,
                                    const int32_t *targets, size_t rows, int n_micro,
                                    float *loss);

/* ---- the boundary as an object: one side of the bottleneck with everything it owns ---------------
   For a host with its own pipeline runtime. An encoder ends stage `index` (h [N,d] -> z [N,r]); a
   decoder starts stage index + 1 (z -> x [N,d]). It owns its parameters bottleneck.<index>.*
   (encoder: enc_norm [d], enc_w1 [m,d], enc_w2 [r,m]; decoder: dec_w1 [m,r], dec_w2 [d,m]), their
   gradients and optimizer state, what each slot's backward needs (it copies its input) and its
   scratch. Init as docs/design.md §4: norm 1, w1 N(0, init_std) from (seed, name), w2 zero, so an
   untrained boundary is the rank-r identity (without the identity path w2 is N(0, init_std)).
   It is bit for bit the bottleneck inside resbm_model and resbm_stage. */
enum { RESBM_ENCODER = 0, RESBM_DECODER = 1 };
typedef struct resbm_boundary_config {
    int side;          /* RESBM_ENCODER or RESBM_DECODER */
    int index;         /* s: the boundary between stage s and s + 1 (names its parameters) */
    int d, r;          /* residual and wire width, 1 <= r < d */
    int m;             /* hidden width, default max(1, d/4) */
    int no_identity;   /* 1 = the ablation without the identity path */
    int max_tokens;    /* rows * T of the largest forward */
    int slots;         /* forwards in flight at once, default 1 */
    int threads;       /* kernel threads when pool is NULL, default 1 */
    uint64_t seed;     /* default 1337 */
    float init_std;    /* default 0.02 */
    resbm_pool *pool;  /* optional shared pool; not owned */
    void *alloc_user;
} resbm_boundary_config;
typedef struct resbm_boundary resbm_boundary;

RESBMDEF resbm_boundary_config resbm_boundary_config_default(void);
RESBMDEF int resbm_boundary_init(const resbm_boundary_config *cfg, const resbm_opt_config *opt,
                                 resbm_boundary **out);
RESBMDEF void resbm_boundary_free(resbm_boundary *b);
/* Encoder: in = h [tokens,d], out = z [tokens,r]. Decoder: in = z [tokens,r], out = x [tokens,d].
   The input is copied into `slot` (RESBM_ESTATE if the slot holds a forward already). */
RESBMDEF int resbm_boundary_forward(resbm_boundary *b, int slot, size_t tokens, const float *in,
                                    float *out);
/* Encoder: dout = dL/dz [tokens,r], din = dL/dh [tokens,d]. Decoder: dout = dL/dx [tokens,d],
   din = dL/dz [tokens,r]. din is overwritten; parameter gradients accumulate; the slot is freed. */
RESBMDEF int resbm_boundary_backward(resbm_boundary *b, int slot, const float *dout, float *din);
RESBMDEF int resbm_boundary_release(resbm_boundary *b, int slot);
RESBMDEF resbm_param *resbm_boundary_params(resbm_boundary *b, size_t *count);
RESBMDEF int resbm_boundary_zero_grad(resbm_boundary *b);
/* Sum of squared gradients (add it to the host's own before clipping). */
RESBMDEF int resbm_boundary_grad_sqnorm(resbm_boundary *b, double *out);
/* One optimizer step as resbm_model_update: the schedule at the boundary's own step count, all
   or nothing, undoable once with resbm_boundary_rollback. */
RESBMDEF int resbm_boundary_update(resbm_boundary *b, float grad_scale);
RESBMDEF int resbm_boundary_rollback(resbm_boundary *b);
RESBMDEF long resbm_boundary_step_count(const resbm_boundary *b);
/* The checkpoint format (tensors under their names, optimizer state, step); a file written by a
   boundary of the same shape loads, and a load drops the forwards in flight (their backward
   would run on other weights). */
RESBMDEF int resbm_boundary_save(resbm_boundary *b, const char *path);
RESBMDEF int resbm_boundary_load(resbm_boundary *b, const char *path, char *why, size_t why_len);

/* ---- wire format (docs/design.md §5): one frame per message, little-endian, written byte by byte
     magic "RBM1" | u16 version | u8 kind | u8 dtype | u16 from_stage | u16 to_stage | u64 step
     | u32 microbatch | u32 rows | u32 cols | u32 payload_bytes | u32 crc32c | payload
   The CRC (Castagnoli) covers the header without its own field, then the payload. i8 payloads
   are blocks of 64 values (the last may be shorter): an f32 scale (absmax/127), then the int8s,
   -127..127 (a -128, which that scale never gives, is refused: RESBM_ERANGE). */
#define RESBM_WIRE_VERSION 1
#define RESBM_FRAME_HEADER 40
enum { RESBM_KIND_ACT = 1, RESBM_KIND_GRAD = 2, RESBM_KIND_CONTROL = 3 };
enum { RESBM_WIRE_F32 = 0, RESBM_WIRE_BF16 = 1, RESBM_WIRE_F16 = 2, RESBM_WIRE_I8 = 3 };
#define RESBM_I8_BLOCK 64
/* An experiment, not the wire contract: the i8 encoder's levels, values -L..L with the scale
   absmax/L. The contract is 127. bench/compress.sh builds train with 7 to measure what a packed
   4-bit dtype (which the frame format does not have) would cost in loss: such frames decode
   everywhere, but they still carry i8's bytes. */
#ifndef RESBM_I8_LEVELS
#define RESBM_I8_LEVELS 127
#endif
#if RESBM_I8_LEVELS < 1 || RESBM_I8_LEVELS > 127
#error "RESBM_I8_LEVELS must be in 1..127"
#endif

typedef struct resbm_frame_info {
    int kind;            /* RESBM_KIND_* */
    int dtype;           /* RESBM_WIRE_* */
    unsigned from_stage, to_stage;
    uint64_t step;
    uint32_t micro, rows, cols;
} resbm_frame_info;

RESBMDEF uint32_t resbm_crc32c(uint32_t crc, const void *buf, size_t len); /* crc 0 to start */
/* Payload size of rows x cols values in dtype. */
RESBMDEF int resbm_wire_payload_bytes(int dtype, size_t rows, size_t cols, size_t *out);
/* Encodes rows*cols values as one frame into buf[cap]; *len = frame bytes. Values must be finite
   (RESBM_ENONFINITE) and representable in the dtype (RESBM_ERANGE: f16 and bf16 have a smaller
   range; in i8, +-FLT_MAX is out, since 127 x its scale rounds to Inf). A cap too small is
   RESBM_ENOSPACE with *len = the bytes needed; values sharing memory with the frame's place in
   buf, RESBM_EINVAL. */
RESBMDEF int resbm_frame_encode(void *buf, size_t cap, size_t *len, const resbm_frame_info *info,
                                const float *values);
/* Reads and checks a header (magic, version, kind, dtype, sizes, CRC over the whole frame)
   without decoding values. */
RESBMDEF int resbm_frame_peek(const void *buf, size_t len, resbm_frame_info *info);
/* Checks every field against `expect`, the size, the CRC and every value, and only then decodes
   rows*cols values into out[out_count] (RESBM_ENOSPACE if fewer; RESBM_EINVAL if the values'
   place in out shares memory with the frame); out is untouched on any failure. */
RESBMDEF int resbm_frame_decode(float *out, size_t out_count, const void *buf, size_t len,
                                const resbm_frame_info *expect);

/* ---- transport (docs/design.md §6): the host's stack behind two callbacks -----------------------
   What a host's transport must do (resbm_transport_check tests a pair of its endpoints):
   - Return 0 or a negative code: RESBM_ETIMEDOUT (nothing within timeout_ms; < 0 waits forever,
     0 polls), RESBM_ECLOSED (the peer is gone), RESBM_EMSGSIZE (a message larger than cap: it
     stays queued for a larger buffer), RESBM_EINVAL (a bad argument), RESBM_ETRANSPORT (anything
     else). Other codes are taken as RESBM_ETRANSPORT.
   - Messages arrive whole and in order per peer, each at most once, and a send that fails has
     not delivered its message (a duplicated hello, or an acknowledgement that arrived although
     its send failed, can leave the stages a step apart). A lost one is caught, not repaired: the
     receive times out and the step aborts on every stage.
   - send must not wait for the peer's recv: in 1F1B two neighbours send to each other at the
     same moment, and two rendezvous sends would wait for each other forever. Buffer at least
     n_micro + 3 frames of resbm_stage_max_frame bytes per peer (a step never has more in flight
     on one link). A send that cannot complete may block, but should give up (RESBM_ETIMEDOUT)
     after about the receive timeout rather than wait forever.
   - Peers: a resbm_stage calls send and recv only with its neighbours, stage - 1 and stage + 1.
   - Before step 0: a link must take sends as soon as the stage exists (its first call sends its
     hello at once); a neighbour that has not started yet is fine if what is sent to it waits.
   - buf is the caller's and lives for the call only: send copies or writes it before returning,
     recv writes at most cap bytes into it.
   - Threads: a stage calls its transport from one thread at a time; a transport serving stages
     on several threads (as resbm_inproc does) takes their calls at once.
   - At exit: what a stage sent may still be in flight when its last call returns; keep a link
     open until its neighbour has returned from its last call too. */
typedef struct resbm_transport {
    void *user;
    int (*send)(void *user, int peer, const void *buf, size_t len);
    int (*recv)(void *user, int peer, void *buf, size_t cap, size_t *len, int timeout_ms);
} resbm_transport;

/* In-process transport: n peers (threads) with a bounded mailbox of `capacity` bytes per ordered
   pair, allocated once (n * n * capacity bytes). send waits while the mailbox is full, up to the
   hub's send timeout. */
typedef struct resbm_inproc resbm_inproc;
RESBMDEF int resbm_inproc_init(int n_peers, size_t capacity, resbm_inproc **out);
RESBMDEF void resbm_inproc_free(resbm_inproc *hub);
/* The transport peer `me` uses. */
RESBMDEF int resbm_inproc_transport(resbm_inproc *hub, int me, resbm_transport *out);
/* Peer `peer` is gone: its pending and future sends fail with RESBM_ECLOSED, and so do the
   others' receives from it once its mailbox is empty. */
RESBMDEF int resbm_inproc_close(resbm_inproc *hub, int peer);
/* A send into a full mailbox waits at most this long (default 60000 ms, 1 to 2^31-1), then
   returns RESBM_ETIMEDOUT: a peer that stopped reading cannot hold a sender forever. */
RESBMDEF int resbm_inproc_set_send_timeout(resbm_inproc *hub, int ms);

/* Conformance of a transport pair: endpoint `a` (whose peer number for the other end is a_peer)
   and endpoint `b` (b_peer), both usable from this thread: order and integrity of messages of 1
   byte, 0, max_message / 2 and max_message bytes sent before any is received; a poll and a 50 ms
   wait on an empty link; a message larger than the buffer (RESBM_EMSGSIZE, then whole with a
   larger one); sends both ways at once; a message after a timed-out receive. scratch holds
   2 * max_message bytes. RESBM_OK, or the first failure's code with a one-line reason in why. */
RESBMDEF int resbm_transport_check(const resbm_transport *a, int a_peer, const resbm_transport *b,
                                   int b_peer, size_t max_message, void *scratch,
                                   size_t scratch_bytes, char *why, size_t why_len);

/* Shaping wrapper: a link of `bytes_per_sec` (0 = unlimited, else 1 to 1e15) and one-way
   `latency_ms` (0 to 1e6) per direction, around any transport; it is a transport itself. A
   message occupies the sender's link for len / bytes_per_sec, then arrives latency_ms later.
   Each message carries its arrival time in an 8-byte prefix (so both ends must be shaped); the
   receiver holds a message until then, but never longer than its own clock allows (the time it
   took the message, latency_ms plus its transfer time, from when it came in), so a peer's clock
   cannot stall it, and never beyond the receive's timeout (the message then stays held).
   Messages up to max_message bytes. */
typedef struct resbm_shaper resbm_shaper;
RESBMDEF int resbm_shaper_init(const resbm_transport *inner, int n_peers, double bytes_per_sec,
                               double latency_ms, size_t max_message, resbm_shaper **out);
RESBMDEF void resbm_shaper_free(resbm_shaper *s);
RESBMDEF int resbm_shaper_transport(resbm_shaper *s, resbm_transport *out);

/* ---- stage runtime (docs/design.md §7) ----------------------------------------------------------
   One resbm_stage per pipeline stage, each on its own thread, process or machine. Every stage
   calls resbm_stage_step once per step; stage 0 passes the tokens, the last stage the targets
   (others pass NULL). Exact schedule (the default): a step runs n_micro microbatches in 1F1B
   order (warm-up forwards, one forward one backward, cool-down backwards) and sends activations
   forward and their gradients back as frames; the squared gradient norms ride back behind the
   last gradients, stage 0 sends the total and the loss forward, and every stage clips and
   applies the optimizer. Async: steps overlap (resbm_stage_config.schedule). A failed call
   (timeout, closed peer, bad frame, bad input) fails on every stage and leaves every stage with
   the same updates (one that applied an update its neighbour could not undoes it); the host
   calls again with the batch of its step count. A stage that had already returned from its last
   call learns of a failure after it at its next call. */
typedef struct resbm_stage_config {
    resbm_model_config model; /* .stages, .stage, .r, .m, ...; .batch = rows per microbatch */
    resbm_opt_config opt;
    resbm_transport transport; /* peers are stage numbers */
    int n_micro;               /* microbatches per step, default 1 */
    int wire_fwd, wire_bwd;    /* RESBM_WIRE_* of activations and of gradients, default f32 */
    int timeout_ms;            /* per receive, default 60000 (-1 waits forever) */
    /* Bandwidth of the slowest link in bytes/s, if known (0: unknown). A slow link must not look
       like a dead peer: each receive then waits timeout_ms plus the time n_micro activation or
       gradient frames (the most the 1F1B schedule can queue on one link) take at this rate. */
    double link_bytes_per_sec;
    /* Activation memory for forwards in flight beyond 1F1B's S - s on stage s, in bytes (0:
       none; give every stage the same: the extra depth is part of the job agreement). Each slot
       it buys (sized by the stage with the largest slots) lets every stage run one forward
       further ahead, so gradients still on their way back through a slow link do not stall it;
       at most n_micro - s in flight; the last stage waits for no gradient and keeps S - s. Host
       layers keep 1F1B's depth. Same bits either way. */
    size_t act_budget_bytes;
    /* RESBM_SCHEDULE_EXACT (default): every step's update lands before the next step's first
       forward, the mathematics of one process. RESBM_SCHEDULE_ASYNC: steps overlap and the
       pipeline never drains. Step k runs on the weights with the updates of steps up to k - 2
       (one step stale, PipeDream-2BW's rule w[k+1] = w[k] - update(grad at w[k-1])), and each
       microbatch's backward on the weights its forward ran (the version before stays beside the
       current one, with the gradient of a finished step waiting for its commit: two more copies
       of the parameters, four with predict). With act_budget_bytes, stage 0 keeps up to n_micro
       forwards in flight and the later stages evenly fewer (not below 1F1B's), down to 1 (each
       link then has microbatches enough on the way to cover its round trip). Up to 255 failed
       calls between two flushes (RESBM_ESTATE after that). See resbm_stage_flush. */
    int schedule;
    /* Async: a step's forwards and backwards run on its weights extrapolated by `predict` times
       the last update (w + predict (w - w before it)), a guess at where its gradient will land
       (weight prediction, as SpecTrain and PipeMare); the optimizer updates the weights proper.
       0: the plain delayed rule. Default 2 (resbm_stage_config_default): with AdamW at 2e-3 the
       plain rule ended +0.25 bits/byte behind exact, 1 +0.11, 2 +0.06 (bench/RESULTS.md). */
    float predict;
    /* Async: the steps before this update count run exact, then the stream starts (0: from the
       first step). Early on a bottleneck learns what to send through its few channels, and a
       one-step-stale gradient there sets it back for good: 128x at AdamW 1e-3 ended +0.059
       bits/byte behind exact from step 0, about even after 200 exact steps (bench/RESULTS.md). */
    int async_warmup;
} resbm_stage_config;

enum { RESBM_SCHEDULE_EXACT = 0, RESBM_SCHEDULE_ASYNC = 1 };

typedef struct resbm_stage_stats {
    uint64_t bytes_sent[4], bytes_recv[4];   /* by frame kind (index RESBM_KIND_*), headers in */
    uint64_t frames_sent[4], frames_recv[4];
    double compute_s, wait_s;                /* in model calls; blocked in send or recv */
    size_t memory_bytes;                     /* everything the stage holds */
    size_t slot_bytes;                       /* the activations of one forward in flight */
    int in_flight;                           /* forwards it keeps in flight (its slots) */
    long steps;                              /* successful steps (async: calls) */
    long loss_step;                          /* the step (update count) whose loss the last
                                                call reported: async lags; -1 none yet, or
                                                that step was undone */
} resbm_stage_stats;

typedef struct resbm_stage resbm_stage;

RESBMDEF resbm_stage_config resbm_stage_config_default(void);
/* The largest message a stage of this config sends or accepts, in bytes (frame header
   included): what a host sizes its transport's buffers and message limit by, before init. */
RESBMDEF int resbm_stage_max_frame(const resbm_stage_config *cfg, size_t *bytes);
/* How many forwards a stage of this config keeps in flight: host layers keep that many slots.
   With host layers it depends only on stages, stage, n_micro and schedule (act_budget_bytes
   is for the built-in layers), so a host sizing its layers before they exist may ask with a copy
   of its config whose host is NULL and act_budget_bytes 0 (and heads a divisor of d with an even
   head width, which the built-in layers need), as examples/gpt2.c does. */
RESBMDEF int resbm_stage_slots(const resbm_stage_config *cfg, int *slots);
RESBMDEF int resbm_stage_init(const resbm_stage_config *cfg, resbm_stage **out);
RESBMDEF void resbm_stage_free(resbm_stage *st);
RESBMDEF resbm_model *resbm_stage_model(resbm_stage *st);
/* rows = n_micro * model.batch sequences (tokens/targets [rows*T] on the first/last stage).
   *loss (optional) = the step's mean loss, on every stage. Async: the loss of the step whose
   update the call applied (two steps back; stats.loss_step), 0 before there is one; a warm-up
   step (step count below async_warmup) is an exact step and reports its own. A failure
   drops the steps in flight on every stage: the weights are those of the first
   resbm_model_step_count(model) steps, and the next call starts a new stream from there. So a
   host counts its batches itself and, only after a failure, restarts that count from
   resbm_model_step_count (async, it runs about two steps behind the calls made). */
RESBMDEF int resbm_stage_step(resbm_stage *st, const int32_t *tokens, const int32_t *targets,
                              size_t rows, float *loss);
/* Forward only, on every stage together: `rows` sequences (any number; run model.batch at a
   time), *loss = their mean token loss on every stage. Nothing is updated. The loss comes back
   once every chunk of model.batch rows has gone through, so the wait for it is timeout_ms per
   chunk. Stage 0 hears it last: if it is lost on that last way, stage 0 alone fails while the
   others have returned it (nothing changed anywhere; a host that retries, retries on every
   stage). rows must be the same on every stage: stage 0 sends its own down the pipeline first,
   and a stage asked for another fails the call (RESBM_EINVAL). */
RESBMDEF int resbm_stage_eval(resbm_stage *st, const int32_t *tokens, const int32_t *targets,
                              size_t rows, float *loss);
/* Sampling through the pipeline, on every stage together: continues prompt[n_prompt] (stage 0;
   others may pass NULL) by n_new tokens drawn at `temperature` (> 0) from a PCG32 seeded with
   `seed`; every stage gets them in out[n_new]. The window is the last T tokens, a shorter one
   padded at its end with token 0 and read at its last real position (host layers must be
   causal, as the built-in ones are). The prompt's
   length up to T, n_new, temperature and seed must be the same on every stage: stage 0 sends its
   own down the pipeline first, and a stage asked for others fails the call (RESBM_EINVAL). out
   is written only on success. */
RESBMDEF int resbm_stage_generate(resbm_stage *st, const int32_t *prompt, size_t n_prompt,
                                  size_t n_new, float temperature, uint64_t seed, int32_t *out);
/* Async: runs the backwards still in flight and applies their updates, on every stage together;
   the model is then the delayed-update rule's after every step so far, and may be saved
   (resbm_checkpoint_save refuses a model with steps in flight: RESBM_ESTATE). eval and generate
   flush first. *loss (optional) = the last step's loss. Exact: nothing is in flight; *loss = the
   last step's loss. */
RESBMDEF int resbm_stage_flush(resbm_stage *st, float *loss);
RESBMDEF int resbm_stage_get_stats(const resbm_stage *st, resbm_stage_stats *out);
/* One line on why the last call failed ("" after a success): the stage where it happened, the
   step, what went wrong; for RESBM_EJOB the first field the stages disagree on. */
RESBMDEF const char *resbm_stage_why(const resbm_stage *st);
/* The clip multiplier for a summed squared gradient norm (shared with resbm_model_train_step).
   A total that is negative, NaN or infinite has no multiplier: NaN, which every update refuses
   (RESBM_EINVAL), so such a step is never taken as a step of zero gradient. */
RESBMDEF float resbm_clip_scale(const resbm_opt_config *opt, double total_sqnorm);

/* ---- safetensors --------------------------------------------------------------------------------- */
enum { RESBM_DT_F32 = 0, RESBM_DT_I32 = 1 };
typedef struct resbm_st_entry {
    const char *name;
    int dtype;          /* RESBM_DT_* */
    int ndim;           /* 0..4 (0: a scalar) */
    size_t shape[4];
    const void *data;   /* host-endian values; written little-endian */
} resbm_st_entry;
/* Writes entries and string metadata (meta_kv: key0, value0, key1, value1, ...) atomically and
   durably: a temp file of its own beside the target (created exclusively), fsync, rename, fsync
   of the directory. Concurrent writers to one path never mix: one whole file wins. On RESBM_EIO,
   errno says why (ENOSPC, EROFS, EACCES, ...). A file the reader below would refuse is never
   written: repeated tensor names or metadata keys, or a tensor named __metadata__, are
   RESBM_EINVAL; sizes past the reader's limits RESBM_EOVERFLOW. */
RESBMDEF int resbm_safetensors_write(const char *path, const resbm_st_entry *entries, size_t n,
                                     const char *const *meta_kv, size_t n_meta);

/* A parsed safetensors file. Parsing checks everything before returning: the header length, the
   JSON (objects, strings with escapes, integer arrays; nothing else), dtypes F32/I32, ranks 0..4,
   sizes against dtype x shape with overflow checks, offsets inside the data and covering it
   exactly, unique names, at most one __metadata__ object with unique keys. Entry data points
   into the file copy, little-endian. */
typedef struct resbm_st_file resbm_st_file;
RESBMDEF int resbm_safetensors_parse(const void *buf, size_t len, resbm_st_file **out);
/* Reads and parses a file of at most max_bytes (RESBM_EFORMAT when larger). A path that is not
   a regular file (a directory, a FIFO, a device) is RESBM_EIO with errno EISDIR or EINVAL, at
   once: nothing blocks. */
RESBMDEF int resbm_safetensors_read(const char *path, size_t max_bytes, resbm_st_file **out);
RESBMDEF void resbm_safetensors_free(resbm_st_file *f);
RESBMDEF const resbm_st_entry *resbm_safetensors_entries(const resbm_st_file *f, size_t *count);
RESBMDEF const resbm_st_entry *resbm_safetensors_find(const resbm_st_file *f, const char *name);
RESBMDEF const char *resbm_safetensors_meta(const resbm_st_file *f, const char *key);

/* ---- checkpoints ----------------------------------------------------------------------------------
   One safetensors file for any set of stage models (all of them, or one per process): every
   parameter under its design name, F32; optimizer state as "opt.<name>.m" and "opt.<name>.v"
   (AdamW moments; Muon's momentum is .m); metadata "format" = "resbm-checkpoint-1", "step" (updates
   applied), "config" (the model shape), "opt" (adamw|muon|sgd), plus the caller's pairs, whose
   keys differ from these four and from each other (else RESBM_EINVAL, as for one model given
   twice, two parameters of one name (host stages that reuse names save a file each), or models
   of different jobs: the file has one config). RESBM_ENONFINITE when a
   parameter or optimizer value is NaN or Inf (nothing is written: the last good file stays);
   RESBM_EIO with errno set when the file cannot be written. */
RESBMDEF int resbm_checkpoint_save(const char *path, resbm_model *const *models, size_t n_models,
                                   const char *const *meta_kv, size_t n_meta);
/* Loads into every model the tensors it owns (others in the file are ignored): each must be
   present with its exact shape, F32 and finite, with the optimizer state this run uses, and the
   config must match. Nothing is changed unless everything checks out. `why` (optional) receives
   a one-line reason on failure. */
RESBMDEF int resbm_checkpoint_load(const char *path, resbm_model *const *models, size_t n_models,
                                   char *why, size_t why_len);

#ifdef __cplusplus
}
#endif
#endif /* RESBM_H */

/* ================================================================================================
   IMPLEMENTATION
   ================================================================================================ */
#if defined(RESBM_IMPLEMENTATION) && !defined(RESBM__IMPLEMENTED)
#define RESBM__IMPLEMENTED

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifndef RESBM_NO_THREADS
#include <pthread.h>
#include <sched.h>
#endif
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__SSE2__)
#include <immintrin.h>
#endif
#ifdef RESBM_USE_CBLAS
#include <cblas.h>
#endif
#if defined(__GLIBC__) && !defined(__USE_POSIX199309)
#error "resbm.h: the implementation needs POSIX clocks: include resbm.h before any libc header, define _DEFAULT_SOURCE (or _POSIX_C_SOURCE 200809L) before them, or build with -std=gnu99"
#endif

#if defined(RESBM_MALLOC) && !defined(RESBM_FREE)
#error "define RESBM_MALLOC and RESBM_FREE together"
#elif !defined(RESBM_MALLOC) && defined(RESBM_FREE)
#error "define RESBM_MALLOC and RESBM_FREE together"
#elif !defined(RESBM_MALLOC)
#define RESBM_MALLOC(sz, u) ((void)(u), malloc(sz))
#define RESBM_FREE(p, u) ((void)(u), free(p))
#endif

#ifndef RESBM_ASSERT
#include <assert.h>
#define RESBM_ASSERT(x) assert(x)
#endif

/* float must be IEEE binary32: the wire format and checkpoints depend on it. */
typedef char resbm__float_is_32_bit[(sizeof(float) == 4 && FLT_MANT_DIG == 24) ? 1 : -1];

#define RESBM__MIN(a, b) ((a) < (b) ? (a) : (b))
#define RESBM__MAX(a, b) ((a) > (b) ? (a) : (b))
#define RESBM__ALIGN 64
#define RESBM__NORM_EPS 1e-5f
#define RESBM__TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

/* ---- status ----------------------------------------------------------------------------------- */
RESBMDEF const char *resbm_strerror(int code) {
    switch (code) {
    case RESBM_OK: return "success";
    case RESBM_EINVAL: return "invalid argument (NULL, zero, out of range or inconsistent)";
    case RESBM_ESTATE: return "object not in a state that allows this call";
    case RESBM_ERANGE: return "token id, index or value out of range";
    case RESBM_ENONFINITE: return "NaN or Inf where finite values are required";
    case RESBM_ENOSPACE: return "an output buffer is smaller than the result needs";
    case RESBM_ENOTSUP: return "not supported by this build (bf16 GEMMs need AVX512_BF16 and no CBLAS)";
    case RESBM_ENOMEM: return "out of memory";
    case RESBM_EOVERFLOW: return "size computation overflowed";
    case RESBM_ETHREAD: return "could not create a thread, mutex or condition variable";
    case RESBM_EIO: return "file could not be opened, written, synced or renamed";
    case RESBM_EFORMAT: return "malformed file";
    case RESBM_ETRUNC: return "frame truncated: shorter than its header says";
    case RESBM_EMAGIC: return "frame has a bad magic (not RBM1)";
    case RESBM_EVERSION: return "frame version not supported";
    case RESBM_EKIND: return "frame kind unknown or unexpected";
    case RESBM_EDTYPE: return "frame dtype unknown or unexpected";
    case RESBM_ESTAGE: return "frame from or to the wrong stage";
    case RESBM_ESTEP: return "frame for another step";
    case RESBM_EMICRO: return "frame for another microbatch";
    case RESBM_ESHAPE: return "frame shape (rows, cols) unexpected";
    case RESBM_ESIZE: return "frame payload size inconsistent with shape and dtype";
    case RESBM_ECRC: return "frame checksum (CRC32C) mismatch";
    case RESBM_ETIMEDOUT: return "timed out waiting for a peer";
    case RESBM_ECLOSED: return "peer closed the connection";
    case RESBM_ETRANSPORT: return "transport failed to send or receive";
    case RESBM_EMSGSIZE: return "message larger than the receive buffer";
    case RESBM_EPEER: return "another stage failed this step";
    case RESBM_EJOB: return "a neighbouring stage runs a different job";
    case RESBM_EHOST: return "the host's layers failed (with an unknown code, or one that is the runtime's own)";
    default: return "unknown error code";
    }
}

/* ---- sizes ------------------------------------------------------------------------------------ */
RESBMDEF int resbm_size_mul(size_t *out, size_t a, size_t b) {
    if (!out) return RESBM_EINVAL;
    if (a != 0 && b > (size_t)-1 / a) return RESBM_EOVERFLOW;
    *out = a * b;
    return RESBM_OK;
}

RESBMDEF int resbm_size_add(size_t *out, size_t a, size_t b) {
    if (!out) return RESBM_EINVAL;
    if (b > (size_t)-1 - a) return RESBM_EOVERFLOW;
    *out = a + b;
    return RESBM_OK;
}

static int resbm__cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether n strings (sorted in place) are all different. */
static int resbm__unique(const char **s, size_t n) {
    size_t i;
    qsort((void *)s, n, sizeof(*s), resbm__cmp_str);
    for (i = 1; i < n; i++)
        if (!strcmp(s[i - 1], s[i])) return 0;
    return 1;
}

/* ---- random numbers: PCG32 ------------------------------------------------------------------- */
RESBMDEF uint32_t resbm_rng_u32(resbm_rng *rng) {
    uint64_t old;
    uint32_t xorshifted, rot;
    if (!rng) return 0;
    old = rng->state;
    rng->state = old * 6364136223846793005ULL + rng->inc;
    xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

RESBMDEF void resbm_rng_seed(resbm_rng *rng, uint64_t seed, uint64_t stream) {
    if (!rng) return;
    rng->state = 0;
    rng->inc = (stream << 1u) | 1u;
    resbm_rng_u32(rng);
    rng->state += seed;
    resbm_rng_u32(rng);
}

RESBMDEF float resbm_rng_uniform(resbm_rng *rng) {
    return (float)(resbm_rng_u32(rng) >> 8) * (1.0f / 16777216.0f);
}

RESBMDEF float resbm_rng_normal(resbm_rng *rng) {
    /* Box-Muller with u1 in (0, 1]: one normal per pair of draws, so a stream is a pure function
       of its seed and position. */
    double u1, u2;
    if (!rng) return 0.0f;
    u1 = ((double)resbm_rng_u32(rng) + 1.0) / 4294967296.0;
    u2 = (double)resbm_rng_u32(rng) / 4294967296.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* By bit pattern, so a host's -ffast-math cannot fold the test away. */
static int resbm__all_finite(const float *x, size_t n) {
    size_t i;
    uint32_t u;
    for (i = 0; i < n; i++) {
        memcpy(&u, x + i, 4);
        if ((u & 0x7f800000u) == 0x7f800000u) return 0;
    }
    return 1;
}

/* Whether two byte ranges share memory (an empty one shares none). */
static int resbm__overlaps(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return a_bytes && b_bytes && x < y + b_bytes && y < x + a_bytes;
}

static uint64_t resbm__fnv1a(const char *s) {
    uint64_t h = 14695981039346656037ULL;
    while (*s) { h ^= (unsigned char)*s++; h *= 1099511628211ULL; }
    return h;
}

static uint64_t resbm__arch_hash(const struct resbm_model *m);

/* ---- arena ------------------------------------------------------------------------------------ */
RESBMDEF void *resbm_arena_push(resbm_arena *a, size_t n, size_t elem) {
    size_t bytes, start, end;
    if (!a || a->overflow) return NULL;
    start = (a->used + (RESBM__ALIGN - 1)) & ~(size_t)(RESBM__ALIGN - 1);
    if (start < a->used || resbm_size_mul(&bytes, n, elem) || resbm_size_add(&end, start, bytes) ||
        (a->base && end > a->cap)) {
        a->overflow = 1;
        return NULL;
    }
    a->used = end;
    return a->base ? (void *)(a->base + start) : NULL;
}

/* Aligned allocation through RESBM_MALLOC: the raw pointer is stored just before the block. */
static void *resbm__alloc(size_t bytes, void *user) {
    size_t total;
    unsigned char *raw, *p;
    if (resbm_size_add(&total, bytes, RESBM__ALIGN + sizeof(void *))) return NULL;
    raw = (unsigned char *)RESBM_MALLOC(total, user);
    if (!raw) return NULL;
    p = raw + sizeof(void *);
    p += (RESBM__ALIGN - ((uintptr_t)p & (RESBM__ALIGN - 1))) & (RESBM__ALIGN - 1);
    memcpy(p - sizeof(void *), &raw, sizeof(void *));
    return p;
}

static void resbm__dealloc(void *p, void *user) {
    void *raw;
    if (!p) return;
    memcpy(&raw, (unsigned char *)p - sizeof(void *), sizeof(void *));
    RESBM_FREE(raw, user);
}

/* ---- thread pool ------------------------------------------------------------------------------ */
/* GEMM blocking (see the GEMM section); each thread owns a packing buffer of this many floats. */
#if defined(__AVX512F__)
#define RESBM__MR 8
#define RESBM__NR 32
#elif defined(__AVX2__) && defined(__FMA__)
#define RESBM__MR 6
#define RESBM__NR 16
#else
#define RESBM__MR 4
#define RESBM__NR 8
#endif
#define RESBM__KC 256 /* fixed: it decides the summation order, so it never depends on threads */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__) && !defined(RESBM_USE_CBLAS)
#define RESBM__BF16 1 /* bf16 GEMMs available (resbm_pool_set_precision) */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__) && defined(__x86_64__) && \
    !defined(RESBM_NO_AMX)
#define RESBM__AMX 1 /* ... and on AMX tiles where the kernel grants them (resbm__amx_enable) */
#endif
#endif
#define RESBM__MC (32 * RESBM__MR) /* op(A) block MC x KC stays in L2 */
#define RESBM__NC (8 * RESBM__NR)  /* the packed op(B) block is KC x NC */
#define RESBM__PACK_FLOATS ((size_t)RESBM__KC * RESBM__NC)
#define RESBM__PF_K 16 /* k steps ahead a strided op(A) is prefetched */

typedef void (*resbm__range_fn)(void *ctx, size_t begin, size_t end);

#ifdef RESBM_PROFILE
/* bench/profile.c only: wall time per parallel dispatch, by task function (by range function for
   resbm__parallel_for), and the part the caller spent waiting for the workers after its own
   share: the fork-join cost. Off by default: it adds two clock reads per dispatch. */
#define RESBM__PROF_SLOTS 64
typedef struct {
    resbm_task_fn task;
    resbm__range_fn range;
    double seconds, wait;
    long calls;
} resbm__prof_entry;
#define RESBM__PROF_GEMMS 64
typedef struct { /* resbm_gemm's successful calls on a pool by shape, pooled or run on the caller */
    int form, accumulate;
    size_t M, N, K;
    double seconds;
    long calls;
} resbm__prof_gemm;
#endif

struct resbm_pool {
    int nthreads;
    int busy;           /* a caller is inside (atomic): a second one gets RESBM_ESTATE */
    int stage_attached; /* a resbm_stage uses this pool (atomic): a second one is refused */
    int precision;      /* RESBM_PRECISION_*, of resbm_gemm on this pool */
    int amx;            /* bf16 GEMMs run on AMX tiles (the kernel granted them) */
    float *pack; /* [nthreads][RESBM__PACK_FLOATS] GEMM packing buffers */
    float *work; /* [nthreads][work_floats] kernel scratch, see resbm_pool_reserve */
    size_t work_floats;
#ifndef RESBM_NO_THREADS
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    resbm_task_fn fn;
    void *ctx;
    size_t ntasks;
    size_t next;     /* next task to take (atomic) */
    unsigned gen;    /* job generation (atomic) */
    int active;      /* workers still in the current job (atomic) */
    int quit;
    int started;     /* workers successfully created */
#endif
#ifdef RESBM_PROFILE
    resbm__prof_entry prof[RESBM__PROF_SLOTS];
    resbm__range_fn prof_range; /* set by resbm__parallel_for around its dispatch */
    resbm__prof_gemm prof_gemm[RESBM__PROF_GEMMS];
#endif
};

#ifdef RESBM_PROFILE
static double resbm__prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static void resbm__prof_add(resbm_pool *p, resbm_task_fn fn, double t0, double t_own, double t1) {
    int i;
    for (i = 0; i < RESBM__PROF_SLOTS; i++) {
        resbm__prof_entry *e = &p->prof[i];
        if (!e->calls) { e->task = fn; e->range = p->prof_range; }
        if (e->task == fn && e->range == p->prof_range) {
            e->seconds += t1 - t0; e->wait += t1 - t_own; e->calls++;
            return;
        }
    }
}
#define RESBM__PROF_T(t) double t = resbm__prof_now()
#define RESBM__PROF_ADD(p, fn, t0, t_own) resbm__prof_add(p, fn, t0, t_own, resbm__prof_now())
#else
#define RESBM__PROF_T(t) (void)0
#define RESBM__PROF_ADD(p, fn, t0, t_own) (void)0
#endif

#ifndef RESBM_NO_THREADS
#define RESBM__SPIN 20000 /* polls before a waiting thread sleeps on its condition variable */

/* One poll of a spinning wait. Every 64th gives the core away: with more threads than free cores
   (other programs, or several pools), the thread being waited for may need this core, and
   spinning through its time slice would stall both. With a core to spare it returns at once. */
static void resbm__pause(int spin) {
    if ((spin & 63) == 63) {
        sched_yield();
        return;
    }
#if defined(__SSE2__)
    _mm_pause();
#endif
}

typedef struct { resbm_pool *pool; int index; } resbm__worker_arg;

static void resbm__pool_work(resbm_pool *p, int thread) {
    size_t t;
    while ((t = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED)) < p->ntasks)
        p->fn(p->ctx, t, thread);
}

static void *resbm__worker(void *arg) {
    resbm_pool *p = ((resbm__worker_arg *)arg)->pool;
    int index = ((resbm__worker_arg *)arg)->index;
    unsigned seen = 0;
    for (;;) {
        int spin;
        for (spin = 0; spin < RESBM__SPIN; spin++) {
            if (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) != seen) break;
            resbm__pause(spin);
        }
        if (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen) {
            pthread_mutex_lock(&p->mu);
            while (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen && !p->quit)
                pthread_cond_wait(&p->cv_work, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE)) return NULL;
        seen = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
        resbm__pool_work(p, index);
        if (__atomic_sub_fetch(&p->active, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}
#endif

/* One caller at a time: its workers, packing buffers and scratch are shared by every task. */
static int resbm__pool_claim(resbm_pool *p) {
    int idle = 0;
    return __atomic_compare_exchange_n(&p->busy, &idle, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static void resbm__pool_release(resbm_pool *p) { __atomic_store_n(&p->busy, 0, __ATOMIC_RELEASE); }

RESBMDEF void resbm_pool_free(resbm_pool *p) {
    if (!p) return;
#ifndef RESBM_NO_THREADS
    if (p->threads) {
        int i;
        pthread_mutex_lock(&p->mu);
        __atomic_store_n(&p->quit, 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
        for (i = 0; i < p->started; i++) pthread_join(p->threads[i], NULL);
        pthread_cond_destroy(&p->cv_done);
        pthread_cond_destroy(&p->cv_work);
        pthread_mutex_destroy(&p->mu);
    }
#endif
    resbm__dealloc(p->work, NULL);
    resbm__dealloc(p, NULL);
}

RESBMDEF int resbm_pool_reserve(resbm_pool *p, size_t floats_per_thread) {
    size_t n;
    float *w;
    if (!p || floats_per_thread == 0) return RESBM_EINVAL;
    if (floats_per_thread <= p->work_floats) return RESBM_OK;
    if (floats_per_thread > (size_t)-1 - 15) return RESBM_EOVERFLOW;
    floats_per_thread = (floats_per_thread + 15) & ~(size_t)15; /* each thread's slice aligned */
    if (resbm_size_mul(&n, floats_per_thread, (size_t)p->nthreads) ||
        resbm_size_mul(&n, n, sizeof(float)))
        return RESBM_EOVERFLOW;
    if (!resbm__pool_claim(p)) return RESBM_ESTATE; /* its tasks may be using the old buffer */
    w = (float *)resbm__alloc(n, NULL);
    if (!w) { resbm__pool_release(p); return RESBM_ENOMEM; }
    resbm__dealloc(p->work, NULL);
    p->work = w;
    p->work_floats = floats_per_thread;
    resbm__pool_release(p);
    return RESBM_OK;
}

RESBMDEF int resbm_pool_init(int nthreads, resbm_pool **out) {
    resbm_arena a;
    resbm_pool *p;
    size_t nworkers;
    if (!out || nthreads < 1 || nthreads > 1024) return RESBM_EINVAL;
#ifdef RESBM_NO_THREADS
    nthreads = 1;
#endif
    nworkers = (size_t)nthreads - 1;
    (void)nworkers;
    memset(&a, 0, sizeof(a));
    resbm_arena_push(&a, 1, sizeof(resbm_pool));
    resbm_arena_push(&a, (size_t)nthreads * RESBM__PACK_FLOATS, sizeof(float));
#ifndef RESBM_NO_THREADS
    resbm_arena_push(&a, nworkers, sizeof(pthread_t));
    resbm_arena_push(&a, nworkers, sizeof(resbm__worker_arg));
#endif
    if (a.overflow) return RESBM_EOVERFLOW;
    a.base = (unsigned char *)resbm__alloc(a.used, NULL);
    if (!a.base) return RESBM_ENOMEM;
    memset(a.base, 0, a.used);
    a.cap = a.used;
    a.used = 0;
    p = (resbm_pool *)resbm_arena_push(&a, 1, sizeof(resbm_pool));
    p->nthreads = nthreads;
    p->pack = (float *)resbm_arena_push(&a, (size_t)nthreads * RESBM__PACK_FLOATS, sizeof(float));
#ifndef RESBM_NO_THREADS
    if (nworkers > 0) {
        resbm__worker_arg *args;
        size_t i;
        p->threads = (pthread_t *)resbm_arena_push(&a, nworkers, sizeof(pthread_t));
        args = (resbm__worker_arg *)resbm_arena_push(&a, nworkers, sizeof(resbm__worker_arg));
        if (pthread_mutex_init(&p->mu, NULL)) { resbm__dealloc(p, NULL); return RESBM_ETHREAD; }
        if (pthread_cond_init(&p->cv_work, NULL)) {
            pthread_mutex_destroy(&p->mu);
            resbm__dealloc(p, NULL);
            return RESBM_ETHREAD;
        }
        if (pthread_cond_init(&p->cv_done, NULL)) {
            pthread_cond_destroy(&p->cv_work);
            pthread_mutex_destroy(&p->mu);
            resbm__dealloc(p, NULL);
            return RESBM_ETHREAD;
        }
        for (i = 0; i < nworkers; i++) {
            args[i].pool = p;
            args[i].index = (int)i + 1;
            if (pthread_create(&p->threads[i], NULL, resbm__worker, &args[i])) {
                resbm_pool_free(p); /* joins the ones already started */
                return RESBM_ETHREAD;
            }
            p->started++;
        }
    }
#endif
    *out = p;
    return RESBM_OK;
}

RESBMDEF int resbm_pool_threads(const resbm_pool *pool) { return pool ? pool->nthreads : 1; }

#ifdef RESBM__AMX
/* Linux hands out AMX's tile registers (XTILEDATA, feature 18) per process, on request
   (arch_prctl ARCH_REQ_XCOMP_PERM): an old kernel or a hypervisor that hides them says no, and
   the bf16 GEMMs then run on AVX512_BF16. The system call is made directly (x86-64's number
   158), since libc declares syscall() only outside strict POSIX. */
static int resbm__amx_enable(void) {
    long rc;
    __asm__ volatile("syscall" : "=a"(rc) : "a"(158L), "D"(0x1023L), "S"(18L) : "rcx", "r11", "memory");
    return rc == 0;
}
#endif

RESBMDEF int resbm_pool_set_precision(resbm_pool *pool, int precision) {
    if (!pool || (precision != RESBM_PRECISION_F32 && precision != RESBM_PRECISION_BF16)) return RESBM_EINVAL;
#ifndef RESBM__BF16
    if (precision == RESBM_PRECISION_BF16) return RESBM_ENOTSUP;
#endif
    if (!resbm__pool_claim(pool)) return RESBM_ESTATE;
    pool->precision = precision;
#ifdef RESBM__AMX
    pool->amx = precision == RESBM_PRECISION_BF16 && resbm__amx_enable();
#endif
    resbm__pool_release(pool);
    return RESBM_OK;
}

RESBMDEF const char *resbm_pool_kernel(const resbm_pool *pool) {
    if (pool && pool->precision == RESBM_PRECISION_BF16) return pool->amx ? "bf16 amx" : "bf16 avx512";
#if defined(RESBM_USE_CBLAS)
    return "f32 cblas";
#elif defined(__AVX512F__)
    return "f32 avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "f32 avx2";
#else
    return "f32 scalar";
#endif
}

RESBMDEF int resbm_pool_precision(const resbm_pool *pool) { return pool ? pool->precision : RESBM_PRECISION_F32; }


RESBMDEF int resbm_pool_run(resbm_pool *p, resbm_task_fn fn, void *ctx, size_t ntasks) {
    size_t t;
    if (!fn) return RESBM_EINVAL;
    if (ntasks == 0) return RESBM_OK;
    if (p && !resbm__pool_claim(p)) return RESBM_ESTATE;
    {
    RESBM__PROF_T(t0);
#ifndef RESBM_NO_THREADS
    if (p && p->nthreads > 1 && ntasks > 1) {
        int spin;
        pthread_mutex_lock(&p->mu);
        p->fn = fn;
        p->ctx = ctx;
        p->ntasks = ntasks;
        __atomic_store_n(&p->next, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&p->active, p->nthreads - 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
        resbm__pool_work(p, 0);
        {
        RESBM__PROF_T(t_own);
        for (spin = 0; spin < RESBM__SPIN; spin++) {
            if (__atomic_load_n(&p->active, __ATOMIC_ACQUIRE) == 0) break;
            resbm__pause(spin);
        }
        if (spin == RESBM__SPIN) {
            pthread_mutex_lock(&p->mu);
            while (__atomic_load_n(&p->active, __ATOMIC_ACQUIRE) != 0)
                pthread_cond_wait(&p->cv_done, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        RESBM__PROF_ADD(p, fn, t0, t_own);
        }
        resbm__pool_release(p);
        return RESBM_OK;
    }
#endif
    for (t = 0; t < ntasks; t++) fn(ctx, t, 0);
#ifdef RESBM_PROFILE
    if (p) {
        double t1 = resbm__prof_now();
        resbm__prof_add(p, fn, t0, t1, t1); /* no workers, no wait */
    }
#endif
    }
    if (p) resbm__pool_release(p);
    return RESBM_OK;
}

/* Splits [0, n) into fixed chunks (independent of the thread count) and runs fn on each. */
typedef struct { resbm__range_fn fn; void *ctx; size_t n, chunk; } resbm__range_job;

static void resbm__range_task(void *ctx, size_t task, int thread) {
    resbm__range_job *j = (resbm__range_job *)ctx;
    size_t b = task * j->chunk, e = RESBM__MIN(j->n, b + j->chunk);
    (void)thread;
    j->fn(j->ctx, b, e);
}

static int resbm__parallel_for(resbm_pool *pool, size_t n, size_t chunk, resbm__range_fn fn,
                               void *ctx) {
    resbm__range_job j;
    if (n == 0) return RESBM_OK;
    if (chunk == 0) chunk = 1;
    j.fn = fn; j.ctx = ctx; j.n = n; j.chunk = chunk;
#ifdef RESBM_PROFILE
    if (pool) {
        int rc;
        pool->prof_range = fn;
        rc = resbm_pool_run(pool, resbm__range_task, &j, (n + chunk - 1) / chunk);
        pool->prof_range = NULL;
        return rc;
    }
#endif
    return resbm_pool_run(pool, resbm__range_task, &j, (n + chunk - 1) / chunk);
}

/* ---- GEMM ------------------------------------------------------------------------------------- */
/* Blocked like BLIS, with less packing: C is cut into tiles, one task each. A task walks K in
   blocks of KC (always the same blocks, so every C element sums in the same order whatever the
   tiling or the thread count) and calls the register micro-kernel on every MR x NR piece.
   op(A) is read in place through strides (the kernel broadcasts one element per row, so any
   layout works; packing a transposed op(A) was measured four times and gained nothing;
   prefetching it and C's lines cut the AVX2 kernel's time inside a step by about 15%, and C's
   lines alone the AVX-512 kernel's by about 6%, RESULTS.md).
   op(B) is read in place when it is [K,N], op(A) is not transposed and the kernel can mask its
   edge loads (AVX-512); otherwise the task packs each KC x NC block of its columns into NR-wide,
   zero-padded panels, once for all the tile's rows (resbm__gemm_setup says how tiles are cut). */

/* c[mr, nr] (+)= sum_k a(i,k) b(k,j) with a(i,k) = a[i*ars + k*aks] and b(k,j) = b[k*ldb + j].
   Rows past mr repeat row mr-1 (computed, never stored), so no read leaves op(A). */
#if defined(__GNUC__) || defined(__clang__)
#define RESBM__NOINLINE __attribute__((noinline))
#else
#define RESBM__NOINLINE
#endif
#if defined(__AVX512F__)
/* The 8 x 32 AVX-512 kernels' (f32 and bf16) accumulators c0/c1 into C's mr rows under the
   column masks m0/m1, added to C when add; constant indices only, so c0/c1 stay in registers
   (a variable index would spill them). */
#define RESBM__STORE_ROW_512(i)                                                                    \
    if ((i) < mr) {                                                                                \
        float *ci = c + (i) * ldc;                                                                 \
        __m512 x0 = c0[i], x1 = c1[i];                                                             \
        if (add) {                                                                                 \
            x0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), x0);                                 \
            x1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci + 16), x1);                            \
        }                                                                                          \
        _mm512_mask_storeu_ps(ci, m0, x0);                                                         \
        _mm512_mask_storeu_ps(ci + 16, m1, x1);                                                    \
    }
#define RESBM__STORE_ROWS_512                                                                      \
    RESBM__STORE_ROW_512(0) RESBM__STORE_ROW_512(1) RESBM__STORE_ROW_512(2) RESBM__STORE_ROW_512(3) \
    RESBM__STORE_ROW_512(4) RESBM__STORE_ROW_512(5) RESBM__STORE_ROW_512(6) RESBM__STORE_ROW_512(7)
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
/* Asks for C's mr rows' first and last lines, which the kernels read or write only after their k
   loop: inside a step they come from memory (bench_profile: the step's GEMMs run at their cold
   rate). Prefetches never fault; the addresses are formed as integers. */
static void resbm__prefetch_c(const float *c, size_t ldc, size_t mr, size_t nr) {
    size_t i;
    for (i = 0; i < mr; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)((uintptr_t)(c + i * ldc) + (nr - 1) * sizeof(float)), _MM_HINT_T0);
    }
}
#endif

/* Kept out of line: inlined into its callers it loses registers to their loop state. */
static RESBM__NOINLINE void resbm__kernel(size_t kc, const float *a, size_t ars, size_t aks,
                                          const float *b, size_t ldb, float *c, size_t ldc,
                                          size_t mr, size_t nr, int add) {
    const float *ar[RESBM__MR];
    size_t i, k;
    for (i = 0; i < RESBM__MR; i++) ar[i] = a + (i < mr ? i : mr - 1) * ars;
    {
#if defined(__AVX512F__)
    __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xffff : (1u << nr) - 1);
    __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xffff : nr > 16 ? (1u << (nr - 16)) - 1 : 0);
    __m512 c0[RESBM__MR], c1[RESBM__MR];
    c0[0] = c0[1] = c0[2] = c0[3] = c0[4] = c0[5] = c0[6] = c0[7] = _mm512_setzero_ps();
    c1[0] = c1[1] = c1[2] = c1[3] = c1[4] = c1[5] = c1[6] = c1[7] = _mm512_setzero_ps();
    resbm__prefetch_c(c, ldc, mr, nr); /* not op(A) too: slower here on a Zen 5 (RESULTS.md) */
    for (k = 0; k < kc; k++) {
        const float *bk = b + k * ldb;
        size_t ak = k * aks;
        __m512 b0 = _mm512_maskz_loadu_ps(m0, bk), b1 = _mm512_maskz_loadu_ps(m1, bk + 16);
        __m512 a0 = _mm512_set1_ps(ar[0][ak]), a1 = _mm512_set1_ps(ar[1][ak]);
        __m512 a2 = _mm512_set1_ps(ar[2][ak]), a3 = _mm512_set1_ps(ar[3][ak]);
        c0[0] = _mm512_fmadd_ps(a0, b0, c0[0]); c1[0] = _mm512_fmadd_ps(a0, b1, c1[0]);
        c0[1] = _mm512_fmadd_ps(a1, b0, c0[1]); c1[1] = _mm512_fmadd_ps(a1, b1, c1[1]);
        c0[2] = _mm512_fmadd_ps(a2, b0, c0[2]); c1[2] = _mm512_fmadd_ps(a2, b1, c1[2]);
        c0[3] = _mm512_fmadd_ps(a3, b0, c0[3]); c1[3] = _mm512_fmadd_ps(a3, b1, c1[3]);
        a0 = _mm512_set1_ps(ar[4][ak]); a1 = _mm512_set1_ps(ar[5][ak]);
        a2 = _mm512_set1_ps(ar[6][ak]); a3 = _mm512_set1_ps(ar[7][ak]);
        c0[4] = _mm512_fmadd_ps(a0, b0, c0[4]); c1[4] = _mm512_fmadd_ps(a0, b1, c1[4]);
        c0[5] = _mm512_fmadd_ps(a1, b0, c0[5]); c1[5] = _mm512_fmadd_ps(a1, b1, c1[5]);
        c0[6] = _mm512_fmadd_ps(a2, b0, c0[6]); c1[6] = _mm512_fmadd_ps(a2, b1, c1[6]);
        c0[7] = _mm512_fmadd_ps(a3, b0, c0[7]); c1[7] = _mm512_fmadd_ps(a3, b1, c1[7]);
    }
    RESBM__STORE_ROWS_512
#else
    float tile[RESBM__MR * RESBM__NR];
    size_t j;
#if defined(__AVX2__) && defined(__FMA__)
    /* 12 accumulators + 2 of B + 1 of A = 15 of the 16 ymm registers; written out with constant
       indices (a loop over an accumulator array keeps it in memory: 3x slower). */
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    /* Ask early for what the hardware prefetcher misses: C's lines, and a strided op(A) (A^T:
       one line per k, M floats apart) RESBM__PF_K steps ahead. */
    uintptr_t pa = (uintptr_t)ar[0], pz = (uintptr_t)ar[RESBM__MR - 1];
    uintptr_t pstep = aks > 1 ? aks * sizeof(float) : 0, pahead = RESBM__PF_K * pstep;
    resbm__prefetch_c(c, ldc, mr, nr);
    for (k = 0; k < kc; k++) {
        const float *bk = b + k * ldb;
        size_t ak = k * aks;
        __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8), ai;
        _mm_prefetch((const char *)(pa + pahead + k * pstep), _MM_HINT_T0);
        _mm_prefetch((const char *)(pz + pahead + k * pstep), _MM_HINT_T0);
        ai = _mm256_broadcast_ss(ar[0] + ak);
        c00 = _mm256_fmadd_ps(ai, b0, c00); c01 = _mm256_fmadd_ps(ai, b1, c01);
        ai = _mm256_broadcast_ss(ar[1] + ak);
        c10 = _mm256_fmadd_ps(ai, b0, c10); c11 = _mm256_fmadd_ps(ai, b1, c11);
        ai = _mm256_broadcast_ss(ar[2] + ak);
        c20 = _mm256_fmadd_ps(ai, b0, c20); c21 = _mm256_fmadd_ps(ai, b1, c21);
        ai = _mm256_broadcast_ss(ar[3] + ak);
        c30 = _mm256_fmadd_ps(ai, b0, c30); c31 = _mm256_fmadd_ps(ai, b1, c31);
        ai = _mm256_broadcast_ss(ar[4] + ak);
        c40 = _mm256_fmadd_ps(ai, b0, c40); c41 = _mm256_fmadd_ps(ai, b1, c41);
        ai = _mm256_broadcast_ss(ar[5] + ak);
        c50 = _mm256_fmadd_ps(ai, b0, c50); c51 = _mm256_fmadd_ps(ai, b1, c51);
    }
    if (mr == RESBM__MR && nr == RESBM__NR) { /* a whole tile: straight into C */
#define RESBM__STORE_ROW(i, x0, x1)                                                                \
        {                                                                                          \
            float *ci = c + (i) * ldc;                                                             \
            if (add) {                                                                             \
                x0 = _mm256_add_ps(_mm256_loadu_ps(ci), x0);                                       \
                x1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), x1);                                   \
            }                                                                                      \
            _mm256_storeu_ps(ci, x0);                                                              \
            _mm256_storeu_ps(ci + 8, x1);                                                          \
        }
        RESBM__STORE_ROW(0, c00, c01) RESBM__STORE_ROW(1, c10, c11) RESBM__STORE_ROW(2, c20, c21)
        RESBM__STORE_ROW(3, c30, c31) RESBM__STORE_ROW(4, c40, c41) RESBM__STORE_ROW(5, c50, c51)
#undef RESBM__STORE_ROW
        return;
    }
    _mm256_storeu_ps(tile + 0 * RESBM__NR, c00); _mm256_storeu_ps(tile + 0 * RESBM__NR + 8, c01);
    _mm256_storeu_ps(tile + 1 * RESBM__NR, c10); _mm256_storeu_ps(tile + 1 * RESBM__NR + 8, c11);
    _mm256_storeu_ps(tile + 2 * RESBM__NR, c20); _mm256_storeu_ps(tile + 2 * RESBM__NR + 8, c21);
    _mm256_storeu_ps(tile + 3 * RESBM__NR, c30); _mm256_storeu_ps(tile + 3 * RESBM__NR + 8, c31);
    _mm256_storeu_ps(tile + 4 * RESBM__NR, c40); _mm256_storeu_ps(tile + 4 * RESBM__NR + 8, c41);
    _mm256_storeu_ps(tile + 5 * RESBM__NR, c50); _mm256_storeu_ps(tile + 5 * RESBM__NR + 8, c51);
#else
    for (i = 0; i < RESBM__MR * RESBM__NR; i++) tile[i] = 0.0f;
    for (k = 0; k < kc; k++)
        for (i = 0; i < RESBM__MR; i++)
            for (j = 0; j < RESBM__NR; j++)
                tile[i * RESBM__NR + j] += ar[i][k * aks] * b[k * ldb + j];
#endif
    for (i = 0; i < mr; i++)
        for (j = 0; j < nr; j++)
            c[i * ldc + j] = add ? c[i * ldc + j] + tile[i * RESBM__NR + j] : tile[i * RESBM__NR + j];
#endif
    }
}

#if defined(__AVX512F__)
#define RESBM__DIRECT_B 1 /* the kernel masks its loads, so op(B) = B [K,N] is read in place */
#else
#define RESBM__DIRECT_B 0
#endif

/* Packs op(B)(k, j) = B[k*bks + j*bns], k < kc, j < nc, into NR-column panels, zero-padded. Each
   source row is read once, in order: filling one panel at a time would read one line of every
   row per panel, which from L3 or memory took up to half of a weight-gradient GEMM's time. */
static void resbm__pack_b(float *dst, const float *B, size_t bks, size_t bns, size_t nc, size_t kc) {
    size_t p, j, k;
    if (bns == 1) { /* rows of op(B) are contiguous: row k fills row k of every panel */
        for (k = 0; k < kc; k++) {
            const float *src = B + k * bks;
            for (p = 0; p < nc; p += RESBM__NR) {
                size_t nr = RESBM__MIN(RESBM__NR, nc - p);
                float *d = dst + p * kc + k * RESBM__NR;
                if (nr == RESBM__NR) {
                    memcpy(d, src + p, RESBM__NR * sizeof(float));
                    continue;
                }
                for (j = 0; j < nr; j++) d[j] = src[p + j];
                for (; j < RESBM__NR; j++) d[j] = 0.0f;
            }
        }
        return;
    }
    for (p = 0; p < nc; p += RESBM__NR) { /* a transpose: source row j is column j of a panel */
        size_t nr = RESBM__MIN(RESBM__NR, nc - p);
        float *d = dst + p * kc;
        j = 0;
#if defined(__AVX2__) && defined(__FMA__)
        if (bks == 1) /* 8 source rows x 8 k at a time, transposed in registers */
            for (; j + 8 <= nr; j += 8) {
                const float *src = B + (p + j) * bns;
                for (k = 0; k + 8 <= kc; k += 8) {
                    __m256 r0 = _mm256_loadu_ps(src + k), r1 = _mm256_loadu_ps(src + bns + k);
                    __m256 r2 = _mm256_loadu_ps(src + 2 * bns + k), r3 = _mm256_loadu_ps(src + 3 * bns + k);
                    __m256 r4 = _mm256_loadu_ps(src + 4 * bns + k), r5 = _mm256_loadu_ps(src + 5 * bns + k);
                    __m256 r6 = _mm256_loadu_ps(src + 6 * bns + k), r7 = _mm256_loadu_ps(src + 7 * bns + k);
                    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
                    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
                    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
                    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
                    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                    float *o = d + k * RESBM__NR + j;
                    _mm256_storeu_ps(o + 0 * RESBM__NR, _mm256_permute2f128_ps(u0, u4, 0x20));
                    _mm256_storeu_ps(o + 1 * RESBM__NR, _mm256_permute2f128_ps(u1, u5, 0x20));
                    _mm256_storeu_ps(o + 2 * RESBM__NR, _mm256_permute2f128_ps(u2, u6, 0x20));
                    _mm256_storeu_ps(o + 3 * RESBM__NR, _mm256_permute2f128_ps(u3, u7, 0x20));
                    _mm256_storeu_ps(o + 4 * RESBM__NR, _mm256_permute2f128_ps(u0, u4, 0x31));
                    _mm256_storeu_ps(o + 5 * RESBM__NR, _mm256_permute2f128_ps(u1, u5, 0x31));
                    _mm256_storeu_ps(o + 6 * RESBM__NR, _mm256_permute2f128_ps(u2, u6, 0x31));
                    _mm256_storeu_ps(o + 7 * RESBM__NR, _mm256_permute2f128_ps(u3, u7, 0x31));
                }
                for (; k < kc; k++) {
                    size_t q;
                    for (q = 0; q < 8; q++) d[k * RESBM__NR + j + q] = src[q * bns + k];
                }
            }
#endif
        for (; j < nr; j++) {
            const float *src = B + (p + j) * bns;
            for (k = 0; k < kc; k++) d[k * RESBM__NR + j] = src[k * bks];
        }
        for (; j < RESBM__NR; j++)
            for (k = 0; k < kc; k++) d[k * RESBM__NR + j] = 0.0f;
    }
}

/* Attention's products inside a block of queries t0.. (query t sees keys u <= t) have a causal
   shape that lets micro-tiles be skipped or their k loop shortened. With i a row of the call's C:
   COLS:  C(i,j) is read only for j <= t0 + i; tiles wholly past that are not computed.
   K_MAX: op(A)(i,k) = +0 for k > t0 + i (P and dS rows); the k loop stops after the tile's last.
   K_MIN: op(A)(i,k) = +0 for t0 + k < i (P^T and dS^T); the k loop starts at the tile's first.
   For finite operands the bits stay: a kernel sum starts at +0, leading +0 * b products leave it
   +0, and trailing ones add zero to it. The one exception (K_MAX): an FMA sum is -0 only if every
   product in it was -0 or a negative one that underflowed, and trailing +0 * b terms could turn
   such a -0 into +0; an output exactly zero through total underflow may now keep its -0. */
enum { RESBM__DENSE, RESBM__CAUSAL_COLS, RESBM__CAUSAL_K_MAX, RESBM__CAUSAL_K_MIN };
typedef struct { int kind; size_t t0; } resbm__shape;
static const resbm__shape resbm__dense = { RESBM__DENSE, 0 };
static resbm__shape resbm__causal(int kind, size_t t0) {
    resbm__shape sh;
    sh.kind = kind; sh.t0 = t0;
    return sh;
}

/* Serial C[M,N] (+)= op(A) op(B) on one thread, op(A)(i,k) = A[i*ars + k*aks],
   op(B)(k,j) = B[k*bks + j*bns], C rows ldc apart; pack holds RESBM__PACK_FLOATS. K > 0.
   A packed op(B) block serves all M rows, MC at a time (that op(A) block stays in L2 while
   each B panel of it is read from L1). */
static void resbm__gemm_block(float *C, size_t ldc, const float *A, size_t ars, size_t aks,
                              const float *B, size_t bks, size_t bns, size_t M, size_t N, size_t K,
                              int accumulate, float *pack, resbm__shape sh) {
    /* op(B) in place only beside a contiguous op(A): with op(A) strided too (A^T, the weight
       gradients), the two strided streams, a power of two apart per k, evict each other's lines
       from L1; packing op(B) there cut a step's GEMM time by 2-10% on 1 thread (RESULTS.md). */
    int direct = RESBM__DIRECT_B && bns == 1 && aks == 1;
    size_t j0, k0, i0, jr, ir;
    for (j0 = 0; j0 < N; j0 += RESBM__NC) {
        size_t nc = RESBM__MIN((size_t)RESBM__NC, N - j0);
        for (k0 = 0; k0 < K; k0 += RESBM__KC) {
            size_t kc = RESBM__MIN((size_t)RESBM__KC, K - k0);
            int add = accumulate || k0 > 0;
            if (!direct) resbm__pack_b(pack, B + k0 * bks + j0 * bns, bks, bns, nc, kc);
            for (i0 = 0; i0 < M; i0 += RESBM__MC) {
                size_t i1 = RESBM__MIN(M, i0 + RESBM__MC);
                for (jr = 0; jr < nc; jr += RESBM__NR) {
                    const float *b = direct ? B + k0 * bks + j0 + jr : pack + jr * kc;
                    size_t ldb = direct ? bks : RESBM__NR;
                    for (ir = i0; ir < i1; ir += RESBM__MR) {
                        size_t mr = RESBM__MIN(RESBM__MR, i1 - ir), kb = 0, ke = kc;
                        if (sh.kind == RESBM__CAUSAL_COLS && j0 + jr > sh.t0 + ir + mr - 1) continue;
                        if (sh.kind == RESBM__CAUSAL_K_MAX) /* last nonzero k: t0 + ir + mr - 1 */
                            ke = sh.t0 + ir + mr > k0 ? RESBM__MIN(kc, sh.t0 + ir + mr - k0) : 0;
                        if (sh.kind == RESBM__CAUSAL_K_MIN && ir > sh.t0 + k0) /* first: ir - t0 */
                            kb = RESBM__MIN(ke, ir - sh.t0 - k0);
                        if (kb == ke && add) continue; /* nothing to add (kc 0 stores zeros) */
                        resbm__kernel(ke - kb, A + ir * ars + (k0 + kb) * aks, ars, aks, b + kb * ldb,
                                      ldb, C + ir * ldc + j0 + jr, ldc, mr,
                                      RESBM__MIN(RESBM__NR, nc - jr), add);
                    }
                }
            }
        }
    }
}

#ifdef RESBM__BF16
/* bf16 GEMMs (resbm_pool_set_precision). Both operands are packed: W-lane panels (W = MR rows of
   op(A) or NR columns of op(B)) of k-pairs, one 32-bit word per lane and pair holding its
   elements at k = 2p (low half) and 2p + 1 (high half), rounded to bf16 by the hardware
   (nearest even), an odd kc padded with a zero. VDPBF16PS then adds both products of a pair to
   an f32 lane. Every conversion goes through the same instruction, so the packed bits do not
   depend on the tiling; with the fixed K blocks the sums do not either. */
static __m512i resbm__bf16_pairs(__m512 even, __m512 odd) { /* lane j: (even[j], odd[j]) */
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(odd, even));
}

/* dst: ceil(lanes / W) panels of ceil(kc / 2) x W words; x(l, k) = X[l*ls + k*ks], where
   ls == 1 or ks == 1 (every GEMM form has one of them). W = 8 or 32. */
static void resbm__pack_bf16(uint32_t *dst, const float *X, size_t ls, size_t ks, size_t lanes,
                             size_t kc, size_t W) {
    size_t np = (kc + 1) / 2, q, p, l, h;
    for (q = 0; q < lanes; q += W) {
        size_t nl = RESBM__MIN(W, lanes - q);
        uint32_t *d = dst + q * np;
        if (ls == 1) { /* lanes contiguous: a pair row of 16 lanes from two masked loads */
            for (p = 0; p < np; p++)
                for (h = 0; h < W; h += 16) {
                    __mmask16 mk = (__mmask16)(nl >= h + 16 ? 0xffff : nl > h ? (1u << (nl - h)) - 1 : 0);
                    __m512 ev = _mm512_setzero_ps(), od = ev;
                    if (mk) {
                        const float *x0 = X + q + h + 2 * p * ks;
                        ev = _mm512_maskz_loadu_ps(mk, x0);
                        if (2 * p + 1 < kc) od = _mm512_maskz_loadu_ps(mk, x0 + ks);
                    }
                    _mm512_mask_storeu_epi32(d + p * W + h, (__mmask16)(W - h >= 16 ? 0xffff : (1u << (W - h)) - 1),
                                             resbm__bf16_pairs(ev, od));
                }
            continue;
        }
        for (l = 0; l < W; l++) { /* k contiguous: 32 k of a lane convert to 16 pairs in order */
            if (l >= nl) {
                for (p = 0; p < np; p++) d[p * W + l] = 0;
                continue;
            }
            for (p = 0; p < np; p += 16) {
                size_t nk = RESBM__MIN(32, kc - 2 * p), j;
                const float *x0 = X + (q + l) * ls + 2 * p;
                __m512 lo = _mm512_maskz_loadu_ps((__mmask16)(nk >= 16 ? 0xffff : (1u << nk) - 1), x0);
                __m512 hi = nk > 16 ? _mm512_maskz_loadu_ps((__mmask16)(nk >= 32 ? 0xffff : (1u << (nk - 16)) - 1), x0 + 16)
                                    : _mm512_setzero_ps();
                uint32_t t[16];
                _mm512_storeu_si512((void *)t, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                for (j = 0; j < 16 && p + j < np; j++) d[(p + j) * W + l] = t[j];
            }
        }
    }
}

/* c[mr, nr] (+)= the packed panels' product: a = MR words per pair, b = NR words per pair. */
static RESBM__NOINLINE void resbm__kernel_bf16(size_t np, const uint32_t *a, const uint32_t *b, float *c,
                                               size_t ldc, size_t mr, size_t nr, int add) {
    __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xffff : (1u << nr) - 1);
    __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xffff : nr > 16 ? (1u << (nr - 16)) - 1 : 0);
    __m512 c0[8], c1[8];
    size_t p;
    c0[0] = c0[1] = c0[2] = c0[3] = c0[4] = c0[5] = c0[6] = c0[7] = _mm512_setzero_ps();
    c1[0] = c1[1] = c1[2] = c1[3] = c1[4] = c1[5] = c1[6] = c1[7] = _mm512_setzero_ps();
    for (p = 0; p < np; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(b + p * 32));
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(b + p * 32 + 16));
        const uint32_t *ap = a + p * 8;
#define RESBM__DP(i)                                                                               \
        {                                                                                          \
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)ap[i]);                                 \
            c0[i] = _mm512_dpbf16_ps(c0[i], ai, b0);                                               \
            c1[i] = _mm512_dpbf16_ps(c1[i], ai, b1);                                               \
        }
        RESBM__DP(0) RESBM__DP(1) RESBM__DP(2) RESBM__DP(3) RESBM__DP(4) RESBM__DP(5) RESBM__DP(6) RESBM__DP(7)
#undef RESBM__DP
    }
    RESBM__STORE_ROWS_512
}

/* resbm__gemm_block in bf16 (dense shapes): the packing buffer holds op(B)'s KC x NC block and
   op(A)'s MC x KC block, each half the size of the f32 block. */
static void resbm__gemm_block_bf16(float *C, size_t ldc, const float *A, size_t ars, size_t aks,
                                   const float *B, size_t bks, size_t bns, size_t M, size_t N, size_t K,
                                   int accumulate, float *pack) {
    uint32_t *pb = (uint32_t *)pack, *pa = pb + (size_t)RESBM__NC * (RESBM__KC / 2);
    size_t j0, k0, i0, jr, ir;
    for (j0 = 0; j0 < N; j0 += RESBM__NC) {
        size_t nc = RESBM__MIN((size_t)RESBM__NC, N - j0);
        for (k0 = 0; k0 < K; k0 += RESBM__KC) {
            size_t kc = RESBM__MIN((size_t)RESBM__KC, K - k0), np = (kc + 1) / 2;
            int add = accumulate || k0 > 0;
            resbm__pack_bf16(pb, B + k0 * bks + j0 * bns, bns, bks, nc, kc, RESBM__NR);
            for (i0 = 0; i0 < M; i0 += RESBM__MC) {
                size_t i1 = RESBM__MIN(M, i0 + RESBM__MC);
                resbm__pack_bf16(pa, A + i0 * ars + k0 * aks, ars, aks, i1 - i0, kc, RESBM__MR);
                for (jr = 0; jr < nc; jr += RESBM__NR)
                    for (ir = i0; ir < i1; ir += RESBM__MR)
                        resbm__kernel_bf16(np, pa + (ir - i0) * np, pb + jr * np, C + ir * ldc + j0 + jr, ldc,
                                           RESBM__MIN(RESBM__MR, i1 - ir), RESBM__MIN(RESBM__NR, nc - jr), add);
            }
        }
    }
}

#ifdef RESBM__AMX
/* bf16 GEMMs on AMX tiles. A tile is 16 rows of 64 bytes; TDPBF16PS adds to a 16 x 16 f32 tile
   of C the products of an A tile (16 rows of op(A), each 32 k as 16 bf16 pairs) and a B tile
   (16 k-pairs, each the 16 columns' pairs). Both operands are packed into such 1 KB blocks,
   zero-padded to whole tiles, so every shape runs the one kernel; C tiles at the edges go through
   a buffer. The pairs are the same rounded bits as the AVX512_BF16 path's; each C element sums
   its K blocks in order, 32 k per instruction, whatever the tiling. */
/* 16 x 16 words, in registers. (The all-lanes maskz forms compile to the plain instructions; g++
   12 -O2 warns of the plain forms' undefined pass-through lanes.) */
#define RESBM__UNPACK(op, x, y) _mm512_maskz_##op((__mmask16)0xffff, x, y)
#define RESBM__UNPACK64(op, x, y) _mm512_maskz_##op((__mmask8)0xff, x, y)
#define RESBM__LANES(x, y, imm) _mm512_maskz_shuffle_i32x4((__mmask16)0xffff, x, y, imm)
static void resbm__transpose16(__m512i r[16]) {
    __m512i a[16], b[16];
    int i, j;
    for (i = 0; i < 16; i += 2) {
        a[i] = RESBM__UNPACK(unpacklo_epi32, r[i], r[i + 1]);
        a[i + 1] = RESBM__UNPACK(unpackhi_epi32, r[i], r[i + 1]);
    }
    for (i = 0; i < 16; i += 4) { /* b[i + j], 128-bit lane L: column 4L + j of rows i..i+3 */
        b[i] = RESBM__UNPACK64(unpacklo_epi64, a[i], a[i + 2]);
        b[i + 1] = RESBM__UNPACK64(unpackhi_epi64, a[i], a[i + 2]);
        b[i + 2] = RESBM__UNPACK64(unpacklo_epi64, a[i + 1], a[i + 3]);
        b[i + 3] = RESBM__UNPACK64(unpackhi_epi64, a[i + 1], a[i + 3]);
    }
    for (j = 0; j < 4; j++) { /* row 4L + j gathers lane L of b[j], b[4 + j], b[8 + j], b[12 + j] */
        __m512i c0 = RESBM__LANES(b[j], b[4 + j], 0x44), c1 = RESBM__LANES(b[j], b[4 + j], 0xee);
        __m512i c2 = RESBM__LANES(b[8 + j], b[12 + j], 0x44), c3 = RESBM__LANES(b[8 + j], b[12 + j], 0xee);
        r[j] = RESBM__LANES(c0, c2, 0x88);
        r[4 + j] = RESBM__LANES(c0, c2, 0xdd);
        r[8 + j] = RESBM__LANES(c1, c3, 0x88);
        r[12 + j] = RESBM__LANES(c1, c3, 0xdd);
    }
}
#undef RESBM__UNPACK
#undef RESBM__UNPACK64
#undef RESBM__LANES

/* One 1 KB block: nl <= 16 lanes by nk <= 32 k of x(l, k) = X[l*ls + k*ks] (ls == 1 or
   ks == 1), as 16 x 16 pair words, zero beyond nl and nk: rows by lane (an A tile) or by pair
   (a B tile). */
static void resbm__amx_block(uint32_t *dst, const float *X, size_t ls, size_t ks, size_t nl, size_t nk,
                             int rows_by_lane) {
    __m512i v[16];
    size_t i;
    int by_lane = ks == 1 && ls != 1; /* v[i] holds lane i's pairs (else pair i's lanes) */
    if (by_lane) {
        __mmask16 lo = (__mmask16)(nk >= 16 ? 0xffff : (1u << nk) - 1);
        __mmask16 hi = (__mmask16)(nk >= 32 ? 0xffff : nk > 16 ? (1u << (nk - 16)) - 1 : 0);
        for (i = 0; i < 16; i++)
            v[i] = i < nl ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, X + i * ls + 16),
                                                         _mm512_maskz_loadu_ps(lo, X + i * ls))
                          : _mm512_setzero_si512();
    } else {
        __mmask16 mk = (__mmask16)(nl >= 16 ? 0xffff : (1u << nl) - 1);
        for (i = 0; i < 16; i++) {
            __m512 ev = 2 * i < nk ? _mm512_maskz_loadu_ps(mk, X + 2 * i * ks) : _mm512_setzero_ps();
            __m512 od = 2 * i + 1 < nk ? _mm512_maskz_loadu_ps(mk, X + (2 * i + 1) * ks) : _mm512_setzero_ps();
            v[i] = resbm__bf16_pairs(ev, od);
        }
    }
    if (by_lane != rows_by_lane) resbm__transpose16(v);
    for (i = 0; i < 16; i++) _mm512_storeu_si512((void *)(dst + 16 * i), v[i]);
}

/* A (ls, ks) or B panel set of `lanes` x kc: blocks [lane block][k chunk], each 1 KB, the lane
   blocks padded with zeros to an even count (the kernel takes them two at a time). */
static void resbm__amx_pack(uint32_t *dst, const float *X, size_t ls, size_t ks, size_t lanes, size_t kc,
                            int rows_by_lane) {
    size_t nb = (lanes + 15) / 16, nkc = (kc + 31) / 32, q, c;
    for (q = 0; q < nb; q++)
        for (c = 0; c < nkc; c++)
            resbm__amx_block(dst + (q * nkc + c) * 256, X + q * 16 * ls + c * 32 * ks, ls, ks,
                             RESBM__MIN(16, lanes - q * 16), RESBM__MIN(32, kc - c * 32), rows_by_lane);
    if (nb % 2) memset(dst + nb * nkc * 256, 0, nkc * 1024);
}

/* C[mc, nc] (+)= the packed blocks' product, 32 x 32 at a time in tiles 0-3 (A in 4-5, B in 6-7). */
static void resbm__amx_kernel(float *C, size_t ldc, const uint32_t *pa, const uint32_t *pb, size_t mc,
                              size_t nc, size_t kc, int add) {
    size_t nkc = (kc + 31) / 32, i, j, c, r;
    float edge[4][256];
    for (i = 0; i < mc; i += 32)
        for (j = 0; j < nc; j += 32) {
            const uint32_t *a = pa + (i / 16) * nkc * 256, *b = pb + (j / 16) * nkc * 256;
            int whole = i + 32 <= mc && j + 32 <= nc, t;
            if (whole && add) {
                _tile_loadd(0, C + i * ldc + j, ldc * 4); _tile_loadd(1, C + i * ldc + j + 16, ldc * 4);
                _tile_loadd(2, C + (i + 16) * ldc + j, ldc * 4); _tile_loadd(3, C + (i + 16) * ldc + j + 16, ldc * 4);
            } else if (add) { /* the edge: C's part in the 32 x 32 block, zeros around it */
                for (t = 0; t < 4; t++)
                    for (r = 0; r < 16; r++) {
                        size_t ci = i + (size_t)(t / 2) * 16 + r, cj = j + (size_t)(t % 2) * 16, n = 0;
                        if (ci < mc && cj < nc) n = RESBM__MIN(16, nc - cj);
                        if (n) memcpy(edge[t] + r * 16, C + ci * ldc + cj, n * 4);
                        memset(edge[t] + r * 16 + n, 0, (16 - n) * 4);
                    }
                _tile_loadd(0, edge[0], 64); _tile_loadd(1, edge[1], 64);
                _tile_loadd(2, edge[2], 64); _tile_loadd(3, edge[3], 64);
            } else {
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            }
            for (c = 0; c < nkc; c++) {
                _tile_loadd(4, a + c * 256, 64); _tile_loadd(5, a + (nkc + c) * 256, 64);
                _tile_loadd(6, b + c * 256, 64); _tile_loadd(7, b + (nkc + c) * 256, 64);
                _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
            }
            if (whole) {
                _tile_stored(0, C + i * ldc + j, ldc * 4); _tile_stored(1, C + i * ldc + j + 16, ldc * 4);
                _tile_stored(2, C + (i + 16) * ldc + j, ldc * 4); _tile_stored(3, C + (i + 16) * ldc + j + 16, ldc * 4);
                continue;
            }
            _tile_stored(0, edge[0], 64); _tile_stored(1, edge[1], 64);
            _tile_stored(2, edge[2], 64); _tile_stored(3, edge[3], 64);
            for (t = 0; t < 4; t++)
                for (r = 0; r < 16; r++) {
                    size_t ci = i + (size_t)(t / 2) * 16 + r, cj = j + (size_t)(t % 2) * 16;
                    if (ci < mc && cj < nc) memcpy(C + ci * ldc + cj, edge[t] + r * 16, RESBM__MIN(16, nc - cj) * 4);
                }
        }
}

/* resbm__gemm_block_bf16 on AMX: the same blocks (op(B) KC x NC, op(A) MC x KC, each 128 KB
   packed), each thread's tiles configured for the call and released after it. */
static void resbm__gemm_block_amx(float *C, size_t ldc, const float *A, size_t ars, size_t aks,
                                  const float *B, size_t bks, size_t bns, size_t M, size_t N, size_t K,
                                  int accumulate, float *pack) {
    uint32_t *pb = (uint32_t *)pack, *pa = pb + (size_t)RESBM__NC * (RESBM__KC / 2);
    unsigned char cfg[64];
    size_t j0, k0, i0, t;
    memset(cfg, 0, sizeof(cfg));
    cfg[0] = 1; /* palette 1: eight tiles, here each 16 rows of 64 bytes */
    for (t = 0; t < 8; t++) { cfg[16 + 2 * t] = 64; cfg[48 + t] = 16; }
    _tile_loadconfig(cfg);
    for (j0 = 0; j0 < N; j0 += RESBM__NC) {
        size_t nc = RESBM__MIN((size_t)RESBM__NC, N - j0);
        for (k0 = 0; k0 < K; k0 += RESBM__KC) {
            size_t kc = RESBM__MIN((size_t)RESBM__KC, K - k0);
            resbm__amx_pack(pb, B + k0 * bks + j0 * bns, bns, bks, nc, kc, 0);
            for (i0 = 0; i0 < M; i0 += RESBM__MC) {
                size_t mc = RESBM__MIN((size_t)RESBM__MC, M - i0);
                resbm__amx_pack(pa, A + i0 * ars + k0 * aks, ars, aks, mc, kc, 1);
                resbm__amx_kernel(C + i0 * ldc + j0, ldc, pa, pb, mc, nc, kc, accumulate || k0 > 0);
            }
        }
    }
    _tile_release();
}
#endif
#endif

typedef struct {
    int accumulate;
    float *C;
    const float *A, *B;
    size_t M, N, K, ars, aks, bks, bns, tm, tn, tiles_n;
    float *pack;
    int bf16; /* RESBM_PRECISION_BF16 (RESBM__BF16 builds only): 1 AVX512_BF16, 2 AMX */
} resbm__gemm_job;

static void resbm__gemm_task(void *ctx, size_t task, int thread) {
    const resbm__gemm_job *g = (const resbm__gemm_job *)ctx;
    size_t i0 = (task / g->tiles_n) * g->tm, j0 = (task % g->tiles_n) * g->tn, i;
    size_t mc = RESBM__MIN(g->tm, g->M - i0), nc = RESBM__MIN(g->tn, g->N - j0);
    if (g->K == 0) { /* C = 0 or C unchanged */
        if (!g->accumulate)
            for (i = 0; i < mc; i++) memset(g->C + (i0 + i) * g->N + j0, 0, nc * sizeof(float));
        return;
    }
#ifdef RESBM__AMX
    if (g->bf16 == 2) {
        resbm__gemm_block_amx(g->C + i0 * g->N + j0, g->N, g->A + i0 * g->ars, g->ars, g->aks,
                              g->B + j0 * g->bns, g->bks, g->bns, mc, nc, g->K, g->accumulate,
                              g->pack + (size_t)thread * RESBM__PACK_FLOATS);
        return;
    }
#endif
#ifdef RESBM__BF16
    if (g->bf16) {
        resbm__gemm_block_bf16(g->C + i0 * g->N + j0, g->N, g->A + i0 * g->ars, g->ars, g->aks,
                               g->B + j0 * g->bns, g->bks, g->bns, mc, nc, g->K, g->accumulate,
                               g->pack + (size_t)thread * RESBM__PACK_FLOATS);
        return;
    }
#endif
    resbm__gemm_block(g->C + i0 * g->N + j0, g->N, g->A + i0 * g->ars, g->ars, g->aks,
                      g->B + j0 * g->bns, g->bks, g->bns, mc, nc, g->K, g->accumulate,
                      g->pack + (size_t)thread * RESBM__PACK_FLOATS, resbm__dense);
}

/* The job of C (+)= op(A) op(B) cut into at least `want` tiles where the shape allows; returns
   the tile count. Tile size only decides who computes what, never the arithmetic. A tile packs
   each op(B) block once for all its rows, so with one K block a tile starts whole along M; with
   more, its C block is revisited once per K block, so it starts at MC rows to stay in L2. Tiles
   then shrink, taller than wide, until every thread has a few to take. */
static size_t resbm__gemm_setup(resbm__gemm_job *g, int form, int accumulate, float *C, const float *A,
                                const float *B, size_t M, size_t N, size_t K, size_t want) {
    size_t tiles_m, tiles_n;
    g->accumulate = accumulate; g->C = C; g->A = A; g->B = B;
    g->M = M; g->N = N; g->K = K; g->pack = NULL; g->bf16 = 0;
    g->ars = form == RESBM_GEMM_TN ? 1 : K;  /* op(A)(i,k) = A[i*ars + k*aks] */
    g->aks = form == RESBM_GEMM_TN ? M : 1;
    g->bks = form == RESBM_GEMM_NT ? 1 : N;  /* op(B)(k,j) = B[k*bks + j*bns] */
    g->bns = form == RESBM_GEMM_NT ? K : 1;
    g->tm = K <= RESBM__KC ? M : RESBM__MIN(M, (size_t)RESBM__MC); g->tn = RESBM__NC;
    for (;;) {
        int rows = g->tm >= 4 * RESBM__MR, cols = g->tn >= 4 * RESBM__NR && g->tn / 2 < N;
        tiles_m = (M + g->tm - 1) / g->tm;
        tiles_n = (N + g->tn - 1) / g->tn;
        if (tiles_m * tiles_n >= want) break;
        if (rows && (g->tm >= 2 * g->tn || !cols)) /* halve, rounded up to whole micro-tiles */
            g->tm = (g->tm / 2 + RESBM__MR - 1) / RESBM__MR * RESBM__MR;
        else if (cols) g->tn /= 2;
        else break;
    }
    g->tiles_n = tiles_n;
    return tiles_m * tiles_n;
}

#ifndef RESBM_USE_CBLAS /* (with a BLAS, Muon calls it instead) */
/* The whole GEMM on the calling thread with its own packing buffer (a task of a batch of them):
   the same bits as resbm_gemm on any pool. */
static void resbm__gemm_serial(int form, float *C, const float *A, const float *B, size_t M,
                               size_t N, size_t K, float *pack) {
    resbm__gemm_job g;
    size_t t, tiles = resbm__gemm_setup(&g, form, 0, C, A, B, M, N, K, 1);
    g.pack = pack;
    for (t = 0; t < tiles; t++) resbm__gemm_task(&g, t, 0);
}

/* C [n, n] = op(A) op(B), K > 0, for a product known to be symmetric (X X^T, or S S for a
   bitwise symmetric S, such as an X X^T from here), serially: the micro-tiles that reach the
   diagonal or above it (resbm__gemm_block on each column panel), the rest mirrored, about half
   the work. Each element is the same k-ordered sum of the same products as in the full product
   (a product commutes; the order over k is the kernel's for every tile), so the bits are
   resbm__gemm_serial's. */
static void resbm__gemm_sym_serial(int form, float *C, const float *A, const float *B, size_t n,
                                   size_t K, float *pack) {
    resbm__gemm_job g;
    size_t c0, i0, i, j;
    resbm__gemm_setup(&g, form, 0, C, A, B, n, n, K, 1); /* the operands' strides */
    for (c0 = 0; c0 < n; c0 += RESBM__NR) { /* each NR-column panel, rows 0 to its last column */
        size_t nr = RESBM__MIN(RESBM__NR, n - c0);
        resbm__gemm_block(C + c0, n, A, g.ars, g.aks, B + c0 * g.bns, g.bks, g.bns, c0 + nr, nr, K, 0, pack,
                          resbm__dense);
    }
    /* the lower triangle, 16 rows at a time (read in column order over the whole matrix, the
       upper triangle missed cache on every element) */
    for (i0 = 0; i0 < n; i0 += 16)
        for (j = 0; j < i0 + 16 && j < n; j++)
            for (i = RESBM__MAX(i0, j + 1); i < i0 + 16 && i < n; i++) C[i * n + j] = C[j * n + i];
}
#endif

/* One buffer of a kernel call: rows x cols values of 4 bytes, read (RESBM__IN), written
   (RESBM__OUT), or written where it may also be exactly one of the inputs of its size
   (RESBM__INPLACE: an elementwise kernel reads each value before it writes it; never another
   output). */
enum { RESBM__IN = 0, RESBM__OUT = 1, RESBM__INPLACE = 2 };
typedef struct { const void *p; size_t rows, cols; int use; } resbm__buf;

/* A call's buffers, checked before anything is written: RESBM_EOVERFLOW when a size in bytes
   does not fit a size_t; RESBM_EINVAL when a buffer written shares memory with any other (a
   kernel reads its inputs while it writes, so an overlap gives a wrong answer, silently). */
static int resbm__bufs_ok(const resbm__buf *b, size_t n /* <= 16 */) {
    size_t i, j, bytes[16];
    for (i = 0; i < n; i++)
        if (resbm_size_mul(&bytes[i], b[i].rows, b[i].cols) || resbm_size_mul(&bytes[i], bytes[i], 4))
            return RESBM_EOVERFLOW;
    for (i = 0; i < n; i++)
        for (j = i + 1; j < n; j++) {
            uintptr_t x = (uintptr_t)b[i].p, y = (uintptr_t)b[j].p;
            int inplace = ((b[i].use == RESBM__INPLACE && b[j].use == RESBM__IN) ||
                           (b[j].use == RESBM__INPLACE && b[i].use == RESBM__IN)) && x == y && bytes[i] == bytes[j];
            if (!b[i].use && !b[j].use) continue; /* inputs may share memory */
            if (!x || !y || inplace) continue;
            if (resbm__overlaps(b[i].p, bytes[i], b[j].p, bytes[j])) return RESBM_EINVAL;
        }
    return RESBM_OK;
}

static int resbm__gemm_check(int form, const float *C, const float *A, const float *B, size_t M,
                             size_t N, size_t K) {
    resbm__buf b[3] = {{C, M, N, RESBM__OUT}, {A, M, K, RESBM__IN}, {B, N, K, RESBM__IN}};
    if (!C || !A || !B || M == 0 || N == 0) return RESBM_EINVAL;
    if (form != RESBM_GEMM_NT && form != RESBM_GEMM_NN && form != RESBM_GEMM_TN) return RESBM_EINVAL;
    return resbm__bufs_ok(b, 3);
}

static int resbm__gemm_run(resbm_pool *pool, int form, int accumulate, float *C, const float *A,
                           const float *B, size_t M, size_t N, size_t K);

RESBMDEF int resbm_gemm(resbm_pool *pool, int form, int accumulate, float *C, const float *A,
                        const float *B, size_t M, size_t N, size_t K) {
#ifdef RESBM_PROFILE
    double t0 = resbm__prof_now();
    int rc = resbm__gemm_run(pool, form, accumulate, C, A, B, M, N, K), i;
    for (i = 0; pool && !rc && i < RESBM__PROF_GEMMS; i++) { /* one caller per pool: no lock */
        resbm__prof_gemm *e = &pool->prof_gemm[i];
        if (e->calls && (e->form != form || e->accumulate != accumulate || e->M != M || e->N != N || e->K != K))
            continue;
        e->form = form; e->accumulate = accumulate; e->M = M; e->N = N; e->K = K;
        e->seconds += resbm__prof_now() - t0;
        e->calls++;
        break;
    }
    return rc;
#else
    return resbm__gemm_run(pool, form, accumulate, C, A, B, M, N, K);
#endif
}

static int resbm__gemm_run(resbm_pool *pool, int form, int accumulate, float *C, const float *A,
                           const float *B, size_t M, size_t N, size_t K) {
    int rc = resbm__gemm_check(form, C, A, B, M, N, K);
    if (rc) return rc;
    if (accumulate != 0 && accumulate != 1) return RESBM_EINVAL;
#ifdef RESBM_USE_CBLAS
    if (M <= 0x7fffffff && N <= 0x7fffffff && K <= 0x7fffffff && K > 0) {
        cblas_sgemm(CblasRowMajor, form == RESBM_GEMM_TN ? CblasTrans : CblasNoTrans,
                    form == RESBM_GEMM_NT ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, 1.0f,
                    A, form == RESBM_GEMM_TN ? (int)M : (int)K, B,
                    form == RESBM_GEMM_NT ? (int)K : (int)N, accumulate ? 1.0f : 0.0f, C, (int)N);
        return RESBM_OK;
    }
#endif
    {
        resbm__gemm_job g;
        size_t tiles = resbm__gemm_setup(&g, form, accumulate, C, A, B, M, N, K,
                                         pool && pool->nthreads > 1 ? (size_t)pool->nthreads * 4 : 1);
        g.pack = pool ? pool->pack : NULL;
        g.bf16 = pool && pool->precision == RESBM_PRECISION_BF16 ? 1 + pool->amx : 0;
        if (g.bf16 == 1) { /* both operands are packed per tile: tiles split N only, so each packs
                              its own op(B) columns once, and op(A) once per tile (a few per GEMM) */
            size_t want = pool->nthreads > 1 ? 2 * (size_t)pool->nthreads : 1;
            g.tm = M; g.tn = RESBM__NC;
            while (g.tn > 2 * RESBM__NR && (N + g.tn - 1) / g.tn < want) g.tn /= 2;
            g.tiles_n = tiles = (N + g.tn - 1) / g.tn;
        } else if (g.bf16 == 2) { /* AMX computes several times faster than it packs: one tile
                                     per thread, whole along N, packs op(A) only once in all */
            size_t w = (size_t)pool->nthreads;
            g.tn = N; g.tm = ((M + w - 1) / w + 31) / 32 * 32;
            g.tiles_n = 1; tiles = (M + g.tm - 1) / g.tm;
        }
        /* a GEMM this small (the bottleneck's r-wide ones) costs less than waking a thread:
           run its tiles here (same tiles, same sums, so the result is the same bits) */
        if (!pool) { /* the calling thread alone, with a packing buffer of its own */
            size_t t;
            if (!(g.pack = (float *)resbm__alloc(RESBM__PACK_FLOATS * sizeof(float), NULL)))
                return RESBM_ENOMEM;
            for (t = 0; t < tiles; t++) resbm__gemm_task(&g, t, 0);
            resbm__dealloc(g.pack, NULL);
            return RESBM_OK;
        }
        if ((double)M * (double)N * (double)K <= 262144.0) {
            size_t t;
            if (!resbm__pool_claim(pool)) return RESBM_ESTATE; /* it packs into thread 0's buffer */
            for (t = 0; t < tiles; t++) resbm__gemm_task(&g, t, 0);
            resbm__pool_release(pool);
            return RESBM_OK;
        }
        return resbm_pool_run(pool, resbm__gemm_task, &g, tiles);
    }
}

RESBMDEF int resbm_gemm_ref(int form, int accumulate, float *C, const float *A, const float *B,
                            size_t M, size_t N, size_t K) {
    size_t i, j, k;
    int rc = resbm__gemm_check(form, C, A, B, M, N, K);
    if (rc) return rc;
    if (accumulate != 0 && accumulate != 1) return RESBM_EINVAL;
    for (i = 0; i < M; i++)
        for (j = 0; j < N; j++) {
            double s = accumulate ? (double)C[i * N + j] : 0.0;
            for (k = 0; k < K; k++) {
                float a = form == RESBM_GEMM_TN ? A[k * M + i] : A[i * K + k];
                float b = form == RESBM_GEMM_NT ? B[j * K + k] : B[k * N + j];
                s += (double)a * (double)b;
            }
            C[i * N + j] = (float)s;
        }
    return RESBM_OK;
}

/* ---- small vector helpers: fixed summation order, so results never depend on threads ---------- */
/* With AVX2 the elementwise loops below run 8 lanes at a time by hand (-O2 does not vectorize
   them): the same operations in the same order per element, so the same bits as the scalar
   loops, which remain for the tails and for other targets, as long as the compiler does not
   fuse a * b + c into an FMA, scalar or written with intrinsics (gcc -std=c99 does not; gnu modes,
   C++ and clang need -ffp-contract=off). Either way results do not depend on the thread count. */
#if defined(__AVX2__) && defined(__FMA__)
#define RESBM__VMATH 1
#endif
static uint32_t resbm__fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float resbm__bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static int resbm__finite(float f) { return (resbm__fbits(f) & 0x7f800000u) != 0x7f800000u; }
static int resbm__finite_d(double x) {
    uint64_t u;
    memcpy(&u, &x, 8);
    return (u & 0x7ff0000000000000ULL) != 0x7ff0000000000000ULL;
}
static float resbm__dot(const float *a, const float *b, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    {
        float lane[16], s;
        int l;
        _mm512_storeu_ps(lane, _mm512_add_ps(s0, s1));
        for (l = 0; l < 8; l++) lane[l] += lane[l + 8];
        s = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
        for (; i < n; i++) s += a[i] * b[i];
        return s;
    }
#else
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
    size_t l;
#ifdef RESBM__VMATH
    __m256 v = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    _mm256_storeu_ps(acc, v);
#endif
    for (; i + 8 <= n; i += 8)
        for (l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
#endif
}

/* y += alpha * x */
static void resbm__axpy(float *y, float alpha, const float *x, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_mul_ps(_mm512_set1_ps(alpha), _mm512_loadu_ps(x + i))));
#endif
#ifdef RESBM__VMATH
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(_mm256_set1_ps(alpha), _mm256_loadu_ps(x + i))));
#endif
    for (; i < n; i++) y[i] += alpha * x[i];
}

/* y = a * x + b * y (two products, then their sum: no FMA, so every lane gives the scalar bits) */
static void resbm__axpby(float *y, float a, const float *x, float b, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(a), _mm512_loadu_ps(x + i)),
                                              _mm512_mul_ps(_mm512_set1_ps(b), _mm512_loadu_ps(y + i))));
#endif
#ifdef RESBM__VMATH
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(a), _mm256_loadu_ps(x + i)),
                                              _mm256_mul_ps(_mm256_set1_ps(b), _mm256_loadu_ps(y + i))));
#endif
    for (; i < n; i++) y[i] = a * x[i] + b * y[i];
}

static float resbm__silu(float x) { return x / (1.0f + expf(-x)); }

/* ---- vector math: exp, silu and softmax rows, 8 lanes at a time -------------------------------- */
/* Every element goes through the same lanes (a tail is a masked vector, not a scalar loop), so an
   element's result never depends on where a chunk or a thread's share begins. Sums over a row
   keep 8 partial sums and add them in a fixed order: the rows start at fixed places, so the
   result is the same for any thread count. Without AVX2 + FMA the scalar loops below them run. */
#ifdef RESBM__VMATH
static __m256i resbm__lanes(size_t n) { /* lanes [0, min(n, 8)) */
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)RESBM__MIN(n, 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln 2 (ln 2 in two parts, so r is exact),
   exp(r) by Cephes' degree-6 polynomial: within 2 ulp of expf on [-87.3, 88.0]. Below that 0
   (no denormals), above +Inf (exp(88) is half of FLT_MAX; only silu(-x) goes there, where the
   result is 0 either way); NaN stays NaN (max and min return their second operand for NaN). */
static __m256 resbm__exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.02969f);
    __m256 xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x)), n, r, p;
    __m256i e;
    n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    p = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    p = _mm256_blendv_ps(p, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    return _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
}

static __m256 resbm__neg8(__m256 x) { return _mm256_xor_ps(x, _mm256_set1_ps(-0.0f)); }
static __m256 resbm__sigmoid8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, resbm__exp8(resbm__neg8(x))));
}
static __m256 resbm__silu8(__m256 x) {
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), resbm__exp8(resbm__neg8(x))));
}
static float resbm__hsum8(__m256 v) { /* fixed order: (0+4 + 1+5) + (2+6 + 3+7) */
    float l[8];
    _mm256_storeu_ps(l, v);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}
#endif

static float resbm__max_row(const float *x, size_t n) { /* n >= 1 */
    float mx = x[0];
    size_t i;
#ifdef RESBM__VMATH
    __m256 v = _mm256_set1_ps(x[0]);
    float l[8];
    for (i = 0; i < n; i += 8) { /* masked-off lanes repeat x[0] */
        __m256i mk = resbm__lanes(n - i);
        v = _mm256_max_ps(v, _mm256_blendv_ps(_mm256_set1_ps(x[0]), _mm256_maskload_ps(x + i, mk),
                                              _mm256_castsi256_ps(mk)));
    }
    _mm256_storeu_ps(l, v);
    for (i = 0; i < 8; i++) mx = l[i] > mx ? l[i] : mx;
#else
    for (i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
#endif
    return mx;
}

/* dst[i] = exp(src[i] * scale - shift) for i < n (in place allowed); returns their sum */
static float resbm__exp_row(float *dst, const float *src, size_t n, float scale, float shift) {
    size_t i;
#ifdef RESBM__VMATH
    __m256 acc = _mm256_setzero_ps(), sc = _mm256_set1_ps(scale), sh = _mm256_set1_ps(shift);
    for (i = 0; i < n; i += 8) {
        __m256i mk = resbm__lanes(n - i);
        __m256 y = resbm__exp8(_mm256_sub_ps(_mm256_mul_ps(_mm256_maskload_ps(src + i, mk), sc), sh));
        y = _mm256_and_ps(y, _mm256_castsi256_ps(mk)); /* masked-off lanes add 0 */
        _mm256_maskstore_ps(dst + i, mk, y);
        acc = _mm256_add_ps(acc, y);
    }
    return resbm__hsum8(acc);
#else
    float sum = 0.0f;
    for (i = 0; i < n; i++) { dst[i] = expf(src[i] * scale - shift); sum += dst[i]; }
    return sum;
#endif
}

static void resbm__scale_row(float *x, size_t n, float s) {
    size_t i = 0;
#ifdef RESBM__VMATH
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(s)));
#endif
    for (; i < n; i++) x[i] *= s; /* the same product: a tail needs no mask */
}

/* ---- embedding -------------------------------------------------------------------------------- */
RESBMDEF int resbm_embedding_forward(float *out, const int32_t *tok, const float *emb, size_t N,
                                     size_t d, size_t V) {
    size_t n;
    resbm__buf b[3] = {{out, N, d, RESBM__OUT}, {tok, N, 1, RESBM__IN}, {emb, V, d, RESBM__IN}};
    if (!out || !tok || !emb || N == 0 || d == 0 || V == 0) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 3));
    for (n = 0; n < N; n++)
        if (tok[n] < 0 || (size_t)tok[n] >= V) return RESBM_ERANGE;
    for (n = 0; n < N; n++) memcpy(out + n * d, emb + (size_t)tok[n] * d, d * sizeof(float));
    return RESBM_OK;
}

RESBMDEF int resbm_embedding_backward(float *demb, const float *dout, const int32_t *tok, size_t N,
                                      size_t d, size_t V) {
    size_t n;
    resbm__buf b[3] = {{demb, V, d, RESBM__OUT}, {dout, N, d, RESBM__IN}, {tok, N, 1, RESBM__IN}};
    if (!demb || !dout || !tok || N == 0 || d == 0 || V == 0) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 3));
    for (n = 0; n < N; n++)
        if (tok[n] < 0 || (size_t)tok[n] >= V) return RESBM_ERANGE;
    for (n = 0; n < N; n++) resbm__axpy(demb + (size_t)tok[n] * d, 1.0f, dout + n * d, d);
    return RESBM_OK;
}

/* ---- rmsnorm ---------------------------------------------------------------------------------- */
typedef struct {
    float *out, *rstd, *dx, *dg;
    const float *x, *g, *dout, *rstd_in;
    size_t d, N;
} resbm__norm_job;

static void resbm__rmsnorm_fwd_rows(void *ctx, size_t b, size_t e) {
    const resbm__norm_job *j = (const resbm__norm_job *)ctx;
    size_t n, i, d = j->d;
    for (n = b; n < e; n++) {
        const float *x = j->x + n * d;
        float *o = j->out + n * d;
        float r = 1.0f / sqrtf(resbm__dot(x, x, d) / (float)d + RESBM__NORM_EPS);
        i = 0;
#ifdef RESBM__VMATH
        for (; i + 8 <= d; i += 8)
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(r)),
                                                  _mm256_loadu_ps(j->g + i)));
#endif
        for (; i < d; i++) o[i] = x[i] * r * j->g[i];
        j->rstd[n] = r;
    }
}

RESBMDEF int resbm_rmsnorm_forward(resbm_pool *pool, float *out, float *rstd, const float *x,
                                   const float *g, size_t N, size_t d) {
    resbm__norm_job j;
    resbm__buf b[4] = {{out, N, d, RESBM__INPLACE}, {rstd, N, 1, RESBM__OUT}, {x, N, d, RESBM__IN},
                       {g, 1, d, RESBM__IN}};
    if (!out || !rstd || !x || !g || N == 0 || d == 0) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 4));
    memset(&j, 0, sizeof(j));
    j.out = out; j.rstd = rstd; j.x = x; j.g = g; j.d = d; j.N = N;
    return resbm__parallel_for(pool, N, 32, resbm__rmsnorm_fwd_rows, &j);
}

/* dx_i += r g_i dy_i - x_i r^3 / d * sum_j g_j dy_j x_j */
static void resbm__rmsnorm_bwd_rows(void *ctx, size_t b, size_t e) {
    const resbm__norm_job *j = (const resbm__norm_job *)ctx;
    size_t n, i, d = j->d;
    for (n = b; n < e; n++) {
        const float *x = j->x + n * d, *dy = j->dout + n * d;
        float *dx = j->dx + n * d, r = j->rstd_in[n], s = 0.0f, c;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        i = 0;
#ifdef RESBM__VMATH
        {
            __m256 v = _mm256_setzero_ps();
            for (; i + 8 <= d; i += 8)
                v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(j->g + i), _mm256_loadu_ps(dy + i)),
                                                   _mm256_loadu_ps(x + i)));
            _mm256_storeu_ps(acc, v);
        }
#endif
        for (; i < d; i++) acc[i & 7] += j->g[i] * dy[i] * x[i];
        for (i = 0; i < 8; i++) s += acc[i];
        c = s * r * r * r / (float)d;
        i = 0;
#ifdef RESBM__VMATH
        for (; i + 8 <= d; i += 8) {
            __m256 t = _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(r), _mm256_loadu_ps(j->g + i)), _mm256_loadu_ps(dy + i)),
                                     _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(c)));
            _mm256_storeu_ps(dx + i, _mm256_add_ps(_mm256_loadu_ps(dx + i), t));
        }
#endif
        for (; i < d; i++) dx[i] += r * j->g[i] * dy[i] - x[i] * c;
    }
}

/* dg_i += sum_n dy_ni x_ni r_n, one owner per column block, rows in order */
static void resbm__rmsnorm_bwd_cols(void *ctx, size_t b, size_t e) {
    const resbm__norm_job *j = (const resbm__norm_job *)ctx;
    size_t n, i, d = j->d;
    float acc[64];
    for (i = b; i < e; i++) acc[i - b] = 0.0f;
    for (n = 0; n < j->N; n++) {
        const float *x = j->x + n * d, *dy = j->dout + n * d;
        float r = j->rstd_in[n];
        i = b;
#ifdef RESBM__VMATH
        for (; i + 8 <= e; i += 8)
            _mm256_storeu_ps(acc + (i - b), _mm256_add_ps(_mm256_loadu_ps(acc + (i - b)),
                             _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(x + i)), _mm256_set1_ps(r))));
#endif
        for (; i < e; i++) acc[i - b] += dy[i] * x[i] * r;
    }
    for (i = b; i < e; i++) j->dg[i] += acc[i - b];
}

RESBMDEF int resbm_rmsnorm_backward(resbm_pool *pool, float *dx, float *dg, const float *dout,
                                    const float *x, const float *g, const float *rstd, size_t N,
                                    size_t d) {
    resbm__norm_job j;
    resbm__buf b[6] = {{dx, N, d, RESBM__OUT}, {dg, 1, d, RESBM__OUT}, {dout, N, d, RESBM__IN},
                       {x, N, d, RESBM__IN}, {g, 1, d, RESBM__IN}, {rstd, N, 1, RESBM__IN}};
    if (!dx || !dg || !dout || !x || !g || !rstd || N == 0 || d == 0) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 6));
    memset(&j, 0, sizeof(j));
    j.dx = dx; j.dg = dg; j.dout = dout; j.x = x; j.g = g; j.rstd_in = rstd; j.d = d; j.N = N;
    RESBM__TRY(resbm__parallel_for(pool, d, 64, resbm__rmsnorm_bwd_cols, &j));
    RESBM__TRY(resbm__parallel_for(pool, N, 32, resbm__rmsnorm_bwd_rows, &j));
    return RESBM_OK;
}

/* ---- linear ----------------------------------------------------------------------------------- */
/* A backward of several GEMMs given no pool runs them on a pool of its own (the calling thread
   only: the same bits): its packing buffer is allocated once, before any gradient is touched,
   so running out of memory never leaves one half accumulated. */
static int resbm__own_pool(resbm_pool **pool, resbm_pool **own) {
    *own = NULL;
    if (*pool) return RESBM_OK;
    RESBM__TRY(resbm_pool_init(1, own));
    *pool = *own;
    return RESBM_OK;
}
RESBMDEF int resbm_linear_forward(resbm_pool *pool, float *out, const float *x, const float *w,
                                  size_t N, size_t in, size_t o) {
    if (in == 0) return RESBM_EINVAL;
    return resbm_gemm(pool, RESBM_GEMM_NT, 0, out, x, w, N, o, in);
}

RESBMDEF int resbm_linear_backward(resbm_pool *pool, float *dx, float *dw, const float *dout,
                                   const float *x, const float *w, size_t N, size_t in, size_t o,
                                   int accumulate_dx) {
    resbm__buf b[5] = {{dx, N, in, RESBM__OUT}, {dw, o, in, RESBM__OUT}, {dout, N, o, RESBM__IN},
                       {x, N, in, RESBM__IN}, {w, o, in, RESBM__IN}};
    resbm_pool *own = NULL;
    int rc;
    if (!dw || !dout || !x || !w || N == 0 || in == 0 || o == 0) return RESBM_EINVAL;
    if (accumulate_dx != 0 && accumulate_dx != 1) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 5));
    RESBM__TRY(resbm__own_pool(&pool, &own));
    rc = dx ? resbm_gemm(pool, RESBM_GEMM_NN, accumulate_dx, dx, dout, w, N, in, o) : RESBM_OK;
    if (!rc) rc = resbm_gemm(pool, RESBM_GEMM_TN, 1, dw, dout, x, o, in, N);
    resbm_pool_free(own);
    return rc;
}

/* ---- RoPE ------------------------------------------------------------------------------------- */
RESBMDEF int resbm_rope_tables(float *cos_t, float *sin_t, size_t T, size_t hd, double theta) {
    size_t p, j, half = hd / 2;
    resbm__buf b[2] = {{cos_t, T, half, RESBM__OUT}, {sin_t, T, half, RESBM__OUT}};
    if (!cos_t || !sin_t || T == 0 || hd == 0 || hd % 2 || !(theta > 1.0)) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 2));
    for (p = 0; p < T; p++)
        for (j = 0; j < half; j++) {
            double ang = (double)p * pow(theta, -2.0 * (double)j / (double)hd);
            cos_t[p * half + j] = (float)cos(ang);
            sin_t[p * half + j] = (float)sin(ang);
        }
    return RESBM_OK;
}

typedef struct {
    float *x;
    const float *c, *s;
    size_t T, d, H;
    float sign; /* +1 forward rotation, -1 its inverse (backward) */
} resbm__rope_job;

static void resbm__rope_rows(void *ctx, size_t b, size_t e) {
    const resbm__rope_job *j = (const resbm__rope_job *)ctx;
    size_t n, h, i, hd = j->d / j->H, half = hd / 2;
    for (n = b; n < e; n++) {
        const float *c = j->c + (n % j->T) * half, *s = j->s + (n % j->T) * half;
        for (h = 0; h < j->H; h++) {
            float *x = j->x + n * j->d + h * hd;
            i = 0;
#ifdef RESBM__VMATH
            for (; i + 8 <= half; i += 8) {
                __m256 x1 = _mm256_loadu_ps(x + i), x2 = _mm256_loadu_ps(x + i + half), ci = _mm256_loadu_ps(c + i);
                __m256 si = _mm256_mul_ps(_mm256_set1_ps(j->sign), _mm256_loadu_ps(s + i));
                _mm256_storeu_ps(x + i, _mm256_sub_ps(_mm256_mul_ps(x1, ci), _mm256_mul_ps(x2, si)));
                _mm256_storeu_ps(x + i + half, _mm256_add_ps(_mm256_mul_ps(x2, ci), _mm256_mul_ps(x1, si)));
            }
#endif
            for (; i < half; i++) {
                float x1 = x[i], x2 = x[i + half], si = j->sign * s[i];
                x[i] = x1 * c[i] - x2 * si;
                x[i + half] = x2 * c[i] + x1 * si;
            }
        }
    }
}

static int resbm__rope(resbm_pool *pool, float *x, const float *c, const float *s, size_t N,
                       size_t T, size_t d, size_t H, float sign) {
    resbm__rope_job j;
    resbm__buf b[3] = {{x, N, d, RESBM__OUT}, {c, T, d / (H ? 2 * H : 1), RESBM__IN},
                       {s, T, d / (H ? 2 * H : 1), RESBM__IN}};
    if (!x || !c || !s || N == 0 || T == 0 || d == 0 || H == 0 || d % H || (d / H) % 2 || N % T)
        return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 3));
    j.x = x; j.c = c; j.s = s; j.T = T; j.d = d; j.H = H; j.sign = sign;
    return resbm__parallel_for(pool, N, 32, resbm__rope_rows, &j);
}

RESBMDEF int resbm_rope_forward(resbm_pool *pool, float *x, const float *cos_t, const float *sin_t,
                                size_t N, size_t T, size_t d, size_t H) {
    return resbm__rope(pool, x, cos_t, sin_t, N, T, d, H, 1.0f);
}

RESBMDEF int resbm_rope_backward(resbm_pool *pool, float *dx, const float *cos_t,
                                 const float *sin_t, size_t N, size_t T, size_t d, size_t H) {
    return resbm__rope(pool, dx, cos_t, sin_t, N, T, d, H, -1.0f);
}

/* ---- causal attention ------------------------------------------------------------------------- */
/* One task per (sequence, head): it owns those columns of out/dq/dk/dv for those rows, so the
   result never depends on the thread count. Two paths compute the same function:
   - blocked (the pool has RESBM_ATTENTION_WORK(T) floats per thread reserved): 64 queries at a
     time, scores and their gradients as small GEMMs through the micro-kernel;
   - plain (no pool or no reserve): a row at a time with an online softmax (running max and
     sum), no buffer at all. It is also the reference the blocked path is tested against. */
#define RESBM__BQ 64 /* queries per block: fixed, since it groups dK/dV's summation */
typedef struct {
    float *out, *lse_out, *dq, *dk, *dv;
    const float *q, *k, *v, *dout, *o, *lse;
    size_t T, d, H;
    int overwrite; /* backward: each task zeroes its dq, dk, dv slices first (the model's call) */
    resbm_pool *pool;
} resbm__attn_job;

/* A task's [T, hd] slices of dq, dk, dv to +0, while they are about to be used: the same start as
   a memset of the whole buffers, without a pass of its own over memory. */
static void resbm__attn_zero_grads(const resbm__attn_job *j, size_t seq, size_t h) {
    size_t hd = j->d / j->H, t;
    if (!j->overwrite) return;
    for (t = 0; t < j->T; t++) {
        size_t row = (seq * j->T + t) * j->d + h * hd;
        memset(j->dq + row, 0, hd * sizeof(float));
        memset(j->dk + row, 0, hd * sizeof(float));
        memset(j->dv + row, 0, hd * sizeof(float));
    }
}

static void resbm__attn_fwd_plain(void *ctx, size_t task, int thread) {
    const resbm__attn_job *j = (const resbm__attn_job *)ctx;
    size_t seq = task / j->H, h = task % j->H, hd = j->d / j->H, d = j->d, t, u, i;
    size_t base = seq * j->T;
    float scale = 1.0f / sqrtf((float)hd), acc[RESBM_MAX_HEAD_DIM];
    (void)thread;
    for (t = 0; t < j->T; t++) {
        const float *q = j->q + (base + t) * d + h * hd;
        float mx = -INFINITY, l = 0.0f, inv;
        for (i = 0; i < hd; i++) acc[i] = 0.0f;
        for (u = 0; u <= t; u++) {
            const float *k = j->k + (base + u) * d + h * hd, *v = j->v + (base + u) * d + h * hd;
            float s = scale * resbm__dot(q, k, hd), p;
            if (s > mx) { /* rescale what was summed under the old max */
                float c = expf(mx - s);
                l *= c;
                for (i = 0; i < hd; i++) acc[i] *= c;
                mx = s;
            }
            p = expf(s - mx);
            l += p;
            resbm__axpy(acc, p, v, hd);
        }
        inv = 1.0f / l;
        for (i = 0; i < hd; i++) j->out[(base + t) * d + h * hd + i] = acc[i] * inv;
        j->lse_out[(base + t) * j->H + h] = mx + logf(l);
    }
}

/* With p = exp(s - lse), D_t = dout_t . out_t:  ds = p (dout_t . v_u - D_t),
   dq_t += scale ds k_u,  dk_u += scale ds q_t,  dv_u += p dout_t. */
static void resbm__attn_bwd_plain(void *ctx, size_t task, int thread) {
    const resbm__attn_job *j = (const resbm__attn_job *)ctx;
    size_t seq = task / j->H, h = task % j->H, hd = j->d / j->H, d = j->d, t, u;
    size_t base = seq * j->T;
    float scale = 1.0f / sqrtf((float)hd);
    (void)thread;
    resbm__attn_zero_grads(j, seq, h);
    for (t = 0; t < j->T; t++) {
        size_t row = (base + t) * d + h * hd;
        const float *q = j->q + row, *dout = j->dout + row;
        float D = resbm__dot(dout, j->o + row, hd), lse = j->lse[(base + t) * j->H + h];
        float *dq = j->dq + row;
        for (u = 0; u <= t; u++) {
            size_t col = (base + u) * d + h * hd;
            const float *k = j->k + col, *v = j->v + col;
            float p = expf(scale * resbm__dot(q, k, hd) - lse);
            float ds = p * (resbm__dot(dout, v, hd) - D) * scale;
            resbm__axpy(dq, ds, k, hd);
            resbm__axpy(j->dk + col, ds, q, hd);
            resbm__axpy(j->dv + col, p, dout, hd);
        }
    }
}

/* Blocked forward: S = Q K^T for a block of queries against the keys they see, a causal softmax
   per row (P is zero past the diagonal), then O = P V. */
static void resbm__attn_fwd_blocked(void *ctx, size_t task, int thread) {
    const resbm__attn_job *j = (const resbm__attn_job *)ctx;
    size_t seq = task / j->H, h = task % j->H, hd = j->d / j->H, d = j->d, T = j->T, H = j->H;
    size_t off = seq * T * d + h * hd, t0, i, u;
    const float *Q = j->q + off, *K = j->k + off, *V = j->v + off;
    float *S = j->pool->work + (size_t)thread * j->pool->work_floats;
    float *pack = j->pool->pack + (size_t)thread * RESBM__PACK_FLOATS;
    float scale = 1.0f / sqrtf((float)hd);
    for (t0 = 0; t0 < T; t0 += RESBM__BQ) {
        size_t bq = RESBM__MIN((size_t)RESBM__BQ, T - t0), nk = t0 + bq;
        resbm__shape cols = resbm__causal(RESBM__CAUSAL_COLS, t0);
        resbm__shape kmax = resbm__causal(RESBM__CAUSAL_K_MAX, t0);
        resbm__gemm_block(S, T, Q + t0 * d, d, 1, K, 1, d, bq, nk, hd, 0, pack, cols); /* Q K^T */
        for (i = 0; i < bq; i++) {
            float *row = S + i * T, mx, sum;
            size_t t = t0 + i;
            mx = scale * resbm__max_row(row, t + 1); /* scale > 0: the max of the scaled row */
            sum = resbm__exp_row(row, row, t + 1, scale, mx);
            resbm__scale_row(row, t + 1, 1.0f / sum);
            for (u = t + 1; u < nk; u++) row[u] = 0.0f;
            j->lse_out[(seq * T + t) * H + h] = mx + logf(sum);
        }
        resbm__gemm_block(j->out + off + t0 * d, d, S, T, 1, V, d, 1, bq, hd, nk, 0, pack, kmax); /* P V */
    }
}

/* Blocked backward: recompute P from lse, dP = dO V^T, dS = P (dP - D) scale with
   D_t = dO_t . O_t, then dQ += dS K, dK += dS^T Q, dV += P^T dO. */
static void resbm__attn_bwd_blocked(void *ctx, size_t task, int thread) {
    const resbm__attn_job *j = (const resbm__attn_job *)ctx;
    size_t seq = task / j->H, h = task % j->H, hd = j->d / j->H, d = j->d, T = j->T, H = j->H;
    size_t off = seq * T * d + h * hd, t0, i, u;
    const float *Q = j->q + off, *K = j->k + off, *V = j->v + off, *dO = j->dout + off;
    const float *O = j->o + off;
    float *P = j->pool->work + (size_t)thread * j->pool->work_floats, *dP = P + RESBM__BQ * T;
    float *pack = j->pool->pack + (size_t)thread * RESBM__PACK_FLOATS;
    float scale = 1.0f / sqrtf((float)hd);
    resbm__attn_zero_grads(j, seq, h);
    for (t0 = 0; t0 < T; t0 += RESBM__BQ) {
        size_t bq = RESBM__MIN((size_t)RESBM__BQ, T - t0), nk = t0 + bq;
        resbm__shape cols = resbm__causal(RESBM__CAUSAL_COLS, t0);
        resbm__shape kmax = resbm__causal(RESBM__CAUSAL_K_MAX, t0);
        resbm__gemm_block(P, T, Q + t0 * d, d, 1, K, 1, d, bq, nk, hd, 0, pack, cols);   /* Q K^T */
        resbm__gemm_block(dP, T, dO + t0 * d, d, 1, V, 1, d, bq, nk, hd, 0, pack, cols); /* dO V^T */
        for (i = 0; i < bq; i++) {
            float *p = P + i * T, *dp = dP + i * T;
            size_t t = t0 + i;
            float L = j->lse[(seq * T + t) * H + h];
            float D = resbm__dot(dO + t * d, O + t * d, hd);
            u = 0;
#ifdef RESBM__VMATH
            for (; u <= t; u += 8) {
                __m256i mk = resbm__lanes(t + 1 - u);
                __m256 pu = resbm__exp8(_mm256_sub_ps(_mm256_mul_ps(_mm256_maskload_ps(p + u, mk),
                                                                    _mm256_set1_ps(scale)), _mm256_set1_ps(L)));
                __m256 du = _mm256_sub_ps(_mm256_maskload_ps(dp + u, mk), _mm256_set1_ps(D));
                _mm256_maskstore_ps(p + u, mk, pu);
                _mm256_maskstore_ps(dp + u, mk, _mm256_mul_ps(_mm256_mul_ps(pu, du), _mm256_set1_ps(scale)));
            }
            u = t + 1;
#endif
            for (; u <= t; u++) {
                p[u] = expf(p[u] * scale - L);
                dp[u] = p[u] * (dp[u] - D) * scale;
            }
            for (; u < nk; u++) p[u] = dp[u] = 0.0f;
        }
        resbm__gemm_block(j->dq + off + t0 * d, d, dP, T, 1, K, d, 1, bq, hd, nk, 1, pack, kmax);
        resbm__gemm_block(j->dk + off, d, dP, 1, T, Q + t0 * d, d, 1, nk, hd, bq, 1, pack,
                          resbm__causal(RESBM__CAUSAL_K_MIN, t0));
        resbm__gemm_block(j->dv + off, d, P, 1, T, dO + t0 * d, d, 1, nk, hd, bq, 1, pack,
                          resbm__causal(RESBM__CAUSAL_K_MIN, t0));
    }
}

static int resbm__attn_blocked(const resbm_pool *pool, size_t T) {
    return pool && pool->work && pool->work_floats >= RESBM_ATTENTION_WORK(T);
}

static int resbm__attn_check(size_t N, size_t T, size_t d, size_t H) {
    if (N == 0 || T == 0 || d == 0 || H == 0 || d % H || N % T || d / H > RESBM_MAX_HEAD_DIM)
        return RESBM_EINVAL;
    return RESBM_OK;
}

RESBMDEF int resbm_attention_forward(resbm_pool *pool, float *out, float *lse, const float *q,
                                     const float *k, const float *v, size_t N, size_t T, size_t d,
                                     size_t H) {
    resbm__attn_job j;
    resbm__buf b[5] = {{out, N, d, RESBM__OUT}, {lse, N, H, RESBM__OUT}, {q, N, d, RESBM__IN},
                       {k, N, d, RESBM__IN}, {v, N, d, RESBM__IN}};
    if (!out || !lse || !q || !k || !v || resbm__attn_check(N, T, d, H)) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 5));
    memset(&j, 0, sizeof(j));
    j.out = out; j.lse_out = lse; j.q = q; j.k = k; j.v = v; j.T = T; j.d = d; j.H = H;
    j.pool = pool;
    return resbm_pool_run(pool, resbm__attn_blocked(pool, T) ? resbm__attn_fwd_blocked
                                                             : resbm__attn_fwd_plain, &j, (N / T) * H);
}

/* overwrite: dq, dk, dv are written (as if zeroed first) instead of added to */
static int resbm__attention_backward(resbm_pool *pool, float *dq, float *dk, float *dv,
                                     const float *dout, const float *q, const float *k,
                                     const float *v, const float *out, const float *lse, size_t N,
                                     size_t T, size_t d, size_t H, int overwrite) {
    resbm__attn_job j;
    resbm__buf b[9] = {{dq, N, d, RESBM__OUT}, {dk, N, d, RESBM__OUT}, {dv, N, d, RESBM__OUT},
                       {dout, N, d, RESBM__IN}, {q, N, d, RESBM__IN}, {k, N, d, RESBM__IN},
                       {v, N, d, RESBM__IN}, {out, N, d, RESBM__IN}, {lse, N, H, RESBM__IN}};
    if (!dq || !dk || !dv || !dout || !q || !k || !v || !out || !lse ||
        resbm__attn_check(N, T, d, H))
        return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 9));
    memset(&j, 0, sizeof(j));
    j.dq = dq; j.dk = dk; j.dv = dv; j.dout = dout; j.q = q; j.k = k; j.v = v; j.o = out;
    j.lse = lse; j.T = T; j.d = d; j.H = H; j.pool = pool; j.overwrite = overwrite;
    return resbm_pool_run(pool, resbm__attn_blocked(pool, T) ? resbm__attn_bwd_blocked
                                                             : resbm__attn_bwd_plain, &j, (N / T) * H);
}

RESBMDEF int resbm_attention_backward(resbm_pool *pool, float *dq, float *dk, float *dv,
                                      const float *dout, const float *q, const float *k,
                                      const float *v, const float *out, const float *lse, size_t N,
                                      size_t T, size_t d, size_t H) {
    return resbm__attention_backward(pool, dq, dk, dv, dout, q, k, v, out, lse, N, T, d, H, 0);
}

/* ---- SwiGLU gate ------------------------------------------------------------------------------ */
typedef struct {
    float *out, *dh1, *dh3;
    const float *h1, *h3, *dout;
} resbm__swiglu_job;

static void resbm__swiglu_fwd_range(void *ctx, size_t b, size_t e) {
    const resbm__swiglu_job *j = (const resbm__swiglu_job *)ctx;
    size_t i = b;
#ifdef RESBM__VMATH
    for (; i < e; i += 8) {
        __m256i mk = resbm__lanes(e - i);
        __m256 x = _mm256_maskload_ps(j->h1 + i, mk), g = _mm256_maskload_ps(j->h3 + i, mk);
        _mm256_maskstore_ps(j->out + i, mk, _mm256_mul_ps(resbm__silu8(x), g));
    }
#endif
    for (; i < e; i++) j->out[i] = resbm__silu(j->h1[i]) * j->h3[i];
}

/* SwiGLU's gradients for dgate = dy: d1 = dy g silu'(x), d3 = dy silu(x), with silu'(x) =
   s (1 + x (1 - s)), s = sigmoid(x). One definition for both passes below, so they give the same
   bits. */
#ifdef RESBM__VMATH
static void resbm__swiglu_grad8(__m256 x, __m256 g, __m256 dy, __m256 *d1, __m256 *d3) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 s = resbm__sigmoid8(x);
    *d1 = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dy, g), s),
                        _mm256_add_ps(one, _mm256_mul_ps(x, _mm256_sub_ps(one, s))));
    *d3 = _mm256_mul_ps(_mm256_mul_ps(dy, x), s);
}
#endif
static void resbm__swiglu_grad(float x, float g, float dy, float *d1, float *d3) {
    float s = 1.0f / (1.0f + expf(-x));
    *d1 = dy * g * s * (1.0f + x * (1.0f - s));
    *d3 = dy * x * s;
}

static void resbm__swiglu_bwd_range(void *ctx, size_t b, size_t e) {
    const resbm__swiglu_job *j = (const resbm__swiglu_job *)ctx;
    size_t i = b;
    float d1, d3;
#ifdef RESBM__VMATH
    for (; i < e; i += 8) {
        __m256i mk = resbm__lanes(e - i);
        __m256 v1, v3;
        resbm__swiglu_grad8(_mm256_maskload_ps(j->h1 + i, mk), _mm256_maskload_ps(j->h3 + i, mk),
                            _mm256_maskload_ps(j->dout + i, mk), &v1, &v3);
        _mm256_maskstore_ps(j->dh1 + i, mk, _mm256_add_ps(_mm256_maskload_ps(j->dh1 + i, mk), v1));
        _mm256_maskstore_ps(j->dh3 + i, mk, _mm256_add_ps(_mm256_maskload_ps(j->dh3 + i, mk), v3));
    }
#endif
    for (; i < e; i++) {
        resbm__swiglu_grad(j->h1[i], j->h3[i], j->dout[i], &d1, &d3);
        j->dh1[i] += d1;
        j->dh3[i] += d3;
    }
}

/* The model's MLP backward in one pass: on entry dh1 holds dL/dgate; on return out holds the gate
   (recomputed, for w2's gradient) and dh1, dh3 the gradients. The forward's and the backward's
   arithmetic, so the same bits (the gradients are added to +0 as they were added to a zeroed
   buffer: that turns a -0 into +0), with one pass instead of three over h1, h3 and the gradients
   and no memset of dh1, dh3. */
static void resbm__swiglu_mlp_bwd_range(void *ctx, size_t b, size_t e) {
    const resbm__swiglu_job *j = (const resbm__swiglu_job *)ctx;
    size_t i = b;
    float d1, d3;
#ifdef RESBM__VMATH
    for (; i < e; i += 8) {
        __m256i mk = resbm__lanes(e - i);
        __m256 x = _mm256_maskload_ps(j->h1 + i, mk), g = _mm256_maskload_ps(j->h3 + i, mk), v1, v3;
        resbm__swiglu_grad8(x, g, _mm256_maskload_ps(j->dh1 + i, mk), &v1, &v3);
        _mm256_maskstore_ps(j->out + i, mk, _mm256_mul_ps(resbm__silu8(x), g));
        _mm256_maskstore_ps(j->dh1 + i, mk, _mm256_add_ps(_mm256_setzero_ps(), v1));
        _mm256_maskstore_ps(j->dh3 + i, mk, _mm256_add_ps(_mm256_setzero_ps(), v3));
    }
#endif
    for (; i < e; i++) {
        resbm__swiglu_grad(j->h1[i], j->h3[i], j->dh1[i], &d1, &d3);
        j->out[i] = resbm__silu(j->h1[i]) * j->h3[i];
        j->dh1[i] = 0.0f + d1;
        j->dh3[i] = 0.0f + d3;
    }
}

RESBMDEF int resbm_swiglu_forward(resbm_pool *pool, float *out, const float *h1, const float *h3,
                                  size_t n) {
    resbm__swiglu_job j;
    resbm__buf b[3] = {{out, n, 1, RESBM__INPLACE}, {h1, n, 1, RESBM__IN}, {h3, n, 1, RESBM__IN}};
    if (!out || !h1 || !h3 || n == 0) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 3));
    memset(&j, 0, sizeof(j));
    j.out = out; j.h1 = h1; j.h3 = h3;
    return resbm__parallel_for(pool, n, 4096, resbm__swiglu_fwd_range, &j);
}

RESBMDEF int resbm_swiglu_backward(resbm_pool *pool, float *dh1, float *dh3, const float *dout,
                                   const float *h1, const float *h3, size_t n) {
    resbm__swiglu_job j;
    resbm__buf b[5] = {{dh1, n, 1, RESBM__OUT}, {dh3, n, 1, RESBM__OUT}, {dout, n, 1, RESBM__IN},
                       {h1, n, 1, RESBM__IN}, {h3, n, 1, RESBM__IN}};
    if (!dh1 || !dh3 || !dout || !h1 || !h3 || n == 0) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 5));
    memset(&j, 0, sizeof(j));
    j.dh1 = dh1; j.dh3 = dh3; j.dout = dout; j.h1 = h1; j.h3 = h3;
    return resbm__parallel_for(pool, n, 4096, resbm__swiglu_bwd_range, &j);
}

/* ---- softmax cross-entropy -------------------------------------------------------------------- */
typedef struct {
    float *probs, *losses, *dlogits;
    const float *logits, *p;
    const int32_t *targets;
    size_t V;
    float scale;
} resbm__xent_job;

static void resbm__xent_fwd_rows(void *ctx, size_t b, size_t e) {
    const resbm__xent_job *j = (const resbm__xent_job *)ctx;
    size_t n, V = j->V;
    for (n = b; n < e; n++) {
        const float *l = j->logits + n * V;
        float *p = j->probs + n * V, mx = resbm__max_row(l, V), sum, lt = l[j->targets[n]];
        sum = resbm__exp_row(p, l, V, 1.0f, mx); /* l * 1 - mx: exactly l - mx */
        j->losses[n] = logf(sum) + mx - lt;
        resbm__scale_row(p, V, 1.0f / sum);
    }
}

static void resbm__xent_bwd_rows(void *ctx, size_t b, size_t e) {
    const resbm__xent_job *j = (const resbm__xent_job *)ctx;
    size_t n, i, V = j->V;
    for (n = b; n < e; n++) {
        const float *p = j->p + n * V;
        float *dl = j->dlogits + n * V;
        i = 0;
#ifdef RESBM__VMATH
        for (; i + 8 <= V; i += 8) _mm256_storeu_ps(dl + i, _mm256_mul_ps(_mm256_loadu_ps(p + i), _mm256_set1_ps(j->scale)));
#endif
        for (; i < V; i++) dl[i] = p[i] * j->scale;
        dl[j->targets[n]] -= j->scale;
    }
}

static int resbm__targets_ok(const int32_t *t, size_t N, size_t V) {
    size_t n;
    for (n = 0; n < N; n++)
        if (t[n] < 0 || (size_t)t[n] >= V) return 0;
    return 1;
}

RESBMDEF int resbm_xent_forward(resbm_pool *pool, float *probs, float *losses, const float *logits,
                                const int32_t *targets, size_t N, size_t V) {
    resbm__xent_job j;
    resbm__buf b[4] = {{probs, N, V, RESBM__INPLACE}, {losses, N, 1, RESBM__OUT}, {logits, N, V, RESBM__IN},
                       {targets, N, 1, RESBM__IN}};
    if (!probs || !losses || !logits || !targets || N == 0 || V == 0) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 4));
    if (!resbm__targets_ok(targets, N, V)) return RESBM_ERANGE;
    memset(&j, 0, sizeof(j));
    j.probs = probs; j.losses = losses; j.logits = logits; j.targets = targets; j.V = V;
    return resbm__parallel_for(pool, N, 16, resbm__xent_fwd_rows, &j);
}

RESBMDEF int resbm_xent_backward(resbm_pool *pool, float *dlogits, const float *probs,
                                 const int32_t *targets, size_t N, size_t V, float scale) {
    resbm__xent_job j;
    resbm__buf b[3] = {{dlogits, N, V, RESBM__INPLACE}, {probs, N, V, RESBM__IN}, {targets, N, 1, RESBM__IN}};
    if (!dlogits || !probs || !targets || N == 0 || V == 0 || !resbm__finite(scale)) return RESBM_EINVAL;
    RESBM__TRY(resbm__bufs_ok(b, 3));
    if (!resbm__targets_ok(targets, N, V)) return RESBM_ERANGE;
    memset(&j, 0, sizeof(j));
    j.dlogits = dlogits; j.p = probs; j.targets = targets; j.V = V;
    j.scale = scale;
    return resbm__parallel_for(pool, N, 16, resbm__xent_bwd_rows, &j);
}

/* ---- residual bottleneck ---------------------------------------------------------------------- */
typedef struct { float *out; const float *in, *a; } resbm__silu_job;

static void resbm__silu_fwd_range(void *ctx, size_t b, size_t e) {
    const resbm__silu_job *j = (const resbm__silu_job *)ctx;
    size_t i = b;
#ifdef RESBM__VMATH
    for (; i < e; i += 8) {
        __m256i mk = resbm__lanes(e - i);
        _mm256_maskstore_ps(j->out + i, mk, resbm__silu8(_mm256_maskload_ps(j->in + i, mk)));
    }
#endif
    for (; i < e; i++) j->out[i] = resbm__silu(j->in[i]);
}

/* out = in * silu'(a), in place allowed */
static void resbm__silu_bwd_range(void *ctx, size_t b, size_t e) {
    const resbm__silu_job *j = (const resbm__silu_job *)ctx;
    size_t i = b;
#ifdef RESBM__VMATH
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i < e; i += 8) {
        __m256i mk = resbm__lanes(e - i);
        __m256 x = _mm256_maskload_ps(j->a + i, mk), sg = resbm__sigmoid8(x);
        __m256 d = _mm256_mul_ps(_mm256_mul_ps(_mm256_maskload_ps(j->in + i, mk), sg),
                                 _mm256_add_ps(one, _mm256_mul_ps(x, _mm256_sub_ps(one, sg))));
        _mm256_maskstore_ps(j->out + i, mk, d);
    }
#endif
    for (; i < e; i++) {
        float x = j->a[i], sg = 1.0f / (1.0f + expf(-x));
        j->out[i] = j->in[i] * sg * (1.0f + x * (1.0f - sg));
    }
}

static int resbm__silu_all(resbm_pool *pool, float *out, const float *in, size_t n) {
    resbm__silu_job j;
    j.out = out; j.in = in; j.a = NULL;
    return resbm__parallel_for(pool, n, 4096, resbm__silu_fwd_range, &j);
}

static int resbm__silu_grad(resbm_pool *pool, float *out, const float *in, const float *a, size_t n) {
    resbm__silu_job j;
    j.out = out; j.in = in; j.a = a;
    return resbm__parallel_for(pool, n, 4096, resbm__silu_bwd_range, &j);
}

/* y[:, 0:r] += x for x [N,r], y rows of width d */
static void resbm__add_narrow(float *y, size_t d, const float *x, size_t r, size_t N) {
    size_t n;
    for (n = 0; n < N; n++) resbm__axpy(y + n * d, 1.0f, x + n * r, r);
}

static int resbm__bneck_check(const resbm_bottleneck_shape *sh, const void *w, const void *saved,
                              const resbm_bottleneck_scratch *scr, const float *in, const float *out) {
    if (!sh || !w || !saved || !scr || !scr->s || !in || !out) return RESBM_EINVAL;
    if (sh->tokens == 0 || sh->d == 0 || sh->r == 0 || sh->r > sh->d || sh->m == 0 ||
        (sh->identity != 0 && sh->identity != 1))
        return RESBM_EINVAL;
    return RESBM_OK;
}

RESBMDEF int resbm_encoder_forward(resbm_pool *pool, const resbm_bottleneck_shape *sh,
                                   const resbm_encoder_weights *w, const resbm_encoder_saved *sv,
                                   const resbm_bottleneck_scratch *scr, const float *h, float *z) {
    size_t N, d, r, m, n;
    RESBM__TRY(resbm__bneck_check(sh, w, sv, scr, h, z));
    if (!w->norm || !w->w1 || !w->w2 || !sv->rstd || !sv->u || !sv->a) return RESBM_EINVAL;
    N = sh->tokens; d = sh->d; r = sh->r; m = sh->m;
    {
        resbm__buf b[9] = {{z, N, r, RESBM__OUT}, {sv->rstd, N, 1, RESBM__OUT}, {sv->u, N, d, RESBM__OUT},
                           {sv->a, N, m, RESBM__OUT}, {scr->s, N, m, RESBM__OUT}, {h, N, d, RESBM__IN},
                           {w->norm, 1, d, RESBM__IN}, {w->w1, m, d, RESBM__IN}, {w->w2, r, m, RESBM__IN}};
        RESBM__TRY(resbm__bufs_ok(b, 9));
    }
    RESBM__TRY(resbm_rmsnorm_forward(pool, sv->u, sv->rstd, h, w->norm, N, d));
    RESBM__TRY(resbm_linear_forward(pool, sv->a, sv->u, w->w1, N, d, m));
    RESBM__TRY(resbm__silu_all(pool, scr->s, sv->a, N * m));
    if (sh->identity)
        for (n = 0; n < N; n++) memcpy(z + n * r, h + n * d, r * sizeof(float));
    return resbm_gemm(pool, RESBM_GEMM_NT, sh->identity, z, scr->s, w->w2, N, r, m);
}

RESBMDEF int resbm_encoder_backward(resbm_pool *pool, const resbm_bottleneck_shape *sh,
                                    const resbm_encoder_weights *w, const resbm_encoder_grads *g,
                                    const resbm_encoder_saved *sv,
                                    const resbm_bottleneck_scratch *scr, const float *h,
                                    const float *dz, float *dh) {
    size_t N, d, r, m;
    resbm_pool *own;
    int rc;
    RESBM__TRY(resbm__bneck_check(sh, w, sv, scr, h, dh));
    if (!g || !dz || !w->norm || !w->w1 || !w->w2 || !g->norm || !g->w1 || !g->w2 || !sv->rstd ||
        !sv->u || !sv->a || !scr->ds || !scr->du)
        return RESBM_EINVAL;
    N = sh->tokens; d = sh->d; r = sh->r; m = sh->m;
    {
        resbm__buf b[15] = {{dh, N, d, RESBM__OUT}, {g->norm, 1, d, RESBM__OUT}, {g->w1, m, d, RESBM__OUT},
                            {g->w2, r, m, RESBM__OUT}, {scr->s, N, m, RESBM__OUT}, {scr->ds, N, m, RESBM__OUT},
                            {scr->du, N, d, RESBM__OUT}, {h, N, d, RESBM__IN}, {dz, N, r, RESBM__IN},
                            {w->norm, 1, d, RESBM__IN}, {w->w1, m, d, RESBM__IN}, {w->w2, r, m, RESBM__IN},
                            {sv->rstd, N, 1, RESBM__IN}, {sv->u, N, d, RESBM__IN}, {sv->a, N, m, RESBM__IN}};
        RESBM__TRY(resbm__bufs_ok(b, 15));
    }
    RESBM__TRY(resbm__own_pool(&pool, &own));
    rc = resbm__silu_all(pool, scr->s, sv->a, N * m); /* recomputed rather than kept */
    if (!rc) rc = resbm_linear_backward(pool, scr->ds, g->w2, dz, scr->s, w->w2, N, m, r, 0);
    if (!rc) rc = resbm__silu_grad(pool, scr->ds, scr->ds, sv->a, N * m);
    if (!rc) rc = resbm_linear_backward(pool, scr->du, g->w1, scr->ds, sv->u, w->w1, N, d, m, 0);
    if (!rc) rc = resbm_rmsnorm_backward(pool, dh, g->norm, scr->du, h, w->norm, sv->rstd, N, d);
    if (!rc && sh->identity) resbm__add_narrow(dh, d, dz, r, N);
    resbm_pool_free(own);
    return rc;
}

RESBMDEF int resbm_decoder_forward(resbm_pool *pool, const resbm_bottleneck_shape *sh,
                                   const resbm_decoder_weights *w, const resbm_decoder_saved *sv,
                                   const resbm_bottleneck_scratch *scr, const float *z, float *x) {
    size_t N, d, r, m;
    RESBM__TRY(resbm__bneck_check(sh, w, sv, scr, z, x));
    if (!w->w1 || !w->w2 || !sv->a) return RESBM_EINVAL;
    N = sh->tokens; d = sh->d; r = sh->r; m = sh->m;
    {
        resbm__buf b[6] = {{x, N, d, RESBM__OUT}, {sv->a, N, m, RESBM__OUT}, {scr->s, N, m, RESBM__OUT},
                           {z, N, r, RESBM__IN}, {w->w1, m, r, RESBM__IN}, {w->w2, d, m, RESBM__IN}};
        RESBM__TRY(resbm__bufs_ok(b, 6));
    }
    RESBM__TRY(resbm_linear_forward(pool, sv->a, z, w->w1, N, r, m));
    RESBM__TRY(resbm__silu_all(pool, scr->s, sv->a, N * m));
    RESBM__TRY(resbm_linear_forward(pool, x, scr->s, w->w2, N, m, d));
    if (sh->identity) resbm__add_narrow(x, d, z, r, N);
    return RESBM_OK;
}

RESBMDEF int resbm_decoder_backward(resbm_pool *pool, const resbm_bottleneck_shape *sh,
                                    const resbm_decoder_weights *w, const resbm_decoder_grads *g,
                                    const resbm_decoder_saved *sv,
                                    const resbm_bottleneck_scratch *scr, const float *z,
                                    const float *dx, float *dz) {
    size_t N, d, r, m, n;
    resbm_pool *own;
    int rc;
    RESBM__TRY(resbm__bneck_check(sh, w, sv, scr, z, dz));
    if (!g || !dx || !w->w1 || !w->w2 || !g->w1 || !g->w2 || !sv->a || !scr->ds) return RESBM_EINVAL;
    N = sh->tokens; d = sh->d; r = sh->r; m = sh->m;
    {
        resbm__buf b[10] = {{dz, N, r, RESBM__OUT}, {g->w1, m, r, RESBM__OUT}, {g->w2, d, m, RESBM__OUT},
                            {scr->s, N, m, RESBM__OUT}, {scr->ds, N, m, RESBM__OUT}, {z, N, r, RESBM__IN},
                            {dx, N, d, RESBM__IN}, {w->w1, m, r, RESBM__IN}, {w->w2, d, m, RESBM__IN},
                            {sv->a, N, m, RESBM__IN}};
        RESBM__TRY(resbm__bufs_ok(b, 10));
    }
    RESBM__TRY(resbm__own_pool(&pool, &own));
    rc = resbm__silu_all(pool, scr->s, sv->a, N * m);
    if (!rc) rc = resbm_linear_backward(pool, scr->ds, g->w2, dx, scr->s, w->w2, N, m, d, 0);
    if (!rc) rc = resbm__silu_grad(pool, scr->ds, scr->ds, sv->a, N * m);
    if (!rc) rc = resbm_linear_backward(pool, dz, g->w1, scr->ds, z, w->w1, N, r, m, 0);
    if (!rc && sh->identity)
        for (n = 0; n < N; n++) resbm__axpy(dz + n * r, 1.0f, dx + n * d, r);
    resbm_pool_free(own);
    return rc;
}

/* ---- the model -------------------------------------------------------------------------------- */
typedef struct {
    resbm_param *attn_norm, *wq, *wk, *wv, *wo, *mlp_norm, *w1, *w2, *w3;
} resbm__block;

/* What one forward keeps for its backward. L = blocks on this stage, N = rows * T. */
typedef struct {
    size_t rows;                 /* rows of the forward held here, 0 = empty */
    int32_t *tokens, *targets;   /* [N] */
    float *x;                    /* [L+1][N,d] residual stream at block boundaries (host
                                    layers: [2][N,d], a boundary alone: [N,d]) */
    float *xin;                  /* [N,d] the layers' input (the decoded residual) */
    float *hout;                 /* [N,d] host layers' output residual (the built-in blocks' is
                                    at x + L * N * d for the call's N: resbm__slot_out) */
    float *rstd1, *rstd2;        /* [L][N] */
    float *a, *q, *k, *v, *att;  /* [L][N,d] attention input (normed), q k after RoPE, output */
    float *xmid, *b;             /* [L][N,d] residual after attention, MLP input (normed) */
    float *lse;                  /* [L][N,H] */
    float *h1, *h3;              /* [L][N,f] */
    float *rstd_f, *xn;          /* [N], [N,d] final norm */
    float *probs, *losses;       /* [N,V], [N] */
    float *z_in, *dec_a;         /* [N,r], [N,m] decoder input and pre-activation */
    float *enc_rstd, *enc_u, *enc_a; /* [N], [N,d], [N,m] encoder */
} resbm__acts;

struct resbm_model {
    resbm_model_config cfg;
    resbm_opt_config opt;
    resbm_pool *pool;
    int own_pool;
    size_t bytes;
    int layer0, nblocks, first, last; /* this stage's blocks [layer0, layer0 + nblocks) */
    int has_dec, has_enc, identity;   /* bottleneck halves held: decoder in, encoder out */
    size_t r, m, win, wout;           /* widths of the stage's input and output rows */
    resbm_layers layers;              /* between the boundaries: built-in, or the host's */
    int host;                         /* the layers are the host's */
    int side;                         /* -1, or the half a resbm_boundary is (RESBM_ENCODER...) */
    size_t host0, nhost;              /* the host's parameters: params[host0, host0 + nhost) */
    uint64_t arch_hash;               /* of the host's architecture line */
    size_t nparams, nfloats;          /* nfloats: every parameter, each padded to 16 floats */
    size_t *voff;                     /* [nparams + 1] offsets in that padded concatenation */
    resbm_param *params;
    resbm__block *blocks;
    resbm_param *tok_emb, *final_norm, *lm_head;
    resbm_param *dec_w1, *dec_w2, *enc_norm, *enc_w1, *enc_w2;
    float *pmem, *gmem;               /* values, gradients of the library's own parameters */
    float *omem;                      /* [nopt] optimizer state of every parameter (contiguous) */
    size_t nopt;
    float *backup;                    /* [nfloats + nopt] parameters and state before the last update */
    int has_backup;
    unsigned loads;                   /* checkpoints loaded into it: a stage then agrees anew */
    int in_stream;                    /* an async stage holds steps of it in flight: not saved */
    int busy;                         /* a call runs on it (atomic): another one is refused */
    float *rope_cos, *rope_sin;       /* [T, hd/2] */
    resbm__acts *slots;               /* [act_slots] */
    float *dres, *dtmp, *dq, *dk, *dv; /* [N,d] backward scratch */
    float *g, *dh1, *dh3;             /* [N,f] */
    float *dlogits;                   /* [N,V] */
    float *bm1, *bm2;                 /* [N,m] bottleneck scratch */
    float *enc_keep;                  /* host layers: the encoder's gradients before a backward,
                                         put back if the host's backward fails */
    float *ns_x, *ns_y, *ns_a, *ns_b; /* Muon Newton-Schulz scratch, one set per pool thread */
    size_t ns_mn, ns_kk;              /* floats per thread in x, y and in a, b */
    double *partials;                 /* [nchunks] squared-norm partial sums */
    size_t nchunks;
    long step;
};

#define RESBM__CHUNK 16384 /* elements per optimizer / norm task */
#define RESBM__MAX_DIM (1 << 24)   /* any width, length or row count of a model */
#define RESBM__MAX_LAYERS (1 << 16)
#define RESBM__MAX_STEP 1000000000000000L /* 1e15 updates: the schedule's doubles stay exact */

/* One call at a time per model: a second one (from inside a host layer's or a transport's
   callback while the model or its stage runs, or from another thread) gets RESBM_ESTATE and
   changes nothing. A stage holds its model for the whole of each of its calls. */
static int resbm__model_claim(resbm_model *m) {
    int idle = 0;
    if (!m) return RESBM_EINVAL;
    return __atomic_compare_exchange_n(&m->busy, &idle, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)
               ? RESBM_OK : RESBM_ESTATE;
}
static int resbm__model_unclaim(resbm_model *m, int rc) {
    __atomic_store_n(&m->busy, 0, __ATOMIC_RELEASE);
    return rc;
}

RESBMDEF resbm_model_config resbm_model_config_default(void) {
    resbm_model_config c;
    memset(&c, 0, sizeof(c));
    c.vocab = 256; c.d = 256; c.layers = 8; c.heads = 4; c.ff = 0; c.seq = 128; c.batch = 8;
    c.stages = 1; c.stage = 0; c.act_slots = 1; c.threads = 1; c.seed = 1337; c.init_std = 0.02f;
    return c;
}

RESBMDEF resbm_opt_config resbm_opt_config_default(void) {
    resbm_opt_config o;
    memset(&o, 0, sizeof(o));
    o.kind = RESBM_OPT_ADAMW; o.lr = 2e-3f; o.min_lr_frac = 0.1f; o.warmup = 100;
    o.total_steps = 0; o.beta1 = 0.9f; o.beta2 = 0.95f; o.eps = 1e-8f; o.weight_decay = 0.1f;
    o.clip = 1.0f; o.muon_lr = 0.02f; o.muon_momentum = 0.95f; o.muon_ns_steps = 5;
    o.bottleneck_lr_scale = 1.0f;
    return o;
}

/* Zero fields take defaults; returns RESBM_EINVAL for anything inconsistent. The head split
   is checked for the built-in layers only. */
static int resbm__resolve(resbm_model_config *c, resbm_opt_config *o, int builtin) {
    resbm_model_config dc = resbm_model_config_default();
    resbm_opt_config dop = resbm_opt_config_default();
    if (!c->vocab) c->vocab = dc.vocab;
    if (!c->d) c->d = dc.d;
    if (!c->layers) c->layers = dc.layers;
    if (!c->heads) c->heads = dc.heads;
    /* cheap bounds first: every size and every loop below scales with these */
    if (c->vocab < 1 || c->vocab > RESBM__MAX_DIM || c->d < 2 || c->d > RESBM__MAX_DIM ||
        c->layers < 1 || c->layers > RESBM__MAX_LAYERS || c->heads < 1 || c->ff < 0 ||
        c->ff > RESBM__MAX_DIM || c->seq < 0 || c->seq > RESBM__MAX_DIM || c->batch < 0 ||
        c->batch > RESBM__MAX_DIM || c->r < 0 || c->m < 0 || c->m > RESBM__MAX_DIM)
        return RESBM_EINVAL;
    if (!c->ff) c->ff = ((8 * c->d / 3 + 15) / 16) * 16;
    if (!c->seq) c->seq = dc.seq;
    if (!c->batch) c->batch = dc.batch;
    if (!c->stages) c->stages = dc.stages;
    if (!c->act_slots) c->act_slots = dc.act_slots;
    if (!c->r) c->r = c->d;
    if (!c->m) c->m = c->d >= 4 ? c->d / 4 : 1;
    if (!c->threads) c->threads = dc.threads;
    if (!c->seed) c->seed = dc.seed;
    if (!resbm__finite(c->init_std)) return RESBM_EINVAL;
    if (c->init_std == 0.0f) c->init_std = dc.init_std;
    if (c->vocab < 1 || c->d < 2 || c->layers < 1 || c->heads < 1 || c->ff < 1 || c->seq < 1 ||
        c->batch < 1 || c->stages < 1 || c->stage < 0 || c->stage >= c->stages ||
        c->stages > c->layers || c->act_slots < 1 || c->threads < 1 || c->threads > 1024 ||
        c->r < 1 || c->r > c->d || c->m < 1 || (c->no_identity != 0 && c->no_identity != 1) ||
        (c->gemm_bf16 != 0 && c->gemm_bf16 != 1))
        return RESBM_EINVAL;
#ifndef RESBM__BF16
    if (c->gemm_bf16) return RESBM_ENOTSUP;
#endif
    /* a shared pool's precision is its owner's (resbm_pool_set_precision): a model that changed
       it would change the numbers of every other model on it */
    if (c->pool && resbm_pool_precision(c->pool) != (c->gemm_bf16 ? RESBM_PRECISION_BF16 : RESBM_PRECISION_F32))
        return RESBM_EINVAL;
    if (builtin && (c->d % c->heads || (c->d / c->heads) % 2 || c->d / c->heads > RESBM_MAX_HEAD_DIM))
        return RESBM_EINVAL;
    if (!(c->init_std > 0.0f) || !(c->init_std < 1e3f)) return RESBM_EINVAL;
    /* NaN, Inf and absurd magnitudes are refused here, so no update can start from them */
    /* NaN and Inf first, by their bits: "zero means default" must not take a NaN for a zero (a
       -ffast-math host's compiler may assume no NaN in these comparisons) */
    if (!resbm__finite(o->lr) || !resbm__finite(o->min_lr_frac) || !resbm__finite(o->beta1) ||
        !resbm__finite(o->beta2) || !resbm__finite(o->eps) || !resbm__finite(o->weight_decay) ||
        !resbm__finite(o->clip) || !resbm__finite(o->muon_lr) || !resbm__finite(o->muon_momentum) ||
        !resbm__finite(o->bottleneck_lr_scale))
        return RESBM_EINVAL;
    if (o->lr == 0.0f) o->lr = dop.lr;
    if (o->beta1 == 0.0f) o->beta1 = dop.beta1;
    if (o->beta2 == 0.0f) o->beta2 = dop.beta2;
    if (o->eps == 0.0f) o->eps = dop.eps;
    if (o->muon_lr == 0.0f) o->muon_lr = dop.muon_lr;
    if (o->muon_momentum == 0.0f) o->muon_momentum = dop.muon_momentum;
    if (o->muon_ns_steps == 0) o->muon_ns_steps = dop.muon_ns_steps;
    if (o->bottleneck_lr_scale == 0.0f) o->bottleneck_lr_scale = dop.bottleneck_lr_scale;
    if (o->kind < RESBM_OPT_ADAMW || o->kind > RESBM_OPT_SGD || !(o->lr > 0.0f && o->lr <= 1e3f) ||
        !(o->min_lr_frac >= 0.0f && o->min_lr_frac <= 1.0f) || o->warmup < 0 ||
        o->total_steps < 0 || (o->total_steps > 0 && o->warmup > o->total_steps) ||
        !(o->beta1 >= 0.0f && o->beta1 < 1.0f) || !(o->beta2 >= 0.0f && o->beta2 < 1.0f) ||
        !(o->eps > 0.0f && o->eps <= 1.0f) ||
        !(o->weight_decay >= 0.0f && o->weight_decay < 1e3f) || !(o->clip >= 0.0f && o->clip <= 1e12f) ||
        !(o->muon_lr > 0.0f && o->muon_lr <= 1e3f) || !(o->muon_momentum >= 0.0f && o->muon_momentum < 1.0f) ||
        o->muon_ns_steps < 1 || o->muon_ns_steps > 100 ||
        !(o->bottleneck_lr_scale > 0.0f && o->bottleneck_lr_scale < 1e4f))
        return RESBM_EINVAL;
    return RESBM_OK;
}

/* Blocks of stage s: L split into S contiguous runs, the first L % S stages one longer. */
static void resbm__stage_blocks(int L, int S, int s, int *first, int *count) {
    int base = L / S, extra = L % S;
    *count = base + (s < extra ? 1 : 0);
    *first = s * base + (s < extra ? s : extra);
}

/* The parameter list of a stage, in order: name, kind, shape, init std. */
static int resbm__param_spec(const resbm_model *m, size_t idx, char *name, int *kind, size_t *rows,
                             size_t *cols, float *std) {
    const resbm_model_config *c = &m->cfg;
    size_t d = (size_t)c->d, f = (size_t)c->ff, V = (size_t)c->vocab;
    float sd = c->init_std, sd_out = c->init_std / sqrtf(2.0f * (float)c->layers);
    int builtin = !m->host && m->side < 0;
    if (builtin && m->first) {
        if (idx == 0) {
            strcpy(name, "tok_emb"); *kind = RESBM_PARAM_EMBED; *rows = V; *cols = d; *std = sd;
            return 1;
        }
        idx--;
    }
    if (m->has_dec) {
        size_t R = m->r, M = m->m;
        if (idx < 2) {
            sprintf(name, "bottleneck.%d.dec_w%d", c->stage - 1, (int)idx + 1);
            *kind = RESBM_PARAM_HIDDEN;
            *rows = idx == 0 ? M : d;
            *cols = idx == 0 ? R : M;
            *std = idx == 1 && m->identity ? 0.0f : sd; /* zero: the untrained boundary is the identity */
            return 1;
        }
        idx -= 2;
    }
    if (m->host) { /* the host's, as declared (their values are the host's: std -1) */
        if (idx < m->nhost) {
            const resbm_param *p = &m->layers.params[idx];
            memcpy(name, p->name, RESBM_NAME_MAX);
            *kind = p->kind; *rows = p->value.ne[0]; *cols = p->value.ndim == 2 ? p->value.ne[1] : 1;
            *std = -1.0f;
            return 1;
        }
        idx -= m->nhost;
    }
    if (idx < (size_t)m->nblocks * 9) {
        static const char *const names[9] = {"attn_norm", "wq", "wk", "wv", "wo",
                                              "mlp_norm", "w1", "w2", "w3"};
        size_t w = idx % 9;
        sprintf(name, "blocks.%d.%s", m->layer0 + (int)(idx / 9), names[w]);
        *kind = (w == 0 || w == 5) ? RESBM_PARAM_NORM : RESBM_PARAM_HIDDEN;
        *std = (w == 4 || w == 7) ? sd_out : sd;
        *rows = (w == 6 || w == 8) ? f : d;
        *cols = (w == 0 || w == 5) ? 1 : (w == 7 ? f : d);
        return 1;
    }
    idx -= (size_t)m->nblocks * 9;
    if (m->has_enc) {
        size_t R = m->r, M = m->m;
        if (idx < 3) {
            static const char *const names[3] = {"enc_norm", "enc_w1", "enc_w2"};
            sprintf(name, "bottleneck.%d.%s", c->stage, names[idx]);
            *kind = idx == 0 ? RESBM_PARAM_NORM : RESBM_PARAM_HIDDEN;
            *rows = idx == 0 ? d : idx == 1 ? M : R;
            *cols = idx == 0 ? 1 : idx == 1 ? d : M;
            *std = idx == 2 && m->identity ? 0.0f : idx == 0 ? 0.0f : sd;
            return 1;
        }
        idx -= 3;
    }
    if (builtin && m->last) {
        if (idx == 0) {
            strcpy(name, "final_norm"); *kind = RESBM_PARAM_NORM; *rows = d; *cols = 1; *std = 0;
            return 1;
        }
        if (idx == 1) {
            strcpy(name, "lm_head"); *kind = RESBM_PARAM_HEAD; *rows = V; *cols = d; *std = sd;
            return 1;
        }
    }
    return 0;
}

static size_t resbm__pad16(size_t n) { return (n + 15) & ~(size_t)15; }

/* Sizing pass when a->base == NULL, carving pass otherwise: the same walk both times. */
static void resbm__model_carve(resbm_model *m, resbm_arena *a) {
    const resbm_model_config *c = &m->cfg;
    size_t d = (size_t)c->d, f = (size_t)c->ff, V = (size_t)c->vocab, H = (size_t)c->heads;
    size_t T = (size_t)c->seq, hd = d / H, N = (size_t)c->batch * T, L = (size_t)m->nblocks;
    size_t i, off = 0, own = 0, ns_mn = 0, ns_kk = 0, nopt = 0, Lb, nx, nt;
    int builtin = !m->host && m->side < 0, half = m->has_enc || m->has_dec;
    float *omem;
    int s;
    m->params = (resbm_param *)resbm_arena_push(a, m->nparams, sizeof(resbm_param));
    m->voff = (size_t *)resbm_arena_push(a, m->nparams + 1, sizeof(size_t));
    m->blocks = (resbm__block *)resbm_arena_push(a, L, sizeof(resbm__block));
    for (i = 0; i < m->nparams; i++) {
        char name[RESBM_NAME_MAX];
        int kind;
        size_t rows, cols, n;
        float std;
        resbm__param_spec(m, i, name, &kind, &rows, &cols, &std);
        n = rows * cols;
        if (a->base) m->voff[i] = off;
        off += resbm__pad16(n);
        if (std >= 0.0f) own += resbm__pad16(n); /* the host's live in the host's memory */
        if (m->opt.kind == RESBM_OPT_ADAMW || (m->opt.kind == RESBM_OPT_MUON && kind != RESBM_PARAM_HIDDEN))
            nopt += 2 * resbm__pad16(n);
        else if (m->opt.kind == RESBM_OPT_MUON) {
            size_t k = RESBM__MIN(rows, cols);
            nopt += resbm__pad16(n);
            ns_mn = RESBM__MAX(ns_mn, n);
            ns_kk = RESBM__MAX(ns_kk, k * k);
        }
    }
    if (a->base) m->voff[m->nparams] = off;
    m->nfloats = off;
    m->nchunks = (off + RESBM__CHUNK - 1) / RESBM__CHUNK;
    m->pmem = (float *)resbm_arena_push(a, own, sizeof(float));
    m->gmem = (float *)resbm_arena_push(a, own, sizeof(float));
    omem = (float *)resbm_arena_push(a, nopt, sizeof(float));
    m->omem = omem;
    m->nopt = nopt;
    m->backup = (float *)resbm_arena_push(a, off + nopt, sizeof(float));
    m->partials = (double *)resbm_arena_push(a, m->nchunks, sizeof(double));
    nt = (size_t)(c->pool ? resbm_pool_threads(c->pool) : c->threads); /* Muon: a matrix per thread */
    m->ns_mn = ns_mn; m->ns_kk = ns_kk;
    m->ns_x = (float *)resbm_arena_push(a, nt * ns_mn, sizeof(float));
    m->ns_y = (float *)resbm_arena_push(a, nt * ns_mn, sizeof(float));
    m->ns_a = (float *)resbm_arena_push(a, nt * ns_kk, sizeof(float));
    m->ns_b = (float *)resbm_arena_push(a, nt * ns_kk, sizeof(float));
    m->rope_cos = (float *)resbm_arena_push(a, builtin ? T * (hd / 2) : 0, sizeof(float));
    m->rope_sin = (float *)resbm_arena_push(a, builtin ? T * (hd / 2) : 0, sizeof(float));
    m->slots = (resbm__acts *)resbm_arena_push(a, (size_t)c->act_slots, sizeof(resbm__acts));
    Lb = builtin ? L : 0;                               /* blocks whose activations are kept */
    nx = builtin ? L + 1 : m->host ? 2 : m->has_enc ? 1 : 0; /* residual rows kept per slot */
    for (s = 0; s < c->act_slots; s++) {
        resbm__acts t, *sl = a->base ? &m->slots[s] : &t;
        memset(sl, 0, sizeof(*sl));
        sl->tokens = (int32_t *)resbm_arena_push(a, builtin && m->first ? N : 0, sizeof(int32_t));
        sl->targets = (int32_t *)resbm_arena_push(a, m->last ? N : 0, sizeof(int32_t));
        sl->x = (float *)resbm_arena_push(a, nx * N * d, sizeof(float));
        sl->xin = sl->x;
        sl->hout = sl->x && m->host ? sl->x + N * d : NULL;
        sl->rstd1 = (float *)resbm_arena_push(a, Lb * N, sizeof(float));
        sl->rstd2 = (float *)resbm_arena_push(a, Lb * N, sizeof(float));
        sl->a = (float *)resbm_arena_push(a, Lb * N * d, sizeof(float));
        sl->q = (float *)resbm_arena_push(a, Lb * N * d, sizeof(float));
        sl->k = (float *)resbm_arena_push(a, Lb * N * d, sizeof(float));
        sl->v = (float *)resbm_arena_push(a, Lb * N * d, sizeof(float));
        sl->att = (float *)resbm_arena_push(a, Lb * N * d, sizeof(float));
        sl->xmid = (float *)resbm_arena_push(a, Lb * N * d, sizeof(float));
        sl->b = (float *)resbm_arena_push(a, Lb * N * d, sizeof(float));
        sl->lse = (float *)resbm_arena_push(a, Lb * N * H, sizeof(float));
        sl->h1 = (float *)resbm_arena_push(a, Lb * N * f, sizeof(float));
        sl->h3 = (float *)resbm_arena_push(a, Lb * N * f, sizeof(float));
        sl->rstd_f = (float *)resbm_arena_push(a, builtin && m->last ? N : 0, sizeof(float));
        sl->xn = (float *)resbm_arena_push(a, builtin && m->last ? N * d : 0, sizeof(float));
        sl->probs = (float *)resbm_arena_push(a, m->last ? N * V : 0, sizeof(float));
        sl->losses = (float *)resbm_arena_push(a, m->last ? N : 0, sizeof(float));
        sl->z_in = (float *)resbm_arena_push(a, m->has_dec ? N * m->r : 0, sizeof(float));
        sl->dec_a = (float *)resbm_arena_push(a, m->has_dec ? N * m->m : 0, sizeof(float));
        sl->enc_rstd = (float *)resbm_arena_push(a, m->has_enc ? N : 0, sizeof(float));
        sl->enc_u = (float *)resbm_arena_push(a, m->has_enc ? N * d : 0, sizeof(float));
        sl->enc_a = (float *)resbm_arena_push(a, m->has_enc ? N * m->m : 0, sizeof(float));
    }
    m->dres = (float *)resbm_arena_push(a, m->side < 0 ? N * d : 0, sizeof(float));
    m->dtmp = (float *)resbm_arena_push(a, builtin || m->has_enc ? N * d : 0, sizeof(float));
    m->dq = (float *)resbm_arena_push(a, builtin ? N * d : 0, sizeof(float));
    m->dk = (float *)resbm_arena_push(a, builtin ? N * d : 0, sizeof(float));
    m->dv = (float *)resbm_arena_push(a, builtin ? N * d : 0, sizeof(float));
    m->g = (float *)resbm_arena_push(a, builtin ? N * f : 0, sizeof(float));
    m->dh1 = (float *)resbm_arena_push(a, builtin ? N * f : 0, sizeof(float));
    m->dh3 = (float *)resbm_arena_push(a, builtin ? N * f : 0, sizeof(float));
    m->dlogits = (float *)resbm_arena_push(a, m->last ? N * V : 0, sizeof(float));
    m->bm1 = (float *)resbm_arena_push(a, half ? N * m->m : 0, sizeof(float));
    m->bm2 = (float *)resbm_arena_push(a, half ? N * m->m : 0, sizeof(float));
    m->enc_keep = (float *)resbm_arena_push(a, m->host && m->has_enc ? d + m->m * (d + m->r) : 0,
                                            sizeof(float));
    if (!a->base) return;
    /* Carving pass: fill the parameter table. */
    own = 0;
    for (i = 0; i < m->nparams; i++) {
        resbm_param *p = &m->params[i];
        size_t rows, cols, n;
        float std;
        memset(p, 0, sizeof(*p));
        resbm__param_spec(m, i, p->name, &p->kind, &rows, &cols, &std);
        n = rows * cols;
        if (std < 0.0f) { /* the host's tensor views, as declared */
            const resbm_param *h = &m->layers.params[i - m->host0];
            p->value = h->value;
            p->grad = h->grad;
            if (p->value.ndim == 1) p->value.ne[1] = p->grad.ne[1] = 1;
        } else {
            p->value.data = m->pmem + own;
            p->grad.data = m->gmem + own;
            p->value.ndim = p->grad.ndim = p->kind == RESBM_PARAM_NORM ? 1 : 2; /* [m,1] stays 2-D */
            p->value.ne[0] = p->grad.ne[0] = rows;
            p->value.ne[1] = p->grad.ne[1] = cols;
            own += resbm__pad16(n);
        }
        if (m->opt.kind == RESBM_OPT_ADAMW || (m->opt.kind == RESBM_OPT_MUON && p->kind != RESBM_PARAM_HIDDEN)) {
            p->m = omem; p->v = omem + resbm__pad16(n);
            omem += 2 * resbm__pad16(n);
        } else if (m->opt.kind == RESBM_OPT_MUON) {
            p->m = omem;
            omem += resbm__pad16(n);
        }
    }
}

static void resbm__model_link(resbm_model *m) {
    size_t i = 0;
    int b, builtin = !m->host && m->side < 0;
    m->tok_emb = builtin && m->first ? &m->params[i++] : NULL;
    m->dec_w1 = m->has_dec ? &m->params[i++] : NULL;
    m->dec_w2 = m->has_dec ? &m->params[i++] : NULL;
    i += m->nhost;
    for (b = 0; b < m->nblocks; b++) {
        resbm__block *k = &m->blocks[b];
        k->attn_norm = &m->params[i++]; k->wq = &m->params[i++]; k->wk = &m->params[i++];
        k->wv = &m->params[i++]; k->wo = &m->params[i++]; k->mlp_norm = &m->params[i++];
        k->w1 = &m->params[i++]; k->w2 = &m->params[i++]; k->w3 = &m->params[i++];
    }
    m->enc_norm = m->has_enc ? &m->params[i++] : NULL;
    m->enc_w1 = m->has_enc ? &m->params[i++] : NULL;
    m->enc_w2 = m->has_enc ? &m->params[i++] : NULL;
    m->final_norm = builtin && m->last ? &m->params[i++] : NULL;
    m->lm_head = builtin && m->last ? &m->params[i++] : NULL;
}

/* Norms 1; weights N(0, std) from a stream keyed by (seed, name). */
static void resbm__model_init_params(resbm_model *m) {
    size_t i, j;
    for (i = 0; i < m->nparams; i++) {
        resbm_param *p = &m->params[i];
        size_t n = p->value.ne[0] * p->value.ne[1], rows, cols;
        char name[RESBM_NAME_MAX];
        int kind;
        float std;
        resbm__param_spec(m, i, name, &kind, &rows, &cols, &std);
        if (std < 0.0f) continue; /* the host's: its values are the host's init */
        if (p->kind == RESBM_PARAM_NORM) {
            for (j = 0; j < n; j++) p->value.data[j] = 1.0f;
        } else if (std == 0.0f) {
            memset(p->value.data, 0, n * sizeof(float));
        } else {
            resbm_rng rng;
            resbm_rng_seed(&rng, m->cfg.seed, resbm__fnv1a(p->name));
            for (j = 0; j < n; j++) p->value.data[j] = std * resbm_rng_normal(&rng);
        }
    }
}

/* The host's layer declaration: callbacks, and parameters that are unique, named, shaped, in
   memory and finite (checked by bits: no -ffast-math folding), of a plausible total size. */
typedef struct { uintptr_t lo, hi; } resbm__span;
static int resbm__cmp_span(const void *a, const void *b) {
    uintptr_t x = ((const resbm__span *)a)->lo, y = ((const resbm__span *)b)->lo;
    return x < y ? -1 : x > y;
}

static int resbm__layers_ok(const resbm_layers *h, void *alloc_user) {
    size_t i, total = 0;
    const char **names;
    int rc = RESBM_OK;
    if (!h->forward || !h->backward || !h->arch || (h->n_params && !h->params) ||
        h->n_params > ((size_t)1 << 20) || strnlen(h->arch, 4097) > 4096)
        return RESBM_EINVAL;
    for (i = 0; i < h->n_params; i++) {
        const resbm_param *p = &h->params[i];
        size_t n;
        if (!memchr(p->name, 0, RESBM_NAME_MAX) || !p->name[0] || !strncmp(p->name, "bottleneck.", 11) ||
            !strncmp(p->name, "opt.", 4) || !strcmp(p->name, "__metadata__") ||
            p->kind < RESBM_PARAM_NORM || p->kind > RESBM_PARAM_HIDDEN ||
            (p->kind == RESBM_PARAM_HIDDEN && p->value.ndim != 2) || /* Muon needs a matrix */
            !p->value.data || !p->grad.data || (p->value.ndim != 1 && p->value.ndim != 2) ||
            p->grad.ndim != p->value.ndim || p->grad.ne[0] != p->value.ne[0] ||
            p->value.ne[0] == 0 || p->value.ne[0] > RESBM__MAX_DIM ||
            (p->value.ndim == 2 && (p->value.ne[1] == 0 || p->value.ne[1] > RESBM__MAX_DIM ||
                                    p->grad.ne[1] != p->value.ne[1])) ||
            (p->value.ndim == 1 && p->value.ne[1] > 1))
            return RESBM_EINVAL;
        n = p->value.ne[0] * (p->value.ndim == 2 ? p->value.ne[1] : 1);
        if (resbm_size_add(&total, total, n) || total > ((size_t)1 << 36)) return RESBM_EOVERFLOW;
        if (!resbm__all_finite(p->value.data, n)) return RESBM_ENONFINITE;
    }
    if (h->n_params < 2) return RESBM_OK;
    if (!(names = (const char **)resbm__alloc(h->n_params * sizeof(char *), alloc_user))) return RESBM_ENOMEM;
    for (i = 0; i < h->n_params; i++) names[i] = h->params[i].name; /* each ends inside RESBM_NAME_MAX */
    if (!resbm__unique(names, h->n_params)) rc = RESBM_EINVAL;
    resbm__dealloc((void *)names, alloc_user);
    if (rc) return rc;
    { /* no two values or gradients share memory: the update backs each one up and writes it once */
        resbm__span *sp = (resbm__span *)resbm__alloc(2 * h->n_params * sizeof(resbm__span), alloc_user);
        if (!sp) return RESBM_ENOMEM;
        for (i = 0; i < h->n_params; i++) {
            const resbm_param *p = &h->params[i];
            size_t bytes = p->value.ne[0] * (p->value.ndim == 2 ? p->value.ne[1] : 1) * sizeof(float);
            sp[2 * i].lo = (uintptr_t)p->value.data; sp[2 * i].hi = sp[2 * i].lo + bytes;
            sp[2 * i + 1].lo = (uintptr_t)p->grad.data; sp[2 * i + 1].hi = sp[2 * i + 1].lo + bytes;
        }
        qsort(sp, 2 * h->n_params, sizeof(resbm__span), resbm__cmp_span);
        for (i = 1; i < 2 * h->n_params && !rc; i++)
            if (sp[i].lo < sp[i - 1].hi) rc = RESBM_EINVAL;
        resbm__dealloc(sp, alloc_user);
    }
    return rc;
}

static int resbm__builtin_forward(void *user, int slot, size_t rows, const int32_t *tokens,
                                  const float *x, float *out);
static int resbm__builtin_backward(void *user, int slot, float *dout, float *dx);

/* side -1: a model (built-in or host layers); RESBM_ENCODER / RESBM_DECODER: one boundary half,
   no layers (what resbm_boundary is). */
static int resbm__model_create(const resbm_model_config *cfg, const resbm_opt_config *opt,
                               int side, resbm_model **out, size_t *sized) {
    resbm_model tmp;
    resbm_arena a;
    resbm_model *m;
    size_t N, Nd, check, per_thread;
    int rc;
    if (!cfg || (!out && !sized)) return RESBM_EINVAL;
    memset(&tmp, 0, sizeof(tmp));
    tmp.cfg = *cfg;
    tmp.opt = opt ? *opt : resbm_opt_config_default();
    tmp.side = side;
    tmp.host = side < 0 && cfg->host;
    if (tmp.host) {
        RESBM__TRY(resbm__layers_ok(cfg->host, cfg->alloc_user));
        tmp.layers = *cfg->host;
        tmp.arch_hash = resbm__fnv1a(tmp.layers.arch);
    }
    tmp.cfg.host = NULL; /* the copy in tmp.layers is what counts */
    if ((rc = resbm__resolve(&tmp.cfg, &tmp.opt, side < 0 && !tmp.host))) return rc;
    /* Every extent below is a product of these: check the largest ones once. */
    if (resbm_size_mul(&N, (size_t)tmp.cfg.batch, (size_t)tmp.cfg.seq) ||
        resbm_size_mul(&Nd, N, (size_t)RESBM__MAX(RESBM__MAX(tmp.cfg.d, tmp.cfg.ff),
                                                  RESBM__MAX(tmp.cfg.vocab, tmp.cfg.m))) ||
        resbm_size_mul(&check, Nd, (size_t)tmp.cfg.layers + 1) ||
        resbm_size_mul(&check, check, (size_t)tmp.cfg.act_slots * 16 * sizeof(float)) ||
        resbm_size_mul(&check, (size_t)RESBM__MAX(RESBM__MAX(tmp.cfg.ff, tmp.cfg.vocab), RESBM__MAX(tmp.cfg.m, tmp.cfg.d)),
                       (size_t)tmp.cfg.d * 64) ||
        resbm_size_mul(&per_thread, check, 1024) || /* Muon's matrices, one per thread */
        resbm_size_mul(&check, check, (size_t)tmp.cfg.layers + 1)) /* every parameter together */
        return RESBM_EOVERFLOW;
    resbm__stage_blocks(tmp.cfg.layers, tmp.cfg.stages, tmp.cfg.stage, &tmp.layer0, &tmp.nblocks);
    tmp.first = side < 0 && tmp.cfg.stage == 0;
    tmp.last = side < 0 && tmp.cfg.stage == tmp.cfg.stages - 1;
    tmp.r = (size_t)tmp.cfg.r;
    tmp.m = (size_t)tmp.cfg.m;
    tmp.identity = !tmp.cfg.no_identity;
    tmp.has_dec = side == RESBM_DECODER || (side < 0 && !tmp.first && tmp.cfg.r < tmp.cfg.d);
    tmp.has_enc = side == RESBM_ENCODER || (side < 0 && !tmp.last && tmp.cfg.r < tmp.cfg.d);
    tmp.win = tmp.first ? 0 : tmp.r;
    tmp.wout = tmp.last ? 0 : tmp.r;
    if (tmp.host || side >= 0) tmp.nblocks = 0; /* no built-in blocks */
    tmp.nhost = tmp.host ? tmp.layers.n_params : 0;
    tmp.host0 = tmp.has_dec ? 2 : 0;
    tmp.nparams = (size_t)(tmp.first && !tmp.host ? 1 : 0) + 9 * (size_t)tmp.nblocks +
                  (tmp.last && !tmp.host ? 2 : 0) + (tmp.has_dec ? 2 : 0) + (tmp.has_enc ? 3 : 0) +
                  tmp.nhost;
    memset(&a, 0, sizeof(a));
    resbm_arena_push(&a, 1, sizeof(resbm_model));
    resbm__model_carve(&tmp, &a);
    if (a.overflow) return RESBM_EOVERFLOW;
    if (sized) { /* the sizing pass only: the bytes one allocation would take */
        *sized = a.used;
        return RESBM_OK;
    }
    a.base = (unsigned char *)resbm__alloc(a.used, tmp.cfg.alloc_user);
    if (!a.base) return RESBM_ENOMEM;
    memset(a.base, 0, a.used);
    a.cap = a.used;
    a.used = 0;
    m = (resbm_model *)resbm_arena_push(&a, 1, sizeof(resbm_model));
    *m = tmp;
    m->bytes = a.cap;
    resbm__model_carve(m, &a);
    RESBM_ASSERT(!a.overflow && a.used == a.cap);
    resbm__model_link(m);
    resbm__model_init_params(m);
    if (!m->host && side < 0) {
        m->layers.user = m;
        m->layers.forward = resbm__builtin_forward;
        m->layers.backward = resbm__builtin_backward;
        resbm_rope_tables(m->rope_cos, m->rope_sin, (size_t)m->cfg.seq,
                          (size_t)(m->cfg.d / m->cfg.heads), 10000.0);
    }
    m->layers.params = NULL; /* the host's declaration is copied into m->params */
    m->layers.arch = NULL;
    m->layers.n_params = 0;
    if (m->cfg.pool) {
        m->pool = m->cfg.pool;
    } else {
        if ((rc = resbm_pool_init(m->cfg.threads, &m->pool))) {
            resbm__dealloc(m, m->cfg.alloc_user);
            return rc;
        }
        m->own_pool = 1;
        m->bytes += sizeof(resbm_pool) + (size_t)m->cfg.threads * RESBM__PACK_FLOATS * sizeof(float);
    }
    if ((rc = resbm_pool_reserve(m->pool, RESBM_ATTENTION_WORK(m->cfg.seq))) ||
        (m->own_pool && m->cfg.gemm_bf16 && (rc = resbm_pool_set_precision(m->pool, RESBM_PRECISION_BF16)))) {
        resbm_model_free(m);
        return rc;
    }
    if (m->own_pool) m->bytes += (size_t)m->cfg.threads * m->pool->work_floats * sizeof(float);
    *out = m;
    return RESBM_OK;
}

/* The host's architecture line, hashed (0 for the built-in layers). */
static uint64_t resbm__arch_hash(const resbm_model *m) {
    return m->host ? m->arch_hash : 0;
}

RESBMDEF int resbm_model_init(const resbm_model_config *cfg, const resbm_opt_config *opt,
                              resbm_model **out) {
    return resbm__model_create(cfg, opt, -1, out, NULL);
}

static void resbm__slots_drop(resbm_model *m);

RESBMDEF void resbm_model_free(resbm_model *m) {
    if (!m) return;
    resbm__slots_drop(m); /* host layers' release */
    if (m->own_pool) resbm_pool_free(m->pool);
    resbm__dealloc(m, m->cfg.alloc_user);
}

RESBMDEF const resbm_model_config *resbm_model_get_config(const resbm_model *m) {
    return m ? &m->cfg : NULL;
}
RESBMDEF const resbm_opt_config *resbm_model_get_opt(const resbm_model *m) {
    return m ? &m->opt : NULL;
}
RESBMDEF const resbm_param *resbm_model_params(const resbm_model *m, size_t *count) {
    if (count) *count = m ? m->nparams : 0;
    return m ? m->params : NULL;
}
RESBMDEF resbm_param *resbm_model_params_mut(resbm_model *m, size_t *count) {
    if (count) *count = m ? m->nparams : 0;
    return m ? m->params : NULL;
}
RESBMDEF size_t resbm_model_num_floats(const resbm_model *m) {
    size_t i, n = 0;
    if (!m) return 0;
    for (i = 0; i < m->nparams; i++) n += m->params[i].value.ne[0] * m->params[i].value.ne[1];
    return n;
}
RESBMDEF size_t resbm_model_bytes(const resbm_model *m) { return m ? m->bytes : 0; }
RESBMDEF long resbm_model_step_count(const resbm_model *m) { return m ? m->step : -1; }

/* ---- model forward / backward ----------------------------------------------------------------- */
static int resbm__block_forward(resbm_model *m, resbm__acts *s, int l, size_t N) {
    const resbm__block *p = &m->blocks[l];
    resbm_pool *pool = m->pool;
    size_t d = (size_t)m->cfg.d, f = (size_t)m->cfg.ff, T = (size_t)m->cfg.seq;
    size_t H = (size_t)m->cfg.heads, Nd = N * d, Nf = N * f;
    float *x = s->x + (size_t)l * Nd, *xo = s->x + (size_t)(l + 1) * Nd;
    float *a = s->a + l * Nd, *q = s->q + l * Nd, *k = s->k + l * Nd, *v = s->v + l * Nd;
    float *att = s->att + l * Nd, *xmid = s->xmid + l * Nd, *b = s->b + l * Nd;
    float *h1 = s->h1 + l * Nf, *h3 = s->h3 + l * Nf;
    /* x_mid = x + attention(rmsnorm(x)) */
    RESBM__TRY(resbm_rmsnorm_forward(pool, a, s->rstd1 + l * N, x, p->attn_norm->value.data, N, d));
    RESBM__TRY(resbm_linear_forward(pool, q, a, p->wq->value.data, N, d, d));
    RESBM__TRY(resbm_linear_forward(pool, k, a, p->wk->value.data, N, d, d));
    RESBM__TRY(resbm_linear_forward(pool, v, a, p->wv->value.data, N, d, d));
    RESBM__TRY(resbm_rope_forward(pool, q, m->rope_cos, m->rope_sin, N, T, d, H));
    RESBM__TRY(resbm_rope_forward(pool, k, m->rope_cos, m->rope_sin, N, T, d, H));
    RESBM__TRY(resbm_attention_forward(pool, att, s->lse + l * N * H, q, k, v, N, T, d, H));
    memcpy(xmid, x, Nd * sizeof(float));
    RESBM__TRY(resbm_gemm(pool, RESBM_GEMM_NT, 1, xmid, att, p->wo->value.data, N, d, d));
    /* x_out = x_mid + w2 (silu(w1 b) * w3 b), b = rmsnorm(x_mid) */
    RESBM__TRY(resbm_rmsnorm_forward(pool, b, s->rstd2 + l * N, xmid, p->mlp_norm->value.data, N, d));
    RESBM__TRY(resbm_linear_forward(pool, h1, b, p->w1->value.data, N, d, f));
    RESBM__TRY(resbm_linear_forward(pool, h3, b, p->w3->value.data, N, d, f));
    RESBM__TRY(resbm_swiglu_forward(pool, m->g, h1, h3, Nf));
    memcpy(xo, xmid, Nd * sizeof(float));
    return resbm_gemm(pool, RESBM_GEMM_NT, 1, xo, m->g, p->w2->value.data, N, d, f);
}

/* dres holds dL/dx_out on entry and dL/dx_in on return. */
static int resbm__block_backward(resbm_model *m, const resbm__acts *s, int l, size_t N, float *dres) {
    const resbm__block *p = &m->blocks[l];
    resbm_pool *pool = m->pool;
    size_t d = (size_t)m->cfg.d, f = (size_t)m->cfg.ff, T = (size_t)m->cfg.seq;
    size_t H = (size_t)m->cfg.heads, Nd = N * d, Nf = N * f;
    const float *x = s->x + (size_t)l * Nd, *a = s->a + l * Nd, *q = s->q + l * Nd;
    const float *k = s->k + l * Nd, *v = s->v + l * Nd, *att = s->att + l * Nd;
    const float *xmid = s->xmid + l * Nd, *b = s->b + l * Nd, *h1 = s->h1 + l * Nf;
    const float *h3 = s->h3 + l * Nf;
    float *dtmp = m->dtmp, *g = m->g;
    resbm__swiglu_job sj;
    /* MLP: dgate into dh1, then one pass recomputes the gate into g (instead of storing it: saves
       N*f floats per block) and turns dgate into dh1, dh3 */
    RESBM__TRY(resbm_gemm(pool, RESBM_GEMM_NN, 0, m->dh1, dres, p->w2->value.data, N, f, d));
    sj.out = g; sj.dh1 = m->dh1; sj.dh3 = m->dh3; sj.h1 = h1; sj.h3 = h3; sj.dout = NULL;
    RESBM__TRY(resbm__parallel_for(pool, Nf, 4096, resbm__swiglu_mlp_bwd_range, &sj));
    RESBM__TRY(resbm_gemm(pool, RESBM_GEMM_TN, 1, p->w2->grad.data, dres, g, d, f, N));
    RESBM__TRY(resbm_linear_backward(pool, dtmp, p->w1->grad.data, m->dh1, b, p->w1->value.data, N, d, f, 0));
    RESBM__TRY(resbm_linear_backward(pool, dtmp, p->w3->grad.data, m->dh3, b, p->w3->value.data, N, d, f, 1));
    RESBM__TRY(resbm_rmsnorm_backward(pool, dres, p->mlp_norm->grad.data, dtmp, xmid,
                                      p->mlp_norm->value.data, s->rstd2 + l * N, N, d));
    /* attention */
    RESBM__TRY(resbm_linear_backward(pool, dtmp, p->wo->grad.data, dres, att, p->wo->value.data, N, d, d, 0));
    RESBM__TRY(resbm__attention_backward(pool, m->dq, m->dk, m->dv, dtmp, q, k, v, att,
                                         s->lse + l * N * H, N, T, d, H, 1));
    RESBM__TRY(resbm_rope_backward(pool, m->dq, m->rope_cos, m->rope_sin, N, T, d, H));
    RESBM__TRY(resbm_rope_backward(pool, m->dk, m->rope_cos, m->rope_sin, N, T, d, H));
    RESBM__TRY(resbm_linear_backward(pool, dtmp, p->wq->grad.data, m->dq, a, p->wq->value.data, N, d, d, 0));
    RESBM__TRY(resbm_linear_backward(pool, dtmp, p->wk->grad.data, m->dk, a, p->wk->value.data, N, d, d, 1));
    RESBM__TRY(resbm_linear_backward(pool, dtmp, p->wv->grad.data, m->dv, a, p->wv->value.data, N, d, d, 1));
    return resbm_rmsnorm_backward(pool, dres, p->attn_norm->grad.data, dtmp, x,
                                  p->attn_norm->value.data, s->rstd1 + l * N, N, d);
}

/* The bottleneck halves on a model's own buffers (the same calls for stages and boundaries). */
static resbm_bottleneck_shape resbm__half_shape(const resbm_model *m, size_t N) {
    resbm_bottleneck_shape sh;
    sh.tokens = N; sh.d = (size_t)m->cfg.d; sh.r = m->r; sh.m = m->m; sh.identity = m->identity;
    return sh;
}

static int resbm__enc_fwd(resbm_model *m, const resbm__acts *s, size_t N, const float *h, float *z) {
    resbm_bottleneck_shape sh = resbm__half_shape(m, N);
    resbm_encoder_weights w;
    resbm_encoder_saved sv;
    resbm_bottleneck_scratch scr;
    w.norm = m->enc_norm->value.data; w.w1 = m->enc_w1->value.data; w.w2 = m->enc_w2->value.data;
    sv.rstd = s->enc_rstd; sv.u = s->enc_u; sv.a = s->enc_a;
    scr.s = m->bm1; scr.ds = m->bm2; scr.du = m->dtmp;
    return resbm_encoder_forward(m->pool, &sh, &w, &sv, &scr, h, z);
}

static int resbm__enc_bwd(resbm_model *m, const resbm__acts *s, size_t N, const float *h,
                          const float *dz, float *dh) {
    resbm_bottleneck_shape sh = resbm__half_shape(m, N);
    resbm_encoder_weights w;
    resbm_encoder_grads g;
    resbm_encoder_saved sv;
    resbm_bottleneck_scratch scr;
    w.norm = m->enc_norm->value.data; w.w1 = m->enc_w1->value.data; w.w2 = m->enc_w2->value.data;
    g.norm = m->enc_norm->grad.data; g.w1 = m->enc_w1->grad.data; g.w2 = m->enc_w2->grad.data;
    sv.rstd = s->enc_rstd; sv.u = s->enc_u; sv.a = s->enc_a;
    scr.s = m->bm1; scr.ds = m->bm2; scr.du = m->dtmp;
    return resbm_encoder_backward(m->pool, &sh, &w, &g, &sv, &scr, h, dz, dh);
}

static int resbm__dec_fwd(resbm_model *m, const resbm__acts *s, size_t N, const float *z, float *x) {
    resbm_bottleneck_shape sh = resbm__half_shape(m, N);
    resbm_decoder_weights w;
    resbm_decoder_saved sv;
    resbm_bottleneck_scratch scr;
    w.w1 = m->dec_w1->value.data; w.w2 = m->dec_w2->value.data;
    sv.a = s->dec_a;
    scr.s = m->bm1; scr.ds = m->bm2; scr.du = NULL;
    return resbm_decoder_forward(m->pool, &sh, &w, &sv, &scr, z, x);
}

static int resbm__dec_bwd(resbm_model *m, const resbm__acts *s, size_t N, const float *dx, float *dz) {
    resbm_bottleneck_shape sh = resbm__half_shape(m, N);
    resbm_decoder_weights w;
    resbm_decoder_grads g;
    resbm_decoder_saved sv;
    resbm_bottleneck_scratch scr;
    w.w1 = m->dec_w1->value.data; w.w2 = m->dec_w2->value.data;
    g.w1 = m->dec_w1->grad.data; g.w2 = m->dec_w2->grad.data;
    sv.a = s->dec_a;
    scr.s = m->bm1; scr.ds = m->bm2; scr.du = NULL;
    return resbm_decoder_backward(m->pool, &sh, &w, &g, &sv, &scr, s->z_in, dx, dz);
}

/* The built-in layers (docs/design.md §4) behind the same interface as a host's: embedding or
   the decoded x (already in the slot's x[0]), the blocks, and on the last stage the final norm
   and the head's logits. */
static int resbm__builtin_forward(void *user, int slot, size_t rows, const int32_t *tokens,
                                  const float *x, float *out) {
    resbm_model *m = (resbm_model *)user;
    resbm__acts *s = &m->slots[slot];
    size_t N = rows * (size_t)m->cfg.seq, d = (size_t)m->cfg.d, V = (size_t)m->cfg.vocab;
    int l;
    (void)x; /* it is s->x: the runtime decoded into it */
    if (m->first) {
        memcpy(s->tokens, tokens, N * sizeof(int32_t));
        RESBM__TRY(resbm_embedding_forward(s->x, tokens, m->tok_emb->value.data, N, d, V));
    }
    for (l = 0; l < m->nblocks; l++) RESBM__TRY(resbm__block_forward(m, s, l, N));
    if (m->last) { /* else the blocks wrote out = s->x[L] */
        RESBM__TRY(resbm_rmsnorm_forward(m->pool, s->xn, s->rstd_f, s->x + (size_t)m->nblocks * N * d,
                                         m->final_norm->value.data, N, d));
        RESBM__TRY(resbm_gemm(m->pool, RESBM_GEMM_NT, 0, out, s->xn, m->lm_head->value.data, N, V, d));
    }
    return RESBM_OK;
}

static int resbm__builtin_backward(void *user, int slot, float *dout, float *dx) {
    resbm_model *m = (resbm_model *)user;
    const resbm__acts *s = &m->slots[slot];
    size_t N = s->rows * (size_t)m->cfg.seq, d = (size_t)m->cfg.d, V = (size_t)m->cfg.vocab;
    float *g = dx ? dx : m->dres; /* the running gradient of the residual stream */
    int l;
    if (m->last) {
        RESBM__TRY(resbm_linear_backward(m->pool, m->dtmp, m->lm_head->grad.data, dout, s->xn,
                                         m->lm_head->value.data, N, d, V, 0));
        memset(g, 0, N * d * sizeof(float));
        RESBM__TRY(resbm_rmsnorm_backward(m->pool, g, m->final_norm->grad.data, m->dtmp,
                                          s->x + (size_t)m->nblocks * N * d,
                                          m->final_norm->value.data, s->rstd_f, N, d));
    } else if (dout != g) {
        memcpy(g, dout, N * d * sizeof(float));
    }
    for (l = m->nblocks - 1; l >= 0; l--) RESBM__TRY(resbm__block_backward(m, s, l, N, g));
    if (m->first) RESBM__TRY(resbm_embedding_backward(m->tok_emb->grad.data, g, s->tokens, N, d, V));
    return RESBM_OK;
}

/* Where the layers' output residual of a forward of N tokens lives: the built-in blocks write
   block L's output at x + L * N * d (this call's N, not the slot's largest). */
static float *resbm__slot_out(const resbm_model *m, const resbm__acts *s, size_t N) {
    return m->host ? s->hout : s->x + (size_t)m->nblocks * N * (size_t)m->cfg.d;
}

static void resbm__slot_drop(resbm_model *m, int slot) {
    int held = m->slots[slot].rows != 0;
    m->slots[slot].rows = 0;
    if (held && m->layers.release) m->layers.release(m->layers.user, slot);
}

static void resbm__slots_drop(resbm_model *m) {
    int sl;
    for (sl = 0; sl < m->cfg.act_slots; sl++) resbm__slot_drop(m, sl);
}

/* A layers callback's code: one that says what failed in a computation or its I/O stays; the
   runtime's own (an EPEER this stage never received would be taken for a neighbour's abort,
   frame codes for a peer's bad frame) and anything unknown become RESBM_EHOST, so a public call
   never returns a positive or unknown code. */
static int resbm__host_rc(int rc) {
    switch (rc) {
    case RESBM_OK: case RESBM_EINVAL: case RESBM_ESTATE: case RESBM_ERANGE: case RESBM_ENONFINITE:
    case RESBM_ENOSPACE: case RESBM_ENOTSUP: case RESBM_ENOMEM: case RESBM_EOVERFLOW:
    case RESBM_ETHREAD: case RESBM_EIO: case RESBM_EFORMAT: case RESBM_ETIMEDOUT:
    case RESBM_ECLOSED: case RESBM_ETRANSPORT: return rc;
    default: return RESBM_EHOST;
    }
}

/* One code path for the built-in and the host's layers: decoder, layers, then the loss or the
   encoder. */
static int resbm__model_forward(resbm_model *m, int slot, const int32_t *tokens,
                                const float *x_in, const int32_t *targets, size_t rows,
                                float *h_out, float *loss) {
    resbm__acts *s;
    size_t N, d, V, n;
    float *out;
    int rc;
    if (!m || m->side >= 0 || slot < 0 || slot >= m->cfg.act_slots || rows == 0 ||
        rows > (size_t)m->cfg.batch)
        return RESBM_EINVAL;
    if ((m->first && !tokens) || (!m->first && !x_in) || (m->last && (!targets || !loss)) ||
        (!m->last && !h_out))
        return RESBM_EINVAL;
    s = &m->slots[slot];
    if (s->rows) return RESBM_ESTATE; /* holds a forward whose backward has not run */
    N = rows * (size_t)m->cfg.seq;
    d = (size_t)m->cfg.d;
    V = (size_t)m->cfg.vocab;
    if (m->first && !resbm__targets_ok(tokens, N, V)) return RESBM_ERANGE;
    if (m->last && !resbm__targets_ok(targets, N, V)) return RESBM_ERANGE;
    if (!m->first && !resbm__all_finite(x_in, N * m->win)) return RESBM_ENONFINITE;
    if (!m->first && m->has_dec) {
        memcpy(s->z_in, x_in, N * m->r * sizeof(float));
        RESBM__TRY(resbm__dec_fwd(m, s, N, s->z_in, s->xin));
    } else if (!m->first) {
        memcpy(s->xin, x_in, N * d * sizeof(float));
    }
    out = m->last ? s->probs : resbm__slot_out(m, s, N);
    s->rows = rows; /* held from here on: a failure below drops it */
    rc = resbm__host_rc(m->layers.forward(m->layers.user, slot, rows, m->first ? tokens : NULL,
                                          m->first ? NULL : s->xin, out));
    if (!rc && !resbm__all_finite(out, N * (m->last ? V : d))) rc = RESBM_ENONFINITE;
    if (!rc && m->last) {
        double sum = 0.0;
        memcpy(s->targets, targets, N * sizeof(int32_t));
        rc = resbm_xent_forward(m->pool, s->probs, s->losses, s->probs, targets, N, V);
        /* finite logits far apart (say 3e38 and -3e38) make a loss past FLT_MAX */
        if (!rc && !resbm__all_finite(s->losses, N)) rc = RESBM_ENONFINITE;
        for (n = 0; !rc && n < N; n++) sum += s->losses[n];
        if (!rc) *loss = (float)(sum / (double)N);
    } else if (!rc && m->has_enc) {
        rc = resbm__enc_fwd(m, s, N, out, h_out);
    } else if (!rc) {
        memcpy(h_out, out, N * d * sizeof(float));
    }
    if (rc) resbm__slot_drop(m, slot);
    return rc;
}

/* Keeps (keep = 1) or puts back (0) the encoder's gradients, around host layers' backward. */
static void resbm__enc_grads_keep(resbm_model *m, int keep) {
    resbm_param *p[3];
    float *at = m->enc_keep;
    int i;
    p[0] = m->enc_norm; p[1] = m->enc_w1; p[2] = m->enc_w2;
    for (i = 0; i < 3; i++) {
        size_t n = p[i]->value.ne[0] * p[i]->value.ne[1];
        if (keep) memcpy(at, p[i]->grad.data, n * sizeof(float));
        else memcpy(p[i]->grad.data, at, n * sizeof(float));
        at += n;
    }
}

static int resbm__model_backward(resbm_model *m, int slot, const float *dh_out, float *dx_in,
                                 float loss_weight) {
    resbm__acts *s;
    size_t N, d, V;
    float *dout;
    int rc;
    if (!m || m->side >= 0 || slot < 0 || slot >= m->cfg.act_slots) return RESBM_EINVAL;
    if ((!m->last && !dh_out) || (!m->first && !dx_in)) return RESBM_EINVAL;
    if (m->last && !resbm__finite(loss_weight)) return RESBM_EINVAL;
    s = &m->slots[slot];
    if (!s->rows) return RESBM_ESTATE; /* no forward to go back through */
    N = s->rows * (size_t)m->cfg.seq;
    d = (size_t)m->cfg.d;
    V = (size_t)m->cfg.vocab;
    if (!m->last && !resbm__all_finite(dh_out, N * m->wout)) return RESBM_ENONFINITE;
    if (m->last) {
        RESBM__TRY(resbm_xent_backward(m->pool, m->dlogits, s->probs, s->targets, N, V,
                                       loss_weight / (float)N));
        dout = m->dlogits;
    } else if (m->has_enc) {
        if (m->host) resbm__enc_grads_keep(m, 1);
        memset(m->dres, 0, N * d * sizeof(float));
        rc = resbm__enc_bwd(m, s, N, resbm__slot_out(m, s, N), dh_out, m->dres);
        if (rc) { /* a refused pool: the slot is kept for a retry, the gradients as they were */
            if (m->host) resbm__enc_grads_keep(m, 0);
            return rc;
        }
        dout = m->dres;
    } else {
        if (dh_out) memcpy(m->dres, dh_out, N * d * sizeof(float)); /* never NULL here (checked
                                              above); the test tells gcc -Ofast, which inlines */
        dout = m->dres;
    }
    rc = resbm__host_rc(m->layers.backward(m->layers.user, slot, dout, m->first ? NULL : m->dres));
    if (rc) {
        if (m->host && m->has_enc) resbm__enc_grads_keep(m, 0);
        resbm__slot_drop(m, slot);
        return rc;
    }
    s->rows = 0; /* the layers are done with the slot, whatever the decoder does now */
    if (!m->first && !resbm__all_finite(m->dres, N * d)) { /* the host's dL/dx */
        if (m->host && m->has_enc) resbm__enc_grads_keep(m, 0);
        return RESBM_ENONFINITE;
    }
    if (!m->first && m->has_dec) return resbm__dec_bwd(m, s, N, m->dres, dx_in);
    if (!m->first && dx_in) memcpy(dx_in, m->dres, N * d * sizeof(float)); /* likewise */
    return RESBM_OK;
}

static int resbm__model_release(resbm_model *m, int slot) {
    if (!m || m->side >= 0 || slot < 0 || slot >= m->cfg.act_slots) return RESBM_EINVAL;
    resbm__slot_drop(m, slot);
    return RESBM_OK;
}

RESBMDEF const float *resbm_model_probs(const resbm_model *m, int slot) {
    if (!m || !m->last || slot < 0 || slot >= m->cfg.act_slots || !m->slots[slot].rows) return NULL;
    return m->slots[slot].probs;
}

static int resbm__model_zero_grad(resbm_model *m) {
    size_t i;
    if (!m) return RESBM_EINVAL;
    for (i = 0; i < m->nparams; i++)
        memset(m->params[i].grad.data, 0, m->params[i].value.ne[0] * m->params[i].value.ne[1] * sizeof(float));
    return RESBM_OK;
}

/* Whole-model passes see the parameters as one padded concatenation (voff), wherever each one
   lives (the library's arena or the host's memory), so chunks, and the order every sum takes,
   depend on the shapes alone. fn gets parameter p's floats [at, at + n) at offset `virt`. */
typedef void (*resbm__piece_fn)(void *ctx, resbm_param *p, size_t at, size_t n, size_t virt);
static void resbm__walk(const resbm_model *m, size_t lo, size_t hi, resbm__piece_fn fn, void *ctx) {
    size_t a = 0, b = m->nparams;
    while (a < b) { /* the first parameter that ends after lo */
        size_t mid = a + (b - a) / 2;
        if (m->voff[mid + 1] <= lo) a = mid + 1; else b = mid;
    }
    for (; a < m->nparams && m->voff[a] < hi; a++) {
        resbm_param *p = &m->params[a];
        size_t s0 = m->voff[a], n = p->value.ne[0] * p->value.ne[1];
        size_t from = RESBM__MAX(lo, s0), to = RESBM__MIN(hi, s0 + n);
        if (from < to) fn(ctx, p, from - s0, to - from, from);
    }
}

static void resbm__sqnorm_piece(void *ctx, resbm_param *p, size_t at, size_t n, size_t virt) {
    const float *g = p->grad.data + at;
    double *s = (double *)ctx;
    size_t i;
    (void)virt;
    for (i = 0; i < n; i++) *s += (double)g[i] * (double)g[i];
}

/* A chunk that lies inside one parameter: its floats and their count. */
typedef struct { const float *g; size_t n; int pieces; } resbm__chunk_span;
static void resbm__span_piece(void *ctx, resbm_param *p, size_t at, size_t n, size_t virt) {
    resbm__chunk_span *sp = (resbm__chunk_span *)ctx;
    (void)virt;
    if (sp->pieces++ == 0) { sp->g = p->grad.data + at; sp->n = n; }
}

/* Each chunk's sum is one chain of dependent double adds, so a chunk alone runs at the adder's
   latency; four chunks of one piece and one length run their chains side by side, each in its own
   order: the same bits as one at a time, 30% less time (RESULTS.md). Other chunks go one at a
   time. Tasks of four chunks (resbm_model_grad_sqnorm) give the groups. */
static void resbm__sqnorm_range(void *ctx, size_t b, size_t e) {
    resbm_model *m = (resbm_model *)ctx;
    size_t c = b, q, i;
    while (c < e) {
        resbm__chunk_span sp[4];
        double s = 0.0;
        for (q = 0; q < 4 && c + q < e; q++) {
            sp[q].pieces = 0;
            resbm__walk(m, (c + q) * RESBM__CHUNK, RESBM__MIN((c + q + 1) * RESBM__CHUNK, m->nfloats),
                        resbm__span_piece, &sp[q]);
            if (sp[q].pieces != 1 || sp[q].n != sp[0].n) break;
        }
        if (q == 4) {
            const float *g0 = sp[0].g, *g1 = sp[1].g, *g2 = sp[2].g, *g3 = sp[3].g;
            double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
            for (i = 0; i < sp[0].n; i++) {
                s0 += (double)g0[i] * (double)g0[i];
                s1 += (double)g1[i] * (double)g1[i];
                s2 += (double)g2[i] * (double)g2[i];
                s3 += (double)g3[i] * (double)g3[i];
            }
            m->partials[c] = s0; m->partials[c + 1] = s1;
            m->partials[c + 2] = s2; m->partials[c + 3] = s3;
            c += 4;
            continue;
        }
        resbm__walk(m, c * RESBM__CHUNK, RESBM__MIN((c + 1) * RESBM__CHUNK, m->nfloats),
                    resbm__sqnorm_piece, &s);
        m->partials[c++] = s;
    }
}

static int resbm__model_grad_sqnorm(resbm_model *m, double *out) {
    size_t c;
    double s = 0.0;
    if (!m || !out) return RESBM_EINVAL;
    RESBM__TRY(resbm__parallel_for(m->pool, m->nchunks, 4, resbm__sqnorm_range, m));
    for (c = 0; c < m->nchunks; c++) s += m->partials[c];
    *out = s;
    return RESBM_OK;
}

/* ---- optimizers ------------------------------------------------------------------------------- */
RESBMDEF float resbm_lr_factor(const resbm_opt_config *o, long step) {
    double prog;
    if (!o || step < 0 || o->warmup < 0 || o->total_steps < 0 ||
        (o->total_steps > 0 && o->warmup > o->total_steps) || !resbm__finite(o->min_lr_frac) ||
        !(o->min_lr_frac >= 0.0f && o->min_lr_frac <= 1.0f))
        return resbm__bitsf(0x7fc00000u); /* NaN */
    if (o->warmup > 0 && step < o->warmup) return (float)(step + 1) / (float)o->warmup;
    if (o->total_steps <= 0) return 1.0f;
    prog = (double)(step - o->warmup) / (double)RESBM__MAX(1, o->total_steps - o->warmup);
    if (prog > 1.0) prog = 1.0;
    return (float)(o->min_lr_frac + (1.0 - o->min_lr_frac) * 0.5 * (1.0 + cos(3.141592653589793 * prog)));
}

typedef struct {
    resbm_param *p;
    float scale, lr, decay, b1, b2, eps, step_size, bc2_sqrt; /* decay = 1 - lr * wd */
} resbm__opt_job;

/* AdamW in PyTorch's form: p *= 1 - lr wd; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps) */
static void resbm__adamw_range(void *ctx, size_t b, size_t e) {
    const resbm__opt_job *j = (const resbm__opt_job *)ctx;
    float *w = j->p->value.data, *g = j->p->grad.data, *mm = j->p->m, *vv = j->p->v;
    size_t i = b;
#ifdef RESBM__VMATH /* the loop below, 8 at a time: the same operations in the same order */
    const __m256 b1 = _mm256_set1_ps(j->b1), c1 = _mm256_set1_ps(1.0f - j->b1);
    const __m256 b2 = _mm256_set1_ps(j->b2), c2 = _mm256_set1_ps(1.0f - j->b2);
    for (; i + 8 <= e; i += 8) {
        __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), _mm256_set1_ps(j->scale));
        __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(mm + i)), _mm256_mul_ps(c1, gi));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(vv + i)), _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));
        __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), _mm256_set1_ps(j->bc2_sqrt)), _mm256_set1_ps(j->eps));
        __m256 wi = _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_set1_ps(j->decay)),
                                  _mm256_div_ps(_mm256_mul_ps(_mm256_set1_ps(j->step_size), mi), den));
        _mm256_storeu_ps(mm + i, mi);
        _mm256_storeu_ps(vv + i, vi);
        _mm256_storeu_ps(w + i, wi);
    }
#endif
    for (; i < e; i++) {
        float gi = g[i] * j->scale;
        mm[i] = j->b1 * mm[i] + (1.0f - j->b1) * gi;
        vv[i] = j->b2 * vv[i] + (1.0f - j->b2) * gi * gi;
        w[i] = w[i] * j->decay - j->step_size * mm[i] / (sqrtf(vv[i]) / j->bc2_sqrt + j->eps);
    }
}

static void resbm__sgd_range(void *ctx, size_t b, size_t e) {
    const resbm__opt_job *j = (const resbm__opt_job *)ctx;
    float *w = j->p->value.data, *g = j->p->grad.data;
    size_t i;
    for (i = b; i < e; i++) w[i] -= j->lr * g[i] * j->scale;
}

/* Muon: buf = mu buf + g; u = g + mu buf (Nesterov); X = u / |u|_F, transposed to be wide;
   5 quintic Newton-Schulz steps X = a X + (b A + c A A) X with A = X X^T; then
   p *= 1 - lr wd; p -= lr sqrt(max(1, rows/cols)) X. */
static void resbm__muon(resbm_model *m, resbm_param *p, float scale, float lr, int thread) {
    const float ca = 3.4445f, cb = -4.7750f, cc = 2.0315f;
    size_t R = p->value.ne[0], C = p->value.ne[1], n = R * C, k = RESBM__MIN(R, C);
    size_t wide = RESBM__MAX(R, C), i, j, t = (size_t)thread;
    float *x = m->ns_x + t * m->ns_mn, *y = m->ns_y + t * m->ns_mn, *w = p->value.data;
    float *A = m->ns_a + t * m->ns_kk, *B = m->ns_b + t * m->ns_kk;
    float *pack = m->pool->pack + t * RESBM__PACK_FLOATS;
    float mu = m->opt.muon_momentum, inv, f;
    double ss = 0.0;
    int it;
    for (i = 0; i < n; i++) {
        float gi = p->grad.data[i] * scale;
        p->m[i] = mu * p->m[i] + gi;
        y[i] = gi + mu * p->m[i];
        ss += (double)y[i] * (double)y[i];
    }
    inv = (float)(1.0 / (sqrt(ss) + 1e-7));
    if (R <= C)
        for (i = 0; i < n; i++) x[i] = y[i] * inv;
    else /* x [C, R] = y^T */
        for (i = 0; i < R; i++)
            for (j = 0; j < C; j++) x[j * R + i] = y[i * C + j] * inv;
    for (it = 0; it < m->opt.muon_ns_steps; it++) {
        float *t;
#ifdef RESBM_USE_CBLAS /* the BLAS's own threads, one matrix at a time (see apply_muon) */
        (void)pack;
        resbm_gemm(NULL, RESBM_GEMM_NT, 0, A, x, x, k, k, wide);
        resbm_gemm(NULL, RESBM_GEMM_NN, 0, B, A, A, k, k, k);
        resbm__axpby(B, cb, A, cc, k * k);
        resbm_gemm(NULL, RESBM_GEMM_NN, 0, y, B, x, k, wide, k);
#else
        resbm__gemm_sym_serial(RESBM_GEMM_NT, A, x, x, k, wide, pack); /* A = X X^T */
        resbm__gemm_sym_serial(RESBM_GEMM_NN, B, A, A, k, k, pack);    /* B = A A */
        resbm__axpby(B, cb, A, cc, k * k);                             /* B = b A + c A A */
        resbm__gemm_serial(RESBM_GEMM_NN, y, B, x, k, wide, k, pack); /* Y = B X */
#endif
        resbm__axpy(y, ca, x, n);
        t = x; x = y; y = t;
    }
    f = lr * sqrtf(RESBM__MAX(1.0f, (float)R / (float)C));
    for (i = 0; i < R; i++)
        for (j = 0; j < C; j++) {
            float u = R <= C ? x[i * C + j] : x[j * R + i];
            w[i * C + j] = w[i * C + j] * (1.0f - lr * m->opt.weight_decay) - f * u;
        }
}

typedef struct { resbm_model *m; float *dst; const float *src; int to_backup, *bad; } resbm__copy_job;

static void resbm__copy_piece(void *ctx, resbm_param *p, size_t at, size_t n, size_t virt) {
    const resbm__copy_job *j = (const resbm__copy_job *)ctx;
    if (j->to_backup) memcpy(j->m->backup + virt, p->value.data + at, n * sizeof(float));
    else memcpy(p->value.data + at, j->m->backup + virt, n * sizeof(float));
}

static void resbm__finite_piece(void *ctx, resbm_param *p, size_t at, size_t n, size_t virt) {
    const resbm__copy_job *j = (const resbm__copy_job *)ctx;
    (void)virt;
    if (!resbm__all_finite(p->value.data + at, n)) __atomic_store_n(j->bad, 1, __ATOMIC_RELAXED);
}

static void resbm__copy_range(void *ctx, size_t b, size_t e) { /* parameter values */
    const resbm__copy_job *j = (const resbm__copy_job *)ctx;
    resbm__walk(j->m, b, e, resbm__copy_piece, ctx);
}

static void resbm__state_copy_range(void *ctx, size_t b, size_t e) { /* optimizer state */
    const resbm__copy_job *j = (const resbm__copy_job *)ctx;
    memcpy(j->dst + b, j->src + b, (e - b) * sizeof(float));
}

static void resbm__finite_range(void *ctx, size_t b, size_t e) {
    const resbm__copy_job *j = (const resbm__copy_job *)ctx;
    if (j->src) {
        if (!resbm__all_finite(j->src + b, e - b)) __atomic_store_n(j->bad, 1, __ATOMIC_RELAXED);
    } else {
        resbm__walk(j->m, b, e, resbm__finite_piece, ctx);
    }
}

/* Parameters, then optimizer state, into the backup (on the pool) or back from it (on this
   thread alone: the restore must not fail because the pool is busy). */
static int resbm__model_copy(resbm_model *m, int to_backup) {
    resbm__copy_job j;
    resbm_pool *pool = to_backup ? m->pool : NULL;
    j.m = m; j.bad = NULL; j.to_backup = to_backup; j.dst = NULL; j.src = NULL;
    RESBM__TRY(resbm__parallel_for(pool, m->nfloats, 4 * RESBM__CHUNK, resbm__copy_range, &j));
    if (to_backup) m->has_backup = 0; /* overwritten (the pool refuses only before any task ran) */
    j.dst = to_backup ? m->backup + m->nfloats : m->omem;
    j.src = to_backup ? m->omem : m->backup + m->nfloats;
    return resbm__parallel_for(pool, m->nopt, 4 * RESBM__CHUNK, resbm__state_copy_range, &j);
}

static int resbm__model_finite(resbm_model *m, int *ok) {
    resbm__copy_job j;
    int bad = 0;
    j.m = m; j.dst = NULL; j.bad = &bad; j.to_backup = 0;
    j.src = NULL; /* the parameters, through the walk */
    RESBM__TRY(resbm__parallel_for(m->pool, m->nfloats, 4 * RESBM__CHUNK, resbm__finite_range, &j));
    j.src = m->omem;
    RESBM__TRY(resbm__parallel_for(m->pool, m->nopt, 4 * RESBM__CHUNK, resbm__finite_range, &j));
    *ok = !bad;
    return RESBM_OK;
}

/* One parameter's optimizer arguments for this step (fac, bc1, bc2: the step's schedule factor
   and AdamW's bias corrections). */
static resbm__opt_job resbm__opt_job_make(const resbm_model *m, resbm_param *p, float grad_scale,
                                          float fac, double bc1, double bc2) {
    float ps = strncmp(p->name, "bottleneck.", 11) ? 1.0f : m->opt.bottleneck_lr_scale;
    resbm__opt_job j;
    memset(&j, 0, sizeof(j));
    j.p = p;
    j.scale = grad_scale;
    if (m->opt.kind == RESBM_OPT_SGD) {
        j.lr = m->opt.lr * ps;
    } else if (m->opt.kind == RESBM_OPT_MUON && p->kind == RESBM_PARAM_HIDDEN) {
        j.lr = m->opt.muon_lr * fac * ps;
    } else {
        j.lr = m->opt.lr * fac * ps;
        j.decay = p->kind == RESBM_PARAM_NORM ? 1.0f : 1.0f - j.lr * m->opt.weight_decay;
        j.b1 = m->opt.beta1; j.b2 = m->opt.beta2; j.eps = m->opt.eps;
        j.step_size = (float)(j.lr / bc1);
        j.bc2_sqrt = (float)sqrt(bc2);
    }
    return j;
}

typedef struct { resbm_model *m; float scale, fac; double bc1, bc2; int *bad; } resbm__update_job;

static void resbm__update_job_init(resbm__update_job *u, resbm_model *m, float grad_scale, int *bad) {
    u->m = m;
    u->scale = grad_scale;
    u->fac = resbm_lr_factor(&m->opt, m->step);
    u->bc1 = 1.0 - pow((double)m->opt.beta1, (double)(m->step + 1));
    u->bc2 = 1.0 - pow((double)m->opt.beta2, (double)(m->step + 1));
    u->bad = bad;
}

/* Muon: Newton-Schulz on the hidden matrices (a whole matrix at a time), AdamW on the rest. */
/* One task per parameter; the hidden matrices' Newton-Schulz runs a whole matrix per thread
   (its GEMMs are too small to split well across threads), so threads work on different
   matrices at once. */
static void resbm__muon_task(void *ctx, size_t task, int thread) {
    const resbm__update_job *u = (const resbm__update_job *)ctx;
    resbm_param *p = &u->m->params[task];
    if (p->kind == RESBM_PARAM_HIDDEN)
        resbm__muon(u->m, p, u->scale, resbm__opt_job_make(u->m, p, u->scale, u->fac, u->bc1, u->bc2).lr, thread);
}

static int resbm__model_apply_muon(resbm_model *m, float grad_scale) {
    resbm__update_job u;
    size_t i;
    resbm__update_job_init(&u, m, grad_scale, NULL);
#ifdef RESBM_USE_CBLAS
    RESBM__TRY(resbm_pool_run(NULL, resbm__muon_task, &u, m->nparams)); /* the BLAS threads inside */
#else
    RESBM__TRY(resbm_pool_run(m->pool, resbm__muon_task, &u, m->nparams));
#endif
    for (i = 0; i < m->nparams; i++) { /* AdamW on the rest */
        resbm_param *p = &m->params[i];
        resbm__opt_job j = resbm__opt_job_make(m, p, grad_scale, u.fac, u.bc1, u.bc2);
        if (p->kind != RESBM_PARAM_HIDDEN)
            RESBM__TRY(resbm__parallel_for(m->pool, p->value.ne[0] * p->value.ne[1], RESBM__CHUNK, resbm__adamw_range, &j));
    }
    return RESBM_OK;
}

/* AdamW and SGD update elementwise, so one pass over the parameters copies each block to the
   backup, updates it and checks it while it is in cache: memory is read and written once, not
   three times (copy, update, check). The arithmetic is the same, element for element. */
#define RESBM__UPDATE_BLOCK 2048

static void resbm__update_piece(void *ctx, resbm_param *p, size_t at, size_t n, size_t virt) {
    const resbm__update_job *u = (const resbm__update_job *)ctx;
    resbm_model *m = u->m;
    resbm__opt_job j = resbm__opt_job_make(m, p, u->scale, u->fac, u->bc1, u->bc2);
    float *state = m->backup + m->nfloats;
    size_t b, e, k;
    int bad = 0;
    for (b = at; b < at + n; b = e) {
        e = RESBM__MIN(at + n, b + RESBM__UPDATE_BLOCK);
        k = e - b;
        memcpy(m->backup + virt + (b - at), p->value.data + b, k * sizeof(float));
        if (m->opt.kind == RESBM_OPT_SGD) {
            resbm__sgd_range(&j, b, e);
        } else {
            memcpy(state + (size_t)(p->m - m->omem) + b, p->m + b, k * sizeof(float));
            memcpy(state + (size_t)(p->v - m->omem) + b, p->v + b, k * sizeof(float));
            resbm__adamw_range(&j, b, e);
            bad |= !resbm__all_finite(p->m + b, k) || !resbm__all_finite(p->v + b, k);
        }
        bad |= !resbm__all_finite(p->value.data + b, k);
    }
    if (bad) __atomic_store_n(u->bad, 1, __ATOMIC_RELAXED);
}

static void resbm__update_range(void *ctx, size_t b, size_t e) {
    const resbm__update_job *u = (const resbm__update_job *)ctx;
    resbm__walk(u->m, b, e, resbm__update_piece, ctx);
}

/* All or nothing: parameters and optimizer state are copied first; if the update fails or leaves
   any value NaN or Inf, the copy goes back. The copy is kept, so a pipeline can undo the step
   when another stage could not apply it (resbm_model_rollback). */
static int resbm__model_update(resbm_model *m, float grad_scale) {
    int rc, ok = 0;
    if (!m || !resbm__finite(grad_scale) || !(grad_scale >= 0.0f)) return RESBM_EINVAL;
    if (m->step >= RESBM__MAX_STEP) return RESBM_ESTATE;
    /* a call refused before anything is written (the pool busy) keeps the last update's backup */
    if (m->opt.kind == RESBM_OPT_MUON) {
        RESBM__TRY(resbm__model_copy(m, 1));
        rc = resbm__model_apply_muon(m, grad_scale);
        if (!rc) rc = resbm__model_finite(m, &ok);
    } else {
        resbm__update_job u;
        int bad = 0;
        resbm__update_job_init(&u, m, grad_scale, &bad);
        /* fails only before any block ran (the pool is busy): nothing to restore */
        RESBM__TRY(resbm__parallel_for(m->pool, m->nfloats, 4 * RESBM__CHUNK, resbm__update_range, &u));
        m->has_backup = 0; /* it holds this update's before-state now */
        rc = RESBM_OK;
        ok = !bad;
    }
    if (!rc && !ok) rc = RESBM_ENONFINITE;
    if (rc) {
        int rc2 = resbm__model_copy(m, 0);
        return rc2 ? rc2 : rc;
    }
    m->has_backup = 1;
    m->step++;
    return RESBM_OK;
}

static int resbm__model_rollback(resbm_model *m) {
    if (!m) return RESBM_EINVAL;
    if (!m->has_backup) return RESBM_ESTATE;
    RESBM__TRY(resbm__model_copy(m, 0));
    m->has_backup = 0;
    m->step--;
    return RESBM_OK;
}

static int resbm__model_train_step(resbm_model *m, const int32_t *tokens,
                                   const int32_t *targets, size_t rows, int n_micro,
                                   float *loss) {
    size_t mr, T, i;
    double sum = 0.0, sq;
    float scale = 1.0f;
    int k;
    if (!m || !tokens || !targets || !loss || rows == 0 || n_micro < 1) return RESBM_EINVAL;
    if (rows % (size_t)n_micro || rows / (size_t)n_micro > (size_t)m->cfg.batch)
        return RESBM_EINVAL;
    if (m->cfg.stages != 1) return RESBM_ESTATE; /* a pipeline stage steps through its runtime */
    T = (size_t)m->cfg.seq;
    if (!resbm__targets_ok(tokens, rows * T, (size_t)m->cfg.vocab) ||
        !resbm__targets_ok(targets, rows * T, (size_t)m->cfg.vocab))
        return RESBM_ERANGE;
    for (i = 0; i < (size_t)m->cfg.act_slots; i++)
        if (m->slots[i].rows) return RESBM_ESTATE;
    mr = rows / (size_t)n_micro;
    RESBM__TRY(resbm__model_zero_grad(m));
    for (k = 0; k < n_micro; k++) {
        float l;
        RESBM__TRY(resbm__model_forward(m, 0, tokens + (size_t)k * mr * T, NULL,
                                        targets + (size_t)k * mr * T, mr, NULL, &l));
        RESBM__TRY(resbm__model_backward(m, 0, NULL, NULL, 1.0f / (float)n_micro));
        sum += l;
    }
    RESBM__TRY(resbm__model_grad_sqnorm(m, &sq));
    if (!resbm__finite((float)sq)) return RESBM_ENONFINITE; /* parameters untouched */
    scale = resbm_clip_scale(&m->opt, (float)sq); /* as a pipeline of one stage does */
    RESBM__TRY(resbm__model_update(m, scale));
    *loss = (float)(sum / n_micro);
    return RESBM_OK;
}

/* The public entries: each holds the model for its call. */
RESBMDEF int resbm_model_forward(resbm_model *m, int slot, const int32_t *tokens,
                                 const float *x_in, const int32_t *targets, size_t rows,
                                 float *h_out, float *loss) {
    RESBM__TRY(resbm__model_claim(m));
    return resbm__model_unclaim(m, resbm__model_forward(m, slot, tokens, x_in, targets, rows, h_out, loss));
}
RESBMDEF int resbm_model_backward(resbm_model *m, int slot, const float *dh_out, float *dx_in,
                                  float loss_weight) {
    RESBM__TRY(resbm__model_claim(m));
    return resbm__model_unclaim(m, resbm__model_backward(m, slot, dh_out, dx_in, loss_weight));
}
RESBMDEF int resbm_model_release(resbm_model *m, int slot) {
    RESBM__TRY(resbm__model_claim(m));
    return resbm__model_unclaim(m, resbm__model_release(m, slot));
}
RESBMDEF int resbm_model_zero_grad(resbm_model *m) {
    RESBM__TRY(resbm__model_claim(m));
    return resbm__model_unclaim(m, resbm__model_zero_grad(m));
}
RESBMDEF int resbm_model_grad_sqnorm(resbm_model *m, double *out) {
    RESBM__TRY(resbm__model_claim(m));
    return resbm__model_unclaim(m, resbm__model_grad_sqnorm(m, out));
}
RESBMDEF int resbm_model_update(resbm_model *m, float grad_scale) {
    RESBM__TRY(resbm__model_claim(m));
    return resbm__model_unclaim(m, resbm__model_update(m, grad_scale));
}
RESBMDEF int resbm_model_rollback(resbm_model *m) {
    RESBM__TRY(resbm__model_claim(m));
    return resbm__model_unclaim(m, resbm__model_rollback(m));
}
RESBMDEF int resbm_model_train_step(resbm_model *m, const int32_t *tokens,
                                    const int32_t *targets, size_t rows, int n_micro,
                                    float *loss) {
    RESBM__TRY(resbm__model_claim(m));
    return resbm__model_unclaim(m, resbm__model_train_step(m, tokens, targets, rows, n_micro, loss));
}

/* ---- the boundary as an object ---------------------------------------------------------------- */
/* A boundary is a model that holds one bottleneck half and no layers: the same parameters,
   init, kernels, optimizer and checkpoint code as the halves inside every stage. */
static resbm_model *resbm__bnd(resbm_boundary *b) { return (resbm_model *)(void *)b; }

RESBMDEF resbm_boundary_config resbm_boundary_config_default(void) {
    resbm_boundary_config c;
    memset(&c, 0, sizeof(c));
    c.side = RESBM_ENCODER; c.d = 256; c.r = 2; c.max_tokens = 1024; c.slots = 1; c.threads = 1;
    c.seed = 1337; c.init_std = 0.02f;
    return c;
}

RESBMDEF int resbm_boundary_init(const resbm_boundary_config *cfg, const resbm_opt_config *opt,
                                 resbm_boundary **out) {
    resbm_model_config mc = resbm_model_config_default();
    resbm_model *m;
    if (!cfg || !out || (cfg->side != RESBM_ENCODER && cfg->side != RESBM_DECODER) ||
        cfg->index < 0 || cfg->index > 65533 || cfg->d < 2 || cfg->r < 1 || cfg->r >= cfg->d ||
        cfg->max_tokens < 1 || cfg->slots < 0 || cfg->threads < 0)
        return RESBM_EINVAL;
    mc.vocab = 1; mc.d = cfg->d; mc.r = cfg->r; mc.m = cfg->m; mc.no_identity = cfg->no_identity;
    mc.seq = 1; mc.batch = cfg->max_tokens; mc.act_slots = cfg->slots ? cfg->slots : 1;
    mc.stages = mc.layers = cfg->index + 2; /* so that stage index + 1 exists */
    mc.stage = cfg->side == RESBM_ENCODER ? cfg->index : cfg->index + 1;
    mc.threads = cfg->threads ? cfg->threads : 1; mc.seed = cfg->seed; mc.init_std = cfg->init_std;
    mc.pool = cfg->pool; mc.alloc_user = cfg->alloc_user;
    RESBM__TRY(resbm__model_create(&mc, opt, cfg->side, &m, NULL));
    *out = (resbm_boundary *)(void *)m;
    return RESBM_OK;
}

RESBMDEF void resbm_boundary_free(resbm_boundary *b) { resbm_model_free(resbm__bnd(b)); }

static int resbm__boundary_forward(resbm_boundary *b, int slot, size_t tokens, const float *in,
                                   float *out) {
    resbm_model *m = resbm__bnd(b);
    resbm__acts *s;
    if (!m || !in || !out || slot < 0 || slot >= m->cfg.act_slots || tokens == 0 ||
        tokens > (size_t)m->cfg.batch)
        return RESBM_EINVAL;
    s = &m->slots[slot];
    if (s->rows) return RESBM_ESTATE;
    if (!resbm__all_finite(in, tokens * (m->has_enc ? (size_t)m->cfg.d : m->r))) return RESBM_ENONFINITE;
    if (m->has_enc) {
        memcpy(s->x, in, tokens * (size_t)m->cfg.d * sizeof(float));
        RESBM__TRY(resbm__enc_fwd(m, s, tokens, s->x, out));
    } else {
        memcpy(s->z_in, in, tokens * m->r * sizeof(float));
        RESBM__TRY(resbm__dec_fwd(m, s, tokens, s->z_in, out));
    }
    s->rows = tokens;
    return RESBM_OK;
}

static int resbm__boundary_backward(resbm_boundary *b, int slot, const float *dout, float *din) {
    resbm_model *m = resbm__bnd(b);
    resbm__acts *s;
    size_t N, d;
    if (!m || !dout || !din || slot < 0 || slot >= m->cfg.act_slots) return RESBM_EINVAL;
    s = &m->slots[slot];
    if (!s->rows) return RESBM_ESTATE;
    N = s->rows;
    d = (size_t)m->cfg.d;
    if (!resbm__all_finite(dout, N * (m->has_enc ? m->r : d))) return RESBM_ENONFINITE;
    if (resbm__overlaps(din, N * (m->has_enc ? d : m->r) * sizeof(float), dout,
                        N * (m->has_enc ? m->r : d) * sizeof(float)))
        return RESBM_EINVAL; /* before the memset below writes anything */
    if (m->has_enc) {
        memset(din, 0, N * d * sizeof(float));
        RESBM__TRY(resbm__enc_bwd(m, s, N, s->x, dout, din));
    } else {
        RESBM__TRY(resbm__dec_bwd(m, s, N, dout, din));
    }
    s->rows = 0;
    return RESBM_OK;
}

static int resbm__boundary_release(resbm_boundary *b, int slot) {
    resbm_model *m = resbm__bnd(b);
    if (!m || slot < 0 || slot >= m->cfg.act_slots) return RESBM_EINVAL;
    m->slots[slot].rows = 0;
    return RESBM_OK;
}
/* The boundary's entries hold it for their call, as the model's do. */
RESBMDEF int resbm_boundary_forward(resbm_boundary *b, int slot, size_t tokens, const float *in,
                                    float *out) {
    RESBM__TRY(resbm__model_claim(resbm__bnd(b)));
    return resbm__model_unclaim(resbm__bnd(b), resbm__boundary_forward(b, slot, tokens, in, out));
}
RESBMDEF int resbm_boundary_backward(resbm_boundary *b, int slot, const float *dout, float *din) {
    RESBM__TRY(resbm__model_claim(resbm__bnd(b)));
    return resbm__model_unclaim(resbm__bnd(b), resbm__boundary_backward(b, slot, dout, din));
}
RESBMDEF int resbm_boundary_release(resbm_boundary *b, int slot) {
    RESBM__TRY(resbm__model_claim(resbm__bnd(b)));
    return resbm__model_unclaim(resbm__bnd(b), resbm__boundary_release(b, slot));
}

RESBMDEF resbm_param *resbm_boundary_params(resbm_boundary *b, size_t *count) {
    return resbm_model_params_mut(resbm__bnd(b), count);
}
RESBMDEF int resbm_boundary_zero_grad(resbm_boundary *b) { return resbm_model_zero_grad(resbm__bnd(b)); }
RESBMDEF int resbm_boundary_grad_sqnorm(resbm_boundary *b, double *out) {
    return resbm_model_grad_sqnorm(resbm__bnd(b), out);
}
RESBMDEF int resbm_boundary_update(resbm_boundary *b, float grad_scale) {
    return resbm_model_update(resbm__bnd(b), grad_scale);
}
RESBMDEF int resbm_boundary_rollback(resbm_boundary *b) { return resbm_model_rollback(resbm__bnd(b)); }
RESBMDEF long resbm_boundary_step_count(const resbm_boundary *b) {
    return resbm_model_step_count((const resbm_model *)(const void *)b);
}
RESBMDEF int resbm_boundary_save(resbm_boundary *b, const char *path) {
    resbm_model *m = resbm__bnd(b);
    return m ? resbm_checkpoint_save(path, &m, 1, NULL, 0) : RESBM_EINVAL;
}
RESBMDEF int resbm_boundary_load(resbm_boundary *b, const char *path, char *why, size_t why_len) {
    resbm_model *m = resbm__bnd(b);
    return m ? resbm_checkpoint_load(path, &m, 1, why, why_len) : RESBM_EINVAL;
}

/* ---- wire codec ------------------------------------------------------------------------------- */
#if !defined(__SSE4_2__)
static const uint32_t resbm__crc32c_table[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu,
    0x26a1e7e8u, 0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu,
    0x4d43cfd0u, 0xbf284cd3u, 0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu,
    0xf165b798u, 0x030e349bu, 0xd7c45070u, 0x25afd373u, 0x36ff2087u, 0xc494a384u,
    0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u, 0x5d1d08bfu, 0xaf768bbcu,
    0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u, 0x33ed7d2au,
    0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
    0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau,
    0x30e349b1u, 0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu,
    0x1642ae59u, 0xe4292d5au, 0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au,
    0x7da08661u, 0x8fcb0562u, 0x9c9bf696u, 0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu,
    0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u, 0x67dafa54u, 0x95b17957u,
    0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu, 0xfe53516fu,
    0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
    0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu,
    0x3ac7f2ebu, 0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u,
    0x61c69362u, 0x93ad1061u, 0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu,
    0x4767748au, 0xb50cf789u, 0xeb1fcbadu, 0x197448aeu, 0x0a24bb5au, 0xf84f3859u,
    0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u, 0x7198540du, 0x83f3d70eu,
    0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u, 0xa55230e6u,
    0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
    0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu,
    0x456cac67u, 0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u,
    0xe9141340u, 0x1b7f9043u, 0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu,
    0x92a8fc17u, 0x60c37f14u, 0x73938ce0u, 0x81f80fe3u, 0x55326b08u, 0xa759e80bu,
    0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu, 0xf94ad42fu, 0x0b21572cu,
    0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u, 0x502036a5u,
    0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
    0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u,
    0x0e330a81u, 0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du,
    0x758fe5d6u, 0x87e466d5u, 0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u,
    0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u, 0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu,
    0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u, 0x0417b1dbu, 0xf67c32d8u,
    0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu, 0x5a048dffu,
    0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u,
    0x590ab964u, 0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u,
    0x7fab5e8cu, 0x8dc0dd8fu, 0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu,
    0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u, 0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u,
    0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u, 0x4f48173du, 0xbd23943eu,
    0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au, 0xc69f7b69u,
    0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
    0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u,
};
#endif

RESBMDEF uint32_t resbm_crc32c(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = (const unsigned char *)buf;
    crc = ~crc;
    if (!p) return ~crc;
#if defined(__SSE4_2__)
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t v = (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
                     (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
                     (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
        crc = (uint32_t)_mm_crc32_u64(crc, v);
    }
    for (; len; len--) crc = _mm_crc32_u8(crc, *p++);
#else
    for (; len; len--) crc = resbm__crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
#endif
    return ~crc;
}

static void resbm__put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }
static void resbm__put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}
static unsigned resbm__get16(const unsigned char *p) { return (unsigned)p[0] | (unsigned)p[1] << 8; }
static uint32_t resbm__get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* f32 -> bf16, round to nearest even (finite input) */
static unsigned resbm__to_bf16(float f) {
    uint32_t u = resbm__fbits(f);
    return (unsigned)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* f32 -> IEEE half, round to nearest even, subnormals kept (finite input) */
static unsigned resbm__to_f16(float f) {
    uint32_t u = resbm__fbits(f), sign = (u >> 16) & 0x8000u, mant = u & 0x7fffffu;
    int e = (int)((u >> 23) & 0xff) - 127 + 15;
    uint32_t h, rem, half;
    if (e >= 31) return sign | 0x7c00u; /* overflow: Inf, refused by the caller */
    if (e <= 0) {                       /* half subnormal (or zero) */
        int shift;
        if (e < -10) return sign;
        mant |= 0x800000u;
        shift = 14 - e;
        h = mant >> shift;
        rem = mant & ((1u << shift) - 1);
        half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return sign | h;
    }
    h = ((uint32_t)e << 10) | (mant >> 13);
    rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* may carry into the exponent */
    return sign | h;
}

static float resbm__from_f16(unsigned h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (e == 0) {
        float v = (float)mant * 5.9604644775390625e-8f; /* mant * 2^-24, exact */
        return sign ? -v : v;
    }
    if (e == 31) return resbm__bitsf(sign | 0x7f800000u | (mant << 13));
    return resbm__bitsf(sign | ((e - 15 + 127) << 23) | (mant << 13));
}


RESBMDEF int resbm_wire_payload_bytes(int dtype, size_t rows, size_t cols, size_t *out) {
    size_t n, b;
    if (!out) return RESBM_EINVAL;
    if (resbm_size_mul(&n, rows, cols)) return RESBM_EOVERFLOW;
    switch (dtype) {
    case RESBM_WIRE_F32: if (resbm_size_mul(&b, n, 4)) return RESBM_EOVERFLOW; break;
    case RESBM_WIRE_BF16:
    case RESBM_WIRE_F16: if (resbm_size_mul(&b, n, 2)) return RESBM_EOVERFLOW; break;
    case RESBM_WIRE_I8: { /* n values and one 4-byte scale per block of 64 (the last may be short) */
        size_t blocks = n / RESBM_I8_BLOCK + (n % RESBM_I8_BLOCK != 0), sb;
        if (resbm_size_mul(&sb, blocks, 4) || resbm_size_add(&b, n, sb)) return RESBM_EOVERFLOW;
        break;
    }
    default: return RESBM_EINVAL;
    }
    *out = b;
    return RESBM_OK;
}

/* One i8 block of n <= 64 values: an f32 scale = absmax / levels, then n values in
   -levels..levels (127 on the contract's wire; see RESBM_I8_LEVELS). */
static void resbm__i8_block(unsigned char *q, const float *x, size_t n, int levels) {
    float amax = 0.0f, inv;
    size_t i;
    for (i = 0; i < n; i++) amax = RESBM__MAX(amax, fabsf(x[i]));
    inv = amax > 0.0f ? (float)levels / amax : 0.0f;
    resbm__put32(q, resbm__fbits(amax / (float)levels));
    for (i = 0; i < n; i++) {
        float v = roundf(x[i] * inv);
        if (!resbm__finite(v)) v = 0.0f; /* 0 * inf: a denormal absmax makes inv overflow */
        v = RESBM__MIN(RESBM__MAX(v, (float)-levels), (float)levels);
        q[4 + i] = (unsigned char)(signed char)(int)v;
    }
}

/* A value i8 cannot carry: its block's scale, x 127, would be Inf, which the decoder refuses. At
   127 levels that is +-FLT_MAX alone (a comparison, so -ffast-math hosts cannot fold it away);
   the experiment's fewer levels keep a margin. */
static int resbm__i8_out_of_range(float v) {
#if RESBM_I8_LEVELS == 127
    return fabsf(v) == FLT_MAX;
#else
    return fabsf(v) > FLT_MAX / 128.0f * RESBM_I8_LEVELS;
#endif
}

static int resbm__info_ok(const resbm_frame_info *f) {
    return f->kind >= RESBM_KIND_ACT && f->kind <= RESBM_KIND_CONTROL && f->dtype >= RESBM_WIRE_F32 &&
           f->dtype <= RESBM_WIRE_I8 && f->from_stage <= 0xffffu && f->to_stage <= 0xffffu;
}

RESBMDEF int resbm_frame_encode(void *buf, size_t cap, size_t *len, const resbm_frame_info *info,
                                const float *x) {
    unsigned char *p = (unsigned char *)buf, *q;
    size_t n, pb, total, i;
    uint32_t crc;
    if (!buf || !len || !info || !resbm__info_ok(info) || (!x && info->rows && info->cols))
        return RESBM_EINVAL;
    if (resbm_wire_payload_bytes(info->dtype, info->rows, info->cols, &pb) || pb > 0xffffffffu ||
        resbm_size_add(&total, pb, RESBM_FRAME_HEADER))
        return RESBM_EOVERFLOW;
    if (total > cap) {
        *len = total; /* what it takes */
        return RESBM_ENOSPACE;
    }
    n = (size_t)info->rows * info->cols;
    if (resbm__overlaps(buf, total, x, n * sizeof(float))) return RESBM_EINVAL; /* would encode what it wrote */
    for (i = 0; i < n; i++) { /* refuse before writing anything */
        if (!resbm__finite(x[i])) return RESBM_ENONFINITE;
        if (info->dtype == RESBM_WIRE_F16 && (resbm__to_f16(x[i]) & 0x7c00u) == 0x7c00u) return RESBM_ERANGE;
        if (info->dtype == RESBM_WIRE_BF16 && (resbm__to_bf16(x[i]) & 0x7f80u) == 0x7f80u) return RESBM_ERANGE;
        if (info->dtype == RESBM_WIRE_I8 && resbm__i8_out_of_range(x[i])) return RESBM_ERANGE;
    }
    memcpy(p, "RBM1", 4);
    resbm__put16(p + 4, RESBM_WIRE_VERSION);
    p[6] = (unsigned char)info->kind;
    p[7] = (unsigned char)info->dtype;
    resbm__put16(p + 8, info->from_stage);
    resbm__put16(p + 10, info->to_stage);
    resbm__put32(p + 12, (uint32_t)(info->step & 0xffffffffu));
    resbm__put32(p + 16, (uint32_t)(info->step >> 32));
    resbm__put32(p + 20, info->micro);
    resbm__put32(p + 24, info->rows);
    resbm__put32(p + 28, info->cols);
    resbm__put32(p + 32, (uint32_t)pb);
    q = p + RESBM_FRAME_HEADER;
    switch (info->dtype) {
    case RESBM_WIRE_F32:
        for (i = 0; i < n; i++) resbm__put32(q + 4 * i, resbm__fbits(x[i]));
        break;
    case RESBM_WIRE_BF16:
        for (i = 0; i < n; i++) resbm__put16(q + 2 * i, resbm__to_bf16(x[i]));
        break;
    case RESBM_WIRE_F16:
        for (i = 0; i < n; i++) resbm__put16(q + 2 * i, resbm__to_f16(x[i]));
        break;
    default: { /* i8: per block of 64, an f32 scale = absmax / 127, then the values */
        size_t b0;
        for (b0 = 0; b0 < n; b0 += RESBM_I8_BLOCK) {
            size_t bn = RESBM__MIN((size_t)RESBM_I8_BLOCK, n - b0);
            resbm__i8_block(q, x + b0, bn, RESBM_I8_LEVELS);
            q += 4 + bn;
        }
    }
    }
    crc = resbm_crc32c(0, p, 36);
    crc = resbm_crc32c(crc, p + RESBM_FRAME_HEADER, pb);
    resbm__put32(p + 36, crc);
    *len = total;
    return RESBM_OK;
}

/* Header checks shared by peek and decode: everything but the expected values. */
static int resbm__frame_header(const unsigned char *p, size_t len, resbm_frame_info *f, size_t *pb) {
    size_t want;
    uint32_t crc;
    if (len < RESBM_FRAME_HEADER) return RESBM_ETRUNC;
    if (memcmp(p, "RBM1", 4)) return RESBM_EMAGIC;
    if (resbm__get16(p + 4) != RESBM_WIRE_VERSION) return RESBM_EVERSION;
    f->kind = p[6];
    f->dtype = p[7];
    if (f->kind < RESBM_KIND_ACT || f->kind > RESBM_KIND_CONTROL) return RESBM_EKIND;
    if (f->dtype > RESBM_WIRE_I8) return RESBM_EDTYPE;
    f->from_stage = resbm__get16(p + 8);
    f->to_stage = resbm__get16(p + 10);
    f->step = (uint64_t)resbm__get32(p + 12) | (uint64_t)resbm__get32(p + 16) << 32;
    f->micro = resbm__get32(p + 20);
    f->rows = resbm__get32(p + 24);
    f->cols = resbm__get32(p + 28);
    *pb = resbm__get32(p + 32);
    if (resbm_wire_payload_bytes(f->dtype, f->rows, f->cols, &want) || want != *pb) return RESBM_ESIZE;
    if (len - RESBM_FRAME_HEADER < *pb) return RESBM_ETRUNC;
    if (len - RESBM_FRAME_HEADER > *pb) return RESBM_ESIZE;
    crc = resbm_crc32c(resbm_crc32c(0, p, 36), p + RESBM_FRAME_HEADER, *pb);
    if (crc != resbm__get32(p + 36)) return RESBM_ECRC;
    return RESBM_OK;
}

RESBMDEF int resbm_frame_peek(const void *buf, size_t len, resbm_frame_info *info) {
    resbm_frame_info f;
    size_t pb;
    int rc;
    if (!buf || !info) return RESBM_EINVAL;
    if ((rc = resbm__frame_header((const unsigned char *)buf, len, &f, &pb))) return rc;
    *info = f;
    return RESBM_OK;
}

RESBMDEF int resbm_frame_decode(float *out, size_t out_count, const void *buf, size_t len,
                                const resbm_frame_info *e) {
    const unsigned char *p = (const unsigned char *)buf, *q;
    resbm_frame_info f;
    size_t pb, n, i;
    int rc;
    if (!out || !buf || !e) return RESBM_EINVAL;
    /* cheap field checks first, so a wrong frame says what is wrong even if also corrupt */
    if (len >= RESBM_FRAME_HEADER && !memcmp(p, "RBM1", 4) && resbm__get16(p + 4) == RESBM_WIRE_VERSION) {
        if (p[6] != e->kind) return RESBM_EKIND;
        if (p[7] != e->dtype) return RESBM_EDTYPE;
    }
    if ((rc = resbm__frame_header(p, len, &f, &pb))) return rc;
    if (f.from_stage != e->from_stage || f.to_stage != e->to_stage) return RESBM_ESTAGE;
    if (f.step != e->step) return RESBM_ESTEP;
    if (f.micro != e->micro) return RESBM_EMICRO;
    if (f.rows != e->rows || f.cols != e->cols) return RESBM_ESHAPE;
    n = (size_t)f.rows * f.cols;
    if (n > out_count) return RESBM_ENOSPACE;
    if (resbm__overlaps(out, n * sizeof(float), buf, len)) return RESBM_EINVAL; /* would read what it wrote */
    q = p + RESBM_FRAME_HEADER;
    /* every value must be finite before anything is written */
    switch (f.dtype) {
    case RESBM_WIRE_F32:
        for (i = 0; i < n; i++)
            if ((resbm__get32(q + 4 * i) & 0x7f800000u) == 0x7f800000u) return RESBM_ENONFINITE;
        for (i = 0; i < n; i++) out[i] = resbm__bitsf(resbm__get32(q + 4 * i));
        break;
    case RESBM_WIRE_BF16:
        for (i = 0; i < n; i++)
            if ((resbm__get16(q + 2 * i) & 0x7f80u) == 0x7f80u) return RESBM_ENONFINITE;
        for (i = 0; i < n; i++) out[i] = resbm__bitsf((uint32_t)resbm__get16(q + 2 * i) << 16);
        break;
    case RESBM_WIRE_F16:
        for (i = 0; i < n; i++)
            if ((resbm__get16(q + 2 * i) & 0x7c00u) == 0x7c00u) return RESBM_ENONFINITE;
        for (i = 0; i < n; i++) out[i] = resbm__from_f16(resbm__get16(q + 2 * i));
        break;
    default: {
        size_t b0;
        const unsigned char *r = q;
        for (b0 = 0; b0 < n; b0 += RESBM_I8_BLOCK) {
            /* a scale is absmax / 127: not negative, and 127 x scale finite; a value is -127..127
               (-128 x the largest scale would be -Inf) */
            float scale = resbm__bitsf(resbm__get32(r));
            size_t bn = RESBM__MIN((size_t)RESBM_I8_BLOCK, n - b0);
            if (!resbm__finite(scale) || !resbm__finite(127.0f * scale)) return RESBM_ENONFINITE;
            if (scale < 0.0f || memchr(r + 4, 0x80, bn)) return RESBM_ERANGE;
            r += 4 + bn;
        }
        for (b0 = 0; b0 < n; b0 += RESBM_I8_BLOCK) {
            size_t bn = RESBM__MIN((size_t)RESBM_I8_BLOCK, n - b0);
            float scale = resbm__bitsf(resbm__get32(q));
            for (i = 0; i < bn; i++) out[b0 + i] = (float)(signed char)q[4 + i] * scale;
            q += 4 + bn;
        }
    }
    }
    return RESBM_OK;
}

/* ---- transports ------------------------------------------------------------------------------- */
static double resbm__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void resbm__sleep_until(double t) {
    double d = t - resbm__now();
    struct timespec ts;
    if (!(d > 0)) return; /* NaN too */
    if (d > 1e6) d = 1e6;
    ts.tv_sec = (time_t)d;
    ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

/* A bounded ring of length-prefixed messages (u64 length, then the bytes). */
typedef struct {
    unsigned char *buf;
    size_t cap, head, used;
#ifndef RESBM_NO_THREADS
    pthread_mutex_t mu;
    pthread_cond_t cv; /* broadcast on every change: data arrived, space freed, peer closed */
#endif
} resbm__mailbox;

typedef struct { resbm_inproc *hub; int me; } resbm__inproc_ep;

struct resbm_inproc {
    int n;
    size_t cap;
    resbm__mailbox *box; /* [src * n + dst] */
    int *closed;         /* [n] */
    resbm__inproc_ep *ep; /* [n] */
    int inited;          /* mailboxes whose mutex/cv exist */
    int send_timeout_ms; /* a send into a full mailbox gives up after this (RESBM_ETIMEDOUT) */
};

#ifndef RESBM_NO_THREADS
#define RESBM__LOCK(b) pthread_mutex_lock(&(b)->mu)
#define RESBM__UNLOCK(b) pthread_mutex_unlock(&(b)->mu)
#else
#define RESBM__LOCK(b) ((void)(b))
#define RESBM__UNLOCK(b) ((void)(b))
#endif

static void resbm__ring_put(resbm__mailbox *b, const unsigned char *src, size_t n) {
    size_t tail = (b->head + b->used) % b->cap, first = RESBM__MIN(n, b->cap - tail);
    memcpy(b->buf + tail, src, first);
    memcpy(b->buf, src + first, n - first);
    b->used += n;
}

static void resbm__ring_get(resbm__mailbox *b, unsigned char *dst, size_t n, int consume) {
    size_t first = RESBM__MIN(n, b->cap - b->head);
    memcpy(dst, b->buf + b->head, first);
    memcpy(dst + first, b->buf, n - first);
    if (consume) { b->head = (b->head + n) % b->cap; b->used -= n; }
}

RESBMDEF void resbm_inproc_free(resbm_inproc *h) {
    int i;
    if (!h) return;
#ifndef RESBM_NO_THREADS
    for (i = 0; i < h->inited; i++) {
        pthread_cond_destroy(&h->box[i].cv);
        pthread_mutex_destroy(&h->box[i].mu);
    }
#else
    (void)i;
#endif
    resbm__dealloc(h, NULL);
}

RESBMDEF int resbm_inproc_init(int n, size_t capacity, resbm_inproc **out) {
    resbm_arena a;
    resbm_inproc *h;
    size_t nb, i;
    if (!out || n < 1 || n > 4096 || capacity < 16) return RESBM_EINVAL;
    nb = (size_t)n * (size_t)n;
    memset(&a, 0, sizeof(a));
    resbm_arena_push(&a, 1, sizeof(resbm_inproc));
    resbm_arena_push(&a, nb, sizeof(resbm__mailbox));
    resbm_arena_push(&a, (size_t)n, sizeof(int));
    resbm_arena_push(&a, (size_t)n, sizeof(resbm__inproc_ep));
    for (i = 0; i < nb; i++) resbm_arena_push(&a, capacity, 1);
    if (a.overflow) return RESBM_EOVERFLOW;
    a.base = (unsigned char *)resbm__alloc(a.used, NULL);
    if (!a.base) return RESBM_ENOMEM;
    memset(a.base, 0, a.used);
    a.cap = a.used;
    a.used = 0;
    h = (resbm_inproc *)resbm_arena_push(&a, 1, sizeof(resbm_inproc));
    h->n = n;
    h->cap = capacity;
    h->send_timeout_ms = 60000;
    h->box = (resbm__mailbox *)resbm_arena_push(&a, nb, sizeof(resbm__mailbox));
    h->closed = (int *)resbm_arena_push(&a, (size_t)n, sizeof(int));
    h->ep = (resbm__inproc_ep *)resbm_arena_push(&a, (size_t)n, sizeof(resbm__inproc_ep));
    for (i = 0; i < (size_t)n; i++) { h->ep[i].hub = h; h->ep[i].me = (int)i; }
    for (i = 0; i < nb; i++) {
        h->box[i].buf = (unsigned char *)resbm_arena_push(&a, capacity, 1);
        h->box[i].cap = capacity;
#ifndef RESBM_NO_THREADS
        if (pthread_mutex_init(&h->box[i].mu, NULL)) { resbm_inproc_free(h); return RESBM_ETHREAD; }
        if (pthread_cond_init(&h->box[i].cv, NULL)) {
            pthread_mutex_destroy(&h->box[i].mu);
            resbm_inproc_free(h);
            return RESBM_ETHREAD;
        }
#endif
        h->inited++;
    }
    *out = h;
    return RESBM_OK;
}

static int resbm__inproc_send(void *user, int peer, const void *buf, size_t len) {
    resbm__inproc_ep *ep = (resbm__inproc_ep *)user;
    resbm_inproc *h;
    resbm__mailbox *b;
    unsigned char hdr[8];
    int k;
#ifndef RESBM_NO_THREADS
    struct timespec until;
#endif
    if (!ep || (!buf && len)) return RESBM_EINVAL;
    h = ep->hub;
    if (peer < 0 || peer >= h->n || peer == ep->me) return RESBM_EINVAL;
    if (len > h->cap - 8) return RESBM_EMSGSIZE;
    b = &h->box[(size_t)ep->me * (size_t)h->n + (size_t)peer];
#ifndef RESBM_NO_THREADS
    {
        int ms = __atomic_load_n(&h->send_timeout_ms, __ATOMIC_RELAXED);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += ms / 1000;
        until.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    }
#endif
    RESBM__LOCK(b);
    for (;;) {
        if (__atomic_load_n(&h->closed[peer], __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&h->closed[ep->me], __ATOMIC_ACQUIRE)) {
            RESBM__UNLOCK(b);
            return RESBM_ECLOSED;
        }
        if (b->cap - b->used >= len + 8) break;
#ifndef RESBM_NO_THREADS
        if (pthread_cond_timedwait(&b->cv, &b->mu, &until) == ETIMEDOUT && b->cap - b->used < len + 8) {
            RESBM__UNLOCK(b); /* nobody drains it: the peer stopped reading */
            return RESBM_ETIMEDOUT;
        }
#else
        return RESBM_ETRANSPORT; /* full, and no other thread can drain it */
#endif
    }
    for (k = 0; k < 8; k++) hdr[k] = (unsigned char)((uint64_t)len >> (8 * k));
    resbm__ring_put(b, hdr, 8);
    resbm__ring_put(b, (const unsigned char *)buf, len);
#ifndef RESBM_NO_THREADS
    pthread_cond_broadcast(&b->cv);
#endif
    RESBM__UNLOCK(b);
    return RESBM_OK;
}

static int resbm__inproc_recv(void *user, int peer, void *buf, size_t cap, size_t *len,
                              int timeout_ms) {
    resbm__inproc_ep *ep = (resbm__inproc_ep *)user;
    resbm_inproc *h;
    resbm__mailbox *b;
    unsigned char hdr[8];
    uint64_t n = 0;
    int k;
#ifndef RESBM_NO_THREADS
    struct timespec until;
    if (timeout_ms > 0) {
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    }
#endif
    (void)timeout_ms;
    if (!ep || !buf || !len) return RESBM_EINVAL;
    h = ep->hub;
    if (peer < 0 || peer >= h->n || peer == ep->me) return RESBM_EINVAL;
    b = &h->box[(size_t)peer * (size_t)h->n + (size_t)ep->me];
    RESBM__LOCK(b);
    while (b->used == 0) {
        if (__atomic_load_n(&h->closed[peer], __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&h->closed[ep->me], __ATOMIC_ACQUIRE)) {
            RESBM__UNLOCK(b);
            return RESBM_ECLOSED;
        }
#ifndef RESBM_NO_THREADS
        if (timeout_ms < 0) {
            pthread_cond_wait(&b->cv, &b->mu);
        } else if (timeout_ms == 0 || pthread_cond_timedwait(&b->cv, &b->mu, &until) == ETIMEDOUT) {
            if (b->used) break;
            RESBM__UNLOCK(b);
            return RESBM_ETIMEDOUT;
        }
#else
        RESBM__UNLOCK(b);
        return RESBM_ETIMEDOUT;
#endif
    }
    resbm__ring_get(b, hdr, 8, 0);
    for (k = 0; k < 8; k++) n |= (uint64_t)hdr[k] << (8 * k);
    if (n > cap) { /* stays queued */
        RESBM__UNLOCK(b);
        return RESBM_EMSGSIZE;
    }
    resbm__ring_get(b, hdr, 8, 1);
    resbm__ring_get(b, (unsigned char *)buf, (size_t)n, 1);
    *len = (size_t)n;
#ifndef RESBM_NO_THREADS
    pthread_cond_broadcast(&b->cv);
#endif
    RESBM__UNLOCK(b);
    return RESBM_OK;
}

RESBMDEF int resbm_inproc_transport(resbm_inproc *h, int me, resbm_transport *out) {
    if (!h || !out || me < 0 || me >= h->n) return RESBM_EINVAL;
    out->user = &h->ep[me];
    out->send = resbm__inproc_send;
    out->recv = resbm__inproc_recv;
    return RESBM_OK;
}

RESBMDEF int resbm_inproc_set_send_timeout(resbm_inproc *hub, int ms) {
    if (!hub || ms < 1) return RESBM_EINVAL;
    __atomic_store_n(&hub->send_timeout_ms, ms, __ATOMIC_RELAXED);
    return RESBM_OK;
}

RESBMDEF int resbm_inproc_close(resbm_inproc *h, int peer) {
    int i;
    if (!h || peer < 0 || peer >= h->n) return RESBM_EINVAL;
    __atomic_store_n(&h->closed[peer], 1, __ATOMIC_RELEASE);
    for (i = 0; i < h->n; i++) { /* wake everyone waiting on a mailbox of this peer */
        resbm__mailbox *b1 = &h->box[(size_t)peer * (size_t)h->n + (size_t)i];
        resbm__mailbox *b2 = &h->box[(size_t)i * (size_t)h->n + (size_t)peer];
        RESBM__LOCK(b1);
#ifndef RESBM_NO_THREADS
        pthread_cond_broadcast(&b1->cv);
#endif
        RESBM__UNLOCK(b1);
        RESBM__LOCK(b2);
#ifndef RESBM_NO_THREADS
        pthread_cond_broadcast(&b2->cv);
#endif
        RESBM__UNLOCK(b2);
    }
    return RESBM_OK;
}

/* ---- transport conformance -------------------------------------------------------------------- */
/* What a transport may return: anything outside its documented set is RESBM_ETRANSPORT. */
static int resbm__transport_rc(int rc) {
    switch (rc) {
    case RESBM_OK: case RESBM_EINVAL: case RESBM_ETIMEDOUT: case RESBM_ECLOSED:
    case RESBM_ETRANSPORT: case RESBM_EMSGSIZE: return rc;
    default: return RESBM_ETRANSPORT;
    }
}

static int resbm__check_fail(char *why, size_t why_len, const char *what, int rc) {
    int code = resbm__transport_rc(rc);
    if (why && why_len) {
        if (code != rc) /* a positive code would read as success to a caller testing rc < 0 */
            snprintf(why, why_len, "%s (returned %d, not one of a transport's codes)", what, rc);
        else if (rc)
            snprintf(why, why_len, "%s (%s)", what, resbm_strerror(rc));
        else
            snprintf(why, why_len, "%s", what);
    }
    return code ? code : RESBM_ETRANSPORT;
}

/* A message of n bytes whose content depends on its number, to check order and integrity. */
static void resbm__check_fill(unsigned char *b, size_t n, unsigned tag) {
    size_t i;
    for (i = 0; i < n; i++) b[i] = (unsigned char)(i * 31u + tag * 7u + (i >> 8));
}

RESBMDEF int resbm_transport_check(const resbm_transport *a, int a_peer, const resbm_transport *b,
                                   int b_peer, size_t max_message, void *scratch,
                                   size_t scratch_bytes, char *why, size_t why_len) {
    static const size_t fracs[4] = {1, 0, 2, 1}; /* sizes: 1 byte, 0, max/2, max */
    unsigned char *tx, *rx;
    size_t len = 0, sizes[4];
    double t0, dt;
    int k, rc;
    if (why && why_len) why[0] = 0;
    if (!a || !b || !a->send || !a->recv || !b->send || !b->recv || max_message < 2 || !scratch ||
        scratch_bytes / 2 < max_message || a_peer < 0 || b_peer < 0)
        return RESBM_EINVAL;
    tx = (unsigned char *)scratch;
    rx = tx + max_message;
    sizes[0] = 1; sizes[1] = 0; sizes[2] = max_message / fracs[2]; sizes[3] = max_message;
    /* 1. order and whole messages, sent before any is received (send must not wait for recv) */
    for (k = 0; k < 4; k++) {
        resbm__check_fill(tx, sizes[k], (unsigned)k);
        if ((rc = a->send(a->user, a_peer, tx, sizes[k])))
            return resbm__check_fail(why, why_len, "send of a queued message failed (send must not wait for recv)", rc);
    }
    for (k = 0; k < 4; k++) {
        if ((rc = b->recv(b->user, b_peer, rx, max_message, &len, 10000)))
            return resbm__check_fail(why, why_len, "a message sent did not arrive within 10 s", rc);
        resbm__check_fill(tx, sizes[k], (unsigned)k);
        if (len != sizes[k] || memcmp(rx, tx, len))
            return resbm__check_fail(why, why_len, "messages arrived out of order, cut or changed", 0);
    }
    /* 2. nothing queued: a 0 ms poll and a 50 ms wait time out, and promptly */
    t0 = resbm__now();
    if ((rc = b->recv(b->user, b_peer, rx, max_message, &len, 0)) != RESBM_ETIMEDOUT)
        return resbm__check_fail(why, why_len, "a poll of an empty link is not RESBM_ETIMEDOUT", rc);
    t0 = resbm__now();
    rc = b->recv(b->user, b_peer, rx, max_message, &len, 50);
    dt = resbm__now() - t0;
    if (rc != RESBM_ETIMEDOUT) return resbm__check_fail(why, why_len, "a 50 ms wait on an empty link is not RESBM_ETIMEDOUT", rc);
    if (dt < 0.040 || dt > 5.0) return resbm__check_fail(why, why_len, "a 50 ms wait took far more or less than 50 ms", 0);
    /* 3. a message larger than the buffer: RESBM_EMSGSIZE, and it stays for a larger buffer */
    resbm__check_fill(tx, max_message, 9);
    if ((rc = a->send(a->user, a_peer, tx, max_message))) return resbm__check_fail(why, why_len, "send", rc);
    if ((rc = b->recv(b->user, b_peer, rx, max_message - 1, &len, 10000)) != RESBM_EMSGSIZE)
        return resbm__check_fail(why, why_len, "a message larger than the buffer is not RESBM_EMSGSIZE", rc);
    if ((rc = b->recv(b->user, b_peer, rx, max_message, &len, 10000)) || len != max_message || memcmp(rx, tx, len))
        return resbm__check_fail(why, why_len, "the message refused for a small buffer was not kept whole", rc);
    /* 4. both ends send at once, then both receive: neither send may wait for the other's recv */
    resbm__check_fill(tx, max_message, 11);
    if ((rc = a->send(a->user, a_peer, tx, max_message)) || (rc = b->send(b->user, b_peer, tx, max_message)))
        return resbm__check_fail(why, why_len, "simultaneous sends both ways did not both return", rc);
    if ((rc = b->recv(b->user, b_peer, rx, max_message, &len, 10000)) || len != max_message || memcmp(rx, tx, len) ||
        (rc = a->recv(a->user, a_peer, rx, max_message, &len, 10000)) || len != max_message || memcmp(rx, tx, len))
        return resbm__check_fail(why, why_len, "simultaneous sends both ways did not both arrive whole", rc);
    /* 5. a message after a timed-out receive still arrives */
    if ((rc = a->recv(a->user, a_peer, rx, max_message, &len, 20)) != RESBM_ETIMEDOUT)
        return resbm__check_fail(why, why_len, "the reverse link is not empty", rc);
    resbm__check_fill(tx, 3, 5);
    if ((rc = b->send(b->user, b_peer, tx, 3)) || (rc = a->recv(a->user, a_peer, rx, max_message, &len, 10000)) ||
        len != 3 || memcmp(rx, tx, 3))
        return resbm__check_fail(why, why_len, "a message after a timed-out receive did not arrive", rc);
    return RESBM_OK;
}

/* Shaper: each message gets an 8-byte prefix, its arrival time on the sender's CLOCK_MONOTONIC.
   The receiver trusts it only within what its own clock allows. */
struct resbm_shaper {
    resbm_transport inner;
    int n;
    double bps, latency;       /* bytes/s (0 unlimited), seconds */
    size_t max_msg;
    double *busy_until;        /* [n] when the link to each peer is free again */
    unsigned char *sbuf;       /* [max_msg + 8] */
    unsigned char *rbuf;       /* [n][max_msg + 8] */
    size_t *held;              /* [n] bytes of a message taken from the inner transport, not handed over */
    double *due;               /* [n] when that message may be handed over */
};

static int resbm__shaper_send(void *user, int peer, const void *buf, size_t len) {
    resbm_shaper *s = (resbm_shaper *)user;
    double now, start, arrive;
    uint64_t bits;
    int k;
    if (!s || (!buf && len) || peer < 0 || peer >= s->n) return RESBM_EINVAL;
    if (len > s->max_msg) return RESBM_EMSGSIZE;
    now = resbm__now();
    start = RESBM__MAX(now, s->busy_until[peer]);
    s->busy_until[peer] = start + (s->bps > 0 ? (double)(len + 8) / s->bps : 0.0);
    arrive = s->busy_until[peer] + s->latency;
    resbm__sleep_until(start); /* the link still carries the previous message */
    memcpy(&bits, &arrive, 8);
    for (k = 0; k < 8; k++) s->sbuf[k] = (unsigned char)(bits >> (8 * k));
    memcpy(s->sbuf + 8, buf, len);
    return s->inner.send(s->inner.user, peer, s->sbuf, len + 8);
}

static int resbm__shaper_recv(void *user, int peer, void *buf, size_t cap, size_t *len,
                              int timeout_ms) {
    resbm_shaper *s = (resbm_shaper *)user;
    double t0 = resbm__now(), deadline = t0 + (timeout_ms > 0 ? timeout_ms / 1000.0 : 0.0), now;
    unsigned char *rb;
    size_t got;
    int rc;
    if (!s || !buf || !len || peer < 0 || peer >= s->n) return RESBM_EINVAL;
    rb = s->rbuf + (size_t)peer * (s->max_msg + 8);
    if (!s->held[peer]) {
        uint64_t bits = 0;
        double stamp, latest;
        int k;
        got = 0;
        if ((rc = s->inner.recv(s->inner.user, peer, rb, s->max_msg + 8, &got, timeout_ms))) return rc;
        if (got < 8 || got > s->max_msg + 8) return RESBM_ETRANSPORT; /* not from a shaper */
        for (k = 0; k < 8; k++) bits |= (uint64_t)rb[k] << (8 * k);
        memcpy(&stamp, &bits, 8);
        /* at the latest: latency and transfer time from now (a stamp that is NaN, or from a clock
           far ahead, is not believed) */
        latest = resbm__now() + s->latency + (s->bps > 0 ? (double)got / s->bps : 0.0);
        s->due[peer] = stamp <= latest ? stamp : latest;
        s->held[peer] = got;
    }
    got = s->held[peer];
    now = resbm__now();
    if (s->due[peer] > now) {
        if (timeout_ms >= 0 && s->due[peer] > deadline) { /* not due within this call: keep it */
            resbm__sleep_until(deadline);
            return RESBM_ETIMEDOUT;
        }
        resbm__sleep_until(s->due[peer]);
    }
    if (got - 8 > cap) return RESBM_EMSGSIZE; /* held for a larger buffer */
    s->held[peer] = 0;
    memcpy(buf, rb + 8, got - 8);
    *len = got - 8;
    return RESBM_OK;
}

RESBMDEF int resbm_shaper_init(const resbm_transport *inner, int n, double bytes_per_sec,
                               double latency_ms, size_t max_message, resbm_shaper **out) {
    resbm_arena a;
    resbm_shaper *s;
    size_t slot;
    if (!inner || !inner->send || !inner->recv || !out || n < 1 || n > 4096 ||
        !resbm__finite_d(bytes_per_sec) || !resbm__finite_d(latency_ms) ||
        !(bytes_per_sec == 0.0 || (bytes_per_sec >= 1.0 && bytes_per_sec <= 1e15)) ||
        !(latency_ms >= 0.0 && latency_ms <= 1e6) || max_message == 0)
        return RESBM_EINVAL;
    if (resbm_size_add(&slot, max_message, 8)) return RESBM_EOVERFLOW;
    memset(&a, 0, sizeof(a));
    resbm_arena_push(&a, 1, sizeof(resbm_shaper));
    resbm_arena_push(&a, (size_t)n, sizeof(double));
    resbm_arena_push(&a, slot, 1);
    resbm_arena_push(&a, (size_t)n, slot);
    resbm_arena_push(&a, (size_t)n, sizeof(size_t));
    resbm_arena_push(&a, (size_t)n, sizeof(double));
    if (a.overflow) return RESBM_EOVERFLOW;
    a.base = (unsigned char *)resbm__alloc(a.used, NULL);
    if (!a.base) return RESBM_ENOMEM;
    memset(a.base, 0, a.used);
    a.cap = a.used;
    a.used = 0;
    s = (resbm_shaper *)resbm_arena_push(&a, 1, sizeof(resbm_shaper));
    s->inner = *inner;
    s->n = n;
    s->bps = bytes_per_sec;
    s->latency = latency_ms / 1000.0;
    s->max_msg = max_message;
    s->busy_until = (double *)resbm_arena_push(&a, (size_t)n, sizeof(double));
    s->sbuf = (unsigned char *)resbm_arena_push(&a, slot, 1);
    s->rbuf = (unsigned char *)resbm_arena_push(&a, (size_t)n, slot);
    s->held = (size_t *)resbm_arena_push(&a, (size_t)n, sizeof(size_t));
    s->due = (double *)resbm_arena_push(&a, (size_t)n, sizeof(double));
    *out = s;
    return RESBM_OK;
}

RESBMDEF void resbm_shaper_free(resbm_shaper *s) { resbm__dealloc(s, NULL); }

RESBMDEF int resbm_shaper_transport(resbm_shaper *s, resbm_transport *out) {
    if (!s || !out) return RESBM_EINVAL;
    out->user = s;
    out->send = resbm__shaper_send;
    out->recv = resbm__shaper_recv;
    return RESBM_OK;
}

/* ---- stage runtime ---------------------------------------------------------------------------- */
/* The microbatch field of a frame: bits 0-19 the index, 20-23 what the frame is for, 24-31 the
   attempt of the step it belongs to. A step that failed is retried with the next attempt, so a
   frame that a failed attempt left in flight is recognised and dropped instead of consumed. */
enum { RESBM__FOR_TRAIN = 0, RESBM__FOR_EVAL = 1, RESBM__FOR_GEN = 2, RESBM__FOR_JOB = 3,
       RESBM__FOR_ABORT = 4 };
#define RESBM__MICRO(att, purpose, index)                                                         \
    ((uint32_t)(att) << 24 | (uint32_t)(purpose) << 20 | ((uint32_t)(index) & 0xfffffu))
#define RESBM__MAX_INDEX 0xfffffu
#define RESBM__MAX_ATTEMPT 255

/* The job two neighbouring stages must agree on before either applies an update: everything
   whose difference would train another model than the one asked for. Each value goes on the
   wire as a u32 split into two exact 16-bit halves; floats by their bits. */
enum { RESBM__JOB_STAGES, RESBM__JOB_VOCAB, RESBM__JOB_D, RESBM__JOB_LAYERS, RESBM__JOB_HEADS,
       RESBM__JOB_FF, RESBM__JOB_SEQ, RESBM__JOB_BATCH, RESBM__JOB_NMICRO, RESBM__JOB_R,
       RESBM__JOB_M, RESBM__JOB_IDENTITY, RESBM__JOB_WIRE_FWD, RESBM__JOB_WIRE_BWD,
       RESBM__JOB_OPT, RESBM__JOB_LR, RESBM__JOB_MIN_LR, RESBM__JOB_WARMUP, RESBM__JOB_TOTAL,
       RESBM__JOB_BETA1, RESBM__JOB_BETA2, RESBM__JOB_EPS, RESBM__JOB_WD, RESBM__JOB_CLIP,
       RESBM__JOB_MUON_LR, RESBM__JOB_MUON_MOM, RESBM__JOB_MUON_NS, RESBM__JOB_BLR,
       RESBM__JOB_SEED_HI, RESBM__JOB_SEED_LO, RESBM__JOB_INIT_STD, RESBM__JOB_ARCH_HI, RESBM__JOB_ARCH_LO, RESBM__JOB_EXTRA, RESBM__JOB_SCHEDULE, RESBM__JOB_PREDICT, RESBM__JOB_ASYNC_WARMUP, RESBM__JOB_STEP_HI,
       RESBM__JOB_STEP_LO, RESBM__JOB_N };
static const char *const resbm__job_names[RESBM__JOB_N] = {
    "stages", "vocab", "d", "layers", "heads", "ff", "seq", "batch (rows per microbatch)",
    "n_micro", "r", "m", "no_identity", "wire_fwd", "wire_bwd", "optimizer", "lr", "min_lr_frac",
    "warmup", "total_steps", "beta1", "beta2", "eps", "weight_decay", "clip", "muon_lr",
    "muon_momentum", "muon_ns_steps", "bottleneck_lr_scale", "seed (high 32 bits)", "seed",
    "init_std", "host layers' architecture (hash, high 32 bits)", "host layers' architecture (hash)",
    "forwards in flight beyond 1F1B (act_budget_bytes)", "schedule (0 exact, 1 async)", "predict", "async_warmup (exact steps first)",
    "step (high 32 bits)", "step"};
/* which of them are floats (printed as such in a mismatch) */
#define RESBM__JOB_IS_FLOAT(i)                                                                     \
    ((i) == RESBM__JOB_LR || (i) == RESBM__JOB_MIN_LR || ((i) >= RESBM__JOB_BETA1 &&             \
     (i) <= RESBM__JOB_MUON_MOM) || (i) == RESBM__JOB_BLR || (i) == RESBM__JOB_INIT_STD ||         \
     (i) == RESBM__JOB_PREDICT)
/* a hello: [0 hello | 1 answer, attempt, then two halves of each field] */
#define RESBM__JOB_FLOATS (2 + 2 * RESBM__JOB_N)

struct resbm_stage {
    resbm_stage_config cfg;
    resbm_model *model;
    int s, S, n, slots;
    size_t Nmb, w;                /* tokens per microbatch, row width on the wire */
    size_t frame_cap;
    unsigned char *sbuf, *rbuf;   /* [frame_cap] */
    float *zin, *zout, *dzin, *dxout; /* [Nmb, w] */
    int32_t *win, *zeros;         /* [T] sampling window, dummy targets */
    float *norms;                 /* [S + 1] the squared norms of this stage and those after, the loss */
    uint64_t step;                /* = the model's update count */
    uint64_t tag;                 /* the step the frames being sent and received belong to */
    int attempt;                  /* of this step: 0, and one more after each failure */
    int agreed[2], hello_sent;    /* job agreement with the previous and the next stage */
    int missed;                   /* a call failed before agreement (until one starts agreed) */
    int suspect[2];               /* since then agreed on that side's hello (not its answer to
                                     ours): the neighbour may have failed a call this stage missed,
                                     at the attempt this stage runs now (see abort_in) */
    int busy;                     /* a call runs: another one (from a callback, or a second
                                     thread) is refused instead of taking its frames */
    unsigned synced_loads;        /* the model's checkpoint loads when the last call ended */
    int pool_attached;            /* this stage holds cfg.model.pool's stage slot */
    int polling;                  /* looking for a neighbour's abort after a failed send */
    int extra;                    /* forwards in flight beyond 1F1B's (the same on every stage) */
    float last_loss;              /* the loss of step stats.loss_step */
    /* the async stream (model->in_stream while it holds steps): batch b is step base + b */
    int64_t calls;                  /* calls since the stream started */
    uint64_t base, lo;            /* the model's step at its start; the oldest step still live */
    int64_t gbatch, pbatch;         /* the batch whose gradient is in the grads / in pending (-1) */
    float *prev, *pending;        /* [nfloats] the weights before the last update; a gradient */
    float *master, *mprev;        /* predict > 0: the weights proper, and before the last update */
    int predicted;                /* the parameters hold a prediction, the weights are in master */
    float queue[2][2];            /* stage 0: [total, loss] of batch b, by b % 2, until its commit */
    double loss_acc;              /* last stage: the loss sum of the batch being forwarded */
    uint32_t job[RESBM__JOB_N];
    int abort_code, abort_origin, abort_from; /* the neighbour's failure that failed this call */
    int abort_late;               /* it failed a call this stage had already returned */
    uint32_t abort_call;          /* the stream call it names (passed on with it) */
    unsigned entered;             /* calls begun (wrapping) */
    unsigned applied_in;          /* the call, and the attempt, that applied the last update */
    int applied_att;
    char why[192];                /* the last failure, one line */
    resbm_stage_stats stats;
};

RESBMDEF float resbm_clip_scale(const resbm_opt_config *o, double total) {
    double norm;
    if (!resbm__finite_d(total) || !(total >= 0.0)) return resbm__bitsf(0x7fc00000u); /* NaN */
    if (!o || o->kind == RESBM_OPT_SGD || !(o->clip > 0.0f)) return 1.0f;
    norm = sqrt(total);
    return norm > o->clip ? (float)(o->clip / (norm + 1e-6)) : 1.0f;
}

RESBMDEF resbm_stage_config resbm_stage_config_default(void) {
    resbm_stage_config c;
    memset(&c, 0, sizeof(c));
    c.model = resbm_model_config_default();
    c.opt = resbm_opt_config_default();
    c.n_micro = 1;
    c.wire_fwd = c.wire_bwd = RESBM_WIRE_F32;
    c.timeout_ms = 60000;
    c.predict = 2.0f;
    return c;
}

RESBMDEF void resbm_stage_free(resbm_stage *st) {
    if (!st) return;
    if (st->pool_attached) __atomic_store_n(&st->cfg.model.pool->stage_attached, 0, __ATOMIC_RELEASE);
    resbm_model_free(st->model);
    resbm__dealloc(st, st->cfg.model.alloc_user);
}

static void resbm__stage_job(resbm_stage *st) {
    const resbm_model_config *c = &st->model->cfg;
    const resbm_opt_config *o = &st->model->opt;
    uint32_t *j = st->job;
    j[RESBM__JOB_STAGES] = (uint32_t)c->stages; j[RESBM__JOB_VOCAB] = (uint32_t)c->vocab;
    j[RESBM__JOB_D] = (uint32_t)c->d; j[RESBM__JOB_LAYERS] = (uint32_t)c->layers;
    j[RESBM__JOB_HEADS] = (uint32_t)c->heads; j[RESBM__JOB_FF] = (uint32_t)c->ff;
    j[RESBM__JOB_SEQ] = (uint32_t)c->seq; j[RESBM__JOB_BATCH] = (uint32_t)c->batch;
    j[RESBM__JOB_NMICRO] = (uint32_t)st->n; j[RESBM__JOB_R] = (uint32_t)c->r;
    j[RESBM__JOB_M] = (uint32_t)c->m; j[RESBM__JOB_IDENTITY] = (uint32_t)c->no_identity;
    j[RESBM__JOB_WIRE_FWD] = (uint32_t)st->cfg.wire_fwd;
    j[RESBM__JOB_WIRE_BWD] = (uint32_t)st->cfg.wire_bwd;
    j[RESBM__JOB_OPT] = (uint32_t)o->kind; j[RESBM__JOB_LR] = resbm__fbits(o->lr);
    j[RESBM__JOB_MIN_LR] = resbm__fbits(o->min_lr_frac);
    j[RESBM__JOB_WARMUP] = (uint32_t)o->warmup; j[RESBM__JOB_TOTAL] = (uint32_t)o->total_steps;
    j[RESBM__JOB_BETA1] = resbm__fbits(o->beta1); j[RESBM__JOB_BETA2] = resbm__fbits(o->beta2);
    j[RESBM__JOB_EPS] = resbm__fbits(o->eps); j[RESBM__JOB_WD] = resbm__fbits(o->weight_decay);
    j[RESBM__JOB_CLIP] = resbm__fbits(o->clip); j[RESBM__JOB_MUON_LR] = resbm__fbits(o->muon_lr);
    j[RESBM__JOB_MUON_MOM] = resbm__fbits(o->muon_momentum);
    j[RESBM__JOB_MUON_NS] = (uint32_t)o->muon_ns_steps;
    j[RESBM__JOB_BLR] = resbm__fbits(o->bottleneck_lr_scale);
    j[RESBM__JOB_SEED_HI] = (uint32_t)(c->seed >> 32); j[RESBM__JOB_SEED_LO] = (uint32_t)c->seed;
    j[RESBM__JOB_INIT_STD] = resbm__fbits(c->init_std);
    j[RESBM__JOB_ARCH_HI] = (uint32_t)(resbm__arch_hash(st->model) >> 32);
    j[RESBM__JOB_ARCH_LO] = (uint32_t)resbm__arch_hash(st->model);
    j[RESBM__JOB_EXTRA] = (uint32_t)st->extra;
    j[RESBM__JOB_SCHEDULE] = (uint32_t)st->cfg.schedule;
    j[RESBM__JOB_PREDICT] = resbm__fbits(st->cfg.schedule == RESBM_SCHEDULE_ASYNC && st->cfg.predict > 0.0f
                                         ? st->cfg.predict : 0.0f); /* -0 is 0 */
    j[RESBM__JOB_ASYNC_WARMUP] = st->cfg.schedule == RESBM_SCHEDULE_ASYNC ? (uint32_t)st->cfg.async_warmup : 0;
    j[RESBM__JOB_STEP_HI] = (uint32_t)((uint64_t)st->model->step >> 32);
    j[RESBM__JOB_STEP_LO] = (uint32_t)(uint64_t)st->model->step;
}

/* The largest frame: an activation or gradient in f32 or i8 (the larger), a hello, or the
   norms of S stages and the loss. */
static int resbm__frame_cap(size_t Nmb, size_t w, size_t S, size_t *out) {
    size_t pb, pb2, ctl = (size_t)4 * RESBM__MAX((size_t)RESBM__JOB_FLOATS, S + 1);
    if (Nmb > 0xffffffffu || resbm_wire_payload_bytes(RESBM_WIRE_F32, Nmb, w, &pb) ||
        resbm_wire_payload_bytes(RESBM_WIRE_I8, Nmb, w, &pb2) ||
        resbm_size_add(out, RESBM_FRAME_HEADER, RESBM__MAX(RESBM__MAX(pb, pb2), ctl)))
        return RESBM_EOVERFLOW;
    return RESBM_OK;
}

RESBMDEF int resbm_stage_max_frame(const resbm_stage_config *cfg, size_t *bytes) {
    resbm_model_config mc;
    resbm_opt_config oc;
    if (!cfg || !bytes) return RESBM_EINVAL;
    mc = cfg->model;
    oc = cfg->opt;
    RESBM__TRY(resbm__resolve(&mc, &oc, !mc.host));
    return resbm__frame_cap((size_t)mc.batch * (size_t)mc.seq, (size_t)mc.r, (size_t)mc.stages, bytes);
}

/* Forwards in flight: 1F1B's S - s (or n_micro if fewer), plus what act_budget_bytes buys. */
/* One slot of activations more, as the sizing pass of stage `stage` counts it. */
static int resbm__slot_bytes(const resbm_stage_config *cfg, int stage, size_t *bytes) {
    resbm_model_config mc = cfg->model;
    size_t one, two;
    mc.stage = stage;
    mc.act_slots = 1;
    RESBM__TRY(resbm__model_create(&mc, &cfg->opt, -1, NULL, &one));
    mc.act_slots = 2;
    RESBM__TRY(resbm__model_create(&mc, &cfg->opt, -1, NULL, &two));
    *bytes = two > one ? two - one : 1;
    return RESBM_OK;
}

/* Forwards in flight on this stage: 1F1B's S - s (or n_micro if fewer) plus `extra`, at most
   n - s, the last stage none extra. `extra` is what act_budget_bytes buys on the stage whose
   slots are largest, so it is the same number on every stage of one job (it is in the job
   agreement): stage s then keeps one forward more than stage s + 1 wherever the cap does not
   bind. A deeper stage after a shallower one would wait for an activation its predecessor only
   sends after the gradient it is itself waiting for. Host layers keep 1F1B's depth (the library
   cannot size the host's activations).
   Async: stage 0 keeps min(min(S, n) + extra, n) and the depths fall evenly to the last stage's
   1 (never below 1F1B's). Between stages s and s + 1, D_s - D_{s+1} microbatches are on their
   way over the link (an activation going, its gradient coming back); a stream never drains, so
   each link needs that many to cover its own round trip, where one more than the next allows
   one per round trip (the simulator: 37% of the 0 ms rate at 50 ms, 85% spread evenly). At most
   n on stage 0: its call c + 1 then needs a gradient the last stage sends in its own call c + 1,
   so no stage gets two updates ahead of another (one backup undoes one); n + 1 let stage 0
   finish call c + 1 and apply a second update after the last stage had failed. */
static int resbm__stage_depth(const resbm_stage_config *cfg, int *slots, int *extra_out, size_t *slot_bytes) {
    size_t b, fit = (size_t)-1;
    int S, n, s, base, base0, extra = 0, t;
    if (!cfg || !slots) return RESBM_EINVAL;
    S = cfg->model.stages ? cfg->model.stages : 1;
    n = cfg->n_micro ? cfg->n_micro : 1;
    s = cfg->model.stage;
    if (s < 0 || s >= S || n < 0) return RESBM_EINVAL;
    base = RESBM__MIN(S - s, n);
    base0 = RESBM__MIN(S, n);
    if (slot_bytes && !cfg->model.host) RESBM__TRY(resbm__slot_bytes(cfg, s, slot_bytes));
    if (cfg->act_budget_bytes && !cfg->model.host && S > 1) {
        for (t = 0; t < S - 1; t++) { /* the same answer on every stage */
            RESBM__TRY(resbm__slot_bytes(cfg, t, &b));
            fit = RESBM__MIN(fit, cfg->act_budget_bytes / b);
        }
        extra = (int)RESBM__MIN(fit, (size_t)n);
    }
    if (cfg->schedule == RESBM_SCHEDULE_ASYNC && s < S - 1) {
        int top = RESBM__MIN(base0 + extra, n); /* stage 0's */
        *slots = RESBM__MAX(base, 1 + (int)((long)(S - 1 - s) * (top - 1) / (S - 1)));
    } else {
        *slots = s < S - 1 ? RESBM__MAX(base, RESBM__MIN(base + extra, n - s)) : base;
    }
    if (extra_out) *extra_out = extra;
    return RESBM_OK;
}

/* Everything of a stage config but the transport (resbm_stage_slots sizes a stage before its
   transport exists): what resbm_stage_init refuses, resbm_stage_slots refuses too. */
static int resbm__stage_config_ok(const resbm_stage_config *cfg) {
    resbm_model_config mc;
    resbm_opt_config oc;
    int S;
    if (!cfg || cfg->n_micro < 0 || cfg->n_micro > (int)RESBM__MAX_INDEX || cfg->wire_fwd < RESBM_WIRE_F32 ||
        cfg->wire_fwd > RESBM_WIRE_I8 || cfg->wire_bwd < RESBM_WIRE_F32 ||
        cfg->wire_bwd > RESBM_WIRE_I8 || cfg->timeout_ms < -1 || !resbm__finite_d(cfg->link_bytes_per_sec) ||
        (cfg->schedule != RESBM_SCHEDULE_EXACT && cfg->schedule != RESBM_SCHEDULE_ASYNC) ||
        !resbm__finite(cfg->predict) || !(cfg->predict >= 0.0f && cfg->predict <= 16.0f) || cfg->async_warmup < 0 ||
        !(cfg->link_bytes_per_sec >= 0.0 && cfg->link_bytes_per_sec < 1e300))
        return RESBM_EINVAL;
    S = cfg->model.stages ? cfg->model.stages : 1;
    if (S < 1 || cfg->model.stage < 0 || cfg->model.stage >= S) return RESBM_EINVAL;
    mc = cfg->model;
    oc = cfg->opt;
    if (mc.host) RESBM__TRY(resbm__layers_ok(mc.host, mc.alloc_user));
    return resbm__resolve(&mc, &oc, !mc.host);
}

RESBMDEF int resbm_stage_slots(const resbm_stage_config *cfg, int *slots) {
    if (!slots) return RESBM_EINVAL;
    RESBM__TRY(resbm__stage_config_ok(cfg));
    return resbm__stage_depth(cfg, slots, NULL, NULL);
}

RESBMDEF int resbm_stage_init(const resbm_stage_config *cfg, resbm_stage **out) {
    resbm_stage tmp, *st;
    resbm_model_config mc;
    resbm_arena a;
    size_t zf;
    int rc;
    if (!cfg || !out || !cfg->transport.send || !cfg->transport.recv) return RESBM_EINVAL;
    RESBM__TRY(resbm__stage_config_ok(cfg));
    memset(&tmp, 0, sizeof(tmp));
    tmp.cfg = *cfg;
    if (!tmp.cfg.n_micro) tmp.cfg.n_micro = 1;
    if (!tmp.cfg.timeout_ms) tmp.cfg.timeout_ms = 60000;
    mc = tmp.cfg.model;
    tmp.S = mc.stages ? mc.stages : 1;
    tmp.s = mc.stage;
    tmp.n = tmp.cfg.n_micro;
    if (tmp.S < 1 || tmp.s < 0 || tmp.s >= tmp.S) return RESBM_EINVAL;
    RESBM__TRY(resbm__stage_depth(&tmp.cfg, &tmp.slots, &tmp.extra, &tmp.stats.slot_bytes));
    if (tmp.slots < 1) return RESBM_EINVAL;
    tmp.stats.in_flight = tmp.slots;
    mc.act_slots = tmp.slots;
    /* a pool's buffers serve one caller at a time: two stages on threads would collide */
    if (mc.pool) {
        int free_slot = 0;
        if (!__atomic_compare_exchange_n(&mc.pool->stage_attached, &free_slot, 1, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            return RESBM_ESTATE;
        tmp.pool_attached = 1;
    }
    if ((rc = resbm_model_init(&mc, &tmp.cfg.opt, &tmp.model))) {
        if (tmp.pool_attached) __atomic_store_n(&mc.pool->stage_attached, 0, __ATOMIC_RELEASE);
        return rc;
    }
    tmp.cfg.model = tmp.model->cfg;
    tmp.Nmb = (size_t)tmp.model->cfg.batch * (size_t)tmp.model->cfg.seq;
    tmp.w = tmp.model->r;
    if (resbm__frame_cap(tmp.Nmb, tmp.w, (size_t)tmp.S, &tmp.frame_cap) || resbm_size_mul(&zf, tmp.Nmb, tmp.w)) {
        rc = RESBM_EOVERFLOW;
        goto fail;
    }
    if (tmp.cfg.link_bytes_per_sec > 0.0 && tmp.cfg.timeout_ms > 0) { /* the timeout rule */
        size_t bf = 0, bb = 0;
        double ms;
        resbm_wire_payload_bytes(tmp.cfg.wire_fwd, tmp.Nmb, tmp.w, &bf);
        resbm_wire_payload_bytes(tmp.cfg.wire_bwd, tmp.Nmb, tmp.w, &bb);
        ms = (double)tmp.cfg.timeout_ms + 1000.0 * (double)tmp.n *
             (double)(RESBM_FRAME_HEADER + RESBM__MAX(bf, bb)) / tmp.cfg.link_bytes_per_sec;
        tmp.cfg.timeout_ms = (int)RESBM__MIN(ceil(ms), 2147483647.0);
    }
    memset(&a, 0, sizeof(a));
    resbm_arena_push(&a, 1, sizeof(resbm_stage));
    resbm_arena_push(&a, 2, tmp.frame_cap);
    resbm_arena_push(&a, 4 * zf, sizeof(float));
    resbm_arena_push(&a, (size_t)tmp.S + 1, sizeof(float));
    resbm_arena_push(&a, 2 * (size_t)tmp.model->cfg.seq, sizeof(int32_t));
    if (tmp.cfg.schedule == RESBM_SCHEDULE_ASYNC) { /* prev, pending (, master, mprev) */
        size_t nv;
        if (resbm_size_mul(&nv, tmp.cfg.predict > 0.0f ? 4 : 2, tmp.model->nfloats)) { rc = RESBM_EOVERFLOW; goto fail; }
        resbm_arena_push(&a, nv, sizeof(float));
    }
    if (a.overflow) { rc = RESBM_EOVERFLOW; goto fail; }
    a.base = (unsigned char *)resbm__alloc(a.used, mc.alloc_user);
    if (!a.base) { rc = RESBM_ENOMEM; goto fail; }
    memset(a.base, 0, a.used);
    a.cap = a.used;
    a.used = 0;
    st = (resbm_stage *)resbm_arena_push(&a, 1, sizeof(resbm_stage));
    *st = tmp;
    st->sbuf = (unsigned char *)resbm_arena_push(&a, 2, tmp.frame_cap);
    st->rbuf = st->sbuf + tmp.frame_cap;
    st->zin = (float *)resbm_arena_push(&a, 4 * zf, sizeof(float));
    st->zout = st->zin + zf;
    st->dzin = st->zout + zf;
    st->dxout = st->dzin + zf;
    st->norms = (float *)resbm_arena_push(&a, (size_t)tmp.S + 1, sizeof(float));
    st->win = (int32_t *)resbm_arena_push(&a, 2 * (size_t)tmp.model->cfg.seq, sizeof(int32_t));
    st->zeros = st->win + tmp.model->cfg.seq;
    if (tmp.cfg.schedule == RESBM_SCHEDULE_ASYNC) {
        st->prev = (float *)resbm_arena_push(&a, (tmp.cfg.predict > 0.0f ? 4 : 2) * tmp.model->nfloats, sizeof(float));
        st->pending = st->prev + tmp.model->nfloats;
        if (tmp.cfg.predict > 0.0f) {
            st->master = st->pending + tmp.model->nfloats;
            st->mprev = st->master + tmp.model->nfloats;
        }
    }
    st->pbatch = -1;
    st->stats.loss_step = -1;
    st->stats.memory_bytes = a.cap + resbm_model_bytes(st->model);
    st->agreed[0] = st->s == 0;          /* no previous stage */
    st->agreed[1] = st->s == st->S - 1;  /* no next stage */
    st->synced_loads = st->model->loads;
    *out = st;
    return RESBM_OK;
fail:
    if (tmp.pool_attached) __atomic_store_n(&mc.pool->stage_attached, 0, __ATOMIC_RELEASE);
    resbm_model_free(tmp.model);
    return rc;
}

RESBMDEF resbm_model *resbm_stage_model(resbm_stage *st) { return st ? st->model : NULL; }

RESBMDEF int resbm_stage_get_stats(const resbm_stage *st, resbm_stage_stats *out) {
    if (!st || !out) return RESBM_EINVAL;
    *out = st->stats;
    return RESBM_OK;
}

RESBMDEF const char *resbm_stage_why(const resbm_stage *st) { return st ? st->why : ""; }

static int resbm__stage_poll_abort(resbm_stage *st, int from);

static int resbm__stage_send(resbm_stage *st, int kind, int dtype, int to, uint32_t micro,
                             size_t rows, size_t cols, const float *x) {
    resbm_frame_info f;
    size_t len;
    double t0;
    int rc;
    f.kind = kind; f.dtype = dtype; f.from_stage = (unsigned)st->s; f.to_stage = (unsigned)to;
    f.step = st->tag; f.micro = micro; f.rows = (uint32_t)rows; f.cols = (uint32_t)cols;
    RESBM__TRY(resbm_frame_encode(st->sbuf, st->frame_cap, &len, &f, x));
    t0 = resbm__now();
    rc = st->cfg.transport.send(st->cfg.transport.user, to, st->sbuf, len);
    st->stats.wait_s += resbm__now() - t0;
    if (rc) {
        rc = resbm__transport_rc(rc);
        /* a peer that stopped reading may have said why: its abort waits in the other direction */
        if ((rc == RESBM_ETIMEDOUT || rc == RESBM_ECLOSED) && !st->polling) {
            int prc;
            st->polling = 1;
            prc = resbm__stage_poll_abort(st, to);
            st->polling = 0;
            if (prc == RESBM_EPEER) return prc;
        }
        return rc;
    }
    st->stats.bytes_sent[kind] += len;
    st->stats.frames_sent[kind]++;
    return RESBM_OK;
}

static int resbm__stage_hello(resbm_stage *st, int to, int answer) {
    float v[RESBM__JOB_FLOATS];
    int i;
    resbm__stage_job(st);
    v[0] = (float)answer;
    v[1] = (float)st->attempt;
    for (i = 0; i < RESBM__JOB_N; i++) {
        v[2 + 2 * i] = (float)(st->job[i] >> 16);
        v[3 + 2 * i] = (float)(st->job[i] & 0xffffu);
    }
    return resbm__stage_send(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, to,
                             RESBM__MICRO(0, RESBM__FOR_JOB, 0), 1, RESBM__JOB_FLOATS, v);
}

/* A neighbour's hello (or its answer to ours): the same job, field by field, or RESBM_EJOB
   naming the first field that differs. A neighbour we had agreed with that says hello again has
   restarted (or reloaded): it waits for our answer. */
static int resbm__stage_hello_in(resbm_stage *st, int from, const resbm_frame_info *f, size_t len) {
    float v[RESBM__JOB_FLOATS];
    resbm_frame_info e = *f;
    int i, side = from > st->s, rc;
    e.kind = RESBM_KIND_CONTROL; e.dtype = RESBM_WIRE_F32; e.rows = 1; e.cols = RESBM__JOB_FLOATS;
    if ((rc = resbm_frame_decode(v, RESBM__JOB_FLOATS, st->rbuf, len, &e))) return rc;
    resbm__stage_job(st);
    /* on a mismatch this side is not agreed any more, and the next call says hello again: the
       neighbour may fix its side (reload) after it consumed our last hello, and then waits for
       a new one */
    for (i = 0; i < RESBM__JOB_FLOATS; i++)
        if (!(v[i] >= 0.0f && v[i] <= 65535.0f && v[i] == (float)(int)v[i]) ||
            (i < 2 && v[i] > (i ? (float)RESBM__MAX_ATTEMPT : 1.0f))) {
            snprintf(st->why, sizeof(st->why), "stage %d sent a malformed job description", from);
            st->agreed[side] = 0; st->hello_sent = 0;
            return RESBM_EJOB;
        }
    /* a neighbour that restarted waits for our answer, match or not: so it too learns the truth */
    if (st->agreed[side] && v[0] == 0.0f) RESBM__TRY(resbm__stage_hello(st, from, 1));
    for (i = 0; i < RESBM__JOB_N; i++) {
        uint32_t theirs = (uint32_t)v[2 + 2 * i] << 16 | (uint32_t)v[3 + 2 * i];
        if (theirs != st->job[i]) {
            if (RESBM__JOB_IS_FLOAT(i))
                snprintf(st->why, sizeof(st->why), "stages %d and %d run different jobs: %s is %g here, %g at stage %d",
                         st->s, from, resbm__job_names[i], (double)resbm__bitsf(st->job[i]),
                         (double)resbm__bitsf(theirs), from);
            else
                snprintf(st->why, sizeof(st->why), "stages %d and %d run different jobs: %s is %lu here, %lu at stage %d",
                         st->s, from, resbm__job_names[i], (unsigned long)st->job[i], (unsigned long)theirs, from);
            st->agreed[side] = 0; st->hello_sent = 0;
            return RESBM_EJOB;
        }
    }
    if ((int)v[1] > st->attempt) st->attempt = (int)v[1]; /* a restarted peer starts at 0 */
    if (!st->agreed[side]) st->suspect[side] = st->missed && v[0] == 0.0f; /* an answer is of now */
    st->agreed[side] = 1;
    return RESBM_OK;
}

/* Squared gradient norms from a peer (finite: the decoder checked): none negative, or the clip
   would take the root of a negative total and silently not clip. */
static int resbm__sqnorms_ok(const float *sq, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (!(sq[i] >= 0.0f)) return RESBM_ERANGE;
    return RESBM_OK;
}

/* Undoes this stage's last update (another stage could not apply it). */
static int resbm__stage_undo(resbm_stage *st) {
    if (!st->model->has_backup || st->model->step != (long)st->step) return RESBM_ESTATE;
    st->predicted = 0; /* the backup holds the weights proper, from before the update */
    RESBM__TRY(resbm__model_rollback(st->model));
    st->step = (uint64_t)st->model->step;
    if (st->stats.loss_step >= st->model->step) st->stats.loss_step = -1; /* its loss is no step's */
    return RESBM_OK;
}

/* The stream call under way, as an abort's index field names it: 1 + its number (wrapping). */
static uint32_t resbm__stream_call(const resbm_stage *st) {
    return 1u + (uint32_t)((uint64_t)st->calls % RESBM__MAX_INDEX);
}

/* A neighbour failed: [code, stage where it happened]. For this step's attempt (or a later
   one) this call fails too; for the step this stage already applied, that update is undone
   (another stage could not apply it). Anything older is left over and dropped.
   Late: the neighbour failed a call this stage had already returned (the step's update applied
   and its commit lost further on, or a later stage could not apply it; async, the last frames
   of a stream call lost after this stage finished it; or this stage failed a call before
   agreement (its wait for a hello timed out, say), and the neighbour, agreed on ours, failed the
   call without this one, at the attempt of its hello this stage agreed on since). Its host took
   that call as done, and this one as the next; so this call is the next attempt, and it fails,
   and every neighbour, the sender too (whose next call runs that attempt now), must fail it with
   this one, or hosts that wait for every stage each round would stay a call apart. */
static int resbm__stage_abort_in(resbm_stage *st, int from, const resbm_frame_info *f, size_t len,
                                 int *stale) {
    float v[2];
    resbm_frame_info e = *f;
    int rc, undo, late, att = (int)(f->micro >> 24);
    uint32_t call = f->micro & RESBM__MAX_INDEX; /* the stream call of the failure (0: none named) */
    int late_call = call && st->model->in_stream && call != resbm__stream_call(st);
    *stale = 0;
    e.kind = RESBM_KIND_CONTROL; e.dtype = RESBM_WIRE_F32; e.rows = 1; e.cols = 2;
    if ((rc = resbm_frame_decode(v, 2, st->rbuf, len, &e))) return rc;
    if (!(v[0] <= -1.0f && v[0] >= -127.0f && v[0] == (float)(int)v[0] && v[1] >= 0.0f &&
          v[1] < (float)st->S && v[1] == (float)(int)v[1]))
        return RESBM_ERANGE;
    undo = f->step + 1 == st->step && st->model->has_backup && st->model->step == (long)st->step &&
           att >= st->applied_att;
    if (!undo && !(f->step == st->step && att >= st->attempt)) {
        *stale = 1;
        return RESBM_OK;
    }
    late = (late_call || (undo && st->applied_in != st->entered && att == st->applied_att) ||
            (!undo && st->suspect[from > st->s] && att == st->attempt)) &&
           att + 1 < RESBM__MAX_ATTEMPT; /* (else no attempt is left to tell them with) */
    if (undo) RESBM__TRY(resbm__stage_undo(st));
    st->attempt = late ? att + 1 : att;
    st->abort_late = late;
    if (undo)
        snprintf(st->why, sizeof(st->why), "stage %d could not finish step %lu (%s), so this stage undid it",
                 (int)v[1], (unsigned long)f->step, resbm_strerror((int)v[0]));
    else
        snprintf(st->why, sizeof(st->why), "stage %d failed step %lu: %s", (int)v[1],
                 (unsigned long)f->step, resbm_strerror((int)v[0]));
    st->stats.frames_recv[RESBM_KIND_CONTROL]++;
    st->abort_call = call;
    st->abort_code = (int)v[0];
    st->abort_origin = (int)v[1];
    st->abort_from = from;
    return RESBM_EPEER;
}

/* Receives the frame described by the arguments from `from`, all within one timeout: frames a
   failed attempt left behind are dropped, a neighbour's hello is answered, and a neighbour's
   abort fails the call with RESBM_EPEER. Everything else must be exactly the frame expected.
   Waiting for a hello, one that does not match is judged again by any newer one already queued
   (a neighbour fixed after a while of failed calls has left a hello of each behind). */
static int resbm__stage_recv(resbm_stage *st, int kind, int dtype, int from, uint32_t micro,
                             size_t rows, size_t cols, float *x) {
    double deadline = resbm__now() + (st->cfg.timeout_ms > 0 ? st->cfg.timeout_ms / 1000.0 : 0.0);
    unsigned want_for = (micro >> 20) & 15u;
    float scratch[RESBM__JOB_FLOATS]; /* where a frame lands that was expected to be a hello */
    size_t passed = 0, late = 0;      /* frames dropped or handled on the way; after the deadline */
    int mismatch = 0;                 /* a hello did not match: only what is queued is read now */
    for (;; passed++) {
        resbm_frame_info f, e;
        size_t len = 0;
        double t0 = resbm__now();
        int rc, whole, wait_ms = st->cfg.timeout_ms;
        /* frames that keep coming (a peer or a transport redelivering old ones) do not stretch
           the wait: past the deadline (a poll's is at once) what is already queued is still
           read, without waiting, up to 1024 frames */
        if (mismatch) wait_ms = 0;
        if (passed && wait_ms >= 0 && (wait_ms == 0 || t0 >= deadline) && late++ >= 1024)
            return mismatch ? RESBM_EJOB : RESBM_ETIMEDOUT;
        if (wait_ms > 0) {
            double left = deadline - t0;
            wait_ms = left > 0.0 ? (int)RESBM__MIN(ceil(left * 1000.0), 2147483647.0) : 0;
        }
        rc = st->cfg.transport.recv(st->cfg.transport.user, from, st->rbuf, st->frame_cap, &len, wait_ms);
        st->stats.wait_s += resbm__now() - t0;
        if (rc) return mismatch && rc == RESBM_ETIMEDOUT ? RESBM_EJOB : resbm__transport_rc(rc);
        if (len > st->frame_cap) return RESBM_ETRANSPORT; /* a transport that broke its contract */
        whole = !resbm_frame_peek(st->rbuf, len, &f) && f.from_stage == (unsigned)from; /* one CRC pass */
        if (whole && f.to_stage == (unsigned)st->s && f.kind == RESBM_KIND_CONTROL) {
            unsigned purpose = (f.micro >> 20) & 15u;
            if (purpose == RESBM__FOR_JOB) {
                rc = resbm__stage_hello_in(st, from, &f, len);
                mismatch = rc == RESBM_EJOB && want_for == RESBM__FOR_JOB;
                if (mismatch) continue;
                RESBM__TRY(rc);
                if (want_for == RESBM__FOR_JOB) {
                    st->why[0] = 0; /* an older hello's mismatch is no failure */
                    return RESBM_OK;
                }
                continue;
            }
            if (purpose == RESBM__FOR_ABORT && want_for != RESBM__FOR_JOB) { /* (while the job is not
                agreed, a neighbour's abort is about steps this stage took no part in: dropped
                below, and the hello's answer brings its attempt up to date) */
                int stale;
                rc = resbm__stage_abort_in(st, from, &f, len, &stale);
                if (!stale) return rc;
                continue;
            }
        }
        if (whole && (want_for == RESBM__FOR_JOB ||
                      (st->model->in_stream ? (int)(f.micro >> 24) < st->attempt || f.step < st->lo
                                            : f.step < st->step ||
                                              (f.step == st->step && (int)(f.micro >> 24) < st->attempt) ||
                                              (st->attempt > 0 && f.step == st->step + 1))))
            continue; /* left over from a failed attempt (an async stream is one attempt), a step
                         a neighbour undid, or (while waiting for its hello) from before this
                         stage was reloaded or restarted */
        st->stats.bytes_recv[kind] += len;
        st->stats.frames_recv[kind]++;
        e.kind = kind; e.dtype = dtype; e.from_stage = (unsigned)from; e.to_stage = (unsigned)st->s;
        e.step = st->tag; e.micro = micro; e.rows = (uint32_t)rows; e.cols = (uint32_t)cols;
        return resbm_frame_decode(x ? x : scratch, x ? rows * cols : RESBM__JOB_FLOATS, st->rbuf, len, &e);
    }
}

static void resbm__async_drop(resbm_stage *st);

/* Before a call's first frame: agree on the job with both neighbours (once, and again after
   this stage's model was loaded from a checkpoint, after a mismatch, after a wait for a hello
   failed, and when the attempt field is full). */
static int resbm__stage_begin(resbm_stage *st) {
    int side, rc = RESBM_OK;
    st->why[0] = 0;
    st->abort_code = 0; /* no neighbour's abort heard in this call yet */
    st->abort_late = 0;
    st->entered++;
    if (st->model->loads != st->synced_loads) { /* loaded in between: prove the job again */
        st->predicted = 0; /* the loaded values are the weights proper */
        if (st->model->in_stream) resbm__async_drop(st); /* its steps ran on other weights */
        st->agreed[0] = st->s == 0;
        st->agreed[1] = st->s == st->S - 1;
        st->hello_sent = 0;
        st->attempt = 0;
        st->synced_loads = st->model->loads;
    }
    st->step = (uint64_t)st->model->step;
    if (!st->model->in_stream) st->tag = st->step;
    if (st->attempt >= RESBM__MAX_ATTEMPT) { /* the frames' attempt field is full: agree on the
        job again, which drops whatever failed attempts left in flight, and count from 0 (the
        neighbours reach the limit with the same failures and do the same) */
        st->agreed[0] = st->s == 0;
        st->agreed[1] = st->s == st->S - 1;
        st->hello_sent = 0;
        st->attempt = 0;
    }
    if (st->agreed[0] && st->agreed[1]) {
        st->missed = st->suspect[0] = st->suspect[1] = 0; /* the call that agreed is over */
        return RESBM_OK;
    }
    /* hello once per load or mismatch, and again after a wait for the neighbour's failed (ours or
       its answer may have been lost or spoiled; a neighbour that took ours answers the next): not
       on every call, or a neighbour away for a while would come back to a queue of them */
    if (!st->hello_sent) {
        for (side = 0; side < 2 && !rc; side++)
            if (!st->agreed[side]) rc = resbm__stage_hello(st, st->s + (side ? 1 : -1), 0);
        st->hello_sent = !rc;
    }
    for (side = 0; side < 2 && !rc; side++)
        if (!st->agreed[side]) {
            rc = resbm__stage_recv(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s + (side ? 1 : -1),
                                   RESBM__MICRO(0, RESBM__FOR_JOB, 0), 1, RESBM__JOB_FLOATS, NULL);
            if (rc) st->hello_sent = 0;
        }
    /* failed before agreement (a mismatch aside): a neighbour may run this call without this
       stage, agreed on its hello (see abort_in) */
    if (rc && rc != RESBM_EJOB) st->missed = 1;
    return rc;
}

/* Every call ends here. After a failure, once the job is agreed, the neighbours hear of it at
   once (an abort frame with the code and the stage where it happened, passed along the
   pipeline away from where it came), and the next try is a new attempt, so nothing left of this
   one is mistaken for it. Before the job is agreed nothing has flowed, so nothing is sent (but a
   refused job is told to the neighbours already agreed). */
static int resbm__stage_end(resbm_stage *st, int rc) {
    int side, code = rc, origin = st->s, skip = -1;
    uint32_t call = 0; /* a failure in a stream: the call it happened in (see abort_in) */
    if (!rc) return RESBM_OK;
    if (rc == RESBM_EPEER && st->abort_code) { /* a neighbour's failure: passed on, not back, with
        the call it names (a stage further on may have returned that call); unless it came late:
        then this stage's failure is of the next attempt, back to every neighbour (see abort_in) */
        code = st->abort_code; origin = st->abort_origin;
        skip = st->abort_late ? -1 : st->abort_from;
        call = st->abort_late ? 0 : st->abort_call;
    } else if (st->model->in_stream) {
        call = resbm__stream_call(st);
    }
    if (st->model->in_stream) resbm__async_drop(st); /* every stage drops its steps in flight */
    else resbm__slots_drop(st->model); /* host layers hear now of the forwards the failure dropped */
    st->tag = st->step;
    if (!st->why[0])
        snprintf(st->why, sizeof(st->why), "stage %d, step %lu: %s", st->s, (unsigned long)st->step,
                 resbm_strerror(rc));
    if (st->attempt >= RESBM__MAX_ATTEMPT) return rc; /* no attempt left to tag an abort with: the
                                                         next call agrees on the job again */
    /* before the job is agreed nothing has flowed, so there is nothing to abort, except that a
       neighbour already agreed must hear that this one refuses the job */
    if (rc != RESBM_EJOB && !(st->agreed[0] && st->agreed[1])) return rc;
    for (side = 0; side < 2; side++) {
        int peer = st->s + (side ? 1 : -1);
        float v[2];
        if (peer < 0 || peer >= st->S || peer == skip || !st->agreed[side]) continue;
        v[0] = (float)code;
        v[1] = (float)origin;
        (void)resbm__stage_send(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, peer,
                                RESBM__MICRO(st->attempt, RESBM__FOR_ABORT, call), 1, 2, v);
    }
    st->attempt++;
    return rc;
}

/* One forward of `rows` sequences into `slot`: receive z, compute, send z on (or the loss). */
static int resbm__stage_fwd(resbm_stage *st, uint32_t micro, int slot, size_t rows,
                            const int32_t *tokens, const int32_t *targets, float *loss) {
    resbm_model *m = st->model;
    size_t N = rows * (size_t)m->cfg.seq;
    double t0;
    *loss = 0.0f;
    if (!m->first)
        RESBM__TRY(resbm__stage_recv(st, RESBM_KIND_ACT, st->cfg.wire_fwd, st->s - 1, micro, N, st->w,
                                     st->zin));
    t0 = resbm__now();
    RESBM__TRY(resbm__model_forward(m, slot, m->first ? tokens : NULL, m->first ? NULL : st->zin,
                                    m->last ? targets : NULL, rows, m->last ? NULL : st->zout,
                                    m->last ? loss : NULL));
    st->stats.compute_s += resbm__now() - t0;
    if (!m->last)
        RESBM__TRY(resbm__stage_send(st, RESBM_KIND_ACT, st->cfg.wire_fwd, st->s + 1, micro, N, st->w,
                                     st->zout));
    return RESBM_OK;
}

static void resbm__use_prev(resbm_model *m, float *prev, int to_prev);

/* The backward of microbatch g (of the step; async: of the stream, batch g / n). Async: a
   microbatch whose forward ran the weights before the last update goes back through them. */
static int resbm__stage_bwd(resbm_stage *st, int64_t g) {
    resbm_model *m = st->model;
    uint32_t micro = RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, g % st->n);
    int prev = 0, rc;
    double t0;
    if (m->in_stream) { /* batch b ran the weights of step base + max(b - 1, 0) */
        int64_t b = g / st->n;
        uint64_t ran = st->base + (uint64_t)(b ? b - 1 : 0);
        if (ran != (uint64_t)m->step && ran + 1 != (uint64_t)m->step) return RESBM_ESTATE;
        prev = ran + 1 == (uint64_t)m->step;
    }
    if (!m->last)
        RESBM__TRY(resbm__stage_recv(st, RESBM_KIND_GRAD, st->cfg.wire_bwd, st->s + 1, micro,
                                     st->Nmb, st->w, st->dzin));
    t0 = resbm__now();
    if (prev) resbm__use_prev(m, st->prev, 1);
    rc = resbm__model_backward(m, (int)(g % st->slots), m->last ? NULL : st->dzin,
                               m->first ? NULL : st->dxout, 1.0f / (float)st->n);
    if (prev) resbm__use_prev(m, st->prev, 0);
    RESBM__TRY(rc);
    st->stats.compute_s += resbm__now() - t0;
    if (!m->first)
        RESBM__TRY(resbm__stage_send(st, RESBM_KIND_GRAD, st->cfg.wire_bwd, st->s - 1, micro,
                                     st->Nmb, st->w, st->dxout));
    return RESBM_OK;
}

/* The step across stages is all or nothing, and costs no round trip of its own. Each stage's
   squared gradient norm travels back with the step's last gradient: stage s sends stage s - 1
   [sq_s, ..., sq_{S-1}, loss] (control frame, index 0) right after its last gradient frame.
   Stage 0 finishes the step's last backward, so it knows every stage is done: it sums the norms
   in stage order (the float sum a single process takes), checks the total and the loss, and
   sends [total, loss] forward (index 1), ahead of the next step's activations on the same link;
   each stage passes it on, then applies its own update. A stage that cannot (its update would be
   non-finite, or the frame does not arrive whole) fails, and its abort makes every stage that
   had already applied the step undo it (resbm_model_rollback), so after any single fault either
   every stage has the update or none has. */
static int resbm__stage_step_run(resbm_stage *st, const int32_t *tokens, const int32_t *targets,
                                 float *loss) {
    resbm_model *m = st->model;
    double sq, loss_sum = 0.0, t0;
    float *v = st->norms, back[2], scale;
    int warm, i, fi = 0, nv = st->S - st->s + 1; /* sq_s .. sq_{S-1}, loss */
    int64_t bi = 0;
    resbm__slots_drop(m); /* a host's own forward on this model between calls may hold some */
    RESBM__TRY(resbm__model_zero_grad(m));
    warm = RESBM__MIN(st->slots - 1, st->n); /* forwards ahead of the first backward */
    for (i = 0; i < st->n; i++) { /* warm-up forwards, then one forward one backward */
        size_t off = (size_t)fi * st->Nmb;
        float l;
        RESBM__TRY(resbm__stage_fwd(st, RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, fi), fi % st->slots,
                                    (size_t)m->cfg.batch, m->first ? tokens + off : NULL,
                                    m->last ? targets + off : NULL, &l));
        loss_sum += l;
        fi++;
        if (i >= warm) RESBM__TRY(resbm__stage_bwd(st, bi++));
    }
    for (i = 0; i < warm; i++) RESBM__TRY(resbm__stage_bwd(st, bi++));
    RESBM__TRY(resbm__model_grad_sqnorm(m, &sq));
    if (!m->last) { /* the norms of the stages after this one, and the loss */
        RESBM__TRY(resbm__stage_recv(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s + 1,
                                     RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 0), 1,
                                     (size_t)nv - 1, v + 1));
        RESBM__TRY(resbm__sqnorms_ok(v + 1, (size_t)nv - 2));
    } else
        v[1] = (float)(loss_sum / st->n);
    v[0] = (float)sq;
    if (!m->first) {
        RESBM__TRY(resbm__stage_send(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s - 1,
                                     RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 0), 1, (size_t)nv, v));
        RESBM__TRY(resbm__stage_recv(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s - 1,
                                     RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 1), 1, 2, back));
        RESBM__TRY(resbm__sqnorms_ok(back, 1));
    } else {
        back[0] = v[0];
        for (i = 1; i < st->S; i++) back[0] = back[0] + v[i]; /* stage order, as one process sums */
        back[1] = v[st->S];
        if (!resbm__finite(back[0]) || !resbm__finite(back[1])) return RESBM_ENONFINITE;
    }
    /* pass it on first (the stages after do not wait for this one's update), then apply; if the
       update fails, this stage's abort makes those that applied it undo it */
    if (!m->last)
        RESBM__TRY(resbm__stage_send(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s + 1,
                                     RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 1), 1, 2, back));
    scale = resbm_clip_scale(&st->cfg.opt, back[0]);
    t0 = resbm__now();
    RESBM__TRY(resbm__model_update(m, scale)); /* undone by itself if it fails */
    st->stats.compute_s += resbm__now() - t0;
    st->step = st->tag = (uint64_t)m->step;
    st->applied_in = st->entered;
    st->applied_att = st->attempt;
    st->attempt = 0;
    st->stats.steps++;
    st->last_loss = back[1];
    st->stats.loss_step = m->step - 1;
    if (loss) *loss = back[1];
    return RESBM_OK;
}

/* ---- the async schedule ----------------------------------------------------------------------
   The steps since the stream started form one stream of microbatches, g = b n + j (batch b is
   step base + b). Stage s keeps D = st->slots forwards in flight, F(g) then B(g - D + 1), with
   no drain between steps. Batch b runs on the weights with the updates of batches up to b - 2:
   the commit of batch b - 2 is applied at the start of call b, ahead of its forwards (the rule
   w[k+1] = w[k] - update(grad at w[k-1]), one step stale). The backwards of batch b - 1 still to
   come then run on the weights before that update, kept in `prev`. Batch b's gradient is
   complete after its last backward; if the next batch's backwards start before its commit, it
   waits in `pending`. D <= n + 1 has every stage finish batch b by call b + 1, so the commit
   is ready when call b + 2 needs it; its norms travel back behind batch b's last gradient, as
   in exact mode. */

/* The values into buf or from it, extrapolated from buf (v + a (v - buf)), the gradients into
   buf (zeroing them) or swapped with it, at their offsets in the padded concatenation, on the
   pool. */
enum { RESBM__VALUES_OUT, RESBM__VALUES_IN, RESBM__EXTRAPOLATE, RESBM__GRADS_OUT, RESBM__GRADS_SWAP };
typedef struct { resbm_model *m; float *buf; int op; float a; } resbm__buf_job;

static void resbm__buf_piece(void *ctx, resbm_param *p, size_t at, size_t n, size_t virt) {
    const resbm__buf_job *j = (const resbm__buf_job *)ctx;
    float *b = j->buf + virt, *g = p->grad.data + at;
    size_t i;
    if (j->op == RESBM__VALUES_OUT) {
        memcpy(b, p->value.data + at, n * sizeof(float));
    } else if (j->op == RESBM__VALUES_IN) {
        memcpy(p->value.data + at, b, n * sizeof(float));
    } else if (j->op == RESBM__EXTRAPOLATE) {
        float *v = p->value.data + at;
        for (i = 0; i < n; i++) v[i] = v[i] + j->a * (v[i] - b[i]);
    } else if (j->op == RESBM__GRADS_OUT) {
        memcpy(b, g, n * sizeof(float));
        memset(g, 0, n * sizeof(float));
    } else {
        for (i = 0; i < n; i++) { float t = b[i]; b[i] = g[i]; g[i] = t; }
    }
}

static void resbm__buf_range(void *ctx, size_t b, size_t e) {
    resbm__walk(((const resbm__buf_job *)ctx)->m, b, e, resbm__buf_piece, ctx);
}

static int resbm__model_buf(resbm_model *m, float *buf, int op) {
    resbm__buf_job j;
    j.m = m; j.buf = buf; j.op = op; j.a = 0.0f;
    return resbm__parallel_for(m->pool, m->nfloats, 4 * RESBM__CHUNK, resbm__buf_range, &j);
}

/* The weights in prev in place of the current ones (to_prev), or back: the library's own
   parameters by pointer, the host's (in its memory, where its layers read them) by swapping
   contents. */
static void resbm__use_prev(resbm_model *m, float *prev, int to_prev) {
    size_t i, k, own = 0;
    for (i = 0; i < m->nparams; i++) {
        resbm_param *p = &m->params[i];
        size_t n = p->value.ne[0] * p->value.ne[1];
        float *q = prev + m->voff[i];
        if (i >= m->host0 && i < m->host0 + m->nhost) {
            for (k = 0; k < n; k++) { float t = q[k]; q[k] = p->value.data[k]; p->value.data[k] = t; }
        } else {
            p->value.data = to_prev ? q : m->pmem + own;
            own += resbm__pad16(n);
        }
    }
}

static int resbm__stage_back(resbm_stage *st, uint32_t micro, float *v, size_t n);
static int resbm__stage_forth(resbm_stage *st, uint32_t micro, float *v, size_t n);

static void resbm__async_drop(resbm_stage *st) {
    resbm__slots_drop(st->model);
    resbm__model_zero_grad(st->model);
    if (st->predicted) resbm__model_buf(st->model, st->master, RESBM__VALUES_IN); /* the weights proper */
    st->predicted = 0;
    st->calls = 0;
    st->gbatch = 0;
    st->pbatch = -1;
    st->model->in_stream = 0;
}

/* The end of batch b on this stage: [sq_s .. sq_{S-1}, loss] back to stage s - 1; stage 0 keeps
   [total, loss] for the commit. */
static int resbm__async_norms(resbm_stage *st, int64_t b) {
    resbm_model *m = st->model;
    float *v = st->norms;
    size_t nv = (size_t)(st->S - st->s + 1);
    double sq;
    int i;
    RESBM__TRY(resbm__model_grad_sqnorm(m, &sq));
    if (!m->last) {
        RESBM__TRY(resbm__stage_recv(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s + 1,
                                     RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 0), 1, nv - 1, v + 1));
        RESBM__TRY(resbm__sqnorms_ok(v + 1, nv - 2));
    } else
        v[1] = (float)(st->loss_acc / st->n);
    v[0] = (float)sq;
    if (!m->first)
        return resbm__stage_send(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s - 1,
                                 RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 0), 1, nv, v);
    st->queue[b % 2][0] = v[0];
    for (i = 1; i < st->S; i++) st->queue[b % 2][0] = st->queue[b % 2][0] + v[i]; /* stage order */
    st->queue[b % 2][1] = v[st->S];
    if (!resbm__finite(st->queue[b % 2][0]) || !resbm__finite(st->queue[b % 2][1])) return RESBM_ENONFINITE;
    return RESBM_OK;
}

/* Backward g of the stream; the batch before must be complete once the next one's begin. */
static int resbm__async_bwd(resbm_stage *st, int64_t g) {
    int64_t b = g / st->n;
    if (b != st->gbatch) { /* batch b - 1 is complete: its gradient waits for its commit */
        if (st->pbatch >= 0 || b != st->gbatch + 1) return RESBM_ESTATE;
        RESBM__TRY(resbm__model_buf(st->model, st->pending, RESBM__GRADS_OUT));
        st->pbatch = st->gbatch;
        st->gbatch = b;
    }
    st->tag = st->base + (uint64_t)b;
    RESBM__TRY(resbm__stage_bwd(st, g));
    return g % st->n == st->n - 1 ? resbm__async_norms(st, b) : RESBM_OK;
}

/* Batch b's update: stage 0 has its [total, loss], the others receive it and pass it on (ahead
   of the next activations on the same link), then apply it, keeping the weights it replaces for
   the backwards in flight that ran them. */
static int resbm__async_commit(resbm_stage *st, int64_t b) {
    resbm_model *m = st->model;
    float back[2];
    double t0;
    int rc, swapped;
    st->tag = st->base + (uint64_t)b;
    if (m->first) {
        back[0] = st->queue[b % 2][0];
        back[1] = st->queue[b % 2][1];
    } else {
        RESBM__TRY(resbm__stage_recv(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s - 1,
                                     RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 1), 1, 2, back));
        RESBM__TRY(resbm__sqnorms_ok(back, 1));
    }
    if (!m->last)
        RESBM__TRY(resbm__stage_send(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s + 1,
                                     RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 1), 1, 2, back));
    swapped = st->pbatch == b;
    if (!swapped && st->gbatch != b) return RESBM_ESTATE;
    t0 = resbm__now();
    RESBM__TRY(resbm__model_buf(m, st->prev, RESBM__VALUES_OUT)); /* what batch b + 1 ran */
    if (st->predicted) { /* the update is of the weights proper */
        RESBM__TRY(resbm__model_buf(m, st->master, RESBM__VALUES_IN));
        st->predicted = 0;
    }
    if (st->master) RESBM__TRY(resbm__model_buf(m, st->mprev, RESBM__VALUES_OUT));
    if (swapped) RESBM__TRY(resbm__model_buf(m, st->pending, RESBM__GRADS_SWAP));
    rc = resbm__model_update(m, resbm_clip_scale(&st->cfg.opt, back[0])); /* undone by itself if it fails */
    if (swapped) {
        int rc2 = resbm__model_buf(m, st->pending, RESBM__GRADS_SWAP); /* the next batch's, back */
        if (!rc) rc = rc2;
        st->pbatch = -1;
    } else if (!rc) {
        rc = resbm__model_zero_grad(m);
        st->gbatch = b + 1;
    }
    if (!rc) { /* applied: an abort from here on says so */
        st->step = (uint64_t)m->step;
        st->applied_in = st->entered;
        st->applied_att = st->attempt;
    }
    if (!rc && st->master) { /* batch b + 2 runs on w + predict (w - w before) */
        resbm__buf_job j;
        j.m = m; j.buf = st->mprev; j.op = RESBM__EXTRAPOLATE; j.a = st->cfg.predict;
        rc = resbm__model_buf(m, st->master, RESBM__VALUES_OUT);
        st->predicted = !rc; /* from here master holds the weights, even if the rest fails */
        if (!rc) rc = resbm__parallel_for(m->pool, m->nfloats, 4 * RESBM__CHUNK, resbm__buf_range, &j);
    }
    st->stats.compute_s += resbm__now() - t0;
    if (rc) return rc;
    st->last_loss = back[1];
    st->stats.loss_step = m->step - 1;
    return RESBM_OK;
}

/* Call c of the stream: the commit of batch c - 2, then batch c's forwards, each followed by the
   backward D - 1 microbatches behind it. */
static int resbm__async_step_run(resbm_stage *st, const int32_t *tokens, const int32_t *targets,
                                 float *loss) {
    resbm_model *m = st->model;
    int64_t c = st->calls, j;
    if (!m->in_stream) { /* a new stream */
        resbm__async_drop(st);
        st->base = st->step;
        m->in_stream = 1;
    }
    st->lo = st->base + (uint64_t)(c >= 2 ? c - 2 : 0);
    if (c >= 2) RESBM__TRY(resbm__async_commit(st, c - 2));
    for (j = 0; j < st->n; j++) {
        int64_t g = c * st->n + j;
        size_t off = (size_t)j * st->Nmb;
        float l;
        st->tag = st->base + (uint64_t)c;
        RESBM__TRY(resbm__stage_fwd(st, RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, j), (int)(g % st->slots),
                                    (size_t)m->cfg.batch, m->first ? tokens + off : NULL,
                                    m->last ? targets + off : NULL, &l));
        st->loss_acc = (j ? st->loss_acc : 0.0) + l;
        if (g - st->slots + 1 >= 0) RESBM__TRY(resbm__async_bwd(st, g - st->slots + 1));
    }
    st->calls++;
    st->stats.steps++;
    if (loss) *loss = st->stats.loss_step >= (long)st->base ? st->last_loss : 0.0f;
    return RESBM_OK;
}

/* The backwards still in flight, then the commits of the last two batches, in order, each
   acknowledged back from the last stage before the next: a stage that could not apply one has
   its neighbours undo it (one update, as mid-stream). The last acknowledgement reaches stage 0
   only once every stage has applied both, but the stages after one that failed have passed it
   on already; so stage 0 says so forward, and no stage returns before every stage has applied
   both (a stage after the failed one hears its abort instead, and undoes the update). */
static int resbm__async_flush_run(resbm_stage *st) {
    int64_t C = st->calls, g, b;
    float ack[1] = {0.0f};
    for (g = RESBM__MAX(0, C * st->n - st->slots + 1); g < C * st->n; g++)
        RESBM__TRY(resbm__async_bwd(st, g));
    for (b = RESBM__MAX(0, C - 2); b < C; b++) {
        int rc;
        RESBM__TRY(resbm__async_commit(st, b));
        rc = resbm__stage_back(st, RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 2), ack, 1);
        if (rc && rc != RESBM_EPEER) { /* a stage after this one may lack the update (its
            commit lost): undone here too, so this stage's abort names the step every stage is
            back at. (A neighbour's abort has said already whether it kept the update, and
            resbm__stage_abort_in has undone it here if it did not.) */
            (void)resbm__stage_undo(st);
        }
        if (rc) return rc;
    }
    if (C > 0) RESBM__TRY(resbm__stage_forth(st, RESBM__MICRO(st->attempt, RESBM__FOR_TRAIN, 3), ack, 1));
    resbm__async_drop(st);
    st->tag = st->step;
    return RESBM_OK;
}

/* One call at a time per stage: a second one (a transport or host callback calling back in, or
   another thread) gets RESBM_ESTATE and changes nothing. The call holds the stage's model too,
   so the model's own entries (an update, a checkpoint load) are refused while it runs. */
static int resbm__stage_enter(resbm_stage *st) {
    int idle = 0, rc;
    if (!st) return RESBM_EINVAL;
    if (!__atomic_compare_exchange_n(&st->busy, &idle, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return RESBM_ESTATE;
    if ((rc = resbm__model_claim(st->model))) __atomic_store_n(&st->busy, 0, __ATOMIC_RELEASE);
    return rc;
}
static int resbm__stage_leave(resbm_stage *st, int rc) {
    resbm__model_unclaim(st->model, 0);
    __atomic_store_n(&st->busy, 0, __ATOMIC_RELEASE);
    return rc;
}

RESBMDEF int resbm_stage_flush(resbm_stage *st, float *loss) {
    int rc = RESBM_OK;
    RESBM__TRY(resbm__stage_enter(st));
    if (st->model->in_stream) {
        rc = resbm__stage_begin(st);
        if (!rc && st->model->in_stream) rc = resbm__async_flush_run(st);
        /* a finished flush counts as an attempt, as a finished eval does (whose own count covers
           the flush it starts with): a stage behind a lost last frame fails the flush with both
           updates applied, and its abort then names an attempt the stages that returned have
           left behind (else it would fail their next call alone) */
        if (!rc) st->attempt++;
        rc = resbm__stage_end(st, rc);
    }
    if (!rc && loss && st->stats.loss_step >= 0) *loss = st->last_loss;
    return resbm__stage_leave(st, rc);
}

/* Stage 0's token ids and the last stage's targets, n of each, below the vocabulary. */
static int resbm__stage_ids_ok(const resbm_model *m, const int32_t *tokens, const int32_t *targets,
                               size_t n) {
    if (m->first && !resbm__targets_ok(tokens, n, (size_t)m->cfg.vocab)) return RESBM_ERANGE;
    if (m->last && !resbm__targets_ok(targets, n, (size_t)m->cfg.vocab)) return RESBM_ERANGE;
    return RESBM_OK;
}

RESBMDEF int resbm_stage_step(resbm_stage *st, const int32_t *tokens, const int32_t *targets,
                              size_t rows, float *loss) {
    resbm_model *m;
    size_t T;
    int rc;
    RESBM__TRY(resbm__stage_enter(st));
    m = st->model;
    T = (size_t)m->cfg.seq;
    /* bad input fails the step on every stage (the neighbours are waiting for it), like any fault */
    rc = resbm__stage_begin(st);
    if (!rc && (rows != (size_t)st->n * (size_t)m->cfg.batch || (m->first && !tokens) ||
                (m->last && !targets)))
        rc = RESBM_EINVAL;
    if (!rc) rc = resbm__stage_ids_ok(m, tokens, targets, rows * T);
    if (!rc) /* async's warm-up steps run exact (on its depths, which never rise down the pipeline) */
        rc = st->cfg.schedule == RESBM_SCHEDULE_ASYNC && st->step >= (uint64_t)st->cfg.async_warmup
                 ? resbm__async_step_run(st, tokens, targets, loss)
                 : resbm__stage_step_run(st, tokens, targets, loss);
    return resbm__stage_leave(st, resbm__stage_end(st, rc));
}

/* Sends a small control vector to stage s - 1 after receiving it from s + 1 (the last stage
   originates it): how the loss and sampled tokens travel back to stage 0. */
static int resbm__stage_back(resbm_stage *st, uint32_t micro, float *v, size_t n) {
    if (!st->model->last)
        RESBM__TRY(resbm__stage_recv(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s + 1, micro, 1, n, v));
    if (!st->model->first)
        RESBM__TRY(resbm__stage_send(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s - 1, micro, 1, n, v));
    return RESBM_OK;
}

/* The same the other way: from stage 0 to the last. */
static int resbm__stage_forth(resbm_stage *st, uint32_t micro, float *v, size_t n) {
    if (!st->model->first)
        RESBM__TRY(resbm__stage_recv(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s - 1, micro, 1, n, v));
    if (!st->model->last)
        RESBM__TRY(resbm__stage_send(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s + 1, micro, 1, n, v));
    return RESBM_OK;
}

/* A neighbour's abort, if one came (the chunks of an eval flow one way only, so a stage that
   stopped reading them would otherwise leave this one sending into a full link). */
static int resbm__stage_poll_abort(resbm_stage *st, int from) {
    int saved = st->cfg.timeout_ms, rc;
    float v[2];
    st->cfg.timeout_ms = 0;
    rc = resbm__stage_recv(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, from,
                           RESBM__MICRO(st->attempt, RESBM__FOR_ABORT, 0), 1, 2, v);
    st->cfg.timeout_ms = saved;
    return rc == RESBM_ETIMEDOUT ? RESBM_OK : rc ? rc : RESBM_EPEER;
}

/* What only stage 0 and the last stage use must still be the same everywhere: stage 0 sends its
   values down the pipeline first, each as four exact 16-bit halves, and a stage asked for
   anything else fails the call (else eval would average other rows and generate sample at
   another position, silently). It goes ahead of the call's first frame: no round trip. */
static int resbm__stage_agree(resbm_stage *st, unsigned purpose, const char *call,
                              const char *const *names, const uint64_t *vals, int n) {
    uint32_t micro = RESBM__MICRO(st->attempt, purpose, 0);
    float want[16], got[16];
    int k;
    RESBM_ASSERT(n >= 1 && n <= 4);
    for (k = 0; k < 4 * n; k++) want[k] = (float)((vals[k / 4] >> (48 - 16 * (k % 4))) & 0xffffu);
    if (!st->model->first) {
        RESBM__TRY(resbm__stage_recv(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s - 1, micro, 1,
                                     (size_t)(4 * n), got));
        for (k = 0; k < 4 * n; k++)
            if (got[k] != want[k]) {
                snprintf(st->why, sizeof(st->why), "stage %d, %s: %s differs from stage 0's", st->s, call,
                         names[k / 4]);
                return RESBM_EINVAL;
            }
    }
    if (!st->model->last)
        RESBM__TRY(resbm__stage_send(st, RESBM_KIND_CONTROL, RESBM_WIRE_F32, st->s + 1, micro, 1,
                                     (size_t)(4 * n), want));
    return RESBM_OK;
}

static int resbm__stage_eval_run(resbm_stage *st, const int32_t *tokens, const int32_t *targets,
                                 size_t rows, float *loss) {
    resbm_model *m = st->model;
    size_t T = (size_t)m->cfg.seq, B = (size_t)m->cfg.batch, done = 0;
    double sum = 0.0;
    float v[1];
    uint32_t k = 0;
    int saved, rc;
    uint64_t agree = rows;
    static const char *const names[1] = {"rows"};
    RESBM__TRY(resbm__model_release(m, 0));
    RESBM__TRY(resbm__stage_agree(st, RESBM__FOR_EVAL, "eval", names, &agree, 1));
    for (; done < rows; done += B, k++) {
        size_t n = RESBM__MIN(B, rows - done);
        float l;
        if (!m->last) RESBM__TRY(resbm__stage_poll_abort(st, st->s + 1));
        rc = resbm__stage_fwd(st, RESBM__MICRO(st->attempt, RESBM__FOR_EVAL, k), 0, n,
                              m->first ? tokens + done * T : NULL, m->last ? targets + done * T : NULL, &l);
        resbm__model_release(m, 0);
        if (rc) return rc;
        sum += (double)l * (double)n;
    }
    v[0] = (float)(sum / (double)rows);
    /* the loss comes back after every chunk has gone down the pipeline: wait for all of them */
    saved = st->cfg.timeout_ms;
    if (saved > 0) st->cfg.timeout_ms = (int)RESBM__MIN((double)saved * (double)(k + 1), 2147483647.0);
    rc = resbm__stage_back(st, RESBM__MICRO(st->attempt, RESBM__FOR_EVAL, 0), v, 1);
    st->cfg.timeout_ms = saved;
    if (rc) return rc;
    *loss = v[0];
    return RESBM_OK;
}

RESBMDEF int resbm_stage_eval(resbm_stage *st, const int32_t *tokens, const int32_t *targets,
                              size_t rows, float *loss) {
    resbm_model *m;
    size_t T;
    int rc;
    RESBM__TRY(resbm__stage_enter(st));
    m = st->model;
    T = (size_t)m->cfg.seq;
    rc = resbm__stage_begin(st);
    if (!rc && (!loss || rows == 0 || rows / (size_t)m->cfg.batch > RESBM__MAX_INDEX ||
                (m->first && !tokens) || (m->last && !targets)))
        rc = RESBM_EINVAL;
    if (!rc) rc = resbm__stage_ids_ok(m, tokens, targets, rows * T);
    if (!rc && m->in_stream) rc = resbm__async_flush_run(st); /* the model after every step */
    if (!rc) rc = resbm__stage_eval_run(st, tokens, targets, rows, loss);
    /* a finished eval counts as an attempt too, as a failed one does: stage 0 can fail on the
       loss's last way back after the others have returned it, and its abort then names an
       attempt they have left behind (else they would take it for their next call's and stay
       one attempt behind stage 0 for good) */
    if (!rc) st->attempt++;
    return resbm__stage_leave(st, resbm__stage_end(st, rc));
}

static int resbm__stage_generate_run(resbm_stage *st, const int32_t *prompt, size_t n_prompt,
                                     size_t n_new, float temperature, uint64_t seed, int32_t *out) {
    resbm_model *m = st->model;
    size_t T = (size_t)m->cfg.seq, V = (size_t)m->cfg.vocab, i;
    resbm_rng rng;
    int32_t *drawn; /* the tokens so far: out is written only when all of them are there */
    static const char *const names[4] = {"prompt length (up to seq)", "n_new", "temperature", "seed"};
    uint64_t agree[4];
    size_t w = RESBM__MIN(n_prompt, T); /* the prompt as the window sees it */
    int rc = RESBM_OK;
    agree[0] = w; agree[1] = n_new; agree[2] = resbm__fbits(temperature); agree[3] = seed;
    RESBM__TRY(resbm__model_release(m, 0));
    RESBM__TRY(resbm__stage_agree(st, RESBM__FOR_GEN, "generate", names, agree, 4));
    if (!n_new) return RESBM_OK;
    if (!(drawn = (int32_t *)resbm__alloc(n_new * sizeof(int32_t), m->cfg.alloc_user))) return RESBM_ENOMEM;
    resbm_rng_seed(&rng, seed, 0x5a);
    for (i = 0; i < n_new && !rc; i++) {
        size_t have = n_prompt + i, len = RESBM__MIN(w + i, T), j; /* have: stage 0's alone */
        uint32_t micro = RESBM__MICRO(st->attempt, RESBM__FOR_GEN, i);
        float l, v[1];
        if (m->first) { /* the last `len` tokens of prompt ++ drawn[0..i), left-aligned */
            for (j = 0; j < len; j++) {
                size_t src = have - len + j;
                st->win[j] = src < n_prompt ? prompt[src] : drawn[src - n_prompt];
            }
            for (; j < T; j++) st->win[j] = 0; /* causal: later positions cannot matter */
        }
        rc = resbm__stage_fwd(st, micro, 0, 1, st->win, st->zeros, &l);
        if (!rc && m->last) { /* draw from softmax(logits / temperature) at position len - 1 */
            /* p^(1/t) / sum, in the log domain so a small t does not underflow to all zeros */
            const float *p = resbm_model_probs(m, 0) + (len - 1) * V;
            double total = 0.0, u, acc = 0.0, inv = 1.0 / (double)temperature, top = -HUGE_VAL;
            size_t c = 0;
            for (j = 0; j < V; j++) if (p[j] > 0.0f && log((double)p[j]) * inv > top) { top = log((double)p[j]) * inv; c = j; }
            for (j = 0; j < V; j++) total += p[j] > 0.0f ? exp(log((double)p[j]) * inv - top) : 0.0;
            u = (double)(resbm_rng_u32(&rng) >> 8) * (1.0 / 16777216.0) * total;
            for (j = 0; j < V; j++) {
                acc += p[j] > 0.0f ? exp(log((double)p[j]) * inv - top) : 0.0;
                if (u < acc) { c = j; break; }
            }
            v[0] = (float)c;
        }
        resbm__model_release(m, 0);
        if (!rc) rc = resbm__stage_back(st, micro, v, 1);
        if (!rc && !(v[0] >= 0.0f && v[0] < (float)V && v[0] == floorf(v[0]))) rc = RESBM_ERANGE; /* from a peer */
        if (!rc) drawn[i] = (int32_t)v[0];
    }
    if (!rc) memcpy(out, drawn, n_new * sizeof(int32_t));
    resbm__dealloc(drawn, m->cfg.alloc_user);
    return rc;
}

RESBMDEF int resbm_stage_generate(resbm_stage *st, const int32_t *prompt, size_t n_prompt,
                                  size_t n_new, float temperature, uint64_t seed, int32_t *out) {
    resbm_model *m;
    int rc;
    RESBM__TRY(resbm__stage_enter(st));
    m = st->model;
    rc = resbm__stage_begin(st);
    if (!rc && (n_prompt == 0 || (n_new && !out) || !resbm__finite(temperature) ||
                !(temperature > 0.0f) || n_new > (size_t)RESBM__MAX_INDEX + 1 ||
                n_prompt > (size_t)-1 - n_new || (m->first && !prompt)))
        rc = RESBM_EINVAL;
    if (!rc && m->first && !resbm__targets_ok(prompt, n_prompt, (size_t)m->cfg.vocab)) rc = RESBM_ERANGE;
    if (!rc && m->in_stream) rc = resbm__async_flush_run(st);
    if (!rc) rc = resbm__stage_generate_run(st, prompt, n_prompt, n_new, temperature, seed, out);
    if (!rc) st->attempt++; /* as eval's */
    return resbm__stage_leave(st, resbm__stage_end(st, rc));
}

/* ---- safetensors ------------------------------------------------------------------------------ */
#define RESBM__ST_HEADER_MAX ((size_t)100 << 20) /* a longer JSON header is refused, read or written */
#define RESBM__ST_NUMBER_END 1000000000000000ULL /* shapes and offsets: 15 digits at most */

typedef struct { char *buf; size_t len, cap; int err; } resbm__sb;

static void resbm__sb_put(resbm__sb *b, const char *s, size_t n) {
    if (b->err) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = RESBM__MAX(b->cap * 2, b->len + n + 256);
        char *nb = (char *)RESBM_MALLOC(cap, NULL);
        if (!nb) { b->err = RESBM_ENOMEM; return; }
        if (b->buf) { memcpy(nb, b->buf, b->len); RESBM_FREE(b->buf, NULL); }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}

static void resbm__sb_str(resbm__sb *b, const char *s) { resbm__sb_put(b, s, strlen(s)); }

static void resbm__sb_json(resbm__sb *b, const char *s) {
    resbm__sb_put(b, "\"", 1);
    for (; *s; s++) {
        char esc[8];
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { esc[0] = '\\'; esc[1] = (char)ch; resbm__sb_put(b, esc, 2); }
        else if (ch < 0x20) { sprintf(esc, "\\u%04x", ch); resbm__sb_put(b, esc, 6); }
        else resbm__sb_put(b, s, 1);
    }
    resbm__sb_put(b, "\"", 1);
}

static int resbm__write_all(int fd, const void *buf, size_t n) {
    const unsigned char *p = (const unsigned char *)buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return RESBM_EIO;
        p += w;
        n -= (size_t)w;
    }
    return RESBM_OK;
}

static int resbm__write_le32(int fd, const void *data, size_t n) {
    const unsigned char *src = (const unsigned char *)data;
    unsigned char buf[4096];
    size_t i, k = 0;
    for (i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, src + 4 * i, 4);
        buf[k++] = (unsigned char)(u & 0xff);
        buf[k++] = (unsigned char)((u >> 8) & 0xff);
        buf[k++] = (unsigned char)((u >> 16) & 0xff);
        buf[k++] = (unsigned char)((u >> 24) & 0xff);
        if (k == sizeof(buf)) {
            if (resbm__write_all(fd, buf, k)) return RESBM_EIO;
            k = 0;
        }
    }
    return k ? resbm__write_all(fd, buf, k) : RESBM_OK;
}

/* Everything the reader checks is checked here first: a file it would refuse (repeated names or
   metadata keys, a tensor named like the metadata, sizes past its limits) is never written. */
static int resbm__st_write_ok(const resbm_st_entry *entries, size_t n, const char *const *meta_kv,
                              size_t n_meta) {
    const char **s;
    size_t i, off = 0;
    int k, ok;
    for (i = 0; i < n; i++) {
        uint64_t cnt = 1;
        if (!entries[i].name || !entries[i].data || entries[i].ndim < 0 || entries[i].ndim > 4 ||
            (entries[i].dtype != RESBM_DT_F32 && entries[i].dtype != RESBM_DT_I32) ||
            !strcmp(entries[i].name, "__metadata__"))
            return RESBM_EINVAL;
        for (k = 0; k < entries[i].ndim; k++) { /* the reader takes numbers of 15 digits at most */
            uint64_t dim = (uint64_t)entries[i].shape[k];
            if (dim >= RESBM__ST_NUMBER_END || (dim && cnt > ((uint64_t)1 << 50) / dim)) return RESBM_EOVERFLOW;
            cnt *= dim;
        }
        if (4 * cnt >= RESBM__ST_NUMBER_END - off || 4 * cnt > (uint64_t)((size_t)-1 - off)) return RESBM_EOVERFLOW;
        off += (size_t)(4 * cnt);
    }
    for (i = 0; i < 2 * n_meta; i++)
        if (!meta_kv[i]) return RESBM_EINVAL;
    if (n + n_meta < 2) return RESBM_OK;
    if (!(s = (const char **)resbm__alloc((n > n_meta ? n : n_meta) * sizeof(*s), NULL))) return RESBM_ENOMEM;
    for (i = 0; i < n; i++) s[i] = entries[i].name;
    ok = resbm__unique(s, n);
    for (i = 0; i < n_meta; i++) s[i] = meta_kv[2 * i];
    ok = ok && resbm__unique(s, n_meta);
    resbm__dealloc((void *)s, NULL);
    return ok ? RESBM_OK : RESBM_EINVAL;
}

RESBMDEF int resbm_safetensors_write(const char *path, const resbm_st_entry *entries, size_t n,
                                     const char *const *meta_kv, size_t n_meta) {
    resbm__sb hb;
    size_t i, off = 0, plen;
    char tmp[4096], num[64];
    unsigned char len8[8];
    int fd, rc = RESBM_OK, k, err = 0;
    if (!path || (!entries && n) || (!meta_kv && n_meta)) return RESBM_EINVAL;
    if (strlen(path) + 8 >= sizeof(tmp) || !path[0]) return RESBM_EINVAL;
    RESBM__TRY(resbm__st_write_ok(entries, n, meta_kv, n_meta));
    memset(&hb, 0, sizeof(hb));
    resbm__sb_str(&hb, "{");
    if (n_meta) {
        resbm__sb_str(&hb, "\"__metadata__\":{");
        for (i = 0; i < n_meta; i++) {
            if (i) resbm__sb_str(&hb, ",");
            resbm__sb_json(&hb, meta_kv[2 * i]);
            resbm__sb_str(&hb, ":");
            resbm__sb_json(&hb, meta_kv[2 * i + 1]);
        }
        resbm__sb_str(&hb, "}");
    }
    for (i = 0; i < n; i++) {
        size_t cnt = 1;
        if (i || n_meta) resbm__sb_str(&hb, ",");
        resbm__sb_json(&hb, entries[i].name);
        resbm__sb_str(&hb, entries[i].dtype == RESBM_DT_F32 ? ":{\"dtype\":\"F32\",\"shape\":["
                                                            : ":{\"dtype\":\"I32\",\"shape\":[");
        for (k = 0; k < entries[i].ndim; k++) {
            sprintf(num, "%s%llu", k ? "," : "", (unsigned long long)entries[i].shape[k]);
            resbm__sb_str(&hb, num);
            cnt *= entries[i].shape[k];
        }
        sprintf(num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                (unsigned long long)(off + 4 * cnt));
        resbm__sb_str(&hb, num);
        off += 4 * cnt;
    }
    resbm__sb_str(&hb, "}");
    while (!hb.err && hb.len % 8) resbm__sb_str(&hb, " "); /* data starts 8-byte aligned */
    if (!hb.err && hb.len > RESBM__ST_HEADER_MAX) hb.err = RESBM_EOVERFLOW; /* the reader's limit */
    if (hb.err) { RESBM_FREE(hb.buf, NULL); return hb.err; }
    plen = hb.len;
    for (k = 0; k < 8; k++) len8[k] = (unsigned char)(((unsigned long long)plen >> (8 * k)) & 0xff);
    /* A temp file of its own in the target's directory: mkstemp creates it exclusively (it never
       opens a name that exists, a planted symlink included), so concurrent writers never share
       one and the last rename wins with a whole file. fsync the file, rename it over the target,
       fsync the directory so the rename survives a crash too. On failure errno keeps the reason
       (no space, read-only, ...). */
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0) { RESBM_FREE(hb.buf, NULL); return RESBM_EIO; }
    rc = fchmod(fd, 0644) ? RESBM_EIO : RESBM_OK;
    if (!rc) rc = resbm__write_all(fd, len8, 8);
    if (!rc) rc = resbm__write_all(fd, hb.buf, plen);
    for (i = 0; i < n && !rc; i++) {
        size_t cnt = 1;
        for (k = 0; k < entries[i].ndim; k++) cnt *= entries[i].shape[k];
        rc = resbm__write_le32(fd, entries[i].data, cnt);
    }
    RESBM_FREE(hb.buf, NULL);
    if (!rc && fsync(fd)) rc = RESBM_EIO;
    err = errno;
    if (close(fd) && !rc) { rc = RESBM_EIO; err = errno; }
    if (!rc && rename(tmp, path)) { rc = RESBM_EIO; err = errno; }
    if (rc) { remove(tmp); errno = err; return rc; }
    { /* the directory entry */
        const char *slash = strrchr(path, '/');
        int dfd;
        if (slash) snprintf(tmp, sizeof(tmp), "%.*s", slash == path ? 1 : (int)(slash - path), path);
        else snprintf(tmp, sizeof(tmp), ".");
        dfd = open(tmp, O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) {
            if (fsync(dfd) && errno != EINVAL) { rc = RESBM_EIO; err = errno; } /* EINVAL: no dir fsync here */
            close(dfd);
            errno = err;
        }
    }
    return rc;
}

/* ---- safetensors reading ---------------------------------------------------------------------- */
struct resbm_st_file {
    unsigned char *buf;     /* the file */
    size_t len, data;       /* length, offset of the data section */
    resbm_st_entry *e;      /* [n] */
    size_t n, n_meta;
    char **meta;            /* [2 n_meta] key, value */
    char *names;            /* unescaped strings */
};

typedef struct {
    const char *p, *end;
    char *out;      /* string storage (NULL: counting pass) */
    size_t used;    /* bytes of strings */
} resbm__json;

static void resbm__json_ws(resbm__json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int resbm__json_eat(resbm__json *j, char c) {
    resbm__json_ws(j);
    if (j->p >= j->end || *j->p != c) return 0;
    j->p++;
    return 1;
}

static int resbm__hex(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A JSON string; stored NUL-terminated at out + *at when out is set. */
static int resbm__json_string(resbm__json *j, size_t *at) {
    *at = j->used;
    if (!resbm__json_eat(j, '"')) return RESBM_EFORMAT;
    for (;;) {
        unsigned c;
        unsigned char u8[3];
        size_t k, nb = 1;
        int esc = 0;
        if (j->p >= j->end) return RESBM_EFORMAT;
        c = (unsigned char)*j->p++;
        if (c == '"') break;
        if (c < 0x20) return RESBM_EFORMAT;
        if (c == '\\') {
            esc = 1;
            if (j->p >= j->end) return RESBM_EFORMAT;
            c = (unsigned char)*j->p++;
            switch (c) {
            case '"': case '\\': case '/': break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                int h, i;
                if (j->end - j->p < 4) return RESBM_EFORMAT;
                for (c = 0, i = 0; i < 4; i++) {
                    if ((h = resbm__hex(j->p[i])) < 0) return RESBM_EFORMAT;
                    c = c * 16 + (unsigned)h;
                }
                j->p += 4;
                if (c == 0 || (c >= 0xd800 && c <= 0xdfff)) return RESBM_EFORMAT; /* no NUL, no surrogates */
                break;
            }
            default: return RESBM_EFORMAT;
            }
        }
        if (c < 0x80 || !esc) u8[0] = (unsigned char)c; /* raw bytes (UTF-8 or not) stay as they are */
        else if (c < 0x800) { u8[0] = (unsigned char)(0xc0 | c >> 6); u8[1] = (unsigned char)(0x80 | (c & 63)); nb = 2; }
        else { u8[0] = (unsigned char)(0xe0 | c >> 12); u8[1] = (unsigned char)(0x80 | ((c >> 6) & 63));
               u8[2] = (unsigned char)(0x80 | (c & 63)); nb = 3; }
        for (k = 0; k < nb; k++) {
            if (j->out) j->out[j->used] = (char)u8[k];
            j->used++;
        }
    }
    if (j->out) j->out[j->used] = 0;
    j->used++;
    return RESBM_OK;
}

/* A non-negative integer below 2^53. */
static int resbm__json_uint(resbm__json *j, uint64_t *v) {
    int digits = 0;
    resbm__json_ws(j);
    *v = 0;
    if (j->p < j->end && *j->p == '0' && j->end - j->p > 1 && j->p[1] >= '0' && j->p[1] <= '9') return RESBM_EFORMAT;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        *v = *v * 10 + (uint64_t)(*j->p++ - '0');
        if (++digits > 15) return RESBM_EFORMAT; /* below RESBM__ST_NUMBER_END */
    }
    return digits ? RESBM_OK : RESBM_EFORMAT;
}

/* [u, u, ...] with at most `max` items. */
static int resbm__json_uints(resbm__json *j, uint64_t *v, int max, int *n) {
    *n = 0;
    if (!resbm__json_eat(j, '[')) return RESBM_EFORMAT;
    if (resbm__json_eat(j, ']')) return RESBM_OK;
    do {
        if (*n >= max) return RESBM_EFORMAT;
        RESBM__TRY(resbm__json_uint(j, &v[(*n)++]));
    } while (resbm__json_eat(j, ','));
    return resbm__json_eat(j, ']') ? RESBM_OK : RESBM_EFORMAT;
}

/* One pass over the header: counts entries and metadata (f->e == NULL) or fills them. */
static int resbm__st_header(resbm_st_file *f, const char *h, size_t hl, char *strings) {
    resbm__json j;
    size_t n = 0, nm = 0, data_len = f->len - f->data;
    int seen_meta = 0;
    j.p = h; j.end = h + hl; j.out = strings; j.used = 0;
    if (!resbm__json_eat(&j, '{')) return RESBM_EFORMAT;
    if (!resbm__json_eat(&j, '}')) {
        do {
            size_t key;
            RESBM__TRY(resbm__json_string(&j, &key));
            if (!resbm__json_eat(&j, ':') || !resbm__json_eat(&j, '{')) return RESBM_EFORMAT;
            if (!strcmp(strings + key, "__metadata__")) { /* string -> string */
                if (seen_meta++) return RESBM_EFORMAT; /* one metadata object */
                if (resbm__json_eat(&j, '}')) continue;
                do {
                    size_t k, v;
                    RESBM__TRY(resbm__json_string(&j, &k));
                    if (!resbm__json_eat(&j, ':')) return RESBM_EFORMAT;
                    RESBM__TRY(resbm__json_string(&j, &v));
                    if (f->meta) { f->meta[2 * nm] = strings + k; f->meta[2 * nm + 1] = strings + v; }
                    nm++;
                } while (resbm__json_eat(&j, ','));
                if (!resbm__json_eat(&j, '}')) return RESBM_EFORMAT;
            } else { /* a tensor: exactly dtype, shape and data_offsets */
                resbm_st_entry dummy, *e = f->e ? &f->e[n] : &dummy;
                int seen = 0, nd = 0, no = 0, k;
                uint64_t shape[4], offs[2], cnt = 1;
                size_t dt = 0;
                do {
                    size_t fk;
                    RESBM__TRY(resbm__json_string(&j, &fk));
                    if (!resbm__json_eat(&j, ':')) return RESBM_EFORMAT;
                    if (!strcmp(strings + fk, "dtype") && !(seen & 1)) {
                        RESBM__TRY(resbm__json_string(&j, &dt));
                        seen |= 1;
                    } else if (!strcmp(strings + fk, "shape") && !(seen & 2)) {
                        RESBM__TRY(resbm__json_uints(&j, shape, 4, &nd));
                        seen |= 2;
                    } else if (!strcmp(strings + fk, "data_offsets") && !(seen & 4)) {
                        RESBM__TRY(resbm__json_uints(&j, offs, 2, &no));
                        seen |= 4;
                    } else {
                        return RESBM_EFORMAT;
                    }
                } while (resbm__json_eat(&j, ','));
                if (!resbm__json_eat(&j, '}') || seen != 7 || no != 2) return RESBM_EFORMAT;
                if (!strcmp(strings + dt, "F32")) e->dtype = RESBM_DT_F32;
                else if (!strcmp(strings + dt, "I32")) e->dtype = RESBM_DT_I32;
                else return RESBM_EFORMAT;
                for (k = 0; k < nd; k++) {
                    if (shape[k] && cnt > ((uint64_t)1 << 50) / shape[k]) return RESBM_EFORMAT;
                    cnt *= shape[k];
                    e->shape[k] = (size_t)shape[k];
                }
                if (offs[0] > offs[1] || offs[1] > data_len || offs[1] - offs[0] != 4 * cnt)
                    return RESBM_EFORMAT;
                e->name = strings + key;
                e->ndim = nd;
                e->data = f->buf + f->data + offs[0];
                n++;
            }
        } while (resbm__json_eat(&j, ','));
        if (!resbm__json_eat(&j, '}')) return RESBM_EFORMAT;
    }
    resbm__json_ws(&j);
    if (j.p != j.end) return RESBM_EFORMAT; /* only padding spaces after the object */
    f->n = n;
    f->n_meta = nm;
    return RESBM_OK;
}

static size_t resbm__entry_count(const resbm_st_entry *e) {
    size_t c = 1;
    int k;
    for (k = 0; k < e->ndim; k++) c *= e->shape[k];
    return c;
}

/* By data offset; on a tie the empty tensor first (it occupies no bytes). */
static int resbm__cmp_entry(const void *a, const void *b) {
    const resbm_st_entry *x = (const resbm_st_entry *)a, *y = (const resbm_st_entry *)b;
    const unsigned char *p = (const unsigned char *)x->data, *q = (const unsigned char *)y->data;
    size_t cx, cy;
    if (p != q) return p < q ? -1 : 1;
    cx = resbm__entry_count(x); cy = resbm__entry_count(y);
    return cx < cy ? -1 : cx > cy;
}

static int resbm__cmp_name(const void *a, const void *b) {
    return strcmp(((const resbm_st_entry *)a)->name, ((const resbm_st_entry *)b)->name);
}

/* A file of len bytes whose first 8 give the header length: checked, and room made for the
   file (f->buf, for the caller to fill) and the unescaped strings (never longer than the header). */
static int resbm__st_new(const unsigned char *len8, size_t len, resbm_st_file **out) {
    resbm_st_file *f;
    uint64_t hl = 0;
    size_t total;
    int k;
    if (len < 8) return RESBM_EFORMAT;
    for (k = 0; k < 8; k++) hl |= (uint64_t)len8[k] << (8 * k);
    if (hl < 2 || hl > len - 8 || hl > RESBM__ST_HEADER_MAX) return RESBM_EFORMAT;
    if (resbm_size_add(&total, sizeof(resbm_st_file) + 16, len) ||
        resbm_size_add(&total, total, (size_t)hl + 1))
        return RESBM_EOVERFLOW;
    if (!(f = (resbm_st_file *)resbm__alloc(total, NULL))) return RESBM_ENOMEM;
    memset(f, 0, sizeof(*f));
    f->buf = (unsigned char *)(f + 1);
    f->names = (char *)f->buf + len;
    f->len = len;
    f->data = 8 + (size_t)hl;
    *out = f;
    return RESBM_OK;
}

/* Parses and checks f->buf, filled; frees f on failure. */
static int resbm__st_finish(resbm_st_file *f, resbm_st_file **out) {
    resbm_st_entry *sorted;
    size_t i, covered = 0, len = f->len, hl = f->data - 8;
    int rc = resbm__st_header(f, (const char *)f->buf + 8, hl, f->names); /* count */
    if (!rc) {
        size_t ne = f->n + 1, nmeta = 3 * f->n_meta + 1; /* pairs, then keys to sort */
        f->e = (resbm_st_entry *)resbm__alloc(2 * ne * sizeof(resbm_st_entry) + nmeta * sizeof(char *), NULL);
        if (!f->e) rc = RESBM_ENOMEM;
        else {
            memset(f->e, 0, 2 * ne * sizeof(resbm_st_entry));
            f->meta = (char **)(f->e + 2 * ne);
            rc = resbm__st_header(f, (const char *)f->buf + 8, hl, f->names); /* fill */
        }
    }
    /* data ranges disjoint and covering the data section exactly; names unique */
    if (!rc) {
        sorted = f->e + f->n + 1;
        memcpy(sorted, f->e, f->n * sizeof(resbm_st_entry));
        qsort(sorted, f->n, sizeof(resbm_st_entry), resbm__cmp_entry);
        for (i = 0; i < f->n && !rc; i++) {
            size_t at = (size_t)((const unsigned char *)sorted[i].data - f->buf) - f->data;
            if (at != covered) rc = RESBM_EFORMAT;
            covered += 4 * resbm__entry_count(&sorted[i]);
        }
        if (!rc && covered != len - f->data) rc = RESBM_EFORMAT;
        qsort(sorted, f->n, sizeof(resbm_st_entry), resbm__cmp_name); /* unique names */
        for (i = 1; i < f->n && !rc; i++)
            if (!strcmp(sorted[i - 1].name, sorted[i].name)) rc = RESBM_EFORMAT;
    }
    if (!rc && f->n_meta > 1) { /* unique metadata keys (JSON readers disagree on duplicates) */
        const char **keys = (const char **)(f->meta + 2 * f->n_meta);
        for (i = 0; i < f->n_meta; i++) keys[i] = f->meta[2 * i];
        if (!resbm__unique(keys, f->n_meta)) rc = RESBM_EFORMAT;
    }
    if (rc) { resbm_safetensors_free(f); return rc; }
    *out = f;
    return RESBM_OK;
}

RESBMDEF int resbm_safetensors_parse(const void *buf, size_t len, resbm_st_file **out) {
    resbm_st_file *f;
    if (!buf || !out) return RESBM_EINVAL;
    RESBM__TRY(resbm__st_new((const unsigned char *)buf, len, &f));
    memcpy(f->buf, buf, len);
    return resbm__st_finish(f, out);
}

static int resbm__read_all(int fd, void *buf, size_t n) {
    unsigned char *p = (unsigned char *)buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return RESBM_EIO; /* 0: shorter than it was a moment ago */
        p += r;
        n -= (size_t)r;
    }
    return RESBM_OK;
}

RESBMDEF int resbm_safetensors_read(const char *path, size_t max_bytes, resbm_st_file **out) {
    struct stat sb;
    unsigned char len8[8];
    resbm_st_file *f = NULL;
    size_t sz;
    int fd, rc, err;
    if (!path || !out || max_bytes == 0) return RESBM_EINVAL;
    /* opened without blocking and refused unless a regular file: a FIFO without a writer would
       hold open() forever, a device would never end */
    if ((fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY)) < 0) return RESBM_EIO;
    if (fstat(fd, &sb)) err = errno;
    else err = S_ISREG(sb.st_mode) ? 0 : S_ISDIR(sb.st_mode) ? EISDIR : EINVAL;
    if (err) { close(fd); errno = err; return RESBM_EIO; }
    if (sb.st_size < 0 || (unsigned long long)sb.st_size > (unsigned long long)max_bytes) { close(fd); return RESBM_EFORMAT; }
    sz = (size_t)sb.st_size;
    /* read straight into the parsed file's own copy: the header length first, to size it */
    rc = sz < 8 ? RESBM_EFORMAT : resbm__read_all(fd, len8, 8);
    if (!rc) rc = resbm__st_new(len8, sz, &f);
    if (!rc) {
        memcpy(f->buf, len8, 8);
        rc = resbm__read_all(fd, f->buf + 8, sz - 8);
        if (rc) resbm_safetensors_free(f);
    }
    err = errno;
    close(fd);
    if (!rc) rc = resbm__st_finish(f, out);
    errno = err;
    return rc;
}

RESBMDEF void resbm_safetensors_free(resbm_st_file *f) {
    if (!f) return;
    resbm__dealloc(f->e, NULL);
    resbm__dealloc(f, NULL);
}

RESBMDEF const resbm_st_entry *resbm_safetensors_entries(const resbm_st_file *f, size_t *count) {
    if (!f) return NULL;
    if (count) *count = f->n;
    return f->e;
}

RESBMDEF const resbm_st_entry *resbm_safetensors_find(const resbm_st_file *f, const char *name) {
    size_t i;
    if (!f || !name) return NULL;
    for (i = 0; i < f->n; i++)
        if (!strcmp(f->e[i].name, name)) return &f->e[i];
    return NULL;
}

RESBMDEF const char *resbm_safetensors_meta(const resbm_st_file *f, const char *key) {
    size_t i;
    if (!f || !key) return NULL;
    for (i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[2 * i], key)) return f->meta[2 * i + 1];
    return NULL;
}

/* ---- checkpoints ------------------------------------------------------------------------------ */
/* A checkpoint holds every model it reads or writes (each once, however often it is listed). */
static int resbm__listed_before(resbm_model *const *models, size_t i) {
    size_t j;
    for (j = 0; j < i; j++)
        if (models[j] == models[i]) return 1;
    return 0;
}
static int resbm__models_unclaim(resbm_model *const *models, size_t n_models, int rc) {
    size_t i;
    for (i = 0; i < n_models; i++)
        if (!resbm__listed_before(models, i)) resbm__model_unclaim(models[i], 0);
    return rc;
}
static int resbm__models_claim(resbm_model *const *models, size_t n_models) {
    size_t i;
    int rc;
    if (!models) return RESBM_EINVAL;
    for (i = 0; i < n_models; i++)
        if (!models[i]) return RESBM_EINVAL;
    for (i = 0; i < n_models; i++)
        if (!resbm__listed_before(models, i) && (rc = resbm__model_claim(models[i])))
            return resbm__models_unclaim(models, i, rc); /* let go of those held so far */
    return RESBM_OK;
}

static const char *resbm__opt_name(int kind) {
    return kind == RESBM_OPT_MUON ? "muon" : kind == RESBM_OPT_SGD ? "sgd" : "adamw";
}

static void resbm__config_string(const resbm_model *m, char *buf, size_t len) {
    const resbm_model_config *c = &m->cfg;
    int n;
    if (m->side >= 0) { /* a boundary alone */
        snprintf(buf, len, "boundary %s index=%d d=%d r=%d m=%d identity=%d",
                 m->side == RESBM_ENCODER ? "encoder" : "decoder",
                 m->side == RESBM_ENCODER ? c->stage : c->stage - 1, c->d, (int)m->r, (int)m->m, m->identity);
        return;
    }
    /* with bottlenecks the stage split decides where they sit; without, any split loads */
    if (m->host)
        n = snprintf(buf, len, "host=%016llx vocab=%d d=%d layers=%d seq=%d r=%d m=%d identity=%d",
                     (unsigned long long)resbm__arch_hash(m), c->vocab, c->d, c->layers, c->seq,
                     (int)m->r, (int)m->m, m->identity);
    else
        n = snprintf(buf, len, "vocab=%d d=%d layers=%d heads=%d ff=%d seq=%d r=%d m=%d identity=%d",
                     c->vocab, c->d, c->layers, c->heads, c->ff, c->seq, (int)m->r, (int)m->m, m->identity);
    if (m->r < (size_t)c->d && n > 0 && (size_t)n < len) snprintf(buf + n, len - (size_t)n, " stages=%d", c->stages);
}

static int resbm__checkpoint_save(const char *path, resbm_model *const *models, size_t n_models,
                                  const char *const *meta_kv, size_t n_meta) {
    resbm_st_entry *e;
    char *names, cfg[256], step[32];
    const char **kv;
    size_t i, j, n = 0, cap = 0, k, bytes, t0, t1, t2;
    int rc;
    if (!path || !models || n_models == 0 || (n_meta && !meta_kv)) return RESBM_EINVAL;
    for (i = 0; i < n_models; i++) {
        if (!models[i] || models[i]->step != models[0]->step || models[i]->opt.kind != models[0]->opt.kind)
            return RESBM_EINVAL;
        if (models[i]->in_stream) return RESBM_ESTATE; /* its steps in flight would be lost */
        if (resbm_size_mul(&t0, 3, models[i]->nparams) || resbm_size_add(&cap, cap, t0)) return RESBM_EOVERFLOW;
    }
    /* the entries, their names, and the metadata's pointers, in one block */
    if (resbm_size_mul(&t0, cap, sizeof(resbm_st_entry) + RESBM_NAME_MAX * 2) ||
        resbm_size_mul(&t1, n_meta, 2) || resbm_size_add(&t1, t1, 8) || resbm_size_mul(&t2, t1, sizeof(char *)) ||
        resbm_size_add(&bytes, t0, t2))
        return RESBM_EOVERFLOW;
    resbm__config_string(models[0], cfg, sizeof(cfg));
    for (i = 0; i < n_models; i++) { /* a file the loader would refuse is never written: one job
                                        (the file has one config), every value finite */
        char other[256];
        int ok = 0;
        resbm__config_string(models[i], other, sizeof(other));
        if (strcmp(cfg, other)) return RESBM_EINVAL;
        RESBM__TRY(resbm__model_finite(models[i], &ok));
        if (!ok) return RESBM_ENONFINITE;
    }
    e = (resbm_st_entry *)resbm__alloc(bytes, NULL);
    if (!e) return RESBM_ENOMEM;
    names = (char *)(e + cap);
    kv = (const char **)(names + cap * RESBM_NAME_MAX * 2);
    for (i = 0; i < n_models; i++)
        for (j = 0; j < models[i]->nparams; j++) {
            const resbm_param *p = &models[i]->params[j];
            const float *src[3];
            const char *suffix[3] = {"", ".m", ".v"};
            int t;
            src[0] = p->value.data; src[1] = p->m; src[2] = p->v;
            for (t = 0; t < 3; t++) {
                char *nm = names + n * RESBM_NAME_MAX * 2;
                if (!src[t]) continue;
                snprintf(nm, RESBM_NAME_MAX * 2, "%s%s%s", t ? "opt." : "", p->name, suffix[t]);
                e[n].name = nm;
                e[n].dtype = RESBM_DT_F32;
                e[n].ndim = p->value.ndim;
                e[n].shape[0] = p->value.ne[0];
                e[n].shape[1] = p->value.ne[1];
                e[n].data = src[t];
                n++;
            }
        }
    snprintf(step, sizeof(step), "%ld", models[0]->step);
    kv[0] = "format"; kv[1] = "resbm-checkpoint-1";
    kv[2] = "step"; kv[3] = step;
    kv[4] = "config"; kv[5] = cfg;
    kv[6] = "opt"; kv[7] = resbm__opt_name(models[0]->opt.kind);
    for (k = 0; k < 2 * n_meta; k++) kv[8 + k] = meta_kv[k];
    rc = resbm_safetensors_write(path, e, n, kv, 4 + n_meta);
    resbm__dealloc(e, NULL);
    return rc;
}

RESBMDEF int resbm_checkpoint_save(const char *path, resbm_model *const *models, size_t n_models,
                                   const char *const *meta_kv, size_t n_meta) {
    RESBM__TRY(resbm__models_claim(models, n_models));
    return resbm__models_unclaim(models, n_models,
                                 resbm__checkpoint_save(path, models, n_models, meta_kv, n_meta));
}

static int resbm__why(char *why, size_t len, int rc, const char *fmt, const char *a, const char *b) {
    size_t i;
    if (why && len) {
        snprintf(why, len, fmt, a, b);
        for (i = 0; why[i]; i++) /* one line, whatever the file's metadata holds */
            if ((unsigned char)why[i] < 0x20 || why[i] == 0x7f) why[i] = '?';
    }
    return rc;
}

static int resbm__checkpoint_load(const char *path, resbm_model *const *models, size_t n_models,
                                  char *why, size_t why_len) {
    resbm_st_file *f;
    const char *v;
    char cfg[256];
    size_t i, j, max = 1 << 20;
    long step;
    char *endp;
    int rc = RESBM_OK, pass;
    if (why && why_len) why[0] = 0;
    if (!path || !models || n_models == 0) return RESBM_EINVAL;
    for (i = 0; i < n_models; i++) {
        if (!models[i]) return RESBM_EINVAL;
        max += 3 * 4 * models[i]->nfloats + 64 * models[i]->nparams * 3;
    }
    max *= 64; /* the file may hold other stages' tensors too */
    if ((rc = resbm_safetensors_read(path, max, &f)))
        return resbm__why(why, why_len, rc, "%s: %s", path,
                          rc == RESBM_EIO ? "cannot be read" : "is not a well-formed safetensors file of a plausible size");
    v = resbm_safetensors_meta(f, "format");
    if (!v || strcmp(v, "resbm-checkpoint-1")) { rc = resbm__why(why, why_len, RESBM_EFORMAT, "%s: %s", path, "not a resbm checkpoint (metadata format)"); goto done; }
    v = resbm_safetensors_meta(f, "step");
    errno = 0;
    step = v && *v >= '0' && *v <= '9' ? strtol(v, &endp, 10) : -1;
    if (step < 0 || errno || *endp || step > RESBM__MAX_STEP) { rc = resbm__why(why, why_len, RESBM_EFORMAT, "%s: %s", path, "bad step in metadata"); goto done; }
    for (i = 0; i < n_models; i++) {
        resbm__config_string(models[i], cfg, sizeof(cfg));
        v = resbm_safetensors_meta(f, "config");
        if (!v || strcmp(v, cfg)) {
            rc = resbm__why(why, why_len, RESBM_EFORMAT, "model shape differs: file has \"%s\", this run \"%s\"", v ? v : "(none)", cfg);
            goto done;
        }
    }
    v = resbm_safetensors_meta(f, "opt");
    for (i = 0; i < n_models; i++) /* every model's moments are read as the file's kind */
        if (!v || strcmp(v, resbm__opt_name(models[i]->opt.kind))) {
            rc = resbm__why(why, why_len, RESBM_EFORMAT, "optimizer state is for %s, this run uses %s", v ? v : "(none)",
                            resbm__opt_name(models[i]->opt.kind));
            goto done;
        }
    /* pass 0 checks every tensor; pass 1 copies (nothing changes unless pass 0 succeeded) */
    for (pass = 0; pass < 2; pass++)
        for (i = 0; i < n_models; i++)
            for (j = 0; j < models[i]->nparams; j++) {
                resbm_param *p = &models[i]->params[j];
                float *dst[3];
                const char *suffix[3] = {"", ".m", ".v"};
                int t;
                dst[0] = p->value.data; dst[1] = p->m; dst[2] = p->v;
                for (t = 0; t < 3; t++) {
                    char nm[RESBM_NAME_MAX * 2];
                    const resbm_st_entry *e;
                    size_t cnt = p->value.ne[0] * p->value.ne[1], q;
                    const unsigned char *src;
                    if (!dst[t]) continue;
                    snprintf(nm, sizeof(nm), "%s%s%s", t ? "opt." : "", p->name, suffix[t]);
                    e = resbm_safetensors_find(f, nm);
                    src = e ? (const unsigned char *)e->data : NULL;
                    if (pass == 0) {
                        if (!e) { rc = resbm__why(why, why_len, RESBM_EFORMAT, "%s: tensor %s is missing", path, nm); goto done; }
                        if (e->dtype != RESBM_DT_F32 || e->ndim != p->value.ndim || e->shape[0] != p->value.ne[0] ||
                            (e->ndim == 2 && e->shape[1] != p->value.ne[1])) {
                            rc = resbm__why(why, why_len, RESBM_EFORMAT, "%s: tensor %s has the wrong dtype or shape", path, nm);
                            goto done;
                        }
                        for (q = 0; q < cnt; q++) {
                            uint32_t u = resbm__get32(src + 4 * q);
                            if ((u & 0x7f800000u) == 0x7f800000u) {
                                rc = resbm__why(why, why_len, RESBM_ENONFINITE, "%s: tensor %s holds NaN or Inf", path, nm);
                                goto done;
                            }
                            if (t == 2 && (u & 0x80000000u) && (u & 0x7fffffffu)) { /* AdamW's v >= 0 */
                                rc = resbm__why(why, why_len, RESBM_EFORMAT, "%s: tensor %s holds a negative second moment", path, nm);
                                goto done;
                            }
                        }
                    } else {
                        for (q = 0; q < cnt; q++) dst[t][q] = resbm__bitsf(resbm__get32(src + 4 * q));
                    }
                }
            }
    for (i = 0; i < n_models; i++) {
        models[i]->step = step;
        models[i]->has_backup = 0; /* the state before the last update is not this file's */
        models[i]->loads++;
        resbm__slots_drop(models[i]);
    }
done:
    resbm_safetensors_free(f);
    return rc;
}

RESBMDEF int resbm_checkpoint_load(const char *path, resbm_model *const *models, size_t n_models,
                                   char *why, size_t why_len) {
    int rc = resbm__models_claim(models, n_models);
    if (rc) return resbm__why(why, why_len, rc, "%s%s", rc == RESBM_ESTATE ? "a model is in use (a call "
                              "on it or on its stage runs)" : "no model to load into", "");
    return resbm__models_unclaim(models, n_models,
                                 resbm__checkpoint_load(path, models, n_models, why, why_len));
}

#endif /* RESBM_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
MIT License

Copyright (c) 2026 the resbm.h authors

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
------------------------------------------------------------------------------
*/
