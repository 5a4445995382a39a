"""The trained translator as an MLflow pyfunc model, defined in code ("models from code").

Why from code: MLflow otherwise cloudpickles the ``PythonModel`` instance, and loading a pickle
runs arbitrary code. Here MLflow stores this file's source; loading runs it (it only defines a
class) and builds the model from the logged artifacts: ``model.safetensors`` (read by safetensors),
``config.yaml`` (``yaml.safe_load``) and the two tokenizer JSON files. Nothing is unpickled.

``predict`` takes a list of sentences, a string, a pandas Series or a DataFrame (column ``text``,
else the first column) and returns the translations as a list of strings, exactly as
``attntune.model.checkpoint.translate`` does for the same checkpoint. ``params={"beam_size": 4}``
switches to beam search; ``model_config={"device": "cuda"}`` at load time moves it to a GPU.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

ARTIFACT_FILES = {
    "weights": "model.safetensors",
    "config": "config.yaml",
    "src_tokenizer": "src_tokenizer.json",
    "tgt_tokenizer": "tgt_tokenizer.json",
}


def _checkpoint_folder(artifacts: dict[str, str]) -> tuple[Path, str | None]:
    """The folder holding the four files under their checkpoint names (a temp copy if needed)."""
    paths = {k: Path(artifacts[k]) for k in ARTIFACT_FILES}
    parents = {p.parent for p in paths.values()}
    if len(parents) == 1 and all(paths[k].name == name for k, name in ARTIFACT_FILES.items()):
        return parents.pop(), None
    tmp = tempfile.mkdtemp(prefix="attntune-pyfunc-")
    for k, name in ARTIFACT_FILES.items():
        shutil.copyfile(paths[k], Path(tmp) / name)
    return Path(tmp), tmp


def _sentences(model_input: Any) -> list[str]:
    """Sentences from the inputs pyfunc callers commonly pass."""
    if isinstance(model_input, str):
        return [model_input]
    try:
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            col = "text" if "text" in model_input.columns else model_input.columns[0]
            return [str(x) for x in model_input[col].tolist()]
        if isinstance(model_input, pd.Series):
            return [str(x) for x in model_input.tolist()]
    except ImportError:  # pragma: no cover - pandas ships with mlflow
        pass
    if hasattr(model_input, "tolist"):
        model_input = model_input.tolist()
    out = []
    for x in model_input:
        if isinstance(x, list | tuple) and len(x) == 1:
            x = x[0]
        if isinstance(x, dict):
            x = x.get("text", next(iter(x.values()), ""))
        out.append(str(x))
    return out


class AttntuneTranslator(PythonModel):
    """Greedy (or beam) translation with an attntune checkpoint."""

    # predict() accepts str, list, Series and DataFrame and takes params (beam_size, max_len); the
    # logged signature describes that. MLflow's type-hint validation would force one input type and
    # drop the params schema, so it is switched off (which also silences its "add type hints" advice).
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from attntune.model.checkpoint import load_checkpoint  # torch: when MLflow loads the model

        config = dict(getattr(context, "model_config", None) or {})
        folder, tmp = _checkpoint_folder(context.artifacts)
        try:
            self.model, self.run_config, self.src_tok, self.tgt_tok = load_checkpoint(
                folder, device=config.get("device", "cpu")
            )
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        self.beam_size = int(config.get("beam_size", 1))

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate by them
        """Translations of ``model_input`` (list of str, str, Series or DataFrame), in order."""
        from attntune.model.checkpoint import translate  # torch: when MLflow loads the model

        params = params or {}
        beam = int(params.get("beam_size") or self.beam_size)
        max_len = params.get("max_len")
        return translate(
            self.model,
            self.src_tok,
            self.tgt_tok,
            _sentences(model_input),
            max_len=int(max_len) if max_len else None,
            beam_size=beam,
        )


mlflow.models.set_model(AttntuneTranslator())
