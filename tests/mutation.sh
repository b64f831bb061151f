#!/usr/bin/env bash
# Mutation testing of the contracts and the scoring code with mutmut (config: pyproject.toml [tool.mutmut]).
# Slow: run it by hand, outside CI. See tests/MUTATION.md.
#
#   tests/mutation.sh 'rlp.runtime.core.preprocess.*'      # the mutants of one module
#   tests/mutation.sh                                  # every module in only_mutate (hours)
#   MUTATE=runtime/core/manifest.py TESTS="tests/core/test_manifest_limits.py tests/core/test_manifest_pins.py" \
#       tests/mutation.sh 'rlp.runtime.core.manifest.*'  # one file mutated (fast generation), a narrow test selection
#
# mutmut names a mutant after the module path of the file it mutates and checks it against the module the
# tests import, so the packages (runtime/, bench/, ... installed as rlp.runtime, rlp.bench, ...) are copied
# into a src/rlp layout in a scratch folder, with tests/ and pyproject.toml; mutmut writes its mutants/
# there. Nothing in the checkout is touched. Environment: RLP_MUTATION_DIR (default
# ${TMPDIR:-/tmp}/rlp-mutation, emptied first), PYTHON (default the checkout's .venv), JOBS (default 2),
# MUTATE (space-separated source files, as runtime/x.py, replacing only_mutate in the copy's pyproject.toml),
# TESTS (space-separated pytest arguments replacing pytest_add_cli_args_test_selection there).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${RLP_MUTATION_DIR:-${TMPDIR:-/tmp}/rlp-mutation}
python=${PYTHON:-$repo/.venv/bin/python}
case "$work" in "" | / | "$repo" | "$repo"/*) echo "mutation.sh: refusing to use $work as the scratch folder" >&2; exit 2 ;; esac

rm -rf "$work"
mkdir -p "$work/src/rlp"
for pkg in runtime bench export train cohort; do
    cp -r "$repo/$pkg" "$work/src/rlp/$pkg"
done
cp -r "$repo/tests" "$work/tests"
cp "$repo/pyproject.toml" "$work/pyproject.toml"
find "$work" -name __pycache__ -type d -prune -exec rm -rf {} +
# narrow the copy's [tool.mutmut] lists (MUTATE, TESTS); the checkout's pyproject.toml is not touched
"$python" - "$work/pyproject.toml" "${MUTATE:-}" "${TESTS:-}" <<'PY'
import re, sys
path, mutate, tests = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
text = open(path).read()
def put(text, key, items):
    if not items:
        return text
    new = f"{key} = [" + ", ".join(f'"{i}"' for i in items) + "]"
    text, n = re.subn(rf"^{key} = \[.*?\]", lambda m: new, text, count=1, flags=re.S | re.M)
    if n != 1:
        sys.exit(f"mutation.sh: no {key} in {path}")
    return text
text = put(text, "only_mutate", [f"src/rlp/{m}" for m in mutate])
text = put(text, "pytest_add_cli_args_test_selection", tests)
open(path, "w").write(text)
PY

cd "$work"
# the copies, not the checkout's editable install, must be what `import rlp.runtime` finds
PYTHONPATH="$work/src${PYTHONPATH:+:$PYTHONPATH}" "$python" -c \
    'import rlp.runtime.core.preprocess as m, sys; p = m.__file__; sys.exit(0 if p.startswith(sys.argv[1]) else f"rlp imports from {p}")' "$work/src"

status=0
"$python" -m mutmut run --max-children "${JOBS:-2}" "$@" || status=$?
"$python" -m mutmut export-cicd-stats >/dev/null 2>&1 || true
echo
echo "scratch folder: $work (mutmut results / mutmut show NAME / mutmut browse run there)"
[ -f mutants/mutmut-cicd-stats.json ] && cat mutants/mutmut-cicd-stats.json && echo
exit "$status"
