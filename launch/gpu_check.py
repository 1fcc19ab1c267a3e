"""The whole GPU story in one command: every stage on one GPU to its export (tests/gpu), the GPU
benchmarks, and one markdown report of both with the GPU and the versions.

    bash launch/gpu_check.sh [--out DIR] [--wheels DIR] [--quick]

Without a CUDA GPU it says so in one line and exits 0. It runs with whatever torch, timm,
accelerate and transformers the machine has, as long as they are within pyproject.toml's
ranges; a package missing or out of range is one line naming it and how to bring it (an offline
GPU machine takes wheels carried in a folder: --wheels DIR). Exit status: 0 when every test
passed and every benchmark ran (a benchmark FAIL is a measurement, reported, not an error),
1 otherwise, 2 for a missing package.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what the GPU tests and benchmarks import: distribution -> module
NEEDED = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "accelerate": "accelerate",
          "transformers": "transformers", "webdataset": "webdataset", "braceexpand": "braceexpand",
          "safetensors": "safetensors", "huggingface_hub": "huggingface_hub", "einops": "einops",
          "numpy": "numpy", "scipy": "scipy", "scikit-learn": "sklearn", "pillow": "PIL", "pyyaml": "yaml",
          "imagehash": "imagehash", "matplotlib": "matplotlib", "tqdm": "tqdm", "fsspec": "fsspec",
          "av": "av", "soundfile": "soundfile", "facenet-pytorch": "facenet_pytorch",
          "opencv-python-headless": "cv2", "sentencepiece": "sentencepiece", "pytest": "pytest"}
BENCHMARKS = ("mae_step_gpu", "mae_step_fast", "gpu_input", "gpu_input_photo", "eri_epoch", "fsdp_step")
VERSIONS = ("torch", "torchvision", "timm", "accelerate", "transformers", "numpy")


def declared_ranges() -> dict:
    """distribution -> SpecifierSet, from pyproject.toml (dependencies and every extra); empty
    before Python 3.11 (no tomllib): then only presence is checked."""
    try:
        import tomllib
    except ImportError:
        return {}
    from packaging.requirements import Requirement
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    reqs = [Requirement(line) for line in lines]
    return {r.name.lower().replace("_", "-"): r.specifier for r in reqs}


def missing_packages() -> list[str]:
    """Each needed distribution that is absent or outside its declared range, in words."""
    ranges, problems = declared_ranges(), []
    for dist, module in NEEDED.items():
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            problems.append(f"{dist} (not installed)")
            continue
        spec = ranges.get(dist.lower().replace("_", "-"))
        if spec and not spec.contains(version.split("+")[0], prereleases=True):
            problems.append(f"{dist} {version} (pyproject.toml wants {spec})")
    return problems


def install_wheels(folder: Path, target: Path) -> None:
    """Wheels carried to an offline machine, installed beside its own packages."""
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu_check: error: no .whl files in {folder}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(target), *wheels], check=True)


def gpu_facts() -> dict:
    import torch
    versions = {name: metadata.version(name) for name in VERSIONS}
    if not torch.cuda.is_available():
        return {"gpu": "no GPU (a dry run on the CPU)", "python": platform.python_version(), **versions}
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip() or "unknown"
    except FileNotFoundError:
        driver = "unknown"
    return {"gpu": f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs",
            "driver": driver, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "cpus": os.cpu_count(), **versions}


def run(cmd: list[str], log: Path, env: dict, timeout: float) -> tuple[int, float]:
    """A step with its output both on the console and in `log`; (exit status, seconds)."""
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                f.write(line)
                if time.perf_counter() - start > timeout:
                    proc.kill()
                    f.write(f"\ngpu_check: stopped after {timeout:.0f} s\n")
        finally:
            status = proc.wait()
    return status, time.perf_counter() - start


def test_rows(junit: Path, figures: Path) -> list[str]:
    """One markdown row per GPU test: outcome, seconds, the figures it recorded."""
    recorded = [json.loads(line) for line in figures.read_text().splitlines()] if figures.is_file() else []
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase") if junit.is_file() else []:
        outcome = ("FAILED" if case.find("failure") is not None or case.find("error") is not None
                   else "skipped" if case.find("skipped") is not None else "passed")
        rows.append(f"| `{case.get('name')}` | {outcome} | {float(case.get('time', 0)):.0f} s |")
    lines = ["| test | result | time |", "|---|---|--:|", *rows, "", "| recorded by | figures |", "|---|---|"]
    lines += [f"| {r['test']} | {', '.join(f'{k} {v}' for k, v in r['figures'].items())} |" for r in recorded]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="launch/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="report folder (default %(default)s)")
    p.add_argument("--wheels", type=Path, help="a folder of wheels to install first (an offline GPU machine)")
    p.add_argument("--quick", action="store_true", help="benchmarks at smoke-run sizes")
    p.add_argument("--test-timeout", type=float, default=360, help="seconds for tests/gpu (default %(default)s)")
    p.add_argument("--benchmark-timeout", type=float, default=120, help="seconds per benchmark (default %(default)s)")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    paths = [str(ROOT)]  # the stages import the suite from the checkout: it need not be pip-installed
    if args.wheels:
        install_wheels(args.wheels, out / "site")
        paths.append(str(out / "site"))
        sys.path[:0] = [str(out / "site")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    import torch
    dry_run = os.environ.get("AFFECT_GPU_TESTS_DEVICE") == "cpu"  # the plumbing, on a CPU (tests/gpu/gpu_utils.py)
    if not torch.cuda.is_available() and not dry_run:
        print(f"gpu_check: no CUDA GPU here (torch {torch.__version__} sees none): nothing to check")
        return 0
    problems = missing_packages()
    if problems:
        names = " ".join(p.split(" ")[0] for p in problems)
        print(f"gpu_check: error: needs {'; '.join(problems)}: `pip install {names}` (offline: `pip download "
              f"--no-deps -d .whl {names}` where there is internet, then `bash launch/gpu_check.sh --wheels .whl`)")
        return 2

    facts, started = gpu_facts(), time.perf_counter()
    junit, figures = out / "tests.xml", out / "figures.jsonl"
    figures.unlink(missing_ok=True)
    test_status, test_time = run([sys.executable, "-m", "pytest", "tests/gpu", "-q", "-rA", f"--junitxml={junit}",
                                  "-p", "no:cacheprovider"], out / "tests.log",
                                 {**env, "AFFECT_GPU_REPORT": str(figures)}, timeout=args.test_timeout)
    bench_md = out / "benchmarks.md"
    bench_cmd = [sys.executable, "-m", "benchmarks", "--only", ",".join(BENCHMARKS), "--markdown", str(bench_md),
                 "--timeout", str(args.benchmark_timeout)] + (["--quick"] if args.quick else [])
    bench_status, bench_time = run(bench_cmd, out / "benchmarks.log", env, timeout=len(BENCHMARKS) * args.benchmark_timeout + 60)

    machine = f"{facts.pop('gpu')}; " + ", ".join(f"{k} {v}" for k, v in facts.items())
    report = [f"# GPU check, {datetime.date.today().isoformat()}", "",
              f"`bash launch/gpu_check.sh{' --quick' if args.quick else ''}` on {machine}: "
              f"{time.perf_counter() - started:.0f} s in all (tests {test_time:.0f} s, benchmarks {bench_time:.0f} s).", "",
              "## tests/gpu", "", *test_rows(junit, figures), "", "## Benchmarks", "",
              bench_md.read_text() if bench_md.is_file() else f"(no summary: exit {bench_status}, see benchmarks.log)"]
    (out / "gpu_check.md").write_text("\n".join(report) + "\n")
    print("\n" + "\n".join(report))
    print(f"\ngpu_check: report {out / 'gpu_check.md'}; tests exit {test_status}, benchmarks exit {bench_status}")
    return 0 if test_status == 0 and bench_status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
