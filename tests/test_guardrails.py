"""Guardrails on tiny random models written in their real on-disk formats.

The fixtures write a ``guardrail/`` folder the way the released checkpoints lay it out: keyword files and a
minimal NLTK data tree for the blocklist, a ``save_pretrained`` LlamaGuard-architecture model and PEFT LoRA
adapters for Aegis, a ``save_pretrained`` SigLIP model and ``safety_filter.pt`` for the video filter, and a
legacy-format ``Resnet50_Final.pth`` (``module.`` prefix, landmark head included) for RetinaFace. Weights are
set by hand where a test needs a known decision.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_cli.errors import CheckpointError
from cosmos_plugins.predict1 import guardrails as G
from cosmos_plugins.predict1 import retinaface as R
from cosmos_plugins.predict1.blocklist import Blocklist, partial_match, whole_word_match
from cosmos_plugins.predict1.safety_filter import SIGLIP_REPO, SafetyClassifier, resolve_hf_folder

FRAME_H, FRAME_W = 64, 128
SIGLIP_HIDDEN = 16
AEGIS_VOCAB = ["<unk>", "<s>", "</s>", "safe", "unsafe", "O1", "O10", "[INST]", "[/INST]", "User:"]


# --- fixture writers ---------------------------------------------------------------------------------------------


def _write_blocklist(folder: Path) -> None:
    for name, words in {"custom": ["snarfwidget", "grimwug", "blorp"], "whitelist": ["blorp", "snarfw1dget"],
                        "exact_match": ["zorbulon", "quixotrap machine"]}.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "words.txt").write_text("\n".join(words) + "\n\n")
    # Minimal NLTK data: punkt_tab (word_tokenize) and a WordNet that knows a few nouns and one verb exception.
    punkt = folder / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    punkt.mkdir(parents=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (punkt / name).write_text("")
    wordnet = folder / "nltk_data" / "corpora" / "wordnet"
    wordnet.mkdir(parents=True)
    (wordnet / "lexnames").write_text("00\tadj.all\t3\n01\tadj.pert\t3\n02\tadv.all\t4\n03\tnoun.Tops\t1\n")
    for pos in ("noun", "verb", "adj", "adv"):
        (wordnet / f"index.{pos}").write_text("")
        (wordnet / f"{pos}.exc").write_text("")
        (wordnet / f"data.{pos}").write_text("")
    (wordnet / "index.noun").write_text("cat n 1 0 1 0 00000001\ngrimwug n 1 0 1 0 00000002\ncheck n 1 0 1 0 00000003\n")
    (wordnet / "data.adj").write_text("  1 WordNet 3.0 Copyright 2006 by Princeton University.\n")
    (wordnet / "index.sense").write_text("")


def _aegis_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(AEGIS_VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _write_aegis(folder: Path, *, adapter_says_unsafe: bool, cache_layout: bool) -> None:
    """A LlamaGuard-architecture model that always answers "safe", plus a LoRA adapter that either does nothing
    or turns every answer into "unsafe" (so a block proves the adapter was applied)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(AEGIS_VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # residual stream = embedding with a large first feature; "safe" reads that feature
        model.model.embed_tokens.weight[:, 0] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[AEGIS_VOCAB.index("safe"), 0] = 5.0
    if cache_layout:  # the HF cache layout the original's cache_dir produced
        base = folder / "models--meta-llama--LlamaGuard-7b" / "snapshots" / "0123abcd"
        (folder / "models--meta-llama--LlamaGuard-7b" / "refs").mkdir(parents=True)
        (folder / "models--meta-llama--LlamaGuard-7b" / "refs" / "main").write_text("0123abcd")
    else:
        base = folder / G.LLAMAGUARD_REPO
    model.save_pretrained(base)
    _aegis_tokenizer().save_pretrained(base)

    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj", "lm_head"]))
    lm_head = peft_model.base_model.model.lm_head
    with torch.no_grad():
        lm_head.lora_A["default"].weight.zero_()
        lm_head.lora_B["default"].weight.zero_()
        if adapter_says_unsafe:
            lm_head.lora_A["default"].weight[:, 0] = 1.0
            lm_head.lora_B["default"].weight[AEGIS_VOCAB.index("unsafe"), :] = 20.0
    peft_model.peft_config["default"].base_model_name_or_path = G.LLAMAGUARD_REPO
    peft_model.save_pretrained(folder / G.AEGIS_ADAPTER_REPO, save_embedding_layers=False)


def _write_siglip(folder: Path) -> None:
    import transformers
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(1)
    config = SiglipConfig(
        text_config={"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 8},
        vision_config={"hidden_size": SIGLIP_HIDDEN, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
    )
    target = folder / SIGLIP_REPO
    SiglipModel(config).save_pretrained(target)  # the full model, as published; only the vision tower is loaded
    processor_cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    processor_cls(size={"height": 32, "width": 32}).save_pretrained(target)


def _write_safety_filter(folder: Path, unsafe_class: int | None) -> None:
    torch.manual_seed(2)
    classifier = SafetyClassifier(SIGLIP_HIDDEN).eval()
    with torch.no_grad():
        classifier.network.layers[6].bias[unsafe_class or 0] = 100.0  # one class wins on every frame
    torch.save({"model": classifier.state_dict()}, folder / "safety_filter.pt")


def _face_box_loc() -> float:
    """The box offset that turns a 256 px level-3 prior into a 24 px box on a 64 x 128 frame."""
    return math.log(24 / 256) / 0.2  # exp(0.2 * loc) * 256 px = 24 px, both axes


def _write_retinaface(folder: Path, *, full_size: bool = False) -> dict[str, torch.Tensor]:
    """A RetinaFace state dict as the original ``Resnet50_Final.pth``: ``module.`` prefixes, landmark heads,
    legacy (non-zip) serialization. The small one fires on exactly one anchor kind: level 3, first size."""
    p = R.RetinaFaceParams() if full_size else R.RetinaFaceParams(stem_channels=8, blocks=(1, 1, 1, 1), out_channels=16)
    torch.manual_seed(3)
    net = R.RetinaFace(p).eval()
    if not full_size:
        with torch.no_grad():
            for level in range(3):
                cls_head, box_head = net.ClassHead[level].conv1x1, net.BboxHead[level].conv1x1
                cls_head.weight.zero_()
                box_head.weight.zero_()
                box_head.bias.zero_()
                cls_head.bias.copy_(torch.tensor([10.0, 0.0, 10.0, 0.0]))  # (anchor, [background, face])
            net.ClassHead[2].conv1x1.bias.copy_(torch.tensor([0.0, 10.0, 10.0, 0.0]))
            loc = _face_box_loc()
            net.BboxHead[2].conv1x1.bias.copy_(torch.tensor([0.0, 0.0, loc, loc, 0.0, 0.0, 0.0, 0.0]))
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    for level in range(3):
        state[f"module.LandmarkHead.{level}.conv1x1.weight"] = torch.randn(p.anchors * 10, p.out_channels, 1, 1)
        state[f"module.LandmarkHead.{level}.conv1x1.bias"] = torch.zeros(p.anchors * 10)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / R.WEIGHTS_FILE, _use_new_zipfile_serialization=False)
    return net.state_dict()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    """``checkpoints/<model>/guardrail`` with a safe Aegis adapter and a safe video classifier, plus variant folders."""
    root = tmp_path_factory.mktemp("checkpoints")
    g = root / "Cosmos-Predict1-7B-Video2World" / "guardrail"
    _write_blocklist(g / "blocklist")
    _write_aegis(g / "aegis", adapter_says_unsafe=False, cache_layout=False)
    (g / "video_content_safety_filter").mkdir(parents=True)
    _write_siglip(g / "video_content_safety_filter")
    _write_safety_filter(g / "video_content_safety_filter", unsafe_class=None)
    _write_retinaface(g / "face_blur_filter")
    # Variants: an Aegis that says unsafe (HF cache layout), a video classifier that says "Violence".
    _write_aegis(root / "aegis_unsafe", adapter_says_unsafe=True, cache_layout=True)
    (root / "vcsf_unsafe").mkdir()
    _write_siglip(root / "vcsf_unsafe")
    _write_safety_filter(root / "vcsf_unsafe", unsafe_class=2)
    return root


@pytest.fixture(scope="session")
def guardrail_dir(checkpoints) -> Path:
    return G.find_guardrail_dir(checkpoints, "Cosmos-Predict1-7B-Video2World")


@pytest.fixture(scope="session")
def text_guardrail(guardrail_dir) -> G.TextGuardrail:
    return G.TextGuardrail.load(guardrail_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def video_guardrail(guardrail_dir) -> G.VideoGuardrail:
    return G.VideoGuardrail.load(guardrail_dir, device="cpu")


def _frames(t: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (t, FRAME_H, FRAME_W, 3), dtype=np.uint8)


# --- folder discovery --------------------------------------------------------------------------------------------


def test_guardrail_dir_is_the_models_own_and_never_searched(tmp_path, guardrail_dir):
    assert guardrail_dir.parts[-2:] == ("Cosmos-Predict1-7B-Video2World", "guardrail")
    (tmp_path / "some-other-model" / "guardrail").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="guardrail folder not found"):
        G.find_guardrail_dir(tmp_path, "Cosmos-Predict1-7B-Video2World")
    (tmp_path / "guardrail").mkdir()
    assert G.find_guardrail_dir(tmp_path, "Cosmos-Predict1-7B-Video2World") == tmp_path / "guardrail"


def test_hf_folder_resolves_plain_and_cache_layouts(tmp_path):
    plain = tmp_path / "a" / "org" / "name"
    plain.mkdir(parents=True)
    (plain / "config.json").write_text("{}")
    assert resolve_hf_folder(tmp_path / "a", "org/name") == plain
    cache = tmp_path / "b" / "models--org--name"
    for rev in ("old", "new"):
        (cache / "snapshots" / rev).mkdir(parents=True)
        (cache / "snapshots" / rev / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="org/name not found"):  # two snapshots, no ref: ambiguous
        resolve_hf_folder(tmp_path / "b", "org/name")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("new\n")
    assert resolve_hf_folder(tmp_path / "b", "org/name") == cache / "snapshots" / "new"


# --- text guardrail ----------------------------------------------------------------------------------------------


def test_text_guardrail_loads_through_the_real_loaders(text_guardrail):
    from peft import PeftModel

    assert isinstance(text_guardrail.aegis.model, PeftModel)
    assert text_guardrail.blocklist.exact_match == ["zorbulon", "quixotrap machine"]  # blank lines skipped


def test_harmless_prompt_passes(text_guardrail):
    verdict = text_guardrail.check("A cat walks along a sunny beach at dawn.")
    assert verdict == G.Verdict(True, G.TEXT_GUARDRAIL, "passed the blocklist and Aegis")


@pytest.mark.parametrize(("prompt", "reason"), [
    ("A snarfwidget on the beach", "blocklisted word: 'snarfwidget'"),
    ("A sn4rfwidget on the beach", "blocklisted word: 'sn4rfwidget'"),  # better-profanity's character variants
    ("Two grimwugs dance", "blocklisted word after lemmatization"),  # only the lemma is blocklisted
    ("The ZORBULON  rises", "exact-match blocklist phrase 'zorbulon'"),
    ("A quixotrap\n machine", "exact-match blocklist phrase 'quixotrap machine'"),
    ("", "the prompt is empty"),
])
def test_blocklisted_prompt_is_blocked(text_guardrail, prompt, reason):
    verdict = text_guardrail.check(prompt)
    assert not verdict.safe
    assert verdict.component == G.BLOCKLIST
    assert verdict.reason.startswith(reason)


@pytest.mark.parametrize("prompt", ["A blorp of light", "A snarfw1dget, whitelisted", "A star * shines",
                                    "Un café au bord de la mer"])
def test_whitelist_literal_star_and_non_ascii_pass_the_blocklist(text_guardrail, prompt):
    assert text_guardrail.blocklist.check(prompt)[0]


def test_exact_match_rules():
    assert whole_word_match("the zorbulons", ["zorbulon"]) is None  # whole words only
    assert whole_word_match("a zorbulon.", ["zorbulon"]).startswith("exact-match")
    assert partial_match("a big zorbulon here", "zorbulon") == "zorbulon"
    assert partial_match("a big zorbulan here", "zorbulon") is None  # the 0.4-letter tolerance is strict
    assert whole_word_match("x", ["", "  "]) is None  # blank phrases never match everything


def test_blocklist_needs_its_folders_and_nltk_data(tmp_path, guardrail_dir, monkeypatch):
    with pytest.raises(CheckpointError, match="custom"):
        Blocklist.load(tmp_path)
    import nltk

    for name in ("custom", "whitelist", "exact_match"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(nltk, "word_tokenize", lambda text: (_ for _ in ()).throw(LookupError("punkt_tab")))
    with pytest.raises(CheckpointError, match="NLTK data"):
        Blocklist.load(tmp_path)


def test_aegis_adapter_saying_unsafe_blocks(checkpoints, guardrail_dir):
    aegis = G.Aegis.load(checkpoints / "aegis_unsafe", device="cpu", dtype=torch.float32)
    guardrail = G.TextGuardrail(Blocklist.load(guardrail_dir / "blocklist"), aegis)
    verdict = guardrail.check("A cat walks along a sunny beach at dawn.")
    assert not verdict.safe and verdict.component == G.AEGIS
    assert "unsafe" in verdict.reason


def test_aegis_prompt_and_reasons():
    prompt = G.aegis_prompt("a red ball")
    assert prompt.startswith("[INST] Task: Check if there is unsafe content") and prompt.endswith("categories. [/INST]")
    assert "User: a red ball\n\n<END CONVERSATION>" in prompt
    codes = [c[0] for c in G.AEGIS_CATEGORIES]
    assert codes == ["O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8", "O10", "O11", "O12"]
    assert G.aegis_reason("unsafe\nO10") .startswith("harassment:")  # by code (the original indexed O10 as threat)
    assert G.aegis_reason("unsafe\nO1,O12").startswith("violence:")
    assert G.aegis_reason("unsafe") == "Aegis answered 'unsafe'"


def test_exception_inside_a_text_guardrail_blocks(text_guardrail, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert\nsecond line")

    monkeypatch.setattr(text_guardrail.aegis.model, "generate", boom)
    verdict = text_guardrail.check("A cat walks along a sunny beach at dawn.")
    assert verdict == G.Verdict(False, G.AEGIS, "RuntimeError: CUDA error: device-side assert")

    monkeypatch.setattr(text_guardrail.blocklist, "tokenize", lambda text: (_ for _ in ()).throw(LookupError("punkt")))
    assert text_guardrail.check("A cat") == G.Verdict(False, G.BLOCKLIST, "LookupError: punkt")


def test_missing_aegis_adapter_fails_at_load(tmp_path):
    with pytest.raises(CheckpointError, match="LlamaGuard-7b not found"):
        G.Aegis.load(tmp_path, device="cpu", dtype=torch.float32)


# --- video safety filter -----------------------------------------------------------------------------------------


def test_video_guardrail_loads_and_moves(video_guardrail):
    assert video_guardrail.to("cpu") is video_guardrail
    assert video_guardrail.safety_filter.encoder.config.hidden_size == SIGLIP_HIDDEN


def test_features_match_the_originals_one_frame_path(guardrail_dir, video_guardrail):
    """Batched vision-tower features equal the original's: full SiglipModel, one PIL image per call."""
    from PIL import Image
    from transformers import SiglipModel

    folder = guardrail_dir / "video_content_safety_filter" / SIGLIP_REPO
    full = SiglipModel.from_pretrained(folder).eval()
    frames = _frames(3)
    processor = video_guardrail.safety_filter.image_processor
    expected = []
    with torch.no_grad():
        for frame in frames:
            out = full.get_image_features(**processor(images=Image.fromarray(frame), return_tensors="pt"))
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
            expected.append(out / out.norm(dim=-1, keepdim=True))
    # unit-norm fp32 features of a 16-wide SigLIP, computed batched vs one frame at a time: reassociation only
    torch.testing.assert_close(video_guardrail.safety_filter.features(frames), torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_frames_are_classified_in_batches(video_guardrail, monkeypatch):
    calls = []
    handle = video_guardrail.safety_filter.encoder.register_forward_hook(
        lambda module, args, kwargs_or_out, *rest: calls.append(1))
    sizes = []
    original = video_guardrail.safety_filter.classifier.forward
    monkeypatch.setattr(video_guardrail.safety_filter.classifier, "forward", lambda x: sizes.append(len(x)) or original(x))
    monkeypatch.setattr(video_guardrail.safety_filter, "batch_size", 2)
    try:
        classes = video_guardrail.safety_filter.classify(_frames(5))
    finally:
        handle.remove()
    assert list(classes) == [0] * 5
    assert sizes == [2, 2, 1] and len(calls) == 3


def test_a_frame_classified_unsafe_blocks(checkpoints, video_guardrail):
    from cosmos_plugins.predict1.safety_filter import VideoSafetyFilter

    unsafe = G.VideoGuardrail(VideoSafetyFilter.load(checkpoints / "vcsf_unsafe", device="cpu"), video_guardrail.face_blur)
    verdict, frames = unsafe.check(_frames(3))
    assert verdict == G.Verdict(False, G.VIDEO_SAFETY, "frame 0 classified as Violence (3 of 3 frames unsafe)")
    assert frames.shape == (0, FRAME_H, FRAME_W, 3)


def test_one_unsafe_frame_is_enough(video_guardrail, monkeypatch):
    monkeypatch.setattr(video_guardrail.safety_filter, "classify", lambda frames: np.array([0, 0, 3, 0]))
    verdict, frames = video_guardrail.check(_frames(4))
    assert verdict == G.Verdict(False, G.VIDEO_SAFETY, "frame 2 classified as Drugs (1 of 4 frames unsafe)")
    assert len(frames) == 0


@pytest.mark.parametrize("target", ["encoder", "face_blur"])
def test_exception_inside_the_video_guardrail_blocks(video_guardrail, monkeypatch, target):
    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    if target == "encoder":
        monkeypatch.setattr(video_guardrail.safety_filter.encoder, "forward", boom)
        component = G.VIDEO_SAFETY
    else:
        monkeypatch.setattr(video_guardrail.face_blur, "detect", boom)
        component = G.FACE_BLUR
    verdict, frames = video_guardrail.check(_frames(2))
    assert verdict == G.Verdict(False, component, "RuntimeError: out of memory")
    assert len(frames) == 0


@pytest.mark.parametrize("frames", [np.zeros((2, 8, 8, 3), dtype=np.float32), [np.zeros((8, 8, 3), np.uint8)], None])
def test_bad_frames_block(video_guardrail, frames):
    verdict, out = video_guardrail.check(frames)
    assert not verdict.safe and verdict.reason.startswith("ValueError: expected (T, H, W, 3) uint8")
    assert len(out) == 0


def test_classifier_rejects_a_mismatched_file():
    state = SafetyClassifier(8, num_classes=3).state_dict()
    with pytest.raises(CheckpointError, match="3 classes"):
        SafetyClassifier.from_state_dict(state)


# --- RetinaFace --------------------------------------------------------------------------------------------------


def test_full_size_retinaface_has_the_original_keys_and_size(tmp_path):
    with torch.device("meta"):
        net = R.RetinaFace()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    # Names and shapes of Resnet50_Final.pth (torchvision ResNet-50 body, FPN, SSH, heads; biubug6 naming).
    assert shapes["body.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["body.layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["body.layer3.5.conv3.weight"] == (1024, 256, 1, 1)
    assert shapes["body.layer4.2.bn3.running_var"] == (2048,)
    assert shapes["fpn.output3.0.weight"] == (256, 2048, 1, 1)
    assert shapes["fpn.merge1.1.num_batches_tracked"] == ()
    assert shapes["ssh3.conv7x7_3.0.weight"] == (64, 64, 3, 3)
    assert shapes["ssh1.conv3X3.0.weight"] == (128, 256, 3, 3)
    assert shapes["ClassHead.0.conv1x1.weight"] == (4, 256, 1, 1)
    assert shapes["BboxHead.2.conv1x1.bias"] == (8,)
    assert not any(k.startswith("body.fc") for k in shapes)
    landmark = 3 * (20 * 256 + 20)
    assert sum(p.numel() for p in net.parameters()) + landmark == 27_293_600  # the published parameter count


def test_full_size_retinaface_loads_from_a_legacy_pth(tmp_path):
    written = _write_retinaface(tmp_path, full_size=True)
    net = R.load_retinaface(tmp_path / R.WEIGHTS_FILE)
    assert net.params == R.RetinaFaceParams()
    for key in ("body.layer4.2.conv3.weight", "ssh2.conv5X5_1.1.running_mean", "BboxHead.1.conv1x1.bias"):
        assert torch.equal(net.state_dict()[key], written[key])


def test_retinaface_rejects_a_file_with_missing_keys(tmp_path):
    state = _write_retinaface(tmp_path)
    del state["fpn.merge2.0.weight"]
    torch.save(state, tmp_path / R.WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="fpn.merge2.0.weight"):
        R.load_retinaface(tmp_path / R.WEIGHTS_FILE)


def test_prior_boxes_follow_the_original_order():
    height, width = 40, 72
    p = R.RetinaFaceParams()
    expected = []  # the original's loop: level, row, column, size
    for step, sizes in zip(p.steps, p.min_sizes, strict=True):
        for i in range(math.ceil(height / step)):
            for j in range(math.ceil(width / step)):
                for s in sizes:
                    expected.append([(j + 0.5) * step / width, (i + 0.5) * step / height, s / width, s / height])
    assert torch.equal(R.prior_boxes(height, width, p), torch.tensor(expected, dtype=torch.float32))


def test_decode_boxes_on_constructed_priors():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.1, 0.1]])
    loc = torch.tensor([[[1.0, -1.0, 0.0, math.log(2.0) / 0.2], [0.0, 0.0, 0.0, 0.0]]])
    boxes = R.decode_boxes(loc, priors, (0.1, 0.2))
    expected = torch.tensor([[[0.42, 0.06, 0.62, 0.86], [0.2, 0.7, 0.3, 0.8]]])
    torch.testing.assert_close(boxes, expected)


def test_nms_and_filtering_on_constructed_scores():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.95, 0.8, 0.5], dtype=np.float32)
    assert R.nms(boxes, scores, 0.4) == [1, 2]  # 0 and 3 overlap 1 with IoU 100/142 > 0.4
    assert R.nms(boxes, scores, 0.75) == [1, 0, 2]  # IoU 0.70 is kept at 0.75; 3 duplicates 0 (IoU 1)
    kept = R.filter_detections(boxes, np.array([0.7, 0.71, 0.99, 0.9], dtype=np.float32))
    np.testing.assert_array_equal(kept, boxes[[2, 3]])  # 0.7 itself is below the threshold; 1 overlaps 3
    assert len(R.filter_detections(boxes, np.ones(4, np.float32) * 0.9, keep_top_k=1)) == 1


def test_pixelate_boxes_changes_exactly_the_boxes():
    frame = _frames(1)[0]
    out = frame.copy()
    boxes = np.array([[10.7, 5.2, 40.9, 30.0],  # 30 x 24 after truncation
                      [-9.5, 40.0, 15.0, 64.0],  # clipped at the left edge
                      [60.0, 0.0, 79.0, 40.0],  # 19 px wide: too small, skipped
                      [200.0, 0.0, 230.0, 30.0]], dtype=np.float32)  # outside the frame
    assert R.pixelate_boxes(out, boxes) == 2
    changed = np.any(out != frame, axis=-1)
    mask = np.zeros_like(changed)
    mask[5:30, 10:40] = True
    mask[40:64, 0:15] = True
    assert not changed[~mask].any()
    np.testing.assert_array_equal(out[5:30, 10:40], R.pixelate(frame[5:30, 10:40]))
    assert len(np.unique(out[5:30, 10:40].reshape(-1, 3), axis=0)) <= 25  # 5 x 5 blocks


def test_face_pixelation_changes_exactly_the_detected_boxes(video_guardrail):
    frames = _frames(3)
    detections = video_guardrail.face_blur.detect(frames)
    expected_boxes = np.array([[32 * j + 4, 32 * i + 4, 32 * j + 28, 32 * i + 28] for i in range(2) for j in range(4)],
                              dtype=np.float32)
    for boxes in detections:  # the eight level-3 anchors, shrunk to 24 px, none suppressed
        order = np.lexsort((boxes[:, 0], boxes[:, 1]))
        # boxes in pixels, decoded in fp32 from anchors and offsets near 0..128: 1e-3 px is ~1000 fp32 ulps
        np.testing.assert_allclose(boxes[order], expected_boxes, atol=1e-3)

    verdict, out = video_guardrail.check(frames)
    assert verdict.safe and verdict.component == G.VIDEO_GUARDRAIL and "24 face boxes pixelated" in verdict.reason
    for frame, result, boxes in zip(frames, out, detections, strict=True):
        expected = frame.copy()
        R.pixelate_boxes(expected, boxes)
        np.testing.assert_array_equal(result, expected)
        inside = np.zeros(frame.shape[:2], dtype=bool)
        for x1, y1, x2, y2 in boxes.astype(int):
            inside[y1:y2, x1:x2] = True
        np.testing.assert_array_equal(result[~inside], frame[~inside])
    assert not np.array_equal(out, frames)
