"""The small changes that let the reference code (omerbt/TokenFlow, 5dd6a69) run here, made to a
scratch copy at run time. Nothing of the reference is stored in this project.

Each patch names its file, the exact text it replaces, how often that text must occur and why; a
reference checkout whose text differs (another commit) is refused by name instead of half-patched.
None changes the method: they choose the device and precision, the model folder, where tensors are
loaded, and where the keyframes come from (the engine's draws, so both sides edit with the same ones).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

FILES = ("preprocess.py", "run_tokenflow_pnp.py", "tokenflow_utils.py", "util.py")
HUB_KEY = '"stabilityai/stable-diffusion-2-1-base"'


@dataclass(frozen=True)
class Patch:
    file: str
    old: str
    new: str
    count: int  # occurrences of `old` the reference has (0: at least one)
    why: str


PATCHES = (
    Patch("preprocess.py", "torch.float16", "torch.float32", 0, "fp32: the comparison runs on the CPU"),
    Patch("run_tokenflow_pnp.py", "torch.float16", "torch.float32", 0, "fp32"),
    Patch(
        "run_tokenflow_pnp.py",
        "    @torch.autocast(dtype=torch.float32, device_type='cuda')\n",
        "",
        1,
        "no CUDA autocast (after the fp32 patch it would only warn)",
    ),
    Patch("run_tokenflow_pnp.py", '.to("cuda")', '.to("cpu")', 1, "the pipeline on the CPU"),
    Patch("preprocess.py", 'device="cuda"', 'device="cpu"', 1, "the text encoder's input on the CPU"),
    Patch("preprocess.py", 'revision="fp16",', "", 3, "a local folder has no fp16 revision"),
    Patch("preprocess.py", HUB_KEY, 'os.environ["PARITY_MODEL"]', 2, "the local model folder"),
    Patch("run_tokenflow_pnp.py", HUB_KEY, 'os.environ["PARITY_MODEL"]', 1, "the local model folder"),
    Patch(
        "run_tokenflow_pnp.py",
        "torch.load(latents_path)",
        'torch.load(latents_path, map_location="cpu")',
        1,
        "tensors loaded onto the CPU",
    ),
    Patch(
        "tokenflow_utils.py",
        "torch.load(latents_t_path)",
        'torch.load(latents_t_path, map_location="cpu")',
        1,
        "tensors loaded onto the CPU",
    ),
    Patch(
        "run_tokenflow_pnp.py",
        "pivotal_idx = torch.randint(batch_size, (len(x)//batch_size,)) + torch.arange(0,len(x),batch_size) ",
        "pivotal_idx = __import__('parity_hooks').keyframes(len(x), batch_size)",
        1,
        "the keyframes of each step from the file the engine's draws were written to",
    ),
    Patch("preprocess.py", "0.18215", 'float(os.environ["PARITY_LATENT_SCALE"])', 0, "the model's VAE scale"),
    Patch("run_tokenflow_pnp.py", "0.18215", 'float(os.environ["PARITY_LATENT_SCALE"])', 0, "the VAE scale"),
)


class ReferenceMismatch(RuntimeError):
    """The reference checkout is not the code these patches were written for."""


def scratch_copy(reference: Path, dest: Path) -> list[str]:
    """Copy the reference's scripts to `dest` and apply :data:`PATCHES`; returns what was done."""
    missing = [f for f in FILES if not (reference / f).is_file()]
    if missing:
        raise ReferenceMismatch(
            f"{reference} is not a TokenFlow checkout (no {', '.join(missing)}): clone "
            "https://github.com/omerbt/TokenFlow (commit 5dd6a69) and pass its folder as --reference"
        )
    dest.mkdir(parents=True, exist_ok=True)
    texts = {f: (reference / f).read_text() for f in FILES}
    done = []
    for p in PATCHES:
        found = texts[p.file].count(p.old)
        if (p.count and found != p.count) or found == 0:
            raise ReferenceMismatch(
                f"{p.file}: expected {p.count or 'some'} occurrence(s) of {p.old.strip()!r}, found {found}; "
                "this checkout is not commit 5dd6a69 of omerbt/TokenFlow (see docs/quality.md)"
            )
        texts[p.file] = texts[p.file].replace(p.old, p.new)
        done.append(f"{p.file}: {p.why} ({found}x)")
    for f, text in texts.items():
        (dest / f).write_text(text)
    configs = reference / "configs"
    if configs.is_dir():
        shutil.copytree(configs, dest / "configs", dirs_exist_ok=True)
    return done
