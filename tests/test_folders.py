import json

import numpy as np
import pytest
from PIL import Image

from modelseal.data.folders import (list_images, load_image, read_captioned_folder, read_class_folders,
                                    read_domain_tree, read_image_folder, read_membership)
from modelseal.data.sources import load_source
from modelseal.errors import InputError


def _img(path, color, size=(20, 12), fmt=None, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def test_class_folders_labels_sorted_and_resized(tmp_path):
    for cls, col in [("dog", (255, 0, 0)), ("cat", (0, 255, 0))]:
        for i in (2, 0, 1):  # created out of order: reading must sort by name
            _img(tmp_path / "dom" / cls / f"{i}.png", col)
    _img(tmp_path / "dom" / "cat" / "x.JPG", (0, 250, 0), fmt="JPEG")
    _img(tmp_path / "dom" / "cat" / ".hidden.png", (0, 0, 0))
    (tmp_path / "dom" / "cat" / "notes.txt").write_text("not an image")
    _img(tmp_path / "dom" / ".git" / "0.png", (0, 0, 0))  # hidden folder: not a class
    s = read_class_folders(tmp_path / "dom", size=16)
    assert s.class_names == ["cat", "dog"] and s.images.shape == (7, 16, 16, 3)
    assert list(s.labels) == [0, 0, 0, 0, 1, 1, 1] and s.labels.dtype == np.int64
    assert s.names == ["cat/0.png", "cat/1.png", "cat/2.png", "cat/x.JPG", "dog/0.png", "dog/1.png", "dog/2.png"]
    assert s.name == "dom" and s.images[-1, 0, 0, 0] == 255
    assert [p.name for p in list_images(tmp_path / "dom" / "cat")] == ["0.png", "1.png", "2.png", "x.JPG"]
    assert len(read_class_folders(tmp_path / "dom", size=8, max_per_class=2)) == 4
    split = load_source(str(tmp_path / "dom"), "test", size=16)
    assert 0 < len(split) < 7


def test_resize_crops_the_centre_and_converts_to_rgb(tmp_path):
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :10, 0], arr[:, 10:20, 1], arr[:, 20:, 2] = 255, 255, 255  # red | green | blue
    Image.fromarray(arr).save(tmp_path / "wide.png")
    for size in (4, 10, 24):
        out = load_image(tmp_path / "wide.png", size)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        assert (out[..., 1] > 200).all() and (out[..., [0, 2]] < 50).all()
    assert load_image(tmp_path / "wide.png", None).shape == (10, 30, 3)
    grey = load_image(_img(tmp_path / "g.png", 7, mode="L"), 5)
    rgba = load_image(_img(tmp_path / "a.png", (1, 2, 3, 0), mode="RGBA"), 5)
    deep = load_image(_img(tmp_path / "d.png", 40000, mode="I;16"), 5)
    assert (grey == 7).all() and (rgba == [1, 2, 3]).all() and (deep == 40000 >> 8).all()


def test_domain_tree_needs_the_same_classes(tmp_path):
    _img(tmp_path / "a" / "x" / "0.png", (1, 2, 3))
    _img(tmp_path / "b" / "y" / "0.png", (1, 2, 3))
    with pytest.raises(InputError, match="different classes") as e:
        read_domain_tree(tmp_path, size=8)
    assert "'a'" in str(e.value) and "'b'" in str(e.value) and "lacks x" in str(e.value) and "extra y" in str(e.value)
    _img(tmp_path / "b" / "x" / "0.png", (1, 2, 3))
    (tmp_path / "b" / "y" / "0.png").unlink()
    (tmp_path / "b" / "y").rmdir()
    sets = read_domain_tree(tmp_path, size=8)
    assert list(sets) == ["a", "b"] and sets["b"].name == "b" and sets["a"].class_names == ["x"]
    assert list(read_domain_tree(tmp_path, size=8, domains=["b"])) == ["b"]
    with pytest.raises(InputError, match="not found"):
        read_domain_tree(tmp_path, size=8, domains=["c"])
    with pytest.raises(InputError, match="domain tree"):  # a tree given where one domain is expected
        read_class_folders(tmp_path, size=8)


def test_flat_empty_and_missing_folders_name_the_expected_layout(tmp_path):
    _img(tmp_path / "flat" / "0.png", (0, 0, 0))
    with pytest.raises(InputError, match=r"flat folder.*root/<class>/<image>"):
        read_class_folders(tmp_path / "flat", size=8)
    with pytest.raises(InputError, match="does not exist.*root/<class>/<image>"):
        read_class_folders(tmp_path / "nope", size=8)
    with pytest.raises(InputError, match="not a folder"):
        read_class_folders(tmp_path / "flat" / "0.png", size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class sub-folders"):
        read_class_folders(tmp_path / "empty", size=8)
    with pytest.raises(InputError, match="no images"):
        read_image_folder(tmp_path / "empty", size=8)
    _img(tmp_path / "cls" / "a" / "0.png", (0, 0, 0))
    (tmp_path / "cls" / "b").mkdir()
    with pytest.raises(InputError, match=r"class folder .*b' holds no images"):
        read_class_folders(tmp_path / "cls", size=8)


def test_corrupt_and_truncated_images_name_the_file(tmp_path):
    bad = tmp_path / "c" / "k" / "broken.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(InputError, match="broken.png.*remove or replace"):
        read_class_folders(tmp_path / "c", size=8)
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    good = tmp_path / "t.png"
    Image.fromarray(noisy).save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.png.*remove or replace"):
        load_image(good)


def test_captioned_folder(tmp_path):
    _img(tmp_path / "a.png", (1, 1, 1))
    _img(tmp_path / "sub" / "b.png", (2, 2, 2))
    meta = tmp_path / "metadata.jsonl"
    meta.write_text(json.dumps({"file_name": "sub/b.png", "text": "a dog"}) + "\n\n"
                    + json.dumps({"file_name": "a.png", "text": "a cat"}) + "\n")
    s = read_captioned_folder(tmp_path, size=8)
    assert s.captions == ["a dog", "a cat"] and s.names == ["sub/b.png", "a.png"] and s.images.shape == (2, 8, 8, 3)
    meta.write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n{oops\n")
    with pytest.raises(InputError, match="line 2"):
        read_captioned_folder(tmp_path, size=8)
    meta.write_text(json.dumps({"file_name": "a.png"}) + "\n")
    with pytest.raises(InputError, match="line 1 has no 'text'"):
        read_captioned_folder(tmp_path, size=8)
    meta.write_text(json.dumps({"file_name": "zzz.png", "text": "x"}) + "\n")
    with pytest.raises(InputError, match="zzz.png"):
        read_captioned_folder(tmp_path, size=8)
    meta.unlink()
    with pytest.raises(InputError, match="no metadata.jsonl"):
        read_captioned_folder(tmp_path, size=8)
    (tmp_path / "metadata.csv").write_text('file_name,text\na.png,"a cat, sitting"\nsub/b.png,a dog\n')
    s = read_captioned_folder(tmp_path, size=8)
    assert s.captions == ["a cat, sitting", "a dog"] and s.names == ["a.png", "sub/b.png"]


def test_membership_folders_and_mixed_sizes(tmp_path):
    _img(tmp_path / "members" / "0.png", (5, 5, 5))
    with pytest.raises(InputError, match="holdout"):
        read_membership(tmp_path, size=8)
    _img(tmp_path / "holdout" / "0.png", (6, 6, 6))
    m, h = read_membership(tmp_path, size=8)
    assert (len(m), len(h), m.name, h.name) == (1, 1, "members", "holdout") and m.images.shape == (1, 8, 8, 3)
    _img(tmp_path / "mixed" / "a.png", (1, 1, 1), size=(8, 8))
    _img(tmp_path / "mixed" / "b.png", (1, 1, 1), size=(9, 9))
    with pytest.raises(InputError, match="--size"):
        read_image_folder(tmp_path / "mixed")
    assert read_image_folder(tmp_path / "mixed", size=6).images.shape == (2, 6, 6, 3)
