"""IP-CLIP building blocks on a small random CLIP saved and loaded by path."""
import pytest
import torch

from modelseal.lock.ipclip import IPCLIP, ProjectorConfig, block_statistics, frozen_features
from modelseal.lock.losses import FeatureBank, StyleAttention, c5, mmd
from modelseal.models.clip import load_clip

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def clip(random_clip_dir):
    return load_clip(str(random_clip_dir))


def test_block_statistics_match_their_definition():
    x = [torch.randn(2, 5, 3), torch.randn(2, 5, 3)]
    mu, sigma = block_statistics(x, eps=0.0)
    torch.testing.assert_close(mu[:, 1], x[1].mean(1))
    torch.testing.assert_close(sigma[:, 0], x[0].std(1, unbiased=False))


@pytest.mark.parametrize("shared", [True, False])
def test_one_batched_pass_equals_the_reference_per_image_per_class_loop(clip, shared):
    torch.manual_seed(1)
    model = IPCLIP(clip, CLASSES, ProjectorConfig(shared_image_tokens=shared))
    for p in model.projector.parameters():
        torch.nn.init.normal_(p, std=0.05)
    frozen = frozen_features(clip, torch.rand(3, 3, 32, 32))
    fast, dom = model.text_features(frozen["mu"], frozen["sigma"])
    slow = model.reference_text_features(frozen["mu"], frozen["sigma"])
    assert fast.shape == (3, 10, 128) and dom.shape == (3, 4, 128)
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)
    img = model.projector(frozen["mu"], frozen["sigma"])[1]
    assert torch.equal(img[:, 0], img[:, 1]) == shared
    # per-image prompts: different images give different class text features
    assert (fast[0] - fast[1]).abs().max() > 1e-4


def test_only_the_projector_trains(clip):
    model = IPCLIP(clip, CLASSES)
    frozen = frozen_features(clip, torch.rand(4, 3, 32, 32))
    logits, _, _ = model(frozen)
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.projector.parameters())
    assert all(p.grad is None for p in clip.model.parameters())


def test_clamp_kills_the_gradient_past_five():
    x = torch.tensor([4.0, 6.0], requires_grad=True)
    c5(x).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]


def test_feature_bank_and_attention():
    feats = torch.randn(30, 8)
    labels = torch.arange(30) % 3
    probs = torch.nn.functional.one_hot(labels, 3).float() * 0.9 + 0.05
    bank = FeatureBank.fill(feats, probs, labels, k=5)
    assert bank.filled.tolist() == [5, 5, 5]
    protos = bank.prototypes()
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(3))
    out = StyleAttention(8)(torch.nn.functional.normalize(feats, dim=-1), protos)
    assert out.shape == (30, 8)
    assert mmd(torch.randn(50, 4), torch.randn(50, 4)) < mmd(torch.randn(50, 4), torch.randn(50, 4) + 3)


def test_checkpointed_text_chunks_give_the_same_features_and_gradients():
    import torch

    from modelseal.lock.ipclip import IPCLIP
    from modelseal.models.clip import load_clip

    clip = load_clip("tiny:clip")
    g = torch.Generator().manual_seed(0)
    n_layers = clip.model.config.vision_config.num_hidden_layers
    width = clip.model.config.vision_config.hidden_size
    mu, sigma = torch.randn(6, n_layers, width, generator=g), torch.rand(6, n_layers, width, generator=g)
    out = []
    for chunk in (None, 2):
        torch.manual_seed(0)
        model = IPCLIP(clip, ["zero", "one", "two"])
        model.text_chunk = chunk
        feats, _ = model.text_features(mu, sigma)
        feats.pow(3).sum().backward()
        out.append((feats.detach(), [p.grad.clone() for p in model.projector.parameters() if p.grad is not None]))
    torch.testing.assert_close(out[1][0], out[0][0])
    assert out[0][1] and all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(out[0][1], out[1][1]))


def test_reading_the_feature_starts_as_the_papers_projector_and_then_reads_content(clip):
    """read_feature adds a zero-initialised map of the final feature to the domain tokens: the
    same state gives the paper's prompts until that map is trained; then images with the same
    block statistics but another feature get other prompts."""
    torch.manual_seed(2)
    paper = IPCLIP(clip, CLASSES, ProjectorConfig())
    ours = IPCLIP(clip, CLASSES, ProjectorConfig(read_feature=True))
    missing, unexpected = ours.load_state_dict(paper.state_dict(), strict=False)
    assert not unexpected and {k for k in missing if not k.startswith("clip.")} == \
        {"projector.feature.weight", "projector.feature.bias"}
    frozen = frozen_features(clip, torch.rand(3, 3, 32, 32))
    torch.testing.assert_close(ours(frozen)[0], paper(frozen)[0])
    torch.nn.init.normal_(ours.projector.feature.weight, std=0.5)
    moved = dict(frozen, feat=frozen["feat"].flip(0))  # statistics kept, features swapped
    assert (ours(moved)[0] - ours(frozen)[0]).abs().max() > 1e-3
    torch.testing.assert_close(paper(moved)[1], paper(frozen)[1])  # the paper's prompts ignore it
    with pytest.raises(ValueError, match="feat"):
        ours.projector(frozen["mu"], frozen["sigma"])
