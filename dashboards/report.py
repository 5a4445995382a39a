"""``attntune report``: one self-contained HTML file per search, built from MLflow alone.

Why MLflow and not the Optuna study: the report must agree with the MLflow UI on every number, and it
must work for any past search on either backend (the Ray backend's study may live elsewhere). The
file embeds plotly.js once (no network needed to view it), every figure's JSON, and one
``<script type="application/json" id="attntune-data">`` block holding the numbers each chart plots.
The same file is logged as the ``report.html`` artifact of the search's parent run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from attntune.dashboards.charts import curves_to_read
from attntune.dashboards.render import build_html
from attntune.model.config import ConfigError
from attntune.search.records import (
    SearchData,
    find_search_run,
    load_search,
    open_store,
    resolve_uri,
    search_of_folder,
)

REPORT_FILE = "report.html"


# --------------------------------------------------------------------------- finding the search


def resolve_search(
    name_or_folder: str, search_run: str | None = None, tracking_uri: str | None = None
) -> tuple[str, str, Path | None]:
    """(tracking URI, parent run id, search output folder or None) for a search folder, job name or
    MLflow experiment name. The Optuna study's user attributes name the run; an experiment name
    falls back to its latest run tagged ``attntune.kind=search``."""
    found = search_of_folder(name_or_folder)
    if found is not None:
        uri = tracking_uri or found.tracking_uri or resolve_uri()
        run_id = search_run or found.parent_run_id
        if not run_id:
            raise ConfigError(f"{found.folder}: the study does not name its MLflow search run (pass --search-run)")
        # Another search's report goes to that search's folder, not this one.
        return uri, run_id, found.folder if run_id == found.parent_run_id else None
    uri = resolve_uri(tracking_uri)
    if search_run is None:
        also = " and no search output folder of that name"
        search_run = find_search_run(open_store(uri), name_or_folder, option="", also=also).info.run_id
    return uri, search_run, None


def report_command(
    name_or_folder: str,
    *,
    search_run: str | None = None,
    output: Path | None = None,
    tracking_uri: str | None = None,
) -> Path:
    """What ``attntune report`` does: resolve, build from MLflow, write, log to the parent run."""
    uri, run_id, folder = resolve_search(name_or_folder, search_run, tracking_uri)
    data = load_search(uri, run_id, curves=curves_to_read)  # raises before anything is written
    if output is not None:
        path = output / REPORT_FILE if output.is_dir() else output
    elif folder is not None:
        path = folder / REPORT_FILE
    else:  # an experiment name: the search's own output folder when it is here, else the default one
        tagged = Path(data.tags.get("attntune.output", "") or "-")
        path = (tagged if tagged.is_dir() else Path("attntune-runs") / data.job_name) / REPORT_FILE
    write_html(data, path)
    log_report(uri, run_id, path)
    return path


def write_report(tracking_uri: str, parent_run_id: str, output: Path, log: bool = True) -> Path:
    """Build the report of one search run from MLflow, write it, and (by default) log it."""
    data = load_search(tracking_uri, parent_run_id, curves=curves_to_read)  # only the curves it draws
    write_html(data, output)
    if log:
        log_report(tracking_uri, parent_run_id, output)
    return output


def write_html(data: SearchData, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(build_html(data), encoding="utf-8")
    tmp.replace(path)


def log_report(uri: str, run_id: str, path: Path) -> None:
    """Log ``path`` as the parent run's ``report.html`` artifact, whatever the file is called."""
    client = open_store(uri)
    if path.name == REPORT_FILE:
        client.log_artifact(run_id, str(path))
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / REPORT_FILE
        shutil.copyfile(path, copy)
        client.log_artifact(run_id, str(copy))

