# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`trl-opd demo`: a quick one-seed `trl-opd lab` run, on the `arith` world unless `--world` names another, offline, on CPU.

It builds (or loads from the cache) the world's tiny teacher and warm-started student, distils the student with each
chosen method through the CLI's own trainer factory, scores held-out accuracy as it goes, and writes `results.md`,
`results.png` and `results.json`, plus each distilled student with its model card under `runs/<method>/`.
For several seeds, use `trl-opd lab`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..lab.run import SFT, build_parser, parse_variant, run_lab, validate
from ..launch.methods import METHODS


DEFAULT_METHODS = ("opd", SFT)  # a few minutes on 2 CPU cores; any method with --methods


def parse_args(argv: list[str] | None):
    parser = build_parser("trl-opd demo", __doc__.splitlines()[0])
    parser.set_defaults(methods=",".join(DEFAULT_METHODS), steps="300", output_dir="demo_output")
    parser.add_argument("--seed", default="0", help="The run seed (default 0).")
    args = parser.parse_args(argv)
    args.seeds = args.seed
    return validate(args)


def select_methods(requested: str) -> list[str]:
    """The validated method list (an unknown method is a `UnknownMethodError`)."""
    return validate(build_parser().parse_args(["--methods", requested])).methods


def write_demo_card(trainer, method: str, result: dict, output_dir: Path, teacher: str | None, world: str) -> None:
    """Save the distilled student with a complete model card (its eval table: the held-out arithmetic accuracy)."""
    from ..launch.card_info import training_card_info
    from ..launch.model_card import render_model_card, write_model_card

    trainer.save_model(str(output_dir))
    final = result["final"]
    evaluation = {
        "results": [
            {
                "task": "demo_arithmetic",
                "title": "synthetic arithmetic (held-out)",
                "average_at_k": final["greedy"],
                "pass_at_k": final["greedy"],
                "mean_length": final["mean_length"],
                "k": 1,
                "num_problems": None,
            }
        ],
        "sampling": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 48},
        "num_samples": 1,
        "backend": "transformers (greedy, trl-opd demo)",
        "data": f"the lab's {world} world",
        "step": trainer.state.global_step,
    }
    info = training_card_info(
        method,
        trainer.args,
        f"the lab's {world} student",
        teacher=teacher,
        training_data=f"synthetic multi-step arithmetic, the lab's {world} world (trl_opd.lab.tasks)",
        evaluation=evaluation,
    )
    write_model_card(str(output_dir), render_model_card(info))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = Path(args.output_dir)

    def on_trained(trainer, method, result):
        name = parse_variant(method)[0]
        teacher = getattr(trainer.args, "teacher_model_name_or_path", None) if METHODS[name].needs_teacher else None
        write_demo_card(trainer, name, result, out / "runs" / method, teacher, args.world)

    results = run_lab(args, "trl-opd demo " + shlex.join(argv), stem="results", on_trained=on_trained)
    print((out / "results.md").read_text())
    start = results["start"]["greedy"]
    for method in results["methods"]:
        final = results["summary"][method]["greedy"]["mean"]
        print(f"{method}: held-out greedy {start:.3f} -> {final:.3f} ({100 * (final - start):+.1f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
