"""ReferenceActor: a frozen copy of the initial policy that serves log-probs (DPO, KTO, KL terms).

No optimizer, no process group: each reference actor computes its own rows independently, so
several can run side by side in an ``ActorGroup``. The learner can instead hold the same frozen
copy itself (``reference_colocated``), which avoids shipping batches to another actor.
"""

from __future__ import annotations

from typing import Any

import torch

from actors import common, files, model_io


class ReferenceActor:
    """Frozen initial model. ``config`` is the learner's config dict (same keys and checks);
    the reference reads ``model_path``, ``dtype``, ``device``, ``score_head``, ``seed``,
    ``trust_remote_code`` and ``ship``
    (the model comes through Ray where shipping is active, ``actors.files``)."""

    def __init__(self, config: dict[str, Any]):
        from actors.learner import resolve_config

        self.cfg = resolve_config(config)
        cfg = self.cfg
        cfg["model_path"] = files.ensure_local(cfg["model_path"], cfg["ship"], timeout_s=cfg["timeout_s"])
        common.set_threads()
        self.device = common.local_device(self.cfg["device"])
        torch.manual_seed(int(self.cfg["seed"]))  # a new score head starts exactly as the learner's
        dtype = common.torch_dtype(self.cfg["dtype"])
        self.model = model_io.load_model(self.cfg["model_path"], self.cfg["score_head"], dtype,
                                         bool(self.cfg["trust_remote_code"])).to(self.device)
        self.model.eval().requires_grad_(False)

    def info(self) -> dict[str, Any]:
        """``{"params", "device", "dtype", "model_path"}`` (``model_path``: the folder it loaded)."""
        return {
            "params": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "dtype": self.cfg["dtype"],
            "model_path": self.cfg["model_path"],
        }

    @torch.no_grad()
    def compute(self, batch: dict[str, torch.Tensor], output: str = "token_logps") -> torch.Tensor:
        """The frozen model's ``output`` for ``batch`` (``[R, T]`` token log-probs or ``[R]`` scores), CPU float32."""
        return model_io.policy_output(self.model, common.to_device(batch, self.device), output).float().cpu()
