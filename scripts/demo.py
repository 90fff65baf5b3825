"""The main job, headless inside the bpy module: real frames in, Preview then Propagate, a .blend out.

    .venvs/bpy-5.2/bin/python scripts/demo.py [--model ID_OR_PATH] [--out DIR] [options]

It builds a scene with an image strip of real frames (cityCC0.mpg, CC0, decoded by the engine
environment), loads this checkout as a real Blender extension, runs "Preview keyframes" and then
"Propagate" through the extension's own operators and the real engine subprocess, saves the .blend,
and writes a before/after contact sheet PNG (made with Blender's image API: no numpy, no PIL).

--model takes a hub id, a local diffusers folder or a .safetensors file. Without it the default
model is used, which needs network access once (or the weights in the Hugging Face cache);
offline it stops with a message that says how to point it at a model. For a fully offline run:
    .venvs/bpy-5.2/bin/python scripts/demo.py --tiny-model build/tiny-model
The .blend and the contact sheet are replaced only by a run that succeeded; a failed run exits
non-zero with the engine's message and leaves the last good demo as it was.
Blender's user folders go under OUT/blender-user, so your own preferences are never touched, and
the inversion cache there makes a second run with another --prompt skip the inversion.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXT_ID = "tokenflow"
REPO = "tokenflow_demo"
MODULE = f"bl_ext.{REPO}.{EXT_ID}"
EXIT_MODEL = 5  # engine/protocol.py EXIT_MODEL


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--model", default="", help="hub id, diffusers folder or .safetensors (default: the extension's)"
    )
    p.add_argument(
        "--tiny-model",
        default="",
        metavar="DIR",
        help="without --model: build (once) and use a tiny random-weight model in DIR (fully offline)",
    )
    p.add_argument("--out", default=str(ROOT / "out" / "demo"), help="output folder (default: out/demo)")
    p.add_argument("--prompt", default="a watercolor painting of a city street at dusk")
    p.add_argument("--source-prompt", default="a city street")
    p.add_argument("--frames", type=int, default=16, help="number of frames of cityCC0.mpg (default 16)")
    p.add_argument("--start", type=int, default=40, help="first frame of the clip (default 40)")
    p.add_argument("--width", type=int, default=256, help="width of the extracted frames (default 256)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20; 50 for quality)")
    p.add_argument(
        "--size", type=int, default=256, help="working size, long side (default 256; 512 for quality)"
    )
    p.add_argument("--stride", type=int, default=4, help="keyframe stride (default 4)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    p.add_argument(
        "--offline", action="store_true", help="never reach the model hub (also when HF_HUB_OFFLINE=1)"
    )
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for each engine run")
    return p.parse_args(argv)


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def fail(text: str, code: int = 1) -> None:
    print(f"[demo] ERROR: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


def engine_python() -> Path:
    env = os.environ.get("TOKENFLOW_ENGINE_PYTHON")
    return Path(env) if env else ROOT / ".venvs" / "engine" / "bin" / "python"


def extract_frames(python: Path, folder: Path, count: int, start: int, width: int) -> list[Path]:
    """Real frames from cityCC0.mpg, decoded by the engine environment's OpenCV (Blender has none)."""
    wanted = [folder / f"frame_{i:04d}.png" for i in range(start, start + count)]
    if all(p.is_file() for p in wanted) and (folder / "source.json").is_file():
        recorded = json.loads((folder / "source.json").read_text())
        if recorded == {"start": start, "count": count, "width": width}:
            return wanted
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from tests.clips import extract_frames;"
        "a = sys.argv;"
        "extract_frames('cityCC0.mpg', Path(a[2]), int(a[3]), start=int(a[4]), width=int(a[5]))"
    )
    done = subprocess.run(
        [str(python), "-c", code, str(ROOT), str(folder), str(count), str(start), str(width)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        fail(f"could not extract frames from cityCC0.mpg:\n{done.stderr[-2000:]}")
    (folder / "source.json").write_text(json.dumps({"start": start, "count": count, "width": width}))
    return wanted


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    python = engine_python()
    if not python.is_file():
        fail(
            f"no engine environment at {python}: run `bash scripts/setup_env.sh engine` "
            "(or set TOKENFLOW_ENGINE_PYTHON)"
        )
    os.environ["TOKENFLOW_ENGINE_PYTHON"] = str(python)
    # Blender's user folders (preferences, extension user data, the inversion cache) stay in OUT.
    os.environ["BLENDER_USER_RESOURCES"] = str(out / "blender-user")
    offline = args.offline or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")

    if args.tiny_model and not args.model.strip():
        args.model = str(tiny_model(python, Path(args.tiny_model).absolute()))
    frames = extract_frames(python, out / "frames", args.frames, args.start, args.width)
    say(f"{len(frames)} real frames of cityCC0.mpg (CC0) in {frames[0].parent}")

    import bpy  # noqa: I001 (bpy first: it puts addon_utils on the path)
    import addon_utils

    say(f"Blender {bpy.app.version_string} (bpy module, background={bpy.app.background})")
    prefs = bpy.context.preferences
    prefs.use_preferences_save = False
    # Like `blender --online-mode`: the engine may fetch a hub model unless asked to stay offline.
    prefs.system.use_online_access = not offline

    pkg = enable_extension(bpy, addon_utils, out)
    ext_prefs = prefs.addons[MODULE].preferences
    ext_prefs.device = args.device
    model = args.model.strip()
    if model and (model.startswith((".", "/", "~")) or Path(model).exists()):
        model = str(Path(model).expanduser().absolute())

    scene, source = build_scene(bpy, pkg, frames)
    s = scene.tokenflow
    s.prompt = args.prompt
    s.source_prompt = args.source_prompt
    s.model = model  # empty: the preferences' default model
    s.steps = args.steps
    s.size = args.size
    s.keyframe_stride = args.stride
    s.output_dir = "//tokenflow/"
    blend, sheet = out / "tokenflow_demo.blend", out / "contact_sheet.png"
    # The scene is built in a file of this run's own; the demo's .blend and contact sheet are
    # replaced only when both runs succeeded, so a failed run never loses the last good demo.
    work = out / f".tokenflow_demo.run-{os.getpid()}.blend"
    work_sheet = out / f".contact_sheet.run-{os.getpid()}.png"
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(work))  # '//' paths now resolve into OUT
        say(f"model: {model or ext_prefs.default_model + ' (the default)'}; engine: {python}")

        t0 = time.monotonic()
        preview = run(bpy, pkg, "preview", args.timeout)
        keyframes = preview["keyframes"]
        say(f"keyframes {keyframes}: {pkg.jobs.state().message}")
        propagate = run(bpy, pkg, "propagate", args.timeout)
        say(f"{pkg.jobs.state().message}; stats {json.dumps(propagate.get('stats', {}))}")
        state = bpy.context.window_manager.tokenflow_job
        if state.quality:
            say(f"consistency: {state.quality} (the panel shows the same line)")
        result = pkg.sequencer.strips.find_strip(scene, state.result_strip)
        contact_sheet(bpy, pkg, source, result, keyframes, work_sheet)
        bpy.ops.wm.save_as_mainfile(filepath=str(blend))
        os.replace(work_sheet, sheet)
    finally:
        for leftover in (work, Path(f"{work}1"), work_sheet):
            leftover.unlink(missing_ok=True)
    say(f"done in {time.monotonic() - t0:.1f} s")
    say(f"blend:         {blend}")
    say(f"result frames: {bpy.path.abspath(result.directory)}")
    say(f"contact sheet: {sheet} (top: source, bottom: edit; keyframes marked)")
    return 0


def enable_extension(bpy, addon_utils, out: Path):
    """This checkout as a real extension: a local repository whose `tokenflow` entry links here."""
    repo = out / "blender-user" / REPO
    repo.mkdir(parents=True, exist_ok=True)
    link = repo / EXT_ID
    if link.is_symlink() and link.resolve() != ROOT:
        link.unlink()
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    if not any(r.module == REPO for r in bpy.context.preferences.extensions.repos):
        bpy.ops.preferences.extension_repo_add(
            name=REPO, type="LOCAL", custom_directory=str(repo), use_custom_directory=True
        )

    def raise_error(exc: BaseException) -> None:
        raise exc

    addon_utils.enable(MODULE, default_set=True, handle_error=raise_error)
    return sys.modules[f"{MODULE}.tokenflow_blender"]


def build_scene(bpy, pkg, frames: list[Path]):
    """The default scene with one image strip of the frames at frame 1, channel 1, made active."""
    scene = bpy.context.scene
    ed = scene.sequence_editor_create()
    coll = pkg.compat.strips(ed)
    for strip in list(coll):
        coll.remove(strip)
    strip = coll.new_image("city", str(frames[0]), 1, 1)
    for f in frames[1:]:
        strip.elements.append(f.name)
    strip.colorspace_settings.name = "sRGB"
    ed.active_strip = strip
    info = pkg.sequencer.imageinfo.read_info(str(frames[0]))
    scene.render.resolution_x, scene.render.resolution_y = info.width, info.height
    scene.render.resolution_percentage = 100
    scene.render.fps = 25
    scene.frame_start, scene.frame_end = 1, len(frames)
    for marker in list(scene.timeline_markers):
        scene.timeline_markers.remove(marker)
    return scene, strip


def run(bpy, pkg, stage: str, timeout: float) -> dict:
    """Start an operator and tick the job controller (the UI's timer does this in Blender); return
    the engine's `done` event, or exit non-zero with the engine's message."""
    op = getattr(bpy.ops.sequencer, f"tokenflow_{stage}")
    try:
        op()
    except RuntimeError as exc:
        fail(str(exc).replace("Error: ", "", 1).strip())
    task = pkg.runs.registry.get("edit")
    last, end = ("", -1), time.monotonic() + timeout
    while pkg.jobs.tick() or task.running:
        state = bpy.context.window_manager.tokenflow_job
        percent = round(state.progress * 100)
        phase = "denoise" if state.stage in ("keyframes", "propagate") else state.stage  # interleaved
        if (phase, percent // 10) != last:  # a line per phase and per 10 %
            say(f"{stage}: {phase} {percent:3d}% {state.eta}".rstrip())
            last = (phase, percent // 10)
        if time.monotonic() > end:
            task.shutdown()
            fail(f"{stage} did not finish in {timeout:.0f} s; log: {task.log_path}")
        time.sleep(0.2)
    if task.state != "DONE":
        hint = ""
        if task.error_kind == "model":
            hint = (
                "\n[demo] Point the demo at a model: --model stabilityai/stable-diffusion-2-1-base "
                "(needs network access once), --model /path/to/diffusers-folder or "
                "--model /path/to/model.safetensors."
                "\n[demo] Fully offline: bash scripts/demo.sh (builds a tiny random-weight model), or "
                ".venvs/engine/bin/python -m engine make-tiny-model build/tiny-model, then "
                "--model build/tiny-model."
            )
        print(
            f"[demo] {stage} failed: {task.message}{hint}\n[demo] engine log: {task.log_path}",
            file=sys.stderr,
        )
        sys.exit(EXIT_MODEL if task.error_kind == "model" else 1)
    return json.loads(bpy.context.window_manager.tokenflow_job.last_result)  # the public view


def tiny_model(python: Path, folder: Path) -> Path:
    """The tiny random-weight model in `folder`, built once by the engine environment; its
    machine-readable output is kept out of the demo's own lines."""
    if not (folder / "model_index.json").is_file():
        say(f"building a tiny random-weight model in {folder} (once)")
        shutil.rmtree(folder, ignore_errors=True)
        done = subprocess.run(
            [str(python), "-m", "engine", "make-tiny-model", str(folder)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            fail(f"could not build the tiny model in {folder}:\n{done.stderr[-2000:]}")
    say(f"using the tiny random-weight model in {folder}: the edit will look like noise.")
    say("For a real edit: bash scripts/demo.sh --model stabilityai/stable-diffusion-2-1-base")
    return folder


def contact_sheet(bpy, pkg, source, result, keyframes: list[int], path: Path, columns: int = 6) -> Path:
    """Source frames on top, the edit below, `columns` frames spread over the shot (keyframes framed
    in yellow). Pixels go through Blender's image API as plain float arrays."""
    first, end = pkg.compat.span(source)
    count = end - first
    spread = [round(i * (count - 1) / max(1, columns - 1)) for i in range(columns)]
    picks = sorted(set(keyframes[:columns]))
    for i in spread:  # fill up with frames between the keyframes
        if len(picks) < min(columns, count) and i not in picks:
            picks = sorted({*picks, i})
    tiles = []
    for strip in (source, result):
        row = []
        for i in picks:
            elem = strip.strip_elem_from_frame(pkg.compat.span(strip)[0] + i)
            row.append(_load_pixels(bpy, os.path.join(bpy.path.abspath(strip.directory), elem.filename)))
        tiles.append(row)
    w, h = tiles[0][0][0], tiles[0][0][1]
    gap = 6
    width = len(picks) * w + (len(picks) + 1) * gap
    height = 2 * h + 3 * gap
    sheet = array.array("f", [0.12, 0.12, 0.12, 1.0]) * (width * height)
    for r, row in enumerate(tiles):
        # Blender's pixel rows go bottom-up: the source row is drawn at the top of the image.
        y0 = height - (r + 1) * (h + gap)
        for c, (tw, th, pixels) in enumerate(row):
            x0 = gap + c * (w + gap)
            if picks[c] in keyframes:
                _fill(sheet, width, x0 - 3, y0 - 3, tw + 6, th + 6, (1.0, 0.8, 0.1, 1.0))
            for y in range(min(th, h)):
                dst = ((y0 + y) * width + x0) * 4
                src = y * tw * 4
                sheet[dst : dst + min(tw, w) * 4] = pixels[src : src + min(tw, w) * 4]
    image = bpy.data.images.new("contact_sheet", width, height, alpha=False)
    try:
        image.pixels.foreach_set(sheet)
        image.filepath_raw = str(path)
        image.file_format = "PNG"
        image.save()
    finally:
        bpy.data.images.remove(image)
    return path


def _load_pixels(bpy, filepath: str) -> tuple[int, int, array.array]:
    image = bpy.data.images.load(filepath, check_existing=False)
    try:
        w, h = image.size
        pixels = array.array("f", [0.0]) * (w * h * 4)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    return w, h, pixels


def _fill(sheet: array.array, width: int, x0: int, y0: int, w: int, h: int, rgba: tuple[float, ...]) -> None:
    line = array.array("f", rgba) * w
    for y in range(max(0, y0), y0 + h):
        dst = (y * width + max(0, x0)) * 4
        sheet[dst : dst + len(line)] = line


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
