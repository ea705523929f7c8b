#!/bin/sh
# Debian's chromium, for the MLflow UI test (tests/integration/test_mlflow_ui.py); does
# nothing where chromium is already on PATH, and only says so where apt-get is missing.
command -v chromium >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/install-browser.sh: no apt-get here; install chromium by hand, or the" \
         "MLflow UI test is skipped" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -q >/dev/null &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
        chromium >/dev/null
