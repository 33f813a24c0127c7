"""Names of the files in a tower's data directory (kept light: the CLI reads them on every call)."""

STORE_NAME = "store.sqlite"
INFO_NAME = "tower.json"
TOKEN_NAME = "api.token"
PID_NAME = "tower.pid"
LOG_NAME = "tower.log"
LOCK_NAME = "tower.lock"
