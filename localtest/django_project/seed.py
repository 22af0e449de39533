#!/usr/bin/env python3
"""Migrates DATABASE_URL with Django + django-auditlog and writes log entries through the ORM.

Usage: seed.py scenario [N]
  scenario "mixed": create/update/delete/access entries by a full-name actor, an email-only actor,
                    a deleted actor and no actor, with additional_data NULL, {} and
                    {"is_sent": false, "ip_address": ...}.
  scenario "bulk":  N update entries by one actor.
Prints one JSON object: the entries written, keyed by id, with what the document must say.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
if os.environ["DATABASE_URL"].startswith("mysql"):
    import pymysql

    pymysql.install_as_MySQLdb()

import django  # noqa: E402

django.setup()

from auditlog.context import set_actor  # noqa: E402
from auditlog.models import LogEntry  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402

from shop.models import Product  # noqa: E402

call_command("migrate", verbosity=0)

scenario = sys.argv[1]
expected = {}


def remember(entry, actor, operation, additional_data_after):
    entry.refresh_from_db()
    changes = entry.changes
    expected[str(entry.id)] = {
        "actor": actor,
        "operation": operation,
        "target": entry.object_repr,
        "timestamp": entry.timestamp.isoformat(),
        "changes": changes if isinstance(changes, str) else json.dumps(changes) if changes is not None else None,
        "additional_data_after": additional_data_after,
    }


def last_entry():
    return LogEntry.objects.order_by("-id").first()


if scenario == "mixed":
    alice = User.objects.create(username="alice", first_name="Alice", last_name="Auditor", email="alice@example.org")
    bob = User.objects.create(username="bob", email="bob@example.org")  # email only
    carol = User.objects.create(username="carol", first_name="Carol", last_name="Gone")

    with set_actor(alice):
        p = Product.objects.create(name="pen", price=1)
    remember(last_entry(), "Alice Auditor", 0, {"is_sent": True})
    with set_actor(bob):
        p.price = 2
        p.save()
    e = last_entry()
    e.additional_data = {}
    e.save()
    remember(e, "bob@example.org", 1, {"is_sent": True})
    with set_actor(carol):
        q = Product.objects.create(name="ink", price=3)
    e = last_entry()
    e.additional_data = {"is_sent": False, "ip_address": "192.0.2.7"}
    e.save()
    remember(e, "unknown", 0, {"is_sent": True, "ip_address": "192.0.2.7"})
    carol.delete()  # the entry's actor is set to NULL by the foreign key
    with set_actor(alice):
        LogEntry.objects.log_create(q, action=LogEntry.Action.ACCESS, changes=None, force_log=True)
    remember(last_entry(), "Alice Auditor", 3, {"is_sent": True})
    q.delete()  # no actor
    remember(last_entry(), "unknown", 2, {"is_sent": True})
elif scenario == "bulk":
    n = int(sys.argv[2])
    dave = User.objects.create(username="dave", first_name="Dave", last_name="Bulk")
    p = Product.objects.create(name="bulk", price=0)
    LogEntry.objects.all().delete()  # only the N updates below
    with set_actor(dave):
        for i in range(n):
            p.price = i + 1
            p.save()
            remember(last_entry(), "Dave Bulk", 1, {"is_sent": True})
else:
    sys.exit(f"unknown scenario {scenario}")

print(json.dumps(expected))
