"""Draw the panels recorded by tests/blender/test_takes.py into a PNG (the README's picture).

The bpy module has no window to take a screenshot of, so the test records what the panels' draw()
calls show (labels, properties with their values, buttons, list rows) into JSON, and this script
draws that in the look of Blender's sidebar with Pillow (engine environment):

    TOKENFLOW_PANEL_DUMP=/tmp/panel.json .venvs/bpy-5.0/bin/python -m pytest tests/blender/test_takes.py
    .venvs/engine/bin/python scripts/render_panel.py /tmp/panel.json docs/takes-panel.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, LINE, PAD = 560, 24, 12
BG, PANEL, HEADER, TEXT, DIM = (48, 48, 48), (61, 61, 61), (40, 40, 40), (230, 230, 230), (160, 160, 160)
FIELD, BUTTON, SELECTED = (29, 29, 29), (84, 84, 84), (71, 114, 179)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def render(panels: list[dict], out: Path) -> None:
    font = ImageFont.truetype(FONT, 13) if Path(FONT).is_file() else ImageFont.load_default()
    bold = ImageFont.truetype(FONT.replace("Sans.ttf", "Sans-Bold.ttf"), 13) if Path(FONT).is_file() else font
    height = PAD + sum(LINE + 8 + LINE * len(p["items"]) + PAD for p in panels)
    img = Image.new("RGB", (WIDTH, height), BG)
    d = ImageDraw.Draw(img)
    y = PAD
    for p in panels:
        d.rectangle([PAD, y, WIDTH - PAD, y + LINE], fill=HEADER)
        d.text((PAD + 10, y + 5), "\u25be " + p["panel"], font=bold, fill=TEXT)
        y += LINE + 4
        top = y
        d.rectangle([PAD, top, WIDTH - PAD, top + LINE * len(p["items"]) + 4], fill=PANEL)
        for kind, text in p["items"]:
            x0, x1 = PAD + 10, WIDTH - PAD - 10
            if kind == "operator":
                d.rounded_rectangle([x0, y + 2, x1, y + LINE - 2], 4, fill=BUTTON)
                d.text(((x0 + x1) // 2, y + LINE // 2), text, font=font, fill=TEXT, anchor="mm")
            elif kind == "prop":
                label, _, value = text.partition(": ")
                d.text((x0, y + 5), label, font=font, fill=DIM)
                d.rounded_rectangle([x0 + 150, y + 2, x1, y + LINE - 2], 4, fill=FIELD)
                d.text((x0 + 158, y + 5), value[:52], font=font, fill=TEXT)
            elif kind == "enum":
                items = text.split(" | ")
                step = (x1 - x0) // max(1, len(items))
                for i, item in enumerate(items):
                    fill = SELECTED if item.startswith("*") else BUTTON
                    d.rectangle([x0 + i * step, y + 2, x0 + (i + 1) * step - 1, y + LINE - 2], fill=fill)
                    d.text(
                        (x0 + i * step + step // 2, y + LINE // 2),
                        item.lstrip("*"),
                        font=font,
                        fill=TEXT,
                        anchor="mm",
                    )
            elif kind == "row":
                if text.startswith(">"):
                    d.rectangle([x0, y + 1, x1, y + LINE - 1], fill=SELECTED)
                d.rectangle([x0, y, x1, y + LINE], outline=FIELD)
                d.text((x0 + 8, y + 5), text[2:], font=font, fill=TEXT)
            elif kind == "progress":
                d.rectangle([x0, y + 2, x1, y + LINE - 2], fill=SELECTED)
                d.text((x0 + 8, y + 5), text, font=font, fill=TEXT)
            else:
                d.text((x0, y + 5), text[:80], font=font, fill=TEXT)
            y += LINE
        y += PAD
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    render(json.loads(Path(argv[0]).read_text()), Path(argv[1]))
    print(f"wrote {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
