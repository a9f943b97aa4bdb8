"""The launcher's TrainJob against the real Kubeflow Trainer CRDs (v2.0.0-v2.3.0: OpenAPI schema + CEL rules, a
real CEL evaluator) and the Trainer webhook's rules, through the create path a cluster runs
(tests/pipelines/trainer_crd.py); and what the launcher says when a cluster refuses the job. No real cluster
is reachable here: the API server's part is played by the fake server with the vendored CRDs."""

import copy
import re
import shlex
from pathlib import Path

import pytest
import trainer_crd as crd
from fake_k8s_api import FakeApiServer, finished
from sample_trainjob import sample_job

from pipelines import k8s, trainjob

REPO = Path(__file__).resolve().parents[2]
CURRENT = ("v2.2.0", "v2.3.0")  # the releases with spec.runtimePatches
OLD = ("v2.0.0", "v2.1.0")


def _pod(body: dict) -> dict:
    (patch,) = body["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return rjob["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("release", CURRENT)
def test_the_trainjob_passes_the_crd_schema_cel_rules_and_the_trainer_webhook(release):
    body = sample_job().to_dict()
    sch = crd.schema(release)
    assert crd.unknown_fields(body, sch) == []
    stored = crd.admit(release, body, "Strict")  # schema + CEL + webhook, or crd.Refused
    assert stored["spec"]["runtimePatches"] == body["spec"]["runtimePatches"]  # nothing pruned
    assert stored["spec"]["managedBy"] == "trainer.kubeflow.org/trainjob-controller"  # the schema's default
    ran = []
    assert crd.cel_errors(stored, sch, evaluated=ran) == []
    assert {p for p, _ in ran} >= {"<root>", "spec.managedBy"}  # metadata.name rules, the managedBy enum rule
    # a retried launcher re-sends the same object: every immutability (transition) rule holds
    ran = []
    assert crd.cel_errors(stored, sch, old=copy.deepcopy(stored), evaluated=ran) == []
    pod = "spec.runtimePatches[0].trainingRuntimeSpec.template.spec.replicatedJobs[0].template.spec.template.spec"
    assert {f"{pod}.securityContext", f"{pod}.volumes", "spec.trainer", "spec.runtimeRef"} <= {p for p, _ in ran}
    # every CEL rule of the CRD compiles in the evaluator, so none is skipped for being unsupported
    for _, rule in crd.cel_rules(sch):
        crd.cel.compile(rule["rule"])


WHAT_A_CLUSTER_REFUSES = {
    "uppercase-name": (lambda b: b["metadata"].update(name="Xkd"), 422, "must match RFC 1035 DNS label format"),
    "long-name": (lambda b: b["metadata"].update(name="x" * 64), 422, "must be no more than 63 characters"),
    "managed-by": (lambda b: b["spec"].update(managedBy="me"), 422, "ManagedBy must be"),
    "num-nodes-type": (lambda b: b["spec"]["trainer"].update(numNodes="two"), 422, "'two' is not of type 'integer'"),
    "unknown-field": (lambda b: b["spec"]["trainer"].update(gpus=8), 400, 'unknown field "spec.trainer.gpus"'),
    "manager": (lambda b: b["spec"]["runtimePatches"][0].update(manager="xkd-pipeline"), 403, "domain-prefixed"),
    "reserved-env": (
        lambda b: b["spec"]["trainer"]["env"].append({"name": "PET_MASTER_ADDR", "value": "x"}),
        403,
        "must not have reserved envs",
    ),
    "container": (lambda b: _pod(b)["containers"][0].update(name="trainer"), 403, "doesn't exist in the runtime"),
}


@pytest.mark.parametrize("release", CURRENT)
@pytest.mark.parametrize("case", sorted(WHAT_A_CLUSTER_REFUSES))
def test_the_checks_refuse_what_a_cluster_refuses(release, case):
    """The harness is not a rubber stamp: each rule class (schema type, CEL, strict decoding, webhook) bites."""
    change, code, message = WHAT_A_CLUSTER_REFUSES[case]
    body = sample_job().to_dict()
    crd.admit(release, copy.deepcopy(body), "Strict")  # accepted as built: the refusal below is the change's
    change(body)
    with pytest.raises(crd.Refused) as refused:
        crd.admit(release, body, "Strict")
    assert refused.value.code == code and message in refused.value.message


@pytest.mark.parametrize("release", CURRENT)
def test_changing_an_immutable_field_is_refused_by_the_crd_transition_rules(release):
    stored = crd.admit(release, sample_job().to_dict(), "Strict")
    changed = copy.deepcopy(stored)
    changed["spec"]["trainer"]["numNodes"] = 4
    _pod(changed)["securityContext"]["runAsUser"] = 0
    errors = crd.cel_errors(changed, crd.schema(release), old=stored)
    assert len(errors) == 2 and all(e.endswith("field is immutable") for e in errors), errors


def _admitting(release):
    return lambda body, query: crd.admit(release, body, query.get("fieldValidation"))


def _launch(fake, job=None):
    logs = []
    out = trainjob.launch(
        fake.client(), job or sample_job(), "team", timeout_s=10.0, poll_s=1.0, log=logs.append, sleep=lambda s: None
    )
    return out, logs


@pytest.mark.parametrize("release", CURRENT)
def test_the_launcher_creates_its_job_on_a_current_trainer(release):
    with FakeApiServer([finished("Complete")], admit=_admitting(release)) as fake:
        _launch(fake)
        assert fake.queries[0]["fieldValidation"] == "Strict"
        assert not fake.objects  # created, completed, deleted


@pytest.mark.parametrize("release", OLD)
def test_on_trainer_v2_0_and_v2_1_the_job_is_refused_not_silently_pruned(release):
    body = sample_job().to_dict()
    # what a client without strict validation gets: created, with the PVC, /dev/shm, node placement and the
    # pod security context gone
    assert "runtimePatches" not in crd.admit(release, body, None)["spec"]
    with FakeApiServer([finished("Complete")], admit=_admitting(release)) as fake:
        with pytest.raises(RuntimeError) as refused:
            _launch(fake)
        assert not fake.objects and [m for m, _ in fake.requests] == ["POST"]
    assert isinstance(refused.value, trainjob.TrainJobRejected)
    message = str(refused.value)
    assert "\n" not in message and "spec.runtimePatches" in message
    assert "Kubeflow Trainer older than v2.2" in message and "RBAC" not in message


RBAC_DENIAL = (
    'trainjobs.trainer.kubeflow.org is forbidden: User "system:serviceaccount:team:pipeline-runner" cannot '
    'create resource "trainjobs" in API group "trainer.kubeflow.org" in the namespace "team"'
)
UNREACHABLE = (
    'Internal error occurred: failed calling webhook "validator.trainjob.trainer.kubeflow.org": failed to call '
    'webhook: Post "https://kubeflow-trainer-controller-manager.kubeflow-system.svc:443/validate": dial tcp '
    "10.96.12.7:443: connect: connection refused"
)


def _refusing(code, reason, message):
    def admit(body, query):
        raise crd.Refused(code, reason, message)

    return admit


def _bad_manager():
    job = sample_job()
    job.spec.runtime_patches[0].manager = "xkd-pipeline"  # what the launcher sent before Trainer v2.2's rule
    return job


@pytest.mark.parametrize(
    "admit, job, expected, not_expected",
    [
        pytest.param(
            _admitting("v2.3.0"),
            _bad_manager,
            r"admission webhook validator\.trainjob\.trainer\.kubeflow\.org refused TrainJob team/xkd-pretrain-x "
            r"\(HTTP 403\): \[spec\.runtimePatches\.manager: Invalid value: \"xkd-pipeline\": must be a "
            r"domain-prefixed",
            "RBAC",
            id="webhook-denial",
        ),
        pytest.param(
            _refusing(403, "Forbidden", RBAC_DENIAL),
            sample_job,
            r"\(HTTP 403, RBAC\): .*system:serviceaccount:team:pipeline-runner.* the Role in pipelines/rbac\.yaml",
            "webhook",
            id="rbac",
        ),
        pytest.param(
            _admitting("v2.3.0"),
            lambda: sample_job(name="Xkd-pretrain"),
            r"does not validate against the cluster's TrainJob CRD \(HTTP 422\): .*must match RFC 1035 DNS label",
            "RBAC",
            id="schema-invalid",
        ),
        pytest.param(
            _refusing(500, "InternalError", UNREACHABLE),
            sample_job,
            r"could not reach the Trainer webhook validator\.trainjob\.trainer\.kubeflow\.org: .*connection refused",
            "RBAC",
            id="webhook-unreachable",
        ),
    ],
)
def test_create_refusals_name_their_real_cause(admit, job, expected, not_expected):
    with FakeApiServer([finished("Complete")], admit=admit) as fake:
        with pytest.raises(RuntimeError) as refused:
            _launch(fake, job())
        assert not fake.objects
    message = str(refused.value)
    assert "\n" not in message and re.search(expected, message), message
    assert isinstance(refused.value, trainjob.TrainJobRejected)
    assert not_expected not in message, message


def test_trainjob_pods_run_as_the_image_user_with_an_fsgroup():
    pod = _pod(sample_job().to_dict())
    assert pod["securityContext"] == {
        "runAsUser": k8s.IMAGE_UID,
        "runAsGroup": k8s.IMAGE_GID,
        "runAsNonRoot": True,
        "fsGroup": k8s.IMAGE_GID,  # the kubelet gives the PVC to this group: a root-owned volume becomes writable
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    assert sample_job().spec.runtime_patches[0].manager == k8s.RUNTIME_PATCH_MANAGER
    assert crd.domain_prefixed_path(k8s.RUNTIME_PATCH_MANAGER) is None


def _dockerfile_user() -> tuple[int, list[str]]:
    """The uid of the Dockerfile's last USER (ARG defaults substituted) and its useradd/groupadd id options."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))

    def subst(s):
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), s)

    user = subst(re.findall(r"^USER\s+(\S+)", text, re.M)[-1])
    ids = [
        subst(tok)
        for line in re.findall(r"\b(?:useradd|groupadd)\b[^\n&;]*", text)
        for opt, tok in zip(shlex.split(line), shlex.split(line)[1:])
        if opt in ("--uid", "-u", "--gid", "-g")
    ]
    return user, ids


def test_the_image_user_is_the_one_the_pods_run_as():
    user, ids = _dockerfile_user()
    uid, _, gid = user.partition(":")
    assert int(uid) == k8s.IMAGE_UID, user
    assert not gid or int(gid) == k8s.IMAGE_GID, user
    assert ids and set(ids) <= {str(k8s.IMAGE_UID), str(k8s.IMAGE_GID)}, ids
