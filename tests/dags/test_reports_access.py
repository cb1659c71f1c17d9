"""Who may read what through the reports plugin: every route wants the Airflow login, and only
files whose real path lies inside the reports folder are served; any other path is a 404."""

from __future__ import annotations

import os
from urllib.parse import quote

import pytest
from airflow import settings
from airflow.api_fastapi.app import create_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.models.revoked_token import RevokedToken
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.dags.test_reports_ui import plugin  # noqa: F401  (the plugin module, loaded from plugins/)
from tests.s3_server import s3_endpoint  # noqa: F401 (a fixture)

SECRET = "OUTSIDE-THE-REPORTS-FOLDER"


@pytest.fixture(scope="module")
def token():
    """A real JWT of the configured auth manager, as the api-server issues at login."""
    RevokedToken.__table__.create(settings.engine, checkfirst=True)  # the token check reads it
    return create_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))


@pytest.fixture
def reports(tmp_path, monkeypatch):
    """A reports folder with good files and every kind of way out, plus files outside it."""
    root = tmp_path / "reports"
    (root / "runs" / "2026-02-03").mkdir(parents=True)
    (root / "runs" / "2026-02-03" / "report.html").write_text("<html>report 2026-02-03</html>")
    (root / "data_docs").mkdir()
    (root / "data_docs" / "index.html").write_text("<html>docs</html>")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.html").write_text(SECRET)
    (outside / "index.html").write_text(SECRET)
    os.symlink(outside / "secret.html", root / "runs" / "evil.html")  # file symlink
    os.symlink(outside, root / "runs" / "linked")  # folder symlink (with an index.html)
    (root / "evil").mkdir()
    os.symlink(outside / "secret.html", root / "evil" / "index.html")  # index.html symlink
    os.symlink(outside / "missing.html", root / "runs" / "dangling.html")
    os.symlink("2026-02-03", root / "runs" / "latest")  # inside the folder: served
    monkeypatch.setenv("CSCNN_REPORTS_DIR", str(root))
    return root


def _sample_path(route: APIRoute) -> str:
    return route.path_format.format(**{name: "x" for name in route.param_convertors})


def test_every_route_of_the_app_answers_401_without_a_login(plugin, reports):
    client = TestClient(plugin.app, raise_server_exceptions=False)
    routes = plugin.app.routes
    assert routes and all(isinstance(r, APIRoute) for r in routes), routes  # no unauthenticated built-ins
    for route in routes:
        for method in route.methods:
            assert client.request(method, _sample_path(route)).status_code == 401, (method, route.path)
    # FastAPI's docs and schema routes are off: their paths reach the login-guarded file route
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect", "/openapi.json", "/runs/2026-02-03/report.html"):
        assert client.get(path).status_code == 401, path


def test_a_login_reads_the_files_inside_the_folder(plugin, reports, token):
    client = TestClient(plugin.app, headers={"Authorization": f"Bearer {token}"})
    assert client.get("/runs/2026-02-03/report.html").text == "<html>report 2026-02-03</html>"
    assert client.get("/runs/latest/report.html").text == "<html>report 2026-02-03</html>"
    assert client.get("/data_docs").text == "<html>docs</html>"
    assert client.get("/data_docs/").text == "<html>docs</html>"
    assert client.get("/").status_code == 200
    assert client.get("/docs").status_code == 404  # off, not merely hidden


@pytest.mark.parametrize("path", [
    "/runs/evil.html",  # file symlink to an outside file
    "/runs/linked/secret.html",  # through a folder symlink
    "/runs/linked", "/runs/linked/",  # a folder symlink's index.html
    "/evil", "/evil/", "/evil/index.html",  # an index.html that is a symlink
    "/runs/dangling.html",  # a symlink to nothing outside
    "/runs/%2e%2e/%2e%2e/outside/secret.html", "/%2E%2E/outside/index.html",  # encoded ..
    "/runs%2f..%2f..%2foutside%2fsecret.html",  # encoded slashes
    "/runs/%00", "/runs/report%00.html", "/%00",  # NUL
    "/%2Fetc%2Fpasswd", "/%2F{outside}%2Fsecret.html",  # absolute paths
    "/runs/2026-02-02/report.html", "/runs/" + "a" * 5000,  # absent, and a name too long for the OS
])
def test_a_bad_path_is_a_404_that_reads_nothing_outside(plugin, reports, token, path):
    client = TestClient(plugin.app, headers={"Authorization": f"Bearer {token}"}, raise_server_exceptions=False)
    answer = client.get(path.format(outside=quote(str(reports.parent / "outside"), safe="")))
    assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
    assert SECRET not in answer.text and "root:" not in answer.text
    assert str(reports) not in answer.text  # nor where the folder is


@pytest.fixture
def s3_reports(request, monkeypatch):
    """The same good files in a reports folder on a real S3 server (moto's), and a secret beside it."""
    from tests import s3_server

    url = request.getfixturevalue("s3_endpoint")
    client = s3_server.client(url)
    for key, body in {"reports/runs/2026-02-03/report.html": "<html>report 2026-02-03</html>",
                      "reports/data_docs/index.html": "<html>docs</html>",
                      "reports/data_docs/static/styles/style.css": "body{}",
                      "outside/secret.html": SECRET, "reports-evil/index.html": SECRET}.items():
        client.put_object(Bucket=s3_server.BUCKET, Key=key, Body=body.encode())
    for k, v in s3_server.env(url).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CSCNN_REPORTS_DIR", f"s3a://{s3_server.BUCKET}/reports")


@pytest.mark.slow
def test_a_reports_folder_on_object_storage_is_served_inside_it_only(plugin, s3_reports, token):
    client = TestClient(plugin.app, headers={"Authorization": f"Bearer {token}"}, raise_server_exceptions=False)
    assert client.get("/runs/2026-02-03/report.html").text == "<html>report 2026-02-03</html>"
    assert client.get("/data_docs").text == client.get("/data_docs/").text == "<html>docs</html>"
    css = client.get("/data_docs/static/styles/style.css")
    assert css.text == "body{}" and css.headers["content-type"].startswith("text/css")
    index = client.get("/")
    assert index.status_code == 200 and 'href="runs/2026-02-03/report.html"' in index.text
    assert 'href="data_docs/index.html"' in index.text
    for path in ("/runs/%2e%2e/%2e%2e/outside/secret.html", "/..%2foutside%2fsecret.html", "/%2E%2E/reports-evil",
                 "/runs/%2e/2026-02-03/report.html", "/runs//2026-02-03/report.html", "/runs/%00", "/%2Freports",
                 "/runs/2026-02-02/report.html", "/runs/" + "a" * 5000):
        answer = client.get(path)
        assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
        assert SECRET not in answer.text and "s3a://" not in answer.text
    assert TestClient(plugin.app, raise_server_exceptions=False).get("/data_docs").status_code == 401
