#!/usr/bin/env bash
# `make repro PROFILE=ci|full` (the Makefile puts the venv first on PATH):
#   1. reproduce the pipeline in dvc.yaml for the profile (stages whose inputs did not change
#      are skipped; outputs already in the DVC remote are pulled instead of recomputed; an
#      interrupted run resumes its downloads and its fine-tune from the last checkpoint);
#   2. confirm DVC sees nothing left to do, so the report on disk is the one for this run;
#   3. gate: `llamakit report --check` on that report prints the summary and exits 1 naming
#      every metric outside its registry tolerance.
# The profile in params.yaml runs with `dvc repro`; any other runs as `dvc exp run -S profile=…`,
# which leaves params.yaml set to it (an experiment: `dvc exp show`, `git diff params.yaml`).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-ci}"
export DVC_NO_ANALYTICS=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1

entry="manifests/results/conll2003-smollm2-${profile}.yaml"
if [[ ! -f "$entry" ]]; then
  # A reference entry is recorded once, from a real run, and then gates every later run.
  echo "error: no registry entry $entry for profile '${profile}'. To record one from a real run:" >&2
  echo "  dvc repro evaluate   # (dvc exp run -S profile=${profile} evaluate for another profile)" >&2
  echo "  python -m llamakit.results record reports/conll2003-smollm2-${profile}/eval/metrics.json \\" >&2
  echo "      --name conll2003-smollm2-${profile} --profile ${profile} --model 'SmolLM2-135M-Instruct'" >&2
  exit 2
fi

# The default remote is the in-repo, git-ignored dvc-remote/; a fresh clone starts it empty.
if [[ "$(dvc remote list 2>/dev/null)" == *dvc-remote* ]]; then mkdir -p dvc-remote; fi

# One command pulls what the remote has and computes what it lacks: `--pull`. Not with
# `--allow-missing`: that skips every stage whose outputs are missing but unchanged, and with an
# empty remote (a fresh clone, CI) it skips them all and reproduces nothing (tests/pipeline).
# An interrupted run resumes: unfinished downloads and checkpoints are persisted outputs.
# The target is the report stage and what it depends on; the seeds stages (`make seeds`) are not.
current="$(python -c 'import yaml; print(yaml.safe_load(open("params.yaml"))["profile"])')"
if [[ "$profile" == "$current" ]]; then
  dvc repro --pull report
else
  dvc exp run --pull -S "profile=${profile}" report
fi

# The persisted, uncached outputs (unfinished downloads, checkpoints) are empty after a finished
# run, and a stage whose outputs came from the remote never ran here to create them: create them
# empty, as a finished run leaves them, so `dvc status` does not call them deleted.
python scripts/persisted_dirs.py

# Everything DVC tracks must now be current, or the report below could describe another run.
if ! dvc status --quiet --with-deps report; then
  echo "error: after the run, dvc status still reports changes:" >&2
  dvc status --with-deps report >&2
  exit 1
fi

# The gate: the report the pipeline just wrote (not rebuilt, so its provenance stays that of
# the run), held against its registry entry; prints the summary, exits 1 naming failures.
llamakit report --out "reports/conll2003-smollm2-${profile}" --check
echo "report: reports/conll2003-smollm2-${profile}/report.md (.html, .json)"
