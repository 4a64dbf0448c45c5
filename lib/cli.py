"""`python -m lib ...`: the shell interface. Parsing lives here; each command's work lives in its module.

Nothing heavy is imported until a command runs, so `--help` is instant. Every UserError becomes a
one-line message on stderr and exit code 2; the last stdout line of scan/train/evaluate is JSON.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, function); the function takes the parsed args and returns an exit code.
COMMANDS = {
    "scan": ("lib.datasets", "scan_command"),
    "train": ("lib.training", "train_command"),
    "evaluate": ("lib.evaluation", "evaluate_command"),
    "predict": ("lib.prediction", "predict_command"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m lib",
        description="Image-classifier studio from the shell: check a dataset, train, evaluate, predict.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    scan = sub.add_parser("scan", help="check an image dataset folder and print its health report")
    scan.add_argument("data", metavar="DIR", help="dataset folder (DIR/<class>/* or DIR/<split>/<class>/*)")
    scan.add_argument("--json", action="store_true", help="print the report as one JSON object")
    scan.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        metavar="X",
        help="validation share when the app splits (0.15)",
    )
    scan.add_argument(
        "--test-fraction", type=float, default=0.15, metavar="X", help="test share when the app splits (0.15)"
    )

    train = sub.add_parser("train", help="train a classifier and save it as a run")
    train.add_argument("--data", required=True, metavar="DIR", help="dataset folder")
    train.add_argument("--base", default="MobileNetV2", help="base model (default MobileNetV2)")
    train.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (download), bundled (offline MobileNetV2 160), none, or a weights file path",
    )
    train.add_argument("--image-size", type=int, metavar="N", help="input size in pixels")
    train.add_argument("--epochs", type=int, metavar="N", help="training epochs")
    train.add_argument("--batch-size", type=int, metavar="N", help="batch size")
    train.add_argument("--lr", type=float, metavar="X", help="learning rate")
    train.add_argument("--optimizer", help="adam, rmsprop or sgd")
    train.add_argument("--augment", action="store_true", help="augment training images")
    train.add_argument("--fine-tune-layers", type=int, metavar="N", help="unfreeze the top N base layers")
    train.add_argument("--fine-tune-epochs", type=int, metavar="N", help="epochs of fine-tuning")
    train.add_argument("--runs-dir", default="models", metavar="DIR", help="where runs are saved")
    train.add_argument("--seed", type=int, metavar="N", help="random seed")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", help="evaluate a run on a split and write its report")
    evaluate.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder")
    evaluate.add_argument("--data", metavar="DIR", help="dataset folder (default: the run's)")
    evaluate.add_argument("--split", default="test", help="train, validation, test or all")

    predict = sub.add_parser("predict", help="predict image files with a run")
    predict.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (or a zip)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of lines")
    predict.add_argument(
        "--threshold", type=float, default=0.6, metavar="P", help="unsure below this top probability (0.6)"
    )
    predict.add_argument("--top-k", type=int, default=3, metavar="N", help="probabilities listed in JSON (3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from lib.errors import UserError

    module_name, func_name = COMMANDS[args.command]
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
