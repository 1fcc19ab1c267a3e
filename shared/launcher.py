"""The console commands of the stages (`affect-pretrain`, `affect-finetune`, `affect-extract`,
`affect-train-eri`): `accelerate launch`'s options first, then the stage's own arguments.

    affect-pretrain --config pretrain_mae/configs/tiny_cpu.yaml run.total_steps=50     # one process
    affect-pretrain --num_processes 2 --config ...                                       # two (CPU: gloo)
    affect-pretrain --config_file launch/accelerate/one_node_8gpu.yaml --config ...      # 8 GPUs

Unlike `accelerate launch` and `torchrun`, whose own failure report (a `CalledProcessError`
traceback, a `ChildFailedError` summary) follows the stage's line and whose status is 1 for
any failure, these end with the stage's one line and exit with the stage's own status: 2 for
bad input, 1 for a failure while running, 75 for a preempted run (state saved). The launcher
options are accelerate's (`accelerate launch --help`), read by accelerate's own parser and
turned into the processes' environment by accelerate's launch utilities; the processes are
started by `torch.distributed.run`, as `accelerate launch` starts them.

- One process (the default without GPUs, or `--num_processes 1`): the stage runs inside this
  process, with the thread count `python` would use (OMP_NUM_THREADS or all cores).
- Several: `torch.distributed.run` starts them (gloo on a CPU, where `accelerate launch`
  starts one process only); local rank 0 writes to the console, the others to log files, and
  on a failure the line of the process that failed first is the last one printed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from shared.errors import FAILURES_ENV, PROG_ENV, UserError, one_line, run_cli

# launcher options the stages leave alone: --debug, --help and --print-config belong to the stage, the rest
# are set here (the stage is a module) or not supported by this suite
STAGE_OWNS = {"--debug", "-h", "--help", "--print-config"}
UNSUPPORTED = {"use_deepspeed": "--use_deepspeed", "tpu": "--tpu", "no_python": "--no_python",
               "mpirun_hostfile": "--mpirun_hostfile"}
HELP = ("{prog}: the options of `accelerate launch` may come before the stage's arguments (--num_processes N, "
        "--config_file FILE, --num_machines, --machine_rank, --main_process_ip, --main_process_port, ...; "
        "see `accelerate launch --help`); the stage's own arguments follow")


def launch(main: Callable, module: str, prog: str, argv: list[str] | None = None) -> int:
    """Run the stage `module` (whose `main(argv)` is given) as the command `prog`; returns the
    exit status of the stage (of its first failed process when there are several)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        options, stage_args = split_arguments(argv)
        args = accelerate_args(options, module, stage_args)
    except UserError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
        return err.exit_code
    if "-h" in stage_args or "--help" in stage_args:
        print(HELP.format(prog=prog) + "\n")
    if several(args) and "--print-config" not in stage_args:  # printed once, by this process
        return several_processes(args, prog)
    return in_process(main, args, prog, stage_args)


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher options, stage arguments): the leading tokens that are `accelerate launch`
    options (with their values), then everything else; --debug and --help among the leading
    tokens are the stage's."""
    from accelerate.commands.launch import launch_command_parser
    actions = launch_command_parser()._option_string_actions
    options, stage, i = [], [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in STAGE_OWNS:
            stage.append(argv[i])
            i += 1
            continue
        if name not in actions:
            break
        takes_value = actions[name].nargs != 0 and "=" not in argv[i]
        if takes_value and i + 1 >= len(argv):
            raise UserError(f"launcher option {name} needs a value")
        options += argv[i:i + 2] if takes_value else argv[i:i + 1]
        i += 2 if takes_value else 1
    return options, stage + argv[i:]


def accelerate_args(options: list[str], module: str, stage_args: list[str]) -> argparse.Namespace:
    """accelerate's launch arguments, its config file's defaults filled in, as `accelerate
    launch` fills them (with one process and no warning when nothing says otherwise)."""
    import torch
    from accelerate.commands.config import default_config_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    given = {o.split("=", 1)[0].lstrip("-").replace("-", "_") for o in options if o.startswith("--")}
    if "config_file" not in given and not os.path.isfile(default_config_file):
        defaults = {"num_processes": str(max(1, torch.cuda.device_count())), "num_machines": "1",
                    "mixed_precision": "no", "dynamo_backend": "no"}
        options = [*options, *(x for k, v in defaults.items() if k not in given for x in (f"--{k}", v))]
    parser = launch_command_parser()
    try:
        args = parser.parse_args([*options, "--module", module, *stage_args])
    except SystemExit:  # argparse has printed its own usage line
        raise UserError("bad launcher options (see `accelerate launch --help`)") from None
    for dest, flag in UNSUPPORTED.items():
        if getattr(args, dest, None):
            raise UserError(f"{flag} is not supported by this suite's stages")
    try:
        args, _, _ = _validate_launch_command(args)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"launcher options: {one_line(err)}") from None
    return args


def several(args: argparse.Namespace) -> bool:
    """Whether accelerate would start the processes through torch.distributed.run (several of
    them, several machines, or FSDP / Megatron, which need its environment even on one)."""
    return (int(args.num_processes or 1) > 1 or int(args.num_machines or 1) > 1
            or bool(args.use_fsdp or args.use_megatron_lm or args.multi_gpu) and not args.cpu)


def in_process(main: Callable, args: argparse.Namespace, prog: str, stage_args: list[str]) -> int:
    """One process: accelerate's environment for it, then the stage in this interpreter."""
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env
    _, env = prepare_simple_launcher_cmd_env(args)
    env.pop("OMP_NUM_THREADS", None)  # torch is loaded: the thread count is what python would use
    os.environ.update(env)
    return run_cli(main, stage_args, prog=prog)


def several_processes(args: argparse.Namespace, prog: str) -> int:
    """`torch.distributed.run` with accelerate's environment; the first failed process's
    status, and its line last."""
    import torch.distributed.run as distrib_run
    from accelerate.utils import patch_environment
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    env = prepare_multi_gpu_env(args)  # sets torchrun's own arguments on args too
    local = int(args.nproc_per_node)
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun's default is 1 thread per process
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // local))
    log_dir = Path(tempfile.mkdtemp(prefix=f"{prog}-"))
    env.update({PROG_ENV: prog, FAILURES_ENV: str(log_dir / "failures")})
    torchrun = distrib_run.get_args_parser().parse_args([args.training_script])
    for key, value in vars(args).items():
        if key in vars(torchrun):
            setattr(torchrun, key, value)
    torchrun.log_dir = str(log_dir)
    torchrun.redirects = ",".join(f"{r}:3" for r in range(1, local)) or "0"  # rank 0 on the console
    quiet = logging.getLogger("torch.distributed.elastic")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL + 1)  # its failure report would follow the stage's line
    try:
        with patch_environment(**env):
            distrib_run.run(torchrun)
    except ChildFailedError as err:
        return first_failure(err, log_dir / "failures", prog)
    except Exception as err:  # noqa: BLE001 - the launcher itself (rendezvous, ports): one line too
        print(f"{prog}: error: starting the processes failed: {type(err).__name__}: {one_line(err)}",
              file=sys.stderr, flush=True)
        return 1
    finally:
        quiet.setLevel(level)
    _remove(log_dir)
    return 0


def first_failure(err, notes: Path, prog: str) -> int:
    """The status of the process that failed first (by the time each process noted with its
    line, see shared.errors; without notes, the lowest rank with a positive status: the others
    were stopped by the launcher). Its line goes last, unless local rank 0, whose output is
    the console's, ended with the same line."""
    noted = sorted((json.loads(p.read_text()) for p in notes.glob("rank_*.json")), key=lambda n: n["time"])
    if noted:
        first = noted[0]
        on_console = [n["line"] for n in noted if err.failures.get(n["rank"]) and err.failures[n["rank"]].local_rank == 0]
        if first["line"] not in on_console:
            print(f"{prog}: process {first['rank']} failed first and the others were stopped (the output of "
                  f"every process: {notes.parent})", file=sys.stderr)
            print(first["line"], file=sys.stderr, flush=True)
        return first["status"]
    failures = sorted(err.failures.items())
    _, failure = next(((r, f) for r, f in failures if f.exitcode > 0), failures[0])
    return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # killed by signal N: 128 + N


def _remove(folder: Path) -> None:
    import shutil
    shutil.rmtree(folder, ignore_errors=True)
