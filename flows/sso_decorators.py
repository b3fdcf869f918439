"""Config-driven step decorators for ``sso_flow.py`` (Metaflow step mutators).

Beside the flow file on purpose: Metaflow ships the flow's directory with every remote task, and
this module, like the flow file, is part of the Metaflow layer (``sso/`` and ``steps/`` never
import metaflow).

``@compute(resources=cfg.resources.<table>)`` turns one ``[resources.<table>]`` config table into the
decorators Metaflow understands, when the flow is parsed (for ``run``, ``resume``, every remote
task and every deploy command alike)::

    cpu, memory, gpu      -> @resources(cpu=..., memory=..., gpu=...)   (local runs ignore it;
                             --with batch / --with kubernetes turn it into the job's requests)
    timeout_minutes > 0   -> @timeout(minutes=...)   (0 = no timeout; on Batch / Kubernetes it is
                             also the job's attempt duration instead of the 5-day default)
    image, queue,         -> set on the step's @batch / @kubernetes decorator, *if the step has
    shared_memory            one* (from `run --with batch`, or added by `step-functions create` /
                             `argo-workflows create`); a value in the table wins over the --with
                             value, empty / 0 keeps the --with value or the Metaflow profile's
                             default. Local runs never see them.

``@compute_defaults("cfg")`` on the flow class gives every step that has no ``@compute`` of its own
``@compute(resources=cfg.resources.default)``, so no step falls back to Metaflow's built-in
defaults (e.g. the plain ``python:3.x`` image, which lacks this package's dependencies).

``@secrets_from_config(judge=cfg.judge)`` adds Metaflow's ``@secrets(sources=[judge.secrets],
role=judge.secrets_role)`` when ``[judge] secrets`` is non-empty: the remote task fetches the API key
from the secrets manager at start; the deployment spec holds only the secret's *name*. With the
default empty list nothing is added and a local run reads the key from its own environment.
"""

from metaflow import FlowMutator, StepMutator

# Config values are passed by keyword: a positional config reference would be mistaken by Metaflow
# for the decorated step function.

# Attributes of the platform decorators that a [resources.*] table may set; queue is Batch only.
_PLATFORM_KEYS = {"batch": ("image", "queue", "shared_memory"),
                  "kubernetes": ("image", "shared_memory")}


def _table(value) -> dict:
    """A resolved config table (ConfigValue or dict) as a plain dict."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return dict(value)


class compute(StepMutator):
    """``@compute(resources=cfg.resources.sample)``: resources, timeout and remote image/queue/shm of a step."""

    def init(self, resources):
        self._res = _table(resources)

    def mutate(self, mutable_step):
        res = self._res
        mutable_step.add_decorator(
            "resources", deco_kwargs={"cpu": res["cpu"], "memory": res["memory"], "gpu": res["gpu"]},
            duplicates=mutable_step.IGNORE)          # an explicit @resources in the code wins
        if res.get("timeout_minutes", 0) > 0:
            mutable_step.add_decorator("timeout", deco_kwargs={"minutes": res["timeout_minutes"]},
                                       duplicates=mutable_step.IGNORE)
        for platform, keys in _PLATFORM_KEYS.items():
            wanted = {k: res[k] for k in keys if res.get(k)}
            if not wanted:
                continue
            # Update the existing decorator in place rather than replacing it (add_decorator with
            # OVERRIDE): a replacement counts as "inserted by a mutator", and Metaflow does not
            # forward those as --with to the task in the container, which then runs without its
            # @batch (no AWS_BATCH_* metadata, no local-metadata sync: the run fails after the
            # first job). MutableStep has no public handle on a decorator object, hence _my_step.
            for deco in mutable_step._my_step.decorators:
                if deco.name == platform:
                    deco.attributes.update(wanted)


class secrets_from_config(StepMutator):
    """``@secrets_from_config(judge=cfg.judge)``: Metaflow ``@secrets`` from ``[judge] secrets``."""

    def init(self, judge):
        judge = _table(judge)
        self._sources = list(judge.get("secrets") or [])
        self._role = judge.get("secrets_role") or None

    def mutate(self, mutable_step):
        if self._sources:
            mutable_step.add_decorator("secrets", deco_kwargs={"sources": self._sources, "role": self._role},
                                       duplicates=mutable_step.IGNORE)


class compute_defaults(FlowMutator):
    """``@compute_defaults("cfg")``: ``[resources.default]`` for every step without ``@compute``."""

    def init(self, config_name="cfg"):
        self._config_name = config_name

    def pre_mutate(self, mutable_flow):
        configs = dict(mutable_flow.configs)
        if configs.get(self._config_name) is None:
            return
        default = _table(configs[self._config_name]["resources"]["default"])
        for _name, mutable_step in mutable_flow.steps:
            if not mutable_step.has_decorator("compute"):
                mutable_step.add_decorator(compute, deco_kwargs={"resources": default})
