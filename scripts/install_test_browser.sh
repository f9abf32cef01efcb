#!/usr/bin/env bash
# Install a headless browser (Debian's chromium) for the report test, if it is missing and apt can install it.
# Never fails the build: without a browser, tests/test_report.py skips its rendering check.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get install -y chromium >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y chromium >/dev/null 2>&1; }) \
        || echo "install_test_browser: could not install chromium; the report's browser test will be skipped" >&2
else
    echo "install_test_browser: no apt-get or not root; the report's browser test will be skipped" >&2
fi
exit 0
