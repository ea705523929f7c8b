"""MLflow's own UI, in a real headless browser (Debian's chromium, driven by Playwright), on
the smoke job's store: the link ``raynas run`` prints opens the runs table, not MLflow's GenAI
pages, with the job's headline metrics as columns and the job's numbers in its row.

``tests/install-browser.sh`` (part of the README's test command) installs chromium.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from cluster_processes import MlflowServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        why = "no chromium on PATH: tests/install-browser.sh installs it"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Chromium's sandbox needs user namespaces, which root in a container does not get.
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_printed_link_opens_the_runs_table_with_the_jobs_numbers(smoke_run, browser,
                                                                 tmp_path):
    from mlflow.tracking import MlflowClient

    link = re.search(r"then open (\S+)", smoke_run["stdout"])
    assert link, smoke_run["stdout"][-2000:]
    parent = MlflowClient(smoke_run["uri"]).search_runs(
        [MlflowClient(smoke_run["uri"]).get_experiment_by_name("smoke").experiment_id],
        filter_string="tags.`raynas.stage` = 'smoke'")[0]
    server = MlflowServer(tmp_path / "ui", store=smoke_run["uri"])
    page = browser.new_page(viewport={"width": 1800, "height": 800})
    try:
        page.goto(link.group(1).replace("http://127.0.0.1:5000", server.uri))
        grid = page.locator(".ag-root")
        for name in ("test_accuracy", "latency_ms", "hypervolume", "search.searcher"):
            grid.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
        named = grid.locator(".ag-row", has_text="smoke").first
        named.wait_for(timeout=30_000)
        # The grid draws a row in parts (the pinned name column, the rest): one row index.
        index = named.get_attribute("row-index")
        cells = " ".join(grid.locator(f'.ag-row[row-index="{index}"]').all_inner_texts())
        body = page.inner_text("body")
    finally:
        shot = tmp_path / "runs-table.png"  # also of a page that failed the test
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        page.close()
        server.stop()
    # The runs table of the model-training pages, not the GenAI overview.
    assert "Runs" in body and "Traces" in body and "Overview" not in body, body[:800]
    # The job's own numbers in its row: what the parent run logged, as the UI rounds them.
    metrics = parent.data.metrics
    for key in ("test_accuracy", "hypervolume"):
        shown = re.findall(r"\d+\.\d+", cells)
        assert any(abs(float(v) - metrics[key]) < 1e-3 for v in shown), (key, metrics, cells)
    assert "optuna_nsga2" in cells, cells
    assert shot.stat().st_size > 20_000  # a page drawn, not a blank one
