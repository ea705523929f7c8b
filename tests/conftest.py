"""How the suite shares the machine's two cores: pytest-xdist runs two worker processes
(``-n 2 --dist loadgroup`` in pyproject.toml) and hands them whole groups of tests.

A group is one test module, so a module's fixtures (a trained checkpoint, a Ray cluster, an
MLflow server) are built once, in one worker, and its tests run in their order; every test
that uses the session's smoke job (``smoke_run``, a full ``raynas run``) is in one group
``smoke``, so that job runs once. Two groups run side by side; much of an integration test is
process start-up, imports and Ray's own start, which leave a core idle for the other group.
"""

from __future__ import annotations

import pytest


def pytest_itemcollected(item):
    # Marked as each test is collected, before xdist reads the groups (its own
    # pytest_collection_modifyitems turns them into node-id suffixes). A module whose tests
    # share nothing costly (``XDIST_EACH_TEST = True``) lends each test a group of its own,
    # so its long jobs can run on both workers.
    if "smoke_run" in getattr(item, "fixturenames", ()):
        group = "smoke"
    elif getattr(item.module, "XDIST_EACH_TEST", False):
        group = item.nodeid
    else:
        group = item.module.__name__
    item.add_marker(pytest.mark.xdist_group(group))
