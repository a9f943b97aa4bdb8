"""`submit` on a multi-user Kubeflow: the run goes to the profile namespace with the caller's bearer token (from a
file or $KFP_TOKEN), and the token is never printed. The KFP API is played by a FAKE server on 127.0.0.1 that
answers the three calls kfp.Client makes (healthz, experiment lookup/creation, run creation) and records them."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines import xkd_pipeline as xp

TOKEN = "tok-3f9a1c7e5b2d4e6f8a0b"  # a made-up bearer token: what must not leak into the output
IMAGE = "registry.example.org/xkd:0.1.0"


class FakeKfpApi:
    def __init__(self):
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, obj: dict):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body=None):
                auth = self.headers.get("Authorization")
                fake.requests.append({"method": self.command, "path": self.path, "auth": auth, "body": body})

            def do_GET(self):
                self._record()
                self._reply({})  # healthz; no experiment of that name yet

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._record(body)
                if self.path.startswith("/apis/v2beta1/experiments"):
                    self._reply({"experiment_id": "e1", "display_name": body["display_name"], "namespace": "x"})
                else:
                    self._reply({"run_id": "r1", "experiment_id": body.get("experiment_id"), "display_name": "xkd"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("source", ["file", "env"])
def test_submit_sends_the_token_and_namespace_and_never_prints_the_token(tmp_path, monkeypatch, capsys, caplog, source):
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    args = ["submit", "--image", IMAGE, "--namespace", "team-a"]
    if source == "file":
        (tmp_path / "token").write_text(TOKEN + "\n")
        args += ["--token-file", str(tmp_path / "token")]
    else:
        monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with FakeKfpApi() as api:
        assert xp.main([*args, "--host", api.url]) == 0
    calls = [(r["method"], r["path"].split("?")[0]) for r in api.requests]
    assert calls[-2:] == [("POST", "/apis/v2beta1/experiments"), ("POST", "/apis/v2beta1/runs")]
    assert {r["auth"] for r in api.requests} == {f"Bearer {TOKEN}"}  # every call, healthz included
    assert api.requests[-2]["body"]["namespace"] == "team-a"  # the experiment (and so the run) in the profile
    lookup = next(r for r in api.requests if r["method"] == "GET" and "experiments" in r["path"])
    assert "namespace=team-a" in lookup["path"]
    out = capsys.readouterr()
    assert "submitted run r1" in out.err
    assert TOKEN not in out.out + out.err + caplog.text


def test_submit_refuses_an_unreadable_or_empty_token_file_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").write_text("\n")
    for path, why in ((tmp_path / "missing", "No such file or directory"), (tmp_path / "empty", "is empty")):
        args = ["submit", "--host", "http://127.0.0.1:9", "--image", IMAGE, "--token-file", str(path)]
        assert xp.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --token-file {path}") and why in err[0], err
