#!/usr/bin/env bash
# Packaging proved: build the sdist and the wheel (from the sdist, so the sdist is complete), install the wheel into a
# fresh venv (no checkout on the path), and run `trl-opd --help` and a recipe dry run from it. The dry run renders the
# model card, so the packaged template must be in the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_CPU=${TORCH_CPU:-torch==2.13.0}
RECIPE=${RECIPE:-recipes/Qwen3-1.7B/opd/config_qwen3_8b_teacher.yaml}
work=$(mktemp -d "${TMPDIR:-/tmp}/trl-opd-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS

"$PYTHON" -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install --quiet build "setuptools>=77" wheel
# sdist first, then the wheel from the unpacked sdist (so a file missing from the sdist fails here); one build venv
"$work/build-venv/bin/python" -m build --no-isolation --outdir "$work/dist" . >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log"; exit 1; }
ls "$work"/dist/trl_opd-*.tar.gz "$work"/dist/trl_opd-*-py3-none-any.whl
# the wheel must carry the card template and the typing marker
"$work/build-venv/bin/python" - "$work"/dist/trl_opd-*.whl <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for needed in ("trl_opd/launch/model_cards/model_card.md", "trl_opd/py.typed", "trl_opd/cli.py"):
    assert needed in names, f"{needed} is not in the wheel"
assert not any(n.startswith(("tests/", "recipes/")) for n in names), "tests or recipes leaked into the wheel"
PY
echo "built in $((SECONDS - start)) s"

"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --no-compile "$TORCH_CPU"   # the CPU build first: any other torch spec downloads GBs
"$work/venv/bin/pip" install --quiet --no-compile "$work"/dist/trl_opd-*.whl
echo "installed in $((SECONDS - start)) s"

cp "$RECIPE" "$work/recipe.yaml"
cd "$work"   # nothing from the checkout is importable from here
env -u PYTHONPATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$work/venv/bin/python" -c \
    "import trl_opd, sys; assert '/site-packages/' in trl_opd.__file__, trl_opd.__file__"
env -u PYTHONPATH "$work/venv/bin/trl-opd" --help
env -u PYTHONPATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$work/venv/bin/trl-opd" train --config recipe.yaml \
    --output_dir "$work/out" --dry-run
echo "package check passed in $((SECONDS - start)) s"
