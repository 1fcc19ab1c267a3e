r"""`face-shards`: convert a raw face dataset into webdataset shards, or find leaked faces.

    face-shards affectnet      /data/AffectNet      --out shards/affectnet
    face-shards casia-webface  /data/CASIA-WebFace  --out shards/casia      (folders or train.rec)
    face-shards celeba         /data/CelebA         --out shards/celeba
    face-shards imdb-wiki      /data/IMDB-WIKI      --out shards/imdb_wiki
    face-shards hf             PATH_OR_REPO --image-column image [--label-column label --label-map ...] \
        [--split train,test] --out shards/NAME     (any image dataset Hugging Face datasets loads)
    face-shards leakage --holdout shards/affectnet --against shards/celeba shards/casia ... \
        --out shards/exclusions.txt
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import leakage
from .sources import SOURCES, hf
from .writer import ShardSettings, build_shards
from ..errors import UserError, run_cli
from ..recognise import recognise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="face-shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    defaults = ShardSettings()
    for name, module in {**SOURCES, "hf": hf}.items():
        p = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0],
                           description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == "hf":
            hf.add_arguments(p)
        else:
            p.add_argument("root", type=Path, help="the dataset folder, as published")
        _add_shard_arguments(p, defaults)
        if name == "imdb-wiki":
            p.add_argument("--parts", default="imdb,wiki", help="which of imdb,wiki to convert (default %(default)s)")
    leakage.add_arguments(sub.add_parser("leakage", help=leakage.__doc__.strip().splitlines()[0],
                                         description=leakage.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def _add_shard_arguments(p: argparse.ArgumentParser, defaults: ShardSettings) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder for the shards and manifest.json")
    p.add_argument("--size", type=int, default=defaults.size, help="side of the square crop (default %(default)s)")
    p.add_argument("--margin", type=float, default=defaults.margin,
                   help="margin around the face box, fraction of its longer side per edge (default %(default)s)")
    p.add_argument("--quality", type=int, default=defaults.quality, help="JPEG quality (default %(default)s)")
    p.add_argument("--shard-size", type=int, default=defaults.shard_size, help="images per shard (default %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="shuffle seed (default %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="rewrite every shard instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "leakage":
        return leakage.run(args)
    settings = ShardSettings(size=args.size, margin=args.margin, quality=args.quality,
                             shard_size=args.shard_size, seed=args.seed)
    if not (16 <= settings.size <= 4096 and 0 <= settings.margin <= 2 and 1 <= settings.quality <= 100
            and settings.shard_size >= 1):
        raise UserError(f"settings out of range: {settings}")
    if args.command == "hf":
        scan = hf.scan_args(args)
    elif not args.root.exists():
        raise UserError(f"{args.root}: no such folder")
    else:
        kwargs = {"parts": tuple(p.strip() for p in args.parts.split(","))} if args.command == "imdb-wiki" else {}
        try:
            scan = SOURCES[args.command].scan(args.root, **kwargs)
        except UserError as err:  # the folder of another dataset, shards, a store...: say which
            kind = recognise(args.root)
            if kind is None or kind.name == f"raw {args.command.split('-')[0]}":
                raise
            raise UserError(f"{err}; {args.root} is {kind.what}: {kind.use}") from None
    manifest = build_shards(scan, args.out, settings, workers=args.workers, overwrite=args.overwrite,
                            progress=not args.no_progress)
    _summary(manifest, args.out)
    return 0


def _summary(manifest: dict, out: Path) -> None:
    for split, entry in manifest["splits"].items():
        tag = "  (held out of pretraining)" if entry["holdout"] else ""
        print(f"{manifest['source']} {split}: {entry['samples']} faces in {len(entry['shards'])} shards{tag}")
    counts = manifest["rejects"]["counts"]
    if counts:
        listed = ", ".join(f"{n} {reason}" for reason, n in counts.items())
        print(f"rejected: {listed} (listed in {out / manifest['rejects']['file']})")
    for label, n in manifest.get("missing_labels", {}).items():
        print(f"{label} missing for {n} faces (stored as None; each sample's {label}_missing says why)")
    print(f"manifest: {out / 'manifest.json'}")


def entry() -> None:
    raise SystemExit(run_cli(main, prog="face-shards"))
