// The overview's charts (uPlot, vendored), redrawn from /console/overview.json every interval.
"use strict";
(function () {
  var root = document.getElementById("charts");
  var note = document.getElementById("charts-note");
  var interval = parseFloat(root.getAttribute("data-interval")) * 1000;
  var colors = ["#1f4e8c", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d"];
  var charts = [];

  function columns(data, box) {
    var names = box.getAttribute("data-series").split(" ");
    var labels = box.getAttribute("data-labels").split(" ");
    if (names[0] === "refused") {
      names = Object.keys(data.refused);
      labels = names.map(function (s) { return "HTTP " + s; });
      return { labels: labels, values: names.map(function (s) { return data.refused[s]; }) };
    }
    return { labels: labels, values: names.map(function (n) { return data[n]; }) };
  }

  function draw(data) {
    note.textContent = data.t.length ? "" : "Collecting: the first point appears within seconds.";
    root.querySelectorAll(".chart").forEach(function (box, i) {
      var cols = columns(data, box);
      var key = cols.labels.join("|");
      var width = Math.max(240, box.clientWidth);
      var rows = [data.t].concat(cols.values);
      if (charts[i] && charts[i].key === key) {
        charts[i].plot.setData(rows);
        charts[i].plot.setSize({ width: width, height: 180 });
        return;
      }
      if (charts[i]) { charts[i].plot.destroy(); }
      var series = [{}].concat(cols.labels.map(function (label, j) {
        return { label: label, stroke: colors[j % colors.length], width: 2, spanGaps: false };
      }));
      charts[i] = { key: key, plot: new window.uPlot({ width: width, height: 180, series: series, axes: [{}, { size: 60 }] }, rows, box) };
    });
  }

  function load() {
    fetch(root.getAttribute("data-source"), { credentials: "same-origin" })
      .then(function (r) {
        if (r.status !== 200) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(draw)
      .catch(function (e) { note.textContent = "Could not load the figures (" + e.message + ")."; });
  }
  load();
  setInterval(load, interval);
  window.addEventListener("resize", function () {
    root.querySelectorAll(".chart").forEach(function (box, i) {
      if (charts[i]) { charts[i].plot.setSize({ width: Math.max(240, box.clientWidth), height: 180 }); }
    });
  });
})();
