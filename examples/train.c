/* train.c - train a byte-level ResBM language model across pipeline stages on real text.

   Threads (default): all S stages in this process, one thread each, over the in-process
   transport, optionally shaped to a slow link:
       train --data data/brown.txt --stages 4 --ratio 128 --bandwidth-mbps 80 --steps 500
   One process per stage over TCP (run one command per stage, same flags otherwise):
       train --stage 0 --stages 2 --listen 127.0.0.1:9000 --peers 127.0.0.1:9000,127.0.0.1:9001 ...
   One MPI rank per stage: examples/train_mpi.c, which includes this file.

   Bytes are tokens (vocab 256). --data splits the file 90/10 by position into train and val;
   step i, row b trains on a random window drawn from PCG32(seed, i), so a run is reproducible
   and a resumed run sees the same batches. --tokens-bin takes windows in order instead:
   step i, row b starts at (i*batch + b) * (seq+1) (wrapping), so another implementation can
   replay them. The last line printed is the machine-readable summary (docs/design.md §8). */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#define RESBM_IMPLEMENTATION
#include "../resbm.h"
#ifndef TRAIN_NO_MAIN
#include "tcp.h" /* the TCP adapter: one process per stage */
#endif

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- options ------------------------------------------------------------------------------------ */
typedef struct host_engine host_engine;
typedef struct {
    const char *data, *tokens_bin, *save, *load, *save_init, *log, *plot, *listen, *peers, *secret_file;
    int d, layers, heads, ff, seq, batch, micro, stages, ratio, r, m, no_identity, gemm_bf16;
    int wire_fwd, wire_bwd, opt, steps, schedule_steps, threads, eval_every, eval_rows, save_every;
    int schedule, async_warmup; /* RESBM_SCHEDULE_*; async: exact steps first */
    int stage, timeout_ms, sample_len, quiet;
    float lr, bottleneck_lr;
    double bandwidth_mbps, latency_ms, link_mbps, act_budget_mb, predict;
    uint64_t seed;
    const host_engine *engine; /* NULL: the built-in model; else a host's layers (examples/gpt2.c) */
} options;

/* A host engine gives every stage its own layers: `create` builds stage s's for these options
   and points cfg->model.host at them (and may set cfg->model.pool), before resbm_stage_init. */
struct host_engine {
    const char *name; /* in the job digest that TCP peers compare */
    int (*create)(const options *o, int s, resbm_stage_config *cfg, void **state);
    void (*destroy)(void *state);
};
#ifdef TRAIN_HOST_ENGINE
static const host_engine *TRAIN_HOST_ENGINE(void); /* defined by the file that includes this one */
#endif

static void usage(FILE *f) {
    fprintf(f,
        "usage: train [--data FILE.txt | --tokens-bin FILE] [--d 256] [--layers 8] [--heads 4] [--ff F]\n"
        "             [--seq 128] [--batch 8] [--micro 4] [--stages 4] [--ratio 128 | --r R] [--m M]\n"
        "             [--no-identity] [--wire f32|bf16|f16|i8] [--wire-bwd f32|bf16|f16|i8]\n"
        "             [--opt adamw|muon|sgd] [--lr X] [--bottleneck-lr-scale X] [--steps N] [--schedule-steps N] [--seed S]\n"
        "             [--threads T] [--bandwidth-mbps B] [--latency-ms L] [--link-mbps B] [--eval-every K]\n"
        "             [--eval-rows R] [--save FILE] [--save-every K] [--load FILE] [--save-init FILE]\n"
        "             [--log FILE.csv] [--plot FILE.svg] [--sample N] [--timeout-ms MS] [--schedule exact|async] [--async-predict X]\n"
        "             [--async-warmup N] [--act-budget-mb MB] [--gemm f32|bf16] [--quiet]\n"
        "             [--stage s --listen HOST:PORT --peers H0:P0,H1:P1,... [--secret-file F]]   (one process per stage)\n");
}

static int die_usage(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "train: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    usage(stderr);
    return 2;
}

/* A number as typed: a digit, a sign or a point first (strtol and strtod would skip spaces, and
   a " -1" would wrap through strtoull). */
static int plain_number(const char *s) {
    return (*s >= '0' && *s <= '9') || *s == '-' || *s == '.';
}

static int parse_int(const char *s, int lo, int hi, int *out) {
    char *e;
    long v;
    if (!plain_number(s)) return 0;
    errno = 0;
    v = strtol(s, &e, 10);
    if (errno || e == s || *e || v < lo || v > hi) return 0;
    *out = (int)v;
    return 1;
}

static int parse_double(const char *s, double lo, double hi, double *out) {
    char *e;
    double v;
    if (!plain_number(s)) return 0;
    errno = 0;
    v = strtod(s, &e);
    if (errno || e == s || *e || !(v >= lo && v <= hi)) return 0;
    *out = v;
    return 1;
}

static int parse_wire(const char *s) {
    return !strcmp(s, "f32") ? RESBM_WIRE_F32 : !strcmp(s, "bf16") ? RESBM_WIRE_BF16
         : !strcmp(s, "f16") ? RESBM_WIRE_F16 : !strcmp(s, "i8") ? RESBM_WIRE_I8 : -1;
}

static const char *wire_name(int w) {
    static const char *n[] = {"f32", "bf16", "f16", "i8"};
    return n[w];
}

/* Whether a file may be written at path: nothing there yet, or a regular file, or a link to one
   (its old copy is renamed to path.prev first, which must never move a directory or a device).
   When not, errno says why (EEXIST: something else is there). */
static int writable_target(const char *path) {
    struct stat sb;
    if (stat(path, &sb)) return errno == ENOENT;
    if (!S_ISREG(sb.st_mode)) errno = EEXIST;
    return S_ISREG(sb.st_mode);
}

/* A path's directory (stat'ed: its device and inode) and last name: a file not made yet is known
   by these. 0 when the directory is not there. */
static int dir_and_name(const char *path, struct stat *dir, const char **name) {
    const char *slash = strrchr(path, '/');
    char d[4097];
    size_t dl = slash ? (size_t)(slash - path) : 0;
    if (dl >= sizeof(d)) return 0;
    if (!slash) strcpy(d, ".");
    else if (!dl) strcpy(d, "/");
    else { memcpy(d, path, dl); d[dl] = 0; }
    *name = slash ? slash + 1 : path;
    return !stat(d, dir);
}

/* Whether two paths name one file: the same existing file by any name (links too), or the same
   name in the same directory for files not made yet. */
static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    const char *na, *nb;
    if (!a || !b) return 0;
    if (!stat(a, &sa) && !stat(b, &sb)) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    if (!strcmp(a, b)) return 1;
    return dir_and_name(a, &sa, &na) && dir_and_name(b, &sb, &nb) && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino && !strcmp(na, nb);
}

/* Returns 0, PARSE_HELP for --help (the caller prints the usage: under MPI, one rank does, and
   every rank still finalizes), or the exit code (2) after printing why. */
enum { PARSE_HELP = -1 };
static int parse_args(int argc, char **argv, options *o, int default_stages) {
    int i;
    memset(o, 0, sizeof(*o));
    o->d = 256; o->layers = 8; o->heads = 4; o->seq = 128; o->batch = 8; o->micro = 4; o->stages = default_stages;
    o->ratio = -1; o->r = -1; o->wire_fwd = o->wire_bwd = -1; o->opt = RESBM_OPT_ADAMW; o->steps = 200;
    o->threads = 1; o->eval_every = 100; o->eval_rows = 32; o->stage = -1; o->timeout_ms = 60000;
    o->link_mbps = -1.0; o->predict = -1.0;
    o->seed = 1337; o->sample_len = 200;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        int flag_only = 1;
        if (!strcmp(a, "--no-identity")) o->no_identity = 1;
        else if (!strcmp(a, "--quiet")) o->quiet = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) return PARSE_HELP;
        else flag_only = 0;
        if (flag_only) continue;
        if (!v) return die_usage("%s needs a value", a);
        i++;
#define INT_FLAG(name, field, lo, hi) \
        else if (!strcmp(a, name)) { if (!parse_int(v, lo, hi, &o->field)) return die_usage("%s: '%s' is not an integer in [%d, %d]", a, v, lo, hi); }
        if (0) {}
        INT_FLAG("--d", d, 1, 1 << 16)
        INT_FLAG("--layers", layers, 1, 4096)
        INT_FLAG("--heads", heads, 1, 4096)
        INT_FLAG("--ff", ff, 1, 1 << 20)
        INT_FLAG("--seq", seq, 2, 1 << 20)
        INT_FLAG("--batch", batch, 1, 1 << 20)
        INT_FLAG("--micro", micro, 1, 1 << 20)
        INT_FLAG("--stages", stages, 1, 4096)
        INT_FLAG("--ratio", ratio, 1, 1 << 16)
        INT_FLAG("--r", r, 1, 1 << 16)
        INT_FLAG("--m", m, 1, 1 << 20)
        INT_FLAG("--steps", steps, 0, 1 << 30)
        INT_FLAG("--schedule-steps", schedule_steps, 1, 1 << 30)
        INT_FLAG("--threads", threads, 1, 1024)
        INT_FLAG("--eval-every", eval_every, 0, 1 << 30)
        INT_FLAG("--eval-rows", eval_rows, 1, 1 << 20)
        INT_FLAG("--save-every", save_every, 0, 1 << 30)
        INT_FLAG("--stage", stage, 0, 4095)
        INT_FLAG("--timeout-ms", timeout_ms, 1, 1 << 30)
        INT_FLAG("--sample", sample_len, 0, 4096)
        INT_FLAG("--async-warmup", async_warmup, 0, 1 << 30)
#undef INT_FLAG
        else if (!strcmp(a, "--seed")) {
            char *e;
            errno = 0;
            o->seed = strtoull(v, &e, 10);
            if (errno || *v < '0' || *v > '9' || *e || !o->seed) return die_usage("--seed: '%s' is not a positive integer", v);
        }
        else if (!strcmp(a, "--bottleneck-lr-scale")) { if (!parse_double(v, 1e-3, 1e3, &x)) return die_usage("--bottleneck-lr-scale: '%s' is not in [0.001, 1000]", v); o->bottleneck_lr = (float)x; }
        else if (!strcmp(a, "--lr")) { if (!parse_double(v, 1e-9, 10.0, &x)) return die_usage("--lr: '%s' is not in (0, 10]", v); o->lr = (float)x; }
        else if (!strcmp(a, "--bandwidth-mbps")) { if (!parse_double(v, 0.0, 1e6, &o->bandwidth_mbps)) return die_usage("--bandwidth-mbps: '%s' is not in [0, 1e6]", v); }
        else if (!strcmp(a, "--link-mbps")) { if (!parse_double(v, 0.0, 1e6, &o->link_mbps)) return die_usage("--link-mbps: '%s' is not in [0, 1e6]", v); }
        else if (!strcmp(a, "--async-predict")) { if (!parse_double(v, 0.0, 16.0, &o->predict)) return die_usage("--async-predict: '%s' is not in [0, 16]", v); }
        else if (!strcmp(a, "--act-budget-mb")) { if (!parse_double(v, 0.0, 1e7, &o->act_budget_mb)) return die_usage("--act-budget-mb: '%s' is not in [0, 1e7]", v); }
        else if (!strcmp(a, "--latency-ms")) { if (!parse_double(v, 0.0, 1e5, &o->latency_ms)) return die_usage("--latency-ms: '%s' is not in [0, 1e5]", v); }
        else if (!strcmp(a, "--gemm")) {
            if (strcmp(v, "f32") && strcmp(v, "bf16")) return die_usage("--gemm: '%s' is not f32 or bf16", v);
            o->gemm_bf16 = !strcmp(v, "bf16");
        }
        else if (!strcmp(a, "--wire")) { if ((o->wire_fwd = parse_wire(v)) < 0) return die_usage("--wire: '%s' is not f32, bf16, f16 or i8", v); }
        else if (!strcmp(a, "--wire-bwd")) { if ((o->wire_bwd = parse_wire(v)) < 0) return die_usage("--wire-bwd: '%s' is not f32, bf16, f16 or i8", v); }
        else if (!strcmp(a, "--opt")) {
            if (!strcmp(v, "adamw")) o->opt = RESBM_OPT_ADAMW;
            else if (!strcmp(v, "muon")) o->opt = RESBM_OPT_MUON;
            else if (!strcmp(v, "sgd")) o->opt = RESBM_OPT_SGD;
            else return die_usage("--opt: '%s' is not adamw, muon or sgd", v);
        }
        else if (!strcmp(a, "--schedule")) { /* docs/design.md §9 */
            if (!strcmp(v, "exact")) o->schedule = RESBM_SCHEDULE_EXACT;
            else if (!strcmp(v, "async")) o->schedule = RESBM_SCHEDULE_ASYNC;
            else return die_usage("--schedule: '%s' is not exact or async", v);
        }
        else if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--tokens-bin")) o->tokens_bin = v;
        else if (!strcmp(a, "--save")) o->save = v;
        else if (!strcmp(a, "--load")) o->load = v;
        else if (!strcmp(a, "--save-init")) o->save_init = v;
        else if (!strcmp(a, "--log")) o->log = v;
        else if (!strcmp(a, "--plot")) o->plot = v;
        else if (!strcmp(a, "--listen")) o->listen = v;
        else if (!strcmp(a, "--peers")) o->peers = v;
        else if (!strcmp(a, "--secret-file")) o->secret_file = v;
        else return die_usage("unknown flag %s", a);
    }
    if (o->wire_fwd < 0) o->wire_fwd = RESBM_WIRE_F32;
    if (o->wire_bwd < 0) o->wire_bwd = o->wire_fwd;
    if (!o->data == !o->tokens_bin) return die_usage("give exactly one of --data FILE.txt or --tokens-bin FILE");
    if (o->batch % o->micro) return die_usage("--batch %d is not a multiple of --micro %d", o->batch, o->micro);
    if (o->d % o->heads || (o->d / o->heads) % 2) return die_usage("--d %d must split into --heads %d of even width", o->d, o->heads);
    if (o->stages > o->layers) return die_usage("--stages %d is more than --layers %d", o->stages, o->layers);
    if (o->ratio > 0 && o->r > 0) return die_usage("--ratio %d and --r %d both set r: give one", o->ratio, o->r);
    if (o->ratio < 0) o->ratio = 128;
    if (o->r < 0) o->r = o->d / o->ratio > 0 ? o->d / o->ratio : 1;
    if (o->r > o->d) return die_usage("--r %d is wider than --d %d", o->r, o->d);
    if (o->stage >= 0 && o->stage >= o->stages) return die_usage("--stage %d is not below --stages %d", o->stage, o->stages);
    if ((o->stage >= 0) != (o->listen != NULL) || (o->stage >= 0) != (o->peers != NULL))
        return die_usage("one process per stage needs all of --stage, --listen and --peers");
    if (o->secret_file && o->stage < 0) return die_usage("--secret-file is for one process per stage (--stage)");
    {   /* file names fit the buffers they are built in (".stageN.safetensors.prev" added), and a
           checkpoint is never written over a directory or a device */
        const char *paths[] = {o->data, o->tokens_bin, o->save, o->load, o->save_init, o->log, o->plot, o->secret_file};
        for (i = 0; i < (int)(sizeof(paths) / sizeof(paths[0])); i++)
            if (paths[i] && strlen(paths[i]) > 4000) return die_usage("a file name of %zu bytes: at most 4000", strlen(paths[i]));
        if (o->save && o->stage < 0 && !writable_target(o->save))
            return die_usage("--save %s: it exists and is not a regular file", o->save);
    }
    {   /* an output never overwrites an input or another output (--save may be the --load it resumes) */
        const char *in[] = {o->data, o->tokens_bin, o->load, o->secret_file};
        const char *out[] = {o->log, o->plot, o->save, o->save_init};
        static const char *const in_flag[] = {"--data", "--tokens-bin", "--load", "--secret-file"};
        static const char *const out_flag[] = {"--log", "--plot", "--save", "--save-init"};
        int a, b;
        for (a = 0; a < 4; a++) {
            for (b = 0; b < 4; b++)
                if (!(a == 2 && b == 2) && same_file(out[a], in[b]))
                    return die_usage("%s %s is the %s file", out_flag[a], out[a], in_flag[b]);
            for (b = a + 1; b < 4; b++)
                if (same_file(out[a], out[b])) return die_usage("%s and %s both name %s", out_flag[a], out_flag[b], out[a]);
        }
    }
    if (!o->schedule_steps) o->schedule_steps = o->steps;
    return 0;
}

/* ---- data ------------------------------------------------------------------------------------- */
typedef struct {
    unsigned char *bytes;
    size_t len, train_len, val_off, val_len;
    uint64_t hash; /* FNV-1a of the bytes: stages in other processes check they read the same */
} dataset;

/* FNV-1a, 64 bits: the data's fingerprint and the job digest. */
static uint64_t fnv1a(const void *bytes, size_t n) {
    const unsigned char *b = (const unsigned char *)bytes;
    uint64_t h = 14695981039346656037ULL;
    size_t i;
    for (i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ULL; }
    return h;
}

/* Opens a regular file for reading, never blocking: a FIFO without a writer would wait forever
   in fopen, a device would never end. NULL with errno set otherwise. */
static FILE *open_regular(const char *path) {
    struct stat sb;
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    FILE *f;
    if (fd < 0) return NULL;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) { close(fd); errno = EINVAL; return NULL; }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0 || !(f = fdopen(fd, "rb"))) {
        close(fd);
        return NULL;
    }
    return f;
}

static int load_data(const options *o, dataset *ds) {
    const char *path = o->data ? o->data : o->tokens_bin;
    FILE *f = open_regular(path);
    long n;
    size_t need = (size_t)o->seq + 1;
    memset(ds, 0, sizeof(*ds));
    if (!f) {
        fprintf(stderr, "train: cannot open %s: %s\n", path, errno == EINVAL ? "not a regular file" : strerror(errno));
        return 0;
    }
    if (fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        fprintf(stderr, "train: cannot read %s\n", path);
        fclose(f);
        return 0;
    }
    ds->bytes = (unsigned char *)malloc((size_t)n + 1);
    if (!ds->bytes || fread(ds->bytes, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "train: cannot read %s\n", path);
        fclose(f);
        return 0;
    }
    fclose(f);
    ds->len = (size_t)n;
    ds->hash = fnv1a(ds->bytes, ds->len);
    ds->val_off = ds->len - ds->len / 10;
    ds->val_len = ds->len / 10;
    ds->train_len = o->tokens_bin ? ds->len : ds->val_off;
    if (ds->train_len < need || ds->val_len < need) {
        fprintf(stderr, "train: %s has %zu bytes; a 90/10 split needs at least %zu (10 x (seq + 1)) for seq %d\n",
                path, ds->len, 10 * need, o->seq);
        return 0;
    }
    return 1;
}

/* The batch of step `step`: tokens and targets [batch * seq]. */
static void get_batch(const options *o, const dataset *ds, long step, int32_t *tok, int32_t *tg) {
    size_t T = (size_t)o->seq, b, t, span = ds->train_len - T;
    resbm_rng r;
    resbm_rng_seed(&r, o->seed, 0x1000 + (uint64_t)step);
    for (b = 0; b < (size_t)o->batch; b++) {
        size_t off;
        if (o->tokens_bin) off = (((size_t)step * (size_t)o->batch + b) * (T + 1)) % span;
        else off = (size_t)(((uint64_t)resbm_rng_u32(&r) << 32 | resbm_rng_u32(&r)) % span);
        for (t = 0; t < T; t++) {
            tok[b * T + t] = ds->bytes[off + t];
            tg[b * T + t] = ds->bytes[off + t + 1];
        }
    }
}

/* The fixed validation set: up to eval_rows windows of the val split, evenly spaced. */
static size_t get_val(const options *o, const dataset *ds, int32_t *tok, int32_t *tg) {
    size_t T = (size_t)o->seq, rows = RESBM__MIN((size_t)o->eval_rows, ds->val_len / (T + 1)), b, t;
    size_t stride = rows ? (ds->val_len - T - 1) / rows : 0;
    for (b = 0; b < rows; b++)
        for (t = 0; t < T; t++) {
            tok[b * T + t] = ds->bytes[ds->val_off + b * stride + t];
            tg[b * T + t] = ds->bytes[ds->val_off + b * stride + t + 1];
        }
    return rows;
}

/* ---- one stage's loop, shared by every mode ------------------------------------------------------ */
/* Threads mode: a barrier that a failing stage breaks, so the others never wait for it forever. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, waiting, broken;
    unsigned long generation;
} gate;

static int gate_wait(gate *g) { /* 0 when all arrived, -1 when a stage failed */
    int rc;
    pthread_mutex_lock(&g->mu);
    if (!g->broken && ++g->waiting == g->n) {
        g->waiting = 0;
        g->generation++;
        pthread_cond_broadcast(&g->cv);
    } else if (!g->broken) {
        unsigned long gen = g->generation;
        while (gen == g->generation && !g->broken) pthread_cond_wait(&g->cv, &g->mu);
    }
    rc = g->broken ? -1 : 0;
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static void gate_break(gate *g) {
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    g->broken = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

typedef struct {
    const options *o;
    const dataset *ds;
    resbm_stage *st;
    void *engine;               /* the host engine's state for this stage, if any */
    int s, rc;
    long start_step;
    gate *barrier;              /* threads mode: saves happen with every stage at rest */
    resbm_model **all;          /* threads mode: every stage's model, for one checkpoint file */
    /* results (stage 0's are printed) */
    float last_loss, val_loss;
    long logged;                /* the last step whose train loss is in the log */
    double train_s;
    uint64_t wire_fwd, wire_bwd; /* training frames only */
    int32_t sample[4096];
    size_t sample_n, prompt_n;
    int32_t prompt[64];
    /* progress, written by stage 0 */
    FILE *log;
    double *plot_tok, *plot_train, *plot_val_tok, *plot_val;
    size_t plot_n, plot_val_n;
} stage_ctx;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void human_bytes(double b, char *out, size_t n) {
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000.0 && i < 4) { b /= 1000.0; i++; }
    snprintf(out, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void progress(const stage_ctx *c, long step, float loss, double tps, double elapsed, uint64_t wire) {
    const options *o = c->o;
    long total = o->steps, done = step + 1 - c->start_step, left = total - step - 1;
    double eta = done > 0 ? elapsed / (double)done * (double)left : 0.0;
    char wb[32];
    human_bytes((double)wire, wb, sizeof(wb));
    if (o->quiet) return;
    if (isatty(STDOUT_FILENO)) {
        int w = 24, fill = total ? (int)((double)(step + 1) / (double)total * w) : w, i;
        printf("\r[");
        for (i = 0; i < w; i++) putchar(i < fill ? '#' : '.');
        printf("] step %ld/%ld  loss %.4f  %.0f tok/s  stage 0 sent %s  ETA %dm%02ds   ", step + 1, total, loss,
               tps, wb, (int)eta / 60, (int)eta % 60);
        fflush(stdout);
    } else {
        long every = total >= 20 ? total / 20 : 1;
        if ((step + 1) % every == 0 || step + 1 == total)
            printf("step %ld/%ld loss %.4f tok/s %.0f stage0_sent %s eta %.0fs\n", step + 1, total, loss, tps, wb, eta);
    }
}

static void ckpt_path(const options *o, const char *path, int s, char *out, size_t n) {
    size_t L = strlen(path);
    const char *ext = ".safetensors";
    size_t E = strlen(ext);
    if (o->stage < 0) { snprintf(out, n, "%s", path); return; } /* threads: one file */
    if (L > E && !strcmp(path + L - E, ext)) snprintf(out, n, "%.*s.stage%d%s", (int)(L - E), path, s, ext);
    else snprintf(out, n, "%s.stage%d", path, s);
}

/* Stage 0: the train loss of step loss_step (0-based; async reports two behind, and a flush the
   last), once, when it is first known. */
static void log_loss(stage_ctx *c, long loss_step, float loss, double tps) {
    long at = loss_step + 1;
    size_t N = (size_t)c->o->batch * (size_t)c->o->seq;
    if (c->s != 0 || at <= c->logged) return;
    c->logged = at;
    if (c->log && tps > 0.0) fprintf(c->log, "%ld,%.0f,%.6f,,%.1f\n", at, (double)at * (double)N, loss, tps);
    else if (c->log) fprintf(c->log, "%ld,%.0f,%.6f,,\n", at, (double)at * (double)N, loss);
    if (c->plot_tok) { c->plot_tok[c->plot_n] = (double)at * (double)N; c->plot_train[c->plot_n++] = loss; }
}

/* Async: the steps still in flight finish and land, on every stage (their gradient frames are
   training traffic, their time training time when *t is given). Exact: nothing to do. */
static int flush_steps(stage_ctx *c, double *t) {
    resbm_stage_stats before, after;
    double t0 = now_s();
    int rc;
    memset(&before, 0, sizeof(before));
    memset(&after, 0, sizeof(after));
    resbm_stage_get_stats(c->st, &before);
    rc = resbm_stage_flush(c->st, &c->last_loss);
    resbm_stage_get_stats(c->st, &after);
    c->wire_fwd += after.bytes_sent[RESBM_KIND_ACT] - before.bytes_sent[RESBM_KIND_ACT];
    c->wire_bwd += after.bytes_sent[RESBM_KIND_GRAD] - before.bytes_sent[RESBM_KIND_GRAD];
    if (t) *t += now_s() - t0;
    if (!rc) log_loss(c, after.loss_step, c->last_loss, 0.0);
    if (rc) fprintf(stderr, "train: stage %d: cannot finish the steps in flight: %s\n", c->s, resbm_strerror(rc));
    return rc;
}

/* Writes the checkpoint: threads mode, stage 0 writes every stage's models while the others
   wait at the barrier; one process per stage, each writes its own file. */
static int save_ckpt(stage_ctx *c, const char *path) {
    char p[4096], seed[32], stages[16];
    const char *meta[4];
    int rc = RESBM_OK;
    snprintf(seed, sizeof(seed), "%llu", (unsigned long long)c->o->seed);
    snprintf(stages, sizeof(stages), "%d", c->o->stages);
    meta[0] = "seed"; meta[1] = seed; meta[2] = "stages"; meta[3] = stages;
    ckpt_path(c->o, path, c->s, p, sizeof(p));
    if ((rc = flush_steps(c, NULL))) { /* async: the steps in flight land first */
        gate_break(c->barrier);
        return rc;
    }
    if (c->barrier && gate_wait(c->barrier)) return RESBM_ESTATE; /* another stage failed */
    if (!c->barrier || c->s == 0) {
        /* the previous generation stays as path.prev: with one process per stage a crash can fall
           between two stages' saves (a restart picks the newest step every stage has, agree_ckpt);
           in either mode a file that turns out unreadable has its predecessor beside it */
        resbm_model *m = resbm_stage_model(c->st);
        char prev[4112];
        snprintf(prev, sizeof(prev), "%s.prev", p);
        if (!writable_target(p) || !writable_target(prev)) rc = RESBM_EIO; /* not a file: errno says */
        else if (rename(p, prev) && errno != ENOENT) rc = RESBM_EIO;
        if (!rc) rc = c->barrier ? resbm_checkpoint_save(p, c->all, (size_t)c->o->stages, meta, 2)
                                 : resbm_checkpoint_save(p, &m, 1, meta, 2);
    }
    if (rc) fprintf(stderr, "train: stage %d: cannot write checkpoint %s: %s (%s)\n", c->s, p, resbm_strerror(rc),
                    rc == RESBM_EIO ? strerror(errno) : rc == RESBM_ENONFINITE ? "the model holds NaN or Inf; the last good file is kept" : "-");
    if (rc) gate_break(c->barrier);
    if (c->barrier && gate_wait(c->barrier)) return rc ? rc : RESBM_ESTATE;
    return rc;
}

static void *stage_main(void *arg) {
    stage_ctx *c = (stage_ctx *)arg;
    const options *o = c->o;
    size_t T = (size_t)o->seq, N = (size_t)o->batch * T;
    int32_t *tok = (int32_t *)malloc(N * sizeof(int32_t)), *tg = (int32_t *)malloc(N * sizeof(int32_t));
    int32_t *vtok = (int32_t *)malloc((size_t)o->eval_rows * T * sizeof(int32_t));
    int32_t *vtg = (int32_t *)malloc((size_t)o->eval_rows * T * sizeof(int32_t));
    size_t vrows;
    long step;
    double t_train = 0.0, t0;
    resbm_stage_stats before, after;
    memset(&before, 0, sizeof(before));
    memset(&after, 0, sizeof(after));
    int first = c->s == 0;
    c->rc = RESBM_OK;
    if (!tok || !tg || !vtok || !vtg) { c->rc = RESBM_ENOMEM; goto out; }
    vrows = get_val(o, c->ds, vtok, vtg);
    for (step = c->start_step; step < o->steps; step++) {
        float loss;
        get_batch(o, c->ds, step, tok, tg);
        resbm_stage_get_stats(c->st, &before);
        t0 = now_s();
        c->rc = resbm_stage_step(c->st, tok, tg, (size_t)o->batch, &loss);
        t_train += now_s() - t0;
        if (c->rc) {
            fprintf(stderr, "%strain: stage %d, step %ld: %s\n", first && isatty(STDOUT_FILENO) ? "\n" : "",
                    c->s, step, resbm_strerror(c->rc));
            goto out;
        }
        resbm_stage_get_stats(c->st, &after);
        c->wire_fwd += after.bytes_sent[RESBM_KIND_ACT] - before.bytes_sent[RESBM_KIND_ACT];
        c->wire_bwd += after.bytes_sent[RESBM_KIND_GRAD] - before.bytes_sent[RESBM_KIND_GRAD];
        c->last_loss = loss;
        if (first) {
            double tps = (double)(step + 1 - c->start_step) * (double)N / t_train;
            log_loss(c, after.loss_step, loss, tps);
            progress(c, step, loss, tps, t_train, c->wire_fwd + c->wire_bwd);
        }
        if (o->eval_every && (step + 1) % o->eval_every == 0 && step + 1 < o->steps) {
            float vl;
            if ((c->rc = flush_steps(c, &t_train))) goto out;
            if ((c->rc = resbm_stage_eval(c->st, vtok, vtg, vrows, &vl))) {
                fprintf(stderr, "train: stage %d, eval: %s\n", c->s, resbm_strerror(c->rc));
                goto out;
            }
            if (first) {
                double bpb = vl / log(2.0);
                if (!o->quiet) printf("%sstep %ld val %.4f bits/byte\n", isatty(STDOUT_FILENO) ? "\n" : "", step + 1, bpb);
                if (c->log) fprintf(c->log, "%ld,%.0f,,%.6f,\n", step + 1, (double)(step + 1) * (double)N, bpb);
                if (c->plot_val) { c->plot_val_tok[c->plot_val_n] = (double)(step + 1) * (double)N; c->plot_val[c->plot_val_n++] = bpb; }
            }
        }
        if (o->save && o->save_every && (step + 1) % o->save_every == 0 && (c->rc = save_ckpt(c, o->save))) goto out;
    }
    if ((c->rc = flush_steps(c, &t_train))) goto out;
    if (first && !o->quiet && isatty(STDOUT_FILENO)) printf("\n");
    c->train_s = t_train;
    if ((c->rc = resbm_stage_eval(c->st, vtok, vtg, vrows, &c->val_loss))) {
        fprintf(stderr, "train: stage %d, final eval: %s\n", c->s, resbm_strerror(c->rc));
        goto out;
    }
    if (o->save && (c->rc = save_ckpt(c, o->save))) goto out;
    if (o->sample_len > 0) {
        size_t i;
        c->prompt_n = RESBM__MIN((size_t)32, T - 1);
        for (i = 0; i < c->prompt_n; i++) c->prompt[i] = c->ds->bytes[c->ds->val_off + i];
        c->sample_n = RESBM__MIN((size_t)o->sample_len, sizeof(c->sample) / sizeof(c->sample[0]));
        if ((c->rc = resbm_stage_generate(c->st, c->prompt, c->prompt_n, c->sample_n, 0.8f, o->seed, c->sample))) {
            fprintf(stderr, "train: stage %d, sampling: %s\n", c->s, resbm_strerror(c->rc));
            goto out;
        }
    }
out:
    if (c->rc) gate_break(c->barrier); /* release stages waiting to save with this one */
    free(tok); free(tg); free(vtok); free(vtg);
    return NULL;
}

/* ---- setup, summary ---------------------------------------------------------------------------- */
/* The largest frame a stage sends: a microbatch of r = d floats in f32, with room to spare. */
static resbm_stage_config stage_config(const options *o, int s, const resbm_transport *tr);
/* The largest frame a stage sends, as the library reports it, or that of r = d (the raw residual)
   if larger: the mailboxes and the TCP limit are sized by it. */
static size_t frame_max_bytes(const options *o) {
    size_t lib = 0, raw = RESBM_FRAME_HEADER + 4 * (size_t)(o->batch / o->micro) * (size_t)o->seq * (size_t)o->d;
    resbm_transport none;
    resbm_stage_config c;
    memset(&none, 0, sizeof(none));
    c = stage_config(o, 0, &none);
    if (resbm_stage_max_frame(&c, &lib)) lib = 0;
    return (lib > raw ? lib : raw) + 64;
}

/* The link bandwidth the timeouts assume: --link-mbps, else the shaped --bandwidth-mbps. */
static double link_mbps(const options *o) { return o->link_mbps >= 0.0 ? o->link_mbps : o->bandwidth_mbps; }

static resbm_stage_config stage_config(const options *o, int s, const resbm_transport *tr) {
    resbm_stage_config c = resbm_stage_config_default();
    c.model.d = o->d; c.model.layers = o->layers; c.model.heads = o->heads; c.model.ff = o->ff;
    c.model.seq = o->seq; c.model.batch = o->batch / o->micro; c.model.stages = o->stages;
    c.model.stage = s; c.model.r = o->r == o->d ? 0 : o->r; c.model.m = o->m;
    c.model.no_identity = o->no_identity; c.model.threads = o->threads; c.model.seed = o->seed;
    c.model.gemm_bf16 = o->gemm_bf16;
    c.opt.kind = o->opt;
    if (o->lr > 0.0f) { if (o->opt == RESBM_OPT_MUON) c.opt.muon_lr = o->lr; else c.opt.lr = o->lr; }
    c.opt.bottleneck_lr_scale = o->bottleneck_lr; /* 0 = the default, 1 */
    c.opt.total_steps = o->schedule_steps;
    c.opt.warmup = RESBM__MIN(100, o->schedule_steps / 10);
    c.transport = *tr;
    c.n_micro = o->micro;
    c.wire_fwd = o->wire_fwd; c.wire_bwd = o->wire_bwd;
    c.timeout_ms = o->timeout_ms;
    c.link_bytes_per_sec = link_mbps(o) * 1e6 / 8.0; /* receives wait longer on a slow link */
    c.act_budget_bytes = (size_t)(o->act_budget_mb * 1048576.0); /* deeper in flight on slow links */
    c.schedule = o->schedule;
    if (o->predict >= 0.0) c.predict = (float)o->predict; /* else the library's default */
    c.async_warmup = o->async_warmup;
    return c;
}

/* Stage s: its config, the host engine's layers if there is one, then resbm_stage_init. */
static int new_stage(const options *o, int s, const resbm_transport *tr, resbm_stage **st, void **engine) {
    resbm_stage_config sc = stage_config(o, s, tr);
    int rc;
    *engine = NULL;
    if (o->engine && (rc = o->engine->create(o, s, &sc, engine))) return rc;
    if ((rc = resbm_stage_init(&sc, st)) && o->engine) {
        o->engine->destroy(*engine);
        *engine = NULL;
    }
    return rc;
}

static void free_stage(const options *o, resbm_stage *st, void *engine) {
    resbm_stage_free(st);
    if (o->engine) o->engine->destroy(engine);
}

static int write_plot(const char *path, const stage_ctx *c) {
    FILE *f = fopen(path, "w");
    double xmax = 1, ymin = 1e30, ymax = -1e30;
    size_t i;
    const double W = 720, H = 420, L = 60, R = 20, Tm = 30, B = 50;
    int bad;
    if (!f) return 0;
    for (i = 0; i < c->plot_n; i++) {
        double y = c->plot_train[i] / log(2.0);
        xmax = c->plot_tok[i] > xmax ? c->plot_tok[i] : xmax;
        ymin = y < ymin ? y : ymin; ymax = y > ymax ? y : ymax;
    }
    for (i = 0; i < c->plot_val_n; i++) {
        ymin = c->plot_val[i] < ymin ? c->plot_val[i] : ymin;
        ymax = c->plot_val[i] > ymax ? c->plot_val[i] : ymax;
    }
    if (!(ymax > ymin)) { ymin -= 1; ymax += 1; }
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"18\">loss (bits per byte) against training tokens</text>\n", L);
    fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", L, H - B, W - R, H - B);
    fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", L, Tm, L, H - B);
    for (i = 0; i <= 4; i++) {
        double y = ymin + (ymax - ymin) * (double)i / 4, py = H - B - (H - B - Tm) * (double)i / 4;
        double x = xmax * (double)i / 4, px = L + (W - L - R) * (double)i / 4;
        fprintf(f, "<text x=\"4\" y=\"%.1f\">%.2f</text>\n", py + 4, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.3g</text>\n", px, H - B + 18, x);
    }
#define PX(x) (L + (W - L - R) * (x) / xmax)
#define PY(y) (H - B - (H - B - Tm) * ((y) - ymin) / (ymax - ymin))
    fprintf(f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1\" points=\"");
    for (i = 0; i < c->plot_n; i++) fprintf(f, "%.1f,%.1f ", PX(c->plot_tok[i]), PY(c->plot_train[i] / log(2.0)));
    fprintf(f, "\"/>\n<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"");
    for (i = 0; i < c->plot_val_n; i++) fprintf(f, "%.1f,%.1f ", PX(c->plot_val_tok[i]), PY(c->plot_val[i]));
    fprintf(f, "\"/>\n");
#undef PX
#undef PY
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" fill=\"#1f77b4\">train</text><text x=\"%.0f\" y=\"%.0f\" fill=\"#d62728\">val</text>\n",
            W - 120, Tm + 14, W - 70, Tm + 14);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">tokens</text>\n</svg>\n", (W + L) / 2, H - 12);
    bad = ferror(f) != 0;
    bad |= fclose(f) != 0; /* in this order: never ferror on a closed stream */
    return !bad;
}

/* Prints the sample, the measured compression and the contract summary line. */
static void summary(const options *o, const stage_ctx *c0, uint64_t fwd, uint64_t bwd) {
    double N = (double)o->batch * o->seq, frames, base, ratio, tps;
    long steps = o->steps > c0->start_step ? o->steps - c0->start_step : 0;
    double train_loss = steps ? (double)c0->last_loss : NAN; /* nothing trained: say so */
    size_t i;
    /* what the same run sends with r = d and an f32 wire: the same frames, d floats per token */
    frames = (double)steps * o->micro * (o->stages - 1);
    base = 2.0 * frames * (RESBM_FRAME_HEADER + 4.0 * (N / o->micro) * o->d);
    ratio = fwd + bwd ? base / (double)(fwd + bwd) : NAN; /* one stage, or no step: nothing crossed */
    tps = c0->train_s > 0 ? (double)steps * N / c0->train_s : 0.0;
    if (!o->quiet && c0->sample_n) {
        printf("sample: \"");
        for (i = 0; i < c0->prompt_n; i++) putchar(c0->prompt[i] >= 32 && c0->prompt[i] < 127 ? c0->prompt[i] : ' ');
        printf("\" ->\n");
        for (i = 0; i < c0->sample_n; i++) {
            int ch = c0->sample[i];
            putchar((ch >= 32 && ch < 127) || ch == '\n' ? ch : '.');
        }
        printf("\n");
    }
    if (!o->quiet)
        printf("val %.4f bits/byte; wire %llu bytes forward + %llu back (%s/%s, r=%d of d=%d): %.1fx less than f32 at r = d\n",
               c0->val_loss / log(2.0), (unsigned long long)fwd, (unsigned long long)bwd, wire_name(o->wire_fwd),
               wire_name(o->wire_bwd), o->r, o->d, ratio);
    printf("result: steps=%d train_loss=%.6f val_bpb=%.6f tokens_per_s=%.1f wire_bytes_fwd=%llu wire_bytes_bwd=%llu wire_ratio=%.3f\n",
           o->steps, train_loss, c0->val_loss / log(2.0), tps, (unsigned long long)fwd, (unsigned long long)bwd, ratio);
    fflush(stdout);
}

static int open_outputs(const options *o, stage_ctx *c) {
    if (o->log) {
        if (!(c->log = fopen(o->log, "w"))) { fprintf(stderr, "train: cannot write %s\n", o->log); return 0; }
        fprintf(c->log, "step,tokens,train_loss,val_bpb,tokens_per_s\n");
    }
    if (o->plot) {
        size_t n = (size_t)o->steps + 1;
        c->plot_tok = (double *)calloc(n, sizeof(double)); c->plot_train = (double *)calloc(n, sizeof(double));
        c->plot_val_tok = (double *)calloc(n, sizeof(double)); c->plot_val = (double *)calloc(n, sizeof(double));
        if (!c->plot_tok || !c->plot_train || !c->plot_val_tok || !c->plot_val) {
            fprintf(stderr, "train: no memory for --plot's %zu points\n", n);
            return 0;
        }
    }
    return 1;
}

/* 0 when the log or the plot could not be written whole (a full disk: the run says so and
   fails, instead of leaving a short file behind an exit code of 0). */
static int close_outputs(const options *o, stage_ctx *c) {
    int ok = 1;
    if (c->log) {
        int bad = ferror(c->log) != 0;
        bad |= fclose(c->log) != 0; /* in this order: never ferror on a closed stream */
        if (bad) { fprintf(stderr, "train: cannot write %s: %s\n", o->log, strerror(errno)); ok = 0; }
    }
    if (o->plot && c->plot_tok && !write_plot(o->plot, c)) {
        fprintf(stderr, "train: cannot write %s: %s\n", o->plot, strerror(errno));
        ok = 0;
    }
    free(c->plot_tok); free(c->plot_train); free(c->plot_val_tok); free(c->plot_val);
    return ok;
}

static void describe(const options *o, const resbm_stage *st0) {
    resbm_stage_stats ss;
    const resbm_model_config *mc = resbm_model_get_config(resbm_stage_model((resbm_stage *)st0));
    char ff[32] = "";
    if (o->quiet) return;
    memset(&ss, 0, sizeof(ss));
    resbm_stage_get_stats(st0, &ss);
    if (!o->engine) snprintf(ff, sizeof(ff), " ff=%d", mc->ff); /* an engine's own business */
    printf("model: %s d=%d layers=%d heads=%d%s seq=%d vocab=256 | %d stages, r=%d (d/r=%.0f), m=%d%s | batch %d in %d micro | %s, wire %s/%s",
           o->engine ? o->engine->name : "built-in", mc->d, mc->layers, o->heads, ff, mc->seq, o->stages, o->r, (double)o->d / o->r, mc->m,
           o->no_identity ? ", no identity path" : "", o->batch, o->micro,
           o->opt == RESBM_OPT_MUON ? "muon" : o->opt == RESBM_OPT_SGD ? "sgd" : "adamw", wire_name(o->wire_fwd), wire_name(o->wire_bwd));
    if (o->bandwidth_mbps > 0 || o->latency_ms > 0) printf(" | link %.1f Mbit/s, %.1f ms", o->bandwidth_mbps, o->latency_ms);
    if (o->gemm_bf16) printf(" | bf16 GEMMs");
    printf(" | stage 0: %d in flight, %.1f MiB each, %.1f MiB in all\n", ss.in_flight, ss.slot_bytes / 1048576.0,
           ss.memory_bytes / 1048576.0);
}

/* The step a checkpoint file holds, or -1 when it is missing or unreadable. Read only up to the
   size resbm_checkpoint_load would accept for this model (the file may hold every stage). */
static long ckpt_step(const char *path, resbm_model *m) {
    resbm_st_file *f;
    const char *v;
    long step = -1;
    size_t np = 0, max;
    resbm_model_params(m, &np);
    max = 64 * (((size_t)1 << 20) + 12 * resbm_model_num_floats(m) + 192 * np);
    if (resbm_safetensors_read(path, max, &f)) return -1;
    if ((v = resbm_safetensors_meta(f, "step")) != NULL) step = strtol(v, NULL, 10);
    resbm_safetensors_free(f);
    return step;
}

/* One process per stage: every stage offers the steps of its checkpoint and of the generation
   before it; stage 0 picks the newest step all of them have and tells the others. Loads it. */
static int agree_ckpt(const options *o, resbm_transport tr, resbm_model *m, int s) {
    char p[4096], prev[4112], *pick;
    unsigned char b[16];
    long have[2], chosen = -1;
    size_t len;
    int rc = 0, k, q;
    ckpt_path(o, o->load, s, p, sizeof(p));
    snprintf(prev, sizeof(prev), "%s.prev", p);
    have[0] = ckpt_step(p, m); have[1] = ckpt_step(prev, m);
    if (s > 0) {
        for (k = 0; k < 16; k++) b[k] = (unsigned char)((uint64_t)(int64_t)have[k / 8] >> (8 * (k % 8)));
        if (!(rc = tr.send(tr.user, 0, b, 16)) && !(rc = tr.recv(tr.user, 0, b, sizeof(b), &len, o->timeout_ms)) &&
            !(rc = len == 8 ? 0 : RESBM_ETRANSPORT)) {
            uint64_t v = 0;
            for (k = 0; k < 8; k++) v |= (uint64_t)b[k] << (8 * k);
            chosen = (long)(int64_t)v;
        }
    } else {
        long cand[2] = {have[0], have[1]};
        for (q = 1; q < o->stages && !rc; q++) { /* keep the candidates every stage has */
            uint64_t v[2] = {0, 0};
            if ((rc = tr.recv(tr.user, q, b, sizeof(b), &len, o->timeout_ms)) || (rc = len == 16 ? 0 : RESBM_ETRANSPORT)) break;
            for (k = 0; k < 16; k++) v[k / 8] |= (uint64_t)b[k] << (8 * (k % 8));
            for (k = 0; k < 2; k++)
                if (cand[k] != (long)(int64_t)v[0] && cand[k] != (long)(int64_t)v[1]) cand[k] = -1;
        }
        chosen = cand[0] > cand[1] ? cand[0] : cand[1];
        for (k = 0; k < 8; k++) b[k] = (unsigned char)((uint64_t)(int64_t)chosen >> (8 * k));
        for (q = 1; q < o->stages && !rc; q++) rc = tr.send(tr.user, q, b, 8);
    }
    if (rc) { fprintf(stderr, "train: stage %d: agreeing on a checkpoint: %s\n", s, resbm_strerror(rc)); return 0; }
    if (chosen < 0) {
        if (have[0] < 0 && have[1] < 0)
            fprintf(stderr, "train: stage %d: cannot resume: neither %s nor %s is a readable checkpoint\n", s, p, prev);
        else
            fprintf(stderr, "train: stage %d: the stages' checkpoints share no step (here: %s at %ld, %s at %ld; -1 = none)\n", s, p, have[0], prev, have[1]);
        return 0;
    }
    pick = have[0] == chosen ? p : prev;
    if (s == 0 && pick != p) printf("resuming from the previous generation, step %ld (a stage had not saved the newer one)\n", chosen);
    {
        char why[512];
        if ((rc = resbm_checkpoint_load(pick, &m, 1, why, sizeof(why)))) {
            fprintf(stderr, "train: cannot resume from %s: %s (%s)\n", pick, why[0] ? why : "", resbm_strerror(rc));
            return 0;
        }
    }
    return 1;
}

#ifndef TRAIN_NO_MAIN
/* Loads a checkpoint into this process's stages; prints why on failure. */
static int load_ckpt(const options *o, resbm_model **models, size_t n, int s) {
    char p[4096], why[512];
    int rc;
    ckpt_path(o, o->load, s, p, sizeof(p));
    if ((rc = resbm_checkpoint_load(p, models, n, why, sizeof(why)))) {
        char prev[4112], why2[512];
        snprintf(prev, sizeof(prev), "%s.prev", p);
        fprintf(stderr, "train: cannot resume from %s: %s (%s)\n", p, why[0] ? why : "", resbm_strerror(rc));
        if (resbm_checkpoint_load(prev, models, n, why2, sizeof(why2))) return 0;
        printf("resuming from the previous generation %s instead\n", prev);
    }
    if (resbm_model_step_count(models[0]) > o->steps) { /* the loop would not run: refuse, not a silent 0-step run */
        fprintf(stderr, "train: %s is at step %ld, past --steps %d: nothing to train\n", p,
                resbm_model_step_count(models[0]), o->steps);
        return 0;
    }
    return 1;
}

/* All stages in this process, one thread each, over the in-process transport (shaped when a
   bandwidth or latency is given: every stage's endpoint is wrapped, so both ends are shaped). */
static int run_threads(const options *o, const dataset *ds) {
    int S = o->stages, s, ok = 1, rc, shaped = o->bandwidth_mbps > 0 || o->latency_ms > 0;
    resbm_inproc *hub = NULL;
    stage_ctx *c = (stage_ctx *)calloc((size_t)S, sizeof(stage_ctx));
    resbm_model **models = (resbm_model **)calloc((size_t)S, sizeof(resbm_model *));
    resbm_shaper **shapers = (resbm_shaper **)calloc((size_t)S, sizeof(resbm_shaper *));
    pthread_t *th = (pthread_t *)calloc((size_t)S, sizeof(pthread_t));
    gate barrier;
    size_t frame_max = frame_max_bytes(o);
    uint64_t fwd = 0, bwd = 0;
    if (!c || !models || !shapers || !th) { fprintf(stderr, "train: out of memory\n"); return 1; }
    /* a mailbox holds what a step can put on one link: n_micro + 3 frames (the contract) */
    if ((rc = resbm_inproc_init(S, (size_t)(RESBM__MAX(S + 2, o->micro + 3)) * (frame_max + 16), &hub))) {
        fprintf(stderr, "train: in-process transport: %s\n", resbm_strerror(rc));
        return 1;
    }
    memset(&barrier, 0, sizeof(barrier));
    pthread_mutex_init(&barrier.mu, NULL);
    pthread_cond_init(&barrier.cv, NULL);
    barrier.n = S;
    for (s = 0; s < S && ok; s++) {
        resbm_transport tr;
        resbm_inproc_transport(hub, s, &tr);
        if (shaped) {
            if ((rc = resbm_shaper_init(&tr, S, o->bandwidth_mbps * 1e6 / 8.0, o->latency_ms, frame_max, &shapers[s]))) {
                fprintf(stderr, "train: link shaper: %s\n", resbm_strerror(rc));
                ok = 0;
                break;
            }
            resbm_shaper_transport(shapers[s], &tr);
        }
        if ((rc = new_stage(o, s, &tr, &c[s].st, &c[s].engine))) {
            fprintf(stderr, "train: stage %d: %s\n", s, resbm_strerror(rc));
            ok = 0;
            break;
        }
        models[s] = resbm_stage_model(c[s].st);
    }
    if (ok && o->load) ok = load_ckpt(o, models, (size_t)S, 0);
    if (ok && o->save_init) {
        if ((rc = resbm_checkpoint_save(o->save_init, models, (size_t)S, NULL, 0))) {
            fprintf(stderr, "train: cannot write %s: %s\n", o->save_init, resbm_strerror(rc));
            ok = 0;
        }
    }
    if (ok) {
        describe(o, c[0].st);
        ok = open_outputs(o, &c[0]);
    }
    if (ok) {
        int started = 0;
        for (s = 0; s < S; s++) {
            c[s].o = o; c[s].ds = ds; c[s].s = s; c[s].barrier = &barrier; c[s].all = models;
            c[s].start_step = resbm_model_step_count(models[s]);
            c[s].logged = c[s].start_step;
        }
        for (s = 0; s < S; s++, started++)
            if (pthread_create(&th[s], NULL, stage_main, &c[s])) {
                fprintf(stderr, "train: cannot start the thread of stage %d\n", s);
                for (s = 0; s < S; s++) resbm_inproc_close(hub, s); /* the started ones fail fast */
                gate_break(&barrier);
                ok = 0;
                break;
            }
        for (s = 0; s < started; s++) pthread_join(th[s], NULL);
        for (s = 0; s < S; s++) {
            if (c[s].rc) ok = 0;
            fwd += c[s].wire_fwd;
            bwd += c[s].wire_bwd;
        }
        if (!close_outputs(o, &c[0])) ok = 0;
        if (ok) summary(o, &c[0], fwd, bwd);
    }
    for (s = 0; s < S; s++) { free_stage(o, c[s].st, c[s].engine); resbm_shaper_free(shapers[s]); }
    pthread_cond_destroy(&barrier.cv);
    pthread_mutex_destroy(&barrier.mu);
    resbm_inproc_free(hub);
    free(c); free(models); free(shapers); free(th);
    return ok ? 0 : 1;
}
#endif

/* One stage in this process; `tr` reaches the others (TCP, MPI, ...). Stage 0 gathers the
   other stages' wire counters and prints the summary. */
static int run_one_stage(const options *o, const dataset *ds, int s, resbm_transport tr) {
    size_t frame_max = frame_max_bytes(o);
    resbm_shaper *shaper = NULL;
    stage_ctx c;
    resbm_model *m;
    uint64_t fwd = 0, bwd = 0;
    int rc, ok = 1, p;
    memset(&c, 0, sizeof(c));
    if (o->bandwidth_mbps > 0 || o->latency_ms > 0) {
        if ((rc = resbm_shaper_init(&tr, o->stages, o->bandwidth_mbps * 1e6 / 8.0, o->latency_ms, frame_max, &shaper))) {
            fprintf(stderr, "train: link shaper: %s\n", resbm_strerror(rc));
            return 1;
        }
        resbm_shaper_transport(shaper, &tr);
    }
    if ((rc = new_stage(o, s, &tr, &c.st, &c.engine))) {
        fprintf(stderr, "train: stage %d: %s\n", s, resbm_strerror(rc));
        resbm_shaper_free(shaper);
        return 1;
    }
    m = resbm_stage_model(c.st);
    if (o->load) ok = agree_ckpt(o, tr, m, s);
    if (ok && o->save_init) {
        char path[4096];
        ckpt_path(o, o->save_init, s, path, sizeof(path));
        if ((rc = resbm_checkpoint_save(path, &m, 1, NULL, 0))) {
            fprintf(stderr, "train: cannot write %s: %s\n", path, resbm_strerror(rc));
            ok = 0;
        }
    }
    if (ok && s == 0) {
        describe(o, c.st);
        ok = open_outputs(o, &c);
    }
    if (ok) {
        c.o = o; c.ds = ds; c.s = s; c.start_step = resbm_model_step_count(m);
        c.logged = c.start_step;
        stage_main(&c);
        ok = c.rc == RESBM_OK;
    }
    if (ok) { /* counters to stage 0: 16 bytes, little-endian */
        unsigned char b[16];
        size_t len;
        int k;
        fwd = c.wire_fwd; bwd = c.wire_bwd;
        if (s > 0) {
            for (k = 0; k < 8; k++) { b[k] = (unsigned char)(fwd >> (8 * k)); b[8 + k] = (unsigned char)(bwd >> (8 * k)); }
            if ((rc = tr.send(tr.user, 0, b, 16))) { fprintf(stderr, "train: stage %d: %s\n", s, resbm_strerror(rc)); ok = 0; }
        } else {
            for (p = 1; p < o->stages && ok; p++) {
                uint64_t f = 0, g = 0;
                if ((rc = tr.recv(tr.user, p, b, sizeof(b), &len, o->timeout_ms)) || len != 16) {
                    fprintf(stderr, "train: counters from stage %d: %s\n", p, rc ? resbm_strerror(rc) : "bad length");
                    ok = 0;
                    break;
                }
                for (k = 0; k < 8; k++) { f |= (uint64_t)b[k] << (8 * k); g |= (uint64_t)b[8 + k] << (8 * k); }
                fwd += f; bwd += g;
            }
        }
    }
    if (s == 0) {
        if (!close_outputs(o, &c)) ok = 0;
        if (ok) summary(o, &c, fwd, bwd);
    }
    free_stage(o, c.st, c.engine);
    resbm_shaper_free(shaper);
    return ok ? 0 : 1;
}

/* More kernel threads than cores make every pool's threads wait for each other: say so (the
   results are the same for any --threads; only the time suffers). */
static void note_threads(const options *o, int stages_here) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (o->threads > 1 && cores > 0 && (long)o->threads * stages_here > cores)
        fprintf(stderr, "train: note: %d stage%s x --threads %d here is more than the %ld cores online: "
                "they take turns, which costs time (results do not depend on --threads)\n",
                stages_here, stages_here > 1 ? "s" : "", o->threads, cores);
}

#ifndef TRAIN_NO_MAIN
static int run_tcp(const options *o, const dataset *ds) {
    char *list = (char *)malloc(strlen(o->peers) + 1), *tok, *save = NULL;
    const char **addrs = (const char **)calloc((size_t)o->stages, sizeof(char *));
    tcp_mesh *mesh;
    tcp_mesh_auth auth;
    unsigned char secret[4097];
    resbm_transport tr;
    int n = 0, rc, code;
    memset(&auth, 0, sizeof(auth));
    if (!list || !addrs) return 1;
    strcpy(list, o->peers);
    for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n >= o->stages) break;
        addrs[n++] = tok;
    }
    if (n != o->stages || tok) {
        fprintf(stderr, "train: --peers lists %s addresses for %d stages\n", tok ? "more" : "fewer", o->stages);
        free(list); free(addrs);
        return 2;
    }
    if (strcmp(addrs[o->stage], o->listen))
        fprintf(stderr, "train: note: --listen %s differs from --peers entry %d (%s); listening on %s\n",
                o->listen, o->stage, addrs[o->stage], o->listen);
    addrs[o->stage] = o->listen;
    { /* the run's secret (--secret-file) and a digest of the job: strangers are refused, other jobs fail both sides */
        char job[512];
        snprintf(job, sizeof(job), "%s d=%d layers=%d heads=%d ff=%d seq=%d batch=%d micro=%d stages=%d r=%d m=%d id=%d "
                 "wire=%d/%d opt=%d lr=%.9g blr=%.9g steps=%d sched=%d seed=%llu data=%s:%zu:%016llx",
                 o->engine ? o->engine->name : "builtin",
                 o->d, o->layers, o->heads, o->ff, o->seq, o->batch, o->micro, o->stages, o->r, o->m, !o->no_identity,
                 o->wire_fwd, o->wire_bwd, o->opt, (double)o->lr, (double)o->bottleneck_lr, o->steps, o->schedule_steps,
                 (unsigned long long)o->seed, o->data ? "text" : "bin", ds->len, (unsigned long long)ds->hash);
        auth.job = fnv1a(job, strlen(job));
    }
    if (o->secret_file) {
        FILE *f = open_regular(o->secret_file);
        auth.secret_len = f ? fread(secret, 1, sizeof(secret), f) : 0;
        if (!f || ferror(f) || auth.secret_len == 0 || !feof(f)) {
            fprintf(stderr, "train: --secret-file %s: %s\n", o->secret_file,
                    !f ? "cannot be read as a regular file" : auth.secret_len ? "longer than 4096 bytes" : "empty");
            if (f) fclose(f);
            free(list); free(addrs);
            return 2;
        }
        fclose(f);
        auth.secret = secret;
    }
    if ((rc = tcp_mesh_open_auth(&mesh, o->stage, o->stages, addrs, o->timeout_ms, &auth))) {
        if (rc == RESBM_EJOB)
            fprintf(stderr, "train: stage %d: %s (a peer's flags or data differ from ours)\n", o->stage,
                    resbm_strerror(rc));
        else
            fprintf(stderr, "train: stage %d: cannot reach every peer within %d ms: %s (a peer that is not "
                    "started, has another --secret-file, or stopped: see its own message)\n", o->stage,
                    o->timeout_ms, resbm_strerror(rc));
        free(list); free(addrs);
        return 1;
    }
    { /* a send may wait for the link to carry up to --micro frames ahead of it */
        size_t fmax = frame_max_bytes(o);
        double ms = o->timeout_ms + (link_mbps(o) > 0 ? 1000.0 * o->micro * (double)fmax / (link_mbps(o) * 1e6 / 8.0) : 0.0);
        tcp_mesh_set_send_timeout(mesh, (int)(ms < 2e9 ? ms : 2e9));
        tcp_mesh_set_max_message(mesh, fmax + 64); /* the largest frame, shaper prefix included */
    }
    tcp_mesh_transport(mesh, &tr);
    code = run_one_stage(o, ds, o->stage, tr);
    tcp_mesh_close(mesh);
    memset(secret, 0, sizeof(secret));
    free(list); free(addrs);
    return code;
}

int main(int argc, char **argv) {
    options o;
    dataset ds;
    int code;
    if ((code = parse_args(argc, argv, &o, 4)) == PARSE_HELP) usage(stdout);
    if (code) return code == PARSE_HELP ? 0 : code;
#ifdef TRAIN_HOST_ENGINE
    o.engine = TRAIN_HOST_ENGINE();
#endif
    if (!load_data(&o, &ds)) return 1;
    note_threads(&o, o.stage >= 0 ? 1 : o.stages);
    code = o.stage >= 0 ? run_tcp(&o, &ds) : run_threads(&o, &ds);
    free(ds.bytes);
    return code;
}
#endif
