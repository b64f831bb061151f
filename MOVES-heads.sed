# Issue 19, names that say one thing: a heatmap head (g, r, r-NAME) is no longer called a path in the code
# (the --path flag and the "path" JSON key stay), and the result types and orchestration left runtime/heatmap.py.
# Apply to any file (runtime/, train/, export/, bench/, cohort/, tests/, docs):  sed -i -f MOVES-heads.sed FILES
s/\bpath_role\b/head_role/g
s/\bmodel_path\b/model_head/g
s/\bPATH_PATTERN\b/HEAD_PATTERN/g
s/\bmanifest\.paths()/manifest.heads()/g
s/\(heatmap_\(slice\|nifti\|volume\|array\)(.*\)\bpath=/\1head=/
# rlp.runtime.heatmap.PATHS (the heads every bundle can have) is HEADS
s/\bPATHS\b/HEADS/g
s/^from rlp\.runtime\.heatmap import box_hits\b/from rlp.runtime.results import box_hits/
s/\(score_windows(.*\)\bpath=/\1head=/
s/\bscore_kind\b/window_score/g
