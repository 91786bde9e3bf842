import json

import numpy as np
import pytest
from PIL import Image

from modelseal.data.folders import (load_image, read_captioned_folder, read_class_folders, read_domain_tree,
                                    read_image_folder, read_membership)
from modelseal.data.sources import load_source
from modelseal.errors import InputError


def _img(path, color, size=(20, 12), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def test_class_folders_labels_sorted_and_resized(tmp_path):
    for cls, col in [("dog", (255, 0, 0)), ("cat", (0, 255, 0))]:
        for i in range(3):
            _img(tmp_path / "dom" / cls / f"{i}.png", col)
    _img(tmp_path / "dom" / "cat" / "x.jpg", (0, 250, 0), fmt="JPEG")
    s = read_class_folders(tmp_path / "dom", size=16)
    assert s.class_names == ["cat", "dog"] and s.images.shape == (7, 16, 16, 3)
    assert list(s.labels) == [0, 0, 0, 0, 1, 1, 1]
    assert s.names[0] == "cat/0.png" and s.images[-1, 0, 0, 0] == 255
    split = load_source(str(tmp_path / "dom"), "test", size=16)
    assert 0 < len(split) < 7


def test_domain_tree_needs_the_same_classes(tmp_path):
    _img(tmp_path / "a" / "x" / "0.png", (1, 2, 3))
    _img(tmp_path / "b" / "y" / "0.png", (1, 2, 3))
    with pytest.raises(InputError, match="different classes"):
        read_domain_tree(tmp_path, size=8)
    _img(tmp_path / "b" / "x" / "0.png", (1, 2, 3))
    (tmp_path / "b" / "y" / "0.png").unlink()
    (tmp_path / "b" / "y").rmdir()
    assert set(read_domain_tree(tmp_path, size=8)) == {"a", "b"}


def test_flat_folder_and_missing_folder_name_the_expected_layout(tmp_path):
    _img(tmp_path / "flat" / "0.png", (0, 0, 0))
    with pytest.raises(InputError, match=r"root/<class>/<image>"):
        read_class_folders(tmp_path / "flat", size=8)
    with pytest.raises(InputError, match="does not exist"):
        read_class_folders(tmp_path / "nope", size=8)


def test_corrupt_and_truncated_images_name_the_file(tmp_path):
    bad = tmp_path / "c" / "k" / "broken.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(InputError, match="broken.png"):
        read_class_folders(tmp_path / "c", size=8)
    good = _img(tmp_path / "t.png", (9, 9, 9), size=(64, 64))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.png"):
        load_image(good)


def test_captioned_folder(tmp_path):
    _img(tmp_path / "a.png", (1, 1, 1))
    _img(tmp_path / "b.png", (2, 2, 2))
    meta = tmp_path / "metadata.jsonl"
    meta.write_text(json.dumps({"file_name": "a.png", "text": "a cat"}) + "\n"
                    + json.dumps({"file_name": "b.png", "text": "a dog"}) + "\n")
    s = read_captioned_folder(tmp_path, size=8)
    assert s.captions == ["a cat", "a dog"] and s.names == ["a.png", "b.png"]
    meta.write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n{oops\n")
    with pytest.raises(InputError, match="line 2"):
        read_captioned_folder(tmp_path, size=8)
    meta.write_text(json.dumps({"file_name": "zzz.png", "text": "x"}) + "\n")
    with pytest.raises(InputError, match="zzz.png"):
        read_captioned_folder(tmp_path, size=8)


def test_membership_folders(tmp_path):
    _img(tmp_path / "members" / "0.png", (5, 5, 5))
    with pytest.raises(InputError, match="holdout"):
        read_membership(tmp_path, size=8)
    _img(tmp_path / "holdout" / "0.png", (6, 6, 6))
    m, h = read_membership(tmp_path, size=8)
    assert len(m) == len(h) == 1
    _img(tmp_path / "mixed" / "a.png", (1, 1, 1), size=(8, 8))
    _img(tmp_path / "mixed" / "b.png", (1, 1, 1), size=(9, 9))
    with pytest.raises(InputError, match="--size"):
        read_image_folder(tmp_path / "mixed")
