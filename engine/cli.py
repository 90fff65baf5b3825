"""`python -m engine`: run a job file, edit a folder of frames, check the install, evaluate an edit.

Events go to stdout as JSON lines (see engine/protocol.py); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import protocol

DEFAULTS = protocol.Job(frames=["-"], output="-", prompt="-")

NO_FLAG = protocol.Field("", "string", "", flag=False)
# The job fields `edit` offers as flags (their help and bounds: protocol.FIELDS, shared with the job
# file's validation and Blender's properties).
# In the job's field order, as `edit --help` has always listed them.
FLAGS = [
    protocol.FIELDS[f.name]
    for f in fields(protocol.Job)
    if f.name in protocol.FIELDS and protocol.FIELDS[f.name].flag
]


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("TOKENFLOW_LOG", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_libraries() -> None:
    """Progress bars and chatter of the model libraries off; costs their import (seconds), so it
    runs only once a job has passed every check that needs no model."""
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.disable_progress_bar()
        dlog.set_verbosity_error()
        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:
        pass


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    groups: dict[str, Any] = {"": parser}
    for spec in FLAGS:
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        target = groups[spec.group]
        flag = "--" + spec.name.replace("_", "-")
        default = getattr(DEFAULTS, spec.name)
        help_text = spec.help
        if "(default" not in help_text:  # a default the help explains itself is not repeated
            help_text += f" (default: {default!r})"
        if spec.kind == "bool":
            target.add_argument(flag, action="store_true", help=spec.help)
        else:
            kind = {"int": int, "number": float}.get(spec.kind, str)
            choices = spec.choices or None
            target.add_argument(flag, type=kind, default=default, choices=choices, help=help_text)


def _frames_in(folder: str) -> list[str]:
    from .run.preflight import SUPPORTED

    path = Path(folder)
    if not path.is_dir():
        raise protocol.JobError(f"--frames {folder} is not a folder of images")
    return [str(p) for p in sorted(path.iterdir()) if p.suffix.lower() in SUPPORTED and p.is_file()]


def _add_matte_folder(parser: argparse.ArgumentParser) -> None:
    """`edit --matte DIR`: the job's `matte` list, from a folder (the other colour and matte flags are
    table fields, added with the job options)."""
    parser.add_argument(
        "--matte",
        default="",
        metavar="DIR",
        help="folder of matte images, one per frame in name order: "
        "the edit is limited to where they are white",
    )


def _plate_fields(args: argparse.Namespace) -> dict:
    from .run.preflight import SUPPORTED

    matte: list[str] = []
    if args.matte:
        folder = Path(args.matte)
        if not folder.is_dir():
            raise protocol.JobError(f"--matte {args.matte} is not a folder of matte images")
        matte = [str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in SUPPORTED and p.is_file()]
    return {
        "colorspace": args.colorspace,
        "ocio_config": args.ocio_config,
        "matte": matte,
        "matte_channel": args.matte_channel,
        "matte_invert": args.matte_invert,
        "matte_feather": args.matte_feather,
    }


def _fail(kind: str, message: str) -> int:
    from .run.events import Emitter

    Emitter()(protocol.EVENT_ERROR, kind=kind, message=message)  # a closed stdout is no traceback
    return protocol.EXIT_CODES[kind]


def _run_job(job: protocol.Job) -> int:
    """Check everything that needs no model first (no torch yet), then run the job."""
    from .errors import EngineError
    from .run.events import CancelToken, Emitter
    from .run.preflight import check

    cancel = CancelToken()
    cancel.listen(stdin=True)  # before the slow imports: a caller that dies meanwhile is noticed
    try:
        ready = check(job)
    except EngineError as exc:
        return _fail(exc.kind, exc.message)
    emit = Emitter(on_broken=lambda: cancel.cancel(STDOUT_GONE))
    try:
        with cancel.interruptible():  # the ML stack's import takes seconds
            _quiet_libraries()
            from .run.execute import execute
    except EngineError as exc:  # cancelled meanwhile
        ready.release()
        emit(protocol.EVENT_CANCELLED, message=exc.message)
        return protocol.EXIT_CODES[exc.kind]
    try:
        return execute(job, emit, cancel, ready=ready)
    finally:
        ready.release()


STDOUT_GONE = "stopped: the engine's stdout closed, so nobody reads its events any more; nothing was written"


def _parse_range(text: str) -> list[int]:
    start, _, end = text.partition(":")
    try:
        return [int(start), int(end)]
    except ValueError as exc:
        raise protocol.JobError(f"frame range {text!r} must look like START:END (e.g. 48:96)") from exc


def cmd_run(args: argparse.Namespace) -> int:
    try:
        text = Path(args.job).read_text()
    except OSError as exc:
        return _fail("bad_input", f"cannot read the job file {args.job}: {exc.strerror}")
    try:
        data = json.loads(text)
        # Farm tasks share one job file and override what differs per task.
        overrides = {
            "stage": args.stage,
            "output": args.output,
            "prompt": args.prompt,
            "model": args.model,
            "cache_dir": args.cache_dir,
            "device": args.device,
        }
        if isinstance(data, dict):
            data.update({k: v for k, v in overrides.items() if v is not None})
            if args.frame_range:
                data["frame_range"] = _parse_range(args.frame_range)
        job = protocol.Job.from_dict(data)
    except json.JSONDecodeError as exc:
        return _fail("bad_input", f"{args.job} is not valid JSON: {exc}")
    except protocol.JobError as exc:
        return _fail("bad_input", f"{args.job}: {exc}")
    return _run_job(job)


def cmd_edit(args: argparse.Namespace) -> int:
    try:
        values = {spec.name: getattr(args, spec.name) for spec in FLAGS}
        values.update(_plate_fields(args))
        job = protocol.Job(frames=_frames_in(args.frames), output=args.out, prompt=args.prompt, **values)
        if args.model_config:
            job.extra["model_config"] = args.model_config
        # Preview variations (engine/run/variations.py): one entry per --vary-prompt, then per --vary-seed.
        job.variations = [{"prompt": p} for p in args.vary_prompt] + [{"seed": n} for n in args.vary_seed]
        if args.frame_range:
            start, _, end = args.frame_range.partition(":")
            try:
                job.frame_range = [int(start), int(end)]
            except ValueError as exc:
                raise protocol.JobError(
                    f"--frame-range {args.frame_range!r} must look like START:END"
                ) from exc
        job.validate()
    except protocol.JobError as exc:
        return _fail("bad_input", str(exc))
    if args.write_job:
        Path(args.write_job).write_text(job.to_json())
        return protocol.EXIT_OK
    return _run_job(job)


def cmd_check(args: argparse.Namespace) -> int:
    import diffusers
    import torch

    from .errors import EngineError
    from .model import devices

    try:
        placement = devices.choose(args.device)
    except EngineError as exc:
        return _fail(exc.kind, exc.message)
    print(
        protocol.event_line(
            protocol.EVENT_CHECK,
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            cuda=torch.cuda.is_available(),
            mps=bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
            python=sys.version.split()[0],
            protocol=protocol.PROTOCOL_VERSION,
            **placement.describe(),
        ),
        flush=True,
    )
    return protocol.EXIT_OK


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from .model.tiny_model import make_tiny_model

    folder = Path(args.folder)
    if folder.exists() and any(folder.iterdir()):
        return _fail("bad_input", f"{folder} exists and is not empty; choose a new folder")
    make_tiny_model(folder, size=args.size, seed=args.seed)
    print(json.dumps({"model": str(folder.absolute()), "size": args.size}), flush=True)
    return protocol.EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from .errors import EngineError
    from .run.merge import merge

    try:
        done = merge(args.parts, args.out)
    except EngineError as exc:
        return _fail(exc.kind, exc.message)
    print(protocol.event_line(protocol.EVENT_DONE, **done), flush=True)
    return protocol.EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import main as serve

    _quiet_libraries()
    return serve(args.idle_timeout, args.prompts, args.inversion_memory)


def _add_serve(sub: Any) -> None:
    from .serve import DEFAULT_IDLE_TIMEOUT, DEFAULT_INVERSION_MB, DEFAULT_PROMPTS

    serve = sub.add_parser(
        "serve",
        help="the warm engine: run job lines from stdin (the Job JSON, one a line) in one process, the model "
        "kept loaded; 'cancel' stops the job, 'unload' or the end of stdin exits",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help=f"exit after this many seconds without a job; 0 never (default: {DEFAULT_IDLE_TIMEOUT:g})",
    )
    serve.add_argument(
        "--prompts", type=int, default=DEFAULT_PROMPTS, help="text embeddings kept per model (default: 64)"
    )
    serve.add_argument(
        "--inversion-memory",
        type=int,
        default=DEFAULT_INVERSION_MB,
        metavar="MB",
        help=f"inverted latents kept in memory, in MB (default: {DEFAULT_INVERSION_MB})",
    )
    serve.set_defaults(func=cmd_serve)


def build_parser(with_evaluate: bool = True) -> argparse.ArgumentParser:
    """The command line; `evaluate`'s own options need the metrics stack (seconds to import), so
    they are built only when that command (or the top-level help) is asked for."""
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="TokenFlow: temporally consistent, text-driven video editing with Stable Diffusion. "
        "Events are printed to stdout as JSON lines; logs go to stderr.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job file (JSON, as written by Blender or `edit --write-job`)")
    run.add_argument("job", help="path of the job JSON file")
    run.add_argument("--stage", choices=protocol.STAGES_OF_JOB, help="override the job's stage")
    run.add_argument("--frame-range", metavar="START:END", help="produce only these frames (a farm chunk)")
    run.add_argument("--output", help="override the job's output folder")
    run.add_argument("--prompt", help="override the job's prompt")
    run.add_argument("--model", help="override the job's model")
    run.add_argument("--cache-dir", help="override the job's inversion cache folder")
    run.add_argument("--device", choices=protocol.DEVICES, help="override the job's device")
    run.set_defaults(func=cmd_run)

    # No ArgumentDefaultsHelpFormatter: the job options name their defaults in their own help text.
    edit = sub.add_parser("edit", help="edit a folder of frames")
    edit.add_argument(
        "--frames",
        required=True,
        help="folder of frames (PNG, JPEG, TIFF at 8/16 bits; EXR with --colorspace), in name order",
    )
    edit.add_argument("--prompt", required=True, help="what the edited shot should look like")
    edit.add_argument("--out", required=True, help="output folder; must not exist (written atomically)")
    edit.add_argument(
        "--model-config",
        default="",
        help="for a .safetensors checkpoint offline: a local diffusers folder with the matching configs",
    )
    edit.add_argument("--write-job", default="", help="write the job JSON to this file and exit")
    edit.add_argument(
        "--frame-range",
        default="",
        metavar="START:END",
        help="produce only frames START..END-1 (a farm chunk; multiples of the keyframe stride)",
    )
    edit.add_argument(
        "--vary-prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="preview a variation with this prompt (repeat it; one run, folders OUT-v1, OUT-v2, ...)",
    )
    edit.add_argument(
        "--vary-seed",
        action="append",
        default=[],
        type=int,
        metavar="N",
        help="preview a variation with this seed",
    )
    _add_job_options(edit)
    _add_matte_folder(edit)
    edit.set_defaults(func=cmd_edit)

    merge = sub.add_parser(
        "merge", help="join farm chunks (propagate runs with --frame-range) into one folder"
    )
    merge.add_argument("--out", required=True, help="the merged result folder; must not exist")
    merge.add_argument("parts", nargs="+", help="the chunks' output folders")
    merge.set_defaults(func=cmd_merge)

    _add_serve(sub)

    check = sub.add_parser("check", help="report torch, diffusers and the device the engine would use")
    check.add_argument("--device", default="auto", choices=protocol.DEVICES)
    check.set_defaults(func=cmd_check)

    tiny = sub.add_parser("make-tiny-model", help="write a tiny random-weight SD model folder (tests, demos)")
    tiny.add_argument("folder")
    tiny.add_argument("--size", default="tiny", choices=("tiny", "mid", "sd15"))
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_make_tiny_model)

    evaluate_help = "measure an edit's temporal consistency and fidelity"
    if not with_evaluate:
        sub.add_parser("evaluate", help=evaluate_help)
        return parser
    try:
        from .quality import evaluate
    except ImportError:  # only when the metrics stack is missing
        evaluate = None  # type: ignore[assignment]
    if evaluate is not None:
        ev = sub.add_parser("evaluate", help=evaluate_help)
        evaluate.add_arguments(ev)
        ev.set_defaults(func=evaluate.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = [a for a in argv if not a.startswith("-")]
    args = build_parser(with_evaluate=not commands or commands[0] == "evaluate").parse_args(argv)
    _setup_logging()
    if args.command == "make-tiny-model":
        _quiet_libraries()
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")  # events are UTF-8 whatever the locale says
    return int(args.func(args))
