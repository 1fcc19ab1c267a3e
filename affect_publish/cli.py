"""`affect-publish`: a finished run of any stage as a Hugging Face Hub model repository.

    affect-publish runs/mae_vit_base_faces --out publish/mae-faces               # dry run: the folder only
    affect-publish runs/finetune_affectnet_vit_base --out publish/affectnet --repo-id me/vit-b-affectnet
    affect-publish runs/eri_cv --out publish/eri --fold 2 --repo-id me/eri --private

The run is read from its run.json, which every stage writes when it finishes: its stage,
configuration, inputs and the files it wrote. The folder holds the weights (timm's layout for
the encoders of stages 1 and 2, config.json + model.safetensors for the ERI model of stage 3b)
and a model card built from the run's record and the reports it declares. With
--repo-id the folder is uploaded (the repository is created if needed); without, nothing
leaves the machine.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from shared.atomic import seal_folder
from shared.errors import UserError, run_cli
from affect_publish.licences import DEFAULT_LICENSE, hub_license
from affect_publish.runs import Run, open_run


def _folder(text: str) -> Path:
    if not text.strip():  # Path("") is ".", which would publish whatever is here
        raise argparse.ArgumentTypeError("empty; give a run folder (a stage's run.output_dir)")
    return Path(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="affect-publish", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=_folder, metavar="RUN_DIR", help="the run folder (a stage's run.output_dir)")
    p.add_argument("--out", type=Path, required=True, metavar="FOLDER", help="the folder to write (new or empty)")
    p.add_argument("--repo-id", metavar="USER/NAME", help="upload to this Hub model repository; without it, a dry run")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", metavar="BRANCH", help="upload to this branch (created from main when missing)")
    p.add_argument("--commit-message", metavar="TEXT", help="message of the upload commit")
    p.add_argument("--weights", metavar="NAME",
                   help="which of the run's weights (run.json): stage 2 best (default) or final")
    p.add_argument("--fold", type=int, metavar="N",
                   help="stage 3b with folds: the fold whose model is published, the same as --weights fold_N "
                        "(default: fold 0)")
    p.add_argument("--license", default=DEFAULT_LICENSE, metavar="ID",
                   help="licence of the weights (default %(default)s: the data is for non-commercial research)")
    p.add_argument("--base-model", metavar="USER/NAME",
                   help="Hub id of the starting checkpoint, when the run started from a local copy of a published "
                        "one (default: read from the run's configuration)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def check_out(out: Path, run_root: Path, overwrite: bool) -> None:
    """--out may be replaced: it is not (in) the run, and is new, empty or --overwrite'd."""
    target, root = out.resolve(), run_root.resolve()
    if target == root or root in target.parents or target in root.parents:
        raise UserError(f"--out {out} overlaps the run folder {run_root}; choose a folder outside it")
    if target.exists() and not target.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(f"--out {out} already exists and is not empty; choose another folder or add --overwrite "
                        "to replace it")


def write_folder(run: Run, out: Path, *, repo_id: str | None = None, license: str = DEFAULT_LICENSE,
                 base_model: str | None = None) -> Path:
    """Weights + README.md of `run` in `out`, written beside it first and swapped in whole, so a
    failure never leaves half a folder (nor destroys the previous one)."""
    # torch, timm and the Hub client load here, once the arguments are known to be good
    from affect_publish.card import build_card
    from affect_publish.folders import write_weights

    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        write_weights(run, staging)
        build_card(run, staging, repo_id=repo_id, license=license, base_model=base_model).save(staging / "README.md")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    seal_folder(staging, out)  # its files on disk before the rename
    return out


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def summary(run: Run, out: Path) -> str:
    files = sorted(p for p in out.rglob("*") if p.is_file())
    sizes = {p: p.stat().st_size for p in files}
    width = max(len(str(p.relative_to(out))) for p in files)
    lines = [f"{run.title}: {run.root}, {run.about}",
             f"wrote {out} ({len(files)} files, {_size(sum(sizes.values()))}):"]
    lines += [f"  {str(p.relative_to(out)):<{width}}  {_size(sizes[p]):>9}" for p in files]
    return "\n".join(lines)


def _check_upload_options(args) -> None:
    if not args.repo_id:
        given = [flag for flag, value in (("--private", args.private), ("--revision", args.revision),
                                          ("--commit-message", args.commit_message)) if value]
        if given:
            raise UserError(f"{', '.join(given)} only apply to an upload: add --repo-id USER/NAME")
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(args.repo_id)
    except HFValidationError as err:
        raise UserError(f"--repo-id {args.repo_id!r} is not a Hub repository id ({str(err).splitlines()[0]}); "
                        "expected user/name") from None


def upload_command(args) -> str:
    """This dry run's command again, every option that shaped the folder kept, to add --repo-id to."""
    import shlex
    chosen = [(flag, value) for flag, value in (("--weights", args.weights), ("--fold", args.fold),
                                                ("--base-model", args.base_model)) if value is not None]
    if args.license != DEFAULT_LICENSE:
        chosen.append(("--license", args.license))
    return shlex.join(["affect-publish", str(args.run), "--out", str(args.out), "--overwrite",
                       *(str(item) for pair in chosen for item in pair)])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check_upload_options(args)
    args.license = hub_license(args.license)
    run = open_run(args.run, weights=args.weights, fold=args.fold)
    check_out(args.out, run.root, args.overwrite)
    out = write_folder(run, args.out, repo_id=args.repo_id, license=args.license, base_model=args.base_model)
    print(summary(run, out))
    if not args.repo_id:
        print("dry run: nothing uploaded. To upload it to a Hub model repository (its name then fills in the card's "
              f"loading code): {upload_command(args)} --repo-id USER/NAME [--private]")
        return 0
    from affect_publish.hub import upload
    url = upload(out, args.repo_id, private=args.private, revision=args.revision,
                 commit_message=args.commit_message)
    print(f"uploaded to https://huggingface.co/{args.repo_id}"
          + (f" (branch {args.revision})" if args.revision else "") + f": {url}")
    return 0


def entry() -> None:
    raise SystemExit(run_cli(main, prog="affect-publish"))


if __name__ == "__main__":  # python -m affect_publish.cli, as python -m affect_publish
    entry()
