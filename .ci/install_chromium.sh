#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the report rendering tests
# (tests/test_report.py, tests/test_drift_history.py). Does nothing when /usr/bin/chromium
# is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
bash "$(dirname "$0")/apt_install.sh" chromium fonts-dejavu-core
/usr/bin/chromium --version
