"""Guidance-distilled token priors (Meng et al., arXiv:2210.03142): the guidance input of both networks
(genlab.priors.transformer, genlab.priors.unet), the prior's one call per guided step (genlab.priors.pipeline), and the
distillation loss and student (genlab.train.distill). The CLI's --distill-from is in
test_train.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import genlab
from genlab.priors.transformer import MaskedTokenTransformer
from genlab.priors.unet import MaskedTokenUNet
from genlab.train.distill import distillation_student, guidance_distillation_loss

from conftest import PRIOR_CODES, PRIOR_GRID, TINY_TOKEN_UNET, build_token_prior, optimise

K = PRIOR_CODES
NULL = 3  # the tiny priors have classes a, b, c


NETWORKS = {
    "transformer": (MaskedTokenTransformer, dict(codebook_size=K, height=PRIOR_GRID, width=PRIOR_GRID, num_classes=3,
                                                 hidden_size=32, num_layers=1, num_heads=2)),
    "unet": (MaskedTokenUNet, TINY_TOKEN_UNET),
}


def tiny_network(kind: str = "transformer", **overrides):
    """A tiny MaskedTokenTransformer or MaskedTokenUNet (3 classes) with spread embeddings, so that classes and
    tokens change the logits."""
    network_class, config = NETWORKS[kind]
    torch.manual_seed(0)
    model = network_class(**{**config, **overrides})
    classes = model.class_embedding if hasattr(model, "class_embedding") else model.unet.class_embedding
    with torch.no_grad():
        if classes is not None:
            classes.weight.normal_()
        model.token_embedding.weight.normal_()
    return model.eval()


def load_network(folder):
    """The saved network in `folder`, of the class its config names."""

    kind = json.loads((folder / "config.json").read_text())["_class_name"]
    return {cls.__name__: cls for cls, _ in NETWORKS.values()}[kind].from_pretrained(folder).eval()


def some_tokens(batch: int = 4, seed: int = 0) -> torch.Tensor:
    tokens = torch.randint(0, K, (batch, PRIOR_GRID, PRIOR_GRID), generator=torch.Generator().manual_seed(seed))
    tokens[:, 4:] = K  # the lower half masked
    return tokens


def class_patterns(batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, h, w) tokens with a pattern per class, and their labels (0, 1, 2, then the null class)."""
    labels = torch.tensor([0, 1, 2, NULL] * (batch // 4))
    rows, cols = torch.meshgrid(torch.arange(PRIOR_GRID), torch.arange(PRIOR_GRID), indexing="ij")
    return (rows + 2 * cols + 5 * labels[:, None, None]) % K, labels


def trained_teacher(kind: str):
    """A tiny network trained a little on class patterns, with labels dropped a quarter of the time: its
    conditional and unconditional predictions differ, so guidance changes them (a random one hardly)."""
    from genlab.train.prior import masked_token_loss

    model = tiny_network(kind).train()
    tokens, labels = class_patterns()
    optimise(model, lambda generator: masked_token_loss(model, tokens, labels, generator), steps=40)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def teacher_dir(tmp_path_factory, request):
    """A trained tiny teacher of each kind, saved."""
    folder = tmp_path_factory.mktemp(f"teacher-{request.param}")
    trained_teacher(request.param).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------- the network
def test_a_fresh_student_is_its_teacher_at_every_scale_and_round_trips(teacher_dir, tmp_path):
    teacher = load_network(teacher_dir)
    student = distillation_student(teacher, guidance_max=6.0).eval()
    assert student.config.guidance_embedding and student.config.guidance_max == 6.0
    assert type(student) is type(teacher)
    tokens, labels = some_tokens(), torch.tensor([0, 1, 2, NULL])
    with torch.no_grad():
        expected = teacher(tokens, class_labels=labels)
        for scale in (1.0, 3.5, 6.0):
            torch.testing.assert_close(student(tokens, class_labels=labels, guidance=torch.full((4,), scale)), expected)
        torch.testing.assert_close(student(tokens, class_labels=labels), expected)  # no scale: w = 1
        student.guidance_embedder.linear_2.weight.normal_(std=0.5)  # once trained, the scale matters
        assert not torch.allclose(student(tokens, class_labels=labels, guidance=torch.full((4,), 3.0)),
                                  student(tokens, class_labels=labels, guidance=torch.full((4,), 5.0)))
    student.save_pretrained(tmp_path / "student")
    again = load_network(tmp_path / "student")
    assert again.config.guidance_embedding and again.config.guidance_max == 6.0
    with torch.no_grad():
        torch.testing.assert_close(again(tokens, class_labels=labels, guidance=torch.full((4,), 3.0)),
                                   student(tokens, class_labels=labels, guidance=torch.full((4,), 3.0)))


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_guidance_settings_are_checked(kind):
    with pytest.raises(ValueError, match="is not guidance-distilled: it takes no guidance scale"):
        tiny_network(kind)(some_tokens(), class_labels=torch.zeros(4, dtype=torch.long), guidance=torch.ones(4))
    with pytest.raises(ValueError, match="needs a class-conditional network"):
        tiny_network(kind, num_classes=0, guidance_embedding=True)
    with pytest.raises(ValueError, match="guidance_max must be above 1"):
        tiny_network(kind, guidance_embedding=True, guidance_max=1.0)
    student = tiny_network(kind, guidance_embedding=True, guidance_max=5.0)
    assert [student.distills(w) for w in (0.5, 1.0, 4.0, 5.0, 5.5)] == [False, True, True, True, False]
    assert not tiny_network(kind).distills(4.0)
    labels = torch.tensor([0, 1, 2, NULL])
    with torch.no_grad():  # the scale of each row is its own
        logits = student(some_tokens(), class_labels=labels, guidance=torch.tensor([1.0, 2.0, 3.0, 4.0]))
        student.guidance_embedder.linear_2.weight.normal_(std=0.5)
        moved = student(some_tokens(), class_labels=labels, guidance=torch.tensor([1.0, 2.0, 3.5, 4.0]))
        same = student(some_tokens(), class_labels=labels, guidance=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert logits.shape == (4, K, PRIOR_GRID, PRIOR_GRID)
    changed = (moved - same).abs().flatten(1).amax(1) > 1e-6
    assert changed.tolist() == [False, False, True, False]


def test_a_distilled_teacher_is_refused(teacher_dir):
    student = distillation_student(load_network(teacher_dir), 4.0)
    with pytest.raises(SystemExit, match="already guidance-distilled"):
        distillation_student(student, 4.0)


# ------------------------------------------------------------------------------ sampling with it
def record_calls(transformer, monkeypatch) -> list[dict]:
    """Each transformer call's batch size, class labels, guidance and logits, in order."""
    calls, original = [], transformer.forward

    def spy(input_ids, class_labels=None, guidance=None):
        logits = original(input_ids, class_labels=class_labels, guidance=guidance)
        calls.append({"inputs": input_ids.clone(), "labels": class_labels, "guidance": guidance, "logits": logits})
        return logits

    monkeypatch.setattr(transformer, "forward", spy)
    return calls


@pytest.fixture
def distilled(tmp_path):
    folder = build_token_prior(tmp_path / "distilled", guidance_embedding=True, guidance_max=5.0)
    prior = genlab.load_prior(folder, device="cpu")
    with torch.no_grad():  # a trained guidance embedding: the scale changes the logits
        prior.transformer.guidance_embedder.linear_2.weight.normal_(std=0.5)
    return prior


def test_a_distilled_prior_samples_guided_in_one_call_a_step(distilled, monkeypatch):
    assert distilled.distilled is None and distilled.distilled_for(3.0) is distilled.transformer
    calls = record_calls(distilled.transformer, monkeypatch)
    run = distilled.sample(seed=0, steps=5, class_label="b", guidance_scale=3.0, batch=2)
    assert len(calls) == 5 and all(len(call["inputs"]) == 2 for call in calls)
    assert all(call["labels"].tolist() == [1, 1] and call["guidance"].tolist() == [3.0, 3.0] for call in calls)
    tokens = torch.from_numpy(run.tokens).long()
    assert tokens.shape == (2, PRIOR_GRID, PRIOR_GRID) and ((tokens >= 0) & (tokens < K)).all()
    with torch.no_grad():  # the logits it sampled from are the distilled network's at w = 3
        direct = distilled.transformer(calls[2]["inputs"], class_labels=torch.tensor([1, 1]),
                                       guidance=torch.full((2,), 3.0))
    torch.testing.assert_close(calls[2]["logits"], direct)


def test_outside_the_distilled_scales_it_guides_in_two_calls(distilled, monkeypatch):
    """w above guidance_max (or below 1): plain CFG of the student's own w = 1 and unconditional calls."""
    calls = record_calls(distilled.transformer, monkeypatch)
    distilled.sample(seed=0, steps=3, class_label="a", guidance_scale=7.0)
    assert len(calls) == 3 and all(call["labels"].tolist() == [0, NULL] and call["guidance"] is None for call in calls)
    calls.clear()
    distilled.sample(seed=0, steps=3, class_label="a", guidance_scale=1.0)  # no guidance: the conditional
    distilled.sample(seed=0, steps=3)  # no class: the unconditional
    assert [call["labels"].tolist() for call in calls] == [[0]] * 3 + [[NULL]] * 3
    assert all(call["guidance"] is None for call in calls)


def test_a_distilled_prior_is_seeded_and_its_scale_matters(distilled, monkeypatch):
    calls = record_calls(distilled.transformer, monkeypatch)
    first = distilled.sample(seed=4, steps=4, class_label="c", guidance_scale=2.0).tokens
    assert (first == distilled.sample(seed=4, steps=4, class_label="c", guidance_scale=2.0).tokens).all()
    distilled.sample(seed=4, steps=4, class_label="c", guidance_scale=4.5)
    assert (calls[0]["logits"] - calls[8]["logits"]).abs().max() > 1e-3  # the first step's logits at w = 2, 4.5


# ------------------------------------------------------------------------------ the distillation loss
def test_the_loss_is_zero_where_the_student_already_is_the_teacher(teacher_dir):
    """A fresh student is the teacher's conditional network: on dropped labels (the teacher's unconditional
    target) the KL is 0; on labelled rows the target is guided (w > 1), so it is not."""
    teacher = load_network(teacher_dir)
    student = distillation_student(teacher, 8.0)
    tokens, _ = class_patterns()
    with torch.no_grad():
        dropped = guidance_distillation_loss(student, teacher, tokens, torch.full((8,), NULL),
                                             torch.Generator().manual_seed(0))
        labelled = guidance_distillation_loss(student, teacher, tokens, torch.tensor([0, 1, 2] * 2 + [0, 1]),
                                              torch.Generator().manual_seed(0))
    assert abs(float(dropped)) < 1e-5 and float(labelled) > 1e-2


def test_distillation_brings_the_student_to_the_teachers_guided_logits(teacher_dir):
    teacher = load_network(teacher_dir)
    student = distillation_student(teacher, 6.0)
    tokens, labels = class_patterns()
    inputs = tokens.clone()
    inputs[:, 4:] = K  # the lower half masked

    def gap(scale: float) -> float:  # KL(guided teacher || student at w) on the fixed masked half, nats a token
        with torch.no_grad():
            cond, uncond = teacher(inputs, class_labels=labels), teacher(inputs, class_labels=torch.full((8,), NULL))
            weight = torch.where(labels == NULL, 0.0, scale)[:, None, None, None]
            target = (uncond + weight * (cond - uncond)).log_softmax(1)
            mine = student(inputs, class_labels=labels, guidance=torch.full((8,), scale)).log_softmax(1)
            return float((target.exp() * (target - mine)).sum(1)[inputs == K].mean())

    before = gap(4.0)
    optimise(student, lambda generator: guidance_distillation_loss(student, teacher, tokens, labels, generator,
                                                                    guidance_max=6.0), steps=80, lr=3e-3)
    assert before > 0.01 and gap(4.0) < 0.4 * before


# ------------------------------------------- the prior beside its distilled copy (what --distill-from writes)
def add_distilled(folder, guidance_max: float = 5.0, **overrides):
    """Write transformer_distilled/: a guidance-distilled copy of folder's network (a trained-looking
    guidance embedding), listed in model_index.json."""

    teacher = load_network(folder / "transformer")
    student = type(teacher).from_config(teacher.config, guidance_embedding=True, guidance_max=guidance_max, **overrides)
    if not overrides:
        student.load_state_dict(teacher.teacher_state_dict(), strict=False)
    torch.manual_seed(3)
    with torch.no_grad():
        student.guidance_embedder.linear_2.weight.normal_(std=0.5)
    student.save_pretrained(folder / "transformer_distilled")
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer_distilled"] = ["genlab", type(student).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def build_prior(folder, kind: str):
    """A tiny prior pipeline folder (conftest's build_token_prior) whose transformer/ is a network of this kind."""

    build_token_prior(folder)
    if kind == "unet":
        shutil.rmtree(folder / "transformer")
        tiny_network("unet").save_pretrained(folder / "transformer")
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "transformer": ["genlab", "MaskedTokenUNet"]}))
    return folder


@pytest.fixture(params=sorted(NETWORKS))
def paired(tmp_path, request):
    return genlab.load_prior(add_distilled(build_prior(tmp_path / "paired", request.param)), device="cpu")


def test_guided_sampling_calls_the_distilled_copy_once_a_step(paired, monkeypatch):
    prior_calls = record_calls(paired.transformer, monkeypatch)
    distilled_calls = record_calls(paired.distilled, monkeypatch)
    paired.sample(seed=0, steps=4, class_label="a", guidance_scale=4.0)
    assert not prior_calls and len(distilled_calls) == 4
    assert paired.distilled_for(4.0) is paired.distilled and paired.distilled_for(9.0) is None
    assert all(call["guidance"].tolist() == [4.0] and call["labels"].tolist() == [0] for call in distilled_calls)


def test_the_code_length_and_other_scales_keep_to_the_prior_itself(paired, monkeypatch):
    from PIL import Image

    prior_calls = record_calls(paired.transformer, monkeypatch)
    distilled_calls = record_calls(paired.distilled, monkeypatch)
    image = Image.new("RGB", (2 * PRIOR_GRID, 2 * PRIOR_GRID), (200, 40, 40))
    bits = paired.bits_per_pixel(image)
    assert bits > 0 and prior_calls and not distilled_calls
    prior_calls.clear()
    paired.sample(seed=0, steps=3, class_label="a", guidance_scale=7.0)  # above guidance_max: CFG of the prior
    paired.sample(seed=0, steps=3, class_label="a", guidance_scale=1.0)  # unguided
    assert not distilled_calls and [len(call["inputs"]) for call in prior_calls] == [2] * 3 + [1] * 3


@pytest.mark.parametrize("overrides, message", [
    ({"num_classes": 5}, "is no guidance-distilled copy"),
    ({"hidden_size": 16}, None),  # another width may be distilled: the prior's grid, codes and classes are what count
])
def test_a_distilled_copy_must_match_the_prior(tmp_path, overrides, message):
    folder = add_distilled(build_token_prior(tmp_path / "p"), **overrides)
    if message is None:
        assert genlab.load_prior(folder, device="cpu").distilled.config.hidden_size == 16
        return
    with pytest.raises(genlab.loading.loaders.ModelLoadError, match=message):
        genlab.load_prior(folder, device="cpu")


def test_an_undistilled_transformer_in_the_distilled_folder_is_refused(tmp_path):
    folder = build_token_prior(tmp_path / "p")
    MaskedTokenTransformer.from_pretrained(folder / "transformer").save_pretrained(folder / "transformer_distilled")
    with pytest.raises(genlab.loading.loaders.ModelLoadError, match="guidance-distilled: False"):
        genlab.load_prior(folder, device="cpu")


def test_a_distilled_copy_of_another_kind_of_network_is_refused(tmp_path):
    """A UNet prior's distilled copy is a UNet: a distilled transformer beside it is a load error."""
    unet, transformer = build_prior(tmp_path / "unet", "unet"), add_distilled(build_prior(tmp_path / "t", "transformer"))
    shutil.copytree(transformer / "transformer_distilled", unet / "transformer_distilled")
    with pytest.raises(genlab.loading.loaders.ModelLoadError, match="holds a MaskedTokenTransformer; the guidance-distilled "
                                                            "copy of a MaskedTokenUNet is a MaskedTokenUNet"):
        genlab.load_prior(unet, device="cpu")
