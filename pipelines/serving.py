"""The model MLflow serves: one registered pyfunc model, two tasks chosen by the ``task`` param.

    mlflow models serve -m models:/sslpipe-encoder@champion --env-manager local -p 5001
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"inputs": ["The [MASK] of the list is returned."], "params": {"task": "fill-mask", "top_k": 5}}'
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"inputs": ["A sentence.", "Another one."], "params": {"task": "embed"}}'

* ``fill-mask`` (default): for each text, the ``top_k`` tokens for its first mask token, with
  scores (softmax probabilities): ``[{"token": .., "token_str": .., "score": ..}, ...]``.
* ``embed``: for each text, the sentence embedding pooled as the model was trained (the directory's
  sentence-transformers Pooling config, then its Dense module when the run fitted a whitening map),
  L2-normalised.

This file is logged as the model's code ("models from code"): the served model needs mlflow,
torch and transformers, not sslpipe, and no Python object is pickled; the weights are the exported
directory's ``model.safetensors``, an artifact of the model.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


def _texts(model_input) -> list[str]:
    if hasattr(model_input, "columns"):                       # a DataFrame
        col = "text" if "text" in model_input.columns else model_input.columns[0]
        return [str(x) for x in model_input[col].tolist()]
    if isinstance(model_input, dict):
        return [str(x) for x in model_input.get("text", [])]
    if isinstance(model_input, str):
        return [model_input]
    return [str(x) for x in model_input]


class EncoderModel(PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        d = Path(context.artifacts["model"])
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(d)
        self.mlm = AutoModelForMaskedLM.from_pretrained(d).eval()
        pooling = d / "1_Pooling" / "config.json"
        self.pooling = json.loads(pooling.read_text()).get("pooling_mode", "mean") if pooling.is_file() else "mean"
        self.dense = self._dense(d)
        st = d / "sentence_bert_config.json"
        self.max_len = json.loads(st.read_text()).get("max_seq_length", 128) if st.is_file() else 128

    @staticmethod
    def _dense(d: Path) -> list:
        """(weight, bias) of each sentence-transformers Dense module after pooling (the whitening
        map of ``embedding.whiten``; identity activation, as sslpipe exports it)."""
        from safetensors.torch import load_file

        mods = d / "modules.json"
        out = []
        for m in json.loads(mods.read_text()) if mods.is_file() else []:
            if str(m.get("type", "")).endswith("Dense"):
                t = load_file(str(d / m.get("path", "") / "model.safetensors"))
                out.append((t["linear.weight"].float(), t["linear.bias"].float()))
        return out

    def predict(self, context, model_input, params=None):
        params = params or {}
        texts = _texts(model_input)
        if params.get("task", "fill-mask") == "embed":
            return self._embed(texts)
        return self._fill_mask(texts, int(params.get("top_k", 5)))

    def _fill_mask(self, texts: list[str], k: int) -> list[list[dict]]:
        out = []
        for text in texts:
            enc = self.tok(text, return_tensors="pt", truncation=True, max_length=self.max_len)
            where = (enc["input_ids"][0] == self.tok.mask_token_id).nonzero()
            if not len(where):
                out.append([])
                continue
            with self.torch.no_grad():
                logits = self.mlm(**enc).logits[0, int(where[0, 0])]       # (V,)
            p = logits.float().softmax(-1)
            top = p.topk(k)
            out.append([{"token": int(t), "token_str": self.tok.decode([int(t)]).strip(), "score": float(s)}
                        for s, t in zip(top.values.tolist(), top.indices.tolist())])
        return out

    def _embed(self, texts: list[str]) -> list[list[float]]:
        enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_len)
        with self.torch.no_grad():
            h = self.mlm.base_model(**enc).last_hidden_state                  # (B, T, H)
        mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = h[:, 0] if self.pooling == "cls" else (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        e = e.float()
        for w, b in self.dense:
            e = e @ w.T + b
        e = self.torch.nn.functional.normalize(e, dim=-1)
        return e.tolist()


mlflow.models.set_model(EncoderModel())
