#!/bin/sh
# step_torch.sh - run the PyTorch training-step baseline (bench/step_torch.py) twice:
#   1. with the BLAS Debian selects by default (update-alternatives libblas.so.3,
#      normally the pthreads build of OpenBLAS), and
#   2. with the OpenMP build of OpenBLAS (apt package libopenblas0-openmp) put first in
#      LD_LIBRARY_PATH, OMP_NUM_THREADS=2, so torch's OpenMP threads and OpenBLAS's
#      threads are one pool instead of two competing ones.
# Extra arguments are passed to both runs (e.g. --steps 5 --warmup 1).
# Each run's last line is "torch_step: ... blas=..." naming the BLAS really loaded.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-/usr/bin/python3}
omp_dir=""
for dir in /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/*/openblas-openmp; do
    if [ -e "$dir/libblas.so.3" ] && [ -e "$dir/liblapack.so.3" ]; then
        omp_dir=$dir
        break
    fi
done

status=0

echo "== torch step, default Debian BLAS ($(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo '?'))"
"$py" "$here/step_torch.py" "$@" || status=1

echo
if [ -z "$omp_dir" ]; then
    echo "== torch step, OpenMP OpenBLAS: SKIPPED (no openblas-openmp directory; apt install libopenblas0-openmp)"
    exit 1
fi
echo "== torch step, OpenMP OpenBLAS ($omp_dir, OMP_NUM_THREADS=2)"
LD_LIBRARY_PATH="$omp_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" OMP_NUM_THREADS=2 \
    "$py" "$here/step_torch.py" "$@" || status=1

exit $status
