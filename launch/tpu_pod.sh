#!/bin/bash
# jvlm on a Cloud TPU VM pod slice: create (or reuse) it, install this checkout on every worker,
# mount the bucket, and run the same experiments.train command on all workers.
#
#   TPU_NAME=jvlm-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#     launch/tpu_pod.sh --config configs/siglip_shapes.py:B/16 --workdir gs://my-bucket/runs/b16
#
# Required: TPU_NAME, ZONE, and a --workdir gs://BUCKET/PATH. Needed to create the slice:
# ACCELERATOR_TYPE (e.g. v4-32, v5litepod-64), RUNTIME_VERSION (default tpu-ubuntu2204-base).
# Optional: PROJECT, SPOT=1 (preemptible capacity), DRY_RUN=1 (print the gcloud commands only).
#
# Every worker runs `python3 -m experiments.train ARGS` with JVLM_DISTRIBUTED=auto: JAX finds the
# pod's workers from the TPU metadata. The workdir is the bucket mounted with gcsfuse at
# /gcs/BUCKET on every worker (jvlm writes metrics, config and checkpoints with plain file I/O),
# so all workers see one workdir and a restarted slice resumes from it. On preemption/maintenance
# the workers get SIGTERM, save a checkpoint at an agreed step, and exit; run this script again
# to resume (it reuses the slice, or recreates it).
set -euo pipefail

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

[[ -n "${TPU_NAME:-}" ]] || die "set TPU_NAME (the TPU VM slice to create or reuse)"
[[ -n "${ZONE:-}" ]] || die "set ZONE (e.g. us-central2-b)"
args=("$@")
workdir=""
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --workdir=*) workdir="${args[$i]#--workdir=}"; idx=$i ;;
    --workdir) workdir="${args[$((i + 1))]:-}"; idx=$((i + 1)) ;;
  esac
done
[[ " $* " == *" --config "* || " $* " == *" --config="* ]] || die "missing --config FILE[:variant]"
[[ "$workdir" == gs://?*/?* ]] || die "--workdir must be a bucket path gs://BUCKET/PATH (shared by all workers), got '${workdir}'"
bucket="${workdir#gs://}"; bucket="${bucket%%/*}"
mounted="/gcs/${bucket}/${workdir#gs://${bucket}/}"
if [[ "${args[$idx]}" == --workdir=* ]]; then args[$idx]="--workdir=${mounted}"; else args[$idx]="${mounted}"; fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && where+=(--project="$PROJECT")

run() {  # run or, with DRY_RUN=1, print a command
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exists=$([[ -n "${ACCELERATOR_TYPE:-}" ]] && echo 0 || echo 1)  # dry run: ACCELERATOR_TYPE means "create"
else
  exists=$("${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" >/dev/null 2>&1 && echo 1 || echo 0)
fi
if [[ "$exists" == 0 ]]; then
  [[ -n "${ACCELERATOR_TYPE:-}" ]] || die "slice $TPU_NAME does not exist: set ACCELERATOR_TYPE (e.g. v4-32) to create it"
  create=("${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" --accelerator-type="$ACCELERATOR_TYPE"
          --version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}")
  [[ "${SPOT:-0}" == 1 ]] && create+=(--spot)
  run "${create[@]}"
fi

# Ship this checkout (tracked files at HEAD) and install it with JAX's TPU wheels on every worker.
repo="$(cd "$(dirname "$0")/.." && pwd)"
tarball="/tmp/jvlm-${TPU_NAME}.tar.gz"
run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
run "${gcloud_tpu[@]}" scp "$tarball" "$TPU_NAME:~/jvlm.tar.gz" "${where[@]}" --worker=all
install_gcsfuse="command -v gcsfuse >/dev/null || { \
echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -cs)' main' \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null \
&& curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null \
&& sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse; }"
setup="rm -rf ~/jvlm && mkdir -p ~/jvlm && tar -xzf ~/jvlm.tar.gz -C ~/jvlm && cd ~/jvlm \
&& python3 -m pip install -q -U 'jax[tpu]' -e . && ${install_gcsfuse} \
&& sudo mkdir -p /gcs/${bucket} && sudo chown \$USER /gcs/${bucket} \
&& (mountpoint -q /gcs/${bucket} || gcsfuse --implicit-dirs ${bucket} /gcs/${bucket})"
run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$setup"

train="cd ~/jvlm && JVLM_DISTRIBUTED=auto python3 -m experiments.train$(printf ' %q' "${args[@]}")"
run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$train"
