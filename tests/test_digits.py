import numpy as np
import pytest

from modelseal.data.digits import CLASS_NAMES, DOMAINS, load_digits_domain
from modelseal.data.sources import builtin_table, load_source
from modelseal.errors import InputError


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_splits_are_disjoint_stratified_and_deterministic(domain):
    tr = load_digits_domain(domain, "train")
    te = load_digits_domain(domain, "test")
    assert tr.images.shape[1:] == (32, 32, 3) and tr.images.dtype == np.uint8
    assert not set(tr.names) & set(te.names)
    assert len(tr) + len(te) == len(load_digits_domain(domain, "all"))
    counts = np.bincount(te.labels, minlength=10)
    assert counts.min() >= 0.8 * counts.max()
    again = load_digits_domain(domain, "test")
    assert np.array_equal(again.images, te.images)
    assert te.captions[0].endswith(CLASS_NAMES[te.labels[0]]) or "on a photo" in te.captions[0]
    # real digit images: not blank, some contrast
    assert te.images.std() > 20


def test_size_is_configurable_and_split_is_size_independent():
    a = load_digits_domain("uci", "test", size=32)
    b = load_digits_domain("uci", "test", size=48)
    assert b.images.shape[1:3] == (48, 48)
    assert np.array_equal(a.labels, b.labels)


def test_table_sizes_match_the_data():
    rows = {r["source"]: r for r in builtin_table()}
    for d in DOMAINS:
        assert rows[f"builtin:digits/{d}"]["test"] == len(load_source(f"builtin:digits/{d}", "test"))


def test_unknown_domain_is_input_error():
    with pytest.raises(InputError, match="mnist"):
        load_source("builtin:digits/svhn")
    with pytest.raises(InputError):
        load_source("builtin:faces/x")


def test_textures_are_a_captioned_domain_with_a_disjoint_test_split():
    train, test = load_source("builtin:textures", "train", 32), load_source("builtin:textures", "test", 32)
    assert len(train.images) == 200 and len(test.images) == 40 and train.images.shape[1:] == (32, 32, 3)
    assert len(set(train.captions)) == 8 and set(test.captions) == set(train.captions)
    assert not set(train.names) & set(test.names)
    assert train.images.std() > 10  # crops of photos, not blank
