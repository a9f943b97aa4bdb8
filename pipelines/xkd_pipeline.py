"""The XKD pipeline as a Kubeflow Pipelines v2 DAG: compile it, run it locally, or submit it.

    python -m pipelines.xkd_pipeline compile --output xkd.yaml [--image REPO@sha256:... | REPO:TAG]
    python -m pipelines.xkd_pipeline run-local [--preset tiny] [--max-steps N] [--workdir DIR]
    python -m pipelines.xkd_pipeline submit --host URL [--experiment xkd] [--image ...] [--set name=JSON ...]
        [--namespace NS] [--token-file FILE]      (or the token in $KFP_TOKEN; it is never printed)

The tasks are in `pipelines/tasks.py`, the DAG in `pipelines/dag.py`, the local runner in `pipelines/local.py`.
This module is the command line only: kfp (and, through the steps, torch and mlflow) is imported when a command
runs, so `--help` answers at once.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

from pipelines.images import PLACEHOLDER_IMAGE, validate_image
from xkd.errors import UsageError, cli, step_parser


def _set_args(pairs: list[str] | None, flag: str = "--set") -> dict:
    """NAME=VALUE pairs as a dict; VALUE parsed as JSON when it is JSON (numbers, lists, dicts), else a string."""
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"{flag} {pair!r}: expected NAME=VALUE (VALUE as JSON for numbers, lists, dicts)")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


TOKEN_ENV = "KFP_TOKEN"  # a bearer token for a multi-user Kubeflow, when --token-file is not given


def read_token(token_file: str | None) -> str | None:
    """The bearer token for the KFP API: the content of `token_file`, else $KFP_TOKEN, else None (kfp.Client's
    own in-cluster credentials). Error messages name the file, never its content."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise UsageError(f"--token-file {token_file}: {e.strerror or e}") from None
        if not token:
            raise UsageError(f"--token-file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def submit(
    host: str,
    experiment: str = "xkd",
    image: str = PLACEHOLDER_IMAGE,
    arguments: dict | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
):
    """Compile the DAG with `image` as the default image and start a run on the KFP endpoint `host`; on a
    multi-user Kubeflow, in the profile `namespace`, authenticated with the bearer `token`."""
    validate_image(arguments.get("image", image) if arguments else image)
    import kfp

    from pipelines.dag import compile_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "xkd.yaml", image=image)
        client = kfp.Client(host=host, existing_token=token, **({"namespace": namespace} if namespace else {}))
        return client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments or {},
            experiment_name=experiment,
            run_name=run_name,
            namespace=namespace,
        )


def parser():
    """The command line (its own function so tests can walk every option)."""
    ap = step_parser("pipelines.xkd_pipeline", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="write the pipeline IR YAML", formatter_class=ap.formatter_class)
    c.add_argument("--output", required=True, help="the IR YAML file to write")
    c.add_argument("--image", default=PLACEHOLDER_IMAGE, help="default image: NAME@sha256:... or NAME:<exact tag>")
    c.add_argument("--eval-parallelism", type=int, default=4, help="evaluation specs running at once")
    c.add_argument("--partition-parallelism", type=int, default=16, help="partition extractions running at once")
    r = sub.add_parser(
        "run-local",
        help="run the DAG here with kfp.local (subprocesses, this venv)",
        formatter_class=ap.formatter_class,
    )
    r.add_argument("--preset", default="tiny", help="pretraining config name and eval preset")
    r.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="pretraining steps (default: params.yaml pretrain.max_steps; 0 = the config's full schedule)",
    )
    r.add_argument("--partitions", type=int, default=2, help="extraction partitions of the pretraining inputs")
    r.add_argument("--workdir", default="outputs/kfp-local", help="plays the PVC: raw/, cache/, outputs/, kfp/")
    r.add_argument(
        "--raw",
        action="append",
        default=None,
        metavar="DATASET=PATH",
        help="override a dataset's input; repeatable (default: params.yaml datasets.<name>.raw)",
    )
    r.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in the workdir)")
    s = sub.add_parser(
        "submit", help="compile and start a run on a Kubeflow Pipelines endpoint", formatter_class=ap.formatter_class
    )
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.org/pipeline")
    s.add_argument("--experiment", default="xkd", help="KFP experiment the run goes to")
    s.add_argument("--image", required=True, help="NAME@sha256:... or NAME:<exact tag>")
    s.add_argument("--run-name", default=None, help="the run's display name (default: KFP names it)")
    s.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="PARAM=VALUE",
        help="pipeline parameter (VALUE parsed as JSON when it is JSON), e.g. --set nodes=4; repeatable "
        "(default: none; every parameter keeps its compiled default)",
    )
    s.add_argument(
        "--namespace",
        default=None,
        help="the Kubeflow profile namespace the run and its experiment go to (default: none, a single-user KFP)",
    )
    s.add_argument(
        "--token-file",
        default=None,
        help=f"file holding the bearer token for the KFP API, never printed (default: ${TOKEN_ENV} if set, "
        "else kfp's in-cluster credentials)",
    )
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "compile":
        from pipelines.dag import compile_pipeline

        out = compile_pipeline(
            args.output,
            image=args.image,
            eval_parallelism=args.eval_parallelism,
            partition_parallelism=args.partition_parallelism,
        )
        print(f"compiled {out}", file=sys.stderr)
    elif args.cmd == "run-local":
        from pipelines.local import run_local

        raw = _set_args(args.raw, "--raw")
        res = run_local(
            args.workdir,
            preset=args.preset,
            max_steps=args.max_steps,
            partitions=args.partitions,
            raw={k: str(v) for k, v in raw.items()},
            tracking_uri=args.tracking_uri,
        )
        for m in res["metrics"]:
            print(m)
        print(f"report: {res['report']}", file=sys.stderr)
    else:
        run = submit(
            args.host,
            args.experiment,
            validate_image(args.image),
            _set_args(args.set),
            args.run_name,
            namespace=args.namespace,
            token=read_token(args.token_file),
        )
        print(f"submitted run {run.run_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
