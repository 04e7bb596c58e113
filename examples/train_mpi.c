/* train_mpi.c - examples/train.c with one MPI rank per stage: rank s runs stage s, and the
   two transport callbacks are MPI_Bsend and MPI_Recv.

       make mpi
       mpirun --oversubscribe -np 4 ./build/train_mpi --data data/brown.txt --stages 4 ...

   The flags are train.c's; --stages defaults to the number of ranks, and --stage, --listen and
   --peers are not used. Rank 0 prints the progress and the summary.

       mpirun -np 1 ./build/train_mpi --check-transport

   runs resbm_transport_check on this adapter (one rank, talking to itself) and exits 0 or 1. */
#define TRAIN_NO_MAIN
#include "train.c"

#include <limits.h>
#include <mpi.h>

typedef struct {
    MPI_Comm comm;
    int size;
} mpi_link;

/* Buffered send: completes once MPI has copied the message, so two ranks sending to each other
   at the same moment (1F1B does that) cannot deadlock as they would with rendezvous sends. */
static int mpi_send(void *user, int peer, const void *buf, size_t len) {
    mpi_link *l = (mpi_link *)user;
    if (peer < 0 || peer >= l->size || len > (size_t)INT_MAX - 1024) return RESBM_EINVAL;
    return MPI_Bsend(buf, (int)len, MPI_BYTE, peer, 0, l->comm) == MPI_SUCCESS ? RESBM_OK : RESBM_ECLOSED;
}

/* Probes until a message from `peer` is there or the deadline passes; its size is known before
   it is received, so one larger than cap stays queued. */
static int mpi_recv(void *user, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    mpi_link *l = (mpi_link *)user;
    double deadline = MPI_Wtime() + timeout_ms / 1000.0;
    MPI_Status st;
    int flag = 0, count;
    struct timespec nap = {0, 200000}; /* 0.2 ms between probes */
    if (peer < 0 || peer >= l->size || !buf || !len) return RESBM_EINVAL;
    for (;;) {
        if (MPI_Iprobe(peer, 0, l->comm, &flag, &st) != MPI_SUCCESS) return RESBM_ECLOSED;
        if (flag) break;
        if (timeout_ms >= 0 && MPI_Wtime() >= deadline) return RESBM_ETIMEDOUT;
        nanosleep(&nap, NULL);
    }
    MPI_Get_count(&st, MPI_BYTE, &count);
    if (count < 0) return RESBM_ETRANSPORT;
    if ((size_t)count > cap) return RESBM_EMSGSIZE;
    if (MPI_Recv(buf, count, MPI_BYTE, peer, 0, l->comm, MPI_STATUS_IGNORE) != MPI_SUCCESS) return RESBM_ECLOSED;
    *len = (size_t)count;
    return RESBM_OK;
}

int main(int argc, char **argv) {
    options o;
    dataset ds;
    mpi_link link;
    resbm_transport tr;
    int rank, size, code, bsize;
    size_t frame_max;
    void *bbuf;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN); /* errors come back as codes */
    if (argc == 2 && !strcmp(argv[1], "--check-transport")) { /* the transport contract, rank to itself */
        static unsigned char scratch[2 * 100000];
        char why[160];
        int rc;
        bsize = 8 * (100000 + MPI_BSEND_OVERHEAD + 64);
        bbuf = malloc((size_t)bsize);
        MPI_Buffer_attach(bbuf, bsize);
        link.comm = MPI_COMM_SELF;
        link.size = 1;
        tr.user = &link; tr.send = mpi_send; tr.recv = mpi_recv;
        rc = resbm_transport_check(&tr, 0, &tr, 0, 100000, scratch, sizeof(scratch), why, sizeof(why));
        printf("transport check: %s%s\n", rc ? "FAILED: " : "OK", rc ? why : "");
        MPI_Buffer_detach(&bbuf, &bsize);
        free(bbuf);
        MPI_Finalize();
        return rc ? 1 : 0;
    }
    if ((code = parse_args(argc, argv, &o, size))) { /* --stages: the ranks */
        if (code == PARSE_HELP && rank == 0) usage(stdout);
        MPI_Finalize();
        return code == PARSE_HELP ? 0 : code;
    }
    if (o.stages != size) {
        if (rank == 0) fprintf(stderr, "train_mpi: %d ranks for %d stages of %d layers: run one rank per stage\n", size, o.stages, o.layers);
        MPI_Finalize();
        return 2;
    }
    if (rank) o.quiet = 1; /* only rank 0 talks */
    { /* every rank reads the same data (a different or half-copied file would train on the wrong
         targets): rank 0's size and hash against each rank's, and every rank leaves together */
        int ok = load_data(&o, &ds), bad, any;
        unsigned long long mine[3], first[3];
        mine[0] = (unsigned long long)ok; mine[1] = ok ? ds.len : 0; mine[2] = ok ? ds.hash : 0;
        memcpy(first, mine, sizeof(first));
        MPI_Bcast(first, 3, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
        bad = !ok || !first[0] || first[1] != mine[1] || first[2] != mine[2];
        if (ok && first[0] && bad)
            fprintf(stderr, "train_mpi: rank %d's data (%llu bytes, hash %016llx) is not rank 0's (%llu bytes, hash %016llx)\n",
                    rank, mine[1], mine[2], first[1], first[2]);
        MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (any) { free(ds.bytes); MPI_Finalize(); return 1; }
    }
    {   /* the ranks on this machine share its cores */
        MPI_Comm node;
        int here = 1, first = 0; /* ranks on this machine, and this one's place among them */
        if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
            MPI_Comm_size(node, &here);
            MPI_Comm_rank(node, &first);
            MPI_Comm_free(&node);
        }
        if (first == 0) note_threads(&o, here); /* one note per machine */
    }
    /* room for every frame that can be in flight at once: 1F1B keeps at most S per neighbour, a
       deeper depth (--act-budget-mb) n_micro (+ 1 async), evaluation sends all its chunks before
       the loss comes back */
    frame_max = frame_max_bytes(&o);
    {
        size_t chunks = ((size_t)o.eval_rows + (size_t)(o.batch / o.micro) - 1) / (size_t)(o.batch / o.micro);
        size_t want = ((size_t)(2 * RESBM__MAX(o.stages, o.micro + 1) + 4) + chunks) * (frame_max + 8 + MPI_BSEND_OVERHEAD);
        if (want > (size_t)INT_MAX) {
            if (rank == 0) fprintf(stderr, "train_mpi: %zu bytes of MPI send buffer needed, more than MPI allows\n", want);
            MPI_Finalize();
            return 2;
        }
        bsize = (int)want;
    }
    bbuf = malloc((size_t)bsize);
    if (!bbuf) { fprintf(stderr, "train_mpi: out of memory\n"); MPI_Abort(MPI_COMM_WORLD, 1); }
    MPI_Buffer_attach(bbuf, bsize);
    link.comm = MPI_COMM_WORLD;
    link.size = size;
    tr.user = &link;
    tr.send = mpi_send;
    tr.recv = mpi_recv;
    o.stage = rank;
    code = run_one_stage(&o, &ds, rank, tr);
    if (code) MPI_Abort(MPI_COMM_WORLD, code); /* a failed stage takes the job down, no hang */
    MPI_Buffer_detach(&bbuf, &bsize);
    free(bbuf);
    free(ds.bytes);
    MPI_Finalize();
    return 0;
}
