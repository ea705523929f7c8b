"""Where MLflow's UI opens on raynas's runs, and which columns its runs table shows.

MLflow 3.17's UI chooses between its GenAI pages and its model-training pages by a toggle
kept in the browser (GenAI unless the user switched) or by the page's ``workflowType``
parameter; the experiment's ``mlflow.experimentKind`` tag does not change it. Its runs table
shows no metric or parameter column until the user picks some. A saved view, an experiment tag
``mlflow.sharedViewState.<key>`` holding the table's state, picks them: it is listed under
the table's "Views" menu, and a link with ``viewStateShareKey=<key>`` opens the table with it.

raynas keeps one such view per experiment, named ``raynas``, whose columns are the union of
the headline metrics and parameters of the jobs logged there, and prints a link that opens it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

VIEW_KEY = "raynas"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def column(kind: str, name: str) -> str:
    """MLflow's runs-table column id: ``metrics.`test_accuracy```, ``params.`space```."""
    return f"{kind}.`{name}`"


def view_tag_value(current: str | None, metrics: Sequence[str], params: Sequence[str],
                   now_ms: int | None = None) -> str | None:
    """The saved view's tag value, with ``metrics`` and ``params`` added to the columns that
    ``current`` (the tag's value so far, or None) already shows, nothing shown dropped; None
    when it shows them all already."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    created, columns = now_ms, []
    if current:
        try:
            envelope = json.loads(current)
            created = int(envelope["createdAt"])
            columns = list(json.loads(envelope["state"])["selectedColumns"])
        except (ValueError, KeyError, TypeError):
            pass  # a view edited into another shape: start it afresh
    added = [c for c in dict.fromkeys([*(column("metrics", m) for m in metrics),
                                        *(column("params", p) for p in params)])
             if c not in columns]
    if current and not added:
        return None
    columns += added
    state = {"selectedColumns": columns, "columnOrder": columns}
    return json.dumps({"name": VIEW_KEY, "createdAt": created, "updatedAt": now_ms,
                       "state": json.dumps(state)})


def runs_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The link that opens ``mlflow ui`` on the experiment's runs table, raynas's view."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")
