"""Guardrails: the text guardrail (blocklist + Aegis) and the video guardrail (safety filter + face blur).

Two layouts on disk, ``<guardrail>`` being the folder :func:`find_guardrail_dir` returns:

* today's (the original's download scripts since April 2025, and every later Cosmos stack):
  ``<checkpoint_dir>/nvidia/Cosmos-Guardrail1`` holds blocklist/, face_blur_filter/ and
  video_content_safety_filter/ (SigLIP as ``models--google--siglip-so400m-patch14-384/snapshots/<rev>/``);
  LlamaGuard-7b and the Aegis adapter sit beside it as ``<checkpoint_dir>/meta-llama/LlamaGuard-7b/`` and
  ``<checkpoint_dir>/nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0/``.
* March 2025's: ``<checkpoint_dir>/<model dir>/guardrail``, with LlamaGuard-7b and the adapter under aegis/.

Within ``<guardrail>``::

    blocklist/{custom,whitelist,exact_match}/*, blocklist/nltk_data/        (see blocklist.py)
    aegis/meta-llama/LlamaGuard-7b/                                         base model, `transformers` folder
    aegis/nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0/          PEFT adapter folder
        (either may instead be in the HF cache layout the original used: aegis/models--<org>--<name>/snapshots/<rev>/;
        in today's layout the two folders are the checkpoint folder's own, see :func:`aegis_folder`)
    video_content_safety_filter/safety_filter.pt + the SigLIP folder       (see safety_filter.py)
    face_blur_filter/Resnet50_Final.pth                                     (see retinaface.py)

Decisions follow the original (spec section 9): the text guardrail runs the blocklist then Aegis
(LlamaGuard-7b with the Aegis adapter, greedy, at most 100 new tokens; unsafe if the answer contains
"unsafe", and, unlike the original, also when it does not start with "safe": see :func:`aegis_verdict`); the video guardrail classifies every frame and blocks on any unsafe class, then pixelates faces.
Unlike the original, they fail closed: any exception inside a check is a block whose reason names it.
A blocked video comes back as an empty array, so nothing unsafe can be written by mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cosmos_cli.errors import CheckpointError, MissingDependencyError

from .blocklist import Blocklist
from .retinaface import FaceBlur
from .safety_filter import CLASS_NAMES, VideoSafetyFilter, resolve_hf_folder

BLOCKLIST, AEGIS, TEXT_GUARDRAIL = "blocklist", "aegis", "text_guardrail"
VIDEO_SAFETY, FACE_BLUR, VIDEO_GUARDRAIL = "video_safety_filter", "face_blur", "video_guardrail"
LLAMAGUARD_REPO = "meta-llama/LlamaGuard-7b"
LLAMAGUARD3_REPO = "meta-llama/Llama-Guard-3-8B"  # what the original's later scripts fetch instead: not supported
AEGIS_ADAPTER_REPO = "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"
AEGIS_MAX_NEW_TOKENS = 100
LICENSE_WARNING = ("The safety guardrails are disabled. Under the NVIDIA Open Model License, bypassing or disabling "
                   "a model's safety guardrails terminates your rights to use the model; you are responsible for "
                   "what you generate.")


@dataclass(frozen=True)
class Verdict:
    """Whether an input may pass, which component decided, and why (one line)."""

    safe: bool
    component: str
    reason: str


def fail_closed(component: str, check: Callable[[], Verdict]) -> Verdict:
    """Run ``check``; an exception becomes a block naming its type and message (first line)."""
    try:
        return check()
    except Exception as e:  # every failure must block, whatever it is
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return Verdict(False, component, f"{type(e).__name__}: {message}"[:300])


GUARDRAIL_REPO_DIR = ("nvidia", "Cosmos-Guardrail1")  # today's layout: <checkpoint_dir>/nvidia/Cosmos-Guardrail1


def find_guardrail_dir(checkpoint_dir: Path, model_dir: str) -> Path:
    """The first of ``<checkpoint_dir>/<model_dir>/guardrail`` (March 2025's layout),
    ``<checkpoint_dir>/nvidia/Cosmos-Guardrail1`` (today's) and ``<checkpoint_dir>/guardrail`` that exists; never a
    recursive search (the original took the first ``guardrail`` folder anywhere below, in file-system order:
    pitfall 9)."""
    root = Path(checkpoint_dir)
    candidates = [root / model_dir / "guardrail", root.joinpath(*GUARDRAIL_REPO_DIR), root / "guardrail"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CheckpointError(f"guardrail folder not found: tried {', '.join(map(str, candidates))}",
                          hint="Run `cosmos download` for the model, or pass --disable-guardrail.")


def aegis_folder(guardrail_dir: Path) -> Path:
    """Where LlamaGuard-7b and the Aegis adapter live: ``<guardrail>/aegis``, or in today's layout (no aegis/ in
    ``.../nvidia/Cosmos-Guardrail1``) the checkpoint folder itself, which holds ``meta-llama/LlamaGuard-7b/``."""
    guardrail_dir = Path(guardrail_dir)
    inner = guardrail_dir / "aegis"
    if not inner.is_dir() and guardrail_dir.parts[-2:] == GUARDRAIL_REPO_DIR:
        root = guardrail_dir.parent.parent
        if not (root / LLAMAGUARD_REPO).is_dir() and (root / LLAMAGUARD3_REPO).is_dir():
            raise CheckpointError(
                f"{root} has {LLAMAGUARD3_REPO} (the original's text guard since April 2025) but not {LLAMAGUARD_REPO} "
                f"with the Aegis adapter, the text guard cosmos runs",
                hint="Run `cosmos download` for the model (it fetches LlamaGuard-7b and Aegis), or pass "
                     "--disable-guardrail.")
        return root
    return inner


def guardrail_problems(guardrail_dir: Path) -> list[str]:
    """What the loaders of :class:`TextGuardrail` and :class:`VideoGuardrail` would find missing in
    ``guardrail_dir`` (the layout in the module doc), checked without loading anything: one phrase per problem."""
    from .blocklist import KEYWORD_FOLDERS
    from .retinaface import WEIGHTS_FILE
    from .safety_filter import CLASSIFIER_FILE, SIGLIP_REPO

    g = Path(guardrail_dir)
    problems = [f"{g / 'blocklist' / name}/" for name in KEYWORD_FOLDERS if not (g / "blocklist" / name).is_dir()]
    for path in (g / "video_content_safety_filter" / CLASSIFIER_FILE, g / "face_blur_filter" / WEIGHTS_FILE):
        if not path.is_file():
            problems.append(str(path))
    for folder, repo, marker in ((g / "aegis", LLAMAGUARD_REPO, "config.json"),
                                 (g / "aegis", AEGIS_ADAPTER_REPO, "adapter_config.json"),
                                 (g / "video_content_safety_filter", SIGLIP_REPO, "config.json")):
        try:
            resolve_hf_folder(folder, repo, marker=marker)
        except CheckpointError:
            problems.append(f"{folder / repo}/{marker} (or its HF cache layout)")
    return problems


# --- Aegis ----------------------------------------------------------------------------------------------------

# The LlamaGuard policy the Aegis adapter was trained with: (code, category, blocked reason, instruction).
# The text is model input and must stay byte-identical to the original's (cosmos-predict1 aegis/categories.py).
AEGIS_CATEGORIES: tuple[tuple[str, str, str, str], ...] = (
    ("O1", "violence", "This prompt is blocked due to the presence of violent content.",
     "O1: Violence.\nShould not\n- Help people plan or engage in violence.\n- Encourage people to engage in violence.\n"
     "- Contain unpleasant vivid violent imagery or violent description that arouses discomfort in the reader.\n"
     "Can\n- Provide information on violence.\n"
     "- Discuss the topics of violence, and can discuss historical events involving violence.\n"),
    ("O2", "sexual", "This prompt is blocked due to the presence of sexual content.",
     "O2: Sexual.\nShould not\n"
     "- Engage in sexually explicit (i.e., erotic) conversations and should not encourage people to engage in sexual activities.\n"
     "- Engage or encourage sexual activity that is considered illegal.\nCan\n"
     "- Discuss topics related to sexuality and sexual education.\n- Provide general information regarding sexual activities.\n"
     "- Provide guidance on topics related to sexual health.\n"),
    ("O3", "criminal_planning", "This prompt is blocked due to the presence of criminal planning/confessions content.",
     "O3: Criminal Planning/Confessions.\nShould not\n"
     "- Help people plan or engage in criminal activities like theft, kidnapping, or financial crimes, especially when the "
     "person indicates that they may act on the information provided to them.\n"
     "- Encourage people to engage in criminal activities or condone criminal behavior.\n"
     "- Have a confession of crime that was committed or will be committed in future.\nCan\n"
     "- Help people understand how crimes are committed, provided that the response is not so detailed that it could be "
     "used to provide a roadmap for future crimes.\n"
     "- Help people understand how systems work that are used to prevent crimes, provided those descriptions do not "
     "provide detailed information on how to defeat those systems.\n"),
    ("O4", "weapons", "This prompt is blocked due to the presence of weapons content.",
     "O4: Guns and Illegal Weapons.\nShould not\n"
     "- Assist in the planning or execution of firearm or illegal weapons crimes, especially when the person indicates "
     "that they may act on the information provided to them.\n"
     "- Encourage people to engage in firearm or illegal weapons crimes or condone such behavior.\n"
     "- Assist or encourage people to execute or own other illegal weapons for example biological agents, or chemical "
     "weapons, including instructions on how to create or use them.\nCan\n"
     "- Discuss firearms and the arguments for and against firearm ownership.\n"),
    ("O5", "substance_abuse", "This prompt is blocked due to the presence of substance abuse content.",
     "O5: Controlled/Regulated Substances.\nShould not\n"
     "- Encourage or assist people in the trafficking, consumption, or use of regulated or controlled substances, "
     "including but not limited to illegal drugs, tobacco, alcohol, and cannabis.\n"
     "- Assist or encourage people to create such substances when it is illegal to do so.\nCan\n"
     "- Discuss the use of regulated or controlled substances, and can provide general information on those substances "
     "(ex: what their chemical composition is and what their effects are).\n"
     "- Provide information on how those substances are manufactured, provided that the information is not so detailed "
     "as to provide step-by-step instructions for their creation.\n"),
    ("O6", "suicide", "This prompt is blocked due to the presence of suicide and self harm content.",
     "O6: Suicide and Self Harm.\nShould not\n- Encourage people to harm themselves.\n"
     "- Romanticize or condone self-harm or suicide.\n- Provide information regarding the methods of suicide or self-harm.\n"
     "- Provide any information or advice, other than information regarding appropriate health resources, to people who "
     "express or imply that they wish to harm themselves.\n- Contain confessions or intent of self harm\nCan\n"
     "- Provide general information regarding self-harm and suicide (ex: statistics, the mental health challenges faced "
     "by those who take these actions).\nShould\n"
     "- Provide information regarding appropriate health resources to people who imply or express the desire to harm "
     "themselves.\n"),
    ("O7", "csam", "This prompt contains material related to Child Sexual Abuse",
     "O7: Sexual (minor).\nShould not\n"
     "- Assist, engage or encourage intention to engage in sexual activity with an underage/minor.\n"
     "- Discuss or plan sexual acts, sharing of media of sexual nature, personal information or intention to meet in "
     "person for sexual activity with a minor.\n"
     "- Should not include discussion where private information is shared with underage minors for purposes of acting on "
     "them and taking actions that are sexual in nature including meeting or sharing media.\n"
     "- Should not discuss child abuse or engage, encourage, assist in sexual grooming/trafficking of children.\nCan\n"
     "- Provide information about sex education for use in schools.\n"),
    ("O8", "hatred", "This prompt is blocked due to the presence of hate speech content.",
     "O8: Hate/Identity Hate.\nShould not\n"
     "- Express hateful, derogatory, or demeaning sentiments against people based on sensitive personal characteristics "
     "like their\nrace, color, ethnicity, religion, national origin, sexual orientation, gender, gender identity, or "
     "disability or caste.\n"
     "- Encourage discrimination against people based on those characteristics and should not use slurs or create "
     "insults based on those characteristics.\n"
     "- Should not discuss prejudice towards a group classified as protected according to the law of Germany, UK, USA or "
     "any other country.\n- Should not contain slurs.\n"
     "- Should not contain text that is distasteful, offensive, or hateful that causes others to feel grief, anger, or "
     "fear.\nCan\n- Provide information on discrimination.\n"
     "- Discuss the topics of discrimination, and can discuss historical events involving discrimination.\n"
     "- Discuss neutral statements referring to group identity and  contextualized hate speech (that talks about hate "
     "but does not incite hate).\n"),
    ("O10", "harassment", "This prompt is blocked due to the presence of harassment content.",
     "O10: Harassment.\nShould not\n"
     "- Have content that may be used to torment or annoy individuals in real life, or make harassment more likely to "
     "occur.\n- Engage in harassment, misconduct and unlawful discrimination\n"
     "- Single out an individual or marginalization and/or retaliation based on protected characteristics like Race, "
     "Color, Gender, Sex,\nSexual orientation, Gender identity, and gender expression, National origin, Ethnicity, "
     "Disability (including being regarded as disabled),\nReligion, Age (40+), Pregnancy (including pregnancy, "
     "childbirth or related medical conditions), Genetic information, Military or veteran status, Citizenship status, "
     "Political activity, or affiliation,\n- Taking or requesting statutorily protected leave Body characteristics.\n"
     "- Promise to give a benefit, or a threat to retaliate or take an adverse action based on a response to harassment "
     "and misconduct.\n- Bullying.\n"
     "- Being derogatory and humiliating toward an individual but not necessarily protected characteristics under law.\n"
     "- Making rude or insulting comments, demeaning, and objectifying terms toward an individual.\nCan\n"
     "- Discuss negative impacts of harassment and bullying based on protected characteristics like race, color, gender, "
     "sex, nationality, within a contextualized setting.\n"
     "- Provide information on protected characteristics or refers, cites material that describes what protected "
     "characteristics are.\n- Provide information or refer or cite material that informs what harassment is.\n"),
    ("O11", "threat", "This prompt is blocked due to the presence of threat content.",
     "O11: Threat.\nShould not\n- Discuss a communication of intent to inflict harm or loss on another person.\n"
     "- Should not contain discussion of intention of intimidation which  is a tactic used between conflicting parties to "
     "make the other timid or psychologically insecure for coercion or control.\n"
     "- Should not contain intention of knowingly putting another person in fear of bodily injury.\n"
     "- Should not assist or plan injury, physical or mental damage, act or instance of injury, or material  or any kind "
     "of loss to a person.\n"
     "- Should not contain threats that are forbidden by law as intent to obtain a monetary advantage or to compel a "
     "person to act against their will.\nCan\n- Provide information about threat is and the meaning of threat.\n"),
    ("O12", "profanity", "This prompt is blocked due to the presence of profanity content.",
     "O12: Profanity.\nShould not\n- Contain swear words, curse words, or other obscene or profane language\n"
     "- This includes offensive words used without any intention to act on them or without any explicit targeted "
     "recipient\n"),
)

_INDENT = "\n        "  # the original's prompt kept the indentation of its source code; the model saw it


def aegis_prompt(user_prompt: str) -> str:
    """The LlamaGuard moderation prompt, byte-identical to the original's."""
    categories = "".join(c[3] for c in AEGIS_CATEGORIES)
    return (
        "[INST] Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy "
        "with the below categories.\n"
        f"{_INDENT}<BEGIN UNSAFE CONTENT CATEGORIES>{_INDENT}{categories}{_INDENT}<END UNSAFE CONTENT CATEGORIES>\n"
        f"{_INDENT}<BEGIN CONVERSATION>\n{_INDENT}"
        f"User: {user_prompt}\n\n"
        f"<END CONVERSATION>\n{_INDENT}Provide your safety assessment for User in the above conversation:"
        f"{_INDENT}- First line must read 'safe' or 'unsafe'."
        f"{_INDENT}- If unsafe, a second line must include a comma-separated list of violated categories. [/INST]"
    )


def aegis_reason(answer: str) -> str:
    """Why Aegis said unsafe: the categories its second line names (``O1,O3``), or the answer itself."""
    lines = answer.strip().splitlines()
    by_code = {c[0]: c for c in AEGIS_CATEGORIES}
    named = [by_code[code.strip()] for code in (lines[1].split(",") if len(lines) > 1 else []) if code.strip() in by_code]
    if named:
        return "; ".join(f"{c[1]}: {c[2]}" for c in named)
    return f"Aegis answered {answer.strip()[:80]!r}"


def aegis_verdict(answer: str) -> Verdict:
    """Aegis's answer -> verdict, failing closed: "unsafe" anywhere blocks (the original's rule); the prompt passes
    only when the answer's first word is "safe", so an empty or garbled answer blocks (the original let it pass)."""
    if "unsafe" in answer.lower():
        return Verdict(False, AEGIS, aegis_reason(answer))
    words = answer.split()
    if words and words[0].strip(".,:;!").lower() == "safe":
        return Verdict(True, AEGIS, "safe")
    return Verdict(False, AEGIS, f"no safe/unsafe verdict in Aegis's answer ({answer.strip()[:80]!r}): blocked to be safe")


class Aegis:
    """LlamaGuard-7b with the Aegis PEFT adapter."""

    def __init__(self, model, tokenizer, device: str):
        self.model, self.tokenizer, self.device = model, tokenizer, str(device)

    @classmethod
    def load(cls, folder: Path, *, device: str, dtype: torch.dtype) -> Aegis:
        """From a folder holding the base model and the adapter (:func:`aegis_folder`; module doc for the layouts)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            from peft import PeftModel
        except ImportError as e:
            raise MissingDependencyError("the Aegis guardrail needs peft", hint="pip install peft") from e
        base_dir = resolve_hf_folder(folder, LLAMAGUARD_REPO)
        adapter_dir = resolve_hf_folder(folder, AEGIS_ADAPTER_REPO, marker="adapter_config.json")
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
        model = PeftModel.from_pretrained(base, adapter_dir, local_files_only=True)
        model.to(device=device, dtype=dtype).eval()
        return cls(model, tokenizer, device)

    def to(self, device: str) -> Aegis:
        self.model.to(device)
        self.device = str(device)
        return self

    @torch.inference_mode()
    def answer(self, prompt: str) -> str:
        inputs = self.tokenizer([aegis_prompt(prompt)], add_special_tokens=False, return_tensors="pt").to(self.device)
        eos = self.tokenizer.eos_token_id
        output = self.model.generate(**inputs, max_new_tokens=AEGIS_MAX_NEW_TOKENS, do_sample=False,
                                     pad_token_id=eos, eos_token_id=eos)
        return self.tokenizer.decode(output[0][inputs["input_ids"].shape[-1]:], skip_special_tokens=True)

    def check(self, prompt: str) -> Verdict:
        return aegis_verdict(self.answer(prompt))


# --- the two guardrails the pipeline runs ----------------------------------------------------------------------


class TextGuardrail:
    """Blocklist, then Aegis; the first block wins."""

    def __init__(self, blocklist: Blocklist, aegis: Aegis):
        self.blocklist, self.aegis = blocklist, aegis

    @classmethod
    def load(cls, guardrail_dir: Path, *, device: str, dtype: torch.dtype = torch.bfloat16) -> TextGuardrail:
        """From ``<guardrail>``; ``dtype`` is LlamaGuard's (the original: bfloat16)."""
        guardrail_dir = Path(guardrail_dir)
        return cls(Blocklist.load(guardrail_dir / "blocklist"),
                   Aegis.load(aegis_folder(guardrail_dir), device=device, dtype=dtype))

    def to(self, device: str) -> TextGuardrail:
        self.aegis.to(device)
        return self

    def check(self, prompt: str) -> Verdict:
        def run_blocklist() -> Verdict:
            safe, reason = self.blocklist.check(prompt)
            return Verdict(safe, BLOCKLIST, reason)

        for component, step in ((BLOCKLIST, run_blocklist), (AEGIS, lambda: self.aegis.check(prompt))):
            verdict = fail_closed(component, step)
            if not verdict.safe:
                return verdict
        return Verdict(True, TEXT_GUARDRAIL, "passed the blocklist and Aegis")


class VideoGuardrail:
    """Per-frame content safety classification, then face pixelation."""

    def __init__(self, safety_filter: VideoSafetyFilter, face_blur: FaceBlur):
        self.safety_filter, self.face_blur = safety_filter, face_blur

    @classmethod
    def load(cls, guardrail_dir: Path, *, device: str, dtype: torch.dtype = torch.float32) -> VideoGuardrail:
        """From ``<guardrail>``; ``dtype`` is SigLIP's (the original: float32). The classifier and RetinaFace
        always run in float32."""
        guardrail_dir = Path(guardrail_dir)
        return cls(VideoSafetyFilter.load(guardrail_dir / "video_content_safety_filter", device=device, dtype=dtype),
                   FaceBlur.load(guardrail_dir / "face_blur_filter", device=device))

    def to(self, device: str) -> VideoGuardrail:
        self.safety_filter.to(device)
        self.face_blur.to(device)
        return self

    def check(self, frames: np.ndarray) -> tuple[Verdict, np.ndarray]:
        """``(verdict, frames)``: the face-pixelated copy of ``(T, H, W, 3)`` uint8 RGB ``frames`` when safe,
        an empty ``(0, H, W, 3)`` array when blocked."""
        shape = tuple(getattr(frames, "shape", ()))
        blocked = np.zeros((0, *shape[1:]) if len(shape) == 4 else (0, 0, 0, 3), dtype=np.uint8)
        out: list[np.ndarray] = []

        def validate() -> Verdict:
            if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 \
                    or frames.dtype != np.uint8 or len(frames) == 0:
                raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {shape} {getattr(frames, 'dtype', type(frames))}")
            return Verdict(True, VIDEO_GUARDRAIL, "valid frames")

        def classify() -> Verdict:
            classes = self.safety_filter.classify(frames)
            unsafe = np.flatnonzero(classes != 0)
            if len(unsafe):
                first = int(unsafe[0])
                return Verdict(False, VIDEO_SAFETY, f"frame {first} classified as {CLASS_NAMES[int(classes[first])]} "
                                                    f"({len(unsafe)} of {len(frames)} frames unsafe)")
            return Verdict(True, VIDEO_SAFETY, "every frame safe")

        def blur() -> Verdict:
            pixelated, faces = self.face_blur.apply(frames)
            out.append(pixelated)
            return Verdict(True, FACE_BLUR, f"{faces} face boxes pixelated")

        for component, step in ((VIDEO_GUARDRAIL, validate), (VIDEO_SAFETY, classify), (FACE_BLUR, blur)):
            verdict = fail_closed(component, step)
            if not verdict.safe:
                return verdict, blocked
        return Verdict(True, VIDEO_GUARDRAIL, f"{len(frames)} frames safe; {verdict.reason}"), out[0]
