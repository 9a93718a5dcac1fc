#!/usr/bin/env bash
# The prepared GPU check (make gpu-check): one script for a machine with a GPU and no network, under 8 minutes.
#
#   1. installs seqzoo from this tree into a fresh folder on PYTHONPATH, beside the machine's own torch and
#      triton, with the missing dependencies from carried wheels (.whl/, made by `make gpu-wheels` on a
#      networked machine);
#   2. the compile check for sm_90 and sm_80 (python -m seqzoo.ops._compile_check), in the background;
#   3. pytest -m gpu: every GPU test, compiled kernels (TRITON_INTERPRET unset);
#   4. seqzoo against its peers (python -m seqzoo.eval.peers): flash-linear-attention, SDPA, flash-attn,
#      mamba-ssm, where they import.
# Python runs with -P (3.11+): the tree's own seqzoo/ folder must not shadow the installed package.
# Everything it writes goes to $OUT (default gpu_check_out/): logs, the compile table, the peers' table and
# bench_results-style JSON. Each step runs even when an earlier one failed; the exit code is the first failure.
# Without a GPU (here) it runs the CPU-side steps only: the install and the compile check.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/seqzoo-gpu-site}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
status=0
step() { echo "== $(date +%T) $*"; }
keep() { local rc=$?; [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc; return 0; }

step "install (wheels: $(ls .whl/*.whl 2>/dev/null | wc -l))"
# Into a folder on PYTHONPATH, beside the machine's own torch and triton (nothing of theirs is replaced).
rm -rf "$SITE" && mkdir -p "$SITE"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -P -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
fi
"$PY" -P -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$SITE" . \
  >> "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -P -c "import seqzoo, torch; print('seqzoo', seqzoo.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  || { echo "seqzoo does not import: see $OUT/install.log"; exit 1; }
if "$PY" -P -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then gpu=1; else gpu=0; fi

step "compile check sm_90 + sm_80 (background)"
"$PY" -P -m seqzoo.ops._compile_check --arch 90 80 --json "$OUT/compile.json" --table "$OUT/compile.md" \
  > "$OUT/compile.log" 2>&1 &
compile_pid=$!

if [ $gpu -eq 1 ]; then
  step "pytest -m gpu"
  "$PY" -P -m pytest -q -m gpu -p no:cacheprovider --timeout 240 tests 2>&1 | tee "$OUT/pytest-gpu.log" | tail -n 30
  keep
  step "peers"
  "$PY" -P -m seqzoo.eval.peers ${PEERS_ARGS:---quick} --out "$OUT" 2>&1 | tee "$OUT/peers.log" | tail -n 40
  keep
else
  step "no CUDA GPU here: the CPU-side steps only (install, compile check)"
fi

step "waiting for the compile check"
wait $compile_pid
keep
tail -n 5 "$OUT/compile.log"
step "done (exit $status)"
exit $status
