# Issue 19: apply ONLY to the top-level modules of runtime/ (runtime/*.py, not runtime/core/, not export/ or train/,
# which have relative imports of their own, e.g. export's .progress):  sed -i -f MOVES-runtime.sed runtime/*.py
# relative imports in the top level of runtime/ (runtime/heatmap.py, cli.py, backends.py, ...): only there
s/^\(\s*\)from \.\(errors\|atomic\|cliutil\|progress\|geometry\|preprocess\|manifest\|nifti\) import/\1from .core.\2 import/
