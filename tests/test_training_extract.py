"""training/extract_embeddings.py: CSV of images -> embedding shards; bad rows skipped and named; resumable."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch
from PIL import Image

from geodemo.encoders import register_encoder
from training.extract_embeddings import ERRORS_FILE, main
from training.shards import read_shard


class MeanColourEncoder:
    """Test encoder: the mean RGB of the image in [0, 1]."""

    name = "test_mean_colour"
    dim = 3

    def embed(self, images, device="cpu"):
        return torch.tensor(np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) / 255 for im in images]))


register_encoder(MeanColourEncoder.name, MeanColourEncoder)


def test_csv_to_shards_skips_bad_rows_and_resumes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(7):
        Image.new("RGB", (8, 6), (30 * i, 10, 200)).save(images / f"p{i}.png")
        rows.append({"image": f"p{i}.png", "latitude": i, "longitude": -i})
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    rows.insert(2, {"image": "broken.jpg", "latitude": 1.5, "longitude": 2.5})
    rows.insert(5, {"image": "missing.png", "latitude": 0, "longitude": 0})
    with open(tmp_path / "photos.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "latitude", "longitude"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "shards"
    args = ["--encoder", MeanColourEncoder.name, "--csv", str(tmp_path / "photos.csv"), "--images", str(images),
            "--output", str(out), "--samples-per-shard", "4", "--batch-size", "3", "--num-workers", "0",
            "--no-progress", "--device", "cpu"]
    stats = main(args)
    assert stats == {"written": 3, "skipped_shards": 0, "images": 7, "errors": 2}
    with open(out / ERRORS_FILE, newline="") as f:
        errors = list(csv.reader(f))
    assert [(shard, origin.rsplit(" ", 2)[1:]) for shard, origin, _ in errors] == [("0", ["row", "4"]),
                                                                                  ("1", ["row", "7"])]
    assert "cannot identify image" in errors[0][2] and "No such file" in errors[1][2]
    assert json.loads((out / "sizes.json").read_text()) == {"000000.tar": 3, "000001.tar": 3, "000002.tar": 1}
    first = read_shard(str(out / "000000.tar"), MeanColourEncoder.name)
    assert first.keys == ["p0", "p1", "p2"]
    np.testing.assert_allclose(first.embeddings[1].numpy(), np.array([30, 10, 200]) / 255, rtol=1e-6)
    np.testing.assert_allclose(first.latlon.numpy(), [[0, 0], [1, -1], [2, -2]])
    before = (out / "000001.tar").stat().st_mtime_ns
    (out / "000002.tar").unlink()
    again = main(args)
    assert again == {"written": 1, "skipped_shards": 2, "images": 1, "errors": 0}
    assert (out / "000001.tar").stat().st_mtime_ns == before
