"""The web dashboard in headless Chromium, driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: JSON messages ending in NUL on fds 3/4; no websocket client or
browser download needed): the page loads, draws one series per device, and follows new events."""
import fcntl
import json
import os
import queue
import signal
import subprocess
import threading
import time

import pytest

from monitoring.exporter import serve

from test_mon_exporter import JobWriter

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--remote-debugging-pipe"]


class Browser:
    """Headless Chromium and a minimal CDP client over its debugging pipe."""

    def __init__(self, user_data_dir):
        cmd_r, self._cmd_w = os.pipe()      # we write commands; chromium reads fd 3
        self._out_r, out_w = os.pipe()      # chromium writes fd 4; we read

        def child_fds():
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = open(os.path.join(user_data_dir, "chromium.log"), "wb")
        self.proc = subprocess.Popen(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
                                     preexec_fn=child_fds, close_fds=False, start_new_session=True,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        os.close(cmd_r)
        os.close(out_w)
        self._id = 0
        self._replies = {}
        self._cond = threading.Condition()
        self.events = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._out_r, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self.events.put(msg)

    def send(self, method, session=None, timeout=30, **params):
        self._id += 1
        mid = self._id
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        with self._cond:
            ok = self._cond.wait_for(lambda: mid in self._replies or self.proc.poll() is not None, timeout)
            reply = self._replies.pop(mid, None)
        assert ok and reply is not None, f"no reply to {method} (chromium rc={self.proc.poll()})"
        assert "error" not in reply, reply
        return reply["result"]

    def open(self, url):
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Runtime.enable", session=session)
        self.send("Page.navigate", session=session, url=url)
        return session

    def eval(self, session, expression):
        res = self.send("Runtime.evaluate", session=session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    def exceptions(self):
        out = []
        while not self.events.empty():
            ev = self.events.get()
            if ev.get("method") == "Runtime.exceptionThrown":
                out.append(ev["params"]["exceptionDetails"])
        return out

    def close(self):
        try:
            if self.proc.poll() is None:
                os.write(self._cmd_w, json.dumps({"id": 10 ** 6, "method": "Browser.close"}).encode() + b"\0")
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            for fd in (self._cmd_w, self._out_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.log.close()


PAGE_STATE = """JSON.stringify((() => {
  const q = (s) => document.querySelector(s);
  if (!document.body || !q("#step-chart") || !q("#devices tbody")) return null;   // still loading
  const chart = (id) => ({series: +q(id).dataset.seriesCount, points: +q(id).dataset.points,
                          labels: q(id).dataset.labels || "",
                          drawn: document.querySelectorAll(id + " .u-legend .u-series").length - 1,
                          canvas: document.querySelectorAll(id + " canvas").length});
  return {updates: +document.body.dataset.updates, error: document.body.dataset.error || null,
          maxStep: +(document.body.dataset.maxGlobalStep || 0), state: document.body.dataset.jobState || null,
          rows: document.querySelectorAll("#devices tbody tr").length,
          stragglers: Array.from(document.querySelectorAll("#devices tbody tr.straggler")).map((tr) => +tr.dataset.rank),
          job: q("#job-name").textContent,
          step: chart("#step-chart"), loss: chart("#loss-chart"), miou: chart("#miou-chart")};
})())"""


def wait_page(browser, session, cond, timeout=30, what=""):
    deadline = time.time() + timeout
    st = None
    while time.time() < deadline:
        st = json.loads(browser.eval(session, PAGE_STATE) or "null")
        if st and cond(st):
            return st
        time.sleep(0.2)
    raise AssertionError(f"page never showed {what}; last state: {st}")


@pytest.mark.browser
def test_dashboard_draws_one_series_per_device_and_updates(tmp_path):
    jw = JobWriter(tmp_path / "job1", ranks=3)
    for r in range(2):
        jw.emit(r, "start", pid=100 + r, mode="dynamic", backend="cpu", config_sha="x", mindspore="2.10")
        jw.steps(r, 1, 5, 0.2 * (r + 1))
        jw.emit(r, "epoch", epoch=1, epoch_time_s=1.0, mean_step_time_s=0.2, val_loss=0.3, miou=0.3 + r / 10,
                macc=0.5, allacc=0.8, best_miou=0.3 + r / 10)
    srv = serve(tmp_path / "job1", port=0, npu_reader=None)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    browser = Browser(str(profile))
    try:
        session = browser.open(srv.url + "/?interval=300")
        st = wait_page(browser, session, lambda s: s["updates"] >= 1 and s["step"]["canvas"] > 0, what="a first render")
        assert st["error"] is None and st["job"] == "job1" and st["state"] == "running"
        assert st["step"]["series"] == 2 and st["step"]["drawn"] == 2 and st["step"]["points"] >= 5
        assert st["step"]["labels"] == "rank 0 (dev 4)|rank 1 (dev 5)"
        assert st["loss"]["series"] == 2 and st["loss"]["drawn"] == 2
        assert st["miou"]["series"] == 2 and st["miou"]["points"] == 1
        assert st["rows"] == 2 and st["maxStep"] == 5
        first_updates = st["updates"]

        # new events: the running ranks step on, and a third device joins late and runs slowly
        jw.steps(0, 6, 3, 0.2)
        jw.steps(1, 6, 3, 0.4)
        jw.emit(2, "start", pid=102, mode="dynamic", backend="cpu", config_sha="x", mindspore="2.10")
        jw.steps(2, 1, 8, 1.0)
        st = wait_page(browser, session, lambda s: s["step"]["series"] == 3 and s["maxStep"] == 8,
                       what="the third device and the new steps")
        assert st["updates"] > first_updates
        assert st["step"]["drawn"] == 3 and st["rows"] == 3
        assert st["step"]["labels"].endswith("rank 2 (dev 6)")
        assert st["stragglers"] == [2]             # rank 2's steps take 1.0 s against 0.2 and 0.4 s
        assert browser.exceptions() == []
    finally:
        browser.close()
        srv.close()
