"""``rlp-train``: prepare data, train G and D, train the predictor R.

    rlp-train prepare SOURCE --out slices.h5 [--axis axial] [--size 256] [--skip-bad]
    rlp-train gan       --data slices.h5 --run runs/x (--preset demo | --config f.toml) [flags]
    rlp-train predictor --data slices.h5 --run runs/x [...]
    rlp-train all       --data slices.h5 --run runs/x [...]

Multi-GPU (or multi-process CPU): ``torchrun --nproc_per_node N -m rlp.train.cli gan --run-dir R ...``
(torchrun's own parser takes ``--run`` for an abbreviation of its ``--run-path``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rlp.runtime.core.cliutil import OneLineParser, UsageError, exit_with
from rlp.runtime.core.errors import CannotCreate, RlpError, one_line
from rlp.runtime.core.geometry import PAINT
from rlp.runtime.core.preprocess import CEILINGS, CURRENT_VERSION
from rlp.runtime.core.progress import stderr_console
from rlp.runtime.core.runfolder import RunFolder, checkpoint_name

from .config import BOX_SAMPLING, FLAGS, G_OUTPUTS, PREDICTORS, PRESETS, SCORE_CHOICES, TARGETS

PROG = "rlp-train"


def _parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog=PROG, description="Prepare MRI slices and train rlp's G, D and R.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prepare", help="turn NIfTI volumes (or 'mni152') into an HDF5 slice dataset")
    p.add_argument("source", help="NFBS_Dataset folder, folder or glob of NIfTI volumes, or 'mni152'")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"])
    p.add_argument("--size", type=int, default=None,
                   help="model grid side: 256 by default, 128 for the mni152 source (the demo preset's size)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable volumes (counted) instead of failing")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject-wise split")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--preprocessing-version", type=int, choices=sorted(CEILINGS), default=CURRENT_VERSION,
                   help=f"intensity normalisation: 2 (default) keeps values above the healthy range up to "
                        f"{CEILINGS[2]:g}; 1 clips at the 99.5th percentile (bundles made before version 2)")
    p.add_argument("--quiet", action="store_true")

    for name, hlp in (("gan", "train G and D (L1 + adversarial)"), ("predictor", "train R against the run's frozen G"),
                      ("all", "gan, then predictor")):
        _train_args(sub.add_parser(name, help=hlp))
    return ap


def _train_args(t: argparse.ArgumentParser) -> None:
    """The flags of gan, predictor and all."""
    t.add_argument("--data", required=True, help="dataset from rlp-train prepare")
    t.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="run folder (config, metrics, checkpoints, samples); under torchrun write --run-dir")
    t.add_argument("--preset", choices=list(PRESETS), help="settings preset (this or --config is required)")
    t.add_argument("--config", help="TOML config file (overrides the preset)")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    t.add_argument("--force", action="store_true",
                   help="replace what the run folder holds: the stages asked for start from step 0")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--seed", type=int)
    t.add_argument("--deterministic", action="store_true", default=None)
    t.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    t.add_argument("--threads", type=int)
    t.add_argument("--max-minutes", type=float, help="stop a stage after this long (saves a checkpoint)")
    t.add_argument("--window", type=int)
    t.add_argument("--stride", type=int)
    t.add_argument("--context", type=_context, help="context crop side, or 'full' for the whole slice (paper)")
    t.add_argument("--fill", type=float, help="value painted over the box (the paper: 1.0)")
    t.add_argument("--paint", choices=list(PAINT),
                   help="paint the whole box (box, the paper) or only its tissue pixels (tissue)")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--box-sampling", choices=list(BOX_SAMPLING))
    t.add_argument("--gan-steps", type=int)
    t.add_argument("--gan-batch", type=int)
    t.add_argument("--width", type=int, help="G width")
    t.add_argument("--depth", type=int, help="G depth")
    t.add_argument("--adv", type=float, help="adversarial loss weight (0 disables D)")
    t.add_argument("--g-output", choices=list(G_OUTPUTS),
                   help="G's output: laplace (a mean and a scale per pixel, the calibrated z score) "
                        "or sigmoid (the paper)")
    t.add_argument("--score", choices=list(SCORE_CHOICES),
                   help="the window score predictors learn and the bundle computes: auto (z for a Laplace G, "
                        "else l1), z (|x - mu| / b) or l1 (the paper's raw L1)")
    t.add_argument("--predictor", choices=list(PREDICTORS),
                   help="R's kind: dense (slice in, every window's loss out), crop (the crop around the box), paper")
    t.add_argument("--variant", help="train a named predictor variant beside the run's default one "
                   "(checkpoints predictor-NAME_*.pt, exported as model r-NAME)")
    t.add_argument("--r-width", type=int, help="R width")
    t.add_argument("--r-lr", type=float, help="R learning rate")
    t.add_argument("--target", choices=list(TARGETS),
                   help="R's target: window-region loss (default) or whole-image loss (paper)")
    t.add_argument("--target-corrupt", type=float,
                   help="dense predictor: share of the augmented target copies corrupted with augment.context_noise")
    t.add_argument("--r-steps", type=int)
    t.add_argument("--r-batch", type=int)


def _context(text: str):
    """--context: a crop side (integer) or 'full'."""
    if text == "full":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'full', got {text!r}") from None


def _overrides(a) -> dict:
    """The flags given, as config overrides (the flag of each setting is :data:`~rlp.train.config.FLAGS`')."""
    o: dict = {"run": {}, "geometry": {}, "gan": {}, "predictor": {}, "augment": {}}
    for dotted, flag in FLAGS.items():
        v = getattr(a, flag[2:].replace("-", "_"))
        if v is not None:
            section, key = dotted.split(".")
            o[section][key] = v
    if a.box_sampling:
        o["predictor"]["box_sampling"] = a.box_sampling
    if a.no_augment:
        o["augment"]["enabled"] = False
    return {k: v for k, v in o.items() if v}


def _print_result(res: dict, run: Path) -> None:
    keys = [k for k in res if k not in ("val_key",)]
    stderr_console.print(", ".join(f"{k}={res[k]:.5g}" if isinstance(res[k], float) else f"{k}={res[k]}" for k in keys))
    if res.get("stopped_by") == "time budget":
        stderr_console.print(f"{res['stage']}: the --max-minutes budget ran out after {res['steps']} steps; the best "
                             f"checkpoint so far ({res.get('val_key', 'validation')} "
                             f"{res.get('best', float('nan')):.5g}) is "
                             f"kept in {run / 'checkpoints'} and is what the next stage and rlp-export use")


def _main(argv=None) -> int:
    a = _parser().parse_args(argv)
    if a.cmd == "prepare":
        from .data import prepare

        size = a.size if a.size is not None else (128 if a.source == "mni152" else 256)
        res = prepare(a.source, a.out, axis=a.axis, size=size, skip_bad=a.skip_bad, seed=a.seed, force=a.force,
                      quiet=a.quiet, version=a.preprocessing_version)
        print(json.dumps(res, indent=2))
        return 0
    if not a.preset and not a.config:
        raise UsageError(f"choose the settings: --preset {'|'.join(PRESETS)} (see the README) or --config FILE "
                         f"(see {PROG} {a.cmd} --help)")
    from .config import resolve_config
    from .loop import train_gan, train_predictor

    cfg = resolve_config(a.preset, a.config, _overrides(a))
    folder = RunFolder(a.run)
    _guard_run(folder, cfg, a)
    run = folder.path
    t0 = time.monotonic()
    results = []
    if a.cmd in ("gan", "all"):
        results.append(train_gan(cfg, a.data, run, resume=a.resume, quiet=a.quiet))
        if not a.quiet:
            _print_result(results[-1], run)
    if a.cmd in ("predictor", "all"):
        last_r = folder.checkpoint(checkpoint_name("predictor", cfg.predictor.variant), "last")
        resume_r = a.resume and last_r.exists() if a.cmd == "all" else a.resume
        results.append(train_predictor(cfg, a.data, run, resume=resume_r, quiet=a.quiet))
        if not a.quiet:
            _print_result(results[-1], run)
    summary = {"run": str(run), "seconds": round(time.monotonic() - t0, 1), "stages": results}
    print(json.dumps(summary, indent=2, default=str))
    if not a.quiet:
        stderr_console.print(f"next: rlp-export {run} --out bundles/{run.name}")
    return 0


def _guard_run(folder: RunFolder, cfg, a) -> None:
    """A run folder made with other settings is not trained over: its G (or the G it was being trained
    with) would be replaced under its config. ``--resume`` checks the settings against the checkpoint;
    ``--force`` starts the stages asked for afresh (a new G also drops the predictors of the old one)."""
    from .config import TrainConfig, resume_hash

    if a.force and a.resume:
        raise UsageError(f"--force (start afresh) and --resume (continue) exclude each other "
                         f"(see {PROG} {a.cmd} --help)")
    if a.force:
        _clear_stages(folder, a.cmd, cfg.predictor.variant)
        return
    if a.resume or not folder.config().is_file():
        return
    try:
        old = TrainConfig.from_dict(json.loads(folder.config().read_text(encoding="utf-8")))
    except (RlpError, ValueError, OSError) as exc:
        raise CannotCreate(f"holds a config that cannot be read ({one_line(exc)}); pass --force to replace the run, "
                           "or choose a new --run folder", folder.config()) from None
    if resume_hash(old, "gan") != resume_hash(cfg, "gan"):
        was = f"preset {old.preset}" if old.preset else "another config"
        diff = _differences(old.to_dict(), cfg.to_dict())
        raise CannotCreate(f"holds a run of {was} with other G or geometry settings ({diff}); pass --resume to "
                           "continue it with its own settings, --force to replace it, or choose a new --run folder",
                           folder.path)


def _differences(old: dict, new: dict, limit: int = 3) -> str:
    from .config import RESUME_KEYS

    def flat(d: dict) -> dict:
        return {f"{sec}.{k}": v for sec in ("geometry", "gan") for k, v in d[sec].items()}

    fo, fn = flat(old), flat(new)
    out = [f"{k} {fo[k]} -> {fn.get(k)}" for k in fo
           if (k.startswith("geometry.") or k in RESUME_KEYS["gan"]) and fo[k] != fn.get(k)]
    return ", ".join(out[:limit]) + (", ..." if len(out) > limit else "")


def _clear_stages(folder: RunFolder, cmd: str, variant: str) -> None:
    """--force: the checkpoints of the stages about to train (for a new G, every predictor's too, and the
    dense predictor's cached G maps) are removed before training."""
    if not folder.checkpoints.is_dir():
        return
    if cmd == "predictor":
        old = [folder.checkpoint(checkpoint_name("predictor", variant), w) for w in ("last", "best")]
    else:
        old = [*folder.checkpoints.glob("gan_*.pt"), *folder.checkpoints.glob("predictor*.pt"), folder.targets_cache]
    for f in old:
        f.unlink(missing_ok=True)


def main(argv=None) -> None:
    exit_with(PROG, lambda: _main(argv))


if __name__ == "__main__":
    main()
