"""Airflow UI plugin: serves the pipeline's reports folder (GX Data Docs, run reports).

    <api base url>/cscnn-reports/                         index: Data Docs + run reports by date
    <api base url>/cscnn-reports/data_docs/index.html     Great Expectations Data Docs
    <api base url>/cscnn-reports/runs/<ds>/report.html    the run report of logical date <ds>

The tasks' "Data Docs" and "Run report" buttons (dags/cscnn_links.py) point here, and a
"CSCNN reports" entry appears in the UI's navigation. Airflow does not authenticate plugin
apps, so every route requires the caller's Airflow login (the UI's JWT cookie or a bearer token);
FastAPI's docs and OpenAPI routes are off. Files are served only when their real path (every
symlink resolved) lies inside the folder; any other path is a 404.

The folder is CSCNN_REPORTS_DIR when set, else `storage.reports_uri` of the config named by
CSCNN_CONFIG (relative paths resolve against the API server's working directory, the repo root
when started by scripts/airflow_ui.sh). It may be on object storage (s3a://, core.storage, with
the credentials and endpoint in the API server's environment): there a path is served when it is
a plain relative path (no '.', '..' or empty segment, no NUL) to an object under the folder.
"""

from __future__ import annotations

import html
import mimetypes
import os
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

from airflow.api_fastapi.core_api.security import requires_authenticated
from airflow.plugins_manager import AirflowPlugin

from core import storage
from core.config import load_config
from core.paths import Paths, is_local, local_path

# Keep in sync with dags/cscnn_links.py (a test checks both).
REPORTS_URL_PREFIX = "/cscnn-reports"


def reports_dir() -> Path | str:
    """The reports folder this API server serves: a local folder, or an object storage URI (see
    the module docstring)."""
    uri = os.environ.get("CSCNN_REPORTS_DIR", "").strip() or Paths.of(load_config()).reports
    return Path(local_path(uri)).resolve() if is_local(uri) else uri.rstrip("/")


def resolve_remote_report(root: str, relative: str) -> tuple[str, bytes]:
    """(URI, bytes) of the object `relative` names under the object storage folder `root` (a
    folder means its index.html). Anything but a plain relative path to an object is a 404."""
    not_found = HTTPException(status_code=404, detail=f"no report at {relative!r}")
    parts = relative.rstrip("/").split("/") if relative.strip("/") else []
    if "\x00" in relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise not_found
    for uri in ([storage.join(root, *parts)] if parts and not relative.endswith("/") else []) + \
            [storage.join(root, *parts, "index.html")]:
        try:
            return uri, storage.read_bytes(uri)
        except FileNotFoundError:
            continue
        except OSError:  # e.g. a key too long for the store
            raise not_found from None
    raise not_found


def resolve_report_file(root: Path, relative: str) -> Path:
    """The regular file `relative` names under `root` (a folder means its index.html).

    Every symlink is resolved after each join, the appended index.html included, and the final
    path must lie inside `root`: anything else (absent, outside, a NUL byte, a name the OS
    refuses) is the same 404, which says nothing about what exists outside the folder.
    """
    not_found = HTTPException(status_code=404, detail=f"no report at {relative!r}")
    if "\x00" in relative:
        raise not_found
    try:
        root = Path(os.path.realpath(root))
        target = Path(os.path.realpath(root / relative))
        if target.is_dir():
            target = Path(os.path.realpath(target / "index.html"))
        if not target.is_relative_to(root) or not target.is_file():
            raise not_found
    except (OSError, ValueError):  # e.g. a name too long for the file system
        raise not_found from None
    return target


# The Airflow 3 UI's look (Chakra UI: system sans-serif, white cards on a light grey page,
# grey borders, the UI's blue for links), without loading anything from outside the page.
INDEX_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f7fafc;color:#1a202c;font:14px/1.5 Inter,-apple-system,BlinkMacSystemFont,"Segoe UI",
Roboto,Helvetica,Arial,sans-serif}
header{background:#fff;border-bottom:1px solid #e2e8f0;padding:12px 24px;display:flex;align-items:center;gap:16px}
header h1{font-size:18px;font-weight:600;margin:0}
header a{margin-left:auto}
main{max-width:960px;margin:24px auto;padding:0 24px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:16px 20px;margin-bottom:16px}
.card h2{font-size:16px;font-weight:600;margin:0 0 12px 0}
a{color:#0c6bbf;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:8px 12px;border-bottom:1px solid #edf2f7}
th{font-size:12px;font-weight:600;color:#4a5568;text-transform:uppercase;letter-spacing:.03em}
tr:last-child td{border-bottom:0}
.muted{color:#718096}
"""


def render_index(root: Path | str) -> str:
    """HTML index of the reports folder: Data Docs link and run reports, newest first (links only;
    no server paths)."""
    if isinstance(root, str):  # object storage
        runs = storage.join(root, "runs")
        reports = storage.existing([storage.join(runs, d, "report.html") for d in storage.children(runs)])
        days = sorted((u.split("/")[-2] for u in reports), reverse=True)
        has_docs = storage.exists(storage.join(root, "data_docs", "index.html"))
    else:
        runs_dir = root / "runs"
        days = sorted((p.name for p in runs_dir.iterdir() if (p / "report.html").is_file()), reverse=True) \
            if runs_dir.is_dir() else []
        has_docs = (root / "data_docs" / "index.html").is_file()
    rows = "".join(f'<tr><td><a href="runs/{html.escape(d)}/report.html">{html.escape(d)}</a></td>'
                   f"<td>run report</td></tr>" for d in days)
    docs = ('<a href="data_docs/index.html">Great Expectations Data Docs</a> '
            '<span class="muted">(every validation result, newest first)</span>'
            if has_docs else '<span class="muted">No Data Docs yet.</span>')
    runs = (f"<table><tr><th>logical date</th><th>page</th></tr>{rows}</table>" if rows
            else '<p class="muted">No run reports yet.</p>')
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>CSCNN reports</title>"
            f"<style>{INDEX_CSS}</style></head><body><header><h1>CSCNN pipeline reports</h1>"
            f'<a href="../">Airflow</a></header><main>'
            f'<section class="card"><h2>Data quality</h2>{docs}</section>'
            f'<section class="card"><h2>Run reports</h2>{runs}</section></main></body></html>')


# FastAPI's own docs and OpenAPI routes skip app-level dependencies, so they are off: every route
# of this app is one of the two below, each behind the Airflow login.
app = FastAPI(title="CSCNN reports", dependencies=[Depends(requires_authenticated())],
              openapi_url=None, docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None)


@app.get("/", response_class=HTMLResponse)
def index() -> str:
    """The reports index page."""
    return render_index(reports_dir())


@app.get("/{relative:path}")
def report_file(relative: str) -> Response:
    """A file of the reports folder (HTML, CSS, images of the Data Docs and run reports)."""
    root = reports_dir()
    if isinstance(root, str):
        uri, data = resolve_remote_report(root, relative)
        return Response(data, media_type=mimetypes.guess_type(uri)[0] or "application/octet-stream")
    return FileResponse(resolve_report_file(root, relative))


class CscnnReportsPlugin(AirflowPlugin):
    """Serves the reports folder and adds a navigation entry to it."""

    name = "cscnn_reports"
    fastapi_apps = [{"app": app, "url_prefix": REPORTS_URL_PREFIX, "name": "CSCNN reports"}]
    external_views = [{
        "name": "CSCNN reports",
        "href": REPORTS_URL_PREFIX.lstrip("/") + "/",
        "destination": "nav",
        "category": "browse",
        "url_route": "cscnn_reports",
    }]
