# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The lighteval subprocess of `trl-opd eval`: run it with its output in a log, print the progress read from that log,
and turn a failure into one line ([`EvalError`] with lighteval's last error)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path


PROGRESS_INTERVAL_S = float(os.environ.get("TRL_OPD_EVAL_PROGRESS_S", "30"))


class EvalError(RuntimeError):
    """A failure reported to the user as one line (bad input, or lighteval exiting with an error)."""


def last_error_line(log_path: Path) -> str:
    """The most informative line of a failed lighteval log: the last `SomethingError: ...` line."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [_ANSI.sub("", line).rstrip() for line in lines]
    for index in range(len(lines) - 1, -1, -1):
        match = re.search(r"\b(\w+(Error|Exception)):\s*(.*)", lines[index])
        if match:
            # a message that goes on over the next lines (before the next traceback or log record) is kept whole
            rest = []
            for line in lines[index + 1 :]:
                if (
                    not line.strip()
                    or line.startswith(("Traceback", "[", "  File "))
                    or re.match(r"\w+(Error|Exception)", line)
                ):
                    break
                rest.append(line.strip())
            return " ".join([f"{match.group(1)}: {match.group(3).strip()}", *rest]).strip()
    return lines[-1].strip() if lines else ""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TO_PROCESS = re.compile(r"Starting to process (\d+)/(\d+) samples")
_BAR = re.compile(r"(?:generation|Processed prompts)[^\r\n]*?(\d+)/(\d+) \[")


def read_progress(log_path: Path, tail_bytes: int = 1 << 16) -> tuple[int, int] | None:
    """`(problems done, problems to generate)` read from lighteval's log: the number of problems from its cache line,
    the fraction done from the newest generation progress bar (transformers batches or vLLM prompts)."""
    try:
        with open(log_path, "rb") as handle:
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    totals = _TO_PROCESS.findall(text)
    if not totals:
        return None
    total = int(totals[-1][0])
    bars = _BAR.findall(text[-tail_bytes:])
    if not bars:
        return 0, total
    done, steps = int(bars[-1][0]), int(bars[-1][1])
    return (min(total, round(total * done / steps)) if steps else 0), total


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(done: int, total: int, elapsed: float) -> str:
    """`progress: 12/30 problems (40%), elapsed 0:10:00, ETA 0:15:00`."""
    eta = _clock(elapsed * (total - done) / done) if done else "unknown"
    return f"progress: {done}/{total} problems ({100 * done // max(total, 1)}%), elapsed {_clock(elapsed)}, ETA {eta}"


def run_lighteval(command: list[str], env: dict, cwd: Path, log_path: Path, interval: float | None = None) -> None:
    """Run lighteval, its output going to `log_path`, printing the progress read from that log every `interval`
    seconds (`TRL_OPD_EVAL_PROGRESS_S`, default 30). Raises `EvalError` with lighteval's last error."""
    interval = PROGRESS_INTERVAL_S if interval is None else interval
    start, last = time.time(), None
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + f"\n# cwd: {cwd}\n")
        log.flush()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                rc = process.wait(timeout=interval)
                break
            except subprocess.TimeoutExpired:
                progress = read_progress(log_path)
                if progress is not None and progress != last:
                    print(progress_line(*progress, time.time() - start), flush=True)
                    last = progress
            except BaseException:
                process.kill()
                process.wait()
                raise
    if rc != 0:
        raise EvalError(f"lighteval failed (exit {rc}): {last_error_line(log_path)} (full log: {log_path})")
