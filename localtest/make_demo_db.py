#!/usr/bin/env python3
"""Creates a SQLite database with structured-log-transfer's audit_logs table and sample rows.

Usage: make_demo_db.py PATH [ROWS]
"""
import json
import sqlite3
import sys
from datetime import datetime, timedelta, timezone

path = sys.argv[1]
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 200
db = sqlite3.connect(path)
db.execute(
    "CREATE TABLE IF NOT EXISTS audit_logs (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " is_sent BOOL NOT NULL DEFAULT 0, message TEXT NOT NULL, created_at TEXT NOT NULL)"
)
start = datetime.now(timezone.utc) - timedelta(minutes=rows)
operations = ["CREATE", "READ", "UPDATE", "DELETE"]
for n in range(rows):
    at = start + timedelta(minutes=n)
    message = {
        "audit_event": {
            "origin": "demo-service",
            "status": "SUCCESS",
            "date_time_epoch": int(at.timestamp() * 1000),
            "date_time": at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "actor": {"role": "USER", "user_id": f"user-{n % 7}", "ip_address": "192.0.2.%d" % (n % 250)},
            "operation": operations[n % 4],
            "target": {"path": f"/v1/profiles/{n}", "object_ids": [str(n)]},
        }
    }
    db.execute(
        "INSERT INTO audit_logs (is_sent, message, created_at) VALUES (0, ?, ?)",
        (json.dumps(message), at.strftime("%Y-%m-%d %H:%M:%S.%f")),
    )
db.commit()
print(f"created {path} with {rows} unsent audit rows")
