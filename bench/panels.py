"""The report's figures of slices: a few lesion slices with G's and R's maps, and the worst misses."""

from __future__ import annotations

from .report import HEADLINE_ORDER
from .rows import load_maps

PANELS = 3


def panels(cases, loaded, truth, ref, results) -> list[dict]:
    """Input, lesion, exact G (the reference) and R (the headline backend's R row) for a few lesion slices."""
    r_row = headline_row(results, "r")
    r_maps = load_maps(r_row["map_file"], len(cases)) if r_row else None
    out = []
    for j, (c, (image, spacing, lesion)) in enumerate(zip(cases, loaded)):
        if c["id"] not in truth or len(out) == PANELS:
            continue
        out.append({"title": c["id"], "image": image, "spacing": spacing, "lesion": lesion,
                    "g": (ref[j]["pixel"], ref[j]["top"]) if ref else None,
                    "r": (r_maps[j]["pixel"], r_maps[j]["top"]) if r_maps else None})
    return out


def misses(cases, loaded, truth, ref, results, n: int = 6) -> list[dict]:
    """The worst misses, so a person sees why: lesion slices whose top window (G's plain row, else R's)
    missed the dilated lesion, lowest pixel AUROC first, with both paths' maps."""
    by_path = {p: headline_row(results, p) for p in ("g", "r")}
    judge = by_path["g"] or by_path["r"]
    if judge is None:
        return []
    per = {p["id"]: p for p in judge["localisation"]["per_slice"]}
    missed = sorted((p for p in per.values() if not p["top_window_hit_dilated"]),
                    key=lambda p: (p["auroc"] if p["auroc"] is not None else 0.0))[:n]
    maps = {p: load_maps(x["map_file"], len(cases)) if x else None for p, x in by_path.items()}
    index = {c["id"]: j for j, c in enumerate(cases)}
    out = []
    for p in missed:
        j = index[p["id"]]
        image, spacing, lesion = loaded[j]
        out.append({"title": f"{p['id']}: {judge['path'].upper()} missed (AUROC {p['auroc']:.2f})",
                    "image": image, "spacing": spacing, "lesion": lesion,
                    **{k: (m[j]["pixel"], m[j]["top"]) if m else None for k, m in maps.items()}})
    return out


def headline_row(results: list[dict], path: str) -> dict | None:
    """The plain row of ``path`` with localisation figures on the first backend of the headline order."""
    ok = [r for r in results if r["status"] == "ok" and r["localisation"] is not None and r["method"] == "plain"]
    return next((x for b in HEADLINE_ORDER for x in ok if x["backend"] == b and x["path"] == path), None)
