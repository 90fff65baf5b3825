"""`python -m engine serve`: the warm engine, one process that runs job after job.

Blender's Preview / Propagate loop pays the engine's fixed cost (importing torch and diffusers,
loading the model, encoding the prompts, reading cached inversions) on every one-shot run; here it
is paid once. A job is one line on stdin, the same Job JSON as `python -m engine run` reads,
answered with the same events on stdout, then a `ready` event. Lines that are not jobs:

- ``cancel`` stops the running job (within one UNet call), not the process;
- ``unload`` exits (the model's memory is freed with the process);
- end of stdin (the caller quit or crashed: its pipe closed) cancels the running job, whose
  temporary output the runner removes, and exits;
- no job for ``--idle-timeout`` seconds exits, as does SIGTERM / SIGINT (after cancelling).

The model stays loaded per (model, device, model_config); a job for another one unloads the old
model first. engine/run/execute.py stays the one place that runs a job: the server gives it a
loader (the kept model or a fresh load) and its bounded in-memory inversions.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import queue
import signal
import sys
import threading
from typing import Any, TextIO

from . import protocol
from .cache.memo import Bounded, tensor_bytes
from .run.events import CancelToken, Emitter

log = logging.getLogger(__name__)
DEFAULT_IDLE_TIMEOUT = 600.0  # seconds
DEFAULT_PROMPTS = 64  # text embeddings kept per model
DEFAULT_INVERSION_MB = 1024  # inverted latents kept in memory (50 steps at 512x512: ~3.3 MB a frame)
POLL = 0.25  # seconds between looks at the stop flag while idle (signal handlers only set flags)


class _SafeStream:
    """stdout that never raises: a caller that is gone must not turn a clean cancel into a crash."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


class Server:
    """Reads lines on a thread, runs jobs on the calling (main) thread, one at a time."""

    def __init__(
        self,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        prompts: int = DEFAULT_PROMPTS,
        inversion_mb: int = DEFAULT_INVERSION_MB,
    ) -> None:
        self.stdin = stdin if stdin is not None else sys.stdin
        self.emit = Emitter(_SafeStream(stdout if stdout is not None else sys.stdout))  # type: ignore[arg-type]
        self.idle_timeout = idle_timeout
        self.prompt_limit = prompts
        self.inversions = Bounded(inversion_mb * 2**20, tensor_bytes)
        self.model: Any = None
        self.key: tuple[str, str, str] | None = None
        self.loads = 0
        self.jobs = 0
        self.stop_reason = ""
        self._lines: queue.Queue[tuple[str, CancelToken]] = queue.Queue()
        self._tokens: list[CancelToken] = []  # of jobs queued or running: a cancel reaches them all
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- lines from the caller (a thread) ------------------------------------------------------
    def _read(self) -> None:
        try:
            for line in self.stdin:
                text = line.strip()
                if not text:
                    continue
                if text.lower() == protocol.CANCEL_LINE:
                    self._cancel_all()
                elif text.lower() == protocol.UNLOAD_LINE:
                    self.stop("unload")
                    return
                else:
                    token = CancelToken()
                    with self._lock:
                        self._tokens.append(token)
                    self._lines.put((text, token))
        except (OSError, ValueError):
            pass
        self.stop("stdin closed")

    def _cancel_all(self) -> None:
        with self._lock:
            tokens = list(self._tokens)
        for token in tokens:
            token.cancel()

    def stop(self, reason: str) -> None:
        """Cancel what runs and leave the loop (from the reader thread or a signal handler)."""
        if not self._stopping.is_set():
            self.stop_reason = reason
        self._stopping.set()
        self._cancel_all()

    # -- the loop (main thread) --------------------------------------------------------------
    def serve(self) -> int:
        import time

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop("signal"))
        threading.Thread(target=self._read, name="serve-stdin", daemon=True).start()
        self._ready()
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            try:
                text, token = self._lines.get(timeout=POLL)
            except queue.Empty:
                if self.idle_timeout > 0 and time.monotonic() - idle_since >= self.idle_timeout:
                    self.stop_reason = f"idle for {self.idle_timeout:g} s"
                    break
                continue
            if self._stopping.is_set():
                break
            try:
                self.run_line(text, token)
            finally:
                with self._lock:
                    self._tokens.remove(token)
            self._ready()
            idle_since = time.monotonic()
        log.info("warm engine exits: %s", self.stop_reason or "stopped")
        self.unload()
        return protocol.EXIT_OK

    def run_line(self, text: str, token: CancelToken) -> int:
        """Run one job line; a line that is not a valid job gets an error event."""
        from .run.execute import execute

        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return self._refuse(
                f"not a job (a JSON object on one line) nor a command ({protocol.CANCEL_LINE}, "
                f"{protocol.UNLOAD_LINE}): {text[:80]!r}"
            )
        try:
            job = protocol.Job.from_dict(data)
        except (protocol.JobError, TypeError) as exc:
            return self._refuse(str(exc))
        self.jobs += 1
        code = execute(job, self.emit, token, loader=self.model_for, inversions=self.inversions)
        if code == protocol.EXIT_OUT_OF_MEMORY:
            self._empty_device_cache()
        return code

    def _refuse(self, message: str) -> int:
        self.emit(protocol.EVENT_ERROR, kind="bad_input", message=message)
        return protocol.EXIT_BAD_INPUT

    # -- the model ---------------------------------------------------------------------------
    def model_for(self, job: protocol.Job) -> Any:
        """The loaded model if the job asks for it, else the old one unloaded and this one loaded."""
        from .model import devices
        from .model.loading import load

        key = (job.model, job.device, str(job.extra.get("model_config", "")))
        if self.model is not None and key == self.key:
            return self.model
        self.unload()
        model = load(job.model, devices.choose(job.device), key[2])
        model.prompt_cache = Bounded(self.prompt_limit)
        self.model, self.key = model, key
        self.loads += 1
        return model

    def unload(self) -> None:
        if self.model is None:
            return
        self.model = self.key = None
        gc.collect()
        self._empty_device_cache()

    @staticmethod
    def _empty_device_cache() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _ready(self) -> None:
        placement = self.model.placement.describe() if self.model is not None else {}
        self.emit(
            protocol.EVENT_READY,
            pid=os.getpid(),
            model=self.key[0] if self.key else None,
            device=placement.get("device"),
            loads=self.loads,
            jobs=self.jobs,
            idle_timeout=self.idle_timeout,
            prompts=len(self.model.prompt_cache) if self.model is not None else 0,
            inversions=len(self.inversions),
        )


def main(idle_timeout: float, prompts: int, inversion_mb: int) -> int:
    return Server(idle_timeout=idle_timeout, prompts=prompts, inversion_mb=inversion_mb).serve()
