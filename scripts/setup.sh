#!/usr/bin/env bash
# setup.sh demo|test|bench ... - installs what those make targets need and is missing, nothing else.
#
# Each requirement is a check and the Debian package that satisfies it. A check that passes
# installs nothing, so a second run is silent. Missing packages are installed with apt-get, as
# root or through `sudo -n`; when neither is possible the one command to run is printed and the
# script fails. A tool that is already on PATH (an npm that came with its own Node.js, a gcc
# from elsewhere) counts as present: Debian's package for it is never forced on top.
set -u

want_demo() {
  need cmd:cc build-essential
  need cmd:make make
  # the corpus is fetched once with npm; with data/brown.txt present npm is not needed
  [ -s data/brown.txt ] || need cmd:npm npm
}

want_test() {
  need cmd:cc build-essential
  need cmd:make make
  need cmd:clang clang
  need pkg:libclang-rt-dev libclang-rt-dev    # libFuzzer and the sanitizer runtimes for clang
  need cmd:pkg-config pkg-config
  need pc:openblas libopenblas-dev            # the RESBM_USE_CBLAS variant of the unit suite
  need py:numpy python3-numpy
  need py:torch python3-torch                 # the PyTorch autograd cross-checks
  need cmd:mpicc libopenmpi-dev
  need cmd:mpirun openmpi-bin
  need cmd:valgrind valgrind
}

want_bench() {
  want_test
  need pkg:libopenblas0-openmp libopenblas0-openmp   # PyTorch's best configuration (bench/step_torch.sh)
}

missing=()
need() { # check package
  local check=$1 pkg=$2 ok=1
  case $check in
    cmd:*) command -v "${check#cmd:}" >/dev/null 2>&1 || ok=0 ;;
    pkg:*) dpkg-query -W -f='${db:Status-Abbrev}' "${check#pkg:}" 2>/dev/null | grep -q '^ii' || ok=0 ;;
    pc:*)  pkg-config --exists "${check#pc:}" 2>/dev/null || ok=0 ;;
    py:*)  /usr/bin/python3 -c "import ${check#py:}" >/dev/null 2>&1 || ok=0 ;;
  esac
  if [ $ok = 0 ]; then
    local p
    for p in "${missing[@]+"${missing[@]}"}"; do [ "$p" = "$pkg" ] && return; done
    missing+=("$pkg")
  fi
}

[ $# -gt 0 ] || set -- test
for target in "$@"; do
  case $target in
    demo) want_demo ;;
    test) want_test ;;
    bench) want_bench ;;
    *) echo "setup.sh: unknown target '$target' (demo, test or bench)" >&2; exit 2 ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing what is missing: ${missing[*]}"
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "setup: cannot install packages here (not root, and sudo asks for a password). Run once:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: no apt-get on this machine; install the equivalents of: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]+"${sudo[@]}"}" apt-get update -qq &&
  "${sudo[@]+"${sudo[@]}"}" apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
  { echo "setup: apt-get could not install: ${missing[*]}" >&2; exit 1; }
echo "setup: done"
