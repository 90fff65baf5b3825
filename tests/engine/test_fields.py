"""protocol.FIELDS is the one table of job fields: validation, the CLI's flags and help follow it."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from engine import protocol

BASE = {"frames": ["a.png"], "output": "out", "prompt": "snow"}
NUMERIC = [f for f in protocol.FIELDS.values() if f.kind in ("int", "number")]


@pytest.mark.parametrize("spec", NUMERIC, ids=lambda f: f.name)
def test_bounds_are_the_table_s(spec: protocol.Field) -> None:
    """Each numeric field takes its bounds (where the table says so) and refuses one step past them."""
    step = 1 if spec.kind == "int" else 1e-6
    above = spec.high + step
    with pytest.raises(protocol.JobError, match=f"'{spec.name}' is"):
        protocol.Job.from_dict({**BASE, spec.name: int(above) if spec.kind == "int" else above})
    below = spec.low if spec.low_open else spec.low - step
    with pytest.raises(protocol.JobError, match=f"'{spec.name}' is"):
        protocol.Job.from_dict({**BASE, spec.name: int(below) if spec.kind == "int" else below})
    if not spec.low_open and spec.name not in ("size", "inversion_steps"):  # size: multiples of 64
        protocol.Job.from_dict({**BASE, spec.name: int(spec.low) if spec.kind == "int" else spec.low})


@pytest.mark.parametrize(
    "spec", [f for f in protocol.FIELDS.values() if f.kind == "choice"], ids=lambda f: f.name
)
def test_choices_are_the_table_s(spec: protocol.Field) -> None:
    with pytest.raises(protocol.JobError, match=f"'{spec.name}' is 'nonsense'; choose one of: "):
        protocol.Job.from_dict({**BASE, spec.name: "nonsense"})


def test_every_field_of_the_table_is_a_job_field_and_typed() -> None:
    names = {f.name for f in dataclasses.fields(protocol.Job)}
    assert set(protocol.FIELDS) <= names
    for spec in protocol.FIELDS.values():
        assert spec.help and "\n" not in spec.help and not spec.help.endswith("."), spec.name  # one line
        if spec.kind in ("int", "number"):
            assert spec.low is not None and spec.high is not None and math.isfinite(spec.high)


def test_the_cli_offers_the_flagged_fields_with_the_table_s_help() -> None:
    """`python -m engine edit --help`, as a user reads it: each flagged field with its table help."""
    done = subprocess.run(
        [sys.executable, "-m", "engine", "edit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines (at spaces and hyphens)
    bare = "".join(done.stdout.split())
    for spec in protocol.FIELDS.values():
        flag = "--" + spec.name.replace("_", "-")
        if spec.flag:
            assert f"{flag} " in text, flag
            assert "".join(spec.help.split()) in bare, spec.name
            if spec.kind == "choice":
                assert f"{flag} {{{','.join(spec.choices)}}}" in text
