# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Run by `accelerate launch --cpu --num_processes 2` from test_distributed.py: each rank computes the OPD loss on its
half of a fixed batch with TRL's global token count, gradients are averaged as DDP does, rank 0 saves them."""

import os
import sys

import torch
import torch.distributed as dist


def main(out_path: str) -> None:
    from trl_opd.demo.task import make_dataset
    from trl_opd.testing import build_tiny_model, build_tiny_tokenizer, fixed_generation_batch, tiny_training_kwargs
    from trl_opd.trainers.opd_config import OPDConfig
    from trl_opd.trainers.opd_trainer import OPDTrainer

    torch.set_num_threads(1)
    tokenizer = build_tiny_tokenizer()
    student = build_tiny_model(tokenizer, "student", seed=0)
    teacher = build_tiny_model(tokenizer, "teacher", seed=1)
    config = OPDConfig(**tiny_training_kwargs(os.path.dirname(out_path), beta=0.5))
    trainer = OPDTrainer(
        model=student, teacher_model=teacher, args=config, train_dataset=make_dataset(8), processing_class=tokenizer
    )
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    batch = fixed_generation_batch(tokenizer, batch=4)
    rows = slice(rank * 4 // world, (rank + 1) * 4 // world)
    local = {k: v[rows] for k, v in batch.items() if v.dim()}
    # as `_generate_and_score_completions` does: the loss-token count of the whole batch over every process
    local["num_items_in_batch"] = trainer.accelerator.gather(local["completion_mask"].sum()).sum()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, local)
    loss.backward()
    grads = {}
    for name, param in trainer.model.named_parameters():
        dist.all_reduce(param.grad)
        grads[name] = param.grad / world  # DDP averages gradients over processes
    total_loss = loss.detach().clone()
    dist.all_reduce(total_loss)
    if rank == 0:
        torch.save({"world": world, "loss": total_loss / world, "grads": grads}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
