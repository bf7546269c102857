"""The model of a process, loaded once, and its adapters at a point of a run.

Keys:
  * the model: the config's model section, the LoRA init seed and what `auto` resolved to
    (dtype, device, prompt sets) — a process reloads weights only when these change;
  * the adapters: the content id of the committed update they come from (for iteration i, the
    update of i − 1; for iteration 0, the LoRA initialisation) — content ids hash the adapter
    bytes, so equal ids mean equal adapters, whichever run or worker made them;
  * the sampler copies (explore / regenerate): the adapter key plus the explore settings; the
    copies of the last two adapter keys are kept on a CPU (one on a GPU, where a copy of FLUX
    is 24 GB), so a resumed or repeated iteration does not rebuild them.

An entry is trusted only while it is clean. A stage that changes the policy (the update)
checks it out with `mutating()`, which marks it dirty; only `committed()` after the stage's
commit makes it clean again, at the new adapters. So an attempt that failed halfway — and a
Prefect retry of it — always restarts from the committed state in the store, never from
tensors an earlier attempt already stepped.

Thread-safe: one lock guards every lookup, restore and build, and `mutating()` holds it for
the whole update. Sampling stages only read the policy; the Dask runner uses one thread per
worker anyway.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from solrl.checkpoint import restore
from solrl.compute import TrainState, explore_quant
from solrl.models import load_policy
from solrl.plan import ExploreSpec

INIT = "init"
log = logging.getLogger("solrl")


class PolicyCache:
    def __init__(self):
        self._lock = threading.RLock()
        self._model_key = None
        self._policy = None
        self._init = None
        self._state = None
        self._adapters = None  # the adapter key of _policy/_state now; None = dirty
        self._samplers: dict = {}

    def clear(self) -> None:
        with self._lock:
            self.__init__()

    def policy(self, run):
        """The run's policy with whatever adapters it holds now (load the weights if needed)."""
        with self._lock:
            key = (run.cfg.model.model_dump_json(), run.cfg.run.seed, run.resolved.model_dump_json())
            if self._model_key != key:
                self._policy = load_policy(run.cfg, run.resolved)
                self._init = self._policy.adapter_state("default")
                self._model_key, self._adapters, self._state, self._samplers = key, None, None, {}
                log.info("loaded the %s weights for run %s", run.cfg.model.family, run.run_id)
            return self._policy

    def adapter_key(self, run, iteration: int) -> str:
        if iteration == 0:  # the LoRA init (a fresh AdamW with this run's settings: keyed by its hash)
            return f"{INIT}:{run.hash}"
        h = run.stage(iteration - 1, "update")
        rec = h.record
        if rec is None or rec["config_hash"] != run.hash:
            raise RuntimeError(
                f"iteration {iteration} needs the committed update of iteration {iteration - 1}, which is missing: resume the run from there"
            )
        return h.content_id(rec)

    def at(self, run, iteration: int):
        """(policy, train state) as committed at the start of `iteration`."""
        with self._lock:
            policy = self.policy(run)
            key = self.adapter_key(run, iteration)
            if self._adapters != key:
                state = TrainState.fresh(policy, run.cfg)
                if key.startswith(INIT):
                    policy.load_adapter("default", self._init)
                    policy.load_adapter("old", self._init)
                    state.ema = {k: v.clone() for k, v in self._init.items()}
                else:
                    h = run.stage(iteration - 1, "update")
                    files = {
                        name[len("state/") :]: run.store.read_bytes(h.file(name))
                        for name in h.record["files"]
                        if name.startswith("state/")
                    }
                    restore(policy, state, files)
                    log.info("restored the adapters committed by iteration %d's update from the store", iteration - 1)
                self._state, self._adapters = state, key
            return policy, self._state

    def init_ema(self, run) -> dict:
        """The LoRA initialisation (B = 0: the base model), for the baseline evaluation."""
        with self._lock:
            self.policy(run)
            return {k: v.clone() for k, v in self._init.items()}

    def sampler(self, run, iteration: int, spec: ExploreSpec | None):
        """The explore copy for `spec` (quantised per its precision) or, with None, the
        high-precision regenerate copy: base + the "old" adapter of `iteration`, merged."""
        with self._lock:
            policy, _ = self.at(run, iteration)
            quant = explore_quant(policy, run.cfg, spec) if spec is not None else None
            key = (self._adapters, repr(quant))
            if key not in self._samplers:
                keep = 1 if policy.device.type == "cuda" else 2
                recent = (
                    list(dict.fromkeys(k[0] for k in self._samplers if k[0] != self._adapters))[-(keep - 1) :]
                    if keep > 1
                    else []
                )
                self._samplers = {k: v for k, v in self._samplers.items() if k[0] == self._adapters or k[0] in recent}
                if policy.device.type == "cuda":  # the memory plan's schedule: only this stage's copies stay
                    self._drop_samplers(run, "explore" if quant is not None else "regenerate")
                self._samplers[key] = policy.sampler_copy(quant)
                if quant is not None:
                    log.info("iteration %d explore copy: %s", iteration, self._samplers[key][1].summary())
            return self._samplers[key]

    def _drop_samplers(self, run, stage: str) -> None:
        """Free the cached sampler copies the memory plan does not keep on the GPU in `stage`
        (solrl.residency.sampler_on_device: the schedule the plan adds up)."""
        from solrl.residency import sampler_on_device

        on = sampler_on_device(run.cfg, stage)
        kept = {
            k: v for k, v in self._samplers.items() if ("explore_copy" if k[1] != "None" else "regenerate_copy") in on
        }
        if len(kept) != len(self._samplers):
            self._samplers = kept
            import torch

            torch.cuda.empty_cache()

    @contextmanager
    def mutating(self, run, iteration: int):
        """Exclusive use of (policy, state) at the start of `iteration` for a stage that changes
        them. The entry is dirty until `committed()`; on any failure it stays dirty."""
        with self._lock:
            policy, state = self.at(run, iteration)
            if policy.device.type == "cuda":  # the sampler copies make room for the update (memory plan)
                self._drop_samplers(run, "update")
            self._adapters = None  # dirty (the sampler copies stay: they were built from committed adapters)
            yield policy, state

    def committed(self, run, iteration: int) -> None:
        """The update of `iteration` has committed what the in-memory policy holds now."""
        with self._lock:
            self._adapters = self.adapter_key(run, iteration + 1)
            if self._policy.device.type == "cuda":  # the old copies are GPU memory the evaluation needs
                self._samplers = {}


CACHE = PolicyCache()  # this process's
