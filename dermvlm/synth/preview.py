"""A labelled contact sheet of a SynthDerm folder, so a person can check what was rendered."""
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dermvlm.vocab import FITZPATRICK_ROMAN


def preview_grid(data_dir, out_path, n=32, columns=8, tile=160):
    """Write a grid of the first `n` images of data_dir with condition / skin type / modality."""
    data_dir = Path(data_dir)
    with open(data_dir / "attributes.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    label_height = 34
    rows_needed = (len(rows) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows_needed * (tile + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for i, row in enumerate(rows):
        x, y = (i % columns) * tile, (i // columns) * (tile + label_height)
        with Image.open(data_dir / "images" / f"{row['image_id']}.jpg") as image:
            sheet.paste(image.convert("RGB").resize((tile, tile)), (x, y))
        skin = FITZPATRICK_ROMAN[row["fitzpatrick"]]
        draw.text((x + 3, y + tile + 2), row["condition"][:24], fill="black", font=font)
        draw.text((x + 3, y + tile + 17), f"FST {skin} · {row['modality']}", fill="dimgray",
                  font=font)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path
