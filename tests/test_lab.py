# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`trl-opd lab` at toy size: a smoke run per world, the statistics, bad input, and reproducibility."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trl_opd.cli import main as cli_main
from trl_opd.lab import run as lab_run
from trl_opd.lab.credit import ROLES, first_wrong_position, token_roles
from trl_opd.lab.oracle import LABEL_NATS, StepOracleTrainer, split_oracle_variant, step_labels
from trl_opd.lab.report import SHARED_PANELS, _band, _panels, add_statistics, write_plot
from trl_opd.lab.stats import mean, paired_differences, std
from trl_opd.lab.tasks import STEP
from trl_opd.lab.worlds import WORLDS, free_choice_spans, sum_terms


TINY = ["--scale", "0.005", "--steps", "2", "--seeds", "0", "--eval-every", "1"]
DIAGNOSTIC_KEYS = {
    "arith": "low_teacher_prob_share",
    "long-chains": "next_step_acc_after_correct",
    "mismatch": "low_teacher_prob_share",
    "ambiguous": "self_teacher_entropy_free",
    "ambiguous-long": "self_teacher_entropy_free",
    "ambiguous-noreader": "teacher_entropy_ambiguous",
    "ambiguous-reader": "self_teacher_acc_full",
    "privileged": "self_teacher_acc_full",
    "privileged-cold": "self_teacher_acc_full",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("lab-cache"))


@pytest.mark.parametrize("world", list(WORLDS))
def test_smoke_run_per_world_writes_files_plot_and_diagnostic(world, cache, tmp_path, capsys):
    out = tmp_path / "out"
    code = lab_run.main(
        ["--world", world, "--methods", "opd,sft", "--output-dir", str(out), "--cache-dir", cache, *TINY]
    )
    assert code == 0
    results = json.loads((out / f"{world}.json").read_text())
    assert results["command"].startswith(f"trl-opd lab --world {world}")
    assert DIAGNOSTIC_KEYS[world] in results["diagnostic"]
    assert set(results["runs"]) == {"opd", "sft"}
    final = results["runs"]["opd"]["0"]["final"]
    assert set(final) == {"greedy", "average_at_k", "mean_length"}
    assert [step for step, _ in results["runs"]["opd"]["0"]["curve"]] == [0, 1, 2]
    md = (out / f"{world}.md").read_text()
    assert md.startswith(f"command: `trl-opd lab --world {world}")
    assert "diagnostic:" in md and "| opd |" in md and "| sft |" in md and "Paired difference to `opd`" in md
    assert results["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"with {results['machine']['cpu_capability']} kernels" in md
    assert (out / f"{world}.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{world}.{ext}" for ext in ("json", "md", "png"))
    assert "diagnostic:" in capsys.readouterr().out


def test_first_wrong_position_finds_each_kind_of_error_and_roles_follow_it():
    numbers = [3, 8, 5, 11]
    right = "8+3=11\n\n11+5=16\n\n16+11=27\n\nThe answer is \\boxed{27}."
    assert first_wrong_position(right, numbers) is None
    assert [start for start, _ in free_choice_spans(right)] == [0, 2, 11]
    cases = {
        "8+4=12\n\n12+5=17": 2,  # a term that is not one of the numbers
        "8+3=11\n\n11+3=14": 11,  # a number used twice
        "8+3=12\n\n12+5=17": 4,  # a wrong sum
        "8+3=11\n\n12+5=17": 8,  # a running total that is not the previous sum
        "8+3=11\n\n11+5=16\n\n16+11=27\n\nThe answer is \\boxed{26}.": 27,  # a wrong answer
        "8+3=11\n\nso": 8,  # a line that is not a step
    }
    for completion, position in cases.items():
        assert first_wrong_position(completion, numbers) == position, completion
    # one token per character: before the error, the error's token, after it
    offsets = [(i, i + 1) for i in range(8)]
    roles = token_roles(offsets, 4, [0, 2])
    assert roles == [ROLES[2], ROLES[3], ROLES[2], ROLES[3], ROLES[4], ROLES[5], ROLES[5], ROLES[5]]
    assert token_roles(offsets[:3], None, [0, 2]) == [ROLES[0], ROLES[1], ROLES[0]]


def test_step_oracle_labels_blame_the_first_error_and_credit_the_determined_tokens():
    numbers = [3, 8, 5, 11]
    wrong = "8+3=12\n\n12+5=17"  # the sum `12` is the first error (character 4)
    pieces = list(wrong)  # one character per token, as the lab's tokenizer
    after = step_labels(pieces, numbers, "after", False)
    assert after == [1.0] * 4 + [-1.0] * (len(wrong) - 4)
    first = step_labels(pieces, numbers, "first", False)
    assert first == [1.0] * 4 + [-1.0] + [0.0] * (len(wrong) - 5)
    # a multi-character token that holds the error is blamed; the ones before are credited
    assert step_labels(["8+", "3=", "12", "\n\n", "12+5=17"], numbers, "first", False) == [1, 1, -1, 0, 0]
    right = "8+3=11\n\n11+5=16\n\n16+11=27\n\nThe answer is \\boxed{27}."
    assert step_labels(list(right), numbers, "after", False) == [0.0] * len(right)
    labels = step_labels(list(right), numbers, "after", True)
    free = {0, 2, 11}  # 8, 3, then 5: the freely chosen numbers; every other token is determined
    assert labels == [-1.0 if i in free else 1.0 for i in range(len(right))]
    assert split_oracle_variant("step-oracle:blame=first:epsilon_w=1.0:right_rollouts=true") == (
        "rlsd:epsilon_w=1.0",
        {"blame": "first", "right_rollouts": True},
    )


def test_step_oracle_trains_on_rlsd_magnitude_of_its_labels(cache, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    from trl_opd.trainers.egrsd_trainer import EGRSDTrainer

    grpo_advantages, seen = [], []
    grpo_step, oracle_step = GRPOTrainer._generate_and_score_completions, EGRSDTrainer._generate_and_score_completions

    def grpo(self, inputs):  # the toy student earns no reward yet: group advantages of both signs stand in for it
        output = grpo_step(self, inputs)
        output["advantages"] = torch.linspace(-1.0, 1.0, len(output["advantages"]))
        grpo_advantages.append(output["advantages"].clone())
        return output

    def oracle(self, inputs):
        output = oracle_step(self, inputs)
        seen.append((inputs, {k: v.clone() for k, v in output.items() if torch.is_tensor(v)}))
        return output

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", grpo)
    monkeypatch.setattr(StepOracleTrainer, "_generate_and_score_completions", oracle, raising=False)
    method = "step-oracle:epsilon_w=1.0:right_rollouts=true"
    out, tok = tmp_path / "out", lab_run.build_tiny_tokenizer()
    args = ["--world", "ambiguous", "--methods", method, "--output-dir", str(out), "--cache-dir", cache, *TINY]
    assert lab_run.main(args) == 0
    assert len(seen) == len(grpo_advantages) == 2
    ratios = set()
    for (inputs, output), plain in zip(seen, grpo_advantages, strict=True):
        mask = output["completion_mask"]
        for row, example in enumerate(inputs):
            ids = output["completion_ids"][row][mask[row].bool()].tolist()
            numbers = [int(n) for n in example["problem"][4:-1].replace(" and", ",").split(",")]  # "Add 3, 8 and 5."
            labels = torch.tensor(step_labels([tok.decode([t]) for t in ids], numbers, "after", True))
            a = plain[row].item()  # RLSD's magnitude at ε_w = 1: clip(exp(sign(A)·Δ), 0, 2), Δ = L·label
            expected = a * torch.exp(math.copysign(1.0, a) * LABEL_NATS * labels).clamp(0.0, 2.0)
            torch.testing.assert_close(output["advantages"][row][: len(ids)].float(), expected.float())
            assert (output["advantages"][row][len(ids) :] == 0).all()
            if a != 0:
                ratios.update(round(r, 3) for r in (output["advantages"][row][: len(ids)] / a).tolist())
    assert ratios == {0.0, 2.0}  # every token at a clip bound, both bounds reached: the labels moved the credit
    assert (
        "egrsd/magnitude_mean" in json.loads((out / "ambiguous.json").read_text())["runs"][method]["0"]["mechanisms"]
    )


def test_world_problems_are_well_formed():
    for world in ("ambiguous", "ambiguous-long"):
        n = sum_terms(WORLDS[world])
        rows, metas = WORLDS[world].rows(20, seed=3)
        for row, meta in zip(rows, metas):
            assert len(meta["numbers"]) == n and sum(meta["numbers"]) == int(row["answer"])
            # n - 1 freely chosen numbers (n, n - 1, ..., 2 choices); the last one is determined
            assert [row["solution"][a:b] for a, b in meta["choices"]] == [str(x) for x in meta["order"][: n - 1]]
            # the diagnostic's parser finds the same spans in a completion as the generator marked in its reference
            assert free_choice_spans(row["solution"], n_terms=n) == meta["choices"]
            # the credit diagnostic's checker: every reference is right
            assert first_wrong_position(row["solution"], meta["numbers"]) is None
    assert free_choice_spans("3+8=11\n\nno step here") == [(0, 1), (2, 3)]
    assert sum_terms(WORLDS["arith"]) is None
    rows, metas = WORLDS["long-chains"].rows(10, seed=0)
    for row, meta in zip(rows, metas):
        lines = row["solution"].split("\n")
        assert len(lines) == 6 and all(STEP.match(line) for line in lines[:5])
        assert lines[:5] == meta["steps"]


def test_statistics_against_hand_computed_values():
    assert mean([0.2, 0.4, 0.6]) == pytest.approx(0.4)
    assert std([0.2, 0.4, 0.6]) == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
    assert std([0.5]) == 0.0
    paired = paired_differences({0: 0.5, 1: 0.7, 2: 0.4}, {0: 0.3, 1: 0.4, 2: 0.5})
    assert paired["per_seed"] == pytest.approx({0: 0.2, 1: 0.3, 2: -0.1})
    assert paired["mean"] == pytest.approx(0.4 / 3)
    assert paired["std"] == pytest.approx(
        math.sqrt(((0.2 - 0.4 / 3) ** 2 + (0.3 - 0.4 / 3) ** 2 + (0.1 + 0.4 / 3) ** 2) / 2)
    )

    def run(greedy):
        return {"final": {"greedy": greedy, "average_at_k": greedy / 2, "mean_length": 10.0}, "seconds": 1.0}

    results = {
        "methods": ["opd", "sft"],
        "runs": {"opd": {0: run(0.3), 1: run(0.5)}, "sft": {0: run(0.4), 1: run(0.4)}},
    }
    add_statistics(results)
    assert results["summary"]["opd"]["greedy"]["mean"] == pytest.approx(0.4)
    assert results["summary"]["opd"]["greedy"]["std"] == pytest.approx(math.sqrt(0.02))
    assert results["paired"]["sft"]["greedy"]["per_seed"] == pytest.approx({0: 0.1, 1: -0.1})
    assert results["paired"]["sft"]["average_at_k"]["mean"] == pytest.approx(0.0)
    assert "opd" not in results["paired"]


def test_mechanism_plot_statistics_with_absent_and_nan_steps(tmp_path):
    # a step one seed did not log (an empty group) or logged as NaN is left out of that step's band, not the plot
    steps, means, stds = _band([[(1, 0.5), (2, math.nan), (3, 1.0)], [(1, 0.7), (3, 0.0)]])
    assert steps == [1, 3] and means == pytest.approx([0.6, 0.5]) and stds == pytest.approx([0.02**0.5, 0.5**0.5])
    assert _band([[(2, 1.0)], [(4, 0.0)]]) == ([2, 4], [1.0, 0.0], [0.0, 0.0])
    (shared_title,) = SHARED_PANELS
    names = ["motab/accuracy_backtracked", "motab/accuracy_not_backtracked", "motab/boundary"]
    assert _panels(names) == [(shared_title, names[:2]), ("motab/boundary", ["motab/boundary"])]
    assert _panels(names[1:2]) == [(shared_title, names[1:2])]

    def run(mechanisms):
        return {"curve": [(0, 0.1), (2, 0.3)], "mechanisms": mechanisms}

    results = {
        "world": "arith",
        "methods": ["motab", "opd"],
        "seeds": [0, 1],
        "teacher_accuracy": 0.9,
        "runs": {
            "motab": {
                "0": run({names[0]: [(1, 0.5)], names[1]: [(1, 0.2), (2, 0.4)], names[2]: [(1, math.inf)]}),
                "1": run({names[1]: [(2, math.nan)], names[2]: [(1, 0.3), (2, 0.3)]}),
            },
            "opd": {"0": run({"k1_reverse_kl": [(1, 0.1)]}), "1": run({})},
        },
    }
    write_plot(tmp_path / "plot.png", results)
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--world", "nowhere"], "unknown world 'nowhere'"),
        (["--methods", "opd,nope"], "Unknown method 'nope'"),
        (["--seeds", "0,one"], "--seeds must be comma-separated integers"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--steps", "ten"], "--steps must be an integer"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--methods", "opd,motab:nope=1"], "is not `field=value` for a field of MOTABConfig"),
        (["--methods", "opd,motab:lambda_int"], "is not `field=value`"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--lr-schedule", "cosine"], "invalid choice: 'cosine'"),
        (["--methods", "grpo,step-oracle"], "step-oracle needs a world of sums"),
        (["--world", "ambiguous", "--methods", "grpo,step-oracle:blame=last"], "blame must be one of"),
        (["--world", "ambiguous", "--methods", "grpo,step-oracle:nope=1"], "a field of EGRSDConfig"),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(["lab", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_output_dir_that_is_a_file_is_an_error(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert cli_main(["lab", "--output-dir", str(target), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a directory" in err[0]
    assert target.read_text() == "keep me" and not (tmp_path / "cache").exists()


def test_two_identical_short_runs_give_identical_metrics_serial_or_in_parallel(cache, tmp_path):
    outputs = []
    for name, jobs in (("a", "1"), ("b", "2")):
        out = tmp_path / name
        lab_run.main(
            ["--world", "arith", "--methods", "opd,sft", "--output-dir", str(out), "--cache-dir", cache, *TINY]
            + ["--jobs", jobs]
        )
        outputs.append(json.loads((out / "arith.json").read_text()))
    for method in ("opd", "sft"):
        first, second = (o["runs"][method]["0"] for o in outputs)
        assert first["final"] == second["final"] and first["curve"] == second["curve"]
        assert first["mechanisms"] == second["mechanisms"]


def test_lr_schedule_linear_by_default_or_constant_for_every_method_and_the_sft_control(cache, tmp_path, monkeypatch):
    lab = SimpleNamespace(world=WORLDS["arith"], teacher_path=tmp_path)
    for method in ("opd", "motab", "grpo", "gkd", "opd:lr_scheduler_type=cosine"):
        default, constant, linear = (
            lab_run.method_config(lab, method, str(tmp_path), 3, 0, *schedule).lr_scheduler_type
            for schedule in ((), ("constant",), ("linear",))
        )
        cosine = "cosine" in method  # a variant still has the last word
        assert default == linear == ("cosine" if cosine else "linear"), (method, default, linear)
        assert constant == ("cosine" if cosine else "constant_with_warmup"), (method, constant)
    decays = []
    real = lab_run.supervised_warmup
    monkeypatch.setattr(lab_run, "supervised_warmup", lambda *a, **kw: decays.append(kw["decay"]) or real(*a, **kw))
    for flag, decay, line in (
        ([], True, "- learning rate: linear decay to 0 after the warm-up steps (`--lr-schedule`)"),
        (["--lr-schedule", "constant"], False, "- learning rate: constant after the warm-up steps"),
    ):
        out = tmp_path / f"out{len(flag)}"
        args = ["--world", "arith", "--methods", "opd,sft", "--output-dir", str(out), "--cache-dir", cache, *TINY]
        assert lab_run.main([*args, *flag]) == 0
        assert decays.pop() is decay and not decays
        assert json.loads((out / "arith.json").read_text())["lr_schedule"] == ("constant" if flag else "linear")
        assert line in (out / "arith.md").read_text()


def test_a_variant_overrides_config_fields_after_every_other_setting(tmp_path):
    # YAML 1.1 reads `3e-4` as a string; a float field takes it as the number a user means
    assert lab_run.parse_variant("opd:learning_rate=3e-4:teacher_collapse_logp=-1e0") == (
        "opd",
        {"learning_rate": 3e-4, "teacher_collapse_logp": -1.0},
    )
    assert lab_run.parse_variant("motab:train_on_strayed=true:fixed_boundary=.inf") == (
        "motab",
        {"train_on_strayed": True, "fixed_boundary": math.inf},
    )
    world = WORLDS["long-chains"]  # its own MOTAB settings come before the variant's
    lab = SimpleNamespace(world=world, teacher_path=tmp_path)
    plain = lab_run.method_config(lab, "motab", str(tmp_path), 3, 0)
    variant = lab_run.method_config(lab, "motab:max_segment_tokens=5:lambda_int=0.25", str(tmp_path), 3, 0)
    assert plain.max_segment_tokens == world.method_settings["motab"]["max_segment_tokens"]
    assert (variant.max_segment_tokens, variant.lambda_int) == (5, 0.25)
    assert variant.step_delimiter == plain.step_delimiter == "\n" and variant.max_steps == 3


def test_each_method_is_also_paired_with_its_own_baselines():
    def run(greedy):
        return {"final": {"greedy": greedy, "average_at_k": greedy, "mean_length": 10.0}, "seconds": 1.0}

    methods = ["grpo", "rlsd", "egrsd", "opsd", "atesd", "motab", "motab:lambda_int=0.5"]
    values = {"grpo": 0.1, "rlsd": 0.2, "egrsd": 0.5, "opsd": 0.3, "atesd": 0.25, "motab": 0.4}
    values["motab:lambda_int=0.5"] = 0.7
    results = {"methods": methods, "runs": {m: {0: run(v), 1: run(v + 0.1)} for m, v in values.items()}}
    add_statistics(results)
    # grpo is the first method (its table is the first one); the registry names rlsd and opsd; a variant's own
    # baseline is its plain method (motab's baseline opd did not run here)
    assert set(results["paired_to_own"]) == {"egrsd - rlsd", "atesd - opsd", "motab:lambda_int=0.5 - motab"}
    assert results["paired_to_own"]["atesd - opsd"]["greedy"]["per_seed"] == pytest.approx({0: -0.05, 1: -0.05})
    assert results["paired_to_own"]["egrsd - rlsd"]["greedy"]["mean"] == pytest.approx(0.3)
    assert results["paired_to_own"]["motab:lambda_int=0.5 - motab"]["greedy"]["mean"] == pytest.approx(0.3)


def test_parallel_build_trains_the_same_teacher_and_student_as_a_serial_one(tmp_path):
    import hashlib

    from trl_opd.lab.build import build_lab

    world = WORLDS["privileged"]  # the longest build: the student also learns to read a reference first
    labs = [build_lab(world, 0.005, str(tmp_path / name), load=False, parallel=p) for name, p in [("a", 0), ("b", 1)]]

    def digest(path):
        return hashlib.sha1((path / "model.safetensors").read_bytes()).hexdigest()

    serial, parallel = labs
    assert serial.teacher_path != parallel.teacher_path
    assert digest(serial.teacher_path) == digest(parallel.teacher_path)
    assert digest(serial.student_path) == digest(parallel.student_path)


@pytest.mark.parametrize("n_confirm", [0, 40])
def test_a_band_entry_must_hold_on_fresh_problems_where_the_world_asks(n_confirm, monkeypatch):
    """Validation (12 problems) enters the band by luck at steps 20 and 24; the fresh problems (40) only agree at 28.
    Without `n_confirm` the first lucky entry stops the warm-up (what `long-chains` version 1 did at chance)."""
    import dataclasses

    from trl_opd.lab import build
    from trl_opd.lab.report import confirmation_note

    world = dataclasses.replace(WORLDS["long-chains"], n_val=12, n_confirm=n_confirm)
    size = {"n_val": 12, "student_steps": 100, **({"n_confirm": 40} if n_confirm else {})}
    assert ("n_confirm" in build.sizes(world)) == bool(n_confirm) and "n_confirm" not in build.sizes(
        WORLDS["mismatch"]
    )
    script = {12: {20: 0.125, 24: 0.125, 28: 0.125}, 40: {28: 0.1}}  # by dataset size, then step; else 0.05
    calls, step_now = [], [0]

    def accuracy(model, tokenizer, dataset, max_new_tokens=48, prompts=None):
        calls.append((step_now[0], len(dataset)))
        return script[len(dataset)].get(step_now[0], 0.05)

    def warmup(model, tokenizer, dataset, steps, on_step, **kwargs):
        for step in range(1, steps + 1):
            step_now[0] = step
            if on_step(step, model):
                return

    monkeypatch.setattr(build, "heldout_accuracy", accuracy)
    monkeypatch.setattr(build, "supervised_warmup", warmup)
    _, info = build.warm_up_student(world, build.build_tiny_tokenizer(), None, world.rows(12, 1)[0], size)
    if not n_confirm:
        assert info["warmup_steps"] == 20 and "confirm_accuracy" not in info and confirmation_note(info) == ""
        assert all(n == 12 for _, n in calls)
        return
    assert info["warmup_steps"] == 28 and info["confirm_accuracy"] == 0.1 and info["entries_rejected"] == 2
    assert [c for c in calls if c[1] == 40] == [(20, 40), (24, 40), (28, 40)]  # only at entries
    assert confirmation_note(info) == "; confirmed at 0.100 on fresh problems, after 2 entries that did not hold there"


def _lab_run_key(command: str) -> tuple:
    """What decides a lab result's numbers (not `--jobs`: a parallel run gives the same ones)."""
    import shlex

    args = lab_run.build_parser().parse_args(shlex.split(command))
    return (
        args.world,
        args.methods,
        args.seeds,
        args.steps,
        str(Path(args.output_dir)),
        args.eval_every,
        args.lr_schedule,
    )


def test_every_committed_lab_result_is_a_make_lab_line_and_each_line_has_its_result():
    import re

    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text()
    lab = re.search(r"^LAB := \$\(VENV\)/bin/trl-opd lab (.*)$", makefile, re.M).group(1)
    lab = lab.replace("$(LAB_SEEDS)", "0,1,2").replace("$(LAB_STEPS)", "200")
    recipe = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    made = {_lab_run_key(lab + " " + line.split("$(LAB)", 1)[1]) for line in recipe.splitlines() if "$(LAB)" in line}
    committed = set()
    for md in sorted((root / "benchmarks" / "results").rglob("*.md")):
        header = md.read_text().splitlines()[0]
        command = re.fullmatch(r"command: `trl-opd lab (.*)`", header).group(1)
        key = _lab_run_key(command)
        assert Path(key[4]) / f"{key[0]}.md" == md.relative_to(root), md  # written where its command writes
        assert f"\n- learning rate: {key[6]} " in md.read_text(), md  # the schedule it says is its command's
        committed.add(key)
    assert committed == made


_WORKER_SCRIPT = """
import sys, time
from trl_opd.lab.run import exit_with_parent
exit_with_parent(int(sys.argv[1]), interval=0.05)
print("watching", flush=True)
time.sleep(60)
"""
_PARENT_SCRIPT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    """Whether `pid` runs: it exists and, where /proc tells, is not a zombie (an exited process whose new parent, e.g.
    a container's init, has not reaped it)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def test_a_worker_ends_when_the_lab_process_is_killed():
    """A spawned lab worker watches its parent: once the parent dies (the lab was killed, so nothing will collect the
    worker's results) it exits within seconds instead of training its queued runs."""
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-c", _PARENT_SCRIPT, _WORKER_SCRIPT]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    child_pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "watching"  # the child has imported the lab and started its watch
    assert _alive(child_pid)  # alive while its parent is
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not _alive(child_pid):
            return
        time.sleep(0.1)
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail("the worker outlived its parent by 15 s")
