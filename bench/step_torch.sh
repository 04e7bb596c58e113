#!/bin/sh
# step_torch.sh - the PyTorch training-step anchor (bench/step_torch.py) in its two BLAS set-ups:
#   1. the BLAS Debian selects by default (update-alternatives libblas.so.3, normally the
#      pthreads build of OpenBLAS), and
#   2. the OpenMP build of OpenBLAS (libopenblas0-openmp) first in LD_LIBRARY_PATH with
#      OMP_NUM_THREADS = --threads, so torch's OpenMP threads and OpenBLAS's are one pool.
# Both run at their best: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which this machine may set to
# hold OpenBLAS to older kernels, are unset for these processes only; each run prints the kernel
# it loaded. Arguments go to both runs (--threads N, --steps 5, --check FILE from
# `bench_step --check-out FILE`, which makes a run fail unless it computes resbm.h's step).
# Each run's last line is "torch_step: ... blas=..." naming the BLAS really loaded.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-/usr/bin/python3}
threads=2
prev=""
for a in "$@"; do [ "$prev" = --threads ] && threads=$a; prev=$a; done
omp_dir=""
for dir in /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/*/openblas-openmp; do
    if [ -e "$dir/libblas.so.3" ] && [ -e "$dir/liblapack.so.3" ]; then
        omp_dir=$dir
        break
    fi
done
best="env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"
status=0

echo "== torch step, default Debian BLAS ($(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo '?'))"
$best "$py" "$here/step_torch.py" "$@" || status=1

echo
if [ -z "$omp_dir" ]; then
    echo "== torch step, OpenMP OpenBLAS: SKIPPED (no openblas-openmp directory; apt install libopenblas0-openmp)"
    exit 1
fi
echo "== torch step, OpenMP OpenBLAS ($omp_dir, OMP_NUM_THREADS=$threads)"
$best LD_LIBRARY_PATH="$omp_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" OMP_NUM_THREADS=$threads \
    "$py" "$here/step_torch.py" "$@" || status=1

exit $status
