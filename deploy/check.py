"""`make deploy-check`: lint and render the Helm chart with Helm's own engine, check the plain
manifests, and validate every resource against the Kubernetes API schemas.

Tools (deploy/requirements.txt, installed into .venv): helm-python-sdk (Helm 4's Go SDK as a
shared library: `helm lint` and `helm template` without the helm binary), kubernetes-validate
(the OpenAPI schemas of Kubernetes releases) and yamllint.
"""

import pathlib
import re
import subprocess
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/audit-transfer"
PLAIN = ROOT / "deploy/kubernetes"
KUBE_VERSION = "1.30.0"
ES = {"sink": {"elasticsearch": {"host": "https://opensearch.logging.svc:9200"}}}
# One entry of `targets`: a name and a sink block of the same shape as `sink`.
SIEM = {"name": "siem", "sink": {"type": "elasticsearch", **ES["sink"]}}

# (name, values, expectations): every source and sink combination a user picks.
CASES = [
    ("sql-elasticsearch", ES, {"pvc": False, "monthly": True}),
    (
        "django-scaled-out",
        {**ES, "source": {"type": "DJANGO_AUDITLOG"}, "send": {"parallelism": 4}},
        {"pvc": False, "monthly": True, "parallelism": 4},
    ),
    (
        "castai-file",
        {
            "source": {"type": "CASTAI"},
            "sink": {"type": "file", "file": {"existingClaim": "audit-archive"}},
            "secret": {"data": {"CASTAI_API_KEY": "placeholder"}},
        },
        {"pvc": True, "monthly": False, "state_var": "CASTAI_STATE_FILE"},
    ),
    (
        "cato-events",
        {
            **ES,
            "source": {"type": "CATO"},
            "env": {"CATO_FEED": "events", "CATO_ACCOUNT_ID": "4242"},
            "secret": {"data": {"CATO_API_KEY": "placeholder"}},
        },
        {"pvc": True, "monthly": False, "state_var": "CATO_STATE_FILE"},
    ),
    (
        "s3-cursor-stdout",
        {"source": {"type": "S3_CURSOR"}, "sink": {"type": "stdout"}},
        {"pvc": True, "monthly": False, "state_var": "S3_CURSOR_FILE"},
    ),
    (
        "sql-routed-authfail",
        {
            "sink": {"elasticsearch": {"host": "https://opensearch:9200", "index": "audit-{topic}-{yyyy.MM.dd}"}},
            "routing": {"topicField": "audit_event.topic", "acceptTopics": "authfail"},
        },
        {
            "pvc": False,
            "monthly": True,
            "config": {
                "ROUTING_TOPIC_FIELD": "audit_event.topic",
                "ACCEPT_TOPICS": "authfail",
                "ELASTICSEARCH_APP_AUDIT_LOG_INDEX": "audit-{topic}-{yyyy.MM.dd}",
            },
            "absent": ["ACCEPT_ROUTING_KEYS", "ROUTING_KEY_FIELD"],
        },
    ),
    (
        "sql-splunk-acks",
        {
            "sink": {"type": "splunk", "splunk": {"url": "https://splunk.example:8088", "index": "audit"}},
            "secret": {"data": {"SPLUNK_HEC_TOKEN": "placeholder"}},
        },
        {
            "pvc": False,
            "monthly": True,
            "config": {
                "SINK": "splunk",
                "SPLUNK_HEC_URL": "https://splunk.example:8088",
                "SPLUNK_INDEX": "audit",
                "SPLUNK_SOURCETYPE": "_json",
                "SPLUNK_HEC_ACK": "true",
            },
            "absent": ["ELASTICSEARCH_HOST", "OTEL_EXPORTER_OTLP_ENDPOINT"],
        },
    ),
    (
        "castai-otlp",
        {
            "source": {"type": "CASTAI"},
            "sink": {"type": "otlp", "otlp": {"endpoint": "http://otel-collector.observability:4318"}},
            "secret": {"data": {"CASTAI_API_KEY": "placeholder"}},
        },
        {
            "pvc": True,
            "monthly": False,
            "state_var": "CASTAI_STATE_FILE",
            "config": {
                "SINK": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
                "OTEL_SERVICE_NAME": "audit-transfer",
            },
            "absent": ["ELASTICSEARCH_HOST", "SPLUNK_HEC_URL"],
        },
    ),
    (
        "sql-archive-s3",
        {
            "sink": {"type": "file", "file": {"path": "s3://audit-archive/prod/", "gzip": True, "layout": "dated"}},
            "secret": {"existingSecret": "archive-writer"},
        },
        {
            "pvc": False,
            "monthly": True,
            "secret": False,
            "config": {"SINK": "file", "OUTPUT_PATH": "s3://audit-archive/prod/", "OUTPUT_LAYOUT": "dated"},
        },
    ),
    (
        "cdp-existing-secret",
        {**ES, "source": {"type": "CDP_ARCHIVE"}, "secret": {"existingSecret": "cdp"}},
        {"pvc": False, "monthly": False, "secret": False},
    ),
    (
        "sql-targets-siem-archive",
        {
            "routing": {"topicField": "audit_event.topic"},
            "targets": [
                {
                    "name": "siem",
                    "acceptTopics": "authfail,admin",
                    "sink": {
                        "type": "elasticsearch",
                        "elasticsearch": {"host": "https://opensearch:9200", "index": "audit-{topic}-{yyyy.MM.dd}"},
                    },
                },
                {
                    "name": "archive",
                    "sink": {"type": "file", "file": {"path": "s3://audit-archive/prod/", "gzip": True}},
                },
            ],
            "secret": {"data": {"TARGET_SIEM_ELASTICSEARCH_PASSWORD": "placeholder"}},
        },
        {
            "pvc": False,
            "monthly": True,
            "mounts": {},
            "targets_exact": True,
            "config": {
                "TARGETS": "siem,archive",
                "TARGET_SIEM_SINK": "elasticsearch",
                "TARGET_SIEM_ELASTICSEARCH_HOST": "https://opensearch:9200",
                "TARGET_SIEM_ELASTICSEARCH_APP_AUDIT_LOG_INDEX": "audit-{topic}-{yyyy.MM.dd}",
                "TARGET_SIEM_ACCEPT_TOPICS": "authfail,admin",
                "TARGET_ARCHIVE_SINK": "file",
                "TARGET_ARCHIVE_OUTPUT_PATH": "s3://audit-archive/prod/",
                "TARGET_ARCHIVE_OUTPUT_GZIP": "true",
                "TARGET_ARCHIVE_OUTPUT_LAYOUT": "pages",
                "ROUTING_TOPIC_FIELD": "audit_event.topic",
            },
            "absent": ["SINK", "ACCEPT_TOPICS", "ACCEPT_ROUTING_KEYS", "ELASTICSEARCH_HOST", "OUTPUT_PATH"],
        },
    ),
    (
        "django-targets-local-file",
        {
            "source": {"type": "DJANGO_AUDITLOG"},
            "routing": {"keyField": "env"},
            "targets": [
                {
                    "name": "siem",
                    "acceptRoutingKeys": "prod",
                    "sink": {"type": "elasticsearch", "elasticsearch": {"host": "https://es:9200"}},
                },
                {
                    "name": "Alerts",
                    "acceptTopics": "authfail",
                    "sink": {"type": "splunk", "splunk": {"url": "https://splunk.example:8088"}},
                },
                # A local path: /data/local by default, on the claim.
                {
                    "name": "local",
                    "sink": {"type": "file", "file": {"existingClaim": "audit-archive", "layout": "routed"}},
                },
            ],
            "secret": {"existingSecret": "audit-targets"},
        },
        {
            "pvc": False,
            "monthly": True,
            "secret": False,
            "mounts": {"/data/local": "audit-archive"},
            "targets_exact": True,
            "config": {
                "TARGETS": "siem,Alerts,local",
                "TARGET_SIEM_SINK": "elasticsearch",
                "TARGET_SIEM_ELASTICSEARCH_HOST": "https://es:9200",
                "TARGET_SIEM_ELASTICSEARCH_APP_AUDIT_LOG_INDEX": "app_audit_log",
                "TARGET_SIEM_ACCEPT_ROUTING_KEYS": "prod",
                "TARGET_ALERTS_SINK": "splunk",
                "TARGET_ALERTS_SPLUNK_HEC_URL": "https://splunk.example:8088",
                "TARGET_ALERTS_SPLUNK_SOURCETYPE": "_json",
                "TARGET_ALERTS_SPLUNK_HEC_ACK": "true",
                "TARGET_ALERTS_ACCEPT_TOPICS": "authfail",
                "TARGET_LOCAL_SINK": "file",
                "TARGET_LOCAL_OUTPUT_PATH": "/data/local",
                "TARGET_LOCAL_OUTPUT_GZIP": "false",
                "TARGET_LOCAL_OUTPUT_LAYOUT": "routed",
                "ROUTING_KEY_FIELD": "env",
            },
            "absent": ["SINK", "ACCEPT_TOPICS", "ACCEPT_ROUTING_KEYS"],
        },
    ),
]

# Values the chart must refuse, with a message naming the value.
REFUSED = [
    ({"sink": {"type": "elasticsearch"}}, "sink.elasticsearch.host"),
    ({**ES, "source": {"type": "KAFKA"}}, "source.type"),
    ({**ES, "source": {"type": "CASTAI"}, "send": {"parallelism": 2}}, "send.parallelism"),
    ({"sink": {"type": "file"}}, "sink.file.existingClaim"),
    ({"sink": {"type": "splunk"}}, "sink.splunk.url"),
    ({"sink": {"type": "otlp"}}, "sink.otlp.endpoint"),
    ({"sink": {"type": "kinesis"}}, "sink.type"),
    ({**ES, "routing": {"acceptTopics": "a"}, "env": {"ACCEPT_TOPICS": "b"}}, "env.ACCEPT_TOPICS"),
    ({"targets": [SIEM, {**SIEM, "name": "SIEM"}]}, "targets[1].name"),
    ({"targets": [{**SIEM, "name": "my-siem"}]}, "targets[0].name"),
    ({"source": {"type": "CDP_ARCHIVE"}, "targets": [SIEM]}, "targets with source.type"),
    ({"targets": [SIEM, {"name": "local", "sink": {"type": "file"}}]}, "targets[1].sink.file.existingClaim"),
    ({"targets": [{"name": "siem", "sink": {"type": "elasticsearch"}}]}, "targets[0].sink.elasticsearch.host"),
    ({"targets": [SIEM], "routing": {"acceptTopics": "a"}}, "routing.acceptTopics"),
    ({"targets": [SIEM], "env": {"SINK": "file"}}, "env.SINK"),
]

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def dockerfile_image():
    """The image name the Dockerfile's build comment tags, and its USER."""
    text = (ROOT / "Dockerfile").read_text()
    name = re.search(r"docker build -t (\S+) \.", text).group(1)
    user = re.search(r"^USER (\S+)", text, re.M).group(1)
    return name, user


def validate(docs, where):
    image, user = dockerfile_image()
    assert user == "nonroot:nonroot", user  # distroless nonroot is uid 65532
    kinds = []
    for doc in docs:
        if not doc:
            continue
        kinds.append(doc["kind"])
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{where}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
        if doc["kind"] != "CronJob":
            continue
        job = doc["spec"]["jobTemplate"]["spec"]
        pod = job["template"]["spec"]
        name = f"{where}: CronJob {doc['metadata']['name']}"
        for key in ("backoffLimit", "activeDeadlineSeconds"):
            if key not in job:
                fail(f"{name}: no {key}")
        if "concurrencyPolicy" not in doc["spec"]:
            fail(f"{name}: no concurrencyPolicy")
        if pod["securityContext"].get("runAsUser") != 65532 or not pod["securityContext"].get("runAsNonRoot"):
            fail(f"{name}: pod must run as the image's nonroot user 65532")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{name}: container needs readOnlyRootFilesystem and no privilege escalation")
            if "limits" not in c.get("resources", {}) or "requests" not in c.get("resources", {}):
                fail(f"{name}: container needs resource requests and limits")
            if c["image"].split(":")[0] != image:
                fail(f"{name}: image {c['image']} is not the Dockerfile's {image}")
            if not any("secretRef" in e for e in c.get("envFrom", [])):
                fail(f"{name}: credentials must come from a Secret (envFrom secretRef)")
    return kinds


def check_plain():
    docs = []
    for path in sorted(PLAIN.glob("*.yaml")):
        docs.extend(yaml.safe_load_all(path.read_text()))
    kinds = validate(docs, "deploy/kubernetes")
    for want in ("Secret", "ConfigMap", "CronJob"):
        if want not in kinds:
            fail(f"deploy/kubernetes: no {want}")
    if kinds.count("CronJob") != 2:
        fail("deploy/kubernetes: expected the send and the monthly CronJob")
    print(f"ok   deploy/kubernetes: {', '.join(kinds)}")


def check_chart():
    report = helm.lint(str(CHART), ES, strict=True, kube_version=f"v{KUBE_VERSION}")
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    # "icon is recommended" is informational (severity 1) and not about deploying.
    if bad:
        fail(f"helm lint: {bad}")
    else:
        print("ok   helm lint")
    with helm.Chart.load(str(CHART)) as chart:
        for name, values, want in CASES:
            manifests = chart.render(values, name="audit", namespace="audit")
            docs = []
            for path, text in manifests.items():
                if path.endswith(".yaml"):
                    docs.extend(d for d in yaml.safe_load_all(text) if d)
            kinds = validate(docs, f"chart[{name}]")
            by_kind = {}
            for d in docs:
                by_kind.setdefault(d["kind"], []).append(d)
            if ("PersistentVolumeClaim" in kinds) != want["pvc"]:
                fail(f"chart[{name}]: PersistentVolumeClaim expected: {want['pvc']}")
            crons = {d["metadata"]["name"] for d in by_kind.get("CronJob", [])}
            if ("audit-audit-transfer-monthly" in crons) != want["monthly"]:
                fail(f"chart[{name}]: monthly CronJob expected: {want['monthly']}")
            if ("Secret" in kinds) != want.get("secret", True):
                fail(f"chart[{name}]: Secret expected: {want.get('secret', True)}")
            config = by_kind["ConfigMap"][0]["data"]
            for k, v in want.get("config", {}).items():
                if config.get(k) != v:
                    fail(f"chart[{name}]: {k}={config.get(k)!r}, expected {v!r}")
            for k in want.get("absent", []):
                if k in config:
                    fail(f"chart[{name}]: {k} must not be set")
            # The job refuses a variable under a target's prefix that the target's sink does not read.
            if want.get("targets_exact"):
                extra = sorted(k for k in config if k.startswith("TARGET") and k not in want["config"])
                if extra:
                    fail(f"chart[{name}]: unexpected target variables {extra}")
            if "state_var" in want and not config.get(want["state_var"], "").startswith("/state/"):
                fail(f"chart[{name}]: {want['state_var']} must point into the /state volume")
            if "mounts" in want:
                for cron in by_kind["CronJob"]:
                    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                    claims = {
                        v["name"]: v["persistentVolumeClaim"]["claimName"]
                        for v in pod["volumes"]
                        if "persistentVolumeClaim" in v
                    }
                    mounts = {
                        m["mountPath"]: claims[m["name"]]
                        for m in pod["containers"][0]["volumeMounts"]
                        if m["name"] in claims
                    }
                    if mounts != want["mounts"]:
                        fail(f"chart[{name}]: {cron['metadata']['name']} mounts {mounts}, expected {want['mounts']}")
            send = next(d for d in by_kind["CronJob"] if d["metadata"]["name"].endswith("-send"))
            par = send["spec"]["jobTemplate"]["spec"].get("parallelism")
            if par != want.get("parallelism", 1):
                fail(f"chart[{name}]: parallelism {par}")
            print(f"ok   chart[{name}]: {', '.join(sorted(kinds))}")
        for values, needle in REFUSED:
            try:
                chart.render(values, name="audit", namespace="audit")
                fail(f"chart accepted {values}")
            except Exception as e:  # HelmRenderError
                if needle not in str(e):
                    fail(f"chart refused {values} without naming {needle}: {e}")
                else:
                    print(f"ok   chart refuses bad {needle}")


def check_yamllint():
    files = [str(p) for p in PLAIN.glob("*.yaml")] + [str(CHART / "values.yaml"), str(CHART / "Chart.yaml")]
    config = "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"
    r = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-d", config, *files])
    if r.returncode != 0:
        fail("yamllint")
    else:
        print("ok   yamllint")


check_yamllint()
check_plain()
check_chart()
if failures:
    print(f"{len(failures)} deploy check(s) failed")
    sys.exit(1)
print("deploy: all checks passed")
