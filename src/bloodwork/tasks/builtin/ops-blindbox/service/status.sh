#!/bin/sh
# status the kvd service (see service/README.md).
cd "$(dirname "$0")/.." || exit 1
exec python3 service/app.py status --config service/config.json
