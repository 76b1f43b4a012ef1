# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Every method on several processes: the one worker script and the one launch helper of the multi-process tests.

`accelerate launch ... multiprocess_worker.py OUT MODE METHOD [METHOD ...]` (see [`launch_two_processes`]). Mode
`split`: for each method, every rank builds the tiny trainer, computes the loss and gradients of its share of one fixed global
batch (as `_generate_and_score_completions` would hand it: TRL's global token count, GRPO's gathered group
advantages), averages them over processes as DDP does, then trains one optimizer step on sampled rollouts. Rank 0
saves `{method: {"loss", "grads", "steps", "backtracks"}}`. The tests compute the same `loss_and_grads` in one process
(`world=1`) and compare. Mode `step` (sharded models, FSDP2 / ZeRO-3, where the loss must go through the prepared
model): [`fixed_step`]. In either mode a method may carry a variant of [`VARIANTS`] (`motab:nogather`, `egrsd:trust`).

MOTAB trains with a fixed boundary of `-inf` on rank 0 (every segment strays, up to `max_backtracks`) and `+inf` on
rank 1 (none does): the ranks' rollouts make different numbers of forwards, which must not hang. ATESD trains with
every row collapsing on rank 0 (its teacher repairs them all) and none on rank 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch


METHODS = ("opd", "motab", "tropd", "egrsd", "cl-egrsd", "atesd", "opsd")
#: `method:variant` config overrides for the sharded runs
VARIANTS = {
    "": {},
    "nogather": {"ds3_gather_for_generation": False},
    "ema": {"self_teacher": "ema", "teacher_ema_decay": 0.5},  # the student's own EMA as teacher, no external one
    # EGRSD's rank agreement: its gathers (the fixed batch ranks as the reward does, D = 1 on each rank and pooled, so
    # this checks the collectives; the pooling itself is `test_magnitude_trust_pools_every_process`)
    "trust": {"magnitude_trust": "rank"},
}
GROUP = 2  # EGRSD generations per prompt; the fixed batch is 2 prompts x GROUP completions


# ----------------------------------------------------------------- launch helper (used by the tests)
# A rank that dies with this line (SIGABRT) died in a thread's teardown, not in the code under test: seen about once in
# six launches on a loaded 2-core machine, at this session's first commit as on its last. One relaunch, then it counts.
TEARDOWN_ABORT = "terminate called without an active exception"


def launch_two_processes(args: list[str], config_file: str | None = None, timeout: float = 240):
    """[`_launch_two_processes`], relaunched once when a rank aborted in a thread's teardown ([`TEARDOWN_ABORT`])."""
    result = _launch_two_processes(args, config_file, timeout)
    if result.returncode != 0 and TEARDOWN_ABORT in result.stderr:
        print(f"two-process launch: a rank aborted ({TEARDOWN_ABORT!r}); relaunching once", file=sys.stderr)
        result = _launch_two_processes(args, config_file, timeout)
    return result


def _launch_two_processes(args: list[str], config_file: str | None, timeout: float):
    """`accelerate launch` of `args` on two CPU processes (gloo): `--multi_gpu` is the torchrun launcher, and without a
    GPU the processes use gloo on the CPU (the CPU-safe configs set `use_cpu`). With `config_file` (an accelerate
    config: FSDP), that config instead. A run past `timeout` seconds is killed with all its processes and is a
    failure (a hang, not a slow test). Returns the `CompletedProcess`."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--config_file", config_file] if config_file else ["--multi_gpu"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", *args]
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"two-process run still going after {timeout}s (a hang?):\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ----------------------------------------------------------------- trainers and fixed batches
def build_trainer(method: str, output_dir: str, world: int, rank: int = 0, **overrides):
    """The method's tiny trainer (tiny Qwen3 student and, for external-teacher methods, teacher)."""
    from trl_opd.demo.task import make_dataset
    from trl_opd.launch.methods import METHODS as SPECS
    from trl_opd.launch.methods import load_method
    from trl_opd.testing import build_tiny_model, build_tiny_tokenizer, tiny_training_kwargs

    spec = SPECS[method]
    config_cls, trainer_cls = load_method(method)
    tokenizer = build_tiny_tokenizer()
    kwargs = tiny_training_kwargs(output_dir, max_steps=1, max_completion_length=6, per_device_train_batch_size=2)
    kwargs.update(spec.config_overrides)
    if spec.family == "grpo":
        kwargs.update(num_generations=GROUP, per_device_train_batch_size=2 * GROUP // world, beta=0.0)
        kwargs.update(self_teacher_check="warn")  # a random tiny teacher fails the check: keep its token weights
    if method == "motab":
        boundary = float("-inf") if rank == 0 else float("inf")
        kwargs.update(step_delimiter="\n", max_segment_tokens=2, max_backtracks=2, fixed_boundary=boundary)
        kwargs.update(train_on_strayed=True)  # not the default: the ranks' different discarded segments (a past hang)
    if method in ("opd", "tropd", "motab"):
        kwargs.setdefault("beta", 0.5)
    kwargs.update(overrides)
    external = spec.needs_teacher and kwargs.get("self_teacher") != "ema"
    teacher = build_tiny_model(tokenizer, "teacher", seed=1) if external else None
    return trainer_cls(
        model=build_tiny_model(tokenizer, "student", seed=0),
        args=config_cls(**kwargs),
        train_dataset=make_dataset(8),
        processing_class=tokenizer,
        **({"teacher_model": teacher} if teacher is not None else {}),
    )


def _distillation_batch(trainer, method: str) -> dict[str, torch.Tensor]:
    from trl_opd.testing import fixed_generation_batch

    batch = fixed_generation_batch(trainer.processing_class, batch=4)
    batch.pop("num_items_in_batch")
    if method in ("motab", "tropd"):  # teacher-written tokens: a prefix of row 0, the middle of row 2
        mask = torch.zeros_like(batch["completion_mask"])
        mask[0, :2], mask[2, 1:3] = 1, 1
        batch["teacher_token_mask"] = mask
    if method in ("atesd", "opsd"):  # the teacher's own (privileged, longer) prompt
        extra = torch.arange(20, 23).expand(4, -1)
        batch["teacher_prompt_ids"] = torch.cat([extra, batch["prompt_ids"]], 1)
        batch["teacher_prompt_mask"] = torch.cat([torch.ones_like(extra), batch["prompt_mask"]], 1)
    return batch


def _grpo_inputs(trainer, rank: int, world: int) -> dict:
    """GRPO's generation batch with fixed completions (one right, one wrong per prompt): rank `r` holds its rows."""
    from trl_opd.demo.task import make_dataset

    rows = [dict(make_dataset(8)[i]) for i in range(2) for _ in range(GROUP)]
    tok, eos = trainer.processing_class, trainer.processing_class.eos_token_id
    texts = [f"so \\boxed{{{r['answer']}}}" if i % 2 == 0 else "I do not know" for i, r in enumerate(rows)]
    completions = [tok.encode(t, add_special_tokens=False) + [eos] for t in texts]
    share = slice(rank * len(rows) // world, (rank + 1) * len(rows) // world)
    local = [list(c) for c in completions[share]]
    trainer._generate_single_turn = lambda prompt_ids, *args, **kwargs: (local, None)
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    return trainer._generate_and_score_completions(rows[share])


def loss_and_grads(trainer, method: str, rank: int, world: int):
    """This rank's loss and gradients on its share of the fixed global batch, averaged over processes as DDP does."""
    trainer.model.train()
    trainer.model.zero_grad()
    if trainer.__class__.__name__ == "EGRSDTrainer":
        inputs = _grpo_inputs(trainer, rank, world)
    else:
        batch = _distillation_batch(trainer, method)
        share = slice(rank * 4 // world, (rank + 1) * 4 // world)
        inputs = {k: v[share] for k, v in batch.items()}
        inputs["num_items_in_batch"] = trainer.accelerator.gather(inputs["completion_mask"].sum()).sum()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {}
    for name, param in trainer.model.named_parameters():
        if param.grad is not None:
            grads[name] = _mean_over_processes(param.grad.detach().clone(), world)
    loss = _mean_over_processes(loss.detach().clone(), world)
    trainer.model.zero_grad()
    return loss, grads


def _mean_over_processes(tensor: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        dist.all_reduce(tensor)
    return tensor / world


# ----------------------------------------------------------------- sharded models: one fixed-batch optimizer step
def fixed_step(method: str, output_dir: str, world: int, rank: int = 0, **overrides) -> dict:
    """Train two steps through the prepared (DDP / FSDP2 / ZeRO-3) model with SGD at learning rate 1: the first on
    this rank's share of the fixed batch, the second on sampled rollouts. Returns the first step's loss (mean over
    processes) and the full parameters after it (`θ_0 − clip(∇)`: equal parameters are equal gradients)."""
    from transformers import TrainerCallback

    overrides = {"max_steps": 2, "optim": "sgd", "learning_rate": 1.0, "lr_scheduler_type": "constant", **overrides}
    trainer = build_trainer(method, output_dir, world, rank, **overrides)
    generate = trainer._generate_and_score_completions
    losses, snapshot, teacher = [], {}, {}

    def first_batch_fixed(inputs):
        if trainer.state.global_step > 0:
            if method == "tropd":  # its repair on sampled rollouts: every row on rank 0 (all collapse), none on 1
                trainer.args.teacher_collapse_logp = 0.0 if rank == 0 else -1e9
            return generate(inputs)
        batch = _distillation_batch(trainer, method)
        share = slice(rank * 4 // world, (rank + 1) * 4 // world)
        local = {k: v[share].to(trainer.accelerator.device) for k, v in batch.items()}
        local["num_items_in_batch"] = trainer.accelerator.gather(local["completion_mask"].sum()).sum()
        return local

    compute_loss = trainer.compute_loss

    def spy_loss(*args, **kwargs):
        loss = compute_loss(*args, **kwargs)
        if trainer.state.global_step == 0:
            losses.append(loss.detach().clone())
        return loss

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                snapshot.update(full_parameters(trainer, trainer.model))
            if state.global_step == 2 and trainer.args.self_teacher == "ema" and trainer.teacher_model is not None:
                # the EMA update of step 2 reads the student after step 1 (deterministic): d·θ_0 + (1 − d)·θ_1
                teacher.update(full_parameters(trainer, trainer.teacher_model))

    trainer._generate_and_score_completions = first_batch_fixed
    trainer.compute_loss = spy_loss
    trainer.add_callback(Snapshot())
    trainer.train()
    dist = trainer._dist
    backend = "zero3" if dist.is_zero3 else f"fsdp{dist.fsdp_version}" if dist.is_fsdp else "ddp"
    loss = _mean_over_processes(losses[0], world)
    return {
        "loss": loss,
        "params": snapshot,
        "teacher": teacher,
        "steps": trainer.state.global_step,
        "backend": backend,
        "repaired": _repaired_fractions(trainer),
    }


def _repaired_fractions(trainer) -> list:
    """Each process's logged `repair/repaired_fraction` values (gathered: one list per rank)."""
    from accelerate.utils import gather_object

    key = "repair/repaired_fraction"
    return gather_object([[h[key] for h in trainer.state.log_history if key in h]])


def full_parameters(trainer, model) -> dict[str, torch.Tensor]:
    """Every parameter of a (prepared) model, whole (gathered from ZeRO-3 partitions or FSDP2 shards)."""
    model = trainer.accelerator.unwrap_model(model)
    with trainer._dist.gather_params(list(model.parameters())):
        return {
            n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()
        }


def fsdp_on_cpu() -> None:
    """Let accelerate set up FSDP on CPU processes (gloo). Its state machine enables FSDP only for GPU-like
    distributed types (a CPU run becomes `MULTI_CPU`, plain DDP); torch's `fully_shard` itself runs over gloo. Test
    harness only: the processes join as CPU processes (gloo), and the state is switched to FSDP with the launch
    config's plugin right after accelerate builds it."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    os.environ["ACCELERATE_USE_CPU"] = "true"
    init = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # read back by every state init

    AcceleratorState.__init__ = __init__


# ----------------------------------------------------------------- worker
def main(out_path: str, mode: str, methods: list[str]) -> None:
    from accelerate.utils import gather_object

    torch.set_num_threads(1)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        fsdp_on_cpu()
    results = {}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    for name in methods:
        method, _, variant = name.partition(":")
        output_dir = os.path.join(os.path.dirname(out_path), name.replace(":", "-"))
        if mode == "step":
            results[name] = {**fixed_step(method, output_dir, world, rank, **VARIANTS[variant]), "world": world}
            continue
        trainer = build_trainer(method, output_dir, world, rank, **VARIANTS[variant])
        assert trainer.accelerator.num_processes == world
        loss, grads = loss_and_grads(trainer, method, rank, world)
        backtracks = []
        if method == "motab":
            record = trainer._record_rollouts

            def spy(traces, tau, record=record, backtracks=backtracks):
                backtracks.append(sum(t.backtracks for t in traces))
                return record(traces, tau)

            trainer._record_rollouts = spy
        if method == "atesd":  # collapse repair on rank 0 only (every token collapses there), none on rank 1
            trainer.args.teacher_collapse_logp = 0.0 if rank == 0 else -1e9
        trainer.train()
        results[name] = {
            "loss": loss,
            "grads": grads,
            "steps": trainer.state.global_step,
            "backtracks": gather_object([sum(backtracks)]),
            "repaired": _repaired_fractions(trainer),
            "world": world,
        }
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
