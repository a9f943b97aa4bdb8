"""The MLflow UI address of the project's experiment in the model-training view (`make ui` prints it first).

    python -m xkd.tracking.ui_url [--backend-store-uri URI] [--host 127.0.0.1] [--port 5000]

MLflow 3's web app opens every experiment in its GenAI view: it does not read the experiment's
`mlflow.experimentKind` tag for that but a browser-wide switch, taken from the page address's `?workflowType=`
(else what the browser stored last, else `genai`). So the address printed here carries
`?workflowType=machine_learning`; clicking "Model training" once in the sidebar toggle does the same, and the
browser keeps it. The experiment's id is looked up in the store (it is not always 1).
"""

from __future__ import annotations

import sys

from mlflow import MlflowClient

from xkd.errors import UsageError, cli, step_parser
from xkd.tracking import runs as tracking

VIEW = "workflowType=machine_learning"  # MLflow 3.17 UI: the "Model training" side of the sidebar toggle


def experiment_url(uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The runs page of experiment `xkd` in store `uri` (default: the project's) as `mlflow ui --host HOST --port
    PORT` serves it (hash routes); the experiments list when the store holds no such experiment yet."""
    uri = tracking.check_store(uri)  # one clear line for a store that cannot be opened
    try:
        exp = MlflowClient(uri).get_experiment_by_name(tracking.EXPERIMENT)
    except Exception as e:  # any store error: one line, credentials masked
        raise UsageError(f"MLflow tracking store {tracking.redact(uri)} is not usable ({tracking.redact(e)})") from None
    page = f"experiments/{exp.experiment_id}/runs" if exp is not None else "experiments"
    return f"http://{host}:{port}/#/{page}?{VIEW}"


@cli
def main(argv: list[str] | None = None) -> int:
    ap = step_parser("xkd.tracking.ui_url", __doc__)
    ap.add_argument(
        "--backend-store-uri", default=None, help="tracking store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    ap.add_argument("--host", default="127.0.0.1", help="the host `mlflow ui` binds")
    ap.add_argument("--port", type=int, default=5000, help="the port `mlflow ui` listens on")
    args = ap.parse_args(argv)
    url = experiment_url(args.backend_store_uri, args.host, args.port)
    print(f"MLflow UI, experiment {tracking.EXPERIMENT!r} in the model-training view: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
