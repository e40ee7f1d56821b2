"""The judge's options of `python -m genlab.eval` (train-judge, calibrate-judge, emoji --judge), checked in one place.

    python -m genlab.eval train-judge     --data data/emoji --out weights/emoji-judge [--judge-steps 1500]
    python -m genlab.eval calibrate-judge --judge weights/emoji-judge --data data/emoji [--model weights/ldm-emoji] [--card]
    python -m genlab.eval emoji --judge weights/emoji-judge --model weights/ldm-emoji --data data/emoji [--per-class 54]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

JUDGE_KINDS = ("train-judge", "calibrate-judge")
DEFAULT_JUDGE = Path("weights/emoji-judge")
DEFAULT_GENERATOR = "weights/ldm-emoji"
JUDGE_PER_CLASS = 54  # 10 categories x 54 = 540 samples; the real floors (Component: 5 emoji) reach 491
PLAIN_PER_CLASS = 16


def add_judge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", type=Path, default=None,
                        help="emoji, calibrate-judge: a stored judge folder (train-judge writes one); emoji then "
                        "reads --data as the emoji root holding 64-train/ and 64-holdout/")
    parser.add_argument("--judge-steps", type=int, default=None, help="train-judge: training steps (default 1500)")


def check_judge_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse option combinations that mean nothing, with the offending value; fill the judge defaults."""
    if args.kind not in JUDGE_KINDS and args.model is None:
        parser.error(f"--model is required for {args.kind}")
    if args.judge is not None and args.kind not in ("emoji", "calibrate-judge"):
        parser.error(f"--judge is for emoji and calibrate-judge, not {args.kind}")
    if args.judge_steps is not None and (args.kind != "train-judge" or args.judge_steps < 1):
        parser.error(f"--judge-steps is for train-judge and at least 1 (got {args.judge_steps})")
    if args.kind == "train-judge" and args.model is not None:
        parser.error("train-judge takes no --model: it trains on --data's 64-train/")
    if args.per_class is not None and args.per_class < 1:
        parser.error(f"--per-class must be at least 1, got {args.per_class}")
    judged = args.kind == "calibrate-judge" or (args.kind == "emoji" and args.judge is not None)
    if judged and args.per_class is not None and args.per_class < 4:
        parser.error(f"--per-class must be at least 4 with a judge (precision and recall take k = 3 neighbours), "
                     f"got {args.per_class}")
    if args.per_class is None:
        args.per_class = JUDGE_PER_CLASS if judged else PLAIN_PER_CLASS
    if args.kind == "calibrate-judge":
        args.judge = args.judge or DEFAULT_JUDGE
        args.model = args.model or DEFAULT_GENERATOR
    if args.out is None:
        args.out = DEFAULT_JUDGE if args.kind == "train-judge" else Path("artifacts/eval")


def run_judge_command(args: argparse.Namespace) -> str:
    """train-judge or calibrate-judge; the printed text."""
    import torch

    torch.manual_seed(0)
    command = "python -m genlab.eval " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.kind == "train-judge":
        from .judge import train_and_store

        return train_and_store(args.data, args.out, steps=args.judge_steps or 1500, command=command)
    from .judge_report import calibrate

    return calibrate(args.judge, args.data, args.model, args.out, per_class=args.per_class, card=args.card,
                     command=command)
