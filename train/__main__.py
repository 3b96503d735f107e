"""`python -m train <command> ...`: the project's command line for data, training and evaluation."""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("train.world_cli", "write a source dataset or mixed benchmark of the generated world"),
    "predict": ("train.predict", "propose segments for a folder of images with a checkpoint; write COCO results"),
    "evaluate": ("train.evaluate", "score COCO-format predictions: PIQ, mIoU, PQ per label space, AP"),
    "pretrain": ("train.pretrain", "train a RESI model on several COCO-format datasets"),
    "bench": ("train.bench", "train and compare RESI against the baselines on M1-M4"),
    "domain-head": ("train.domain", "fit a checkpoint's domain head (domain-aware OMI) on its training datasets"),
    "calibrate": ("train.calibrate", "fit a checkpoint's score temperature and familiarity check on world images"),
    "finetune": ("train.finetune", "fit a label space from accepted annotations or a COCO file; keep it if it is better"),
    "prelabel": ("train.prelabel", "propose segments for every new image of a project (resumable job)"),
    "db": ("storage.cli", "database: upgrade, backup, restore, check; projects; import COCO/panoptic; export as COCO"),
}


def usage() -> str:
    lines = ["usage: python -m train <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `python -m train <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
