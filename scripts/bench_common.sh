# Sourced by scripts/bench_rmd17.sh and scripts/bench_materials.sh: the pilip binary they use and one training run.
# Expects CONFIG, SEED (and optionally EXTRA, more --set arguments) to be set by the caller.

# PILIP=path uses an existing binary instead of building one.
if [ -z "${PILIP:-}" ]; then
  cargo build --release --locked >/dev/null
  PILIP=target/release/pilip
fi

# train_once RUN TRAIN TEST [--set KEY=VALUE …]: trains $CONFIG on TRAIN, tested on TEST, into RUN (SEED as the
# training and split seed, then the given --set arguments, then $EXTRA), unless RUN already holds its test
# metrics; the wall time goes to RUN/train_seconds. TRAINER (optional) is a command that takes `pilip train`'s
# arguments and trains instead of it (bench_rmd17.sh's PRIOR=xtb: scripts/train_xtb_prior.sh, which reads PILIP).
train_once() {
  local run=$1 train=$2 test=$3 t0
  shift 3
  [ -f "$run/test_metrics.json" ] && return 0
  t0=$(date +%s)
  local trainer=("$PILIP" train)
  [ -n "${TRAINER:-}" ] && trainer=("$TRAINER")
  # shellcheck disable=SC2086
  PILIP="$PILIP" "${trainer[@]}" "$CONFIG" --quiet --set "data.file=\"$train\"" --set "data.test_file=\"$test\"" \
    "$@" --set "training.seed=$SEED" --set "data.split_seed=$SEED" --set "output.run_dir=\"$run\"" ${EXTRA:-}
  echo $(( $(date +%s) - t0 )) > "$run/train_seconds"
}
