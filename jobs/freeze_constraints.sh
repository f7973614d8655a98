#!/bin/sh
# Rewrites constraints.txt (repository root) from the venv the tests pass in: every node of
# cluster.yaml and the KubeRay image install raddist with `pip install -c constraints.txt`, so an
# autoscaled node gets the tested versions, not the newest. Run it after changing the venv:
#   . .venv/bin/activate && sh jobs/freeze_constraints.sh && pytest -q tests/test_cluster_config.py
set -eu
cd "$(dirname "$0")/.."
{
  echo "# The versions raddist's tests pass with: pip freeze of its venv (Python 3.11, Linux x86_64), less"
  echo "# raddist itself and the CUDA wheels (nvidia-*, cuda-*, triton), which the torch wheel pins exactly."
  echo "# Regenerate with: sh jobs/freeze_constraints.sh"
  python -m pip freeze --exclude raddist | grep -Ev '^(nvidia-|cuda-|triton==|-e |#)' | grep -v ' @ ' | LC_ALL=C sort -f
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
