# Issue 19: apply ONLY to export/*.py: export's progress module (Reporter) moved into core's progress module.
#   sed -i -f MOVES-export.sed export/*.py
s/^\(\s*\)from \.progress import/\1from rlp.runtime.core.progress import/
