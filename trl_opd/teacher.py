# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Building, placing and scoring teachers: external checkpoints and self-teachers.

- External teacher: its own checkpoint, optional bitsandbytes 4-/8-bit loading independent of the student's, its
  own `chat_template_kwargs`. A teacher whose `lm_head` is only *padded* to another size (same tokenizer; Qwen's
  151936 vs 152064 rows) is cut to the student's size; a different tokenizer is an error naming both.
- Self-teacher: the student's own weights, `frozen` at initialisation (the PEFT adapter switched off, or a frozen
  copy without PEFT), `live` (the current weights, no gradient) or `ema` (an exponential moving average).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from .errors import UserError


SELF_TEACHER_KINDS = ("frozen", "live", "ema")
QUANTIZATION_CHOICES = (None, "4bit", "8bit")
TEACHER_PROMPT_CACHE_SIZE = 4096  # prompts whose token ids a trainer keeps ([`tokenize_teacher_prompts`])
#: The self-teacher check passes when the full reference raises the teacher's mean log-prob per reference-solution
#: token by more than this many nats over no reference (ATESD/OPSD, EGRSD). [design]
SELF_TEACHER_MARGIN = 0.1
#: ... or when it removes more than this share of the teacher's negative log-likelihood per token: a student that
#: already predicts most of the reference cannot gain `SELF_TEACHER_MARGIN` nats per token. [design]
SELF_TEACHER_NLL_SHARE = 0.5


class TeacherMismatchError(UserError):
    """The teacher cannot score the student's tokens (different vocabulary)."""


class SelfTeacherCheckError(UserError):
    """The reference does not help the self-teacher (`self_teacher_check: error`): self-distillation would train on
    noise."""


def reference_helps(logp_none: float, logp_full: float) -> bool:
    """Whether the full reference helps a self-teacher, from its mean log-prob per reference-solution token with no
    reference (`logp_none`) and with the full one (`logp_full`), both <= 0:

        logp_full > logp_none + SELF_TEACHER_MARGIN   or   -logp_full < (1 - SELF_TEACHER_NLL_SHARE) * -logp_none

    The first is a margin in nats; the second says the reference removes more than half of the NLL, which is the
    only way a student already near the reference (e.g. -0.10 nats per token without it) can show that it reads it.
    """
    return logp_full > logp_none + SELF_TEACHER_MARGIN or -logp_full < (1 - SELF_TEACHER_NLL_SHARE) * -logp_none


def self_teacher_verdict(scores: dict[str, float], rows: int) -> str | None:
    """`None` when the full reference helps the self-teacher ([`reference_helps`] on `scores["none"]` and
    `scores["full"]`, mean log-probs per reference-solution token); else the one-line message that says it does not,
    with every score in `scores` (scored on `rows` training rows)."""
    if reference_helps(scores["none"], scores["full"]):
        return None
    names = {"none": "with no reference", "partial": "with half", "full": "with the full reference"}
    listed = ", ".join(f"{value:.3f} {names.get(name, name)}" for name, value in scores.items())
    return (
        "Self-teacher check: the reference does not help the self-teacher, so self-distillation trains on noise "
        f"(mean log-prob per reference-solution token on {rows} training rows: {listed}; full must exceed none by "
        f"{SELF_TEACHER_MARGIN} or remove {SELF_TEACHER_NLL_SHARE:.0%} of its negative log-likelihood)."
    )


def quantization_config(quantization: str | None, compute_dtype: torch.dtype = torch.bfloat16):
    """A `BitsAndBytesConfig` for `"4bit"` (NF4, double quant) or `"8bit"`, or `None`."""
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(f"teacher quantization must be one of {QUANTIZATION_CHOICES}, got {quantization!r}")
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_teacher(
    name_or_path: str,
    init_kwargs: dict | None = None,
    quantization: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    distributed: bool = False,
) -> nn.Module:
    """Load an external teacher (`AutoModelForCausalLM`), quantised on its own if asked, in eval mode, frozen.

    `init_kwargs` are read as `trl.DistillationTrainer` reads `teacher_model_init_kwargs`: a `dtype` name becomes the
    torch dtype, `revision` and `trust_remote_code` are defaults, and `device_map` is dropped when `distributed`
    (DDP / DeepSpeed place the model themselves).
    """
    from transformers import AutoModelForCausalLM

    kwargs = dict(init_kwargs or {})
    dtype = kwargs.get("dtype", "auto")
    kwargs["dtype"] = dtype if dtype in ("auto", None) or isinstance(dtype, torch.dtype) else getattr(torch, dtype)
    if revision is not None:
        kwargs.setdefault("revision", revision)
    if distributed:
        kwargs["device_map"] = None
    kwargs.setdefault("trust_remote_code", trust_remote_code)
    qconfig = quantization_config(quantization)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    teacher = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    return freeze(teacher)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and `requires_grad=False` on every parameter. Returns the model."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def check_same_vocabulary(student_tokenizer, teacher_tokenizer) -> None:
    """Raise [`TeacherMismatchError`] unless both tokenizers map the same strings to the same ids."""
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab == teacher_vocab:
        return
    differing = sorted(set(student_vocab.items()) ^ set(teacher_vocab.items()), key=lambda kv: kv[1])[:3]
    raise TeacherMismatchError(
        f"The teacher's tokenizer ({_tokenizer_name(teacher_tokenizer)}, {len(teacher_vocab)} tokens) differs from "
        f"the student's ({_tokenizer_name(student_tokenizer)}, {len(student_vocab)} tokens), e.g. {differing}. "
        "On-policy distillation here needs one shared vocabulary: pick a teacher of the same model family."
    )


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def align_teacher_vocab(teacher: nn.Module, student_vocab_size: int, tokenizer_size: int) -> nn.Module:
    """Make the teacher's `lm_head` as wide as the student's when they differ only by padding rows.

    Rows past `tokenizer_size` are never real tokens: a wider teacher head is cut to `student_vocab_size`. A head
    narrower than the student's, or a student head narrower than the tokenizer, is a [`TeacherMismatchError`].
    """
    teacher_vocab_size = teacher.get_output_embeddings().weight.shape[0]
    if teacher_vocab_size == student_vocab_size:
        return teacher
    if student_vocab_size < tokenizer_size or teacher_vocab_size < student_vocab_size:
        raise TeacherMismatchError(
            f"The teacher's lm_head has {teacher_vocab_size} rows and the student's {student_vocab_size}, for a "
            f"tokenizer of {tokenizer_size} tokens: only a teacher padded beyond the student can be aligned."
        )
    teacher.resize_token_embeddings(student_vocab_size, mean_resizing=False)
    return teacher


def self_teacher_copy(model, kind: str, is_peft: bool, init_kwargs: dict | None = None) -> nn.Module | None:
    """The self-teacher as a separate frozen module (`frozen` without PEFT, `ema`), or `None` when the student's own
    module scores (`live`, or `frozen` with the PEFT adapter switched off). A path is loaded again from disk."""
    if kind not in SELF_TEACHER_KINDS:
        raise ValueError(f"self-teacher kind must be one of {SELF_TEACHER_KINDS}, got {kind!r}")
    if kind == "live" or (kind == "frozen" and is_peft):
        return None
    if isinstance(model, str):
        return load_teacher(model, init_kwargs)
    return freeze(copy.deepcopy(model))


@contextlib.contextmanager
def student_as_teacher(student: nn.Module, adapter_off: bool) -> Iterator[nn.Module]:
    """Yield the student's own module to score as teacher, without gradients; its PEFT adapter off if asked."""
    with torch.no_grad():
        if adapter_off and _is_peft(student):
            with student.disable_adapter():
                yield student
        else:
            yield student


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """`θ_T ← d·θ_T + (1−d)·θ_S` over matching parameters (the EMA self-teacher).

    Sharded models: FSDP2 parameters are DTensors, updated shard by shard when both are sharded (a whole teacher
    reads the student's full tensor, a collective every process makes in the same order). Under ZeRO-3 a parameter
    outside a gather is an empty placeholder; both models are partitioned alike (same shapes, same processes), so
    each process updates its own partition (`ds_tensor`) in place: no communication, no gathered copy. A pair
    partitioned differently is gathered (`GatheredParameters`, the update written back from rank 0).
    """
    for t_param, s_param in zip(teacher.parameters(), student.parameters(), strict=True):
        if hasattr(t_param, "ds_id") or hasattr(s_param, "ds_id"):
            _zero3_ema(t_param, s_param, decay)
        else:
            source = s_param.detach()
            if hasattr(source, "full_tensor") and not hasattr(t_param, "full_tensor"):
                source = source.full_tensor()
            t_param.lerp_(source.to(t_param.dtype), 1.0 - decay)


def _zero3_ema(t_param: torch.Tensor, s_param: torch.Tensor, decay: float) -> None:
    t_part, s_part = getattr(t_param, "ds_tensor", None), getattr(s_param, "ds_tensor", None)
    if t_part is not None and s_part is not None and t_part.shape == s_part.shape:
        t_part.lerp_(s_part.to(t_part.dtype), 1.0 - decay)
        return
    import deepspeed

    with (
        deepspeed.zero.GatheredParameters([s_param], modifier_rank=None),
        deepspeed.zero.GatheredParameters([t_param], modifier_rank=0),
    ):
        t_param.lerp_(s_param.detach().to(t_param.dtype), 1.0 - decay)


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


# --------------------------------------------------------------------------- the one teacher-scoring path
# Shared by the DistillationTrainer family (`OPDTrainer` and its subclasses) and `EGRSDTrainer` (GRPO): the teacher's
# prompt goes through the trainer's own prompt tokenization; the teacher runs without gradient, through its
# accelerate wrapper when it has one (ZeRO-3 / FSDP gather its shards), else as the student's own module.


def tokenize_teacher_prompts(
    trainer, prompts: list, chat_template_kwargs: dict | None = None, cache: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded teacher prompt ids and mask `(B, P_T)` through the TRL trainer's own `_tokenize_prompts`.

    `chat_template_kwargs` (when given) replace the trainer's for this call only, so the teacher can use its own (e.g.
    thinking on). Each distinct prompt is tokenized once: the rollouts of one prompt share it. `cache` (a dict the
    caller owns, for one `chat_template_kwargs`) keeps each prompt's ids across calls, the oldest dropped past
    `TEACHER_PROMPT_CACHE_SIZE` prompts.
    """
    keys = [repr(p) for p in prompts]
    cache = {} if cache is None else cache
    missing = {key: prompt for key, prompt in zip(keys, prompts, strict=True) if key not in cache}
    if missing:
        student_kwargs = trainer.chat_template_kwargs
        if chat_template_kwargs is not None:
            trainer.chat_template_kwargs = chat_template_kwargs
        try:
            tokenize = getattr(trainer, "_tokenize_full_prompts", trainer._tokenize_prompts)  # not cut
            unique_ids, _, _ = tokenize(list(missing.values()))
        finally:
            trainer.chat_template_kwargs = student_kwargs
        device = trainer.accelerator.device
        for key, ids in zip(missing, unique_ids, strict=True):
            cache[key] = torch.tensor(ids, device=device)
    ids = [cache[key] for key in keys]
    for key in list(cache)[: max(len(cache) - TEACHER_PROMPT_CACHE_SIZE, 0)]:
        del cache[key]
    from trl.trainer.utils import pad

    return (
        pad(ids, padding_value=trainer._tokenizer.pad_token_id, padding_side="left"),
        pad([torch.ones_like(p) for p in ids], padding_value=0, padding_side="left"),
    )


class TeacherHandle(NamedTuple):
    """The teacher to score with: its accelerate `wrapper` (`None` when the student's own module scores) and the
    unwrapped `module`."""

    wrapper: nn.Module | None
    module: nn.Module

    def run(self, forward_redirection, fn, *args):
        """`fn(module, *args)`, through the wrapper's forward when there is one (sharded weights are gathered)."""
        if self.wrapper is None:
            return fn(self.module, *args)
        return forward_redirection(self.wrapper, self.module, fn, self.module, *args)


@contextlib.contextmanager
def scoring_teacher(
    teacher_model: nn.Module | None, accelerator, student: nn.Module | None, adapter_off: bool, unwrap=None
):
    """Yield a [`TeacherHandle`] under `torch.no_grad()`: the separate teacher (`teacher_model`, put in eval mode), or
    without one the unwrapped `student` scoring as its own teacher (its PEFT adapter off when `adapter_off`).
    `unwrap` replaces `accelerator.unwrap_model` (e.g. a cached one)."""
    if teacher_model is not None:
        teacher_model.eval()
        with torch.no_grad():
            yield TeacherHandle(teacher_model, (unwrap or accelerator.unwrap_model)(teacher_model))
        return
    with student_as_teacher(student, adapter_off=adapter_off) as module:
        yield TeacherHandle(None, module)


def _backbone(model: nn.Module) -> nn.Module:
    """The decoder of a text-only causal LM (below its PEFT wrapper, if any; the adapter stays active)."""
    if _is_peft(model):
        model = model.base_model.model
    return model.base_model


def last_hidden_states(model: nn.Module, input_ids, attention_mask, logits_to_keep: int) -> torch.Tensor:
    """Last hidden states predicting the final `logits_to_keep` tokens `(B, K, H)` of a text-only causal LM (its PEFT
    adapter, if any, active): one backbone forward, no logits. TRL's `_get_last_hidden_state` without its per-call
    checks (accelerate's `is_peft_model` reads package metadata on every call)."""
    hidden = _backbone(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return hidden[:, :-1][:, -logits_to_keep:]


def full_attention_only(model: nn.Module) -> bool:
    """Whether every layer attends to the whole past (no sliding window, no linear attention): a prompt's KV cache
    then continues exactly like one forward over prompt and completion."""
    config = model.config.get_text_config()
    types = getattr(config, "layer_types", None)
    if types is not None:
        return all(kind == "full_attention" for kind in types)
    return not getattr(config, "sliding_window", None)


def completion_hidden_states(
    model: nn.Module, prompt_ids, prompt_mask, completion_ids, completion_mask, share_prompts: bool = True
) -> torch.Tensor:
    """[`last_hidden_states`] of `prompt ⧺ completion` for the `K` completion tokens, `(B, K, H)`.

    With `share_prompts` (and a full-attention model), rows with the same left-padded prompt (the G rollouts of one
    GRPO group) run their prompt once: one forward of the distinct prompts fills a KV cache, which is expanded to the
    rows and continued by the completions. The positions and the masks are those of the single forward, so the hidden
    states are the same up to float rounding, for `(U·P + B·K)` instead of `B·(P + K)` token positions. Leave it off
    for sharded models (ZeRO-3, FSDP): every process must then make the same forward calls.
    """
    k = completion_ids.size(1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    if share_prompts and k > 0 and prompt_ids.size(1) > 0 and full_attention_only(model):
        rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        if unique.size(0) < rows.size(0):
            first = torch.full((unique.size(0),), rows.size(0), dtype=torch.long, device=rows.device)
            first.scatter_reduce_(0, inverse, torch.arange(rows.size(0), device=rows.device), reduce="amin")
            backbone = _backbone(model)
            out = backbone(input_ids=prompt_ids[first], attention_mask=prompt_mask[first], use_cache=True)
            cache = out.past_key_values
            if cache is not None and hasattr(cache, "reorder_cache"):
                cache.reorder_cache(inverse)
                rest = backbone(input_ids=completion_ids, attention_mask=attention_mask, past_key_values=cache)
                return torch.cat([out.last_hidden_state[inverse, -1:], rest.last_hidden_state[:, :-1]], dim=1)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    return last_hidden_states(model, input_ids, attention_mask, k)


def check_privileged_prompts(trainer, dataset, chat_template_kwargs: dict | None = None, rows: int = 16) -> None:
    """Refuse, before training, what would silently give the privileged teacher a wrong prompt.

    - A string prompt already rendered with a chat template (it holds one of the tokenizer's special tokens, e.g.
      `<|im_start|>`): the reference would land after the assistant header, inside the assistant's turn.
    - A teacher prompt with the full reference, plus `max_completion_length`, longer than the model's context
      (`max_position_embeddings`): positions past it are garbage, not an error, in most models. Checked on the `rows`
      rows with the longest prompt and reference text.
    """
    from .data import DatasetValidationError, privileged_prompt
    from .errors import ConfigValueError

    tokenizer = trainer._tokenizer
    specials = [t for t in tokenizer.all_special_tokens if t and t not in (tokenizer.pad_token,)]
    prompts, solutions = dataset["prompt"], dataset["solution"]
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str) and any(token in prompt for token in specials):
            token = next(token for token in specials if token in prompt)
            raise DatasetValidationError(
                f"Row {index} of the train dataset is a prompt already rendered with a chat template (it holds "
                f"{token!r}): the reference solution would be placed inside the assistant's turn. Give `prompt` as "
                "chat messages, or as the plain problem text."
            )
    context = getattr(trainer.model.config.get_text_config(), "max_position_embeddings", None)
    if not context:
        return
    sizes = [len(str(p)) + len(s or "") for p, s in zip(prompts, solutions, strict=True)]
    longest = sorted(range(len(sizes)), key=sizes.__getitem__, reverse=True)[:rows]
    teacher_prompts = [privileged_prompt(prompts[i], solutions[i]) for i in longest]
    ids, mask = tokenize_teacher_prompts(trainer, teacher_prompts, chat_template_kwargs)
    lengths = mask.sum(-1).tolist()
    worst = max(range(len(lengths)), key=lengths.__getitem__)
    completion = trainer.args.max_completion_length
    if lengths[worst] + completion > context:
        raise ConfigValueError(
            f"The teacher's prompt with the reference solution has {lengths[worst]} tokens (train row "
            f"{longest[worst]}); with max_completion_length {completion} that exceeds the model's context of {context} "
            "tokens (max_position_embeddings). Lower max_completion_length or drop the longest references."
        )
