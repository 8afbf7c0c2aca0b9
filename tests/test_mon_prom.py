"""Prometheus side: alert rules (promtool check + unit tests), the example config, the Grafana
dashboard's queries, and a REAL Prometheus server scraping a running exporter."""
import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cluster.npu_smi import parse_npu_smi_info
from monitoring.exporter import serve

from test_mon_exporter import JobWriter, get, samples
from helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"
PROM_CONFIG = ROOT / "monitoring" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "pspnet.json"


def promtool(*args, input=None):
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, input=input)


def test_alert_rules_pass_promtool_check_rules():
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 5 rules found" in r.stdout


def test_example_prometheus_config_is_valid():
    r = promtool("check", "config", str(PROM_CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr


ALERT_TESTS = """
rule_files:
  - {alerts}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'pspnet_up{{job="j",host="h",rank="0",device="0"}}'
        values: '1x20'
      - series: 'pspnet_up{{job="j",host="h",rank="1",device="1"}}'
        values: '1 1 0x18'
      - series: 'pspnet_job_state{{job="j",state="running"}}'
        values: '1x20'
      - series: 'pspnet_up{{job="done",host="h",rank="0",device="0"}}'
        values: '0x20'
      - series: 'pspnet_job_state{{job="done",state="succeeded"}}'
        values: '1x20'
      - series: 'pspnet_straggler{{job="j",host="h",rank="1",device="1"}}'
        values: '0 0 1x18'
      - series: 'pspnet_last_event_age_seconds{{job="j",host="h",rank="0",device="0"}}'
        values: '0+60x20'
      - series: 'pspnet_job_restarts_total{{job="j"}}'
        values: '0 1 2 3 3 3 3 3 3 3'
      - series: 'pspnet_npu_up{{host="h",npu="0",chip="1",device="1"}}'
        values: '1 0x10'
    alert_rule_test:
      - eval_time: 2m
        alertname: PspnetRankDown
        exp_alerts: []
      - eval_time: 4m
        alertname: PspnetRankDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: j, host: h, rank: "1", device: "1"}}
            exp_annotations:
              summary: "pspnet job j: rank 1 (device 1 on h) is down"
              description: "The rank has had no live process (or no event) for over a minute while the job is running."
      - eval_time: 5m
        alertname: PspnetStraggler
        exp_alerts: []
      - eval_time: 8m
        alertname: PspnetStraggler
        exp_alerts:
          - exp_labels: {{severity: warning, job: j, host: h, rank: "1", device: "1"}}
            exp_annotations:
              summary: "pspnet job j: rank 1 (device 1 on h) is a straggler"
              description: "Its p50 step time has been above the others' median for 5 minutes; the whole job runs at its pace."
      - eval_time: 11m
        alertname: PspnetStalled
        exp_alerts: []
      - eval_time: 13m
        alertname: PspnetStalled
        exp_alerts:
          - exp_labels: {{severity: critical, job: j, host: h, rank: "0", device: "0"}}
            exp_annotations:
              summary: "pspnet job j: rank 0 has been silent for 13m 0s"
              description: "No step, epoch or checkpoint event for more than 10 minutes while the job is running."
      - eval_time: 2m
        alertname: PspnetRestartStorm
        exp_alerts: []
      - eval_time: 4m
        alertname: PspnetRestartStorm
        exp_alerts:
          - exp_labels: {{severity: critical, job: j}}
            exp_annotations:
              summary: "pspnet job j restarted 3 times in 30 minutes"
              description: "Look at the first failing rank in job.json and logs/rank_<R>.log; restarts are not fixing it."
      - eval_time: 3m
        alertname: PspnetNpuUnhealthy
        exp_alerts:
          - exp_labels: {{severity: critical, host: h, npu: "0", chip: "1", device: "1"}}
            exp_annotations:
              summary: "NPU 0 chip 1 on h reports health other than OK"
              description: "npu-smi info shows the chip as not OK; ranks on it will fail or slow down."
"""


def test_alerts_fire_when_they_should_and_not_before(tmp_path):
    """promtool's rule unit tests: each alert, its threshold and `for`, and that a finished job's ranks are not 'down'."""
    t = tmp_path / "alerts_test.yml"
    t.write_text(ALERT_TESTS.format(alerts=json.dumps(str(ALERTS))))
    r = promtool("test", "rules", str(t))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def dashboard_queries():
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))
    walk(dash["panels"])
    return dash, out


def test_grafana_dashboard_covers_the_views_and_uses_only_exported_metrics(tmp_path, fixtures_dir):
    dash, queries = dashboard_queries()
    assert dash["uid"] and dash["templating"]["list"]
    titles = " ".join(t for t, _ in queries).lower()
    for view in ("step time per device", "images/s", "loss", "miou", "straggler", "restarts"):
        assert view in titles, view
    used = {m for _, q in queries for m in re.findall(r"\bpspnet_[a-z0-9_]+", q)}
    # a real scrape with every kind of family present (process stats, npu-smi, validation)
    jw = JobWriter(tmp_path / "job1", ranks=2)
    for r in range(2):
        jw.steps(r, 1, 3, 0.3)
        jw.emit(r, "epoch", epoch=1, epoch_time_s=1.0, mean_step_time_s=0.3, val_loss=0.2, miou=0.4, macc=0.5,
                allacc=0.8, best_miou=0.4)
    chips = parse_npu_smi_info((fixtures_dir / "npu-smi-910b4-2dev.txt").read_text())
    with serve(tmp_path / "job1", port=0, npu_reader=lambda: chips,
               process_stats=lambda: {0: {"pid": 1, "cpu_seconds": 1.0, "rss_bytes": 1.0}}) as srv:
        exported = {n for n, _ in samples(get(srv.url + "/metrics")[2])}
    assert used and not used - exported, sorted(used - exported)


def test_grafana_dashboard_layout_is_importable():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "job"]
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):          # no two panels overlap
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])


# ------------------------------------------------------------------ a real Prometheus server

def _api(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def prometheus(tmp_path):
    """Start /usr/bin/prometheus scraping a target set later; always stopped at the end."""
    procs = []

    def start(target):
        port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{json.dumps(str(ALERTS))}]\n"
            "scrape_configs:\n"
            "  - job_name: pspnet\n"
            "    honor_labels: true\n"
            "    scrape_interval: 1s\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n")
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
        procs.append((proc, log))
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return base
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready:\n" + (tmp_path / "prometheus.log").read_text())

    yield start
    for proc, log in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.mark.prometheus
def test_real_prometheus_scrapes_per_device_step_time(tmp_path, prometheus):
    jw = JobWriter(tmp_path / "job1", ranks=2)
    jw.steps(0, 1, 3, 0.25)
    jw.steps(1, 1, 3, 0.5)
    srv = serve(tmp_path / "job1", port=0, npu_reader=None)
    try:
        base = prometheus(f"127.0.0.1:{srv.port}")

        def step_times():
            res = _api(base, "/api/v1/query", query='pspnet_step_time_seconds{job="job1"}')
            assert res["status"] == "success"
            return {m["metric"]["rank"]: float(m["value"][1]) for m in res["data"]["result"]}

        got = wait_for(lambda: step_times() if len(step_times()) == 2 else None, interval=0.3, what="two devices")
        assert got == {"0": 0.25, "1": 0.5}
        # the job keeps training: rank 1 slows down; Prometheus sees the new value on a later scrape
        jw.steps(1, 4, 3, 1.5)
        jw.steps(0, 4, 3, 0.25)
        got = wait_for(lambda: (lambda v: v if v.get("1") == 1.5 else None)(step_times()), interval=0.3, what="new step time")
        assert got["0"] == 0.25
        # the labels Prometheus stored: exporter's job id kept (honor_labels), device and host
        res = _api(base, "/api/v1/query", query='pspnet_step_time_seconds{job="job1",rank="1"}')
        metric = res["data"]["result"][0]["metric"]
        assert metric["device"] == "5" and metric["host"] == "node0"
        # the histogram: 6 steps of rank 1 counted, 3 of them above 1 s
        res = _api(base, "/api/v1/query",
                   query='pspnet_step_duration_seconds_count{job="job1",rank="1"} - ignoring (le) '
                         'pspnet_step_duration_seconds_bucket{job="job1",rank="1",le=~"1(\\\\.0)?"}')
        assert float(res["data"]["result"][0]["value"][1]) == 3
        # the alert rules loaded and evaluate without errors
        def rules():
            rs = [r for g in _api(base, "/api/v1/rules")["data"]["groups"] for r in g["rules"]]
            return rs if rs and all(r["health"] == "ok" for r in rs) else None
        rules = wait_for(rules, interval=0.3, what="alert rules evaluated")
        assert {r["name"] for r in rules} >= {"PspnetRankDown", "PspnetStraggler", "PspnetStalled",
                                              "PspnetRestartStorm"}
        # every Grafana query parses and runs on real data
        _, queries = dashboard_queries()
        for title, q in queries:
            res = _api(base, "/api/v1/query", query=q.replace("$job", ".*"))
            assert res["status"] == "success", (title, q, res)
        res = _api(base, "/api/v1/query", query='pspnet_step_time_seconds{job=~".*"}')
        assert len(res["data"]["result"]) == 2
    finally:
        srv.close()
