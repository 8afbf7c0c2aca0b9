// pspnet-cluster dashboard: polls api/state and draws it with uPlot (vendored next to this file).
// What is drawn is also written into data-* attributes (series count, points, update count), so a
// headless browser test can check the rendered state without looking at pixels.
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var interval = Math.max(200, parseInt(params.get("interval") || "1500", 10) || 1500);
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf", "#393b79", "#ad494a", "#8ca252", "#bd9e39", "#7b4173", "#3182bd"];
  var charts = {};          // element id -> {plot, key}
  var selectedJob = params.get("job") || null;
  var updates = 0;
  var lastState = null;

  function $(id) { return document.getElementById(id); }
  function fmt(v, digits) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    return v.toFixed(digits === undefined ? 3 : digits);
  }
  function age(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; });
  }

  function drawChart(id, data, labels, opts) {
    var el = $(id);
    var xs = data.x || [];
    var ys = data.y || [];
    el.dataset.seriesCount = String(ys.length);
    el.dataset.points = String(xs.length);
    el.dataset.labels = labels.join("|");
    var key = labels.join("|") + "#" + (opts.time ? "t" : "n");
    var entry = charts[id];
    if (!xs.length || !ys.length) {
      if (entry) { entry.plot.destroy(); delete charts[id]; }
      el.innerHTML = '<div class="empty">no data yet</div>';
      return;
    }
    var aligned = [xs].concat(ys);
    if (entry && entry.key === key) {
      entry.plot.setData(aligned);
      return;
    }
    if (entry) entry.plot.destroy();
    el.innerHTML = "";
    var width = Math.max(300, el.clientWidth || 420);
    var series = [{label: opts.time ? "time" : opts.xLabel || "x"}];
    labels.forEach(function (lab, i) {
      series.push({label: lab, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
                   points: {show: !!opts.points}});
    });
    var plot = new uPlot({
      width: width, height: 220, series: series,
      scales: {x: {time: !!opts.time}},
      axes: [{}, {size: 60}],
      legend: {live: true},
    }, aligned, el);
    charts[id] = {plot: plot, key: key};
  }

  function renderTable(job) {
    var tbody = document.querySelector("#devices tbody");
    var rows = job.devices.map(function (d) {
      var cls = [d.straggler ? "straggler" : "", d.dead ? "dead" : "", d.stalled ? "stalled" : ""].join(" ").trim();
      var flags = (d.straggler ? '<span class="flag straggler">straggler</span>' : "") +
                  (d.dead ? '<span class="flag dead">dead</span>' : "") +
                  (d.stalled ? '<span class="flag stalled">stalled</span>' : "");
      var prog = "";
      if (d.steps_per_epoch) {
        var pct = Math.max(0, Math.min(100, 100 * (d.step || 0) / d.steps_per_epoch));
        prog = '<span class="bar"><i style="width:' + pct.toFixed(0) + '%"></i></span>';
      }
      var epoch = prog + (d.epoch || 0) + (d.epochs ? "/" + d.epochs : "") +
                  (d.steps_per_epoch ? " · " + (d.step || 0) + "/" + d.steps_per_epoch : "");
      return '<tr data-rank="' + d.rank + '" data-state="' + esc(d.state) + '" data-straggler="' + (d.straggler ? 1 : 0) +
             '" data-global-step="' + (d.global_step || 0) + '" class="' + cls + '">' +
             "<td>" + d.rank + "</td><td>" + (d.device === null ? "–" : d.device) + '</td><td class="l">' + esc(d.host || "") +
             '</td><td class="l state-' + esc(d.state) + '">' + esc(d.state) + flags + '</td><td class="l">' + epoch +
             "</td><td>" + (d.global_step || 0) + "</td><td>" + fmt(d.step_time_s) + "</td><td>" + fmt(d.step_time_p50_s) +
             "</td><td>" + fmt(d.step_time_p95_s) + "</td><td>" + fmt(d.images_per_s, 1) + "</td><td>" + fmt(d.loss, 4) +
             "</td><td>" + fmt(d.val_loss, 4) + "</td><td>" + fmt(d.miou, 4) + "</td><td>" + fmt(d.best_miou, 4) +
             "</td><td>" + age(d.last_event_age_s) + "</td></tr>";
    });
    tbody.innerHTML = rows.join("");
    $("devices").dataset.rows = String(job.devices.length);
  }

  function render(state) {
    var jobs = state.jobs || [];
    var errs = state.errors || [];
    var banner = $("errors");
    banner.hidden = !errs.length;
    banner.textContent = errs.length ? "exporter: " + errs.join("; ") : "";
    var sel = $("job-select");
    if (jobs.length > 1) {
      sel.hidden = false;
      var names = jobs.map(function (j) { return j.job; });
      if (sel.dataset.names !== names.join("|")) {
        sel.innerHTML = names.map(function (n) { return "<option>" + esc(n) + "</option>"; }).join("");
        sel.dataset.names = names.join("|");
      }
      if (selectedJob) sel.value = selectedJob;
    } else {
      sel.hidden = true;
    }
    var job = jobs.filter(function (j) { return j.job === selectedJob; })[0] || jobs[0];
    document.body.dataset.jobs = String(jobs.length);
    if (!job) return;
    $("job-name").textContent = job.job || "(unnamed)";
    $("job-state").textContent = job.state;
    $("job-attempt").textContent = job.attempt;
    $("job-restarts").textContent = job.restarts;
    $("job-devices").textContent = job.devices.length;
    $("job-ips").textContent = fmt(job.total_images_per_s, 1);
    $("job-stragglers").textContent = job.stragglers.length ?
      job.stragglers.map(function (r) { return "rank " + r; }).join(", ") : "none";
    document.body.dataset.jobState = job.state;
    var maxStep = 0;
    job.devices.forEach(function (d) { maxStep = Math.max(maxStep, d.global_step || 0); });
    document.body.dataset.maxGlobalStep = String(maxStep);
    var c = job.charts;
    drawChart("step-chart", c.step_time, c.labels, {time: true});
    drawChart("loss-chart", c.loss, c.labels, {time: true});
    drawChart("miou-chart", c.miou, c.labels, {time: false, xLabel: "epoch", points: true});
    renderTable(job);
  }

  function poll() {
    fetch("api/state", {cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (state) {
        lastState = state;
        render(state);
        updates += 1;
        document.body.dataset.updates = String(updates);
        delete document.body.dataset.error;
        var conn = $("conn");
        conn.className = "";
        conn.textContent = "updated " + new Date().toLocaleTimeString();
      })
      .catch(function (err) {
        document.body.dataset.error = String(err);
        var conn = $("conn");
        conn.className = "down";
        conn.textContent = "no connection to the exporter (" + err + ")";
      })
      .then(function () { setTimeout(poll, interval); });
  }

  $("job-select").addEventListener("change", function (e) {
    selectedJob = e.target.value;
    if (lastState) render(lastState);
  });
  poll();
})();
