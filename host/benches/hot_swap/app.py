"""A connector in Python for the hot-swap benchmark: counts the rows it receives and
says at start which version it is (the `version` of its configuration)."""

import json

from wit_world import exports
from wit_world.imports import log


class TelemetryConnector(exports.TelemetryConnector):
    def __init__(self):
        self.rows = 0

    def start(self, context):
        version = json.loads(context.config_json).get("version", "?")
        log.write(log.Level.INFO, f"version {version} starting at row {context.next_row}")
        self.rows = 0

    def update(self, batch):
        self.rows += len(batch.timestamps_ms)

    def stop(self):
        log.write(log.Level.INFO, f"stopping after {self.rows} rows")
