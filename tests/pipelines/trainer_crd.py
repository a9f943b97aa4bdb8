"""What a real kube-apiserver with Kubeflow Trainer installed does with a TrainJob create, run here against the
vendored CRDs (data/k8s/kubeflow-trainer/, tags v2.0.0-v2.3.0): decode (strict field validation refuses a field
the schema does not declare, otherwise it is pruned), apply the schema's defaults, validate the OpenAPI v3 schema
(jsonschema) and every `x-kubernetes-validations` CEL rule on the fields present (a real CEL evaluator, the
`cel` module of common-expression-language), then the Trainer's validating webhook.

The webhook is Go code, not in the CRDs; its create-time rules for a torch runtime are written out here from the
Trainer source at tags v2.2.0 and v2.3.0 (both the same for these rules):
- pkg/runtime/framework/plugins/jobset/jobset.go `Validate`: every `spec.runtimePatches[].manager` passes
  apimachinery's `IsDomainPrefixedPath` (k8s.io/apimachinery/pkg/util/validation/validation.go); a patched
  replicated job must exist in the runtime's template, each patched container / initContainer in that job, and
  the `node` container patch must carry no env;
- pkg/runtime/framework/plugins/torch/torch.go `Validate`: `spec.trainer.env` must not set torchrun's reserved
  PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT;
- pkg/webhooks/trainjob_webhook.go: the runtimeRef kind must be a registered runtime kind.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import cel
import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "data" / "k8s" / "kubeflow-trainer"
RELEASES = {
    "v2.0.0": "crd_trainjobs_v2.0.0.yaml",
    "v2.1.0": "crd_trainjobs_v2.1.0.yaml",
    "v2.2.0": "crd_trainjobs_v2.2.0.yaml",
    "v2.3.0": "crd_trainjobs.yaml",
}
WEBHOOK = "validator.trainjob.trainer.kubeflow.org"  # its name in pkg/webhooks/trainjob_webhook.go
WEBHOOK_SINCE = ("v2.2.0", "v2.3.0")  # the runtimePatches rules; older webhooks check podTemplateOverrides
TORCH_RESERVED_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
RUNTIME_KINDS = {"ClusterTrainingRuntime", "TrainingRuntime"}
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = re.compile(rf"^{DNS1123_LABEL}(\.{DNS1123_LABEL})*$")
HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


class Refused(Exception):
    """What the API server answers instead of creating: HTTP code, Status reason and message."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@functools.cache
def schema(release: str) -> dict:
    docs = [d for d in yaml.safe_load_all((CRD_DIR / RELEASES[release]).read_text()) if d]
    (crd,) = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    assert crd["metadata"]["name"] == "trainjobs.trainer.kubeflow.org"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


@functools.cache
def runtime_containers() -> dict[str, set[str]]:
    """The vendored torch-distributed ClusterTrainingRuntime: replicated job -> its container names."""
    rt = yaml.safe_load((CRD_DIR / "torch_distributed.yaml").read_text())
    jobs = rt["spec"]["template"]["spec"]["replicatedJobs"]
    return {
        j["name"]: {
            c["name"]
            for key in ("initContainers", "containers")
            for c in j["template"]["spec"]["template"]["spec"].get(key, [])
        }
        for j in jobs
    }


def _children(obj, sch: dict, path: str):
    """(child value, child schema, child path) for the fields the structural schema declares."""
    if isinstance(obj, dict):
        props, extra = sch.get("properties"), sch.get("additionalProperties")
        for k, v in obj.items():
            if props and k in props:
                yield k, v, props[k], f"{path}.{k}" if path else k
            elif isinstance(extra, dict):
                yield k, v, extra, f"{path}[{k}]"
    elif isinstance(obj, list) and isinstance(sch.get("items"), dict):
        for i, v in enumerate(obj):
            yield i, v, sch["items"], f"{path}[{i}]"


def _closed(sch: dict, path: str) -> bool:
    """An object node whose undeclared fields are pruned: not a map, not x-kubernetes-preserve-unknown-fields,
    and not the root's metadata (ObjectMeta, which apimachinery decodes itself)."""
    return (
        sch.get("type") == "object"
        and "additionalProperties" not in sch
        and not sch.get("x-kubernetes-preserve-unknown-fields")
        and path != "metadata"
    )


def unknown_fields(obj, sch: dict, path: str = "") -> list[str]:
    """Paths the schema does not declare, as kube-apiserver names them in `unknown field "<path>"`."""
    found = []
    if isinstance(obj, dict) and _closed(sch, path):
        found += [f"{path}.{k}" if path else k for k in obj if k not in (sch.get("properties") or {})]
    for _, v, child, p in _children(obj, sch, path):
        found += unknown_fields(v, child, p)
    return found


def prune(obj, sch: dict, path: str = ""):
    """What the API server stores without strict validation: the undeclared fields silently dropped."""
    if isinstance(obj, dict) and _closed(sch, path):
        obj = {k: v for k, v in obj.items() if k in (sch.get("properties") or {})}
    if isinstance(obj, (dict, list)):
        obj = copy.copy(obj)
        for k, v, child, p in list(_children(obj, sch, path)):
            obj[k] = prune(v, child, p)
    return obj


def default(obj, sch: dict):
    """Structural defaulting: a missing property with a `default` gets it (inside objects that are present)."""
    if isinstance(obj, dict):
        for k, prop in (sch.get("properties") or {}).items():
            if k not in obj and "default" in prop:
                obj[k] = copy.deepcopy(prop["default"])
    for _, v, child, _ in _children(obj, sch, ""):
        default(v, child)
    return obj


def schema_errors(obj, sch: dict) -> list[str]:
    """OpenAPI v3 (draft-4 style) violations: types, required, enum, patterns, lengths, ranges."""
    validator = jsonschema.Draft4Validator(sch)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def cel_rules(sch: dict, path: str = "") -> list[tuple[str, dict]]:
    """Every CEL rule of the schema with the path of the node it is attached to."""
    out = [(path, r) for r in sch.get("x-kubernetes-validations", [])]
    for k, child in (sch.get("properties") or {}).items():
        out += cel_rules(child, f"{path}.{k}" if path else k)
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(sch.get(key), dict):
            out += cel_rules(sch[key], path + suffix)
    return out


def cel_errors(obj, sch: dict, old=None, path: str = "", evaluated: list | None = None) -> list[str]:
    """Evaluate the CEL rules on the fields present. Transition rules (they read `oldSelf`) run on updates only,
    as in kube-apiserver; `evaluated` collects (path, rule) of every rule run."""
    errors = []
    for r in sch.get("x-kubernetes-validations", []):
        if "oldSelf" in r["rule"] and old is None:
            continue
        result = cel.evaluate(r["rule"], {"self": obj, **({"oldSelf": old} if old is not None else {})})
        if evaluated is not None:
            evaluated.append((path or "<root>", r["rule"]))
        if result is not True:
            errors.append(f"{path or '<root>'}: Invalid value: {r.get('message') or r['rule']}")
    for k, v, child, p in _children(obj, sch, path):
        child_old = (
            old.get(k) if isinstance(old, dict) else (old[k] if isinstance(old, list) and k < len(old) else None)
        )
        errors += cel_errors(v, child, child_old, p, evaluated)
    return errors


def domain_prefixed_path(value: str) -> str | None:
    """apimachinery's IsDomainPrefixedPath: the error text, or None when `value` is valid."""
    host, sep, rest = value.partition("/")
    if not value:
        return "Required value"
    if not sep or not host or not rest:
        return f'Invalid value: "{value}": must be a domain-prefixed path (such as "acme.io/foo")'
    if len(host) > 253 or not DNS1123_SUBDOMAIN.match(host):
        return f'Invalid value: "{host}": a lowercase RFC 1123 subdomain must consist of lower case alphanumerics'
    if not HTTP_PATH.match(rest):
        return f'Invalid value: "{rest}": Invalid path'
    return None


def webhook_errors(obj: dict) -> list[str]:
    """The Trainer v2.2/v2.3 validating webhook's create-time rules for a torch runtime (module docstring)."""
    spec, errors = obj.get("spec") or {}, []
    if (spec.get("runtimeRef") or {}).get("kind", "ClusterTrainingRuntime") not in RUNTIME_KINDS:
        errors.append(f"unsupported runtime: {spec['runtimeRef'].get('kind')}")
    reserved = sorted(TORCH_RESERVED_ENV & {e["name"] for e in (spec.get("trainer") or {}).get("env") or []})
    if reserved:
        errors.append(
            f"spec.trainer.env: Invalid value: must not have reserved envs, invalid envs configured: {reserved}"
        )
    jobs = runtime_containers()
    for patch in spec.get("runtimePatches") or []:
        if (bad := domain_prefixed_path(patch.get("manager", ""))) is not None:
            errors.append(f"spec.runtimePatches.manager: {bad}")
        tmpl = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rjob in tmpl.get("replicatedJobs") or []:
            if rjob["name"] not in jobs:
                errors.append(
                    "spec.runtimePatches: must not have replicated job that doesn't exist in the runtime job template"
                )
                continue
            pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for key in ("initContainers", "containers"):
                for c in pod.get(key) or []:
                    if c["name"] not in jobs[rjob["name"]]:
                        what = f"{key[:-1]} that doesn't exist in the runtime job {rjob['name']}"
                        errors.append(f"spec.runtimePatches: must not have {what}")
                    elif (
                        key == "containers"
                        and c.get("env")
                        and c["name"] in ("node", "dataset-initializer", "model-initializer")
                    ):
                        what = "envs for the dataset-initializer, model-initializer, node containers"
                        errors.append(f"spec.runtimePatches: must not have {what}")
    return errors


def admit(release: str, body: dict, field_validation: str | None) -> dict:
    """What the API server stores for a create of `body`, or Refused with the HTTP answer a cluster gives."""
    sch, name = schema(release), (body.get("metadata") or {}).get("name")
    unknown = unknown_fields(body, sch)
    if unknown and field_validation == "Strict":
        fields = ", ".join(f'unknown field "{f}"' for f in unknown)
        raise Refused(
            400,
            "BadRequest",
            f'TrainJob in version "v1alpha1" cannot be handled as a TrainJob: strict decoding error: {fields}',
        )
    stored = default(prune(copy.deepcopy(body), sch), sch)
    if errors := schema_errors(stored, sch) + cel_errors(stored, sch):
        raise Refused(422, "Invalid", f'TrainJob.trainer.kubeflow.org "{name}" is invalid: [{", ".join(errors)}]')
    if release in WEBHOOK_SINCE and (errors := webhook_errors(stored)):
        raise Refused(403, "Forbidden", f'admission webhook "{WEBHOOK}" denied the request: [{", ".join(errors)}]')
    return stored
