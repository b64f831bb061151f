# Issue 19: the contracts and shared toolbox moved from rlp.runtime into rlp.runtime.core (runtime/core/).
# Apply to any file OUTSIDE runtime/core/ (runtime/*.py, train/, export/, bench/, tests/, docs):
#   sed -i -f MOVES.sed FILES
# Inside runtime/core/ the relative imports between these modules (from .errors import ...) stay as they are.
s/\brlp\.runtime\.\(errors\|atomic\|cliutil\|progress\|geometry\|preprocess\|manifest\|nifti\)\b/rlp.runtime.core.\1/g
s#\bruntime/\(errors\|atomic\|cliutil\|progress\|geometry\|preprocess\|manifest\|nifti\)\.py\b#runtime/core/\1.py#g
s/\bfrom rlp\.runtime import \(errors\|atomic\|cliutil\|progress\|geometry\|preprocess\|manifest\|nifti\)\b/from rlp.runtime.core import \1/g
# export's Reporter joined core's progress module (export/progress.py is gone)
s/\brlp\.export\.progress\b/rlp.runtime.core.progress/g
s#\bexport/progress\.py\b#runtime/core/progress.py#g
