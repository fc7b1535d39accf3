#!/usr/bin/env bash
# The main job: set up, acquire MNIST (and the handwriting fonts), train the default recipe, evaluate it (with a report).
# Extra arguments go to `mnist-cnn train`, e.g. `bash scripts/main.sh --recipe seed`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh serve
run="runs/main-$(date +%Y%m%d-%H%M%S)"
.venv/bin/mnist-cnn data
.venv/bin/mnist-cnn train --out "$run" "$@"
.venv/bin/mnist-cnn evaluate "$run"
echo "run folder: $run"
echo
echo "Next, use your model ('latest' is the newest run in runs/, this one):"
echo "  .venv/bin/mnist-cnn predict --model latest my_digit.jpg   # a photo or scan of a digit"
echo "  .venv/bin/mnist-cnn serve --model latest                  # draw digits at http://localhost:8000/"
