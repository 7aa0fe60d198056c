#!/bin/sh
# start the kvd service (see service/README.md).
cd "$(dirname "$0")/.." || exit 1
exec python3 service/app.py start --config service/config.json
