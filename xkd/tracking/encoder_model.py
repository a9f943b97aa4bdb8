"""The registered `xkd-encoder` as an MLflow pyfunc model. Models-from-code: MLflow stores this file as the
model and the encoder bundle's safetensors + config.json as its artifact `bundle`; nothing is pickled.

    encoder = mlflow.pyfunc.load_model("models:/xkd-encoder@champion")
    out = encoder.predict({"video": video, "audio": audio})  # float32 [B,3,T,H,W] and [B,1,80,T] (the signature)
    out["video"], out["audio"]                                # [B, D] embeddings

Inputs are the normalised views the evaluation feeds the encoders (`xkd.evaluation.views.EvalClips` makes them
from a clip cache; `components.embed` from media files), at the encoder's input size (the signature's shapes).
The embedding is the one every evaluation uses: the mean of the patch tokens after the final LayerNorm
(`Encoder.features`). The role is the one checkpoint selection chose (model_config `role`), or
`params={"role": "teacher"}` per call. Loading needs this project installed (the `model` package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

MODALITIES = ("video", "audio")
BATCH = 8  # views per forward pass: bounded memory whatever batch a caller sends


class XKDEncoder(PythonModel):
    def load_context(self, context):
        self.bundle = Path(context.artifacts["bundle"])
        self.default_role = (context.model_config or {}).get("role", "student")
        self.encoders = {}

    def _encoder(self, modality, role):
        from model.bundle import load_encoder  # verifies shapes, finite values and the export digest

        if (modality, role) not in self.encoders:
            self.encoders[modality, role] = load_encoder(self.bundle / f"{modality}_{role}.safetensors").eval()
        return self.encoders[modality, role]

    def predict(self, context, model_input, params=None):
        role = (params or {}).get("role") or self.default_role
        out = {}
        for modality in MODALITIES:
            views = model_input.get(modality) if isinstance(model_input, dict) else None
            if views is None:
                continue
            x = torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32))
            encoder = self._encoder(modality, role)
            with torch.no_grad():
                parts = [encoder.features(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
            out[modality] = torch.cat(parts).numpy() if parts else np.zeros((0, encoder.cfg.width), np.float32)
        return out


set_model(XKDEncoder())
